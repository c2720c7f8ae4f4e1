//! The ipip backend in the lab: needs the kernel's ipip module, which this machine's kernel
//! lacks, so this binary runs only in the VM lane (`tests/vm.sh`, from `tests/run.sh`; the
//! host's nextest run leaves it out: `.config/nextest.toml`'s default filter). Three hosts:
//! upstream's device (`flannel.ipip`, local end the host's address, MTU 1480), lease value
//! and routes (`<subnet> via <PublicIP> dev flannel.ipip onlink`), pods ping across; a route
//! deleted, the device deleted, a restart (nothing live removed), a node leaving;
//! DirectRouting (host-gw's routes on the segment); a switch to vxlan leaving nothing.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use common::*;
use flannel_lab::lab::{wait_until, Lab, DEFAULT_PREFIX};

const CONFIG: &str = r#"{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"ipip"}}"#;

/// Upstream's routes on host `i` through `dev` (`flannel.ipip onlink`, or `eth0` with
/// DirectRouting).
fn expected(lab: &Lab, i: usize, dev: &str) -> Vec<String> {
    gateway_routes(lab, i, dev)
}

fn meshed(lab: &Lab, dev: &str) -> bool {
    (1..=lab.hosts.len())
        .all(|i| lab.subnet(i).is_some() && flannel_routes(lab, i) == expected(lab, i, dev))
}

