//! Listings (netlink dumps) through the request socket, each entry parsed as its datagram
//! arrives and only what the caller keeps stored.
//!
//! Through rtnetlink, the connection task reads a whole dump and queues every entry, parsed
//! into a message with its attribute vector, before the caller sees the first: at 5 000 peers
//! the full reconcile's listings of routes and neighbours held megabytes at once (the start's
//! memory peak).

use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{ParseableParametrized, NLM_F_DUMP, NLM_F_REQUEST};
use tracing::debug;

use super::batch::{errno_err, io_err, parse, request_bytes, Reply, RequestSocket};
use crate::BackendError;

/// A dump request for `msg` (`GetRoute`, `GetNeighbour`: its header says the family).
pub(crate) fn request(msg: RouteNetlinkMessage) -> Vec<u8> {
    request_bytes(msg, NLM_F_REQUEST | NLM_F_DUMP)
}

/// One entry of a dump as rtnetlink would have parsed it; `None` (logged) when it does not
/// parse: no entry flannel makes is one of those, and the others are none of its business.
pub(crate) fn message(kind: u16, body: &[u8]) -> Option<RouteNetlinkMessage> {
    RouteNetlinkMessage::parse_with_param(body, kind)
        .map_err(|e| {
            debug!("skipping a netlink dump entry of type {kind} that does not parse: {e}")
        })
        .ok()
}

impl RequestSocket {
    /// Sends the dump `request` (a whole netlink message; its sequence number is set here)
    /// and hands each entry (message type, body) to `keep`, one datagram at a time, on a
    /// blocking thread; what `keep` returns, in the kernel's order. A failed dump is an
    /// error with `context` and the errno's words.
    pub(crate) async fn dump<T: Send + 'static>(
        &self,
        context: &'static str,
        mut request: Vec<u8>,
        mut keep: impl FnMut(u16, &[u8]) -> Option<T> + Send + 'static,
    ) -> Result<Vec<T>, BackendError> {
        self.with_socket(false, move |socket, seq| {
            *seq = seq.wrapping_add(1);
            let me = *seq;
            request[8..12].copy_from_slice(&me.to_ne_bytes());
            socket.send(&request, 0).map_err(|e| io_err(context, e))?;
            let mut out = Vec::new();
            loop {
                let (datagram, _) = socket.recv_from_full().map_err(|e| io_err(context, e))?;
                for reply in parse(&datagram) {
                    match reply {
                        Reply::Message { kind, seq, body } if seq == me => {
                            out.extend(keep(kind, body))
                        }
                        Reply::Done { seq, errno } | Reply::Ack { seq, errno }
                            if seq == me && errno != 0 =>
                        {
                            return Err(errno_err(context, errno))
                        }
                        Reply::Done { seq, .. } if seq == me => return Ok(out),
                        _ => {}
                    }
                }
            }
        })
        .await
    }
}
