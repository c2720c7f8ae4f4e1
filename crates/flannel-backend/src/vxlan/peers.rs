//! The desired kernel state for the other nodes, and the plan that moves the kernel there.
//! Pure: the kernel's entries come in as lists, the plan goes out as lists.

use std::collections::BTreeMap;
use std::net::IpAddr;

use flannel_net::{BackendKind, Lease, MacAddr};
use ipnetwork::IpNetwork;

use crate::netlink::neighbour::{FdbEntry, NeighbourEntry};
use crate::netlink::nexthop::Nexthop;
use crate::netlink::route::Route;
use crate::ExtIface;

/// A remote node as the data path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub subnet: IpNetwork,
    pub public_ip: IpAddr,
    pub mac: MacAddr,
    /// DirectRouting and on the same L2: a plain route via the PublicIP, no ARP or FDB entry.
    pub direct: bool,
}

impl Peer {
    /// The peer's VTEP address: its subnet's network address (`10.5.34.0`).
    pub fn gateway(&self) -> IpAddr {
        self.subnet.network()
    }

    /// The permanent ARP (IPv4) or NDP (IPv6) entry of its VTEP address.
    pub fn neighbour(&self) -> Option<NeighbourEntry> {
        (!self.direct).then_some(NeighbourEntry {
            ip: self.gateway(),
            mac: self.mac,
        })
    }

    pub fn fdb(&self) -> Option<FdbEntry> {
        (!self.direct).then_some(FdbEntry {
            mac: self.mac,
            dst: self.public_ip,
        })
    }

    /// `<subnet> via <subnet>.0 dev flannel.<VNI> onlink`, or `<subnet> via <PublicIP>`.
    pub fn route(&self, device: u32) -> Route {
        if self.direct {
            Route {
                dst: self.subnet,
                gateway: Some(self.public_ip),
                oif: None,
                onlink: false,
                nhid: None,
            }
        } else {
            Route {
                dst: self.subnet,
                gateway: Some(self.gateway()),
                oif: Some(device),
                onlink: true,
                nhid: None,
            }
        }
    }
}

impl Peer {
    /// The nexthop object its route goes through when peer routes use them: VTEP peers whose
    /// gateway gives an id (IPv4; see [`nexthop_id`]).
    pub fn nexthop(&self, device: u32) -> Option<Nexthop> {
        if self.direct {
            return None;
        }
        Some(Nexthop {
            id: nexthop_id(self.gateway())?,
            gateway: self.gateway(),
            oif: device,
            onlink: true,
        })
    }

    /// `<subnet> nhid <id>`.
    pub fn route_via(&self, id: u32) -> Route {
        Route {
            dst: self.subnet,
            gateway: None,
            oif: None,
            onlink: false,
            nhid: Some(id),
        }
    }
}

pub use crate::lease_check::Skip;
use crate::netlink::Family;

/// The id of the nexthop to a peer's IPv4 gateway (its subnet's network address): the
/// address itself, unique per peer and readable in `ip nexthop` (`id 180879616` is
/// 10.200.0.0... as a number). IPv6 gateways have no such id: their routes stay classic,
/// which costs them nothing (the kernel's IPv6 onlink routes do not get dearer with their
/// number: benches/README.md).
pub fn nexthop_id(gateway: IpAddr) -> Option<u32> {
    match gateway {
        IpAddr::V4(a) => Some(u32::from(a)).filter(|id| *id != 0),
        IpAddr::V6(_) => None,
    }
}

/// Checks a lease from etcd and makes its `family` side a peer. `own` is this node's subnet
/// and public address in that family.
pub fn peer_from_lease(
    lease: &Lease,
    family: Family,
    network: IpNetwork,
    own: Option<(IpNetwork, IpAddr)>,
    direct_routing: bool,
    ext: &ExtIface,
) -> Result<Peer, Skip> {
    let attrs = &lease.attrs;
    if !BackendKind::Vxlan.is(&attrs.backend_type) {
        return Err(Skip::OtherType(attrs.backend_type.clone()));
    }
    let part = crate::lease_check::check(lease, family, network, own)?;
    let data = match family {
        Family::V4 => attrs.vxlan_data(),
        Family::V6 => attrs.vxlan_v6_data(),
    };
    let data = match data {
        Some(Ok(data)) => data,
        Some(Err(e)) => return Err(Skip::Invalid(e.to_string())),
        None => return Err(Skip::OtherType(attrs.backend_type.clone())),
    };
    Ok(Peer {
        subnet: part.subnet,
        public_ip: part.public_ip,
        mac: data.vtep_mac,
        direct: direct_routing && ext.on_link(part.public_ip),
    })
}

