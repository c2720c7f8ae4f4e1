//! The plan that moves the kernel from what it holds ([`Observed`]) to the desired peers,
//! and its parts for one netlink call each. Pure: the kernel's entries come in as lists, the
//! plan goes out as lists.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::peers::Peer;
use crate::netlink::neighbour::{FdbEntry, NeighbourEntry};
use crate::netlink::nexthop::Nexthop;
use crate::netlink::route::Route;

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

/// Changes, to be done in this order (`Tunnel::execute` does): deletions (routes, FDB,
/// neighbours), then additions per peer (nexthop, neighbour, FDB, route: the route last, so
/// the kernel never ARPs for a gateway it should know), then the nexthop objects no route
/// needs any more (last: deleting a nexthop deletes the routes through it, and a route
/// switching to the classic form is replaced first).
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
    use crate::vxlan::peers::tests::{lease, peer_of, NET};
    use flannel_net::MacAddr;

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
