//! Requests in bulk: a route netlink socket of its own that sends many requests per datagram
//! and reads one ack for each. The kernel handles a datagram's requests in order, inside the
//! send, so a peer's nexthop, ARP, FDB and route requests go out together: at a cold start 128
//! to a datagram (instead of a request, an ack and a task wakeup each through rtnetlink's
//! connection task), for a single lease event (its additions or its deletions) in one system
//! call.
//!
//! Listings of many entries go through this socket too ([`super::dump`]); links and
//! addresses stay with rtnetlink. Nexthop objects, which rtnetlink cannot speak, are encoded
//! in [`super::nexthop`] and sent here.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::packet_core::{
    NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};

use super::neighbour::{FdbEntry, NeighbourEntry};
use super::nexthop::{self, Nexthop};
use super::route::{self, Route};
use super::{Netlink, ENODEV, ENOENT, ESRCH};
use crate::BackendError;

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
/// Requests per datagram.
const BATCH: usize = 128;
/// Up to this many requests are sent from the calling task: the kernel has answered them
/// when the send returns, so the call does not wait (a lease event's four requests). More go
/// to a blocking thread, so that the runtime keeps serving while the kernel works.
const INLINE: usize = 16;

/// One request of a batch: what `ip nexthop replace`, `ip neigh replace`, `bridge fdb
/// replace` or `ip route replace` would send, or the matching `del`. A deletion of something
/// already gone succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Nexthop(Nexthop),
    Neighbour {
        index: u32,
        entry: NeighbourEntry,
    },
    Fdb {
        index: u32,
        entry: FdbEntry,
    },
    Route(Route),
    DelNexthop(u32),
    DelNeighbour {
        index: u32,
        ip: IpAddr,
    },
    DelFdb {
        index: u32,
        entry: FdbEntry,
    },
    /// Any route to the destination with this gateway and device, whatever its flags; one
    /// through a nexthop object by its destination alone (`route::del_message`).
    DelRoute(Route),
}

impl Request {
    /// What failed, in the words of the single-request verbs.
    fn context(&self) -> String {
        match self {
            Request::Nexthop(n) => format!("adding nexthop {} via {}", n.id, n.gateway),
            Request::Neighbour { entry, .. } => format!("adding neighbour entry {}", entry.ip),
            Request::Fdb { entry, .. } => format!("adding FDB entry for {}", entry.dst),
            Request::Route(r) => format!("adding route to {}", r.dst),
            Request::DelNexthop(id) => format!("deleting nexthop {id}"),
            Request::DelNeighbour { ip, .. } => format!("deleting neighbour entry {ip}"),
            Request::DelFdb { entry, .. } => format!("deleting FDB entry for {}", entry.dst),
            Request::DelRoute(r) => format!("deleting route to {}", r.dst),
        }
    }

    fn is_deletion(&self) -> bool {
        matches!(
            self,
            Request::DelNexthop(_)
                | Request::DelNeighbour { .. }
                | Request::DelFdb { .. }
                | Request::DelRoute(_)
        )
    }
}

/// A request as bytes, `flags` set (sequence number 0: [`RequestSocket::transact`] sets it).
pub(crate) fn request_bytes(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    req.finalize();
    let mut out = vec![0; req.buffer_len()];
    req.serialize(&mut out);
    out
}

/// A create-or-replace request as bytes.
fn replace_request(msg: RouteNetlinkMessage) -> Vec<u8> {
    request_bytes(
        msg,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
    )
}

