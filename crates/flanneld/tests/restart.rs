//! A restart deletes nothing live. flanneld-rs used to reconcile before the first lease
//! listing had arrived, with an empty desired set: every peer's route, ARP and FDB entry was
//! deleted and re-added a few ms later (packets dropped meanwhile). Now nothing is deleted
//! until the desired set is known; entries of a node that left while flanneld was down are
//! still removed, right after the first listing. Watched with `ip monitor` and
//! `bridge monitor` on the restarted host.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use flannel_lab::lab::{wait_until, Lab, DEFAULT_PREFIX};

/// Room for 1024 subnets: the 500-peer case.
const CONFIG: &str = r#"{"Network":"10.128.0.0/14","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

fn lease_value(public_ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// Leases of `count` nodes that are not in the lab (entries are programmed for them all the
/// same; no traffic goes to them), in 10.130.0.0/15. Returns their keys.
fn put_fake_peers(lab: &Lab, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let key = format!(
                "{DEFAULT_PREFIX}/subnets/10.{}.{}.0-24",
                130 + i / 256,
                i % 256
            );
            let ip = format!("172.31.{}.{}", i / 250, i % 250 + 1);
            let mac = format!("0e:00:00:00:{:02x}:{:02x}", i / 256, i % 256);
            lab.etcd().ctl(&["put", &key, &lease_value(&ip, &mac)]);
            key
        })
        .collect()
}

/// Stops host 1 with `signal`, deletes the lease `stale` while it is down, starts it again
/// under the monitors and checks: not one live peer's entry deleted, the stale one's gone.
fn restart_and_check(lab: &mut Lab, signal: &str, stale: &str, dir: &Path) {
    let stale_lease = leases(lab)
        .remove(stale.rsplit('/').next().unwrap())
        .unwrap();
    let stale_mac = serde_json::from_str::<serde_json::Value>(&stale_lease).unwrap()["BackendData"]
        ["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string();
    lab.stop(1, signal);
    lab.etcd().ctl(&["del", stale]);
    let monitors = Monitors::start(lab, 1, dir);
    lab.start(1);
    lab.wait_ready(LONG);
    assert!(
        wait_until(LONG, || actual_kernel(lab, 1) == expected_kernel(lab, 1)),
        "not converged after the restart ({signal}): stale {stale} still there?\n{}",
        lab.log(1)
    );
    std::thread::sleep(Duration::from_millis(300));
    let deleted = monitors.deleted();
    drop(monitors);

    let me = lab.hosts[0].ip.to_string();
    let live: Vec<(String, String, String)> = peers(lab)
        .into_iter()
        .filter(|(_, ip, _)| *ip != me)
        .collect();
    let cut: Vec<&String> = deleted
        .iter()
        .filter(|line| {
            live.iter().any(|(subnet, _, mac)| {
                let gw = subnet.split('/').next().unwrap();
                line.contains(&format!("{gw} ")) || line.contains(subnet) || line.contains(mac)
            })
        })
        .collect();
    assert!(
        cut.is_empty(),
        "a restart ({signal}) deleted {} entries of live peers, e.g. {:?}",
        cut.len(),
        &cut[..cut.len().min(5)]
    );
    let stale_subnet = stale.rsplit('/').next().unwrap().replace("-24", "/24");
    let stale_gw = stale_subnet.split('/').next().unwrap().to_string();
    for (what, needle) in [
        ("route", stale_subnet.clone()),
        ("ARP entry", format!("Deleted {stale_gw} ")),
        ("FDB entry", stale_mac.clone()),
    ] {
        assert!(
            deleted.iter().any(|l| l.contains(&needle)),
            "the stale peer's {what} ({needle}) was not deleted: {deleted:?}"
        );
    }
}

#[test]
fn restart_by_sigterm_and_kill_with_3_peers_deletes_nothing_live() {
    let (mut lab, dir) = lab('r', 3, Some(CONFIG));
    let fakes = put_fake_peers(&lab, 2);
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    restart_and_check(&mut lab, "TERM", &fakes[0], dir.path());
    // the device had to be re-created while running (new ifindex): the same again
    lab.on_host(1, &["ip", "link", "del", "flannel.1"]);
    wait_converged(&lab);
    restart_and_check(&mut lab, "KILL", &fakes[1], dir.path());
    wait_converged(&lab);
}

#[test]
fn restart_by_kill_and_sigterm_with_500_peers_deletes_nothing_live() {
    let (mut lab, dir) = lab('s', 2, Some(CONFIG));
    // 2 hosts + 500 other nodes, two of which leave while host 1 is down
    let fakes = put_fake_peers(&lab, 500);
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    restart_and_check(&mut lab, "KILL", &fakes[7], dir.path());
    restart_and_check(&mut lab, "TERM", &fakes[300], dir.path());
    wait_converged(&lab);
}
