//! `--scenario chaos [--seed N] [--minutes M]`: the faults of docs/reliability.md at random,
//! under lease churn, with the invariants checked all along (issue 31).
//!
//! Five hosts run the binary against a 3-member etcd, in a Network of 4 096 /24s; a pod on
//! each pings the others. Simulated peers come and go all the time (about 300 leases added
//! and removed per minute, created only where no lease is). A scheduler, from a seed it prints
//! (the same seed replays the same faults at the same moments), injects one fault after
//! another and heals it: an etcd member (or the leader) killed and restarted, a member frozen
//! (SIGSTOP) and thawed, flanneld SIGKILLed or SIGTERMed and started again, a host's traffic
//! to etcd dropped and let through again, a peer's route, ARP or FDB entry deleted on a host,
//! the VXLAN device deleted, flanneld's iptables chain flushed, the network config rewritten
//! with the same value.
//!
//! Checked all along, the run stopping at the first violation with the seed, the time line
//! of the faults and the state that broke the rule:
//! 1. no host's kernel loses a real peer's route or ARP entry, but by a fault that deleted it
//!    there (the hosts' netlink notifications, from a watcher per host);
//! 2. after every few faults, and at the end, with the churn paused: within 5 s every host's
//!    routes, ARP and FDB entries are exactly the leases in etcd, and every pod pings every
//!    pod;
//! 3. no two hosts hold the same subnet, and each host's lease in etcd names the host;
//! 4. no daemon exits but those the scheduler stopped;
//! 5. the daemons never restarted keep a flat VmRSS (its growth is reported).
//!
//! Not injected yet: a clock jump, a lease expired by a node paused past its TTL, a node
//! replaced by upstream's binary, kube mode and etcd v2 (see issue 31's note).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtnetlink::MulticastGroup;

use flannel_lab::lab::{wait_until, Lab, ETCD_MEMBERS};

use crate::cluster::{next_change, Entry, CONFIG_CLUSTER};
use crate::{label, peer_value, Opts, Row, PREFIX};

const HOSTS: usize = 5;
/// How long after a fault healed the kernel state must equal the leases.
const SETTLE: Duration = Duration::from_secs(5);
/// A fault that deletes kernel entries on a host: its deletions there are its own for this long.
const DAMAGE_WINDOW: Duration = Duration::from_secs(3);
/// Faults between two full state checks.
const CHECK_EVERY: usize = 5;

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillMember(usize),
    KillLeader,
    FreezeMember(usize),
    KillFlanneld(usize),
    TermFlanneld(usize),
    Partition(usize),
    DeleteRoute(usize),
    DeleteNeighbour(usize),
    DeleteFdb(usize),
    DeleteDevice(usize),
    FlushIptables(usize),
    RewriteConfig,
}

impl Fault {
    fn pick(rng: &mut StdRng) -> Fault {
        let host = rng.random_range(1..=HOSTS);
        let member = rng.random_range(0..3);
        match rng.random_range(0..12) {
            0 => Fault::KillMember(member),
            1 => Fault::KillLeader,
            2 => Fault::FreezeMember(member),
            3 => Fault::KillFlanneld(host),
            4 => Fault::TermFlanneld(host),
            5 => Fault::Partition(host),
            6 => Fault::DeleteRoute(host),
            7 => Fault::DeleteNeighbour(host),
            8 => Fault::DeleteFdb(host),
            9 => Fault::DeleteDevice(host),
            10 => Fault::FlushIptables(host),
            _ => Fault::RewriteConfig,
        }
    }
}

/// What the run saw: the faults' time line and the deletions the watchers recorded.
struct Record {
    t0: Instant,
    timeline: Vec<String>,
    seed: u64,
}

impl Record {
    fn note(&mut self, what: String) {
        let line = format!("{:>8.3} s  {what}", self.t0.elapsed().as_secs_f64());
        eprintln!("chaos {line}");
        self.timeline.push(line);
    }

    /// Ends the run: the rule broken, the seed, the time line, the state.
    fn violation(&self, rule: &str, state: &str) -> ! {
        panic!(
            "chaos: invariant broken: {rule}\nseed {} (replay: --scenario chaos --seed {})\ntime line:\n{}\nstate:\n{state}",
            self.seed,
            self.seed,
            self.timeline.join("\n")
        );
    }
}

/// One host's deletions of peers' entries, as its kernel notified them.
type Deletions = Arc<Mutex<Vec<(Instant, Entry)>>>;

