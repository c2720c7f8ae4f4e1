//! The `udp` backend (upstream `pkg/backend/udp` at v0.28.9), IPv4 only as upstream: a TUN
//! device `flannel0` holding this node's subnet address (`10.5.34.0/32`), one route sending
//! the whole Network into it (`10.5.0.0/16 dev flannel0`), and a data path in flanneld-rs
//! itself ([`proxy`]) that carries each packet to the peer whose subnet holds its
//! destination as one UDP datagram to the peer's PublicIP and `Port` (default 8285), and
//! writes what peers send into the device. MTU: the interface's less 28 (the outer IPv4 and
//! UDP headers). The lease is upstream's: `{"PublicIP":"…","PublicIPv6":null}`, no
//! BackendType (and leases of another BackendType are not peers: they cannot receive ours).
//!
//! It is the backend upstream keeps for debugging and kernels without VXLAN; the kernel does
//! the other backends' encapsulation, this one costs two copies and two system calls per
//! batch of packets in flanneld-rs.
//!
//! Reconciled like the others: the device (persistent, so kept over a restart with its
//! address and route), its MTU, address, state and route are checked on a period and soon
//! after the kernel reports one deleted; a device deleted is made again and the data path
//! moves to it.

mod packet;
mod proxy;
mod tun;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{BackendKind, Lease, LeaseAttrs, LeaseBatch, LeaseEvent, NetworkConfig};
use futures::future::BoxFuture;
use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::inspect::{Findings, Inspect};
use crate::lease_check::{self, Skip};
use crate::netlink::events::KernelEvent;
use crate::netlink::route::DeviceRouteScope;
use crate::netlink::{Family, Netlink};
use crate::reconciler::Reconciler;
use crate::table::{Leaving, Made, Row};
use crate::{Backend, BackendError, BackendStats, ExtIface, NodeContext};

pub use proxy::PeerTable;

/// Upstream's device (it asks the kernel for `flannel%d`: the first is flannel0).
pub const DEVICE: &str = "flannel0";

/// Upstream's default `Port`.
pub const DEFAULT_PORT: u16 = 8285;

/// The outer IPv4 and UDP headers.
const OVERHEAD: u32 = 28;

/// The table's row of udp.
pub(crate) const ROW: Row = Row {
    kind: BackendKind::Udp,
    check,
    make,
    gateway_routes: crate::table::no_gateway_routes,
    leftovers,
    inspect,
    inspect_device,
};

/// `Port` of the `Backend` object (default 8285).
fn parse(config: &NetworkConfig) -> Result<u16, BackendError> {
    let bad = |message: String| BackendError::Config {
        backend: "UDP",
        message,
    };
    match config.backend.as_ref() {
        None | Some(Value::Null) => Ok(DEFAULT_PORT),
        Some(Value::Object(obj)) => {
            let mut port = DEFAULT_PORT;
            for (key, v) in obj {
                if key.eq_ignore_ascii_case("Port") {
                    port = v
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad(format!("Port: expected 1 to 65535, got {v}")))?;
                }
            }
            Ok(port)
        }
        Some(other) => Err(bad(format!("expected an object, got {other}"))),
    }
}

fn check(config: &NetworkConfig) -> Result<(), BackendError> {
    parse(config).map(|_| ())
}

fn mtu_of(ext: &ExtIface) -> Result<u32, BackendError> {
    ext.mtu
        .checked_sub(OVERHEAD)
        .filter(|m| *m >= 68)
        .ok_or_else(|| {
            BackendError::Device(format!(
                "MTU {} of iface {} is too small for udp mode to work",
                ext.mtu, ext.name
            ))
        })
}

/// Socket buffers that hold a burst of a fast TCP flow (the kernel's default, 208 KiB, drops
/// datagrams the data path has not read yet); as root past `net.core.rmem_max`. Best effort.
fn buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    const SIZE: usize = 4 << 20;
    for r in [
        setsockopt(socket, sockopt::RcvBufForce, &SIZE),
        setsockopt(socket, sockopt::SndBufForce, &SIZE),
    ] {
        if let Err(e) = r {
            debug!("udp socket buffers: {e}");
        }
    }
}

