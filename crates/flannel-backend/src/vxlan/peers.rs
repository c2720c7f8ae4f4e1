//! The desired kernel state for the other nodes: a lease's side in one family checked and
//! made a [`Peer`] (its neighbour, FDB entry, nexthop and route). Pure. The plan that moves
//! the kernel there is [`super::plan`].

use std::net::IpAddr;

use flannel_net::{BackendKind, Lease, MacAddr};
use ipnetwork::IpNetwork;

use crate::netlink::neighbour::{FdbEntry, NeighbourEntry};
use crate::netlink::nexthop::Nexthop;
use crate::netlink::route::Route;
use crate::ExtIface;

/// A remote node as the data path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub subnet: IpNetwork,
    pub public_ip: IpAddr,
    pub mac: MacAddr,
    /// DirectRouting and on the same L2: a plain route via the PublicIP, no ARP or FDB entry.
    pub direct: bool,
}

impl Peer {
    /// The peer's VTEP address: its subnet's network address (`10.5.34.0`).
    pub fn gateway(&self) -> IpAddr {
        self.subnet.network()
    }

    /// The permanent ARP (IPv4) or NDP (IPv6) entry of its VTEP address.
    pub fn neighbour(&self) -> Option<NeighbourEntry> {
        (!self.direct).then_some(NeighbourEntry {
            ip: self.gateway(),
            mac: self.mac,
        })
    }

    pub fn fdb(&self) -> Option<FdbEntry> {
        (!self.direct).then_some(FdbEntry {
            mac: self.mac,
            dst: self.public_ip,
        })
    }

    /// `<subnet> via <subnet>.0 dev flannel.<VNI> onlink`, or `<subnet> via <PublicIP>`.
    pub fn route(&self, device: u32) -> Route {
        if self.direct {
            Route {
                dst: self.subnet,
                gateway: Some(self.public_ip),
                oif: None,
                onlink: false,
                nhid: None,
            }
        } else {
            Route {
                dst: self.subnet,
                gateway: Some(self.gateway()),
                oif: Some(device),
                onlink: true,
                nhid: None,
            }
        }
    }
}

impl Peer {
    /// The nexthop object its route goes through when peer routes use them: VTEP peers whose
    /// gateway gives an id (IPv4; see [`nexthop_id`]).
    pub fn nexthop(&self, device: u32) -> Option<Nexthop> {
        if self.direct {
            return None;
        }
        Some(Nexthop {
            id: nexthop_id(self.gateway())?,
            gateway: self.gateway(),
            oif: device,
            onlink: true,
        })
    }

    /// `<subnet> nhid <id>`.
    pub fn route_via(&self, id: u32) -> Route {
        Route {
            dst: self.subnet,
            gateway: None,
            oif: None,
            onlink: false,
            nhid: Some(id),
        }
    }
}

pub use crate::lease_check::Skip;
use crate::netlink::Family;

/// The id of the nexthop to a peer's IPv4 gateway (its subnet's network address): the
/// address itself, unique per peer and readable in `ip nexthop` (`id 180879616` is
/// 10.200.0.0... as a number). IPv6 gateways have no such id: their routes stay classic,
/// which costs them nothing (the kernel's IPv6 onlink routes do not get dearer with their
/// number: benches/README.md).
pub fn nexthop_id(gateway: IpAddr) -> Option<u32> {
    match gateway {
        IpAddr::V4(a) => Some(u32::from(a)).filter(|id| *id != 0),
        IpAddr::V6(_) => None,
    }
}