#[test]
fn ipip_mesh_repairs_restart_leave_direct_routing_and_switch() {
    let (mut lab, _dir) = lab('I', 3, Some(CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    const ONLINK: &str = "flannel.ipip onlink";
    assert!(
        wait_until(LONG, || meshed(&lab, ONLINK)),
        "{:?}\n{}",
        flannel_routes(&lab, 1),
        lab.log(1)
    );
    // upstream's lease value, device and MTU
    assert_lease_values(&lab, |ip| {
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"ipip"}}"#)
    });
    assert!(lab.subnet_env(1).contains("FLANNEL_MTU=1480\n"));
    let link = lab.on_host(1, &["ip", "-d", "link", "show", "flannel.ipip"]);
    assert!(
        link.contains("mtu 1480") && link.contains("ipip remote any local 192.168.77.1"),
        "{link}"
    );
    let addr = lab.on_host(1, &["ip", "-4", "addr", "show", "flannel.ipip"]);
    let own = lab.subnet(1).unwrap().replace("/24", "/32");
    assert!(addr.contains(&format!("inet {own}")), "{addr}");
    assert!(lab.log(1).contains("IPIP config: DirectRouting=false"));
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert_eq!(lab.ping_matrix(), vec![]);
    // doctor: the device and every route as the backend would program them
    let report = lab.on_host(
        1,
        &[
            "sh",
            "-c",
            &format!(
                "{} doctor {} 2>&1; echo rc=$?",
                lab.spec.flanneld.display(),
                lab.flags(1).join(" ")
            ),
        ],
    );
    assert!(
        report.contains("2 ipip routes exact"),
        "{report}\n{}",
        lab.on_host(1, &["ip", "route", "show", "table", "all"])
    );
    assert!(report.trim_end().ends_with("rc=0"), "{report}");

    // a route deleted: back at once; the device deleted: made again with every route
    let route2 = expected(&lab, 1, ONLINK)[0].clone();
    let dst = route2.split(' ').next().unwrap().to_string();
    lab.on_host(1, &["ip", "route", "del", &dst]);
    assert!(wait_until(LONG, || meshed(&lab, ONLINK)), "{}", lab.log(1));
    lab.on_host(1, &["ip", "link", "del", "flannel.ipip"]);
    assert!(
        wait_until(LONG, || meshed(&lab, ONLINK)
            && lab.ping_matrix().is_empty()),
        "{:?}\n{}",
        flannel_routes(&lab, 1),
        lab.log(1)
    );

    // a restart keeps the device and its routes
    let index = lab.on_host(1, &["cat", "/sys/class/net/flannel.ipip/ifindex"]);
    assert_eq!(lab.stop(1, "TERM"), Some(0));
    assert_eq!(
        flannel_routes(&lab, 1),
        expected(&lab, 1, ONLINK),
        "kept while down"
    );
    lab.start(1);
    lab.wait_ready(LONG);
    assert_eq!(
        lab.on_host(1, &["cat", "/sys/class/net/flannel.ipip/ifindex"]),
        index
    );
    assert!(wait_until(LONG, || meshed(&lab, ONLINK)));

    // a node that leaves: its route goes everywhere
    lab.stop(3, "TERM");
    let subnet3 = lab.subnet(3).unwrap();
    lab.etcd().ctl(&[
        "del",
        &format!("{DEFAULT_PREFIX}/subnets/{}", subnet3.replace('/', "-")),
    ]);
    assert!(
        wait_until(LONG, || (1..=2).all(|i| !flannel_routes(&lab, i)
            .iter()
            .any(|r| r.starts_with(&subnet3)))),
        "{:?}",
        flannel_routes(&lab, 1)
    );
    lab.start(3);
    lab.wait_ready(LONG);

    // DirectRouting: the peers on this segment get host-gw's route
    let direct = CONFIG.replace(r#""Type":"ipip""#, r#""Type":"ipip","DirectRouting":true"#);
    lab.etcd()
        .ctl(&["put", &format!("{DEFAULT_PREFIX}/config"), &direct]);
    restart_all(&mut lab);
    assert!(
        wait_until(LONG, || meshed(&lab, "eth0")),
        "{:?}\n{}",
        flannel_routes(&lab, 1),
        lab.log(1)
    );
    assert!(wait_until(LONG, || lab.ping_matrix().is_empty()));

    // vxlan: nothing of ipip is left, host-gw's routes included
    let vxlan = CONFIG.replace(r#""Type":"ipip""#, r#""Type":"vxlan""#);
    switch_to_vxlan(&mut lab, &vxlan, "flannel.ipip");
}

/// A rolling replacement both ways beside upstream's ipip backend (upstream on h1 and h2,
/// flanneld-rs on h3; then h1 to flanneld-rs; then h3 to upstream), pods pinging at every
/// step. Run by hand in the VM lane with an upstream binary built outside the checkout
/// (flannel's tag v0.20.2 has vendor/: `GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=1 go
/// build`): `tests/vm.sh -e UPSTREAM_FLANNELD=/path/flanneld-v0.20.2 <this test binary>
/// --ignored mixed`.
#[test]
#[ignore = "needs upstream flanneld (UPSTREAM_FLANNELD) and the kernel's ipip module: run by hand in the VM lane"]
fn mixed_cluster_with_upstreams_ipip_both_ways() {
    let upstream = std::path::PathBuf::from(
        std::env::var("UPSTREAM_FLANNELD").expect("UPSTREAM_FLANNELD: an upstream flanneld"),
    );
    const ONLINK: &str = "flannel.ipip onlink";
    let (mut lab, _dir) = lab('J', 3, Some(CONFIG));
    lab.start_binary(1, &upstream, &[]);
    lab.start_binary(2, &upstream, &[]);
    lab.start(3);
    assert!(
        wait_until(LONG, || meshed(&lab, ONLINK)),
        "{:?}",
        flannel_routes(&lab, 3)
    );
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert!(wait_until(LONG, || lab.ping_matrix().is_empty()));
    lab.stop(1, "TERM");
    lab.start(1);
    lab.wait_ready(LONG);
    assert!(wait_until(LONG, || meshed(&lab, ONLINK)), "{}", lab.log(1));
    assert!(wait_until(LONG, || lab.ping_matrix().is_empty()));
    lab.stop(3, "TERM");
    lab.start_binary(3, &upstream, &[]);
    assert!(wait_until(LONG, || meshed(&lab, ONLINK)), "{}", lab.log(3));
    assert!(wait_until(LONG, || lab.ping_matrix().is_empty()));
}

/// A `flannel.ipip` that is not an ipip device is the user's: refused in upstream's words,
/// never deleted.
#[test]
fn a_users_flannel_ipip_of_another_kind_is_refused_and_kept() {
    let (mut lab, _dir) = lab('K', 1, Some(CONFIG));
    lab.on_host(1, &["ip", "link", "add", "flannel.ipip", "type", "dummy"]);
    lab.start(1);
    assert!(wait_until(LONG, || !lab.running(1)), "{}", lab.log(1));
    assert!(
        lab.log(1)
            .contains("flannel.ipip isn't an ipip mode device, please remove device and try again"),
        "{}",
        lab.log(1)
    );
    let link = lab.on_host(1, &["ip", "-d", "link", "show", "flannel.ipip"]);
    assert!(link.contains("dummy"), "{link}");
}
