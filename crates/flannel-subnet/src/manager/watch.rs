//! The lease watch and the config watch. The lease watch lists, sends the difference to what
//! the consumer knew, then follows the changes; after any break (compaction, store restart,
//! partition) it lists again, so a removal is never missed.

use std::sync::atomic::Ordering;
use tokio::time::Instant;

use flannel_net::{LeaseBatch, NetworkConfig, SubnetKey};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{parse, LeaseManager};
use crate::backoff::{sleep_unless, Backoff};
use crate::error::StoreError;
use crate::lease_set::LeaseSet;
use crate::store::{Change, Key, Store, Watched};
use crate::SubnetError;

impl<S: Store> LeaseManager<S> {
    pub(super) async fn watch_leases_forever(
        &self,
        tx: mpsc::Sender<LeaseBatch>,
    ) -> Result<(), SubnetError> {
        let mut set = LeaseSet::default();
        let mut backoff = Backoff::new();
        let mut first = true;
        loop {
            let started = Instant::now();
            if !std::mem::take(&mut first) {
                self.stats.watch_resyncs.fetch_add(1, Ordering::Relaxed);
            }
            match self.watch_session(&mut set, &tx).await {
                Ok(()) => backoff = Backoff::new(),
                Err(SubnetError::Closed) => return Ok(()),
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    let pause = backoff.next(started);
                    warn!("lease watch interrupted: {e}; re-listing in {pause:?}");
                    if !sleep_unless(pause, tx.closed()).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One life of the lease watch; `Ok` asks to list again at once.
    async fn watch_session(
        &self,
        set: &mut LeaseSet,
        tx: &mpsc::Sender<LeaseBatch>,
    ) -> Result<(), SubnetError> {
        let (records, revision) = self.store.list().await?;
        // each record goes as its lease goes into the set (a cold start lists thousands)
        let snapshot = records
            .into_iter()
            .filter_map(|record| match parse(&record).lease {
                Ok(lease) => Some(lease),
                Err(e) => {
                    warn!(key = %record.name, "ignoring bad subnet lease: {e}");
                    None
                }
            });
        let events = set.reset(snapshot);
        tx.send(LeaseBatch {
            events,
            snapshot: true,
        })
        .await
        .map_err(|_| SubnetError::Closed)?;
        let mut changes = self.store.watch(None, revision).await?;
        loop {
            let item = tokio::select! {
                item = changes.next() => item,
                () = tx.closed() => return Err(SubnetError::Closed),
            };
            let Some(changes) = changes_of(item, "leases")? else {
                info!(
                    "{} watch for leases fell behind the store's history (compaction), re-listing and resuming",
                    self.store.name()
                );
                return Ok(());
            };
            // one net event per lease: a response may hold many revisions (a watch catching
            // up), a lease written and deleted among them (found by the chaos run)
            let events = set.apply(changes.into_iter().filter_map(|change| match change {
                Change::Put(record) => match parse(&record).lease {
                    Ok(lease) => Some((lease.key(), Some(lease))),
                    // Keep what we knew of that node: a broken update must not cut it off.
                    Err(e) => {
                        warn!(key = %record.name, "ignoring bad subnet lease: {e}");
                        None
                    }
                },
                Change::Delete(name) => name.parse::<SubnetKey>().ok().map(|key| (key, None)),
            }));
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

    /// Sends the network config each time it is written (`Err` with the reason when the new
    /// value does not parse or the key was deleted), until `tx` is closed.
    pub(super) async fn watch_config_forever(
        &self,
        tx: mpsc::Sender<Result<NetworkConfig, String>>,
    ) -> Result<(), SubnetError> {
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            match self.watch_config_session(&tx).await {
                Err(SubnetError::Closed) => return Ok(()),
                Ok(()) => backoff = Backoff::new(),
                Err(e) => {
                    let pause = backoff.next(started);
                    debug!("config watch: {e}; again in {pause:?}");
                    if !sleep_unless(pause, tx.closed()).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn watch_config_session(
        &self,
        tx: &mpsc::Sender<Result<NetworkConfig, String>>,
    ) -> Result<(), SubnetError> {
        let key = Key::Config;
        let (_, revision) = self.store.get(&key).await?;
        let mut changes = self.store.watch(Some(&key), revision).await?;
        loop {
            let item = tokio::select! {
                item = changes.next() => item,
                () = tx.closed() => return Err(SubnetError::Closed),
            };
            let Some(changes) = changes_of(item, &self.store.describe(&key))? else {
                return Ok(());
            };
            for change in changes {
                let msg = match change {
                    Change::Put(record) => {
                        NetworkConfig::from_etcd(&String::from_utf8_lossy(&record.value))
                            .map_err(|e| e.to_string())
                    }
                    Change::Delete(_) => Err(format!("{} was deleted", self.store.describe(&key))),
                };
                tx.send(msg).await.map_err(|_| SubnetError::Closed)?;
            }
        }
    }
}

/// What a watch's next item means to a session: its changes; `None` when the store lost the
/// history the watch needed (list again and go on from there); an error when the watch broke
/// or ended (the session is over, and the next one reads afresh). `what` names what is
/// watched, for the error.
pub(super) fn changes_of(
    item: Option<Result<Watched, StoreError>>,
    what: &str,
) -> Result<Option<Vec<Change>>, SubnetError> {
    match item {
        None => Err(StoreError::transient(format!("watching {what}"), "the watch ended").into()),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(Watched::Reset)) => Ok(None),
        Some(Ok(Watched::Changes(changes))) => Ok(Some(changes)),
    }
}
