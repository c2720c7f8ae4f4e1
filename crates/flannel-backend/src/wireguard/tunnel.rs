//! One WireGuard device and the peers it should hold: lease events become peer changes sent
//! in one request per batch; a reconcile compares the device (link, address, route, key,
//! port, peers) with what it should be and changes only the difference. Peers are known by
//! public key: one that no lease explains is removed once a complete listing was applied
//! (a node that changed its key leaves its old peer behind: upstream's
//! `cleanupEndpointPeers`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use flannel_net::{Lease, SubnetKey};
use ipnetwork::IpNetwork;
use tracing::{info, warn};

use super::config::{Mode, WireGuardConfig};
use super::device::{self, Control};
use super::key;
use super::peers::{self, DeviceView};
use crate::lease_check::Skip;
use crate::netlink::route::DeviceRouteScope;
use crate::netlink::wireguard::{DeviceChange, Key, PeerChange, WgDevice, WgPeer};
use crate::netlink::{Family, Netlink};
use crate::side::Side;
use crate::BackendError;

pub struct Tunnel {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub port: u16,
    pub mode: Mode,
    /// The families it carries.
    pub sides: Vec<Side>,
    pub control: Control,
    /// This node's subnet of each family it carries, once acquired.
    pub own: Vec<(Family, IpNetwork, IpAddr)>,
    /// The peers it should hold, by public key, with the lease each is for.
    pub desired: BTreeMap<Key, (SubnetKey, WgPeer)>,
    /// The public key each lease gave.
    pub by_lease: BTreeMap<SubnetKey, Key>,
}

/// What this node is, for the checks of every peer.
pub struct NodeSelf<'a> {
    pub public_key: &'a Key,
    pub has_v4: bool,
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    pub config: &'a WireGuardConfig,
}

impl Tunnel {
    /// The device (kept or made) with this node's key and port.
    pub async fn make(
        nl: &Netlink,
        name: &str,
        mtu: u32,
        port: u16,
        mode: Mode,
        sides: Vec<Side>,
        private_key: &Key,
    ) -> Result<Tunnel, BackendError> {
        let (link, control) = device::ensure(nl, name, mtu).await?;
        let tunnel = Tunnel {
            name: name.into(),
            index: link.index,
            mtu,
            port,
            mode,
            sides,
            control,
            own: Vec::new(),
            desired: BTreeMap::new(),
            by_lease: BTreeMap::new(),
        };
        let now = tunnel.control.device(&tunnel.name).await?;
        tunnel.set_identity(&now, private_key).await?;
        Ok(tunnel)
    }

    /// Sets the key and port where the device (`now`) has others; whether it did.
    async fn set_identity(&self, now: &WgDevice, private_key: &Key) -> Result<bool, BackendError> {
        let change = DeviceChange {
            private_key: (now.private_key.as_ref() != Some(private_key)).then_some(*private_key),
            listen_port: (now.listen_port != self.port).then_some(self.port),
            peers: Vec::new(),
        };
        let changed = change != DeviceChange::default();
        self.configure(change).await?;
        Ok(changed)
    }

    async fn configure(&self, change: DeviceChange) -> Result<(), BackendError> {
        let port = change.listen_port;
        self.control
            .configure(&self.name, change)
            .await
            .map_err(|e| match port {
                Some(p) => self.explain_port(p, e),
                None => e,
            })
    }

    /// `e`, said as the port taken when another socket holds `port` (the kernel binds it
    /// when the link goes up and says EADDRINUSE; wireguard-go when the port is set, with an
    /// errno of its own: the port is asked directly).
    fn explain_port(&self, port: u16, e: BackendError) -> BackendError {
        if !port_taken(port) {
            return e;
        }
        BackendError::Device(format!(
            "WireGuard device {}: UDP port {port} is in use by another program (ListenPort / ListenPortV6 of the network config): {e}",
            self.name
        ))
    }

