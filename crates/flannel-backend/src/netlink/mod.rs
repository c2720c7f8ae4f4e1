//! The only place that speaks rtnetlink: one module per kernel object, each with the few verbs
//! flannel needs. Errors say what was being done. Addresses, routes, neighbours and FDB
//! entries are family-neutral (`IpAddr`, `IpNetwork`); listings take the [`Family`] to ask for.

pub mod address;
pub mod link;
pub mod neighbour;
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

/// A route netlink socket in the network namespace of the thread that opened it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket and spawns its connection task on the current tokio runtime.
    pub fn connect() -> Result<Self, BackendError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(BackendError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
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
