//! The daemon's settings, typed and checked before anything is touched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use flannel_subnet::etcd::EtcdConfig;
use flannel_subnet::{EtcdApi, LeasePolicy};
use regex::Regex;

use crate::cli::{CliError, Values, DAEMON_FLAGS};

#[derive(Debug, Clone)]
pub struct Options {
    pub etcd: EtcdConfig,
    /// Lease TTL and renew margin.
    pub lease_policy: LeasePolicy,
    /// `None`: detect (`-etcd-api=auto`).
    pub etcd_api: Option<EtcdApi>,
    pub iface: Vec<String>,
    pub iface_regex: Vec<Regex>,
    pub iface_can_reach: Option<IpAddr>,
    pub subnet_file: PathBuf,
    pub public_ip: Option<Ipv4Addr>,
    /// `-public-ipv6`: the IPv6 address other nodes reach this one at.
    pub public_ipv6: Option<Ipv6Addr>,
    pub ip_masq: bool,
    pub ip_masq_fully_random_disable: bool,
    /// `None` when `--healthz-port` is 0.
    pub healthz: Option<SocketAddr>,
    pub iptables_resync: Duration,
    pub iptables_forward_rules: bool,
    /// `-ip-blackhole-route`: a blackhole route for this node's subnet.
    pub ip_blackhole_route: bool,
    /// klog's `-v`.
    pub verbosity: i64,
    /// `-kube-subnet-mgr`: subnets from the Kubernetes API instead of etcd.
    pub kube: Option<KubeOptions>,
    /// `-nexthop-objects`: VXLAN peer routes through nexthop objects.
    pub nexthop_objects: flannel_netlink::NexthopMode,
}

/// The kube-mode flags.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub settings: flannel_subnet::kube::KubeSettings,
    /// From `-kube-annotation-prefix`, checked with upstream's rules.
    pub annotations: flannel_subnet::kube::Annotations,
    /// `-net-config-path`: the network config (kube-flannel's `net-conf.json`).
    pub net_config_path: PathBuf,
    pub set_node_network_unavailable: bool,
}

impl KubeOptions {
    /// From the kube flags of `v` (the daemon's, or a subcommand's that has them).
    pub fn from_values(v: &Values) -> Result<KubeOptions, CliError> {
        let f = DAEMON_FLAGS;
        let prefix = v.string(f, "kube-annotation-prefix");
        let annotations = flannel_subnet::kube::Annotations::new(&prefix)
            .map_err(|e| CliError(format!("-kube-annotation-prefix {prefix:?}: {e}")))?;
        Ok(KubeOptions {
            settings: flannel_subnet::kube::KubeSettings {
                api_url: opt(v, "kube-api-url"),
                kubeconfig: path(v, "kubeconfig-file"),
            },
            annotations,
            net_config_path: PathBuf::from(v.string(f, "net-config-path")),
            set_node_network_unavailable: v.bool(f, "set-node-network-unavailable"),
        })
    }
}

fn opt(v: &Values, name: &str) -> Option<String> {
    Some(v.string(DAEMON_FLAGS, name)).filter(|s| !s.is_empty())
}

fn path(v: &Values, name: &str) -> Option<PathBuf> {
    opt(v, name).map(PathBuf::from)
}

/// `-etcd-api`: `None` for auto.
pub fn etcd_api(v: &Values, flags: &[crate::cli::Flag]) -> Result<Option<EtcdApi>, CliError> {
    match v.string(flags, "etcd-api").as_str() {
        "auto" => Ok(None),
        "v3" => Ok(Some(EtcdApi::V3)),
        "v2" => Ok(Some(EtcdApi::V2)),
        other => Err(CliError(format!(
            "-etcd-api {other:?}: expected v3, v2 or auto"
        ))),
    }
}

