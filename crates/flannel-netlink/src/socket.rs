//! The wire: a route netlink socket of flannel's own for requests in bulk and dumps, and the
//! messages of a datagram the kernel sends back (acks, a dump's end, a dump's entries), read
//! with netlink-packet-core's header. Every object module encodes its messages for it; it
//! knows none of them.

use std::sync::{Arc, Mutex};

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NLMSG_DONE, NLMSG_ERROR};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::NetlinkError;

/// Requests per datagram.
const BATCH: usize = 128;
/// Up to this many requests are sent from the calling task: the kernel has answered them
/// when the send returns, so the call does not wait (a lease event's four requests). More go
/// to a blocking thread, so that the runtime keeps serving while the kernel works.
const INLINE: usize = 16;

/// A message as bytes, `flags` set (sequence number 0: the socket sets it when it sends).
pub(crate) fn message_bytes(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    req.finalize();
    let mut out = vec![0; req.buffer_len()];
    req.serialize(&mut out);
    out
}

/// Sets the sequence number of the message at `at` of `datagram`.
fn set_sequence(datagram: &mut [u8], at: usize, seq: u32) {
    NetlinkBuffer::new(&mut datagram[at..]).set_sequence_number(seq);
}

/// One message of a datagram the kernel sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// An ack (`errno` 0) or an error (`errno` > 0) for request `seq`.
    Ack { seq: u32, errno: i32 },
    /// The end of a dump; `errno` > 0 when the dump failed (the kernel reports a dump's
    /// error here, not in an error message).
    Done { seq: u32, errno: i32 },
    /// Anything else: a dump's entry.
    Message { kind: u16, seq: u32, body: &'a [u8] },
}

/// The messages of one datagram; a truncated or malformed tail ends the list (the kernel's
/// replies are input too: never a panic).
pub fn parse(datagram: &[u8]) -> Vec<Reply<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(rest) = datagram.get(at..) {
        let Ok(msg) = NetlinkBuffer::new_checked(rest) else {
            break;
        };
        let (len, kind, seq) = (
            msg.length() as usize,
            msg.message_type(),
            msg.sequence_number(),
        );
        let body = msg.payload();
        // the error code of an ack or a dump's end: a negative errno first in the body (any
        // 32 bits from a broken reply, i32::MIN included: found by fuzzing)
        let errno = || {
            body.get(..4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, |b| i32::from_ne_bytes(b).wrapping_neg())
        };
        out.push(match kind {
            NLMSG_ERROR => Reply::Ack {
                seq,
                errno: errno(),
            },
            NLMSG_DONE => Reply::Done {
                seq,
                errno: errno(),
            },
            _ => Reply::Message { kind, seq, body },
        });
        at += len.next_multiple_of(4);
    }
    out
}

/// A route netlink socket in the network namespace it was opened in (a socket keeps its
/// namespace, so the blocking calls may run on any thread).
#[derive(Clone)]
pub struct RequestSocket {
    inner: Arc<Mutex<(Socket, u32)>>,
}

impl RequestSocket {
    pub fn open() -> Result<Self, NetlinkError> {
        let open = "opening a netlink socket";
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| NetlinkError::io(open, e))?;
        socket.bind_auto().map_err(|e| NetlinkError::io(open, e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError::io(open, e))?;
        // the acks of a whole batch must fit
        let _ = socket.set_rx_buf_sz(4 * 1024 * 1024);
        Ok(RequestSocket {
            inner: Arc::new(Mutex::new((socket, 1))),
        })
    }

