//! The lease watch on two members at once, so that a frozen or cut-off member delays no event
//! and a quiet cluster costs no message.
//!
//! A watch at rest receives nothing, so a member that stops answering (a hung machine, its
//! address gone) looks the same as a quiet cluster. Asking it for its progress every second
//! told them apart, at one request per node per second: 5 000 a second at 5 000 nodes. HTTP/2
//! pings cannot do it more often than every 5 s (etcd's `--grpc-keepalive-min-time`), and TCP
//! keepalives miss a frozen process on a live kernel.
//!
//! So the lease watch runs on two members ("legs") and their events are merged by revision:
//! each event comes from both, the second copy is dropped. When one leg has delivered
//! revision R and the other has not within [`IDLE`], the other is asked for its progress;
//! when it has still not reached R within [`ANSWER`], its member counts as failed and the leg
//! is opened again on another member, from the revision delivered. A frozen member thus
//! delays no event (the other leg delivers it) and is left about 2 s after the first event it
//! missed; at rest neither leg sends anything.
//!
//! A leg alone (every other member unreachable) is asked for its progress after [`IDLE`] of
//! silence, as the lone watch always was, and a partner is looked for again every [`RETRY`].
//! A new watch is alone for its first [`PARTNER_AFTER`] too: a start (a node's first listing,
//! a whole cluster started at once) is a burst of events, each of which a partner would
//! deliver a second time (200 nodes started together meshed in 6.3 s with the partner from
//! the start, 4.5-5.2 s with it 5 s later or without it, on the same day), and a leg busy
//! with events needs no check.

use std::future::Future;
use std::sync::Arc;

use etcd_client::{Event, WatchOptions, WatchResponse, WatchStream};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::time::{Duration, Instant};
use tracing::{debug, info};

use super::members::{member_failed, Members};

/// How long a leg may stay behind the other (or, alone, silent) before it is asked for its
/// progress.
pub(crate) const IDLE: Duration = Duration::from_millis(1000);
/// How long its member may take to answer that request.
pub(crate) const ANSWER: Duration = Duration::from_millis(800);
/// How often a lone leg looks for a partner.
pub(crate) const RETRY: Duration = Duration::from_secs(5);
/// How long a new watch runs alone before its partner is opened.
pub(crate) const PARTNER_AFTER: Duration = Duration::from_secs(5);

/// What the merged watch yields.
#[derive(Debug)]
pub(crate) enum Batch {
    /// Events past every revision yielded before, in revision order.
    Events(Vec<Event>),
    /// The store no longer has the history the watch needs: list again.
    Reset,
}

type Item = Result<Batch, etcd_client::Error>;

/// Opens a leg (see [`open_leg`]): from member `start` on, from revision `from`, leaving out
/// member `exclude`.
type Opener =
    Arc<dyn Fn(usize, i64, Option<usize>) -> BoxFuture<'static, Option<Leg>> + Send + Sync>;

pub(crate) struct Leg {
    member: usize,
    stream: WatchStream,
    /// The highest revision this leg has shown it has delivered every event up to.
    seen: i64,
    /// Since when it is behind the other leg (or, alone, silent).
    waiting_since: Instant,
    /// When it was asked for its progress, while that is unanswered.
    asked_at: Option<Instant>,
}

impl Leg {
    fn new(member: usize, stream: WatchStream, seen: i64) -> Self {
        Leg {
            member,
            stream,
            seen,
            waiting_since: Instant::now(),
            asked_at: None,
        }
    }

    /// When this leg's next check is due: asked and unanswered, the answer's deadline; behind
    /// `delivered` (or alone), the time to ask.
    fn due(&self, delivered: i64, alone: bool) -> Option<Instant> {
        match self.asked_at {
            Some(at) => Some(at + ANSWER),
            None if alone || self.seen < delivered => Some(self.waiting_since + IDLE),
            None => None,
        }
    }
}

struct Pair {
    members: Arc<Members>,
    open: Opener,
    legs: Vec<Leg>,
    /// The highest revision whose events were yielded.
    delivered: i64,
    /// A partner being opened.
    opening: Option<BoxFuture<'static, Option<Leg>>>,
    /// When a lone leg looks for a partner again.
    retry_at: Option<Instant>,
    done: bool,
}

