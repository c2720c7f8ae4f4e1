//! `flanneld-rs doctor`: checks a node the way an operator would with ip, bridge, iptables
//! and etcdctl, explains what is wrong and what to do, and exits 1 when something is.
//! Same flags and `FLANNELD_*` environment as the daemon (so it reads the same store and
//! files), plus `--json`. It changes nothing.
//!
//! Checks: the daemon (running, /healthz, /readyz), the store (reachable, config valid, this
//! node's lease, its PublicIP), subnet.env against the lease, the data path ([`datapath`]:
//! device, MAC, MTU; every peer's route, neighbour and FDB entry; strays), the rules, and the
//! host (forwarding, rp_filter, the MTU chain to cni0, another route over the Network).

mod datapath;
mod report;

use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use flannel_backend::netlink::{Family, Netlink};
use flannel_net::{Lease, NetworkConfig, SubnetEnv};
use ipnetwork::IpNetwork;

use crate::cli::{self, Flag, Parsed, DAEMON_FLAGS};
use crate::iface;
use crate::options::Options;
pub use report::Report;

/// How long the store may take to answer before it counts as unreachable.
const STORE_TIMEOUT: Duration = Duration::from_secs(8);

fn flags() -> Vec<Flag> {
    let mut flags: Vec<Flag> = DAEMON_FLAGS.to_vec();
    flags.push(cli::JSON_FLAG);
    flags
}

/// What the checks of the store found: the config and every lease, and this node's.
struct Store {
    config: NetworkConfig,
    leases: Vec<Lease>,
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
    let json = values.bool(&flags, "json");
    let opts = Options::from_values(&values)?;
    let mut r = Report::default();
    check_daemon(&opts, &mut r);
    let store = check_store(&opts, &mut r).await;
    let nl = Netlink::connect()?
        .with_nexthops(opts.nexthop_objects)
        .await?;
    if let Some(store) = store {
        check_node(&opts, &store, &nl, &mut r).await;
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&r.json())?);
    } else {
        out_print!("{}", r.text(std::io::stdout().is_terminal()));
    }
    Ok(if r.failed() { 1 } else { 0 })
}

/// Whether a flanneld-rs holds the instance lock, and what its health endpoints say.
fn check_daemon(opts: &Options, r: &mut Report) {
    let lock = crate::lock::lock_path(&opts.subnet_file);
    let holder = std::fs::File::open(&lock).ok().and_then(|mut f| {
        use nix::fcntl::{Flock, FlockArg};
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(_released_on_drop) => None,
            Err(_) => Some(pid.trim().to_string()),
        }
    });
    let Some(pid) = holder else {
        r.fail(
            "daemon",
            format!("flanneld-rs is not running (nobody holds {})", lock.display()),
            "nothing keeps this node's routes, lease and rules in place; start it (systemctl start flanneld), and look at its log if it stopped",
        );
        return;
    };
    let mut text = format!("running (PID {pid})");
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
                    return;
                }
                None => {
                    r.fail(
                        "daemon",
                        format!("{path} at {addr} does not answer"),
                        "the daemon is hung or listens elsewhere (-healthz-ip, -healthz-port): check the flags it runs with",
                    );
                    return;
                }
            }
        }
    }
    r.ok("daemon", text);
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

/// The store reachable, the config valid, the leases read.
async fn check_store(opts: &Options, r: &mut Report) -> Option<Store> {
    if let Some(kube) = &opts.kube {
        return check_kube(kube, r).await;
    }
    let endpoints = opts.etcd.endpoints.join(",");
    let read = async {
        let api = match opts.etcd_api {
            Some(api) => api,
            None => flannel_subnet::detect_api(&opts.etcd)
                .await?
                .unwrap_or(flannel_subnet::EtcdApi::V3),
        };
        let sm = flannel_subnet::manager(
            api,
            &opts.etcd,
            flannel_subnet::LeasePolicy::default(),
            None,
        )
        .await?;
        let config = sm.get_network_config().await;
        let entries = sm.list_leases().await?;
        Ok::<_, flannel_subnet::SubnetError>((api, config, entries))
    };
    let (api, config, entries) = match tokio::time::timeout(STORE_TIMEOUT, read).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            r.fail(
                "store",
                format!("etcd at {endpoints}: {e}"),
                "without etcd no node can get or renew a lease or learn of new nodes (the data path keeps working meanwhile); check etcd and -etcd-endpoints / certificates",
            );
            return None;
        }
        Err(_) => {
            r.fail(
                "store",
                format!("etcd at {endpoints} did not answer within {STORE_TIMEOUT:?}"),
                "check that etcd runs and is reachable from this node",
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
        format!("etcd {api} API at {endpoints}"),
        "leases",
        config,
        entries,
    ))
}

