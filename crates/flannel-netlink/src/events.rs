//! The kernel's notifications of links, neighbours and routes of both families (what a
//! backend's device and peer entries are made of), as typed events: what was deleted or
//! changed, not netlink messages. A backend decides from them whether something of its own
//! was damaged.

use std::net::IpAddr;

use flannel_net::MacAddr;
use futures::StreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;

use crate::{neighbour, route, NetlinkError};

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

/// A subscription to the kernel's notifications; dropping it closes its socket.
pub struct KernelEvents {
    events: futures::channel::mpsc::UnboundedReceiver<Notification>,
    connection: tokio::task::AbortHandle,
}

impl KernelEvents {
    /// Subscribes to the notifications of links, neighbours and IPv4 and IPv6 routes, in the
    /// network namespace of the calling thread.
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let (conn, _handle, events) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])
        .map_err(|e| NetlinkError::io("subscribing to the kernel's netlink notifications", e))?;
        let connection = tokio::spawn(conn).abort_handle();
        Ok(KernelEvents { events, connection })
    }

    /// The next event; `None` when the notifications stopped (the socket failed or was
    /// closed): what happened meanwhile went unseen.
    pub async fn next(&mut self) -> Option<KernelEvent> {
        loop {
            let (msg, _) = self.events.next().await?;
            if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                if let Some(event) = KernelEvent::of(&inner) {
                    return Some(event);
                }
            }
        }
    }

    /// Stops the subscription: its socket is closed, nothing more is queued.
    pub fn close(&mut self) {
        self.connection.abort();
    }
}

impl Drop for KernelEvents {
    fn drop(&mut self) {
        self.close();
    }
}
