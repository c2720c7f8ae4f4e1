//! The etcd v2 keys API: what upstream flanneld v0.10 to v0.17 speak, and where the clusters
//! installed by the Ansible role keep the network config and the leases. [`EtcdV2Store`]
//! serves the [`crate::store::Store`] calls over it (the lease semantics are
//! [`crate::manager::LeaseManager`]'s, the same as on v3); [`migrate`] copies a cluster's
//! data to the v3 keyspace.

mod client;
pub mod migrate;
mod store;

pub use client::{Cond, Node, Response, V2Client, V2Error};
pub use store::EtcdV2Store;
