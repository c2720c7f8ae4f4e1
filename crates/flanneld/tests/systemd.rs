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
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use flannel_lab::lab::{wait_until, DEFAULT_CONFIG, DEFAULT_PREFIX, ETCD_IP};

/// A booted container; powered off (killed if it takes long) when dropped.
struct Container {
    nspawn: Child,
    init: u32,
    name: String,
}

impl Container {
    /// Boots this machine's tree in network namespace `ns`, with `dir` (the build's binaries)
    /// at /opt/flanneld-rs. Only basic.target: no service of the host's is started.
    fn boot(name: &str, ns: &str, dir: &Path, log_path: &Path) -> Container {
        let log = std::fs::File::create(log_path).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--directory=/",
                "--volatile=yes",
                "--console=passive",
                // what flanneld's unit has on a node: netlink and iptables
                "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
                &format!("--machine={name}"),
                &format!("--network-namespace-path=/run/netns/{ns}"),
                &format!("--bind-ro={}:/opt/flanneld-rs", dir.display()),
                // /usr/sbin/iptables is a link through /etc/alternatives (the tmpfs /etc
                // lacks it)
                "--bind-ro=/etc/alternatives",
                "--boot",
                "systemd.unit=basic.target",
                "systemd.firstboot=off",
                // nothing configures the network here: network-online.target (the unit's
                // After=/Wants=) would wait 2 minutes for systemd-networkd
                "systemd.mask=systemd-networkd-wait-online.service",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn (Debian's systemd-container)");
        let pid = nspawn.id();
        let mut init = 0;
        assert!(
            wait_until(Duration::from_secs(20), || {
                init = container_init(pid).unwrap_or(0);
                init != 0
            }),
            "the container's init did not start"
        );
        let c = Container {
            nspawn,
            init,
            name: name.to_string(),
        };
        let booted = wait_until(Duration::from_secs(60), || {
            let state = c.run(&["systemctl", "is-system-running"]);
            let s = String::from_utf8_lossy(&state.stdout);
            s.starts_with("running") || s.starts_with("degraded")
        });
        if !booted {
            c.explain_boot(log_path);
        }
        c
    }

    /// Panics with what the container's systemd was doing: the state, the jobs still
    /// queued, and nspawn's own output.
    fn explain_boot(&self, log: &Path) -> ! {
        let text = |o: Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        panic!(
            "systemd in the container did not finish booting\n\
             is-system-running: {}\nlist-jobs:\n{}\nnspawn's output:\n{}",
            text(self.run(&["systemctl", "is-system-running"])),
            text(self.run(&["systemctl", "list-jobs", "--no-pager"])),
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// Runs a command inside (all of the container's namespaces).
    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.init.to_string(), "--all", "--"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command inside; its stdout, or a panic with its output.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `systemctl show -p <property> --value flanneld`
    fn show(&self, property: &str) -> String {
        self.ok(&["systemctl", "show", "-p", property, "--value", "flanneld"])
            .trim()
            .to_string()
    }

    fn active(&self) -> String {
        let o = self.run(&["systemctl", "is-active", "flanneld"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM: nspawn asks the container's systemd to power off and waits for it
        let _ = Command::new("kill")
            .args(["-TERM", &self.nspawn.id().to_string()])
            .status();
        let exited = wait_until(Duration::from_secs(10), || {
            matches!(self.nspawn.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        // the (empty) directory nspawn keeps for the machine on the host
        let _ = std::fs::remove_dir(format!("/run/systemd/nspawn/propagate/{}", self.name));
    }
}

/// The container's PID 1 (as seen from here): the child of nspawn that is PID 1 in its own
/// PID namespace. nspawn's first child sets up the mounts, forks that one and exits: taking
/// whichever child comes first (as this test once did) may take that short-lived one, and
/// every later `nsenter` into it fails.
fn container_init(nspawn: u32) -> Option<u32> {
    children(nspawn).into_iter().find(|&child| {
        std::fs::read_to_string(format!("/proc/{child}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ids| {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                ids.len() > 1 && ids.last() == Some(&"1")
            })
    })
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

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
