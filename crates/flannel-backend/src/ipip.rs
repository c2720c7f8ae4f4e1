//! The `ipip` backend (upstream `pkg/backend/ipip` at v0.28.9), IPv4 only as upstream: a
//! route network (`route_network.rs`, shared with host-gw) whose routes go through an
//! IP-in-IP device, `<subnet> via <PublicIP> dev flannel.ipip onlink`; with `DirectRouting`
//! a peer on this node's segment gets host-gw's route instead. MTU: the interface's less 20
//! (the outer IPv4 header), for the device and FLANNEL_MTU.
//!
//! The device is `flannel.ipip` with its local end the interface's address, not the
//! kernel's `tunl0`: loading the ipip module makes `tunl0` (local and remote any) in every
//! namespace, the fallback for IP-in-IP packets no other device matches, and users may have
//! their own use of it (upstream's comment in ipip.go). A `flannel.ipip` of another kind is
//! the user's and is not deleted (upstream's refusal); one with other ends is made again.
//! It is reconciled like the routes: deleted or down, it is made again at once with its
//! address and every route.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use async_trait::async_trait;
use flannel_net::{BackendKind, Lease, NetworkConfig};
use futures::future::BoxFuture;
use ipnetwork::IpNetwork;
use serde_json::Value;
use tracing::{info, warn};

use crate::hostgw::is_gateway_route;
use crate::inspect::{Findings, Inspect};
use crate::lease_check::{self, Skip};
use crate::netlink::events::KernelEvent;
use crate::netlink::route::Route;
use crate::netlink::{Family, Netlink};
use crate::route_network::{inspect_routes, RouteNetwork, RouteShape};
use crate::side::{self, Side};
use crate::table::{Leaving, Made, Row};
use crate::{Backend, BackendError, ExtIface, NodeContext};

/// Upstream's device.
pub const DEVICE: &str = "flannel.ipip";

/// The outer IPv4 header.
const OVERHEAD: u32 = 20;

/// The table's row of ipip.
pub(crate) const ROW: Row = Row {
    kind: BackendKind::Ipip,
    check,
    make,
    gateway_routes: direct_routing,
    leftovers,
    inspect,
    inspect_device,
};

/// `DirectRouting` of the `Backend` object (default false).
fn parse(config: &NetworkConfig) -> Result<bool, BackendError> {
    let bad = |message: String| BackendError::Config {
        backend: "IPIP",
        message,
    };
    match config.backend.as_ref() {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(obj)) => {
            let mut direct = false;
            for (key, v) in obj {
                if key.eq_ignore_ascii_case("DirectRouting") {
                    direct = v.as_bool().ok_or_else(|| {
                        bad(format!("DirectRouting: expected true or false, got {v}"))
                    })?;
                }
            }
            Ok(direct)
        }
        Some(other) => Err(bad(format!("expected an object, got {other}"))),
    }
}

fn check(config: &NetworkConfig) -> Result<(), BackendError> {
    parse(config).map(|_| ())
}

fn direct_routing(config: &NetworkConfig) -> bool {
    parse(config).unwrap_or(false)
}

fn make(config: &NetworkConfig, node: NodeContext) -> Made<'_> {
    Box::pin(async move {
        let direct_routing = parse(config)?;
        // upstream's line
        info!("IPIP config: DirectRouting={direct_routing}");
        let (network, _) = side::networks(config);
        let Some(network) = network else {
            return Err(BackendError::Device(
                "the ipip backend carries IPv4 only, as upstream's: EnableIPv4 is false in the network config".into(),
            ));
        };
        let sides = side::of_node(Some(network), None, &node)?;
        // the tunnel's local end: the interface's own address (PublicIP may be a NAT's)
        let local = node.ext.first_ipv4().unwrap_or(node.public_ip);
        let mtu = node
            .ext
            .mtu
            .checked_sub(OVERHEAD)
            .filter(|m| *m >= 68)
            .ok_or_else(|| {
                BackendError::Device(format!(
                    "MTU {} of iface {} is too small for ipip mode to work",
                    node.ext.mtu, node.ext.name
                ))
            })?;
        let mut shape = Ipip {
            direct_routing,
            index: 0,
            local,
            mtu,
            network: IpNetwork::V4(network),
        };
        shape.ensure_device(&node.nl, &BTreeMap::new()).await?;
        let backend = RouteNetwork::new(shape, node.nl, node.ext, node.public_ip, None, sides);
        Ok(Box::new(backend) as Box<dyn Backend>)
    })
}

