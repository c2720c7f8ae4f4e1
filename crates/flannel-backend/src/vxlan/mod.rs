//! The VXLAN backend (upstream `pkg/backend/vxlan`), reconciled.
//!
//! [`VxlanBackend`] holds the desired peer set and makes the kernel match it:
//! - per lease event, only the entries of the peers that changed ([`VxlanBackend::apply`]);
//! - in full at start, every resync period, and soon after the kernel reports that something
//!   of ours was deleted ([`VxlanBackend::reconcile`]): list the entries on `flannel.<VNI>`,
//!   add what is missing, delete what no lease explains, re-create the device if it is gone.
//!
//! Many peers are programmed concurrently over one netlink socket (requests are pipelined),
//! each peer's own entries in upstream's order: ARP, FDB, route. The run loop around `apply` and
//! `reconcile` is the crate's `reconciler`, shared by every backend that programs the kernel.

pub mod config;
pub mod device;
mod peer_set;
pub mod peers;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{Lease, LeaseAttrs, LeaseBatch, LeaseEvent, VxlanBackendData};
use futures::StreamExt;
use ipnetwork::{IpNetwork, Ipv4Network};
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::RouteNetlinkMessage;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use config::VxlanConfig;
pub use device::Device;
use peer_set::PeerSet;
pub use peers::{Peer, Plan, Skip};

use crate::netlink::link::VxlanLinkSpec;
use crate::netlink::{neighbour, route, Family, Netlink};
use crate::reconciler::Reconciler;
use crate::{Backend, BackendError, BackendStats, ExtIface, NodeContext};

/// How many netlink requests are in flight at once when many peers change.
const PIPELINE_DEPTH: usize = 128;

pub struct VxlanBackend {
    nl: Netlink,
    config: VxlanConfig,
    network: Ipv4Network,
    ext: ExtIface,
    public_ip: Ipv4Addr,
    spec: VxlanLinkSpec,
    device: Device,
    /// This node's subnet, once the lease is acquired.
    own: Option<Ipv4Network>,
    peers: PeerSet,
    /// Valid leases left out because they overlap a peer's subnet (their routes and ARP
    /// entries would collide); each gets its turn when the peer in its way is removed.
    shadowed: BTreeMap<Ipv4Network, Lease>,
    /// Whether a complete listing of the leases has been applied. Until then the desired set
    /// is partial, and a full reconcile deletes nothing (a restart must not cut live peers).
    listed: bool,
    stats: Arc<BackendStats>,
}

