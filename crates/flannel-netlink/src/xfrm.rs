//! The kernel's IPsec policies (`ip xfrm policy`), over the xfrm netlink family: a policy
//! says which packets (a selector: source and destination subnets) go through an ESP tunnel
//! between two hosts (a template: the tunnel's ends, the request id that ties it to the SAs
//! the IKE daemon installs). IPv4 only, and only what the ipsec backend programs: add or
//! replace, delete, list. The structures are the kernel's (`linux/xfrm.h`), written here by
//! offset; calls block briefly, in the namespace of the calling thread.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::protocols::NETLINK_XFRM;

use crate::blocking::{open, transact};
use crate::NetlinkError;

const XFRM_MSG_NEWSA: u16 = 16;
const XFRM_MSG_DELSA: u16 = 17;
const XFRM_MSG_GETSA: u16 = 18;
const XFRM_MSG_NEWPOLICY: u16 = 19;
const XFRM_MSG_DELPOLICY: u16 = 20;
const XFRM_MSG_GETPOLICY: u16 = 21;
const XFRM_MSG_UPDPOLICY: u16 = 25;
const XFRMA_TMPL: u16 = 5;
const XFRM_MODE_TUNNEL: u8 = 1;
const IPPROTO_ESP: u8 = 50;
const AF_INET: u16 = 2;
const XFRM_INF: u64 = u64::MAX;

/// `struct xfrm_selector`.
const SELECTOR: usize = 56;
/// `struct xfrm_userpolicy_info`.
const POLICY_INFO: usize = 168;
/// `struct xfrm_userpolicy_id`.
const POLICY_ID: usize = 64;
/// `struct xfrm_user_tmpl`.
const TMPL: usize = 64;
/// `struct xfrm_usersa_info`.
const SA_INFO: usize = 224;
/// `struct xfrm_usersa_id`.
const SA_ID: usize = 24;

/// A policy's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    In = 0,
    Out = 1,
    Fwd = 2,
}

impl Dir {
    fn from_u8(v: u8) -> Option<Dir> {
        [Dir::In, Dir::Out, Dir::Fwd]
            .into_iter()
            .find(|d| *d as u8 == v)
    }
}

/// A policy as the ipsec backend programs it: packets from `src` to `dst` go through an ESP
/// tunnel from `tunnel_src` to `tunnel_dst`, SAs of request id `reqid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Policy {
    pub src: Ipv4Network,
    pub dst: Ipv4Network,
    pub dir: Dir,
    pub tunnel_src: Ipv4Addr,
    pub tunnel_dst: Ipv4Addr,
    pub reqid: u32,
}

fn header(len: usize, kind: u16, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&[0; 8]); // sequence, port id
    out
}

