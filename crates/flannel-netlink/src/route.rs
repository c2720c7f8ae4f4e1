//! Routes of the main table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::RouteMessageBuilder;

use crate::error::{gone_is_ok, nl_err};
use crate::NetlinkError;
use crate::{dump, Family, Netlink};

const MAIN_TABLE: u32 = 254;

/// A unicast route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    /// `nhid <id>`: through a nexthop object ([`super::nexthop`]); the gateway and device are
    /// the nexthop's (a listing shows them too, in the kernel's compatibility mode).
    pub nhid: Option<u32>,
}

/// The scope of a route through a device ([`Netlink::replace_device_route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRouteScope {
    /// `scope link`: the destination is on the device's link.
    Link,
    /// `scope global` (`ip route` prints no scope).
    Global,
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// The destination of a route message, if it is an IP route.
pub(crate) fn destination_of(msg: &RouteMessage) -> Option<IpNetwork> {
    let dst = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => ip_of(d),
        _ => None,
    })?;
    IpNetwork::new(dst, msg.header.destination_prefix_length).ok()
}

fn parse(msg: &RouteMessage, family: Family) -> Option<Route> {
    // a cached exception (a path MTU learnt for one address, `ip route show cache`) is the
    // kernel's, not a route of the table
    if msg.header.kind != RouteType::Unicast || msg.header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let unspecified = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut dst = unspecified;
    let mut gateway = None;
    let mut oif = None;
    let mut nhid = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::NhId(id) => nhid = Some(*id),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip_of(a).unwrap_or(dst),
            RouteAttribute::Gateway(a) => gateway = ip_of(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != MAIN_TABLE || Family::of(dst) != family {
        return None;
    }
    Some(Route {
        dst: IpNetwork::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        nhid,
    })
}

/// `blackhole <dst>`: what `ip route replace` sends (proto boot, scope universe) or `ip route
/// del` (any protocol, scope nowhere).
fn blackhole_message(
    dst: IpNetwork,
    protocol: RouteProtocol,
    scope: RouteScope,
) -> Result<RouteMessage, NetlinkError> {
    let mut msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix())
        .map_err(|e| NetlinkError::other(format!("blackhole route {dst}"), e.to_string()))?
        .protocol(protocol)
        .kind(RouteType::BlackHole)
        .build();
    msg.header.scope = scope;
    Ok(msg)
}

/// A route message for `route` with the given protocol (`replace` and `del` differ there).
fn message(route: &Route, protocol: RouteProtocol) -> Result<RouteMessage, NetlinkError> {
    fn invalid<E: std::fmt::Display>(route: &Route) -> impl FnOnce(E) -> NetlinkError + '_ {
        move |e| NetlinkError::other(format!("route to {}", route.dst), e.to_string())
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix())
        .map_err(invalid(route))?
        .protocol(protocol);
    if let Some(id) = route.nhid {
        // the nexthop object holds gateway, device and flags: the kernel refuses them here,
        // and matches a deletion by the id alone
        let mut msg = b.build();
        msg.attributes.push(RouteAttribute::NhId(id));
        return Ok(msg);
    }
    if let Some(gw) = route.gateway {
        b = b.gateway(gw).map_err(invalid(route))?;
    }
    if let Some(oif) = route.oif {
        b = b.output_interface(oif);
    }
    if route.onlink {
        b = b.onlink();
    }
    Ok(b.build())
}

/// The message of `ip route replace <dst> via <gateway> [dev <oif>] [onlink]` (or `nhid
/// <id>`), proto boot like iproute2 and upstream.
pub(crate) fn add_message(route: &Route) -> Result<RouteMessage, NetlinkError> {
    message(route, RouteProtocol::Boot)
}

