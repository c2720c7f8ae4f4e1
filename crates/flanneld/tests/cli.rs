//! The binary as scripts and unit files use it: flags, environment, exit codes.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::process::{Command, Output};

fn flanneld(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flanneld-rs"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_goes_to_stderr_with_exit_0_in_any_dash_style() {
    for flag in ["-version", "--version", "--version=true"] {
        let o = flanneld(&[flag], &[]);
        assert_eq!(o.status.code(), Some(0));
        assert!(o.stdout.is_empty());
        assert_eq!(stderr(&o), format!("v{}\n", env!("CARGO_PKG_VERSION")));
    }
    // as upstream, the environment cannot ask for the version
    let o = flanneld(
        &["-etcd-endpoints=http://127.0.0.1:1", "-healthz-port=70000"],
        &[("FLANNELD_VERSION", "true")],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_prints_upstream_usage_and_exits_0() {
    let o = flanneld(&["-h"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let usage = stderr(&o);
    assert!(usage.starts_with("Usage: "), "{usage}");
    assert!(usage.contains("  -etcd-endpoints string\n    \ta comma-delimited list of etcd endpoints (default \"http://127.0.0.1:4001,http://127.0.0.1:2379\")\n"));
    assert!(usage.contains("  -subnet-lease-renew-margin int\n"));
}

#[test]
fn unknown_flags_and_bad_values_exit_2_before_touching_anything() {
    let o = flanneld(&["-no-such-flag"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("flag provided but not defined: -no-such-flag\nUsage: "));
    for (args, env, want) in [
        (
            vec!["-subnet-lease-renew-margin=0"],
            vec![],
            "Invalid subnet-lease-renew-margin option, out of acceptable range",
        ),
        (
            vec!["-subnet-lease-renew-margin=1440"],
            vec![],
            "out of acceptable range",
        ),
        (vec!["-healthz-port=70000"], vec![], "expected 0 to 65535"),
        (vec!["-ip-masq=maybe"], vec![], "expected a boolean"),
        (
            vec![],
            vec![("FLANNELD_IPTABLES_RESYNC", "soon")],
            "FLANNELD_IPTABLES_RESYNC",
        ),
        (
            vec![],
            vec![("FLANNELD_PUBLIC_IP", "300.1.1.1")],
            "not an IPv4 address",
        ),
        (vec!["-kube-subnet-mgr"], vec![], "not supported yet"),
        (vec!["extra-argument"], vec![], "unexpected argument"),
    ] {
        let o = flanneld(&args, &env);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(want),
            "{args:?} {env:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn lease_subcommand_usage() {
    let o = flanneld(&["lease"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("lease show"));
    let o = flanneld(&["lease", "show", "--bogus"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = flanneld(&["lease", "show", "-h"], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("-json"));
    // etcd unreachable: a clear error and exit 1
    let o = flanneld(
        &["lease", "show", "-etcd-endpoints=http://127.0.0.1:1"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("error:"), "{}", stderr(&o));
}

#[test]
fn an_expired_client_certificate_is_named_and_exits_1() {
    let certs = flannel_lab::tls::TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let subnet_file = dir.path().join("subnet.env");
    let flag = |name: &str, path: &std::path::Path| format!("-{name}={}", path.display());
    let tls = [
        flag("etcd-cafile", &certs.ca),
        flag("etcd-certfile", &certs.expired_client_cert),
        flag("etcd-keyfile", &certs.expired_client_key),
        flag("subnet-file", &subnet_file),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let want = format!(
        "the etcd client certificate {} (--etcd-certfile) expired on 2021-01-01T00:00:00Z: renew it",
        certs.expired_client_cert.display()
    );
    // the daemon, before it touches the kernel
    let mut args = vec!["-etcd-endpoints=https://127.0.0.1:1", "-etcd-api=v3"];
    args.extend(&tls);
    let o = flanneld(&args, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    assert!(!subnet_file.exists());
    // and lease show
    let mut args = vec!["lease", "show", "-etcd-endpoints=https://127.0.0.1:1"];
    args.extend(&tls[..3]);
    let o = flanneld(&args, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
}
