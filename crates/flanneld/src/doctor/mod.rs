//! `flanneld-rs doctor`: checks a node the way an operator would with ip, bridge, iptables
//! and etcdctl, explains what is wrong and what to do, and exits 1 when something is.
//! Same flags and `FLANNELD_*` environment as the daemon (so it reads the same store and
//! files), plus `--json`. It changes nothing.
//!
//! Checks: the daemon (running, /healthz, /readyz, the config it runs with), the store
//! (reachable, config valid and the one the daemon runs with, this node's lease, its
//! PublicIP), subnet.env against the lease, the data path (the backend's inspection,
//! [`flannel_backend::inspect`]: VXLAN's device, MAC, MTU;
//! every peer's route, neighbour and FDB entry; strays), the rules, and the host (forwarding,
//! rp_filter, the MTU chain to cni0, cni0's address against subnet.env, another route over
//! the Network). A config changed in the store while the daemon runs is reported first, and
//! the data path that runs is checked. Without the store, what can be checked locally still
//! is (with the daemon's running config, or subnet.env's networks), and what could not be is
//! said. It needs root (the rules and the daemon's lock are root's).

mod report;

use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use flannel_net::{Lease, NetworkConfig, SubnetEnv};
use flannel_netlink::{Family, Netlink};
use ipnetwork::IpNetwork;

use crate::cli::{self, Flag, Parsed, DAEMON_FLAGS};
use crate::iface;
use crate::options::Options;
use crate::store::{Role, StoreOptions};
pub use report::Report;

/// How long the store may take to answer before it counts as unreachable.
const STORE_TIMEOUT: Duration = Duration::from_secs(8);

fn flags() -> Vec<Flag> {
    let mut flags: Vec<Flag> = DAEMON_FLAGS.to_vec();
    flags.push(cli::JSON_FLAG);
    flags
}

/// What the checks of the store found: the config and every lease, and the manager, for
/// what only the store can explain.
struct Store {
    config: NetworkConfig,
    leases: Vec<Lease>,
    sm: Box<dyn flannel_subnet::SubnetManager>,
}

pub async fn run(program: &str, args: &[String]) -> anyhow::Result<i32> {
    let flags = flags();
    let name = format!("{program} doctor");
    let values = match cli::parse(&flags, args, &|k| std::env::var(k).ok()) {
        Ok(Parsed::Run(v)) => v,
        Ok(Parsed::Help) => {
            err_print!("{}", cli::usage(&name, &flags));
            return Ok(0);
        }
        Err(e) => {
            errln!("{e}");
            err_print!("{}", cli::usage(&name, &flags));
            return Ok(2);
        }
    };
    if values.from_cli.contains(&"version") && values.bool(&flags, "version") {
        errln!("v{}", env!("CARGO_PKG_VERSION"));
        return Ok(0);
    }
    let json = values.bool(&flags, "json");
    let opts = Options::from_values(&values)?;
    if !nix::unistd::Uid::effective().is_root() {
        errln!(
            "{name} needs root: the firewall rules, the FORWARD policy, the daemon's lock and its running config can only be read by root (as another user they look empty or wrong); run it as root"
        );
        return Ok(1);
    }
    let mut r = Report::default();
    let running = check_daemon(&opts, &mut r);
    let store = check_store(&opts, &mut r).await;
    let nl = Netlink::connect()?
        .with_nexthops(opts.nexthop_objects)
        .await?;
    match (running, store) {
        (running, Some(store)) => {
            let config = match running {
                Some(running) => compare_configs(running, &store.config, &mut r),
                None => store.config.clone(),
            };
            check_node(&opts, &config, Some(&store), &nl, &mut r).await;
        }
        (Some(running), None) => check_node(&opts, &running, None, &nl, &mut r).await,
        (None, None) => check_local(&opts, &nl, &mut r).await,
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&r.json())?);
    } else {
        out_print!("{}", r.text(std::io::stdout().is_terminal()));
    }
    Ok(if r.failed() { 1 } else { 0 })
}

