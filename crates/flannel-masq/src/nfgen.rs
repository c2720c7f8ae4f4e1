//! Questions to nf_tables over netlink, answered without starting a process.
//!
//! The ruleset generation: the
//! kernel bumps it on every ruleset change, whoever makes it (iptables-nft, nft,
//! kube-proxy), so an unchanged generation means rules we verified are still as they were:
//! the resync can skip reading them. (iptables-legacy rules are not nf_tables: no shortcut.)

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;

/// One request, one reply: `family` goes into the nfgenmsg, `attrs` after it.
fn ask(msg_type: u16, family: u8, attrs: &[u8]) -> io::Result<Vec<u8>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let len = 20 + attrs.len();
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg_type).to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version 0, res_id 0
    req.extend_from_slice(attrs);
    socket.send(&req, 0)?;
    let mut buf = Vec::with_capacity(8192);
    let n = socket.recv(&mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// The current generation of the calling thread's network namespace.
pub fn ruleset_generation() -> io::Result<u32> {
    parse_reply(&ask(NFT_MSG_GETGEN, 0, &[])?)
}

/// Whether the nf_tables table `name` of `family` (`ip`, `ip6`) exists.
pub fn table_exists(family: &str, name: &str) -> io::Result<bool> {
    let family = match family {
        "ip" => 2,
        "ip6" => 10,
        "inet" => 1,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("family {other}"),
            ))
        }
    };
    let mut attr = Vec::new();
    let payload_len = name.len() + 1;
    attr.extend_from_slice(&((4 + payload_len) as u16).to_ne_bytes());
    attr.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    attr.extend_from_slice(name.as_bytes());
    attr.push(0);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let reply = ask(NFT_MSG_GETTABLE, family, &attr)?;
    if reply.len() < 20 {
        return Err(bad("too short"));
    }
    match u16::from_ne_bytes([reply[4], reply[5]]) {
        NLMSG_ERROR => {
            let errno = -i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
            if errno == 2 {
                Ok(false)
            } else {
                Err(io::Error::from_raw_os_error(errno))
            }
        }
        t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE => Ok(true),
        _ => Err(bad("unexpected message type")),
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("nf_tables generation reply: {what}"),
    )
}

/// Finds NFTA_GEN_ID in a NEWGEN reply.
fn parse_reply(msg: &[u8]) -> io::Result<u32> {
    if msg.len() < 20 {
        return Err(bad("too short"));
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(bad("unexpected message type"));
    }
    let len = (u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize).min(msg.len());
    let mut at = 20; // header + nfgenmsg
    while at + 4 <= len {
        let alen = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let atype = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]) & 0x3fff;
        if alen < 4 || at + alen > len {
            break;
        }
        if atype == NFTA_GEN_ID && alen >= 8 {
            return Ok(u32::from_be_bytes([
                msg[at + 4],
                msg[at + 5],
                msg[at + 6],
                msg[at + 7],
            ]));
        }
        at += (alen + 3) & !3;
    }
    Err(bad("no generation id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(gen: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&28u32.to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        m.extend_from_slice(&gen.to_be_bytes());
        m
    }

    #[test]
    fn parses_the_generation_and_rejects_garbage() {
        assert_eq!(parse_reply(&reply(4711)).unwrap(), 4711);
        assert!(parse_reply(&[0; 8]).is_err());
        let mut r = reply(1);
        r[4] = 0;
        assert!(parse_reply(&r).is_err());
        let mut r = reply(1);
        r.truncate(24);
        r[0] = 24;
        assert!(parse_reply(&r).is_err());
    }
}
