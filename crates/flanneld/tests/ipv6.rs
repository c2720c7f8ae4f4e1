//! IPv6 in the lab (every host has `192.168.77.N` and `fd77::N` on its underlay): a
//! dual-stack VXLAN mesh, IPv6-only VXLAN, dual-stack host-gw. Pods ping each other in every
//! family the config enables; the kernel holds upstream's entries for each family
//! (`flannel-v6.1`: onlink route, permanent NDP entry, FDB entry to the PublicIPv6); leases,
//! subnet.env and the rules are upstream's; drift is repaired and a restart deletes nothing.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use flannel_lab::lab::{wait_until, Lab};

const DUAL: &str = r#"{"Network":"10.200.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:200::/56","Backend":{"Type":"vxlan"}}"#;
const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:200::/56","Backend":{"Type":"vxlan"}}"#;
const DUAL_HOST_GW: &str = r#"{"Network":"10.200.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:200::/56","Backend":{"Type":"host-gw"}}"#;

fn lease_json(lab: &Lab, key: &str) -> serde_json::Value {
    serde_json::from_str(&leases(lab)[key]).unwrap()
}

/// The key of host `i`'s lease.
fn key_of(lab: &Lab, i: usize) -> String {
    let v4 = lab
        .subnet(i)
        .map_or("0.0.0.0-0".to_string(), |s| s.replace('/', "-"));
    format!("{v4}&{}", lab.subnet6(i).unwrap().replace('/', "-"))
}

/// What upstream programs on `flannel-v6.1` of host `i` for every other host: routes, NDP
/// entries, FDB entries (as `ip -6 route`, `ip -6 neigh`, `bridge fdb` print them).
fn expected_v6(lab: &Lab, i: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut routes, mut neigh, mut fdb) = (vec![], vec![], vec![]);
    for j in (1..=lab.hosts.len()).filter(|&j| j != i) {
        let sn6 = lab.subnet6(j).unwrap();
        let gw = sn6.split('/').next().unwrap().to_string();
        let mac = lease_json(lab, &key_of(lab, j))["BackendV6Data"]["VtepMAC"]
            .as_str()
            .unwrap()
            .to_string();
        routes.push(format!(
            "{sn6} via {gw} dev flannel-v6.1 metric 1024 onlink pref medium"
        ));
        neigh.push(format!("{gw} lladdr {mac} PERMANENT"));
        fdb.push(format!("{mac} dst {} self permanent", lab.ip6(j)));
    }
    routes.sort();
    neigh.sort();
    fdb.sort();
    (routes, neigh, fdb)
}

fn kernel_v6(lab: &Lab, i: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
    let routes = sorted_lines(&lab.on_host(i, &["ip", "-6", "route"]))
        .into_iter()
        .filter(|l| l.contains(" via ") && l.contains("dev flannel-v6.1"))
        .collect();
    let neigh =
        sorted_lines(&lab.on_host(i, &["ip", "-6", "neigh", "show", "dev", "flannel-v6.1"]));
    let fdb = sorted_lines(&lab.on_host(i, &["bridge", "fdb", "show", "dev", "flannel-v6.1"]))
        .into_iter()
        .filter(|l| l.contains(" dst "))
        .collect();
    (routes, neigh, fdb)
}

fn v6_meshed(lab: &Lab) -> bool {
    (1..=lab.hosts.len()).all(|i| kernel_v6(lab, i) == expected_v6(lab, i))
}

