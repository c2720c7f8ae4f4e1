//! The chaos run's faults: what each one does to the cluster, and how it is healed.
//!
//! A fault is injected at once and returns its [`Heal`], run when the fault's hold is over;
//! several may be held at the same time (the run overlaps them), except two on one target
//! (an etcd member, a host's flanneld, a host's network, the API server).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use flannel_lab::lab::{try_nsexec, Lab};

use super::kernel::kernel_state;
use super::store::Store;
use crate::host_gw;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    KillMember(usize),
    KillLeader,
    FreezeMember(usize),
    KillFlanneld(usize),
    TermFlanneld(usize),
    /// flanneld frozen (SIGSTOP) past its lease's TTL: the lease expires under it.
    PausePastTtl(usize),
    /// CLOCK_REALTIME of one flanneld moved by this many hours (libfaketime).
    ClockJump(usize, i32),
    /// flanneld replaced by upstream's binary, then ours again.
    Upstream(usize),
    /// The host's etcd (or API server) traffic dropped.
    Partition(usize),
    /// The host's underlay link down.
    LinkDown(usize),
    DeleteRoute(usize),
    DeleteNeighbour(usize),
    DeleteFdb(usize),
    DeleteNexthop(usize),
    DeleteDevice(usize),
    FlushIptables(usize),
    RewriteConfig,
    RestartApiserver,
}

/// What a fault holds, so that two on one target are not held at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Target {
    Member(usize),
    Flanneld(usize),
    Network(usize),
    ApiServer,
}

/// Whose kernel deletions a fault excuses (rule 1), while held and shortly after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Excuse {
    /// Deletions on this host: its kernel was damaged there.
    On(usize),
    /// Deletions of this host's entries anywhere: its lease expired (or upstream's binary
    /// ran there).
    Of(usize),
}

/// How the run's faults are drawn and what they need.
pub(super) struct Setup {
    pub(super) store: Store,
    pub(super) hosts: usize,
    pub(super) config: String,
    /// The TTL the hosts' leases get (`-subnet-ttl-for-tests`).
    pub(super) ttl: Duration,
    /// upstream's binary, for [`Fault::Upstream`].
    pub(super) upstream: Option<PathBuf>,
    /// libfaketime, for [`Fault::ClockJump`].
    pub(super) faketime: Option<PathBuf>,
}

impl Setup {
    /// A fault at random among those this setup can inject.
    pub(super) fn pick(&self, rng: &mut StdRng) -> Fault {
        loop {
            let host = rng.random_range(1..=self.hosts);
            // h1 is never restarted (killed, terminated, swapped): its memory across the
            // whole run is rule 5's witness
            let restartable = rng.random_range(2..=self.hosts);
            let members = self.store.members();
            let member = members[rng.random_range(0..members.len())];
            let fault = match rng.random_range(0..19) {
                0 => Fault::KillMember(member),
                1 => Fault::KillLeader,
                2 => Fault::FreezeMember(member),
                3 => Fault::KillFlanneld(restartable),
                4 => Fault::TermFlanneld(restartable),
                5 => Fault::PausePastTtl(host),
                6 => {
                    let hours =
                        rng.random_range(1..=72) * if rng.random_bool(0.5) { 1 } else { -1 };
                    Fault::ClockJump(host, hours)
                }
                7 => Fault::Upstream(restartable),
                8 => Fault::Partition(host),
                9 => Fault::LinkDown(host),
                10 => Fault::DeleteRoute(host),
                11 => Fault::DeleteNeighbour(host),
                12 => Fault::DeleteFdb(host),
                13 => Fault::DeleteNexthop(host),
                14 => Fault::DeleteDevice(host),
                15 => Fault::FlushIptables(host),
                16 => Fault::RewriteConfig,
                17 => Fault::RestartApiserver,
                _ => Fault::KillMember(member),
            };
            if self.can(fault) {
                return fault;
            }
        }
    }

    fn can(&self, fault: Fault) -> bool {
        match fault {
            Fault::Upstream(_) => self.upstream.is_some(),
            Fault::ClockJump(..) => self.faketime.is_some(),
            Fault::DeleteNeighbour(_)
            | Fault::DeleteFdb(_)
            | Fault::DeleteNexthop(_)
            | Fault::DeleteDevice(_) => !host_gw(),
            Fault::RewriteConfig => self.store != Store::Kube,
            Fault::RestartApiserver => self.store == Store::Kube,
            _ => true,
        }
    }

