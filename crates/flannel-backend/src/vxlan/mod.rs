//! The VXLAN backend (upstream `pkg/backend/vxlan`), reconciled, for IPv4, IPv6 or both.
//!
//! One `Tunnel` per enabled family: `flannel.<VNI>` carries IPv4 pod traffic over the
//! PublicIP, `flannel-v6.<VNI>` IPv6 pod traffic over the PublicIPv6, each with its own VTEP
//! MAC (the lease's `BackendData` and `BackendV6Data`). Each holds the desired peer set of its
//! family and makes the kernel match it:
//! - per lease event, only the entries of the peers that changed (`Reconciler::apply`);
//! - in full at start, every resync period, and soon after the kernel reports that something
//!   of ours was deleted (`Reconciler::reconcile`): list the entries on the device, add what
//!   is missing, delete what no lease explains, re-create the device if it is gone.
//!
//! A peer's entries (nexthop object, ARP, FDB, route; a removal in the reverse order) go to
//! the kernel together, in bulk with other peers' (flannel-netlink's requests: a lease event
//! is one system call, a cold start one per 128 requests). The run loop around `apply` and
//! `reconcile` is the crate's `reconciler`, shared by every backend that programs the
//! kernel.

pub mod config;
pub mod device;
mod inspect;
mod peer_set;
pub mod peers;
pub mod plan;
mod tunnel;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::netlink::events::KernelEvent;
use async_trait::async_trait;
use flannel_net::{BackendKind, Lease, LeaseAttrs, LeaseBatch, NetworkConfig, VxlanBackendData};
use futures::future::BoxFuture;
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::info;

pub use config::VxlanConfig;
pub use device::Device;
pub use peers::{Peer, Skip};
pub use plan::Plan;
use tunnel::Tunnel;

use crate::netlink::Family;
use crate::reconciler::Reconciler;
use crate::side;
use crate::table::{Leaving, Made, Row};
use crate::{Backend, BackendError, BackendStats, NodeContext};

/// The table's row of VXLAN.
pub(crate) const ROW: Row = Row {
    kind: BackendKind::Vxlan,
    check,
    make,
    gateway_routes: direct_routing,
    leftovers,
    inspect: inspect::inspect,
    inspect_device: inspect::inspect_device,
};

fn check(config: &NetworkConfig) -> Result<(), BackendError> {
    VxlanConfig::from_backend(config.backend.as_ref()).map(|_| ())
}

fn make(config: &NetworkConfig, node: NodeContext) -> Made<'_> {
    Box::pin(async move {
        info!(
            "VXLAN peer routes: {}",
            if node.nl.uses_nexthops() {
                "through nexthop objects (-nexthop-objects)"
            } else {
                "classic onlink routes"
            }
        );
        let (network, network6) = side::networks(config);
        let backend =
            VxlanBackend::new_dual(config.backend.as_ref(), network, network6, node).await?;
        Ok(Box::new(backend) as Box<dyn Backend>)
    })
}

/// With DirectRouting, peers on the same segment get routes of host-gw's shape.
fn direct_routing(config: &NetworkConfig) -> bool {
    VxlanConfig::from_backend(config.backend.as_ref()).is_ok_and(|c| c.direct_routing)
}

