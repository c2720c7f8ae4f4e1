//! What doctor checks of WireGuard's data path ([`crate::inspect`]): each device the config
//! uses (kind, MTU, the key of the key file, the port), and its peers against the peers
//! the backend itself would set for the leases (the same [`peers::peer_for`] and
//! [`tunnel::plan`]). Reads only: the key file is read, never made.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::future::BoxFuture;

use super::config::WireGuardConfig;
use super::device::Control;
use super::peers::{self, DeviceView};
use super::{devices_of, key, tunnel, uapi};
use crate::inspect::{Findings, Inspect};
use crate::lease_check::Skip;
use crate::netlink::link::Link;
use crate::netlink::wireguard::{KernelWireGuard, PeerChange, WgDevice};
use crate::netlink::{Family, Netlink};
use crate::side;
use flannel_net::NetworkConfig;

/// The link `name` and how to read it, with findings on the way.
async fn device_of(
    nl: &Netlink,
    name: &str,
    mtu: Option<u32>,
    r: &mut Findings,
) -> Option<(Link, Control)> {
    let link = match nl.link_by_name(name).await {
        Ok(Some(link)) => link,
        Ok(None) => {
            r.fail(
                "device",
                format!("{name} is missing"),
                "no pod traffic leaves or reaches this node; a running flanneld-rs makes it again within milliseconds: is it running?",
            );
            return None;
        }
        Err(e) => {
            r.fail("device", format!("reading {name}: {e}"), "");
            return None;
        }
    };
    let control = if link.is_kind("wireguard") {
        KernelWireGuard::connect().ok().map(Control::Kernel)
    } else if link.is_kind("tun") {
        Some(Control::Userspace(uapi::socket_path(name)))
    } else {
        None
    };
    let Some(control) = control else {
        r.fail(
            "device",
            format!(
                "{name} is no WireGuard device (kind {:?})",
                link.kind.as_ref().map(ToString::to_string)
            ),
            "flanneld-rs re-creates it at start",
        );
        return None;
    };
    if let Some(mtu) = mtu.filter(|m| *m != link.mtu) {
        r.warn(
            "device",
            format!("{name} has MTU {}, the config gives {mtu}", link.mtu),
            "flanneld-rs sets it at start",
        );
    } else {
        r.ok(
            "device",
            format!(
                "{name} up={} mtu {} ({})",
                link.up,
                link.mtu,
                control.describe()
            ),
        );
    }
    Some((link, control))
}

/// doctor without the leases: the devices.
pub(crate) fn inspect_device<'a>(
    config: &'a NetworkConfig,
    nl: &'a Netlink,
    r: &'a mut Findings,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        // the MTU needs the interface's, unknown here
        for name in super::device_names(config) {
            device_of(nl, name, None, r).await;
        }
    })
}

/// WireGuard's data path: every device exact, holding a peer for each WireGuard lease and
/// none other. The MTU pods should get: the underlay's less 80.
pub(crate) fn inspect<'a>(n: &'a Inspect<'a>, r: &'a mut Findings) -> BoxFuture<'a, Option<u32>> {
    Box::pin(async move {
        let cfg = match WireGuardConfig::from_backend(n.config.backend.as_ref()) {
            Ok(cfg) => cfg,
            Err(e) => {
                r.fail("device", e.to_string(), "");
                return None;
            }
        };
        let mtu = cfg.inner_mtu(n.ext.mtu);
        let own_key = match std::fs::read_to_string(key::key_file()) {
            Ok(text) => key::parse(&text).ok(),
            Err(_) => None,
        };
        if own_key.is_none() {
            r.fail(
                "device",
                format!("the key file {} is missing or unreadable", key::key_file().display()),
                "peers know this node by the public key in its lease; a new key file means a new key (WIREGUARD_KEY_FILE must be what the daemon uses)",
            );
        }
        let sides: Vec<_> = side::of_lease(n.config, n.lease);
        let own: Vec<(Family, ipnetwork::IpNetwork, IpAddr)> = sides
            .iter()
            .map(|(s, sub)| (s.family, *sub, s.public_ip))
            .collect();
        let plain: Vec<_> = sides.iter().map(|(s, _)| *s).collect();
        for (name, port, carried) in devices_of(&cfg, &plain) {
            let Some((_, control)) = device_of(n.nl, name, Some(mtu), r).await else {
                continue;
            };
            let device: WgDevice = match control.device(name).await {
                Ok(d) => d,
                Err(e) => {
                    r.fail("device", format!("reading {name}: {e}"), "");
                    continue;
                }
            };
            if own_key.is_some() && device.private_key != own_key {
                r.fail(
                    "device",
                    format!("{name} has another private key than {}", key::key_file().display()),
                    "peers cannot reach this node; restart flanneld-rs (it sets the key of its key file)",
                );
            }
            if device.listen_port != port {
                r.fail(
                    "device",
                    format!(
                        "{name} listens on port {}, the config says {port}",
                        device.listen_port
                    ),
                    "restart flanneld-rs",
                );
            }
            let view = DeviceView {
                sides: &carried,
                mode: cfg.mode,
                port,
                own: &own,
                has_v4: !n.lease.attrs.public_ip.is_unspecified(),
                public_ipv6: n.lease.attrs.public_ipv6,
            };
            let mut desired = BTreeMap::new();
            for l in n.leases {
                match peers::peer_for(&view, &cfg, l) {
                    Ok(p) => {
                        desired.insert(p.public_key, (l.key(), p));
                    }
                    Err(Skip::Invalid(why)) => r.warn(
                        "peers",
                        format!("lease {} is skipped: {why}", l.key()),
                        "no node programs it; fix or delete it",
                    ),
                    Err(_) => {}
                }
            }
            let plan = tunnel::plan(&desired, &device, true);
            let (stray, missing): (Vec<_>, Vec<_>) = plan
                .iter()
                .partition(|c| matches!(c, PeerChange::Remove(_)));
            let keys = |list: &[&PeerChange]| {
                list.iter()
                    .map(|c| key::encode(c.public_key()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !missing.is_empty() {
                r.fail(
                    "peers",
                    format!("{name}: peers missing or different: {}", keys(&missing)),
                    "pods of those nodes cannot be reached from here; a running flanneld-rs repairs this within its resync period: is it running?",
                );
            }
            if !stray.is_empty() {
                r.fail(
                    "peers",
                    format!("{name}: peers no lease explains: {}", keys(&stray)),
                    "flanneld-rs removes them when it runs",
                );
            }
            if plan.is_empty() {
                r.ok(
                    "peers",
                    format!("{name}: {} WireGuard peers exact", desired.len()),
                );
            }
        }
        Some(mtu)
    })
}
