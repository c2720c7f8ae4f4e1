//! `flanneld-rs lease show`: the leases in etcd, one row each, for people (a table) or
//! scripts (`--json`). Read-only by construction: it only lists and gets.

use std::net::IpAddr;
use std::time::SystemTime;

use anyhow::Context;
use flannel_net::time::format_utc;
use flannel_net::{Expiration, Lease};
use flannel_subnet::LeaseEntry;
use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use crate::cli::{self, CliError, Flag, Kind, Parsed, DAEMON_FLAGS};
use crate::options::checked_etcd_config;
use crate::store::{Role, StoreOptions};

fn flags() -> Vec<Flag> {
    let mut flags: Vec<Flag> = DAEMON_FLAGS
        .iter()
        .copied()
        .filter(|f| {
            f.name.starts_with("etcd-") || f.name.starts_with("kube") || f.name == "net-config-path"
        })
        .collect();
    flags.push(cli::JSON_FLAG);
    flags.push(Flag {
        name: "subnet",
        kind: Kind::Str,
        default: "",
        usage: "show only the lease of this subnet (CIDR)",
        hidden: false,
    });
    flags.push(Flag {
        name: "public-ip",
        kind: Kind::Str,
        default: "",
        usage: "the IP of this node, to mark its lease (default: this host's addresses)",
        hidden: false,
    });
    flags
}

fn ttl_text(left: std::time::Duration) -> String {
    let s = left.as_secs();
    format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
}

fn expiry(lease: &Lease) -> (Value, Value, String) {
    match lease.expiration {
        Expiration::Never => (Value::Null, Value::Null, "reservation".into()),
        Expiration::At(t) => {
            let left = t.duration_since(SystemTime::now()).unwrap_or_default();
            (
                json!(format_utc(t)),
                json!(left.as_secs()),
                format!("{} ({})", format_utc(t), ttl_text(left)),
            )
        }
        Expiration::Unknown => (Value::Null, Value::Null, "expired".into()),
    }
}

/// Runs the subcommand with the arguments after `lease show`; returns the exit code.
pub async fn run(program: &str, args: &[String]) -> anyhow::Result<i32> {
    let flags = flags();
    let values = match cli::parse(&flags, args, &|k| std::env::var(k).ok()) {
        Ok(Parsed::Run(v)) => v,
        Ok(Parsed::Help) => {
            err_print!("{}", cli::usage(&format!("{program} lease show"), &flags));
            return Ok(0);
        }
        Err(e) => {
            errln!("{e}");
            err_print!("{}", cli::usage(&format!("{program} lease show"), &flags));
            return Ok(2);
        }
    };
    let json_out = values.bool(&flags, "json");
    let only: Option<IpNetwork> = match values.string(&flags, "subnet") {
        s if s.is_empty() => None,
        s => {
            let net: IpNetwork = s
                .parse()
                .map_err(|_| CliError(format!("--subnet {s:?} is not a CIDR (IPv4 or IPv6)")))?;
            if net.ip() != net.network() {
                return Err(CliError(format!(
                    "--subnet {s} has host bits set: leases are subnets like {}/{}",
                    net.network(),
                    net.prefix()
                ))
                .into());
            }
            Some(net)
        }
    };
    let ours: Vec<IpAddr> = match values.string(&flags, "public-ip") {
        s if s.is_empty() => local_addresses().await,
        s => vec![s
            .parse::<IpAddr>()
            .map_err(|_| CliError(format!("--public-ip {s:?} is not an IP address")))?],
    };
    let kube = if values.bool(&flags, "kube-subnet-mgr") {
        Some(crate::options::KubeOptions::from_values(&values)?)
    } else {
        None
    };
    let cfg = checked_etcd_config(&values)?;
    if kube.is_none() {
        cfg.insecure_warning();
    }
    let store = StoreOptions {
        etcd: &cfg,
        etcd_api: crate::options::etcd_api(&values, &flags)?,
        kube: kube.as_ref(),
    };
    let opened = crate::store::open(&store, Role::Reader).await?;
    let sm = opened.sm;
    let Some(api) = opened.api else {
        return kube_leases(sm.as_ref(), json_out, only, &ours).await;
    };
    let config = sm.get_network_config().await;
    let mut entries = sm.list_leases().await.with_context(|| match api {
        flannel_subnet::EtcdApi::V2 => "listing leases in the etcd v2 keyspace (is etcd's v2 API enabled, --enable-v2? clusters of flannel v0.18 and later keep their data in v3: -etcd-api=v3 or auto)",
        flannel_subnet::EtcdApi::V3 => "listing leases",
    })?;
    let prefix = cfg.prefix.trim_end_matches('/');
    if entries.is_empty() && config.as_ref().is_err_and(|e| e.is_transient()) {
        // nothing at all: most likely the wrong place
        errln!(
            "nothing under {prefix} in the etcd {api} keyspace: no network config ({}) and no lease; check -etcd-prefix{}",
            config.as_ref().err().map(ToString::to_string).unwrap_or_default(),
            if matches!(api, flannel_subnet::EtcdApi::V2) { " and -etcd-api (v3 clusters keep their data in the v3 keyspace)" } else { " and -etcd-api" }
        );
        return Ok(1);
    }
    if let Some(only) = only {
        entries.retain(|e| e.lease.as_ref().is_ok_and(|l| has_subnet(l, only)));
        if entries.is_empty() {
            errln!("no lease for subnet {only} under {prefix}/subnets (etcd {api} keyspace)");
        }
    }
    if json_out {
        outln!(
            "{}",
            serde_json::to_string_pretty(&to_json(&config, &entries, &ours, false))?
        );
    } else {
        out_print!("{}", to_table(&config, &entries, &ours, false));
    }
    Ok(if only.is_some() && entries.is_empty() {
        1
    } else {
        0
    })
}

