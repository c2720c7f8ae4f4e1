//! Backends of flanneld-rs: what a node does with the other nodes' leases.
//!
//! The VXLAN backend ([`vxlan::VxlanBackend`]) keeps the kernel matching the desired peer set:
//! a `flannel.<VNI>` device and, per remote node, a permanent ARP entry, a bridge FDB entry
//! and an onlink route, programmed over rtnetlink ([`netlink`]). It reconciles rather than
//! replays: incrementally on every lease event, in full at start and on a period, and at once
//! when the kernel reports that something it holds for us was deleted.

pub mod netlink;
pub mod vxlan;

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Upstream's prefix, so that operators' searches keep working.
    #[error("error decoding VXLAN backend config: {0}")]
    Config(String),
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    Device(String),
}

/// The interface that carries the encapsulated traffic to the other nodes (`--iface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Its IPv4 addresses with prefix: a peer inside one of these is on the same L2
    /// (DirectRouting).
    pub ipv4: Vec<Ipv4Network>,
}

impl ExtIface {
    /// Whether `ip` is reachable without a router from this interface.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        self.ipv4.iter().any(|n| n.prefix() < 32 && n.contains(ip))
    }
}
