//! What doctor checks of VXLAN's data path ([`crate::inspect`]): each family's device and
//! every peer's route, neighbour, FDB entry and nexthop, against the reconcile plan the
//! backend itself would make. Reads only.

use std::collections::BTreeMap;
use std::net::IpAddr;

use flannel_net::{Lease, NetworkConfig};
use futures::future::BoxFuture;
use ipnetwork::IpNetwork;

use super::config::encap_overhead;
use super::plan::{self, PeerChange};
use super::{peers, Peer, Skip, VxlanConfig};
use crate::inspect::{opt, Findings, Inspect};
use crate::netlink::{Family, Netlink};
use crate::side::{self, Side};
use crate::ExtIface;

/// VXLAN's data path: each family's device (present, up, a VXLAN device of the right VNI,
/// its MAC the lease's, its MTU) and every peer's entries, computed with the backend's own
/// reconcile plan (what the daemon would add is missing, what it would delete is stray).
/// The MTU pods should get.
pub(crate) fn inspect<'a>(n: &'a Inspect<'a>, r: &'a mut Findings) -> BoxFuture<'a, Option<u32>> {
    Box::pin(look(n, r))
}

async fn look(n: &Inspect<'_>, r: &mut Findings) -> Option<u32> {
    let Inspect {
        config,
        lease,
        leases,
        ext,
        nl,
        behind_nat,
    } = *n;
    let vx = VxlanConfig::from_backend(config.backend.as_ref()).ok()?;
    let mut mtu: Option<u32> = None;
    for (
        Side {
            family,
            network,
            public_ip: public,
        },
        own,
    ) in side::of_lease(config, lease)
    {
        let name = vx.device_name_of(family);
        let link = match nl.link_by_name(&name).await {
            Ok(Some(l)) if l.is_vxlan() => l,
            Ok(_) => {
                r.fail(
                    "device",
                    format!("{name} is missing"),
                    "no pod traffic leaves or reaches this node over VXLAN; a running flanneld-rs re-creates it (same MAC) within 10 s: is it running?",
                );
                continue;
            }
            Err(e) => {
                r.fail("device", format!("{name}: {e}"), "");
                continue;
            }
        };
        let data = match family {
            Family::V4 => lease.attrs.vxlan_data(),
            Family::V6 => lease.attrs.vxlan_v6_data(),
        };
        let want_mac = data.and_then(Result::ok).map(|d| d.vtep_mac);
        let want_mtu = vx
            .mtu
            .unwrap_or(ext.mtu)
            .saturating_sub(encap_overhead(family))
            .max(68);
        mtu = Some(mtu.map_or(link.mtu, |m| m.min(link.mtu)));
        let mut wrong = Vec::new();
        if !link.up {
            wrong.push("down".to_string());
        }
        if link.mac != want_mac {
            wrong.push(format!(
                "MAC {} but the lease says {} (peers send to the lease's: this node receives nothing)",
                link.mac.map_or("none".into(), |m| m.to_string()),
                want_mac.map_or("none".into(), |m| m.to_string())
            ));
        }
        if link.mtu != want_mtu {
            wrong.push(format!("MTU {} (expected {want_mtu})", link.mtu));
        }
        if let Some(v) = &link.vxlan {
            if v.vni != vx.vni {
                wrong.push(format!("VNI {} (the config: {})", v.vni, vx.vni));
            }
            if v.local.is_some_and(|l| l != public) {
                wrong.push(format!(
                    "local address {} (the lease: {public})",
                    v.local.map_or(String::new(), |l| l.to_string())
                ));
            }
        }
        if wrong.is_empty() {
            r.ok(
                "device",
                format!("{name} up, MAC {}, MTU {}", opt(link.mac), link.mtu),
            );
        } else {
            r.fail(
                "device",
                format!("{name}: {}", wrong.join("; ")),
                "restart flanneld-rs: it re-creates a device whose attributes differ, keeping the lease's MAC",
            );
        }
        tx_checksum(&name, behind_nat, r);
        peers_of(
            family, network, own, public, leases, ext, &vx, link.index, &name, nl, r,
        )
        .await;
    }
    mtu
}

/// Without the lease (the store cannot be read): each VXLAN device of the config is there,
/// a VXLAN device of the config's VNI, and up. Its MAC and the peers' entries need the
/// leases.
pub(crate) fn inspect_device<'a>(
    config: &'a NetworkConfig,
    nl: &'a Netlink,
    r: &'a mut Findings,
) -> BoxFuture<'a, ()> {
    Box::pin(look_at_devices(config, nl, r))
}

