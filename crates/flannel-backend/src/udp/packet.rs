//! The IPv4 packets the udp backend carries, as upstream's proxy (`proxy_amd64.c`) treats
//! them: the datagram between nodes is the bare IP packet, its TTL decremented at each end
//! (the checksum patched, RFC 1624); a packet for no known subnet is answered with an ICMP
//! "net unreachable". Upstream's comes from the TUN device's own address, which the kernel
//! drops as a martian (a local source arriving on a device): it never reaches the sender.
//! Ours comes from the address that was unreachable, as a host's "port unreachable" does.

use std::net::Ipv4Addr;

/// The IPv4 header without options.
const HEADER: usize = 20;

/// The destination of an IPv4 packet, if it is one (version 4, a whole header).
pub fn destination(packet: &[u8]) -> Option<Ipv4Addr> {
    header_len(packet).map(|_| Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]))
}

/// The header's length, if `packet` starts with a whole IPv4 header.
fn header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let len = usize::from(first & 0x0f) * 4;
    (first >> 4 == 4 && len >= HEADER && packet.len() >= len).then_some(len)
}

/// Decrements the TTL and patches the header checksum; false when the TTL ran out (the
/// packet is dropped, as upstream's).
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    if packet.len() < HEADER || packet[8] <= 1 {
        return false;
    }
    packet[8] -= 1;
    // the word (TTL, protocol) went down by 0x0100: the checksum goes up by as much, with
    // the end-around carry of one's complement
    let sum = u32::from(u16::from_be_bytes([packet[10], packet[11]])) + 0x0100;
    let check = (sum & 0xffff) + (sum >> 16);
    packet[10..12].copy_from_slice(&(check as u16).to_be_bytes());
    true
}

/// The one's complement checksum of `data` (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ICMP "destination net unreachable" for `offender`, from the address it was for, to
/// write back into the TUN device; none for an ICMP packet (RFC 792: no ICMP about ICMP), a fragment other
/// than the first, or a malformed packet.
pub fn net_unreachable(offender: &[u8]) -> Option<Vec<u8>> {
    let ihl = header_len(offender)?;
    let protocol = offender[9];
    let fragment_offset = u16::from_be_bytes([offender[6], offender[7]]) & 0x1fff;
    if protocol == 1 || fragment_offset != 0 {
        return None;
    }
    // the offender's header and the first 8 bytes of what it carried
    let quoted = &offender[..(ihl + 8).min(offender.len())];
    let total = HEADER + 8 + quoted.len();
    let mut out = vec![0u8; total];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 8; // upstream's TTL
    out[9] = 1; // ICMP
    out[12..16].copy_from_slice(&offender[16..20]);
    out[16..20].copy_from_slice(&offender[12..16]);
    let ip_check = checksum(&out[..HEADER]);
    out[10..12].copy_from_slice(&ip_check.to_be_bytes());
    out[HEADER] = 3; // destination unreachable
    out[HEADER + 1] = 0; // net unreachable
    out[HEADER + 8..].copy_from_slice(quoted);
    let icmp_check = checksum(&out[HEADER..]);
    out[HEADER + 2..HEADER + 4].copy_from_slice(&icmp_check.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP packet 10.5.1.2 → 10.5.2.3 with a correct header checksum.
    fn packet(ttl: u8) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 32, 0x12, 0x34, 0x40, 0, ttl, 17, 0, 0, 10, 5, 1, 2, 10, 5, 2, 3,
        ];
        p.extend_from_slice(&[0x30, 0x39, 0x1f, 0x90, 0, 12, 0, 0, b'p', b'i', b'n', b'g']);
        let c = checksum(&p[..HEADER]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn a_decremented_ttl_keeps_the_header_checksum_valid() {
        for ttl in [2u8, 64, 255] {
            for id in [0u16, 0x00ff, 0xfeff, 0xffff] {
                let mut p = packet(ttl);
                p[4..6].copy_from_slice(&id.to_be_bytes());
                p[10..12].copy_from_slice(&[0, 0]);
                let c = checksum(&p[..HEADER]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
                assert!(decrement_ttl(&mut p));
                assert_eq!(p[8], ttl - 1);
                assert_eq!(checksum(&p[..HEADER]), 0, "ttl {ttl} id {id:#x}");
            }
        }
        assert!(!decrement_ttl(&mut packet(1)));
        assert!(!decrement_ttl(&mut packet(0)));
    }

    #[test]
    fn net_unreachable_quotes_the_offender_and_checks_out() {
        let p = packet(64);
        assert_eq!(destination(&p), Some(Ipv4Addr::new(10, 5, 2, 3)));
        let icmp = net_unreachable(&p).unwrap();
        assert_eq!(icmp.len(), 20 + 8 + 28);
        assert_eq!(checksum(&icmp[..20]), 0);
        assert_eq!(checksum(&icmp[20..]), 0);
        assert_eq!(&icmp[12..16], &[10, 5, 2, 3]);
        assert_eq!(&icmp[16..20], &[10, 5, 1, 2]);
        assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 0));
        assert_eq!(&icmp[28..], &p[..28]);
        // none about ICMP, later fragments, or what isn't IPv4
        let mut ping = p.clone();
        ping[9] = 1;
        assert!(net_unreachable(&ping).is_none());
        let mut frag = p.clone();
        frag[7] = 1;
        assert!(net_unreachable(&frag).is_none());
        let mut v6 = p;
        v6[0] = 0x60;
        assert!(net_unreachable(&v6).is_none());
        assert!(destination(&v6).is_none());
        assert!(destination(&[0x45, 0, 0]).is_none());
    }
}
