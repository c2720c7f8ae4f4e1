//! [`EtcdV2Store`]: the [`Store`] calls over etcd's v2 keys API. A key that expires has a
//! TTL of its own (renewed with `refresh=true`, which notifies no watcher); conditional
//! writes use `prevExist=false` and `prevIndex`; a watch is a chain of `wait=true` long
//! polls from an index.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use futures::StreamExt;

use super::client::{self, Cond as V2Cond, Node, Response, V2Client, V2Error};
use crate::error::StoreError;
use crate::etcd::EtcdConfig;
use crate::store::{Change, Cond, Key, KeyPaths, Life, Record, Revision, Store, Watched};
use crate::SubnetError;

/// How long one long poll of a watch lasts before it is asked again.
const WATCH_POLL: Duration = Duration::from_secs(300);
/// How often a member holding a long poll is asked whether it is alive.
const HEALTH_PERIOD: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct EtcdV2Store {
    client: V2Client,
    keys: KeyPaths,
}

fn secs(ttl: Duration) -> u64 {
    ttl.as_secs().max(1)
}

impl EtcdV2Store {
    pub fn new(cfg: &EtcdConfig) -> Result<Self, SubnetError> {
        Ok(EtcdV2Store {
            client: V2Client::new(cfg)?,
            keys: KeyPaths::new(&cfg.prefix),
        })
    }

    /// The v2 client, for tests that write as other nodes would.
    pub fn client(&self) -> &V2Client {
        &self.client
    }

    fn path(&self, key: &Key) -> String {
        self.keys.path(key)
    }

    fn record(&self, node: &Node) -> Option<Record> {
        Some(Record {
            name: self.keys.name_of(&node.key)?,
            value: node.value.clone().unwrap_or_default().into_bytes(),
            revision: node.modified_index,
            expires: node.ttl.is_some(),
            remaining: node
                .ttl
                .filter(|t| *t > 0)
                .map(|t| Duration::from_secs(t as u64)),
            ttl_handle: 0,
        })
    }

    fn change(&self, resp: &Response) -> Option<Change> {
        match resp.action.as_str() {
            "delete" | "expire" | "compareAndDelete" => {
                self.record(&resp.node).map(|r| Change::Delete(r.name))
            }
            _ => self.record(&resp.node).map(Change::Put),
        }
    }

    /// The next change after `after` under `path` (long polls until one comes).
    async fn next_change(
        &self,
        path: &str,
        after: Revision,
    ) -> Result<(Watched, Revision), StoreError> {
        loop {
            // the long poll, while the member it went to keeps answering its health check
            let member = self.client.current();
            let poll = self.client.watch(path, after + 1, WATCH_POLL);
            tokio::pin!(poll);
            let polled = loop {
                // the poll goes on during the check: an answer that comes meanwhile wins
                let check = async {
                    tokio::time::sleep(HEALTH_PERIOD).await;
                    self.client.alive(member).await
                };
                tokio::select! {
                    r = &mut poll => break r,
                    alive = check => {
                        if !alive {
                            self.client.failed(member);
                            return Err(StoreError::transient(
                                format!("watching {path} (etcd v2)"),
                                "the etcd member stopped answering",
                            ));
                        }
                    }
                }
            };
            match polled {
                Ok(None) => continue,
                Ok(Some(resp)) => {
                    let changes = self.change(&resp).into_iter().collect();
                    return Ok((Watched::Changes(changes), resp.node.modified_index));
                }
                Err(e) if e.code() == Some(client::EVENT_INDEX_CLEARED) => {
                    return Ok((Watched::Reset, after))
                }
                Err(e) => return Err(e.into_store_error(format!("watching {path} (etcd v2)"))),
            }
        }
    }
}

/// Whether a conditional request failed only because its condition did not hold.
fn lost_race(e: &V2Error) -> bool {
    matches!(
        e.code(),
        Some(client::NODE_EXIST | client::COMPARE_FAILED | client::KEY_NOT_FOUND)
    )
}

