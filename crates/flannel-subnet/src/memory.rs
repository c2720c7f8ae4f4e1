//! [`MemoryStore`]: a [`Store`] in memory, for fast tests of the lease semantics. It keeps
//! what the real stores promise (revisions, conditional writes, TTLs, watches from a
//! revision, a history that can be compacted) and lets a test break it the ways a real
//! store breaks: unreachable, watches cut, history compacted, data wiped. Clones share the
//! same data, like two nodes talking to one etcd. Every call yields to the scheduler first,
//! so that concurrent callers interleave as they would over a network.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::store::{Change, Cond, Key, Life, Record, Revision, Store, Watched};

struct Entry {
    value: Vec<u8>,
    revision: Revision,
    /// `None`: never expires.
    expires_at: Option<Instant>,
    ttl_handle: i64,
}

#[derive(Clone)]
enum Msg {
    Change(Revision, Key, Change),
    /// Changes a watch gets in one response (see [`MemoryStore::hold`]).
    Batch(Vec<(Revision, Key, Change)>),
    /// The connection of every watch breaks.
    Break,
}

struct State {
    revision: Revision,
    keys: BTreeMap<Key, Entry>,
    /// Every change after `compacted`.
    history: Vec<(Revision, Key, Change)>,
    compacted: Revision,
    down: bool,
    /// Renewals fail while the rest works: an etcd member without a leader still serves a
    /// watch, but a lease keep-alive needs the leader.
    renewals_fail: bool,
    /// Changes held back from the live watches, to be delivered in one response.
    held: Option<Vec<(Revision, Key, Change)>>,
    next_handle: i64,
    events: broadcast::Sender<Msg>,
}

#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            state: Arc::new(Mutex::new(State {
                revision: 1,
                keys: BTreeMap::new(),
                history: Vec::new(),
                compacted: 0,
                down: false,
                renewals_fail: false,
                held: None,
                next_handle: 1,
                events: broadcast::channel(1024).0,
            })),
        }
    }
}

fn name_of(key: &Key) -> String {
    match key {
        Key::Config => "config".into(),
        Key::Subnet(name) => name.clone(),
    }
}

fn record(key: &Key, e: &Entry) -> Record {
    Record {
        name: name_of(key),
        value: e.value.clone(),
        revision: e.revision,
        expires: e.expires_at.is_some(),
        remaining: None,
        ttl_handle: e.ttl_handle,
    }
}

impl State {
    fn record_change(&mut self, key: Key, change: Change) {
        self.history
            .push((self.revision, key.clone(), change.clone()));
        match &mut self.held {
            Some(held) => held.push((self.revision, key, change)),
            None => {
                let _ = self.events.send(Msg::Change(self.revision, key, change));
            }
        }
    }

