//! The VXLAN backend against the real kernel, each test in a network namespace of its own
//! (root needed; CI runs as root). Underlays are veth pairs: this kernel has no dummy driver.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::net::Ipv4Addr;
use std::time::Duration;

use flannel_backend::vxlan::VxlanBackend;
use flannel_backend::{Backend, ExtIface, NodeContext, Reconciler};
use flannel_lab::netns::{self, bridge, ip, sysctl};
use flannel_net::{Expiration, Lease, LeaseAttrs, LeaseBatch, MacAddr, VxlanBackendData};
use flannel_netlink::{Family, Netlink};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

const NETWORK: &str = "10.200.0.0/16";

/// A veth pair `ext0`/`ext0p`, `ext0` up with `addr`.
fn underlay(addr: &str, mtu: u32) {
    ip(&[
        "link",
        "add",
        "ext0",
        "mtu",
        &mtu.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        "ext0p",
    ]);
    ip(&["addr", "add", addr, "dev", "ext0"]);
    ip(&["link", "set", "ext0", "up"]);
    ip(&["link", "set", "ext0p", "up"]);
}

async fn ext_iface(nl: &Netlink, name: &str) -> ExtIface {
    let link = nl.link_by_name(name).await.unwrap().unwrap();
    ExtIface {
        index: link.index,
        name: link.name,
        mtu: link.mtu,
        addresses: nl.addresses(link.index, Family::V4).await.unwrap(),
    }
}

/// The backend of a node at `public_ip`; `mac_hint`: the VTEP MAC its lease in the store
/// already advertises.
async fn backend(backend_cfg: Value, public_ip: &str, mac_hint: Option<MacAddr>) -> VxlanBackend {
    let nl = Netlink::connect().unwrap();
    let ext = ext_iface(&nl, "ext0").await;
    let node = NodeContext {
        nl,
        ext,
        public_ip: public_ip.parse().unwrap(),
        public_ipv6: None,
        previous_lease: mac_hint.map(|m| lease("10.200.99.0/24", public_ip, &m.to_string())),
    };
    VxlanBackend::new(Some(&backend_cfg), NETWORK.parse().unwrap(), node)
        .await
        .unwrap()
}

fn vxlan() -> Value {
    json!({"Type": "vxlan"})
}

fn lease(subnet: &str, public_ip: &str, mac: &str) -> Lease {
    Lease {
        subnet: subnet.parse().unwrap(),
        ipv6_subnet: None,
        attrs: LeaseAttrs::vxlan(
            public_ip.parse().unwrap(),
            &VxlanBackendData {
                vni: Some(1),
                vtep_mac: mac.parse().unwrap(),
            },
        ),
        expiration: Expiration::Unknown,
    }
}

fn added(leases: Vec<Lease>) -> LeaseBatch {
    LeaseBatch {
        snapshot: true,
        ..LeaseBatch::added(leases)
    }
}

fn removed(leases: Vec<Lease>) -> LeaseBatch {
    LeaseBatch::removed(leases)
}

type KernelState = (Vec<String>, Vec<String>, Vec<String>);

