//! What another backend left on this node, removed when the network config now names a
//! different one (a config change is applied by restarting every node): `flannel.<VNI>` and
//! `flannel-v6.<VNI>` devices when leaving VXLAN, with every entry on them (another VNI's
//! device is left alone when staying with VXLAN: it may be another flannel network's), and
//! the device of a family the config no longer enables; routes of host-gw's shape (either
//! family) when leaving host-gw. Nothing of anybody else's: a device is ours by name and
//! kind, a route by its shape.

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
    // staying with VXLAN: only the same VNI's device of a family that is off now
    let unused = |name: &str| match &vxlan_config {
        None => ["flannel.", "flannel-v6."].iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        }),
        Some(c) => {
            (!config.enable_ipv4 && name == c.device_name())
                || (!config.enable_ipv6 && name == c.device_name_v6())
        }
    };
    for link in node.nl.links().await? {
        if unused(&link.name) && link.kind.as_deref() == Some("vxlan") {
            info!(
                "removing {}, left by the vxlan backend (the network config now asks for {kind}, IPv4 {}, IPv6 {})",
                link.name,
                if config.enable_ipv4 { "on" } else { "off" },
                if config.enable_ipv6 { "on" } else { "off" }
            );
            node.nl.delete_link(link.index).await?;
        }
    }
    // host-gw's routes; VXLAN with DirectRouting makes the same ones and reconciles them, and
    // an extension's commands may have made them (upstream's extension-hostgw recipe)
    let same_shape =
        kind == "host-gw" || kind == "extension" || vxlan_config.is_some_and(|c| c.direct_routing);
    if !same_shape {
        let mut networks = vec![IpNetwork::V4(config.network)];
        networks.extend(config.ipv6_network.map(IpNetwork::V6));
        for network in networks.into_iter().filter(|n| n.prefix() > 0) {
            for r in node.nl.routes(Family::of(network.ip())).await? {
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
    }
    Ok(())
}
