//! [`EtcdV3Store`]: the [`Store`] calls over etcd's v3 API. A key that expires is attached
//! to an etcd lease (its TTL handle); a TTL write that names a record still alive keeps
//! that record's etcd lease, so a node keeps one etcd lease for good. Conditional writes are
//! transactions on the key's mod revision (or version 0: absent). Every request goes through
//! [`Members`]: to the member that answered last, to the next at once when it fails.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp, WatchOptions,
    WatchResponse,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use tracing::debug;

use super::members::Members;
use super::watch_pair::{self, Batch};
use super::EtcdConfig;
use crate::error::{reason, StoreError};
use crate::store::{Change, Cond, Key, KeyPaths, Life, Record, Revision, Store, Watched};
use crate::SubnetError;

/// The largest response read (a listing, a watch batch), as etcd's own Go client
/// (`MaxCallRecvMsgSize`, math.MaxInt32); gRPC's default of 4 MiB would refuse the listing of
/// a cluster whose leases are large (extension backends) or many.
pub(crate) const MAX_RESPONSE: usize = i32::MAX as usize;

/// A KV client of `c` that reads responses up to [`MAX_RESPONSE`].
fn kv(c: &etcd_client::Client) -> etcd_client::KvClient {
    c.kv_client().max_decoding_message_size(MAX_RESPONSE)
}

#[derive(Clone)]
pub struct EtcdV3Store {
    members: Arc<Members>,
    /// For messages: `http://10.0.0.1:2379,http://10.0.0.2:2379`.
    endpoints: String,
    keys: KeyPaths,
    /// `<prefix>/subnets/`, with the trailing slash so that `subnets-x/` never matches.
    subnets_prefix: String,
}

/// Why an etcd request failed, in an operator's words: `cannot reach etcd at <endpoints>:
/// connection refused`, or etcd's own message (`etcdserver: permission denied`).
pub(crate) fn describe(e: &etcd_client::Error, endpoints: &str) -> String {
    use etcd_client::Error as E;
    let unreachable = |why: String| format!("cannot reach etcd at {endpoints}: {why}");
    // something answered, but not gRPC over HTTP/2 (a web server, a TLS port asked in
    // plain text): hyper's and h2's words say nothing to an operator
    let text = e.to_string();
    if text.contains("h2 protocol error") || text.contains("http2 error") {
        return format!(
            "{endpoints} answered, but not as etcd (no gRPC over HTTP/2): is it etcd's client URL (port 2379 by default), with https:// if etcd serves TLS?"
        );
    }
    match e {
        E::GRpcStatus(s) if s.code() == tonic::Code::Unavailable => {
            let why = reason(s);
            // tonic's own words when there is no deeper cause
            unreachable(if why == s.to_string() {
                s.message().to_string()
            } else {
                why
            })
        }
        E::GRpcStatus(s) => s.message().to_string(),
        E::TransportError(t) => unreachable(reason(t)),
        E::IoError(io) => unreachable(reason(io)),
        E::LeaseKeepAliveError(m) | E::WatchError(m) | E::InvalidArgs(m) | E::Internal(m) => {
            m.clone()
        }
        other => other.to_string(),
    }
}

/// An etcd request that failed. Every one is worth retrying: etcd unreachable, a leader
/// election, a member restarting.
pub(crate) fn etcd_err<'a>(
    context: impl Into<String>,
    endpoints: &'a str,
) -> impl FnOnce(etcd_client::Error) -> StoreError + 'a {
    let context = context.into();
    move |e| StoreError::transient(context, describe(&e, endpoints))
}

impl EtcdV3Store {
    /// Checks the settings and makes the client; nothing is sent yet.
    pub async fn new(cfg: &EtcdConfig) -> Result<Self, SubnetError> {
        let keys = KeyPaths::new(&cfg.prefix);
        Ok(EtcdV3Store {
            members: Arc::new(cfg.members()?),
            endpoints: cfg.endpoints.join(","),
            subnets_prefix: format!("{}/", keys.subnets),
            keys,
        })
    }

    fn path(&self, key: &Key) -> String {
        self.keys.path(key)
    }

