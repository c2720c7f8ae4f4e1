//! The acquire decision (upstream `tryAcquireLease`), pure: given every key under the
//! subnets prefix, this node's attributes, the config and the previous subnet, what to do.
//! [`crate::manager::LeaseManager`] carries the decision out through its store.

use flannel_net::{Lease, LeaseAttrs, NetworkConfig, SubnetKey};
use ipnetwork::{Ipv4Network, Ipv6Network};
use rand::Rng;
use tracing::info;

use crate::allocate;

/// What the manager sees of one key.
pub struct Seen<'a> {
    /// The subnets the key names (`None`: not a subnet key).
    pub subnet: Option<SubnetKey>,
    /// The lease, when the value parses; [`decide`] looks only at this node's own (see
    /// `is_mine`), so the caller may leave the others out.
    pub lease: Option<&'a Lease>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Reuse the lease at this index of the listing (this node's, compatible).
    Reuse(usize),
    /// Create a new lease for these subnets; `previous` when they are the ones of subnet.env.
    Create {
        subnet: SubnetKey,
        previous: bool,
    },
    OutOfSubnets,
}

/// The plan: first delete the entry at `delete` (this node's lease, incompatible with the
/// config), then carry out `decision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub delete: Option<usize>,
    pub decision: Decision,
}

/// The IPv4 part of a key an IPv6-only lease has: `0.0.0.0-0`, as upstream writes it.
pub fn no_ipv4() -> Ipv4Network {
    Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).expect("prefix 0 is valid")
}

/// Whether a lease's subnets fit `config` (upstream `isSubnetConfigCompat` and
/// `isIPv6SubnetConfigCompat`): each enabled family's subnet in its range and of its length,
/// no subnet of a disabled family.
pub fn is_compatible(config: &NetworkConfig, key: &SubnetKey) -> bool {
    let v4 = if config.enable_ipv4 {
        config.is_compatible(key.ipv4)
    } else {
        key.ipv4.prefix() == 0
    };
    let v6 = match key.ipv6 {
        Some(sn6) => config.enable_ipv6 && config.is_compatible_ipv6(sn6),
        None => !config.enable_ipv6,
    };
    v4 && v6
}

/// Whether `lease` is this node's: the same PublicIP, or, IPv6-only, the same PublicIPv6
/// (upstream compares PublicIP alone, which is 0.0.0.0 for every IPv6-only node).
pub(crate) fn is_mine(config: &NetworkConfig, attrs: &LeaseAttrs, lease: &Lease) -> bool {
    if config.enable_ipv4 {
        lease.attrs.public_ip == attrs.public_ip
    } else {
        attrs.public_ipv6.is_some() && lease.attrs.public_ipv6 == attrs.public_ipv6
    }
}

