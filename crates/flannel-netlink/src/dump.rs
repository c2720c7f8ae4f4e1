//! Listings (netlink dumps) through the request socket, each entry parsed as its datagram
//! arrives and only what the caller keeps stored.
//!
//! Through rtnetlink, the connection task reads a whole dump and queues every entry, parsed
//! into a message with its attribute vector, before the caller sees the first: at 5 000 peers
//! the full reconcile's listings of routes and neighbours held megabytes at once (the start's
//! memory peak).

use netlink_packet_core::{ParseableParametrized, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use tracing::debug;

use crate::socket::message_bytes;

/// A dump request for `msg` (`GetRoute`, `GetNeighbour`: its header says the family).
pub(crate) fn request(msg: RouteNetlinkMessage) -> Vec<u8> {
    message_bytes(msg, NLM_F_REQUEST | NLM_F_DUMP)
}

/// One entry of a dump as rtnetlink would have parsed it; `None` (logged) when it does not
/// parse: no entry flannel makes is one of those, and the others are none of its business.
pub fn message(kind: u16, body: &[u8]) -> Option<RouteNetlinkMessage> {
    RouteNetlinkMessage::parse_with_param(body, kind)
        .map_err(|e| {
            debug!("skipping a netlink dump entry of type {kind} that does not parse: {e}")
        })
        .ok()
}
