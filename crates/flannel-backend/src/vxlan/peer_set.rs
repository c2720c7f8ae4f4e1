//! The desired peers, with the indexes the run loop asks in O(log n): by subnet, by the FDB
//! entry a peer needs (is a deleted FDB entry one of ours?), and the prefix lengths in use (does
//! a new lease overlap a peer?). With 5000 peers under churn a linear scan per kernel
//! notification was a third of flanneld's instructions.
//!
//! B-trees, not hash tables: under churn a hash table's tombstones make it double its memory
//! once; a B-tree's memory follows the live peers.
//!
//! Family-neutral: subnets are `IpNetwork`s, which order IPv4 before IPv6, so each family's
//! peers are one contiguous range of the subnet index; prefix lengths are counted per family.

use std::collections::BTreeMap;
use std::net::IpAddr;

use flannel_net::MacAddr;
use ipnetwork::IpNetwork;

use super::peers::Peer;
use crate::netlink::Family;

#[derive(Debug, Default)]
pub struct PeerSet {
    by_subnet: BTreeMap<IpNetwork, Peer>,
    /// (VTEP MAC, PublicIP) of the peers that need an FDB entry, with how many do.
    fdb: BTreeMap<(MacAddr, IpAddr), u32>,
    /// How many peers have each (family, prefix length).
    prefixes: BTreeMap<(Family, u8), u32>,
}

/// The smallest and the largest subnet key whose network address is `ip`.
fn key_range(ip: IpAddr) -> Option<(IpNetwork, IpNetwork)> {
    let max = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    Some((IpNetwork::new(ip, 0).ok()?, IpNetwork::new(ip, max).ok()?))
}

/// Whether a peer of `by_subnet` needs the neighbour (ARP/NDP) entry `ip` (its gateway) with
/// `mac` (any MAC when `None`): a look at the few subnets whose network address is `ip`.
pub(super) fn needs_neighbour(
    by_subnet: &BTreeMap<IpNetwork, Peer>,
    ip: IpAddr,
    mac: Option<MacAddr>,
) -> bool {
    let Some((lo, hi)) = key_range(ip) else {
        return false;
    };
    by_subnet
        .range(lo..=hi)
        .any(|(_, p)| !p.direct && p.gateway() == ip && mac.is_none_or(|m| m == p.mac))
}

fn family(n: &IpNetwork) -> Family {
    Family::of(n.ip())
}

impl PeerSet {
    pub fn len(&self) -> usize {
        self.by_subnet.len()
    }

    pub fn contains(&self, subnet: &IpNetwork) -> bool {
        self.by_subnet.contains_key(subnet)
    }

    /// The peers in subnet order.
    pub fn values(&self) -> impl Iterator<Item = &Peer> {
        self.by_subnet.values()
    }

    /// The peers by subnet (what the reconcile plan reads).
    pub fn by_subnet(&self) -> &BTreeMap<IpNetwork, Peer> {
        &self.by_subnet
    }

    /// Adds or replaces the peer of `peer.subnet`; returns the one it replaces.
    pub fn insert(&mut self, peer: Peer) -> Option<Peer> {
        let old = self.by_subnet.insert(peer.subnet, peer);
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index(&peer);
        old
    }

    pub fn remove(&mut self, subnet: &IpNetwork) -> Option<Peer> {
        let old = self.by_subnet.remove(subnet)?;
        self.unindex(&old);
        Some(old)
    }

    fn index(&mut self, peer: &Peer) {
        let key = (family(&peer.subnet), peer.subnet.prefix());
        *self.prefixes.entry(key).or_default() += 1;
        if !peer.direct {
            *self.fdb.entry((peer.mac, peer.public_ip)).or_default() += 1;
        }
    }

