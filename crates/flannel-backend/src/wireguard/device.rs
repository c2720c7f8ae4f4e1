//! A WireGuard device (`flannel-wg`, `flannel-wg-v6`): the link, made by the kernel's
//! `wireguard` module or, where the kernel has none, by a userspace implementation as
//! wg-quick runs one (`WG_QUICK_USERSPACE_IMPLEMENTATION`, default `wireguard-go`: a TUN
//! device served over the UAPI socket); and its [`Control`], the one way its key, port and
//! peers are read and changed whichever runs it.
//!
//! An existing device is kept with its peers (upstream deletes and re-creates it at every
//! start, and deletes it at exit: traffic stops on each restart); one of another kind, or a
//! userspace device whose daemon is gone, is re-created.

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use super::uapi;
use crate::netlink::link::Link;
use crate::netlink::wireguard::{DeviceChange, KernelWireGuard, WgDevice};
use crate::netlink::Netlink;
use crate::BackendError;

/// How a device's configuration is read and changed.
#[derive(Debug, Clone)]
pub enum Control {
    /// The kernel's module, over generic netlink.
    Kernel(KernelWireGuard),
    /// A userspace implementation, over its UAPI socket.
    Userspace(PathBuf),
}

impl Control {
    /// Which implementation runs the device, for logs and doctor.
    pub fn describe(&self) -> String {
        match self {
            Control::Kernel(_) => "the kernel's wireguard module".into(),
            Control::Userspace(socket) => format!("userspace ({})", socket.display()),
        }
    }

    /// The device's key, port and peers.
    pub async fn device(&self, name: &str) -> Result<WgDevice, BackendError> {
        let (control, name) = (self.clone(), name.to_string());
        tokio::task::spawn_blocking(move || match control {
            Control::Kernel(k) => k.device(&name).map_err(BackendError::from),
            Control::Userspace(socket) => uapi::get(&socket)
                .map_err(|e| BackendError::Device(format!("reading WireGuard device {name}: {e}"))),
        })
        .await
        .map_err(|e| BackendError::Device(e.to_string()))?
    }

    /// Applies `change` to the device (nothing to do for an empty change).
    pub async fn configure(&self, name: &str, change: DeviceChange) -> Result<(), BackendError> {
        if change == DeviceChange::default() {
            return Ok(());
        }
        let (control, name) = (self.clone(), name.to_string());
        tokio::task::spawn_blocking(move || match control {
            Control::Kernel(k) => k.configure(&name, &change).map_err(BackendError::from),
            Control::Userspace(socket) => uapi::set(&socket, &change).map_err(|e| {
                BackendError::Device(format!("configuring WireGuard device {name}: {e}"))
            }),
        })
        .await
        .map_err(|e| BackendError::Device(e.to_string()))?
    }
}

/// The userspace implementation to run: wg-quick's variable, else `wireguard-go`.
fn userspace_implementation() -> String {
    std::env::var("WG_QUICK_USERSPACE_IMPLEMENTATION")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "wireguard-go".into())
}

/// How `existing` is controlled, or `None` when it is no WireGuard device we can use (a
/// userspace one must answer on its socket).
async fn control_of(existing: &Link) -> Option<Control> {
    if existing.is_kind("wireguard") {
        return KernelWireGuard::connect().ok().map(Control::Kernel);
    }
    if !existing.is_kind("tun") {
        return None;
    }
    let control = Control::Userspace(uapi::socket_path(&existing.name));
    control.device(&existing.name).await.ok().map(|_| control)
}

/// The device `name` with `mtu`: kept when it is there and usable, else made.
pub async fn ensure(nl: &Netlink, name: &str, mtu: u32) -> Result<(Link, Control), BackendError> {
    if let Some(existing) = nl.link_by_name(name).await? {
        match control_of(&existing).await {
            Some(control) => {
                if existing.mtu != mtu {
                    nl.set_link_mtu(existing.index, mtu).await?;
                }
                info!(
                    "keeping WireGuard device {name} and its peers ({})",
                    control.describe()
                );
                return Ok((existing, control));
            }
            None => {
                warn!(
                    "{name} exists but is no WireGuard device flanneld-rs can configure (kind {}); recreating device",
                    existing.kind.as_ref().map_or_else(|| "none".into(), ToString::to_string)
                );
                nl.delete_link(existing.index).await?;
            }
        }
    }
    let control = match nl.create_wireguard(name, mtu).await {
        Ok(()) => Control::Kernel(KernelWireGuard::connect()?),
        Err(e) if e.kernel_errno() == Some(libc::EOPNOTSUPP) => {
            start_userspace(name).await?;
            let link = wait_for_link(nl, name).await?;
            nl.set_link_mtu(link.index, mtu).await?;
            Control::Userspace(uapi::socket_path(name))
        }
        Err(e) => {
            return Err(BackendError::Device(format!(
                "could not create wireguard interface: {e}"
            )))
        }
    };
    let link = wait_for_link(nl, name).await?;
    info!("WireGuard device {name} made: {}", control.describe());
    Ok((link, control))
}

/// Runs the userspace implementation for `name`, as wg-quick does (it puts itself in the
/// background once the device and its socket are there).
async fn start_userspace(name: &str) -> Result<(), BackendError> {
    let program = userspace_implementation();
    warn!("the kernel has no wireguard module: running {program} {name} (userspace WireGuard, as wg-quick does)");
    let out = tokio::process::Command::new(&program)
        .arg(name)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            BackendError::Device(format!(
                "the kernel has no wireguard module (modprobe wireguard), and the userspace implementation could not be run: {program}: {e} (install wireguard-go, or set WG_QUICK_USERSPACE_IMPLEMENTATION)"
            ))
        })?;
    if !out.status.success() {
        return Err(BackendError::Device(format!(
            "the kernel has no wireguard module, and {program} {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The link `name`, once it is there and (userspace) its socket answers.
async fn wait_for_link(nl: &Netlink, name: &str) -> Result<Link, BackendError> {
    for _ in 0..100 {
        if let Some(link) = nl.link_by_name(name).await? {
            if control_of(&link).await.is_some() {
                return Ok(link);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BackendError::Device(format!(
        "WireGuard device {name} did not appear, or its userspace socket {} does not answer",
        uapi::socket_path(name).display()
    )))
}