/// A watcher thread per host, recording every peer entry deleted.
fn watch_deletions(
    lab: &Lab,
    stop: &Arc<AtomicBool>,
) -> (Vec<Deletions>, Vec<std::thread::JoinHandle<()>>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut all = Vec::new();
    let mut threads = Vec::new();
    for h in &lab.hosts {
        let deletions: Deletions = Arc::default();
        all.push(deletions.clone());
        let (stop, ready) = (stop.clone(), ready_tx.clone());
        threads.push(crate::probe::spawn_in_netns(&h.ns, move || async move {
            let (conn, _handle, mut events) = rtnetlink::new_multicast_connection(&[
                MulticastGroup::Neigh,
                MulticastGroup::Ipv4Route,
            ])
            .expect("netlink");
            tokio::spawn(conn);
            let _ = ready.send(());
            while !stop.load(Ordering::Relaxed) {
                if let Some((false, entry)) = next_change(&mut events).await {
                    if let Ok(mut d) = deletions.lock() {
                        d.push((Instant::now(), entry));
                    }
                }
            }
        }));
    }
    for _ in 0..lab.hosts.len() {
        ready_rx.recv().expect("a watcher started");
    }
    (all, threads)
}

/// The leases in etcd: subnet (`10.x.y.0`) -> (PublicIP, VtepMAC).
fn leases(lab: &Lab, member: usize) -> Option<BTreeMap<Ipv4Addr, (Ipv4Addr, String)>> {
    let out = lab
        .member(member)
        .etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut map = BTreeMap::new();
    for pair in lines.chunks(2) {
        let [key, value] = pair else { continue };
        let name = key.rsplit('/').next()?;
        let subnet: Ipv4Addr = name.split('-').next()?.parse().ok()?;
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        let ip: Ipv4Addr = v["PublicIP"].as_str()?.parse().ok()?;
        let mac = v["BackendData"]["VtepMAC"]
            .as_str()
            .unwrap_or("")
            .to_string();
        map.insert(subnet, (ip, mac));
    }
    Some(map)
}

/// A host's peer entries as the kernel holds them: routes, ARP (ip, mac), FDB (mac, dst).
type KernelState = (
    BTreeSet<Ipv4Addr>,
    BTreeSet<(Ipv4Addr, String)>,
    BTreeSet<(String, Ipv4Addr)>,
);

fn kernel_state(lab: &Lab, h: usize) -> KernelState {
    let run = |args: &[&str]| flannel_lab::lab::try_nsexec(&lab.hosts[h - 1].ns, args).1;
    let routes = run(&["ip", "-4", "route", "show", "dev", "flannel.1"])
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_suffix("/24")?
                .parse()
                .ok()
        })
        .collect();
    let arp = run(&["ip", "-4", "neigh", "show", "dev", "flannel.1"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = f.iter().position(|w| *w == "lladdr")?;
            Some((f[0].parse().ok()?, f.get(at + 1)?.to_string()))
        })
        .collect();
    let fdb = run(&["bridge", "fdb", "show", "dev", "flannel.1"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = f.iter().position(|w| *w == "dst")?;
            Some((f[0].to_string(), f.get(at + 1)?.parse().ok()?))
        })
        .collect();
    (routes, arp, fdb)
}

