//! `--scenario cluster --nodes N`: a whole cluster acting at once. N real flanneld processes,
//! each on a host of its own (a network namespace) on one bridge, against a 3-member etcd,
//! in a Network of 4 096 /24s; every node programs the N-1 others (VXLAN: a route, an ARP
//! entry and an FDB entry each), so 200 nodes are 39 800 peers on one machine.
//!
//! - simultaneous start: every daemon's process is started and waits at a gate (a FIFO), then
//!   all go at once (`start_spread_ms`: until each runs the binary); the time until every node
//!   holds every other node's three entries, from each node's kernel notifications (a
//!   watcher thread in each namespace, started before any daemon); nodes not meshed within
//!   60 s; etcd's gRPC messages and bytes during the start (its /metrics); the sum of the
//!   daemons' VmHWM (each one's own peak: an upper bound of the peak of the sum).
//! - a tenth restarted: every 10th node SIGKILLed and started again; the time until each is
//!   ready again and every node holds every entry; entries the survivors' kernels lost
//!   meanwhile (deletions in their notifications), which must be 0.
//! - at rest (`--rest SECONDS`, 300 by default): the daemons' CPU, the processes they start
//!   (wrappers on PATH log every ip/iptables/nft/... exec, as the steady scenario), the
//!   daemons' threads made during the rest and alive at its end, the processes and threads
//!   created on the whole machine (/proc/stat: etcd's and the kernel's workers count too),
//!   etcd's messages per node per hour and its members' CPU; the sums of the daemons' VmRSS and
//!   PSS (which counts the pages they share, the binary's, once).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::MulticastGroup;

use flannel_lab::lab::Lab;

use crate::{cluster_load, label, probe, Opts, Row};

/// 4 096 /24s: room for any N the underlay's /24 holds.
pub(crate) fn cluster_config() -> String {
    crate::net_config("10.0.0.0/12", flannel_net::BackendKind::Vxlan).to_string()
}

/// How long a start may take before the nodes not meshed are counted as such.
const MESH_TIMEOUT: Duration = Duration::from_secs(60);

/// A peer's entry on a node: the route to its subnet, the ARP entry of its VTEP address,
/// the FDB entry of its VTEP MAC (bridge family, with a remote address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Entry {
    Route(Ipv4Addr),
    Arp(Ipv4Addr),
    Fdb([u8; 6]),
}

fn in_network(ip: Ipv4Addr) -> bool {
    ip.octets()[0] == 10 && ip.octets()[1] < 16
}

fn neigh(n: &NeighbourMessage) -> Option<Entry> {
    if n.header.family == AddressFamily::Bridge {
        // a VXLAN FDB entry names the remote VTEP; the device's own entries do not
        let remote = n
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::Destination(_)));
        if !remote {
            return None;
        }
        return n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(l);
                Some(Entry::Fdb(m))
            }
            _ => None,
        });
    }
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) if in_network(*ip) => {
            Some(Entry::Arp(*ip))
        }
        _ => None,
    })
}

/// (added?, entry) of a notification about a peer's entry.
fn classify(msg: &RouteNetlinkMessage) -> Option<(bool, Entry)> {
    match msg {
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            if r.header.destination_prefix_length != 24 {
                return None;
            }
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) if in_network(*ip) => Some(*ip),
                _ => None,
            })?;
            Some((
                matches!(msg, RouteNetlinkMessage::NewRoute(_)),
                Entry::Route(dst),
            ))
        }
        RouteNetlinkMessage::NewNeighbour(n) => Some((true, neigh(n)?)),
        RouteNetlinkMessage::DelNeighbour(n) => Some((false, neigh(n)?)),
        _ => None,
    }
}

/// The kernel's notifications of a peer entry added or deleted on one host.
pub(crate) type Changes = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// The next peer entry added (true) or deleted (false), if one comes within 200 ms.
pub(crate) async fn next_change(events: &mut Changes) -> Option<(bool, Entry)> {
    let (msg, _) = tokio::time::timeout(Duration::from_millis(200), events.next())
        .await
        .ok()??;
    let NetlinkPayload::InnerMessage(msg) = msg.payload else {
        return None;
    };
    classify(&msg)
}

/// What one node's watcher saw.
#[derive(Default)]
struct NodeState {
    /// When the node first held all N-1 peers' entries (from the watch's `since`).
    meshed: Option<Duration>,
    /// Whether it holds them now.
    complete: bool,
    /// How many peers it holds all three entries of (the least of the three counts).
    peers: usize,
}

