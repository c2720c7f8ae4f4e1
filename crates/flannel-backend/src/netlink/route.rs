//! IPv4 routes of the main table.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::RouteMessageBuilder;

use super::{is_gone, nl_err, Netlink};
use crate::BackendError;

const MAIN_TABLE: u32 = 254;

/// A unicast route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub onlink: bool,
}

fn parse(msg: &RouteMessage) -> Option<Route> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != MAIN_TABLE {
        return None;
    }
    Some(Route {
        dst: Ipv4Network::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
    })
}

impl Netlink {
    /// Unicast IPv4 routes of the main table.
    pub async fn ipv4_routes(&self) -> Result<Vec<Route>, BackendError> {
        let mut out = Vec::new();
        let mut req = self
            .handle()
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = req.try_next().await.map_err(nl_err("listing routes"))? {
            out.extend(parse(&msg));
        }
        Ok(out)
    }

    /// `ip route replace <dst> via <gateway> [dev <oif>] [onlink]`, proto boot like iproute2
    /// and upstream (so `ip route` prints it exactly as for upstream flanneld).
    pub async fn replace_route(&self, route: Route) -> Result<(), BackendError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.network(), route.dst.prefix())
            .protocol(RouteProtocol::Boot);
        if let Some(gw) = route.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = route.oif {
            b = b.output_interface(oif);
        }
        if route.onlink {
            b = b.onlink();
        }
        self.handle()
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("adding route to {}", route.dst)))
    }

    pub async fn del_route(&self, route: Route) -> Result<(), BackendError> {
        // Like `ip route del`: any protocol, scope "nowhere", so the kernel matches whatever
        // protocol the route was added with.
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.network(), route.dst.prefix())
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere);
        if let Some(gw) = route.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = route.oif {
            b = b.output_interface(oif);
        }
        match self.handle().route().del(b.build()).execute().await {
            Err(e) if !is_gone(&e) => Err(nl_err(format!("deleting route to {}", route.dst))(e)),
            _ => Ok(()),
        }
    }
}
