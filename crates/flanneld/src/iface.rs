//! Choosing the external interface (upstream `LookupExtIface` and the `--iface*` flags):
//! the `--iface` list (names or IPs) in order, then the `--iface-regex` list (matched against
//! names and IPs), then `--iface-can-reach`; with none of those, the interface holding
//! `--public-ip`, else the one of the default route.
//!
//! Per IP stack, as upstream v0.28.9: IPv4 picks by IPv4 address and route; IPv6-only the
//! same with IPv6 addresses and routes; dual-stack picks the interface by IPv4, then takes its
//! IPv6 address (`-public-ipv6` when it is on that interface), and without `-iface*` flags both
//! default routes must leave by the same interface. Link-local IPv6 addresses are never
//! chosen.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flannel_backend::{BackendError, ExtIface};
use flannel_netlink::link::Link;
use flannel_netlink::route::Route;
use flannel_netlink::{Family, Netlink};
use ipnetwork::IpNetwork;
use tracing::info;

use crate::options::{check_node_address, check_node_address6, Options};

/// Which families the network config enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    V4,
    V6,
    Dual,
}

impl Stack {
    pub fn of(enable_ipv4: bool, enable_ipv6: bool) -> Option<Stack> {
        match (enable_ipv4, enable_ipv6) {
            (true, false) => Some(Stack::V4),
            (false, true) => Some(Stack::V6),
            (true, true) => Some(Stack::Dual),
            (false, false) => None,
        }
    }
}

/// The links with their addresses and the routes of the node (both families), as seen at
/// start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub links: Vec<(Link, Vec<IpNetwork>)>,
    pub routes: Vec<Route>,
}

/// Whether `ip` can carry traffic from other nodes.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => check_node_address(ip).is_ok(),
        IpAddr::V6(ip) => check_node_address6(ip).is_ok(),
    }
}

fn check(ip: IpAddr) -> Result<(), String> {
    match ip {
        IpAddr::V4(ip) => check_node_address(ip),
        IpAddr::V6(ip) => check_node_address6(ip),
    }
}

fn in_family(ip: IpAddr, family: Family) -> bool {
    Family::of(ip) == family
}

impl Snapshot {
    pub async fn read(nl: &Netlink) -> Result<Snapshot, BackendError> {
        let mut links = Vec::new();
        for link in nl.links().await? {
            let mut addrs = nl.addresses(link.index, Family::V4).await?;
            addrs.extend(nl.addresses(link.index, Family::V6).await?);
            links.push((link, addrs));
        }
        let mut routes = nl.routes(Family::V4).await?;
        routes.extend(nl.routes(Family::V6).await?);
        Ok(Snapshot { links, routes })
    }

    fn by_ip(&self, ip: IpAddr) -> Option<&(Link, Vec<IpNetwork>)> {
        self.links
            .iter()
            .find(|(_, addrs)| addrs.iter().any(|a| a.ip() == ip))
    }

    fn by_index(&self, index: u32) -> Option<&(Link, Vec<IpNetwork>)> {
        self.links.iter().find(|(l, _)| l.index == index)
    }

