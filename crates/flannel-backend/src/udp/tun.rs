//! The TUN device the udp backend reads the node's overlay packets from and writes the
//! peers' into (`/dev/net/tun`, `IFF_TUN | IFF_NO_PI`: bare IP packets, as upstream's).
//!
//! Unlike upstream's, it is made persistent: it outlives the file descriptor, so a restart of
//! flanneld-rs keeps the device, its address and the network's route (packets wait nowhere in
//! between: the kernel drops what a detached TUN device is given, rather than sending pod
//! traffic down the default route, as a vanished route would).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::BackendError;

const CLONE_DEVICE: &str = "/dev/net/tun";

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens the TUN device `name`, making it (persistent) if it is not there; non-blocking.
pub fn open(name: &str) -> Result<File, BackendError> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(BackendError::Device(format!(
            "TUN device name {name:?} is too long"
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(CLONE_DEVICE)
        .map_err(|e| {
            BackendError::Device(format!(
                "failed to open TUN device: {CLONE_DEVICE}: {e} (the kernel needs the tun module: modprobe tun)"
            ))
        })?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    #[allow(unsafe_code)]
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => format!(
                "{name} is in use by another process (an upstream flanneld still running on this node?)"
            ),
            Some(libc::EINVAL) => format!(
                "{name} exists and is not a TUN device without packet information (remove it: ip link del {name})"
            ),
            Some(libc::EPERM) => format!("{name}: {e} (flanneld runs as root, or with CAP_NET_ADMIN)"),
            _ => format!("{name}: {e}"),
        };
        return Err(BackendError::Device(format!(
            "failed to open TUN device: {why}"
        )));
    }
    #[allow(unsafe_code)]
    // SAFETY: TUNSETPERSIST takes an int by value.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(BackendError::Device(format!(
            "making TUN device {name} persistent: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(file)
}
