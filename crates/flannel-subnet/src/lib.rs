//! Subnet leases for flanneld-rs.
//!
//! A [`SubnetManager`] hands this node its subnet and tells it about everybody else's:
//! get the network config, acquire a lease, keep it, watch the other leases. Two implement
//! it: [`manager::LeaseManager`], which holds the lease semantics once, over a small storage
//! trait ([`store::Store`]) served by etcd v3 ([`etcd::EtcdV3Store`]), etcd v2
//! ([`etcd2::EtcdV2Store`]) and, for fast tests of the semantics, memory
//! ([`memory::MemoryStore`]); and kube mode's [`kube::KubeSubnetManager`], whose leases are
//! the Nodes' pod CIDRs (nothing to allocate or expire: docs/architecture.md says why it is no
//! store).
//!
//! The allocation rule ([`allocate`]), the acquire decision ([`acquire`]) and the bookkeeping
//! of the watched lease set ([`lease_set`]) are pure and tested on their own.

pub mod acquire;
pub mod allocate;
mod backoff;
mod error;
pub mod etcd;
pub mod etcd2;
pub mod kube;
pub mod lease_set;
pub mod manager;
pub mod memory;
pub mod store;

use async_trait::async_trait;
use flannel_net::{Lease, LeaseAttrs, NetworkConfig};
use tokio::sync::{mpsc, watch};

pub use error::{ErrorKind, StoreError, SubnetError};
pub use flannel_net::{LeaseBatch, LeaseEvent};
pub use lease_set::LeaseSet;
pub use manager::{write_config, ConfigWrite, LeaseManager, LeasePolicy};
pub use store::Store;

/// How long a lease lives without renewal (upstream `subnetTTL`).
pub const SUBNET_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct SubnetStats {
    /// Requests to the store that failed (each is retried).
    pub errors: std::sync::atomic::AtomicU64,
    /// Full re-listings of the leases after the first (compaction, reconnect).
    pub watch_resyncs: std::sync::atomic::AtomicU64,
    pub lease_renewals: std::sync::atomic::AtomicU64,
    /// Times this node's key was found missing and written again.
    pub lease_recreations: std::sync::atomic::AtomicU64,
}

/// Which etcd API (keyspace) holds flannel's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdApi {
    V3,
    V2,
}

impl std::fmt::Display for EtcdApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EtcdApi::V3 => "v3",
            EtcdApi::V2 => "v2",
        })
    }
}

/// Which keyspace holds `<prefix>/config`: v3 first, then v2; `None` when neither does (yet).
/// An API that does not answer (v2 disabled, as by default in etcd 3.4) counts as empty; an
/// error is returned only when neither answers.
pub async fn detect_api(cfg: &etcd::EtcdConfig) -> Result<Option<EtcdApi>, SubnetError> {
    let v3 = etcd::EtcdV3Store::new(cfg).await?;
    let v3_error = match v3.get(&store::Key::Config).await {
        Ok((Some(_), _)) => return Ok(Some(EtcdApi::V3)),
        Ok((None, _)) => None,
        Err(e) => Some(e),
    };
    let v2 = etcd2::EtcdV2Store::new(cfg)?;
    match v2.get(&store::Key::Config).await {
        Ok((Some(_), _)) => Ok(Some(EtcdApi::V2)),
        Ok((None, _)) => Ok(None),
        Err(e) => match v3_error {
            Some(v3e) => Err(v3e.into()),
            None => {
                tracing::debug!("etcd v2 keys API not available: {e}");
                Ok(None)
            }
        },
    }
}

/// The lease manager over the store of `api`.
pub async fn manager(
    api: EtcdApi,
    cfg: &etcd::EtcdConfig,
    policy: LeasePolicy,
    previous_subnet: Option<flannel_net::SubnetKey>,
) -> Result<Box<dyn SubnetManager>, SubnetError> {
    Ok(match api {
        EtcdApi::V3 => Box::new(LeaseManager::new(
            etcd::EtcdV3Store::new(cfg).await?,
            policy,
            previous_subnet,
        )),
        EtcdApi::V2 => Box::new(LeaseManager::new(
            etcd2::EtcdV2Store::new(cfg)?,
            policy,
            previous_subnet,
        )),
    })
}

/// One row of a listing of every key under `<prefix>/subnets/`, the bad ones included.
#[derive(Debug, Clone)]
pub struct LeaseEntry {
    /// The key's last element, e.g. `10.5.34.0-24`.
    pub key: String,
    /// The lease, or why the key or value does not parse.
    pub lease: Result<Lease, String>,
}

#[async_trait]
pub trait SubnetManager: Send + Sync {
    /// Counters for metrics.
    fn stats(&self) -> std::sync::Arc<SubnetStats>;

    /// For the start-up log, e.g. `Etcd Local Manager with Previous Subnet: None` (upstream's text).
    fn name(&self) -> String;

    /// Reads and validates the network config.
    async fn get_network_config(&self) -> Result<NetworkConfig, SubnetError>;

    /// Gets this node a subnet: the one its PublicIP already holds, else the previous one from
    /// subnet.env if free, else a random free one. Retries a lost race.
    async fn acquire_lease(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, SubnetError>;

    /// Keeps the acquired lease until the future is dropped: renews it before it expires and
    /// re-creates the key at once if it disappears. Every change of expiration is published
    /// on `status`. Returns only when the subnet is lost to another node.
    async fn keep_lease(
        &self,
        lease: Lease,
        status: watch::Sender<Lease>,
    ) -> Result<(), SubnetError>;

    /// Sends every lease (own included) as a first snapshot batch, then the changes. After
    /// any break (compaction, etcd restart) the full state is re-listed and only the
    /// difference sent, so a removal is never missed. Runs until `tx` is closed.
    async fn watch_leases(&self, tx: mpsc::Sender<LeaseBatch>) -> Result<(), SubnetError>;

    /// Every key under the subnets prefix with its lease and expiration (one request per
    /// lease for the TTL: for `lease show`, not for hot paths).
    async fn list_leases(&self) -> Result<Vec<LeaseEntry>, SubnetError>;

    /// Sends the network config each time it is written (`Err` with the reason when the new
    /// value does not parse or the key was deleted), until `tx` is closed. Reconnects by itself.
    async fn watch_config(
        &self,
        tx: mpsc::Sender<Result<NetworkConfig, String>>,
    ) -> Result<(), SubnetError>;

    /// The lease this PublicIP (an IPv4 address) or PublicIPv6 holds, if any: one request,
    /// no TTL lookups (for the VTEP MACs a re-created device should keep).
    async fn lease_of(&self, public_ip: std::net::IpAddr) -> Result<Option<Lease>, SubnetError>;

    /// The public addresses an operator set for this node in the store (kube mode: the
    /// `node-public-ip` annotations, upstream `GetStoredPublicIP`); none in etcd mode.
    async fn stored_public_ips(
        &self,
    ) -> Result<(Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>), SubnetError> {
        Ok((None, None))
    }

    /// Why this node has no lease, when the store can say more than "no lease names this
    /// node" (kube mode: its Node is gone, has no pod CIDR, or has no flannel annotations);
    /// `None` when it cannot (etcd: a lease is found by its PublicIP alone).
    async fn why_no_lease(&self) -> Result<Option<String>, SubnetError> {
        Ok(None)
    }

    /// Called once the node is ready (subnet.env written): kube mode marks the Node's
    /// network available (upstream `CompleteLease`); nothing in etcd mode.
    async fn complete_lease(&self) -> Result<(), SubnetError> {
        Ok(())
    }
}