fn to_json(
    config: &Result<flannel_net::NetworkConfig, flannel_subnet::SubnetError>,
    entries: &[LeaseEntry],
    ours: &[IpAddr],
    kube: bool,
) -> Value {
    let mut leases = Vec::new();
    let mut errors = Vec::new();
    for e in entries {
        match &e.lease {
            Ok(l) => {
                let (expires, ttl, _) = expiry(l);
                let vx = l.attrs.vxlan_data().and_then(Result::ok);
                // a family the lease does not have is null, never a zero address
                let mut row = json!({
                    "key": e.key,
                    "subnet": l.has_ipv4().then(|| l.subnet.to_string()),
                    "public_ip": (!l.attrs.public_ip.is_unspecified())
                        .then(|| l.attrs.public_ip.to_string()),
                    "public_ipv6": l.attrs.public_ipv6.map(|i| i.to_string()),
                    "backend_type": l.attrs.backend_type,
                    "vni": vx.and_then(|v| v.vni),
                    "vtep_mac": vx.map(|v| v.vtep_mac.to_string()),
                    "reservation": l.is_reservation(),
                    "expires": expires,
                    "ttl_seconds": ttl,
                    "ipv6_subnet": l.ipv6_subnet.map(|s| s.to_string()),
                    "vtep_mac_v6": l.attrs.vxlan_v6_data().and_then(Result::ok).map(|v| v.vtep_mac.to_string()),
                    "this_node": is_ours(ours, l),
                });
                if kube {
                    // a node's pod CIDR: no expiry, no reservation; the key is the node
                    row["node"] = json!(e.key);
                    row["reservation"] = json!(false);
                }
                leases.push(row);
            }
            Err(err) => errors.push(json!({"key": e.key, "error": err})),
        }
    }
    let config = match config {
        Ok(c) => config_json(c),
        Err(e) => json!({"error": e.to_string()}),
    };
    json!({"config": config, "leases": leases, "errors": errors})
}

/// The network config: what applies only (a family that is off, or a subnet range kube mode
/// does not have, is absent).
fn config_json(c: &flannel_net::NetworkConfig) -> Value {
    let mut o = serde_json::Map::new();
    if c.enable_ipv4 {
        o.insert("network".into(), json!(c.network.to_string()));
        if c.subnet_len != 0 {
            o.insert("subnet_len".into(), json!(c.subnet_len));
            o.insert("subnet_min".into(), json!(c.subnet_min.to_string()));
            o.insert("subnet_max".into(), json!(c.subnet_max.to_string()));
        }
    }
    if let Some(n6) = c.ipv6_network.filter(|_| c.enable_ipv6) {
        o.insert("ipv6_network".into(), json!(n6.to_string()));
        if c.ipv6_subnet_len != 0 {
            o.insert("ipv6_subnet_len".into(), json!(c.ipv6_subnet_len));
        }
        if let (Some(min), Some(max)) = (c.ipv6_subnet_min, c.ipv6_subnet_max) {
            o.insert("ipv6_subnet_min".into(), json!(min.to_string()));
            o.insert("ipv6_subnet_max".into(), json!(max.to_string()));
        }
    }
    o.insert("backend_type".into(), json!(c.backend_type));
    Value::Object(o)
}

