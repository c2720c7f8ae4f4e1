//! Backends of flanneld-rs: what a node does with the other nodes' leases.
//!
//! Every backend sits behind the [`Backend`] trait (after upstream's `Backend` / `Network` in
//! `pkg/backend/common.go`); the daemon knows only the trait and [`new_backend`], the factory
//! keyed by the network config's `Backend.Type`:
//! - `vxlan` ([`vxlan::VxlanBackend`]): a `flannel.<VNI>` device and, per remote node, a
//!   permanent ARP entry, a bridge FDB entry and an onlink route, programmed over rtnetlink
//!   ([`netlink`]) and reconciled rather than replayed;
//! - `host-gw` ([`hostgw::HostGwBackend`]): a route to each node's subnet via its PublicIP,
//!   for nodes on one L2 segment;
//! - `extension` ([`extension::ExtensionBackend`]): the operator's commands per event;
//! - `alloc` ([`alloc::AllocBackend`]): a subnet and nothing else (no data path).
//!
//! Rules every backend keeps:
//! - **restart deletes nothing live**: no kernel entry is removed before the first complete
//!   listing of the leases ([`LeaseBatch::snapshot`]) has been applied; entries that no lease
//!   explains (nodes that left while flanneld was down) are removed right after it;
//! - **reconcile, don't replay**: the kernel is made to match the desired set, on every
//!   event, in full on a period, and soon after the kernel reports damage;
//! - `synced` turns true once a complete listing is programmed (readyz).

pub mod alloc;
pub mod extension;
pub mod hostgw;
mod lease_check;
mod leftovers;
pub mod netlink;
mod reconciler;
pub mod vxlan;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{Lease, LeaseAttrs, LeaseBatch, NetworkConfig};
use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};

use crate::netlink::Netlink;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Upstream's prefix (`error decoding VXLAN backend config: ...`), so that operators'
    /// searches keep working.
    #[error("error decoding {backend} backend config: {message}")]
    Config {
        backend: &'static str,
        message: String,
    },
    /// The config has no `Backend` at all (upstream then runs udp, which it dropped in v0.13).
    #[error("the network config has no \"Backend\": upstream then uses the udp backend, which flanneld-rs does not implement; add \"Backend\": {{\"Type\": \"vxlan\"}} to the network config")]
    NoBackend,
    /// `Backend.Type` names no backend flanneld-rs has.
    #[error(
        "unknown backend type: {0} (flanneld-rs implements the vxlan, host-gw and alloc backends)"
    )]
    UnknownType(String),
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// The backend's device cannot be made as configured.
    #[error("{0}")]
    Device(String),
}

/// Counters for metrics (`/metrics`); a backend without a data path leaves them at 0.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Peers currently programmed on the IPv4 side (IPv6-only: 0).
    pub peers: AtomicU64,
    /// Peers currently programmed on the IPv6 side.
    pub peers_v6: AtomicU64,
    /// Kernel entries added or deleted by a full reconcile (drift repaired).
    pub repairs: AtomicU64,
    pub reconciles: AtomicU64,
    pub device_recreations: AtomicU64,
    /// Kernel operations that failed (retried by the next reconcile).
    pub errors: AtomicU64,
}

/// The interface that carries the encapsulated traffic to the other nodes (`--iface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Its addresses with prefix: a peer inside one of these is on the same L2
    /// (DirectRouting).
    pub addresses: Vec<IpNetwork>,
}

impl ExtIface {
    /// Whether `ip` is reachable without a router from this interface (a host route, /32 or
    /// /128, says nothing about neighbours).
    pub fn on_link(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|n| {
            let host = match n {
                IpNetwork::V4(_) => 32,
                IpNetwork::V6(_) => 128,
            };
            n.prefix() < host && n.contains(ip)
        })
    }
}

/// What a backend is told about the node when it is made.
pub struct NodeContext {
    pub nl: Netlink,
    pub ext: ExtIface,
    /// The address other nodes reach this one at (`--public-ip`, else the interface's);
    /// 0.0.0.0 when IPv4 is off.
    pub public_ip: Ipv4Addr,
    /// The same for IPv6 (`--public-ipv6`, else the interface's), when IPv6 is on.
    pub public_ipv6: Option<Ipv6Addr>,
    /// This node's lease as the store already holds it (a restart), if any: what it
    /// advertised before (the VTEP MAC a re-created VXLAN device keeps).
    pub previous_lease: Option<Lease>,
}

/// A backend: set up before the lease is acquired (its attributes go into the lease), told
/// the lease, then run on the lease events until they end.
#[async_trait]
pub trait Backend: Send {
    /// `Backend.Type`, lower case: `vxlan`, `alloc`.
    fn kind(&self) -> &'static str;

    /// What this node publishes in its lease (PublicIP, BackendType, BackendData).
    fn lease_attrs(&self) -> LeaseAttrs;

    /// FLANNEL_MTU: the MTU pods get.
    fn mtu(&self) -> u32;

    /// Counters for metrics.
    fn stats(&self) -> Arc<BackendStats>;

    /// Gives the data path this node's subnet (device address, link up).
    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError>;

    /// Applies lease events (every lease, this node's included, as the watch delivers them)
    /// until `events` closes, keeping the rules in this module's header. `synced` turns
    /// true once a complete listing is programmed; `resync` is the period of the full
    /// reconcile.
    async fn run(
        self: Box<Self>,
        events: mpsc::Receiver<LeaseBatch>,
        synced: watch::Sender<bool>,
        resync: Duration,
    ) -> Result<(), BackendError>;
}

/// Whether flanneld-rs can run the backend `config` asks for, with its settings (the
/// installer checks a config with this before writing it).
pub fn check_backend(config: &NetworkConfig) -> Result<(), BackendError> {
    if config.backend.is_none() {
        return Err(BackendError::NoBackend);
    }
    match config.backend_kind().as_str() {
        "vxlan" => vxlan::VxlanConfig::from_backend(config.backend.as_ref()).map(|_| ()),
        "extension" => {
            extension::ExtensionConfig::from_backend(config.backend.as_ref()).map(|_| ())
        }
        "alloc" | "host-gw" => Ok(()),
        _ => Err(BackendError::UnknownType(config.backend_type.clone())),
    }
}

/// The backend `config`'s `Backend.Type` names, after removing what another backend left
/// on this node (see `leftovers.rs`).
pub async fn new_backend(
    config: &NetworkConfig,
    node: NodeContext,
) -> Result<Box<dyn Backend>, BackendError> {
    check_backend(config)?;
    leftovers::remove(&config.backend_kind(), config, &node).await?;
    match config.backend_kind().as_str() {
        "vxlan" => Ok(Box::new(
            vxlan::VxlanBackend::new_dual(
                config.backend.as_ref(),
                config.enable_ipv4.then_some(config.network),
                config.ipv6_network.filter(|_| config.enable_ipv6),
                node,
            )
            .await?,
        )),
        "alloc" => Ok(Box::new(alloc::AllocBackend::new(node))),
        "host-gw" => Ok(Box::new(hostgw::HostGwBackend::new_dual(
            config.enable_ipv4.then_some(config.network),
            config.ipv6_network.filter(|_| config.enable_ipv6),
            node,
        )?)),
        "extension" => Ok(Box::new(
            extension::ExtensionBackend::new(config.backend.as_ref(), config.network, node).await?,
        )),
        _ => Err(BackendError::UnknownType(config.backend_type.clone())),
    }
}