/// Settings for etcd from the `--etcd-*` flags (shared with the subcommands); the endpoints
/// checked. The certificate files are checked by [`check_etcd_files`] (the installer names
/// files it has not laid down yet).
pub fn etcd_config(v: &Values) -> Result<EtcdConfig, CliError> {
    let f = DAEMON_FLAGS;
    let endpoints = EtcdConfig::parse_endpoints(&v.string(f, "etcd-endpoints"))
        .map_err(|e| CliError(format!("-etcd-endpoints: {e}")))?;
    let cfg = EtcdConfig {
        endpoints,
        prefix: v.string(f, "etcd-prefix"),
        ca_file: path(v, "etcd-cafile"),
        cert_file: path(v, "etcd-certfile"),
        key_file: path(v, "etcd-keyfile"),
        username: opt(v, "etcd-username"),
        password: opt(v, "etcd-password"),
    };
    Ok(cfg)
}

/// A certificate file or combination that can never work (https without a CA, a missing or
/// non-PEM file, a certificate without its key, http and https mixed) is an error here,
/// before anything is touched, not a retry every second.
pub fn check_etcd_files(cfg: &EtcdConfig) -> Result<(), CliError> {
    cfg.connect_options()
        .map(|_| ())
        .map_err(|e| CliError(e.to_string()))
}

/// [`etcd_config`] and [`check_etcd_files`]: for the commands that connect now.
pub fn checked_etcd_config(v: &Values) -> Result<EtcdConfig, CliError> {
    let cfg = etcd_config(v)?;
    check_etcd_files(&cfg)?;
    Ok(cfg)
}

/// An address other nodes could send to: not loopback, unspecified, broadcast or multicast.
pub fn check_node_address(ip: Ipv4Addr) -> Result<(), String> {
    let what = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "the unspecified address"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else {
        return Ok(());
    };
    Err(format!(
        "{ip} is {what}: other nodes cannot reach this one there"
    ))
}

/// [`check_node_address`] for IPv6: also no link-local address (it names no node beyond
/// its link, and upstream never picks one).
pub fn check_node_address6(ip: Ipv6Addr) -> Result<(), String> {
    let what = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "the unspecified address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip.is_unicast_link_local() {
        "a link-local address"
    } else if ip.to_ipv4_mapped().is_some() {
        "an IPv4-mapped address"
    } else {
        return Ok(());
    };
    Err(format!(
        "{ip} is {what}: other nodes cannot reach this one there"
    ))
}

impl Options {
    /// The traffic rules these flags ask for, for one family's Network and subnet.
    pub fn rule_spec(
        &self,
        network: ipnetwork::IpNetwork,
        subnet: ipnetwork::IpNetwork,
        previous: Option<(ipnetwork::IpNetwork, ipnetwork::IpNetwork)>,
    ) -> flannel_masq::RuleSpec {
        flannel_masq::RuleSpec {
            network,
            subnet,
            ip_masq: self.ip_masq,
            forward: self.iptables_forward_rules,
            random_fully: !self.ip_masq_fully_random_disable,
            previous: previous.filter(|p| *p != (network, subnet)),
        }
    }

