//! One side of the VXLAN backend: the device of one address family (`flannel.<VNI>` for
//! IPv4, `flannel-v6.<VNI>` for IPv6) and, per remote node with a subnet of that family, its
//! neighbour (ARP / NDP), FDB and onlink route entries. [`super::VxlanBackend`] holds one
//! tunnel per enabled family and hands each every lease event.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use flannel_net::{Lease, LeaseBatch, LeaseEvent, MacAddr};
use ipnetwork::IpNetwork;
use tracing::{debug, info, warn};

use super::config::{self, VxlanConfig};
use super::device::{self, Device};
use super::peer_set::PeerSet;
use super::peers::{self, Skip};
use super::plan::{self, Plan};
use crate::netlink::events::KernelEvent;
use crate::netlink::link::VxlanLinkSpec;
use crate::netlink::nexthop::Nexthop;
use crate::netlink::request::Request;
use crate::netlink::route::Route;
use crate::netlink::{Family, Netlink, NetlinkError};
use crate::side::Side;
use crate::{BackendError, BackendStats, ExtIface};

/// Peers whose entries go to the kernel in one bulk call ([`Netlink::send_all`]).
const PEERS_PER_CALL: usize = 256;

/// What makes one family's tunnel: its Network, this node's address (the VTEP's local
/// address) and the MAC it advertised before, if any.
pub struct Tunnel {
    pub(super) family: Family,
    nl: Netlink,
    config: VxlanConfig,
    network: IpNetwork,
    ext: ExtIface,
    public_ip: IpAddr,
    spec: VxlanLinkSpec,
    pub(super) device: Device,
    /// This node's subnet of this family, once the lease is acquired.
    own: Option<IpNetwork>,
    pub(super) peers: PeerSet,
    /// Valid leases left out because they overlap a peer's subnet (their routes and
    /// neighbour entries would collide); each gets its turn when the peer in its way goes.
    shadowed: BTreeMap<IpNetwork, Arc<Lease>>,
    /// Nexthop ids other programs hold (as of the last reconcile): never replaced; a peer
    /// whose id is among them keeps a classic route.
    foreign_nexthops: HashSet<u32>,
    stats: Arc<BackendStats>,
}

impl Tunnel {
    /// Makes sure the device exists, keeping `mac_hint` (what this node advertised before)
    /// when it has to be made.
    pub(super) async fn new(
        side: Side,
        mac_hint: Option<MacAddr>,
        nl: Netlink,
        config: VxlanConfig,
        ext: ExtIface,
        stats: Arc<BackendStats>,
    ) -> Result<Self, BackendError> {
        let Side {
            family,
            network,
            public_ip,
        } = side;
        let name = config.device_name_of(family);
        if name.len() > 15 {
            return Err(BackendError::Config {
                backend: "VXLAN",
                message: format!(
                    "VNI {}: the device name {name} would be longer than the 15 characters an interface name may have; with IPv6 use a VNI below 10000",
                    config.vni
                ),
            });
        }
        let mtu = config
            .mtu
            .unwrap_or(ext.mtu)
            .saturating_sub(config::encap_overhead(family))
            .max(68);
        let spec = VxlanLinkSpec {
            name,
            vni: config.vni,
            underlay_index: ext.index,
            local: public_ip,
            port: config.port,
            learning: config.learning,
            gbp: config.gbp,
            mtu,
        };
        let device = device::ensure_device(&nl, &spec, mac_hint).await?;
        info!(device = %device.name, vtep_mac = %device.mac, mtu = device.mtu, "VXLAN device ready");
        Ok(Tunnel {
            family,
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
            foreign_nexthops: HashSet::new(),
            stats,
        })
    }

    /// Gives the device this node's address (the subnet's network address, /32 or /128),
    /// removing other addresses of the flannel network from it (upstream v0.10 crashlooped on
    /// those, #1060), and brings it up.
    pub(super) async fn set_own(&mut self, own: IpNetwork) -> Result<(), BackendError> {
        self.own = Some(own);
        self.peers.remove(&own);
        self.ensure_address().await?;
        Ok(self.nl.set_link_up(self.device.index).await?)
    }

    async fn ensure_address(&self) -> Result<(), BackendError> {
        let Some(own) = self.own else { return Ok(()) };
        let d = &self.device;
        crate::own_address::ensure(&self.nl, d.index, &d.name, self.network, own).await
    }

    fn own_identity(&self) -> Option<(IpNetwork, IpAddr)> {
        self.own.map(|s| (s, self.public_ip))
    }

