//! The WireGuard backend in the lab: three hosts mesh over `flannel-wg` and pods ping across;
//! the lease value as upstream writes it; each host's key file made once and kept across a
//! restart; peers repaired when removed by hand, removed with their leases; PSK and
//! keepalive as `wg show` prints them; dual-stack in both modes; a switch from VXLAN and
//! back leaving nothing behind.
//!
//! Which WireGuard runs is the kernel's business: on a kernel with the `wireguard` module
//! the kernel's (the VM lane, `tests/vm.sh`, sets `FLANNEL_TEST_WIREGUARD=kernel` and the
//! tests fail if another runs), on one without it wireguard-go (userspace; this machine's
//! kernel: `FLANNEL_TEST_WIREGUARD=userspace` or unset). Every host gets its own
//! /run/wireguard ([`Lab::private_run_wireguard`]) and key file.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use flannel_lab::lab::{wait_until, Lab, DEFAULT_PREFIX};

const CONFIG: &str = r#"{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"wireguard","PersistentKeepaliveInterval":25,"PSK":"oHW1ONvVS3P4r1YY/+9CmVoYNXu7XYPi2G+8QIyFsy4="}}"#;
/// `wg show dump` prints the preshared key in base64, as the config has it.
const PSK: &str = "oHW1ONvVS3P4r1YY/+9CmVoYNXu7XYPi2G+8QIyFsy4=";

/// The WireGuard implementation the tests expect: `kernel` or `userspace`.
fn expected_implementation() -> &'static str {
    match std::env::var("FLANNEL_TEST_WIREGUARD").as_deref() {
        Ok("kernel") => "kernel",
        Ok("userspace") | Err(_) => "userspace",
        Ok(other) => panic!("FLANNEL_TEST_WIREGUARD={other}: kernel or userspace"),
    }
}

fn wg_lab(tag: char, hosts: usize, config: &str) -> (Lab, tempfile::TempDir) {
    for (program, package) in [("wg", "wireguard-tools"), ("wireguard-go", "wireguard-go")] {
        flannel_lab::require_program(program, package);
    }
    let (mut lab, dir) = lab(tag, hosts, Some(config));
    lab.private_run_wireguard();
    (lab, dir)
}

/// The public key of host `i`'s key file (`wg pubkey`).
fn public_key(lab: &Lab, i: usize) -> String {
    let file = lab.hosts[i - 1].log.with_file_name("wgkey");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("wg pubkey < {}", file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `wg show <dev> dump` on host `i`: public key -> (psk, endpoint, allowed ips, keepalive).
fn wg_peers(lab: &Lab, i: usize, dev: &str) -> BTreeMap<String, (String, String, String, String)> {
    let out = lab.on_host(i, &["wg", "show", dev, "dump"]);
    out.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].to_string(),
                (f[1].into(), f[2].into(), f[3].into(), f[7].into()),
            )
        })
        .collect()
}

/// What host `i`'s device should hold: a peer per other host, endpoint PublicIP:port,
/// allowed IPs its subnet, upstream's keepalive and PSK.
fn expected_peers(
    lab: &Lab,
    i: usize,
    port: u16,
) -> BTreeMap<String, (String, String, String, String)> {
    (1..=lab.hosts.len())
        .filter(|&j| j != i && lab.subnet(j).is_some())
        .map(|j| {
            (
                public_key(lab, j),
                (
                    PSK.to_string(),
                    format!("{}:{port}", lab.hosts[j - 1].ip),
                    lab.subnet(j).unwrap(),
                    "25".to_string(),
                ),
            )
        })
        .collect()
}

fn meshed(lab: &Lab) -> bool {
    (1..=lab.hosts.len()).all(|i| {
        lab.subnet(i).is_some() && wg_peers(lab, i, "flannel-wg") == expected_peers(lab, i, 51820)
    })
}

fn ifindex(lab: &Lab, i: usize, dev: &str) -> String {
    lab.on_host(i, &["cat", &format!("/sys/class/net/{dev}/ifindex")])
}

