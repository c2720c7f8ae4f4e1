//! The `wireguard` backend (upstream `pkg/backend/wireguard` at v0.28.9): pod traffic
//! encrypted between nodes. A device per family in `Mode` `separate` (default):
//! `flannel-wg` (IPv4, `ListenPort` 51820) and `flannel-wg-v6` (IPv6, `ListenPortV6`
//! 51821); in `auto`, `ipv4`, `ipv6` one `flannel-wg` carries both. Each device holds this
//! node's subnet address (/32, /128), a route for the whole Network, and one peer per other
//! node: its public key, endpoint (public address and port), allowed IPs (its subnets),
//! `PersistentKeepaliveInterval` and `PSK`. MTU: the underlay's (`MTU`, else the
//! interface's) less 80, for the devices and FLANNEL_MTU.
//!
//! The lease: `BackendType` `wireguard`, `BackendData` `{"PublicKey":…,"Port":…}` for
//! IPv4 and `BackendV6Data` for IPv6, as v0.28 writes them (v0.20's form without `Port`
//! is read too). The key is this node's file ([`key`]).
//!
//! The kernel's module runs the devices; where the kernel has none, a userspace
//! implementation does ([`device`]). Unlike upstream, which re-creates its devices at start
//! and deletes them at exit, the devices and their peers survive a restart, and are
//! reconciled like every backend's kernel state ([`tunnel`]): peers set and removed per
//! lease event, in one request per batch; the whole device compared with the leases at
//! start, on a period and soon after the kernel reports the link or route deleted.

mod config;
mod device;
mod inspect;
pub mod key;
mod peers;
mod tunnel;
pub mod uapi;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{BackendKind, Lease, LeaseAttrs, LeaseBatch, LeaseEvent, NetworkConfig};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use config::{Mode, WireGuardConfig, OVERHEAD};

use crate::netlink::events::KernelEvent;
use crate::netlink::wireguard::Key;
use crate::netlink::{Family, Netlink};
use crate::reconciler::Reconciler;
use crate::side::{self, Side};
use crate::table::{Leaving, Made, Row};
use crate::{Backend, BackendError, BackendStats, NodeContext};
use tunnel::{NodeSelf, Tunnel};

/// The IPv4 device (and the one device of the single-device modes).
pub const DEVICE: &str = "flannel-wg";
/// The IPv6 device in `separate` mode.
pub const DEVICE_V6: &str = "flannel-wg-v6";

/// The table's row of WireGuard.
pub(crate) const ROW: Row = Row {
    kind: BackendKind::WireGuard,
    check,
    make,
    gateway_routes: crate::table::no_gateway_routes,
    leftovers,
    inspect: inspect::inspect,
    inspect_device: inspect::inspect_device,
};

fn check(config: &NetworkConfig) -> Result<(), BackendError> {
    WireGuardConfig::from_backend(config.backend.as_ref()).map(|_| ())
}

fn make(config: &NetworkConfig, node: NodeContext) -> Made<'_> {
    Box::pin(async move {
        let backend = WireGuardBackend::new(config, node).await?;
        Ok(Box::new(backend) as Box<dyn Backend>)
    })
}

/// The devices `config` uses, with the families each carries: one per family in
/// `separate` mode, else `flannel-wg` with all.
fn devices_of(cfg: &WireGuardConfig, sides: &[Side]) -> Vec<(&'static str, u16, Vec<Side>)> {
    match cfg.mode {
        Mode::Separate => sides
            .iter()
            .map(|s| match s.family {
                Family::V4 => (DEVICE, cfg.listen_port, vec![*s]),
                Family::V6 => (DEVICE_V6, cfg.listen_port_v6, vec![*s]),
            })
            .collect(),
        _ => vec![(DEVICE, cfg.listen_port, sides.to_vec())],
    }
}

/// The names of the devices `config` uses when WireGuard runs.
fn device_names(config: &NetworkConfig) -> Vec<&'static str> {
    let Ok(cfg) = WireGuardConfig::from_backend(config.backend.as_ref()) else {
        return Vec::new();
    };
    let (v4, v6) = side::networks(config);
    match cfg.mode {
        Mode::Separate => [(v4.is_some(), DEVICE), (v6.is_some(), DEVICE_V6)]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect(),
        _ => vec![DEVICE],
    }
}