    pub fn from_values(v: &Values) -> Result<Options, CliError> {
        let f = DAEMON_FLAGS;
        let kube = if v.bool(f, "kube-subnet-mgr") {
            Some(KubeOptions::from_values(v)?)
        } else {
            None
        };
        let margin = v.int(f, "subnet-lease-renew-margin");
        if !(1..24 * 60).contains(&margin) {
            // upstream's message
            return Err(CliError(
                "Invalid subnet-lease-renew-margin option, out of acceptable range".into(),
            ));
        }
        let etcd = etcd_config(v)?;
        let mut lease_policy = LeasePolicy {
            renew_margin: Duration::from_secs(margin as u64 * 60),
            ..LeasePolicy::default()
        };
        let ttl = v.int(f, "subnet-ttl-for-tests");
        if ttl > 0 {
            lease_policy.ttl = Duration::from_secs(ttl as u64);
        }
        let port = v.int(f, "healthz-port");
        if !(0..=65535).contains(&port) {
            return Err(CliError(format!(
                "-healthz-port {port}: expected 0 to 65535"
            )));
        }
        let healthz_ip: IpAddr = v.string(f, "healthz-ip").parse().map_err(|_| {
            CliError(format!(
                "-healthz-ip {:?}: not an IP address",
                v.string(f, "healthz-ip")
            ))
        })?;
        let resync = v.int(f, "iptables-resync");
        if !(1..=86_400).contains(&resync) {
            return Err(CliError(format!(
                "-iptables-resync {resync}: expected 1 to 86400 seconds"
            )));
        }
        let public_ip = match opt(v, "public-ip") {
            None => None,
            Some(s) => {
                let ip: Ipv4Addr = s
                    .parse()
                    .map_err(|_| CliError(format!("-public-ip {s:?}: not an IPv4 address")))?;
                check_node_address(ip).map_err(|e| CliError(format!("-public-ip {e}")))?;
                Some(ip)
            }
        };
        let public_ipv6 = match opt(v, "public-ipv6") {
            None => None,
            Some(s) => {
                let ip: Ipv6Addr = s
                    .parse()
                    .map_err(|_| CliError(format!("-public-ipv6 {s:?}: not an IPv6 address")))?;
                check_node_address6(ip).map_err(|e| CliError(format!("-public-ipv6 {e}")))?;
                Some(ip)
            }
        };
        let iface_can_reach = match opt(v, "iface-can-reach") {
            None => None,
            Some(s) => Some(
                s.parse()
                    .map_err(|_| CliError(format!("-iface-can-reach {s:?}: not an IP address")))?,
            ),
        };
        let subnet_file = PathBuf::from(v.string(f, "subnet-file"));
        check_subnet_file(&subnet_file)?;
        let iface_regex = v
            .list("iface-regex")
            .iter()
            .map(|r| Regex::new(r).map_err(|e| CliError(format!("-iface-regex {r:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(Options {
            etcd,
            lease_policy,
            etcd_api: etcd_api(v, f)?,
            iface: v.list("iface"),
            iface_regex,
            iface_can_reach,
            subnet_file,
            public_ip,
            public_ipv6,
            ip_masq: v.bool(f, "ip-masq"),
            ip_masq_fully_random_disable: v.bool(f, "ip-masq-fully-random-disable"),
            healthz: (port > 0).then(|| SocketAddr::new(healthz_ip, port as u16)),
            iptables_resync: Duration::from_secs(resync as u64),
            iptables_forward_rules: v.bool(f, "iptables-forward-rules"),
            ip_blackhole_route: v.bool(f, "ip-blackhole-route"),
            verbosity: v.int(f, "v"),
            kube,
            nexthop_objects: match v.string(f, "nexthop-objects").as_str() {
                "auto" => flannel_netlink::NexthopMode::Auto,
                "on" | "true" => flannel_netlink::NexthopMode::On,
                "off" | "false" => flannel_netlink::NexthopMode::Off,
                other => {
                    return Err(CliError(format!(
                        "-nexthop-objects {other:?}: expected auto, on or off"
                    )))
                }
            },
        })
    }
}

/// A `-subnet-file` that can never be written is refused before anything is touched (it
/// failed only after the lease and the device were set up).
fn check_subnet_file(path: &std::path::Path) -> Result<(), CliError> {
    let shown = path.display();
    if path.as_os_str().is_empty() || path.file_name().is_none() || path.is_dir() {
        return Err(CliError(format!(
            "-subnet-file {shown:?}: is a directory, not a file: give the file's path (default /run/flannel/subnet.env)"
        )));
    }
    if let Some(parent) = path.parent().filter(|p| p.exists() && !p.is_dir()) {
        return Err(CliError(format!(
            "-subnet-file {shown}: {} is not a directory",
            parent.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Parsed};

    fn options(a: &[&str]) -> Result<Options, CliError> {
        let args: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        match parse(DAEMON_FLAGS, &args, &|_| None)? {
            Parsed::Run(v) => Options::from_values(&v),
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn defaults_are_upstreams() {
        let o = options(&[]).unwrap();
        assert_eq!(
            o.etcd.endpoints,
            vec!["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(o.etcd.prefix, "/coreos.com/network");
        assert_eq!(o.lease_policy.renew_margin, Duration::from_secs(3600));
        assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(o.healthz, None);
        assert_eq!(o.iptables_resync, Duration::from_secs(5));
        assert!(o.iptables_forward_rules && !o.ip_masq);
    }

    #[test]
    fn invalid_values_are_refused() {
        for (args, want) in [
            (
                vec!["-subnet-lease-renew-margin=0"],
                "Invalid subnet-lease-renew-margin option, out of acceptable range",
            ),
            (
                vec!["-subnet-lease-renew-margin=1440"],
                "out of acceptable range",
            ),
            (vec!["-healthz-port=70000"], "expected 0 to 65535"),
            (vec!["-healthz-ip=nope"], "not an IP address"),
            (vec!["-iptables-resync=0"], "expected 1 to 86400"),
            (vec!["-public-ip=10.0.0.300"], "not an IPv4 address"),
            (
                vec!["-public-ip=127.0.0.1"],
                "-public-ip 127.0.0.1 is a loopback address",
            ),
            (vec!["-public-ip=0.0.0.0"], "the unspecified address"),
            (vec!["-public-ip=255.255.255.255"], "the broadcast address"),
            (vec!["-public-ip=224.0.0.5"], "a multicast address"),
            (
                vec!["-etcd-endpoints=http://127.0.0.1:99999"],
                "-etcd-endpoints: \"http://127.0.0.1:99999\"",
            ),
            (vec!["-iface-regex=("], "-iface-regex"),
            (vec!["-etcd-endpoints=,"], "no endpoint"),
            (vec!["-subnet-file=/tmp"], "-subnet-file \"/tmp\": is a directory, not a file"),
            (vec!["-subnet-file=/run/flannel/"], "is a directory, not a file"),
            (vec!["-subnet-file="], "is a directory, not a file"),
            (
                vec!["-subnet-file=/etc/hostname/subnet.env"],
                "-subnet-file /etc/hostname/subnet.env: /etc/hostname is not a directory",
            ),
            (
                vec!["-kube-subnet-mgr", "-kube-annotation-prefix=a/b/c"],
                "-kube-annotation-prefix \"a/b/c\": subnet/kube: prefix can contain at most single slash",
            ),
            (
                vec!["-kube-subnet-mgr", "-kube-annotation-prefix=flannel"],
                "prefix must be in a format: fqdn/[0-9a-z-_]*",
            ),
            (vec!["-public-ipv6=10.0.0.1"], "not an IPv6 address"),
            (
                vec!["-public-ipv6=::1"],
                "-public-ipv6 ::1 is a loopback address",
            ),
            (vec!["-public-ipv6=fe80::1"], "a link-local address"),
            (vec!["-iface-can-reach=nope"], "not an IP address"),
            (vec!["-etcd-api=v4"], "expected v3, v2 or auto"),
            (vec!["-nexthop-objects=maybe"], "expected auto, on or off"),
        ] {
            let err = options(&args).unwrap_err().0;
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn values_are_typed() {
        let o = options(&[
            "-healthz-ip=127.0.0.1",
            "-healthz-port=8081",
            "-public-ip=192.168.77.1",
            "-subnet-lease-renew-margin=30",
            "-iface-regex=^eth[0-9]+$",
        ])
        .unwrap();
        assert_eq!(o.healthz, Some("127.0.0.1:8081".parse().unwrap()));
        assert_eq!(o.public_ip, Some(Ipv4Addr::new(192, 168, 77, 1)));
        assert_eq!(o.lease_policy.renew_margin, Duration::from_secs(1800));
        assert!(o.iface_regex[0].is_match("eth12"));
    }
}
