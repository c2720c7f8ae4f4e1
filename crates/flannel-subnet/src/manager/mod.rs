//! [`LeaseManager`]: the lease semantics, written once over any [`Store`]. Upstream's
//! "local manager" (`pkg/subnet/etcd/local_manager.go`), minus its failures:
//! - the acquire is retried while other nodes race us (upstream's `raceRetries`), reusing
//!   this node's lease by PublicIP, else the previous subnet of subnet.env, else a random one;
//! - one TTL per node, renewed in place (etcd v3: one etcd lease kept alive, reused across
//!   restarts; upstream grants a new one at every renewal and start);
//! - a reservation (a key without TTL) stays one (upstream v0.18+ turns it into a 24 h lease,
//!   flannel-io/flannel#1329);
//! - a key that disappears while we run is written again at once (upstream exits 0);
//! - the lease watch re-lists after any break and reports exactly the difference, removals
//!   included, and never asks the store anything per event.
//!
//! The keeper ([`keep`]) and the watches ([`watch`]) run in sessions, restarted after every
//! break with a backoff (100 ms doubling to 5 s, reset after a session that lasted).

mod keep;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use flannel_net::{Expiration, Lease, LeaseAttrs, LeaseBatch, NetworkConfig, SubnetKey};
use tokio::sync::{mpsc, watch as tokio_watch};
use tracing::{debug, info, warn};

use crate::acquire;
use crate::store::{Cond, Key, Life, Record, Store};
use crate::{LeaseEntry, SubnetError, SubnetManager, SubnetStats};

/// Upstream's `raceRetries`.
const RACE_RETRIES: usize = 10;

/// How long leases live and when they are renewed; apart from how the store is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// TTL of a new lease (upstream `subnetTTL`: 24 h). Shorter only in tests.
    pub ttl: Duration,
    /// Renew this long before expiry (`--subnet-lease-renew-margin`, default 60 min).
    pub renew_margin: Duration,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            ttl: crate::SUBNET_TTL,
            renew_margin: Duration::from_secs(60 * 60),
        }
    }
}

impl LeasePolicy {
    /// How long to wait before renewing a lease that has `remaining` to live: until `margin`
    /// before its expiry, or half the TTL before it when the margin is as long as the TTL (a
    /// short test TTL with the default hour). A fixed instant, whichever keeper session
    /// waits for it: half of what is left, counted afresh by each session, was put off by
    /// every break of the keeper's watch (the chaos run's seventh finding).
    fn renew_wait(&self, remaining: Duration) -> Duration {
        let before_expiry = if self.renew_margin >= self.ttl {
            self.ttl / 2
        } else {
            self.renew_margin
        };
        remaining.saturating_sub(before_expiry)
    }
}

/// The outcome of one acquire attempt.
enum Attempt {
    Done(Box<Lease>),
    /// Somebody changed the keys between our read and our write: read again.
    Raced,
}

/// A subnet key's record, read.
struct Parsed {
    /// The subnets the key names, even when the value is garbage: they are taken all the same.
    subnet: Option<SubnetKey>,
    /// The lease, or why the key or value does not parse.
    lease: Result<Lease, String>,
}

/// A subnet key's record as acquiring reads it ([`LeaseManager::list_subnets`]).
struct ListedKey {
    /// The subnets the key names, even when the value is garbage.
    subnet: Option<SubnetKey>,
    /// The lease, when it parses and was kept.
    lease: Option<Box<Lease>>,
}

fn parse(record: &Record) -> Parsed {
    let key = record.name.parse::<SubnetKey>().map_err(|e| e.to_string());
    let lease = key.clone().and_then(|k| {
        Ok(Lease {
            subnet: k.ipv4,
            ipv6_subnet: k.ipv6,
            attrs: LeaseAttrs::from_json(&record.value).map_err(|e| e.to_string())?,
            expiration: match (record.expires, record.remaining) {
                (false, _) => Expiration::Never,
                (true, Some(left)) => Expiration::At(SystemTime::now() + left),
                (true, None) => Expiration::Unknown,
            },
        })
    });
    Parsed {
        subnet: key.ok(),
        lease,
    }
}

fn subnet_key(lease: &Lease) -> Key {
    Key::Subnet(lease.key().to_string())
}

/// What [`write_config`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWrite {
    Created,
    /// The same config is there already.
    Unchanged,
    /// A different config is there; it was left alone. Holds the stored text.
    Differs(String),
    /// A different config was there and was replaced (forced). Holds the old text.
    Replaced(String),
    /// Dry run: nothing written; what would happen.
    WouldCreate,
}