#[async_trait]
impl Store for EtcdV2Store {
    fn name(&self) -> &'static str {
        "etcd v2"
    }

    fn describe(&self, key: &Key) -> String {
        self.path(key)
    }

    async fn get(&self, key: &Key) -> Result<(Option<Record>, Revision), StoreError> {
        let path = self.path(key);
        match self.client.get(&path, false).await {
            Ok(resp) => Ok((self.record(&resp.node), resp.index)),
            Err(V2Error::Etcd {
                code: client::KEY_NOT_FOUND,
                index,
                ..
            }) => Ok((None, index)),
            Err(e) => Err(e.into_store_error(format!("reading {path} (etcd v2)"))),
        }
    }

    async fn list(&self) -> Result<(Vec<Record>, Revision), StoreError> {
        match self.client.get(&self.keys.subnets, true).await {
            Ok(resp) => Ok((
                resp.node
                    .nodes
                    .iter()
                    .filter_map(|n| self.record(n))
                    .collect(),
                resp.index,
            )),
            Err(V2Error::Etcd {
                code: client::KEY_NOT_FOUND,
                index,
                ..
            }) => Ok((Vec::new(), index)),
            Err(e) => Err(e.into_store_error("listing leases (etcd v2)")),
        }
    }

    async fn put(
        &self,
        key: &Key,
        value: &[u8],
        life: Life,
        cond: Cond<'_>,
    ) -> Result<bool, StoreError> {
        let path = self.path(key);
        let ttl = match life {
            Life::Forever => None,
            Life::Ttl(t) => Some(secs(t)),
        };
        let cond = match cond {
            Cond::Absent => V2Cond::Absent,
            Cond::Unchanged(r) => V2Cond::Index(r.revision),
        };
        match self
            .client
            .put(&path, &String::from_utf8_lossy(value), ttl, cond)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(e.into_store_error(format!("writing {path} (etcd v2)"))),
        }
    }

    async fn delete(&self, key: &Key, revision: Revision) -> Result<bool, StoreError> {
        let path = self.path(key);
        match self.client.delete(&path, Some(revision)).await {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(e.into_store_error(format!("deleting {path} (etcd v2)"))),
        }
    }

    async fn renew(
        &self,
        record: &mut Record,
        ttl: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let path = self.path(&Key::Subnet(record.name.clone()));
        match self.client.refresh(&path, secs(ttl)).await {
            Ok(resp) => {
                // a refresh moves the key's index: later conditional writes compare that
                record.revision = resp.node.modified_index;
                Ok(Some(Duration::from_secs(secs(ttl))))
            }
            Err(e) if e.code() == Some(client::KEY_NOT_FOUND) => Ok(None),
            Err(e) => Err(e.into_store_error(format!("renewing {path} (etcd v2)"))),
        }
    }

    async fn time_to_live(&self, record: &Record) -> Result<Option<Duration>, StoreError> {
        let (now, _) = self.get(&Key::Subnet(record.name.clone())).await?;
        Ok(now.and_then(|r| r.remaining))
    }

    async fn watch(
        &self,
        key: Option<&Key>,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<Watched, StoreError>>, StoreError> {
        let path = match key {
            Some(k) => self.path(k),
            None => self.keys.subnets.clone(),
        };
        let this = self.clone();
        Ok(stream::unfold(Some(after), move |state| {
            let this = this.clone();
            let path = path.clone();
            async move {
                let after = state?;
                match this.next_change(&path, after).await {
                    // after a reset the watch is over: the caller lists again
                    Ok((Watched::Reset, _)) => Some((Ok(Watched::Reset), None)),
                    Ok((changes, index)) => Some((Ok(changes), Some(index))),
                    Err(e) => Some((Err(e), None)),
                }
            }
        })
        .boxed())
    }
}