/// What VXLAN left: `flannel.<VNI>` and `flannel-v6.<VNI>` devices, with every entry on
/// them, when the config names another backend; still running, the same VNI's device of a
/// family the config no longer enables (another VNI's device is left alone: it may be
/// another flannel network's). A device is ours by name and kind.
fn leftovers(l: Leaving<'_>) -> BoxFuture<'_, Result<(), BackendError>> {
    Box::pin(async move {
        let config = l.config;
        let running = if l.running {
            Some(VxlanConfig::from_backend(config.backend.as_ref())?)
        } else {
            None
        };
        let unused = |name: &str| match &running {
            None => ["flannel.", "flannel-v6."].iter().any(|p| {
                name.strip_prefix(p)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            }),
            Some(c) => {
                (!config.enable_ipv4 && name == c.device_name())
                    || (!config.enable_ipv6 && name == c.device_name_v6())
            }
        };
        for link in l.node.nl.links().await? {
            if unused(&link.name) && link.is_vxlan() {
                info!(
                    "removing {}, left by the vxlan backend (the network config now asks for {}, IPv4 {}, IPv6 {})",
                    link.name,
                    config.backend_type,
                    if config.enable_ipv4 { "on" } else { "off" },
                    if config.enable_ipv6 { "on" } else { "off" }
                );
                l.node.nl.delete_link(link.index).await?;
            }
        }
        Ok(())
    })
}

pub struct VxlanBackend {
    config: VxlanConfig,
    public_ip: Ipv4Addr,
    public_ipv6: Option<Ipv6Addr>,
    /// One per enabled family, IPv4 first.
    tunnels: Vec<Tunnel>,
    /// Whether a complete listing of the leases has been applied. Until then the desired set
    /// is partial, and a full reconcile deletes nothing (a restart must not cut live peers).
    listed: bool,
    stats: Arc<BackendStats>,
}

impl VxlanBackend {
    /// IPv4 only: [`VxlanBackend::new_dual`] with the IPv4 network alone.
    pub async fn new(
        backend: Option<&Value>,
        network: Ipv4Network,
        node: NodeContext,
    ) -> Result<Self, BackendError> {
        Self::new_dual(backend, Some(network), None, node).await
    }

    /// Reads the backend config and makes sure the device of each family with a network
    /// exists (before the lease is acquired: their MACs go into the lease). A device that
    /// must be made keeps the VTEP MAC of this node's previous lease, if it has one.
    pub async fn new_dual(
        backend: Option<&Value>,
        network: Option<Ipv4Network>,
        network6: Option<Ipv6Network>,
        node: NodeContext,
    ) -> Result<Self, BackendError> {
        let config = VxlanConfig::from_backend(backend)?;
        let sides = side::of_node(network, network6, &node)?;
        let NodeContext {
            nl,
            ext,
            public_ip,
            public_ipv6,
            previous_lease,
        } = node;
        info!(
            "VXLAN config: VNI={} Port={} GBP={} Learning={} DirectRouting={}",
            config.vni, config.port, config.gbp, config.learning, config.direct_routing
        );
        let stats = Arc::<BackendStats>::default();
        let mut tunnels = Vec::new();
        for side in sides {
            // a device that must be made keeps the MAC this node advertised before
            let data = previous_lease.as_ref().and_then(|l| match side.family {
                Family::V4 => l.attrs.vxlan_data(),
                Family::V6 => l.attrs.vxlan_v6_data(),
            });
            let mac_hint = data.and_then(Result::ok).map(|d| d.vtep_mac);
            let t = Tunnel::new(
                side,
                mac_hint,
                nl.clone(),
                config.clone(),
                ext.clone(),
                stats.clone(),
            );
            tunnels.push(t.await?);
        }
        Ok(VxlanBackend {
            config,
            public_ip,
            public_ipv6,
            tunnels,
            listed: false,
            stats,
        })
    }

    fn tunnel(&self, family: Family) -> Option<&Tunnel> {
        self.tunnels.iter().find(|t| t.family == family)
    }

    /// The IPv4 device (`flannel.<VNI>`); with IPv6 only, the IPv6 one (there is always
    /// one: [`VxlanBackend::new_dual`] refuses to make none).
    pub fn device(&self) -> &Device {
        &self.tunnels[0].device
    }

    /// The IPv6 device (`flannel-v6.<VNI>`), when IPv6 is enabled.
    pub fn device_v6(&self) -> Option<&Device> {
        self.tunnel(Family::V6).map(|t| &t.device)
    }

    /// The peers currently desired, IPv4 side first.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.tunnels.iter().flat_map(|t| t.peers.values())
    }

    fn count_peers(&self) {
        for t in &self.tunnels {
            let n = t.peers.len() as u64;
            match t.family {
                Family::V4 => self.stats.peers.store(n, Ordering::Relaxed),
                Family::V6 => self.stats.peers_v6.store(n, Ordering::Relaxed),
            }
        }
    }

    /// Gives each device this node's address in its family and brings it up.
    pub async fn set_own_lease(&mut self, own: &Lease) -> Result<(), BackendError> {
        for t in &mut self.tunnels {
            let subnet = own.subnet_of(t.family).ok_or_else(|| {
                BackendError::Device(format!(
                    "this node's lease {} has no subnet for {}",
                    own.key(),
                    t.device.name
                ))
            })?;
            t.set_own(subnet).await?;
        }
        self.count_peers();
        Ok(())
    }
}

#[async_trait]
impl Reconciler for VxlanBackend {
    /// Applies lease changes to every family's desired set and programs exactly the
    /// difference; after a batch that completes a listing, full reconciles may delete what no
    /// lease explains. Returns the number of netlink operations that failed.
    async fn apply(&mut self, batch: &LeaseBatch) -> usize {
        self.listed |= batch.snapshot;
        let mut failures = 0;
        for t in &mut self.tunnels {
            failures += t.apply(batch).await;
        }
        self.count_peers();
        failures
    }

    /// Makes the kernel match the desired sets. Returns the number of entries changed.
    async fn reconcile(&mut self) -> Result<usize, BackendError> {
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let mut size = 0;
        let mut first_error = None;
        for t in &mut self.tunnels {
            match t.reconcile(self.listed).await {
                Ok(n) => size += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(size),
        }
    }

    fn is_damage(&self, event: &KernelEvent) -> bool {
        self.tunnels.iter().any(|t| t.is_damage(event))
    }

    fn listed(&self) -> bool {
        self.listed
    }
}

#[async_trait]
impl Backend for VxlanBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }

    /// `BackendData` for the IPv4 side, `BackendV6Data` for the IPv6 side; an IPv6-only
    /// lease has PublicIP 0.0.0.0 and no `BackendData`, as upstream writes it.
    fn lease_attrs(&self) -> LeaseAttrs {
        let data = |t: &Tunnel| VxlanBackendData {
            vni: Some(self.config.vni),
            vtep_mac: t.device.mac,
        };
        let v4 = self.tunnel(Family::V4);
        let mut attrs = match v4 {
            Some(t) => LeaseAttrs::vxlan(self.public_ip, &data(t)),
            None => {
                LeaseAttrs::vxlan(Ipv4Addr::UNSPECIFIED, &data(&self.tunnels[0])).without_ipv4()
            }
        };
        if let (Some(t), Some(ip)) = (self.tunnel(Family::V6), self.public_ipv6) {
            attrs = attrs.with_ipv6(ip, Some(data(t).to_value()));
        }
        attrs
    }

    /// FLANNEL_MTU: the smallest of the devices' MTUs, so that a pod's packet of full size
    /// fits the tunnel of either family (upstream writes the IPv4 device's, 20 bytes too many
    /// for IPv6).
    fn mtu(&self) -> u32 {
        self.tunnels
            .iter()
            .map(|t| t.device.mtu)
            .min()
            .unwrap_or(1450)
    }

    fn stats(&self) -> Arc<BackendStats> {
        self.stats.clone()
    }

    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.set_own_lease(own).await
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
