//! What a chaos host's kernel holds for its peers, and rules 2 and 3: every host's entries are
//! exactly the leases, no two hosts hold one subnet, each host's lease names the host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use flannel_lab::lab::{try_nsexec, Lab};

use super::store::{Leases, Store};
use crate::host_gw;

/// A host's peer entries: routes (subnet, gateway: the PublicIP for host-gw, unspecified
/// for VXLAN, whose gateway is the subnet's own address), ARP (ip, mac) and FDB (mac, dst)
/// of the VXLAN device.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct KernelState {
    pub(super) routes: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
    pub(super) arp: BTreeSet<(Ipv4Addr, String)>,
    pub(super) fdb: BTreeSet<(String, Ipv4Addr)>,
}

fn in_network(ip: Ipv4Addr) -> bool {
    ip.octets()[0] == 10 && ip.octets()[1] < 16
}

/// Host `h`'s kernel now.
pub(super) fn kernel_state(lab: &Lab, h: usize) -> KernelState {
    let run = |args: &[&str]| try_nsexec(&lab.hosts[h - 1].ns, args).1;
    let fields = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    let after = |f: &[String], word: &str| {
        let at = f.iter().position(|w| w == word)?;
        f.get(at + 1).cloned()
    };
    let subnet = |f: &[String]| -> Option<Ipv4Addr> {
        let ip: Ipv4Addr = f.first()?.strip_suffix("/24")?.parse().ok()?;
        in_network(ip).then_some(ip)
    };
    if host_gw() {
        let routes = run(&["ip", "-4", "route", "show"])
            .lines()
            .map(fields)
            .filter_map(|f| {
                let gw = after(&f, "via")?.parse().ok()?;
                Some((subnet(&f)?, gw))
            })
            .collect();
        return KernelState {
            routes,
            ..KernelState::default()
        };
    }
    let routes = run(&["ip", "-4", "route", "show", "dev", "flannel.1"])
        .lines()
        .map(fields)
        .filter_map(|f| Some((subnet(&f)?, Ipv4Addr::UNSPECIFIED)))
        .collect();
    let arp = run(&["ip", "-4", "neigh", "show", "dev", "flannel.1"])
        .lines()
        .map(fields)
        .filter_map(|f| Some((f.first()?.parse().ok()?, after(&f, "lladdr")?)))
        .collect();
    let fdb = run(&["bridge", "fdb", "show", "dev", "flannel.1"])
        .lines()
        .map(fields)
        .filter_map(|f| Some((f.first()?.clone(), after(&f, "dst")?.parse().ok()?)))
        .collect();
    KernelState { routes, arp, fdb }
}

/// What a host holding `own` must program for `leases`.
fn wanted(leases: &Leases, own: Ipv4Addr) -> KernelState {
    let others = || leases.iter().filter(|(s, _)| **s != own);
    KernelState {
        routes: others()
            .map(|(s, (ip, _))| {
                (
                    *s,
                    if host_gw() {
                        *ip
                    } else {
                        Ipv4Addr::UNSPECIFIED
                    },
                )
            })
            .collect(),
        arp: if host_gw() {
            BTreeSet::new()
        } else {
            others().map(|(s, (_, m))| (*s, m.clone())).collect()
        },
        fdb: if host_gw() {
            BTreeSet::new()
        } else {
            others().map(|(_, (ip, m))| (m.clone(), *ip)).collect()
        },
    }
}

/// Host `h`'s subnet from its subnet.env.
pub(super) fn own_subnet(lab: &Lab, h: usize) -> Option<Ipv4Addr> {
    lab.subnet(h)?.trim_end_matches("/24").parse().ok()
}

/// Rule 3 on the hosts' subnet.env: two hosts holding one subnet, if any.
pub(super) fn shared_subnet(lab: &Lab) -> Option<String> {
    let mut own = BTreeMap::new();
    for h in 1..=lab.hosts.len() {
        if let Some(net) = own_subnet(lab, h) {
            if let Some(other) = own.insert(net, h) {
                return Some(format!("h{h} and h{other} both hold {net}/24"));
            }
        }
    }
    None
}

/// Rules 2 and 3 once: `None` when they hold, else what differs.
pub(super) fn state_differs(lab: &Lab, store: Store) -> Option<String> {
    let Some(leases) = store.leases(lab) else {
        return Some(format!("the {} store cannot be read\n", store.name()));
    };
    let mut report = shared_subnet(lab).map(|s| s + "\n").unwrap_or_default();
    for h in 1..=lab.hosts.len() {
        let ip = lab.hosts[h - 1].ip;
        let Some(net) = own_subnet(lab, h) else {
            report += &format!("h{h}: no subnet.env subnet\n");
            continue;
        };
        if leases.get(&net).map(|l| l.0) != Some(ip) {
            report += &format!(
                "h{h} holds {net}/24, whose lease is {:?}\n",
                leases.get(&net)
            );
        }
        let want = wanted(&leases, net);
        let have = kernel_state(lab, h);
        let mut diff = |what: &str, want: String, have: String| {
            report += &format!("h{h} {what}: want-only {want}; kernel-only {have}\n");
        };
        if have.routes != want.routes {
            diff(
                "routes",
                format!(
                    "{:?}",
                    want.routes.difference(&have.routes).collect::<Vec<_>>()
                ),
                format!(
                    "{:?}",
                    have.routes.difference(&want.routes).collect::<Vec<_>>()
                ),
            );
        }
        if have.arp != want.arp {
            diff(
                "ARP",
                format!("{:?}", want.arp.difference(&have.arp).collect::<Vec<_>>()),
                format!("{:?}", have.arp.difference(&want.arp).collect::<Vec<_>>()),
            );
        }
        if have.fdb != want.fdb {
            diff(
                "FDB",
                format!("{:?}", want.fdb.difference(&have.fdb).collect::<Vec<_>>()),
                format!("{:?}", have.fdb.difference(&want.fdb).collect::<Vec<_>>()),
            );
        }
    }
    (!report.is_empty()).then_some(report)
}