impl VxlanBackend {
    /// Reads the backend config and makes sure the device exists (before the lease is
    /// acquired: its MAC goes into the lease). A device that must be made keeps the VTEP MAC
    /// of this node's previous lease, if it has one.
    pub async fn new(
        backend: Option<&Value>,
        network: Ipv4Network,
        node: NodeContext,
    ) -> Result<Self, BackendError> {
        let NodeContext {
            nl,
            ext,
            public_ip,
            previous_lease,
        } = node;
        let mac_hint = previous_lease
            .and_then(|l| l.attrs.vxlan_data()?.ok())
            .map(|d| d.vtep_mac);
        let config = VxlanConfig::from_backend(backend)?;
        info!(
            "VXLAN config: VNI={} Port={} GBP={} Learning={} DirectRouting={}",
            config.vni, config.port, config.gbp, config.learning, config.direct_routing
        );
        // the underlay is IPv4: the lease's PublicIP (an IPv6 underlay comes with PublicIPv6)
        let mtu = config
            .mtu
            .unwrap_or(ext.mtu)
            .saturating_sub(config::encap_overhead(Family::V4))
            .max(68);
        let spec = VxlanLinkSpec {
            name: config.device_name(),
            vni: config.vni,
            underlay_index: ext.index,
            local: IpAddr::V4(public_ip),
            port: config.port,
            learning: config.learning,
            gbp: config.gbp,
            mtu,
        };
        let device = device::ensure_device(&nl, &spec, mac_hint).await?;
        info!(device = %device.name, vtep_mac = %device.mac, mtu = device.mtu, "VXLAN device ready");
        Ok(VxlanBackend {
            nl,
            config,
            network,
            ext,
            public_ip,
            spec,
            device,
            own: None,
            peers: PeerSet::default(),
            shadowed: BTreeMap::new(),
            listed: false,
            stats: Arc::default(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The peers currently desired.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Gives the device this node's address (`<subnet>.0/32`), removing other addresses of the
    /// flannel network from it (upstream v0.10 crashlooped on those, #1060), and brings it up.
    pub async fn set_own_lease(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.own = Some(own.subnet);
        if self.peers.remove(&IpNetwork::V4(own.subnet)).is_some() {
            self.stats
                .peers
                .store(self.peers.len() as u64, Ordering::Relaxed);
        }
        self.ensure_address().await?;
        self.nl.set_link_up(self.device.index).await
    }

    async fn ensure_address(&self) -> Result<(), BackendError> {
        let Some(own) = self.own else { return Ok(()) };
        let want = IpNetwork::V4(
            Ipv4Network::new(own.network(), 32).map_err(|e| BackendError::Device(e.to_string()))?,
        );
        let mut present = false;
        for addr in self.nl.addresses(self.device.index, Family::V4).await? {
            if addr == want {
                present = true;
            } else if IpNetwork::V4(self.network).contains(addr.ip()) {
                info!("removing stale address {addr} from {}", self.device.name);
                self.nl.del_address(self.device.index, addr).await?;
            }
        }
        if !present {
            self.nl.add_address(self.device.index, want).await?;
        }
        Ok(())
    }

    fn own_identity(&self) -> Option<(Ipv4Network, Ipv4Addr)> {
        self.own.map(|s| (s, self.public_ip))
    }

    /// Applies lease changes to the desired set and programs exactly the difference; after a
    /// batch that completes a listing, full reconciles may delete what no lease explains.
    /// Returns the number of netlink operations that failed (the next reconcile retries them).
    pub async fn apply(&mut self, batch: &LeaseBatch) -> usize {
        self.listed |= batch.snapshot;
        let mut plan = Plan::default();
        let index = self.device.index;
        let removed = batch.events.iter().filter_map(|e| match e {
            LeaseEvent::Removed(l) => Some(l),
            LeaseEvent::Added(_) => None,
        });
        let added = batch.events.iter().filter_map(|e| match e {
            LeaseEvent::Added(l) => Some(l),
            LeaseEvent::Removed(_) => None,
        });
        let any_removed = removed.clone().next().is_some();
        for lease in removed {
            self.shadowed.remove(&lease.subnet);
            if let Some(old) = self.peers.remove(&IpNetwork::V4(lease.subnet)) {
                debug!(subnet = %old.subnet, public_ip = %old.public_ip, "removing peer");
                plan.del_routes.push(old.route(index));
                plan.del_fdb.extend(old.fdb());
                plan.del_neighbours.extend(old.neighbour().map(|a| a.ip));
            }
        }
        // leases shadowed by a peer that is gone now get their turn
        let unshadowed: Vec<Lease> = if !any_removed {
            Vec::new()
        } else {
            self.shadowed
                .values()
                .filter(|l| self.peers.overlapping(IpNetwork::V4(l.subnet)).is_none())
                .cloned()
                .collect()
        };
        for lease in added.chain(&unshadowed) {
            let peer = match peers::peer_from_lease(
                lease,
                self.network,
                self.own_identity(),
                self.config.direct_routing,
                &self.ext,
            ) {
                Ok(peer) => peer,
                Err(Skip::OtherType(kind)) => {
                    info!(
                        "ignoring non-vxlan v4Subnet({}) v6Subnet({}): type={kind}",
                        lease.subnet,
                        lease
                            .ipv6_subnet
                            .map_or("::/0".to_string(), |s| s.to_string())
                    );
                    continue;
                }
                Err(Skip::Own) => continue,
                Err(Skip::Invalid(why)) => {
                    warn!(subnet = %lease.subnet, "ignoring lease: {why}");
                    continue;
                }
            };
            if let Some(other) = self.peers.overlapping(peer.subnet) {
                warn!(subnet = %lease.subnet, "ignoring lease: overlaps the lease of subnet {other}; programmed when that one is gone");
                self.shadowed.insert(lease.subnet, lease.clone());
                continue;
            }
            self.shadowed.remove(&lease.subnet);
            info!("Received Subnet Event with VxLan: {}", lease.attrs);
            let old = self.peers.insert(peer);
            if old == Some(peer) {
                continue;
            }
            if let Some(old) = old {
                // Changed MAC or PublicIP: the old FDB entry would leak (upstream does leak it).
                if old.fdb().is_some() && old.fdb() != peer.fdb() {
                    plan.del_fdb.extend(old.fdb());
                }
                if old.neighbour().is_some() && peer.neighbour().is_none() {
                    plan.del_neighbours.extend(old.neighbour().map(|a| a.ip));
                }
            }
            debug!(subnet = %peer.subnet, public_ip = %peer.public_ip, vtep_mac = %peer.mac, "adding peer");
            plan.add.push(peers::PeerChange {
                neighbour: peer.neighbour(),
                fdb: peer.fdb(),
                route: Some(peer.route(index)),
            });
        }
        self.stats
            .peers
            .store(self.peers.len() as u64, Ordering::Relaxed);
        self.execute(plan).await
    }

    /// Makes the kernel match the desired set: device, address, and every peer entry.
    /// Returns the number of entries it had to add or delete.
    pub async fn reconcile(&mut self) -> Result<usize, BackendError> {
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let link = self.nl.link_by_index(self.device.index).await?;
        let device_ok = link
            .as_ref()
            .is_some_and(|l| l.name == self.device.name && l.kind.as_deref() == Some("vxlan"));
        if !device_ok {
            warn!(
                "Interface {} deleted; re-creating it with VTEP MAC {}",
                self.device.name, self.device.mac
            );
            self.device =
                device::ensure_device(&self.nl, &self.spec, Some(self.device.mac)).await?;
            self.stats
                .device_recreations
                .fetch_add(1, Ordering::Relaxed);
        } else if link.is_some_and(|l| !l.up) {
            self.nl.set_link_up(self.device.index).await?;
        }
        self.ensure_address().await?;
        let index = self.device.index;
        let observed = peers::Observed {
            // IPv4: what the leases' IPv4 part asks for (their IPv6 part is not read yet)
            neighbours: self.nl.neighbour_entries(index, Family::V4).await?,
            fdb: self.nl.fdb_entries(index).await?,
            routes: self.nl.routes(Family::V4).await?,
        };
        let mut plan = peers::plan(
            self.peers.by_subnet(),
            &observed,
            index,
            IpNetwork::V4(self.network),
            self.config.direct_routing,
        );
        if !self.listed {
            // The desired set is not known yet: what looks stale may be a live peer's.
            plan.keep_stale();
        }
        let size = plan.size();
        if size > 0 {
            info!(
                "reconcile: {} stale routes, {} stale FDB, {} stale ARP entries to delete; {} peers to (re)program",
                plan.del_routes.len(),
                plan.del_fdb.len(),
                plan.del_neighbours.len(),
                plan.add.len()
            );
            self.stats.repairs.fetch_add(size as u64, Ordering::Relaxed);
        }
        let errors = self.execute(plan).await;
        if errors > 0 {
            return Err(BackendError::Device(format!(
                "{errors} netlink operations failed during reconcile"
            )));
        }
        Ok(size)
    }

    /// Runs a plan: deletions (routes, FDB, ARP), then each peer's additions (ARP, FDB,
    /// route), many peers at a time. Returns the number of failures, each logged.
    async fn execute(&self, plan: Plan) -> usize {
        let index = self.device.index;
        let nl = &self.nl;
        let mut failures = 0;
        let mut count = |results: Vec<Result<(), BackendError>>| {
            for r in results {
                if let Err(e) = r {
                    warn!("{e}");
                    failures += 1;
                }
            }
        };
        count(run_all(plan.del_routes.into_iter().map(|r| nl.del_route(r))).await);
        count(run_all(plan.del_fdb.into_iter().map(|f| nl.del_fdb(index, f))).await);
        count(
            run_all(
                plan.del_neighbours
                    .into_iter()
                    .map(|ip| nl.del_neighbour(index, ip)),
            )
            .await,
        );
        count(
            run_all(plan.add.into_iter().map(|change| async move {
                if let Some(neighbour) = change.neighbour {
                    nl.replace_neighbour(index, neighbour).await?;
                }
                if let Some(fdb) = change.fdb {
                    if let Err(e) = nl.replace_fdb(index, fdb).await {
                        // upstream: without the FDB entry the ARP entry is no use
                        if let Some(neighbour) = change.neighbour {
                            let _ = nl.del_neighbour(index, neighbour.ip).await;
                        }
                        return Err(e);
                    }
                }
                if let Some(route) = change.route {
                    nl.replace_route(route).await?;
                }
                Ok(())
            }))
            .await,
        );
        self.stats
            .errors
            .fetch_add(failures as u64, Ordering::Relaxed);
        failures
    }

    /// Whether a kernel notification says that something we want was deleted or disabled.
    fn is_damage(&self, msg: &RouteNetlinkMessage) -> bool {
        let index = self.device.index;
        match msg {
            RouteNetlinkMessage::DelLink(l) => l.header.index == index,
            RouteNetlinkMessage::NewLink(l) => {
                l.header.index == index && !l.header.flags.contains(LinkFlags::Up)
            }
            RouteNetlinkMessage::DelRoute(r) => {
                route::destination_of(r).is_some_and(|dst| self.peers.contains(&dst))
            }
            RouteNetlinkMessage::DelNeighbour(n) if n.header.ifindex == index => {
                let Some(ip) = neighbour::ip_of(n) else {
                    return false;
                };
                let mac = neighbour::mac_of(n);
                self.peers.needs_neighbour(ip, mac)
                    || mac.is_some_and(|m| self.peers.needs_fdb(m, ip))
            }
            _ => false,
        }
    }
}

#[async_trait]
impl Reconciler for VxlanBackend {
    async fn apply(&mut self, batch: &LeaseBatch) -> usize {
        VxlanBackend::apply(self, batch).await
    }

    async fn reconcile(&mut self) -> Result<usize, BackendError> {
        VxlanBackend::reconcile(self).await
    }

    fn is_damage(&self, msg: &RouteNetlinkMessage) -> bool {
        VxlanBackend::is_damage(self, msg)
    }

    fn listed(&self) -> bool {
        self.listed
    }
}

#[async_trait]
impl Backend for VxlanBackend {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::vxlan(
            self.public_ip,
            &VxlanBackendData {
                vni: Some(self.config.vni),
                vtep_mac: self.device.mac,
            },
        )
    }

    /// The device's MTU.
    fn mtu(&self) -> u32 {
        self.device.mtu
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

/// Runs the futures with at most [`PIPELINE_DEPTH`] in flight.
async fn run_all<F>(futures: impl Iterator<Item = F>) -> Vec<Result<(), BackendError>>
where
    F: std::future::Future<Output = Result<(), BackendError>>,
{
    futures::stream::iter(futures)
        .buffer_unordered(PIPELINE_DEPTH)
        .collect::<Vec<_>>()
        .await
}
