//! One etcd member failing in a 3-member cluster (every node has the three endpoints): the
//! leader or a follower killed with -9, the leader frozen with SIGSTOP (a hung machine), the
//! leader's address removed (a machine gone from the network). In each case a node started
//! after the fault gets its lease, a lease deleted after the fault disappears from every
//! peer, no flanneld exits and /healthz answers. The times are printed (`failover …` lines,
//! `cargo nextest run --no-capture -E 'binary(failover)'`) and recorded in
//! docs/reliability.md; the tests assert the outcome, not the time.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::time::{Duration, Instant};

use common::*;
use flannel_lab::lab::{wait_until, Lab, DEFAULT_CONFIG, DEFAULT_PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillLeader,
    KillFollower,
    FreezeLeader,
    RemoveLeadersAddress,
}

fn leader(lab: &Lab) -> usize {
    let mut found = None;
    assert!(
        wait_until(LONG, || {
            found = (0..3).find(|&i| lab.member(i).is_leader());
            found.is_some()
        }),
        "no etcd leader"
    );
    found.unwrap()
}

/// What an etcd client sees of each fault, done to member `victim`.
fn inflict(lab: &mut Lab, fault: Fault, victim: usize) {
    match fault {
        Fault::KillLeader | Fault::KillFollower => lab.member_mut(victim).stop(),
        Fault::FreezeLeader => {
            let pid = lab.member(victim).pid().unwrap().to_string();
            flannel_lab::netns::run_cmd("kill", &["-STOP", &pid]);
        }
        Fault::RemoveLeadersAddress => {
            let ip = flannel_lab::lab::ETCD_MEMBERS[victim].1;
            let ns = lab.member_ns(victim);
            flannel_lab::lab::nsexec(
                &ns,
                &["ip", "addr", "del", &format!("{ip}/24"), "dev", "eth0"],
            );
        }
    }
}

/// etcd's v2 keys API on member `i` (from inside its namespace).
fn v2(lab: &Lab, i: usize, method: &str, path: &str, data: &[&str]) -> String {
    let url = format!("http://127.0.0.1:2379/v2/keys{DEFAULT_PREFIX}{path}");
    let mut args = vec!["curl", "-s", "--max-time", "5", "-X", method, url.as_str()];
    for d in data {
        args.extend(["--data-urlencode", d]);
    }
    flannel_lab::lab::nsexec(&lab.member_ns(i), &args)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    V3,
    /// The keys API, as the Ansible role's clusters use it.
    V2,
}

/// With `FAILOVER_LOG`, prints when `what` happened, as the logs' clock shows it.
fn stamp(what: &str) {
    if std::env::var_os("FAILOVER_LOG").is_some() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "{what} at second {:.3} of the minute",
            (now.as_secs_f64()) % 60.0
        );
    }
}

fn survive(tag: char, fault: Fault) {
    survive_on(tag, fault, Api::V3)
}

