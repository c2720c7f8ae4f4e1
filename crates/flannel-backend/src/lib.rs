//! Backends of flanneld-rs: what a node does with the other nodes' leases.
//!
//! Every backend sits behind the [`Backend`] trait (after upstream's `Backend` / `Network` in
//! `pkg/backend/common.go`); the daemon knows only the trait and [`new_backend`], the factory
//! keyed by the network config's `Backend.Type`. What differs by kind is one row of the
//! table in `table.rs`:
//! - `vxlan` ([`vxlan::VxlanBackend`]): a `flannel.<VNI>` device and, per remote node, a
//!   permanent ARP entry, a bridge FDB entry and a route (through a nexthop object where the
//!   kernel has them), programmed in bulk over the kernel layer (flannel-netlink) and
//!   reconciled rather than replayed;
//! - `host-gw` ([`hostgw::HostGwBackend`]): a route to each node's subnet via its PublicIP,
//!   for nodes on one L2 segment;
//! - `wireguard` ([`wireguard::WireGuardBackend`]): encrypted tunnels, a WireGuard device
//!   per family holding a peer per remote node (the kernel's module, or a userspace
//!   implementation where the kernel has none), reconciled like VXLAN;
//! - `ipip` ([`ipip`]): a route to each node's subnet through an IP-in-IP device
//!   (host-gw's route network with a tunnel);
//! - `extension` ([`extension::ExtensionBackend`]): the operator's commands per event;
//! - `alloc` ([`alloc::AllocBackend`]): a subnet and nothing else (no data path);
//! - `ipsec` ([`ipsec::IpsecBackend`]): ESP tunnels between the nodes' subnets, keyed by
//!   strongSwan's charon (a child process, over VICI), the kernel's xfrm policies;
//! - `udp` ([`udp::UdpBackend`]): a TUN device and a data path in flanneld-rs itself, each
//!   packet a UDP datagram to the peer (upstream's debugging backend, and the default when
//!   the config has no `Backend`).
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
pub mod inspect;
pub mod ipip;
pub mod ipsec;
mod lease_check;
mod own_address;
mod reconciler;
pub mod route_network;
pub mod side;
mod table;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{BackendKind, Lease, LeaseAttrs, LeaseBatch, NetworkConfig};
use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};

pub use reconciler::Reconciler;

use flannel_netlink as netlink;
use netlink::Netlink;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Upstream's prefix (`error decoding VXLAN backend config: ...`), so that operators'
    /// searches keep working.
    #[error("error decoding {backend} backend config: {message}")]
    Config {
        backend: &'static str,
        message: String,
    },
    /// `Backend.Type` names no backend flanneld-rs has.
    #[error("unknown backend type: {0} (flanneld-rs implements {backends})", backends = table::names())]
    UnknownType(String),
    /// `Backend.Type` names one of upstream's backends that flanneld-rs does not run, and why.
    #[error("backend type {backend}: {why} (flanneld-rs implements {backends})", backends = table::names())]
    NotImplemented { backend: String, why: &'static str },
    /// The kernel refused or failed a request (what was being done, and its errno).
    #[error(transparent)]
    Kernel(#[from] flannel_netlink::NetlinkError),
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
    /// The counters of a data path that runs in flanneld-rs itself (udp's); `None` where the
    /// kernel carries the packets.
    pub data_path: Option<Arc<DataPathStats>>,
}

/// Counters of a data path in flanneld-rs (the udp backend's), in packets.
#[derive(Debug, Default)]
pub struct DataPathStats {
    /// Sent to peers.
    pub sent: AtomicU64,
    /// Received from peers and given to the kernel.
    pub received: AtomicU64,
    /// For no peer's subnet (answered "net unreachable" once the leases are listed).
    pub no_route: AtomicU64,
    /// From an address that is no node of the network.
    pub unknown_source: AtomicU64,
    /// TTL ran out, not IPv4, too long.
    pub dropped: AtomicU64,
    /// The socket or the device refused a packet.
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
    /// Its first IPv4 address, if any: what a tunnel's local end or a socket binds to
    /// (the PublicIP may be a NAT's).
    pub fn first_ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
    }

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
    /// Which backend it is.
    fn kind(&self) -> BackendKind;

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
    let row = row_of(config)?;
    (row.check)(config)
}

