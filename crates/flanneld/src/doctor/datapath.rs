//! The doctor's look at the data path: for VXLAN, each family's device (present, up, a VXLAN
//! device of the right VNI, its MAC the lease's, its MTU) and every peer's entries, computed
//! with the backend's own reconcile plan (what the daemon would add is missing, what it would
//! delete is stray); for host-gw, the routes. Reads only.

use std::collections::BTreeMap;
use std::net::IpAddr;

use flannel_backend::netlink::{Family, Netlink};
use flannel_backend::vxlan::{config::encap_overhead, peers, Skip, VxlanConfig};
use flannel_backend::ExtIface;
use flannel_net::{Lease, NetworkConfig};
use ipnetwork::IpNetwork;

use super::Report;

/// What the data path checks look at: the config, this node's lease, every lease, the
/// external interface.
pub struct Node<'a> {
    pub config: &'a NetworkConfig,
    pub lease: &'a Lease,
    pub leases: &'a [Lease],
    pub ext: &'a ExtIface,
    pub nl: &'a Netlink,
    /// The PublicIP is not an address of the interface (`-public-ip` behind NAT).
    pub behind_nat: bool,
}

/// Checks the data path of the node; returns the MTU pods should get (for subnet.env),
/// `None` when it cannot be told.
pub async fn check(n: &Node<'_>, r: &mut Report) -> Option<u32> {
    match n.config.backend_kind().as_str() {
        "vxlan" => vxlan(n, r).await,
        "host-gw" => {
            host_gw(n, r).await;
            Some(n.ext.mtu)
        }
        other => {
            r.ok("device", format!("backend {other}: no data path to check"));
            None
        }
    }
}

/// Each enabled family: its Network, this node's subnet and address.
fn sides(config: &NetworkConfig, lease: &Lease) -> Vec<(Family, IpNetwork, IpNetwork, IpAddr)> {
    let mut out = Vec::new();
    if let (true, Some(s), Some(ip)) = (
        config.enable_ipv4,
        lease.subnet_of(false),
        lease.attrs.public_ip_of(false),
    ) {
        out.push((Family::V4, IpNetwork::V4(config.network), s, ip));
    }
    if let (Some(n6), Some(s), Some(ip)) = (
        config.ipv6_network.filter(|_| config.enable_ipv6),
        lease.subnet_of(true),
        lease.attrs.public_ip_of(true),
    ) {
        out.push((Family::V6, IpNetwork::V6(n6), s, ip));
    }
    out
}

async fn vxlan(n: &Node<'_>, r: &mut Report) -> Option<u32> {
    let Node {
        config,
        lease,
        leases,
        ext,
        nl,
        behind_nat,
    } = *n;
    let vx = VxlanConfig::from_backend(config.backend.as_ref()).ok()?;
    let mut mtu: Option<u32> = None;
    for (family, network, own, public) in sides(config, lease) {
        let name = vx.device_name_of(family);
        let link = match nl.link_by_name(&name).await {
            Ok(Some(l)) if l.kind.as_deref() == Some("vxlan") => l,
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
pub async fn device_only(config: &NetworkConfig, nl: &Netlink, r: &mut Report) {
    if config.backend_kind() != "vxlan" {
        return;
    }
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
            Ok(Some(l)) if l.kind.as_deref() == Some("vxlan") && l.up => {
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
fn tx_checksum(device: &str, behind_nat: bool, r: &mut Report) {
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

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
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
    r: &mut Report,
) {
    let mut desired = BTreeMap::new();
    let mut names = BTreeMap::new();
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
                names.insert(p.gateway(), format!("{} ({})", p.subnet, p.public_ip));
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
        Ok::<_, flannel_backend::BackendError>(peers::Observed {
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
    let plan = peers::plan(
        &desired,
        observed,
        index,
        network,
        vx.direct_routing,
        nl.uses_nexthops(),
    );
    let neighbour = match family {
        Family::V4 => "ARP",
        Family::V6 => "NDP",
    };
    let mut missing = Vec::new();
    for change in &plan.add {
        let gw = change
            .neighbour
            .map(|n| n.ip)
            .or(change.route.and_then(|r| r.gateway))
            .or(change.fdb.and_then(|f| {
                desired
                    .values()
                    .find(|p| p.fdb() == Some(f))
                    .map(|p| p.gateway())
            }));
        let who = gw
            .and_then(|g| names.get(&g).cloned())
            .unwrap_or_else(|| "a peer".to_string());
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
    stray.extend(plan.del_routes.iter().map(|r| format!("route {}", r.dst)));
    stray.extend(
        plan.del_neighbours
            .iter()
            .map(|ip| format!("{neighbour} {ip}")),
    );
    stray.extend(
        plan.del_fdb
            .iter()
            .map(|f| format!("FDB {} dst {}", f.mac, f.dst)),
    );
    stray.extend(plan.del_nexthops.iter().map(|id| format!("nexthop {id}")));
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

async fn host_gw(n: &Node<'_>, r: &mut Report) {
    let Node {
        config,
        lease,
        leases,
        ext,
        nl,
        ..
    } = *n;
    for (family, network, own, public) in sides(config, lease) {
        let mut want = BTreeMap::new();
        for l in leases.iter().filter(|l| l.attrs.backend_type == "host-gw") {
            let v6 = family == Family::V6;
            let (Some(subnet), Some(gw)) = (l.subnet_of(v6), l.attrs.public_ip_of(v6)) else {
                continue;
            };
            if subnet == own || gw == public {
                continue;
            }
            if !ext.on_link(gw) {
                // a problem, not a warning: that node's pods cannot be reached from here
                r.fail(
                    "peers",
                    format!("{subnet} via {gw}: not on the segment of {}", ext.name),
                    "host-gw needs every node on one L2 segment; that node's pods are unreachable from here, and the daemon programs no route to it (use vxlan, or put the nodes on one segment)",
                );
                continue;
            }
            want.insert(subnet, gw);
        }
        let routes = nl.routes(family).await.unwrap_or_default();
        let ours: Vec<_> = routes
            .iter()
            .filter(|rt| {
                rt.oif == Some(ext.index)
                    && rt.gateway.is_some()
                    && network.contains(rt.dst.network())
                    && rt.dst.prefix() > network.prefix()
            })
            .collect();
        let missing: Vec<String> = want
            .iter()
            .filter(|(s, g)| {
                !ours
                    .iter()
                    .any(|rt| rt.dst == **s && rt.gateway == Some(**g))
            })
            .map(|(s, g)| format!("{s} via {g}"))
            .collect();
        let stray: Vec<String> = ours
            .iter()
            .filter(|rt| rt.gateway.is_none_or(|g| want.get(&rt.dst) != Some(&g)))
            .map(|rt| format!("{} via {}", rt.dst, opt(rt.gateway)))
            .collect();
        if !missing.is_empty() {
            r.fail(
                "peers",
                format!("routes missing on {}: {}", ext.name, missing.join("; ")),
                "pods of those nodes cannot be reached from here; a running flanneld-rs repairs this within milliseconds: is it running?",
            );
        }
        if !stray.is_empty() {
            r.fail(
                "peers",
                format!("routes no lease explains on {}: {}", ext.name, stray.join("; ")),
                "traffic goes to a node that is gone; flanneld-rs removes them within 10 s when it runs",
            );
        }
        if missing.is_empty() && stray.is_empty() {
            r.ok("peers", format!("{} host-gw routes exact", want.len()));
        }
    }
}