/// Kube mode: the API reachable, the nodes' leases read (the config is the local file).
async fn check_kube(kube: &crate::options::KubeOptions, r: &mut Report) -> Option<Store> {
    let server = kube
        .settings
        .api_url
        .clone()
        .or_else(|| {
            kube.settings
                .kubeconfig
                .as_ref()
                .map(|p| format!("the server of {}", p.display()))
        })
        .unwrap_or_else(|| "the in-cluster API".into());
    let read = async {
        let sm = crate::kube_mode::subnet_manager_for_listing(kube).await?;
        let config = sm.get_network_config().await?;
        let entries = sm.list_leases().await?;
        Ok::<_, anyhow::Error>((config, entries))
    };
    let (config, entries) = match tokio::time::timeout(STORE_TIMEOUT, read).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            r.fail(
                "store",
                format!("Kubernetes API ({server}): {e:#}"),
                "without the API no node learns of new nodes (the data path keeps working meanwhile); check the API server, -kubeconfig-file / -kube-api-url, the RBAC role and -net-config-path",
            );
            return None;
        }
        Err(_) => {
            r.fail(
                "store",
                format!("Kubernetes API ({server}) did not answer within {STORE_TIMEOUT:?}"),
                "check that the API server runs and is reachable from this node",
            );
            return None;
        }
    };
    Some(found(
        r,
        format!("Kubernetes API ({server})"),
        "flannel nodes",
        config,
        entries,
    ))
}

/// The store read: its summary line, the leases that parse (each that does not is a
/// warning).
fn found(
    r: &mut Report,
    place: String,
    what: &str,
    config: flannel_net::NetworkConfig,
    entries: Vec<flannel_subnet::LeaseEntry>,
) -> Store {
    let mut bad = 0;
    let mut leases = Vec::new();
    for e in entries {
        match e.lease {
            Ok(l) => leases.push(l),
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
            config.network,
            config.backend_kind(),
            leases.len(),
        ),
    );
    Store { config, leases }
}

/// Everything that needs this node's lease: subnet.env, the data path, the rules, the host.
async fn check_node(opts: &Options, store: &Store, nl: &Netlink, r: &mut Report) {
    let config = &store.config;
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
            return;
        }
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
    let Some(lease) = mine else {
        r.fail(
            "lease",
            format!("no lease names this node ({node}, interface {})", chosen.ext.name),
            "other nodes have no route to this node's pods; flanneld-rs writes its lease at start: is it running with the same -iface / -public-ip? (the interface it would choose today is shown here)",
        );
        return;
    };
    r.ok(
        "lease",
        format!(
            "{} for {node} on {} ({})",
            lease.subnets_text(),
            chosen.ext.name,
            match lease.expiration {
                flannel_net::Expiration::Never => "a reservation".to_string(),
                _ => "kept alive".to_string(),
            }
        ),
    );
    let node = datapath::Node {
        config,
        lease,
        leases: &store.leases,
        ext: &chosen.ext,
        nl,
        behind_nat: public
            .is_some_and(|p| !chosen.ext.addresses.iter().any(|a| a.ip() == IpAddr::V4(p))),
    };
    let mtu = datapath::check(&node, r).await;
    check_subnet_env(opts, config, lease, mtu, r);
    check_rules(opts, config, lease, r).await;
    check_host(config, &chosen.ext, mtu, nl, r).await;
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
    if let (true, Some(subnet)) = (config.enable_ipv4, lease.subnet_of(false)) {
        sides.push((IpNetwork::V4(config.network), subnet));
    }
    if let (Some(n6), Some(s6)) = (config.ipv6_network, lease.subnet_of(true)) {
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
            format!("masquerade and forward rules in place ({mode:?})"),
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

/// Forwarding, rp_filter on the external interface, the MTU chain to cni0, another route
/// over the Network.
async fn check_host(
    config: &NetworkConfig,
    ext: &flannel_backend::ExtIface,
    mtu: Option<u32>,
    nl: &Netlink,
    r: &mut Report,
) {
    let sysctl = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|v| v.trim().to_string())
    };
    let mut forwarding = Vec::new();
    if config.enable_ipv4 {
        forwarding.push(("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"));
    }
    if config.enable_ipv6 {
        forwarding.push((
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ));
    }
    for (path, name) in forwarding {
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
    let rp = |name: &str| sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"));
    let effective = rp("all")
        .and_then(|a| a.parse::<u8>().ok())
        .max(rp(&ext.name).and_then(|a| a.parse::<u8>().ok()));
    if effective == Some(1) && config.backend_kind() == "host-gw" {
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
                || (route.oif == Some(ext.index)
                    && route.gateway.is_some()
                    && route.dst.prefix() > network.prefix()
                    && network.contains(route.dst.network()));
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
