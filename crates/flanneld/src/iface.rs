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

use crate::options::{check_node_address, Options};

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

    /// `eth0 (192.168.77.1/24), eth1 (none)`: what an operator can choose from.
    fn describe(&self) -> String {
        self.links
            .iter()
            .map(|(l, addrs)| {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                let addrs = if addrs.is_empty() {
                    "no IPv4 address".to_string()
                } else {
                    addrs.join(", ")
                };
                format!("{} ({addrs})", l.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The chosen interface and the address flannel uses on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub ext: ExtIface,
    pub iface_addr: Ipv4Addr,
}

/// The interface `link` with `ip` (or its first usable address): loopback, unspecified,
/// broadcast and multicast addresses cannot carry traffic from other nodes.
fn chosen(link: &Link, addrs: &[Ipv4Network], ip: Option<Ipv4Addr>) -> Result<Chosen, String> {
    if let Some(ip) = ip {
        check_node_address(ip)?;
    }
    let usable = || {
        addrs
            .iter()
            .map(|a| a.ip())
            .find(|a| check_node_address(*a).is_ok())
    };
    let iface_addr = match ip.or_else(usable) {
        Some(ip) => ip,
        // upstream's words
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
            let usable = |a: &&Ipv4Network| check_node_address(a.ip()).is_ok();
            if let Some(a) = addrs
                .iter()
                .filter(usable)
                .find(|a| re.is_match(&a.ip().to_string()))
            {
                return chosen(link, addrs, Some(a.ip()));
            }
            if re.is_match(&link.name) && addrs.iter().any(|a| usable(&a)) {
                return chosen(link, addrs, None);
            }
        }
        info!(
            "Could not find valid interface matching {} (interfaces here: {})",
            re.as_str(),
            snapshot.describe()
        );
    }
    if let Some(dst) = opts.iface_can_reach {
        match route_to(snapshot, dst).and_then(|i| snapshot.by_index(i)) {
            Some((link, addrs)) => return chosen(link, addrs, None),
            None => info!(
                "Could not find valid interface matching ifaceCanReach: {dst}: no route to {dst} in the main table (network is unreachable)"
            ),
        }
    }
    if !opts.iface.is_empty() || !opts.iface_regex.is_empty() || opts.iface_can_reach.is_some() {
        // upstream's words; with regexes, what there was to match
        let mut e =
            "Failed to find interface to use that matches the interfaces and/or regexes provided"
                .to_string();
        if !opts.iface_regex.is_empty() {
            e += &format!(" (interfaces here: {})", snapshot.describe());
        }
        if let Some(dst) = opts.iface_can_reach {
            e += &format!(" (-iface-can-reach {dst}: no route to it in the main table: network is unreachable)");
        }
        return Err(e);
    }
    if let Some(ip) = opts.public_ip {
        // upstream: without -iface, -public-ip must be an address of this host
        let (link, addrs) = snapshot.by_ip(ip).ok_or_else(|| {
            format!(
                "Failed to find any valid interface to use: error looking up interface {ip}: no interface has that address (a public IP that is not on this host, behind NAT, needs -iface too)"
            )
        })?;
        return chosen(link, addrs, Some(ip));
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
    fn loopback_and_other_unusable_addresses_are_refused() {
        assert_eq!(
            pick(&["-iface=lo"]).unwrap_err(),
            "Failed to find interface to use that matches the interfaces and/or regexes provided"
        );
        let lo = select(&snapshot(), &opts(&["-iface=lo"]));
        assert!(lo.is_err());
        let err = chosen(&link(1, "lo"), &["127.0.0.1/8".parse().unwrap()], None).unwrap_err();
        assert_eq!(err, "failed to find IPv4 address for interface lo");
        let err = chosen(
            &link(1, "lo"),
            &["127.0.0.1/8".parse().unwrap()],
            Some("127.0.0.1".parse().unwrap()),
        )
        .unwrap_err();
        assert!(err.contains("127.0.0.1 is a loopback address"), "{err}");
        // a regex that matches lo's name or address does not pick it
        let err = pick(&["-iface-regex=^lo$", "-iface-regex=^127\\."]).unwrap_err();
        assert!(
            err.contains("interfaces here: lo (127.0.0.1/8), eth0 (192.168.77.1/24)"),
            "{err}"
        );
        assert!(err.contains("bare0 (no IPv4 address)"), "{err}");
    }

    #[test]
    fn iface_can_reach_without_a_route_says_so() {
        let mut s = snapshot();
        s.routes.retain(|r| r.dst.prefix() != 0);
        let err = select(&s, &opts(&["-iface-can-reach=8.8.8.8"])).unwrap_err();
        assert!(
            err.contains("-iface-can-reach 8.8.8.8: no route to it in the main table"),
            "{err}"
        );
    }

    #[test]
    fn a_public_ip_not_on_this_host_needs_iface() {
        let err = pick(&["-public-ip=203.0.113.5"]).unwrap_err();
        assert!(
            err.contains("error looking up interface 203.0.113.5: no interface has that address"),
            "{err}"
        );
        // behind NAT: with -iface the public IP is advertised as given
        let c = select(
            &snapshot(),
            &opts(&["-iface=eth0", "-public-ip=203.0.113.5"]),
        )
        .unwrap();
        assert_eq!(c.ext.name, "eth0");
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
