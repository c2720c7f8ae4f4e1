//! The etcd members of `--etcd-endpoints`, one client each, and failover between them.
//!
//! etcd-client's own balancing over several endpoints hands back the error of a dead member
//! (and each retry costs a second) instead of asking another one. Here every request goes to
//! the member that answered last; when it fails the way a dead, frozen or unreachable member
//! fails (no connection, no answer within [`REQUEST_TIMEOUT`], no leader), the same request
//! goes at once to the next member, and that one is used from then on. While every member
//! fails (an election), the request tries again every 200 ms for up to
//! [`FAILOVER_BUDGET`], so that it succeeds as soon as a leader is there. Connections are
//! checked with HTTP/2 pings every 6 s (answered within 1 s); a killed member's watches end at
//! once. Pings more often than etcd's `--grpc-keepalive-min-time` (5 s by default) make etcd
//! close idle connections (`too_many_pings`): seen every 2 s with a 1 s period, a re-list each
//! time. The lease watch runs on two members at once (see `watch_pair`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::OnceCell;
use tracing::{info, warn};

/// How long a new connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long one request may take before the member counts as not answering.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a request keeps trying the members in turn (an election takes about a second:
/// meanwhile every member answers "no leader").
pub(crate) const FAILOVER_BUDGET: Duration = Duration::from_millis(2500);
/// How long a read waits for the current member before the next one is asked too (a
/// linearizable read of a healthy cluster takes milliseconds).
pub(crate) const READ_PATIENCE: Duration = Duration::from_millis(400);
/// The pause between two rounds over the members.
const ROUND_PAUSE: Duration = Duration::from_millis(200);
/// HTTP/2 ping period and how long an answer may take (a frozen member answers none).
pub(crate) const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(6), Duration::from_secs(1));

/// The member that answered last in this process, over the v3 or the v2 API: a new
/// [`Members`] or v2 client (the daemon makes one to detect the API, then the store's own)
/// starts there instead of at a dead first endpoint.
pub(crate) static LAST_GOOD: AtomicUsize = AtomicUsize::new(0);

pub(crate) struct Members {
    endpoints: Vec<String>,
    clients: Vec<OnceCell<Client>>,
    /// Options for each member's client (credentials, TLS, the timeouts above).
    options: ConnectOptions,
    /// Options without the credentials, when etcd turned out to have no authentication.
    anonymous: Option<ConnectOptions>,
    /// The member that answered last.
    current: AtomicUsize,
}

/// Whether `e` says that the member cannot serve (gone, frozen, cut off, without leader),
/// so that another member should be asked; not for errors of the request itself.
pub(crate) fn member_failed(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                true
            }
            tonic::Code::Unknown => {
                s.message().contains("transport") || s.message().contains("no leader")
            }
            _ => s.message().contains("no leader") || s.message().contains("leader changed"),
        },
        E::LeaseKeepAliveError(m) | E::WatchError(m) => !m.contains("not found"),
        _ => false,
    }
}

/// Whether the member itself gave error `e` (it is alive), rather than no answer at all.
fn answered(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            !matches!(
                s.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
            ) && !s.message().contains("transport")
        }
        _ => false,
    }
}

impl Members {
    pub(crate) fn new(
        endpoints: &[String],
        options: ConnectOptions,
        anonymous: Option<ConnectOptions>,
    ) -> Self {
        Members {
            endpoints: endpoints.to_vec(),
            clients: endpoints.iter().map(|_| OnceCell::new()).collect(),
            options,
            anonymous,
            current: AtomicUsize::new(LAST_GOOD.load(Ordering::Relaxed) % endpoints.len().max(1)),
        }
    }

