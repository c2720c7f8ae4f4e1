//! `flannel-bench`: what flanneld exists for, measured in the lab, for any flanneld binary.
//!
//! ```text
//! flannel-bench [--flanneld PATH]... [--quick] [--out FILE] [--peers N,N...] [--idle SECONDS] [--scenario NAME]...
//! ```
//! Every scenario runs for each binary in turn (alternating where it repeats) against a real
//! etcd, with the lab's upstream-style flags, and prints one row per scenario and binary;
//! the ratio column compares with the first binary. Results also go to a JSON file.
//! Scenarios: start, converge, cold (N = 100, 1000, 5000, 10 000, or `--peers`), steady, churn, etcd-load (10 nodes
//! on a 3-member etcd: messages and bytes per node per hour at rest, and for a node's join). `--quick` is the
//! short mode CI runs so that the harness cannot rot (N = 100, few repetitions).
//! `--backend host-gw` runs start, converge and cold with the host-gw backend: peers are
//! host-gw leases whose PublicIPs are on the node's segment (a 172.16.0.0/16 address is added
//! to its eth0), and a peer is programmed when its route is. `--ip dual` runs them with a
//! dual-stack VXLAN network: every peer lease has an IPv6 subnet too, and a peer is programmed
//! when its six entries are (route, ARP, FDB on `flannel.1`; route, NDP, FDB on
//! `flannel-v6.1`). `--backend wireguard` runs cold alone: peers are WireGuard leases (a key
//! each), and the start is programmed when `flannel-wg` holds every peer (read over generic
//! netlink every 5 ms: run it where the kernel has the module, e.g. `tests/vm.sh`).
//! `--backend ipip` runs cold alone too: a peer is programmed when its route is (through
//! `flannel.ipip`; in the VM as well). `--backend udp` runs cold (a peer is programmed when
//! the log says `Subnet added: ` for it: its route is in the daemon's memory, for upstream's
//! and ours) and `throughput` (two pods on two hosts, iperf3 each way, the daemons' CPU
//! time: the udp data path is the daemon). `--backend ipsec` runs cold (a peer is programmed
//! when its three xfrm policies are; charon started anew for each start; in the VM, for
//! its esp4 module).

mod chaos;
mod cluster;
mod kube;
mod probe;
mod throughput;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use flannel_lab::lab::{wait_until, Lab, LabSpec, ETCD_IP, HEALTHZ_PORT};
use probe::{in_netns, peer_entries, Entry, Watch};

const PREFIX: &str = "/coreos.com/network";
/// The network config of a lab over `network` (/24 subnets) for `kind`, the backend named
/// by its table row; ipsec's with a PSK of upstream's minimum length. The bench's node takes
/// one of the first 100 subnets of a /8, so that thousands of /24 peers fit.
pub(crate) fn net_config(network: &str, kind: flannel_net::BackendKind) -> serde_json::Value {
    let mut backend = serde_json::json!({ "Type": kind.name() });
    if kind == flannel_net::BackendKind::Ipsec {
        backend["PSK"] = ["flannel-bench-psk"; 6].join("-").into();
    }
    serde_json::json!({ "Network": network, "SubnetLen": 24, "Backend": backend })
}

/// `--ip dual` (set once, before any scenario runs).
static DUAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn dual() -> bool {
    DUAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Peer `i`'s IPv6 subnet: `fd00:0:1:<i>::/64` (this node takes one of `fd00:0:0:*::/64`).
fn subnet6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from((0xfd00_0000_0001u128 << 80) | (u128::from(i) << 64))
}

/// The peer index of an IPv4 subnet made by [`peer_value`].
fn index_of(subnet: Ipv4Addr) -> u32 {
    (u32::from(subnet) - 0x0a01_0000) >> 8
}

