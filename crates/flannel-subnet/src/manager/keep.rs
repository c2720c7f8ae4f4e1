//! The keeper: this node's lease renewed before it expires, and written again at once when
//! it disappears; stops only when another node holds the subnet now.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use flannel_net::time::{format_duration, format_utc};
use flannel_net::{Expiration, Lease};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::watch::changes_of;
use super::{subnet_key, LeaseManager};
use crate::backoff::Backoff;
use crate::store::{Change, Cond, Life, Store};
use crate::SubnetError;

/// Upstream retries a failed renewal every minute. Here sooner when less time is left: a
/// quarter of what remains (at least 1 s), so that a lease renewed a minute before expiry
/// (`--subnet-lease-renew-margin=1`) gets several tries rather than none.
const RENEW_RETRY: Duration = Duration::from_secs(60);
const RENEW_RETRY_MIN: Duration = Duration::from_secs(1);

/// When to try a failed renewal again, the lease expiring at `expires_at`.
fn retry_after(expires_at: Option<Instant>) -> Duration {
    match expires_at {
        Some(at) => {
            (at.saturating_duration_since(Instant::now()) / 4).clamp(RENEW_RETRY_MIN, RENEW_RETRY)
        }
        None => RENEW_RETRY,
    }
}

impl<S: Store> LeaseManager<S> {
    pub(super) async fn keep_forever(
        &self,
        mut lease: Lease,
        status: watch::Sender<Lease>,
    ) -> Result<(), SubnetError> {
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            match self.keep_session(&mut lease, &status).await {
                Ok(()) => {}
                Err(e @ SubnetError::LeaseTaken { .. }) => return Err(e),
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    // never past the renewal: a keeper whose sessions keep breaking would
                    // otherwise sleep through it
                    let pause = backoff.next(started).min(self.until_renewal(&lease));
                    warn!(
                        "keeping the lease of subnet {}: {e}; retrying in {pause:?}",
                        lease.subnet
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// How long until `lease` is due for renewal (now when overdue; never without an expiry).
    fn until_renewal(&self, lease: &Lease) -> Duration {
        match lease.expiration {
            Expiration::At(t) => self
                .policy
                .renew_wait(t.duration_since(SystemTime::now()).unwrap_or_default()),
            _ => Duration::MAX,
        }
    }

    /// One life of the keeper: read our key, then renew and watch it until something breaks.
    /// `Ok(())` asks the caller to start over at once; an error, after a pause.
    async fn keep_session(
        &self,
        lease: &mut Lease,
        status: &watch::Sender<Lease>,
    ) -> Result<(), SubnetError> {
        let key = subnet_key(lease);
        let (record, revision) = self.store.get(&key).await?;
        let Some(mut record) = record else {
            warn!(subnet = %lease.subnet, "the lease of this node's subnet is gone from {}; re-creating it", self.store.name());
            return self.recreate(lease).await;
        };
        self.check_ours(lease, &record)?;
        lease.expiration = if !record.expires {
            Expiration::Never
        } else {
            let left = match record.remaining {
                Some(left) => Some(left),
                None => self.store.time_to_live(&record).await?,
            };
            match left {
                Some(left) => Expiration::At(SystemTime::now() + left),
                None => {
                    warn!(subnet = %lease.subnet, "the TTL of this node's subnet lease expired; re-creating it");
                    return self.recreate(lease).await;
                }
            }
        };
        status.send_replace(lease.clone());
        let mut expires_at = match lease.expiration {
            Expiration::At(t) => {
                Some(Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default())
            }
            _ => None,
        };
        let mut changes = self.store.watch(Some(&key), revision).await?;
        let mut renew_at = match lease.expiration {
            Expiration::At(_) => {
                let wait = self.until_renewal(lease);
                info!("Waiting for {} to renew lease", format_duration(wait));
                Some(Instant::now() + wait)
            }
            _ => None,
        };
        loop {
            let renew = async {
                match renew_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = renew => match self.store.renew(&mut record, self.policy.ttl).await {
                    Ok(Some(left)) => {
                        let expiration = SystemTime::now() + left;
                        lease.expiration = Expiration::At(expiration);
                        status.send_replace(lease.clone());
                        self.stats.lease_renewals.fetch_add(1, Ordering::Relaxed);
                        info!("Lease renewed, new expiration: {}", format_utc(expiration));
                        expires_at = Some(Instant::now() + left);
                        renew_at = Some(Instant::now() + self.policy.renew_wait(left));
                    }
                    Ok(None) => {
                        warn!(subnet = %lease.subnet, "the TTL of this node's subnet lease expired; re-creating it");
                        return self.recreate(lease).await;
                    }
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        let retry = retry_after(expires_at);
                        // upstream's words when it is upstream's minute
                        let when = if retry == RENEW_RETRY {
                            "1 min".to_string()
                        } else {
                            format_duration(retry)
                        };
                        warn!("Error renewing lease (trying again in {when}): {e}");
                        renew_at = Some(Instant::now() + retry);
                    }
                },
                item = changes.next() => {
                    let Some(changes) = changes_of(item, &self.store.describe(&key))? else {
                        return Ok(());
                    };
                    for change in changes {
                        match change {
                            Change::Delete(_) => {
                                warn!(subnet = %lease.subnet, "the lease of this node's subnet was deleted from {}; re-creating it", self.store.name());
                                return self.recreate(lease).await;
                            }
                            Change::Put(new) => {
                                self.check_ours(lease, &new)?;
                                record = new;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes our key again after it vanished, with a full TTL (a reservation that vanished
    /// comes back as a lease, as upstream would write it). `LeaseTaken` if another node has
    /// it now; `Ok` if it is there again with our value (or gone again: the next session
    /// reads afresh).
    async fn recreate(&self, lease: &Lease) -> Result<(), SubnetError> {
        let key = subnet_key(lease);
        let value = lease.attrs.to_json();
        let life = Life::Ttl(self.policy.ttl);
        if self
            .store
            .put(&key, value.as_bytes(), life, Cond::Absent)
            .await?
        {
            self.stats.lease_recreations.fetch_add(1, Ordering::Relaxed);
            info!(subnet = %lease.subnet, "re-created the lease for this node's subnet {}", lease.subnet);
            return Ok(());
        }
        match self.store.get(&key).await? {
            (Some(current), _) => self.check_ours(lease, &current),
            (None, _) => Ok(()),
        }
    }
}