    /// How many endpoints there are.
    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Member `i`'s client, connected on first use. A member that refused credentials
    /// because authentication is off gets a client without them, with a warning.
    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        self.clients[i]
            .get_or_try_init(|| async {
                let endpoint = [self.endpoints[i].as_str()];
                match Client::connect(endpoint, Some(self.options.clone())).await {
                    Err(e) if e.to_string().contains("authentication is not enabled") => {
                        let Some(anonymous) = &self.anonymous else {
                            return Err(e);
                        };
                        warn!("etcd has authentication disabled: -etcd-username and -etcd-password are not used");
                        Client::connect(endpoint, Some(anonymous.clone())).await
                    }
                    other => other,
                }
            })
            .await
            .cloned()
    }

    /// Member `i`'s endpoint, for messages.
    pub(crate) fn endpoint(&self, i: usize) -> &str {
        &self.endpoints[i]
    }

    /// Runs `request` on member `i` alone, within [`REQUEST_TIMEOUT`] (the lease watch's
    /// second leg, which must be on another member than the first).
    pub(crate) async fn call_on<T, F, Fut>(
        &self,
        i: usize,
        request: F,
    ) -> Result<T, etcd_client::Error>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempt = async { request(self.client(i).await?).await };
        match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(etcd_client::Error::GRpcStatus(
                tonic::Status::deadline_exceeded(format!("no answer within {REQUEST_TIMEOUT:?}")),
            )),
        }
    }

    /// Moves away from member `i` after it failed (a watch on it broke).
    pub(crate) fn failed(&self, i: usize) {
        let next = (i + 1) % self.endpoints.len();
        if self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && self.endpoints.len() > 1
        {
            LAST_GOOD.store(next, Ordering::Relaxed);
            info!(
                "etcd member {} is not answering; using {}",
                self.endpoints[i], self.endpoints[next]
            );
        }
    }

    /// Runs `request` on the member that answered last, and on the next ones in turn while
    /// members fail; returns the answer and which member gave it, or the last failure.
    pub(crate) async fn call<T, F, Fut>(&self, request: F) -> Result<(T, usize), etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_within(REQUEST_TIMEOUT, request).await
    }

    /// [`Members::call`] for a request that may be asked twice (a read): the first member
    /// gets only [`READ_PATIENCE`] before the next is asked, so that a frozen member costs a
    /// start-up a fraction of a second rather than [`REQUEST_TIMEOUT`].
    pub(crate) async fn read<T, F, Fut>(&self, request: F) -> Result<(T, usize), etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let patience = if self.endpoints.len() > 1 {
            READ_PATIENCE
        } else {
            REQUEST_TIMEOUT
        };
        self.call_within(patience, request).await
    }

    async fn call_within<T, F, Fut>(
        &self,
        first: Duration,
        request: F,
    ) -> Result<(T, usize), etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.endpoints.len();
        let deadline = tokio::time::Instant::now() + FAILOVER_BUDGET;
        let mut last = None;
        let mut first = Some(first);
        loop {
            if let Some(answer) = self.round(&request, &mut last, first.take()).await? {
                return Ok(answer);
            }
            if tokio::time::Instant::now() + ROUND_PAUSE >= deadline || n == 0 {
                break;
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoint".into())))
    }

    /// One round: each member once, from the current one, the first within `first` if given.
    /// `Ok(None)` when every member failed (the last failure in `last`); `Err` for an error
    /// of the request itself.
    async fn round<T, F, Fut>(
        &self,
        request: &F,
        last: &mut Option<etcd_client::Error>,
        first: Option<Duration>,
    ) -> Result<Option<(T, usize)>, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n.max(1);
        for k in 0..n {
            let i = (start + k) % n;
            let attempt = async {
                let client = self.client(i).await?;
                request(client).await
            };
            let limit = first.filter(|_| k == 0).unwrap_or(REQUEST_TIMEOUT);
            let result = match tokio::time::timeout(limit, attempt).await {
                Ok(r) => r,
                Err(_) => Err(etcd_client::Error::GRpcStatus(
                    tonic::Status::deadline_exceeded(format!("no answer within {limit:?}")),
                )),
            };
            match result {
                Ok(v) => {
                    if i != start && n > 1 {
                        info!("etcd member {} answers; using it", self.endpoints[i]);
                    }
                    self.current.store(i, Ordering::Relaxed);
                    LAST_GOOD.store(i, Ordering::Relaxed);
                    return Ok(Some((v, i)));
                }
                Err(e) if member_failed(&e) => {
                    // a member that did not answer at all (frozen, gone) is not where the
                    // next round starts; one that answered "no leader" may be
                    if !answered(&e) {
                        let _ = self.current.compare_exchange(
                            i,
                            (i + 1) % n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    *last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}
