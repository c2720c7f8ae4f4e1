//! WireGuard devices over generic netlink (the kernel's `wireguard` family, what `wg` speaks):
//! a device's key, port and peers read in one dump, and changes to them sent in few messages
//! (many peers per message, as `wg setconf` does). The device itself is a link
//! ([`crate::Netlink::create_wireguard`]); the types here are also what the userspace
//! implementation's protocol carries (flannel-backend's UAPI client), so a backend sees one
//! device whichever runs it.

use std::net::SocketAddr;
use std::sync::OnceLock;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket};

use crate::NetlinkError;

/// A Curve25519 key (private, public or preshared), raw.
pub type Key = [u8; 32];

/// A peer as the device holds it (or as it should hold it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    /// Sorted (compare with [`WgPeer::normalized`]).
    pub allowed_ips: Vec<IpNetwork>,
    /// Seconds; 0: off.
    pub keepalive: u16,
    /// `None`: no preshared key (the all-zero key).
    pub preshared_key: Option<Key>,
}

impl WgPeer {
    /// The same peer with its allowed IPs sorted and a zero preshared key as none.
    pub fn normalized(mut self) -> Self {
        self.allowed_ips.sort();
        self.allowed_ips.dedup();
        if self.preshared_key == Some([0; 32]) {
            self.preshared_key = None;
        }
        self
    }
}

/// A device's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgDevice {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<WgPeer>,
}

/// A change to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// Adds the peer or sets all it has: endpoint, keepalive, preshared key, and its allowed
    /// IPs replaced.
    Set(WgPeer),
    /// Removes the peer of this public key.
    Remove(Key),
}

impl PeerChange {
    pub fn public_key(&self) -> &Key {
        match self {
            PeerChange::Set(p) => &p.public_key,
            PeerChange::Remove(k) => k,
        }
    }
}

/// A change to a device: its key and port when given, then each peer change (the other
/// peers are left as they are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChange {
    pub private_key: Option<Key>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerChange>,
}

/// Peers per message: a message of a few hundred peers stays far below the socket's send
/// buffer, and a thousand peers are a handful of messages.
const PEERS_PER_MESSAGE: usize = 200;

/// The generic netlink family of WireGuard, once resolved (the module is loaded for good).
static FAMILY: OnceLock<u16> = OnceLock::new();

/// The kernel's WireGuard over generic netlink, in the network namespace of the thread that
/// calls it (each call opens its socket there; the calls block, briefly).
#[derive(Debug, Clone, Copy)]
pub struct KernelWireGuard {
    family: u16,
}

fn open(op: &str) -> Result<Socket, NetlinkError> {
    crate::blocking::open(NETLINK_GENERIC, op)
}

fn bytes<T>(msg: NetlinkMessage<T>) -> Vec<u8>
where
    NetlinkMessage<T>: Sized,
    T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
{
    let mut msg = msg;
    msg.finalize();
    let mut out = vec![0; msg.buffer_len()];
    msg.serialize(&mut out);
    out
}

use crate::blocking::transact;

impl KernelWireGuard {
    /// The kernel's WireGuard, if it has it (the `wireguard` module, loaded when the first
    /// device was made).
    pub fn connect() -> Result<Self, NetlinkError> {
        if let Some(family) = FAMILY.get() {
            return Ok(KernelWireGuard { family: *family });
        }
        let op = "finding the kernel's wireguard netlink family";
        let socket = open(op)?;
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())],
        }));
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut family = None;
        transact(&socket, op, bytes(msg), |reply| {
            let msg = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(reply)
                .map_err(|e| NetlinkError::other(op, e.to_string()))?;
            if let NetlinkPayload::InnerMessage(genl) = msg.payload {
                for nla in genl.payload.nlas {
                    if let GenlCtrlAttrs::FamilyId(id) = nla {
                        family = Some(id);
                    }
                }
            }
            Ok(())
        })?;
        let family = family.ok_or_else(|| NetlinkError::other(op, "no family id in the reply"))?;
        let _ = FAMILY.set(family);
        Ok(KernelWireGuard { family })
    }

    fn message(
        &self,
        cmd: WireguardCmd,
        attributes: Vec<WireguardAttribute>,
        flags: u16,
    ) -> Vec<u8> {
        let mut genl = GenlMessage::from_payload(WireguardMessage { cmd, attributes });
        genl.set_resolved_family_id(self.family);
        let mut msg = NetlinkMessage::from(genl);
        msg.header.flags = flags;
        bytes(msg)
    }

    /// The configuration of device `name`.
    pub fn device(&self, name: &str) -> Result<WgDevice, NetlinkError> {
        let op = format!("reading WireGuard device {name}");
        let socket = open(&op)?;
        let request = self.message(
            WireguardCmd::GetDevice,
            vec![WireguardAttribute::IfName(name.into())],
            NLM_F_REQUEST | NLM_F_DUMP,
        );
        let mut device = WgDevice::default();
        transact(&socket, &op, request, |reply| {
            let msg = NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(reply)
                .map_err(|e| NetlinkError::other(op.as_str(), e.to_string()))?;
            if let NetlinkPayload::InnerMessage(genl) = msg.payload {
                merge(&mut device, genl.payload.attributes);
            }
            Ok(())
        })?;
        device.peers = device.peers.into_iter().map(WgPeer::normalized).collect();
        Ok(device)
    }

    /// Applies `change` to device `name`: its peers in messages of a few hundred.
    pub fn configure(&self, name: &str, change: &DeviceChange) -> Result<(), NetlinkError> {
        let op = format!("configuring WireGuard device {name}");
        let socket = open(&op)?;
        let mut chunks: Vec<&[PeerChange]> = change.peers.chunks(PEERS_PER_MESSAGE).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut attributes = vec![WireguardAttribute::IfName(name.into())];
            if i == 0 {
                attributes.extend(change.private_key.map(WireguardAttribute::PrivateKey));
                attributes.extend(change.listen_port.map(WireguardAttribute::ListenPort));
            }
            if !chunk.is_empty() {
                attributes.push(WireguardAttribute::Peers(
                    chunk.iter().map(peer_attributes).collect(),
                ));
            }
            let request = self.message(
                WireguardCmd::SetDevice,
                attributes,
                NLM_F_REQUEST | NLM_F_ACK,
            );
            transact(&socket, &op, request, |_| Ok(()))?;
        }
        Ok(())
    }
}

