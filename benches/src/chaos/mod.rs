//! `--scenario chaos [--seed N] [--minutes M] [--store v3|v2|kube] [--backend vxlan|host-gw]
//! [--upstream BIN]`: the faults of docs/reliability.md at random, several at once, under
//! lease churn, with the invariants checked all along (issue 31).
//!
//! Five hosts run the binary in a Network of 4 096 /24s, against a 3-member etcd (v3 or v2
//! keys API) or a kube-apiserver over one etcd; a pod on each pings the others. Simulated
//! peers come and go all the time (about 300 leases or Nodes added and removed per minute,
//! never at a real host's subnet). A scheduler, from a seed it prints (the same seed draws
//! the same faults), injects groups of one to three faults at once and heals each after its
//! hold (0.5-5 s): an etcd member (or the leader) killed or frozen; flanneld SIGKILLed,
//! SIGTERMed, frozen past its lease's TTL (the lease expires under it), its wall clock
//! jumped by hours (libfaketime, when installed: a time namespace moves only the monotonic
//! and boot clocks, and only before its first process starts), or replaced by upstream's
//! binary and back (`--upstream`); a host's store traffic dropped or its underlay link
//! down; a peer's route, ARP, FDB entry or nexthop object deleted, the VXLAN device deleted,
//! flanneld's NAT chain flushed; the network config rewritten with the same value; the
//! API server restarted (kube).
//!
//! Checked all along, the run stopping at the first violation with the seed, the time line
//! of the faults and the state that broke the rule:
//! 1. no host's kernel loses a real peer's route or ARP entry, but by a fault that deleted
//!    it there or expired that peer's lease (the hosts' netlink notifications);
//! 2. after every few fault groups, and at the end, with the churn paused: within 5 s every
//!    host's routes, ARP and FDB entries are exactly the leases in the store, and every pod
//!    pings every pod (a lost lease event shows here);
//! 3. no two hosts hold the same subnet (after every group), and each host's lease in the
//!    store names the host;
//! 4. no daemon exits but those the scheduler stopped;
//! 5. the daemons never restarted keep a flat VmRSS (its growth is reported; h1 is never
//!    restarted, so there is always one).

mod faults;
mod kernel;
pub(crate) mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtnetlink::MulticastGroup;

use flannel_lab::lab::{wait_until, Lab};

use crate::cluster::{next_change, Entry};
use crate::{host_gw, label, Opts, Row};
use faults::{Excuse, Fault, Injected, Setup, Target};
use kernel::{own_subnet, shared_subnet, state_differs};
use store::Store;

const HOSTS: usize = 5;
/// How long after a fault healed the kernel state must equal the leases.
const SETTLE: Duration = Duration::from_secs(5);
/// A fault excuses deletions this long after it healed.
const DAMAGE_WINDOW: Duration = Duration::from_secs(3);
/// Fault groups between two full state checks.
const CHECK_EVERY: usize = 4;
/// How much a never-restarted daemon's VmRSS may grow over a run (rule 5): its allocator's
/// pools settle within a few MiB; a leak under this churn would pass it within minutes.
const MAX_GROWTH_MIB: f64 = 8.0;
/// The hosts' lease TTL: a node frozen past it loses its lease. Renewed every 30 s (half of
/// it, the margin being longer), it outlives the other faults' outages many times over, as
/// a day's TTL does in a cluster: only the frozen node's lease is meant to expire.
const TTL: Duration = Duration::from_secs(60);

/// What the run saw: the faults' time line.
struct Record {
    t0: Instant,
    timeline: Vec<String>,
    seed: u64,
    replay: String,
    /// The run's folder (logs of every daemon, etcd and the API server): copied out of the
    /// temporary folder on a violation.
    dir: std::path::PathBuf,
}

impl Record {
    fn note(&mut self, what: String) {
        let line = format!("{:>8.3} s  {what}", self.t0.elapsed().as_secs_f64());
        eprintln!("chaos {line}");
        self.timeline.push(line);
    }

