//! Faults and bad input in the lab: what breaks around flanneld-rs, and that it recovers
//! without losing anything. The matrix with results is docs/reliability.md.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use flannel_lab::lab::{
    nsexec, try_nsexec, wait_until, Lab, DEFAULT_CONFIG, DEFAULT_PREFIX, ETCD_IP,
};

fn kill(lab: &flannel_lab::lab::Lab, index: usize, signal: &str) {
    let pid = lab.pid(index).unwrap().to_string();
    flannel_lab::netns::run_cmd("kill", &[&format!("-{signal}"), &pid]);
}

fn lease_key(subnet: &str) -> String {
    format!("{DEFAULT_PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

#[test]
fn lease_expires_while_paused_and_the_node_comes_back_with_its_subnet() {
    let (mut lab, _dir) = lab('g', 2, Some(DEFAULT_CONFIG));
    lab.spec.extra_flags.push("-subnet-ttl-for-tests=3".into());
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    let h2 = lab.subnet(2).unwrap();
    kill(&lab, 2, "STOP");
    // expired: gone from etcd and from h1
    assert!(
        wait_until(LONG, || !leases(&lab).contains_key(&h2.replace('/', "-"))),
        "lease did not expire"
    );
    assert!(wait_until(LONG, || !routes_text(&lab, 1)
        .contains(&format!("{h2} via"))));
    kill(&lab, 2, "CONT");
    // back with the same subnet, and h1 programs it again
    assert!(
        wait_until(LONG, || leases(&lab).contains_key(&h2.replace('/', "-"))),
        "lease not re-created: {}",
        lab.log(2)
    );
    assert_eq!(lab.subnet(2).unwrap(), h2);
    wait_converged(&lab);
    assert!(lab.running(1) && lab.running(2));
}

#[test]
fn two_nodes_starting_together_for_the_last_free_subnet() {
    // /28 in /30s: three subnets; two are taken by nodes that are not in the lab
    let config = r#"{"Network":"10.9.0.0/28","Backend":{"Type":"vxlan"}}"#;
    let (mut lab, _dir) = lab('h', 2, Some(config));
    for (subnet, ip) in [("10.9.0.4/30", 100), ("10.9.0.8/30", 101)] {
        let value = format!(
            r#"{{"PublicIP":"192.168.77.{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{ip:02x}"}}}}"#
        );
        lab.etcd().ctl(&["put", &lease_key(subnet), &value]);
    }
    lab.start(1);
    lab.start(2);
    assert!(wait_until(LONG, || lab.ready(1) || lab.ready(2)));
    let (winner, loser) = if lab.ready(1) { (1, 2) } else { (2, 1) };
    assert_eq!(lab.subnet(winner).unwrap(), "10.9.0.12/30");
    assert!(wait_until(LONG, || lab
        .log(loser)
        .contains("failed to acquire a subnet lease: out of subnets")));
    assert!(
        lab.running(loser),
        "the loser keeps trying instead of exiting"
    );
    assert!(!lab.ready(loser) && lab.subnet(loser).is_none());
    assert_eq!(leases(&lab).len(), 3, "never both on the same subnet");
    // a subnet frees up: the loser gets it
    lab.etcd().ctl(&["del", &lease_key("10.9.0.4/30")]);
    assert!(wait_until(LONG, || lab.ready(loser)), "{}", lab.log(loser));
    assert_eq!(lab.subnet(loser).unwrap(), "10.9.0.4/30");
}

#[test]
fn kill_9_at_random_points_of_start_up_then_a_clean_start() {
    let (mut lab, _dir) = lab('i', 2, Some(DEFAULT_CONFIG));
    lab.start(2);
    lab.wait_ready(LONG);
    for round in 0..20u64 {
        let jitter = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            % 40;
        lab.start(1);
        std::thread::sleep(Duration::from_millis(round % 3 * 10 + jitter));
        lab.stop(1, "KILL");
    }
    lab.start(1);
    lab.wait_ready(LONG);
    // exactly one lease for h1, the one its subnet.env names
    let mine: Vec<String> = leases(&lab)
        .into_iter()
        .filter(|(_, v)| v.contains("\"192.168.77.1\""))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(mine, vec![lab.subnet(1).unwrap().replace('/', "-")]);
    // and a clean kernel: the peer's entries only, one address, one jump per chain
    wait_converged(&lab);
    let addrs = lab.on_host(1, &["ip", "-4", "addr", "show", "dev", "flannel.1"]);
    assert_eq!(addrs.matches("inet ").count(), 1, "{addrs}");
    let nat = lab.on_host(1, &["iptables", "-t", "nat", "-S"]);
    assert_eq!(nat.matches("-j FLANNEL-POSTRTG").count(), 1, "{nat}");
    assert_eq!(nat.matches("-A FLANNEL-POSTRTG ").count(), 6, "{nat}");
}

#[test]
fn etcd_restarted_with_its_data_wiped() {
    let (mut lab, _dir) = lab('j', 2, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    let before = leases(&lab);
    lab.etcd_mut().stop();
    std::fs::remove_dir_all(lab.etcd().data_dir()).unwrap();
    lab.etcd_mut().restart();
    // the operator puts the config back; the nodes put their leases back, same subnets
    lab.etcd()
        .ctl(&["put", &format!("{DEFAULT_PREFIX}/config"), DEFAULT_CONFIG]);
    assert!(
        wait_until(LONG, || leases(&lab) == before),
        "{:?} vs {before:?}\n{}",
        leases(&lab),
        lab.log(1)
    );
    wait_converged(&lab);
    assert!(lab.running(1) && lab.running(2));
}

#[test]
fn kernel_drift_and_flushed_chains_are_restored_others_rules_untouched() {
    let (mut lab, _dir) = lab('k', 2, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    let nat_before = lab.on_host(1, &["iptables", "-t", "nat", "-S"]);
    // another program (kube-proxy) adds its rules and flushes ours
    lab.on_host(1, &["iptables", "-t", "nat", "-N", "KUBE-POSTROUTING"]);
    lab.on_host(
        1,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-j",
            "KUBE-POSTROUTING",
        ],
    );
    lab.on_host(1, &["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    assert!(
        wait_until(LONG, || lab
            .on_host(1, &["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"])
            .lines()
            .count()
            == 7),
        "FLANNEL-POSTRTG not restored"
    );
    let nat = lab.on_host(1, &["iptables", "-t", "nat", "-S"]);
    assert!(nat.contains("-A POSTROUTING -j KUBE-POSTROUTING"), "{nat}");
    for line in nat_before.lines() {
        assert!(nat.contains(line), "{line} missing after the resync");
    }
    // a stray route on flannel.1 and the device itself deleted
    lab.on_host(
        1,
        &[
            "ip",
            "route",
            "add",
            "10.200.250.0/24",
            "via",
            "10.200.250.0",
            "dev",
            "flannel.1",
            "onlink",
        ],
    );
    assert!(
        wait_until(LONG, || !lab
            .on_host(1, &["ip", "route"])
            .contains("10.200.250.0/24")),
        "stray route stays"
    );
    lab.on_host(1, &["ip", "link", "del", "flannel.1"]);
    wait_converged(&lab);
    assert!(lab.log(1).contains("re-creating it with VTEP MAC"));
}

#[test]
fn underlay_flap_restores_the_data_path() {
    let (mut lab, _dir) = lab('l', 2, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    lab.add_pod(1);
    lab.add_pod(2);
    assert_eq!(lab.ping_matrix(), vec![]);
    lab.on_host(1, &["ip", "link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_secs(1));
    lab.on_host(1, &["ip", "link", "set", "eth0", "up"]);
    assert!(
        wait_until(LONG, || lab.ping_matrix().is_empty()),
        "{:?}",
        lab.ping_matrix()
    );
    assert!(lab.running(1));
}

#[test]
fn garbage_subnet_env_is_ignored_unwritable_fails_clearly_healthz_binds_where_told() {
    let (mut lab, _dir) = lab('m', 2, Some(DEFAULT_CONFIG));
    std::fs::write(
        &lab.hosts[0].subnet_file,
        "FLANNEL_SUBNET=rubbish\n\0\0binary\n",
    )
    .unwrap();
    lab.start(1);
    lab.wait_ready(LONG);
    assert!(
        lab.log(1).contains("FLANNEL_SUBNET is not an IPv4 CIDR"),
        "{}",
        lab.log(1)
    );
    // healthz answers on the address it was given, not on loopback
    let (ok, _) = try_nsexec(
        &lab.hosts[0].ns,
        &[
            "curl",
            "-s",
            "--max-time",
            "2",
            "http://127.0.0.1:9090/healthz",
        ],
    );
    assert!(!ok, "healthz must not listen on 127.0.0.1");
    // a subnet file that cannot be written: start-up fails, saying why
    lab.start_with_flags(2, &["-subnet-file=/proc/flanneld-rs-test/subnet.env"]);
    assert!(wait_until(LONG, || !lab.running(2)));
    assert_eq!(lab.stop(2, "KILL").or(Some(1)), Some(1));
    assert!(
        lab.log(2).contains("writing the subnet file"),
        "{}",
        lab.log(2)
    );
}

#[test]
fn lease_show_needs_only_a_read_only_etcd_user() {
    let (lab, _dir) = lab('n', 1, Some(DEFAULT_CONFIG));
    let value = r#"{"PublicIP":"192.168.77.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"}}"#;
    lab.etcd().ctl(&["put", &lease_key("10.200.9.0/24"), value]);
    let etcd_ns = format!("{}-etcd", lab.spec.name);
    let ctl = |args: &[&str]| {
        let mut a = vec!["etcdctl", "--endpoints=http://127.0.0.1:2379"];
        a.extend_from_slice(args);
        nsexec(&etcd_ns, &a)
    };
    ctl(&["user", "add", "root:rootpw"]);
    ctl(&["role", "add", "flannel-ro"]);
    ctl(&[
        "role",
        "grant-permission",
        "flannel-ro",
        "read",
        &format!("{DEFAULT_PREFIX}/"),
        "--prefix=true",
    ]);
    ctl(&["user", "add", "reader:readerpw"]);
    ctl(&["user", "grant-role", "reader", "flannel-ro"]);
    ctl(&["auth", "enable"]);
    let bin = env!("CARGO_BIN_EXE_flanneld-rs");
    let shown = lab.on_host(
        1,
        &[
            bin,
            "lease",
            "show",
            "--json",
            "-etcd-api=v3",
            &format!("-etcd-endpoints=http://{ETCD_IP}:2379"),
            &format!("-etcd-prefix={DEFAULT_PREFIX}"),
            "-etcd-username=reader",
            "-etcd-password=readerpw",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(json["leases"][0]["subnet"], "10.200.9.0/24");
    assert!(json["leases"][0]["reservation"].as_bool().unwrap());
    // the same user cannot write: the read-only role is real
    let (ok, _) = try_nsexec(
        &etcd_ns,
        &[
            "etcdctl",
            "--endpoints=http://127.0.0.1:2379",
            "--user=reader:readerpw",
            "put",
            &lease_key("10.200.10.0/24"),
            "x",
        ],
    );
    assert!(!ok);
}

#[test]
fn bad_leases_of_other_nodes_are_skipped_with_a_warning_and_nothing_else_is_lost() {
    // an etcd that takes requests of 4 MiB, so that a value larger than a default etcd holds
    // (and flanneld reads) can be written
    let (mut lab, _dir) = lab_with_etcd(
        'o',
        2,
        Some(DEFAULT_CONFIG),
        &["--max-request-bytes=4194304"],
    );
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    let h1 = lab.subnet(1).unwrap();
    let good = |ip: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"}}}}"#
        )
    };
    let bad = [
        ("10.200.201.0-24", "{not json".to_string(), "not JSON"),
        (
            "10.200.202.0-24",
            r#"{"PublicIP":7,"BackendType":"vxlan"}"#.to_string(),
            "PublicIP",
        ),
        ("10.200.203.0-24", good("0.0.0.0"), "cannot be a VTEP"),
        ("10.200.204.0-24", good("10.200.7.7"), "inside the overlay"),
        (
            "10.99.205.0-24",
            good("192.168.77.99"),
            "outside the network",
        ),
        (
            &*h1.replace('/', "-"),
            good("192.168.77.99"),
            "claims this node's subnet",
        ),
    ];
    let etcd_ns = format!("{}-etcd", lab.spec.name);
    // a bad value on h1's own key would be "taken over": that is the keeper's business
    // (it stops h1 with LeaseTaken); check the others on h2 instead
    for (key, value, _) in &bad[..5] {
        lab.etcd()
            .ctl(&["put", &format!("{DEFAULT_PREFIX}/subnets/{key}"), value]);
    }
    // a 1.8 MB value, through stdin (one argument cannot be that long; etcdctl sends at
    // most 2 MiB)
    let huge = format!(
        r#"{{"PublicIP":"192.168.77.98","Pad":"{}"}}"#,
        "x".repeat(1_800_000)
    );
    let mut put = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &etcd_ns,
            "etcdctl",
            "--endpoints=http://127.0.0.1:2379",
            "put",
            &format!("{DEFAULT_PREFIX}/subnets/10.200.206.0-24"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    put.stdin
        .take()
        .unwrap()
        .write_all(huge.as_bytes())
        .unwrap();
    assert!(put.wait().unwrap().success());
    for (key, _, why) in &bad[..5] {
        let subnet = key.replace('-', "/");
        assert!(
            wait_until(LONG, || lab.log(2).lines().any(
                |l| l.contains(why) && (l.contains(key) || l.contains(&subnet))
            )),
            "no warning naming {key} ({why}):\n{}",
            lab.log(2)
        );
    }
    assert!(
        wait_until(LONG, || lab
            .log(2)
            .contains("more than the 1571840 allowed")),
        "{}",
        lab.log(2)
    );
    // nothing of them is programmed, the good peer still is, nobody exited
    let routes = routes_text(&lab, 2);
    for n in [
        "10.200.201.",
        "10.200.202.",
        "10.200.203.",
        "10.200.204.",
        "10.99.205.",
        "10.200.206.",
    ] {
        assert!(!routes.contains(n), "{n} programmed:\n{routes}");
    }
    assert!(routes.contains(&format!("{h1} via")), "{routes}");
    assert!(lab.running(1) && lab.running(2));

    // h1's own subnet claimed by another PublicIP: h1 must stop using it, and says so
    let (key, value, _) = &bad[5];
    lab.etcd()
        .ctl(&["put", &format!("{DEFAULT_PREFIX}/subnets/{key}"), value]);
    assert!(
        wait_until(LONG, || !lab.running(1)),
        "h1 keeps a subnet it lost"
    );
    assert_eq!(lab.stop(1, "KILL"), Some(1));
    assert!(lab.log(1).contains("is now held by"), "{}", lab.log(1));
    assert!(lab.running(2));
}

#[test]
fn a_changed_network_config_is_refused_live_with_instructions() {
    let (mut lab, _dir) = lab('p', 2, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    let env_before = lab.subnet_env(1);
    let stale = |lab: &flannel_lab::lab::Lab| {
        lab.http(1, "/metrics", "GET")
            .is_some_and(|(_, m)| m.contains("\nflanneld_config_stale 1\n"))
    };
    lab.etcd().ctl(&[
        "put",
        &format!("{DEFAULT_PREFIX}/config"),
        r#"{"Network":"10.99.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    assert!(
        wait_until(LONG, || lab
            .log(1)
            .contains("does not re-plumb a running node")),
        "{}",
        lab.log(1)
    );
    assert!(lab.log(1).contains("restart flanneld on every node"));
    assert!(wait_until(LONG, || stale(&lab)));
    // nothing was re-plumbed: same subnet.env, same mesh, still ready
    assert_eq!(lab.subnet_env(1), env_before);
    wait_converged(&lab);
    assert!(lab.ready(1) && lab.running(1) && lab.running(2));
    // the same config written back: no longer stale
    lab.etcd()
        .ctl(&["put", &format!("{DEFAULT_PREFIX}/config"), DEFAULT_CONFIG]);
    assert!(wait_until(LONG, || lab
        .log(1)
        .contains("unchanged for this node")));
    assert!(wait_until(LONG, || !stale(&lab)));
}

#[test]
fn etcd_down_for_30_seconds_at_start() {
    let (mut lab, _dir) = lab('q', 2, Some(DEFAULT_CONFIG));
    lab.etcd_mut().stop();
    lab.start_all();
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        lab.running(1) && lab.running(2),
        "nobody exits while etcd is down"
    );
    assert_eq!(
        lab.http(1, "/healthz", "GET"),
        Some((200, "flanneld is running".into()))
    );
    assert_eq!(
        lab.http(1, "/readyz", "GET"),
        Some((503, "flanneld is not ready yet".into()))
    );
    assert!(
        lab.log(1).contains("Couldn't fetch network config"),
        "{}",
        lab.log(1)
    );
    lab.etcd_mut().restart();
    lab.wait_ready(LONG);
    wait_converged(&lab);
}

#[test]
fn partition_with_compaction_then_heal_applies_every_change() {
    let (mut lab, _dir) = lab('s', 3, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    // h1 is cut off from everything (its underlay link down)
    lab.on_host(1, &["ip", "link", "set", "eth0", "down"]);
    // meanwhile h3 leaves for good, h4 joins, and etcd compacts its history
    let h3 = lab.subnet(3).unwrap();
    lab.stop(3, "KILL");
    lab.etcd().ctl(&["del", &lease_key(&h3)]);
    let h4 = lab.add_host();
    lab.start(h4);
    assert!(wait_until(LONG, || lab.ready(h4)));
    let rev = lab.etcd().ctl(&["get", "x", "-w", "json"]);
    let rev: serde_json::Value = serde_json::from_str(&rev).unwrap();
    let rev = rev["header"]["revision"].as_i64().unwrap().to_string();
    lab.etcd().ctl(&["compact", &rev]);
    // long enough for h1's HTTP/2 keep-alive to give up on the stalled connection, so that
    // h1 must reconnect and re-list past the compaction
    std::thread::sleep(Duration::from_secs(20));
    // healed: h1 drops h3 and adds h4
    lab.on_host(1, &["ip", "link", "set", "eth0", "up"]);
    let h4_subnet = lab.subnet(h4).unwrap();
    assert!(
        wait_until(LONG, || {
            let routes = routes_text(&lab, 1);
            !routes.contains(&format!("{h3} via")) && routes.contains(&format!("{h4_subnet} via"))
        }),
        "{}\n{}",
        lab.on_host(1, &["ip", "route"]),
        lab.log(1)
    );
    assert!(
        lab.log(1).contains("lease watch interrupted"),
        "{}",
        lab.log(1)
    );
    assert!(lab.running(1));
}

#[test]
fn bad_interfaces_and_public_ips_a_second_instance_credentials_and_no_backend() {
    let (mut lab, _dir) = lab('m', 2, Some(DEFAULT_CONFIG));
    let bin = lab.spec.flanneld.display().to_string();
    let ns = lab.hosts[0].ns.clone();
    // each refused start ends by itself; `timeout` only guards the test against a daemon
    // that wrongly keeps running
    let run = |lab: &flannel_lab::lab::Lab, drop_iface: bool, extra: &[&str]| {
        let mut args = vec!["timeout".to_string(), "20".into(), bin.clone()];
        args.extend(
            lab.flags(1)
                .into_iter()
                .filter(|f| !(drop_iface && f == "-iface=eth0")),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        try_nsexec(&ns, &args)
    };
    // interfaces and public IPs other nodes could never reach: refused, no subnet used up
    for (extra, want) in [
        (
            vec!["-iface=lo"],
            "failed to find IPv4 address for interface lo",
        ),
        (vec!["-iface=127.0.0.1"], "127.0.0.1 is a loopback address"),
        (
            vec!["-public-ip=192.168.99.99"],
            "error looking up interface 192.168.99.99: no interface has that address",
        ),
    ] {
        let (ok, out) = run(&lab, true, &extra);
        assert!(!ok, "{extra:?} was accepted: {out}");
        assert!(out.contains(want), "{extra:?}: {out}");
    }
    let (ok, out) = run(&lab, true, &["-public-ip=127.0.0.1"]);
    assert!(
        !ok && out.contains("-public-ip 127.0.0.1 is a loopback address"),
        "{out}"
    );
    assert!(leases(&lab).is_empty(), "a refused start took a subnet");

    // credentials for an etcd without authentication: a warning, and it runs; the password
    // is not logged
    lab.start(1);
    lab.start_with_flags(2, &["-etcd-username=flannel", "-etcd-password=s3cret"]);
    lab.wait_ready(LONG);
    wait_converged(&lab);
    assert!(
        lab.log(2).contains("etcd has authentication disabled"),
        "{}",
        lab.log(2)
    );
    assert!(!lab.log(2).contains("s3cret"));

    // a second instance on host 1 is refused before it touches anything
    let pid = lab.pid(1).unwrap();
    let (ok, out) = run(&lab, false, &[]);
    assert!(!ok, "a second instance started: {out}");
    assert!(
        out.contains(&format!(
            "another flanneld-rs (PID {pid}) is already running on this node"
        )),
        "{out}"
    );
    assert!(out.contains("the lock of this network namespace"), "{out}");
    // the lock is the node's (its network namespace), not the subnet file's directory
    let other = lab.dir().join("elsewhere").join("subnet.env");
    let other_flag = format!("-subnet-file={}", other.display());
    let (ok, out) = run(&lab, false, &[&other_flag]);
    assert!(
        !ok,
        "a second instance with another -subnet-file started: {out}"
    );
    assert!(
        out.contains(&format!(
            "another flanneld-rs (PID {pid}) is already running on this node"
        )),
        "{out}"
    );
    assert!(!other.exists());
    assert!(lab.running(1));
    std::thread::sleep(Duration::from_millis(300));
    assert!(converged(&lab), "the first instance's state was disturbed");
}

#[test]
fn lease_show_says_what_it_looked_for_and_where() {
    let (lab, _dir) = lab('o', 1, Some(DEFAULT_CONFIG));
    let value = r#"{"PublicIP":"192.168.77.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"}}"#;
    lab.etcd().ctl(&["put", &lease_key("10.200.9.0/24"), value]);
    let bin = env!("CARGO_BIN_EXE_flanneld-rs");
    let endpoint = format!("-etcd-endpoints=http://{ETCD_IP}:2379");
    let show = |extra: &[&str]| {
        let mut args = vec![bin, "lease", "show", endpoint.as_str()];
        args.extend_from_slice(extra);
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.hosts[0].ns])
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let prefix = format!("-etcd-prefix={DEFAULT_PREFIX}");
    let (code, err) = show(&[&prefix, "--subnet", "10.200.77.0/24"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "no lease for subnet 10.200.77.0/24 under {DEFAULT_PREFIX}/subnets (etcd v3 keyspace)"
        )),
        "{err}"
    );
    let (code, err) = show(&["-etcd-prefix=/coreos.com/network"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("nothing under /coreos.com/network in the etcd v3 keyspace"),
        "{err}"
    );
    assert!(err.contains("check -etcd-prefix"), "{err}");
    // v2 asked of a cluster whose data is in v3 (and whose v2 API is off)
    let (code, err) = show(&[&prefix, "-etcd-api=v2"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("-etcd-api=v3"), "{err}");
    assert!(
        !err.contains("Did you create your config using etcdv3"),
        "{err}"
    );
}

/// The ipip backend on a kernel without the ipip module (this machine's: the VM lane's ipip
/// tests run it where the kernel has it) stops start-up saying which module, instead of the
/// kernel's bare "Operation not supported". On a kernel that has the module the backend
/// starts: that is asserted instead.
#[test]
fn ipip_without_the_kernels_module_says_which_module() {
    const IPIP: &str = r#"{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"ipip"}}"#;
    let (mut lab, _dir) = lab('Z', 1, Some(IPIP));
    let ns = lab.hosts[0].ns.clone();
    let (has_ipip, _) = try_nsexec(
        &ns,
        &[
            "ip",
            "link",
            "add",
            "probe0",
            "type",
            "ipip",
            "local",
            "192.168.77.1",
        ],
    );
    lab.start(1);
    if has_ipip {
        nsexec(&ns, &["ip", "link", "del", "probe0"]);
        lab.wait_ready(LONG);
        assert!(lab.log(1).contains("IPIP config: DirectRouting=false"));
        return;
    }
    assert!(wait_until(LONG, || !lab.running(1)), "{}", lab.log(1));
    assert!(
        lab.log(1)
            .contains("the kernel has no ipip module (modprobe ipip)"),
        "{}",
        lab.log(1)
    );
    let links = nsexec(&ns, &["ip", "-o", "link", "show"]);
    assert!(!links.contains("flannel.ipip"), "{links}");
}

/// VXLAN with DirectRouting: a peer on the same segment gets a plain route through the
/// external interface, which the kernel flushes, unannounced, when the interface goes down
/// (the host-gw finding of the chaos run, issue 31). Put back by the repair once it is up.
#[test]
fn direct_routes_flushed_by_the_link_going_down_are_put_back_when_it_comes_up() {
    const DIRECT: &str =
        r#"{"Network":"10.200.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let (mut lab, _dir) = lab('L', 2, Some(DIRECT));
    lab.start_all();
    lab.wait_ready(LONG);
    let direct = |lab: &Lab| {
        let routes = lab.on_host(1, &["ip", "route"]);
        let sn2 = lab.subnet(2).unwrap_or_default();
        routes.lines().any(|l| {
            l.starts_with(&sn2) && l.contains(&format!("via {} dev eth0", lab.hosts[1].ip))
        })
    };
    assert!(wait_until(LONG, || direct(&lab)), "{}", lab.log(1));
    let before = repairs(&lab, 1);
    lab.on_host(1, &["ip", "link", "set", "eth0", "down"]);
    assert!(
        !direct(&lab),
        "the kernel keeps routes through a link that is down"
    );
    lab.on_host(1, &["ip", "link", "set", "eth0", "up"]);
    assert!(
        wait_until(Duration::from_secs(3), || repairs(&lab, 1) > before
            && direct(&lab)),
        "{}\n{}",
        lab.on_host(1, &["ip", "route"]),
        lab.log(1)
    );
}
