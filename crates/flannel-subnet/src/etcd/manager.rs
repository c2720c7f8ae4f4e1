//! [`EtcdSubnetManager`]: upstream's etcd "local manager" semantics, minus its failures.
//!
//! Differences from upstream, each deliberate:
//! - one etcd lease per node, kept alive (upstream grants a new lease at every renewal and at
//!   every start); a restart reuses the node's existing etcd lease;
//! - a lost creation race is retried (upstream exits);
//! - a reservation (a key without etcd lease) stays one (upstream #1329 turns it into a 24 h
//!   lease);
//! - a key that disappears while we run is re-created at once (upstream exits 0);
//! - the watch never asks etcd for a TTL per event (upstream does one RPC per event).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use flannel_net::time::{format_duration, format_utc};
use flannel_net::{Expiration, Lease, LeaseAttrs, NetworkConfig, SubnetKey};
use ipnetwork::Ipv4Network;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{join_key, EtcdConfig};
use crate::acquire;
use crate::lease_set::LeaseSet;
use crate::registry::{self, Attempt, BACKOFF_MAX, BACKOFF_MIN};
use crate::{LeaseEntry, SubnetError, SubnetManager, SubnetStats};
use flannel_net::LeaseBatch;

/// Upstream retries a failed renewal every minute.
const RENEW_RETRY: Duration = Duration::from_secs(60);

pub struct EtcdSubnetManager {
    client: Client,
    cfg: EtcdConfig,
    config_key: String,
    /// `<prefix>/subnets/`, with the trailing slash so that `subnets-x/` never matches.
    subnets_prefix: String,
    previous_subnet: Option<Ipv4Network>,
    stats: Arc<SubnetStats>,
}

/// A key under the subnets prefix as etcd returned it.
struct RawLease {
    name: String,
    key: String,
    /// The parsed lease, or why it does not parse.
    lease: Result<Lease, String>,
    /// The subnet the key names, even when the value is garbage: it is taken all the same.
    subnet: Option<Ipv4Network>,
    etcd_lease: i64,
    mod_revision: i64,
    value: Vec<u8>,
}

