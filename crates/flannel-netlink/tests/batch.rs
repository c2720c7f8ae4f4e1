//! Requests in bulk (`request.rs`) against the kernel, in a network namespace of the
//! test's own: what `ip`, `bridge` and `ip nexthop` show afterwards, a failed request in
//! the middle of a batch failing alone, and deletions (of things already gone too).
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::net::IpAddr;

use flannel_lab::netns::{self, bridge, ip};
use flannel_netlink::neighbour::{FdbEntry, NeighbourEntry};
use flannel_netlink::nexthop::Nexthop;
use flannel_netlink::request::Request;
use flannel_netlink::route::Route;
use flannel_netlink::{Netlink, NexthopMode};

#[test]
fn a_batch_programs_and_deletes_peers_in_order_and_a_failed_request_fails_alone() {
    netns::run(|| async {
        ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            "127.0.0.1",
            "dstport",
            "8472",
            "nolearning",
        ]);
        ip(&["link", "set", "flannel.1", "up"]);
        let nl = Netlink::connect()
            .unwrap()
            .with_nexthops(NexthopMode::On)
            .await
            .unwrap();
        let index = nl.link_by_name("flannel.1").await.unwrap().unwrap().index;
        // 300 peers: three datagrams, each peer's four requests in order
        let mut requests = Vec::new();
        for i in 0..300u32 {
            let gw = IpAddr::from([10, 200 + (i >> 8) as u8, i as u8, 0]);
            let mac = format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff)
                .parse()
                .unwrap();
            let id = 1000 + i;
            requests.push(Request::Nexthop(Nexthop {
                id,
                gateway: gw,
                oif: index,
                onlink: true,
            }));
            requests.push(Request::Neighbour {
                index,
                entry: NeighbourEntry { ip: gw, mac },
            });
            requests.push(Request::Fdb {
                index,
                entry: FdbEntry {
                    mac,
                    dst: IpAddr::from([192, 168, 0, (i % 250) as u8 + 1]),
                },
            });
            requests.push(Request::Route(Route {
                dst: format!("{gw}/24").parse().unwrap(),
                gateway: None,
                oif: None,
                onlink: false,
                // the 100th peer's route names a nexthop that does not exist
                nhid: Some(if i == 100 { 424_242 } else { id }),
            }));
        }
        let results = nl.send_all(requests).await;
        assert_eq!(results.len(), 1200);
        let failed: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(failed, vec![100 * 4 + 3], "only the bad route fails");
        let err = results[403].as_ref().unwrap_err().to_string();
        assert!(err.contains("adding route to 10.200.100.0/24"), "{err}");
        let routes = ip(&["route", "show", "dev", "flannel.1"]);
        assert_eq!(routes.lines().count(), 299, "{routes}");
        assert!(!routes.contains("10.200.100.0/24"));
        assert!(routes.contains("10.201.43.0/24 nhid 1299 via 10.201.43.0 onlink"));
        let neigh = ip(&["neigh", "show", "dev", "flannel.1"]);
        assert_eq!(neigh.lines().count(), 300);
        assert!(neigh.contains("10.200.7.0 lladdr 02:00:00:00:00:07 PERMANENT"));
        let fdb = bridge(&["fdb", "show", "dev", "flannel.1"]);
        assert!(
            fdb.contains("02:00:00:00:01:2b dst 192.168.0.50 self permanent"),
            "{fdb}"
        );
        assert_eq!(ip(&["nexthop", "show"]).lines().count(), 300);
        // replacing again changes nothing and fails nothing (a restart's replay)
        let again = vec![Request::Neighbour {
            index,
            entry: NeighbourEntry {
                ip: "10.200.7.0".parse().unwrap(),
                mac: "02:00:00:00:00:07".parse().unwrap(),
            },
        }];
        assert!(nl.send_all(again).await[0].is_ok());

        // deletions in bulk: peer 7's route, FDB and ARP entries and nexthop in one call,
        // then the same again (all already gone: no error), and a route that never was
        let gw: IpAddr = "10.200.7.0".parse().unwrap();
        let mac = "02:00:00:00:00:07".parse().unwrap();
        let peer7 = vec![
            Request::DelRoute(Route {
                dst: "10.200.7.0/24".parse().unwrap(),
                gateway: None,
                oif: None,
                onlink: false,
                nhid: Some(1007),
            }),
            Request::DelFdb {
                index,
                entry: FdbEntry {
                    mac,
                    dst: "192.168.0.8".parse().unwrap(),
                },
            },
            Request::DelNeighbour { index, ip: gw },
            Request::DelNexthop(1007),
        ];
        for r in nl.send_all(peer7.clone()).await {
            r.unwrap();
        }
        assert!(!ip(&["route", "show", "dev", "flannel.1"]).contains("10.200.7.0/24"));
        assert!(!ip(&["neigh", "show", "dev", "flannel.1"]).contains("10.200.7.0 "));
        assert!(!bridge(&["fdb", "show", "dev", "flannel.1"]).contains("02:00:00:00:00:07"));
        assert!(!ip(&["nexthop", "show"]).contains("id 1007 "));
        assert_eq!(ip(&["nexthop", "show"]).lines().count(), 299);
        for r in nl.send_all(peer7).await {
            r.unwrap();
        }
        // a classic route by gateway and device, whatever its flags
        let classic = Route {
            dst: "10.250.0.0/24".parse().unwrap(),
            gateway: Some("10.250.0.0".parse().unwrap()),
            oif: Some(index),
            onlink: true,
            nhid: None,
        };
        nl.send_all(vec![Request::Route(classic)]).await[0]
            .as_ref()
            .unwrap();
        assert!(ip(&["route", "show", "dev", "flannel.1"])
            .contains("10.250.0.0/24 via 10.250.0.0 onlink"));
        nl.del_route(classic).await.unwrap();
        assert!(!ip(&["route", "show", "dev", "flannel.1"]).contains("10.250.0.0/24"));
        nl.del_route(classic).await.unwrap();
    });
}