/// What the kernel holds that flannel may own: entries on the device, and (for
/// DirectRouting) routes inside the flannel network that go via a gateway elsewhere.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub neighbours: Vec<NeighbourEntry>,
    pub fdb: Vec<FdbEntry>,
    pub routes: Vec<Route>,
    /// Every nexthop object of the namespace (ours are those on the device; the others'
    /// ids are never taken).
    pub nexthops: Vec<Nexthop>,
}

/// Changes, to be done in this order: deletions (routes, FDB, neighbours), then additions per
/// peer (neighbour, FDB, nexthop, route: the route last, so the kernel never ARPs for a
/// gateway it should know), then the nexthop objects no route needs any more (last: deleting
/// a nexthop deletes the routes through it, and a route switching to the classic form is
/// replaced first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub del_routes: Vec<Route>,
    pub del_fdb: Vec<FdbEntry>,
    pub del_neighbours: Vec<IpAddr>,
    pub add: Vec<PeerChange>,
    pub del_nexthops: Vec<u32>,
}

/// The entries one peer is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChange {
    pub neighbour: Option<NeighbourEntry>,
    pub fdb: Option<FdbEntry>,
    pub nexthop: Option<Nexthop>,
    pub route: Option<Route>,
}

impl Plan {
    /// Drops the deletions, keeping the additions (while the desired set is partial).
    pub fn keep_stale(&mut self) {
        self.del_routes.clear();
        self.del_fdb.clear();
        self.del_neighbours.clear();
        self.del_nexthops.clear();
    }

    /// The part of the plan that can go now: its deletions and additions. The nexthops to
    /// delete stay for the last part (deleting a nexthop deletes the routes through it),
    /// less those the additions taken now use again.
    pub fn split_off_call(&mut self) -> Plan {
        self.spare_reused_nexthops();
        Plan {
            del_routes: std::mem::take(&mut self.del_routes),
            del_fdb: std::mem::take(&mut self.del_fdb),
            del_neighbours: std::mem::take(&mut self.del_neighbours),
            add: std::mem::take(&mut self.add),
            del_nexthops: Vec::new(),
        }
    }

    /// Keeps the nexthops an addition uses again off the deletions: a subnet removed and
    /// added in one batch (a dual-stack lease whose other family changed) keeps its
    /// nexthop, the new peer's too.
    pub fn spare_reused_nexthops(&mut self) {
        let add = &self.add;
        self.del_nexthops
            .retain(|id| !add.iter().any(|c| c.nexthop.is_some_and(|n| n.id == *id)));
    }

    pub fn is_empty(&self) -> bool {
        self.del_routes.is_empty()
            && self.del_fdb.is_empty()
            && self.del_neighbours.is_empty()
            && self.del_nexthops.is_empty()
            && self.add.is_empty()
    }

    /// The number of kernel entries this plan adds or deletes.
    pub fn size(&self) -> usize {
        self.del_routes.len()
            + self.del_fdb.len()
            + self.del_neighbours.len()
            + self.del_nexthops.len()
            + self
                .add
                .iter()
                .map(|c| {
                    usize::from(c.neighbour.is_some())
                        + usize::from(c.fdb.is_some())
                        + usize::from(c.nexthop.is_some())
                        + usize::from(c.route.is_some())
                })
                .sum::<usize>()
    }
}

/// Whether a kernel route is flannel's to manage: on the device, or, with DirectRouting
/// (`direct_routing`: the external interface's index), one of host-gw's shape.
pub fn is_flannel_route(
    route: &Route,
    device: u32,
    network: IpNetwork,
    direct_routing: Option<u32>,
) -> bool {
    route.oif == Some(device)
        || direct_routing.is_some_and(|ext| crate::hostgw::is_gateway_route(route, network, ext))
}

