//! What doctor checks of host-gw's data path ([`crate::inspect`]): the route network's
//! inspection of host-gw's routes. Reads only.

use futures::future::BoxFuture;

use super::HostGw;
use crate::inspect::{Findings, Inspect};
use crate::route_network::inspect_routes;

/// host-gw's data path: a route to every host-gw peer's subnet via its PublicIP on the
/// external interface, none other of host-gw's shape (the route network's inspection). The
/// MTU pods should get: the interface's.
pub(crate) fn inspect<'a>(n: &'a Inspect<'a>, r: &'a mut Findings) -> BoxFuture<'a, Option<u32>> {
    Box::pin(async move {
        inspect_routes(&HostGw, n, r).await;
        Some(n.ext.mtu)
    })
}
