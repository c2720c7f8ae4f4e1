//! One flanneld-rs per node. A second one would share `flannel.<VNI>`, the rules and the
//! lease with the first, and its start-up would fight the first over them. The lock is an
//! flock on `.flanneld-rs.lock` next to the subnet file (`/run/flannel`, a tmpfs): the
//! kernel releases it when the holder exits, however it exits. The file holds the holder's
//! PID, for the message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Held for the life of the daemon.
pub struct InstanceLock {
    _lock: Flock<File>,
}

pub fn lock_path(subnet_file: &Path) -> PathBuf {
    subnet_file.with_file_name(".flanneld-rs.lock")
}

/// Takes the lock, or says which process holds it.
pub fn acquire(subnet_file: &Path) -> anyhow::Result<InstanceLock> {
    let path = lock_path(subnet_file);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "the directory of the subnet file {} cannot be made, for writing the subnet file and the instance lock",
                dir.display()
            )
        })?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the instance lock {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let who = if pid.is_empty() {
                "another flanneld-rs".to_string()
            } else {
                format!("another flanneld-rs (PID {pid})")
            };
            bail!(
                "{who} is already running on this node (it holds {}): stop it first; two would share flannel.<VNI>, the rules and the lease",
                path.display()
            );
        }
        Err((_, e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    };
    let pid = std::process::id().to_string();
    let written = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(format!("{pid}\n").as_bytes()));
    if let Err(e) = written {
        tracing::warn!("writing the PID into {}: {e}", path.display());
    }
    Ok(InstanceLock { _lock: lock })
}