/// Whether a flanneld-rs holds this node's instance lock, and what its health endpoints say;
/// the network config it runs with, when it has one.
fn check_daemon(opts: &Options, r: &mut Report) -> Option<NetworkConfig> {
    let Some(holder) = crate::lock::holder() else {
        r.fail(
            "daemon",
            format!(
                "flanneld-rs is not running (nobody holds {})",
                crate::lock::lock_path().display()
            ),
            "nothing keeps this node's routes, lease and rules in place; start it (systemctl start flanneld), and look at its log if it stopped",
        );
        return None;
    };
    let config = holder.config;
    let mut text = format!("running (PID {})", holder.pid);
    if let Some(addr) = opts.healthz {
        let ip = match addr.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        let addr = SocketAddr::new(ip, addr.port());
        for path in ["/healthz", "/readyz"] {
            match http_status(addr, path) {
                Some(200) => text += &format!(", {path} 200"),
                Some(code) => {
                    r.fail(
                        "daemon",
                        format!("{path} at {addr} answers {code}"),
                        if path == "/readyz" {
                            "the daemon has not written subnet.env or not programmed the peers known at start yet; its log says what it waits for (etcd, the config, a lease)"
                        } else {
                            "the daemon is unhealthy; see its log"
                        },
                    );
                    return config;
                }
                None => {
                    r.fail(
                        "daemon",
                        format!("{path} at {addr} does not answer"),
                        "the daemon is hung or listens elsewhere (-healthz-ip, -healthz-port): check the flags it runs with",
                    );
                    return config;
                }
            }
        }
    }
    r.ok("daemon", text);
    config
}

/// The config to check the node against: the one the daemon runs with. A different one in
/// the store (changed while the daemon ran; the daemon refuses it live) is a problem, said
/// before the others.
fn compare_configs(
    running: NetworkConfig,
    stored: &NetworkConfig,
    r: &mut Report,
) -> NetworkConfig {
    if !crate::daemon::same_plumbing(&running, stored) {
        r.fail(
            "config",
            format!("the network config changed in the store while flanneld-rs ran: it runs with {running}; the store holds {stored}"),
            "flanneld-rs keeps the running config until it restarts (flanneld_config_stale is 1); the checks below are of what runs. Restart flanneld on every node to apply the new config, or write the old one back",
        );
    }
    running
}

/// Without the store nor a running daemon's config: what can be checked from subnet.env and
/// the kernel alone.
async fn check_local(opts: &Options, nl: &Netlink, r: &mut Report) {
    let env = match SubnetEnv::read(&opts.subnet_file) {
        Ok(Some((env, _))) => env,
        _ => {
            r.warn(
                "subnet.env",
                format!("{} is missing: nothing is known of this node's networks", opts.subnet_file.display()),
                "with neither the store nor a running flanneld-rs nor subnet.env, only the host can be checked",
            );
            check_forwarding(&[Family::V4], r);
            return;
        }
    };
    let mut json = serde_json::json!({
        "EnableIPv4": env.network.is_some(),
        "EnableIPv6": env.ipv6_network.is_some(),
    });
    if let Some(n) = env.network {
        json["Network"] = n.to_string().into();
    }
    if let Some(n6) = env.ipv6_network {
        json["IPv6Network"] = n6.to_string().into();
    }
    match NetworkConfig::parse(&json.to_string()) {
        Ok(config) => check_node(opts, &config, None, nl, r).await,
        Err(e) => r.fail("subnet.env", format!("its networks: {e}"), ""),
    }
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", addr.ip()).ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The store reachable (etcd, or the Kubernetes API in kube mode), the config valid, the
/// leases read.
async fn check_store(opts: &Options, r: &mut Report) -> Option<Store> {
    let store = StoreOptions {
        etcd: &opts.etcd,
        etcd_api: opts.etcd_api,
        kube: opts.kube.as_ref(),
    };
    let kube = opts.kube.is_some();
    let place = match opts.kube.as_ref() {
        Some(k) => format!("Kubernetes API ({})", crate::store::kube_server(k)),
        None => format!("etcd at {}", opts.etcd.endpoints.join(",")),
    };
    let read = async {
        let opened = crate::store::open(&store, Role::Reader).await?;
        let config = opened.sm.get_network_config().await;
        let entries = opened.sm.list_leases().await?;
        Ok::<_, anyhow::Error>((opened, config, entries))
    };
    let (opened, config, entries) = match tokio::time::timeout(STORE_TIMEOUT, read).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            r.fail(
                "store",
                format!("{place}: {e:#}"),
                if kube {
                    "without the API no node learns of new nodes (the data path keeps working meanwhile); check the API server, -kubeconfig-file / -kube-api-url, the RBAC role and -net-config-path"
                } else {
                    "without etcd no node can get or renew a lease or learn of new nodes (the data path keeps working meanwhile); check etcd and -etcd-endpoints / certificates"
                },
            );
            return None;
        }
        Err(_) => {
            r.fail(
                "store",
                format!("{place} did not answer within {STORE_TIMEOUT:?}"),
                if kube {
                    "check that the API server runs and is reachable from this node"
                } else {
                    "check that etcd runs and is reachable from this node"
                },
            );
            return None;
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                "store",
                format!("network config at {}/config: {e}", opts.etcd.prefix),
                "flanneld waits for a valid config and does nothing until then; fix the config in etcd",
            );
            return None;
        }
    };
    Some(found(
        r,
        opened.place(&store),
        kube,
        config,
        entries,
        opened.sm,
    ))
}

