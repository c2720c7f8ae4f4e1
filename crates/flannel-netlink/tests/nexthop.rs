//! The nexthop messages of `netlink/nexthop.rs` against the kernel, checked with what
//! `ip nexthop` shows, in a network namespace of the test's own.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::net::IpAddr;

use flannel_lab::netns::{self, ip};
use flannel_netlink::nexthop::Nexthop;
use flannel_netlink::{Netlink, NexthopMode};

#[test]
fn nexthops_are_added_listed_replaced_and_deleted_as_ip_nexthop_shows_them() {
    netns::run(|| async {
        ip(&[
            "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1",
        ]);
        ip(&["link", "set", "dummy0", "up"]);
        ip(&["link", "set", "dummy1", "up"]);
        let nl = Netlink::connect()
            .unwrap()
            .with_nexthops(NexthopMode::On)
            .await
            .unwrap();
        let index = nl.link_by_name("dummy0").await.unwrap().unwrap().index;
        assert!(nl.uses_nexthops());
        let gw: IpAddr = "10.200.2.0".parse().unwrap();
        let nh = |id: u32, gateway: IpAddr| Nexthop {
            id,
            gateway,
            oif: index,
            onlink: true,
        };
        let many: Vec<Nexthop> = (0..300u32)
            .map(|i| nh(1000 + i, IpAddr::from([10, 201, (i >> 8) as u8, i as u8])))
            .collect();
        let mut all = vec![nh(7, gw)];
        all.extend(many.iter().copied());
        for r in nl.replace_nexthops(all.clone()).await {
            r.unwrap();
        }
        let shown = ip(&["nexthop", "show", "id", "7"]);
        assert_eq!(
            shown.trim(),
            "id 7 via 10.200.2.0 dev dummy0 scope link proto boot onlink"
        );
        let mut listed = nl.nexthops().await.unwrap();
        listed.sort();
        all.sort();
        assert_eq!(listed, all);
        // another program's, added by ip: listed as it is
        ip(&["nexthop", "add", "id", "5", "dev", "dummy0"]);
        assert_eq!(
            nl.list_nexthops(Some(index)).await.unwrap().len(),
            301,
            "a nexthop without gateway is none of flannel's form"
        );
        // replace moves the gateway
        let moved = nh(7, "10.200.3.0".parse().unwrap());
        nl.replace_nexthops(vec![moved]).await[0].as_ref().unwrap();
        assert!(ip(&["nexthop", "show", "id", "7"]).contains("via 10.200.3.0"));
        // a route through it, as the backend makes it
        ip(&["route", "add", "10.200.3.0/24", "nhid", "7"]);
        assert!(ip(&["route"]).contains("10.200.3.0/24 nhid 7 via 10.200.3.0 dev dummy0"));
        let routes = nl.routes(flannel_netlink::Family::V4).await.unwrap();
        assert!(routes
            .iter()
            .any(|r| r.nhid == Some(7) && r.dst.to_string() == "10.200.3.0/24"));
        // delete: the route goes with it; a gone one is no error
        let ids: Vec<u32> = all.iter().map(|n| n.id).chain([424242]).collect();
        for r in nl.delete_nexthops(ids).await {
            r.unwrap();
        }
        assert_eq!(
            ip(&["nexthop", "show"]).trim(),
            "id 5 dev dummy0 scope host"
        );
        assert!(!ip(&["route"]).contains("10.200.3.0/24"));
    });
}