/// WireGuard devices this config does not use (another backend runs; a family turned off;
/// the mode changed): deleted with their peers and routes (a userspace daemon ends with its
/// device).
fn leftovers(l: Leaving<'_>) -> BoxFuture<'_, Result<(), BackendError>> {
    Box::pin(async move {
        let keep = if l.running {
            device_names(l.config)
        } else {
            Vec::new()
        };
        for name in [DEVICE, DEVICE_V6] {
            if keep.contains(&name) {
                continue;
            }
            if let Some(link) = l.node.nl.link_by_name(name).await? {
                if link.is_kind("wireguard") || link.is_kind("tun") {
                    info!("removing {name}, left by the wireguard backend");
                    l.node.nl.delete_link(link.index).await?;
                }
            }
        }
        Ok(())
    })
}

pub struct WireGuardBackend {
    nl: Netlink,
    config: WireGuardConfig,
    private_key: Key,
    public_key: Key,
    public_ip: Ipv4Addr,
    public_ipv6: Option<std::net::Ipv6Addr>,
    sides: Vec<Side>,
    tunnels: Vec<Tunnel>,
    mtu: u32,
    listed: bool,
    stats: Arc<BackendStats>,
}

impl WireGuardBackend {
    /// The devices (kept or made) with this node's key from its key file.
    pub async fn new(config: &NetworkConfig, node: NodeContext) -> Result<Self, BackendError> {
        let cfg = WireGuardConfig::from_backend(config.backend.as_ref())?;
        let (network, network6) = side::networks(config);
        let sides = side::of_node(network, network6, &node)?;
        if cfg.mode == Mode::Ipv6 && node.public_ipv6.is_none() {
            return Err(BackendError::Device(
                "Mode \"ipv6\" reaches peers over IPv6, and this node has no IPv6 address (-public-ipv6)".into(),
            ));
        }
        let private_key = key::load_or_create(&key::key_file())?;
        let public_key = key::public_of(&private_key);
        let mtu = cfg.inner_mtu(node.ext.mtu);
        let mut tunnels = Vec::new();
        for (name, port, carried) in devices_of(&cfg, &sides) {
            tunnels.push(
                Tunnel::make(&node.nl, name, mtu, port, cfg.mode, carried, &private_key).await?,
            );
        }
        info!(
            "WireGuard: public key {}, devices {}",
            key::encode(&public_key),
            tunnels
                .iter()
                .map(|t| format!("{} (port {}, {})", t.name, t.port, t.control.describe()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(WireGuardBackend {
            nl: node.nl,
            config: cfg,
            private_key,
            public_key,
            public_ip: node.public_ip,
            public_ipv6: node.public_ipv6,
            sides,
            tunnels,
            mtu,
            listed: false,
            stats: Arc::default(),
        })
    }

    fn has(&self, family: Family) -> bool {
        self.sides.iter().any(|s| s.family == family)
    }

    fn count_peers(&self) {
        let count = |f: Family| {
            self.tunnels
                .iter()
                .flat_map(|t| t.desired.values())
                .filter(|(_, p)| p.allowed_ips.iter().any(|n| Family::of(n.ip()) == f))
                .count() as u64
        };
        self.stats.peers.store(count(Family::V4), Ordering::Relaxed);
        self.stats
            .peers_v6
            .store(count(Family::V6), Ordering::Relaxed);
    }
}

#[async_trait]
impl Reconciler for WireGuardBackend {
    async fn apply(&mut self, batch: &LeaseBatch) -> usize {
        self.listed |= batch.snapshot;
        let node = NodeSelf {
            public_key: &self.public_key,
            has_v4: self.has(Family::V4) && !self.public_ip.is_unspecified(),
            public_ipv6: self.public_ipv6,
            config: &self.config,
        };
        let mut failures = 0;
        for t in &mut self.tunnels {
            let mut changes = Vec::new();
            for event in &batch.events {
                match event {
                    LeaseEvent::Added(l) => t.apply(&node, l, true, &mut changes),
                    LeaseEvent::Removed(l) => t.apply(&node, l, false, &mut changes),
                }
            }
            if let Err(e) = t.send(changes).await {
                warn!("{e}");
                failures += 1;
            }
        }
        self.stats
            .errors
            .fetch_add(failures as u64, Ordering::Relaxed);
        self.count_peers();
        failures
    }

    async fn reconcile(&mut self) -> Result<usize, BackendError> {
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let mut changed = 0;
        for t in &mut self.tunnels {
            let index = t.index;
            changed += t
                .reconcile(&self.nl, &self.private_key, self.listed)
                .await?;
            if t.index != index {
                self.stats
                    .device_recreations
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if changed > 0 {
            self.stats
                .repairs
                .fetch_add(changed as u64, Ordering::Relaxed);
        }
        Ok(changed)
    }

    fn is_damage(&self, event: &KernelEvent) -> bool {
        let ours = |i: &u32| self.tunnels.iter().any(|t| t.index == *i);
        match event {
            KernelEvent::LinkDeleted { index } => ours(index),
            KernelEvent::LinkChanged { index, up } => !up && ours(index),
            KernelEvent::RouteDeleted { dst } => self.sides.iter().any(|s| s.network == *dst),
            KernelEvent::NeighbourDeleted { .. } | KernelEvent::NexthopDeleted { .. } => false,
        }
    }

    fn listed(&self) -> bool {
        self.listed
    }
}

#[async_trait]
impl Backend for WireGuardBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::WireGuard
    }

    /// As upstream: `BackendData` `{"PublicKey":…,"Port":ListenPort}` with IPv4,
    /// `BackendV6Data` `{"PublicKey":…,"Port":ListenPortV6}` with IPv6 (in the
    /// single-device modes the port the one device listens on), PublicIP 0.0.0.0 without
    /// IPv4.
    fn lease_attrs(&self) -> LeaseAttrs {
        let v6_port = match self.config.mode {
            Mode::Separate => self.config.listen_port_v6,
            _ => self.config.listen_port,
        };
        LeaseAttrs {
            public_ip: if self.has(Family::V4) {
                self.public_ip
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            public_ipv6: self.public_ipv6.filter(|_| self.has(Family::V6)),
            backend_type: BackendKind::WireGuard.name().into(),
            backend_data: self
                .has(Family::V4)
                .then(|| peers::data_value(&self.public_key, self.config.listen_port).into()),
            backend_v6_data: self
                .has(Family::V6)
                .then(|| peers::data_value(&self.public_key, v6_port).into()),
        }
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn stats(&self) -> Arc<BackendStats> {
        self.stats.clone()
    }

    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        let (v4, v6) = (self.public_ip, self.public_ipv6);
        let public = move |f: Family| match f {
            Family::V4 => IpAddr::V4(v4),
            Family::V6 => v6.map_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), IpAddr::V6),
        };
        for t in &mut self.tunnels {
            t.set_own(&self.nl, own, public).await?;
        }
        Ok(())
    }

    async fn run(
        self: Box<Self>,
        events: mpsc::Receiver<LeaseBatch>,
        synced: watch::Sender<bool>,
        resync: Duration,
    ) -> Result<(), BackendError> {
        crate::reconciler::serve(*self, events, synced, resync).await
    }
}