/// `struct xfrm_selector` for IPv4 subnets (any port, protocol, interface, user).
fn selector(src: Ipv4Network, dst: Ipv4Network) -> [u8; SELECTOR] {
    let mut s = [0u8; SELECTOR];
    s[0..4].copy_from_slice(&dst.network().octets());
    s[16..20].copy_from_slice(&src.network().octets());
    s[40..42].copy_from_slice(&AF_INET.to_ne_bytes());
    s[42] = dst.prefix();
    s[43] = src.prefix();
    s
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// The message that adds `p` or replaces the policy of its selector and direction.
pub fn update_message(p: &Policy) -> Vec<u8> {
    let attr_len = 4 + TMPL;
    let len = 16 + POLICY_INFO + attr_len;
    let mut out = header(len, XFRM_MSG_UPDPOLICY, NLM_F_REQUEST | NLM_F_ACK);
    let mut info = [0u8; POLICY_INFO];
    info[..SELECTOR].copy_from_slice(&selector(p.src, p.dst));
    // lifetime: no limits, as `ip xfrm` and vishvananda/netlink set them
    for k in 0..8 {
        let at = SELECTOR + k * 8;
        if k < 4 {
            info[at..at + 8].copy_from_slice(&XFRM_INF.to_ne_bytes());
        }
    }
    info[160] = p.dir as u8;
    out.extend_from_slice(&info);
    out.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    out.extend_from_slice(&XFRMA_TMPL.to_ne_bytes());
    let mut t = [0u8; TMPL];
    t[0..4].copy_from_slice(&p.tunnel_dst.octets());
    t[20] = IPPROTO_ESP;
    t[24..26].copy_from_slice(&AF_INET.to_ne_bytes());
    t[28..32].copy_from_slice(&p.tunnel_src.octets());
    t[44..48].copy_from_slice(&p.reqid.to_ne_bytes());
    t[48] = XFRM_MODE_TUNNEL;
    // any algorithms
    t[52..64].copy_from_slice(&[0xff; 12]);
    out.extend_from_slice(&t);
    out
}

/// The message that deletes the policy of `src` → `dst` in direction `dir`.
fn delete_message(src: Ipv4Network, dst: Ipv4Network, dir: Dir) -> Vec<u8> {
    let mut out = header(
        16 + POLICY_ID,
        XFRM_MSG_DELPOLICY,
        NLM_F_REQUEST | NLM_F_ACK,
    );
    let mut id = [0u8; POLICY_ID];
    id[..SELECTOR].copy_from_slice(&selector(src, dst));
    id[60] = dir as u8;
    out.extend_from_slice(&id);
    out
}

/// A policy of the dump, if it is one of the shape [`Policy`] describes (IPv4, one ESP
/// tunnel template); others (the user's, another daemon's) are `None`.
pub fn parse_policy(message: &[u8]) -> Option<Policy> {
    let kind = u16::from_ne_bytes(message.get(4..6)?.try_into().ok()?);
    if kind != XFRM_MSG_NEWPOLICY && kind != XFRM_MSG_UPDPOLICY {
        return None;
    }
    let info = message.get(16..16 + POLICY_INFO)?;
    if u16::from_ne_bytes(info[40..42].try_into().ok()?) != AF_INET {
        return None;
    }
    let net = |at: usize, prefix: u8| Ipv4Network::new(ipv4_at(info, at)?, prefix).ok();
    let dst = net(0, info[42])?;
    let src = net(16, info[43])?;
    let dir = Dir::from_u8(info[160])?;
    // the attributes: the template
    let mut at = 16 + POLICY_INFO;
    while let Some(head) = message.get(at..at + 4) {
        let len = usize::from(u16::from_ne_bytes([head[0], head[1]]));
        let kind = u16::from_ne_bytes([head[2], head[3]]) & 0x3fff;
        if len < 4 {
            return None;
        }
        if kind == XFRMA_TMPL && len == 4 + TMPL {
            let t = message.get(at + 4..at + 4 + TMPL)?;
            if t[20] != IPPROTO_ESP || t[48] != XFRM_MODE_TUNNEL {
                return None;
            }
            return Some(Policy {
                src,
                dst,
                dir,
                tunnel_src: ipv4_at(t, 28)?,
                tunnel_dst: ipv4_at(t, 0)?,
                reqid: u32::from_ne_bytes(t[44..48].try_into().ok()?),
            });
        }
        at += len.next_multiple_of(4);
    }
    None
}

/// An ESP SA's identity and request id (`ip xfrm state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// As the kernel holds it (network order).
    pub spi: [u8; 4],
    pub reqid: u32,
}

/// An IPv4 ESP SA of the dump; others are `None`.
pub fn parse_state(message: &[u8]) -> Option<State> {
    let kind = u16::from_ne_bytes(message.get(4..6)?.try_into().ok()?);
    if kind != XFRM_MSG_NEWSA {
        return None;
    }
    let info = message.get(16..16 + SA_INFO)?;
    if info[76] != IPPROTO_ESP || u16::from_ne_bytes(info[212..214].try_into().ok()?) != AF_INET {
        return None;
    }
    Some(State {
        dst: ipv4_at(info, 56)?,
        spi: info[72..76].try_into().ok()?,
        src: ipv4_at(info, 80)?,
        reqid: u32::from_ne_bytes(info[208..212].try_into().ok()?),
    })
}

/// The kernel's IPsec policies, in the namespace of the calling thread.
pub struct KernelXfrm;