fn etcd_err(context: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> SubnetError {
    let context = context.into();
    move |source| SubnetError::Etcd { context, source }
}

/// What [`EtcdSubnetManager::put_config`] did.
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

impl EtcdSubnetManager {
    /// Puts the network config at `<prefix>/config` only when there is none (or, with
    /// `force`, when it differs). Any etcd error is an error: the role's silent skip is not
    /// copied. `dry_run` only reads.
    pub async fn put_config(
        &self,
        json: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<ConfigWrite, SubnetError> {
        let key = self.config_key.as_str();
        let current = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(etcd_err(format!("reading {key}")))?;
        let existing = current.kvs().first().map(|kv| {
            (
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            )
        });
        match existing {
            Some((old, _)) if old == json => Ok(ConfigWrite::Unchanged),
            Some((old, _)) if !force || dry_run => Ok(ConfigWrite::Differs(old)),
            None if dry_run => Ok(ConfigWrite::WouldCreate),
            other => {
                let rev = other.as_ref().map_or(0, |(_, r)| *r);
                if !self.put_if_unchanged(key, json, rev, 0).await? {
                    return Err(SubnetError::Setup(format!(
                        "{key} changed while being written; run again"
                    )));
                }
                Ok(match other {
                    Some((old, _)) => ConfigWrite::Replaced(old),
                    None => ConfigWrite::Created,
                })
            }
        }
    }

    /// `previous_subnet` is FLANNEL_SUBNET of the subnet.env a previous run left, if any.
    pub async fn new(
        cfg: EtcdConfig,
        previous_subnet: Option<Ipv4Network>,
    ) -> Result<Self, SubnetError> {
        let client = cfg.connect().await?;
        Ok(EtcdSubnetManager {
            client,
            config_key: join_key(&cfg.prefix, "config"),
            subnets_prefix: join_key(&cfg.prefix, "subnets") + "/",
            cfg,
            previous_subnet,
            stats: Arc::default(),
        })
    }

    fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix)
    }

    fn parse_kv(&self, kv: &KeyValue) -> Option<RawLease> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let name = key.strip_prefix(&self.subnets_prefix)?.to_string();
        let subnet_key = name.parse::<SubnetKey>().map_err(|e| e.to_string());
        let lease = subnet_key.clone().and_then(|k| {
            let attrs = LeaseAttrs::from_json(kv.value()).map_err(|e| e.to_string())?;
            Ok(Lease {
                subnet: k.ipv4,
                ipv6_subnet: k.ipv6,
                attrs,
                expiration: if kv.lease() == 0 {
                    Expiration::Never
                } else {
                    Expiration::Unknown
                },
            })
        });
        Some(RawLease {
            subnet: subnet_key.ok().map(|k| k.ipv4),
            name,
            key,
            lease,
            etcd_lease: kv.lease(),
            mod_revision: kv.mod_revision(),
            value: kv.value().to_vec(),
        })
    }

    /// Every key under the subnets prefix, and the revision of that view.
    async fn list(&self) -> Result<(Vec<RawLease>, i64), SubnetError> {
        let resp = self
            .client
            .clone()
            .get(
                self.subnets_prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(etcd_err("listing leases"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((
            resp.kvs()
                .iter()
                .filter_map(|kv| self.parse_kv(kv))
                .collect(),
            revision,
        ))
    }

    async fn grant(&self) -> Result<i64, SubnetError> {
        let ttl = self.cfg.subnet_ttl.as_secs().max(1) as i64;
        Ok(self
            .client
            .clone()
            .lease_grant(ttl, None)
            .await
            .map_err(etcd_err("granting an etcd lease"))?
            .id())
    }

    async fn revoke(&self, id: i64) {
        if let Err(e) = self.client.clone().lease_revoke(id).await {
            debug!("revoking unused etcd lease {id:x}: {e}");
        }
    }

    /// Renews an etcd lease: the remaining TTL in seconds afterwards, 0 when the lease is gone.
    async fn keep_alive_once(&self, id: i64) -> Result<i64, SubnetError> {
        // etcd-client's keep_alive makes the first round trip itself and keeps its answer;
        // a second one tells the TTL.
        let round_trips = async {
            let (mut keeper, mut stream) = self.client.clone().lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(stream.message().await?.map_or(0, |r| r.ttl()))
        };
        match tokio::time::timeout(Duration::from_secs(10), round_trips).await {
            Ok(Ok(ttl)) => Ok(ttl),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => Ok(0),
            Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() == tonic::Code::NotFound => {
                Ok(0)
            }
            Ok(Err(e)) => Err(etcd_err("renewing the etcd lease")(e)),
            Err(_) => Err(SubnetError::Etcd {
                context: "renewing the etcd lease".into(),
                source: etcd_client::Error::LeaseKeepAliveError("no answer within 10 s".into()),
            }),
        }
    }

    /// Puts `value` at `key` if the key is still at `mod_revision` (0: still absent).
    /// `lease` 0 writes a key without TTL (a reservation).
    async fn put_if_unchanged(
        &self,
        key: &str,
        value: &str,
        mod_revision: i64,
        lease: i64,
    ) -> Result<bool, SubnetError> {
        let cond = if mod_revision == 0 {
            Compare::version(key, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key, CompareOp::Equal, mod_revision)
        };
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when([cond])
            .and_then([TxnOp::put(key, value, opts)]);
        Ok(self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(etcd_err(format!("writing {key}")))?
            .succeeded())
    }

    /// Creates a new lease for `subnet` (only if nobody has the key).
    async fn create(
        &self,
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
    ) -> Result<Attempt, SubnetError> {
        let key = self.lease_key(&SubnetKey::new(subnet));
        let id = self.grant().await?;
        if !self.put_if_unchanged(&key, &attrs.to_json(), 0, id).await? {
            self.revoke(id).await;
            return Ok(Attempt::Raced);
        }
        Ok(Attempt::Done(Box::new(Lease {
            subnet,
            ipv6_subnet: None,
            attrs: attrs.clone(),
            expiration: Expiration::At(SystemTime::now() + self.cfg.subnet_ttl),
        })))
    }

    /// Takes over this node's existing lease, keeping its etcd lease (or its reservation).
    async fn reuse(
        &self,
        raw: &RawLease,
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
    ) -> Result<Attempt, SubnetError> {
        let value = attrs.to_json();
        let unchanged = raw.value == value.as_bytes();
        let done = |expiration| {
            Attempt::Done(Box::new(Lease {
                subnet,
                ipv6_subnet: None,
                attrs: attrs.clone(),
                expiration,
            }))
        };
        if raw.etcd_lease == 0 {
            // A reservation stays a reservation.
            if !unchanged
                && !self
                    .put_if_unchanged(&raw.key, &value, raw.mod_revision, 0)
                    .await?
            {
                return Ok(Attempt::Raced);
            }
            return Ok(done(Expiration::Never));
        }
        let ttl = self.keep_alive_once(raw.etcd_lease).await?;
        if ttl > 0 {
            if !unchanged
                && !self
                    .put_if_unchanged(&raw.key, &value, raw.mod_revision, raw.etcd_lease)
                    .await?
            {
                return Ok(Attempt::Raced);
            }
            return Ok(done(Expiration::At(
                SystemTime::now() + Duration::from_secs(ttl as u64),
            )));
        }
        // The etcd lease expired between our read and now: move the key to a new one.
        let id = self.grant().await?;
        if !self
            .put_if_unchanged(&raw.key, &value, raw.mod_revision, id)
            .await?
        {
            self.revoke(id).await;
            return Ok(Attempt::Raced);
        }
        Ok(done(Expiration::At(
            SystemTime::now() + self.cfg.subnet_ttl,
        )))
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
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    raw.key.as_str(),
                    CompareOp::Equal,
                    raw.mod_revision,
                )])
                .and_then([TxnOp::delete(raw.key.as_str(), None)]);
            self.client
                .clone()
                .txn(txn)
                .await
                .map_err(etcd_err(format!("deleting {}", raw.key)))?;
        }
        let attempt = match plan.decision {
            acquire::Decision::Reuse(i) => {
                let raw = &raws[i];
                let subnet = raw.subnet.expect("a parsed lease has a subnet");
                return self.reuse(raw, subnet, attrs).await;
            }
            acquire::Decision::OutOfSubnets => return Err(SubnetError::OutOfSubnets),
            acquire::Decision::Create { subnet, .. } => (subnet, self.create(subnet, attrs).await?),
        };
        let (subnet, attempt) = attempt;
        if let Attempt::Done(_) = attempt {
            info!(
                "Allocated lease (ip: {subnet} ipv6: ::/0) to current node ({}) ",
                attrs.public_ip
            );
        }
        Ok(attempt)
    }

    /// Re-creates our key after it vanished. `Ok(id)` is the etcd lease now holding it.
    async fn recreate(&self, lease: &Lease) -> Result<i64, SubnetError> {
        let key = self.lease_key(&lease.key());
        let id = self.grant().await?;
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                lease.attrs.to_json(),
                Some(PutOptions::new().with_lease(id)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(etcd_err(format!("re-creating {key}")))?;
        if resp.succeeded() {
            self.stats.lease_recreations.fetch_add(1, Ordering::Relaxed);
            info!(subnet = %lease.subnet, "re-created the lease for this node's subnet {}", lease.subnet);
            return Ok(id);
        }
        self.revoke(id).await;
        // Somebody wrote the key first: fine if it is us (another of our requests), fatal if not.
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| self.parse_kv(kv)),
            _ => None,
        });
        match current {
            Some(raw)
                if raw
                    .lease
                    .as_ref()
                    .is_ok_and(|l| l.attrs.public_ip == lease.attrs.public_ip) =>
            {
                Ok(raw.etcd_lease)
            }
            Some(raw) => Err(SubnetError::LeaseTaken {
                subnet: lease.subnet,
                holder: String::from_utf8_lossy(&raw.value).into_owned(),
                ours: lease.attrs.public_ip,
            }),
            // Deleted again in between: the caller reads and tries again.
            None => Ok(0),
        }
    }

    /// The remaining life of an etcd lease, `None` when it is gone.
    async fn time_to_live(&self, id: i64) -> Result<Option<Duration>, SubnetError> {
        let resp = self
            .client
            .clone()
            .lease_time_to_live(id, None)
            .await
            .map_err(etcd_err("reading an etcd lease's TTL"))?;
        Ok((resp.ttl() > 0).then(|| Duration::from_secs(resp.ttl() as u64)))
    }

    /// How long to wait before renewing a lease that has `remaining` to live.
    fn renew_wait(&self, remaining: Duration) -> Duration {
        if self.cfg.renew_margin >= self.cfg.subnet_ttl {
            remaining / 2
        } else {
            remaining.saturating_sub(self.cfg.renew_margin)
        }
    }

    /// One life of the keeper: read our key, then renew and watch it until something breaks.
    /// `Ok(())` asks the caller to start over at once; an etcd error, after a pause.
    async fn keep_once(
        &self,
        lease: &mut Lease,
        status: &watch::Sender<Lease>,
    ) -> Result<(), SubnetError> {
        let key = self.lease_key(&lease.key());
        let resp = self
            .client
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(etcd_err(format!("reading {key}")))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut etcd_lease = match resp.kvs().first().and_then(|kv| self.parse_kv(kv)) {
            None => {
                warn!(subnet = %lease.subnet, "the lease of this node's subnet is gone from etcd; re-creating it");
                self.recreate(lease).await?;
                return Ok(());
            }
            Some(raw) => match &raw.lease {
                Ok(l) if l.attrs.public_ip == lease.attrs.public_ip => raw.etcd_lease,
                _ => {
                    return Err(SubnetError::LeaseTaken {
                        subnet: lease.subnet,
                        holder: String::from_utf8_lossy(&raw.value).into_owned(),
                        ours: lease.attrs.public_ip,
                    })
                }
            },
        };
        lease.expiration = if etcd_lease == 0 {
            Expiration::Never
        } else {
            match self.time_to_live(etcd_lease).await? {
                Some(ttl) => Expiration::At(SystemTime::now() + ttl),
                None => {
                    warn!(subnet = %lease.subnet, "the etcd lease of this node's subnet expired; re-creating it");
                    self.recreate(lease).await?;
                    return Ok(());
                }
            }
        };
        status.send_replace(lease.clone());
        let mut stream = self
            .client
            .clone()
            .watch(
                key.as_str(),
                Some(WatchOptions::new().with_start_revision(revision + 1)),
            )
            .await
            .map_err(etcd_err(format!("watching {key}")))?;
        let mut renew_at = match lease.expiration {
            Expiration::At(t) => {
                let wait = self.renew_wait(t.duration_since(SystemTime::now()).unwrap_or_default());
                info!("Waiting for {} to renew lease", format_duration(wait));
                Some(Instant::now() + wait)
            }
            _ => None,
        };
        loop {
            let renew = async {
                match renew_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = renew => {
                    match self.keep_alive_once(etcd_lease).await {
                        Ok(ttl) if ttl > 0 => {
                            let expiration = SystemTime::now() + Duration::from_secs(ttl as u64);
                            lease.expiration = Expiration::At(expiration);
                            status.send_replace(lease.clone());
                            self.stats.lease_renewals.fetch_add(1, Ordering::Relaxed);
                            info!("Lease renewed, new expiration: {}", format_utc(expiration));
                            renew_at = Some(Instant::now() + self.renew_wait(Duration::from_secs(ttl as u64)));
                        }
                        Ok(_) => {
                            warn!(subnet = %lease.subnet, "the etcd lease of this node's subnet expired; re-creating it");
                            self.recreate(lease).await?;
                            return Ok(());
                        }
                        Err(e) => {
                            self.stats.errors.fetch_add(1, Ordering::Relaxed);
                            warn!("Error renewing lease (trying again in 1 min): {e}");
                            renew_at = Some(Instant::now() + RENEW_RETRY);
                        }
                    }
                }
                msg = stream.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Err(SubnetError::Etcd {
                            context: format!("watching {key}"),
                            source: etcd_client::Error::WatchError("stream closed".into()),
                        }),
                        Err(e) => return Err(etcd_err(format!("watching {key}"))(e)),
                    };
                    if resp.canceled() || resp.compact_revision() != 0 {
                        return Ok(());
                    }
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Delete => {
                                warn!(subnet = %lease.subnet, "the lease of this node's subnet was deleted from etcd; re-creating it");
                                self.recreate(lease).await?;
                                return Ok(());
                            }
                            EventType::Put => match self.parse_kv(kv).map(|r| r.lease) {
                                Some(Ok(l)) if l.attrs.public_ip == lease.attrs.public_ip => {
                                    etcd_lease = kv.lease();
                                }
                                _ => {
                                    return Err(SubnetError::LeaseTaken {
                                        subnet: lease.subnet,
                                        holder: String::from_utf8_lossy(kv.value()).into_owned(),
                                        ours: lease.attrs.public_ip,
                                    })
                                }
                            },
                        }
                    }
                }
            }
        }
    }

    /// One life of the lease watch: list (sent as the difference to what `set` knew), then
    /// follow the changes. Returns `Ok` when etcd compacted past us (list again at once).
    async fn watch_once(
        &self,
        set: &mut LeaseSet,
        tx: &mpsc::Sender<LeaseBatch>,
    ) -> Result<(), SubnetError> {
        let (raws, revision) = self.list().await?;
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
        let mut stream = self
            .client
            .clone()
            .watch(
                self.subnets_prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(etcd_err("watching leases"))?;
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    return Err(SubnetError::Etcd {
                        context: "watching leases".into(),
                        source: etcd_client::Error::WatchError("stream closed".into()),
                    })
                }
                Err(e) => return Err(etcd_err("watching leases")(e)),
            };
            if resp.compact_revision() != 0 || resp.canceled() {
                info!(
                    "etcd watch for {} fell behind compaction horizon (compact rev {}), re-listing and resuming",
                    self.subnets_prefix,
                    resp.compact_revision()
                );
                return Ok(());
            }
            let mut events = Vec::new();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(raw) = self.parse_kv(kv) else {
                    continue;
                };
                match event.event_type() {
                    EventType::Put => match raw.lease {
                        Ok(lease) => events.extend(set.put(lease)),
                        // Keep what we knew of that node: a broken update must not cut it off.
                        Err(e) => warn!(key = %raw.name, "ignoring bad subnet lease: {e}"),
                    },
                    EventType::Delete => {
                        if let Ok(key) = raw.name.parse::<SubnetKey>() {
                            events.extend(set.remove(&key));
                        }
                    }
                }
            }
            if !events.is_empty() {
                tx.send(LeaseBatch {
                    events,
                    snapshot: false,
                })
                .await
                .map_err(|_| SubnetError::Closed)?;
            }
        }
    }
}

