//! The checks every backend makes of another node's lease before programming anything for
//! it, one address family at a time: its subnet inside that family's Network and clear of
//! this node's, its public address one a VTEP or gateway can be.

use std::net::IpAddr;

use flannel_net::Lease;
use ipnetwork::IpNetwork;

use crate::netlink::Family;

/// Why a lease gives no peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Another backend type: ignored, as upstream.
    OtherType(String),
    /// This node's own lease.
    Own,
    /// The lease has no subnet of this family (an IPv4-only node in a dual-stack cluster):
    /// nothing to program for it here, nothing to say.
    NoPart,
    /// A lease that must not be programmed, and why.
    Invalid(String),
    /// A peer this node cannot reach with this backend (host-gw: another segment), and why.
    Unreachable(String),
}

/// One family's side of a lease: the subnet and the address the node is reached at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub subnet: IpNetwork,
    pub public_ip: IpAddr,
}

/// `lease`'s side in `family`, checked; `own` is this node's subnet and public address in
/// that family.
pub fn check(
    lease: &Lease,
    family: Family,
    network: IpNetwork,
    own: Option<(IpNetwork, IpAddr)>,
) -> Result<Part, Skip> {
    let Some(subnet) = lease.subnet_of(family) else {
        return Err(Skip::NoPart);
    };
    let name = match family {
        Family::V4 => "PublicIP",
        Family::V6 => "PublicIPv6",
    };
    if !(network.contains(subnet.network()) && subnet.prefix() >= network.prefix()) {
        return Err(Skip::Invalid(format!(
            "subnet {subnet} is outside the network {network}"
        )));
    }
    // PublicIP 0.0.0.0 is refused below with the others that cannot be a VTEP
    let public = match family {
        Family::V6 => lease.attrs.public_ipv6.map(IpAddr::V6),
        Family::V4 => Some(IpAddr::V4(lease.attrs.public_ip)),
    };
    if let Some((own_subnet, own_ip)) = own {
        if subnet == own_subnet {
            return if public == Some(own_ip) {
                Err(Skip::Own)
            } else {
                Err(Skip::Invalid(format!(
                    "claims this node's subnet {own_subnet} for {name} {}",
                    public.map_or_else(|| "(none)".to_string(), |p| p.to_string())
                )))
            };
        }
        if overlaps(subnet, own_subnet) {
            return Err(Skip::Invalid(format!(
                "overlaps this node's subnet {own_subnet}"
            )));
        }
    }
    let Some(ip) = public else {
        return Err(Skip::Invalid(format!(
            "has an {family} subnet {subnet} but no {name}"
        )));
    };
    let unusable = match ip {
        IpAddr::V4(ip) => {
            ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback()
        }
        IpAddr::V6(ip) => {
            ip.is_unspecified()
                || ip.is_multicast()
                || ip.is_loopback()
                || ip.is_unicast_link_local()
        }
    };
    if unusable {
        return Err(Skip::Invalid(format!("{name} {ip} cannot be a VTEP")));
    }
    if network.contains(ip) {
        return Err(Skip::Invalid(format!(
            "{name} {ip} is inside the overlay network {network}"
        )));
    }
    Ok(Part {
        subnet,
        public_ip: ip,
    })
}

/// Whether two networks of one family share an address.
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}
