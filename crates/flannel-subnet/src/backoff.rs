//! The pause between two sessions of a watch or a keeper, for every store: 100 ms doubling to
//! 5 s while sessions keep failing, back to 100 ms after a session that lasted longer than
//! that (it worked: its break is news, not the same outage going on). Without that reset a
//! kube watch broken once by an API server restart waited the full 5 s after every later
//! break for good (the chaos run's sixth finding).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(BACKOFF_MIN)
    }

    /// The pause after a session that began at `started` and failed.
    pub(crate) fn next(&mut self, started: Instant) -> Duration {
        if started.elapsed() > BACKOFF_MAX {
            self.0 = BACKOFF_MIN;
        }
        let pause = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        pause
    }
}

/// Sleeps `pause`, unless `closed` resolves first (then `false`).
pub(crate) async fn sleep_unless(pause: Duration, closed: impl Future<Output = ()>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        () = closed => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_double_to_the_maximum_and_start_over_after_a_session_that_lasted() {
        let mut backoff = Backoff::new();
        let now = Instant::now();
        let pauses: Vec<u128> = (0..8).map(|_| backoff.next(now).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        tokio::time::advance(BACKOFF_MAX + Duration::from_millis(1)).await;
        assert_eq!(backoff.next(now), BACKOFF_MIN);
    }
}