async fn look_at_devices(config: &NetworkConfig, nl: &Netlink, r: &mut Findings) {
    let Ok(vx) = VxlanConfig::from_backend(config.backend.as_ref()) else {
        return;
    };
    let mut families = Vec::new();
    if config.enable_ipv4 {
        families.push(Family::V4);
    }
    if config.enable_ipv6 {
        families.push(Family::V6);
    }
    for family in families {
        let name = vx.device_name_of(family);
        match nl.link_by_name(&name).await {
            Ok(Some(l)) if l.is_vxlan() && l.up => {
                match l.vxlan.as_ref().map(|v| v.vni) {
                    Some(vni) if vni != vx.vni => r.fail(
                        "device",
                        format!("{name}: VNI {vni} (the config: {})", vx.vni),
                        "restart flanneld-rs: it re-creates a device whose attributes differ",
                    ),
                    _ => r.ok("device", format!("{name} up, MTU {}", l.mtu)),
                }
            }
            Ok(Some(_)) => r.fail(
                "device",
                format!("{name} is down or not a VXLAN device"),
                "no pod traffic leaves or reaches this node over VXLAN; a running flanneld-rs repairs it: is it running?",
            ),
            Ok(None) => r.fail(
                "device",
                format!("{name} is missing"),
                "no pod traffic leaves or reaches this node over VXLAN; a running flanneld-rs re-creates it (same MAC) within 10 s: is it running?",
            ),
            Err(e) => r.fail("device", format!("{name}: {e}"), ""),
        }
    }
}

/// The TX checksum offload of a VXLAN device (`ethtool -k`). With it on, nodes behind NAT
/// send VXLAN packets whose UDP checksum the NAT breaks, and receivers drop them (upstream
/// #1279, #2152; the workaround of upstream's troubleshooting.md).
fn tx_checksum(device: &str, behind_nat: bool, r: &mut Findings) {
    let out = match std::process::Command::new("ethtool")
        .args(["-k", device])
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => {
            r.ok(
                "device",
                format!("{device}: TX checksum offload not checked (no ethtool)"),
            );
            return;
        }
    };
    let on = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("tx-checksumming:"))
        .is_some_and(|v| v.trim_start().starts_with("on"));
    if on && behind_nat {
        r.warn(
            "device",
            format!("{device}: TX checksum offload is on and this node's PublicIP is behind NAT"),
            format!("the NAT breaks the VXLAN packets' UDP checksum and peers drop them (\"UDP: bad checksum\" in their kernel log); run ethtool -K {device} tx-checksum-ip-generic off (a udev rule keeps it across re-creation)"),
        );
    } else {
        r.ok(
            "device",
            format!(
                "{device}: TX checksum offload {}",
                if on { "on (fine without NAT)" } else { "off" }
            ),
        );
    }
}

/// A peer as doctor names it: `10.200.3.0/24 (192.168.77.3)`.
fn name(p: &Peer) -> String {
    format!("{} ({})", p.subnet, p.public_ip)
}

/// The peer a missing change is for, whatever entries it holds and whichever route form:
/// a route names its destination (the peer's subnet) whether it goes via the peer's
/// gateway or through a nexthop object, which names no gateway.
fn peer_of_change<'a>(
    desired: &'a BTreeMap<IpNetwork, Peer>,
    change: &PeerChange,
    device: u32,
) -> Option<&'a Peer> {
    if let Some(route) = change.route {
        return desired.get(&route.dst);
    }
    desired.values().find(|p| {
        change.neighbour.is_some_and(|n| n.ip == p.gateway())
            || change.fdb.is_some_and(|f| p.fdb() == Some(f))
            || change
                .nexthop
                .is_some_and(|n| p.nexthop(device).is_some_and(|m| m.id == n.id))
    })
}

