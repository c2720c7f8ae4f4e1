//! The extension backend in the lab: upstream's documented host-gw and VXLAN recipes as
//! commands, run through `sh -c` as upstream runs them, with their environment and stdin;
//! failures and timeouts logged; a large PreStartupCommand output stored as upstream stores it.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

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
fn upstreams_vxlan_recipe_as_an_extension() {
    // Documentation/extension.md of upstream, "Complex example (vxlan)", word for word: it is
    // shell (export, `;`, `&&`, backticks, read)
    let backend = serde_json::json!({
        "Type": "extension",
        "PreStartupCommand": "export VNI=1; export IF_NAME=flannel-vxlan; ip link del $IF_NAME 2>/dev/null; ip link add $IF_NAME type vxlan id $VNI dstport 8472 && cat /sys/class/net/$IF_NAME/address",
        "PostStartupCommand": "export IF_NAME=flannel-vxlan; export SUBNET_IP=`echo $SUBNET | cut -d'/' -f 1`; ip addr add $SUBNET_IP/32 dev $IF_NAME && ip link set $IF_NAME up",
        "SubnetAddCommand": "export SUBNET_IP=`echo $SUBNET | cut -d'/' -f 1`; export IF_NAME=flannel-vxlan; read VTEP; ip route add $SUBNET nexthop via $SUBNET_IP dev $IF_NAME onlink && arp -s $SUBNET_IP $VTEP dev $IF_NAME && bridge fdb add $VTEP dev $IF_NAME self dst $PUBLIC_IP"
    });
    let (mut lab, _dir) = lab('X', 2, Some(&config(backend)));
    lab.start_all();
    lab.wait_ready(LONG);
    // the lease's BackendData is the device's MAC, as PreStartupCommand printed it
    for i in 1..=2 {
        let mac = lab
            .on_host(i, &["cat", "/sys/class/net/flannel-vxlan/address"])
            .trim()
            .to_string();
        let key = format!(
            "{DEFAULT_PREFIX}/subnets/{}",
            lab.subnet(i).unwrap().replace('/', "-")
        );
        let value = lab.etcd().ctl(&["get", "--print-value-only", &key]);
        assert!(
            value.contains(&format!(
                r#""BackendType":"extension","BackendData":"{mac}""#
            )),
            "{value}"
        );
    }
    for i in 1..=2 {
        lab.add_pod(i);
    }
    assert!(
        wait_until(LONG, || lab.ping_matrix().is_empty()),
        "pods do not reach each other over the recipe's VXLAN: {:?}\n{}",
        lab.ping_matrix(),
        lab.log(1)
    );
}

#[test]
fn commands_run_through_sh_with_their_environment_and_stdin() {
    let out = tempfile::tempdir().unwrap();
    let d = out.path().display().to_string();
    let backend = serde_json::json!({
        "Type": "extension",
        "PreStartupCommand": "echo pre-data",
        "PostStartupCommand": format!("mkdir -p {d}/post/$PUBLIC_IP/$SUBNET"),
        "SubnetAddCommand": format!("tee -a {d}/added-$PUBLIC_IP"),
        "SubnetRemoveCommand": format!("echo \"$SUBNET\" $(cat) > {d}/removed")
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
    // a removal: the shell's substitution and redirection happen, as upstream's `sh -c`
    let gone = leave(&mut lab, 2);
    let removed = out.path().join("removed");
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&removed)
            .is_ok_and(|t| t.trim() == format!("{gone} pre-data"))),
        "{:?}\n{}",
        std::fs::read_to_string(&removed),
        lab.log(1)
    );
}

/// Upstream stores a lease value as large as etcd takes; a PreStartupCommand that prints
/// 67 KB is a lease like any other, kept across restarts (issue 32: each restart took another
/// subnet once the node refused its own value).
#[test]
fn a_large_backend_data_is_stored_and_the_same_subnet_kept_across_restarts() {
    let backend = serde_json::json!({
        "Type": "extension",
        "PreStartupCommand": "seq 1 13000",
    });
    let (mut lab, _dir) = lab('w', 2, Some(&config(backend)));
    lab.start_all();
    lab.wait_ready(LONG);
    let first = lab.subnet(1).unwrap();
    for _ in 0..3 {
        assert_eq!(lab.stop(1, "TERM"), Some(0));
        lab.start(1);
        lab.wait_ready(LONG);
        assert_eq!(lab.subnet(1).unwrap(), first, "{}", lab.log(1));
    }
    let held = leases(&lab);
    assert_eq!(held.len(), 2, "{:?}", held.keys());
    assert!(held
        .values()
        .all(|v| v.len() > 67_000 && v.contains("12999\\n13000")));
    assert!(
        !lab.log(1).contains("ignoring bad subnet lease"),
        "{}",
        lab.log(1)
    );
    assert!(
        !lab.log(2).contains("ignoring bad subnet lease"),
        "{}",
        lab.log(2)
    );
    assert!(lab.running(1) && lab.running(2));
}

/// A value larger than any lease the node would read is refused before anything is written.
#[test]
fn a_lease_value_too_large_stops_start_up_before_anything_is_written() {
    let backend = serde_json::json!({
        "Type": "extension",
        "PreStartupCommand": "head -c 1600000 /dev/zero | tr '\\0' x",
    });
    let (mut lab, _dir) = lab('v', 1, Some(&config(backend)));
    lab.start(1);
    assert!(wait_until(LONG, || !lab.running(1)), "{}", lab.log(1));
    assert_eq!(lab.stop(1, "KILL"), Some(1));
    let log = lab.log(1);
    assert!(
        log.contains("this node's lease value would be 1600")
            && log.contains("more than the 1571840 allowed"),
        "{log}"
    );
    assert!(leases(&lab).is_empty(), "{:?}", leases(&lab));
    assert!(lab.subnet_env(1).is_empty());
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
        wait_until(LONG, || lab.log(1).contains(
            "failed to run command: false Err: exit status 1 Output: "
        )),
        "{}",
        lab.log(1)
    );
    assert!(lab.running(1));
}