/// The store read: its summary line, the leases that parse (each that does not is a
/// warning).
fn found(
    r: &mut Report,
    place: String,
    kube: bool,
    config: flannel_net::NetworkConfig,
    entries: Vec<flannel_subnet::LeaseEntry>,
    sm: Box<dyn flannel_subnet::SubnetManager>,
) -> Store {
    let what = if kube { "flannel nodes" } else { "leases" };
    let mut bad = 0;
    let mut leases = Vec::new();
    for e in entries {
        match e.lease {
            Ok(l) => leases.push(l),
            Err(why) if kube => {
                bad += 1;
                r.warn(
                    "store",
                    format!("Node {} has flannel annotations that do not parse: {why}", e.key),
                    format!("every node skips it, so its pods are unreachable; the flanneld on that node writes them at start: restart it there, or fix them (kubectl annotate node {} ...)", e.key),
                );
            }
            Err(why) => {
                bad += 1;
                r.warn(
                    "store",
                    format!("lease {} does not parse: {why}", e.key),
                    "every node skips it; delete it if no node owns it",
                );
            }
        }
    }
    let bad = if bad > 0 {
        format!(", {bad} bad")
    } else {
        String::new()
    };
    r.ok(
        "store",
        format!(
            "{place}: config {} ({} backend), {} {what}{bad}",
            networks_text(&config),
            config.backend_type,
            leases.len(),
        ),
    );
    Store { config, leases, sm }
}

/// The config's networks, for the store's line: each family it enables.
fn networks_text(config: &NetworkConfig) -> String {
    let mut nets = Vec::new();
    if config.enable_ipv4 {
        nets.push(config.network.to_string());
    }
    if let Some(n6) = config.ipv6_network.filter(|_| config.enable_ipv6) {
        nets.push(n6.to_string());
    }
    nets.join(" and ")
}

/// This node's subnets as subnet.env holds them, as a lease without attributes: what the
/// rules are checked against when the store cannot be read.
fn lease_of_subnet_env(opts: &Options) -> Option<Lease> {
    let (env, _) = SubnetEnv::read(&opts.subnet_file).ok()??;
    Some(Lease {
        subnet: env.subnet.unwrap_or_else(flannel_subnet::acquire::no_ipv4),
        ipv6_subnet: env.ipv6_subnet,
        attrs: flannel_net::LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        },
        expiration: flannel_net::Expiration::Unknown,
    })
}