    fn view(&self, node: &NodeSelf<'_>) -> DeviceView<'_> {
        DeviceView {
            sides: &self.sides,
            mode: self.mode,
            port: self.port,
            own: &self.own,
            has_v4: node.has_v4,
            public_ipv6: node.public_ipv6,
        }
    }

    /// Gives the device this node's addresses, up, and the route of each Network.
    pub async fn set_own(
        &mut self,
        nl: &Netlink,
        own: &Lease,
        public: impl Fn(Family) -> IpAddr,
    ) -> Result<(), BackendError> {
        self.own = self
            .sides
            .iter()
            .filter_map(|s| Some((s.family, own.subnet_of(s.family)?, public(s.family))))
            .collect();
        self.ensure_link_state(nl).await
    }

    /// Address, up, routes: what the link needs besides WireGuard's own configuration.
    async fn ensure_link_state(&self, nl: &Netlink) -> Result<(), BackendError> {
        for side in &self.sides {
            if let Some((_, subnet, _)) = self.own.iter().find(|(f, ..)| *f == side.family) {
                crate::own_address::ensure(nl, self.index, &self.name, side.network, *subnet)
                    .await?;
            }
        }
        nl.set_link_up(self.index)
            .await
            .map_err(|e| self.explain_port(self.port, e.into()))?;
        for side in &self.sides {
            if self.own.iter().any(|(f, ..)| *f == side.family) {
                let routes = nl.routes(side.family).await?;
                let present = routes.iter().any(|r| {
                    r.dst == side.network && r.gateway.is_none() && r.oif == Some(self.index)
                });
                if !present {
                    nl.replace_device_route(side.network, self.index, DeviceRouteScope::Link)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The change a lease event makes to the desired peers (pushed on `changes`).
    pub fn apply(
        &mut self,
        node: &NodeSelf<'_>,
        lease: &Lease,
        added: bool,
        changes: &mut Vec<PeerChange>,
    ) {
        let lease_key = lease.key();
        if !added {
            if let Some(k) = self.by_lease.remove(&lease_key) {
                self.desired.remove(&k);
                info!("Subnet removed: {}", lease.subnets_text());
                changes.push(PeerChange::Remove(k));
            }
            return;
        }
        let result = peers::peer_for(&self.view(node), node.config, lease).and_then(|peer| {
            if &peer.public_key == node.public_key {
                return Err(Skip::Invalid(format!(
                    "its PublicKey {} is this node's own (do two nodes share one key file?)",
                    key::encode(&peer.public_key)
                )));
            }
            match self.desired.get(&peer.public_key) {
                Some((other, _)) if *other != lease_key => Err(Skip::Invalid(format!(
                    "its PublicKey {} is already the key of lease {other} (do two nodes share one key file?)",
                    key::encode(&peer.public_key)
                ))),
                _ => Ok(peer),
            }
        });
        let previous = self.by_lease.get(&lease_key).copied();
        match result {
            Ok(peer) => {
                if let Some(old) = previous.filter(|k| *k != peer.public_key) {
                    info!(
                        "lease {lease_key} has a new public key {}: removing its old peer {}",
                        key::encode(&peer.public_key),
                        key::encode(&old)
                    );
                    self.desired.remove(&old);
                    changes.push(PeerChange::Remove(old));
                }
                if self.desired.get(&peer.public_key).map(|(_, p)| p) != Some(&peer) {
                    // upstream's line
                    info!(
                        "Subnet added: {} via {}",
                        peer.allowed_ips
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        peer.endpoint.map_or_else(String::new, |e| e.to_string())
                    );
                    changes.push(PeerChange::Set(peer.clone()));
                }
                self.by_lease.insert(lease_key, peer.public_key);
                self.desired.insert(peer.public_key, (lease_key, peer));
            }
            Err(skip) => {
                match &skip {
                    Skip::Own | Skip::NoPart => {}
                    // upstream's line
                    Skip::OtherType(t) => warn!("Ignoring non-wireguard subnet: type={t}"),
                    Skip::Invalid(why) | Skip::Unreachable(why) => {
                        warn!(subnet = %lease_key, "ignoring lease: {why}")
                    }
                }
                if let Some(old) = previous {
                    self.by_lease.remove(&lease_key);
                    self.desired.remove(&old);
                    changes.push(PeerChange::Remove(old));
                }
            }
        }
    }

    /// Sends peer changes.
    pub async fn send(&self, peers: Vec<PeerChange>) -> Result<(), BackendError> {
        self.configure(DeviceChange {
            peers,
            ..Default::default()
        })
        .await
    }

    /// Makes the device what it should be; the number of things changed. `listed`: a
    /// complete listing was applied (peers no lease explains may go).
    pub async fn reconcile(
        &mut self,
        nl: &Netlink,
        private_key: &Key,
        listed: bool,
    ) -> Result<usize, BackendError> {
        let mut changed = 0;
        let ours = matches!(nl.link_by_name(&self.name).await?, Some(l) if l.index == self.index);
        // the device read once: its key, port and peers
        let read = match ours {
            true => self.control.device(&self.name).await.ok(),
            false => None,
        };
        let observed = match read {
            Some(device) => device,
            None => {
                warn!(
                    "WireGuard device {} is gone or unusable: making it again",
                    self.name
                );
                let (link, control) = device::ensure(nl, &self.name, self.mtu).await?;
                self.index = link.index;
                self.control = control;
                changed += 1;
                self.control.device(&self.name).await?
            }
        };
        if self.set_identity(&observed, private_key).await? {
            changed += 1;
        }
        self.ensure_link_state(nl).await?;
        let peers = plan(&self.desired, &observed, listed);
        changed += peers.len();
        if !peers.is_empty() {
            info!("reconcile {}: {} peer changes", self.name, peers.len());
            self.send(peers).await?;
        }
        Ok(changed)
    }
}

/// Whether another socket holds UDP `port` in this network namespace.
fn port_taken(port: u16) -> bool {
    let taken = |addr: std::net::SocketAddr| {
        std::net::UdpSocket::bind(addr).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    };
    taken((std::net::Ipv4Addr::UNSPECIFIED, port).into())
        || taken((std::net::Ipv6Addr::UNSPECIFIED, port).into())
}

/// The peer changes that make `observed` hold exactly the desired peers (stray ones removed
/// only when `listed`).
pub fn plan(
    desired: &BTreeMap<Key, (SubnetKey, WgPeer)>,
    observed: &WgDevice,
    listed: bool,
) -> Vec<PeerChange> {
    let have: BTreeMap<&Key, &WgPeer> = observed.peers.iter().map(|p| (&p.public_key, p)).collect();
    let mut out: Vec<PeerChange> = Vec::new();
    if listed {
        out.extend(
            have.keys()
                .filter(|k| !desired.contains_key(**k))
                .map(|k| PeerChange::Remove(**k)),
        );
    }
    out.extend(
        desired
            .iter()
            .filter(|(k, (_, want))| have.get(k) != Some(&want))
            .map(|(_, (_, want))| PeerChange::Set(want.clone())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(k: u8, ip: &str) -> WgPeer {
        WgPeer {
            public_key: [k; 32],
            endpoint: Some(format!("{ip}:51820").parse().unwrap()),
            allowed_ips: vec![format!("10.5.{k}.0/24").parse().unwrap()],
            keepalive: 0,
            preshared_key: None,
        }
    }

    fn wg_lease(subnet: &str, ip: &str, key: u8) -> Lease {
        let data = super::peers::data_value(&[key; 32], 51820);
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: flannel_net::LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: "wireguard".into(),
                backend_data: Some(data.into()),
                backend_v6_data: None,
            },
            expiration: flannel_net::Expiration::Never,
        }
    }

    #[test]
    fn a_new_key_replaces_the_old_peer_and_a_shared_or_own_key_is_refused() {
        let network = "10.5.0.0/16".parse().unwrap();
        let me: IpAddr = "192.0.2.1".parse().unwrap();
        let mut t = Tunnel {
            name: "flannel-wg".into(),
            index: 1,
            mtu: 1420,
            port: 51820,
            mode: Mode::Separate,
            sides: vec![Side {
                family: Family::V4,
                network,
                public_ip: me,
            }],
            control: Control::Userspace("/nonexistent".into()),
            own: vec![(Family::V4, "10.5.1.0/24".parse().unwrap(), me)],
            desired: BTreeMap::new(),
            by_lease: BTreeMap::new(),
        };
        let config = WireGuardConfig::default();
        let node = NodeSelf {
            public_key: &[1; 32],
            has_v4: true,
            public_ipv6: None,
            config: &config,
        };
        let mut changes = Vec::new();
        t.apply(
            &node,
            &wg_lease("10.5.2.0/24", "192.0.2.2", 2),
            true,
            &mut changes,
        );
        assert!(matches!(&changes[..], [PeerChange::Set(p)] if p.public_key == [2; 32]));
        // the same node with a new key: its old peer goes
        changes.clear();
        t.apply(
            &node,
            &wg_lease("10.5.2.0/24", "192.0.2.2", 9),
            true,
            &mut changes,
        );
        assert_eq!(changes[0], PeerChange::Remove([2; 32]));
        assert!(matches!(&changes[1], PeerChange::Set(p) if p.public_key == [9; 32]));
        // another lease with a key already in use, or with this node's key: refused
        changes.clear();
        t.apply(
            &node,
            &wg_lease("10.5.3.0/24", "192.0.2.3", 9),
            true,
            &mut changes,
        );
        t.apply(
            &node,
            &wg_lease("10.5.4.0/24", "192.0.2.4", 1),
            true,
            &mut changes,
        );
        assert_eq!(changes, vec![]);
        assert_eq!(t.desired.len(), 1);
        // the same event again changes nothing; its removal removes the peer
        t.apply(
            &node,
            &wg_lease("10.5.2.0/24", "192.0.2.2", 9),
            true,
            &mut changes,
        );
        assert_eq!(changes, vec![]);
        t.apply(
            &node,
            &wg_lease("10.5.2.0/24", "192.0.2.2", 9),
            false,
            &mut changes,
        );
        assert_eq!(changes, vec![PeerChange::Remove([9; 32])]);
        assert!(t.desired.is_empty() && t.by_lease.is_empty());
    }

    #[test]
    fn the_plan_sets_what_differs_and_removes_strays_only_once_listed() {
        let key = |k: u8| SubnetKey {
            ipv4: format!("10.5.{k}.0/24").parse().unwrap(),
            ipv6: None,
        };
        let desired: BTreeMap<_, _> = [1, 2, 3]
            .into_iter()
            .map(|k| ([k; 32], (key(k), peer(k, "192.0.2.1"))))
            .collect();
        let mut moved = peer(2, "192.0.2.9");
        moved.keepalive = 5;
        let observed = WgDevice {
            private_key: None,
            listen_port: 51820,
            peers: vec![peer(1, "192.0.2.1"), moved, peer(9, "192.0.2.1")],
        };
        let p = plan(&desired, &observed, false);
        assert_eq!(
            p,
            vec![
                PeerChange::Set(peer(2, "192.0.2.1")),
                PeerChange::Set(peer(3, "192.0.2.1"))
            ]
        );
        let p = plan(&desired, &observed, true);
        assert_eq!(p[0], PeerChange::Remove([9; 32]));
        assert_eq!(p.len(), 3);
    }
}