#[async_trait]
impl SubnetManager for EtcdSubnetManager {
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
        let resp = self
            .client
            .clone()
            .get(self.config_key.as_str(), None)
            .await
            .map_err(etcd_err(format!("reading {}", self.config_key)))?;
        let kv = resp.kvs().first().ok_or(SubnetError::ConfigNotFound)?;
        Ok(NetworkConfig::from_etcd(&String::from_utf8_lossy(
            kv.value(),
        ))?)
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

    async fn lease_of(&self, public_ip: std::net::Ipv4Addr) -> Result<Option<Lease>, SubnetError> {
        registry::lease_of(self, public_ip).await
    }

    async fn watch_config(
        &self,
        tx: mpsc::Sender<Result<NetworkConfig, String>>,
    ) -> Result<(), SubnetError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            let once = async {
                let key = self.config_key.as_str();
                let rev = self
                    .client
                    .clone()
                    .get(key, None)
                    .await
                    .map_err(etcd_err(format!("reading {key}")))?
                    .header()
                    .map_or(0, |h| h.revision());
                let mut stream = self
                    .client
                    .clone()
                    .watch(key, Some(WatchOptions::new().with_start_revision(rev + 1)))
                    .await
                    .map_err(etcd_err(format!("watching {key}")))?;
                while let Some(resp) = stream
                    .message()
                    .await
                    .map_err(etcd_err(format!("watching {key}")))?
                {
                    for event in resp.events() {
                        let msg = match (event.event_type(), event.kv()) {
                            (EventType::Put, Some(kv)) => {
                                NetworkConfig::from_etcd(&String::from_utf8_lossy(kv.value()))
                                    .map_err(|e| e.to_string())
                            }
                            _ => Err(format!("{key} was deleted")),
                        };
                        tx.send(msg).await.map_err(|_| SubnetError::Closed)?;
                    }
                    if resp.canceled() {
                        break;
                    }
                }
                Ok::<(), SubnetError>(())
            };
            match once.await {
                Err(SubnetError::Closed) => return Ok(()),
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    debug!("config watch: {e}; again in {backoff:?}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = tx.closed() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn list_leases(&self) -> Result<Vec<LeaseEntry>, SubnetError> {
        let (raws, _) = self.list().await?;
        let mut ttls: HashMap<i64, Option<Duration>> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let lease = match raw.lease {
                Ok(mut lease) if raw.etcd_lease != 0 => {
                    let ttl = match ttls.get(&raw.etcd_lease) {
                        Some(ttl) => *ttl,
                        None => {
                            let ttl = self.time_to_live(raw.etcd_lease).await?;
                            ttls.insert(raw.etcd_lease, ttl);
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
                key: raw.name,
                lease,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl registry::Registry for EtcdSubnetManager {
    fn counters(&self) -> &SubnetStats {
        &self.stats
    }

    async fn try_acquire(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Attempt, SubnetError> {
        EtcdSubnetManager::try_acquire(self, config, attrs).await
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
        EtcdSubnetManager::keep_once(self, lease, status).await
    }

    async fn watch_session(
        &self,
        set: &mut LeaseSet,
        tx: &mpsc::Sender<LeaseBatch>,
    ) -> Result<(), SubnetError> {
        EtcdSubnetManager::watch_once(self, set, tx).await
    }
}
