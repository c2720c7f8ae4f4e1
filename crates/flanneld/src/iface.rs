//! Choosing the external interface (upstream `LookupExtIface` and the `--iface*` flags):
//! the `--iface` list (names or IPs) in order, then the `--iface-regex` list (matched against
//! names and IPs), then `--iface-can-reach`; with none of those, the interface holding
//! `--public-ip`, else the one of the default route.

use std::net::Ipv4Addr;

use flannel_backend::netlink::link::Link;
use flannel_backend::netlink::route::Route;
use flannel_backend::netlink::{Family, Netlink};
use flannel_backend::{BackendError, ExtIface};
use ipnetwork::{IpNetwork, Ipv4Network};
use tracing::info;

use crate::options::Options;

/// The links and IPv4 routes of the node, as seen at start (the external interface is found
/// by its IPv4 address, as upstream does for the IPv4 side).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub links: Vec<(Link, Vec<Ipv4Network>)>,
    pub routes: Vec<Route>,
}

impl Snapshot {
    pub async fn read(nl: &Netlink) -> Result<Snapshot, BackendError> {
        let mut links = Vec::new();
        for link in nl.links().await? {
            let addrs = nl
                .addresses(link.index, Family::V4)
                .await?
                .into_iter()
                .filter_map(|a| match a {
                    IpNetwork::V4(a) => Some(a),
                    IpNetwork::V6(_) => None,
                })
                .collect();
            links.push((link, addrs));
        }
        Ok(Snapshot {
            links,
            routes: nl.routes(Family::V4).await?,
        })
    }

    fn by_ip(&self, ip: Ipv4Addr) -> Option<&(Link, Vec<Ipv4Network>)> {
        self.links
            .iter()
            .find(|(_, addrs)| addrs.iter().any(|a| a.ip() == ip))
    }

    fn by_index(&self, index: u32) -> Option<&(Link, Vec<Ipv4Network>)> {
        self.links.iter().find(|(l, _)| l.index == index)
    }
}

/// The chosen interface and the address flannel uses on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub ext: ExtIface,
    pub iface_addr: Ipv4Addr,
}

fn chosen(link: &Link, addrs: &[Ipv4Network], ip: Option<Ipv4Addr>) -> Result<Chosen, String> {
    let iface_addr = match ip.or_else(|| addrs.first().map(|a| a.ip())) {
        Some(ip) => ip,
        None => {
            return Err(format!(
                "failed to find IPv4 address for interface {}",
                link.name
            ))
        }
    };
    Ok(Chosen {
        ext: ExtIface {
            index: link.index,
            name: link.name.clone(),
            mtu: link.mtu,
            addresses: addrs.iter().copied().map(IpNetwork::V4).collect(),
        },
        iface_addr,
    })
}

/// The interface for `route lookup(dst)` in the main table: the longest matching prefix.
fn route_to(snapshot: &Snapshot, dst: Ipv4Addr) -> Option<u32> {
    snapshot
        .routes
        .iter()
        .filter(|r| r.dst.contains(dst.into()) && r.oif.is_some())
        .max_by_key(|r| r.dst.prefix())
        .and_then(|r| r.oif)
}

pub fn select(snapshot: &Snapshot, opts: &Options) -> Result<Chosen, String> {
    for spec in &opts.iface {
        let found = match spec.parse::<Ipv4Addr>() {
            Ok(ip) => snapshot
                .by_ip(ip)
                .ok_or_else(|| format!("no interface with address {ip}"))
                .and_then(|(l, a)| chosen(l, a, Some(ip))),
            Err(_) => snapshot
                .links
                .iter()
                .find(|(l, _)| l.name == *spec)
                .ok_or_else(|| format!("no interface named {spec}"))
                .and_then(|(l, a)| chosen(l, a, None)),
        };
        match found {
            Ok(c) => return Ok(c),
            Err(e) => info!("Could not find valid interface matching {spec}: {e}"),
        }
    }
    for re in &opts.iface_regex {
        for (link, addrs) in &snapshot.links {
            if let Some(a) = addrs.iter().find(|a| re.is_match(&a.ip().to_string())) {
                return chosen(link, addrs, Some(a.ip()));
            }
            if re.is_match(&link.name) && !addrs.is_empty() {
                return chosen(link, addrs, None);
            }
        }
        info!("Could not find valid interface matching {}", re.as_str());
    }
    if let Some(dst) = opts.iface_can_reach {
        if let Some((link, addrs)) = route_to(snapshot, dst).and_then(|i| snapshot.by_index(i)) {
            return chosen(link, addrs, None);
        }
        info!("Could not find an interface that can reach {dst}");
    }
    if !opts.iface.is_empty() || !opts.iface_regex.is_empty() || opts.iface_can_reach.is_some() {
        return Err(
            "Failed to find interface to use that matches the interfaces and/or regexes provided"
                .into(),
        );
    }
    if let Some(ip) = opts.public_ip {
        if let Some((link, addrs)) = snapshot.by_ip(ip) {
            return chosen(link, addrs, Some(ip));
        }
    }
    let default = snapshot
        .routes
        .iter()
        .find(|r| r.dst.prefix() == 0 && r.oif.is_some())
        .and_then(|r| r.oif)
        .and_then(|i| snapshot.by_index(i))
        .ok_or("failed to get default interface: no default route (use -iface)")?;
    chosen(&default.0, &default.1, None)
}

