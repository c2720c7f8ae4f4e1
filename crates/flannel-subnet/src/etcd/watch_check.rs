//! A watch that notices a frozen or cut-off member within two seconds.
//!
//! A watch at rest receives nothing, so a member that stops answering (a hung machine, its
//! address gone) looks the same as a quiet cluster. HTTP/2 pings would tell, but etcd refuses
//! them more often than every 5 s (`--grpc-keepalive-min-time`), which put ~7 s between a
//! freeze and the watch moving. Instead, after [`IDLE`] without a message the watch asks the
//! member for its progress (`WatchProgressRequest`: answered from the member's memory, no raft
//! round, no disk); no answer within [`ANSWER`] ends the watch with a "member failed" error,
//! and the lease manager resumes it from its revision on another member. At rest this costs one
//! small request and answer per second per node, so it is used only where there is another
//! member to move to (more than one endpoint) and for the lease watch, whose events must reach
//! the peers quickly; the config watch keeps the 6 s pings.

use std::pin::Pin;
use std::time::Duration;

use etcd_client::{WatchResponse, WatchStream};
use futures::stream::{self, Stream, StreamExt};

/// How long a watch may be silent before the member is asked for its progress.
pub(crate) const IDLE: Duration = Duration::from_millis(1000);
/// How long the member may take to answer that request.
pub(crate) const ANSWER: Duration = Duration::from_millis(800);

type Item = Result<WatchResponse, etcd_client::Error>;

struct State {
    stream: WatchStream,
    /// A progress request is out and unanswered.
    asked: bool,
    done: bool,
}

/// `stream`'s responses, ending with a `DeadlineExceeded` error when the member stops
/// answering (see the module doc). Progress answers carry no events and are left out.
pub(crate) fn checked(stream: WatchStream) -> Pin<Box<dyn Stream<Item = Item> + Send>> {
    let state = State {
        stream,
        asked: false,
        done: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let wait = if st.asked { ANSWER } else { IDLE };
            match tokio::time::timeout(wait, st.stream.next()).await {
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                Ok(Some(Ok(resp))) => {
                    st.asked = false;
                    if is_progress(&resp) {
                        continue;
                    }
                    return Some((Ok(resp), st));
                }
                Err(_) if !st.asked => {
                    if let Err(e) = st.stream.request_progress().await {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    st.asked = true;
                }
                Err(_) => {
                    st.done = true;
                    let status = tonic::Status::deadline_exceeded(format!(
                        "no answer to a watch progress request within {ANSWER:?}"
                    ));
                    return Some((Err(etcd_client::Error::GRpcStatus(status)), st));
                }
            }
        }
    })
    .boxed()
}

/// An answer to a progress request: no events, not bound to one watch (id -1, etcd 3.4 and
/// 3.5), nothing canceled or compacted.
fn is_progress(resp: &WatchResponse) -> bool {
    resp.watch_id() == -1
        && resp.events().is_empty()
        && !resp.canceled()
        && !resp.created()
        && resp.compact_revision() == 0
}
