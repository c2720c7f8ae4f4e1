//! One address family a node carries: the family, its Network and this node's address in it.
//! Built once per family, the same way for every backend (from the config and the node when a
//! backend is made; from a lease when doctor inspects), instead of each building its own.

use std::net::IpAddr;

use flannel_net::{Family, Lease, NetworkConfig};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::{BackendError, NodeContext};

/// One family's side of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub family: Family,
    pub network: IpNetwork,
    /// This node's address in the family (PublicIP, PublicIPv6).
    pub public_ip: IpAddr,
}

/// The sides of a node that carries `network` (IPv4) and `network6` (IPv6), IPv4 first;
/// IPv6 without an IPv6 address on the node is an error, neither family too.
pub fn of_node(
    network: Option<Ipv4Network>,
    network6: Option<Ipv6Network>,
    node: &NodeContext,
) -> Result<Vec<Side>, BackendError> {
    let mut sides = Vec::new();
    if let Some(network) = network {
        sides.push(Side {
            family: Family::V4,
            network: IpNetwork::V4(network),
            public_ip: IpAddr::V4(node.public_ip),
        });
    }
    if let Some(network6) = network6 {
        let ip = node.public_ipv6.ok_or_else(|| {
            BackendError::Device("IPv6 is enabled but this node has no IPv6 address (-public-ipv6, or a global IPv6 address on the interface)".into())
        })?;
        sides.push(Side {
            family: Family::V6,
            network: IpNetwork::V6(network6),
            public_ip: IpAddr::V6(ip),
        });
    }
    if sides.is_empty() {
        return Err(BackendError::Device(
            "neither an IPv4 nor an IPv6 network to carry".into(),
        ));
    }
    Ok(sides)
}

/// The networks of `config` (each family it enables).
pub fn networks(config: &NetworkConfig) -> (Option<Ipv4Network>, Option<Ipv6Network>) {
    (
        config.enable_ipv4.then_some(config.network),
        config.ipv6_network.filter(|_| config.enable_ipv6),
    )
}

/// The sides of the node whose lease is `lease`, with its subnet in each: every family the
/// config enables and the lease has.
pub fn of_lease(config: &NetworkConfig, lease: &Lease) -> Vec<(Side, IpNetwork)> {
    let (v4, v6) = networks(config);
    let families = [
        (Family::V4, v4.map(IpNetwork::V4)),
        (Family::V6, v6.map(IpNetwork::V6)),
    ];
    families
        .into_iter()
        .filter_map(|(family, network)| {
            let side = Side {
                family,
                network: network?,
                public_ip: lease.attrs.public_ip_of(family)?,
            };
            Some((side, lease.subnet_of(family)?))
        })
        .collect()
}
