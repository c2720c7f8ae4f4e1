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
//! /run/wireguard ([`Lab::private_run`]) and key file.
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
    lab.private_run();
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
    // none while the device is being made again
    let out = lab.on_host(
        i,
        &[
            "sh",
            "-c",
            &format!("wg show {dev} dump 2>/dev/null || true"),
        ],
    );
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

/// Every host's `wg show` and log, for a failure's message.
fn wg_state(lab: &Lab) -> String {
    (1..=lab.hosts.len())
        .map(|i| {
            let wg = lab.on_host(i, &["sh", "-c", "wg show all 2>&1 || true"]);
            format!(
                "== host {i}: wg show\n{wg}\n== host {i}: log\n{}",
                lab.log(i)
            )
        })
        .collect()
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

    // pods ping across, encrypted (a first handshake lost, as wireguard-go's can be under
    // load, is sent again after WireGuard's 5 s REKEY_TIMEOUT)
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert!(
        wait_until(LONG, || lab.ping_matrix().is_empty()),
        "{:?}\n{}",
        lab.ping_matrix(),
        wg_state(&lab)
    );

    // doctor: the device and every peer as the backend would set them
    let flags = lab.flags(1).join(" ");
    let key_file = lab.hosts[0].log.with_file_name("wgkey");
    let report = lab.on_host(
        1,
        &[
            "sh",
            "-c",
            &format!(
                "WIREGUARD_KEY_FILE={} {} doctor {flags} 2>&1; echo rc=$?",
                key_file.display(),
                lab.spec.flanneld.display()
            ),
        ],
    );
    assert!(
        report.contains("flannel-wg: 2 WireGuard peers exact"),
        "{report}"
    );
    assert!(report.trim_end().ends_with("rc=0"), "{report}");

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

    // the device deleted: made again (the kernel reports the deletion), with every peer
    lab.on_host(1, &["ip", "link", "del", "flannel-wg"]);
    assert!(
        wait_until(LONG, || meshed(&lab) && lab.ping_matrix().is_empty()),
        "{}",
        lab.log(1)
    );

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
    assert_eq!(lab.ping_matrix(), vec![], "{}", wg_state(&lab));

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

const DUAL: &str = r#"{"EnableIPv6":true,"IPv6Network":"fd00:200::/56","Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"wireguard"}}"#;

fn has_link(lab: &Lab, i: usize, dev: &str) -> bool {
    lab.on_host(i, &["ip", "-o", "link", "show"])
        .contains(&format!(": {dev}:"))
}

#[test]
fn wireguard_dual_stack_separate_then_auto_then_vxlan_leaves_nothing() {
    let (mut lab, _dir) = wg_lab('V', 2, DUAL);
    lab.start_all();
    lab.wait_ready(LONG);
    // separate: a device per family, each peer over its own family and port
    let (pk1, pk2) = (public_key(&lab, 1), public_key(&lab, 2));
    let v4 = |lab: &Lab| {
        wg_peers(lab, 1, "flannel-wg")
            .get(&pk2)
            .map(|p| (p.1.clone(), p.2.clone()))
    };
    let v6 = |lab: &Lab| {
        wg_peers(lab, 1, "flannel-wg-v6")
            .get(&pk2)
            .map(|p| (p.1.clone(), p.2.clone()))
    };
    assert!(
        wait_until(LONG, || v4(&lab)
            == Some(("192.168.77.2:51820".into(), lab.subnet(2).unwrap()))
            && v6(&lab)
                == Some(("[fd77::2]:51821".into(), lab.subnet6(2).unwrap()))),
        "{:?} {:?}\n{}",
        v4(&lab),
        v6(&lab),
        lab.log(1)
    );
    let value = &leases(&lab)[&format!(
        "{}&{}",
        lab.subnet(1).unwrap().replace('/', "-"),
        lab.subnet6(1).unwrap().replace('/', "-")
    )];
    assert_eq!(
        *value,
        format!(
            r#"{{"PublicIP":"192.168.77.1","PublicIPv6":"fd77::1","BackendType":"wireguard","BackendData":{{"PublicKey":"{pk1}","Port":51820}},"BackendV6Data":{{"PublicKey":"{pk1}","Port":51821}}}}"#
        )
    );
    for i in 1..=2 {
        lab.add_pod(i);
    }
    assert_eq!(lab.ping_matrix(), vec![]);

    // auto: one device carrying both families (private IPv4 underlay: reached over IPv4);
    // the IPv6 device is a leftover
    let auto = DUAL.replace(
        r#""Type":"wireguard""#,
        r#""Type":"wireguard","Mode":"auto""#,
    );
    lab.etcd()
        .ctl(&["put", &format!("{DEFAULT_PREFIX}/config"), &auto]);
    restart_all(&mut lab);
    assert!(!has_link(&lab, 1, "flannel-wg-v6"), "{}", lab.log(1));
    let both = {
        let mut s = [lab.subnet(2).unwrap(), lab.subnet6(2).unwrap()];
        s.sort();
        s.join(",")
    };
    assert!(
        wait_until(LONG, || wg_peers(&lab, 1, "flannel-wg")
            .get(&pk2)
            .is_some_and(|p| p.1 == "192.168.77.2:51820" && {
                let mut got: Vec<&str> = p.2.split(',').collect();
                got.sort();
                got.join(",") == both
            })),
        "{:?}",
        wg_peers(&lab, 1, "flannel-wg")
    );
    assert_eq!(lab.ping_matrix(), vec![]);

    // vxlan again: no WireGuard device is left, pods ping over flannel.1
    let vxlan = DUAL.replace(r#""Type":"wireguard""#, r#""Type":"vxlan""#);
    lab.etcd()
        .ctl(&["put", &format!("{DEFAULT_PREFIX}/config"), &vxlan]);
    restart_all(&mut lab);
    for i in 1..=2 {
        assert!(!has_link(&lab, i, "flannel-wg"), "{}", lab.log(i));
        let routes = lab.on_host(i, &["ip", "route"]);
        assert!(!routes.contains("flannel-wg"), "{routes}");
    }
    assert!(wait_until(LONG, || lab.ping_matrix().is_empty()));
}

#[test]
fn a_taken_port_and_no_wireguard_at_all_stop_start_up_in_words() {
    let config = CONFIG.replace(
        r#""Type":"wireguard""#,
        r#""Type":"wireguard","ListenPort":51999"#,
    );
    let (mut lab, _dir) = wg_lab('U', 1, &config);
    // another program on the port (python's socket, held while flanneld starts)
    let holder = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.hosts[0].ns, "python3", "-c"])
        .arg("import socket,time; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('::', 51999)); time.sleep(60)")
        .spawn()
        .unwrap();
    let mut holder = Guard(holder);
    assert!(wait_until(LONG, || lab
        .on_host(1, &["ss", "-Hulpn", "sport = :51999"])
        .contains("python3")));
    lab.start(1);
    assert!(wait_until(LONG, || !lab.running(1)), "{}", lab.log(1));
    assert!(
        lab.log(1)
            .contains("UDP port 51999 is in use by another program (ListenPort / ListenPortV6 of the network config)"),
        "{}",
        lab.log(1)
    );
    let _ = holder.0.kill();
    let _ = holder.0.wait();
    let _ = lab.on_host(1, &["sh", "-c", "ip link del flannel-wg 2>/dev/null; true"]);

    // no module (this kernel; not in the VM) and no userspace implementation
    if expected_implementation() == "userspace" {
        let flanneld = lab.spec.flanneld.clone();
        lab.start_binary(
            1,
            &flanneld,
            &[(
                "WG_QUICK_USERSPACE_IMPLEMENTATION".into(),
                "/nonexistent/wireguard-go".into(),
            )],
        );
        assert!(wait_until(LONG, || !lab.running(1)), "{}", lab.log(1));
        assert!(
            lab.log(1).contains("the kernel has no wireguard module (modprobe wireguard), and the userspace implementation could not be run: /nonexistent/wireguard-go"),
            "{}",
            lab.log(1)
        );
    }
}

