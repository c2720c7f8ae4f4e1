//! End-to-end: flanneld-rs on several hosts of the lab (network namespaces, a real etcd,
//! CNI-wired pods), checked against what upstream flanneld does (../shared/reference).
//! Needs root (CI runs as root); every lab lives in namespaces of its own.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::time::Duration;

use common::*;
use flannel_lab::expected;
use flannel_lab::lab::{wait_until, DEFAULT_CONFIG, DEFAULT_PREFIX, ETCD_IP};

#[test]
fn three_hosts_match_upstream_and_pods_ping_across() {
    let (mut lab, _dir) = lab('a', 3, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);

    // lease values byte-identical in form to upstream's
    let leases = leases(&lab);
    assert_eq!(leases.len(), 3);
    for (key, value) in &leases {
        assert!(key.starts_with("10.200.") && key.ends_with("-24"), "{key}");
        let j: serde_json::Value = serde_json::from_str(value).unwrap();
        let expected = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            j["PublicIP"].as_str().unwrap(),
            j["BackendData"]["VtepMAC"].as_str().unwrap()
        );
        assert_eq!(value, &expected);
    }

    for i in 1..=3 {
        let subnet = lab.subnet(i).unwrap();
        let first = subnet.replace(".0/24", ".1/24");
        assert_eq!(
            lab.subnet_env(i),
            format!("FLANNEL_NETWORK=10.200.0.0/16\nFLANNEL_SUBNET={first}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
        );
        assert_eq!(
            lab.on_host(i, &["iptables", "-t", "nat", "-S"]),
            expected::nat_listing("10.200.0.0/16", &subnet)
        );
        let filter = lab.on_host(i, &["iptables", "-S", "FLANNEL-FWD"]);
        assert_eq!(filter, expected::forward_chain("10.200.0.0/16"));
        let link = lab.on_host(i, &["ip", "-d", "link", "show", "flannel.1"]);
        let ip = lab.hosts[i - 1].ip;
        assert!(
            link.contains(&format!(
                "vxlan id 1 local {ip} dev eth0 srcport 0 0 dstport 8472 nolearning"
            )),
            "{link}"
        );
        assert!(lab
            .on_host(i, &["ip", "-4", "addr", "show", "dev", "flannel.1"])
            .contains(&format!("inet {}/32", subnet.split('/').next().unwrap())));
    }

    // healthz, readyz, metrics, 404 — upstream's bodies
    assert_eq!(
        lab.http(1, "/healthz", "GET"),
        Some((200, "flanneld is running".into()))
    );
    assert_eq!(
        lab.http(1, "/healthz", "POST"),
        Some((200, "flanneld is running".into()))
    );
    assert_eq!(
        lab.http(1, "/readyz", "GET"),
        Some((200, "flanneld is ready".into()))
    );
    assert_eq!(
        lab.http(1, "/", "GET"),
        Some((404, "404 page not found\n".into()))
    );
    let (code, metrics) = lab.http(1, "/metrics", "GET").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("\nflanneld_ready 1\n"), "{metrics}");
    assert!(metrics.contains("\nflanneld_peers 2\n"), "{metrics}");

    // one pod per host, every pair pings
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert_eq!(lab.ping_matrix(), vec![]);

    // lease show, text and JSON, on h1
    let bin = env!("CARGO_BIN_EXE_flanneld-rs");
    let endpoints = format!("-etcd-endpoints=http://{ETCD_IP}:2379");
    let prefix = format!("--etcd-prefix={DEFAULT_PREFIX}");
    let text = lab.on_host(1, &[bin, "lease", "show", &endpoints, &prefix]);
    let h1_subnet = lab.subnet(1).unwrap();
    assert!(
        text.contains("network config: Network=10.200.0.0/16 SubnetLen=24"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{h1_subnet} *")) && l.contains("192.168.77.1")),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.contains(" vxlan ")).count(),
        3,
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &lab.on_host(1, &[bin, "lease", "show", "--json", &endpoints, &prefix]),
    )
    .unwrap();
    let rows = json["leases"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let mine: Vec<_> = rows.iter().filter(|r| r["this_node"] == true).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["subnet"], h1_subnet.as_str());
    assert!(mine[0]["ttl_seconds"].as_u64().unwrap() > 86_000);
    let one = lab.on_host(
        1,
        &[
            bin,
            "lease",
            "show",
            "--json",
            &endpoints,
            &prefix,
            &format!("--subnet={h1_subnet}"),
        ],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&one).unwrap()["leases"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn sigterm_keeps_state_and_restarts_keep_subnet_and_mac() {
    let (mut lab, _dir) = lab('b', 2, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    let before = leases(&lab);
    let env_before = lab.subnet_env(1);
    let h2_view = actual_kernel(&lab, 2);

    assert_eq!(
        lab.stop(1, "TERM"),
        Some(0),
        "SIGTERM exits 0: {}",
        lab.log(1)
    );
    assert!(lab.log(1).contains("Exiting cleanly"));
    // nothing torn down: device, entries, rules, subnet.env, lease
    assert!(lab
        .on_host(1, &["ip", "link", "show", "flannel.1"])
        .contains("flannel.1"));
    assert_eq!(actual_kernel(&lab, 1), expected_kernel(&lab, 1));
    assert!(lab
        .on_host(1, &["iptables", "-t", "nat", "-S"])
        .contains("FLANNEL-POSTRTG"));
    assert_eq!(lab.subnet_env(1), env_before);
    assert_eq!(leases(&lab), before);

    lab.start(1);
    lab.wait_ready(LONG);
    assert_eq!(lab.subnet_env(1), env_before, "same subnet after a restart");
    assert_eq!(
        leases(&lab),
        before,
        "same lease value: same subnet and VTEP MAC"
    );
    assert_eq!(actual_kernel(&lab, 2), h2_view, "the peer saw no change");

    // SIGKILL and the device gone too: the MAC comes back from the lease
    assert_eq!(lab.stop(1, "KILL"), None);
    lab.on_host(1, &["ip", "link", "del", "flannel.1"]);
    lab.start(1);
    lab.wait_ready(LONG);
    assert_eq!(
        leases(&lab),
        before,
        "VTEP MAC kept through device re-creation"
    );
    assert_eq!(actual_kernel(&lab, 2), h2_view);
    wait_converged(&lab);
}

#[test]
fn lease_deleted_is_recreated_and_removed_host_disappears() {
    let (mut lab, _dir) = lab('c', 3, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    for i in 1..=3 {
        lab.add_pod(i);
    }
    let before = leases(&lab);
    let h2_key = format!("{}-24", lab.subnet(2).unwrap().trim_end_matches("/24"));

    // an operator deletes h2's lease: h2 writes it again, everybody converges back
    lab.etcd()
        .ctl(&["del", &format!("{DEFAULT_PREFIX}/subnets/{h2_key}")]);
    assert!(
        wait_until(LONG, || leases(&lab) == before),
        "lease re-created: {:?}\n{}",
        leases(&lab),
        lab.log(2)
    );
    assert!(lab.log(2).contains("re-creating it"));
    wait_converged(&lab);
    assert_eq!(lab.ping_matrix(), vec![]);

    // a route deleted by hand comes back
    let h3_subnet = lab.subnet(3).unwrap();
    lab.on_host(1, &["ip", "route", "del", &h3_subnet]);
    wait_converged(&lab);

    // h3 leaves for good: process stopped, lease deleted; its entries go from the others
    lab.stop(3, "KILL");
    let h3_key = format!("{}-24", h3_subnet.trim_end_matches("/24"));
    lab.etcd()
        .ctl(&["del", &format!("{DEFAULT_PREFIX}/subnets/{h3_key}")]);
    let gone = |i: usize| {
        let (neigh, fdb, routes) = actual_kernel(&lab, i);
        let gw = h3_subnet.split('/').next().unwrap();
        !neigh.iter().any(|l| l.starts_with(&format!("{gw} ")))
            && fdb.len() == 1
            && !routes.iter().any(|r| r.starts_with(&h3_subnet))
    };
    assert!(
        wait_until(LONG, || gone(1) && gone(2)),
        "{:?} {:?}",
        actual_kernel(&lab, 1),
        actual_kernel(&lab, 2)
    );
    assert!(lab.running(1) && lab.running(2));
}

#[test]
fn etcd_outage_nobody_exits_and_a_late_host_converges() {
    let (mut lab, _dir) = lab('d', 2, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    lab.etcd_mut().stop();
    // a host added while etcd is down waits for it
    let h3 = lab.add_host();
    lab.start(h3);
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        lab.running(1) && lab.running(2) && lab.running(h3),
        "no flanneld exits while etcd is down"
    );
    assert_eq!(
        lab.http(1, "/healthz", "GET"),
        Some((200, "flanneld is running".into()))
    );
    assert!(!lab.ready(h3));
    lab.etcd_mut().restart();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    lab.add_pod(1);
    lab.add_pod(h3);
    assert_eq!(lab.ping_matrix(), vec![]);
}

#[test]
fn config_missing_at_start_then_malformed_then_valid() {
    let (mut lab, _dir) = lab('e', 1, None);
    lab.start(1);
    assert!(wait_until(LONG, || lab.log(1).contains(
        "Couldn't fetch network config: flannel config not found in etcd store"
    )));
    assert_eq!(
        lab.http(1, "/healthz", "GET"),
        Some((200, "flanneld is running".into()))
    );
    assert_eq!(
        lab.http(1, "/readyz", "GET"),
        Some((503, "flanneld is not ready yet".into()))
    );
    lab.etcd().ctl(&[
        "put",
        &format!("{DEFAULT_PREFIX}/config"),
        r#"{"Network":"10.200.0.0/29"}"#,
    ]);
    assert!(wait_until(LONG, || lab.log(1).contains(
        "Couldn't fetch network config: network is too small. Minimum useful network prefix is /28"
    )));
    assert!(lab.running(1));
    lab.etcd()
        .ctl(&["put", &format!("{DEFAULT_PREFIX}/config"), DEFAULT_CONFIG]);
    lab.wait_ready(LONG);
    assert!(lab
        .log(1)
        .contains("Found network config - Backend type: vxlan"));
    assert!(lab.log(1).contains("Wrote subnet file to"));
}

#[test]
fn a_cluster_on_the_etcd_v2_keys_api_as_the_ansible_role_built_it() {
    let (mut lab, _dir) = lab_with_etcd('f', 2, None, &["--enable-v2=true"]);
    let etcd_ns = format!("{}-etcd", lab.spec.name);
    let v2 = |method: &str, path: &str, data: &[&str]| {
        let url = format!("http://127.0.0.1:2379/v2/keys{DEFAULT_PREFIX}{path}");
        let mut args = vec!["curl", "-s", "-X", method, url.as_str()];
        for d in data {
            args.extend(["--data-urlencode", d]);
        }
        flannel_lab::lab::nsexec(&etcd_ns, &args)
    };
    // the role writes the config with `etcdctl set` (v2)
    v2("PUT", "/config", &[&format!("value={DEFAULT_CONFIG}")]);
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(
        lab.log(1).contains("Using the etcd v2 API"),
        "{}",
        lab.log(1)
    );
    let listing: serde_json::Value =
        serde_json::from_str(&v2("GET", "/subnets?recursive=true", &[])).unwrap();
    let nodes = listing["node"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{listing}");
    for n in nodes {
        assert!(n["ttl"].as_i64().unwrap() > 86_000, "{n}");
        assert!(n["value"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"PublicIP":"192.168.77."#));
    }
    // each host programs the other
    for (me, other) in [(1, 2), (2, 1)] {
        let subnet = lab.subnet(other).unwrap();
        assert!(
            wait_until(LONG, || routes_text(&lab, me)
                .contains(&format!("{subnet} via"))),
            "{}",
            lab.log(me)
        );
    }
    lab.add_pod(1);
    lab.add_pod(2);
    assert_eq!(lab.ping_matrix(), vec![]);
    // lease show reads the v2 keyspace too
    let bin = env!("CARGO_BIN_EXE_flanneld-rs");
    let shown = lab.on_host(
        1,
        &[
            bin,
            "lease",
            "show",
            "-etcd-api=v2",
            &format!("-etcd-endpoints=http://{ETCD_IP}:2379"),
            &format!("-etcd-prefix={DEFAULT_PREFIX}"),
        ],
    );
    assert_eq!(
        shown.lines().filter(|l| l.contains(" vxlan ")).count(),
        2,
        "{shown}"
    );

    // migrate to v3, restart both on v3: same subnets
    let before = (lab.subnet(1), lab.subnet(2));
    let migrate = lab.on_host(
        1,
        &[
            bin,
            "migrate",
            "--from",
            "v2",
            "--to",
            "v3",
            &format!("-etcd-endpoints=http://{ETCD_IP}:2379"),
            &format!("-etcd-prefix={DEFAULT_PREFIX}"),
        ],
    );
    assert!(
        migrate.contains("3 copied, 0 unchanged, 0 conflicts"),
        "{migrate}"
    );
    for i in 1..=2 {
        lab.stop(i, "TERM");
        lab.start(i);
    }
    lab.wait_ready(LONG);
    assert!(
        lab.log(1).contains("Using the etcd v3 API"),
        "{}",
        lab.log(1)
    );
    assert_eq!((lab.subnet(1), lab.subnet(2)), before);
    wait_converged(&lab);
    assert_eq!(lab.ping_matrix(), vec![]);
}

#[test]
fn systemd_notifications_ready_and_stopping() {
    let (mut lab, dir) = lab('r', 1, Some(DEFAULT_CONFIG));
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(LONG)).unwrap();
    let flanneld = lab.spec.flanneld.clone();
    lab.start_binary(
        1,
        &flanneld,
        &[("NOTIFY_SOCKET".into(), socket_path.display().to_string())],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(lab.ready(1), "READY=1 is sent once /readyz says ready");
    lab.stop(1, "TERM");
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn alloc_backend_leases_a_subnet_and_programs_nothing() {
    let config = r#"{"Network":"10.200.0.0/16","Backend":{"Type":"alloc"}}"#;
    let (mut lab, _dir) = lab('k', 2, Some(config));
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(lab
        .log(1)
        .contains("Found network config - Backend type: alloc"));
    // upstream's alloc lease: PublicIP only
    let leases = leases(&lab);
    assert_eq!(leases.len(), 2, "{leases:?}");
    for i in 1..=2 {
        let key = lab.subnet(i).unwrap().replace('/', "-");
        assert_eq!(
            leases[&key],
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null}}"#,
                lab.hosts[i - 1].ip
            )
        );
        let env = lab.subnet_env(i);
        // MTU: the interface's, nothing taken for encapsulation
        let mtu = lab.on_host(i, &["cat", "/sys/class/net/eth0/mtu"]);
        assert!(
            env.contains(&format!("FLANNEL_MTU={}\n", mtu.trim())),
            "{env}"
        );
        assert!(env.contains("FLANNEL_NETWORK=10.200.0.0/16\n"), "{env}");
        // no data path: no device, no route to the other node's subnet
        let links = lab.on_host(i, &["ip", "-o", "link"]);
        assert!(!links.contains("flannel."), "{links}");
        let other = lab.subnet(3 - i).unwrap();
        assert!(!lab.on_host(i, &["ip", "route"]).contains(&other));
    }
    // a type flanneld-rs does not have still gets upstream's message
    lab.etcd().ctl(&[
        "put",
        &format!("{DEFAULT_PREFIX}/config"),
        r#"{"Network":"10.200.0.0/16","Backend":{"Type":"bogus"}}"#,
    ]);
    lab.stop(1, "TERM");
    lab.start(1);
    assert!(wait_until(LONG, || !lab.running(1)), "{}", lab.log(1));
    assert!(
        lab.log(1).contains("unknown backend type: bogus"),
        "{}",
        lab.log(1)
    );
}

#[test]
fn ip_blackhole_route_is_kept_and_removed_when_the_flag_is_dropped() {
    let (mut lab, _dir) = lab('q', 1, Some(DEFAULT_CONFIG));
    lab.start_with_flags(1, &["-ip-blackhole-route", "-iptables-resync=1"]);
    lab.wait_ready(LONG);
    let subnet = lab.subnet(1).unwrap();
    let has = |lab: &flannel_lab::lab::Lab| {
        lab.on_host(1, &["ip", "route"])
            .lines()
            .any(|l| l.starts_with(&format!("blackhole {subnet}")))
    };
    assert!(wait_until(LONG, || has(&lab)), "{}", lab.log(1));
    // deleted: back within the resync period, as upstream
    lab.on_host(1, &["ip", "route", "del", "blackhole", &subnet]);
    assert!(wait_until(Duration::from_secs(10), || has(&lab)));
    // the flag dropped: gone after the restart
    lab.stop(1, "TERM");
    lab.start(1);
    lab.wait_ready(LONG);
    assert!(wait_until(LONG, || !has(&lab)), "{}", lab.log(1));
}