    /// Ends the run: the rule broken, the seed, the time line, the state.
    fn violation(&self, rule: &str, state: &str) -> ! {
        let kept = std::env::temp_dir().join(format!("flannel-chaos-{}", self.seed));
        let _ = std::fs::remove_dir_all(&kept);
        let _ = std::process::Command::new("cp")
            .arg("-a")
            .args([&self.dir, &kept])
            .status();
        panic!(
            "chaos: invariant broken: {rule}\nseed {} (replay: {} --seed {})\ntime line:\n{}\nstate:\n{state}\nthe logs: {}",
            self.seed,
            self.replay,
            self.seed,
            self.timeline.join("\n"),
            kept.display()
        );
    }
}

/// One host's deletions of peers' entries, as its kernel notified them.
type Deletions = Arc<Mutex<Vec<(Instant, Entry)>>>;

/// A watcher thread per host, recording every peer entry deleted and counting every change.
fn watch_changes(
    lab: &Lab,
    stop: &Arc<AtomicBool>,
    changes: &Arc<AtomicU64>,
) -> (Vec<Deletions>, Vec<std::thread::JoinHandle<()>>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut all = Vec::new();
    let mut threads = Vec::new();
    for h in &lab.hosts {
        let deletions: Deletions = Arc::default();
        all.push(deletions.clone());
        let (stop, ready, changes) = (stop.clone(), ready_tx.clone(), changes.clone());
        threads.push(crate::probe::spawn_in_netns(&h.ns, move || async move {
            let (conn, _handle, mut events) = rtnetlink::new_multicast_connection(&[
                MulticastGroup::Neigh,
                MulticastGroup::Ipv4Route,
            ])
            .expect("netlink");
            tokio::spawn(conn);
            let _ = ready.send(());
            while !stop.load(Ordering::Relaxed) {
                if let Some((added, entry)) = next_change(&mut events).await {
                    changes.fetch_add(1, Ordering::Relaxed);
                    if !added {
                        if let Ok(mut d) = deletions.lock() {
                            d.push((Instant::now(), entry));
                        }
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

/// When deletions are excused (rule 1): (excuse, from, until; open while the fault is held).
#[derive(Default)]
struct Excuses(Vec<(Excuse, Instant, Option<Instant>)>);

impl Excuses {
    /// From `from`: the moment before the fault was injected (its first deletions may be
    /// seen before `inject` returns).
    fn open(&mut self, e: Excuse, from: Instant) -> usize {
        self.0.push((e, from, None));
        self.0.len() - 1
    }

    fn close(&mut self, i: usize) {
        self.0[i].2 = Some(Instant::now() + DAMAGE_WINDOW);
    }

    /// Whether host `on` losing peer `of`'s entry at `at` is excused.
    fn excused(&self, on: usize, of: usize, at: Instant) -> bool {
        self.0.iter().any(|(e, from, until)| {
            (*e == Excuse::On(on) || *e == Excuse::Of(of))
                && at >= *from
                && until.is_none_or(|u| at <= u)
        })
    }
}

/// The run's backend type: VXLAN, or host-gw with `--backend host-gw`.
fn backend() -> &'static str {
    crate::backend_name().unwrap_or(flannel_net::BackendKind::Vxlan.name())
}

/// The network config of the run: the Network (10.0.0.0/12) and the backend.
fn config(store: Store) -> String {
    let backend = backend();
    match store {
        Store::Kube => format!(r#"{{"Network":"10.0.0.0/12","Backend":{{"Type":"{backend}"}}}}"#),
        _ => format!(
            r#"{{"Network":"10.0.0.0/12","SubnetLen":24,"Backend":{{"Type":"{backend}"}}}}"#
        ),
    }
}

pub fn chaos(o: &Opts, dir: &Path) -> Vec<Row> {
    let minutes = o.minutes.unwrap_or(if o.quick { 2.0 } else { 30.0 });
    let seed = o.seed.unwrap_or_else(rand::random);
    let store = o.store;
    let backend = backend();
    let faketime = faults::faketime();
    if faketime.is_none() {
        eprintln!("chaos: no clock jumps (libfaketime is not installed)");
    }
    if o.upstream.is_none() {
        eprintln!("chaos: no node replaced by upstream's binary (no --upstream)");
    }
    let mut rows = Vec::new();
    for bin in &o.binaries {
        eprintln!(
            "chaos: {} on {}, {backend}, for {minutes} min, seed {seed}",
            label(bin),
            store.name()
        );
        let sub = dir.join(label(bin));
        std::fs::create_dir_all(&sub).expect("dir");
        let setup = Setup {
            store,
            hosts: HOSTS,
            config: config(store),
            ttl: TTL,
            upstream: o.upstream.clone(),
            faketime: faketime.clone(),
        };
        let name = format!(
            "x{}{}",
            match store {
                Store::V3 => '3',
                Store::V2 => '2',
                Store::Kube => 'k',
            },
            if host_gw() { 'g' } else { 'v' }
        );
        let spec = crate::spec(&name, bin, &sub);
        let mut lab = store.lab(spec, HOSTS, &setup.config);
        for h in 1..=HOSTS {
            if host_gw() {
                // the simulated peers' PublicIPs (172.16.0.1 ...) on the hosts' segment
                lab.on_host(
                    h,
                    &["ip", "addr", "add", "172.16.255.254/16", "dev", "eth0"],
                );
            }
            setup.start(&mut lab, h);
        }
        lab.wait_ready(Duration::from_secs(60));
        for h in 1..=HOSTS {
            lab.add_pod(h);
        }
        let mut rec = Record {
            t0: Instant::now(),
            timeline: Vec::new(),
            seed,
            replay: format!(
                "flannel-bench --scenario chaos --store {} --backend {backend}{}",
                match store {
                    Store::V3 => "v3",
                    Store::V2 => "v2",
                    Store::Kube => "kube",
                },
                if o.upstream.is_some() {
                    " --upstream BIN"
                } else {
                    ""
                }
            ),
            dir: sub.clone(),
        };
        if !wait_until(Duration::from_secs(30), || {
            state_differs(&lab, store).is_none()
        }) {
            rec.violation(
                "the cluster never settled before any fault",
                &state_differs(&lab, store).unwrap_or_default(),
            );
        }
        let real: BTreeMap<usize, Ipv4Addr> = (1..=HOSTS)
            .filter_map(|h| Some((h, own_subnet(&lab, h)?)))
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
        let changes = Arc::new(AtomicU64::new(0));
        let (deletions, watchers) = watch_changes(&lab, &stop, &changes);
        let exclude = real.values().copied().collect();
        let churner = store.churn(&lab, seed, exclude, paused.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut excuses = Excuses::default();
        let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
        let (mut faults, mut groups, mut overlapped, mut checks) = (0usize, 0usize, 0usize, 0usize);
        let mut expired = 0usize;
        let mut seen = [0usize; HOSTS + 1];
        while Instant::now() < deadline {
            // a group of one to three faults, held at once
            let size = match rng.random_range(0..10) {
                0..6 => 1,
                6..9 => 2,
                _ => 3,
            };
            let mut held: Vec<(Instant, Fault, Injected, Vec<usize>)> = Vec::new();
            let mut busy: BTreeSet<Target> = BTreeSet::new();
            for k in 0..size {
                let fault = setup.pick(&mut rng);
                let target = faults::target_of(&lab, store, fault);
                if target.is_some_and(|t| busy.contains(&t)) {
                    continue;
                }
                let before = Instant::now();
                let (injected, hold) = faults::inject(&mut lab, &setup, fault, &mut rng);
                rec.note(format!("{fault:?} for {hold:?}"));
                faults += 1;
                busy.extend(injected.target);
                restarted.extend(injected.restarted);
                let windows = injected
                    .excuses
                    .iter()
                    .map(|e| excuses.open(*e, before))
                    .collect();
                held.push((Instant::now() + hold, fault, injected, windows));
                if k + 1 < size {
                    std::thread::sleep(Duration::from_millis(rng.random_range(0..1000)));
                }
            }
            groups += 1;
            overlapped += usize::from(held.len() > 1);
            held.sort_by_key(|h| h.0);
            // the API server starts only over a live etcd: healed after the members
            if let Some(at) = held
                .iter()
                .position(|h| matches!(h.2.heal, faults::Heal::StartApiServer))
            {
                let mut api = held.remove(at);
                api.0 = api.0.max(held.last().map_or(api.0, |h| h.0));
                held.push(api);
            }
            for (due, fault, injected, windows) in held {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                if let Fault::PausePastTtl(h) = fault {
                    // the fault did what it says: the frozen node's lease is gone (etcd)
                    let gone = store
                        .leases(&lab)
                        .is_some_and(|l| real.get(&h).is_some_and(|s| !l.contains_key(s)));
                    expired += usize::from(gone);
                }
                faults::heal(&mut lab, &setup, injected.heal);
                for w in windows {
                    excuses.close(w);
                }
                if size > 1 {
                    rec.note(format!("healed {fault:?}"));
                }
            }
            // rule 1: a real peer's route or ARP entry deleted on a host, not excused
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
                    if let Some((p, _)) = peer {
                        if !excuses.excused(h, *p, *at) {
                            rec.violation(
                                &format!(
                                    "h{h}'s kernel lost h{p}'s live entry {entry:?} at {:.3} s",
                                    at.saturating_duration_since(rec.t0).as_secs_f64()
                                ),
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
            // rule 3, on the hosts
            if let Some(shared) = shared_subnet(&lab) {
                rec.violation("two hosts hold one subnet", &shared);
            }
            if groups.is_multiple_of(CHECK_EVERY) {
                paused.store(true, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(500));
                checks += 1;
                full_check(&lab, store, &rec, "5 s after the last fault healed");
                rec.note(format!(
                    "check {checks}: the kernels hold exactly the leases; every pod pings every pod"
                ));
                paused.store(false, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(200..2000)));
        }
        paused.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        full_check(&lab, store, &rec, "at the end");
        checks += 1;
        stop.store(true, Ordering::Relaxed);
        let ops = churner.join().unwrap_or(0);
        for t in watchers {
            let _ = t.join();
        }
        // h1 is never restarted (faults.rs): there is always one to compare
        let growth = (1..=HOSTS)
            .filter(|h| !restarted.contains(h))
            .map(|h| rss(&lab, h) - rss_start[h - 1])
            .fold(f64::NAN, f64::max);
        if growth > MAX_GROWTH_MIB {
            rec.violation(
                &format!("VmRSS of a daemon never restarted grew by {growth:.1} MiB"),
                &format!("limit {MAX_GROWTH_MIB} MiB"),
            );
        }
        let changes = changes.load(Ordering::Relaxed);
        eprintln!(
            "chaos: {faults} faults in {groups} groups ({overlapped} overlapping), {checks} full checks, {ops} churn operations, {changes} peer entries changed on the hosts, {expired} leases expired under a frozen node, no violation"
        );
        rows.push(Row {
            scenario: format!(
                "chaos, {HOSTS} hosts, {}, {backend}, {minutes} min, seed {seed}",
                store.name()
            ),
            binary: label(bin),
            metrics: vec![
                ("faults".into(), faults as f64),
                ("overlapping_groups".into(), overlapped as f64),
                ("full_checks".into(), checks as f64),
                ("churn_ops".into(), ops as f64),
                ("peer_entry_changes".into(), changes as f64),
                ("leases_expired".into(), expired as f64),
                ("violations".into(), 0.0),
                ("VmRSS_growth_never_restarted_MiB".into(), growth),
            ],
        });
    }
    rows
}

/// Rules 2 and 3 with the churn paused: within [`SETTLE`] the kernels hold exactly the
/// leases, and every pod pings every pod.
fn full_check(lab: &Lab, store: Store, rec: &Record, when: &str) {
    if !wait_until(SETTLE, || state_differs(lab, store).is_none()) {
        let state = state_differs(lab, store).unwrap_or_default();
        rec.violation(
            &format!("the kernel state is not the leases {when}"),
            &state,
        );
    }
    let unreachable = lab.ping_matrix();
    if !unreachable.is_empty() {
        rec.violation(
            &format!("pods do not reach each other {when}"),
            &format!("{unreachable:?}"),
        );
    }
}
