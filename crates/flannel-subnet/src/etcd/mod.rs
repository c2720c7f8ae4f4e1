//! The etcd v3 API: where upstream flanneld (v0.18 and later) keeps the network config and
//! the leases. [`EtcdV3Store`] serves the [`crate::store::Store`] calls over it.
//!
//! Layout (upstream's): `<prefix>/config` holds the network config, `<prefix>/subnets/<key>`
//! one lease each, the value being the node's [`flannel_net::LeaseAttrs`] as JSON, attached to
//! an etcd lease with a 24 h TTL, or to none for a reservation.

mod connect;
mod members;
mod store;
mod watch_pair;

pub use connect::EtcdConfig;
pub(crate) use members::LAST_GOOD;
pub use store::EtcdV3Store;