/// The lease watch over `members`: `first` (already open on member `member`, from revision
/// `after + 1`) and a partner opened on another member. See the module doc.
pub(crate) fn merged(
    members: Arc<Members>,
    path: String,
    opts: WatchOptions,
    first: WatchStream,
    member: usize,
    after: i64,
) -> BoxStream<'static, Item> {
    let open: Opener = {
        let members = members.clone();
        Arc::new(move |start, from, exclude| {
            let (members, path, opts) = (members.clone(), path.clone(), opts.clone());
            Box::pin(open_leg(members, path, opts, start, from, exclude))
        })
    };
    let pair = Pair {
        members: members.clone(),
        open,
        legs: vec![Leg::new(member, first, after)],
        delivered: after,
        opening: None,
        retry_at: Some(Instant::now() + PARTNER_AFTER),
        done: false,
    };
    stream::unfold(pair, |mut pair| async move {
        if pair.done {
            return None;
        }
        let item = pair.next().await;
        Some((item, pair))
    })
    .boxed()
}

/// A watch on the first member from `start` on that answers, other than `exclude` and the
/// ones already in use (`exclude` is tried last, when it is not in use).
async fn open_leg(
    members: Arc<Members>,
    path: String,
    opts: WatchOptions,
    start: usize,
    from: i64,
    exclude: Option<usize>,
) -> Option<Leg> {
    let n = members.len();
    for k in 0..n {
        let i = (start + k) % n;
        if Some(i) == exclude {
            continue;
        }
        let opts = opts.clone().with_start_revision(from);
        let path = path.clone();
        match members
            .call_on(i, |c| async move {
                c.watch_client()
                    .max_decoding_message_size(super::store::MAX_RESPONSE)
                    .watch(path, Some(opts))
                    .await
            })
            .await
        {
            Ok(stream) => return Some(Leg::new(i, stream, from - 1)),
            Err(e) => debug!("second lease watch on etcd member {i}: {e}"),
        }
    }
    None
}

/// The next message of any leg, with the leg's index.
fn next_message(
    legs: &mut [Leg],
) -> impl Future<Output = (usize, Option<Result<WatchResponse, etcd_client::Error>>)> + '_ {
    let polls = legs
        .iter_mut()
        .enumerate()
        .map(|(i, leg)| Box::pin(async move { (i, leg.stream.next().await) }));
    async move {
        let ((i, msg), _, _) = futures::future::select_all(polls).await;
        (i, msg)
    }
}

/// A response without events that tells a watch's progress (etcd 3.4 and 3.5 answer a
/// progress request with watch id -1; per-watch progress carries the watch's id).
fn is_progress(resp: &WatchResponse) -> bool {
    resp.events().is_empty() && !resp.canceled() && !resp.created() && resp.compact_revision() == 0
}

impl Pair {
    async fn next(&mut self) -> Item {
        loop {
            let alone = self.legs.len() == 1;
            let due = self
                .legs
                .iter()
                .filter_map(|l| l.due(self.delivered, alone))
                .chain(self.retry_at)
                .min();
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let opening = async {
                match self.opening.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                (i, msg) = next_message(&mut self.legs) => {
                    if let Some(item) = self.on_message(i, msg) {
                        return item;
                    }
                }
                leg = opening => {
                    self.opening = None;
                    match leg {
                        Some(leg) => {
                            info!(
                                "lease watch on etcd members {} and {}",
                                self.members.endpoint(self.legs[0].member),
                                self.members.endpoint(leg.member)
                            );
                            self.legs.push(leg);
                            self.retry_at = None;
                        }
                        None => self.retry_at = Some(Instant::now() + RETRY),
                    }
                }
                () = sleep => {
                    if let Some(item) = self.on_time().await {
                        return item;
                    }
                }
            }
        }
    }

