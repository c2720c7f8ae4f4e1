//! Addresses of a link.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::AddressAttribute;

use crate::error::{gone_is_ok, nl_err};
use crate::NetlinkError;
use crate::{Family, Netlink};

impl Netlink {
    /// The addresses of `family` on a link, with their prefix length.
    pub async fn addresses(
        &self,
        index: u32,
        family: Family,
    ) -> Result<Vec<IpNetwork>, NetlinkError> {
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
            if msg.header.index != index || msg.header.family != crate::address_family(family) {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                if let Ok(net) = IpNetwork::new(ip, msg.header.prefix_len) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// `ip addr replace <addr> dev <index> nodad`: usable at once. An IPv6 address otherwise
    /// stays "tentative" for 1-2 s while the kernel checks it is unique (flannel's are, by
    /// construction: upstream adds its VTEP address with the check, and is unusable meanwhile).
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<(), NetlinkError> {
        use netlink_packet_route::address::AddressFlags;
        let mut req = self
            .handle()
            .address()
            .add(index, addr.ip(), addr.prefix())
            .replace();
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        req.execute()
            .await
            .map_err(nl_err(format!("adding {addr} to link #{index}")))
    }

    pub async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<(), NetlinkError> {
        let ip: IpAddr = addr.ip();
        let mut req = self.handle().address().add(index, ip, addr.prefix());
        let msg = req.message_mut().clone();
        gone_is_ok(
            format!("removing {addr} from link #{index}"),
            self.handle().address().del(msg).execute().await,
        )
    }
}
