//! Neighbours: the permanent ARP (IPv4) or NDP (IPv6) entry and the bridge FDB entry
//! (NTF_SELF) of each peer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flannel_net::MacAddr;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::NetlinkError;
use crate::{dump, Family, Netlink};

/// A permanent neighbour entry: ARP for IPv4, NDP for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighbourEntry {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// A forwarding entry of a vxlan device: frames for `mac` go to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub dst: IpAddr,
}

pub fn mac_of(msg: &NeighbourMessage) -> Option<MacAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => {
            Some(MacAddr(<[u8; 6]>::try_from(l.as_slice()).ok()?))
        }
        _ => None,
    })
}

/// NDA_DST. In AF_BRIDGE (FDB) messages the parser cannot know the address family and
/// leaves it as raw bytes: 4 of them are IPv4, 16 IPv6.
pub fn ip_of(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            if let Ok(v4) = <[u8; 4]>::try_from(b.as_slice()) {
                Some(IpAddr::V4(Ipv4Addr::from(v4)))
            } else {
                <[u8; 16]>::try_from(b.as_slice())
                    .ok()
                    .map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
            }
        }
        _ => None,
    })
}

impl Netlink {
    /// The permanent neighbour entries of `family` on a link (learned ones are the kernel's
    /// business).
    pub async fn neighbour_entries(
        &self,
        index: u32,
        family: Family,
    ) -> Result<Vec<NeighbourEntry>, NetlinkError> {
        let mut filter = NeighbourMessage::default();
        filter.header.family = crate::address_family(family);
        let request = dump::request(RouteNetlinkMessage::GetNeighbour(filter));
        self.requests()
            .dump("listing neighbour entries", request, move |kind, body| {
                let RouteNetlinkMessage::NewNeighbour(msg) = dump::message(kind, body)? else {
                    return None;
                };
                if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                    return None;
                }
                Some(NeighbourEntry {
                    ip: ip_of(&msg)?,
                    mac: mac_of(&msg)?,
                })
            })
            .await
    }

    /// The message of `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
    pub(crate) fn neighbour_message(&self, index: u32, entry: NeighbourEntry) -> NeighbourMessage {
        self.handle()
            .neighbours()
            .add(index, entry.ip)
            .link_layer_address(&entry.mac.octets())
            .state(NeighbourState::Permanent)
            .message_mut()
            .clone()
    }

    /// The message of `bridge fdb replace <mac> dev <index> dst <dst> self permanent`; a
    /// deletion names the entry with it too.
    pub(crate) fn fdb_message(&self, index: u32, entry: FdbEntry) -> NeighbourMessage {
        self.handle()
            .neighbours()
            .add_bridge(index, &entry.mac.octets())
            .destination(entry.dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .message_mut()
            .clone()
    }

    /// The neighbour entry of `ip` on device `index`, as a deletion names it.
    pub(crate) fn neighbour_key(&self, index: u32, ip: IpAddr) -> NeighbourMessage {
        self.handle()
            .neighbours()
            .add(index, ip)
            .message_mut()
            .clone()
    }

    /// The FDB entries with a destination that a vxlan link holds for itself (NTF_SELF).
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        let mut filter = NeighbourMessage::default();
        filter.header.family = AddressFamily::Bridge;
        let request = dump::request(RouteNetlinkMessage::GetNeighbour(filter));
        self.requests()
            .dump("listing FDB entries", request, move |kind, body| {
                let RouteNetlinkMessage::NewNeighbour(msg) = dump::message(kind, body)? else {
                    return None;
                };
                if msg.header.ifindex != index || !msg.header.flags.contains(NeighbourFlags::Own) {
                    return None;
                }
                Some(FdbEntry {
                    mac: mac_of(&msg)?,
                    dst: ip_of(&msg)?,
                })
            })
            .await
    }
}