fn survive_on(tag: char, fault: Fault, api: Api) {
    let (mut lab, _dir) = match api {
        Api::V3 => lab_with_etcd_cluster(tag, 2, Some(DEFAULT_CONFIG), &[]),
        Api::V2 => {
            let (lab, dir) = lab_with_etcd_cluster(tag, 2, None, &["--enable-v2=true"]);
            v2(
                &lab,
                2,
                "PUT",
                "/config",
                &[&format!("value={DEFAULT_CONFIG}")],
            );
            (lab, dir)
        }
    };
    lab.start_all();
    lab.wait_ready(LONG);
    // each host has a route to the other's subnet (the v2 keyspace is not what
    // `wait_converged` reads)
    let has_route_to = |lab: &Lab, i: usize, j: usize| {
        lab.subnet(j)
            .is_some_and(|s| lab.on_host(i, &["ip", "route"]).contains(&s))
    };
    assert!(wait_until(LONG, || has_route_to(&lab, 1, 2)
        && has_route_to(&lab, 2, 1)));
    let lead = leader(&lab);
    let victim = match fault {
        Fault::KillFollower => (lead + 1) % 3,
        _ => lead,
    };
    let live = (victim + 1) % 3;
    inflict(&mut lab, fault, victim);
    stamp("fault inflicted");
    let frozen = fault == Fault::FreezeLeader;

    // a new node gets its lease
    let t0 = Instant::now();
    let h3 = lab.add_host();
    lab.start(h3);
    assert!(
        wait_until(Duration::from_secs(60), || lab.subnet(h3).is_some()),
        "{api:?} {fault:?}: the new node got no lease\n{}",
        lab.log(h3)
    );
    let lease_after = t0.elapsed();
    if std::env::var_os("FAILOVER_LOG").is_some() {
        eprintln!("--- {api:?} {fault:?}: the new node's log\n{}", lab.log(h3));
    }

    // a node leaves (its lease deleted): every peer removes its route
    let gone = lab.subnet(2).unwrap();
    lab.stop(2, "KILL");
    let name = gone.replace('/', "-");
    let t1 = Instant::now();
    stamp("deleting h2's lease");
    match api {
        Api::V3 => {
            lab.member(live)
                .ctl(&["del", &format!("{DEFAULT_PREFIX}/subnets/{name}")]);
        }
        Api::V2 => {
            v2(&lab, live, "DELETE", &format!("/subnets/{name}"), &[]);
        }
    }
    let no_route = |lab: &Lab, i: usize| !lab.on_host(i, &["ip", "route"]).contains(&gone);
    assert!(
        wait_until(Duration::from_secs(60), || no_route(&lab, 1)
            && no_route(&lab, h3)),
        "{fault:?}: the deletion did not reach every peer\n{}",
        lab.log(1)
    );
    let deletion_after = t1.elapsed();
    if std::env::var_os("FAILOVER_LOG").is_some() {
        eprintln!("--- {api:?} {fault:?}: h1's log\n{}", lab.log(1));
    }

    for i in [1, h3] {
        assert!(
            lab.running(i),
            "{fault:?}: flanneld on h{i} exited\n{}",
            lab.log(i)
        );
        assert_eq!(
            lab.http(i, "/healthz", "GET").map(|(c, _)| c),
            Some(200),
            "{fault:?}: h{i}"
        );
    }
    eprintln!(
        "failover {api:?} {fault:?}: new node's lease after {} ms; a deletion on every peer after {} ms",
        lease_after.as_millis(),
        deletion_after.as_millis()
    );
    if frozen {
        // let the member go, so that it can be killed and cleaned up
        let pid = lab.member(victim).pid().unwrap().to_string();
        flannel_lab::netns::run_cmd("kill", &["-CONT", &pid]);
    }
}

#[test]
fn the_etcd_leader_killed() {
    survive('p', Fault::KillLeader);
}

#[test]
fn an_etcd_follower_killed() {
    survive('q', Fault::KillFollower);
}

#[test]
fn the_etcd_leader_frozen_with_sigstop() {
    survive('t', Fault::FreezeLeader);
}

#[test]
fn the_etcd_leaders_address_removed() {
    survive('u', Fault::RemoveLeadersAddress);
}

#[test]
fn the_etcd_leader_killed_on_the_v2_keys_api() {
    survive_on('v', Fault::KillLeader, Api::V2);
}

#[test]
fn the_etcd_leader_frozen_on_the_v2_keys_api() {
    survive_on('w', Fault::FreezeLeader, Api::V2);
}

/// With a healthy cluster the lease watch stays where it is: the progress checks that notice
/// a silent member are answered, so nothing is re-listed at rest.
#[test]
fn the_lease_watch_stays_put_at_rest() {
    let (mut lab, _dir) = lab_with_etcd_cluster('x', 2, Some(DEFAULT_CONFIG), &[]);
    lab.start_all();
    lab.wait_ready(LONG);
    std::thread::sleep(Duration::from_secs(6));
    for i in [1, 2] {
        let log = lab.log(i);
        assert!(
            !log.contains("interrupted") && !log.contains("not answering"),
            "h{i} moved its watch at rest:\n{log}"
        );
    }
}
