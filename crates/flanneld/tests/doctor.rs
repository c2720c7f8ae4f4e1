//! `flanneld-rs doctor` in the lab: a healthy node gives exit 0 and a short all-good
//! summary; then each thing operators break by accident, broken on purpose, is named:
//! the daemon stopped, a peer's route deleted, the VTEP MAC changed, the masquerade chain
//! flushed, ip_forward off, a wrong subnet.env, etcd stopped.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::process::Command;

use common::*;
use flannel_lab::lab::{wait_until, Lab, DEFAULT_CONFIG};

/// Runs `flanneld-rs doctor` on host `i` with the daemon's flags; (exit code, stdout).
fn doctor(lab: &Lab, i: usize, extra: &[&str]) -> (i32, String) {
    let o = Command::new("ip")
        .args(["netns", "exec", &lab.hosts[i - 1].ns])
        .arg(env!("CARGO_BIN_EXE_flanneld-rs"))
        .arg("doctor")
        .args(lab.flags(i))
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// The failed findings of a `--json` report, as "check: text".
fn failures(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "fail")
        .map(|f| {
            format!(
                "{}: {}",
                f["check"].as_str().unwrap(),
                f["text"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn doctor_finds_what_was_broken_and_passes_a_healthy_node() {
    let (mut lab, _dir) = lab('d', 3, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(wait_until(LONG, || {
        (1..=3).all(|i| {
            lab.on_host(i, &["ip", "route"])
                .matches("dev flannel.1")
                .count()
                == 2
        })
    }));
    let (code, out) = doctor(&lab, 1, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("flanneld-rs doctor: all good"), "{out}");
    assert!(out.lines().all(|l| l.chars().count() <= 80), "{out}");
    assert!(!out.contains('\x1b'), "no colour when not on a terminal");

    assert!(
        out.contains("flannel.1: TX checksum offload on (fine without NAT)"),
        "{out}"
    );

    // a node behind NAT (-public-ip not on its interface) with TX checksum offload on: the
    // known checksum fault is named with its workaround
    lab.stop(3, "TERM");
    lab.start_with_flags(3, &["-public-ip=198.51.100.3"]);
    lab.wait_ready(LONG);
    let (_, json) = doctor(&lab, 3, &["--json", "-public-ip=198.51.100.3"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let warned = v["findings"].as_array().unwrap().iter().any(|f| {
        f["status"] == "warn"
            && f["text"].as_str().unwrap().starts_with(
                "flannel.1: TX checksum offload is on and this node's PublicIP is behind NAT",
            )
            && f["advice"]
                .as_str()
                .unwrap()
                .contains("ethtool -K flannel.1 tx-checksum-ip-generic off")
    });
    assert!(warned, "{json}");

    // break things on h1 with its daemon stopped (it would repair them)
    lab.stop(1, "KILL");
    let h2 = lab.subnet(2).unwrap();
    lab.on_host(1, &["ip", "route", "del", &h2]);
    lab.on_host(
        1,
        &[
            "ip",
            "link",
            "set",
            "flannel.1",
            "address",
            "02:11:22:33:44:55",
        ],
    );
    lab.on_host(1, &["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    lab.on_host(1, &["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]);
    let env_path = lab.hosts[0].subnet_file.clone();
    let env = std::fs::read_to_string(&env_path).unwrap();
    let wrong = env
        .lines()
        .map(|l| {
            if l.starts_with("FLANNEL_SUBNET=") {
                "FLANNEL_SUBNET=10.200.250.1/24".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(&env_path, wrong).unwrap();

    let (code, json) = doctor(&lab, 1, &["--json"]);
    assert_eq!(code, 1, "{json}");
    let fails = failures(&json);
    for want in [
        "daemon: flanneld-rs is not running",
        "device: flannel.1: MAC 02:11:22:33:44:55 but the lease says",
        "rules: iptables: chain FLANNEL-POSTRTG of table nat is empty (flushed)",
        "host: net.ipv4.ip_forward is 0",
        "subnet.env: ",
    ] {
        assert!(
            fails.iter().any(|f| f.starts_with(want)),
            "{want}\nin {fails:#?}"
        );
    }
    assert!(
        fails
            .iter()
            .any(|f| f.contains("FLANNEL_SUBNET 10.200.250.0/24 (the lease: ")),
        "{fails:#?}"
    );
    // the peer whose route was deleted is named (changing the MAC also flushed the ARP
    // entries, which are named too)
    assert!(
        fails.iter().any(|f| f.starts_with("peers: on flannel.1: ")
            && f.contains(&format!("{h2} (192.168.77.2): route, ARP missing"))),
        "{fails:#?}"
    );
    let (_, text) = doctor(&lab, 1, &[]);
    assert!(text.starts_with("flanneld-rs doctor: 6 problems"), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");

    // FORWARD policy DROP (as Docker sets it) with flannel's forward rules turned off
    lab.on_host(2, &["iptables", "-P", "FORWARD", "DROP"]);
    let (code, json) = doctor(&lab, 2, &["--json", "-iptables-forward-rules=false"]);
    assert_eq!(code, 1, "{json}");
    assert!(
        failures(&json).iter().any(|f| f
            == "rules: the FORWARD chain's policy is DROP and -iptables-forward-rules is false"),
        "{json}"
    );

    // etcd gone: the store is named, exit 1; what can be checked locally still is
    lab.on_host(2, &["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]);
    lab.etcd_mut().stop();
    let (code, json) = doctor(&lab, 2, &["--json"]);
    assert_eq!(code, 1, "{json}");
    let fails = failures(&json);
    assert!(
        fails
            .iter()
            .any(|f| f.starts_with("store: etcd at http://192.168.77.254:2379")),
        "{json}"
    );
    assert!(
        fails.iter().any(|f| f == "host: net.ipv4.ip_forward is 0"),
        "{json}"
    );
    assert!(
        json.contains("not checked without the store: this node's lease, the peers' entries"),
        "{json}"
    );
    assert!(json.contains("flannel.1 up, MTU 1450"), "{json}");
    assert!(
        json.contains("masquerade and forward rules in place (iptables)"),
        "{json}"
    );
    // h1: neither the store nor a daemon; subnet.env's networks still tell the rules
    let (code, json) = doctor(&lab, 1, &["--json"]);
    assert_eq!(code, 1, "{json}");
    let fails = failures(&json);
    assert!(
        fails.iter().any(|f| f == "host: net.ipv4.ip_forward is 0"),
        "{json}"
    );
    assert!(
        fails
            .iter()
            .any(|f| f.starts_with("rules: iptables: chain FLANNEL-POSTRTG of table nat")),
        "{json}"
    );
}

/// What doctor says of what the first pass of a newcomer found (issue 32): `-version`, a run
/// without root, a config changed in the store while the daemon runs, cni0 with the address
/// of an old subnet.
#[test]
fn doctor_version_root_a_stale_config_and_an_old_cni0() {
    let (mut lab, _dir) = lab('D', 2, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(wait_until(LONG, || lab
        .on_host(1, &["ip", "route"])
        .contains("dev flannel.1")));

    let (code, out) = doctor(&lab, 1, &["-version"]);
    assert_eq!(
        (code, out.trim()),
        (0, concat!("v", env!("CARGO_PKG_VERSION")))
    );

    let o = Command::new("ip")
        .args(["netns", "exec", &lab.hosts[0].ns])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_flanneld-rs"))
        .arg("doctor")
        .args(lab.flags(1))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("doctor needs root"), "{err}");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // cni0 left with an address of an old subnet: every CNI ADD would fail
    lab.on_host(1, &["ip", "link", "add", "cni0", "type", "bridge"]);
    lab.on_host(1, &["ip", "addr", "add", "10.200.250.1/24", "dev", "cni0"]);
    let (code, json) = doctor(&lab, 1, &["--json"]);
    assert_eq!(code, 1, "{json}");
    let want = format!(
        "host: cni0 holds 10.200.250.1/24, not the gateway of subnet.env's subnet ({})",
        lab.subnet(1).unwrap().replace(".0/", ".1/")
    );
    assert!(failures(&json).contains(&want), "{want}\n{json}");
    lab.on_host(1, &["ip", "link", "del", "cni0"]);

    // the config changed to host-gw while the daemons run: they keep VXLAN, doctor says so
    // first and checks the VXLAN that runs (not host-gw's routes)
    let host_gw = DEFAULT_CONFIG.replace("vxlan", "host-gw");
    assert_ne!(host_gw, DEFAULT_CONFIG);
    lab.etcd().ctl(&[
        "put",
        &format!("{}/config", flannel_lab::lab::DEFAULT_PREFIX),
        &host_gw,
    ]);
    assert!(wait_until(LONG, || lab
        .log(1)
        .contains("does not re-plumb a running node")));
    let (code, text) = doctor(&lab, 1, &[]);
    assert_eq!(code, 1, "{text}");
    let first = text.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("FAIL  config     the network config changed in the store"),
        "{text}"
    );
    let (_, json) = doctor(&lab, 1, &["--json"]);
    assert_eq!(failures(&json).len(), 1, "{json}");
    assert!(json.contains("flannel.1 up, MAC"), "{json}");
    assert!(!json.contains("routes missing"), "{json}");
}
