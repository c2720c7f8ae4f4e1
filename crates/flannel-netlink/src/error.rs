//! The kernel layer's error: what was being done, and the kernel's answer (its errno, kept as
//! a number for the callers that decide by it, such as "already there") or the socket's.

use std::fmt;

/// A netlink operation that failed.
#[derive(Debug)]
pub struct NetlinkError {
    /// What was being done: `adding route to 10.5.3.0/24`, `creating flannel.1`.
    op: String,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    /// The kernel refused the request: its errno, positive (`libc::EEXIST`).
    Errno(i32),
    /// The socket failed (opening, sending, reading).
    Io(std::io::Error),
    /// Anything else, in words (a reply that does not parse, a link that vanished).
    Other(String),
}

impl NetlinkError {
    /// The kernel refused `op` with `errno` (positive).
    pub fn errno(op: impl Into<String>, errno: i32) -> Self {
        NetlinkError {
            op: op.into(),
            cause: Cause::Errno(errno),
        }
    }

    pub fn io(op: impl Into<String>, e: std::io::Error) -> Self {
        // an I/O error that carries an errno is the kernel's answer
        match e.raw_os_error() {
            Some(errno) => Self::errno(op, errno),
            None => NetlinkError {
                op: op.into(),
                cause: Cause::Io(e),
            },
        }
    }

    pub fn other(op: impl Into<String>, why: impl Into<String>) -> Self {
        NetlinkError {
            op: op.into(),
            cause: Cause::Other(why.into()),
        }
    }

    /// An error of rtnetlink's, for `op`.
    pub(crate) fn rtnetlink(op: impl Into<String>, e: rtnetlink::Error) -> Self {
        match &e {
            rtnetlink::Error::NetlinkError(msg) => match msg.code {
                Some(code) => Self::errno(op, code.get().wrapping_neg()),
                None => Self::other(op, e.to_string()),
            },
            _ => Self::other(op, e.to_string()),
        }
    }

    /// The kernel's errno, positive, when it refused the request.
    pub fn kernel_errno(&self) -> Option<i32> {
        match self.cause {
            Cause::Errno(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the kernel said the thing is there already (`EEXIST`).
    pub fn already_exists(&self) -> bool {
        self.kernel_errno() == Some(libc::EEXIST)
    }

    /// Whether the kernel said the thing is not there (a deletion of what is already gone:
    /// `ENOENT`, `ESRCH`, `ENODEV`).
    pub fn is_gone(&self) -> bool {
        is_gone_errno(self.kernel_errno())
    }

    /// What was being done.
    pub fn op(&self) -> &str {
        &self.op
    }
}

/// Whether `errno` says the thing is not there.
pub(crate) fn is_gone_errno(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::ENOENT | libc::ESRCH | libc::ENODEV))
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Errno(e) => write!(f, "{}: {}", self.op, std::io::Error::from_raw_os_error(*e)),
            Cause::Io(e) => write!(f, "{}: {e}", self.op),
            Cause::Other(why) => write!(f, "{}: {why}", self.op),
        }
    }
}

impl std::error::Error for NetlinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// `map_err` for rtnetlink's errors: `.map_err(nl_err("listing links"))`.
pub(crate) fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |e| NetlinkError::rtnetlink(op, e)
}

/// A deletion's result: one of what is already gone is no error.
pub(crate) fn gone_is_ok(
    op: impl Into<String>,
    result: Result<(), rtnetlink::Error>,
) -> Result<(), NetlinkError> {
    match result.map_err(nl_err(op)) {
        Err(e) if !e.is_gone() => Err(e),
        _ => Ok(()),
    }
}

/// A look-up's result: `None` when the kernel has no such device (`ENODEV`).
pub(crate) fn no_such_device_is_none<T>(
    op: impl Into<String>,
    result: Result<Option<T>, rtnetlink::Error>,
) -> Result<Option<T>, NetlinkError> {
    match result.map_err(nl_err(op)) {
        Err(e) if e.kernel_errno() == Some(libc::ENODEV) => Ok(None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_errno_is_kept_and_said_in_words() {
        let e = NetlinkError::errno("adding route to 10.5.3.0/24", libc::EEXIST);
        assert!(e.already_exists() && !e.is_gone());
        assert_eq!(
            e.to_string(),
            "adding route to 10.5.3.0/24: File exists (os error 17)"
        );
        let gone = NetlinkError::io(
            "deleting nexthop 7",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert!(gone.is_gone());
        assert_eq!(gone.kernel_errno(), Some(libc::ENOENT));
        let other = NetlinkError::other("reading a dump", "truncated");
        assert_eq!(other.kernel_errno(), None);
        assert_eq!(other.to_string(), "reading a dump: truncated");
    }
}
