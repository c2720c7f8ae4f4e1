//! The life of a reconciled backend after start-up, written once for every backend that
//! programs the kernel: apply lease events as they come, repair damage the kernel reports
//! within milliseconds, reconcile fully every resync period. It keeps the rules of
//! [`crate::Backend`]: nothing is deleted before the first complete listing (the
//! [`Reconciler`] knows whether it has had one), and right after it a full reconcile
//! removes what no lease explains.

use std::time::Duration;

use async_trait::async_trait;
use flannel_net::LeaseBatch;
use flannel_netlink::events::{KernelEvent, KernelEvents};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::BackendError;

/// How soon after the kernel reports damage the repair runs (deletions come in bursts).
const REPAIR_DELAY: Duration = Duration::from_millis(20);

/// What `serve` needs of a backend that programs the kernel: VXLAN, WireGuard and the route
/// network (host-gw, ipip) implement it, and the run loop is theirs for nothing.
#[async_trait]
pub trait Reconciler: Send {
    /// Applies lease changes to the desired set and programs the difference; the number of
    /// kernel operations that failed (the next reconcile retries them).
    async fn apply(&mut self, batch: &LeaseBatch) -> usize;

    /// Makes the kernel match the desired set; the number of entries changed. Deletes
    /// nothing while [`Reconciler::listed`] is false.
    async fn reconcile(&mut self) -> Result<usize, BackendError>;

    /// Whether a kernel event says that something we want was deleted or disabled.
    fn is_damage(&self, event: &KernelEvent) -> bool;

    /// Whether a complete listing of the leases has been applied.
    fn listed(&self) -> bool;
}

/// The backend's life after start-up: apply lease events as they come, repair damage the
/// kernel reports, reconcile fully every `resync`. `synced` turns true once a complete
/// listing has been programmed without error. Ends when `events` closes.
pub(crate) async fn serve<R: Reconciler>(
    mut backend: R,
    mut events: mpsc::Receiver<LeaseBatch>,
    synced: watch::Sender<bool>,
    resync: Duration,
) -> Result<(), BackendError> {
    let mut kernel = KernelEvents::subscribe()?;
    let mut pending_sync = false;
    let mut repair_at: Option<Instant> = None;
    match backend.reconcile().await {
        Ok(n) => debug!("initial reconcile: {n} entries repaired"),
        Err(e) => {
            warn!("initial reconcile: {e}");
            repair_at = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    let mut tick = tokio::time::interval_at(Instant::now() + resync, resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let repair = async {
            match repair_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            batch = events.recv() => {
                let Some(batch) = batch else { return Ok(()) };
                pending_sync |= batch.snapshot;
                let first_listing = batch.snapshot && !backend.listed();
                if first_listing {
                    // Our own thousands of additions would come back as notifications, each
                    // parsed and queued while we apply (megabytes at the peak); the full
                    // reconcile right after the first listing sees any damage instead.
                    kernel.close();
                }
                let failed = backend.apply(&batch).await;
                if first_listing {
                    kernel = KernelEvents::subscribe()?;
                }
                if failed > 0 {
                    repair_at.get_or_insert(Instant::now() + Duration::from_secs(1));
                } else if first_listing {
                    // now the stale entries (nodes gone while we were down) can go
                    repair_at = Some(Instant::now());
                } else if pending_sync {
                    pending_sync = false;
                    synced.send_replace(true);
                }
            }
            event = kernel.next() => match event {
                Some(event) => {
                    if backend.is_damage(&event) && repair_at.is_none() {
                        repair_at = Some(Instant::now() + REPAIR_DELAY);
                    }
                }
                None => {
                    // what was deleted meanwhile went unseen: reconcile once subscribed
                    warn!("the kernel's netlink notifications stopped; subscribing again");
                    kernel = KernelEvents::subscribe()?;
                    repair_at = Some(Instant::now());
                }
            },
            () = repair => {
                repair_at = None;
                match backend.reconcile().await {
                    Ok(n) => {
                        if n > 0 {
                            info!("repaired {n} kernel entries");
                        }
                        if pending_sync {
                            pending_sync = false;
                            synced.send_replace(true);
                        }
                    }
                    Err(e) => {
                        warn!("repair failed: {e}; trying again in 1 s");
                        repair_at = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            _ = tick.tick() => {
                if let Err(e) = backend.reconcile().await {
                    warn!("periodic reconcile: {e}");
                    repair_at.get_or_insert(Instant::now() + Duration::from_secs(1));
                } else if pending_sync {
                    pending_sync = false;
                    synced.send_replace(true);
                }
            }
        }
    }
}