/// `ip neigh` and `bridge fdb` lines for flannel.1 and the routes into the flannel network,
/// each sorted, trailing spaces trimmed; `None` while flannel.1 does not exist.
fn try_kernel_state() -> Option<KernelState> {
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let lines = |s: String| {
        let mut v: Vec<String> = s
            .lines()
            .map(|l| l.trim_end().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    };
    Some((
        lines(run("ip", &["neigh", "show", "dev", "flannel.1"])?),
        lines(run("bridge", &["fdb", "show", "dev", "flannel.1"])?),
        lines(run("ip", &["route"])?)
            .into_iter()
            .filter(|l| l.starts_with("10.200."))
            .collect(),
    ))
}

fn kernel_state() -> KernelState {
    try_kernel_state().expect("flannel.1 exists")
}

const MAC2: &str = "6a:02:fc:e4:63:47";
const MAC3: &str = "2a:c1:a4:5c:d1:7b";

/// The two peers of ../shared/reference/v0.20.2-etcdv3, as h1 sees them.
fn reference_state() -> KernelState {
    (
        vec![
            format!("10.200.2.0 lladdr {MAC2} PERMANENT"),
            format!("10.200.89.0 lladdr {MAC3} PERMANENT"),
        ],
        vec![
            format!("{MAC3} dst 192.168.77.3 self permanent"),
            format!("{MAC2} dst 192.168.77.2 self permanent"),
        ],
        vec![
            "10.200.2.0/24 via 10.200.2.0 dev flannel.1 onlink".to_string(),
            "10.200.89.0/24 via 10.200.89.0 dev flannel.1 onlink".to_string(),
        ],
    )
}

fn sorted(mut s: KernelState) -> KernelState {
    s.0.sort();
    s.1.sort();
    s.2.sort();
    s
}

fn own_lease(b: &VxlanBackend) -> Lease {
    Lease {
        subnet: "10.200.90.0/24".parse().unwrap(),
        ipv6_subnet: None,
        attrs: b.lease_attrs(),
        expiration: Expiration::Unknown,
    }
}

#[test]
fn device_has_upstream_attributes_and_mtu() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1500);
        let b = backend(vxlan(), "192.168.77.1", None).await;
        let out = ip(&["-d", "link", "show", "flannel.1"]);
        assert!(out.contains("mtu 1450"), "{out}");
        assert!(
            out.contains("vxlan id 1 local 192.168.77.1 dev ext0 srcport 0 0 dstport 8472 nolearning ttl auto ageing 300 udpcsum noudp6zerocsumtx noudp6zerocsumrx"),
            "{out}"
        );
        assert!(
            out.contains(&format!("link/ether {}", b.device().mac)),
            "{out}"
        );
        assert!(b.device().mac.is_local_unicast());
        assert!(out.contains("UP"), "{out}");
        assert_eq!(sysctl("net/ipv6/conf/flannel.1/accept_ra"), "0");
        assert_eq!(b.mtu(), 1450);
        let attrs = b.lease_attrs().to_json();
        assert_eq!(
            attrs,
            format!(
                r#"{{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                b.device().mac
            )
        );
    });
}

#[test]
fn config_port_gbp_learning_and_mtu_rules() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1400);
        let b = backend(
            json!({"Type":"vxlan","VNI":7,"Port":4789,"GBP":true,"Learning":true}),
            "192.168.77.1",
            None,
        )
        .await;
        let out = ip(&["-d", "link", "show", "flannel.7"]);
        assert!(out.contains("vxlan id 7 "), "{out}");
        assert!(out.contains("dstport 4789"), "{out}");
        assert!(out.contains("gbp"), "{out}");
        assert!(!out.contains("nolearning"), "{out}");
        assert!(out.contains("mtu 1350"), "ext MTU 1400 - 50: {out}");
        assert_eq!(b.mtu(), 1350);
        ip(&["link", "set", "ext0", "mtu", "9000"]);
        let b = backend(
            json!({"Type":"vxlan","VNI":8,"MTU":9000}),
            "192.168.77.1",
            None,
        )
        .await;
        assert_eq!(b.mtu(), 8950, "backend MTU - 50");
        let nl = Netlink::connect().unwrap();
        let ext = ext_iface(&nl, "ext0").await;
        let node = NodeContext {
            nl,
            ext,
            public_ip: Ipv4Addr::new(192, 168, 77, 1),
            public_ipv6: None,
            previous_lease: None,
        };
        let err = VxlanBackend::new(Some(&json!({"VNI":"x"})), NETWORK.parse().unwrap(), node)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("error decoding VXLAN backend config: VNI"),
            "{err}"
        );
    });
}