#[test]
fn wireguard_mesh_lease_key_repairs_restart_and_leave() {
    let (mut lab, _dir) = wg_lab('W', 3, CONFIG);
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(
        wait_until(LONG, || meshed(&lab)),
        "{:?} vs {:?}\n{}",
        wg_peers(&lab, 1, "flannel-wg"),
        expected_peers(&lab, 1, 51820),
        lab.log(1)
    );
    let which = match expected_implementation() {
        "kernel" => "the kernel's wireguard module",
        _ => "userspace (/var/run/wireguard/flannel-wg.sock)",
    };
    assert!(lab.log(1).contains(which), "{which}:\n{}", lab.log(1));

    // upstream's lease value, byte for byte, with the key of the host's key file
    let values = leases(&lab);
    for i in 1..=3 {
        let subnet = lab.subnet(i).unwrap().replace('/', "-");
        assert_eq!(
            values[&subnet],
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{}","Port":51820}}}}"#,
                lab.hosts[i - 1].ip,
                public_key(&lab, i)
            )
        );
        let mode = std::fs::metadata(lab.hosts[i - 1].log.with_file_name("wgkey")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o400
        );
    }
    // the device: MTU 1500 - 80, the subnet's address, one route for the Network
    let env = lab.subnet_env(1);
    assert!(env.contains("FLANNEL_MTU=1420\n"), "{env}");
    let link = lab.on_host(1, &["ip", "link", "show", "flannel-wg"]);
    assert!(link.contains("mtu 1420"), "{link}");
    let subnet1 = lab.subnet(1).unwrap();
    let addr = lab.on_host(1, &["ip", "-4", "addr", "show", "flannel-wg"]);
    let own = subnet1.replace("/24", "/32");
    assert!(addr.contains(&format!("inet {own}")), "{own}: {addr}");
    let routes = lab.on_host(1, &["ip", "route", "show", "10.200.0.0/16"]);
    assert!(
        routes.contains("10.200.0.0/16 dev flannel-wg scope link"),
        "{routes}"
    );

    // pods ping across, encrypted
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert_eq!(lab.ping_matrix(), vec![]);

    // a peer removed by hand is put back (the periodic reconcile: 10 s)
    let pk2 = public_key(&lab, 2);
    lab.on_host(1, &["wg", "set", "flannel-wg", "peer", &pk2, "remove"]);
    assert!(!wg_peers(&lab, 1, "flannel-wg").contains_key(&pk2));
    assert!(wait_until(LONG, || meshed(&lab)), "{}", lab.log(1));
    // a stray peer (no lease explains it) goes
    let stray = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    lab.on_host(
        1,
        &[
            "wg",
            "set",
            "flannel-wg",
            "peer",
            stray,
            "allowed-ips",
            "10.200.250.0/24",
        ],
    );
    assert!(wait_until(LONG, || meshed(&lab)), "{}", lab.log(1));

    // a restart keeps the key, the device and its peers (upstream deletes its device)
    let index = ifindex(&lab, 1, "flannel-wg");
    let key_before = public_key(&lab, 1);
    assert_eq!(lab.stop(1, "TERM"), Some(0));
    assert_eq!(
        wg_peers(&lab, 1, "flannel-wg"),
        expected_peers(&lab, 1, 51820),
        "peers kept while down"
    );
    lab.start(1);
    lab.wait_ready(LONG);
    assert_eq!(public_key(&lab, 1), key_before);
    assert_eq!(ifindex(&lab, 1, "flannel-wg"), index, "the device was kept");
    assert_eq!(leases(&lab), values, "the lease values are the same");
    assert!(
        lab.log(1).contains("keeping WireGuard device flannel-wg"),
        "{}",
        lab.log(1)
    );
    assert_eq!(lab.ping_matrix(), vec![]);

    // a node that leaves: its lease gone, its peer goes everywhere
    lab.stop(3, "TERM");
    let subnet3 = lab.subnet(3).unwrap().replace('/', "-");
    lab.etcd()
        .ctl(&["del", &format!("{DEFAULT_PREFIX}/subnets/{subnet3}")]);
    let pk3 = public_key(&lab, 3);
    assert!(
        wait_until(LONG, || (1..=2)
            .all(|i| !wg_peers(&lab, i, "flannel-wg").contains_key(&pk3))),
        "{}",
        lab.log(1)
    );
    assert_eq!(wg_peers(&lab, 1, "flannel-wg").len(), 1);
}
