//! The installer behind `flanneld-rs install`: what the Ansible role githubixx.flanneld lays
//! down on a node, idempotently and without its pitfalls (the etcd config write skipped
//! silently on any error, the CA's private key copied to every node, no restart when the
//! binary or certificates changed, the `flannel` CNI plugin not installed at all).
//!
//! [`plan`] computes every file (binary, unit, CNI conflist and plugin, etcd certificates)
//! and compares it with what is on disk; [`Plan::diff`] shows the changes (`--dry-run`);
//! [`Plan::apply`] writes only what changed, atomically, and records what it laid down (with a
//! digest of each file's contents) so that [`uninstall`] removes exactly that. A file that was
//! there before the first install (upstream's flanneld binary and unit, say) is kept aside
//! under [`REPLACED_DIR`] and put back by [`uninstall`]; a file changed by hand since install
//! is left where it is. The network config in etcd is the binary's part (it speaks etcd); this
//! crate only handles files.

pub mod conflist;
pub mod unit;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flannel_net::subnet_env::write_atomic;

pub use unit::{ExecStartPre, UnitSpec};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Input(String),
}

/// Where the manifest of installed files lives (under the root).
pub const MANIFEST: &str = "/var/lib/flanneld-rs/installed";

/// Where install keeps the files it replaced (under the root), each at its own path below
/// this directory, with its mode: uninstall puts them back.
pub const REPLACED_DIR: &str = "/var/lib/flanneld-rs/replaced";

/// Where the file install replaced at `path` is kept (a node path, without the root).
pub fn replaced_path(path: &Path) -> PathBuf {
    Path::new(REPLACED_DIR).join(path.strip_prefix("/").unwrap_or(path))
}

