//! The only place that speaks rtnetlink: one module per kernel object, each with the few verbs
//! flannel needs. Errors say what was being done. Addresses, routes, neighbours and FDB
//! entries are family-neutral (`IpAddr`, `IpNetwork`); listings take the [`Family`] to ask for.

pub mod address;
pub mod batch;
mod dump;
pub mod link;
pub mod neighbour;
pub mod nexthop;
pub mod route;

use std::net::IpAddr;

use netlink_packet_route::AddressFamily;
use rtnetlink::Handle;

use crate::BackendError;

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub(crate) fn netlink(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
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
    /// Requests in bulk ([`batch`]).
    requests: batch::RequestSocket,
    /// The kernel has nexthop objects (flannel's are then listed, to remove them when unused).
    nexthops_supported: bool,
    /// Peer routes go through nexthop objects.
    use_nexthops: bool,
}

impl Netlink {
    /// Opens the sockets and spawns the connection task on the current tokio runtime. Peer
    /// routes are classic until [`Netlink::with_nexthops`].
    pub fn connect() -> Result<Self, BackendError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(BackendError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            requests: batch::RequestSocket::open()?,
            nexthops_supported: false,
            use_nexthops: false,
        })
    }

    /// Probes the kernel for nexthop objects and chooses the form of peer routes; `On`
    /// without kernel support is an error naming the requirement.
    pub async fn with_nexthops(mut self, mode: NexthopMode) -> Result<Self, BackendError> {
        self.nexthops_supported = self.list_nexthops(None).await.is_ok();
        self.use_nexthops = match mode {
            NexthopMode::Off => false,
            NexthopMode::Auto => self.nexthops_supported,
            NexthopMode::On if self.nexthops_supported => true,
            NexthopMode::On => {
                return Err(BackendError::Device(
                    "-nexthop-objects=on: this kernel has no nexthop objects (Linux 5.3 or later has them)".into(),
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
    pub async fn nexthops(&self) -> Result<Vec<nexthop::Nexthop>, BackendError> {
        if self.nexthops_supported {
            self.list_nexthops(None).await
        } else {
            Ok(Vec::new())
        }
    }

    pub(crate) fn requests(&self) -> &batch::RequestSocket {
        &self.requests
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// The errno of a netlink error reply, positive (e.g. `libc::EEXIST` = 17).
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

pub(crate) const EEXIST: i32 = 17;
pub(crate) const ENOENT: i32 = 2;
pub(crate) const ESRCH: i32 = 3;
pub(crate) const ENODEV: i32 = 19;

/// Whether a delete failed only because the thing was already gone.
pub(crate) fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENOENT | ESRCH | ENODEV))
}

pub(crate) fn nl_err(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> BackendError {
    let context = context.into();
    move |source| BackendError::Netlink { context, source }
}
