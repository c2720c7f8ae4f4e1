//! host-gw's routes, pure: a lease's route, the one test of a route of host-gw's shape, and
//! the plan that makes the kernel's routes the desired ones. The backend's run loop and
//! doctor both use them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use flannel_net::{BackendKind, Lease};
use ipnetwork::IpNetwork;

use crate::lease_check::{self, Skip};
use crate::netlink::route::Route;
use crate::netlink::Family;
use crate::ExtIface;

/// `<subnet> via <PublicIP> dev <external interface>` for `lease`'s side in `family`, or why
/// it gets none. `own` is this node's subnet and address in that family.
pub(crate) fn route_for(
    lease: &Lease,
    family: Family,
    network: IpNetwork,
    own: Option<(IpNetwork, IpAddr)>,
    ext: &ExtIface,
) -> Result<Route, Skip> {
    if !BackendKind::HostGw.is(&lease.attrs.backend_type) {
        return Err(Skip::OtherType(lease.attrs.backend_type.clone()));
    }
    let part = lease_check::check(lease, family, network, own)?;
    let gateway = part.public_ip;
    if !ext.on_link(gateway) {
        return Err(Skip::Unreachable(format!(
            "PublicIP {gateway} is not on the segment of {}: host-gw needs every node on one L2 segment, so no route is added",
            ext.name
        )));
    }
    Ok(Route {
        dst: part.subnet,
        gateway: Some(gateway),
        oif: Some(ext.index),
        onlink: false,
        nhid: None,
    })
}

/// Whether a kernel route has host-gw's shape: on the external interface `ext`, via a
/// gateway, to a subnet inside `network` longer than the network. The one test of "this
/// route is flannel's to manage" for every backend that makes such routes (host-gw, VXLAN's
/// DirectRouting), for their leftovers and for doctor.
pub fn is_gateway_route(route: &Route, network: IpNetwork, ext: u32) -> bool {
    route.oif == Some(ext)
        && route.gateway.is_some()
        && Family::of(route.dst.ip()) == Family::of(network.ip())
        && network.contains(route.dst.network())
        && route.dst.prefix() > network.prefix()
}

/// The routes to delete and to add that make `observed` (the kernel's routes of host-gw's
/// shape) the `desired` ones. Before the first complete listing (`listed` false) nothing is
/// deleted: the desired set is partial, and what looks stale may be a live peer's.
pub(crate) fn plan(
    desired: &BTreeMap<IpNetwork, Route>,
    observed: &[Route],
    listed: bool,
) -> (Vec<Route>, Vec<Route>) {
    let delete = if listed {
        observed
            .iter()
            .filter(|r| desired.get(&r.dst) != Some(r))
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    let add = desired
        .values()
        .filter(|want| !observed.contains(want))
        .copied()
        .collect();
    (delete, add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            onlink: false,
            nhid: None,
        }
    }

    #[test]
    fn the_plan_deletes_only_once_listed_and_never_what_is_wanted() {
        let a = route("10.200.2.0/24", "192.168.77.2", 2);
        let b = route("10.200.3.0/24", "192.168.77.3", 2);
        let moved = route("10.200.3.0/24", "192.168.77.9", 2);
        let stale = route("10.200.9.0/24", "192.168.77.9", 2);
        let desired: BTreeMap<_, _> = [(a.dst, a), (b.dst, b)].into_iter().collect();
        let observed = [a, moved, stale];
        assert_eq!(
            plan(&desired, &observed, true),
            (vec![moved, stale], vec![b])
        );
        assert_eq!(plan(&desired, &observed, false), (vec![], vec![b]));
        assert_eq!(plan(&desired, &[a, b], true), (vec![], vec![]));
    }

    #[test]
    fn a_gateway_route_is_on_the_interface_inside_the_network_and_longer() {
        let net: IpNetwork = "10.200.0.0/16".parse().unwrap();
        assert!(is_gateway_route(
            &route("10.200.2.0/24", "192.168.77.2", 2),
            net,
            2
        ));
        assert!(!is_gateway_route(
            &route("10.200.2.0/24", "192.168.77.2", 3),
            net,
            2
        ));
        assert!(!is_gateway_route(
            &route("10.200.0.0/16", "192.168.77.2", 2),
            net,
            2
        ));
        assert!(!is_gateway_route(
            &route("172.16.0.0/24", "192.168.77.2", 2),
            net,
            2
        ));
        let net6: IpNetwork = "fd00:200::/56".parse().unwrap();
        assert!(!is_gateway_route(
            &route("10.200.2.0/24", "192.168.77.2", 2),
            net6,
            2
        ));
        let mut onlink = route("10.200.2.0/24", "192.168.77.2", 2);
        onlink.gateway = None;
        assert!(!is_gateway_route(&onlink, net, 2));
    }
}