/// Rules 2 and 3 once: `None` when they hold, else what differs.
fn state_differs(lab: &Lab) -> Option<String> {
    let leases = leases(lab, 0)
        .or_else(|| leases(lab, 1))
        .or_else(|| leases(lab, 2))?;
    let mut report = String::new();
    let mut own = BTreeMap::new();
    for h in 1..=HOSTS {
        let ip = lab.hosts[h - 1].ip;
        let Some(subnet) = lab.subnet(h) else {
            report += &format!("h{h}: no subnet.env subnet\n");
            continue;
        };
        let net: Ipv4Addr = subnet
            .trim_end_matches("/24")
            .parse()
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        if let Some(other) = own.insert(net, h) {
            report += &format!("h{h} and h{other} both hold {subnet}\n");
        }
        if leases.get(&net).map(|l| l.0) != Some(ip) {
            report += &format!(
                "h{h} holds {subnet}, whose lease is {:?}\n",
                leases.get(&net)
            );
        }
        let others: Vec<(&Ipv4Addr, &(Ipv4Addr, String))> =
            leases.iter().filter(|(s, _)| **s != net).collect();
        let want_routes: BTreeSet<Ipv4Addr> = others.iter().map(|(s, _)| **s).collect();
        let want_arp: BTreeSet<(Ipv4Addr, String)> =
            others.iter().map(|(s, (_, m))| (**s, m.clone())).collect();
        let want_fdb: BTreeSet<(String, Ipv4Addr)> =
            others.iter().map(|(_, (ip, m))| (m.clone(), *ip)).collect();
        let (routes, arp, fdb) = kernel_state(lab, h);
        let diff = |what: &str, want: String, have: String| {
            format!("h{h} {what}: want-only {want}; kernel-only {have}\n")
        };
        if routes != want_routes {
            report += &diff(
                "routes",
                format!("{:?}", want_routes.difference(&routes).collect::<Vec<_>>()),
                format!("{:?}", routes.difference(&want_routes).collect::<Vec<_>>()),
            );
        }
        if arp != want_arp {
            report += &diff(
                "ARP",
                format!("{:?}", want_arp.difference(&arp).collect::<Vec<_>>()),
                format!("{:?}", arp.difference(&want_arp).collect::<Vec<_>>()),
            );
        }
        if fdb != want_fdb {
            report += &diff(
                "FDB",
                format!("{:?}", want_fdb.difference(&fdb).collect::<Vec<_>>()),
                format!("{:?}", fdb.difference(&want_fdb).collect::<Vec<_>>()),
            );
        }
    }
    (!report.is_empty()).then_some(report)
}

/// Simulated peers added and removed, each op where no lease is (never a real host's),
/// while `paused` is not set, until `stop`.
fn churn(
    ns: &str,
    seed: u64,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    crate::probe::spawn_in_netns(ns, move || async move {
        {
            let endpoints: Vec<String> = ETCD_MEMBERS
                .iter()
                .map(|(_, ip)| format!("http://{ip}:2379"))
                .collect();
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(1));
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut live: Vec<u32> = Vec::new();
            let mut ops = 0u64;
            let mut client: Option<Client> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if paused.load(Ordering::Relaxed) {
                    continue;
                }
                if client.is_none() {
                    client = Client::connect(endpoints.clone(), Some(options.clone()))
                        .await
                        .ok();
                }
                let Some(c) = client.as_mut() else { continue };
                let add = live.len() < 40 || (live.len() < 120 && rng.random_bool(0.5));
                let result = if add {
                    let i = rng.random_range(0..2000u32);
                    if live.contains(&i) {
                        continue;
                    }
                    let (subnet, _, value) = peer_value(i);
                    let key = format!("{PREFIX}/subnets/{subnet}-24");
                    let txn = Txn::new()
                        .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, value, None)]);
                    c.txn(txn).await.map(|r| {
                        if r.succeeded() {
                            live.push(i);
                        }
                    })
                } else {
                    let i = live.swap_remove(rng.random_range(0..live.len()));
                    let key = format!("{PREFIX}/subnets/{}-24", peer_value(i).0);
                    c.delete(key, None).await.map(|_| ())
                };
                match result {
                    Ok(()) => ops += 1,
                    Err(_) => client = None,
                }
            }
            ops
        }
    })
}

