//! The loops that keep a registry's long-lived sessions going: the lease keeper and the lease
//! watch, restarted after every break with a backoff (100 ms doubling to 5 s, reset after a
//! session that lasted). Each registry supplies one session of each; these loops are shared.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flannel_net::Lease;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::lease_set::{LeaseBatch, LeaseSet};
use crate::{SubnetError, SubnetStats};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[async_trait]
pub(crate) trait Sessions: Sync {
    fn counters(&self) -> &SubnetStats;

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
    s: &impl Sessions,
    mut lease: Lease,
    status: watch::Sender<Lease>,
) -> Result<(), SubnetError> {
    let mut backoff = Backoff(BACKOFF_MIN);
    loop {
        let started = Instant::now();
        match s.keep_session(&mut lease, &status).await {
            Ok(()) => {}
            Err(e @ SubnetError::LeaseTaken { .. }) => return Err(e),
            Err(e) => {
                s.counters().errors.fetch_add(1, Ordering::Relaxed);
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
    s: &impl Sessions,
    tx: mpsc::Sender<LeaseBatch>,
) -> Result<(), SubnetError> {
    let mut set = LeaseSet::default();
    let mut backoff = Backoff(BACKOFF_MIN);
    let mut first = true;
    loop {
        let started = Instant::now();
        if !std::mem::take(&mut first) {
            s.counters().watch_resyncs.fetch_add(1, Ordering::Relaxed);
        }
        match s.watch_session(&mut set, &tx).await {
            Ok(()) => backoff = Backoff(BACKOFF_MIN),
            Err(SubnetError::Closed) => return Ok(()),
            Err(e) => {
                s.counters().errors.fetch_add(1, Ordering::Relaxed);
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
