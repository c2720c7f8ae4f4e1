//! The acquire decision (upstream `tryAcquireLease`), pure: given every key under the
//! subnets prefix, this node's attributes, the config and the previous subnet, what to do.
//! [`crate::manager::LeaseManager`] carries the decision out through its store.

use flannel_net::{Lease, LeaseAttrs, NetworkConfig};
use ipnetwork::Ipv4Network;
use rand::Rng;
use tracing::info;

use crate::allocate;

/// What the manager sees of one key.
pub struct Seen<'a> {
    /// The subnet the key names (`None`: not a subnet key).
    pub subnet: Option<Ipv4Network>,
    /// The lease, when the value parses.
    pub lease: Option<&'a Lease>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Reuse the lease at this index of the listing (this node's, compatible).
    Reuse(usize),
    /// Create a new lease for this subnet; `previous` when it is the one from subnet.env.
    Create {
        subnet: Ipv4Network,
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

pub fn decide(
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    seen: &[Seen<'_>],
    previous: Option<Ipv4Network>,
    rng: &mut impl Rng,
) -> Plan {
    let mut taken: Vec<Ipv4Network> = seen.iter().filter_map(|s| s.subnet).collect();
    let mut delete = None;
    if let Some((i, lease)) = seen.iter().enumerate().find_map(|(i, s)| {
        s.lease
            .filter(|l| l.attrs.public_ip == attrs.public_ip)
            .map(|l| (i, l))
    }) {
        if config.is_compatible(lease.subnet) {
            info!(
                "Found lease ({}) for current IP ({}), reusing",
                lease.subnet, attrs.public_ip
            );
            return Plan {
                delete: None,
                decision: Decision::Reuse(i),
            };
        }
        info!(
            "Found lease ({}) for current IP ({}) but not compatible with current config, deleting",
            lease.subnet, attrs.public_ip
        );
        delete = Some(i);
        taken.retain(|t| *t != lease.subnet);
    }
    if let Some(previous) = previous {
        if !config.is_compatible(previous) {
            info!("Found previously leased subnet ({previous}) that is not compatible with the Etcd network config, ignoring");
        } else if taken.iter().any(|t| t.overlaps(previous)) {
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
    info!(
        "Picking subnet in range {} ... {}",
        config.subnet_min, config.subnet_max
    );
    let decision = match allocate::pick_subnet(config, &taken, rng) {
        Some(subnet) => Decision::Create {
            subnet,
            previous: false,
        },
        None => Decision::OutOfSubnets,
    };
    Plan { delete, decision }
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
                subnet: Some(l.subnet),
                lease: Some(l),
            })
            .collect()
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
            Some("10.5.9.0/24".parse().unwrap()),
            &mut rng,
        );
        assert_eq!(p.delete, Some(0));
        assert_eq!(
            p.decision,
            Decision::Create {
                subnet: "10.5.9.0/24".parse().unwrap(),
                previous: true
            }
        );
        // previous taken by another node: random among the free ones
        let leases = [lease("10.5.9.0/24", "192.0.2.9")];
        match decide(
            &config,
            &me,
            &seen(&leases),
            Some("10.5.9.0/24".parse().unwrap()),
            &mut rng,
        )
        .decision
        {
            Decision::Create {
                subnet,
                previous: false,
            } => assert_ne!(subnet, "10.5.9.0/24".parse().unwrap()),
            d => panic!("{d:?}"),
        }
        // a key with a garbage value still holds its subnet
        let full = NetworkConfig::from_etcd(r#"{"Network":"10.9.0.0/28"}"#).unwrap();
        let garbage: Vec<Seen> = ["10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30"]
            .iter()
            .map(|s| Seen {
                subnet: Some(s.parse().unwrap()),
                lease: None,
            })
            .collect();
        assert_eq!(
            decide(&full, &me, &garbage, None, &mut rng).decision,
            Decision::OutOfSubnets
        );
    }
}
