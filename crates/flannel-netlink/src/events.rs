//! The kernel's notifications of links, neighbours, routes of both families and nexthop
//! objects (what a backend's device and peer entries are made of), as typed events: what was
//! deleted or changed, not netlink messages. A backend decides from them whether something of
//! its own was damaged.

use std::collections::VecDeque;
use std::net::IpAddr;

use flannel_net::MacAddr;
use futures::StreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, TokioSocket};
use rtnetlink::MulticastGroup;

use crate::{neighbour, nexthop, route, NetlinkError};

/// A change the kernel reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent {
    /// A link was deleted.
    LinkDeleted { index: u32 },
    /// A link changed (or appeared); whether it is up now.
    LinkChanged { index: u32, up: bool },
    /// A route of the main table was deleted.
    RouteDeleted { dst: IpNetwork },
    /// A neighbour entry (ARP, NDP) or an FDB entry of link `index` was deleted: its IP
    /// address (an FDB entry's destination) and its MAC, as far as the message has them.
    NeighbourDeleted {
        index: u32,
        ip: Option<IpAddr>,
        mac: Option<MacAddr>,
    },
    /// A nexthop object was deleted. The kernel deletes the routes through it without a
    /// notification of their own: this is the only word of their loss.
    NexthopDeleted { id: u32 },
}

impl KernelEvent {
    /// The event a notification is, if it is one of those.
    fn of(msg: &RouteNetlinkMessage) -> Option<KernelEvent> {
        Some(match msg {
            RouteNetlinkMessage::DelLink(l) => KernelEvent::LinkDeleted {
                index: l.header.index,
            },
            RouteNetlinkMessage::NewLink(l) => KernelEvent::LinkChanged {
                index: l.header.index,
                up: l.header.flags.contains(LinkFlags::Up),
            },
            RouteNetlinkMessage::DelRoute(r) => KernelEvent::RouteDeleted {
                dst: route::destination_of(r)?,
            },
            RouteNetlinkMessage::DelNeighbour(n) => KernelEvent::NeighbourDeleted {
                index: n.header.ifindex,
                ip: neighbour::ip_of(n),
                mac: neighbour::mac_of(n),
            },
            _ => return None,
        })
    }
}

type Notification = (
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
);

/// A subscription to the kernel's notifications; dropping it closes its sockets.
pub struct KernelEvents {
    events: futures::channel::mpsc::UnboundedReceiver<Notification>,
    connection: tokio::task::AbortHandle,
    /// `None` where the kernel has no nexthop objects (nothing of ours can be one then).
    nexthops: Option<NexthopDeletions>,
}

/// `RTNLGRP_NEXTHOP` (linux/rtnetlink.h): past 31, so joined with `NETLINK_ADD_MEMBERSHIP`.
const RTNLGRP_NEXTHOP: u32 = 32;
const RTM_DELNEXTHOP: u16 = 105;

/// The nexthop group's notifications, on a socket of their own: netlink-packet-route has no
/// nexthop messages (rtnetlink's connection could not decode them), so they are read with
/// [`nexthop::parse_entry`] as the dumps are.
struct NexthopDeletions {
    socket: TokioSocket,
    ids: VecDeque<u32>,
}

impl NexthopDeletions {
    /// `None` when the group cannot be joined (a kernel before 5.3).
    fn subscribe() -> Option<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE).ok()?;
        let s = socket.socket_mut();
        s.bind_auto().ok()?;
        s.add_membership(RTNLGRP_NEXTHOP).ok()?;
        let _ = s.set_rx_buf_sz(1024 * 1024);
        Some(NexthopDeletions {
            socket,
            ids: VecDeque::new(),
        })
    }

    /// The id of the next nexthop deleted; `None` when the socket failed (an overrun:
    /// deletions went unseen). Cancel-safe: a datagram read is queued whole.
    async fn next(&mut self) -> Option<u32> {
        loop {
            if let Some(id) = self.ids.pop_front() {
                return Some(id);
            }
            let (datagram, _) = self.socket.recv_from_full().await.ok()?;
            for reply in crate::socket::parse(&datagram) {
                if let crate::socket::Reply::Message { kind, body, .. } = reply {
                    if kind == RTM_DELNEXTHOP {
                        self.ids.extend(nexthop::parse_entry(body).map(|nh| nh.id));
                    }
                }
            }
        }
    }
}

/// The next nexthop deletion of `n`; never, without a subscription.
async fn next_nexthop(n: &mut Option<NexthopDeletions>) -> Option<u32> {
    match n {
        Some(n) => n.next().await,
        None => std::future::pending().await,
    }
}

impl KernelEvents {
    /// Subscribes to the notifications of links, neighbours, IPv4 and IPv6 routes and nexthop
    /// objects, in the network namespace of the calling thread.
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let (conn, _handle, events) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])
        .map_err(|e| NetlinkError::io("subscribing to the kernel's netlink notifications", e))?;
        let connection = tokio::spawn(conn).abort_handle();
        Ok(KernelEvents {
            events,
            connection,
            nexthops: NexthopDeletions::subscribe(),
        })
    }

    /// The next event; `None` when the notifications stopped (the socket failed or was
    /// closed): what happened meanwhile went unseen.
    pub async fn next(&mut self) -> Option<KernelEvent> {
        loop {
            tokio::select! {
                msg = self.events.next() => {
                    let (msg, _) = msg?;
                    if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                        if let Some(event) = KernelEvent::of(&inner) {
                            return Some(event);
                        }
                    }
                }
                id = next_nexthop(&mut self.nexthops) => {
                    return id.map(|id| KernelEvent::NexthopDeleted { id });
                }
            }
        }
    }

    /// Stops the subscription: its sockets are closed, nothing more is queued.
    pub fn close(&mut self) {
        self.connection.abort();
        self.nexthops = None;
    }
}

impl Drop for KernelEvents {
    fn drop(&mut self) {
        self.close();
    }
}