/// The table's row of the backend `config` names.
fn row_of(config: &NetworkConfig) -> Result<&'static table::Row, BackendError> {
    config.backend_kind().and_then(table::row).ok_or_else(|| {
        match not_implemented(&config.backend_type) {
            Some(why) => BackendError::NotImplemented {
                backend: config.backend_type.clone(),
                why,
            },
            None => BackendError::UnknownType(config.backend_type.clone()),
        }
    })
}

/// Why flanneld-rs does not run one of upstream's backends (current and former), in words
/// that say what to run instead; `None` for a type upstream never had.
fn not_implemented(backend_type: &str) -> Option<&'static str> {
    const CLOUD: &str = "it programs a cloud provider's routing tables through the provider's API, which flanneld-rs does not implement (it cannot be tested outside that cloud): run vxlan, or host-gw where the nodes share a segment, wireguard to encrypt";
    Some(match backend_type.to_ascii_lowercase().as_str() {
        "aws-vpc" | "gce" | "ali-vpc" | "tencent-vpc" => CLOUD,
        _ => return None,
    })
}

/// Whether the backend `config` names programs routes of host-gw's shape
/// (`<subnet> via <PublicIP> dev <external interface>`): for doctor's rp_filter advice.
pub fn makes_gateway_routes(config: &NetworkConfig) -> bool {
    row_of(config).is_ok_and(|row| (row.gateway_routes)(config))
}

/// The backend `config`'s `Backend.Type` names, after every backend of the table removed
/// what it left on this node and no longer needs (another backend's device or routes; a
/// family turned off).
pub async fn new_backend(
    config: &NetworkConfig,
    node: NodeContext,
) -> Result<Box<dyn Backend>, BackendError> {
    check_backend(config)?;
    let next = row_of(config)?;
    let gateway_routes_kept = (next.gateway_routes)(config);
    for row in &table::ROWS {
        (row.leftovers)(table::Leaving {
            config,
            node: &node,
            running: row.kind == next.kind,
            gateway_routes_kept,
        })
        .await?;
    }
    (next.make)(config, node).await
}

/// doctor: the data path of the backend `ctx.config` names, against the leases; the MTU
/// pods should get, when it can be told.
pub async fn inspect(ctx: &inspect::Inspect<'_>, findings: &mut inspect::Findings) -> Option<u32> {
    match row_of(ctx.config) {
        Ok(row) => (row.inspect)(ctx, findings).await,
        Err(e) => {
            findings.fail("device", e.to_string(), "");
            None
        }
    }
}

/// doctor without the leases: the devices of the backend `config` names.
pub async fn inspect_device(
    config: &NetworkConfig,
    nl: &Netlink,
    findings: &mut inspect::Findings,
) {
    if let Ok(row) = row_of(config) {
        (row.inspect_device)(config, nl, findings).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_other_backends_are_named_with_what_to_run_instead() {
        let config = |t: &str| {
            NetworkConfig::parse(&format!(
                r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{t}"}}}}"#
            ))
            .unwrap()
        };
        for cloud in ["aws-vpc", "gce", "ali-vpc", "tencent-vpc", "AWS-VPC"] {
            let e = check_backend(&config(cloud)).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "backend type {cloud}: it programs a cloud provider's"
                )) && e.contains("run vxlan"),
                "{e}"
            );
        }
        let e = check_backend(&config("bogus")).unwrap_err().to_string();
        assert!(e.starts_with("unknown backend type: bogus (flanneld-rs implements vxlan, host-gw, wireguard, ipip, extension, alloc, udp, ipsec)"), "{e}");
    }
}