fn make(config: &NetworkConfig, node: NodeContext) -> Made<'_> {
    Box::pin(async move {
        let port = parse(config)?;
        if config.backend.is_none() {
            warn!("the network config has no \"Backend\": running the udp backend, as upstream does; add \"Backend\": {{\"Type\": \"vxlan\"}} for the kernel's data path");
        }
        if config.enable_ipv6 || !config.enable_ipv4 {
            return Err(BackendError::Device(
                "the udp backend carries IPv4 only, as upstream's: set EnableIPv4 and leave EnableIPv6 off".into(),
            ));
        }
        let mtu = mtu_of(&node.ext)?;
        // upstream listens on the interface's own address (PublicIP may be a NAT's)
        let bind = node.ext.first_ipv4().unwrap_or(node.public_ip);
        let socket = UdpSocket::bind(SocketAddrV4::new(bind, port))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .inspect(buffers)
            .map_err(|e| {
                BackendError::Device(format!(
                    "failed to start listening on UDP socket: {bind}:{port}: {e}"
                ))
            })?;
        let mut backend = UdpBackend {
            nl: node.nl,
            public_ip: node.public_ip,
            port,
            network: config.network,
            mtu,
            own: None,
            index: 0,
            socket: Arc::new(socket),
            device: None,
            proxy: None,
            shared: Arc::new(proxy::Shared::default()),
            peers: BTreeMap::new(),
            listed: false,
            stats: Arc::default(),
        };
        backend.stats = Arc::new(BackendStats {
            data_path: Some(backend.shared.stats.clone()),
            ..BackendStats::default()
        });
        let (file, _) = backend.open_device().await?;
        backend.device = Some(file);
        Ok(Box::new(backend) as Box<dyn Backend>)
    })
}

