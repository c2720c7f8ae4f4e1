//! The storage trait: the few calls lease management needs from a store of keys, served by
//! etcd v3 ([`crate::etcd`]), etcd v2 ([`crate::etcd2`]) and an in-memory store for tests
//! ([`crate::memory`]). A store knows its wire protocol, never the lease semantics: those
//! live once, in [`crate::manager::LeaseManager`].
//!
//! Keys are upstream's: `<prefix>/config` and `<prefix>/subnets/<name>`. A key may expire
//! (a lease, with a TTL that is renewed) or not (the config, a reservation). Every change
//! moves the store's revision forward; a conditional write names the revision it read.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::StoreError;
use crate::SubnetError;

/// A point in the store's history (etcd v3's revision, etcd v2's index).
pub type Revision = u64;

/// A key of flannel's under the prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `<prefix>/config`, the network config.
    Config,
    /// `<prefix>/subnets/<name>`, e.g. `10.5.34.0-24`.
    Subnet(String),
}

/// Where flannel's keys live under a prefix (`path.Join` as upstream cleans it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPaths {
    /// `<prefix>/config`.
    pub config: String,
    /// `<prefix>/subnets`, without a trailing slash.
    pub subnets: String,
}

impl KeyPaths {
    pub fn new(prefix: &str) -> Self {
        KeyPaths {
            config: join_key(prefix, "config"),
            subnets: join_key(prefix, "subnets"),
        }
    }

    /// The key's full name.
    pub fn path(&self, key: &Key) -> String {
        match key {
            Key::Config => self.config.clone(),
            Key::Subnet(name) => format!("{}/{name}", self.subnets),
        }
    }

    /// The record name of a full key (`config`, or the subnet key's text); `None` for a key
    /// that is neither (`<prefix>/subnets-x/...`, a subdirectory of subnets).
    pub fn name_of(&self, full: &str) -> Option<String> {
        if full == self.config {
            return Some("config".into());
        }
        full.strip_prefix(&self.subnets)?
            .strip_prefix('/')
            .map(String::from)
    }
}

/// `path.Join(prefix, rest)` as Go cleans it: one `/` between elements, no trailing `/`.
pub fn join_key(prefix: &str, rest: &str) -> String {
    let mut out = String::new();
    if prefix.starts_with('/') {
        out.push('/');
    }
    let parts: Vec<&str> = prefix
        .split('/')
        .chain(rest.split('/'))
        .filter(|p| !p.is_empty())
        .collect();
    out.push_str(&parts.join("/"));
    out
}

/// How long a written key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Until deleted (the config; a reservation).
    Forever,
    /// Expires after this long unless renewed.
    Ttl(Duration),
}

/// A key as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key's last element: the subnet key's text, or `config`.
    pub name: String,
    pub value: Vec<u8>,
    /// The revision of its last change (a conditional write compares it).
    pub revision: Revision,
    /// Whether it expires (false: a reservation, or the config).
    pub expires: bool,
    /// How long it has left, when the store said so with the value (etcd v2 does; etcd v3
    /// needs [`Store::time_to_live`]).
    pub remaining: Option<Duration>,
    /// The store's own handle of the key's TTL (etcd v3: the etcd lease's ID); 0 for none.
    pub ttl_handle: i64,
}

/// A write's precondition.
#[derive(Debug, Clone, Copy)]
pub enum Cond<'a> {
    /// Only if the key does not exist.
    Absent,
    /// Only if the key is still as read. A TTL write keeps the record's live TTL handle
    /// (etcd v3: the same etcd lease) rather than taking a new one.
    Unchanged(&'a Record),
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Record),
    /// The key's name (deleted or expired).
    Delete(String),
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    Changes(Vec<Change>),
    /// The store no longer has the history the watch needs (compaction, cleared index):
    /// list again and go on from there.
    Reset,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// For messages: `etcd v3`, `etcd v2`, `memory`.
    fn name(&self) -> &'static str;

    /// The key's full name in the store, for messages (`/coreos.com/network/config`).
    fn describe(&self, key: &Key) -> String;

    /// The error for a store that holds no network config, in the words its users know.
    fn config_not_found(&self) -> SubnetError {
        SubnetError::NoConfigAt {
            key: self.describe(&Key::Config),
            store: self.name(),
        }
    }

    /// One key, and the store's revision when it was read.
    async fn get(&self, key: &Key) -> Result<(Option<Record>, Revision), StoreError>;

    /// Every key under `<prefix>/subnets/`, and the revision of that view.
    async fn list(&self) -> Result<(Vec<Record>, Revision), StoreError>;

    /// Writes `value` at `key` if `cond` holds; `false` when it did not (nothing written).
    async fn put(
        &self,
        key: &Key,
        value: &[u8],
        life: Life,
        cond: Cond<'_>,
    ) -> Result<bool, StoreError>;

    /// Deletes `key` if it is still at `revision`; `false` when it was not.
    async fn delete(&self, key: &Key, revision: Revision) -> Result<bool, StoreError>;

    /// Gives an expiring record its full `ttl` again: how long it has now, `None` when it is
    /// gone or expired (then a TTL write takes a new handle). May move `record.revision`.
    async fn renew(
        &self,
        record: &mut Record,
        ttl: Duration,
    ) -> Result<Option<Duration>, StoreError>;

    /// How long an expiring record has left; `None` when it is gone.
    async fn time_to_live(&self, record: &Record) -> Result<Option<Duration>, StoreError>;

    /// The changes after `after`: of `key`, or of every subnet key when `key` is `None`.
    /// The stream ends or yields an error when the connection breaks.
    async fn watch(
        &self,
        key: Option<&Key>,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<Watched, StoreError>>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::join_key;

    #[test]
    fn keys_are_cleaned_like_go_path_join() {
        assert_eq!(
            join_key("/coreos.com/network", "config"),
            "/coreos.com/network/config"
        );
        assert_eq!(
            join_key("/coreos.com/network/", "subnets"),
            "/coreos.com/network/subnets"
        );
        assert_eq!(
            join_key("//kubernetes-cluster//network", "config"),
            "/kubernetes-cluster/network/config"
        );
        assert_eq!(join_key("flannel", "config"), "flannel/config");
    }
}