fn mac6(i: u32) -> [u8; 6] {
    [0x0e, 0x06, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// `--backend host-gw` (set once, before any scenario runs).
static HOST_GW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn host_gw() -> bool {
    HOST_GW.load(std::sync::atomic::Ordering::Relaxed)
}

/// `--backend udp` (set once, before any scenario runs).
static UDP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--backend ipsec` (set once, before any scenario runs).
static IPSEC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn ipsec() -> bool {
    IPSEC.load(std::sync::atomic::Ordering::Relaxed)
}

fn udp() -> bool {
    UDP.load(std::sync::atomic::Ordering::Relaxed)
}

/// The backend `--backend` named (vxlan by default).
fn backend_kind() -> flannel_net::BackendKind {
    use flannel_net::BackendKind as K;
    [
        (host_gw(), K::HostGw),
        (ipip(), K::Ipip),
        (wireguard(), K::WireGuard),
        (udp(), K::Udp),
        (ipsec(), K::Ipsec),
    ]
    .into_iter()
    .find_map(|(on, kind)| on.then_some(kind))
    .unwrap_or(K::Vxlan)
}

/// The backend `--backend` named, but vxlan.
fn backend_name() -> Option<&'static str> {
    let kind = backend_kind();
    (kind != flannel_net::BackendKind::Vxlan).then_some(kind.name())
}

/// `--backend ipip` (set once, before any scenario runs).
static IPIP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn ipip() -> bool {
    IPIP.load(std::sync::atomic::Ordering::Relaxed)
}

/// `--backend wireguard` (set once, before any scenario runs).
static WIREGUARD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn wireguard() -> bool {
    WIREGUARD.load(std::sync::atomic::Ordering::Relaxed)
}

/// Peer `i`'s WireGuard public key, base64: any 32 bytes are a key the kernel takes.
fn wg_key(i: u32) -> String {
    let mut k = [7u8; 32];
    k[..4].copy_from_slice(&i.to_be_bytes());
    use base64::Engine as _;
    base64::prelude::BASE64_STANDARD.encode(k)
}

/// The kernel entries a peer gets: route, ARP and FDB entry with VXLAN; the route alone with
/// host-gw.
fn entries(subnet: Ipv4Addr, mac: [u8; 6]) -> Vec<Entry> {
    if host_gw() || ipip() {
        return vec![Entry::Route(IpAddr::V4(subnet), 24)];
    }
    let mut v = peer_entries(subnet, mac).to_vec();
    if dual() {
        let i = index_of(subnet);
        let s6 = IpAddr::V6(subnet6(i));
        v.extend([Entry::Route(s6, 64), Entry::Arp(s6), Entry::Fdb(mac6(i))]);
    }
    v
}

#[derive(Clone)]
struct Opts {
    binaries: Vec<PathBuf>,
    quick: bool,
    soak_minutes: u64,
    /// `--peers`: the cold start's sizes instead of the default ones.
    peers: Vec<u32>,
    /// `--idle SECONDS`: how long the cold start waits before reading memory (60, 3 quick).
    idle: Option<Duration>,
    out: PathBuf,
    scenarios: Vec<String>,
    /// `--nodes N`: the cluster scenario's size (200; 5 quick).
    nodes: Option<usize>,
    /// `--rest SECONDS`: how long the cluster scenario measures at rest (300; 5 quick).
    rest: Option<Duration>,
    /// `--seed N`: the chaos scenario's seed (random, printed, when not given).
    seed: Option<u64>,
    /// `--minutes M`: how long the chaos scenario runs (30; 2 quick).
    minutes: Option<f64>,
    /// `--store v3|v2|kube`: what the chaos scenario's cluster runs on (v3).
    store: chaos::store::Store,
    /// `--upstream BIN`: upstream's flanneld, for the chaos scenario's node replaced by it.
    upstream: Option<PathBuf>,
}

/// A scenario: runs for every binary, returns its rows.
type Scenario = fn(&Opts, &Path) -> Vec<Row>;

/// One table row: a scenario, a binary, its numbers.
#[derive(Debug, Clone)]
struct Row {
    scenario: String,
    binary: String,
    metrics: Vec<(String, f64)>,
}

fn label(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn spec(name: &str, flanneld: &Path, dir: &Path) -> LabSpec {
    LabSpec {
        name: name.into(),
        flanneld: flanneld.to_path_buf(),
        cni_plugin: flanneld.with_file_name("flannel"),
        prefix: PREFIX.into(),
        extra_flags: vec![],
        dir: dir.to_path_buf(),
        etcd_args: vec![],
    }
}

fn lab(name: &str, flanneld: &Path, dir: &Path) -> Lab {
    use flannel_net::BackendKind as K;
    let spec = spec(name, flanneld, dir);
    if dual() {
        let mut config = net_config("10.0.0.0/8", K::Vxlan);
        config["EnableIPv6"] = true.into();
        config["IPv6Network"] = "fd00::/40".into();
        return Lab::create(spec, 1, Some(&config.to_string()));
    }
    let kind = backend_kind();
    let mut lab = Lab::create(spec, 1, Some(&net_config("10.0.0.0/8", kind).to_string()));
    if matches!(kind, K::Ipsec | K::WireGuard) {
        // charon's pid file and VICI socket, wireguard-go's sockets: the host's own
        lab.private_run();
    }
    if kind != K::HostGw {
        return lab;
    }
    // the peers' PublicIPs (172.16.0.1 ...) on the node's segment, as host-gw needs
    lab.on_host(
        1,
        &["ip", "addr", "add", "172.16.255.254/16", "dev", "eth0"],
    );
    lab
}

/// A peer lease as another node (upstream or this project) writes it.
fn peer_value(i: u32) -> (Ipv4Addr, [u8; 6], String) {
    let subnet = Ipv4Addr::from(0x0a01_0000 + (i << 8));
    let ip = Ipv4Addr::from(0xac10_0000 + i + 1);
    let mac = [0x0e, 0x00, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let m = flannel_net::MacAddr(mac);
    let t = backend_kind().name();
    let value = if wireguard() {
        let k = wg_key(i);
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"{t}","BackendData":{{"PublicKey":"{k}","Port":51820}}}}"#
        )
    } else if udp() {
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#)
    } else if host_gw() || ipip() || ipsec() {
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"{t}"}}"#)
    } else if dual() {
        let ip6 = Ipv6Addr::from((0xfd77u128 << 112) | u128::from(i + 1));
        let m6 = flannel_net::MacAddr(mac6(i));
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"{t}","BackendData":{{"VNI":1,"VtepMAC":"{m}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{m6}"}}}}"#
        )
    } else {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"{t}","BackendData":{{"VNI":1,"VtepMAC":"{m}"}}}}"#
        )
    };
    (subnet, mac, value)
}

fn key(subnet: Ipv4Addr) -> String {
    if dual() {
        let s6 = subnet6(index_of(subnet));
        return format!("{PREFIX}/subnets/{subnet}-24&{s6}-64");
    }
    format!("{PREFIX}/subnets/{subnet}-24")
}

async fn etcd() -> Client {
    Client::connect([format!("http://{ETCD_IP}:2379")], None)
        .await
        .expect("etcd")
}

/// Writes peers `range` in transactions of 100 puts.
async fn put_peers(c: &mut Client, range: std::ops::Range<u32>) {
    let all: Vec<u32> = range.collect();
    for chunk in all.chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| {
                let (s, _, v) = peer_value(i);
                TxnOp::put(key(s), v, None::<PutOptions>)
            })
            .collect();
        c.txn(Txn::new().and_then(ops)).await.expect("put peers");
    }
}

async fn delete_peers(c: &mut Client) {
    c.delete(
        format!("{PREFIX}/subnets/10.1."),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("delete peers");
}

/// Scenario 1: start until subnet.env is written, median of `reps` starts per binary.
fn start(o: &Opts, dir: &Path) -> Vec<Row> {
    let reps = if o.quick { 3 } else { 11 };
    let mut lab = lab("bs", &o.binaries[0], dir);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); o.binaries.len()];
    for _ in 0..reps {
        for (b, bin) in o.binaries.iter().enumerate() {
            let _ = std::fs::remove_file(&lab.hosts[0].subnet_file);
            let t0 = Instant::now();
            lab.start_binary(1, bin, &[]);
            let file = lab.hosts[0].subnet_file.clone();
            // 1 ms polling: the resolution the numbers need
            while !file.exists() && t0.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if file.exists() {
                times[b].push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            lab.stop(1, "KILL");
        }
    }
    o.binaries
        .iter()
        .zip(times)
        .map(|(bin, mut t)| Row {
            scenario: "start -> subnet.env".into(),
            binary: label(bin),
            metrics: vec![
                ("median_ms".into(), median(&mut t)),
                ("runs".into(), t.len() as f64),
            ],
        })
        .collect()
}

/// Scenario 2: a lease put (or deleted) by another node until its route, ARP and FDB
/// entries are there (or gone) on this node, from the kernel's notifications.
fn converge(o: &Opts, dir: &Path) -> Vec<Row> {
    let events = if o.quick { 20 } else { 200 };
    let mut rows = Vec::new();
    let mut floor = None;
    for bin in &o.binaries {
        let mut lab = lab("bc", bin, dir);
        let ns = lab.hosts[0].ns.clone();
        if floor.is_none() {
            let row = etcd_floor(&ns, events);
            floor = Some(row.metrics[0].1);
            rows.push(row);
        }
        lab.start(1);
        lab.wait_ready(Duration::from_secs(30));
        let (mut add, mut del, lost) = in_netns(&ns, move || async move {
            let mut c = etcd().await;
            let mut watch = Watch::start();
            let (mut add, mut del, mut lost) = (Vec::new(), Vec::new(), 0);
            for i in 0..(events / 2) as u32 {
                let (subnet, mac, value) = peer_value(i);
                let want = entries(subnet, mac);
                watch.drain();
                let t0 = Instant::now();
                c.put(key(subnet), value, None).await.expect("put");
                match watch.until(&want, true, t0, Duration::from_secs(5)).await {
                    Some(d) => add.push(d.as_secs_f64() * 1000.0),
                    None => lost += 1,
                }
                watch.drain();
                let t0 = Instant::now();
                c.delete(key(subnet), None).await.expect("delete");
                match watch.until(&want, false, t0, Duration::from_secs(5)).await {
                    Some(d) => del.push(d.as_secs_f64() * 1000.0),
                    None => lost += 1,
                }
            }
            (add, del, lost)
        });
        let mut all: Vec<f64> = add.iter().chain(del.iter()).copied().collect();
        let p50 = percentile(&mut all, 0.5);
        rows.push(Row {
            scenario: "convergence (put/delete -> kernel)".into(),
            binary: label(bin),
            metrics: vec![
                ("p50_ms".into(), p50),
                (
                    "over_floor_p50_ms".into(),
                    (p50 - floor.unwrap_or(0.0)).max(0.0),
                ),
                ("p99_ms".into(), percentile(&mut all, 0.99)),
                ("add_p99_ms".into(), percentile(&mut add, 0.99)),
                ("del_p99_ms".into(), percentile(&mut del, 0.99)),
                ("events".into(), all.len() as f64),
                ("lost".into(), f64::from(lost)),
            ],
        });
    }
    rows
}

/// What every flanneld's convergence includes and none can shorten: a put or delete until a
/// client's etcd watch receives it (the same client, keys and order as the converge
/// scenario, before any flanneld runs). A row of its own, `etcd watch (floor)`; each
/// binary's `over_floor_p50_ms` is its p50 less this one's.
fn etcd_floor(ns: &str, events: usize) -> Row {
    let mut times = in_netns(ns, move || async move {
        let mut c = etcd().await;
        let mut stream = c
            .watch(
                format!("{PREFIX}/subnets/"),
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await
            .expect("watch");
        let mut times = Vec::new();
        for i in 0..(events / 2) as u32 {
            let (subnet, _, value) = peer_value(i);
            for put in [true, false] {
                let t0 = Instant::now();
                if put {
                    c.put(key(subnet), value.clone(), None).await.expect("put");
                } else {
                    c.delete(key(subnet), None).await.expect("delete");
                }
                loop {
                    let resp = stream.message().await.expect("watch").expect("watch open");
                    if resp
                        .events()
                        .iter()
                        .any(|e| e.kv().map(|kv| kv.key()) == Some(key(subnet).as_bytes()))
                    {
                        break;
                    }
                }
                times.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        times
    });
    Row {
        scenario: "convergence (put/delete -> kernel)".into(),
        binary: "etcd watch (floor)".into(),
        metrics: vec![
            ("p50_ms".into(), percentile(&mut times, 0.5)),
            ("p99_ms".into(), percentile(&mut times, 0.99)),
        ],
    }
}

/// Scenarios 3 and 4: start with N peer leases in etcd until every route, ARP and FDB entry
/// is programmed, and readyz; memory afterwards.
fn cold(o: &Opts, dir: &Path) -> Vec<Row> {
    let sizes: &[u32] = if !o.peers.is_empty() {
        &o.peers
    } else if o.quick {
        &[100]
    } else {
        &[100, 1000, 5000, 10_000]
    };
    let idle = o.idle.unwrap_or(if o.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(60)
    });
    let mut rows = Vec::new();
    // flanneld-rs twice with VXLAN: peer routes through nexthop objects (its default where
    // the kernel has them) and classic onlink routes (upstream's form)
    let variants: Vec<(&PathBuf, &[&str], &str)> = o
        .binaries
        .iter()
        .flat_map(|bin| {
            let ours = label(bin).contains("flanneld-rs") && backend_name().is_none();
            let mut v: Vec<(&PathBuf, &[&str], &str)> = vec![(bin, &[], "")];
            if ours {
                v.push((bin, &["-nexthop-objects=off"], " classic"));
            }
            v
        })
        .collect();
    for (bin, flags, suffix) in variants {
        let mut lab = lab("bk", bin, dir);
        let ns = lab.hosts[0].ns.clone();
        for &n in sizes {
            in_netns(&ns, move || async move {
                let mut c = etcd().await;
                delete_peers(&mut c).await;
                put_peers(&mut c, 0..n).await;
            });
            // what the previous run programmed goes: every entry is new again
            if ipsec() {
                // a charon outlives flanneld-rs: each start gets a new one, and no policy (in
                // the host's own /run, where its pid file is)
                lab.on_host(
                    1,
                    &[
                        "sh",
                        "-c",
                        "kill $(cat /run/charon.pid) 2>/dev/null; sleep 1; ip xfrm policy flush; ip xfrm state flush; true",
                    ],
                );
            }
            let clear: &[&[&str]] = if udp() || ipsec() {
                // the peers are in the daemon's memory: nothing of theirs in the kernel
                &[]
            } else if wireguard() {
                &[&["ip", "link", "del", "flannel-wg"]]
            } else if host_gw() || ipip() {
                &[&["ip", "route", "flush", "root", "10.0.0.0/8"]]
            } else {
                &[
                    &["ip", "link", "del", "flannel.1"],
                    &["ip", "link", "del", "flannel-v6.1"],
                ]
            };
            for c in clear {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .args(*c)
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            rows.push(Row {
                scenario: format!("cold start, {n} peers"),
                binary: format!("{}{suffix}", label(bin)),
                metrics: cold_start(&mut lab, bin, flags, n, idle, cold_limit()),
            });
        }
    }
    rows
}

/// How long a cold start may take: upstream lists thousands of leases one request per key,
/// and configures WireGuard peers one at a time (minutes for thousands, in the VM's
/// emulation).
fn cold_limit() -> Duration {
    Duration::from_secs(if wireguard() || ipip() || ipsec() {
        900
    } else {
        120
    })
}

/// How long after `t0` the log at `path` (from byte `from`) said `Subnet added: ` `n` times
/// (upstream's line and ours as a peer is put in the udp data path's table), read every
/// 5 ms, within `limit`.
async fn log_lines_until(
    path: &Path,
    from: u64,
    n: usize,
    t0: Instant,
    limit: Duration,
) -> Option<Duration> {
    while t0.elapsed() < limit {
        let text = std::fs::read(path).unwrap_or_default();
        let tail = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
        if tail.matches("Subnet added: ").count() >= n {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// How long after `t0` the kernel held `n` policies of flannel's ipsec (reqid 11; read every
/// 20 ms), within `limit`.
async fn xfrm_policies_until(n: usize, t0: Instant, limit: Duration) -> Option<Duration> {
    while t0.elapsed() < limit {
        let count = flannel_netlink::xfrm::KernelXfrm::policies()
            .map_or(0, |p| p.iter().filter(|p| p.reqid == 11).count());
        if count >= n {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// How long after `t0` `flannel-wg` held `n` peers (read every 5 ms), within `limit`.
async fn wg_peers_until(n: usize, t0: Instant, limit: Duration) -> Option<Duration> {
    while t0.elapsed() < limit {
        let count = flannel_netlink::wireguard::KernelWireGuard::connect()
            .and_then(|k| k.device("flannel-wg"))
            .map_or(0, |d| d.peers.len());
        if count >= n {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Starts `bin` (with `flags`) on host 1, whose store holds peers 0..n: the time until every
/// peer's entries are programmed (netlink notifications) and `/readyz` answers (not measured
/// for a flanneld without it), VmHWM and VmRSS after `idle` (the peak of the whole start); then kills it. Shared by
/// the etcd and the kube cold starts.
fn cold_start(
    lab: &mut Lab,
    bin: &Path,
    flags: &[&str],
    n: u32,
    idle: Duration,
    limit: Duration,
) -> Vec<(String, f64)> {
    let ns = lab.hosts[0].ns.clone();
    let host_ip = lab.hosts[0].ip;
    let want: Vec<Entry> = (0..n)
        .flat_map(|i| {
            let (s, m, _) = peer_value(i);
            entries(s, m)
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let ns2 = ns.clone();
    let log = lab.hosts[0].log.clone();
    let log_from = std::fs::metadata(&log).map_or(0, |m| m.len());
    let waiter = std::thread::spawn(move || {
        in_netns(&ns2, move || async move {
            if ipsec() {
                tx.send(()).expect("ready to watch");
                let t0 = Instant::now();
                return (t0, xfrm_policies_until(3 * n as usize, t0, limit).await);
            }
            if udp() {
                tx.send(()).expect("ready to watch");
                let t0 = Instant::now();
                return (
                    t0,
                    log_lines_until(&log, log_from, n as usize, t0, limit).await,
                );
            }
            if wireguard() {
                tx.send(()).expect("ready to watch");
                let t0 = Instant::now();
                return (t0, wg_peers_until(n as usize, t0, limit).await);
            }
            let mut watch = Watch::start();
            tx.send(()).expect("ready to watch");
            let t0 = Instant::now();
            let programmed = watch.until(&want, true, t0, limit).await;
            (t0, programmed)
        })
    });
    rx.recv().expect("watcher");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Instant>();
    let readiness = std::thread::spawn(move || {
        in_netns(&ns, move || async move {
            let t0: Instant = ready_rx.recv().expect("start time");
            while t0.elapsed() < limit {
                match probe::http_status(host_ip, HEALTHZ_PORT, "/readyz") {
                    Some(200) => return Some(t0.elapsed()),
                    // a flanneld without /readyz (upstream before v0.28.9): not measured
                    Some(404) => return None,
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        })
    });
    let t0 = Instant::now();
    lab.start_full(1, bin, &[], flags);
    ready_tx.send(t0).expect("readiness thread");
    let ready = readiness.join().expect("readiness thread");
    let (w0, programmed) = waiter.join().expect("watcher thread");
    let programmed = programmed.map(|d| d.saturating_sub(t0.saturating_duration_since(w0)));
    let pid = lab.pid(1).unwrap_or(0);
    std::thread::sleep(idle);
    // the peak of the whole start, the full reconcile after the first listing included
    let hwm = probe::proc_status_kib(pid, "VmHWM").unwrap_or(0) as f64;
    let rss = probe::proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64;
    // of the resident memory: the program's code and read-only data mapped from its file,
    // and its own (heap, stacks)
    let rss_file = probe::proc_status_kib(pid, "RssFile").unwrap_or(0) as f64;
    let rss_anon = probe::proc_status_kib(pid, "RssAnon").unwrap_or(0) as f64;
    if programmed.is_none() {
        eprintln!(
            "{}: not every entry programmed; log:\n{}",
            label(bin),
            lab.log(1)
        );
    }
    lab.stop(1, "KILL");
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    vec![
        ("programmed_ms".into(), ms(programmed)),
        ("per_peer_us".into(), ms(programmed) * 1000.0 / f64::from(n)),
        ("readyz_ms".into(), ms(ready)),
        ("VmHWM_MiB".into(), hwm / 1024.0),
        ("VmRSS_idle_MiB".into(), rss / 1024.0),
        ("RssFile_idle_MiB".into(), rss_file / 1024.0),
        ("RssAnon_idle_MiB".into(), rss_anon / 1024.0),
    ]
}

/// Scenario 5: steady state with 3 peers: CPU, processes started (counted by wrappers on
/// PATH, the same for any binary), etcd requests.
/// gRPC messages and bytes all members of the lab's 3-member cluster received and sent.
fn cluster_load(lab: &Lab) -> (f64, f64) {
    (0..3)
        .map(|i| {
            let ns = lab.member_ns(i);
            (
                probe::etcd_metric(&ns, "grpc_server_msg_received_total"),
                probe::etcd_metric(&ns, "etcd_network_client_grpc_received_bytes_total")
                    + probe::etcd_metric(&ns, "etcd_network_client_grpc_sent_bytes_total"),
            )
        })
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// The cluster's load on etcd: N nodes, every one with the three endpoints of a 3-member
/// cluster (the HA setup), at rest and when one more node joins, from etcd's own metrics.
fn etcd_load(o: &Opts, dir: &Path) -> Vec<Row> {
    let (nodes, period) = if o.quick {
        (3, Duration::from_secs(6))
    } else {
        (10, Duration::from_secs(120))
    };
    let mut rows = Vec::new();
    for bin in &o.binaries {
        let mut lab = Lab::create_with_etcd_cluster(
            spec("bl", bin, dir),
            nodes,
            Some(&net_config("10.0.0.0/8", flannel_net::BackendKind::Vxlan).to_string()),
        );
        lab.start_all();
        lab.wait_ready(Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(7));
        let (m0, b0) = cluster_load(&lab);
        std::thread::sleep(period);
        let (m1, b1) = cluster_load(&lab);
        let per_node_hour = |d: f64| d / nodes as f64 / period.as_secs_f64() * 3600.0;
        let h = lab.add_host();
        lab.start(h);
        lab.wait_ready(Duration::from_secs(60));
        // its lease reaches every node's watch
        std::thread::sleep(Duration::from_secs(2));
        let (m2, b2) = cluster_load(&lab);
        // the time at rest in those 2+ s, at the rate measured, is not the join's
        rows.push(Row {
            scenario: format!("etcd load, {nodes} nodes, 3-member etcd"),
            binary: label(bin),
            metrics: vec![
                ("rest_msgs_per_node_hour".into(), per_node_hour(m1 - m0)),
                (
                    "rest_kib_per_node_hour".into(),
                    per_node_hour(b1 - b0) / 1024.0,
                ),
                ("join_msgs".into(), m2 - m1),
                ("join_kib".into(), (b2 - b1) / 1024.0),
            ],
        });
    }
    rows
}

fn steady(o: &Opts, dir: &Path) -> Vec<Row> {
    let period = if o.quick {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(60)
    };
    let mut rows = Vec::new();
    for bin in &o.binaries {
        let mut lab = lab("bt", bin, dir);
        let ns = lab.hosts[0].ns.clone();
        in_netns(&ns, || async {
            let mut c = etcd().await;
            put_peers(&mut c, 0..3).await;
        });
        let shims = tempfile::tempdir().expect("shim dir");
        let (path, log) = probe::exec_shims(shims.path());
        lab.start_binary(1, bin, &[("PATH".into(), path)]);
        lab.wait_ready(Duration::from_secs(30));
        // past the first rule resync (which verifies what start-up wrote): steady state
        std::thread::sleep(Duration::from_secs(7));
        let pid = lab.pid(1).unwrap_or(0);
        let etcd_ns = format!("{}-etcd", lab.spec.name);
        let (cpu0, etcd0) = (
            probe::cpu_seconds(pid).unwrap_or(0.0),
            probe::etcd_messages(&etcd_ns),
        );
        let _ = std::fs::remove_file(&log);
        std::thread::sleep(period);
        let (cpu1, etcd1) = (
            probe::cpu_seconds(pid).unwrap_or(0.0),
            probe::etcd_messages(&etcd_ns),
        );
        let execs = std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0) as f64;
        let periods = period.as_secs_f64() / 5.0;
        rows.push(Row {
            scenario: format!("steady state, 3 peers, {}s", period.as_secs()),
            binary: label(bin),
            metrics: vec![
                (
                    "cpu_percent".into(),
                    (cpu1 - cpu0) * 100.0 / period.as_secs_f64(),
                ),
                ("processes".into(), execs),
                ("processes_per_5s".into(), execs / periods),
                ("etcd_msgs".into(), etcd1 - etcd0),
                (
                    "VmHWM_MiB".into(),
                    probe::proc_status_kib(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0,
                ),
                (
                    "VmRSS_MiB".into(),
                    probe::proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0,
                ),
            ],
        });
        lab.stop(1, "KILL");
    }
    rows
}

/// Scenario 6: 1000 lease adds and removes at 200/s; afterwards the kernel must hold
/// exactly the entries of the leases left.
fn churn(o: &Opts, dir: &Path) -> Vec<Row> {
    let ops: u32 = if o.quick { 100 } else { 1000 };
    let mut rows = Vec::new();
    for bin in &o.binaries {
        let mut lab = lab("bh", bin, dir);
        lab.start(1);
        lab.wait_ready(Duration::from_secs(30));
        let ns = lab.hosts[0].ns.clone();
        let live: Vec<u32> = in_netns(&ns, move || async move {
            use rand::Rng;
            let mut c = etcd().await;
            let mut rng = rand::rng();
            let mut live: Vec<u32> = Vec::new();
            let mut next = 0u32;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            for op in 0..ops {
                tick.tick().await;
                if op % 2 == 0 || live.is_empty() {
                    let (s, _, v) = peer_value(next);
                    c.put(key(s), v, None).await.expect("put");
                    live.push(next);
                    next += 1;
                } else {
                    let victim = live.swap_remove(rng.random_range(0..live.len()));
                    c.delete(key(peer_value(victim).0), None)
                        .await
                        .expect("delete");
                }
            }
            live
        });
        let t_last = Instant::now();
        let want_routes: std::collections::BTreeSet<String> = live
            .iter()
            .map(|&i| {
                format!(
                    "{}/24 via {} dev flannel.1 onlink",
                    peer_value(i).0,
                    peer_value(i).0
                )
            })
            .collect();
        let ns2 = ns.clone();
        let state = move || {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &ns2, "ip", "route"])
                .output()
                .ok()?;
            let routes: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim_end().to_string())
                .filter(|l| l.contains("dev flannel.1"))
                .collect();
            let neigh = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns2,
                    "ip",
                    "neigh",
                    "show",
                    "dev",
                    "flannel.1",
                ])
                .output()
                .ok()?;
            let fdb = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns2,
                    "bridge",
                    "fdb",
                    "show",
                    "dev",
                    "flannel.1",
                ])
                .output()
                .ok()?;
            Some((
                routes,
                String::from_utf8_lossy(&neigh.stdout).lines().count(),
                String::from_utf8_lossy(&fdb.stdout).lines().count(),
            ))
        };
        let exact = || {
            state().is_some_and(|(r, n, f)| r == want_routes && n == live.len() && f == live.len())
        };
        let converged = wait_until(Duration::from_secs(60), exact).then(|| t_last.elapsed());
        let (r, n, f) = state().unwrap_or_default();
        let missing = want_routes.difference(&r).count() as f64;
        let stale = r.difference(&want_routes).count() as f64;
        rows.push(Row {
            scenario: format!("churn, {ops} ops at 200/s"),
            binary: label(bin),
            metrics: vec![
                (
                    "settled_ms_after_last_op".into(),
                    converged.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
                ),
                ("exact".into(), if converged.is_some() { 1.0 } else { 0.0 }),
                ("missing_routes".into(), missing),
                ("stale_routes".into(), stale),
                ("arp_minus_live".into(), n as f64 - live.len() as f64),
                ("fdb_minus_live".into(), f as f64 - live.len() as f64),
            ],
        });
        lab.stop(1, "KILL");
    }
    rows
}

/// Soak (`--scenario soak`, the last step of tests/run.sh): 5000 peers, then lease adds and deletes at
/// 200/s for `--soak-minutes` (default 10); VmRSS sampled every 10 s must stay flat (the
/// second half's peak at most 0.5 MiB above the first half's), and the kernel must end with
/// exactly the live leases' routes.
fn soak(o: &Opts, dir: &Path) -> Vec<Row> {
    let minutes = o.soak_minutes;
    let mut rows = Vec::new();
    for bin in &o.binaries {
        let mut lab = lab("bo", bin, dir);
        let ns = lab.hosts[0].ns.clone();
        in_netns(&ns, || async {
            let mut c = etcd().await;
            put_peers(&mut c, 0..5000).await;
        });
        lab.start(1);
        lab.wait_ready(Duration::from_secs(120));
        let pid = lab.pid(1).unwrap_or(0);
        let rss_start = probe::proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let sampler = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let started = Instant::now();
            while stop_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                let rss = probe::proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
                eprintln!(
                    "soak {:>4} s VmRSS {rss:.2} MiB",
                    started.elapsed().as_secs()
                );
                samples.push(rss);
            }
            samples
        });
        let deadline = Instant::now() + Duration::from_secs(minutes * 60);
        let live: Vec<u32> = in_netns(&ns, move || async move {
            use rand::Rng;
            let mut c = etcd().await;
            let mut rng = rand::rng();
            let mut live: Vec<u32> = (0..5000).collect();
            let mut next = 5000u32;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut op = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                if op.is_multiple_of(2) {
                    let (s, _, v) = peer_value(next);
                    c.put(key(s), v, None).await.expect("put");
                    live.push(next);
                    next += 1;
                } else {
                    let victim = live.swap_remove(rng.random_range(0..live.len()));
                    c.delete(key(peer_value(victim).0), None)
                        .await
                        .expect("delete");
                }
                op += 1;
            }
            live
        });
        let _ = stop_tx.send(());
        let samples = sampler.join().unwrap_or_default();
        let want: std::collections::BTreeSet<String> = live
            .iter()
            .map(|&i| format!("{}/24", peer_value(i).0))
            .collect();
        let ns2 = ns.clone();
        let routes = move || -> std::collections::BTreeSet<String> {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &ns2, "ip", "route"])
                .output();
            out.map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains("dev flannel.1"))
                    .filter_map(|l| l.split_whitespace().next().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
        };
        let exact = wait_until(Duration::from_secs(60), || routes() == want);
        let max = samples.iter().copied().fold(rss_start, f64::max);
        let half = samples.len() / 2;
        let first_half = samples[..half].iter().copied().fold(rss_start, f64::max);
        let second_half = samples[half..].iter().copied().fold(0.0, f64::max);
        let rss_end = probe::proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        let growth = second_half - first_half;
        rows.push(Row {
            scenario: format!("soak, 5000 peers + churn at 200/s, {minutes} min"),
            binary: label(bin),
            metrics: vec![
                ("exact".into(), if exact { 1.0 } else { 0.0 }),
                ("live_peers".into(), live.len() as f64),
                ("VmRSS_start_MiB".into(), rss_start),
                ("VmRSS_max_MiB".into(), max),
                ("VmRSS_max_first_half_MiB".into(), first_half),
                ("VmRSS_max_second_half_MiB".into(), second_half),
                ("VmRSS_end_MiB".into(), rss_end),
                ("VmRSS_growth_second_half_MiB".into(), growth),
                ("flat".into(), if growth <= 0.5 { 1.0 } else { 0.0 }),
                ("running".into(), if lab.running(1) { 1.0 } else { 0.0 }),
            ],
        });
        lab.stop(1, "KILL");
    }
    rows
}

fn print(rows: &[Row]) {
    let mut first: BTreeMap<(String, String), f64> = BTreeMap::new();
    // a floor row is no binary: ratios compare binaries
    for r in rows.iter().filter(|r| !r.binary.ends_with("(floor)")) {
        for (k, v) in &r.metrics {
            first.entry((r.scenario.clone(), k.clone())).or_insert(*v);
        }
    }
    println!(
        "{:<40} {:<16} metrics (ratio to the first binary)",
        "scenario", "binary"
    );
    for r in rows {
        let cells: Vec<String> = r
            .metrics
            .iter()
            .map(|(k, v)| {
                let base = first
                    .get(&(r.scenario.clone(), k.clone()))
                    .copied()
                    .unwrap_or(f64::NAN);
                if !r.binary.ends_with("(floor)")
                    && base.is_finite()
                    && base != 0.0
                    && (v / base - 1.0).abs() > 1e-9
                {
                    format!("{k}={v:.2} (x{:.2})", v / base)
                } else {
                    format!("{k}={v:.2}")
                }
            })
            .collect();
        println!("{:<40} {:<16} {}", r.scenario, r.binary, cells.join("  "));
    }
}

/// The labs' files and etcd's data (the lab's etcd makes its own temporary directory) go
/// to tmpfs (`/dev/shm`) unless `TMPDIR` says otherwise: on a disk every etcd write waits
/// for an fsync (about 0.3 ms on the VM the results come from), counted in every binary's
/// convergence alike, which hides what the flanneld itself costs. Called first in `main`,
/// before any thread exists.
fn work_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let tmpdir_set = std::env::var_os("TMPDIR").is_some_and(|d| !d.is_empty());
    if !tmpdir_set && shm.is_dir() {
        std::env::set_var("TMPDIR", shm);
    }
    let dir = tempfile::Builder::new()
        .prefix("flannel-bench")
        .tempdir()
        .expect("work dir");
    eprintln!("work dir (etcd's data too): {}", dir.path().display());
    dir
}

fn main() {
    let dir = work_dir();
    // the release profile aborts on panic: Drop would not remove a failed run's labs
    flannel_lab::lab::cleanup_on_panic();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        binaries: Vec::new(),
        quick: false,
        soak_minutes: 10,
        peers: Vec::new(),
        idle: None,
        out: PathBuf::from("target/bench-results.json"),
        scenarios: Vec::new(),
        nodes: None,
        rest: None,
        seed: None,
        minutes: None,
        store: chaos::store::Store::V3,
        upstream: None,
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--flanneld" => {
                i += 1;
                o.binaries.push(PathBuf::from(&args[i]));
            }
            "--quick" => o.quick = true,
            "--soak-minutes" => {
                i += 1;
                o.soak_minutes = args[i].parse().unwrap_or(10);
            }
            "--idle" => {
                i += 1;
                let seconds = args.get(i).and_then(|v| v.parse().ok());
                o.idle = Some(Duration::from_secs(seconds.unwrap_or_else(|| {
                    eprintln!("--idle: a number of seconds");
                    std::process::exit(2);
                })));
            }
            "--peers" => {
                i += 1;
                o.peers = args
                    .get(i)
                    .map(|v| v.split(',').map(str::parse).collect::<Result<_, _>>())
                    .and_then(Result::ok)
                    .unwrap_or_else(|| {
                        eprintln!("--peers: a comma-separated list of peer counts");
                        std::process::exit(2);
                    });
            }
            "--out" => {
                i += 1;
                o.out = PathBuf::from(&args[i]);
            }
            "--seed" => {
                i += 1;
                o.seed = Some(args.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                    eprintln!("--seed: a number");
                    std::process::exit(2);
                }));
            }
            "--minutes" => {
                i += 1;
                o.minutes = Some(args.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                    eprintln!("--minutes: a number of minutes");
                    std::process::exit(2);
                }));
            }
            "--nodes" => {
                i += 1;
                o.nodes = Some(args.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                    eprintln!("--nodes: a number of nodes");
                    std::process::exit(2);
                }));
            }
            "--rest" => {
                i += 1;
                let seconds = args.get(i).and_then(|v| v.parse().ok());
                o.rest = Some(Duration::from_secs(seconds.unwrap_or_else(|| {
                    eprintln!("--rest: a number of seconds");
                    std::process::exit(2);
                })));
            }
            "--backend" => {
                i += 1;
                use flannel_net::BackendKind as K;
                let on = |flag: &std::sync::atomic::AtomicBool| {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed)
                };
                match args.get(i).and_then(|a| K::from_type(a)) {
                    Some(K::HostGw) => on(&HOST_GW),
                    Some(K::WireGuard) => on(&WIREGUARD),
                    Some(K::Ipip) => on(&IPIP),
                    Some(K::Udp) => on(&UDP),
                    Some(K::Ipsec) => on(&IPSEC),
                    Some(K::Vxlan) => {}
                    _ => {
                        let other = args.get(i);
                        eprintln!(
                            "--backend {other:?}: vxlan, host-gw, wireguard, ipip, udp or ipsec"
                        );
                        std::process::exit(2);
                    }
                }
            }
            "--ip" => {
                i += 1;
                match args.get(i).map(String::as_str) {
                    Some("dual") => DUAL.store(true, std::sync::atomic::Ordering::Relaxed),
                    Some("ipv4") => {}
                    other => {
                        eprintln!("--ip {other:?}: ipv4 or dual");
                        std::process::exit(2);
                    }
                }
            }
            "--scenario" => {
                i += 1;
                o.scenarios.push(args[i].clone());
            }
            "--store" => {
                i += 1;
                match args.get(i).and_then(|s| chaos::store::Store::parse(s)) {
                    Some(s) => o.store = s,
                    None => {
                        eprintln!("--store: v3, v2 or kube");
                        std::process::exit(2);
                    }
                }
            }
            "--upstream" => {
                i += 1;
                match args.get(i).map(PathBuf::from) {
                    Some(p) if p.is_file() => o.upstream = Some(p),
                    _ => {
                        eprintln!("--upstream: the path of upstream's flanneld binary");
                        std::process::exit(2);
                    }
                }
            }
            other => {
                eprintln!("unknown argument {other}\nusage: flannel-bench [--flanneld PATH]... [--quick] [--backend vxlan|host-gw|wireguard|ipip|udp|ipsec] [--ip ipv4|dual] [--out FILE] [--peers N,N...] [--idle SECONDS] [--nodes N] [--rest SECONDS] [--seed N] [--minutes M] [--store v3|v2|kube] [--upstream BIN] [--scenario start|converge|cold|steady|churn|etcd-load|kube-cold|throughput|cluster|chaos]...");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    if o.binaries.is_empty() {
        o.binaries.push(PathBuf::from("target/release/flanneld-rs"));
    }
    o.binaries = o
        .binaries
        .iter()
        .map(|b| {
            b.canonicalize()
                .unwrap_or_else(|e| panic!("{}: {e}", b.display()))
        })
        .collect();
    if o.scenarios.iter().any(|s| s == "soak") {
        let rows = soak(&o, &dir.path().join("soak"));
        print(&rows);
        let bad = rows.iter().any(|r| {
            r.metrics
                .iter()
                .any(|(k, v)| ["exact", "running", "flat"].contains(&k.as_str()) && *v == 0.0)
        });
        std::process::exit(i32::from(bad));
    }
    if o.scenarios.iter().any(|s| s == "chaos") {
        // pass or fail (a violation ends the run with the seed and the time line)
        let rows = chaos::chaos(&o, &dir.path().join("chaos"));
        print(&rows);
        return;
    }
    let all: [(&str, Scenario); 9] = [
        ("start", start),
        ("converge", converge),
        ("cold", cold),
        ("steady", steady),
        ("churn", churn),
        ("etcd-load", etcd_load),
        ("kube-cold", kube::cold),
        ("throughput", throughput::throughput),
        ("cluster", cluster::cluster),
    ];
    if wireguard() || ipip() || ipsec() {
        // cold start (the other scenarios count VXLAN's entries or need host-gw's segment)
        o.scenarios = vec!["cold".into()];
    }
    if udp() && o.scenarios.is_empty() {
        // its data path is the daemon's: what it carries, beside the cold start
        o.scenarios = vec!["cold".into(), "throughput".into()];
    }
    if host_gw() && o.scenarios.is_empty() {
        // the scenarios that measure a peer's entries; steady and churn count VXLAN's
        o.scenarios = ["start", "converge", "cold"].map(String::from).to_vec();
    }
    let mut rows = Vec::new();
    if dual() && host_gw() {
        eprintln!("--ip dual runs with the vxlan backend only");
        std::process::exit(2);
    }
    for (name, f) in all {
        if o.scenarios.is_empty() || o.scenarios.iter().any(|s| s == name) {
            eprintln!("== {name}");
            let sub = dir.path().join(name);
            rows.extend(f(&o, &sub));
        }
    }
    for (on, tag) in [
        (host_gw(), " [host-gw]"),
        (ipip(), " [ipip]"),
        (wireguard(), " [wireguard]"),
        (udp(), " [udp]"),
        (ipsec(), " [ipsec]"),
    ] {
        if on {
            for r in &mut rows {
                r.scenario += tag;
            }
        }
    }
    if dual() {
        for r in &mut rows {
            r.scenario += " [dual-stack]";
        }
    }
    print(&rows);
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "scenario": r.scenario,
                "binary": r.binary,
                "metrics": r.metrics.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    let doc = serde_json::json!({"quick": o.quick, "binaries": o.binaries, "rows": json});
    if let Some(parent) = o.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(
        &o.out,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    )
    .expect("write results");
    eprintln!("results written to {}", o.out.display());
    let lost = rows.iter().any(|r| {
        r.metrics
            .iter()
            .any(|(k, v)| (k == "lost" && *v > 0.0) || (k == "exact" && *v == 0.0))
    });
    if lost {
        eprintln!("some events were lost or the final state was not exact");
        std::process::exit(1);
    }
}
