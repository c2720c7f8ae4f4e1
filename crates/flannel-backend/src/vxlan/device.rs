//! The `flannel.<VNI>` device (upstream `newVXLANDevice` / `ensureLink`).
//!
//! The VTEP MAC is what every peer has programmed for this node, so it must not change
//! without need (upstream #1795, #1788). The rule: keep the MAC of the existing device (also
//! when the device must be re-created because it is incompatible); when there is no device,
//! use the MAC this node's lease in etcd already advertises; only when there is neither, make
//! a random locally administered one. After creation the MAC is checked and set back if
//! something (systemd-udevd's `MACAddressPolicy=random`) changed it.

use flannel_net::MacAddr;
use tracing::{debug, info, warn};

use crate::netlink::link::{Link, LinkKind, VxlanLinkSpec};
use crate::netlink::Netlink;
use crate::BackendError;

/// The device as flannel uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u32,
}

/// Why an existing link cannot serve as the device, or `None` when it can (upstream
/// `vxlanLinksIncompat`: kind, VNI, underlay, local address, port, GBP).
pub fn incompatibility(existing: &Link, want: &VxlanLinkSpec) -> Option<String> {
    if !existing.is_vxlan() {
        return Some(format!(
            "link type: {:?} vs {}",
            existing
                .kind
                .as_ref()
                .map_or_else(|| "none".to_string(), ToString::to_string),
            LinkKind::Vxlan
        ));
    }
    let Some(v) = &existing.vxlan else {
        return Some("no vxlan attributes".into());
    };
    if v.vni != want.vni {
        return Some(format!("vni: {} vs {}", v.vni, want.vni));
    }
    if let Some(link) = v.link {
        if want.underlay_index > 0 && link != want.underlay_index {
            return Some(format!(
                "vtep (external) interface: {link} vs {}",
                want.underlay_index
            ));
        }
    }
    if let Some(local) = v.local {
        if !local.is_unspecified() && local != want.local {
            return Some(format!("vtep (external) IP: {local} vs {}", want.local));
        }
    }
    if let Some(port) = v.port {
        if want.port > 0 && port != want.port {
            return Some(format!("port: {port} vs {}", want.port));
        }
    }
    if v.gbp != want.gbp {
        return Some(format!("gbp: {} vs {}", v.gbp, want.gbp));
    }
    None
}

fn random_mac() -> MacAddr {
    MacAddr::local_unicast(rand::random())
}