    /// `eth0 (192.168.77.1/24), eth1 (none)`: what an operator can choose from.
    fn describe(&self, family: Family) -> String {
        self.links
            .iter()
            .map(|(l, addrs)| {
                let addrs: Vec<String> = addrs
                    .iter()
                    .filter(|a| in_family(a.ip(), family))
                    .map(ToString::to_string)
                    .collect();
                let addrs = if addrs.is_empty() {
                    match family {
                        Family::V4 => "no IPv4 address".to_string(),
                        Family::V6 => "no IPv6 address".to_string(),
                    }
                } else {
                    addrs.join(", ")
                };
                format!("{} ({addrs})", l.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The interface of the default route of `family`.
    fn default_route(&self, family: Family) -> Option<&(Link, Vec<IpNetwork>)> {
        self.routes
            .iter()
            .find(|r| r.dst.prefix() == 0 && in_family(r.dst.ip(), family) && r.oif.is_some())
            .and_then(|r| r.oif)
            .and_then(|i| self.by_index(i))
    }
}

/// The chosen interface and the addresses flannel uses on it (one per enabled family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub ext: ExtIface,
    pub iface_addr: Option<Ipv4Addr>,
    pub iface_v6_addr: Option<Ipv6Addr>,
}

/// `link`'s first usable address of `family`, or `ip` (checked).
fn address_on(
    link: &Link,
    addrs: &[IpNetwork],
    family: Family,
    ip: Option<IpAddr>,
) -> Result<IpAddr, String> {
    if let Some(ip) = ip {
        check(ip)?;
        return Ok(ip);
    }
    addrs
        .iter()
        .map(|a| a.ip())
        .find(|a| in_family(*a, family) && usable(*a))
        // upstream's words
        .ok_or_else(|| match family {
            Family::V4 => format!("failed to find IPv4 address for interface {}", link.name),
            Family::V6 => format!("failed to find IPv6 address for interface {}", link.name),
        })
}

fn ext_iface(link: &Link, addrs: &[IpNetwork]) -> ExtIface {
    ExtIface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        addresses: addrs.iter().copied().filter(|a| usable(a.ip())).collect(),
    }
}

/// The interface for `route lookup(dst)` in the main table: the longest matching prefix.
fn route_to(snapshot: &Snapshot, dst: IpAddr) -> Option<u32> {
    snapshot
        .routes
        .iter()
        .filter(|r| {
            in_family(r.dst.ip(), Family::of(dst)) && r.dst.contains(dst) && r.oif.is_some()
        })
        .max_by_key(|r| r.dst.prefix())
        .and_then(|r| r.oif)
}

/// The interface and its address in `family`, by upstream's order of flags. `public` is
/// `-public-ip` or `-public-ipv6` (used to find the interface without `-iface*` flags).
fn select_in(
    snapshot: &Snapshot,
    opts: &Options,
    family: Family,
    public: Option<IpAddr>,
) -> Result<(Link, Vec<IpNetwork>, IpAddr), String> {
    let pick = |(l, a): &(Link, Vec<IpNetwork>), ip: Option<IpAddr>| {
        address_on(l, a, family, ip).map(|ip| (l.clone(), a.clone(), ip))
    };
    for spec in &opts.iface {
        let found = match spec.parse::<IpAddr>() {
            Ok(ip) if !in_family(ip, family) => {
                Err(format!("{ip} is not an address of this family"))
            }
            Ok(ip) => snapshot
                .by_ip(ip)
                .ok_or_else(|| format!("no interface with address {ip}"))
                .and_then(|e| pick(e, Some(ip))),
            Err(_) => snapshot
                .links
                .iter()
                .find(|(l, _)| l.name == *spec)
                .ok_or_else(|| format!("no interface named {spec}"))
                .and_then(|e| pick(e, None)),
        };
        match found {
            Ok(c) => return Ok(c),
            Err(e) => info!("Could not find valid interface matching {spec}: {e}"),
        }
    }
    for re in &opts.iface_regex {
        for entry in &snapshot.links {
            let ok = |a: &&IpNetwork| in_family(a.ip(), family) && usable(a.ip());
            if let Some(a) = entry
                .1
                .iter()
                .filter(ok)
                .find(|a| re.is_match(&a.ip().to_string()))
            {
                return pick(entry, Some(a.ip()));
            }
            if re.is_match(&entry.0.name) && entry.1.iter().any(|a| ok(&a)) {
                return pick(entry, None);
            }
        }
        info!(
            "Could not find valid interface matching {} (interfaces here: {})",
            re.as_str(),
            snapshot.describe(family)
        );
    }
    let reach = opts.iface_can_reach.filter(|d| in_family(*d, family));
    if let Some(dst) = reach {
        match route_to(snapshot, dst).and_then(|i| snapshot.by_index(i)) {
            Some(entry) => return pick(entry, None),
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
            e += &format!(" (interfaces here: {})", snapshot.describe(family));
        }
        if let Some(dst) = opts.iface_can_reach {
            e += &format!(" (-iface-can-reach {dst}: no route to it in the main table: network is unreachable)");
        }
        return Err(e);
    }
    if let Some(ip) = public {
        // upstream: without -iface, -public-ip must be an address of this host
        let entry = snapshot.by_ip(ip).ok_or_else(|| {
            format!(
                "Failed to find any valid interface to use: error looking up interface {ip}: no interface has that address (a public IP that is not on this host, behind NAT, needs -iface too)"
            )
        })?;
        return pick(entry, Some(ip));
    }
    let entry = snapshot.default_route(family).ok_or(match family {
        Family::V4 => "failed to get default interface: no default route (use -iface)",
        Family::V6 => "failed to get default v6 interface: no IPv6 default route (use -iface)",
    })?;
    pick(entry, None)
}

pub fn select(snapshot: &Snapshot, opts: &Options, stack: Stack) -> Result<Chosen, String> {
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V6(ip) => Some(ip),
        IpAddr::V4(_) => None,
    };
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    };
    match stack {
        Stack::V4 => {
            let (link, addrs, ip) =
                select_in(snapshot, opts, Family::V4, opts.public_ip.map(IpAddr::V4))?;
            Ok(Chosen {
                ext: ext_iface(&link, &addrs),
                iface_addr: v4(ip),
                iface_v6_addr: None,
            })
        }
        Stack::V6 => {
            let (link, addrs, ip) =
                select_in(snapshot, opts, Family::V6, opts.public_ipv6.map(IpAddr::V6))?;
            Ok(Chosen {
                ext: ext_iface(&link, &addrs),
                iface_addr: None,
                iface_v6_addr: v6(ip),
            })
        }
        Stack::Dual => {
            let (link, addrs, ip) =
                select_in(snapshot, opts, Family::V4, opts.public_ip.map(IpAddr::V4))?;
            let no_flags = opts.iface.is_empty()
                && opts.iface_regex.is_empty()
                && opts.iface_can_reach.is_none()
                && opts.public_ip.is_none();
            if no_flags {
                let (v6_link, _) = snapshot.default_route(Family::V6).ok_or(
                    "failed to get default v6 interface: no IPv6 default route (use -iface)",
                )?;
                if v6_link.index != link.index {
                    // upstream's words
                    return Err(format!(
                        "v6 default route interface {} must be the same with v4 default route interface {}",
                        v6_link.name, link.name
                    ));
                }
            }
            // -public-ipv6 counts as the interface's address when it is on that interface
            let on_link = opts
                .public_ipv6
                .filter(|p| addrs.iter().any(|a| a.ip() == IpAddr::V6(*p)));
            if let (Some(p), None) = (opts.public_ipv6, on_link) {
                if let Some((other, _)) = snapshot.by_ip(IpAddr::V6(p)) {
                    if other.index != link.index {
                        // upstream's words
                        return Err(format!(
                            "v6 interface {} must be the same with v4 interface {}",
                            other.name, link.name
                        ));
                    }
                }
            }
            let ip6 = address_on(&link, &addrs, Family::V6, on_link.map(IpAddr::V6))?;
            Ok(Chosen {
                ext: ext_iface(&link, &addrs),
                iface_addr: v4(ip),
                iface_v6_addr: v6(ip6),
            })
        }
    }
}