/// Everything about this node: its lease, subnet.env, the data path, the rules, the host.
/// Without the store (`store` is `None`) the lease and the peers cannot be checked: the
/// rest is checked against subnet.env's subnets, and what was left out is said.
async fn check_node(
    opts: &Options,
    config: &NetworkConfig,
    store: Option<&Store>,
    nl: &Netlink,
    r: &mut Report,
) {
    let Some(stack) = iface::Stack::of(config.enable_ipv4, config.enable_ipv6) else {
        return;
    };
    let chosen = match iface::Snapshot::read(nl).await {
        Ok(s) => iface::select(&s, opts, stack),
        Err(e) => Err(e.to_string()),
    };
    let chosen = match chosen {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                "interface",
                e,
                "flanneld-rs would not start with these flags on this host: check -iface / -public-ip",
            );
            check_forwarding(&families(config), r);
            return;
        }
    };
    let Some(store) = store else {
        r.warn(
            "store",
            "not checked without the store: this node's lease, the peers' entries, subnet.env against the lease",
            "the checks of the device, the rules and the host below use the daemon's running config or subnet.env",
        );
        match lease_of_subnet_env(opts) {
            Some(lease) => {
                check_device(config, nl, r).await;
                check_rules(opts, config, &lease, r).await;
                check_cni0(opts, nl, r).await;
            }
            None => r.fail(
                "subnet.env",
                format!("{} is missing", opts.subnet_file.display()),
                "the CNI plugin cannot give pods addresses; flanneld-rs writes it once it has its lease",
            ),
        }
        check_host(config, &chosen.ext, None, nl, r).await;
        return;
    };
    let public = opts.public_ip.or(chosen.iface_addr);
    let public6 = opts.public_ipv6.or(chosen.iface_v6_addr);
    let mine = store.leases.iter().find(|l| match (public, public6) {
        (Some(ip), _) if config.enable_ipv4 => l.attrs.public_ip == ip,
        (_, Some(ip6)) => l.attrs.public_ipv6 == Some(ip6),
        _ => false,
    });
    let node = public
        .map(|i| i.to_string())
        .or(public6.map(|i| i.to_string()))
        .unwrap_or_default();
    let kube = opts.kube.is_some();
    let Some(lease) = mine else {
        match store.sm.why_no_lease().await {
            Ok(Some(why)) => r.fail(
                "lease",
                why,
                "other nodes have no route to this node's pods; in kube mode a node's lease is its Node: its podCIDR and flannel's annotations",
            ),
            _ => r.fail(
                "lease",
                format!(
                    "no {} names this node ({node}, interface {})",
                    if kube { "flannel Node" } else { "lease" },
                    chosen.ext.name
                ),
                "other nodes have no route to this node's pods; flanneld-rs writes its lease at start: is it running with the same -iface / -public-ip? (the interface it would choose today is shown here)",
            ),
        }
        check_forwarding(&families(config), r);
        return;
    };
    r.ok(
        "lease",
        format!(
            "{} for {node} on {} ({})",
            subnets_text(lease),
            chosen.ext.name,
            match lease.expiration {
                _ if kube => "the pod CIDR of its Node".to_string(),
                flannel_net::Expiration::Never => "a reservation".to_string(),
                _ => "kept alive".to_string(),
            }
        ),
    );
    let ctx = flannel_backend::inspect::Inspect {
        config,
        lease,
        leases: &store.leases,
        ext: &chosen.ext,
        nl,
        behind_nat: public
            .is_some_and(|p| !chosen.ext.addresses.iter().any(|a| a.ip() == IpAddr::V4(p))),
    };
    let mtu = flannel_backend::inspect(&ctx, r).await;
    check_subnet_env(opts, config, lease, mtu, r);
    check_rules(opts, config, lease, r).await;
    check_cni0(opts, nl, r).await;
    check_host(config, &chosen.ext, mtu, nl, r).await;
}

