//! flanneld-rs's kernel layer: route netlink, one module per kernel object ([`link`],
//! [`address`], [`route`], [`neighbour`] entries and FDB entries, [`nexthop`] objects; and
//! [`wireguard`] devices' keys and peers over generic netlink), each
//! with the few verbs flannel needs, family-neutral (`IpAddr`, `IpNetwork`; listings take the
//! [`Family`] to ask for). It knows no backend: what a VXLAN peer or a host-gw route is made
//! of is the backends' business.
//!
//! Three layers: the wire ([`socket`]: a request socket of flannel's own and the replies of a
//! datagram), the objects (each encodes its messages and parses its dump entries), and
//! what gathers them ([`request`]: requests in bulk; [`dump`]: listings parsed entry by entry;
//! [`events`]: the kernel's notifications as typed events). Links and addresses go through
//! rtnetlink's connection. Errors ([`NetlinkError`]) say what was being done and keep the
//! kernel's errno.

pub mod address;
mod blocking;
pub mod dump;
mod error;
pub mod events;
pub mod link;
pub mod neighbour;
pub mod nexthop;
pub mod request;
pub mod route;
pub mod socket;
pub mod wireguard;
pub mod xfrm;

use netlink_packet_route::AddressFamily;
use rtnetlink::Handle;

pub use error::NetlinkError;
pub use flannel_net::Family;

/// The netlink address family of `family`.
pub(crate) fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// `-nexthop-objects`: whether peer routes go through nexthop objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexthopMode {
    /// When the kernel has them (Linux 5.3+).
    Auto,
    On,
    Off,
}

/// A route netlink socket in the network namespace of the thread that opened it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    /// Requests in bulk and dumps ([`request`], [`dump`]).
    requests: socket::RequestSocket,
    /// The kernel has nexthop objects (flannel's are then listed, to remove them when unused).
    nexthops_supported: bool,
    /// Peer routes go through nexthop objects.
    use_nexthops: bool,
}

impl Netlink {
    /// Opens the sockets and spawns the connection task on the current tokio runtime. Peer
    /// routes are classic until [`Netlink::with_nexthops`].
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetlinkError::io("opening a netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            requests: socket::RequestSocket::open()?,
            nexthops_supported: false,
            use_nexthops: false,
        })
    }

    /// Probes the kernel for nexthop objects and chooses the form of peer routes; `On`
    /// without kernel support is an error naming the requirement.
    pub async fn with_nexthops(mut self, mode: NexthopMode) -> Result<Self, NetlinkError> {
        self.nexthops_supported = self.list_nexthops(None).await.is_ok();
        self.use_nexthops = match mode {
            NexthopMode::Off => false,
            NexthopMode::Auto => self.nexthops_supported,
            NexthopMode::On if self.nexthops_supported => true,
            NexthopMode::On => {
                return Err(NetlinkError::other(
                    "-nexthop-objects=on",
                    "this kernel has no nexthop objects (Linux 5.3 or later has them)",
                ))
            }
        };
        Ok(self)
    }

    /// Whether peer routes go through nexthop objects.
    pub fn uses_nexthops(&self) -> bool {
        self.use_nexthops
    }

    /// Every nexthop object of the namespace (none when the kernel has no nexthop objects).
    pub async fn nexthops(&self) -> Result<Vec<nexthop::Nexthop>, NetlinkError> {
        if self.nexthops_supported {
            self.list_nexthops(None).await
        } else {
            Ok(Vec::new())
        }
    }

    pub(crate) fn requests(&self) -> &socket::RequestSocket {
        &self.requests
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}