/// Whether `l` holds `subnet`, in its family.
fn has_subnet(l: &Lease, subnet: IpNetwork) -> bool {
    match subnet {
        IpNetwork::V4(n) => l.has_ipv4() && l.subnet == n,
        IpNetwork::V6(n) => l.ipv6_subnet == Some(n),
    }
}

fn to_table(
    config: &Result<flannel_net::NetworkConfig, flannel_subnet::SubnetError>,
    entries: &[LeaseEntry],
    ours: &[IpAddr],
    kube: bool,
) -> String {
    let mut out = match config {
        Ok(c) => format!("network config: {c}\n"),
        Err(e) => format!("network config: {e}\n"),
    };
    out += &format!(
        "{:<20} {:<16} {:<9} {:<18} {}\n",
        "SUBNET",
        "PUBLIC IP",
        "BACKEND",
        "VTEP MAC",
        if kube { "NODE" } else { "EXPIRES (TTL)" }
    );
    for e in entries {
        match &e.lease {
            Ok(l) => {
                let mark = if is_ours(ours, l) { " *" } else { "" };
                let mac = |data: Option<Result<flannel_net::VxlanBackendData, _>>| {
                    data.and_then(Result::ok)
                        .map_or("-".to_string(), |v| v.vtep_mac.to_string())
                };
                // a row per family the lease has: IPv4 first, the IPv6 side indented under
                // it (or alone, IPv6-only)
                let mut sides = Vec::new();
                if l.has_ipv4() {
                    sides.push((
                        l.subnet.to_string(),
                        l.attrs.public_ip.to_string(),
                        mac(l.attrs.vxlan_data()),
                    ));
                }
                if let Some(sn6) = l.ipv6_subnet {
                    sides.push((
                        sn6.to_string(),
                        l.attrs
                            .public_ipv6
                            .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
                        mac(l.attrs.vxlan_v6_data()),
                    ));
                }
                for (i, (subnet, public_ip, mac)) in sides.into_iter().enumerate() {
                    if i == 0 {
                        out += &format!(
                            "{:<20} {:<16} {:<9} {:<18} {}\n",
                            format!("{subnet}{mark}"),
                            public_ip,
                            if l.attrs.backend_type.is_empty() {
                                "-"
                            } else {
                                &l.attrs.backend_type
                            },
                            mac,
                            if kube { e.key.clone() } else { expiry(l).2 }
                        );
                    } else {
                        out += &format!("  {subnet:<18} {public_ip:<16} {:<9} {mac:<18}\n", "");
                    }
                }
            }
            Err(err) => out += &format!("{:<20} (bad lease: {err})\n", e.key),
        }
    }
    if !ours.is_empty()
        && entries
            .iter()
            .any(|e| e.lease.as_ref().is_ok_and(|l| is_ours(ours, l)))
    {
        out += "* this node\n";
    }
    out
}

/// Whether `l` names one of this host's addresses (PublicIP, or PublicIPv6).
fn is_ours(ours: &[IpAddr], l: &flannel_net::Lease) -> bool {
    (!l.attrs.public_ip.is_unspecified() && ours.contains(&IpAddr::V4(l.attrs.public_ip)))
        || l.attrs
            .public_ipv6
            .is_some_and(|ip| ours.contains(&IpAddr::V6(ip)))
}

async fn local_addresses() -> Vec<IpAddr> {
    let Ok(nl) = flannel_netlink::Netlink::connect() else {
        return Vec::new();
    };
    match crate::iface::Snapshot::read(&nl).await {
        Ok(s) => s
            .links
            .iter()
            .flat_map(|(_, a)| a.iter().map(|n| n.ip()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `lease show -kube-subnet-mgr`: the leases the annotated Nodes describe, one per node.
async fn kube_leases(
    sm: &dyn flannel_subnet::SubnetManager,
    json_out: bool,
    only: Option<IpNetwork>,
    ours: &[IpAddr],
) -> anyhow::Result<i32> {
    let config = sm.get_network_config().await;
    let mut entries = sm.list_leases().await?;
    if let Some(only) = only {
        entries.retain(|e| e.lease.as_ref().is_ok_and(|l| has_subnet(l, only)));
        if entries.is_empty() {
            errln!("no node has the pod CIDR {only}");
        }
    }
    if json_out {
        outln!(
            "{}",
            serde_json::to_string_pretty(&to_json(&config, &entries, ours, true))?
        );
    } else {
        out_print!("{}", to_table(&config, &entries, ours, true));
    }
    Ok(if only.is_some() && entries.is_empty() {
        1
    } else {
        0
    })
}