/// Kills the child when the test ends, however it ends.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A rolling replacement both ways beside upstream's WireGuard backend: upstream on h1 and
/// h2, flanneld-rs on h3; then h1 to flanneld-rs; then h3 back to upstream; pods ping across
/// at every step. Upstream needs the kernel's module: run it in the VM lane with an
/// upstream binary built by hand outside the checkout (flannel's tag v0.20.2 has vendor/:
/// `GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=1 go build`; never fetched by a test):
/// `tests/vm.sh -e FLANNEL_TEST_WIREGUARD=kernel -e UPSTREAM_FLANNELD=/path/flanneld-v0.20.2
/// <this test binary> --ignored mixed`.
#[test]
#[ignore = "needs upstream flanneld (UPSTREAM_FLANNELD) and the kernel's wireguard module: run by hand in the VM lane"]
fn mixed_cluster_with_upstreams_wireguard_both_ways() {
    let upstream = std::path::PathBuf::from(
        std::env::var("UPSTREAM_FLANNELD").expect("UPSTREAM_FLANNELD: an upstream flanneld"),
    );
    let (mut lab, _dir) = wg_lab('M', 3, CONFIG);
    lab.start_binary(1, &upstream, &[]);
    lab.start_binary(2, &upstream, &[]);
    lab.start(3);
    let all_meshed = |lab: &Lab| {
        (1..=3).all(|i| {
            lab.subnet(i).is_some()
                && wg_peers(lab, i, "flannel-wg").len() == 2
                && wg_peers(lab, i, "flannel-wg") == expected_peers(lab, i, 51820)
        })
    };
    assert!(wait_until(LONG, || all_meshed(&lab)), "{}", lab.log(3));
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert!(wait_until(LONG, || lab.ping_matrix().is_empty()));
    // upstream v0.20.2's value has no Port: flanneld-rs took the device's own port
    let values = leases(&lab);
    let up1 = &values[&lab.subnet(1).unwrap().replace('/', "-")];
    assert!(!up1.contains("Port"), "{up1}");

    // h1: upstream -> flanneld-rs
    lab.stop(1, "TERM");
    lab.start(1);
    lab.wait_ready(LONG);
    assert!(wait_until(LONG, || all_meshed(&lab)), "{}", lab.log(1));
    assert!(wait_until(LONG, || lab.ping_matrix().is_empty()));
    // h3: flanneld-rs -> upstream (its device and peers, kept by flanneld-rs, are upstream's
    // to re-create)
    lab.stop(3, "TERM");
    lab.start_binary(3, &upstream, &[]);
    assert!(wait_until(LONG, || all_meshed(&lab)), "{}", lab.log(3));
    assert!(wait_until(LONG, || lab.ping_matrix().is_empty()));
}