/// The subnets a lease has, each family once: `10.5.3.0/24`, `fd00::/64`, or both.
fn subnets_text(lease: &Lease) -> String {
    let mut subnets = Vec::new();
    if lease.has_ipv4() {
        subnets.push(lease.subnet.to_string());
    }
    if let Some(s6) = lease.ipv6_subnet {
        subnets.push(s6.to_string());
    }
    subnets.join(" and ")
}

/// Without the lease: whether the backend's devices are there and up (VXLAN); what their
/// entries should be cannot be known.
async fn check_device(config: &NetworkConfig, nl: &Netlink, r: &mut Report) {
    flannel_backend::inspect_device(config, nl, r).await;
}

/// cni0 (the bridge the CNI plugin makes) holds the gateway of subnet.env's subnets and no
/// other address of the network: an address of an old subnet makes every CNI ADD fail
/// (`"cni0" already has an IP address different from …`).
async fn check_cni0(opts: &Options, nl: &Netlink, r: &mut Report) {
    let Ok(Some((env, _))) = SubnetEnv::read(&opts.subnet_file) else {
        return;
    };
    let Ok(Some(cni0)) = nl.link_by_name("cni0").await else {
        return;
    };
    let mut addresses = nl
        .addresses(cni0.index, Family::V4)
        .await
        .unwrap_or_default();
    addresses.extend(
        nl.addresses(cni0.index, Family::V6)
            .await
            .unwrap_or_default(),
    );
    // the bridge plugin's rule (ensureAddr): any other IPv4 address, or an IPv6 address
    // overlapping the gateway's subnet, makes ADD fail
    let gw4 = env.subnet.map(|s| gateway(IpNetwork::V4(s)));
    let gw6 = env.ipv6_subnet.map(|s| gateway(IpNetwork::V6(s)));
    let wrong: Vec<String> = addresses
        .iter()
        .filter(|a| match (a, gw4, gw6) {
            (IpNetwork::V4(_), Some(gw), _) => **a != gw,
            (IpNetwork::V6(_), _, Some(gw)) => {
                **a != gw && (a.contains(gw.ip()) || gw.contains(a.ip()))
            }
            _ => false,
        })
        .map(ToString::to_string)
        .collect();
    if wrong.is_empty() {
        if !addresses.is_empty() {
            r.ok("host", "cni0's address fits subnet.env");
        }
    } else {
        r.fail(
            "host",
            format!(
                "cni0 holds {}, not the gateway of subnet.env's subnet ({})",
                wrong.join(", "),
                [gw4, gw6]
                    .into_iter()
                    .flatten()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "the node's subnet changed since cni0 was made: every new pod fails (CNI ADD: \"cni0\" already has an IP address different from ...); delete the bridge (ip link del cni0) for the CNI plugin to make it again, and re-create the pods that had old addresses",
        );
    }
}

/// The bridge's address for `subnet`: its first address, with the subnet's prefix.
fn gateway(subnet: IpNetwork) -> IpNetwork {
    let ip = match subnet {
        IpNetwork::V4(s) => IpAddr::V4(Ipv4Addr::from(u32::from(s.network()) + 1)),
        IpNetwork::V6(s) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(s.network()) + 1)),
    };
    IpNetwork::new(ip, subnet.prefix()).unwrap_or(subnet)
}

