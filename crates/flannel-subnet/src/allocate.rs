//! Choosing a free subnet (upstream `allocateSubnet`): walk from SubnetMin to SubnetMax in
//! SubnetLen steps, keep the first 100 that overlap no existing lease, pick one at random.
//!
//! Upstream compares every candidate with every lease; this walks a sorted list of the taken
//! ranges instead and jumps over each, so a /8 with 60 000 leases costs a sort, not 10^9
//! comparisons.

use std::net::{Ipv4Addr, Ipv6Addr};

use flannel_net::NetworkConfig;
use ipnetwork::{Ipv4Network, Ipv6Network};
use rand::Rng;

/// Upstream collects at most this many candidates before picking one.
pub const MAX_CANDIDATES: usize = 100;

/// The first `limit` free IPv4 subnets of the config's SubnetLen between SubnetMin and
/// SubnetMax, in address order.
pub fn free_subnets(
    config: &NetworkConfig,
    taken: &[Ipv4Network],
    limit: usize,
) -> Vec<Ipv4Network> {
    let len = config.subnet_len.min(32);
    let ranges = taken
        .iter()
        .map(|n| {
            (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
            )
        })
        .collect();
    free_blocks(
        u128::from(u32::from(config.subnet_min)),
        u128::from(u32::from(config.subnet_max)),
        32 - len,
        ranges,
        limit,
    )
    .into_iter()
    .filter_map(|start| Ipv4Network::new(Ipv4Addr::from(start as u32), len as u8).ok())
    .collect()
}

/// The IPv6 counterpart of [`free_subnets`].
pub fn free_ipv6_subnets(
    config: &NetworkConfig,
    taken: &[Ipv6Network],
    limit: usize,
) -> Vec<Ipv6Network> {
    let (Some(min), Some(max)) = (config.ipv6_subnet_min, config.ipv6_subnet_max) else {
        return Vec::new();
    };
    let len = config.ipv6_subnet_len.min(128);
    let ranges = taken
        .iter()
        .map(|n| {
            let host = 128 - u32::from(n.prefix());
            let start = u128::from(n.network());
            (
                start,
                start | 1u128.checked_shl(host).map_or(u128::MAX, |s| s - 1),
            )
        })
        .collect();
    free_blocks(u128::from(min), u128::from(max), 128 - len, ranges, limit)
        .into_iter()
        .filter_map(|start| Ipv6Network::new(Ipv6Addr::from(start), len as u8).ok())
        .collect()
}

/// A random subnet among the first [`MAX_CANDIDATES`] free ones; `None` when there is none
/// ("out of subnets").
pub fn pick_subnet(
    config: &NetworkConfig,
    taken: &[Ipv4Network],
    rng: &mut impl Rng,
) -> Option<Ipv4Network> {
    let candidates = free_subnets(config, taken, MAX_CANDIDATES);
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[rng.random_range(0..candidates.len())])
}

/// The IPv6 counterpart of [`pick_subnet`]: a random one among the first
/// [`MAX_CANDIDATES`] free IPv6 subnets.
pub fn pick_ipv6_subnet(
    config: &NetworkConfig,
    taken: &[Ipv6Network],
    rng: &mut impl Rng,
) -> Option<Ipv6Network> {
    let candidates = free_ipv6_subnets(config, taken, MAX_CANDIDATES);
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[rng.random_range(0..candidates.len())])
}

