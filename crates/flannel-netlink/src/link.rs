//! Links: find, create (vxlan, wireguard, ipip), delete, set up / MTU / MAC.

use std::net::IpAddr;

use flannel_net::MacAddr;
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkIpIp, LinkUnspec, LinkVxlan, LinkWireguard};

use crate::error::{gone_is_ok, nl_err, no_such_device_is_none};
use crate::Netlink;
use crate::NetlinkError;

/// What flannel needs to know about a link.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<LinkKind>,
    pub vxlan: Option<VxlanAttrs>,
    /// An IP-in-IP tunnel's ends (`local`, `remote`; unset: any).
    pub tunnel: Option<TunnelEnds>,
}

/// The ends of an IP tunnel link (ipip).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelEnds {
    pub local: Option<IpAddr>,
    pub remote: Option<IpAddr>,
}

/// The kind of a link (IFLA_INFO_KIND), as far as flannel tells kinds apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Vxlan,
    /// Any other, by the kernel's name (`veth`, `bridge`, `dummy`).
    Other(String),
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkKind::Vxlan => InfoKind::Vxlan.fmt(f),
            LinkKind::Other(name) => f.write_str(name),
        }
    }
}

impl Link {
    /// Whether it is a VXLAN link.
    pub fn is_vxlan(&self) -> bool {
        self.kind == Some(LinkKind::Vxlan)
    }

    /// Whether its kind is `kind` by the kernel's name (`wireguard`, `tun`).
    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_ref().is_some_and(|k| k.to_string() == kind)
    }
}

/// The attributes of a vxlan link that decide whether flannel can keep it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanAttrs {
    pub vni: u32,
    /// Underlay interface index (IFLA_VXLAN_LINK).
    pub link: Option<u32>,
    pub local: Option<IpAddr>,
    /// UDP destination port; the kernel reports its default (8472) when none was given.
    pub port: Option<u16>,
    pub gbp: bool,
    pub learning: bool,
}

/// How to create a vxlan link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLinkSpec {
    pub name: String,
    pub vni: u32,
    pub underlay_index: u32,
    pub local: IpAddr,
    /// 0: leave the port to the kernel (8472), as upstream.
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
    pub mtu: u32,
}

fn parse(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan: None,
        tunnel: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => {
                link.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr)
            }
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind_of(kind)),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            link.vxlan = Some(parse_vxlan(attrs))
                        }
                        LinkInfo::Data(InfoData::IpTunnel(attrs)) => {
                            let mut ends = TunnelEnds::default();
                            for a in attrs {
                                match a {
                                    InfoIpTunnel::Local(ip) if !ip.is_unspecified() => {
                                        ends.local = Some(*ip)
                                    }
                                    InfoIpTunnel::Remote(ip) if !ip.is_unspecified() => {
                                        ends.remote = Some(*ip)
                                    }
                                    _ => {}
                                }
                            }
                            link.tunnel = Some(ends);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn kind_of(kind: &InfoKind) -> LinkKind {
    match kind {
        InfoKind::Vxlan => LinkKind::Vxlan,
        other => LinkKind::Other(other.to_string()),
    }
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanAttrs {
    let mut v = VxlanAttrs::default();
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Link(l) if *l != 0 => v.link = Some(*l),
            InfoVxlan::Local(ip) => v.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => v.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(p) if *p != 0 => v.port = Some(*p),
            InfoVxlan::Gbp => v.gbp = true,
            InfoVxlan::Learning(l) => v.learning = *l,
            _ => {}
        }
    }
    v
}

impl Netlink {
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut links = self
            .handle()
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        Ok(
            no_such_device_is_none(format!("looking up link {name}"), links.try_next().await)?
                .as_ref()
                .map(parse),
        )
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut links = self.handle().link().get().match_index(index).execute();
        Ok(
            no_such_device_is_none(format!("looking up link #{index}"), links.try_next().await)?
                .as_ref()
                .map(parse),
        )
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut out = Vec::new();
        let mut links = self.handle().link().get().execute();
        while let Some(msg) = links.try_next().await.map_err(nl_err("listing links"))? {
            out.push(parse(&msg));
        }
        Ok(out)
    }

    /// Creates the vxlan link with `mac`, up ([`NetlinkError::already_exists`] when a link of
    /// that name appeared meanwhile).
    pub async fn create_vxlan(
        &self,
        spec: &VxlanLinkSpec,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        let b = LinkVxlan::new(&spec.name, spec.vni).dev(spec.underlay_index);
        let mut b = match spec.local {
            IpAddr::V4(ip) => b.local(ip),
            IpAddr::V6(ip) => b.local6(ip),
        }
        .learning(spec.learning)
        .address(mac.octets().to_vec())
        .mtu(spec.mtu)
        .up();
        if spec.port != 0 {
            b = b.port(spec.port);
        }
        if spec.gbp {
            b = b.gbp();
        }
        self.handle()
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(nl_err(format!("creating {}", spec.name)))
    }

    /// Creates a WireGuard link (the kernel's `wireguard` module) with `mtu`; the kernel's
    /// errno says why not (`EOPNOTSUPP`: no such module).
    pub async fn create_wireguard(&self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.handle()
            .link()
            .add(LinkWireguard::new(name).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl_err(format!("creating {name}")))
    }

    /// Creates an IP-in-IP link with its local end `local` (remote any) and `mtu`.
    pub async fn create_ipip(
        &self,
        name: &str,
        local: std::net::Ipv4Addr,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        self.handle()
            .link()
            .add(LinkIpIp::new(name).local(local).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl_err(format!("creating {name}")))
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        gone_is_ok(
            format!("deleting link #{index}"),
            self.handle().link().del(index).execute().await,
        )
    }

    pub async fn set_link_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("setting link #{index} up")))
    }

    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl_err(format!("setting MTU {mtu} on link #{index}")))
    }

    pub async fn set_link_mac(&self, index: u32, mac: MacAddr) -> Result<(), NetlinkError> {
        self.handle()
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.octets().to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("setting the MAC of link #{index}")))
    }
}