/// A file's contents in the manifest: 64-bit FNV-1a, enough to tell "as installed" from
/// "changed by hand" (no adversary: whoever can write the file can write the manifest).
fn digest(contents: &[u8]) -> u64 {
    contents.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The etcd certificates flanneld uses, with their modes. The CA's private key is not
/// among them: flanneld never needs it (the role copies it to every node).
pub const CERTS: [(&str, u32); 3] = [
    ("ca-etcd.pem", 0o640),
    ("cert-etcd.pem", 0o640),
    ("cert-etcd-key.pem", 0o600),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Binary,
    Unit,
    Conflist,
    CniPlugin,
    Cert,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallSpec {
    /// Everything is laid down under this directory (`/` on a node, a temp dir in tests).
    pub root: PathBuf,
    /// The flanneld binary to install, and where (`/usr/local/sbin/flanneld`).
    pub binary_source: PathBuf,
    pub binary_path: PathBuf,
    pub unit: UnitSpec,
    pub unit_path: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_name: String,
    pub cni_version: String,
    pub cni_bin_dir: PathBuf,
    pub cni_plugin_source: PathBuf,
    /// Copy the etcd certificates from this directory into `certs_dir`.
    pub certs_from: Option<PathBuf>,
    pub certs_dir: PathBuf,
    /// Only the CNI conflist and plugin (the init step of a DaemonSet).
    pub cni_only: bool,
    /// The conflist's bytes as the operator wrote them (the role's `flannel_cni_conf`),
    /// instead of the one rendered from `cni_name` and `cni_version`.
    pub cni_conflist: Option<Vec<u8>>,
}

/// One file to lay down. `path` is where it is on the node (without the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub kind: Kind,
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    Update { old: Vec<u8>, old_mode: u32 },
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub root: PathBuf,
    pub files: Vec<(File, Change)>,
    /// Files of older installs that get in the way (reported, not removed).
    pub stale: Vec<PathBuf>,
    /// Notes for the operator (e.g. the CA key that was not copied).
    pub notes: Vec<String>,
    /// Files that are there but were not laid down by an install (upstream's flanneld, a
    /// conflist of another plugin): [`Plan::apply`] keeps each at [`replaced_path`] before it
    /// writes over it, and [`uninstall`] puts it back.
    pub replaced: Vec<PathBuf>,
}

/// `root` + an absolute node path.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn read(path: &Path) -> Result<Vec<u8>, InstallError> {
    fs::read(path).map_err(|source| InstallError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Computes every file and what would change.
pub fn plan(spec: &InstallSpec) -> Result<Plan, InstallError> {
    let mut files = Vec::new();
    let mut notes = Vec::new();
    let subnet_file = spec
        .unit
        .flags
        .get("subnet-file")
        .map_or(conflist::DEFAULT_SUBNET_FILE, String::as_str);
    files.push(File {
        kind: Kind::Conflist,
        path: spec.cni_conf_dir.join("10-flannel.conflist"),
        contents: match &spec.cni_conflist {
            Some(given) => given.clone(),
            None => conflist::render(&spec.cni_name, &spec.cni_version, subnet_file).into_bytes(),
        },
        mode: 0o644,
    });
    files.push(File {
        kind: Kind::CniPlugin,
        path: spec.cni_bin_dir.join("flannel"),
        contents: read(&spec.cni_plugin_source)?,
        mode: 0o755,
    });
    if !spec.cni_only {
        files.push(File {
            kind: Kind::Binary,
            path: spec.binary_path.clone(),
            contents: read(&spec.binary_source)?,
            mode: 0o755,
        });
        files.push(File {
            kind: Kind::Unit,
            path: spec.unit_path.clone(),
            contents: spec.unit.render().into_bytes(),
            mode: 0o644,
        });
        if let Some(from) = &spec.certs_from {
            for (name, mode) in CERTS {
                files.push(File {
                    kind: Kind::Cert,
                    path: spec.certs_dir.join(name),
                    contents: read(&from.join(name))?,
                    mode,
                });
            }
            if from.join("ca-etcd-key.pem").exists() {
                notes.push(format!(
                    "{}: not copied, flanneld does not need the CA's private key",
                    from.join("ca-etcd-key.pem").display()
                ));
            }
        }
    }
    let installed = read_manifest(&under(&spec.root, Path::new(MANIFEST)))?;
    let mut replaced = Vec::new();
    let mut planned = Vec::new();
    for file in files {
        let on_disk = under(&spec.root, &file.path);
        let change = match fs::read(&on_disk) {
            Ok(old) => {
                let old_mode = fs::metadata(&on_disk)
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0);
                if old == file.contents && old_mode == file.mode {
                    Change::Unchanged
                } else {
                    if !installed.iter().any(|i| i.path == file.path) {
                        replaced.push(file.path.clone());
                    }
                    Change::Update { old, old_mode }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Change::Create,
            Err(source) => {
                return Err(InstallError::Read {
                    path: on_disk,
                    source,
                })
            }
        };
        planned.push((file, change));
    }
    let mut stale = Vec::new();
    for old in [
        spec.cni_conf_dir.join("10-flannel.conf"),
        PathBuf::from("/etc/flannel/options.env"),
    ] {
        if under(&spec.root, &old).exists() {
            stale.push(old);
        }
    }
    Ok(Plan {
        root: spec.root.clone(),
        files: planned,
        stale,
        notes,
        replaced,
    })
}

impl Plan {
    pub fn changed(&self) -> impl Iterator<Item = &File> {
        self.files
            .iter()
            .filter(|(_, c)| *c != Change::Unchanged)
            .map(|(f, _)| f)
    }

    pub fn is_unchanged(&self) -> bool {
        self.changed().next().is_none()
    }

    /// Whether a change needs `systemctl daemon-reload` and a restart of flanneld.
    pub fn needs_restart(&self) -> bool {
        self.changed()
            .any(|f| matches!(f.kind, Kind::Unit | Kind::Binary | Kind::Cert))
    }

    /// A unified diff of every text file that would change; a line for binaries.
    pub fn diff(&self) -> String {
        let mut out = String::new();
        for (file, change) in &self.files {
            let path = file.path.display().to_string();
            let text = !matches!(file.kind, Kind::Binary | Kind::CniPlugin);
            let (old, old_mode) = match change {
                Change::Unchanged => continue,
                Change::Create => (Vec::new(), None),
                Change::Update { old, old_mode } => (old.clone(), Some(*old_mode)),
            };
            if let Some(m) = old_mode.filter(|m| *m != file.mode) {
                out += &format!("mode of {path}: {m:o} -> {:o}\n", file.mode);
            }
            if old == file.contents {
                continue;
            }
            if !text {
                out += &format!(
                    "binary {path} would be {} ({} bytes -> {} bytes)\n",
                    if old_mode.is_some() {
                        "replaced"
                    } else {
                        "created"
                    },
                    old.len(),
                    file.contents.len()
                );
                continue;
            }
            let old_text = String::from_utf8_lossy(&old);
            let new_text = String::from_utf8_lossy(&file.contents);
            let from = if old_mode.is_some() {
                format!("a{path}")
            } else {
                "/dev/null".to_string()
            };
            out += &similar::TextDiff::from_lines(old_text.as_ref(), new_text.as_ref())
                .unified_diff()
                .header(&from, &format!("b{path}"))
                .to_string();
        }
        out
    }

    /// Writes what changed and records it in the manifest; first keeps aside every file it
    /// replaces that no install laid down.
    pub fn apply(&self) -> Result<(), InstallError> {
        for (file, change) in &self.files {
            let Change::Update { old, old_mode } = change else {
                continue;
            };
            if !self.replaced.contains(&file.path) {
                continue;
            }
            let kept = under(&self.root, &replaced_path(&file.path));
            // a second install over the same foreign file keeps the first copy
            if kept.exists() {
                continue;
            }
            write_atomic(&kept, old, *old_mode)
                .map_err(|source| InstallError::Write { path: kept, source })?;
        }
        for file in self.changed() {
            let target = under(&self.root, &file.path);
            if file.kind == Kind::Cert {
                if let Some(dir) = target.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|source| InstallError::Write {
                            path: dir.to_owned(),
                            source,
                        })?;
                }
            }
            write_atomic(&target, &file.contents, file.mode).map_err(|source| {
                InstallError::Write {
                    path: target,
                    source,
                }
            })?;
        }
        let manifest = under(&self.root, Path::new(MANIFEST));
        let mut listed = read_manifest(&manifest)?;
        for (file, _) in &self.files {
            let entry = Installed {
                path: file.path.clone(),
                digest: Some(digest(&file.contents)),
            };
            match listed.iter_mut().find(|i| i.path == file.path) {
                Some(known) => *known = entry,
                None => listed.push(entry),
            }
        }
        let text: String = listed.iter().map(Installed::line).collect();
        write_atomic(&manifest, text.as_bytes(), 0o644).map_err(|source| InstallError::Write {
            path: manifest,
            source,
        })
    }
}

/// A manifest line: a file an install laid down, and the digest of what it wrote there
/// (absent in manifests of installs before digests were kept).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    path: PathBuf,
    digest: Option<u64>,
}