/// `flannel0` when the config names another backend (its route goes with it).
fn leftovers(l: Leaving<'_>) -> BoxFuture<'_, Result<(), BackendError>> {
    Box::pin(async move {
        if l.running {
            return Ok(());
        }
        if let Some(link) = l.node.nl.link_by_name(DEVICE).await? {
            if link.is_kind("tun") {
                info!("removing {DEVICE}, left by the udp backend");
                l.node.nl.delete_link(link.index).await?;
            }
        }
        Ok(())
    })
}

pub struct UdpBackend {
    nl: Netlink,
    public_ip: Ipv4Addr,
    port: u16,
    network: Ipv4Network,
    mtu: u32,
    /// This node's subnet, once acquired.
    own: Option<Ipv4Network>,
    /// The device's index (0 before it is made).
    index: u32,
    socket: Arc<UdpSocket>,
    /// The device opened at start, until the data path runs on it.
    device: Option<std::fs::File>,
    /// Running once the device has its address.
    proxy: Option<proxy::Proxy>,
    shared: Arc<proxy::Shared>,
    /// Where each peer's subnet goes: what the data path's table is made from.
    peers: BTreeMap<Ipv4Network, SocketAddrV4>,
    listed: bool,
    stats: Arc<BackendStats>,
}

impl UdpBackend {
    /// Opens (or makes) the TUN device and learns its index, MTU set; the number of things
    /// changed (a device made again).
    async fn open_device(&mut self) -> Result<(std::fs::File, usize), BackendError> {
        let file = tun::open(DEVICE)?;
        let link = self.nl.link_by_name(DEVICE).await?.ok_or_else(|| {
            BackendError::Device(format!("{DEVICE} vanished right after it was opened"))
        })?;
        let changed = usize::from(self.index != 0 && self.index != link.index);
        self.index = link.index;
        if link.mtu != self.mtu {
            info!(
                "current MTU of {DEVICE} is {}, setting it to {}",
                link.mtu, self.mtu
            );
            self.nl.set_link_mtu(link.index, self.mtu).await?;
        }
        Ok((file, changed))
    }

    /// Runs the data path on `file` (the one running before stops first).
    fn attach(&mut self, file: std::fs::File) -> Result<(), BackendError> {
        if let Some(old) = self.proxy.take() {
            old.stop();
        }
        let proxy =
            proxy::Proxy::start(file, self.socket.clone(), self.shared.clone(), self.mtu)
                .map_err(|e| BackendError::Device(format!("starting the udp data path: {e}")))?;
        self.proxy = Some(proxy);
        Ok(())
    }

    /// The device there (ours, a TUN), its MTU, address, up, and the Network's route through
    /// it; the number of things changed.
    async fn ensure_device(&mut self) -> Result<usize, BackendError> {
        let mut changed = 0;
        let link = match self.nl.link_by_name(DEVICE).await? {
            Some(l) if l.index == self.index && l.is_kind("tun") => l,
            _ => {
                warn!("{DEVICE} is gone or was replaced; making it again");
                let (file, _) = self.open_device().await?;
                self.attach(file)?;
                changed += 1;
                self.nl.link_by_name(DEVICE).await?.ok_or_else(|| {
                    BackendError::Device(format!("{DEVICE} vanished right after it was made"))
                })?
            }
        };
        if link.mtu != self.mtu {
            self.nl.set_link_mtu(link.index, self.mtu).await?;
            changed += 1;
        }
        let Some(own) = self.own else {
            return Ok(changed);
        };
        crate::own_address::ensure(
            &self.nl,
            link.index,
            DEVICE,
            IpNetwork::V4(self.network),
            IpNetwork::V4(own),
        )
        .await?;
        if !link.up {
            self.nl.set_link_up(link.index).await?;
            changed += 1;
        }
        let network = IpNetwork::V4(self.network);
        let present = self
            .nl
            .routes(Family::V4)
            .await?
            .iter()
            .any(|r| r.dst == network && r.gateway.is_none() && r.oif == Some(link.index));
        if !present {
            // explicitly, as upstream: a route for the network may already be there (Docker's)
            self.nl
                .replace_device_route(network, link.index, DeviceRouteScope::Global)
                .await?;
            changed += 1;
        }
        Ok(changed)
    }

    /// The data path's table from the peers.
    fn publish(&self) {
        self.shared
            .set_table(PeerTable::new(self.peers.iter(), self.listed));
        self.stats
            .peers
            .store(self.peers.len() as u64, Ordering::Relaxed);
    }

    /// Where `lease`'s packets go, or why nowhere.
    fn peer_for(&self, lease: &Lease) -> Result<(Ipv4Network, SocketAddrV4), Skip> {
        let kind = &lease.attrs.backend_type;
        if !(kind.is_empty() || BackendKind::Udp.is(kind)) {
            return Err(Skip::OtherType(kind.clone()));
        }
        let own = self
            .own
            .map(|s| (IpNetwork::V4(s), IpAddr::V4(self.public_ip)));
        let part = lease_check::check(lease, Family::V4, IpNetwork::V4(self.network), own)?;
        match (part.subnet, part.public_ip) {
            (IpNetwork::V4(subnet), IpAddr::V4(ip)) => {
                Ok((subnet, SocketAddrV4::new(ip, self.port)))
            }
            _ => Err(Skip::NoPart),
        }
    }
}

#[async_trait]
impl Reconciler for UdpBackend {
    async fn apply(&mut self, batch: &LeaseBatch) -> usize {
        self.listed |= batch.snapshot;
        for event in &batch.events {
            match event {
                LeaseEvent::Removed(lease) => {
                    if let Some(IpNetwork::V4(subnet)) = lease.subnet_of(Family::V4) {
                        if self.peers.remove(&subnet).is_some() {
                            // upstream's line
                            info!("Subnet removed: {subnet}");
                        }
                    }
                }
                LeaseEvent::Added(lease) => match self.peer_for(lease) {
                    Ok((subnet, to)) => {
                        if self.peers.insert(subnet, to) != Some(to) {
                            info!("Subnet added: {subnet}");
                        }
                    }
                    Err(Skip::Own | Skip::NoPart) => {}
                    Err(why) => {
                        match why {
                            Skip::OtherType(kind) => {
                                warn!("Ignoring non-udp subnet: type={kind}")
                            }
                            Skip::Invalid(why) | Skip::Unreachable(why) => {
                                warn!(subnet = %lease.key(), "ignoring lease: {why}")
                            }
                            Skip::Own | Skip::NoPart => {}
                        }
                        if let Some(IpNetwork::V4(s)) = lease.subnet_of(Family::V4) {
                            self.peers.remove(&s);
                        }
                    }
                },
            }
        }
        self.publish();
        0
    }

    async fn reconcile(&mut self) -> Result<usize, BackendError> {
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let changed = self.ensure_device().await?;
        if changed > 0 {
            self.stats
                .repairs
                .fetch_add(changed as u64, Ordering::Relaxed);
        }
        self.publish();
        Ok(changed)
    }

    fn is_damage(&self, event: &KernelEvent) -> bool {
        match event {
            KernelEvent::LinkDeleted { index } => *index == self.index,
            KernelEvent::LinkChanged { index, up } => *index == self.index && !up,
            KernelEvent::RouteDeleted { dst } => *dst == IpNetwork::V4(self.network),
            _ => false,
        }
    }

    fn listed(&self) -> bool {
        self.listed
    }
}

#[async_trait]
impl Backend for UdpBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Udp
    }

    /// `{"PublicIP":"…","PublicIPv6":null}`, as upstream: no BackendType.
    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::public_ip_only(self.public_ip, "")
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn stats(&self) -> Arc<BackendStats> {
        self.stats.clone()
    }

    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.own = match own.subnet_of(Family::V4) {
            Some(IpNetwork::V4(s)) => Some(s),
            _ => None,
        };
        let file = match self.device.take() {
            Some(file) => file,
            None => self.open_device().await?.0,
        };
        self.attach(file)?;
        self.ensure_device().await?;
        Ok(())
    }

    async fn run(
        self: Box<Self>,
        events: mpsc::Receiver<LeaseBatch>,
        synced: watch::Sender<bool>,
        resync: Duration,
    ) -> Result<(), BackendError> {
        info!("Watching for new subnet leases");
        crate::reconciler::serve(*self, events, synced, resync).await
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.stop();
        }
    }
}