/// A watcher thread per node: the kernel's notifications, counted.
struct MeshWatch {
    nodes: Vec<Arc<Mutex<NodeState>>>,
    deleted: Vec<Arc<AtomicU64>>,
    since: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl MeshWatch {
    fn start(lab: &Lab) -> MeshWatch {
        let n = lab.hosts.len();
        let peers = n - 1;
        let stop = Arc::new(AtomicBool::new(false));
        let since = Arc::new(Mutex::new(Instant::now()));
        let mut w = MeshWatch {
            nodes: Vec::new(),
            deleted: Vec::new(),
            since: since.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for h in &lab.hosts {
            let state = Arc::new(Mutex::new(NodeState::default()));
            let deleted = Arc::new(AtomicU64::new(0));
            w.nodes.push(state.clone());
            w.deleted.push(deleted.clone());
            let (stop, since, ready) = (stop.clone(), since.clone(), ready_tx.clone());
            w.threads.push(crate::probe::spawn_in_netns(&h.ns, move || {
                watch_node(state, deleted, peers, since, stop, ready)
            }));
        }
        for _ in 0..n {
            ready_rx.recv().expect("a watcher started");
        }
        w
    }

    /// From now on, times are measured from here.
    fn reset_clock(&self) -> Instant {
        let now = Instant::now();
        if let Ok(mut s) = self.since.lock() {
            *s = now;
        }
        for n in &self.nodes {
            if let Ok(mut st) = n.lock() {
                st.meshed = None;
            }
        }
        now
    }

    fn complete(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.lock().map(|s| s.complete).unwrap_or(false))
            .count()
    }

    /// (the latest node's time to mesh, the nodes never meshed) since the clock was reset.
    fn mesh_times(&self) -> (Option<Duration>, usize) {
        let times: Vec<Option<Duration>> = self
            .nodes
            .iter()
            .map(|n| n.lock().ok().and_then(|s| s.meshed))
            .collect();
        let missing = times.iter().filter(|t| t.is_none()).count();
        (times.iter().flatten().max().copied(), missing)
    }

    /// Of the nodes `running`, how many hold every other running node's entries.
    fn meshed_among(&self, running: &[usize]) -> usize {
        let others = running.len().saturating_sub(1);
        running
            .iter()
            .filter(|&&i| {
                self.nodes[i - 1]
                    .lock()
                    .map(|s| s.peers >= others)
                    .unwrap_or(false)
            })
            .count()
    }

    fn deleted(&self, nodes: &[usize]) -> u64 {
        nodes
            .iter()
            .map(|&i| self.deleted[i - 1].load(Ordering::Relaxed))
            .sum()
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

async fn watch_node(
    state: Arc<Mutex<NodeState>>,
    deleted: Arc<AtomicU64>,
    peers: usize,
    since: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let (mut conn, _handle, mut events) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh, MulticastGroup::Ipv4Route])
            .expect("netlink");
    {
        use rtnetlink::sys::AsyncSocket;
        let _ = conn
            .socket_mut()
            .socket_mut()
            .set_rx_buf_sz(16 * 1024 * 1024);
    }
    tokio::spawn(conn);
    let _ = ready.send(());
    let mut held: HashSet<Entry> = HashSet::new();
    let count = |held: &HashSet<Entry>| {
        let (mut r, mut a, mut f) = (0, 0, 0);
        for e in held {
            match e {
                Entry::Route(_) => r += 1,
                Entry::Arp(_) => a += 1,
                Entry::Fdb(_) => f += 1,
            }
        }
        r.min(a).min(f)
    };
    while !stop.load(Ordering::Relaxed) {
        let Some((added, entry)) = next_change(&mut events).await else {
            continue;
        };
        if added {
            held.insert(entry);
        } else if held.remove(&entry) {
            deleted.fetch_add(1, Ordering::Relaxed);
        }
        let held_peers = count(&held);
        let complete = held_peers >= peers;
        if let Ok(mut st) = state.lock() {
            st.complete = complete;
            st.peers = held_peers;
            if complete && st.meshed.is_none() {
                st.meshed = since.lock().ok().map(|s| s.elapsed());
            }
        }
    }
}

/// A start gate: a script that waits until a FIFO is opened for writing, then execs the
/// daemon (same pid, same flags); opening the FIFO lets every waiting daemon go at once.
struct Gate {
    script: std::path::PathBuf,
    fifo: std::path::PathBuf,
    waiting: std::path::PathBuf,
    binary: std::path::PathBuf,
}

impl Gate {
    fn new(dir: &Path, binary: &Path) -> Gate {
        let fifo = dir.join("gate.fifo");
        let waiting = dir.join("gate.waiting");
        let script = dir.join("gate.sh");
        let _ = std::fs::remove_file(&fifo);
        let _ = std::fs::remove_file(&waiting);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        std::fs::write(
            &script,
            "#!/bin/sh
echo $$ >> \"$GATE_WAITING\"
read _ < \"$GATE_FIFO\"
exec \"$GATE_BINARY\" \"$@\"
",
        )
        .expect("gate script");
        let _ = std::process::Command::new("chmod")
            .args(["+x", &script.display().to_string()])
            .status();
        Gate {
            script,
            fifo,
            waiting,
            binary: binary.to_path_buf(),
        }
    }