/// What `ip route del` sends: any route to the destination through the gateway and device,
/// whatever its flags and protocol. A route through a nexthop object is named by its
/// destination alone: the kernel refuses a deletion naming a nexthop that is gone (EINVAL),
/// and matches none that names its gateway.
pub(crate) fn del_message(route: &Route) -> Result<RouteMessage, NetlinkError> {
    let any_flags = match route.nhid {
        Some(_) => Route {
            dst: route.dst,
            gateway: None,
            oif: None,
            onlink: false,
            nhid: None,
        },
        None => Route {
            onlink: false,
            ..*route
        },
    };
    let mut msg = message(&any_flags, RouteProtocol::Unspec)?;
    msg.header.scope = RouteScope::NoWhere;
    Ok(msg)
}

/// `ip route show` of one family (the kernel sends every table's: [`parse`] keeps the main).
fn dump_request(family: Family) -> Vec<u8> {
    let filter = match family {
        Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        Family::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    dump::request(RouteNetlinkMessage::GetRoute(filter))
}

impl Netlink {
    /// The blackhole routes of `family` in the main table (their destinations).
    pub async fn blackholes(&self, family: Family) -> Result<Vec<IpNetwork>, NetlinkError> {
        self.requests()
            .dump("listing routes", dump_request(family), |kind, body| {
                let RouteNetlinkMessage::NewRoute(msg) = dump::message(kind, body)? else {
                    return None;
                };
                let main = msg.attributes.iter().all(|a| match a {
                    RouteAttribute::Table(t) => *t == MAIN_TABLE,
                    _ => true,
                }) && u32::from(msg.header.table) == MAIN_TABLE;
                if msg.header.kind == RouteType::BlackHole && main {
                    destination_of(&msg)
                } else {
                    None
                }
            })
            .await
    }

    /// `ip route replace blackhole <dst>` (upstream's `AddBlackholeV4Route`).
    pub async fn add_blackhole(&self, dst: IpNetwork) -> Result<(), NetlinkError> {
        let msg = blackhole_message(dst, RouteProtocol::Boot, RouteScope::Universe)?;
        self.handle()
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("adding the blackhole route {dst}")))
    }

    /// `ip route replace <dst> dev <oif> [scope link]` (proto boot): a whole network through
    /// a tunnel device (upstream's WireGuard route, scope link; its UDP route, scope global).
    pub async fn replace_device_route(
        &self,
        dst: IpNetwork,
        oif: u32,
        scope: DeviceRouteScope,
    ) -> Result<(), NetlinkError> {
        let op = format!("adding the route to {dst} through link #{oif}");
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .map_err(|e| NetlinkError::other(op.clone(), e.to_string()))?
            .output_interface(oif)
            .scope(match scope {
                DeviceRouteScope::Link => RouteScope::Link,
                DeviceRouteScope::Global => RouteScope::Universe,
            })
            .protocol(RouteProtocol::Boot)
            .build();
        self.handle()
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl_err(op))
    }

    pub async fn del_blackhole(&self, dst: IpNetwork) -> Result<(), NetlinkError> {
        let msg = blackhole_message(dst, RouteProtocol::Unspec, RouteScope::NoWhere)?;
        gone_is_ok(
            format!("deleting the blackhole route {dst}"),
            self.handle().route().del(msg).execute().await,
        )
    }

    /// Unicast routes of `family` in the main table.
    pub async fn routes(&self, family: Family) -> Result<Vec<Route>, NetlinkError> {
        self.requests()
            .dump(
                "listing routes",
                dump_request(family),
                move |kind, body| match dump::message(kind, body)? {
                    RouteNetlinkMessage::NewRoute(msg) => parse(&msg, family),
                    _ => None,
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_exception_is_no_route_of_the_table() {
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix("10.200.28.2".parse().unwrap(), 32)
            .gateway("192.168.77.2".parse().unwrap())
            .build();
        let route = parse(&msg, Family::V4).expect("a route of the main table");
        assert_eq!(route.dst, "10.200.28.2/32".parse::<IpNetwork>().unwrap());
        // what the kernel dumps for a path MTU learnt through a tunnel (seen with ipip)
        msg.header.flags |= RouteFlags::Cloned;
        assert_eq!(parse(&msg, Family::V4), None);
    }
}
