//! The etcd v2 keys API registry: what upstream flanneld v0.10 to v0.17 speak, and where the
//! clusters installed by the Ansible role keep the network config and the leases.
//!
//! Semantics as upstream v0.16 (spec §2.4-2.6), with the same deliberate differences as the
//! v3 registry: a lost race is retried, reservations stay reservations, a key that vanishes
//! while we run is written again at once, renewals refresh the TTL without a watch event.

mod client;
pub mod migrate;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use flannel_net::time::format_utc;
use flannel_net::{Expiration, Lease, LeaseAttrs, NetworkConfig, SubnetKey};
use ipnetwork::Ipv4Network;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use client::{Cond, Node, Response, V2Client, V2Error};

use crate::etcd::{join_key, EtcdConfig};
use crate::lease_set::LeaseSet;
use crate::registry::{self, Attempt, BACKOFF_MAX, BACKOFF_MIN};
use crate::{acquire, LeaseEntry, SubnetError, SubnetManager, SubnetStats};
use flannel_net::LeaseBatch;

const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How long one long poll of a watch lasts before it is asked again.
const WATCH_POLL: Duration = Duration::from_secs(300);

pub struct EtcdV2SubnetManager {
    client: V2Client,
    cfg: EtcdConfig,
    config_key: String,
    subnets_dir: String,
    previous_subnet: Option<Ipv4Network>,
    stats: Arc<SubnetStats>,
}

/// A key under the subnets directory.
struct RawLease {
    name: String,
    key: String,
    lease: Result<Lease, String>,
    subnet: Option<Ipv4Network>,
    modified_index: u64,
    ttl: Option<i64>,
    value: String,
}

impl EtcdV2SubnetManager {
    pub fn new(cfg: EtcdConfig, previous_subnet: Option<Ipv4Network>) -> Result<Self, SubnetError> {
        Ok(EtcdV2SubnetManager {
            client: V2Client::new(&cfg)?,
            config_key: join_key(&cfg.prefix, "config"),
            subnets_dir: join_key(&cfg.prefix, "subnets"),
            cfg,
            previous_subnet,
            stats: Arc::default(),
        })
    }

    /// The v2 client, for migration and tests.
    pub fn client(&self) -> &V2Client {
        &self.client
    }

    fn ttl_secs(&self) -> u64 {
        self.cfg.subnet_ttl.as_secs().max(1)
    }

    fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}/{key}", self.subnets_dir)
    }

    fn parse_node(&self, node: &Node) -> Option<RawLease> {
        let name = node
            .key
            .strip_prefix(&format!("{}/", self.subnets_dir))?
            .to_string();
        let value = node.value.clone().unwrap_or_default();
        let subnet_key = name.parse::<SubnetKey>().map_err(|e| e.to_string());
        let lease = subnet_key.clone().and_then(|k| {
            Ok(Lease {
                subnet: k.ipv4,
                ipv6_subnet: k.ipv6,
                attrs: LeaseAttrs::from_json(value.as_bytes()).map_err(|e| e.to_string())?,
                expiration: match node.ttl {
                    None => Expiration::Never,
                    Some(t) if t > 0 => {
                        Expiration::At(SystemTime::now() + Duration::from_secs(t as u64))
                    }
                    Some(_) => Expiration::Unknown,
                },
            })
        });
        Some(RawLease {
            subnet: subnet_key.ok().map(|k| k.ipv4),
            name,
            key: node.key.clone(),
            lease,
            modified_index: node.modified_index,
            ttl: node.ttl,
            value,
        })
    }

    /// Every key under the subnets directory, and the store's index of that view.
    async fn list(&self) -> Result<(Vec<RawLease>, u64), SubnetError> {
        match self.client.get(&self.subnets_dir, true).await {
            Ok(resp) => Ok((
                resp.node
                    .nodes
                    .iter()
                    .filter_map(|n| self.parse_node(n))
                    .collect(),
                resp.index,
            )),
            Err(V2Error::Etcd {
                code: client::KEY_NOT_FOUND,
                index,
                ..
            }) => Ok((Vec::new(), index)),
            Err(e) => Err(e.into_subnet_error("listing leases (etcd v2)")),
        }
    }

    fn done(&self, subnet: Ipv4Network, attrs: &LeaseAttrs, ttl: Option<u64>) -> Attempt {
        Attempt::Done(Box::new(Lease {
            subnet,
            ipv6_subnet: None,
            attrs: attrs.clone(),
            expiration: ttl.map_or(Expiration::Never, |t| {
                Expiration::At(SystemTime::now() + Duration::from_secs(t))
            }),
        }))
    }

    /// A put whose failure by a lost race is `Raced`, not an error.
    async fn put_or_race(
        &self,
        key: &str,
        value: &str,
        ttl: Option<u64>,
        cond: Cond,
    ) -> Result<bool, SubnetError> {
        match self.client.put(key, value, ttl, cond).await {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.code(),
                    Some(client::NODE_EXIST | client::COMPARE_FAILED | client::KEY_NOT_FOUND)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into_subnet_error(format!("writing {key} (etcd v2)"))),
        }
    }

    async fn try_acquire(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Attempt, SubnetError> {
        let (raws, _) = self.list().await?;
        for raw in &raws {
            if let Err(e) = &raw.lease {
                warn!(key = %raw.name, "ignoring bad subnet lease: {e}");
            }
        }
        let seen: Vec<acquire::Seen> = raws
            .iter()
            .map(|r| acquire::Seen {
                subnet: r.subnet,
                lease: r.lease.as_ref().ok(),
            })
            .collect();
        let plan = acquire::decide(config, attrs, &seen, self.previous_subnet, &mut rand::rng());
        if let Some(i) = plan.delete {
            let raw = &raws[i];
            if let Err(e) = self.client.delete(&raw.key, Some(raw.modified_index)).await {
                if !matches!(
                    e.code(),
                    Some(client::COMPARE_FAILED | client::KEY_NOT_FOUND)
                ) {
                    return Err(e.into_subnet_error(format!("deleting {} (etcd v2)", raw.key)));
                }
            }
        }
        let value = attrs.to_json();
        match plan.decision {
            acquire::Decision::OutOfSubnets => Err(SubnetError::OutOfSubnets),
            acquire::Decision::Reuse(i) => {
                let raw = &raws[i];
                let subnet = raw.subnet.expect("a parsed lease has a subnet");
                // A reservation stays one; a lease gets its full TTL again.
                let ttl = raw.ttl.map(|_| self.ttl_secs());
                if (ttl.is_some() || raw.value != value)
                    && !self
                        .put_or_race(&raw.key, &value, ttl, Cond::Index(raw.modified_index))
                        .await?
                {
                    return Ok(Attempt::Raced);
                }
                Ok(self.done(subnet, attrs, ttl))
            }
            acquire::Decision::Create { subnet, .. } => {
                let key = self.lease_key(&SubnetKey::new(subnet));
                if !self
                    .put_or_race(&key, &value, Some(self.ttl_secs()), Cond::Absent)
                    .await?
                {
                    return Ok(Attempt::Raced);
                }
                info!(
                    "Allocated lease (ip: {subnet} ipv6: ::/0) to current node ({}) ",
                    attrs.public_ip
                );
                Ok(self.done(subnet, attrs, Some(self.ttl_secs())))
            }
        }
    }

    fn renew_wait(&self, remaining: Duration) -> Duration {
        if self.cfg.renew_margin >= self.cfg.subnet_ttl {
            remaining / 2
        } else {
            remaining.saturating_sub(self.cfg.renew_margin)
        }
    }

    /// Writes our key again after it vanished; `LeaseTaken` if somebody else has it now.
    async fn recreate(&self, lease: &Lease) -> Result<(), SubnetError> {
        let key = self.lease_key(&lease.key());
        let value = lease.attrs.to_json();
        match self
            .client
            .put(&key, &value, Some(self.ttl_secs()), Cond::Absent)
            .await
        {
            Ok(_) => {
                self.stats.lease_recreations.fetch_add(1, Ordering::Relaxed);
                info!(subnet = %lease.subnet, "re-created the lease for this node's subnet {}", lease.subnet);
                Ok(())
            }
            Err(e) if e.code() == Some(client::NODE_EXIST) => Ok(()),
            Err(e) => Err(e.into_subnet_error(format!("re-creating {key} (etcd v2)"))),
        }
    }

    fn taken(&self, lease: &Lease, value: &str) -> SubnetError {
        SubnetError::LeaseTaken {
            subnet: lease.subnet,
            holder: value.to_string(),
            ours: lease.attrs.public_ip,
        }
    }

    /// One life of the keeper; `Ok` asks to start over at once.
    async fn keep_once(
        &self,
        lease: &mut Lease,
        status: &watch::Sender<Lease>,
    ) -> Result<(), SubnetError> {
        let key = self.lease_key(&lease.key());
        let node = match self.client.get(&key, false).await {
            Ok(resp) => resp.node,
            Err(e) if e.code() == Some(client::KEY_NOT_FOUND) => {
                warn!(subnet = %lease.subnet, "the lease of this node's subnet is gone from etcd; re-creating it");
                return self.recreate(lease).await;
            }
            Err(e) => return Err(e.into_subnet_error(format!("reading {key} (etcd v2)"))),
        };
        let value = node.value.clone().unwrap_or_default();
        match LeaseAttrs::from_json(value.as_bytes()) {
            Ok(a) if a.public_ip == lease.attrs.public_ip => {}
            _ => return Err(self.taken(lease, &value)),
        }
        lease.expiration = match node.ttl {
            None => Expiration::Never,
            Some(t) => Expiration::At(SystemTime::now() + Duration::from_secs(t.max(0) as u64)),
        };
        status.send_replace(lease.clone());
        let mut renew_at = node
            .ttl
            .map(|t| Instant::now() + self.renew_wait(Duration::from_secs(t.max(0) as u64)));
        let mut wait_index = node.modified_index + 1;
        loop {
            let renew = async {
                match renew_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = renew => match self.client.refresh(&key, self.ttl_secs()).await {
                    Ok(_) => {
                        let expiration = SystemTime::now() + Duration::from_secs(self.ttl_secs());
                        lease.expiration = Expiration::At(expiration);
                        status.send_replace(lease.clone());
                        self.stats.lease_renewals.fetch_add(1, Ordering::Relaxed);
                        info!("Lease renewed, new expiration: {}", format_utc(expiration));
                        renew_at = Some(Instant::now() + self.renew_wait(self.cfg.subnet_ttl));
                    }
                    Err(e) if e.code() == Some(client::KEY_NOT_FOUND) => {
                        warn!(subnet = %lease.subnet, "the lease of this node's subnet expired; re-creating it");
                        return self.recreate(lease).await;
                    }
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        warn!("Error renewing lease (trying again in 1 min): {}", e.into_subnet_error("etcd v2"));
                        renew_at = Some(Instant::now() + RENEW_RETRY);
                    }
                },
                event = self.client.watch(&key, wait_index, WATCH_POLL) => match event {
                    Ok(None) => {}
                    Ok(Some(resp)) => {
                        wait_index = resp.node.modified_index + 1;
                        match resp.action.as_str() {
                            "delete" | "expire" | "compareAndDelete" => {
                                warn!(subnet = %lease.subnet, "the lease of this node's subnet was {}d in etcd; re-creating it", resp.action.trim_end_matches('e'));
                                return self.recreate(lease).await;
                            }
                            _ => {
                                let value = resp.node.value.unwrap_or_default();
                                match LeaseAttrs::from_json(value.as_bytes()) {
                                    Ok(a) if a.public_ip == lease.attrs.public_ip => {}
                                    _ => return Err(self.taken(lease, &value)),
                                }
                            }
                        }
                    }
                    Err(e) if e.code() == Some(client::EVENT_INDEX_CLEARED) => return Ok(()),
                    Err(e) => return Err(e.into_subnet_error(format!("watching {key} (etcd v2)"))),
                },
            }
        }
    }

    /// One life of the lease watch: list, send the difference, follow the changes. `Ok` on
    /// "event index cleared" (list again at once).
    async fn watch_once(
        &self,
        set: &mut LeaseSet,
        tx: &mpsc::Sender<LeaseBatch>,
    ) -> Result<(), SubnetError> {
        let (raws, index) = self.list().await?;
        let mut snapshot = Vec::with_capacity(raws.len());
        for raw in raws {
            match raw.lease {
                Ok(lease) => snapshot.push(lease),
                Err(e) => warn!(key = %raw.name, "ignoring bad subnet lease: {e}"),
            }
        }
        let events = set.reset(snapshot);
        tx.send(LeaseBatch {
            events,
            snapshot: true,
        })
        .await
        .map_err(|_| SubnetError::Closed)?;
        let mut wait_index = index + 1;
        loop {
            let resp = tokio::select! {
                r = self.client.watch(&self.subnets_dir, wait_index, WATCH_POLL) => r,
                () = tx.closed() => return Err(SubnetError::Closed),
            };
            let resp = match resp {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) if e.code() == Some(client::EVENT_INDEX_CLEARED) => {
                    info!("etcd v2 watch for {} fell behind (event index cleared), re-listing and resuming", self.subnets_dir);
                    return Ok(());
                }
                Err(e) => return Err(e.into_subnet_error("watching leases (etcd v2)")),
            };
            wait_index = resp.node.modified_index + 1;
            let Some(raw) = self.parse_node(&resp.node) else {
                continue;
            };
            let event = match resp.action.as_str() {
                "delete" | "expire" | "compareAndDelete" => raw
                    .name
                    .parse::<SubnetKey>()
                    .ok()
                    .and_then(|k| set.remove(&k)),
                _ => match raw.lease {
                    Ok(lease) => set.put(lease),
                    Err(e) => {
                        warn!(key = %raw.name, "ignoring bad subnet lease: {e}");
                        None
                    }
                },
            };
            if let Some(event) = event {
                debug!(action = %resp.action, key = %raw.name, "lease event");
                tx.send(LeaseBatch {
                    events: vec![event],
                    snapshot: false,
                })
                .await
                .map_err(|_| SubnetError::Closed)?;
            }
        }
    }
}