/// Puts the network config only when there is none (or, with `force`, when it differs).
/// Any store error is an error (the Ansible role's silent skip is not copied); `dry_run`
/// only reads.
pub async fn write_config(
    store: &dyn Store,
    json: &str,
    force: bool,
    dry_run: bool,
) -> Result<ConfigWrite, SubnetError> {
    let (current, _) = store.get(&Key::Config).await?;
    match current {
        Some(r) if same_json(&r.value, json) => Ok(ConfigWrite::Unchanged),
        Some(r) if !force || dry_run => Ok(ConfigWrite::Differs(
            String::from_utf8_lossy(&r.value).into_owned(),
        )),
        None if dry_run => Ok(ConfigWrite::WouldCreate),
        current => {
            let cond = current.as_ref().map_or(Cond::Absent, Cond::Unchanged);
            if !store
                .put(&Key::Config, json.as_bytes(), Life::Forever, cond)
                .await?
            {
                // written meanwhile (the other nodes of a play install at once): the same
                // config is no conflict
                return match store.get(&Key::Config).await?.0 {
                    Some(r) if same_json(&r.value, json) => Ok(ConfigWrite::Unchanged),
                    _ => Err(SubnetError::Conflict(store.describe(&Key::Config))),
                };
            }
            Ok(match current {
                Some(r) => ConfigWrite::Replaced(String::from_utf8_lossy(&r.value).into_owned()),
                None => ConfigWrite::Created,
            })
        }
    }
}

