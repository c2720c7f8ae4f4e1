//! What doctor checks of host-gw's data path ([`crate::inspect`]): the routes the backend
//! itself would program for the leases (the same [`routes::route_for`], lease checks
//! included), against the kernel's routes of host-gw's shape, with the backend's own
//! [`routes::plan`]. Reads only.

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use super::routes::{self, is_gateway_route};
use crate::inspect::{opt, Findings, Inspect};
use crate::lease_check::Skip;
use crate::side::{self, Side};

/// host-gw's data path: a route to every host-gw peer's subnet via its PublicIP on the
/// external interface, none other of host-gw's shape; a peer off the segment is a problem
/// (its pods are unreachable from here). The MTU pods should get: the interface's.
pub(crate) fn inspect<'a>(n: &'a Inspect<'a>, r: &'a mut Findings) -> BoxFuture<'a, Option<u32>> {
    Box::pin(async move {
        let Inspect {
            config,
            lease,
            leases,
            ext,
            nl,
            ..
        } = *n;
        for (
            Side {
                family,
                network,
                public_ip: public,
            },
            own,
        ) in side::of_lease(config, lease)
        {
            let mut want = BTreeMap::new();
            for l in leases {
                match routes::route_for(l, family, network, Some((own, public)), ext) {
                    Ok(route) => {
                        want.insert(route.dst, route);
                    }
                    Err(Skip::Unreachable(why)) => r.fail(
                        "peers",
                        format!("lease {}: {why}", l.key()),
                        "that node's pods are unreachable from here, and the daemon programs no route to it (use vxlan, or put the nodes on one segment)",
                    ),
                    Err(Skip::Invalid(why)) => r.warn(
                        "peers",
                        format!("lease {} is skipped: {why}", l.key()),
                        "no node programs it; fix or delete it",
                    ),
                    Err(Skip::Own | Skip::NoPart | Skip::OtherType(_)) => {}
                }
            }
            let observed: Vec<_> = match nl.routes(family).await {
                Ok(all) => all
                    .into_iter()
                    .filter(|rt| is_gateway_route(rt, network, ext.index))
                    .collect(),
                Err(e) => {
                    r.fail("peers", format!("listing the routes: {e}"), "");
                    continue;
                }
            };
            let (stray, missing) = routes::plan(&want, &observed, true);
            let text = |list: &[crate::netlink::route::Route]| {
                list.iter()
                    .map(|rt| format!("{} via {}", rt.dst, opt(rt.gateway)))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            if !missing.is_empty() {
                r.fail(
                    "peers",
                    format!("routes missing on {}: {}", ext.name, text(&missing)),
                    "pods of those nodes cannot be reached from here; a running flanneld-rs repairs this within milliseconds: is it running?",
                );
            }
            if !stray.is_empty() {
                r.fail(
                    "peers",
                    format!("routes no lease explains on {}: {}", ext.name, text(&stray)),
                    "traffic goes to a node that is gone; flanneld-rs removes them within 10 s when it runs",
                );
            }
            if missing.is_empty() && stray.is_empty() {
                r.ok("peers", format!("{} host-gw routes exact", want.len()));
            }
        }
        Some(ext.mtu)
    })
}