/// Makes sure the device exists as `spec` says (the MAC of `spec` is ignored: see the module
/// docs for which MAC is used) and returns it, up, with the right MTU and MAC.
pub async fn ensure_device(
    nl: &Netlink,
    spec: &VxlanLinkSpec,
    mac_hint: Option<MacAddr>,
) -> Result<Device, BackendError> {
    let mut mac = None;
    for _ in 0..3 {
        match nl.link_by_name(&spec.name).await? {
            Some(existing) => match incompatibility(&existing, spec) {
                None => {
                    info!("Returning existing device {}", spec.name);
                    return finish(nl, spec, existing, None).await;
                }
                Some(why) => {
                    warn!(
                        "{:?} already exists with incompatible configuration: {why}; recreating device",
                        spec.name
                    );
                    mac = existing.mac;
                    nl.delete_link(existing.index).await?;
                }
            },
            None => {
                let want = mac.or(mac_hint).unwrap_or_else(random_mac);
                match nl.create_vxlan(spec, want).await {
                    Ok(()) => {
                        let link = nl.link_by_name(&spec.name).await?.ok_or_else(|| {
                            BackendError::Device(format!(
                                "{} vanished right after creation",
                                spec.name
                            ))
                        })?;
                        disable_accept_ra(&spec.name, spec.local.is_ipv6());
                        return finish(nl, spec, link, Some(want)).await;
                    }
                    // Somebody created it between our look and our create: look again.
                    Err(e) if e.already_exists() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(BackendError::Device(format!(
        "{} keeps changing under us",
        spec.name
    )))
}

/// Brings the link to the wanted MTU and MAC, and up.
async fn finish(
    nl: &Netlink,
    spec: &VxlanLinkSpec,
    link: Link,
    want_mac: Option<MacAddr>,
) -> Result<Device, BackendError> {
    if link.mtu != spec.mtu {
        nl.set_link_mtu(link.index, spec.mtu).await?;
    }
    let mut mac = link.mac;
    if let Some(want) = want_mac {
        if mac != Some(want) {
            warn!(
                "{}'s mac address wanted: {want}, but got: {mac:?}; setting it back",
                spec.name
            );
            nl.set_link_mac(link.index, want).await?;
            mac = Some(want);
        }
    }
    let mac =
        mac.ok_or_else(|| BackendError::Device(format!("{} has no MAC address", spec.name)))?;
    if !link.up {
        nl.set_link_up(link.index).await?;
    }
    Ok(Device {
        index: link.index,
        name: spec.name.clone(),
        mac,
        mtu: spec.mtu,
    })
}

/// Upstream sets `net.ipv6.conf.<dev>.accept_ra = 0`: the device must not configure itself
/// from router advertisements. Missing when IPv6 is disabled, already 0: nothing to do. Where
/// /proc/sys cannot be written (a container's read-only /proc/sys), it matters only for the
/// device that carries IPv6 (the IPv4 one forwards no multicast: no advertisement reaches
/// it) and only if the kernel would act on one (`accept_ra` 2, or 1 with IPv6 forwarding off
/// on the device): then a warning, once per process; else a debug line.
fn disable_accept_ra(name: &str, carries_ipv6: bool) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let dir = format!("/proc/sys/net/ipv6/conf/{name}");
    let read = |key: &str| {
        std::fs::read_to_string(format!("{dir}/{key}"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let accept_ra = read("accept_ra");
    if accept_ra.is_empty() || accept_ra == "0" {
        return;
    }
    let Err(e) = std::fs::write(format!("{dir}/accept_ra"), "0") else {
        return;
    };
    let matters = carries_ipv6 && (accept_ra == "2" || read("forwarding") == "0");
    if !matters {
        debug!("could not disable accept_ra on {name}: {e} (no router advertisement takes effect on it)");
    } else if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        warn!(
            "could not disable accept_ra on {name}: {e}; router advertisements reaching it may add addresses and routes (set net.ipv6.conf.{name}.accept_ra=0, or IPv6 forwarding on)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::link::VxlanAttrs;

    fn spec() -> VxlanLinkSpec {
        VxlanLinkSpec {
            name: "flannel.1".into(),
            vni: 1,
            underlay_index: 2,
            local: "192.0.2.1".parse().unwrap(),
            port: 0,
            learning: false,
            gbp: false,
            mtu: 1450,
        }
    }

    fn link(v: VxlanAttrs) -> Link {
        Link {
            index: 5,
            name: "flannel.1".into(),
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            mtu: 1450,
            up: true,
            kind: Some(LinkKind::Vxlan),
            vxlan: Some(v),
            tunnel: None,
        }
    }

    #[test]
    fn compatible_when_attributes_match_or_are_unset() {
        let v = VxlanAttrs {
            vni: 1,
            link: Some(2),
            local: Some("192.0.2.1".parse().unwrap()),
            port: Some(8472),
            gbp: false,
            learning: false,
        };
        assert_eq!(
            incompatibility(&link(v.clone()), &spec()),
            None,
            "port 0 means any"
        );
        assert_eq!(
            incompatibility(
                &link(VxlanAttrs {
                    vni: 1,
                    ..Default::default()
                }),
                &spec()
            ),
            None
        );
        let mut s = spec();
        s.port = 4789;
        assert!(incompatibility(&link(v.clone()), &s)
            .unwrap()
            .contains("port"));
        for (changed, what) in [
            (
                VxlanAttrs {
                    vni: 2,
                    ..v.clone()
                },
                "vni",
            ),
            (
                VxlanAttrs {
                    link: Some(3),
                    ..v.clone()
                },
                "interface",
            ),
            (
                VxlanAttrs {
                    local: Some("192.0.2.9".parse().unwrap()),
                    ..v.clone()
                },
                "IP",
            ),
            (
                VxlanAttrs {
                    gbp: true,
                    ..v.clone()
                },
                "gbp",
            ),
        ] {
            assert!(
                incompatibility(&link(changed), &spec())
                    .unwrap()
                    .contains(what),
                "{what}"
            );
        }
        let mut veth = link(v);
        veth.kind = Some(LinkKind::Other("veth".into()));
        assert!(incompatibility(&veth, &spec())
            .unwrap()
            .contains("link type"));
    }
}