/// Starts of free aligned blocks of `2^host_bits` addresses with `min <= start <= max`.
/// `taken` holds inclusive (first, last) address ranges, in any order, possibly overlapping.
fn free_blocks(
    min: u128,
    max: u128,
    host_bits: u32,
    mut taken: Vec<(u128, u128)>,
    limit: usize,
) -> Vec<u128> {
    let Some(size) = 1u128.checked_shl(host_bits) else {
        return Vec::new();
    };
    taken.sort_unstable();
    let mut out = Vec::new();
    let mut next_taken = 0;
    let mut candidate = min;
    while candidate <= max && out.len() < limit {
        let Some(last) = candidate.checked_add(size - 1) else {
            break;
        };
        // Ranges that end before this candidate can never matter again.
        while next_taken < taken.len() && taken[next_taken].1 < candidate {
            next_taken += 1;
        }
        // Among the ranges starting at or before `last`, find the furthest end.
        let mut blocked_until = None;
        let mut i = next_taken;
        while i < taken.len() && taken[i].0 <= last {
            blocked_until = Some(blocked_until.map_or(taken[i].1, |b: u128| b.max(taken[i].1)));
            i += 1;
        }
        match blocked_until {
            None => {
                out.push(candidate);
                match candidate.checked_add(size) {
                    Some(c) => candidate = c,
                    None => break,
                }
            }
            Some(end) => {
                // Jump to the first aligned block after the taken range.
                match end.checked_add(1).and_then(|e| e.checked_add(size - 1)) {
                    Some(e) => candidate = e & !(size - 1),
                    None => break,
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn config(json: &str) -> NetworkConfig {
        NetworkConfig::from_etcd(json).unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn first_candidates_skip_the_first_subnet_and_taken_ones() {
        let c = config(r#"{"Network":"10.3.0.0/16"}"#);
        let free = free_subnets(&c, &[net("10.3.2.0/24"), net("10.3.4.0/23")], 4);
        assert_eq!(
            free,
            vec![
                net("10.3.1.0/24"),
                net("10.3.3.0/24"),
                net("10.3.6.0/24"),
                net("10.3.7.0/24")
            ]
        );
    }

    #[test]
    fn at_most_100_candidates_and_out_of_subnets() {
        let c = config(r#"{"Network":"10.0.0.0/8"}"#);
        assert_eq!(free_subnets(&c, &[], 1000).len(), 1000);
        assert_eq!(free_subnets(&c, &[], MAX_CANDIDATES).len(), 100);
        let small = config(r#"{"Network":"10.9.0.0/28"}"#); // /30 subnets: .4, .8, .12 usable
        let all = free_subnets(&small, &[], 100);
        assert_eq!(
            all,
            vec![net("10.9.0.4/30"), net("10.9.0.8/30"), net("10.9.0.12/30")]
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(pick_subnet(&small, &all, &mut rng), None);
        // a lease covering the whole network blocks everything
        assert_eq!(pick_subnet(&small, &[net("10.9.0.0/28")], &mut rng), None);
    }

    #[test]
    fn random_choice_is_among_the_first_100() {
        let c = config(r#"{"Network":"10.0.0.0/8"}"#);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let s = pick_subnet(&c, &[], &mut rng).unwrap();
            assert!(
                u32::from(s.ip()) < u32::from(Ipv4Addr::new(10, 0, 101, 0)),
                "{s}"
            );
            seen.insert(s);
        }
        assert!(seen.len() > 50, "the choice is spread over the candidates");
    }

    #[test]
    fn slash8_with_60000_taken_subnets() {
        let c = config(r#"{"Network":"10.0.0.0/8"}"#);
        // Every subnet from 10.0.1.0 on is taken except every 997th, in shuffled order.
        let mut taken: Vec<Ipv4Network> = (1u32..=60_000)
            .filter(|i| i % 997 != 0)
            .map(|i| Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap())
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        use rand::seq::SliceRandom;
        taken.shuffle(&mut rng);
        let free = free_subnets(&c, &taken, MAX_CANDIDATES);
        assert_eq!(free.len(), 100);
        for (k, s) in free.iter().enumerate() {
            let i = (u32::from(s.ip()) - 0x0a00_0000) >> 8;
            if k < 60 {
                assert_eq!(i, 997 * (k as u32 + 1), "the holes come first");
            } else {
                assert!(i > 60_000);
            }
            assert!(!taken.iter().any(|t| t.overlaps(*s)));
        }
    }

    #[test]
    fn ipv6_candidates() {
        let c = config(r#"{"Network":"10.3.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let taken: Vec<Ipv6Network> = vec!["fc00:0:0:1::/64".parse().unwrap()];
        let free = free_ipv6_subnets(&c, &taken, 2);
        assert_eq!(
            free,
            vec![
                "fc00:0:0:2::/64".parse::<Ipv6Network>().unwrap(),
                "fc00:0:0:3::/64".parse().unwrap()
            ]
        );
    }

    proptest! {
        #[test]
        fn candidates_are_free_aligned_and_in_range(
            prefix in 8u8..=24, extra in 2u8..=6,
            taken in proptest::collection::vec((any::<u32>(), 8u8..=30), 0..60),
        ) {
            let len = (prefix + extra).min(30);
            let c = config(&format!(r#"{{"Network":"10.0.0.0/{prefix}","SubnetLen":{len}}}"#));
            let taken: Vec<Ipv4Network> = taken.into_iter().map(|(ip, l)| {
                let n = Ipv4Network::new(Ipv4Addr::from(ip), l).unwrap();
                Ipv4Network::new(n.network(), l).unwrap()
            }).collect();
            let free = free_subnets(&c, &taken, MAX_CANDIDATES);
            // the same as upstream's naive walk
            let mut naive = Vec::new();
            let mut cur = u32::from(c.subnet_min) as u64;
            while cur <= u32::from(c.subnet_max) as u64 && naive.len() < MAX_CANDIDATES {
                let s = Ipv4Network::new(Ipv4Addr::from(cur as u32), len).unwrap();
                if !taken.iter().any(|t| t.overlaps(s)) { naive.push(s); }
                cur += c.subnet_size() as u64;
            }
            prop_assert_eq!(free, naive);
        }
    }
}