fn same_route(have: &Route, want: &Route) -> bool {
    if want.nhid.is_some() {
        return have.dst == want.dst && have.nhid == want.nhid;
    }
    have.nhid.is_none()
        && have.dst == want.dst
        && have.gateway == want.gateway
        && have.onlink == want.onlink
        && (want.oif.is_none() || have.oif == want.oif)
}

/// The plan that makes `observed` equal to `desired`; peer routes through nexthop objects
/// when `use_nexthops` (a peer whose id another program's nexthop holds keeps a classic route).
/// `direct_routing`: the external interface's index when DirectRouting is on.
///
/// The observed lists are sorted in place and every question is a binary search or a look
/// in `desired`: no hash table beside them (at 5 000 peers, eight of those were most of the
/// memory a reconcile needed, and the peak of the whole start).
pub fn plan(
    desired: &BTreeMap<IpNetwork, Peer>,
    mut observed: Observed,
    device: u32,
    network: IpNetwork,
    direct_routing: Option<u32>,
    use_nexthops: bool,
) -> Plan {
    let mut plan = Plan::default();
    observed.nexthops.sort_unstable_by_key(|n| n.id);
    observed.neighbours.sort_unstable();
    observed.fdb.sort_unstable();
    observed.routes.sort_unstable();
    let Observed {
        neighbours,
        fdb,
        routes,
        nexthops,
    } = &observed;
    let nexthop = |id: u32| {
        nexthops
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &nexthops[i])
    };
    let ours = |id: u32| nexthop(id).filter(|n| n.oif == device);
    // a peer's nexthop (if any) and route
    let want = |p: &Peer| {
        let nh = if use_nexthops {
            p.nexthop(device)
                .filter(|n| nexthop(n.id).is_none_or(|have| have.oif == device))
        } else {
            None
        };
        let route = nh.map_or_else(|| p.route(device), |n| p.route_via(n.id));
        (nh, route)
    };
    let mut wanted_ids: Vec<u32> = desired
        .values()
        .filter_map(|p| want(p).0.map(|n| n.id))
        .collect();
    wanted_ids.sort_unstable();
    plan.del_nexthops = nexthops
        .iter()
        .filter(|n| n.oif == device && wanted_ids.binary_search(&n.id).is_err())
        .map(|n| n.id)
        .collect();
    let mut want_fdb: Vec<FdbEntry> = desired.values().filter_map(Peer::fdb).collect();
    want_fdb.sort_unstable();

    for route in routes {
        let through_ours = route.nhid.is_some_and(|id| ours(id).is_some());
        if !through_ours && !is_flannel_route(route, device, network, direct_routing) {
            continue;
        }
        let wanted = desired
            .get(&route.dst)
            .is_some_and(|p| same_route(route, &want(p).1));
        if !wanted {
            plan.del_routes.push(*route);
        }
    }
    plan.del_fdb = fdb
        .iter()
        .filter(|f| want_fdb.binary_search(f).is_err())
        .copied()
        .collect();
    plan.del_neighbours = neighbours
        .iter()
        .filter(|a| !super::peer_set::needs_neighbour(desired, a.ip, None))
        .map(|a| a.ip)
        .collect();

    let has_route = |want: &Route| {
        let from = routes.partition_point(|r| r.dst < want.dst);
        routes[from..]
            .iter()
            .take_while(|r| r.dst == want.dst)
            .any(|r| same_route(r, want))
    };
    for peer in desired.values() {
        let (nexthop, route) = want(peer);
        let change = PeerChange {
            neighbour: peer
                .neighbour()
                .filter(|a| neighbours.binary_search(a).is_err()),
            fdb: peer.fdb().filter(|f| fdb.binary_search(f).is_err()),
            nexthop: nexthop.filter(|n| ours(n.id) != Some(n)),
            route: (!has_route(&route)).then_some(route),
        };
        if change != PeerChange::default() {
            plan.add.push(change);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_net::{Expiration, LeaseAttrs, VxlanBackendData};

    fn ext() -> ExtIface {
        ExtIface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addresses: vec!["192.168.77.1/24".parse().unwrap()],
        }
    }

    fn lease(subnet: &str, ip: &str, mac: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(
                ip.parse().unwrap(),
                &VxlanBackendData {
                    vni: Some(1),
                    vtep_mac: mac.parse().unwrap(),
                },
            ),
            expiration: Expiration::Unknown,
        }
    }

    const NET: &str = "10.200.0.0/16";

    fn peer_of(l: &Lease) -> Result<Peer, Skip> {
        peer_from_lease(
            l,
            Family::V4,
            NET.parse().unwrap(),
            Some((
                "10.200.90.0/24".parse().unwrap(),
                "192.168.77.1".parse().unwrap(),
            )),
            false,
            &ext(),
        )
    }

    #[test]
    fn the_nexthop_id_of_an_ipv4_gateway_is_the_address() {
        assert_eq!(nexthop_id("10.200.2.0".parse().unwrap()), Some(0x0ac8_0200));
        assert_eq!(nexthop_id("0.0.0.0".parse().unwrap()), None);
        assert_eq!(nexthop_id("fd00::".parse().unwrap()), None);
    }

    #[test]
    fn entries_match_upstream_form() {
        let p = peer_of(&lease("10.200.2.0/24", "192.168.77.2", "6a:02:fc:e4:63:47")).unwrap();
        assert_eq!(
            p.neighbour().unwrap().ip,
            "10.200.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            p.fdb().unwrap().dst,
            "192.168.77.2".parse::<IpAddr>().unwrap()
        );
        let r = p.route(3);
        assert_eq!(r.gateway, Some("10.200.2.0".parse().unwrap()));
        assert!(r.onlink);
        assert_eq!(r.oif, Some(3));
    }

    #[test]
    fn bad_and_foreign_leases_are_skipped() {
        let mac = "6a:02:fc:e4:63:47";
        assert_eq!(
            peer_of(&lease("10.200.90.0/24", "192.168.77.1", mac)),
            Err(Skip::Own)
        );
        let mut hostgw = lease("10.200.3.0/24", "192.168.77.3", mac);
        hostgw.attrs.backend_type = "host-gw".into();
        assert_eq!(peer_of(&hostgw), Err(Skip::OtherType("host-gw".into())));
        for (l, why) in [
            (
                lease("10.200.90.0/24", "192.168.77.9", mac),
                "claims this node's subnet",
            ),
            (lease("10.200.90.0/25", "192.168.77.9", mac), "overlaps"),
            (
                lease("10.201.1.0/24", "192.168.77.9", mac),
                "outside the network",
            ),
            (
                lease("10.200.0.0/15", "192.168.77.9", mac),
                "outside the network",
            ),
            (lease("10.200.4.0/24", "0.0.0.0", mac), "cannot be a VTEP"),
            (
                lease("10.200.4.0/24", "10.200.7.7", mac),
                "inside the overlay",
            ),
        ] {
            match peer_of(&l) {
                Err(Skip::Invalid(msg)) => assert!(msg.contains(why), "{msg} / {why}"),
                other => panic!("{other:?} for {why}"),
            }
        }
        let mut no_mac = lease("10.200.4.0/24", "192.168.77.4", mac);
        no_mac.attrs.backend_data = Some(serde_json::json!({"VNI": 1}).into());
        assert!(matches!(peer_of(&no_mac), Err(Skip::Invalid(_))));
    }

    #[test]
    fn direct_routing_only_on_the_same_l2() {
        let l = lease("10.200.2.0/24", "192.168.77.2", "6a:02:fc:e4:63:47");
        let p = peer_from_lease(&l, Family::V4, NET.parse().unwrap(), None, true, &ext()).unwrap();
        assert!(p.direct);
        assert!(p.neighbour().is_none() && p.fdb().is_none());
        assert_eq!(p.route(3).gateway, Some("192.168.77.2".parse().unwrap()));
        let far = lease("10.200.3.0/24", "192.168.99.3", "6a:02:fc:e4:63:48");
        assert!(
            !peer_from_lease(&far, Family::V4, NET.parse().unwrap(), None, true, &ext())
                .unwrap()
                .direct
        );
    }

    #[test]
    fn plan_adds_missing_and_deletes_stale_and_old_macs() {
        let net: IpNetwork = NET.parse().unwrap();
        let a = peer_of(&lease("10.200.2.0/24", "192.168.77.2", "6a:02:fc:e4:63:47")).unwrap();
        let b = peer_of(&lease("10.200.3.0/24", "192.168.77.3", "2a:c1:a4:5c:d1:7b")).unwrap();
        let desired: BTreeMap<_, _> = [(a.subnet, a), (b.subnet, b)].into_iter().collect();
        let stale = peer_of(&lease("10.200.9.0/24", "192.168.77.9", "02:00:00:00:00:09")).unwrap();
        let old_mac_fdb = FdbEntry {
            mac: MacAddr([2, 0, 0, 0, 0, 0x47]),
            dst: a.public_ip,
        };
        let foreign_route = Route {
            dst: "172.16.0.0/16".parse().unwrap(),
            gateway: Some("192.168.77.254".parse().unwrap()),
            oif: Some(2),
            onlink: false,
            nhid: None,
        };
        let observed = Observed {
            neighbours: vec![a.neighbour().unwrap(), stale.neighbour().unwrap()],
            fdb: vec![a.fdb().unwrap(), old_mac_fdb, stale.fdb().unwrap()],
            routes: vec![a.route(3), stale.route(3), foreign_route],
            nexthops: vec![],
        };
        let p = plan(&desired, observed, 3, net, Some(2), false);
        assert_eq!(
            p.del_routes,
            vec![stale.route(3)],
            "foreign routes are never touched"
        );
        let mut del_fdb = p.del_fdb.clone();
        del_fdb.sort_by_key(|f| f.mac);
        assert_eq!(del_fdb, vec![stale.fdb().unwrap(), old_mac_fdb]);
        assert_eq!(p.del_neighbours, vec![stale.gateway()]);
        assert_eq!(
            p.add,
            vec![PeerChange {
                neighbour: b.neighbour(),
                fdb: b.fdb(),
                nexthop: None,
                route: Some(b.route(3))
            }]
        );
        assert_eq!(p.size(), 7);
        // once applied, nothing left to do
        let done = Observed {
            neighbours: vec![a.neighbour().unwrap(), b.neighbour().unwrap()],
            fdb: vec![a.fdb().unwrap(), b.fdb().unwrap()],
            routes: vec![a.route(3), b.route(3), foreign_route],
            nexthops: vec![],
        };
        assert!(plan(&desired, done, 3, net, Some(2), false).is_empty());
    }

    #[test]
    fn a_part_split_off_takes_the_deletions_and_leaves_the_nexthops_for_the_last() {
        let a = peer_of(&lease("10.200.2.0/24", "192.168.77.2", "6a:02:fc:e4:63:47")).unwrap();
        let gone = peer_of(&lease("10.200.9.0/24", "192.168.77.9", "02:00:00:00:00:09")).unwrap();
        let reused = a.nexthop(3).unwrap();
        let mut plan = Plan {
            del_routes: vec![gone.route(3)],
            del_fdb: vec![gone.fdb().unwrap()],
            del_neighbours: vec![gone.gateway()],
            add: vec![PeerChange {
                nexthop: Some(reused),
                route: Some(a.route_via(reused.id)),
                ..PeerChange::default()
            }],
            del_nexthops: vec![reused.id, gone.nexthop(3).unwrap().id],
        };
        let part = plan.split_off_call();
        assert_eq!(part.del_routes, vec![gone.route(3)]);
        assert_eq!(part.del_fdb.len() + part.del_neighbours.len(), 2);
        assert_eq!(part.add.len(), 1);
        assert!(part.del_nexthops.is_empty(), "nexthops go last");
        // the nexthop the part's addition uses again is no longer deleted
        assert_eq!(plan.del_nexthops, vec![gone.nexthop(3).unwrap().id]);
        assert!(plan.add.is_empty() && plan.del_routes.is_empty());
    }
}