pub fn chaos(o: &Opts, dir: &Path) -> Vec<Row> {
    let minutes = o.minutes.unwrap_or(if o.quick { 2.0 } else { 30.0 });
    let seed = o.seed.unwrap_or_else(rand::random);
    let mut rows = Vec::new();
    for bin in &o.binaries {
        eprintln!("chaos: {} for {minutes} min, seed {seed}", label(bin));
        let sub = dir.join(label(bin));
        std::fs::create_dir_all(&sub).expect("dir");
        let spec = crate::spec("bx", bin, &sub);
        let mut lab = Lab::create_with_etcd_cluster(spec, HOSTS, Some(CONFIG_CLUSTER));
        lab.start_all();
        lab.wait_ready(Duration::from_secs(60));
        for h in 1..=HOSTS {
            lab.add_pod(h);
        }
        let mut rec = Record {
            t0: Instant::now(),
            timeline: Vec::new(),
            seed,
        };
        if !wait_until(Duration::from_secs(30), || state_differs(&lab).is_none()) {
            rec.violation(
                "the cluster never settled before any fault",
                &state_differs(&lab).unwrap_or_default(),
            );
        }
        let real: BTreeMap<usize, Ipv4Addr> = (1..=HOSTS)
            .filter_map(|h| Some((h, lab.subnet(h)?.trim_end_matches("/24").parse().ok()?)))
            .collect();
        let rss = |lab: &Lab, h: usize| {
            lab.pid(h)
                .and_then(|p| crate::probe::proc_status_kib(p, "VmRSS"))
                .unwrap_or(0) as f64
                / 1024.0
        };
        let rss_start: Vec<f64> = (1..=HOSTS).map(|h| rss(&lab, h)).collect();
        let mut restarted = BTreeSet::new();

        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let (deletions, watchers) = watch_deletions(&lab, &stop);
        let churner = churn(&lab.member_ns(0), seed, paused.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed);
        // per host, when a fault last deleted kernel entries there
        let mut damaged: Vec<Option<Instant>> = vec![None; HOSTS + 1];
        let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
        let (mut faults, mut checks) = (0usize, 0usize);
        let mut seen = [0usize; HOSTS + 1];
        while Instant::now() < deadline {
            let fault = Fault::pick(&mut rng);
            let hold = Duration::from_millis(rng.random_range(500..5000));
            rec.note(format!("{fault:?} for {hold:?}"));
            inflict(
                &mut lab,
                fault,
                hold,
                &mut rng,
                &mut damaged,
                &mut restarted,
            );
            faults += 1;
            // rule 1: a real peer's route or ARP entry deleted on a host, not by a fault there
            for h in 1..=HOSTS {
                let d = deletions[h - 1]
                    .lock()
                    .map(|d| d.clone())
                    .unwrap_or_default();
                for (at, entry) in &d[seen[h]..] {
                    let peer = match entry {
                        Entry::Route(ip) | Entry::Arp(ip) => {
                            real.iter().find(|(p, s)| **p != h && *s == ip)
                        }
                        Entry::Fdb(_) => None,
                    };
                    let excused =
                        damaged[h].is_some_and(|t| *at >= t && *at <= t + DAMAGE_WINDOW + hold);
                    if let Some((p, _)) = peer {
                        if !excused {
                            rec.violation(
                                &format!("h{h}'s kernel lost h{p}'s live entry {entry:?}"),
                                &lab.log(h),
                            );
                        }
                    }
                }
                seen[h] = d.len();
            }
            // rule 4
            for h in 1..=HOSTS {
                if !lab.running(h) {
                    rec.violation(&format!("flanneld on h{h} exited"), &lab.log(h));
                }
            }
            if faults.is_multiple_of(CHECK_EVERY) {
                paused.store(true, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(500));
                checks += 1;
                if !wait_until(SETTLE, || state_differs(&lab).is_none()) {
                    let state = state_differs(&lab).unwrap_or_default();
                    rec.violation(
                        "the kernel state is not the leases 5 s after the last fault healed",
                        &state,
                    );
                }
                let unreachable = lab.ping_matrix();
                if !unreachable.is_empty() {
                    rec.violation("pods do not reach each other", &format!("{unreachable:?}"));
                }
                rec.note(format!("check {checks}: the kernels hold exactly the leases; every pod pings every pod"));
                paused.store(false, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(200..2000)));
        }
        paused.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        if !wait_until(SETTLE, || state_differs(&lab).is_none()) {
            rec.violation(
                "the kernel state is not the leases at the end",
                &state_differs(&lab).unwrap_or_default(),
            );
        }
        let unreachable = lab.ping_matrix();
        if !unreachable.is_empty() {
            rec.violation(
                "pods do not reach each other at the end",
                &format!("{unreachable:?}"),
            );
        }
        checks += 1;
        stop.store(true, Ordering::Relaxed);
        let ops = churner.join().unwrap_or(0);
        for t in watchers {
            let _ = t.join();
        }
        // NaN when every daemon was restarted at some point (a long run): nothing to compare
        let growth = (1..=HOSTS)
            .filter(|h| !restarted.contains(h))
            .map(|h| rss(&lab, h) - rss_start[h - 1])
            .fold(f64::NAN, f64::max);
        eprintln!(
            "chaos: {faults} faults, {checks} full checks, {ops} churn operations, no violation"
        );
        rows.push(Row {
            scenario: format!("chaos, {HOSTS} hosts, {minutes} min, seed {seed}"),
            binary: label(bin),
            metrics: vec![
                ("faults".into(), faults as f64),
                ("full_checks".into(), checks as f64),
                ("churn_ops".into(), ops as f64),
                ("violations".into(), 0.0),
                ("VmRSS_growth_never_restarted_MiB".into(), growth),
            ],
        });
    }
    rows
}