/// Logs the choice as upstream does; returns the external addresses (PublicIP, PublicIPv6).
pub fn log_choice(c: &Chosen, opts: &Options) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    if let Some(a) = c.iface_addr {
        info!("Using interface with name {} and address {a}", c.ext.name);
    }
    if let Some(a) = c.iface_v6_addr {
        info!(
            "Using interface with name {} and v6 address {a}",
            c.ext.name
        );
    }
    let public = c.iface_addr.map(|a| match opts.public_ip {
        Some(ip) => {
            info!("Using {ip} as external address");
            ip
        }
        None => {
            info!("Defaulting external address to interface address ({a})");
            a
        }
    });
    let public6 = c.iface_v6_addr.map(|a| match opts.public_ipv6 {
        Some(ip) => {
            info!("Using {ip} as external address");
            ip
        }
        None => {
            info!("Defaulting external v6 address to interface address ({a})");
            a
        }
    });
    (public, public6)
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
            tunnel: None,
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
                    nhid: None,
                },
                Route {
                    dst: "192.168.77.0/24".parse().unwrap(),
                    gateway: None,
                    oif: Some(2),
                    onlink: false,
                    nhid: None,
                },
                Route {
                    dst: "10.9.0.0/16".parse().unwrap(),
                    gateway: None,
                    oif: Some(3),
                    onlink: false,
                    nhid: None,
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
        select(&snapshot(), &opts(a), Stack::V4).map(|c| (c.ext.name, c.iface_addr.unwrap()))
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
        let lo = select(&snapshot(), &opts(&["-iface=lo"]), Stack::V4);
        assert!(lo.is_err());
        let err = address_on(
            &link(1, "lo"),
            &["127.0.0.1/8".parse().unwrap()],
            Family::V4,
            None,
        )
        .unwrap_err();
        assert_eq!(err, "failed to find IPv4 address for interface lo");
        let err = address_on(
            &link(1, "lo"),
            &["127.0.0.1/8".parse().unwrap()],
            Family::V4,
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
        let err = select(&s, &opts(&["-iface-can-reach=8.8.8.8"]), Stack::V4).unwrap_err();
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
            Stack::V4,
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
        assert!(select(&s, &opts(&[]), Stack::V4)
            .unwrap_err()
            .contains("no default route"));
    }

    /// eth0 and eth1 get IPv6 addresses (and a link-local one each), the default v6 route
    /// leaves by eth1 like the v4 one.
    fn dual_snapshot() -> Snapshot {
        let mut s = snapshot();
        for (i, extra) in [
            (1, vec!["::1/128"]),
            (2, vec!["fe80::1/64", "fd77::1/64"]),
            (3, vec!["fe80::2/64", "2001:db8:9::5/64"]),
        ] {
            s.links[i - 1]
                .1
                .extend(extra.iter().map(|a| a.parse::<IpNetwork>().unwrap()));
        }
        s.routes.push(Route {
            dst: "::/0".parse().unwrap(),
            gateway: Some("2001:db8:9::1".parse().unwrap()),
            oif: Some(3),
            onlink: false,
            nhid: None,
        });
        s.routes.push(Route {
            dst: "fd77::/64".parse().unwrap(),
            gateway: None,
            oif: Some(2),
            onlink: false,
            nhid: None,
        });
        s
    }

    fn pick6(a: &[&str], stack: Stack) -> Result<Chosen, String> {
        select(&dual_snapshot(), &opts(a), stack)
    }

    #[test]
    fn dual_stack_takes_the_v6_address_of_the_v4_interface() {
        let c = pick6(&["-iface=eth0"], Stack::Dual).unwrap();
        assert_eq!(c.ext.name, "eth0");
        assert_eq!(c.iface_addr, Some("192.168.77.1".parse().unwrap()));
        assert_eq!(
            c.iface_v6_addr,
            Some("fd77::1".parse().unwrap()),
            "never the link-local address"
        );
        let c = pick6(&[], Stack::Dual).unwrap();
        assert_eq!(c.iface_v6_addr, Some("2001:db8:9::5".parse().unwrap()));
        // the two default routes on different interfaces: upstream's message
        let mut s = dual_snapshot();
        s.routes[0].oif = Some(2);
        let err = select(&s, &opts(&[]), Stack::Dual).unwrap_err();
        assert_eq!(
            err,
            "v6 default route interface eth1 must be the same with v4 default route interface eth0"
        );
        // no global v6 address on the chosen interface
        let mut s = dual_snapshot();
        s.links[1]
            .1
            .retain(|a| a.ip() != "fd77::1".parse::<IpAddr>().unwrap());
        let err = select(&s, &opts(&["-iface=eth0"]), Stack::Dual).unwrap_err();
        assert_eq!(err, "failed to find IPv6 address for interface eth0");
        // -public-ipv6 of another interface
        let err = pick6(&["-iface=eth0", "-public-ipv6=2001:db8:9::5"], Stack::Dual).unwrap_err();
        assert_eq!(
            err,
            "v6 interface eth1 must be the same with v4 interface eth0"
        );
        // -public-ipv6 on no interface (NAT): the interface's own v6 address, advertised as given
        let c = pick6(&["-iface=eth0", "-public-ipv6=2001:db8:77::1"], Stack::Dual).unwrap();
        assert_eq!(c.iface_v6_addr, Some("fd77::1".parse().unwrap()));
    }

    #[test]
    fn ipv6_only_selects_by_v6_address_and_route() {
        let c = pick6(&[], Stack::V6).unwrap();
        assert_eq!(c.ext.name, "eth1");
        assert_eq!(c.iface_addr, None);
        assert_eq!(c.iface_v6_addr, Some("2001:db8:9::5".parse().unwrap()));
        assert_eq!(
            pick6(&["-iface=fd77::1"], Stack::V6).unwrap().ext.name,
            "eth0"
        );
        assert_eq!(
            pick6(&["-iface-regex=^fd77:"], Stack::V6).unwrap().ext.name,
            "eth0"
        );
        assert_eq!(
            pick6(&["-iface-can-reach=fd77::9"], Stack::V6)
                .unwrap()
                .ext
                .name,
            "eth0"
        );
        assert_eq!(
            pick6(&["-public-ipv6=fd77::1"], Stack::V6)
                .unwrap()
                .ext
                .name,
            "eth0"
        );
        assert_eq!(
            pick6(&["-iface=lo"], Stack::V6).unwrap_err(),
            "Failed to find interface to use that matches the interfaces and/or regexes provided"
        );
        let mut s = dual_snapshot();
        s.routes.retain(|r| r.dst.prefix() != 0);
        assert!(select(&s, &opts(&[]), Stack::V6)
            .unwrap_err()
            .contains("failed to get default v6 interface"));
    }
}