/// doctor: `flannel0` (a TUN device, MTU, up) as far as the config tells.
fn inspect_device<'a>(
    _config: &'a NetworkConfig,
    nl: &'a Netlink,
    r: &'a mut Findings,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        crate::inspect::device_finding(nl, DEVICE, "tun", "a TUN device", None, r).await;
    })
}

/// doctor: the device and the Network's route through it; the peers are in the daemon's
/// memory, so only the leases it would take are counted. The MTU pods should get: the
/// interface's less 28.
fn inspect<'a>(n: &'a Inspect<'a>, r: &'a mut Findings) -> BoxFuture<'a, Option<u32>> {
    Box::pin(async move {
        let mtu = n.ext.mtu.saturating_sub(OVERHEAD);
        let index =
            crate::inspect::device_finding(n.nl, DEVICE, "tun", "a TUN device", Some(mtu), r)
                .await?;
        let network = IpNetwork::V4(n.config.network);
        match n.nl.routes(Family::V4).await {
            Ok(routes) if routes.iter().any(|rt| rt.dst == network && rt.oif == Some(index)) => {
                r.ok("routes", format!("{network} dev {DEVICE}"))
            }
            Ok(_) => r.fail(
                "routes",
                format!("no route {network} dev {DEVICE}"),
                "pod traffic to other nodes does not reach the udp data path; a running flanneld-rs adds it again within milliseconds",
            ),
            Err(e) => r.fail("routes", format!("listing the routes: {e}"), ""),
        }
        let own = n.lease.subnet_of(Family::V4);
        let peers = n
            .leases
            .iter()
            .filter(|l| l.subnet_of(Family::V4) != own)
            .filter(|l| {
                l.attrs.backend_type.is_empty() || BackendKind::Udp.is(&l.attrs.backend_type)
            })
            .count();
        r.ok(
            "peers",
            format!("{peers} udp peers in the leases (the data path's table is in flanneld-rs's memory)"),
        );
        Some(mtu)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backend: &str) -> NetworkConfig {
        NetworkConfig::parse(&format!(r#"{{"Network":"10.5.0.0/16"{backend}}}"#)).unwrap()
    }

    #[test]
    fn port_defaults_to_upstreams_and_is_checked() {
        assert_eq!(parse(&config("")).unwrap(), 8285);
        assert_eq!(
            parse(&config(r#","Backend":{"Type":"udp"}"#)).unwrap(),
            8285
        );
        assert_eq!(
            parse(&config(r#","Backend":{"Type":"udp","port":7890}"#)).unwrap(),
            7890
        );
        for bad in ["0", "70000", "\"8285\"", "-1", "1.5"] {
            let e = parse(&config(&format!(
                r#","Backend":{{"Type":"udp","Port":{bad}}}"#
            )))
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("error decoding UDP backend config: Port: expected 1 to 65535"),
                "{e}"
            );
        }
    }
}