    /// Starts this project's flanneld on host `h`: with the short TTL, and under libfaketime
    /// (the real time until a clock jump moves it) when there is one.
    pub(super) fn start(&self, lab: &mut Lab, h: usize) {
        let ttl = format!("-subnet-ttl-for-tests={}", self.ttl.as_secs());
        let mut env = Vec::new();
        if let Some(lib) = &self.faketime {
            let file = clock_file(lab, h);
            if !file.exists() {
                std::fs::write(&file, "+0").expect("faketime file");
            }
            env = vec![
                ("LD_PRELOAD".to_string(), lib.display().to_string()),
                ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
                ("FAKETIME_NO_CACHE".into(), "1".into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ];
        }
        let bin = lab.spec.flanneld.clone();
        // -v=2: debug lines (each peer added and removed, the watch's moves) for a violation's logs
        lab.start_full(h, &bin, &env, &[&ttl, "-v=2"]);
    }
}

/// Host `h`'s libfaketime offset file.
fn clock_file(lab: &Lab, h: usize) -> PathBuf {
    lab.dir().join(format!("h{h}")).join("faketime")
}

/// How a held fault is healed.
#[derive(Debug)]
pub(super) enum Heal {
    Nothing,
    RestartMember(usize),
    ThawMember(u32),
    StartFlanneld(usize),
    ThawFlanneld(u32),
    ClockBack(usize),
    /// upstream's binary stopped, ours started.
    BackFromUpstream(usize),
    Unpartition(usize, &'static str),
    LinkUp(usize),
    StartApiServer,
}

/// One fault injected: its heal, what it holds, whose deletions it excuses.
pub(super) struct Injected {
    pub(super) heal: Heal,
    pub(super) target: Option<Target>,
    pub(super) excuses: Vec<Excuse>,
    /// Whether it restarted a flanneld (its memory is not compared then).
    pub(super) restarted: Option<usize>,
}

impl Injected {
    fn new(heal: Heal, target: Option<Target>, excuse: Option<Excuse>) -> Self {
        Injected {
            heal,
            target,
            excuses: excuse.into_iter().collect(),
            restarted: None,
        }
    }
}

/// What the fault holds, as known before it is injected (the leader is found then).
pub(super) fn target_of(lab: &Lab, store: Store, fault: Fault) -> Option<Target> {
    match fault {
        Fault::KillMember(m) | Fault::FreezeMember(m) => Some(Target::Member(m)),
        Fault::KillLeader => {
            let members = store.members();
            let leader = members.iter().copied().find(|&m| lab.member(m).is_leader());
            Some(Target::Member(leader.unwrap_or(members[0])))
        }
        Fault::KillFlanneld(h)
        | Fault::TermFlanneld(h)
        | Fault::PausePastTtl(h)
        | Fault::ClockJump(h, _)
        | Fault::Upstream(h) => Some(Target::Flanneld(h)),
        Fault::Partition(h) | Fault::LinkDown(h) => Some(Target::Network(h)),
        Fault::RestartApiserver => Some(Target::ApiServer),
        _ => None,
    }
}

/// Injects `fault`; what heals it is returned, with how long to hold it.
pub(super) fn inject(
    lab: &mut Lab,
    setup: &Setup,
    fault: Fault,
    rng: &mut StdRng,
) -> (Injected, Duration) {
    let hold = Duration::from_millis(rng.random_range(500..5000));
    let on = |lab: &Lab, h: usize, args: &[&str]| {
        let _ = try_nsexec(&lab.hosts[h - 1].ns, args);
    };
    let target = target_of(lab, setup.store, fault);
    let damage = |h: usize| Injected::new(Heal::Nothing, None, Some(Excuse::On(h)));
    let injected = match fault {
        Fault::KillMember(_) | Fault::KillLeader => {
            let Some(Target::Member(m)) = target else {
                unreachable!("a member fault holds a member")
            };
            lab.member_mut(m).stop();
            Injected::new(Heal::RestartMember(m), target, None)
        }
        Fault::FreezeMember(m) => {
            let pid = lab.member(m).pid().unwrap_or(0);
            signal(pid, "STOP");
            Injected::new(Heal::ThawMember(pid), target, None)
        }
        Fault::KillFlanneld(h) | Fault::TermFlanneld(h) => {
            let sig = if matches!(fault, Fault::KillFlanneld(_)) {
                "KILL"
            } else {
                "TERM"
            };
            lab.stop(h, sig);
            let mut i = Injected::new(Heal::StartFlanneld(h), target, None);
            i.restarted = Some(h);
            return (i, hold / 4);
        }
        Fault::PausePastTtl(h) => {
            let pid = lab.pid(h).unwrap_or(0);
            signal(pid, "STOP");
            // the lease expires under it: its peers rightly drop its entries
            let i = Injected::new(Heal::ThawFlanneld(pid), target, Some(Excuse::Of(h)));
            return (i, setup.ttl + Duration::from_secs(5));
        }
        Fault::ClockJump(h, hours) => {
            let _ = std::fs::write(clock_file(lab, h), format!("{hours:+}h"));
            Injected::new(Heal::ClockBack(h), target, None)
        }
        Fault::Upstream(h) => {
            let upstream = setup.upstream.clone().unwrap_or_default();
            lab.stop(h, "TERM");
            lab.start_binary(h, &upstream, &[]);
            // what upstream's binary does there is not under test
            let mut i = Injected::new(Heal::BackFromUpstream(h), target, Some(Excuse::Of(h)));
            i.excuses.push(Excuse::On(h));
            i.restarted = Some(h);
            return (i, hold * 2);
        }
        Fault::Partition(h) => {
            let port = if setup.store == Store::Kube {
                "6443"
            } else {
                "2379"
            };
            on(lab, h, &partition("-I", port));
            Injected::new(Heal::Unpartition(h, port), target, None)
        }
        Fault::LinkDown(h) => {
            on(lab, h, &["ip", "link", "set", "eth0", "down"]);
            Injected::new(Heal::LinkUp(h), target, Some(Excuse::On(h)))
        }
        Fault::DeleteRoute(h) => {
            let routes = kernel_state(lab, h).routes;
            if let Some((subnet, _)) = pick(rng, &routes) {
                on(lab, h, &["ip", "route", "del", &format!("{subnet}/24")]);
            }
            return (damage(h), hold / 4);
        }
        Fault::DeleteNeighbour(h) => {
            if let Some((ip, _)) = pick(rng, &kernel_state(lab, h).arp) {
                on(
                    lab,
                    h,
                    &["ip", "neigh", "del", &ip.to_string(), "dev", "flannel.1"],
                );
            }
            return (damage(h), hold / 4);
        }
        Fault::DeleteFdb(h) => {
            if let Some((mac, dst)) = pick(rng, &kernel_state(lab, h).fdb) {
                let dst = dst.to_string();
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
                        &dst,
                    ],
                );
            }
            return (damage(h), hold / 4);
        }
        Fault::DeleteNexthop(h) => {
            // a peer route's nexthop object (deleting it deletes the route with it)
            let ids: BTreeSet<String> =
                try_nsexec(&lab.hosts[h - 1].ns, &["ip", "nexthop", "show"])
                    .1
                    .lines()
                    .filter(|l| l.contains("flannel.1"))
                    .filter_map(|l| Some(l.split_whitespace().nth(1)?.to_string()))
                    .collect();
            if let Some(id) = pick(rng, &ids) {
                on(lab, h, &["ip", "nexthop", "del", "id", &id]);
            }
            return (damage(h), hold / 4);
        }
        Fault::DeleteDevice(h) => {
            on(lab, h, &["ip", "link", "del", "flannel.1"]);
            return (damage(h), hold / 4);
        }
        Fault::FlushIptables(h) => {
            on(lab, h, &["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
            return (Injected::new(Heal::Nothing, None, None), hold / 4);
        }
        Fault::RewriteConfig => {
            setup.store.rewrite_config(lab, &setup.config);
            return (Injected::new(Heal::Nothing, None, None), Duration::ZERO);
        }
        Fault::RestartApiserver => {
            lab.kube_mut().stop();
            Injected::new(Heal::StartApiServer, target, None)
        }
    };
    (injected, hold)
}

/// Heals what [`inject`] did.
pub(super) fn heal(lab: &mut Lab, setup: &Setup, heal: Heal) {
    let on = |lab: &Lab, h: usize, args: &[&str]| {
        let _ = try_nsexec(&lab.hosts[h - 1].ns, args);
    };
    match heal {
        Heal::Nothing => {}
        Heal::RestartMember(m) => lab.member_mut(m).restart(),
        Heal::ThawMember(pid) | Heal::ThawFlanneld(pid) => signal(pid, "CONT"),
        Heal::StartFlanneld(h) => setup.start(lab, h),
        Heal::ClockBack(h) => {
            let _ = std::fs::write(clock_file(lab, h), "+0");
        }
        Heal::BackFromUpstream(h) => {
            lab.stop(h, "TERM");
            setup.start(lab, h);
        }
        Heal::Unpartition(h, port) => on(lab, h, &partition("-D", port)),
        Heal::LinkUp(h) => on(lab, h, &["ip", "link", "set", "eth0", "up"]),
        Heal::StartApiServer => lab.kube_mut().restart(),
    }
}

fn partition<'a>(op: &'a str, port: &'a str) -> [&'a str; 10] {
    [
        "iptables", op, "OUTPUT", "-p", "tcp", "--dport", port, "-j", "DROP", "-w",
    ]
}

fn signal(pid: u32, sig: &str) {
    if pid > 0 {
        flannel_lab::netns::run_cmd("kill", &[&format!("-{sig}"), &pid.to_string()]);
    }
}

fn pick<T: Clone>(rng: &mut StdRng, set: &BTreeSet<T>) -> Option<T> {
    (!set.is_empty()).then(|| set.iter().nth(rng.random_range(0..set.len())).cloned())?
}

/// libfaketime's thread-safe build, when installed (package libfaketime).
pub(super) fn faketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.exists())
    .map(Path::to_path_buf)
}
