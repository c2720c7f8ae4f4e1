//! The extension backend in the lab: upstream's documented host-gw recipe as commands, the
//! commands' environment and stdin, nothing through a shell, failures and timeouts logged.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::time::Duration;

use common::*;
use flannel_lab::lab::{wait_until, Lab, DEFAULT_PREFIX};

fn config(backend: serde_json::Value) -> String {
    serde_json::json!({"Network": "10.200.0.0/16", "SubnetLen": 24, "Backend": backend}).to_string()
}

fn route_on(lab: &Lab, i: usize, j: usize) -> bool {
    let want = format!(
        "{} via {} dev eth0",
        lab.subnet(j).unwrap(),
        lab.hosts[j - 1].ip
    );
    lab.on_host(i, &["ip", "route"]).contains(&want)
}

/// Host `i` stops and its lease is deleted, as when a node leaves; its subnet.
fn leave(lab: &mut Lab, i: usize) -> String {
    let gone = lab.subnet(i).unwrap();
    lab.stop(i, "KILL");
    lab.etcd().ctl(&[
        "del",
        &format!("{DEFAULT_PREFIX}/subnets/{}", gone.replace('/', "-")),
    ]);
    gone
}

#[test]
fn upstreams_host_gw_recipe_as_an_extension() {
    // dist/extension-hostgw of upstream, word for word
    let backend = serde_json::json!({
        "Type": "extension",
        "SubnetAddCommand": "ip route add \"$SUBNET\" via \"$PUBLIC_IP\"",
        "SubnetRemoveCommand": "ip route del \"$SUBNET\" via \"$PUBLIC_IP\""
    });
    let (mut lab, _dir) = lab('x', 2, Some(&config(backend)));
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(
        wait_until(LONG, || route_on(&lab, 1, 2) && route_on(&lab, 2, 1)),
        "{}",
        lab.log(1)
    );
    assert!(lab
        .log(1)
        .contains("No pre startup command configured - skipping"));
    for i in 1..=2 {
        lab.add_pod(i);
    }
    assert_eq!(lab.ping_matrix(), vec![]);
    // a node leaves: its route goes
    let gone = leave(&mut lab, 2);
    assert!(wait_until(LONG, || !lab
        .on_host(1, &["ip", "route"])
        .contains(&gone)));
}

#[test]
fn commands_get_their_environment_and_stdin_and_never_a_shell() {
    let out = tempfile::tempdir().unwrap();
    let d = out.path().display().to_string();
    let backend = serde_json::json!({
        "Type": "extension",
        "PreStartupCommand": "echo pre-data",
        "PostStartupCommand": format!("mkdir -p {d}/post/$PUBLIC_IP/$SUBNET"),
        "SubnetAddCommand": format!("tee -a {d}/added-$PUBLIC_IP"),
        "SubnetRemoveCommand": format!("echo $(id) > {d}/shell")
    });
    let (mut lab, _dir) = lab('y', 2, Some(&config(backend)));
    lab.start_all();
    lab.wait_ready(LONG);
    // PreStartupCommand's output is the lease's BackendData
    for (_, value) in leases(&lab) {
        assert!(
            value.contains(r#""BackendType":"extension","BackendData":"pre-data""#),
            "{value}"
        );
    }
    // PostStartupCommand saw PUBLIC_IP and SUBNET
    for i in 1..=2 {
        let post = out.path().join(format!(
            "post/{}/{}",
            lab.hosts[i - 1].ip,
            lab.subnet(i).unwrap()
        ));
        assert!(post.is_dir(), "{}", post.display());
    }
    // SubnetAddCommand got the peer's BackendData on stdin
    let added = out.path().join("added-192.168.77.2");
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&added)
            .is_ok_and(|t| t.contains("pre-data"))),
        "{}",
        lab.log(1)
    );
    // a removal runs `echo` with the words as arguments: no redirection happens
    leave(&mut lab, 2);
    assert!(wait_until(LONG, || lab.log(1).contains("Subnet removed")));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !out.path().join("shell").exists(),
        "a shell ran the command"
    );
    assert!(
        lab.log(1).contains("Ran command: echo $(id) >"),
        "{}",
        lab.log(1)
    );
}

#[test]
fn failing_and_hanging_commands_are_reported() {
    let backend = serde_json::json!({
        "Type": "extension",
        "SubnetAddCommand": "sleep 100",
        "SubnetRemoveCommand": "false",
        "CommandTimeout": 1
    });
    let (mut lab, _dir) = lab('z', 2, Some(&config(backend)));
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(
        wait_until(LONG, || lab.log(1).contains(
            "failed to run command: sleep 100 Err: still running after 1s: killed"
        )),
        "{}",
        lab.log(1)
    );
    leave(&mut lab, 2);
    assert!(
        wait_until(LONG, || lab
            .log(1)
            .contains("failed to run command: false Err: exit status: 1")),
        "{}",
        lab.log(1)
    );
    assert!(lab.running(1));
}