    fn name_of(&self, full: &[u8]) -> Option<String> {
        self.keys.name_of(&String::from_utf8_lossy(full))
    }

    fn record_of(&self, kv: KeyValue) -> Option<Record> {
        let name = self.name_of(kv.key())?;
        let (revision, ttl_handle) = (kv.mod_revision().max(0) as u64, kv.lease());
        let (_, value) = kv.into_key_value();
        Some(Record {
            name,
            value,
            revision,
            expires: ttl_handle != 0,
            remaining: None,
            ttl_handle,
        })
    }

    fn record(&self, kv: &KeyValue) -> Option<Record> {
        self.record_of(kv.clone())
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let ttl = ttl.as_secs().max(1) as i64;
        let (resp, _) = self
            .members
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await
            .map_err(etcd_err("granting an etcd lease", &self.endpoints))?;
        Ok(resp.id())
    }

    async fn revoke(&self, id: i64) {
        let revoked = self
            .members
            .call(|mut c| async move { c.lease_revoke(id).await })
            .await;
        if let Err(e) = revoked {
            debug!("revoking unused etcd lease {id:x}: {e}");
        }
    }

    async fn txn(&self, txn: Txn, context: String) -> Result<bool, StoreError> {
        let (resp, _) = self
            .members
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(etcd_err(context, &self.endpoints))?;
        Ok(resp.succeeded())
    }

    fn changes(&self, batch: &Batch) -> Watched {
        let Batch::Events(events) = batch else {
            return Watched::Reset;
        };
        Watched::Changes(
            events
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    match event.event_type() {
                        EventType::Put => self.record(kv).map(Change::Put),
                        EventType::Delete => self.name_of(kv.key()).map(Change::Delete),
                    }
                })
                .collect(),
        )
    }
}

/// A response of a watch on one member as the merged lease watch's [`Batch`].
fn batch_of(resp: WatchResponse) -> Batch {
    if resp.canceled() || resp.compact_revision() != 0 {
        debug!(
            "etcd watch canceled or compacted (compact revision {})",
            resp.compact_revision()
        );
        return Batch::Reset;
    }
    Batch::Events(resp.events().to_vec())
}

