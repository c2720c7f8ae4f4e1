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

/// Until h1 and h2 have a route to each other's subnet (the v2 keyspace is not what
/// `wait_converged` reads).
fn wait_meshed(lab: &Lab) {
    let has_route_to = |i: usize, j: usize| {
        lab.subnet(j)
            .is_some_and(|s| lab.on_host(i, &["ip", "route"]).contains(&s))
    };
    assert!(wait_until(LONG, || has_route_to(1, 2) && has_route_to(2, 1)));
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
    wait_meshed(&lab);
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

/// gRPC messages the three members received (requests and stream messages: a watch's
/// progress request counts, an HTTP/2 ping does not).
fn etcd_messages(lab: &Lab) -> u64 {
    (0..3)
        .map(|i| {
            let text = flannel_lab::lab::nsexec(
                &lab.member_ns(i),
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    "5",
                    "http://127.0.0.1:2379/metrics",
                ],
            );
            text.lines()
                .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .sum()
}

/// Until the lease watch of each of `hosts` runs on two members (a new watch runs alone for
/// its first seconds: the start's burst of events is not delivered twice).
fn wait_for_both_watches(lab: &Lab, hosts: &[usize]) {
    for &i in hosts {
        assert!(
            wait_until(Duration::from_secs(30), || lab
                .log(i)
                .contains("lease watch on etcd members")),
            "h{i}'s lease watch never got its second member\n{}",
            lab.log(i)
        );
    }
}

/// With a healthy cluster the lease watch stays where it is and costs etcd nothing at rest:
/// no member is asked anything by the settled nodes (issue 30: a progress request per node
/// per second was 5 000 requests a second at 5 000 nodes).
#[test]
fn the_lease_watch_stays_put_at_rest() {
    let (mut lab, _dir) = lab_with_etcd_cluster('x', 2, Some(DEFAULT_CONFIG), &[]);
    lab.start_all();
    lab.wait_ready(LONG);
    wait_for_both_watches(&lab, &[1, 2]);
    std::thread::sleep(Duration::from_secs(1));
    let before = etcd_messages(&lab);
    std::thread::sleep(Duration::from_secs(8));
    let after = etcd_messages(&lab);
    assert_eq!(
        after - before,
        0,
        "the settled nodes sent etcd {} messages in 8 s",
        after - before
    );
    for i in [1, 2] {
        let log = lab.log(i);
        assert!(
            !log.contains("interrupted") && !log.contains("not answering"),
            "h{i} moved its watch at rest:\n{log}"
        );
    }
}

/// A frozen member that holds one of a node's two lease watches delays no event: the other
/// watch delivers it, and the node leaves the frozen member after the first event it missed.
#[test]
fn a_frozen_member_delays_no_lease_event() {
    let (mut lab, _dir) = lab_with_etcd_cluster('y', 2, Some(DEFAULT_CONFIG), &[]);
    lab.start_all();
    lab.wait_ready(LONG);
    wait_meshed(&lab);
    wait_for_both_watches(&lab, &[1]);
    // every member in turn: whichever holds h1's watches, one freeze hits one of them
    for victim in 0..3 {
        let pid = lab.member(victim).pid().unwrap().to_string();
        flannel_lab::netns::run_cmd("kill", &["-STOP", &pid]);
        let live = (victim + 1) % 3;
        let key = format!("{DEFAULT_PREFIX}/subnets/10.200.{}.0-24", 200 + victim);
        let value = format!(
            r#"{{"PublicIP":"10.99.0.{}","BackendType":"vxlan","BackendData":{{"VtepMAC":"aa:bb:cc:dd:ee:0{victim}"}}}}"#,
            10 + victim
        );
        // the put may meet the election a frozen leader starts
        let t0 = Instant::now();
        assert!(
            wait_until(Duration::from_secs(20), || lab
                .member(live)
                .etcdctl(&["put", &key, &value])
                .status
                .success()),
            "member {victim} frozen: no put through member {live}"
        );
        let put_took = t0.elapsed();
        let t0 = Instant::now();
        let route = format!("10.200.{}.0/24", 200 + victim);
        let seen = wait_until(Duration::from_secs(30), || {
            lab.on_host(1, &["ip", "route"]).contains(&route)
        });
        let took = t0.elapsed();
        flannel_lab::netns::run_cmd("kill", &["-CONT", &pid]);
        assert!(
            seen,
            "member {victim} frozen: h1 never got {route}\n{}",
            lab.log(1)
        );
        eprintln!(
            "member {victim} frozen: the put took {} ms, the new lease reached h1 {} ms after",
            put_took.as_millis(),
            took.as_millis()
        );
        assert!(lab.running(1), "h1 exited\n{}", lab.log(1));
        // the thawed member catches up before the next round
        std::thread::sleep(Duration::from_secs(2));
    }
    let log = lab.log(1);
    assert!(
        !log.contains("lease watch interrupted"),
        "a frozen member interrupted h1's lease watch (a re-list) instead of being left:\n{log}"
    );
}