    fn env(&self, env: &[(String, String)]) -> Vec<(String, String)> {
        let mut all = env.to_vec();
        all.push(("GATE_FIFO".into(), self.fifo.display().to_string()));
        all.push(("GATE_WAITING".into(), self.waiting.display().to_string()));
        all.push(("GATE_BINARY".into(), self.binary.display().to_string()));
        all
    }

    /// Until `n` scripts are at the gate (plus a moment for the last `read` to open it).
    fn wait_for(&self, n: usize) {
        let at_gate = || {
            std::fs::read_to_string(&self.waiting)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while at_gate() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Opens the FIFO for writing and closes it: every `read` returns.
    fn open(&self) {
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.fifo)
                .expect("gate"),
        );
    }

    /// The time from `t0` until every daemon runs the binary (its /proc/<pid>/exe).
    fn spread(&self, lab: &Lab, t0: Instant) -> Duration {
        let pids: Vec<u32> = (1..=lab.hosts.len()).filter_map(|i| lab.pid(i)).collect();
        let is_daemon = |pid: &u32| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == self.binary)
        };
        while !pids.iter().all(is_daemon) && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(1));
        }
        t0.elapsed()
    }
}

/// Processes and threads created on the machine so far (/proc/stat `processes`): at rest,
/// what the daemons create beside the execs the wrappers see (a thread started per check).
fn forks() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Every thread of every daemon (pid, tid): a thread made during the rest and still alive at
/// its end shows as new (one made and ended in between does not: see [`forks`]).
fn threads(lab: &Lab) -> HashSet<(u32, u32)> {
    (1..=lab.hosts.len())
        .filter_map(|i| lab.pid(i))
        .flat_map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(move |e| Some((pid, e.file_name().to_str()?.parse().ok()?)))
        })
        .collect()
}

/// A process's proportional set size (`Pss:` of /proc/<pid>/smaps_rollup): its private
/// pages, and each shared page divided among the processes that map it.
fn pss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The CPU seconds of the three etcd members so far.
fn etcd_cpu(lab: &Lab) -> f64 {
    (0..3)
        .filter_map(|i| lab.member(i).pid())
        .filter_map(probe::cpu_seconds)
        .sum()
}

fn sum_over(lab: &Lab, f: impl Fn(u32) -> Option<f64>) -> f64 {
    (1..=lab.hosts.len())
        .filter_map(|i| lab.pid(i))
        .filter_map(f)
        .sum()
}

