//! What the two etcd registries (v3 and the v2 keys API) share. Each supplies the steps that
//! talk to its API (one acquire attempt, one keeper session, one watch session, a listing);
//! the loops around them are written once here: the acquire retried while other nodes race
//! us (upstream's `raceRetries`), and the lease keeper and lease watch restarted after every
//! break with a backoff (100 ms doubling to 5 s, reset after a session that lasted).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flannel_net::{Lease, LeaseAttrs, NetworkConfig};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::lease_set::LeaseSet;
use crate::{SubnetError, SubnetStats};
use flannel_net::LeaseBatch;

pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Upstream's `raceRetries`.
const RACE_RETRIES: usize = 10;

/// The outcome of one acquire attempt.
pub(crate) enum Attempt {
    Done(Box<Lease>),
    /// Somebody changed the keys between our read and our write: read again.
    Raced,
}

#[async_trait]
pub(crate) trait Registry: Sync {
    fn counters(&self) -> &SubnetStats;

    /// One read-decide-write round of acquiring this node's lease.
    async fn try_acquire(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Attempt, SubnetError>;

    /// Every lease that parses (invalid ones are skipped).
    async fn valid_leases(&self) -> Result<Vec<Lease>, SubnetError>;

    /// One life of the keeper; `Ok` asks to start over at once.
    async fn keep_session(
        &self,
        lease: &mut Lease,
        status: &watch::Sender<Lease>,
    ) -> Result<(), SubnetError>;

    /// One life of the watch (list, then follow); `Ok` asks to re-list at once.
    async fn watch_session(
        &self,
        set: &mut LeaseSet,
        tx: &mpsc::Sender<LeaseBatch>,
    ) -> Result<(), SubnetError>;
}

/// Acquires this node's lease, reading again while other nodes' writes race ours.
pub(crate) async fn acquire_lease(
    r: &impl Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
) -> Result<Lease, SubnetError> {
    if config.enable_ipv6 || !config.enable_ipv4 {
        return Err(SubnetError::Unsupported(
            "IPv6 (EnableIPv6, or EnableIPv4 false)",
        ));
    }
    for _ in 0..RACE_RETRIES {
        match r.try_acquire(config, attrs).await? {
            Attempt::Done(lease) => return Ok(*lease),
            Attempt::Raced => {
                debug!("another node changed the leases while we acquired ours; trying again")
            }
        }
    }
    Err(SubnetError::MaxRetries)
}

/// The lease that names `public_ip`, if any.
pub(crate) async fn lease_of(
    r: &impl Registry,
    public_ip: std::net::Ipv4Addr,
) -> Result<Option<Lease>, SubnetError> {
    Ok(r.valid_leases()
        .await?
        .into_iter()
        .find(|l| l.attrs.public_ip == public_ip))
}

struct Backoff(Duration);

impl Backoff {
    /// Waits before the next try, unless `closed` resolves first (then `false`).
    async fn wait(
        &mut self,
        started: Instant,
        closed: impl std::future::Future<Output = ()>,
    ) -> bool {
        if started.elapsed() > BACKOFF_MAX {
            self.0 = BACKOFF_MIN;
        }
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = closed => false,
        }
    }
}

pub(crate) async fn keep_lease_forever(
    r: &impl Registry,
    mut lease: Lease,
    status: watch::Sender<Lease>,
) -> Result<(), SubnetError> {
    let mut backoff = Backoff(BACKOFF_MIN);
    loop {
        let started = Instant::now();
        match r.keep_session(&mut lease, &status).await {
            Ok(()) => {}
            Err(e @ SubnetError::LeaseTaken { .. }) => return Err(e),
            Err(e) => {
                r.counters().errors.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "keeping the lease of subnet {}: {e}; retrying in {:?}",
                    lease.subnet, backoff.0
                );
                backoff.wait(started, std::future::pending()).await;
            }
        }
    }
}

pub(crate) async fn watch_leases_forever(
    r: &impl Registry,
    tx: mpsc::Sender<LeaseBatch>,
) -> Result<(), SubnetError> {
    let mut set = LeaseSet::default();
    let mut backoff = Backoff(BACKOFF_MIN);
    let mut first = true;
    loop {
        let started = Instant::now();
        if !std::mem::take(&mut first) {
            r.counters().watch_resyncs.fetch_add(1, Ordering::Relaxed);
        }
        match r.watch_session(&mut set, &tx).await {
            Ok(()) => backoff = Backoff(BACKOFF_MIN),
            Err(SubnetError::Closed) => return Ok(()),
            Err(e) => {
                r.counters().errors.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "lease watch interrupted: {e}; re-listing in {:?}",
                    backoff.0
                );
                if !backoff.wait(started, tx.closed()).await {
                    return Ok(());
                }
            }
        }
    }
}