#[test]
fn device_reused_when_compatible_recreated_with_same_mac_when_not() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1500);
        ip(&["addr", "add", "192.168.77.11/24", "dev", "ext0"]);
        let first = backend(vxlan(), "192.168.77.1", None).await;
        let mac = first.device().mac;
        let second = backend(vxlan(), "192.168.77.1", None).await;
        assert_eq!(second.device(), first.device(), "compatible: reused as is");
        // another local address: incompatible, recreated, and the MAC stays
        let third = backend(vxlan(), "192.168.77.11", None).await;
        assert_ne!(third.device().index, first.device().index);
        assert_eq!(third.device().mac, mac);
        assert!(ip(&["-d", "link", "show", "flannel.1"]).contains("local 192.168.77.11"));
        // no device at all: the MAC our lease advertises is used
        ip(&["link", "del", "flannel.1"]);
        let hint: MacAddr = "0e:11:22:33:44:55".parse().unwrap();
        let fourth = backend(vxlan(), "192.168.77.1", Some(hint)).await;
        assert_eq!(fourth.device().mac, hint);
        // a link of another kind with our name is replaced
        ip(&["link", "del", "flannel.1"]);
        ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "veth",
            "peer",
            "name",
            "junk0",
        ]);
        let fifth = backend(vxlan(), "192.168.77.1", Some(hint)).await;
        assert!(ip(&["-d", "link", "show", "flannel.1"]).contains("vxlan id 1"));
        assert_eq!(fifth.device().mac.to_string().len(), 17);
    });
}

#[test]
fn address_is_the_subnet_network_address_and_stale_ones_go() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1500);
        let mut b = backend(vxlan(), "192.168.77.1", None).await;
        ip(&["link", "set", "flannel.1", "down"]);
        for stray in ["10.200.5.0/32", "10.200.99.1/24", "172.16.0.1/32"] {
            ip(&["addr", "add", stray, "dev", "flannel.1"]);
        }
        let own = own_lease(&b);
        b.configure(&own).await.unwrap();
        let out = ip(&["-4", "addr", "show", "dev", "flannel.1"]);
        assert!(
            out.contains("inet 10.200.90.0/32 scope global flannel.1"),
            "{out}"
        );
        assert!(
            out.contains("inet 172.16.0.1/32"),
            "addresses outside the network stay: {out}"
        );
        assert!(
            !out.contains("10.200.5.0") && !out.contains("10.200.99.1"),
            "{out}"
        );
        assert!(ip(&["link", "show", "flannel.1"]).contains(",UP"));
        // idempotent
        b.configure(&own).await.unwrap();
        assert_eq!(
            ip(&["-4", "addr", "show", "dev", "flannel.1"])
                .matches("inet ")
                .count(),
            2
        );
    });
}

#[test]
fn peers_programmed_exactly_like_upstream_and_removed_in_reverse() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1500);
        let mut b = backend(vxlan(), "192.168.77.1", None).await;
        let own = own_lease(&b);
        b.configure(&own).await.unwrap();
        let mut hostgw = lease("10.200.7.0/24", "192.168.77.7", MAC2);
        hostgw.attrs.backend_type = "host-gw".into();
        let failures = b
            .apply(&added(vec![
                lease("10.200.2.0/24", "192.168.77.2", MAC2),
                lease("10.200.89.0/24", "192.168.77.3", MAC3),
                own.clone(),
                hostgw,
            ]))
            .await;
        assert_eq!(failures, 0);
        assert_eq!(kernel_state(), sorted(reference_state()));
        assert_eq!(b.peers().count(), 2);

        // MAC change of a peer: ARP updated, old FDB entry removed (upstream leaks it)
        b.apply(&added(vec![lease(
            "10.200.2.0/24",
            "192.168.77.2",
            "02:00:00:00:00:22",
        )]))
        .await;
        let (neigh, fdb, _) = kernel_state();
        assert!(
            neigh.contains(&"10.200.2.0 lladdr 02:00:00:00:00:22 PERMANENT".to_string()),
            "{neigh:?}"
        );
        assert!(!fdb.iter().any(|l| l.starts_with(MAC2)), "{fdb:?}");
        assert!(
            fdb.contains(&"02:00:00:00:00:22 dst 192.168.77.2 self permanent".to_string()),
            "{fdb:?}"
        );

        // removal: route, FDB and ARP gone
        b.apply(&removed(vec![lease(
            "10.200.2.0/24",
            "192.168.77.2",
            "02:00:00:00:00:22",
        )]))
        .await;
        let (neigh, fdb, routes) = kernel_state();
        assert_eq!(neigh, vec![format!("10.200.89.0 lladdr {MAC3} PERMANENT")]);
        assert_eq!(fdb, vec![format!("{MAC3} dst 192.168.77.3 self permanent")]);
        assert_eq!(
            routes,
            vec!["10.200.89.0/24 via 10.200.89.0 dev flannel.1 onlink".to_string()]
        );
        // a reconcile finds nothing to do
        assert_eq!(b.reconcile().await.unwrap(), 0);
    });
}