#[test]
fn dual_stack_vxlan_mesh_pods_ping_in_both_families() {
    let (mut lab, _dir) = lab('a', 3, Some(DUAL));
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(
        wait_until(LONG, || v6_meshed(&lab)),
        "{:?}\n{:?}\n{}",
        kernel_v6(&lab, 1),
        expected_v6(&lab, 1),
        lab.log(1)
    );
    // the IPv4 side as before
    for i in 1..=3 {
        let got: Vec<String> = lab
            .on_host(i, &["ip", "route"])
            .lines()
            .map(without_nhid)
            .collect();
        for j in (1..=3).filter(|&j| j != i) {
            let sn = lab.subnet(j).unwrap();
            let gw = sn.split('/').next().unwrap();
            let want = format!("{sn} via {gw} dev flannel.1 onlink");
            assert!(got.contains(&want), "h{i}: {want} in {got:?}");
        }
    }
    // leases in upstream's form, keys with '&'
    for i in 1..=3 {
        let key = key_of(&lab, i);
        let value = &leases(&lab)[&key];
        let v = lease_json(&lab, &key);
        let (mac, mac6) = (
            v["BackendData"]["VtepMAC"].as_str().unwrap(),
            v["BackendV6Data"]["VtepMAC"].as_str().unwrap(),
        );
        assert_eq!(
            *value,
            format!(
                r#"{{"PublicIP":"192.168.77.{i}","PublicIPv6":"fd77::{i}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
            )
        );
        assert!(
            key.starts_with("10.200.") && key.contains("-24&fd00:200:0:") && key.ends_with("::-64"),
            "{key}"
        );
    }
    // subnet.env in upstream's order, with the MTU that fits both tunnels (upstream: 1450)
    let env = lab.subnet_env(1);
    let keys: Vec<&str> = env.lines().map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "FLANNEL_NETWORK",
            "FLANNEL_SUBNET",
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ"
        ]
    );
    assert!(
        env.contains("FLANNEL_IPV6_NETWORK=fd00:200::/56\n"),
        "{env}"
    );
    assert!(env.contains("FLANNEL_MTU=1430\n"), "{env}");
    // the v6 device: its own MAC, MTU 1500 - 70, local = PublicIPv6, the /128 gateway
    // address usable at once (no duplicate address detection)
    let link = lab.on_host(1, &["ip", "-d", "link", "show", "flannel-v6.1"]);
    assert!(link.contains("mtu 1430"), "{link}");
    assert!(link.contains("vxlan id 1 local fd77::1 dev eth0"), "{link}");
    let sn6 = lab.subnet6(1).unwrap();
    let gw6 = sn6.split('/').next().unwrap();
    let addr = lab.on_host(1, &["ip", "-6", "addr", "show", "dev", "flannel-v6.1"]);
    let line = addr
        .lines()
        .find(|l| l.contains(&format!("inet6 {gw6}/128")))
        .unwrap_or_else(|| panic!("{addr}"));
    assert!(!line.contains("tentative"), "{addr}");
    // rules for both families: the IPv6 ones exactly upstream v0.28.9's `masqIP6Rules` and
    // forward rules, in order
    let v6_rules: Vec<String> = lab
        .on_host(1, &["ip6tables-save"])
        .lines()
        .filter(|l| l.contains("flanneld"))
        .map(String::from)
        .collect();
    let (n, p) = ("fd00:200::/56", sn6.as_str());
    let c = r#"-m comment --comment "flanneld"#;
    let want = vec![
        format!(r#"-A FORWARD {c} forward" -j FLANNEL-FWD"#),
        format!(r#"-A FLANNEL-FWD -s {n} {c} forward" -j ACCEPT"#),
        format!(r#"-A FLANNEL-FWD -d {n} {c} forward" -j ACCEPT"#),
        format!(r#"-A POSTROUTING {c} masq" -j FLANNEL-POSTRTG"#),
        format!(r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {p} -d {n} {c} masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {n} -d {p} {c} masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {n} -d {p} {c} masq" -j RETURN"#),
        format!(
            r#"-A FLANNEL-POSTRTG -s {n} ! -d ff00::/8 {c} masq" -j MASQUERADE --random-fully"#
        ),
        format!(r#"-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} masq" -j MASQUERADE --random-fully"#),
    ];
    assert_eq!(v6_rules, want);
    assert!(lab
        .on_host(1, &["iptables-save"])
        .contains("-A FLANNEL-POSTRTG -s 10.200.0.0/16 ! -d 224.0.0.0/4"));

    let (_, metrics) = lab.http(1, "/metrics", "GET").unwrap();
    assert!(
        metrics.contains("\nflanneld_peers 2\n") && metrics.contains("\nflanneld_peers_ipv6 2\n"),
        "{metrics}"
    );

    // pods with an address of each family ping each other in both
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert!(lab.pods.iter().all(|p| p.ip6.is_some()));
    // a new pod's first IPv6 packet may wait for neighbour discovery: every pair must
    // answer within a few seconds
    wait_until(Duration::from_secs(10), || lab.ping_matrix().is_empty());
    assert_eq!(lab.ping_matrix(), vec![]);

    // drift on the v6 side: a route, an NDP entry deleted; a stray route added
    let h2 = lab.subnet6(2).unwrap();
    lab.on_host(1, &["ip", "-6", "route", "del", &h2]);
    let gw2 = h2.split('/').next().unwrap().to_string();
    lab.on_host(
        1,
        &["ip", "-6", "neigh", "del", &gw2, "dev", "flannel-v6.1"],
    );
    assert!(
        wait_until(Duration::from_secs(5), || v6_meshed(&lab)),
        "{:?}",
        kernel_v6(&lab, 1)
    );
    lab.on_host(
        1,
        &[
            "ip",
            "-6",
            "route",
            "add",
            "fd00:200:0:ee::/64",
            "via",
            "fd00:200:0:ee::",
            "dev",
            "flannel-v6.1",
            "onlink",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(25), || v6_meshed(&lab)),
        "{:?}",
        kernel_v6(&lab, 1)
    );

    // a restart (SIGTERM) deletes no live peer's v6 entry
    let mut monitor = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.hosts[0].ns,
            "ip",
            "-6",
            "monitor",
            "route",
            "neigh",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.stop(1, "TERM");
    lab.start(1);
    lab.wait_ready(LONG);
    std::thread::sleep(Duration::from_millis(500));
    let _ = monitor.kill();
    let out = monitor.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    let deleted: Vec<&str> = seen.lines().filter(|l| l.starts_with("Deleted")).collect();
    assert!(deleted.is_empty(), "{deleted:?}");
    assert!(v6_meshed(&lab));
    // a new pod's first IPv6 packet may wait for neighbour discovery: every pair must
    // answer within a few seconds
    wait_until(Duration::from_secs(10), || lab.ping_matrix().is_empty());
    assert_eq!(lab.ping_matrix(), vec![]);
}

#[test]
fn ipv6_only_vxlan_mesh() {
    let (mut lab, _dir) = lab('b', 2, Some(V6_ONLY));
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(wait_until(LONG, || v6_meshed(&lab)), "{}", lab.log(1));
    let env = lab.subnet_env(1);
    assert!(
        !env.contains("FLANNEL_NETWORK") && !env.contains("FLANNEL_SUBNET="),
        "{env}"
    );
    assert!(env.contains("FLANNEL_MTU=1430\n"), "{env}");
    for i in 1..=2 {
        let key = key_of(&lab, i);
        assert!(key.starts_with("0.0.0.0-0&fd00:200:0:"), "{key}");
        let v = lease_json(&lab, &key);
        assert_eq!(v["PublicIP"], "0.0.0.0");
        assert_eq!(v["PublicIPv6"], format!("fd77::{i}"));
        assert!(v.get("BackendData").is_none(), "{v}");
    }
    assert_ne!(key_of(&lab, 1), key_of(&lab, 2));
    assert!(!lab.on_host(1, &["ip", "-o", "link"]).contains("flannel.1"));
    lease_show_prints_what_applies(&lab);
    for i in 1..=2 {
        lab.add_pod(i);
    }
    assert!(lab
        .pods
        .iter()
        .all(|p| p.ip.is_unspecified() && p.ip6.is_some()));
    // a new pod's first IPv6 packet may wait for neighbour discovery: every pair must
    // answer within a few seconds
    wait_until(Duration::from_secs(10), || lab.ping_matrix().is_empty());
    assert_eq!(lab.ping_matrix(), vec![]);
}

/// `lease show` on an IPv6-only cluster: the IPv6 subnets, PublicIPv6 and config, no zero
/// address for the IPv4 side it does not have (issue 32), and `--subnet` in either family.
fn lease_show_prints_what_applies(lab: &Lab) {
    let bin = env!("CARGO_BIN_EXE_flanneld-rs");
    let endpoints = format!("-etcd-endpoints=http://{}:2379", flannel_lab::lab::ETCD_IP);
    let prefix = format!("-etcd-prefix={}", flannel_lab::lab::DEFAULT_PREFIX);
    let args = |extra: &[&'static str]| {
        let mut args = vec![bin, "lease", "show", endpoints.as_str(), prefix.as_str()];
        args.extend_from_slice(extra);
        args
    };
    let show = |extra: &[&'static str]| lab.on_host(1, &args(extra));
    let text = show(&[]);
    assert!(
        !text.contains("0.0.0.0") && !text.contains("SubnetLen=0"),
        "{text}"
    );
    assert!(text.contains("IPv6Network=fd00:200::/56"), "{text}");
    let h1 = lab.subnet6(1).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with(&format!("{h1} *"))
            && l.contains("fd77::1")
            && l.contains(" vxlan ")),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&show(&["--json"])).unwrap();
    assert!(json["config"].get("network").is_none(), "{json}");
    assert_eq!(json["config"]["ipv6_network"], "fd00:200::/56");
    for row in json["leases"].as_array().unwrap() {
        assert!(
            row["subnet"].is_null() && row["public_ip"].is_null(),
            "{row}"
        );
        assert!(
            row["ipv6_subnet"]
                .as_str()
                .unwrap()
                .starts_with("fd00:200:0:"),
            "{row}"
        );
    }
    let subnet_flag = format!("--subnet={h1}");
    let mut one_args = args(&["--json"]);
    one_args.push(&subnet_flag);
    let one: serde_json::Value = serde_json::from_str(&lab.on_host(1, &one_args)).unwrap();
    assert_eq!(one["leases"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["leases"][0]["ipv6_subnet"], h1.as_str());
    let (ok, none) = flannel_lab::lab::try_nsexec(&lab.hosts[0].ns, &args(&["--subnet=0.0.0.0/0"]));
    assert!(
        !ok && none.contains("no lease for subnet 0.0.0.0/0"),
        "{none}"
    );
}

#[test]
fn dual_stack_host_gw() {
    let (mut lab, _dir) = lab('c', 3, Some(DUAL_HOST_GW));
    lab.start_all();
    lab.wait_ready(LONG);
    let routes6 = |lab: &Lab, i: usize| {
        sorted_lines(&lab.on_host(i, &["ip", "-6", "route"]))
            .into_iter()
            .filter(|l| l.starts_with("fd00:200:") && l.contains(" via "))
            .collect::<Vec<_>>()
    };
    let want6 = |lab: &Lab, i: usize| {
        let mut v: Vec<String> = (1..=3)
            .filter(|&j| j != i)
            .map(|j| {
                format!(
                    "{} via {} dev eth0 metric 1024 pref medium",
                    lab.subnet6(j).unwrap(),
                    lab.ip6(j)
                )
            })
            .collect();
        v.sort();
        v
    };
    assert!(
        wait_until(LONG, || (1..=3).all(|i| routes6(&lab, i) == want6(&lab, i))),
        "{:?} vs {:?}",
        routes6(&lab, 1),
        want6(&lab, 1)
    );
    let v = lease_json(&lab, &key_of(&lab, 1));
    assert_eq!(
        leases(&lab)[&key_of(&lab, 1)],
        r#"{"PublicIP":"192.168.77.1","PublicIPv6":"fd77::1","BackendType":"host-gw"}"#,
        "{v}"
    );
    assert!(lab.subnet_env(1).contains("FLANNEL_MTU=1500\n"));
    for i in 1..=3 {
        lab.add_pod(i);
    }
    // a new pod's first IPv6 packet may wait for neighbour discovery: every pair must
    // answer within a few seconds
    wait_until(Duration::from_secs(10), || lab.ping_matrix().is_empty());
    assert_eq!(lab.ping_matrix(), vec![]);
}

#[test]
fn bad_ipv6_configs_are_refused_with_upstreams_messages_and_nothing_is_programmed() {
    for (tag, config, message) in [
        (
            'd',
            r#"{"Network":"10.200.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#,
            "please define a correct IPv6Network parameter in the flannel config",
        ),
        (
            'e',
            r#"{"Network":"10.200.0.0/16","EnableIPv6":true,"IPv6Network":"10.9.0.0/16","Backend":{"Type":"vxlan"}}"#,
            "invalid IPv6 CIDR format",
        ),
        (
            'f',
            r#"{"Network":"10.200.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:200::/56","IPv6SubnetLen":127,"Backend":{"Type":"vxlan"}}"#,
            "SubnetLen must be less than /127",
        ),
    ] {
        let (mut lab, _dir) = lab(tag, 1, Some(config));
        lab.start(1);
        assert!(
            wait_until(Duration::from_secs(10), || lab.log(1).contains(message)),
            "{config}: {}",
            lab.log(1)
        );
        assert!(
            lab.running(1),
            "keeps waiting for a usable config, as upstream"
        );
        let links = lab.on_host(1, &["ip", "-o", "link"]);
        assert!(!links.contains("flannel"), "{links}");
        assert!(leases(&lab).is_empty());
    }
    // IPv6 enabled but the node has no global IPv6 address: a clear error, no lease
    let (mut lab, _dir) = lab('g', 1, Some(DUAL));
    lab.on_host(
        1,
        &[
            "ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global",
        ],
    );
    lab.start(1);
    assert!(
        wait_until(Duration::from_secs(10), || !lab.running(1)),
        "{}",
        lab.log(1)
    );
    assert!(
        lab.log(1)
            .contains("failed to find IPv6 address for interface eth0"),
        "{}",
        lab.log(1)
    );
    assert!(leases(&lab).is_empty());
    assert!(!lab.on_host(1, &["ip", "-o", "link"]).contains("flannel"));
}

#[test]
fn turning_ipv6_off_or_leaving_host_gw_leaves_nothing_behind() {
    let (mut lab, _dir) = lab('h', 2, Some(DUAL_HOST_GW));
    let put = |lab: &Lab, config: &str| {
        lab.etcd().ctl(&[
            "put",
            &format!("{}/config", flannel_lab::lab::DEFAULT_PREFIX),
            config,
        ]);
    };
    let v6_routes = |lab: &Lab, i: usize| {
        sorted_lines(&lab.on_host(i, &["ip", "-6", "route"]))
            .into_iter()
            .filter(|l| l.starts_with("fd00:200:"))
            .collect::<Vec<_>>()
    };
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(
        wait_until(LONG, || v6_routes(&lab, 1).len() == 1),
        "{:?}",
        v6_routes(&lab, 1)
    );
    // host-gw (dual) -> VXLAN (dual): host-gw's IPv6 routes go, flannel-v6.1 comes
    put(&lab, DUAL);
    for i in 1..=2 {
        lab.stop(i, "TERM");
    }
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(wait_until(LONG, || v6_meshed(&lab)), "{}", lab.log(1));
    assert!(
        v6_routes(&lab, 1)
            .iter()
            .all(|r| r.contains("flannel-v6.1")),
        "{:?}",
        v6_routes(&lab, 1)
    );
    // VXLAN dual -> VXLAN IPv4 only: flannel-v6.1 and its entries go, the lease loses its
    // IPv6 subnet
    put(
        &lab,
        r#"{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
    );
    for i in 1..=2 {
        lab.stop(i, "TERM");
    }
    lab.start_all();
    lab.wait_ready(LONG);
    for i in 1..=2 {
        let links = lab.on_host(i, &["ip", "-o", "link"]);
        assert!(
            !links.contains("flannel-v6.1") && links.contains("flannel.1"),
            "{links}"
        );
        assert!(v6_routes(&lab, i).is_empty(), "{:?}", v6_routes(&lab, i));
        assert!(!lab.subnet_env(i).contains("IPV6"), "{}", lab.subnet_env(i));
    }
    assert!(
        leases(&lab).keys().all(|k| !k.contains('&')),
        "{:?}",
        leases(&lab)
    );
    for i in 1..=2 {
        lab.add_pod(i);
    }
    // a new pod's first IPv6 packet may wait for neighbour discovery: every pair must
    // answer within a few seconds
    wait_until(Duration::from_secs(10), || lab.ping_matrix().is_empty());
    assert_eq!(lab.ping_matrix(), vec![]);
}
