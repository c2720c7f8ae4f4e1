//! The host-gw backend in the lab: three hosts on one bridge, plain routes via each other's
//! PublicIP, pods ping across; routes in upstream's form, repaired, strays removed, a
//! restart that deletes nothing live, the NAT refusal, and a mixed cluster.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use flannel_lab::lab::{try_nsexec, wait_until, Lab, DEFAULT_PREFIX};

const CONFIG: &str = r#"{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;

/// Upstream's routes on host `i`: `<subnet> via <PublicIP> dev eth0` for every other host.
fn expected_routes(lab: &Lab, i: usize) -> Vec<String> {
    gateway_routes(lab, i, "eth0")
}

fn meshed(lab: &Lab) -> bool {
    (1..=lab.hosts.len()).all(|i| flannel_routes(lab, i) == expected_routes(lab, i))
}

#[test]
fn host_gw_mesh_routes_repairs_restarts_and_refuses_nat() {
    let (mut lab, dir) = lab('g', 3, Some(CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(
        wait_until(LONG, || meshed(&lab)),
        "{:?}",
        flannel_routes(&lab, 1)
    );
    // upstream's lease value and MTU
    for (key, value) in leases(&lab) {
        let ip = serde_json::from_str::<serde_json::Value>(&value).unwrap()["PublicIP"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            value,
            format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#),
            "{key}"
        );
    }
    assert!(
        lab.subnet_env(1).contains("FLANNEL_MTU=1500\n"),
        "{}",
        lab.subnet_env(1)
    );
    assert!(!lab.on_host(1, &["ip", "-o", "link"]).contains("flannel."));
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert_eq!(lab.ping_matrix(), vec![]);

    // a deleted route comes back at once; a stray one (no lease explains it) goes
    let h2 = lab.subnet(2).unwrap();
    lab.on_host(1, &["ip", "route", "del", &h2]);
    assert!(wait_until(Duration::from_secs(5), || meshed(&lab)));
    lab.on_host(
        1,
        &[
            "ip",
            "route",
            "add",
            "10.200.250.0/24",
            "via",
            "192.168.77.3",
            "dev",
            "eth0",
        ],
    );
    // and a route of somebody else's on eth0, outside the network, stays
    lab.on_host(
        1,
        &[
            "ip",
            "route",
            "add",
            "172.30.0.0/16",
            "via",
            "192.168.77.3",
            "dev",
            "eth0",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || meshed(&lab)),
        "stray not removed: {:?}",
        flannel_routes(&lab, 1)
    );
    assert!(lab
        .on_host(1, &["ip", "route"])
        .contains("172.30.0.0/16 via 192.168.77.3"));

    // a restart deletes no live route
    lab.stop(1, "TERM");
    let monitor_out = dir.path().join("monitor");
    let mut monitor = Command::new("ip")
        .args(["netns", "exec", &lab.hosts[0].ns, "ip", "monitor", "route"])
        .stdout(std::fs::File::create(&monitor_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.start(1);
    lab.wait_ready(LONG);
    std::thread::sleep(Duration::from_millis(500));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let seen = std::fs::read_to_string(&monitor_out).unwrap();
    assert!(
        !seen.lines().any(|l| l.starts_with("Deleted 10.200.")),
        "a restart deleted live routes: {seen}"
    );
    assert!(meshed(&lab));

    // a PublicIP that is not the interface's (NAT): upstream's refusal
    lab.stop(3, "TERM");
    let bin = lab.spec.flanneld.display().to_string();
    let mut args = vec!["timeout".to_string(), "20".into(), bin];
    args.extend(lab.flags(3));
    args.push("-public-ip=203.0.113.7".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = try_nsexec(&lab.hosts[2].ns, &args);
    assert!(!ok);
    assert!(
        out.contains("your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend"),
        "{out}"
    );
}

#[test]
fn host_gw_programs_only_host_gw_leases() {
    let (mut lab, _dir) = lab('k', 2, Some(CONFIG));
    // a vxlan node on the same segment (not in the lab): host-gw ignores it
    let vxlan = r#"{"PublicIP":"192.168.77.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"}}"#;
    lab.etcd().ctl(&[
        "put",
        &format!("{DEFAULT_PREFIX}/subnets/10.200.9.0-24"),
        vxlan,
    ]);
    // a host-gw node on another segment: warned about, no route
    let far = r#"{"PublicIP":"192.168.99.8","PublicIPv6":null,"BackendType":"host-gw"}"#;
    lab.etcd().ctl(&[
        "put",
        &format!("{DEFAULT_PREFIX}/subnets/10.200.8.0-24"),
        far,
    ]);
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(wait_until(LONG, || meshed(&lab)));
    let routes = lab.on_host(1, &["ip", "route"]);
    assert!(!routes.contains("10.200.9.0/24"), "{routes}");
    assert!(!routes.contains("10.200.8.0/24"), "{routes}");
    let log = lab.log(1);
    assert!(
        log.contains("Ignoring non-host-gw subnet: type=vxlan"),
        "{log}"
    );
    assert!(
        log.contains("PublicIP 192.168.99.8 is not on the segment of eth0"),
        "{log}"
    );
}

#[test]
fn switching_between_vxlan_and_host_gw_leaves_nothing_behind() {
    let vxlan = r#"{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
    let (mut lab, _dir) = lab('s', 2, Some(vxlan));
    let set_config = |lab: &Lab, config: &str| {
        lab.etcd()
            .ctl(&["put", &format!("{DEFAULT_PREFIX}/config"), config]);
    };
    let restart_all = |lab: &mut Lab| {
        lab.stop(1, "TERM");
        lab.stop(2, "TERM");
        lab.start_all();
        lab.wait_ready(LONG);
    };
    lab.start_all();
    lab.wait_ready(LONG);
    wait_converged(&lab);
    // vxlan -> host-gw: flannel.1 and its routes go, host-gw's come
    set_config(&lab, CONFIG);
    restart_all(&mut lab);
    assert!(
        wait_until(LONG, || meshed(&lab)),
        "{:?}",
        flannel_routes(&lab, 1)
    );
    for i in 1..=2 {
        let links = lab.on_host(i, &["ip", "-o", "link"]);
        assert!(!links.contains("flannel.1"), "h{i}: {links}");
        assert!(lab
            .log(i)
            .contains("removing flannel.1, left by the vxlan backend"));
    }
    // host-gw -> vxlan: host-gw's routes go
    set_config(&lab, vxlan);
    restart_all(&mut lab);
    wait_converged(&lab);
    for i in 1..=2 {
        let routes = lab.on_host(i, &["ip", "route"]);
        assert!(
            !routes
                .lines()
                .any(|l| l.starts_with("10.200.") && l.contains("dev eth0")),
            "h{i}: {routes}"
        );
    }
}

/// Found by the chaos run (issue 31, host-gw, seed 16797280028551424871): the kernel flushes
/// the routes through an interface that goes down and says nothing of it (no route
/// notification), so after the link came back the node had no route to any peer until the
/// periodic reconcile. Now the interface coming up is damage: the routes are put back at
/// once, by the repair that logs what it did (the periodic reconcile does not).
#[test]
fn routes_flushed_by_the_link_going_down_are_put_back_when_it_comes_up() {
    let (mut lab, _dir) = lab('H', 2, Some(CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    assert!(wait_until(LONG, || meshed(&lab)), "{}", lab.log(1));
    let before = repairs(&lab, 1);
    lab.on_host(1, &["ip", "link", "set", "eth0", "down"]);
    assert!(
        flannel_routes(&lab, 1).is_empty(),
        "the kernel keeps routes through a link that is down: {:?}",
        flannel_routes(&lab, 1)
    );
    lab.on_host(1, &["ip", "link", "set", "eth0", "up"]);
    assert!(
        wait_until(Duration::from_secs(3), || repairs(&lab, 1) > before
            && meshed(&lab)),
        "routes {:?}\n{}",
        flannel_routes(&lab, 1),
        lab.log(1)
    );
    lab.add_pod(1);
    lab.add_pod(2);
    assert_eq!(lab.ping_matrix(), Vec::<(usize, usize)>::new());
}
