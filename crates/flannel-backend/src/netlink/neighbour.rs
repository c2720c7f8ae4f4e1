//! Neighbours: the permanent ARP entry and the bridge FDB entry (NTF_SELF) of each peer.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;

use super::{is_gone, nl_err, Netlink};
use crate::BackendError;

/// A permanent IPv4 neighbour (ARP) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpEntry {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A forwarding entry of a vxlan device: frames for `mac` go to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

pub(crate) fn mac_of(msg: &NeighbourMessage) -> Option<[u8; 6]> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(l);
            Some(mac)
        }
        _ => None,
    })
}

/// NDA_DST as IPv4. In AF_BRIDGE (FDB) messages the parser cannot know the address family
/// and leaves it as raw bytes.
pub(crate) fn ipv4_of(msg: &NeighbourMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
            Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        _ => None,
    })
}

impl Netlink {
    /// The permanent IPv4 neighbour entries on a link (learned ones are the kernel's business).
    pub async fn arp_entries(&self, index: u32) -> Result<Vec<ArpEntry>, BackendError> {
        let mut out = Vec::new();
        let mut req = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(msg) = req
            .try_next()
            .await
            .map_err(nl_err("listing ARP entries"))?
        {
            if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(ip), Some(mac)) = (ipv4_of(&msg), mac_of(&msg)) {
                out.push(ArpEntry { ip, mac });
            }
        }
        Ok(out)
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`
    pub async fn replace_arp(&self, index: u32, entry: ArpEntry) -> Result<(), BackendError> {
        self.handle()
            .neighbours()
            .add(index, IpAddr::V4(entry.ip))
            .link_layer_address(&entry.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("adding ARP entry {}", entry.ip)))
    }

    pub async fn del_arp(&self, index: u32, ip: Ipv4Addr) -> Result<(), BackendError> {
        let mut req = self.handle().neighbours().add(index, IpAddr::V4(ip));
        let msg = req.message_mut().clone();
        match self.handle().neighbours().del(msg).execute().await {
            Err(e) if !is_gone(&e) => Err(nl_err(format!("deleting ARP entry {ip}"))(e)),
            _ => Ok(()),
        }
    }

    /// The FDB entries with a destination that a vxlan link holds for itself (NTF_SELF).
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>, BackendError> {
        let mut out = Vec::new();
        let mut req = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = req
            .try_next()
            .await
            .map_err(nl_err("listing FDB entries"))?
        {
            if msg.header.ifindex != index || !msg.header.flags.contains(NeighbourFlags::Own) {
                continue;
            }
            if let (Some(mac), Some(dst)) = (mac_of(&msg), ipv4_of(&msg)) {
                out.push(FdbEntry { mac, dst });
            }
        }
        Ok(out)
    }

    /// `bridge fdb replace <mac> dev <index> dst <dst> self permanent`
    pub async fn replace_fdb(&self, index: u32, entry: FdbEntry) -> Result<(), BackendError> {
        self.handle()
            .neighbours()
            .add_bridge(index, &entry.mac)
            .destination(IpAddr::V4(entry.dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("adding FDB entry for {}", entry.dst)))
    }

    pub async fn del_fdb(&self, index: u32, entry: FdbEntry) -> Result<(), BackendError> {
        let mut req = self
            .handle()
            .neighbours()
            .add_bridge(index, &entry.mac)
            .destination(IpAddr::V4(entry.dst))
            .flags(NeighbourFlags::Own);
        let msg = req.message_mut().clone();
        match self.handle().neighbours().del(msg).execute().await {
            Err(e) if !is_gone(&e) => {
                Err(nl_err(format!("deleting FDB entry for {}", entry.dst))(e))
            }
            _ => Ok(()),
        }
    }
}