/// Checks a lease from etcd and makes its `family` side a peer. `own` is this node's subnet
/// and public address in that family.
pub fn peer_from_lease(
    lease: &Lease,
    family: Family,
    network: IpNetwork,
    own: Option<(IpNetwork, IpAddr)>,
    direct_routing: bool,
    ext: &ExtIface,
) -> Result<Peer, Skip> {
    let attrs = &lease.attrs;
    if !BackendKind::Vxlan.is(&attrs.backend_type) {
        return Err(Skip::OtherType(attrs.backend_type.clone()));
    }
    let part = crate::lease_check::check(lease, family, network, own)?;
    let data = match family {
        Family::V4 => attrs.vxlan_data(),
        Family::V6 => attrs.vxlan_v6_data(),
    };
    let data = match data {
        Some(Ok(data)) => data,
        Some(Err(e)) => return Err(Skip::Invalid(e.to_string())),
        None => return Err(Skip::OtherType(attrs.backend_type.clone())),
    };
    Ok(Peer {
        subnet: part.subnet,
        public_ip: part.public_ip,
        mac: data.vtep_mac,
        direct: direct_routing && ext.on_link(part.public_ip),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use flannel_net::{Expiration, LeaseAttrs, VxlanBackendData};

    fn ext() -> ExtIface {
        ExtIface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addresses: vec!["192.168.77.1/24".parse().unwrap()],
        }
    }

    pub(in crate::vxlan) fn lease(subnet: &str, ip: &str, mac: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(
                ip.parse().unwrap(),
                &VxlanBackendData {
                    vni: Some(1),
                    vtep_mac: mac.parse().unwrap(),
                },
            ),
            expiration: Expiration::Unknown,
        }
    }

    pub(in crate::vxlan) const NET: &str = "10.200.0.0/16";

    pub(in crate::vxlan) fn peer_of(l: &Lease) -> Result<Peer, Skip> {
        peer_from_lease(
            l,
            Family::V4,
            NET.parse().unwrap(),
            Some((
                "10.200.90.0/24".parse().unwrap(),
                "192.168.77.1".parse().unwrap(),
            )),
            false,
            &ext(),
        )
    }

    #[test]
    fn the_nexthop_id_of_an_ipv4_gateway_is_the_address() {
        assert_eq!(nexthop_id("10.200.2.0".parse().unwrap()), Some(0x0ac8_0200));
        assert_eq!(nexthop_id("0.0.0.0".parse().unwrap()), None);
        assert_eq!(nexthop_id("fd00::".parse().unwrap()), None);
    }

    #[test]
    fn entries_match_upstream_form() {
        let p = peer_of(&lease("10.200.2.0/24", "192.168.77.2", "6a:02:fc:e4:63:47")).unwrap();
        assert_eq!(
            p.neighbour().unwrap().ip,
            "10.200.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            p.fdb().unwrap().dst,
            "192.168.77.2".parse::<IpAddr>().unwrap()
        );
        let r = p.route(3);
        assert_eq!(r.gateway, Some("10.200.2.0".parse().unwrap()));
        assert!(r.onlink);
        assert_eq!(r.oif, Some(3));
    }

    #[test]
    fn bad_and_foreign_leases_are_skipped() {
        let mac = "6a:02:fc:e4:63:47";
        assert_eq!(
            peer_of(&lease("10.200.90.0/24", "192.168.77.1", mac)),
            Err(Skip::Own)
        );
        let mut hostgw = lease("10.200.3.0/24", "192.168.77.3", mac);
        hostgw.attrs.backend_type = "host-gw".into();
        assert_eq!(peer_of(&hostgw), Err(Skip::OtherType("host-gw".into())));
        for (l, why) in [
            (
                lease("10.200.90.0/24", "192.168.77.9", mac),
                "claims this node's subnet",
            ),
            (lease("10.200.90.0/25", "192.168.77.9", mac), "overlaps"),
            (
                lease("10.201.1.0/24", "192.168.77.9", mac),
                "outside the network",
            ),
            (
                lease("10.200.0.0/15", "192.168.77.9", mac),
                "outside the network",
            ),
            (lease("10.200.4.0/24", "0.0.0.0", mac), "cannot be a VTEP"),
            (
                lease("10.200.4.0/24", "10.200.7.7", mac),
                "inside the overlay",
            ),
        ] {
            match peer_of(&l) {
                Err(Skip::Invalid(msg)) => assert!(msg.contains(why), "{msg} / {why}"),
                other => panic!("{other:?} for {why}"),
            }
        }
        let mut no_mac = lease("10.200.4.0/24", "192.168.77.4", mac);
        no_mac.attrs.backend_data = Some(serde_json::json!({"VNI": 1}).into());
        assert!(matches!(peer_of(&no_mac), Err(Skip::Invalid(_))));
    }

    #[test]
    fn direct_routing_only_on_the_same_l2() {
        let l = lease("10.200.2.0/24", "192.168.77.2", "6a:02:fc:e4:63:47");
        let p = peer_from_lease(&l, Family::V4, NET.parse().unwrap(), None, true, &ext()).unwrap();
        assert!(p.direct);
        assert!(p.neighbour().is_none() && p.fdb().is_none());
        assert_eq!(p.route(3).gateway, Some("192.168.77.2".parse().unwrap()));
        let far = lease("10.200.3.0/24", "192.168.99.3", "6a:02:fc:e4:63:48");
        assert!(
            !peer_from_lease(&far, Family::V4, NET.parse().unwrap(), None, true, &ext())
                .unwrap()
                .direct
        );
    }
}