#[test]
fn a_lease_overlapping_a_peer_is_skipped_until_that_peer_is_gone() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1500);
        let mut b = backend(vxlan(), "192.168.77.1", None).await;
        let own = own_lease(&b);
        b.configure(&own).await.unwrap();
        let a = lease("10.200.2.0/24", "192.168.77.2", MAC2);
        // same gateway address 10.200.2.0: its ARP entry would replace a's
        let inside = lease("10.200.2.0/25", "192.168.77.3", MAC3);
        // a /23 around a's /24
        let around = lease("10.200.2.0/23", "192.168.77.4", "02:00:00:00:00:44");
        let failures = b
            .apply(&added(vec![a.clone(), inside.clone(), around.clone()]))
            .await;
        assert_eq!(failures, 0);
        assert_eq!(b.peers().count(), 1);
        let (neigh, fdb, routes) = kernel_state();
        assert_eq!(neigh, vec![format!("10.200.2.0 lladdr {MAC2} PERMANENT")]);
        assert_eq!(fdb, vec![format!("{MAC2} dst 192.168.77.2 self permanent")]);
        assert_eq!(
            routes,
            vec!["10.200.2.0/24 via 10.200.2.0 dev flannel.1 onlink".to_string()]
        );
        // the reconcile keeps it that way
        assert_eq!(b.reconcile().await.unwrap(), 0);
        // the skipped one leaves: nothing changes
        b.apply(&removed(vec![around])).await;
        assert_eq!(b.peers().count(), 1);
        // a goes: the lease it shadowed is programmed now
        b.apply(&removed(vec![a])).await;
        let (neigh, _, routes) = kernel_state();
        assert_eq!(neigh, vec![format!("10.200.2.0 lladdr {MAC3} PERMANENT")]);
        assert_eq!(
            routes,
            vec!["10.200.2.0/25 via 10.200.2.0 dev flannel.1 onlink".to_string()]
        );
        assert_eq!(
            b.peers().map(|p| p.subnet).collect::<Vec<_>>(),
            vec![ipnetwork::IpNetwork::V4(inside.subnet)]
        );
    });
}