#[allow(clippy::too_many_arguments)] // one family's view, passed once
async fn peers_of(
    family: Family,
    network: IpNetwork,
    own: IpNetwork,
    public: IpAddr,
    leases: &[Lease],
    ext: &ExtIface,
    vx: &VxlanConfig,
    index: u32,
    device: &str,
    nl: &Netlink,
    r: &mut Findings,
) {
    let mut desired = BTreeMap::new();
    for l in leases {
        match peers::peer_from_lease(
            l,
            family,
            network,
            Some((own, public)),
            vx.direct_routing,
            ext,
        ) {
            Ok(p) => {
                desired.insert(p.subnet, p);
            }
            Err(Skip::Invalid(why)) => r.warn(
                "peers",
                format!("lease {} is skipped: {why}", l.key()),
                "no node programs it; fix or delete it",
            ),
            Err(_) => {}
        }
    }
    let observed = match async {
        Ok::<_, crate::BackendError>(plan::Observed {
            neighbours: nl.neighbour_entries(index, family).await?,
            fdb: nl.fdb_entries(index).await?,
            routes: nl.routes(family).await?,
            nexthops: nl.nexthops().await?,
        })
    }
    .await
    {
        Ok(o) => o,
        Err(e) => {
            r.fail("peers", format!("listing the entries of {device}: {e}"), "");
            return;
        }
    };
    let plan = plan::plan(
        &desired,
        observed,
        index,
        network,
        vx.direct_routing.then_some(ext.index),
        nl.uses_nexthops(),
    );
    let neighbour = match family {
        Family::V4 => "ARP",
        Family::V6 => "NDP",
    };
    let mut missing = Vec::new();
    for change in &plan.add {
        let who =
            peer_of_change(&desired, change, index).map_or_else(|| "a peer".to_string(), name);
        let mut what = Vec::new();
        if change.route.is_some() {
            what.push("route");
        }
        if change.neighbour.is_some() {
            what.push(neighbour);
        }
        if change.fdb.is_some() {
            what.push("FDB");
        }
        if change.nexthop.is_some() {
            what.push("nexthop");
        }
        missing.push(format!("{who}: {} missing", what.join(", ")));
    }
    if !missing.is_empty() {
        r.fail(
            "peers",
            format!("on {device}: {}", missing.join("; ")),
            "pods of those nodes cannot be reached from here; a running flanneld-rs repairs this within milliseconds: is it running? Restart it",
        );
    }
    let mut stray = Vec::new();
    // an entry no lease explains, of a peer that is there (another form, an old MAC) or
    // of none (a node that is gone)
    let of = |p: Option<&Peer>| {
        p.map_or_else(|| " (no lease)".to_string(), |p| format!(" of {}", name(p)))
    };
    stray.extend(
        plan.del_routes
            .iter()
            .map(|r| format!("route {}{}", r.dst, of(desired.get(&r.dst)))),
    );
    stray.extend(plan.del_neighbours.iter().map(|ip| {
        let peer = desired.values().find(|p| p.gateway() == *ip);
        format!("{neighbour} {ip}{}", of(peer))
    }));
    stray.extend(plan.del_fdb.iter().map(|f| {
        let peer = desired.values().find(|p| p.public_ip == f.dst);
        format!("FDB {} dst {}{}", f.mac, f.dst, of(peer))
    }));
    stray.extend(plan.del_nexthops.iter().map(|id| {
        let peer = desired
            .values()
            .find(|p| p.nexthop(index).is_some_and(|n| n.id == *id));
        format!("nexthop {id}{}", of(peer))
    }));
    if !stray.is_empty() {
        r.fail(
            "peers",
            format!("on {device}, entries no lease explains: {}", stray.join("; ")),
            "traffic to those addresses goes to a node that is gone or changed (a stale route or an old VTEP MAC); flanneld-rs removes them within 10 s when it runs",
        );
    }
    if missing.is_empty() && stray.is_empty() {
        r.ok(
            "peers",
            format!("{} peers on {device}, every entry exact", desired.len()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subnet: &str, ip: &str) -> Peer {
        Peer {
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            mac: flannel_net::MacAddr([2, 0, 0, 0, 0, 3]),
            direct: false,
        }
    }

    /// Issue 26 §8: a route through a nexthop object names no gateway; the peer is still named,
    /// in both route forms, and by its other entries alone.
    #[test]
    fn a_missing_entry_names_its_peer_in_both_route_forms() {
        let a = peer("10.200.2.0/24", "192.168.77.2");
        let b = peer("10.200.3.0/24", "192.168.77.3");
        let desired: BTreeMap<_, _> = [(a.subnet, a), (b.subnet, b)].into_iter().collect();
        let id = b.nexthop(5).unwrap().id;
        let classic = PeerChange {
            neighbour: None,
            fdb: None,
            nexthop: None,
            route: Some(b.route(5)),
        };
        let via_nexthop = PeerChange {
            route: Some(b.route_via(id)),
            ..classic.clone()
        };
        assert_eq!(via_nexthop.route.unwrap().gateway, None);
        for change in [classic.clone(), via_nexthop] {
            assert_eq!(
                peer_of_change(&desired, &change, 5).map(name),
                Some("10.200.3.0/24 (192.168.77.3)".to_string())
            );
        }
        let fdb_only = PeerChange {
            route: None,
            fdb: a.fdb(),
            ..classic.clone()
        };
        assert_eq!(
            peer_of_change(&desired, &fdb_only, 5).map(name).unwrap(),
            "10.200.2.0/24 (192.168.77.2)"
        );
        let nexthop_only = PeerChange {
            route: None,
            nexthop: b.nexthop(5),
            ..classic
        };
        assert_eq!(peer_of_change(&desired, &nexthop_only, 5), Some(&b));
    }
}