/// doctor: `flannel.ipip` (kind, MTU), as far as the config tells.
fn inspect_device<'a>(
    _config: &'a NetworkConfig,
    nl: &'a Netlink,
    r: &'a mut Findings,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        crate::inspect::device_finding(nl, DEVICE, "ipip", "an ipip mode device", None, r).await;
    })
}

/// doctor: the device, and its routes as the backend would program them (the route
/// network's inspection). The MTU pods should get: the interface's less 20.
fn inspect<'a>(n: &'a Inspect<'a>, r: &'a mut Findings) -> BoxFuture<'a, Option<u32>> {
    Box::pin(async move {
        let mtu = n.ext.mtu.saturating_sub(OVERHEAD);
        let index = crate::inspect::device_finding(
            n.nl,
            DEVICE,
            "ipip",
            "an ipip mode device",
            Some(mtu),
            r,
        )
        .await?;
        let shape = Ipip {
            direct_routing: direct_routing(n.config),
            index,
            local: Ipv4Addr::UNSPECIFIED,
            mtu,
            network: IpNetwork::V4(n.config.network),
        };
        inspect_routes(&shape, n, r).await;
        Some(mtu)
    })
}

/// `flannel.ipip` when the config names another backend (its routes go with it).
fn leftovers(l: Leaving<'_>) -> BoxFuture<'_, Result<(), BackendError>> {
    Box::pin(async move {
        if l.running {
            return Ok(());
        }
        if let Some(link) = l.node.nl.link_by_name(DEVICE).await? {
            if link.is_kind("ipip") {
                info!("removing {DEVICE}, left by the ipip backend");
                l.node.nl.delete_link(link.index).await?;
            }
        }
        Ok(())
    })
}

/// ipip's routes and its device.
pub struct Ipip {
    direct_routing: bool,
    /// The device's index (0 before it is made).
    index: u32,
    local: Ipv4Addr,
    mtu: u32,
    network: IpNetwork,
}

#[async_trait]
impl RouteShape for Ipip {
    fn kind(&self) -> BackendKind {
        BackendKind::Ipip
    }

    fn route_for(
        &self,
        side: &Side,
        own: Option<(IpNetwork, IpAddr)>,
        lease: &Lease,
        ext: &ExtIface,
    ) -> Result<Route, Skip> {
        if !BackendKind::Ipip.is(&lease.attrs.backend_type) {
            return Err(Skip::OtherType(lease.attrs.backend_type.clone()));
        }
        let part = lease_check::check(lease, side.family, side.network, own)?;
        let gateway = Some(part.public_ip);
        if self.direct_routing && ext.on_link(part.public_ip) {
            return Ok(Route {
                dst: part.subnet,
                gateway,
                oif: Some(ext.index),
                onlink: false,
                nhid: None,
            });
        }
        Ok(Route {
            dst: part.subnet,
            gateway,
            oif: Some(self.index),
            onlink: true,
            nhid: None,
        })
    }

    fn is_ours(&self, side: &Side, r: &Route, ext: &ExtIface) -> bool {
        let through_device = r.oif == Some(self.index)
            && r.gateway.is_some()
            && side.network.contains(r.dst.network())
            && r.dst.prefix() > side.network.prefix();
        through_device || (self.direct_routing && is_gateway_route(r, side.network, ext.index))
    }

    fn mtu(&self, _ext: &ExtIface) -> u32 {
        self.mtu
    }

    async fn ensure_device(
        &mut self,
        nl: &Netlink,
        own: &BTreeMap<Family, IpNetwork>,
    ) -> Result<usize, BackendError> {
        let mut changed = 0;
        let mut link = nl.link_by_name(DEVICE).await?;
        if let Some(l) = &link {
            if !l.is_kind("ipip") {
                // upstream's words: the device is the user's
                return Err(BackendError::Device(format!(
                    "{DEVICE} isn't an ipip mode device, please remove device and try again"
                )));
            }
            let ends = l.tunnel.clone().unwrap_or_default();
            if ends.local != Some(IpAddr::V4(self.local)) || ends.remote.is_some() {
                warn!(
                    "{DEVICE:?} already exists with incompatible attributes: local={:?} remote={:?}; recreating device",
                    ends.local, ends.remote
                );
                nl.delete_link(l.index).await?;
                link = None;
            }
        }
        let link = match link {
            Some(l) => l,
            None => {
                nl.create_ipip(DEVICE, self.local, self.mtu)
                    .await
                    .map_err(|e| match e.kernel_errno() {
                        Some(libc::EOPNOTSUPP) => BackendError::Device(format!(
                            "the kernel has no ipip module (modprobe ipip): {e}"
                        )),
                        _ => e.into(),
                    })?;
                changed += usize::from(self.index != 0);
                nl.link_by_name(DEVICE).await?.ok_or_else(|| {
                    BackendError::Device(format!("{DEVICE} vanished right after it was made"))
                })?
            }
        };
        if self.index != 0 && link.index != self.index {
            changed = 1;
        }
        self.index = link.index;
        if link.mtu != self.mtu {
            info!(
                "current MTU of {DEVICE} is {}, setting it to {}",
                link.mtu, self.mtu
            );
            nl.set_link_mtu(link.index, self.mtu).await?;
        }
        if let Some(subnet) = own.get(&Family::V4) {
            crate::own_address::ensure(nl, link.index, DEVICE, self.network, *subnet).await?;
        }
        if !link.up {
            nl.set_link_up(link.index).await?;
        }
        Ok(changed)
    }

    fn is_device_damage(&self, event: &KernelEvent) -> bool {
        match event {
            KernelEvent::LinkDeleted { index } => *index == self.index,
            KernelEvent::LinkChanged { index, up } => *index == self.index && !up,
            _ => false,
        }
    }

    fn rebind(&self, route: Route, ext: &ExtIface) -> Route {
        if route.oif == Some(ext.index) {
            return route;
        }
        Route {
            oif: Some(self.index),
            ..route
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_net::{Expiration, LeaseAttrs};

    fn lease(subnet: &str, ip: &str, kind: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: kind.into(),
                backend_data: None,
                backend_v6_data: None,
            },
            expiration: Expiration::Never,
        }
    }

    #[test]
    fn routes_through_the_device_onlink_or_direct_on_the_segment() {
        let network: IpNetwork = "10.5.0.0/16".parse().unwrap();
        let ext = ExtIface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            addresses: vec!["192.168.77.1/24".parse().unwrap()],
        };
        let side = Side {
            family: Family::V4,
            network,
            public_ip: "192.168.77.1".parse().unwrap(),
        };
        let mut shape = Ipip {
            direct_routing: false,
            index: 7,
            local: "192.168.77.1".parse().unwrap(),
            mtu: 1480,
            network,
        };
        let near = lease("10.5.2.0/24", "192.168.77.2", "ipip");
        let far = lease("10.5.3.0/24", "198.51.100.3", "ipip");
        let r = shape.route_for(&side, None, &near, &ext).unwrap();
        assert_eq!((r.oif, r.onlink), (Some(7), true));
        assert!(shape.is_ours(&side, &r, &ext));
        shape.direct_routing = true;
        let r = shape.route_for(&side, None, &near, &ext).unwrap();
        assert_eq!((r.oif, r.onlink), (Some(2), false));
        assert!(shape.is_ours(&side, &r, &ext));
        let r = shape.route_for(&side, None, &far, &ext).unwrap();
        assert_eq!(r.oif, Some(7));
        let moved = Ipip { index: 9, ..shape };
        assert_eq!(moved.rebind(r, &ext).oif, Some(9));
        assert!(matches!(
            moved.route_for(
                &side,
                None,
                &lease("10.5.4.0/24", "192.168.77.4", "vxlan"),
                &ext
            ),
            Err(Skip::OtherType(_))
        ));
    }
}
