//! The only place that speaks rtnetlink: one module per kernel object, each with the few verbs
//! flannel needs. Errors say what was being done.

pub mod address;
pub mod link;
pub mod neighbour;
pub mod route;

use rtnetlink::Handle;

use crate::BackendError;

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