/// The peers of a dump's message into `device` (a peer whose allowed IPs did not fit one
/// message goes on in the next, under the same public key).
fn merge(device: &mut WgDevice, attributes: Vec<WireguardAttribute>) {
    for attr in attributes {
        match attr {
            WireguardAttribute::PrivateKey(k) => device.private_key = (k != [0; 32]).then_some(k),
            WireguardAttribute::ListenPort(p) => device.listen_port = p,
            WireguardAttribute::Peers(peers) => {
                for WireguardPeer(attrs) in peers {
                    let peer = parse_peer(attrs);
                    match device.peers.last_mut() {
                        Some(last) if last.public_key == peer.public_key => {
                            last.allowed_ips.extend(peer.allowed_ips)
                        }
                        _ => device.peers.push(peer),
                    }
                }
            }
            _ => {}
        }
    }
}

fn parse_peer(attrs: Vec<WireguardPeerAttribute>) -> WgPeer {
    let mut peer = WgPeer {
        public_key: [0; 32],
        endpoint: None,
        allowed_ips: Vec::new(),
        keepalive: 0,
        preshared_key: None,
    };
    for attr in attrs {
        match attr {
            WireguardPeerAttribute::PublicKey(k) => peer.public_key = k,
            WireguardPeerAttribute::PresharedKey(k) => {
                peer.preshared_key = (k != [0; 32]).then_some(k)
            }
            WireguardPeerAttribute::Endpoint(e) => peer.endpoint = Some(e),
            WireguardPeerAttribute::PersistentKeepalive(s) => peer.keepalive = s,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for WireguardAllowedIp(attrs) in ips {
                    let (mut ip, mut cidr) = (None, 0);
                    for a in attrs {
                        match a {
                            WireguardAllowedIpAttr::IpAddr(a) => ip = Some(a),
                            WireguardAllowedIpAttr::Cidr(c) => cidr = c,
                            _ => {}
                        }
                    }
                    peer.allowed_ips
                        .extend(ip.and_then(|ip| IpNetwork::new(ip, cidr).ok()));
                }
            }
            _ => {}
        }
    }
    peer
}

fn peer_attributes(change: &PeerChange) -> WireguardPeer {
    match change {
        PeerChange::Remove(key) => WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(*key),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ]),
        PeerChange::Set(p) => {
            let mut attrs = vec![
                WireguardPeerAttribute::PublicKey(p.public_key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                WireguardPeerAttribute::PresharedKey(p.preshared_key.unwrap_or([0; 32])),
                WireguardPeerAttribute::PersistentKeepalive(p.keepalive),
            ];
            attrs.extend(p.endpoint.map(WireguardPeerAttribute::Endpoint));
            attrs.push(WireguardPeerAttribute::AllowedIps(
                p.allowed_ips
                    .iter()
                    .map(|n| {
                        let family = match n {
                            IpNetwork::V4(_) => WireguardAddressFamily::Ipv4,
                            IpNetwork::V6(_) => WireguardAddressFamily::Ipv6,
                        };
                        WireguardAllowedIp(vec![
                            WireguardAllowedIpAttr::Family(family),
                            WireguardAllowedIpAttr::IpAddr(n.network()),
                            WireguardAllowedIpAttr::Cidr(n.prefix()),
                        ])
                    })
                    .collect(),
            ));
            WireguardPeer(attrs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        [b; 32]
    }

    #[test]
    fn a_peer_split_over_two_messages_is_one_peer() {
        let part = |ip: &str| {
            WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(key(1)),
                WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
                    WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                    WireguardAllowedIpAttr::IpAddr(ip.parse().unwrap()),
                    WireguardAllowedIpAttr::Cidr(24),
                ])]),
            ])])
        };
        let mut d = WgDevice::default();
        merge(
            &mut d,
            vec![WireguardAttribute::ListenPort(51820), part("10.5.1.0")],
        );
        merge(&mut d, vec![part("10.5.2.0")]);
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.peers[0].allowed_ips.len(), 2);
    }

    #[test]
    fn a_set_carries_everything_a_peer_has() {
        let p = WgPeer {
            public_key: key(2),
            endpoint: Some("192.0.2.1:51820".parse().unwrap()),
            allowed_ips: vec!["10.5.3.0/24".parse().unwrap()],
            keepalive: 25,
            preshared_key: Some(key(3)),
        };
        let WireguardPeer(attrs) = peer_attributes(&PeerChange::Set(p.clone()));
        assert_eq!(parse_peer(attrs), p);
        let WireguardPeer(attrs) = peer_attributes(&PeerChange::Remove(key(2)));
        assert!(attrs.contains(&WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)));
    }
}