    fn unindex(&mut self, peer: &Peer) {
        let key = (family(&peer.subnet), peer.subnet.prefix());
        if let Some(n) = self.prefixes.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.prefixes.remove(&key);
            }
        }
        if !peer.direct {
            let key = (peer.mac, peer.public_ip);
            if let Some(n) = self.fdb.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.fdb.remove(&key);
                }
            }
        }
    }

    /// A peer other than `subnet` itself whose subnet overlaps `subnet`.
    pub fn overlapping(&self, subnet: IpNetwork) -> Option<IpNetwork> {
        // peers inside `subnet`: their network addresses lie between its first and last
        let (first, last) = (subnet.network(), subnet.broadcast());
        let (lo, _) = key_range(first)?;
        let (_, hi) = key_range(last)?;
        if let Some((&inside, _)) = self.by_subnet.range(lo..=hi).find(|(&s, _)| s != subnet) {
            return Some(inside);
        }
        // peers containing `subnet`: at most one per shorter prefix length in use
        let fam = family(&subnet);
        self.prefixes
            .range((fam, 0)..(fam, subnet.prefix()))
            .filter_map(|(&(_, p), _)| {
                let n = IpNetwork::new(first, p).ok()?;
                IpNetwork::new(n.network(), p).ok()
            })
            .find(|n| self.by_subnet.contains_key(n))
    }

    /// Whether a peer needs the neighbour (ARP/NDP) entry `ip` (its gateway) with `mac` (any MAC when `None`).
    pub fn needs_neighbour(&self, ip: IpAddr, mac: Option<MacAddr>) -> bool {
        needs_neighbour(&self.by_subnet, ip, mac)
    }

    /// Whether a peer's route goes through nexthop `id` (see [`super::peers::nexthop_id`]:
    /// the id is its gateway's address).
    pub fn has_nexthop(&self, id: u32) -> bool {
        let gateway = IpAddr::V4(std::net::Ipv4Addr::from(id));
        let Some((lo, hi)) = key_range(gateway) else {
            return false;
        };
        self.by_subnet
            .range(lo..=hi)
            .any(|(_, p)| p.nexthop(0).is_some_and(|n| n.id == id))
    }

    /// Whether a peer needs the FDB entry `mac dst ip`.
    pub fn needs_fdb(&self, mac: MacAddr, ip: IpAddr) -> bool {
        self.fdb.contains_key(&(mac, ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subnet: &str, ip: [u8; 4], mac: u8, direct: bool) -> Peer {
        Peer {
            subnet: subnet.parse().unwrap(),
            public_ip: IpAddr::from(ip),
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            direct,
        }
    }

    #[test]
    fn indexes_follow_inserts_replacements_and_removals() {
        let mut set = PeerSet::default();
        let a = peer("10.200.2.0/24", [192, 168, 77, 2], 2, false);
        assert_eq!(set.insert(a), None);
        assert!(set.needs_neighbour(IpAddr::from([10, 200, 2, 0]), Some(a.mac)));
        assert!(set.needs_neighbour(IpAddr::from([10, 200, 2, 0]), None));
        assert!(!set.needs_neighbour(IpAddr::from([10, 200, 2, 0]), Some(MacAddr([9; 6]))));
        assert!(!set.needs_neighbour(IpAddr::from([10, 200, 3, 0]), None));
        assert!(set.needs_fdb(a.mac, a.public_ip));
        // a new MAC for the same subnet: the old FDB entry is no longer needed
        let a2 = peer("10.200.2.0/24", [192, 168, 77, 2], 22, false);
        assert_eq!(set.insert(a2), Some(a));
        assert!(!set.needs_fdb(a.mac, a.public_ip));
        assert!(set.needs_fdb(a2.mac, a2.public_ip));
        // direct peers need neither
        let d = peer("10.200.4.0/24", [192, 168, 77, 4], 4, true);
        set.insert(d);
        assert!(!set.needs_neighbour(IpAddr::from([10, 200, 4, 0]), None));
        assert!(!set.needs_fdb(d.mac, d.public_ip));
        assert_eq!(set.remove(&a2.subnet), Some(a2));
        assert!(!set.needs_fdb(a2.mac, a2.public_ip));
        assert!(!set.needs_neighbour(IpAddr::from([10, 200, 2, 0]), None));
        assert_eq!(set.len(), 1);
        assert_eq!(set.prefixes.values().sum::<u32>(), 1);
    }

    #[test]
    fn overlap_is_found_inside_and_around() {
        let mut set = PeerSet::default();
        set.insert(peer("10.200.2.0/24", [192, 168, 77, 2], 2, false));
        let s = |t: &str| t.parse::<IpNetwork>().unwrap();
        assert_eq!(set.overlapping(s("10.200.2.0/24")), None);
        assert_eq!(set.overlapping(s("10.200.3.0/24")), None);
        assert_eq!(
            set.overlapping(s("10.200.2.128/25")),
            Some(s("10.200.2.0/24"))
        );
        assert_eq!(
            set.overlapping(s("10.200.0.0/22")),
            Some(s("10.200.2.0/24"))
        );
        assert_eq!(set.overlapping(s("10.200.0.0/23")), None);
        set.insert(peer("10.201.0.0/16", [192, 168, 77, 3], 3, false));
        assert_eq!(
            set.overlapping(s("10.201.7.0/24")),
            Some(s("10.201.0.0/16"))
        );
    }
}