/// Logs the choice as upstream does.
pub fn log_choice(c: &Chosen, public_ip: Option<Ipv4Addr>) -> Ipv4Addr {
    info!(
        "Using interface with name {} and address {}",
        c.ext.name, c.iface_addr
    );
    match public_ip {
        Some(ip) => {
            info!("Using {ip} as external address");
            ip
        }
        None => {
            info!(
                "Defaulting external address to interface address ({})",
                c.iface_addr
            );
            c.iface_addr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Parsed, DAEMON_FLAGS};

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: None,
            mtu: 1500,
            up: true,
            kind: None,
            vxlan: None,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            links: vec![
                (link(1, "lo"), vec!["127.0.0.1/8".parse().unwrap()]),
                (link(2, "eth0"), vec!["192.168.77.1/24".parse().unwrap()]),
                (
                    link(3, "eth1"),
                    vec![
                        "10.9.0.5/16".parse().unwrap(),
                        "10.9.0.6/16".parse().unwrap(),
                    ],
                ),
                (link(4, "bare0"), vec![]),
            ],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some("10.9.0.1".parse().unwrap()),
                    oif: Some(3),
                    onlink: false,
                },
                Route {
                    dst: "192.168.77.0/24".parse().unwrap(),
                    gateway: None,
                    oif: Some(2),
                    onlink: false,
                },
                Route {
                    dst: "10.9.0.0/16".parse().unwrap(),
                    gateway: None,
                    oif: Some(3),
                    onlink: false,
                },
            ],
        }
    }

    fn opts(a: &[&str]) -> Options {
        let args: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let Parsed::Run(v) = parse(DAEMON_FLAGS, &args, &|_| None).unwrap() else {
            panic!()
        };
        Options::from_values(&v).unwrap()
    }

    fn pick(a: &[&str]) -> Result<(String, Ipv4Addr), String> {
        select(&snapshot(), &opts(a)).map(|c| (c.ext.name, c.iface_addr))
    }

    #[test]
    fn iface_by_name_or_ip_in_order() {
        assert_eq!(
            pick(&["-iface=eth0"]).unwrap(),
            ("eth0".into(), "192.168.77.1".parse().unwrap())
        );
        assert_eq!(
            pick(&["-iface=10.9.0.6"]).unwrap(),
            ("eth1".into(), "10.9.0.6".parse().unwrap())
        );
        assert_eq!(
            pick(&["-iface=nope", "-iface=bare0", "-iface=eth1"])
                .unwrap()
                .0,
            "eth1"
        );
    }

    #[test]
    fn regex_then_can_reach_then_error() {
        assert_eq!(pick(&["-iface-regex=^eth1$"]).unwrap().0, "eth1");
        assert_eq!(
            pick(&["-iface-regex=^192\\.168\\."]).unwrap(),
            ("eth0".into(), "192.168.77.1".parse().unwrap())
        );
        assert_eq!(
            pick(&["-iface=nope", "-iface-regex=^eth0"]).unwrap().0,
            "eth0"
        );
        assert_eq!(pick(&["-iface-can-reach=192.168.77.9"]).unwrap().0, "eth0");
        assert_eq!(
            pick(&["-iface-can-reach=8.8.8.8"]).unwrap().0,
            "eth1",
            "via the default route"
        );
        assert_eq!(
            pick(&["-iface=nope"]).unwrap_err(),
            "Failed to find interface to use that matches the interfaces and/or regexes provided"
        );
    }

    #[test]
    fn default_route_or_public_ip() {
        assert_eq!(pick(&[]).unwrap().0, "eth1");
        assert_eq!(pick(&["-public-ip=192.168.77.1"]).unwrap().0, "eth0");
        let mut s = snapshot();
        s.routes.retain(|r| r.dst.prefix() != 0);
        assert!(select(&s, &opts(&[]))
            .unwrap_err()
            .contains("no default route"));
    }
}
