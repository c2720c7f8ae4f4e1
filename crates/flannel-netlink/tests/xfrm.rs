//! The xfrm policy messages of `netlink/xfrm.rs` against the kernel, checked with what
//! `ip xfrm policy` shows, in a network namespace of the test's own (policies need no ESP
//! module: this machine's kernel has them).
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use flannel_lab::netns::{self, ip};
use flannel_netlink::xfrm::{Dir, KernelXfrm, Policy};

#[test]
fn policies_are_added_replaced_listed_and_deleted_as_ip_xfrm_shows_them() {
    netns::run(|| async {
        let out = Policy {
            src: "10.5.1.0/24".parse().unwrap(),
            dst: "10.5.2.0/24".parse().unwrap(),
            dir: Dir::Out,
            tunnel_src: "192.0.2.1".parse().unwrap(),
            tunnel_dst: "192.0.2.2".parse().unwrap(),
            reqid: 11,
        };
        let back = |dir| Policy {
            src: out.dst,
            dst: out.src,
            dir,
            tunnel_src: out.tunnel_dst,
            tunnel_dst: out.tunnel_src,
            reqid: 11,
        };
        let mut all = vec![out, back(Dir::In), back(Dir::Fwd)];
        KernelXfrm::update(&all).unwrap();
        let shown = ip(&["xfrm", "policy", "show", "dir", "out"]);
        assert_eq!(
            shown.split_whitespace().collect::<Vec<_>>().join(" "),
            "src 10.5.1.0/24 dst 10.5.2.0/24 dir out priority 0 ptype main tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 11 mode tunnel",
            "{shown}"
        );
        // another program's policy (transport mode) is not of our shape
        ip(&[
            "xfrm",
            "policy",
            "add",
            "src",
            "10.9.0.1/32",
            "dst",
            "10.9.0.2/32",
            "dir",
            "out",
            "tmpl",
            "proto",
            "esp",
            "mode",
            "transport",
        ]);
        let mut listed = KernelXfrm::policies().unwrap();
        listed.sort();
        all.sort();
        assert_eq!(listed, all);
        // an update replaces the policy of its selector and direction (a peer's new address)
        let moved = Policy {
            tunnel_dst: "192.0.2.9".parse().unwrap(),
            ..out
        };
        KernelXfrm::update(&[moved]).unwrap();
        assert!(ip(&["xfrm", "policy", "show", "dir", "out"]).contains("dst 192.0.2.9"));
        assert_eq!(KernelXfrm::policies().unwrap().len(), 3);
        KernelXfrm::delete(&all).unwrap();
        // gone already: no error
        KernelXfrm::delete(&all).unwrap();
        assert_eq!(KernelXfrm::policies().unwrap(), vec![]);
        assert!(ip(&["xfrm", "policy", "show"]).contains("10.9.0.1"));
    });
}

// ESP states (SAs) need the esp4 module even to be held: they are listed and deleted in
// the VM lane's ipsec lab test (`crates/flanneld/tests/ipsec.rs`, the switch to vxlan).