pub fn decide(
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    seen: &[Seen<'_>],
    previous: Option<SubnetKey>,
    rng: &mut impl Rng,
) -> Plan {
    let mut keys: Vec<SubnetKey> = seen.iter().filter_map(|s| s.subnet).collect();
    let me = if config.enable_ipv4 {
        attrs.public_ip.to_string()
    } else {
        attrs
            .public_ipv6
            .map_or_else(String::new, |ip| ip.to_string())
    };
    let mut delete = None;
    if let Some((i, lease)) = seen.iter().enumerate().find_map(|(i, s)| {
        s.lease
            .filter(|l| is_mine(config, attrs, l))
            .map(|l| (i, l))
    }) {
        if is_compatible(config, &lease.key()) {
            info!(
                "Found lease ({}) for current IP ({me}), reusing",
                lease.subnets_text()
            );
            return Plan {
                delete: None,
                decision: Decision::Reuse(i),
            };
        }
        info!(
            "Found lease ({}) for current IP ({me}) but not compatible with current config, deleting",
            lease.subnets_text()
        );
        delete = Some(i);
        keys.retain(|k| *k != lease.key());
    }
    let taken4: Vec<Ipv4Network> = keys
        .iter()
        .map(|k| k.ipv4)
        .filter(|n| n.prefix() != 0)
        .collect();
    let taken6: Vec<Ipv6Network> = keys.iter().filter_map(|k| k.ipv6).collect();
    // a family the config turned off since: the previous run's subnet of the other one is
    // still worth keeping
    let previous = previous.map(|p| SubnetKey {
        ipv4: if config.enable_ipv4 {
            p.ipv4
        } else {
            no_ipv4()
        },
        ipv6: p.ipv6.filter(|_| config.enable_ipv6),
    });
    if let Some(previous) = previous.filter(|p| p.ipv4.prefix() != 0 || p.ipv6.is_some()) {
        let held = (config.enable_ipv4 && taken4.iter().any(|t| t.overlaps(previous.ipv4)))
            || previous
                .ipv6
                .is_some_and(|p| taken6.iter().any(|t| t.overlaps(p)));
        if !is_compatible(config, &previous) {
            info!("Found previously leased subnet ({previous}) that is not compatible with the Etcd network config, ignoring");
        } else if held {
            info!("Found previously leased subnet ({previous}) but another node holds it now, ignoring");
        } else {
            info!("Found previously leased subnet ({previous}), reusing");
            return Plan {
                delete,
                decision: Decision::Create {
                    subnet: previous,
                    previous: true,
                },
            };
        }
    }
    let ipv4 = if config.enable_ipv4 {
        info!(
            "Picking subnet in range {} ... {}",
            config.subnet_min, config.subnet_max
        );
        allocate::pick_subnet(config, &taken4, rng)
    } else {
        Some(no_ipv4())
    };
    let ipv6 = if config.enable_ipv6 {
        if let (Some(min), Some(max)) = (config.ipv6_subnet_min, config.ipv6_subnet_max) {
            info!("Picking ipv6 subnet in range {min} ... {max}");
        }
        allocate::pick_ipv6_subnet(config, &taken6, rng).map(Some)
    } else {
        Some(None)
    };
    let decision = match (ipv4, ipv6) {
        (Some(ipv4), Some(ipv6)) => Decision::Create {
            subnet: SubnetKey { ipv4, ipv6 },
            previous: false,
        },
        _ => Decision::OutOfSubnets,
    };
    Plan { delete, decision }
}

/// Whether two leases' subnets overlap in a family both have (an IPv6-only key's `0.0.0.0/0`
/// is no IPv4 subnet).
pub fn collides(a: &SubnetKey, b: &SubnetKey) -> bool {
    let v4 = a.ipv4.prefix() != 0
        && b.ipv4.prefix() != 0
        && (a.ipv4.contains(b.ipv4.network()) || b.ipv4.contains(a.ipv4.network()));
    let v6 = match (a.ipv6, b.ipv6) {
        (Some(x), Some(y)) => x.contains(y.network()) || y.contains(x.network()),
        _ => false,
    };
    v4 || v6
}

/// After this node created `ours` (at `revision`): whether another key, created earlier,
/// holds one of its subnets. Two nodes that picked the same IPv6 (or IPv4) subnet with
/// different subnets of the other family write different keys, so the conditional create
/// lets both through; the later one (the higher revision: it always sees the earlier one
/// when it lists after its write) gives its key up and picks again.
pub fn lost_to<'a>(
    ours: &SubnetKey,
    revision: u64,
    others: impl IntoIterator<Item = (&'a SubnetKey, u64)>,
) -> Option<&'a SubnetKey> {
    others
        .into_iter()
        .find(|(key, rev)| *key != ours && *rev < revision && collides(ours, key))
        .map(|(key, _)| key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_net::Expiration;
    use rand::SeedableRng;

    fn lease(subnet: &str, ip: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: None,
                backend_v6_data: None,
            },
            expiration: Expiration::Unknown,
        }
    }

    fn seen<'a>(leases: &'a [Lease]) -> Vec<Seen<'a>> {
        leases
            .iter()
            .map(|l| Seen {
                subnet: Some(l.key()),
                lease: Some(l),
            })
            .collect()
    }

    #[test]
    fn the_previous_subnet_of_a_family_still_on_is_kept() {
        let v4_only =
            NetworkConfig::from_etcd(r#"{"Network":"10.5.0.0/16","SubnetMax":"10.5.20.0"}"#)
                .unwrap();
        let me = lease("10.5.7.0/24", "192.0.2.1").attrs;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // the previous run was dual-stack: its IPv4 subnet is taken again
        let previous = "10.5.9.0-24&fd00::-64".parse().unwrap();
        assert_eq!(
            decide(&v4_only, &me, &[], Some(previous), &mut rng).decision,
            Decision::Create {
                subnet: SubnetKey::new("10.5.9.0/24".parse().unwrap()),
                previous: true
            }
        );
    }

    #[test]
    fn reuse_then_previous_then_random() {
        let config =
            NetworkConfig::from_etcd(r#"{"Network":"10.5.0.0/16","SubnetMax":"10.5.20.0"}"#)
                .unwrap();
        let me = lease("10.5.7.0/24", "192.0.2.1").attrs;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let leases = [
            lease("10.5.3.0/24", "192.0.2.9"),
            lease("10.5.7.0/24", "192.0.2.1"),
        ];
        assert_eq!(
            decide(&config, &me, &seen(&leases), None, &mut rng).decision,
            Decision::Reuse(1)
        );
        // incompatible (outside SubnetMax): deleted, then the previous subnet if free
        let leases = [lease("10.5.99.0/24", "192.0.2.1")];
        let p = decide(
            &config,
            &me,
            &seen(&leases),
            Some(SubnetKey::new("10.5.9.0/24".parse().unwrap())),
            &mut rng,
        );
        assert_eq!(p.delete, Some(0));
        assert_eq!(
            p.decision,
            Decision::Create {
                subnet: SubnetKey::new("10.5.9.0/24".parse().unwrap()),
                previous: true
            }
        );
        // previous taken by another node: random among the free ones
        let leases = [lease("10.5.9.0/24", "192.0.2.9")];
        match decide(
            &config,
            &me,
            &seen(&leases),
            Some(SubnetKey::new("10.5.9.0/24".parse().unwrap())),
            &mut rng,
        )
        .decision
        {
            Decision::Create {
                subnet,
                previous: false,
            } => assert_ne!(subnet.ipv4, "10.5.9.0/24".parse().unwrap()),
            d => panic!("{d:?}"),
        }
        // a key with a garbage value still holds its subnet
        let full = NetworkConfig::from_etcd(r#"{"Network":"10.9.0.0/28"}"#).unwrap();
        let garbage: Vec<Seen> = ["10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30"]
            .iter()
            .map(|s| Seen {
                subnet: Some(SubnetKey::new(s.parse().unwrap())),
                lease: None,
            })
            .collect();
        assert_eq!(
            decide(&full, &me, &garbage, None, &mut rng).decision,
            Decision::OutOfSubnets
        );
    }

    #[test]
    fn a_later_key_with_a_taken_subnet_of_either_family_loses() {
        let k = |s: &str| s.parse::<SubnetKey>().unwrap();
        let ours = k("10.200.68.0-24&fd00:200:0:11::-64");
        let earlier_same_v6 = k("10.200.50.0-24&fd00:200:0:11::-64");
        let earlier_same_v4 = k("10.200.68.0-24&fd00:200:0:12::-64");
        let unrelated = k("10.200.70.0-24&fd00:200:0:13::-64");
        assert!(collides(&ours, &earlier_same_v6) && collides(&ours, &earlier_same_v4));
        assert!(!collides(&ours, &unrelated));
        // IPv6-only keys share 0.0.0.0/0: no IPv4 collision
        assert!(!collides(
            &k("0.0.0.0-0&fd00::-64"),
            &k("0.0.0.0-0&fd00:0:0:1::-64")
        ));
        assert_eq!(
            lost_to(&ours, 10, [(&earlier_same_v6, 9)]),
            Some(&earlier_same_v6)
        );
        // a later one loses, not us; ours itself is no rival
        assert_eq!(
            lost_to(&ours, 10, [(&earlier_same_v6, 11), (&ours, 10)]),
            None
        );
        assert_eq!(lost_to(&ours, 10, [(&unrelated, 3)]), None);
        assert_eq!(
            lost_to(&ours, 10, [(&earlier_same_v4, 4)]),
            Some(&earlier_same_v4)
        );
    }
}