/// Injects `fault`, holds it `hold`, heals it.
fn inflict(
    lab: &mut Lab,
    fault: Fault,
    hold: Duration,
    rng: &mut StdRng,
    damaged: &mut [Option<Instant>],
    restarted: &mut BTreeSet<usize>,
) {
    let on = |lab: &Lab, h: usize, args: &[&str]| {
        let _ = flannel_lab::lab::try_nsexec(&lab.hosts[h - 1].ns, args);
    };
    // a peer of host h: its subnet and its lease's public IP and MAC, from h's own kernel
    let peer_entry = |lab: &Lab, h: usize, rng: &mut StdRng| {
        let (routes, arp, fdb) = kernel_state(lab, h);
        let pick = |n: usize, rng: &mut StdRng| (n > 0).then(|| rng.random_range(0..n));
        (
            pick(routes.len(), rng).and_then(|i| routes.iter().nth(i).copied()),
            pick(arp.len(), rng).and_then(|i| arp.iter().nth(i).cloned()),
            pick(fdb.len(), rng).and_then(|i| fdb.iter().nth(i).cloned()),
        )
    };
    match fault {
        Fault::KillMember(m) => {
            lab.member_mut(m).stop();
            std::thread::sleep(hold);
            lab.member_mut(m).restart();
        }
        Fault::KillLeader => {
            let leader = (0..3).find(|&m| lab.member(m).is_leader()).unwrap_or(0);
            lab.member_mut(leader).stop();
            std::thread::sleep(hold);
            lab.member_mut(leader).restart();
        }
        Fault::FreezeMember(m) => {
            let pid = lab.member(m).pid().unwrap_or(0).to_string();
            flannel_lab::netns::run_cmd("kill", &["-STOP", &pid]);
            std::thread::sleep(hold);
            flannel_lab::netns::run_cmd("kill", &["-CONT", &pid]);
        }
        Fault::KillFlanneld(h) | Fault::TermFlanneld(h) => {
            let signal = if matches!(fault, Fault::KillFlanneld(_)) {
                "KILL"
            } else {
                "TERM"
            };
            lab.stop(h, signal);
            std::thread::sleep(hold / 4);
            lab.start(h);
            restarted.insert(h);
        }
        Fault::Partition(h) => {
            on(
                lab,
                h,
                &[
                    "iptables", "-I", "OUTPUT", "-p", "tcp", "--dport", "2379", "-j", "DROP",
                ],
            );
            std::thread::sleep(hold);
            on(
                lab,
                h,
                &[
                    "iptables", "-D", "OUTPUT", "-p", "tcp", "--dport", "2379", "-j", "DROP",
                ],
            );
        }
        Fault::DeleteRoute(h) | Fault::DeleteNeighbour(h) | Fault::DeleteFdb(h) => {
            damaged[h] = Some(Instant::now());
            let (route, arp, fdb) = peer_entry(lab, h, rng);
            match fault {
                Fault::DeleteRoute(_) => {
                    if let Some(r) = route {
                        on(
                            lab,
                            h,
                            &["ip", "route", "del", &format!("{r}/24"), "dev", "flannel.1"],
                        );
                    }
                }
                Fault::DeleteNeighbour(_) => {
                    if let Some((ip, _)) = arp {
                        on(
                            lab,
                            h,
                            &["ip", "neigh", "del", &ip.to_string(), "dev", "flannel.1"],
                        );
                    }
                }
                _ => {
                    if let Some((mac, dst)) = fdb {
                        on(
                            lab,
                            h,
                            &[
                                "bridge",
                                "fdb",
                                "del",
                                &mac,
                                "dev",
                                "flannel.1",
                                "dst",
                                &dst.to_string(),
                            ],
                        );
                    }
                }
            }
            std::thread::sleep(hold / 4);
        }
        Fault::DeleteDevice(h) => {
            damaged[h] = Some(Instant::now());
            on(lab, h, &["ip", "link", "del", "flannel.1"]);
            std::thread::sleep(hold / 4);
        }
        Fault::FlushIptables(h) => {
            on(lab, h, &["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
            std::thread::sleep(hold / 4);
        }
        Fault::RewriteConfig => {
            let config = format!("{PREFIX}/config");
            for m in 0..3 {
                if lab
                    .member(m)
                    .etcdctl(&["put", &config, CONFIG_CLUSTER])
                    .status
                    .success()
                {
                    break;
                }
            }
        }
    }
}
