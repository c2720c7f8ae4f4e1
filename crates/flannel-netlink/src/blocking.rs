//! A netlink socket used with blocking calls, in the network namespace of the thread that
//! opens it: for the kernel objects whose families rtnetlink does not speak (WireGuard's
//! generic netlink, xfrm). A request, then its replies up to its ack or its dump's end.

use netlink_sys::{Socket, SocketAddr as NlAddr};

use crate::NetlinkError;

/// A socket of netlink `protocol`, bound and connected to the kernel, with a receive buffer
/// for large dumps.
pub(crate) fn open(protocol: isize, op: &str) -> Result<Socket, NetlinkError> {
    let mut socket = Socket::new(protocol).map_err(|e| NetlinkError::io(op, e))?;
    socket.bind_auto().map_err(|e| NetlinkError::io(op, e))?;
    socket
        .connect(&NlAddr::new(0, 0))
        .map_err(|e| NetlinkError::io(op, e))?;
    let _ = socket.set_rx_buf_sz(4 * 1024 * 1024);
    Ok(socket)
}

/// Sends `request` and reads the replies up to its ack or its dump's end: each reply message
/// handed to `each`. The kernel's refusal is an error with `op` and the errno.
pub(crate) fn transact(
    socket: &Socket,
    op: &str,
    request: Vec<u8>,
    mut each: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<(), NetlinkError> {
    socket
        .send(&request, 0)
        .map_err(|e| NetlinkError::io(op, e))?;
    loop {
        let (datagram, _) = socket
            .recv_from_full()
            .map_err(|e| NetlinkError::io(op, e))?;
        let mut at = 0;
        while at < datagram.len() {
            let rest = &datagram[at..];
            let Ok(buf) = netlink_packet_core::NetlinkBuffer::new_checked(rest) else {
                return Err(NetlinkError::other(op, "a reply that does not parse"));
            };
            let len = buf.length() as usize;
            let kind = buf.message_type();
            let body = buf.payload();
            let errno = || {
                body.get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, |b| i32::from_ne_bytes(b).wrapping_neg())
            };
            match kind {
                netlink_packet_core::NLMSG_ERROR | netlink_packet_core::NLMSG_DONE => {
                    return match errno() {
                        0 => Ok(()),
                        e => Err(NetlinkError::errno(op, e)),
                    };
                }
                _ => each(&rest[..len.min(rest.len())])?,
            }
            at += len.next_multiple_of(4).max(16);
        }
    }
}
