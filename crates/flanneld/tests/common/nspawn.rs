//! A systemd-nspawn container booted with systemd as PID 1 on this machine's own tree
//! (`--volatile=yes`: a tmpfs root with the host's /usr read-only, so nothing it writes
//! reaches the host), inside a lab host's network namespace.
#![allow(clippy::unwrap_used)] // a test helper: a failed unwrap is a failed assertion

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use flannel_lab::lab::wait_until;

/// A booted container; powered off (killed if it takes long) when dropped.
pub struct Container {
    /// PID 1 of the container, as seen from here.
    pub init: u32,
    nspawn: Child,
    name: String,
}

impl Container {
    /// Boots this machine's tree in network namespace `ns`, with `dir` (the build's binaries)
    /// at /opt/flanneld-rs and `extra` nspawn arguments. Only basic.target: no service of the
    /// host's is started.
    pub fn boot(name: &str, ns: &str, dir: &Path, log_path: &Path, extra: &[&str]) -> Container {
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
            ])
            .args(extra)
            .args([
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
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.init.to_string(), "--all", "--"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command inside; its stdout, or a panic with its output.
    pub fn ok(&self, args: &[&str]) -> String {
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
    pub fn show(&self, property: &str) -> String {
        self.ok(&["systemctl", "show", "-p", property, "--value", "flanneld"])
            .trim()
            .to_string()
    }

    pub fn active(&self) -> String {
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
