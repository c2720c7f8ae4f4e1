//! Requests in bulk: what `ip nexthop replace`, `ip neigh replace`, `bridge fdb replace` and
//! `ip route replace` send, or the matching `del`, many per datagram on the request socket
//! ([`crate::socket`]), one ack each. The kernel handles a datagram's requests in order,
//! inside the send, so a peer's nexthop, ARP, FDB and route requests go out together: at a
//! cold start 128 to a datagram (instead of a request, an ack and a task wakeup each through
//! rtnetlink's connection task), a lease event's additions or deletions in one system call.
//!
//! Each request is encoded by its object's module ([`crate::route`], [`crate::neighbour`],
//! [`crate::nexthop`]); this module only gathers them.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::is_gone_errno;
use crate::neighbour::{FdbEntry, NeighbourEntry};
use crate::nexthop::{self, Nexthop};
use crate::route::{self, Route};
use crate::socket::message_bytes;
use crate::{Netlink, NetlinkError};

/// One request of a batch. A deletion of something already gone succeeds.
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
    fn op(&self) -> String {
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

/// A create-or-replace request as bytes.
pub(crate) fn replace_request(msg: RouteNetlinkMessage) -> Vec<u8> {
    message_bytes(
        msg,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
    )
}

/// A delete request as bytes.
fn delete_request(msg: RouteNetlinkMessage) -> Vec<u8> {
    message_bytes(msg, NLM_F_REQUEST | NLM_F_ACK)
}

impl Netlink {
    /// Sends `requests` in order, many per datagram: one result per request. A request
    /// that fails does not stop the ones after it.
    pub async fn send_all(&self, requests: Vec<Request>) -> Vec<Result<(), NetlinkError>> {
        let mut results: Vec<Result<(), NetlinkError>> = Vec::with_capacity(requests.len());
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
                    let gone = is_gone_errno(Some(errno));
                    if errno != 0 && !(gone && requests[i].is_deletion()) {
                        results[i] = Err(NetlinkError::errno(requests[i].op(), errno));
                    }
                }
            }
            Err(e) => {
                for i in sent {
                    results[i] = Err(NetlinkError::other(requests[i].op(), e.to_string()));
                }
            }
        }
        results
    }

    /// One request as bytes; encoded here because rtnetlink's builders need the handle.
    fn encode(&self, request: &Request) -> Result<Vec<u8>, NetlinkError> {
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
    async fn send_one(&self, request: Request) -> Result<(), NetlinkError> {
        self.send_all(vec![request]).await.pop().unwrap_or(Ok(()))
    }

    /// `ip route del` (one already gone is no error).
    pub async fn del_route(&self, route: Route) -> Result<(), NetlinkError> {
        self.send_one(Request::DelRoute(route)).await
    }

    /// `ip neigh del` (one already gone is no error).
    pub async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        self.send_one(Request::DelNeighbour { index, ip }).await
    }

    /// `bridge fdb del` (one already gone is no error).
    pub async fn del_fdb(&self, index: u32, entry: FdbEntry) -> Result<(), NetlinkError> {
        self.send_one(Request::DelFdb { index, entry }).await
    }

    /// `ip nexthop replace` for each; one result per nexthop.
    pub async fn replace_nexthops(&self, nexthops: Vec<Nexthop>) -> Vec<Result<(), NetlinkError>> {
        self.send_all(nexthops.into_iter().map(Request::Nexthop).collect())
            .await
    }

    /// `ip nexthop del` for each (one already gone is no error).
    pub async fn delete_nexthops(&self, ids: Vec<u32>) -> Vec<Result<(), NetlinkError>> {
        self.send_all(ids.into_iter().map(Request::DelNexthop).collect())
            .await
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkBuffer;

    use super::*;

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
        let header = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(header.length() as usize, bytes.len());
        assert_eq!(header.message_type(), 24); // RTM_NEWROUTE
        assert_eq!(
            header.flags(),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
        );
    }
}