impl Installed {
    /// `<digest, 16 hex digits> <path>`; older manifests hold the path alone (which starts
    /// with `/`, a digest never does).
    fn parse(line: &str) -> Installed {
        match line.split_once(' ') {
            Some((hex, path)) if !hex.starts_with('/') => Installed {
                path: PathBuf::from(path),
                digest: u64::from_str_radix(hex, 16).ok(),
            },
            _ => Installed {
                path: PathBuf::from(line),
                digest: None,
            },
        }
    }

    fn line(&self) -> String {
        match self.digest {
            Some(d) => format!("{d:016x} {}\n", self.path.display()),
            None => format!("{}\n", self.path.display()),
        }
    }
}

fn read_manifest(path: &Path) -> Result<Vec<Installed>, InstallError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(Installed::parse)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(InstallError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// What [`uninstall`] did with one file an install laid down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// Removed (it was as installed, and nothing was there before).
    Removed,
    /// The file install replaced was put back.
    Restored,
    /// Left where it is: changed by hand since install. `kept` is where the file install
    /// replaced still is, if there was one.
    Changed { kept: Option<PathBuf> },
}

/// Undoes what [`Plan::apply`] laid down (never the etcd config or the leases): a file as
/// installed is removed, or replaced by the file that was there before install; a file
/// changed by hand since install is left alone. Returns each file with what was done; with
/// `dry_run`, what would be, touching nothing.
pub fn uninstall(root: &Path, dry_run: bool) -> Result<Vec<(PathBuf, Undo)>, InstallError> {
    let manifest = under(root, Path::new(MANIFEST));
    let mut done = Vec::new();
    for entry in read_manifest(&manifest)? {
        let target = under(root, &entry.path);
        let current = match fs::read(&target) {
            Ok(current) => Some(current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(InstallError::Read {
                    path: target,
                    source,
                })
            }
        };
        let kept_at = replaced_path(&entry.path);
        let kept = under(root, &kept_at);
        let kept = kept.exists().then_some(kept);
        let edited = match (&current, entry.digest) {
            (Some(c), Some(d)) => digest(c) != d,
            _ => false,
        };
        let undo = if edited {
            Undo::Changed {
                kept: kept.as_ref().map(|_| kept_at),
            }
        } else if kept.is_some() {
            Undo::Restored
        } else if current.is_some() {
            Undo::Removed
        } else {
            continue;
        };
        if !dry_run {
            match (&undo, &kept) {
                (Undo::Restored, Some(kept)) => restore(kept, &target)?,
                (Undo::Removed, _) => {
                    fs::remove_file(&target).map_err(|source| InstallError::Write {
                        path: target.clone(),
                        source,
                    })?
                }
                _ => {}
            }
        }
        done.push((entry.path, undo));
    }
    if dry_run {
        return Ok(done);
    }
    match fs::remove_file(&manifest) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(InstallError::Write {
                path: manifest,
                source: e,
            })
        }
        _ => {}
    }
    Ok(done)
}

/// Puts the file kept at `kept` back at `target`, with its mode, and removes the copy.
fn restore(kept: &Path, target: &Path) -> Result<(), InstallError> {
    let contents = read(kept)?;
    let mode = fs::metadata(kept)
        .map(|m| m.permissions().mode() & 0o7777)
        .map_err(|source| InstallError::Read {
            path: kept.to_owned(),
            source,
        })?;
    write_atomic(target, &contents, mode).map_err(|source| InstallError::Write {
        path: target.to_owned(),
        source,
    })?;
    fs::remove_file(kept).map_err(|source| InstallError::Write {
        path: kept.to_owned(),
        source,
    })
}

/// Reads a settings file: `key=value` per line (`#` comments, blank lines), keys with or
/// without leading dashes. The same as `--flag key=value` given once per line.
pub fn parse_settings(text: &str) -> Result<Vec<(String, String)>, InstallError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(
            parse_flag(line)
                .map_err(|e| InstallError::Input(format!("settings line {}: {e}", n + 1)))?,
        );
    }
    Ok(out)
}

/// `key=value` (or `-key=value`) into (key, value).
pub fn parse_flag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    let k = k.trim().trim_start_matches('-');
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("{s:?}: bad flag name"));
    }
    let v = v.trim();
    if v.contains('\n') || v.contains('\\') {
        return Err(format!(
            "{s:?}: a flag value cannot hold a newline or backslash"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}