    /// Runs `f` with the socket and its sequence number: here when `inline` (a few requests:
    /// the kernel has answered them when the send returns), else on a blocking thread.
    pub(crate) async fn with_socket<T: Send + 'static>(
        &self,
        inline: bool,
        f: impl FnOnce(&Socket, &mut u32) -> Result<T, NetlinkError> + Send + 'static,
    ) -> Result<T, NetlinkError> {
        let inner = self.inner.clone();
        let run = move || {
            let mut guard = inner.lock().map_err(|_| {
                NetlinkError::other("netlink requests", "the request socket's lock is poisoned")
            })?;
            let (socket, seq) = &mut *guard;
            f(socket, seq)
        };
        if inline {
            return run();
        }
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| NetlinkError::other("netlink requests", e.to_string()))?
    }

    /// Sends `requests` (each a whole netlink message; its sequence number is set here),
    /// many per datagram; the errno of each (0: done).
    pub(crate) async fn transact(&self, requests: Vec<Vec<u8>>) -> Result<Vec<i32>, NetlinkError> {
        let count = requests.len();
        self.with_socket(count <= INLINE, move |socket, seq| {
            let mut results = vec![0; count];
            let mut datagram = Vec::new();
            for (batch, chunk) in requests.chunks(BATCH).enumerate() {
                let start = batch * BATCH;
                let first = seq.wrapping_add(1);
                datagram.clear();
                for request in chunk {
                    *seq = seq.wrapping_add(1);
                    let at = datagram.len();
                    datagram.extend_from_slice(request);
                    set_sequence(&mut datagram, at, *seq);
                }
                socket
                    .send(&datagram, 0)
                    .map_err(|e| NetlinkError::io("sending netlink requests", e))?;
                let mut acked = 0;
                while acked < chunk.len() {
                    let (reply, _) = socket
                        .recv_from_full()
                        .map_err(|e| NetlinkError::io("reading netlink acks", e))?;
                    for r in parse(&reply) {
                        if let Reply::Ack { seq: s, errno } = r {
                            let i = s.wrapping_sub(first) as usize;
                            if i < chunk.len() {
                                results[start + i] = errno;
                                acked += 1;
                            }
                        }
                    }
                }
            }
            Ok(results)
        })
        .await
    }

    /// Sends the dump `request` (a whole netlink message; its sequence number is set here)
    /// and hands each entry (message type, body) to `keep`, one datagram at a time, on a
    /// blocking thread; what `keep` returns, in the kernel's order. A failed dump is an
    /// error with `op` and the errno.
    pub(crate) async fn dump<T: Send + 'static>(
        &self,
        op: &'static str,
        mut request: Vec<u8>,
        mut keep: impl FnMut(u16, &[u8]) -> Option<T> + Send + 'static,
    ) -> Result<Vec<T>, NetlinkError> {
        self.with_socket(false, move |socket, seq| {
            *seq = seq.wrapping_add(1);
            let me = *seq;
            set_sequence(&mut request, 0, me);
            socket
                .send(&request, 0)
                .map_err(|e| NetlinkError::io(op, e))?;
            let mut out = Vec::new();
            loop {
                let (datagram, _) = socket
                    .recv_from_full()
                    .map_err(|e| NetlinkError::io(op, e))?;
                for reply in parse(&datagram) {
                    match reply {
                        Reply::Message { kind, seq, body } if seq == me => {
                            out.extend(keep(kind, body))
                        }
                        Reply::Done { seq, errno } | Reply::Ack { seq, errno }
                            if seq == me && errno != 0 =>
                        {
                            return Err(NetlinkError::errno(op, errno))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, errno: i32) -> Vec<u8> {
        let mut m = vec![0u8; 36];
        m[..4].copy_from_slice(&36u32.to_ne_bytes());
        m[4..6].copy_from_slice(&kind.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m[16..20].copy_from_slice(&(-errno).to_ne_bytes());
        m
    }

    #[test]
    fn acks_dones_and_garbage() {
        let ack = message(NLMSG_ERROR, 4, 17);
        assert_eq!(parse(&ack), vec![Reply::Ack { seq: 4, errno: 17 }]);
        // a failed dump ends with NLMSG_DONE carrying the errno (95: no nexthop objects)
        let done = message(NLMSG_DONE, 4, 95);
        assert_eq!(parse(&done), vec![Reply::Done { seq: 4, errno: 95 }]);
        // two in one datagram
        let both = [ack.clone(), done].concat();
        assert_eq!(parse(&both).len(), 2);
        assert_eq!(parse(&[1, 2, 3]), vec![]);
        assert_eq!(
            parse(&[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            vec![]
        );
        // an error code no errno has (i32::MIN) is kept as it is, not a panic
        let mut odd = ack.clone();
        odd[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert_eq!(
            parse(&odd),
            vec![Reply::Ack {
                seq: 4,
                errno: i32::MIN
            }]
        );
        // a length shorter than a header ends the list rather than loop or panic
        let mut short = ack.clone();
        short[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(parse(&short), vec![]);
    }

    #[test]
    fn the_sequence_number_is_set_in_place() {
        let mut two = [message(NLMSG_ERROR, 0, 0), message(NLMSG_ERROR, 0, 0)].concat();
        set_sequence(&mut two, 36, 9);
        assert_eq!(
            parse(&two),
            vec![
                Reply::Ack { seq: 0, errno: 0 },
                Reply::Ack { seq: 9, errno: 0 }
            ]
        );
    }
}