    /// Applies lease changes to the desired set and programs exactly the difference, a call
    /// per [`PEERS_PER_CALL`] added peers as they are planned. Returns the number of netlink
    /// operations that failed (the next reconcile retries them).
    pub(super) async fn apply(&mut self, batch: &LeaseBatch) -> usize {
        let mut plan = Plan::default();
        let mut failures = 0;
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
            let Some(subnet) = lease.subnet_of(self.family) else {
                continue;
            };
            self.shadowed.remove(&subnet);
            if let Some(old) = self.peers.remove(&subnet) {
                debug!(subnet = %old.subnet, public_ip = %old.public_ip, "removing peer");
                let (nexthop, route) = self.entries_of(&old);
                plan.del_routes.push(route);
                plan.del_nexthops.extend(nexthop.map(|n| n.id));
                plan.del_fdb.extend(old.fdb());
                plan.del_neighbours.extend(old.neighbour().map(|a| a.ip));
            }
        }
        // leases shadowed by a peer that is gone now get their turn
        let unshadowed: Vec<Arc<Lease>> = if !any_removed {
            Vec::new()
        } else {
            self.shadowed
                .iter()
                .filter(|(s, _)| self.peers.overlapping(**s).is_none())
                .map(|(_, l)| l.clone())
                .collect()
        };
        for lease in added.chain(&unshadowed) {
            let peer = match peers::peer_from_lease(
                lease,
                self.family,
                self.network,
                self.own_identity(),
                self.config.direct_routing,
                &self.ext,
            ) {
                Ok(peer) => peer,
                Err(Skip::OtherType(kind)) => {
                    // one line per lease, from the first side only
                    if self.family == Family::V4 || !lease.has_ipv4() {
                        info!(
                            "ignoring non-vxlan v4Subnet({}) v6Subnet({}): type={kind}",
                            lease.subnet,
                            lease
                                .ipv6_subnet
                                .map_or("::/0".to_string(), |s| s.to_string())
                        );
                    }
                    continue;
                }
                Err(Skip::Own | Skip::NoPart) => continue,
                Err(Skip::Invalid(why) | Skip::Unreachable(why)) => {
                    warn!(subnet = %lease.key(), "ignoring lease: {why}");
                    continue;
                }
            };
            if let Some(other) = self.peers.overlapping(peer.subnet) {
                warn!(subnet = %peer.subnet, "ignoring lease: overlaps the lease of subnet {other}; programmed when that one is gone");
                self.shadowed.insert(peer.subnet, lease.clone());
                continue;
            }
            self.shadowed.remove(&peer.subnet);
            if self.family == Family::V4 || !lease.has_ipv4() {
                info!("Received Subnet Event with VxLan: {}", lease.attrs);
            }
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
            let (nexthop, route) = self.entries_of(&peer);
            plan.add.push(plan::PeerChange {
                neighbour: peer.neighbour(),
                fdb: peer.fdb(),
                nexthop,
                route: Some(route),
            });
            if plan.add.len() == PEERS_PER_CALL {
                // a cold start's thousands of peers go to the kernel a call at a time as
                // they are read, never all planned at once
                failures += self.execute(plan.split_off_call()).await;
            }
        }
        failures + self.execute(plan).await
    }

    /// A peer's nexthop object (when routes go through them and its id is free) and route.
    fn entries_of(&self, peer: &peers::Peer) -> (Option<Nexthop>, Route) {
        let index = self.device.index;
        let nexthop = if self.nl.uses_nexthops() {
            peer.nexthop(index)
                .filter(|n| !self.foreign_nexthops.contains(&n.id))
        } else {
            None
        };
        let route = nexthop.map_or_else(|| peer.route(index), |n| peer.route_via(n.id));
        (nexthop, route)
    }

    /// Makes the kernel match the desired set: device, address, and every peer entry;
    /// deletes nothing unless `listed`. Returns the number of entries it had to add or delete.
    pub(super) async fn reconcile(&mut self, listed: bool) -> Result<usize, BackendError> {
        let link = self.nl.link_by_index(self.device.index).await?;
        let device_ok = link
            .as_ref()
            .is_some_and(|l| l.name == self.device.name && l.is_vxlan());
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
            if self.own.is_some() {
                self.nl.set_link_up(self.device.index).await?;
            }
        } else if link.is_some_and(|l| !l.up) {
            self.nl.set_link_up(self.device.index).await?;
        }
        self.ensure_address().await?;
        let index = self.device.index;
        let observed = plan::Observed {
            neighbours: self.nl.neighbour_entries(index, self.family).await?,
            fdb: self.nl.fdb_entries(index).await?,
            routes: self.nl.routes(self.family).await?,
            nexthops: self.nl.nexthops().await?,
        };
        self.foreign_nexthops = observed
            .nexthops
            .iter()
            .filter(|n| n.oif != index)
            .map(|n| n.id)
            .collect();
        let mut plan = plan::plan(
            self.peers.by_subnet(),
            observed,
            index,
            self.network,
            self.config.direct_routing.then_some(self.ext.index),
            self.nl.uses_nexthops(),
        );
        if !listed {
            // The desired set is not known yet: what looks stale may be a live peer's.
            plan.keep_stale();
        }
        let size = plan.size();
        if size > 0 {
            info!(
                "reconcile {}: {} stale routes, {} stale FDB, {} stale {} entries, {} stale nexthops to delete; {} peers to (re)program",
                self.device.name,
                plan.del_routes.len(),
                plan.del_fdb.len(),
                plan.del_neighbours.len(),
                match self.family {
                    Family::V4 => "ARP",
                    Family::V6 => "NDP",
                },
                plan.del_nexthops.len(),
                plan.add.len()
            );
            self.stats.repairs.fetch_add(size as u64, Ordering::Relaxed);
        }
        let errors = self.execute(plan).await;
        if errors > 0 {
            return Err(BackendError::Device(format!(
                "{errors} netlink operations failed during reconcile of {}",
                self.device.name
            )));
        }
        Ok(size)
    }

    /// Runs a plan in bulk calls, in this order: deletions (routes, FDB, ARP), each peer's
    /// additions (nexthop, ARP, FDB, route), the nexthops no peer uses. A lease event is one
    /// call; a cold start's peers go a few hundred to a call, so that thousands are never
    /// all encoded at once. Returns the number of failures, each logged.
    async fn execute(&self, mut plan: Plan) -> usize {
        let index = self.device.index;
        let nl = &self.nl;
        let mut failures = 0;
        let mut count = |results: &mut dyn Iterator<Item = Result<(), NetlinkError>>| {
            for r in results {
                if let Err(e) = r {
                    warn!("{e}");
                    failures += 1;
                }
            }
        };
        plan.spare_reused_nexthops();
        let mut deletions: Vec<Request> = plan
            .del_routes
            .into_iter()
            .map(Request::DelRoute)
            .chain(
                plan.del_fdb
                    .into_iter()
                    .map(|entry| Request::DelFdb { index, entry }),
            )
            .chain(
                plan.del_neighbours
                    .into_iter()
                    .map(|ip| Request::DelNeighbour { index, ip }),
            )
            .collect();
        // deleting a nexthop deletes the routes through it: last
        let mut del_nexthops = plan.del_nexthops;
        let mut calls: Vec<&[plan::PeerChange]> = plan.add.chunks(PEERS_PER_CALL).collect();
        if calls.is_empty() {
            calls.push(&[]);
        }
        let last = calls.len() - 1;
        let mut orphaned_neighbours = Vec::new();
        for (call, changes) in calls.into_iter().enumerate() {
            let mut requests = std::mem::take(&mut deletions);
            let deleted = requests.len();
            requests.reserve(changes.len() * 4);
            for change in changes {
                requests.extend(change.nexthop.map(Request::Nexthop));
                requests.extend(
                    change
                        .neighbour
                        .map(|entry| Request::Neighbour { index, entry }),
                );
                requests.extend(change.fdb.map(|entry| Request::Fdb { index, entry }));
                requests.extend(change.route.map(Request::Route));
            }
            if call == last {
                requests.extend(del_nexthops.drain(..).map(Request::DelNexthop));
            }
            if requests.is_empty() {
                continue;
            }
            let mut results = nl.send_all(requests).await.into_iter();
            count(&mut results.by_ref().take(deleted));
            for change in changes {
                let mut next = |present: bool| if present { results.next() } else { None };
                let nexthop = next(change.nexthop.is_some());
                let neighbour = next(change.neighbour.is_some());
                let fdb = next(change.fdb.is_some());
                let route = next(change.route.is_some());
                // upstream: without the FDB entry the ARP entry is no use
                if matches!(fdb, Some(Err(_))) {
                    orphaned_neighbours.extend(change.neighbour.map(|n| n.ip));
                }
                count(&mut [nexthop, neighbour, fdb, route].into_iter().flatten());
            }
            count(&mut results);
        }
        if !orphaned_neighbours.is_empty() {
            let requests = orphaned_neighbours
                .into_iter()
                .map(|ip| Request::DelNeighbour { index, ip })
                .collect();
            nl.send_all(requests).await;
        }
        self.stats
            .errors
            .fetch_add(failures as u64, Ordering::Relaxed);
        failures
    }

    /// Whether a kernel notification says that something we want was deleted or disabled.
    pub(super) fn is_damage(&self, event: &KernelEvent) -> bool {
        let device = self.device.index;
        match *event {
            KernelEvent::LinkDeleted { index } => index == device,
            KernelEvent::LinkChanged { index, up } if index == device => !up,
            // DirectRouting's routes through the external interface were flushed while it was
            // down, without a route notification: put back once it is up
            KernelEvent::LinkChanged { index, up } => {
                up && index == self.ext.index && self.peers.values().any(|p| p.direct)
            }
            KernelEvent::RouteDeleted { dst } => self.peers.contains(&dst),
            KernelEvent::NeighbourDeleted { index, ip, mac } if index == device => {
                let Some(ip) = ip else {
                    return false;
                };
                self.peers.needs_neighbour(ip, mac)
                    || mac.is_some_and(|m| self.peers.needs_fdb(m, ip))
            }
            KernelEvent::NeighbourDeleted { .. } => false,
            // the routes through it went with it, unannounced
            KernelEvent::NexthopDeleted { id } => self.peers.has_nexthop(id),
        }
    }
}