impl KernelXfrm {
    /// Every IPv4 policy with one ESP tunnel template.
    pub fn policies() -> Result<Vec<Policy>, NetlinkError> {
        let op = "listing the xfrm policies";
        let socket = open(NETLINK_XFRM, op)?;
        let mut request = header(
            16 + POLICY_ID,
            XFRM_MSG_GETPOLICY,
            NLM_F_REQUEST | NLM_F_DUMP,
        );
        request.extend_from_slice(&[0u8; POLICY_ID]);
        let mut out = Vec::new();
        transact(&socket, op, request, |reply| {
            out.extend(parse_policy(reply));
            Ok(())
        })?;
        Ok(out)
    }

    /// Adds each policy, or replaces the one of its selector and direction.
    pub fn update(policies: &[Policy]) -> Result<(), NetlinkError> {
        let socket = open(NETLINK_XFRM, "adding xfrm policies")?;
        for p in policies {
            let op = format!(
                "adding the xfrm policy {} -> {} dir {:?} (tunnel {} -> {})",
                p.src, p.dst, p.dir, p.tunnel_src, p.tunnel_dst
            );
            transact(&socket, &op, update_message(p), |_| Ok(()))?;
        }
        Ok(())
    }

    /// Every IPv4 ESP SA.
    pub fn states() -> Result<Vec<State>, NetlinkError> {
        let op = "listing the xfrm states";
        let socket = open(NETLINK_XFRM, op)?;
        let mut request = header(16 + SA_ID, XFRM_MSG_GETSA, NLM_F_REQUEST | NLM_F_DUMP);
        request.extend_from_slice(&[0u8; SA_ID]);
        let mut out = Vec::new();
        transact(&socket, op, request, |reply| {
            out.extend(parse_state(reply));
            Ok(())
        })?;
        Ok(out)
    }

    /// Deletes each SA (one already gone is no error).
    pub fn delete_states(states: &[State]) -> Result<(), NetlinkError> {
        let socket = open(NETLINK_XFRM, "deleting xfrm states")?;
        for st in states {
            let op = format!("deleting the ESP SA {} -> {}", st.src, st.dst);
            let mut request = header(16 + SA_ID, XFRM_MSG_DELSA, NLM_F_REQUEST | NLM_F_ACK);
            let mut id = [0u8; SA_ID];
            id[0..4].copy_from_slice(&st.dst.octets());
            id[16..20].copy_from_slice(&st.spi);
            id[20..22].copy_from_slice(&AF_INET.to_ne_bytes());
            id[22] = IPPROTO_ESP;
            request.extend_from_slice(&id);
            match transact(&socket, &op, request, |_| Ok(())) {
                Err(e)
                    if e.kernel_errno() == Some(libc::ESRCH)
                        || e.kernel_errno() == Some(libc::ENOENT) => {}
                r => r?,
            }
        }
        Ok(())
    }

    /// Deletes each policy (one already gone is no error).
    pub fn delete(policies: &[Policy]) -> Result<(), NetlinkError> {
        let socket = open(NETLINK_XFRM, "deleting xfrm policies")?;
        for p in policies {
            let op = format!(
                "deleting the xfrm policy {} -> {} dir {:?}",
                p.src, p.dst, p.dir
            );
            match transact(
                &socket,
                &op,
                delete_message(p.src, p.dst, p.dir),
                |_| Ok(()),
            ) {
                Err(e) if e.kernel_errno() == Some(libc::ENOENT) => {}
                r => r?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_reads_back_from_its_own_message() {
        let p = Policy {
            src: "10.5.1.0/24".parse().unwrap(),
            dst: "10.5.2.0/24".parse().unwrap(),
            dir: Dir::Out,
            tunnel_src: "192.0.2.1".parse().unwrap(),
            tunnel_dst: "192.0.2.2".parse().unwrap(),
            reqid: 11,
        };
        let mut msg = update_message(&p);
        assert_eq!(msg.len(), 16 + 168 + 68);
        // as the kernel lists it
        msg[4..6].copy_from_slice(&XFRM_MSG_NEWPOLICY.to_ne_bytes());
        assert_eq!(parse_policy(&msg), Some(p));
        // a truncated one is none, not a panic
        for cut in 0..msg.len() {
            let _ = parse_policy(&msg[..cut]);
        }
    }
}
