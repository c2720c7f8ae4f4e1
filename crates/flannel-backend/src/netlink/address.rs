//! IPv4 addresses of a link.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::AddressAttribute;

use super::{is_gone, nl_err, Netlink};
use crate::BackendError;

impl Netlink {
    /// The IPv4 addresses on a link, with their prefix length.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Network>, BackendError> {
        let mut out = Vec::new();
        let mut addrs = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(nl_err(format!("listing addresses of link #{index}")))?
        {
            if msg.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                if let Ok(net) = Ipv4Network::new(ip, msg.header.prefix_len) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    pub async fn add_ipv4_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), BackendError> {
        self.handle()
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("adding {ip}/{prefix} to link #{index}")))
    }

    pub async fn del_ipv4_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), BackendError> {
        let mut req = self.handle().address().add(index, IpAddr::V4(ip), prefix);
        let msg = req.message_mut().clone();
        match self.handle().address().del(msg).execute().await {
            Err(e) if !is_gone(&e) => {
                Err(nl_err(format!("removing {ip}/{prefix} from link #{index}"))(e))
            }
            _ => Ok(()),
        }
    }
}
