//! Installing into a temporary root, twice; dry-run; uninstall; the unit checked by systemd.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flannel_install::{
    plan, replaced_path, under, uninstall, Change, ExecStartPre, InstallSpec, Kind, Undo, UnitSpec,
};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn spec(root: &Path, src: &Path) -> InstallSpec {
    fs::write(src.join("flanneld-rs"), b"\x7fELF binary v1").unwrap();
    fs::write(src.join("flannel"), b"\x7fELF cni plugin").unwrap();
    let certs = src.join("certs");
    fs::create_dir_all(&certs).unwrap();
    for name in [
        "ca-etcd.pem",
        "cert-etcd.pem",
        "cert-etcd-key.pem",
        "ca-etcd-key.pem",
    ] {
        fs::write(certs.join(name), format!("-----BEGIN {name}-----\n")).unwrap();
    }
    let flags = [
        ("etcd-endpoints", "https://10.8.0.101:2379"),
        ("etcd-prefix", "/kubernetes-cluster/network"),
        ("iface", "wg0"),
        ("ip-masq", "true"),
        ("subnet-file", "/run/flannel/subnet.env"),
    ];
    InstallSpec {
        root: root.to_path_buf(),
        binary_source: src.join("flanneld-rs"),
        binary_path: "/usr/local/sbin/flanneld".into(),
        unit: UnitSpec {
            binary: "/usr/local/sbin/flanneld".into(),
            flags: flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            exec_start_post: None,
            docker: false,
            exec_start_pre: ExecStartPre::MakeSubnetDir,
            restart_sec: "5".into(),
            limit_nofile: "40000".into(),
            limit_nproc: "1048576".into(),
        },
        unit_path: "/etc/systemd/system/flanneld.service".into(),
        cni_conf_dir: "/etc/cni/net.d".into(),
        cni_name: "cni0".into(),
        cni_version: "1.0.0".into(),
        cni_bin_dir: "/opt/cni/bin".into(),
        cni_plugin_source: src.join("flannel"),
        certs_from: Some(certs),
        certs_dir: "/var/lib/kubernetes".into(),
        cni_only: false,
        cni_conflist: None,
    }
}