/// The same bytes, or the same JSON value (`{"Type": "vxlan"}` as the Ansible role wrote it
/// is `{"Type":"vxlan"}`).
fn same_json(stored: &[u8], wanted: &str) -> bool {
    stored == wanted.as_bytes()
        || matches!(
            (
                serde_json::from_slice::<serde_json::Value>(stored),
                serde_json::from_str::<serde_json::Value>(wanted),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}

/// The lease semantics over store `S`.
pub struct LeaseManager<S> {
    store: S,
    policy: LeasePolicy,
    /// FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET of the subnet.env a previous run left, if any.
    previous_subnet: Option<SubnetKey>,
    stats: Arc<SubnetStats>,
}

impl<S: Store> LeaseManager<S> {
    pub fn new(store: S, policy: LeasePolicy, previous_subnet: Option<SubnetKey>) -> Self {
        LeaseManager {
            store,
            policy,
            previous_subnet,
            stats: Arc::default(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Every subnet key, parsed; bad ones are logged.
    async fn list_parsed(&self) -> Result<(Vec<Record>, Vec<Parsed>), SubnetError> {
        let (records, _) = self.store.list().await?;
        let parsed: Vec<Parsed> = records.iter().map(parse).collect();
        for (record, p) in records.iter().zip(&parsed) {
            if let Err(e) = &p.lease {
                warn!(key = %record.name, "ignoring bad subnet lease: {e}");
            }
        }
        Ok((records, parsed))
    }

    /// Every subnet key as acquiring reads it: its subnets, and the lease itself only when
    /// `keep` wants it; bad ones are logged. The others' values and attributes are dropped
    /// as they are read: a cold start lists thousands, and only this node's own leases
    /// matter beyond their subnets.
    async fn list_subnets(
        &self,
        keep: impl Fn(&Lease) -> bool,
    ) -> Result<(Vec<Record>, Vec<ListedKey>), SubnetError> {
        let (mut records, _) = self.store.list().await?;
        let mut subnets = Vec::with_capacity(records.len());
        for record in &mut records {
            let Parsed { subnet, lease } = parse(record);
            let lease = match lease {
                Ok(lease) if keep(&lease) => Some(Box::new(lease)),
                Ok(_) => None,
                Err(e) => {
                    warn!(key = %record.name, "ignoring bad subnet lease: {e}");
                    None
                }
            };
            if lease.is_none() {
                record.value = Vec::new();
            }
            subnets.push(ListedKey { subnet, lease });
        }
        Ok((records, subnets))
    }

    /// One read-decide-write round of acquiring this node's lease.
    async fn try_acquire(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Attempt, SubnetError> {
        // a lease is reused only when it is this node's (acquire::decide)
        let (mut records, parsed) = self
            .list_subnets(|l| acquire::is_mine(config, attrs, l))
            .await?;
        let seen: Vec<acquire::Seen> = parsed
            .iter()
            .map(|p| acquire::Seen {
                subnet: p.subnet,
                lease: p.lease.as_deref(),
            })
            .collect();
        let plan = acquire::decide(config, attrs, &seen, self.previous_subnet, &mut rand::rng());
        if let Some(i) = plan.delete {
            let r = &records[i];
            // lost to a race: the next round sees what is there now
            self.store
                .delete(&Key::Subnet(r.name.clone()), r.revision)
                .await?;
        }
        match plan.decision {
            acquire::Decision::OutOfSubnets => Err(SubnetError::OutOfSubnets),
            acquire::Decision::Reuse(i) => {
                let subnet = parsed[i].subnet.ok_or(SubnetError::OutOfSubnets)?;
                self.reuse(&mut records[i], subnet, attrs).await
            }
            acquire::Decision::Create { subnet, .. } => {
                let key = Key::Subnet(subnet.to_string());
                let life = Life::Ttl(self.policy.ttl);
                let value = attrs.to_json();
                if !self
                    .store
                    .put(&key, value.as_bytes(), life, Cond::Absent)
                    .await?
                {
                    return Ok(Attempt::Raced);
                }
                if self.gave_way(&subnet).await? {
                    return Ok(Attempt::Raced);
                }
                info!(
                    "Allocated lease (ip: {} ipv6: {}) to current node ({}) ",
                    subnet.ipv4,
                    subnet
                        .ipv6
                        .map_or_else(|| "::/0".to_string(), |s| s.to_string()),
                    node_ip(attrs)
                );
                Ok(done(subnet, attrs, Some(self.policy.ttl)))
            }
        }
    }

    /// Right after creating `ours`: when a key created earlier holds one of its subnets
    /// (another node picked the same subnet of one family at the same time), deletes ours
    /// and says so (`true`): the caller picks again. See [`acquire::lost_to`].
    async fn gave_way(&self, ours: &SubnetKey) -> Result<bool, SubnetError> {
        let (records, parsed) = self.list_subnets(|_| false).await?;
        let name = ours.to_string();
        let Some(mine) = records.iter().find(|r| r.name == name) else {
            // gone already (expired, deleted): pick again
            return Ok(true);
        };
        let others = parsed
            .iter()
            .zip(&records)
            .filter_map(|(p, r)| Some((p.subnet.as_ref()?, r.revision)));
        let Some(winner) = acquire::lost_to(ours, mine.revision, others) else {
            return Ok(false);
        };
        warn!(
            "another node took subnet {winner} at the same time as this node's {ours}; giving {ours} up and picking again"
        );
        self.store.delete(&Key::Subnet(name), mine.revision).await?;
        Ok(true)
    }

    /// Takes over this node's existing lease: a reservation stays one; a lease gets its full
    /// TTL again, keeping its TTL handle (etcd v3: the same etcd lease). The value is
    /// written only when it changed, so that the other nodes see no event.
    async fn reuse(
        &self,
        record: &mut Record,
        subnet: SubnetKey,
        attrs: &LeaseAttrs,
    ) -> Result<Attempt, SubnetError> {
        let key = Key::Subnet(record.name.clone());
        let value = attrs.to_json();
        let unchanged = record.value == value.as_bytes();
        if !record.expires {
            if !unchanged
                && !self
                    .store
                    .put(
                        &key,
                        value.as_bytes(),
                        Life::Forever,
                        Cond::Unchanged(record),
                    )
                    .await?
            {
                return Ok(Attempt::Raced);
            }
            return Ok(done(subnet, attrs, None));
        }
        let life = Life::Ttl(self.policy.ttl);
        let left = self.store.renew(record, self.policy.ttl).await?;
        // expired between our read and now: written again with a new TTL
        if (!unchanged || left.is_none())
            && !self
                .store
                .put(&key, value.as_bytes(), life, Cond::Unchanged(record))
                .await?
        {
            return Ok(Attempt::Raced);
        }
        Ok(done(subnet, attrs, Some(left.unwrap_or(self.policy.ttl))))
    }

    /// `LeaseTaken` unless `record` still names this node.
    fn check_ours(&self, lease: &Lease, record: &Record) -> Result<(), SubnetError> {
        match LeaseAttrs::from_json(&record.value) {
            Ok(a) if node_ip(&a) == node_ip(&lease.attrs) => Ok(()),
            _ => Err(SubnetError::LeaseTaken {
                subnet: lease.key().to_string(),
                holder: String::from_utf8_lossy(&record.value).into_owned(),
                ours: node_ip(&lease.attrs),
            }),
        }
    }
}

/// The address that names a node in its lease: PublicIP, or PublicIPv6 for an IPv6-only node
/// (whose PublicIP is 0.0.0.0).
pub(crate) fn node_ip(attrs: &LeaseAttrs) -> String {
    match attrs.public_ipv6 {
        Some(v6) if attrs.public_ip.is_unspecified() => v6.to_string(),
        _ => attrs.public_ip.to_string(),
    }
}

fn done(subnet: SubnetKey, attrs: &LeaseAttrs, ttl: Option<Duration>) -> Attempt {
    Attempt::Done(Box::new(Lease {
        subnet: subnet.ipv4,
        ipv6_subnet: subnet.ipv6,
        attrs: attrs.clone(),
        expiration: ttl.map_or(Expiration::Never, |t| Expiration::At(SystemTime::now() + t)),
    }))
}

#[async_trait]
impl<S: Store> SubnetManager for LeaseManager<S> {
    fn stats(&self) -> Arc<SubnetStats> {
        self.stats.clone()
    }

    fn name(&self) -> String {
        // upstream's text
        match self.previous_subnet {
            Some(s) if s.ipv4.prefix() != 0 => {
                format!("Etcd Local Manager with Previous Subnet: {}", s.ipv4)
            }
            Some(SubnetKey { ipv6: Some(s), .. }) => {
                format!("Etcd Local Manager with Previous Subnet: {s}")
            }
            _ => "Etcd Local Manager with Previous Subnet: None".into(),
        }
    }

    async fn get_network_config(&self) -> Result<NetworkConfig, SubnetError> {
        let (record, _) = self.store.get(&Key::Config).await?;
        let record = record.ok_or_else(|| self.store.config_not_found())?;
        Ok(NetworkConfig::from_etcd(&String::from_utf8_lossy(
            &record.value,
        ))?)
    }

    async fn acquire_lease(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, SubnetError> {
        // before anything is written: a value this node would refuse to read back would leave
        // its key unrecognised at the next start, and the node would take another subnet
        attrs.encode()?;
        for _ in 0..RACE_RETRIES {
            match self.try_acquire(config, attrs).await? {
                Attempt::Done(lease) => return Ok(*lease),
                Attempt::Raced => {
                    debug!("another node changed the leases while we acquired ours; trying again")
                }
            }
        }
        Err(SubnetError::MaxRetries)
    }

    async fn keep_lease(
        &self,
        lease: Lease,
        status: tokio_watch::Sender<Lease>,
    ) -> Result<(), SubnetError> {
        self.keep_forever(lease, status).await
    }

    async fn watch_leases(&self, tx: mpsc::Sender<LeaseBatch>) -> Result<(), SubnetError> {
        self.watch_leases_forever(tx).await
    }

    async fn list_leases(&self) -> Result<Vec<LeaseEntry>, SubnetError> {
        let (records, parsed) = self.list_parsed().await?;
        // one TTL request per TTL handle, for the stores that do not list TTLs
        let mut ttls: HashMap<i64, Option<Duration>> = HashMap::new();
        let mut out = Vec::with_capacity(records.len());
        for (record, p) in records.into_iter().zip(parsed) {
            let lease = match p.lease {
                Ok(mut lease) if lease.expiration == Expiration::Unknown => {
                    let ttl = match ttls.get(&record.ttl_handle) {
                        Some(ttl) if record.ttl_handle != 0 => *ttl,
                        _ => {
                            let ttl = self.store.time_to_live(&record).await?;
                            ttls.insert(record.ttl_handle, ttl);
                            ttl
                        }
                    };
                    lease.expiration = ttl.map_or(Expiration::Unknown, |t| {
                        Expiration::At(SystemTime::now() + t)
                    });
                    Ok(lease)
                }
                other => other,
            };
            out.push(LeaseEntry {
                key: record.name,
                lease,
            });
        }
        Ok(out)
    }

    async fn watch_config(
        &self,
        tx: mpsc::Sender<Result<NetworkConfig, String>>,
    ) -> Result<(), SubnetError> {
        self.watch_config_forever(tx).await
    }

    async fn lease_of(&self, public_ip: std::net::IpAddr) -> Result<Option<Lease>, SubnetError> {
        let (records, _) = self.store.list().await?;
        Ok(records
            .iter()
            .filter_map(|r| parse(r).lease.ok())
            .find(|l| match public_ip {
                std::net::IpAddr::V4(ip) => l.attrs.public_ip == ip,
                std::net::IpAddr::V6(ip) => l.attrs.public_ipv6 == Some(ip),
            }))
    }
}

#[cfg(test)]
mod tests;
