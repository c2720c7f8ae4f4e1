//! The installer's unit under a real systemd: a systemd-nspawn container booted with systemd
//! as PID 1 on this machine's own tree (`--volatile=yes`: a tmpfs root with the host's /usr
//! read-only, so nothing it writes reaches the host), inside a lab host's network namespace
//! with the lab's etcd reachable. `flanneld-rs install` then: the service becomes active only
//! after READY=1, `systemctl stop` exits 0 leaving the state in place, a crash is restarted by
//! `Restart=`, a second install with a changed flag reloads and restarts, `uninstall` stops
//! and removes it. `--no-capture` prints the time of each step; `SYSTEMD_LOG=1` the
//! container's journal after the install.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::path::Path;
use std::time::Duration;

use common::nspawn::Container;
use common::*;
use flannel_lab::lab::{wait_until, DEFAULT_CONFIG, DEFAULT_PREFIX, ETCD_IP};

#[test]
fn the_installed_unit_under_a_real_systemd() {
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    let (mut lab, dir) = lab('s', 1, Some(DEFAULT_CONFIG));
    let ns = lab.hosts[0].ns.clone();
    // the container sees /proc/sys read-only: forwarding is set from outside, as a node's
    // sysctl.conf would
    lab.on_host(1, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let bin = Path::new(env!("CARGO_BIN_EXE_flanneld-rs"));
    let build = bin.parent().unwrap();
    let c = Container::boot(
        &format!("fl{}", std::process::id()),
        &ns,
        build,
        &dir.path().join("nspawn.log"),
        &[],
    );
    let endpoints = format!("etcd-endpoints=http://{ETCD_IP}:2379");
    let prefix = format!("etcd-prefix={DEFAULT_PREFIX}");
    let install = |extra: &[&str]| {
        let mut args = vec![
            "/opt/flanneld-rs/flanneld-rs",
            "install",
            "--bin-dir=/opt/bin",
            "--cni-plugin=/opt/flanneld-rs/flannel",
            "--flag",
            &endpoints,
            "--flag",
            &prefix,
            "--flag",
            "iface=eth0",
        ];
        args.extend_from_slice(extra);
        let o = c.run(&args);
        assert!(
            o.status.success(),
            "{}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(
                &c.run(&["journalctl", "-u", "flanneld", "--no-pager"])
                    .stdout
            )
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    step("booted");
    // install: daemon-reload, enable, restart; active only once READY=1 was sent, which
    // the daemon sends after subnet.env is written
    let out = install(&[]);
    assert!(
        out.contains("ran systemctl restart flanneld.service"),
        "{out}"
    );
    assert_eq!(
        c.active(),
        "active",
        "{}",
        c.ok(&["journalctl", "-u", "flanneld", "--no-pager"])
    );
    assert_eq!(c.show("Type"), "notify");
    assert!(c
        .run(&["test", "-s", "/run/flannel/subnet.env"])
        .status
        .success());
    let journal = c.ok(&["journalctl", "-u", "flanneld", "--no-pager"]);
    assert!(journal.contains("flannel is ready"), "{journal}");
    let pid = c.show("MainPID");
    assert!(lab.on_host(1, &["ip", "-o", "link"]).contains("flannel.1"));

    step("installed, active");
    if std::env::var_os("SYSTEMD_LOG").is_some() {
        eprintln!(
            "{}",
            c.ok(&["journalctl", "--no-pager", "-o", "short-precise"])
        );
    }
    // stop: exit 0, device, routes, subnet.env and lease left in place
    c.ok(&["systemctl", "stop", "flanneld"]);
    assert_eq!(c.active(), "inactive");
    assert_eq!(c.show("ExecMainStatus"), "0", "{}", c.show("Result"));
    assert_eq!(c.show("Result"), "success");
    assert!(lab.on_host(1, &["ip", "-o", "link"]).contains("flannel.1"));
    assert!(c
        .run(&["test", "-s", "/run/flannel/subnet.env"])
        .status
        .success());
    assert_eq!(leases(&lab).len(), 1);

    step("stopped");
    // a crash (kill -9) is restarted by Restart=always after RestartSec=5
    c.ok(&["systemctl", "start", "flanneld"]);
    let before = c.show("MainPID");
    assert_ne!(before, pid);
    c.ok(&["kill", "-9", &before]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            c.active() == "active" && c.show("MainPID") != before
        }),
        "not restarted after the crash: {}",
        c.ok(&["systemctl", "status", "flanneld", "--no-pager"])
    );
    assert_eq!(c.show("NRestarts"), "1");

    step("restarted after the crash");
    // a second install with a changed flag: the unit is rewritten, reloaded, restarted
    let running = c.show("MainPID");
    let out = install(&["--flag", "healthz-port=9091"]);
    assert!(out.contains("ran systemctl daemon-reload"), "{out}");
    assert!(
        c.show("ExecStart").contains("-healthz-port=9091"),
        "{}",
        c.show("ExecStart")
    );
    assert_ne!(c.show("MainPID"), running, "restarted");
    assert_eq!(c.active(), "active");
    assert!(wait_until(Duration::from_secs(10), || {
        lab.http(1, "/healthz", "GET").is_none()
            && c.run(&["sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/9091"])
                .status
                .success()
            || lab.on_host(1, &["ss", "-ltn"]).contains(":9091")
    }));

    step("reinstalled");
    // uninstall: stopped, disabled, unit gone
    let out = c.ok(&["/opt/flanneld-rs/flanneld-rs", "uninstall"]);
    assert!(out.contains("disable --now flanneld.service"), "{out}");
    assert_eq!(c.active(), "inactive");
    assert!(!c.run(&["systemctl", "cat", "flanneld"]).status.success());
    step("uninstalled");
    drop(c);
    step("container gone");
    lab.stop(1, "KILL");
}
