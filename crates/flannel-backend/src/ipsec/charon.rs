//! strongSwan's IKE daemon, `charon`, run by flanneld-rs as upstream runs it (a child
//! process, driven over VICI at `/var/run/charon.vici`), with two differences: it outlives a
//! restart of flanneld-rs (a new flanneld-rs finds it answering and keeps it, so no SA of a
//! live peer is dropped; upstream's dies with it and takes every SA along), and one that dies
//! is started again by the next reconcile, which then loads every key and connection again.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tracing::{info, warn};

use super::vici;
use crate::BackendError;

/// charon's VICI socket (its default).
pub const SOCKET: &str = "/var/run/charon.vici";

/// charon's pid file (compiled in).
pub const PID_FILE: &str = "/var/run/charon.pid";

/// Where upstream looks for charon, in its order.
const PATHS: [&str; 5] = [
    "charon",
    "/usr/lib/strongswan/charon",     // alpine, arch, flannel's image
    "/usr/lib/ipsec/charon",          // debian, ubuntu
    "/usr/libexec/strongswan/charon", // centos, rhel
    "/usr/libexec/ipsec/charon",      // opensuse, sles
];

/// The charon executable: the first of upstream's paths that is one (`charon` on PATH first).
pub fn find() -> Result<PathBuf, BackendError> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for p in PATHS {
        let candidates: Vec<PathBuf> = if p.contains('/') {
            vec![PathBuf::from(p)]
        } else {
            std::env::split_paths(&path_var)
                .map(|d| d.join(p))
                .collect()
        };
        if let Some(found) = candidates.into_iter().find(|c| is_executable(c)) {
            return Ok(found);
        }
    }
    Err(BackendError::Device(format!(
        "no valid charon executable found at paths {PATHS:?} (Debian: apt-get install strongswan-charon strongswan-swanctl)"
    )))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The charon flanneld-rs drives.
pub struct Charon {
    path: PathBuf,
    socket: PathBuf,
    /// The one this process started, to reap and to tell its exit.
    child: Option<Child>,
}

impl Charon {
    pub fn new(path: PathBuf) -> Charon {
        Charon {
            path,
            socket: PathBuf::from(SOCKET),
            child: None,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether a charon answers on the socket.
    pub async fn answers(&self) -> bool {
        vici::call(&self.socket, "version", &Vec::new())
            .await
            .is_ok()
    }

    /// A charon answering: the one there, or one started now (true: every key and
    /// connection must be loaded into it).
    pub async fn ensure(&mut self) -> Result<bool, BackendError> {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                warn!("charon exited ({status}); starting it again");
                self.child = None;
            }
        }
        if self.answers().await {
            return Ok(false);
        }
        // a charon that died leaves its pid file: charon itself removes a stale one
        let child = Command::new(&self.path)
            .stdin(Stdio::null())
            // its own process group: a signal to flanneld-rs's group (a terminal's ^C) is
            // not its
            .process_group(0)
            .spawn()
            .map_err(|e| {
                BackendError::Device(format!(
                    "Error starting charon daemon: {}: {e}",
                    self.path.display()
                ))
            })?;
        info!("Charon daemon started (pid {})", child.id());
        self.child = Some(child);
        for _ in 0..200 {
            if self.answers().await {
                return Ok(true);
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(BackendError::Device(format!(
                    "charon exited at start ({status}): is another charon running without its VICI socket at {SOCKET}?"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BackendError::Device(format!(
            "charon does not answer on {SOCKET} 10 s after its start (is its vici plugin loaded?)"
        )))
    }
}

/// Ends the charon whose pid file is at [`PID_FILE`], if it is a charon (leaving ipsec),
/// and waits for it (up to 5 s: it deletes its SAs on the way out).
pub async fn terminate_running() {
    let Ok(pid) = std::fs::read_to_string(PID_FILE) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return;
    };
    let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm().trim() != "charon" {
        return;
    }
    info!("stopping charon (pid {pid}), left by the ipsec backend");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    for _ in 0..100 {
        if comm().trim() != "charon" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    warn!("charon (pid {pid}) still runs 5 s after SIGTERM");
}