#[async_trait]
impl Store for EtcdV3Store {
    fn name(&self) -> &'static str {
        "etcd v3"
    }

    fn describe(&self, key: &Key) -> String {
        self.path(key)
    }

    /// Upstream's words, which ask about etcdv3.
    fn config_not_found(&self) -> SubnetError {
        SubnetError::ConfigNotFound
    }

    async fn get(&self, key: &Key) -> Result<(Option<Record>, Revision), StoreError> {
        let path = self.path(key);
        let (resp, _) = self
            .members
            .read(|c| {
                let path = path.clone();
                async move { kv(&c).get(path, None).await }
            })
            .await
            .map_err(etcd_err(format!("reading {path}"), &self.endpoints))?;
        let revision = resp.header().map_or(0, |h| h.revision()).max(0) as u64;
        Ok((resp.kvs().first().and_then(|kv| self.record(kv)), revision))
    }

    async fn list(&self) -> Result<(Vec<Record>, Revision), StoreError> {
        let prefix = self.subnets_prefix.clone();
        let (mut resp, _) = self
            .members
            .read(|c| {
                let prefix = prefix.clone();
                async move {
                    kv(&c)
                        .get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await
            .map_err(etcd_err("listing leases", &self.endpoints))?;
        let revision = resp.header().map_or(0, |h| h.revision()).max(0) as u64;
        // the values move into the records (thousands at a cold start: no second copy), and
        // the records' vector is allocated once, at its size
        let kvs = resp.take_kvs();
        let mut records = Vec::with_capacity(kvs.len());
        records.extend(kvs.into_iter().filter_map(|kv| self.record_of(kv)));
        Ok((records, revision))
    }

    async fn put(
        &self,
        key: &Key,
        value: &[u8],
        life: Life,
        cond: Cond<'_>,
    ) -> Result<bool, StoreError> {
        let path = self.path(key);
        let compare = match cond {
            Cond::Absent => Compare::version(path.as_str(), CompareOp::Equal, 0),
            Cond::Unchanged(r) => {
                Compare::mod_revision(path.as_str(), CompareOp::Equal, r.revision as i64)
            }
        };
        let (lease, granted) = match (life, cond) {
            (Life::Forever, _) => (0, false),
            (Life::Ttl(_), Cond::Unchanged(r)) if r.ttl_handle != 0 => (r.ttl_handle, false),
            (Life::Ttl(ttl), _) => (self.grant(ttl).await?, true),
        };
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(path.as_str(), value, opts)]);
        let written = self.txn(txn, format!("writing {path}")).await?;
        if !written && granted {
            self.revoke(lease).await;
        }
        Ok(written)
    }

    async fn delete(&self, key: &Key, revision: Revision) -> Result<bool, StoreError> {
        let path = self.path(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                path.as_str(),
                CompareOp::Equal,
                revision as i64,
            )])
            .and_then([TxnOp::delete(path.as_str(), None)]);
        self.txn(txn, format!("deleting {path}")).await
    }

    async fn renew(
        &self,
        record: &mut Record,
        _ttl: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let id = record.ttl_handle;
        if id == 0 {
            return Ok(None);
        }
        // etcd-client's keep_alive makes the first round trip itself and keeps its answer;
        // a second one tells the TTL.
        let renewed = self
            .members
            .call(|mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |r| r.ttl()))
            })
            .await;
        let ttl = match renewed {
            Ok((ttl, _)) => ttl,
            Err(etcd_client::Error::LeaseKeepAliveError(e)) if e.contains("not found") => 0,
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => 0,
            Err(e) => return Err(etcd_err("renewing the etcd lease", &self.endpoints)(e)),
        };
        if ttl <= 0 {
            record.ttl_handle = 0;
            return Ok(None);
        }
        Ok(Some(Duration::from_secs(ttl as u64)))
    }

    async fn time_to_live(&self, record: &Record) -> Result<Option<Duration>, StoreError> {
        let id = record.ttl_handle;
        if id == 0 {
            return Ok(None);
        }
        let (resp, _) = self
            .members
            .read(|mut c| async move { c.lease_time_to_live(id, None).await })
            .await
            .map_err(etcd_err("reading an etcd lease's TTL", &self.endpoints))?;
        Ok((resp.ttl() > 0).then(|| Duration::from_secs(resp.ttl() as u64)))
    }

    async fn watch(
        &self,
        key: Option<&Key>,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<Watched, StoreError>>, StoreError> {
        let (path, opts) = match key {
            Some(k) => (self.path(k), WatchOptions::new()),
            None => (
                self.subnets_prefix.clone(),
                WatchOptions::new().with_prefix(),
            ),
        };
        let opts = opts.with_start_revision(after as i64 + 1);
        let (stream, member) = self
            .members
            .call(|c| {
                let (path, opts) = (path.clone(), opts.clone());
                async move {
                    c.watch_client()
                        .max_decoding_message_size(MAX_RESPONSE)
                        .watch(path, Some(opts))
                        .await
                }
            })
            .await
            .map_err(etcd_err(format!("watching {path}"), &self.endpoints))?;
        // The lease watch runs on two members where there are several (see watch_pair).
        let responses = if key.is_none() && self.members.len() > 1 {
            watch_pair::merged(
                self.members.clone(),
                path.clone(),
                opts,
                stream,
                member,
                after as i64,
            )
        } else {
            let members = self.members.clone();
            stream
                .map(move |item| {
                    // the next session starts on another member (the pair marks its own)
                    if let Err(e) = &item {
                        if super::members::member_failed(e) {
                            members.failed(member);
                        }
                    }
                    item.map(batch_of)
                })
                .boxed()
        };
        let this = self.clone();
        Ok(responses
            .map(move |item| match item {
                Ok(batch) => Ok(this.changes(&batch)),
                Err(e) => Err(etcd_err(format!("watching {path}"), &this.endpoints)(e)),
            })
            .boxed())
    }
}