pub fn cluster(o: &Opts, dir: &Path) -> Vec<Row> {
    let nodes = o.nodes.unwrap_or(if o.quick { 5 } else { 200 });
    let rest = o
        .rest
        .unwrap_or(Duration::from_secs(if o.quick { 5 } else { 300 }));
    assert!(
        (3..=250).contains(&nodes),
        "--nodes: 3 to 250 (the underlay is a /24 shared with etcd's members)"
    );
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let mut rows = Vec::new();
    for bin in &o.binaries {
        let sub = dir.join(label(bin));
        std::fs::create_dir_all(&sub).expect("dir");
        let spec = crate::spec("bk", bin, &sub);
        eprintln!("{}: creating {nodes} hosts", label(bin));
        let mut lab = Lab::create_with_etcd_cluster(spec, nodes, Some(&cluster_config()));
        for i in 1..=nodes {
            lab.on_host(i, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        let (path, exec_log) = probe::exec_shims(&sub);
        let env = [("PATH".to_string(), path)];
        let watch = MeshWatch::start(&lab);

        // simultaneous start: every daemon's process waits at a gate (a FIFO), opened at once
        let gate = Gate::new(&sub, bin);
        for i in 1..=nodes {
            lab.start_binary(i, &gate.script, &gate.env(&env));
        }
        let (m0, b0) = cluster_load(&lab);
        gate.wait_for(nodes);
        let t0 = watch.reset_clock();
        gate.open();
        let spread = gate.spread(&lab, t0);
        let deadline = t0 + MESH_TIMEOUT;
        while watch.complete() < nodes && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (mesh, missing) = watch.mesh_times();
        // a daemon that exited (upstream: two nodes took the same subnet) holds nothing, and
        // nobody holds its entries: how many of the others have each other
        let alive: Vec<usize> = (1..=nodes).filter(|&i| lab.running(i)).collect();
        let meshed_among_alive = watch.meshed_among(&alive);
        let (m1, b1) = cluster_load(&lab);
        let hwm = sum_over(&lab, |p| {
            probe::proc_status_kib(p, "VmHWM").map(|k| k as f64)
        });
        eprintln!(
            "{}: started {nodes} in {spread:?}; meshed: {} of {nodes}, the last after {mesh:?}",
            label(bin),
            nodes - missing
        );

        // a tenth restarted: SIGKILL, then start again
        // every 10th node (the last one of a cluster under 10)
        let restarted = |i: &usize| {
            if nodes >= 10 {
                i.is_multiple_of(10)
            } else {
                *i == nodes
            }
        };
        let tenth: Vec<usize> = (1..=nodes).filter(restarted).collect();
        let survivors: Vec<usize> = (1..=nodes).filter(|i| !restarted(i)).collect();
        std::thread::sleep(Duration::from_secs(2));
        let lost0 = watch.deleted(&survivors);
        let lost_restarted0 = watch.deleted(&tenth);
        let t1 = Instant::now();
        for &i in &tenth {
            lab.stop(i, "KILL");
        }
        for &i in &tenth {
            lab.start_binary(i, bin, &env);
        }
        let mut whole = None;
        while t1.elapsed() < MESH_TIMEOUT {
            if tenth.iter().all(|&i| lab.ready(i)) && watch.complete() == nodes {
                whole = Some(t1.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // what a late deletion would show: a moment more
        std::thread::sleep(Duration::from_secs(2));
        let lost = watch.deleted(&survivors) - lost0;
        let lost_restarted = watch.deleted(&tenth) - lost_restarted0;

        // at rest: past the restarted daemons' first resync (10 s), whose kernel dumps make
        // the blocking thread a daemon keeps
        std::thread::sleep(Duration::from_secs(15));
        let cpu0 = sum_over(&lab, probe::cpu_seconds);
        let etcd_cpu0 = etcd_cpu(&lab);
        let (m2, _) = cluster_load(&lab);
        let _ = std::fs::remove_file(&exec_log);
        let forks0 = forks();
        let tids0 = threads(&lab);
        std::thread::sleep(rest);
        let forks1 = forks();
        let tids1 = threads(&lab);
        let new_threads = tids1.difference(&tids0).count() as f64;
        let cpu1 = sum_over(&lab, probe::cpu_seconds);
        let etcd_cpu1 = etcd_cpu(&lab);
        let (m3, _) = cluster_load(&lab);
        let execs = std::fs::read_to_string(&exec_log)
            .map(|t| t.lines().count())
            .unwrap_or(0) as f64;
        let rss = sum_over(&lab, |p| {
            probe::proc_status_kib(p, "VmRSS").map(|k| k as f64)
        });
        // what the set of daemons holds: shared pages (the binary's) counted once
        let pss = sum_over(&lab, |p| pss_kib(p).map(|k| k as f64));
        let running = (1..=nodes).filter(|&i| lab.running(i)).count();
        let per_node_hour = |d: f64| d / nodes as f64 / rest.as_secs_f64() * 3600.0;
        watch.stop();
        rows.push(Row {
            scenario: format!("cluster, {nodes} nodes, 3-member etcd"),
            binary: label(bin),
            metrics: vec![
                ("start_spread_ms".into(), ms(Some(spread))),
                ("meshed_ms".into(), ms(mesh)),
                ("not_meshed".into(), missing as f64),
                ("exited_at_start".into(), (nodes - alive.len()) as f64),
                ("alive_meshed_among_alive".into(), meshed_among_alive as f64),
                ("start_etcd_msgs".into(), m1 - m0),
                ("start_etcd_MiB".into(), (b1 - b0) / 1024.0 / 1024.0),
                ("sum_VmHWM_MiB".into(), hwm / 1024.0),
                ("restart_tenth_whole_ms".into(), ms(whole)),
                ("survivor_entries_deleted".into(), lost as f64),
                ("restarted_entries_deleted".into(), lost_restarted as f64),
                (
                    "rest_cpu_percent".into(),
                    (cpu1 - cpu0) * 100.0 / rest.as_secs_f64(),
                ),
                ("rest_processes_per_node_hour".into(), per_node_hour(execs)),
                (
                    "rest_new_threads_per_node_hour".into(),
                    per_node_hour(new_threads),
                ),
                (
                    "rest_forks_per_node_hour".into(),
                    per_node_hour(forks1 - forks0),
                ),
                (
                    "rest_etcd_msgs_per_node_hour".into(),
                    per_node_hour(m3 - m2),
                ),
                ("rest_sum_VmRSS_MiB".into(), rss / 1024.0),
                ("rest_sum_Pss_MiB".into(), pss / 1024.0),
                (
                    "rest_etcd_cpu_percent".into(),
                    (etcd_cpu1 - etcd_cpu0) * 100.0 / rest.as_secs_f64(),
                ),
                ("running".into(), running as f64),
            ],
        });
        drop(lab);
    }
    rows
}