#[test]
fn reconcile_repairs_drift_and_removes_strays() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1500);
        let mut b = backend(vxlan(), "192.168.77.1", None).await;
        let own = own_lease(&b);
        b.configure(&own).await.unwrap();
        b.apply(&added(vec![
            lease("10.200.2.0/24", "192.168.77.2", MAC2),
            lease("10.200.89.0/24", "192.168.77.3", MAC3),
        ]))
        .await;
        // drift: entries deleted, strays of a node deleted while we were down
        ip(&["route", "del", "10.200.2.0/24"]);
        ip(&["neigh", "del", "10.200.89.0", "dev", "flannel.1"]);
        bridge(&[
            "fdb",
            "del",
            MAC2,
            "dev",
            "flannel.1",
            "dst",
            "192.168.77.2",
            "self",
        ]);
        ip(&[
            "neigh",
            "replace",
            "10.200.44.0",
            "lladdr",
            "02:00:00:00:00:44",
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        bridge(&[
            "fdb",
            "append",
            "02:00:00:00:00:44",
            "dev",
            "flannel.1",
            "dst",
            "192.168.77.44",
            "self",
            "permanent",
        ]);
        ip(&[
            "route",
            "add",
            "10.200.44.0/24",
            "via",
            "10.200.44.0",
            "dev",
            "flannel.1",
            "onlink",
        ]);
        ip(&["route", "add", "172.31.0.0/16", "via", "192.168.77.254"]);
        let repaired = b.reconcile().await.unwrap();
        assert_eq!(repaired, 6);
        assert_eq!(kernel_state(), sorted(reference_state()));
        assert!(
            ip(&["route"]).contains("172.31.0.0/16 via 192.168.77.254"),
            "others' routes untouched"
        );

        // the device deleted: re-created with the same MAC and address, every peer back
        let mac = b.device().mac;
        ip(&["link", "del", "flannel.1"]);
        b.reconcile().await.unwrap();
        assert_eq!(b.device().mac, mac);
        assert!(ip(&["-d", "link", "show", "flannel.1"]).contains(&format!("link/ether {mac}")));
        assert!(ip(&["-4", "addr", "show", "dev", "flannel.1"]).contains("10.200.90.0/32"));
        assert_eq!(kernel_state(), sorted(reference_state()));
    });
}

#[test]
fn run_loop_repairs_kernel_damage_at_once_and_reports_sync() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1500);
        let mut b = backend(vxlan(), "192.168.77.1", None).await;
        let own = own_lease(&b);
        b.configure(&own).await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        let (synced_tx, mut synced) = watch::channel(false);
        // an hour between periodic reconciles: only the kernel's notifications can trigger repairs
        let task = tokio::spawn(Box::new(b).run(rx, synced_tx, Duration::from_secs(3600)));
        tx.send(added(vec![
            lease("10.200.2.0/24", "192.168.77.2", MAC2),
            lease("10.200.89.0/24", "192.168.77.3", MAC3),
        ]))
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kernel_state(), sorted(reference_state()));

        async fn until_reference() {
            for _ in 0..200 {
                if try_kernel_state() == Some(sorted(reference_state())) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("not repaired: {:?}", try_kernel_state());
        }
        ip(&["route", "del", "10.200.89.0/24"]);
        until_reference().await;
        ip(&["neigh", "del", "10.200.2.0", "dev", "flannel.1"]);
        until_reference().await;
        bridge(&[
            "fdb",
            "del",
            MAC3,
            "dev",
            "flannel.1",
            "dst",
            "192.168.77.3",
            "self",
        ]);
        until_reference().await;
        ip(&["link", "del", "flannel.1"]);
        until_reference().await;
        assert!(ip(&["-4", "addr", "show", "dev", "flannel.1"]).contains("10.200.90.0/32"));

        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    });
}

#[test]
fn direct_routing_on_a_shared_segment() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1500);
        let mut b = backend(
            json!({"Type":"vxlan","DirectRouting":true}),
            "192.168.77.1",
            None,
        )
        .await;
        let own = own_lease(&b);
        b.configure(&own).await.unwrap();
        b.apply(&added(vec![
            lease("10.200.2.0/24", "192.168.77.2", MAC2),
            lease("10.200.89.0/24", "192.168.99.3", MAC3),
        ]))
        .await;
        let routes = ip(&["route"]);
        assert!(
            routes.contains("10.200.2.0/24 via 192.168.77.2 dev ext0"),
            "{routes}"
        );
        assert!(
            routes.contains("10.200.89.0/24 via 10.200.89.0 dev flannel.1 onlink"),
            "{routes}"
        );
        let (neigh, fdb, _) = kernel_state();
        assert_eq!(
            neigh,
            vec![format!("10.200.89.0 lladdr {MAC3} PERMANENT")],
            "no ARP for the direct peer"
        );
        assert_eq!(fdb, vec![format!("{MAC3} dst 192.168.99.3 self permanent")]);
        assert_eq!(b.reconcile().await.unwrap(), 0);
        b.apply(&removed(vec![lease("10.200.2.0/24", "192.168.77.2", MAC2)]))
            .await;
        assert!(!ip(&["route"]).contains("10.200.2.0/24"));
    });
}