/// A delete request as bytes.
fn delete_request(msg: RouteNetlinkMessage) -> Vec<u8> {
    request_bytes(msg, NLM_F_REQUEST | NLM_F_ACK)
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

pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The messages of one datagram; a truncated or malformed tail ends the list.
pub fn parse(datagram: &[u8]) -> Vec<Reply<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind), Some(seq)) = (
        u32_at(datagram, at),
        u16_at(datagram, at + 4),
        u32_at(datagram, at + 8),
    ) {
        let len = len as usize;
        if len < 16 || at + len > datagram.len() {
            break;
        }
        let body = &datagram[at + 16..at + len];
        let errno = || u32_at(body, 0).map_or(0, |e| -(e as i32));
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

pub(crate) fn io_err(context: &str, e: std::io::Error) -> BackendError {
    BackendError::Device(format!("{context}: {e}"))
}

/// The error of a failed request, with the errno's words.
pub(crate) fn errno_err(context: &str, errno: i32) -> BackendError {
    io_err(context, std::io::Error::from_raw_os_error(errno))
}

/// A route netlink socket in the network namespace it was opened in (a socket keeps its
/// namespace, so the blocking calls may run on any thread).
#[derive(Clone)]
pub struct RequestSocket {
    inner: Arc<Mutex<(Socket, u32)>>,
}

impl RequestSocket {
    pub fn open() -> Result<Self, BackendError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(BackendError::Socket)?;
        socket.bind_auto().map_err(BackendError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(BackendError::Socket)?;
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
        f: impl FnOnce(&Socket, &mut u32) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let inner = self.inner.clone();
        let run = move || {
            let mut guard = inner
                .lock()
                .map_err(|_| BackendError::Device("netlink request socket lock poisoned".into()))?;
            let (socket, seq) = &mut *guard;
            f(socket, seq)
        };
        if inline {
            return run();
        }
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| BackendError::Device(format!("netlink requests: {e}")))?
    }

    /// Sends `requests` (each a whole netlink message; its sequence number is set here),
    /// many per datagram; the errno of each (0: done).
    pub(crate) async fn transact(&self, requests: Vec<Vec<u8>>) -> Result<Vec<i32>, BackendError> {
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
                    datagram[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
                }
                socket
                    .send(&datagram, 0)
                    .map_err(|e| io_err("sending netlink requests", e))?;
                let mut acked = 0;
                while acked < chunk.len() {
                    let (reply, _) = socket
                        .recv_from_full()
                        .map_err(|e| io_err("reading netlink acks", e))?;
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
}

impl Netlink {
    /// Sends `requests` in order, many per datagram: one result per request. A request
    /// that fails does not stop the ones after it.
    pub async fn send_all(&self, requests: Vec<Request>) -> Vec<Result<(), BackendError>> {
        let mut results: Vec<Result<(), BackendError>> = Vec::with_capacity(requests.len());
        let mut sent = Vec::with_capacity(requests.len());
        let mut encoded = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            match self.encode(request) {
                Ok(bytes) => {
                    sent.push(i);
                    encoded.push(bytes);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        match self.requests().transact(encoded).await {
            Ok(errnos) => {
                for (i, errno) in sent.into_iter().zip(errnos) {
                    let gone = matches!(errno, ENOENT | ESRCH | ENODEV);
                    if errno != 0 && !(gone && requests[i].is_deletion()) {
                        results[i] = Err(errno_err(&requests[i].context(), errno));
                    }
                }
            }
            Err(e) => {
                for i in sent {
                    results[i] = Err(BackendError::Device(format!(
                        "{}: {e}",
                        requests[i].context()
                    )));
                }
            }
        }
        results
    }

    /// One request as bytes; encoded here because rtnetlink's builders need the handle.
    fn encode(&self, request: &Request) -> Result<Vec<u8>, BackendError> {
        use RouteNetlinkMessage::{DelNeighbour, DelRoute, NewNeighbour, NewRoute};
        Ok(match *request {
            Request::Nexthop(n) => nexthop::replace_message(&n, 0),
            Request::Neighbour { index, entry } => {
                replace_request(NewNeighbour(self.neighbour_message(index, entry)))
            }
            Request::Fdb { index, entry } => {
                replace_request(NewNeighbour(self.fdb_message(index, entry)))
            }
            Request::Route(route) => replace_request(NewRoute(route::add_message(&route)?)),
            Request::DelNexthop(id) => nexthop::delete_message(id, 0),
            Request::DelNeighbour { index, ip } => {
                delete_request(DelNeighbour(self.neighbour_key(index, ip)))
            }
            Request::DelFdb { index, entry } => {
                delete_request(DelNeighbour(self.fdb_message(index, entry)))
            }
            Request::DelRoute(route) => delete_request(DelRoute(route::del_message(&route)?)),
        })
    }

    /// Sends one request.
    pub(crate) async fn send_one(&self, request: Request) -> Result<(), BackendError> {
        self.send_all(vec![request]).await.pop().unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_dones_and_garbage() {
        let mut ack = vec![0u8; 36];
        ack[..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&4u32.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(parse(&ack), vec![Reply::Ack { seq: 4, errno: 17 }]);
        // a failed dump ends with NLMSG_DONE carrying the errno (-95: no nexthop objects)
        let mut done = ack.clone();
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        done[16..20].copy_from_slice(&(-95i32).to_ne_bytes());
        assert_eq!(parse(&done), vec![Reply::Done { seq: 4, errno: 95 }]);
        // two in one datagram
        let both = [ack.clone(), done].concat();
        assert_eq!(parse(&both).len(), 2);
        assert_eq!(parse(&[1, 2, 3]), vec![]);
        assert_eq!(
            parse(&[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            vec![]
        );
    }

    #[test]
    fn a_replace_request_carries_create_and_replace() {
        let route = Route {
            dst: "10.5.0.0/24".parse().unwrap(),
            gateway: Some("10.5.0.0".parse().unwrap()),
            oif: Some(3),
            onlink: true,
            nhid: None,
        };
        let m = route::add_message(&route).unwrap();
        let bytes = replace_request(RouteNetlinkMessage::NewRoute(m));
        assert_eq!(u32_at(&bytes, 0), Some(bytes.len() as u32));
        assert_eq!(u16_at(&bytes, 4), Some(24)); // RTM_NEWROUTE
        assert_eq!(u16_at(&bytes, 6), Some(0x505));
    }
}