#[test]
fn install_twice_then_uninstall() {
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let spec = spec(root.path(), src.path());
    let p = plan(&spec).unwrap();
    assert!(p.files.iter().all(|(_, c)| *c == Change::Create));
    assert!(p.needs_restart());
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("ca-etcd-key.pem: not copied")));
    p.apply().unwrap();

    let at = |p: &str| under(root.path(), Path::new(p));
    for (path, want_mode) in [
        ("/usr/local/sbin/flanneld", 0o755),
        ("/etc/systemd/system/flanneld.service", 0o644),
        ("/etc/cni/net.d/10-flannel.conflist", 0o644),
        ("/opt/cni/bin/flannel", 0o755),
        ("/var/lib/kubernetes/ca-etcd.pem", 0o640),
        ("/var/lib/kubernetes/cert-etcd.pem", 0o640),
        ("/var/lib/kubernetes/cert-etcd-key.pem", 0o600),
    ] {
        assert_eq!(mode(&at(path)), want_mode, "{path}");
    }
    assert_eq!(mode(&at("/var/lib/kubernetes")), 0o700);
    assert!(
        !at("/var/lib/kubernetes/ca-etcd-key.pem").exists(),
        "never the CA key"
    );
    let unit = fs::read_to_string(at("/etc/systemd/system/flanneld.service")).unwrap();
    assert!(unit.contains(
        "ExecStart=/usr/local/sbin/flanneld \\\n  -etcd-endpoints=https://10.8.0.101:2379 \\\n"
    ));
    assert!(unit.contains("  -subnet-file=/run/flannel/subnet.env \n"));
    let conflist: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(at("/etc/cni/net.d/10-flannel.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(conflist["cniVersion"], "1.0.0");
    assert_eq!(conflist["plugins"][0]["type"], "flannel");
    assert_eq!(conflist["plugins"][1]["type"], "portmap");

    // second run: nothing to do
    let again = plan(&spec).unwrap();
    assert!(again.is_unchanged(), "{}", again.diff());
    assert!(!again.needs_restart());
    assert_eq!(again.diff(), "");

    // a changed flag and a chmod'ed key: only those change; the diff says so
    let mut changed = spec.clone();
    changed.unit.flags.insert("iface".into(), "eth1".into());
    fs::set_permissions(
        at("/var/lib/kubernetes/cert-etcd-key.pem"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let p = plan(&changed).unwrap();
    let kinds: Vec<Kind> = p.changed().map(|f| f.kind).collect();
    assert_eq!(kinds, vec![Kind::Unit, Kind::Cert]);
    let diff = p.diff();
    assert!(diff.contains("--- a/etc/systemd/system/flanneld.service\n+++ b/etc/systemd/system/flanneld.service\n"), "{diff}");
    assert!(
        diff.contains("-  -iface=wg0 \\\n+  -iface=eth1 \\\n"),
        "{diff}"
    );
    assert!(
        diff.contains("mode of /var/lib/kubernetes/cert-etcd-key.pem: 644 -> 600"),
        "{diff}"
    );
    // a dry run writes nothing
    assert!(
        fs::read_to_string(at("/etc/systemd/system/flanneld.service"))
            .unwrap()
            .contains("-iface=wg0")
    );
    p.apply().unwrap();
    assert_eq!(mode(&at("/var/lib/kubernetes/cert-etcd-key.pem")), 0o600);

    // uninstall leaves nothing of ours
    let would = uninstall(root.path(), true).unwrap();
    assert!(!would.is_empty());
    assert!(
        would.iter().all(|(p, _)| under(root.path(), p).exists()),
        "a dry run removes nothing"
    );
    let removed = uninstall(root.path(), false).unwrap();
    assert_eq!(removed, would);
    assert_eq!(removed.len(), 7);
    assert!(removed.iter().all(|(_, undo)| *undo == Undo::Removed));
    let left: Vec<PathBuf> = walk(root.path())
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Installed over upstream's flanneld binary and unit: install keeps them aside and says so,
/// uninstall puts them back (issue 32: the node was left with no flanneld); a conflist edited
/// by hand after install is left where it is, and so is its original.
#[test]
fn install_over_upstream_keeps_what_it_replaced_and_uninstall_puts_it_back() {
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let spec = spec(root.path(), src.path());
    let at = |p: &str| under(root.path(), Path::new(p));
    let upstream = [
        (
            "/usr/local/sbin/flanneld",
            &b"upstream flanneld v0.20.2"[..],
            0o755,
        ),
        (
            "/etc/systemd/system/flanneld.service",
            b"[Service]\nExecStart=/usr/local/sbin/flanneld\n",
            0o644,
        ),
        (
            "/etc/cni/net.d/10-flannel.conflist",
            b"{\"name\":\"cbr0\"}",
            0o600,
        ),
    ];
    for (path, contents, mode) in upstream {
        fs::create_dir_all(at(path).parent().unwrap()).unwrap();
        fs::write(at(path), contents).unwrap();
        fs::set_permissions(at(path), fs::Permissions::from_mode(mode)).unwrap();
    }
    let p = plan(&spec).unwrap();
    let mut replaced: Vec<&str> = p.replaced.iter().map(|p| p.to_str().unwrap()).collect();
    replaced.sort_unstable();
    let mut want = upstream.map(|(p, _, _)| p);
    want.sort_unstable();
    assert_eq!(replaced, want);
    p.apply().unwrap();
    for (path, contents, want_mode) in upstream {
        let kept = under(root.path(), &replaced_path(Path::new(path)));
        assert_eq!(fs::read(&kept).unwrap(), contents, "{path}");
        assert_eq!(mode(&kept), want_mode, "{path}");
        assert_ne!(
            fs::read(at(path)).unwrap(),
            contents,
            "{path} not installed"
        );
    }
    // installing again (a changed flag) replaces our own unit: no new copy over the original
    let mut changed = spec.clone();
    changed.unit.flags.insert("iface".into(), "eth1".into());
    let again = plan(&changed).unwrap();
    assert!(again.replaced.is_empty(), "{:?}", again.replaced);
    again.apply().unwrap();
    // the conflist edited by hand after install
    fs::write(
        at("/etc/cni/net.d/10-flannel.conflist"),
        "{\"edited\":true}",
    )
    .unwrap();

    let done = uninstall(root.path(), false).unwrap();
    let undo = |path: &str| {
        done.iter()
            .find(|(p, _)| p == Path::new(path))
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(undo("/usr/local/sbin/flanneld"), Undo::Restored);
    assert_eq!(undo("/etc/systemd/system/flanneld.service"), Undo::Restored);
    let conflist = "/etc/cni/net.d/10-flannel.conflist";
    assert_eq!(
        undo(conflist),
        Undo::Changed {
            kept: Some(replaced_path(Path::new(conflist)))
        }
    );
    assert_eq!(undo("/opt/cni/bin/flannel"), Undo::Removed);
    for (path, contents, want_mode) in &upstream[..2] {
        assert_eq!(fs::read(at(path)).unwrap(), *contents, "{path}");
        assert_eq!(mode(&at(path)), *want_mode, "{path}");
        assert!(!under(root.path(), &replaced_path(Path::new(path))).exists());
    }
    assert_eq!(
        fs::read_to_string(at(conflist)).unwrap(),
        "{\"edited\":true}"
    );
    assert!(under(root.path(), &replaced_path(Path::new(conflist))).exists());
    assert!(!at("/opt/cni/bin/flannel").exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn stale_conf_is_reported_and_cni_only_lays_down_the_cni_part() {
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut spec = spec(root.path(), src.path());
    fs::create_dir_all(under(root.path(), Path::new("/etc/cni/net.d"))).unwrap();
    fs::write(
        under(root.path(), Path::new("/etc/cni/net.d/10-flannel.conf")),
        "{}",
    )
    .unwrap();
    spec.cni_only = true;
    let p = plan(&spec).unwrap();
    assert_eq!(
        p.stale,
        vec![PathBuf::from("/etc/cni/net.d/10-flannel.conf")]
    );
    let kinds: Vec<Kind> = p.files.iter().map(|(f, _)| f.kind).collect();
    assert_eq!(kinds, vec![Kind::Conflist, Kind::CniPlugin]);
    assert!(!p.needs_restart());
}

#[test]
fn missing_source_files_are_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut spec = spec(root.path(), src.path());
    spec.cni_plugin_source = "/nonexistent/flannel".into();
    let e = plan(&spec).unwrap_err().to_string();
    assert!(e.contains("reading /nonexistent/flannel"), "{e}");
    let spec2 = self::spec(root.path(), src.path());
    fs::remove_file(spec2.certs_from.as_ref().unwrap().join("cert-etcd-key.pem")).unwrap();
    assert!(plan(&spec2)
        .unwrap_err()
        .to_string()
        .contains("cert-etcd-key.pem"));
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    flannel_lab::require_program("systemd-analyze", "systemd");
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut spec = spec(root.path(), src.path());
    // the binary must exist where the unit says: point the unit at the real one in the root
    let bin = under(root.path(), Path::new("/usr/local/sbin/flanneld"));
    spec.unit.binary = bin.display().to_string();
    spec.unit.docker = true;
    spec.unit.exec_start_post = Some("/bin/true".into());
    plan(&spec).unwrap().apply().unwrap();
    let unit = under(
        root.path(),
        Path::new("/etc/systemd/system/flanneld.service"),
    );
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // docker.service does not exist on a test machine; everything else must be clean
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("docker.service") && !l.trim().is_empty())
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify: {stderr}");
}