#[test]
fn two_hosts_ping_across_vxlan() {
    // Host A and host B: two namespaces joined by a veth pair, each with the backend
    // programmed for the other. A ping between the two <subnet>.0 addresses crosses VXLAN.
    let (b_tid_tx, b_tid_rx) = std::sync::mpsc::channel::<i32>();
    let (b_mac_tx, b_mac_rx) = std::sync::mpsc::channel::<String>();
    let (a_mac_tx, a_mac_rx) = std::sync::mpsc::channel::<String>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // B has programmed A: only then can A's pings be answered
    let (b_ready_tx, b_ready_rx) = std::sync::mpsc::channel::<()>();
    let host_b = std::thread::spawn(move || {
        netns::run(move || async move {
            b_tid_tx.send(netns::tid()).unwrap();
            // wait for A to move our end of the underlay in
            for _ in 0..500 {
                if ip(&["link"]).contains("ext0") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ip(&["addr", "add", "192.168.77.2/24", "dev", "ext0"]);
            ip(&["link", "set", "ext0", "up"]);
            let mut b = backend(vxlan(), "192.168.77.2", None).await;
            let mut own = own_lease(&b);
            own.subnet = "10.200.2.0/24".parse().unwrap();
            b.configure(&own).await.unwrap();
            b_mac_tx.send(b.device().mac.to_string()).unwrap();
            let a_mac = a_mac_rx.recv().unwrap();
            assert_eq!(
                b.apply(&added(vec![lease(
                    "10.200.90.0/24",
                    "192.168.77.1",
                    &a_mac
                )]))
                .await,
                0
            );
            b_ready_tx.send(()).unwrap();
            // stay alive (and keep the namespace) until A is done
            tokio::task::spawn_blocking(move || done_rx.recv())
                .await
                .unwrap()
                .unwrap();
        })
    });
    netns::run(move || async move {
        let b_tid = b_tid_rx.recv().unwrap();
        ip(&[
            "link", "add", "ext0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&[
            "link",
            "set",
            "peer0",
            "netns",
            &b_tid.to_string(),
            "name",
            "ext0",
        ]);
        ip(&["addr", "add", "192.168.77.1/24", "dev", "ext0"]);
        ip(&["link", "set", "ext0", "up"]);
        let mut a = backend(vxlan(), "192.168.77.1", None).await;
        let own = own_lease(&a);
        a.configure(&own).await.unwrap();
        a_mac_tx.send(a.device().mac.to_string()).unwrap();
        let b_mac = b_mac_rx.recv().unwrap();
        assert_eq!(
            a.apply(&added(vec![lease("10.200.2.0/24", "192.168.77.2", &b_mac)]))
                .await,
            0
        );
        b_ready_rx.recv().unwrap();
        let out = std::process::Command::new("ping")
            .args([
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                "-I",
                "10.200.90.0",
                "10.200.2.0",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ping across VXLAN failed: {text}");
        assert!(text.contains("3 received"), "{text}");
        // those addresses exist only on the flannel devices, and the only route is via flannel.1
        assert!(ip(&["route", "get", "10.200.2.0"]).contains("dev flannel.1"));
        done_tx.send(()).unwrap();
    });
    host_b.join().unwrap();
}

#[test]
fn vni_0_makes_flannel_0_as_upstream() {
    netns::run(|| async {
        underlay("192.168.77.1/24", 1500);
        let b = backend(json!({"Type":"vxlan","VNI":0}), "192.168.77.1", None).await;
        assert_eq!(b.device().name, "flannel.0");
        let link = ip(&["-d", "link", "show", "flannel.0"]);
        assert!(link.contains("vxlan id 0 "), "{link}");
    });
}
