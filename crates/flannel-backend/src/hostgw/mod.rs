//! The `host-gw` backend (upstream `pkg/backend/hostgw` and `route_network.go`): no
//! encapsulation, a plain route to each node's subnet via its PublicIP on the external
//! interface, for nodes on one L2 segment; IPv6 subnets via the PublicIPv6, in dual-stack and
//! IPv6-only clusters. MTU: the interface's.
//!
//! A route network (`route_network.rs`, shared with ipip as upstream shares it): routes
//! added and removed per lease event, the whole set compared with the kernel at start, on a
//! period and soon after the kernel reports one of ours deleted; nothing deleted before the
//! first complete listing. Upstream re-adds missing routes every 10 s and never removes
//! stale ones. Our routes are known by their shape: on the external interface, via a
//! gateway, to a subnet inside the Network that is longer than the Network (others' routes
//! are never touched).

use std::net::IpAddr;

use flannel_net::{BackendKind, Lease, NetworkConfig};
use futures::future::BoxFuture;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tracing::info;

use crate::lease_check::Skip;
use crate::netlink::route::Route;
use crate::netlink::Family;
use crate::route_network::{RouteNetwork, RouteShape};
use crate::side::{self, Side};
use crate::table::{self, Leaving, Made, Row};
use crate::{Backend, BackendError, ExtIface, NodeContext};

/// The table's row of host-gw.
pub(crate) const ROW: Row = Row {
    kind: BackendKind::HostGw,
    check: table::nothing_to_check,
    make,
    gateway_routes: makes_gateway_routes,
    leftovers,
    inspect: inspect::inspect,
    inspect_device: table::no_device,
};

fn make(config: &NetworkConfig, node: NodeContext) -> Made<'_> {
    Box::pin(async move {
        let (network, network6) = side::networks(config);
        let backend = HostGwBackend::new_dual(network, network6, node)?;
        Ok(Box::new(backend) as Box<dyn Backend>)
    })
}

fn makes_gateway_routes(_: &NetworkConfig) -> bool {
    true
}

/// Routes of host-gw's shape, left when the config names a backend that keeps none (host-gw
/// before; VXLAN with DirectRouting and the extension backend's recipes make them too).
fn leftovers(l: Leaving<'_>) -> BoxFuture<'_, Result<(), BackendError>> {
    Box::pin(async move {
        if l.gateway_routes_kept {
            return Ok(());
        }
        let config = l.config;
        let mut networks = vec![IpNetwork::V4(config.network)];
        networks.extend(config.ipv6_network.map(IpNetwork::V6));
        for network in networks.into_iter().filter(|n| n.prefix() > 0) {
            for r in l.node.nl.routes(Family::of(network.ip())).await? {
                if is_gateway_route(&r, network, l.node.ext.index) {
                    info!(
                        "removing the route to {} via {}, left by the host-gw backend",
                        r.dst,
                        r.gateway.map_or(String::new(), |g| g.to_string())
                    );
                    l.node.nl.del_route(r).await?;
                }
            }
        }
        Ok(())
    })
}

/// Upstream's refusal, word for word.
const NAT_REFUSAL: &str = "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend";

mod inspect;
mod routes;

pub use routes::is_gateway_route;
pub(crate) use routes::plan;

/// host-gw's routes: `<subnet> via <PublicIP> dev <external interface>`.
pub struct HostGw;

impl RouteShape for HostGw {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }

    fn route_for(
        &self,
        side: &Side,
        own: Option<(IpNetwork, IpAddr)>,
        lease: &Lease,
        ext: &ExtIface,
    ) -> Result<Route, Skip> {
        routes::route_for(lease, side.family, side.network, own, ext)
    }

    fn is_ours(&self, side: &Side, route: &Route, ext: &ExtIface) -> bool {
        is_gateway_route(route, side.network, ext.index)
    }

    fn mtu(&self, ext: &ExtIface) -> u32 {
        ext.mtu
    }
}

/// The host-gw backend.
pub type HostGwBackend = RouteNetwork<HostGw>;

impl HostGwBackend {
    /// Refuses a PublicIP (or PublicIPv6) that is not the external interface's (NAT), as
    /// upstream.
    pub fn new_dual(
        network: Option<Ipv4Network>,
        network6: Option<Ipv6Network>,
        node: NodeContext,
    ) -> Result<Self, BackendError> {
        let sides = side::of_node(network, network6, &node)?;
        for side in &sides {
            if !node.ext.addresses.iter().any(|a| a.ip() == side.public_ip) {
                return Err(BackendError::Device(NAT_REFUSAL.into()));
            }
        }
        Ok(RouteNetwork::new(
            HostGw,
            node.nl,
            node.ext,
            node.public_ip,
            node.public_ipv6,
            sides,
        ))
    }
}
