//! The checks every backend makes of another node's lease before programming anything for
//! it: its subnet inside the Network and clear of this node's, its PublicIP an address a
//! VTEP or gateway can be. The lease's IPv4 part (the only one read yet).

use std::net::Ipv4Addr;

use flannel_net::Lease;
use ipnetwork::Ipv4Network;

/// Why a lease gives no peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Another backend type: ignored, as upstream.
    OtherType(String),
    /// This node's own lease.
    Own,
    /// A lease that must not be programmed, and why.
    Invalid(String),
}

/// `Ok` when `lease` may be programmed; `own` is this node's subnet and PublicIP.
pub fn check(
    lease: &Lease,
    network: Ipv4Network,
    own: Option<(Ipv4Network, Ipv4Addr)>,
) -> Result<(), Skip> {
    let attrs = &lease.attrs;
    if !(network.contains(lease.subnet.network()) && lease.subnet.prefix() >= network.prefix()) {
        return Err(Skip::Invalid(format!(
            "subnet {} is outside the network {network}",
            lease.subnet
        )));
    }
    if let Some((own_subnet, own_ip)) = own {
        if lease.subnet == own_subnet {
            return if attrs.public_ip == own_ip {
                Err(Skip::Own)
            } else {
                Err(Skip::Invalid(format!(
                    "claims this node's subnet {own_subnet} for PublicIP {}",
                    attrs.public_ip
                )))
            };
        }
        if lease.subnet.overlaps(own_subnet) {
            return Err(Skip::Invalid(format!(
                "overlaps this node's subnet {own_subnet}"
            )));
        }
    }
    let ip = attrs.public_ip;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(Skip::Invalid(format!("PublicIP {ip} cannot be a VTEP")));
    }
    if network.contains(ip) {
        return Err(Skip::Invalid(format!(
            "PublicIP {ip} is inside the overlay network {network}"
        )));
    }
    Ok(())
}