#[async_trait]
impl SubnetManager for EtcdV2SubnetManager {
    fn stats(&self) -> Arc<SubnetStats> {
        self.stats.clone()
    }

    fn name(&self) -> String {
        match self.previous_subnet {
            Some(s) => format!("Etcd Local Manager with Previous Subnet: {s}"),
            None => "Etcd Local Manager with Previous Subnet: None".into(),
        }
    }

    async fn get_network_config(&self) -> Result<NetworkConfig, SubnetError> {
        match self.client.get(&self.config_key, false).await {
            Ok(resp) => Ok(NetworkConfig::from_etcd(
                resp.node.value.as_deref().unwrap_or_default(),
            )?),
            Err(e) if e.code() == Some(client::KEY_NOT_FOUND) => Err(SubnetError::ConfigNotFound),
            Err(e) => Err(e.into_subnet_error(format!("reading {} (etcd v2)", self.config_key))),
        }
    }

    async fn acquire_lease(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, SubnetError> {
        registry::acquire_lease(self, config, attrs).await
    }

    async fn keep_lease(
        &self,
        lease: Lease,
        status: watch::Sender<Lease>,
    ) -> Result<(), SubnetError> {
        registry::keep_lease_forever(self, lease, status).await
    }

    async fn watch_leases(&self, tx: mpsc::Sender<LeaseBatch>) -> Result<(), SubnetError> {
        registry::watch_leases_forever(self, tx).await
    }

    async fn watch_config(
        &self,
        tx: mpsc::Sender<Result<NetworkConfig, String>>,
    ) -> Result<(), SubnetError> {
        let mut backoff = BACKOFF_MIN;
        let mut wait_index = None;
        loop {
            let index = match wait_index {
                Some(i) => i,
                None => match self.client.get(&self.config_key, false).await {
                    Ok(r) => r.index + 1,
                    Err(V2Error::Etcd { index, .. }) => index + 1,
                    Err(e) => {
                        debug!("config watch: {}", e.into_subnet_error("etcd v2"));
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = tx.closed() => return Ok(()),
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            let event = tokio::select! {
                r = self.client.watch(&self.config_key, index, WATCH_POLL) => r,
                () = tx.closed() => return Ok(()),
            };
            match event {
                Ok(None) => wait_index = Some(index),
                Ok(Some(resp)) => {
                    backoff = BACKOFF_MIN;
                    wait_index = Some(resp.node.modified_index + 1);
                    let msg = match resp.action.as_str() {
                        "delete" | "expire" | "compareAndDelete" => {
                            Err(format!("{} was deleted", self.config_key))
                        }
                        _ => {
                            NetworkConfig::from_etcd(resp.node.value.as_deref().unwrap_or_default())
                                .map_err(|e| e.to_string())
                        }
                    };
                    if tx.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
                Err(_) => wait_index = None,
            }
        }
    }

    async fn list_leases(&self) -> Result<Vec<LeaseEntry>, SubnetError> {
        let (raws, _) = self.list().await?;
        Ok(raws
            .into_iter()
            .map(|r| LeaseEntry {
                key: r.name,
                lease: r.lease,
            })
            .collect())
    }

    async fn lease_of(&self, public_ip: std::net::Ipv4Addr) -> Result<Option<Lease>, SubnetError> {
        registry::lease_of(self, public_ip).await
    }
}

#[async_trait]
impl registry::Registry for EtcdV2SubnetManager {
    fn counters(&self) -> &SubnetStats {
        &self.stats
    }

    async fn try_acquire(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Attempt, SubnetError> {
        EtcdV2SubnetManager::try_acquire(self, config, attrs).await
    }

    async fn valid_leases(&self) -> Result<Vec<Lease>, SubnetError> {
        let (raws, _) = self.list().await?;
        Ok(raws.into_iter().filter_map(|r| r.lease.ok()).collect())
    }

    async fn keep_session(
        &self,
        lease: &mut Lease,
        status: &watch::Sender<Lease>,
    ) -> Result<(), SubnetError> {
        EtcdV2SubnetManager::keep_once(self, lease, status).await
    }

    async fn watch_session(
        &self,
        set: &mut LeaseSet,
        tx: &mpsc::Sender<LeaseBatch>,
    ) -> Result<(), SubnetError> {
        EtcdV2SubnetManager::watch_once(self, set, tx).await
    }
}
