//! One flanneld-rs per node. A second one would share `flannel.<VNI>`, the rules and the
//! lease with the first, and its start-up would fight the first over them. A node is a
//! network namespace (the kernel state flanneld programs is per namespace), so the lock is
//! an flock on `/run/flannel/flanneld-rs.net-<inode>.lock`, where `<inode>` names the
//! namespace (`stat -L -c %i /proc/self/ns/net`): one path per node whatever `-subnet-file`
//! says, and namespaces of one machine (a lab, tests) each have their own. The kernel
//! releases the lock when the holder exits, however it exits.
//!
//! The file (mode 0600: the config's Backend may hold a key) holds the holder's PID, for the
//! message, and once it has one, the network config it runs with, for `doctor`: a config
//! changed in the store while the daemon runs is not applied until a restart, and doctor
//! checks what actually runs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{bail, Context};
use flannel_net::NetworkConfig;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Where the lock lives: the directory of the default subnet file, a tmpfs.
const LOCK_DIR: &str = "/run/flannel";

/// Held for the life of the daemon.
pub struct InstanceLock {
    lock: Flock<File>,
}

/// The lock of this process's network namespace.
pub fn lock_path() -> PathBuf {
    let name = match std::fs::metadata("/proc/self/ns/net") {
        Ok(m) => format!("flanneld-rs.net-{}.lock", m.ino()),
        // no /proc: one lock for the machine
        Err(_) => "flanneld-rs.lock".to_string(),
    };
    PathBuf::from(LOCK_DIR).join(name)
}

/// Takes the lock, or says which process holds it.
pub fn acquire() -> anyhow::Result<InstanceLock> {
    let path = lock_path();
    std::fs::create_dir_all(LOCK_DIR)
        .with_context(|| format!("making {LOCK_DIR}, for the instance lock"))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening the instance lock {}", path.display()))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let who = match text.lines().next().map(str::trim) {
                Some(pid) if !pid.is_empty() => format!("another flanneld-rs (PID {pid})"),
                _ => "another flanneld-rs".to_string(),
            };
            bail!(
                "{who} is already running on this node (it holds {}, the lock of this network namespace): stop it first; two would share flannel.<VNI>, the rules and the lease",
                path.display()
            );
        }
        Err((_, e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    };
    // a file left by an older version may be readable by all
    let _ = lock.set_permissions(std::fs::Permissions::from_mode(0o600));
    let mut held = InstanceLock { lock };
    held.write(None);
    Ok(held)
}

impl InstanceLock {
    /// Records the network config the daemon runs with, beside its PID.
    pub fn record_config(&mut self, config: &NetworkConfig) {
        self.write(Some(config));
    }

    fn write(&mut self, config: Option<&NetworkConfig>) {
        let mut text = format!("{}\n", std::process::id());
        if let Some(c) = config {
            text += &c.to_json();
            text.push('\n');
        }
        let lock = &mut self.lock;
        let written = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!("writing {}: {e}", lock_path().display());
        }
    }
}

/// The daemon holding this node's lock, as `doctor` sees it.
pub struct Holder {
    pub pid: String,
    /// The network config it runs with (`None` before it has read one).
    pub config: Option<NetworkConfig>,
}

/// Who holds this node's lock, if anybody.
pub fn holder() -> Option<Holder> {
    let mut f = File::open(lock_path()).ok()?;
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => None,
        Err(_) => {
            let mut lines = text.lines();
            Some(Holder {
                pid: lines.next().unwrap_or_default().trim().to_string(),
                config: lines.next().and_then(|j| NetworkConfig::parse(j).ok()),
            })
        }
    }
}