    /// Handles leg `i`'s message; `Some` when it is something to yield.
    fn on_message(
        &mut self,
        i: usize,
        msg: Option<Result<WatchResponse, etcd_client::Error>>,
    ) -> Option<Item> {
        let resp = match msg {
            Some(Ok(resp)) => resp,
            Some(Err(e)) if member_failed(&e) => {
                return self.leg_failed(i, &e.to_string()).map(|()| Err(e));
            }
            Some(Err(e)) => {
                self.done = true;
                return Some(Err(e));
            }
            None => {
                let why = "its watch ended";
                return self
                    .leg_failed(i, why)
                    .map(|()| Err(etcd_client::Error::WatchError(why.into())));
            }
        };
        if resp.compact_revision() != 0 {
            debug!(
                "etcd watch compacted (compact revision {})",
                resp.compact_revision()
            );
            self.done = true;
            return Some(Ok(Batch::Reset));
        }
        if resp.canceled() {
            // etcd cancels a watch on a member that lost its leader ("no leader")
            let why = format!("its watch was canceled ({})", resp.cancel_reason());
            return self.leg_failed(i, &why).map(|()| Ok(Batch::Reset));
        }
        let reached = match resp
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .map(|kv| kv.mod_revision())
            .max()
        {
            Some(rev) => rev,
            None if is_progress(&resp) => resp.header().map_or(0, |h| h.revision()),
            None => 0, // created: says nothing of the events up to its revision
        };
        let alone = self.legs.len() == 1;
        let leg = &mut self.legs[i];
        leg.seen = leg.seen.max(reached);
        if alone || leg.seen >= self.delivered {
            leg.asked_at = None;
            leg.waiting_since = Instant::now();
        }
        let before = self.delivered;
        let fresh: Vec<Event> = resp
            .events()
            .iter()
            .filter(|e| e.kv().is_some_and(|kv| kv.mod_revision() > before))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return None;
        }
        self.delivered = reached;
        let now = Instant::now();
        for (j, other) in self.legs.iter_mut().enumerate() {
            // a leg that was up to date is behind from now on; one already behind keeps the
            // time it got behind
            if j != i && other.seen >= before && other.seen < reached {
                other.waiting_since = now;
            }
        }
        Some(Ok(Batch::Events(fresh)))
    }

    /// Asks the legs whose check is due for their progress; leaves those that did not answer
    /// in time. `Some` when the watch ends.
    async fn on_time(&mut self) -> Option<Item> {
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| at <= now) && self.opening.is_none() {
            self.retry_at = None;
            let start = self.legs[0].member + 1;
            self.find_partner(start);
        }
        let alone = self.legs.len() == 1;
        let mut i = 0;
        while i < self.legs.len() {
            let leg = &mut self.legs[i];
            let due = leg.due(self.delivered, alone).is_some_and(|at| at <= now);
            if !due {
                i += 1;
                continue;
            }
            if leg.asked_at.is_none() {
                leg.asked_at = Some(now);
                if let Err(e) = leg.stream.request_progress().await {
                    if let Some(()) = self.leg_failed(i, &e.to_string()) {
                        return Some(Err(e));
                    }
                    continue;
                }
                i += 1;
                continue;
            }
            let why = format!("no answer to a watch progress request within {ANSWER:?}");
            if let Some(()) = self.leg_failed(i, &why) {
                let status = tonic::Status::deadline_exceeded(why);
                return Some(Err(etcd_client::Error::GRpcStatus(status)));
            }
        }
        None
    }

    /// Leaves leg `i`, whose member failed (`why`), and looks for another; `Some(())` when it
    /// was the last leg, so that the watch ends (the caller yields the reason).
    fn leg_failed(&mut self, i: usize, why: &str) -> Option<()> {
        let leg = self.legs.remove(i);
        self.members.failed(leg.member);
        if self.legs.is_empty() {
            self.done = true;
            return Some(());
        }
        info!(
            "etcd member {} is not answering the lease watch ({why}); watching on another member",
            self.members.endpoint(leg.member)
        );
        if self.opening.is_none() {
            self.find_partner(leg.member + 1);
        }
        None
    }

    /// Starts opening a partner for the lone leg, from member `start` on, from the revision
    /// after the last one delivered.
    fn find_partner(&mut self, start: usize) {
        if self.members.len() < 2 {
            return;
        }
        let in_use = self.legs[0].member;
        self.opening = Some((self.open)(start, self.delivered + 1, Some(in_use)));
    }
}