    /// Removes what expired, as deletions.
    fn expire(&mut self) {
        let now = Instant::now();
        let gone: Vec<Key> = self
            .keys
            .iter()
            .filter(|(_, e)| e.expires_at.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.keys.remove(&key);
            self.revision += 1;
            self.record_change(key.clone(), Change::Delete(name_of(&key)));
        }
    }
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        // a test that panicked while holding the lock has failed already
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Yields, then the state with expired keys removed, or an error while down.
    async fn open(&self, context: &str) -> Result<MutexGuard<'_, State>, StoreError> {
        tokio::task::yield_now().await;
        let mut state = self.lock();
        if state.down {
            return Err(StoreError::transient(context, "connection refused"));
        }
        state.expire();
        Ok(state)
    }

    /// Makes every request fail (and cuts the watches) until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        let mut state = self.lock();
        state.down = down;
        if down {
            let _ = state.events.send(Msg::Break);
        }
    }

    /// Holds the changes from now on back from the live watches until [`MemoryStore::release`]
    /// delivers them in one response, as etcd does to a watch catching up.
    pub fn hold(&self) {
        self.lock().held = Some(Vec::new());
    }

    pub fn release(&self) {
        let mut state = self.lock();
        if let Some(held) = state.held.take() {
            let _ = state.events.send(Msg::Batch(held));
        }
    }

    /// Makes renewals fail (and nothing else) until `fail_renewals(false)`.
    pub fn fail_renewals(&self, fail: bool) {
        self.lock().renewals_fail = fail;
    }

    /// Cuts every watch's connection, as a store restart or a partition does.
    pub fn break_watches(&self) {
        let _ = self.lock().events.send(Msg::Break);
    }

    /// Forgets the history so far: a watch from an older revision gets [`Watched::Reset`].
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.revision;
        state.history.clear();
    }

    /// Loses every key, as a store restarted with its data wiped; watches are cut.
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.keys.clear();
        state.history.clear();
        state.compacted = state.revision;
        let _ = state.events.send(Msg::Break);
    }

    /// The value at `key` now (for assertions).
    pub fn value(&self, key: &Key) -> Option<String> {
        let mut state = self.lock();
        state.expire();
        state
            .keys
            .get(key)
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
    }

    /// Whether the key at `key` expires.
    pub fn expires(&self, key: &Key) -> Option<bool> {
        self.lock().keys.get(key).map(|e| e.expires_at.is_some())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn describe(&self, key: &Key) -> String {
        match key {
            Key::Config => "/memory/config".into(),
            Key::Subnet(name) => format!("/memory/subnets/{name}"),
        }
    }

    async fn get(&self, key: &Key) -> Result<(Option<Record>, Revision), StoreError> {
        let state = self.open("reading").await?;
        Ok((state.keys.get(key).map(|e| record(key, e)), state.revision))
    }

    async fn list(&self) -> Result<(Vec<Record>, Revision), StoreError> {
        let state = self.open("listing leases").await?;
        Ok((
            state
                .keys
                .iter()
                .filter(|(k, _)| matches!(k, Key::Subnet(_)))
                .map(|(k, e)| record(k, e))
                .collect(),
            state.revision,
        ))
    }

    async fn put(
        &self,
        key: &Key,
        value: &[u8],
        life: Life,
        cond: Cond<'_>,
    ) -> Result<bool, StoreError> {
        let mut state = self.open("writing").await?;
        let current = state.keys.get(key);
        let holds = match cond {
            Cond::Absent => current.is_none(),
            Cond::Unchanged(r) => current.is_some_and(|e| e.revision == r.revision),
        };
        if !holds {
            return Ok(false);
        }
        let (expires_at, ttl_handle) = match (life, cond) {
            (Life::Forever, _) => (None, 0),
            (Life::Ttl(ttl), Cond::Unchanged(r)) if r.ttl_handle != 0 => (
                current
                    .and_then(|e| e.expires_at)
                    .or(Some(Instant::now() + ttl)),
                r.ttl_handle,
            ),
            (Life::Ttl(ttl), _) => {
                state.next_handle += 1;
                (Some(Instant::now() + ttl), state.next_handle)
            }
        };
        state.revision += 1;
        let entry = Entry {
            value: value.to_vec(),
            revision: state.revision,
            expires_at,
            ttl_handle,
        };
        let change = Change::Put(record(key, &entry));
        state.keys.insert(key.clone(), entry);
        state.record_change(key.clone(), change);
        Ok(true)
    }

    async fn delete(&self, key: &Key, revision: Revision) -> Result<bool, StoreError> {
        let mut state = self.open("deleting").await?;
        if state.keys.get(key).is_none_or(|e| e.revision != revision) {
            return Ok(false);
        }
        state.keys.remove(key);
        state.revision += 1;
        state.record_change(key.clone(), Change::Delete(name_of(key)));
        Ok(true)
    }

    async fn renew(
        &self,
        record: &mut Record,
        ttl: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let mut state = self.open("renewing").await?;
        if state.renewals_fail {
            return Err(StoreError::transient("renewing", "etcdserver: no leader"));
        }
        let key = Key::Subnet(record.name.clone());
        match state.keys.get_mut(&key) {
            Some(e) if e.expires_at.is_some() && e.ttl_handle == record.ttl_handle => {
                e.expires_at = Some(Instant::now() + ttl);
                Ok(Some(ttl))
            }
            _ => {
                record.ttl_handle = 0;
                Ok(None)
            }
        }
    }

    async fn time_to_live(&self, record: &Record) -> Result<Option<Duration>, StoreError> {
        let state = self.open("reading a TTL").await?;
        let key = Key::Subnet(record.name.clone());
        Ok(state
            .keys
            .get(&key)
            .and_then(|e| e.expires_at)
            .map(|t| t.saturating_duration_since(Instant::now())))
    }

    async fn watch(
        &self,
        key: Option<&Key>,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<Watched, StoreError>>, StoreError> {
        let state = self.open("watching").await?;
        let wanted = move |k: &Key, filter: &Option<Key>| match filter {
            Some(f) => k == f,
            None => matches!(k, Key::Subnet(_)),
        };
        let filter = key.cloned();
        if after < state.compacted {
            return Ok(stream::iter([Ok(Watched::Reset)]).boxed());
        }
        let backlog: Vec<Result<Watched, StoreError>> = state
            .history
            .iter()
            .filter(|(rev, k, _)| *rev > after && wanted(k, &filter))
            .map(|(_, _, c)| Ok(Watched::Changes(vec![c.clone()])))
            .collect();
        let seen = state.revision;
        let rx = state.events.subscribe();
        drop(state);
        let live = stream::unfold(Some(rx), move |rx| {
            let filter = filter.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(Msg::Change(rev, k, c)) if rev > seen && wanted(&k, &filter) => {
                            return Some((Ok(Watched::Changes(vec![c])), Some(rx)))
                        }
                        Ok(Msg::Change(..)) => {}
                        Ok(Msg::Batch(all)) => {
                            let changes: Vec<Change> = all
                                .into_iter()
                                .filter(|(rev, k, _)| *rev > seen && wanted(k, &filter))
                                .map(|(_, _, c)| c)
                                .collect();
                            if !changes.is_empty() {
                                return Some((Ok(Watched::Changes(changes)), Some(rx)));
                            }
                        }
                        Ok(Msg::Break) | Err(broadcast::error::RecvError::Closed) => {
                            let e = StoreError::transient("watching", "connection lost");
                            return Some((Err(e), None));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((Ok(Watched::Reset), None))
                        }
                    }
                }
            }
        });
        Ok(stream::iter(backlog).chain(live).boxed())
    }
}