fn check_subnet_env(
    opts: &Options,
    config: &NetworkConfig,
    lease: &Lease,
    mtu: Option<u32>,
    r: &mut Report,
) {
    let path = opts.subnet_file.display();
    let env = match SubnetEnv::read(&opts.subnet_file) {
        Ok(Some((env, _))) => env,
        Ok(None) => {
            r.fail(
                "subnet.env",
                format!("{path} is missing"),
                "the CNI plugin cannot give pods addresses; flanneld-rs writes it once it has its lease",
            );
            return;
        }
        Err(e) => {
            r.fail("subnet.env", e.to_string(), "check the file's permissions");
            return;
        }
    };
    let mut wrong = Vec::new();
    let want_net = config.enable_ipv4.then_some(config.network);
    if env.network != want_net {
        wrong.push(format!(
            "FLANNEL_NETWORK {} (the config: {})",
            opt_text(env.network),
            opt_text(want_net)
        ));
    }
    let want_subnet = lease.has_ipv4().then_some(lease.subnet);
    if env.subnet != want_subnet {
        wrong.push(format!(
            "FLANNEL_SUBNET {} (the lease: {})",
            opt_text(env.subnet),
            opt_text(want_subnet)
        ));
    }
    if env.ipv6_subnet != lease.ipv6_subnet {
        wrong.push(format!(
            "FLANNEL_IPV6_SUBNET {} (the lease: {})",
            opt_text(env.ipv6_subnet),
            opt_text(lease.ipv6_subnet)
        ));
    }
    if let Some(mtu) = mtu.filter(|m| *m != env.mtu) {
        wrong.push(format!("FLANNEL_MTU {} (the data path: {mtu})", env.mtu));
    }
    if env.ip_masq != opts.ip_masq {
        wrong.push(format!(
            "FLANNEL_IPMASQ {} (-ip-masq is {})",
            env.ip_masq, opts.ip_masq
        ));
    }
    if wrong.is_empty() {
        r.ok("subnet.env", format!("{path} matches the lease"));
    } else {
        r.fail(
            "subnet.env",
            format!("{path}: {}", wrong.join("; ")),
            "new pods get addresses or an MTU that do not fit this node's lease; restart flanneld-rs to rewrite it (pods made meanwhile need to be re-created)",
        );
    }
}

fn opt_text<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

async fn check_rules(opts: &Options, config: &NetworkConfig, lease: &Lease, r: &mut Report) {
    use flannel_masq::{Mode, Tools, TrafficManager};
    let mode = if config.enable_nftables {
        Mode::Nftables
    } else {
        Mode::Iptables
    };
    let mut sides = Vec::new();
    if let (true, Some(subnet)) = (config.enable_ipv4, lease.subnet_of(Family::V4)) {
        sides.push((IpNetwork::V4(config.network), subnet));
    }
    if let (Some(n6), Some(s6)) = (config.ipv6_network, lease.subnet_of(Family::V6)) {
        sides.push((IpNetwork::V6(n6), s6));
    }
    let mut problems = Vec::new();
    for (network, subnet) in sides {
        let spec = opts.rule_spec(network, subnet, None);
        let checked = match TrafficManager::new(mode, &Tools::default(), spec).await {
            Ok(m) => m.check().await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(p) => problems.extend(p),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if mode == Mode::Iptables && config.enable_ipv4 {
        forward_policy(opts, r);
    }
    if problems.is_empty() {
        r.ok(
            "rules",
            format!(
                "masquerade and forward rules in place ({})",
                match mode {
                    Mode::Iptables => "iptables",
                    Mode::Nftables => "nftables",
                }
            ),
        );
    } else {
        r.fail(
            "rules",
            problems.join("; "),
            "pods' traffic to outside the network is not masqueraded or forwarded traffic is dropped; a running flanneld-rs restores its rules every -iptables-resync seconds: is it running?",
        );
    }
}

/// The FORWARD chain's policy: DROP (Docker sets it) drops pods' traffic between nodes
/// unless flannel's forward rules accept it.
fn forward_policy(opts: &Options, r: &mut Report) {
    let Ok(o) = std::process::Command::new("iptables-save")
        .args(["-t", "filter"])
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let drop = text
        .lines()
        .any(|l| l.starts_with(":FORWARD DROP") || l.starts_with(":FORWARD REJECT"));
    if drop && !opts.iptables_forward_rules {
        r.fail(
            "rules",
            "the FORWARD chain's policy is DROP and -iptables-forward-rules is false",
            "traffic between pods of different nodes is dropped here; run with -iptables-forward-rules (the default) or accept the pod network in FORWARD",
        );
    } else {
        r.ok(
            "rules",
            format!(
                "FORWARD policy {}{}",
                if drop { "DROP" } else { "ACCEPT" },
                if drop {
                    " (flannel's forward rules accept the pod network)"
                } else {
                    ""
                }
            ),
        );
    }
}

/// The families `config` enables.
fn families(config: &NetworkConfig) -> Vec<Family> {
    let mut out = Vec::new();
    if config.enable_ipv4 {
        out.push(Family::V4);
    }
    if config.enable_ipv6 {
        out.push(Family::V6);
    }
    out
}

/// The kernel's setting `path`, trimmed.
fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_string())
}

