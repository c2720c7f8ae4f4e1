//! What another backend left on this node, removed when the network config now names a
//! different one (a config change is applied by restarting every node): `flannel.<VNI>`
//! devices when leaving VXLAN, with every entry on them (another VNI's device is left alone
//! when staying with VXLAN: it may be another flannel network's); routes of
//! host-gw's shape when leaving host-gw. Nothing of anybody else's: a device is ours by
//! name and kind, a route by its shape.

use ipnetwork::IpNetwork;
use tracing::info;

use crate::netlink::Family;
use crate::{vxlan, BackendError, NodeContext};

/// Removes the leftovers for a node about to run backend `kind` (lower case).
pub(crate) async fn remove(
    kind: &str,
    config: &flannel_net::NetworkConfig,
    node: &NodeContext,
) -> Result<(), BackendError> {
    let vxlan_config = (kind == "vxlan")
        .then(|| vxlan::VxlanConfig::from_backend(config.backend.as_ref()))
        .transpose()?;
    if vxlan_config.is_none() {
        for link in node.nl.links().await? {
            let ours = link
                .name
                .strip_prefix("flannel.")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                && link.kind.as_deref() == Some("vxlan");
            if ours {
                info!(
                    "removing {}, left by the vxlan backend (the network config now asks for {kind})",
                    link.name
                );
                node.nl.delete_link(link.index).await?;
            }
        }
    }
    // host-gw's routes; VXLAN with DirectRouting makes the same ones and reconciles them, and
    // an extension's commands may have made them (upstream's extension-hostgw recipe)
    let same_shape =
        kind == "host-gw" || kind == "extension" || vxlan_config.is_some_and(|c| c.direct_routing);
    if !same_shape {
        let network = IpNetwork::V4(config.network);
        for r in node.nl.routes(Family::V4).await? {
            if r.oif == Some(node.ext.index)
                && r.gateway.is_some()
                && network.contains(r.dst.network())
                && r.dst.prefix() > network.prefix()
            {
                info!(
                    "removing the route to {} via {}, left by the host-gw backend",
                    r.dst,
                    r.gateway.map_or(String::new(), |g| g.to_string())
                );
                node.nl.del_route(r).await?;
            }
        }
    }
    Ok(())
}