/// Forwarding is on for each family flannel carries.
fn check_forwarding(families: &[Family], r: &mut Report) {
    for family in families {
        let (path, name) = match family {
            Family::V4 => ("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
            Family::V6 => (
                "/proc/sys/net/ipv6/conf/all/forwarding",
                "net.ipv6.conf.all.forwarding",
            ),
        };
        if sysctl(path).as_deref() == Some("0") {
            r.fail(
                "host",
                format!("{name} is 0"),
                format!("packets to this node's pods from other nodes are dropped; sysctl -w {name}=1 (flanneld-rs sets it at start; something turned it off since)"),
            );
        } else {
            r.ok("host", format!("{name} is 1"));
        }
    }
}

/// Forwarding, rp_filter on the external interface, the MTU chain to cni0, another route
/// over the Network.
async fn check_host(
    config: &NetworkConfig,
    ext: &flannel_backend::ExtIface,
    mtu: Option<u32>,
    nl: &Netlink,
    r: &mut Report,
) {
    check_forwarding(&families(config), r);
    let rp = |name: &str| sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"));
    let effective = rp("all")
        .and_then(|a| a.parse::<u8>().ok())
        .max(rp(&ext.name).and_then(|a| a.parse::<u8>().ok()));
    if effective == Some(1) && flannel_backend::makes_gateway_routes(config) {
        r.warn(
            "host",
            format!("rp_filter is strict (1) on {}", ext.name),
            "with host-gw, replies that come back another way than they left are dropped; 2 (loose) is safe",
        );
    }
    let links = nl.links().await.unwrap_or_default();
    if let (Some(cni0), Some(mtu)) = (links.iter().find(|l| l.name == "cni0"), mtu) {
        if cni0.mtu > mtu {
            r.fail(
                "host",
                format!("cni0 has MTU {} but flannel's is {mtu}", cni0.mtu),
                "pods send packets the tunnel cannot carry: large transfers stall; pods must get FLANNEL_MTU (recreate cni0 and the pods, or fix the CNI config)",
            );
        } else {
            r.ok(
                "host",
                format!(
                    "MTU chain: {} {} -> flannel {mtu} -> cni0 {}",
                    ext.name, ext.mtu, cni0.mtu
                ),
            );
        }
    }
    if config.enable_ipv4 {
        let network = IpNetwork::V4(config.network);
        let ours: Vec<u32> = links
            .iter()
            .filter(|l| l.name == "cni0" || l.name.starts_with("flannel"))
            .map(|l| l.index)
            .collect();
        for route in nl.routes(Family::V4).await.unwrap_or_default() {
            let overlaps = route.dst.prefix() > 0
                && (route.dst.contains(network.network()) || network.contains(route.dst.network()));
            let flannels = route.oif.is_some_and(|o| ours.contains(&o))
                || flannel_backend::hostgw::is_gateway_route(&route, network, ext.index);
            if overlaps && !flannels && route.oif.is_some() {
                let dev = links
                    .iter()
                    .find(|l| Some(l.index) == route.oif)
                    .map_or(String::new(), |l| format!(" dev {}", l.name));
                r.warn(
                    "host",
                    format!(
                        "another route covers the flannel network: {}{}{dev}",
                        route.dst,
                        route.gateway.map_or(String::new(), |g| format!(" via {g}"))
                    ),
                    "pod traffic may leave by that route instead of the tunnel; remove it or choose a Network that no other route covers",
                );
            }
        }
    }
}
