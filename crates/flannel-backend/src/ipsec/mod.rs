//! The `ipsec` backend (upstream `pkg/backend/ipsec` at v0.28.9), IPv4 only as upstream:
//! pod traffic between nodes in ESP tunnels, keyed by IKEv2 with a pre-shared key. The
//! kernel encrypts; strongSwan's `charon` ([`charon`]) negotiates the SAs; flanneld-rs tells
//! charon each peer over VICI ([`vici`]: the key, `load-conn` of a connection
//! `<PublicIP>-<subnet>-<peer subnet>-<peer PublicIP>` with one child, tunnel mode, reqid 11,
//! upstream's proposals, charon's own policies off) and installs the xfrm policies that send
//! the subnet pair's packets through it (out, in, fwd, as upstream's). No route: packets
//! follow the node's routes (its default route) and the policies catch them.
//! MTU: the interface's less 77 (less 85 with `UDPEncap`). Lease
//! `{"PublicIP":"…","PublicIPv6":null,"BackendType":"ipsec"}`.
//!
//! Reconciled: the policies are compared with the kernel's on every period (one deleted by
//! hand comes back), charon's connections with what it has loaded, and a charon that is gone
//! is started again with every key and connection. charon outlives a restart of flanneld-rs
//! (see [`charon`]): no SA of a live peer is dropped by one.

mod charon;
mod vici;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{BackendKind, Lease, LeaseAttrs, LeaseBatch, LeaseEvent, NetworkConfig};
use futures::future::BoxFuture;
use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::inspect::{Findings, Inspect};
use crate::lease_check::{self, Skip};
use crate::netlink::events::KernelEvent;
use crate::netlink::xfrm::{Dir, KernelXfrm, Policy};
use crate::netlink::Family;
use crate::reconciler::Reconciler;
use crate::table::{Leaving, Made, Row};
use crate::{Backend, BackendError, BackendStats, NodeContext};

use vici::{kv, list, section};

/// The request id of upstream's SAs and policies (`defaultReqID`): what ties a policy to
/// the SAs charon installs, and what makes a policy flannel's.
pub const REQID: u32 = 11;

/// Upstream's ESP proposal.
pub const DEFAULT_ESP_PROPOSAL: &str = "aes128gcm16-sha256-prfsha256-ecp256";

/// Upstream's IKE proposal (not configurable upstream either).
const IKE_PROPOSAL: &str = "aes256-sha256-modp4096";

/// Upstream's shortest PSK.
const MIN_PSK: usize = 96;

/// The outer IPv4 header, ESP's header, IV, padding, trailer and ICV (upstream's sum).
const OVERHEAD: u32 = 77;
/// With `UDPEncap`, the UDP header.
const UDP_ENCAP_OVERHEAD: u32 = 8;

/// The table's row of ipsec.
pub(crate) const ROW: Row = Row {
    kind: BackendKind::Ipsec,
    check,
    make,
    gateway_routes: crate::table::no_gateway_routes,
    leftovers,
    inspect,
    inspect_device: crate::table::no_device,
};

/// The `Backend` object's settings.
#[derive(Clone, PartialEq, Eq)]
struct Config {
    udp_encap: bool,
    esp_proposal: String,
    psk: String,
}

impl std::fmt::Debug for Config {
    /// Without the PSK.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UDPEncap={} ESPProposal={}",
            self.udp_encap, self.esp_proposal
        )
    }
}

fn parse(config: &NetworkConfig) -> Result<Config, BackendError> {
    let bad = |message: String| BackendError::Config {
        backend: "IPSEC",
        message,
    };
    let mut out = Config {
        udp_encap: false,
        esp_proposal: DEFAULT_ESP_PROPOSAL.into(),
        psk: String::new(),
    };
    match config.backend.as_ref() {
        None | Some(Value::Null) => {}
        Some(Value::Object(obj)) => {
            for (key, v) in obj {
                if key.eq_ignore_ascii_case("UDPEncap") {
                    out.udp_encap = v
                        .as_bool()
                        .ok_or_else(|| bad(format!("UDPEncap: expected true or false, got {v}")))?;
                } else if key.eq_ignore_ascii_case("ESPProposal") {
                    out.esp_proposal = v
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| bad(format!("ESPProposal: expected a proposal, got {v}")))?
                        .into();
                } else if key.eq_ignore_ascii_case("PSK") {
                    out.psk = v
                        .as_str()
                        .ok_or_else(|| bad("PSK: expected a string".into()))?
                        .into();
                }
            }
        }
        Some(other) => return Err(bad(format!("expected an object, got {other}"))),
    }
    if out.psk.len() < MIN_PSK {
        // upstream's words, and how long it must be
        return Err(BackendError::Device(format!(
            "config error, password is too short: the ipsec backend's PSK has {} characters, it needs at least {MIN_PSK}",
            out.psk.len()
        )));
    }
    Ok(out)
}

fn check(config: &NetworkConfig) -> Result<(), BackendError> {
    parse(config).map(|_| ())
}

fn make(config: &NetworkConfig, node: NodeContext) -> Made<'_> {
    Box::pin(async move {
        let settings = parse(config)?;
        if config.enable_ipv6 || !config.enable_ipv4 {
            return Err(BackendError::Device(
                "the ipsec backend carries IPv4 only, as upstream's: set EnableIPv4 and leave EnableIPv6 off".into(),
            ));
        }
        // upstream's line
        info!("IPSec config: {settings:?}");
        let overhead = OVERHEAD
            + if settings.udp_encap {
                UDP_ENCAP_OVERHEAD
            } else {
                0
            };
        let mtu = node
            .ext
            .mtu
            .checked_sub(overhead)
            .filter(|m| *m >= 68)
            .ok_or_else(|| {
                BackendError::Device(format!(
                    "MTU {} of iface {} is too small for ipsec mode to work",
                    node.ext.mtu, node.ext.name
                ))
            })?;
        let charon = charon::Charon::new(charon::find()?);
        Ok(Box::new(IpsecBackend {
            settings,
            charon,
            public_ip: node.public_ip,
            network: config.network,
            mtu,
            own: None,
            peers: BTreeMap::new(),
            listed: false,
            stats: Arc::default(),
        }) as Box<dyn Backend>)
    })
}

/// What ipsec leaves on a node whose config names another backend: its policies (reqid 11,
/// inside the Network) and its charon (stopped: the SAs go with it).
fn leftovers(l: Leaving<'_>) -> BoxFuture<'_, Result<(), BackendError>> {
    Box::pin(async move {
        if l.running {
            return Ok(());
        }
        let network = l.config.network;
        let ours: Vec<Policy> = KernelXfrm::policies()?
            .into_iter()
            .filter(|p| p.reqid == REQID && is_in(network, p.src) && is_in(network, p.dst))
            .collect();
        if !ours.is_empty() {
            info!(
                "removing {} xfrm policies, left by the ipsec backend",
                ours.len()
            );
            KernelXfrm::delete(&ours)?;
        }
        charon::terminate_running().await;
        // SAs charon did not delete (one killed leaves its SAs until they expire)
        let public_ip = l.node.public_ip;
        let stale: Vec<_> = KernelXfrm::states()?
            .into_iter()
            .filter(|s| s.reqid == REQID && (s.src == public_ip || s.dst == public_ip))
            .collect();
        if !stale.is_empty() {
            info!(
                "removing {} ESP SAs, left by the ipsec backend",
                stale.len()
            );
            KernelXfrm::delete_states(&stale)?;
        }
        Ok(())
    })
}

fn is_in(network: Ipv4Network, subnet: Ipv4Network) -> bool {
    network.contains(subnet.network()) && subnet.prefix() >= network.prefix()
}

/// The three policies of a peer: this node's subnet to the peer's out, the peer's to ours
/// in and forward (upstream's `AddIPSECPolicies`).
fn policies_for(own: (Ipv4Network, Ipv4Addr), peer: (Ipv4Network, Ipv4Addr)) -> [Policy; 3] {
    let out = Policy {
        src: own.0,
        dst: peer.0,
        dir: Dir::Out,
        tunnel_src: own.1,
        tunnel_dst: peer.1,
        reqid: REQID,
    };
    let back = |dir| Policy {
        src: peer.0,
        dst: own.0,
        dir,
        tunnel_src: peer.1,
        tunnel_dst: own.1,
        reqid: REQID,
    };
    [out, back(Dir::In), back(Dir::Fwd)]
}

pub struct IpsecBackend {
    settings: Config,
    charon: charon::Charon,
    public_ip: Ipv4Addr,
    network: Ipv4Network,
    mtu: u32,
    own: Option<Ipv4Network>,
    /// The peers: subnet → PublicIP.
    peers: BTreeMap<Ipv4Network, Ipv4Addr>,
    listed: bool,
    stats: Arc<BackendStats>,
}

impl IpsecBackend {
    /// upstream's connection name.
    fn conn_name(&self, own: Ipv4Network, peer: (Ipv4Network, Ipv4Addr)) -> String {
        format!("{}-{own}-{}-{}", self.public_ip, peer.0, peer.1)
    }

    /// The PSK for the IKE peer `ip` into charon (`load-shared`).
    async fn load_key(&self, ip: Ipv4Addr) -> Result<(), String> {
        let message = vec![
            kv("type", "IKE"),
            kv("data", self.settings.psk.clone()),
            list("owners", &[&ip.to_string()]),
        ];
        vici::call(self.charon.socket(), "load-shared", &message).await?;
        Ok(())
    }

    /// The peer's key and connection into charon; it starts the IKE at once (start_action
    /// start), and again after a failure (keyingtries 0, dpd restart).
    async fn load_peer(
        &self,
        own: Ipv4Network,
        peer: (Ipv4Network, Ipv4Addr),
    ) -> Result<(), String> {
        self.load_key(peer.1).await?;
        let (me, them) = (self.public_ip.to_string(), peer.1.to_string());
        let child = vec![
            list("local_ts", &[&own.to_string()]),
            list("remote_ts", &[&peer.0.to_string()]),
            list("esp_proposals", &[&self.settings.esp_proposal]),
            kv("start_action", "start"),
            kv("close_action", "trap"),
            kv("dpd_action", "restart"),
            kv("mode", "tunnel"),
            kv("reqid", REQID.to_string()),
            kv("rekey_time", "1h"),
            kv("policies", "no"),
        ];
        let conn = vec![
            list("local_addrs", &[&me]),
            list("remote_addrs", &[&them]),
            list("proposals", &[IKE_PROPOSAL]),
            kv("version", "2"),
            kv("keyingtries", "0"),
            kv("encap", if self.settings.udp_encap { "yes" } else { "no" }),
            section("local", vec![kv("auth", "psk")]),
            section("remote", vec![kv("auth", "psk")]),
            section(
                "children",
                vec![section(&format!("{own}-{}", peer.0), child)],
            ),
        ];
        let name = self.conn_name(own, peer);
        vici::call(
            self.charon.socket(),
            "load-conn",
            &vec![section(&name, conn)],
        )
        .await?;
        info!("Loaded connection: {name}");
        Ok(())
    }

    async fn unload_peer(
        &self,
        own: Ipv4Network,
        peer: (Ipv4Network, Ipv4Addr),
    ) -> Result<(), String> {
        let name = self.conn_name(own, peer);
        vici::call(
            self.charon.socket(),
            "unload-conn",
            &vec![kv("name", name.clone())],
        )
        .await?;
        info!("Unloaded connection: {name}");
        Ok(())
    }

    /// The names of the connections charon has loaded.
    async fn loaded_conns(&self) -> Result<BTreeSet<String>, String> {
        let reply = vici::call(self.charon.socket(), "get-conns", &Vec::new()).await?;
        Ok(match vici::get(&reply, "conns") {
            Some(vici::Value::List(names)) => names.iter().cloned().collect(),
            _ => BTreeSet::new(),
        })
    }

    /// Where `lease`'s packets go, or why nowhere.
    fn peer_for(&self, lease: &Lease) -> Result<(Ipv4Network, Ipv4Addr), Skip> {
        if !BackendKind::Ipsec.is(&lease.attrs.backend_type) {
            return Err(Skip::OtherType(lease.attrs.backend_type.clone()));
        }
        let own = self
            .own
            .map(|s| (IpNetwork::V4(s), IpAddr::V4(self.public_ip)));
        let part = lease_check::check(lease, Family::V4, IpNetwork::V4(self.network), own)?;
        match (part.subnet, part.public_ip) {
            (IpNetwork::V4(s), IpAddr::V4(ip)) => Ok((s, ip)),
            _ => Err(Skip::NoPart),
        }
    }

    /// Programs one peer (policies, key, connection); the number of failures.
    async fn add_peer(&self, own: Ipv4Network, peer: (Ipv4Network, Ipv4Addr)) -> usize {
        let mut failed = 0;
        if let Err(e) = KernelXfrm::update(&policies_for((own, self.public_ip), peer)) {
            warn!("error adding ipsec policy: {e}");
            failed += 1;
        }
        if let Err(e) = self.load_peer(own, peer).await {
            warn!("error loading connection into IKE daemon: {e}");
            failed += 1;
        }
        failed
    }

    async fn remove_peer(&self, own: Ipv4Network, peer: (Ipv4Network, Ipv4Addr)) -> usize {
        let mut failed = 0;
        if let Err(e) = self.unload_peer(own, peer).await {
            warn!("error unloading charon connections: {e}");
            failed += 1;
        }
        if let Err(e) = KernelXfrm::delete(&policies_for((own, self.public_ip), peer)) {
            warn!("error deleting ipsec policies: {e}");
            failed += 1;
        }
        failed
    }
}

#[async_trait]
impl Reconciler for IpsecBackend {
    async fn apply(&mut self, batch: &LeaseBatch) -> usize {
        self.listed |= batch.snapshot;
        let Some(own) = self.own else { return 0 };
        let mut failed = 0;
        for event in &batch.events {
            match event {
                LeaseEvent::Added(lease) => match self.peer_for(lease) {
                    Ok(peer) => {
                        let old = self.peers.insert(peer.0, peer.1);
                        if old == Some(peer.1) {
                            continue;
                        }
                        info!("Subnet added: {}", peer.0);
                        if let Some(old_ip) = old {
                            failed += self.remove_peer(own, (peer.0, old_ip)).await;
                        }
                        failed += self.add_peer(own, peer).await;
                    }
                    Err(Skip::Own | Skip::NoPart) => {}
                    Err(Skip::OtherType(kind)) => {
                        // upstream's line
                        warn!("Ignoring non-ipsec event: type: {kind}");
                    }
                    Err(Skip::Invalid(why) | Skip::Unreachable(why)) => {
                        warn!(subnet = %lease.key(), "ignoring lease: {why}");
                    }
                },
                LeaseEvent::Removed(lease) => {
                    let Some(IpNetwork::V4(subnet)) = lease.subnet_of(Family::V4) else {
                        continue;
                    };
                    if let Some(ip) = self.peers.remove(&subnet) {
                        info!("Subnet removed: {subnet}");
                        failed += self.remove_peer(own, (subnet, ip)).await;
                    }
                }
            }
        }
        self.stats
            .peers
            .store(self.peers.len() as u64, Ordering::Relaxed);
        self.stats
            .errors
            .fetch_add(failed as u64, Ordering::Relaxed);
        failed
    }

    async fn reconcile(&mut self) -> Result<usize, BackendError> {
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let Some(own) = self.own else { return Ok(0) };
        let mut changed = 0;
        if self.charon.ensure().await? {
            // a charon of its own: every key and connection again
            self.stats
                .device_recreations
                .fetch_add(1, Ordering::Relaxed);
            self.load_key(self.public_ip)
                .await
                .map_err(BackendError::Device)?;
            changed += 1;
        }
        // the policies
        let want: BTreeSet<Policy> = self
            .peers
            .iter()
            .flat_map(|(s, ip)| policies_for((own, self.public_ip), (*s, *ip)))
            .collect();
        let have: BTreeSet<Policy> = KernelXfrm::policies()?
            .into_iter()
            .filter(|p| p.reqid == REQID && (p.src == own || p.dst == own))
            .collect();
        let missing: Vec<Policy> = want.difference(&have).copied().collect();
        let stale: Vec<Policy> = have.difference(&want).copied().collect();
        if !missing.is_empty() {
            KernelXfrm::update(&missing)?;
        }
        if self.listed && !stale.is_empty() {
            KernelXfrm::delete(&stale)?;
        }
        changed += missing.len() + if self.listed { stale.len() } else { 0 };
        // charon's connections
        let loaded = self.loaded_conns().await.map_err(BackendError::Device)?;
        let prefix = format!("{}-{own}-", self.public_ip);
        let mut wanted_names = BTreeSet::new();
        for (s, ip) in &self.peers {
            let name = self.conn_name(own, (*s, *ip));
            if !loaded.contains(&name) {
                self.load_peer(own, (*s, *ip))
                    .await
                    .map_err(BackendError::Device)?;
                changed += 1;
            }
            wanted_names.insert(name);
        }
        if self.listed {
            for name in loaded
                .iter()
                .filter(|n| n.starts_with(&prefix) && !wanted_names.contains(*n))
            {
                vici::call(
                    self.charon.socket(),
                    "unload-conn",
                    &vec![kv("name", name.clone())],
                )
                .await
                .map_err(BackendError::Device)?;
                info!("Unloaded connection: {name}");
                changed += 1;
            }
        }
        if changed > 0 {
            self.stats
                .repairs
                .fetch_add(changed as u64, Ordering::Relaxed);
        }
        Ok(changed)
    }

    /// The kernel reports no xfrm change on the route netlink: the periodic reconcile finds
    /// a deleted policy or a charon gone.
    fn is_damage(&self, _event: &KernelEvent) -> bool {
        false
    }

    fn listed(&self) -> bool {
        self.listed
    }
}

#[async_trait]
impl Backend for IpsecBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ipsec
    }

    /// `{"PublicIP":"…","PublicIPv6":null,"BackendType":"ipsec"}`, as upstream.
    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::public_ip_only(self.public_ip, BackendKind::Ipsec.name())
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn stats(&self) -> Arc<BackendStats> {
        self.stats.clone()
    }

    /// charon running, this node's key in it.
    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.own = match own.subnet_of(Family::V4) {
            Some(IpNetwork::V4(s)) => Some(s),
            _ => None,
        };
        let started = self.charon.ensure().await?;
        if !started {
            info!(
                "using the charon already running (its VICI socket answers at {})",
                charon::SOCKET
            );
        }
        self.load_key(self.public_ip)
            .await
            .map_err(|e| BackendError::Device(format!("Failed to load PSK: {e}")))?;
        Ok(())
    }

    async fn run(
        self: Box<Self>,
        events: mpsc::Receiver<LeaseBatch>,
        synced: watch::Sender<bool>,
        resync: Duration,
    ) -> Result<(), BackendError> {
        info!("Watching for new subnet leases");
        crate::reconciler::serve(*self, events, synced, resync).await
    }
}

/// doctor: charon answering, the policies of every ipsec peer in the leases.
fn inspect<'a>(n: &'a Inspect<'a>, r: &'a mut Findings) -> BoxFuture<'a, Option<u32>> {
    Box::pin(async move {
        let settings = match parse(n.config) {
            Ok(s) => s,
            Err(e) => {
                r.fail("device", e.to_string(), "");
                return None;
            }
        };
        let overhead = OVERHEAD
            + if settings.udp_encap {
                UDP_ENCAP_OVERHEAD
            } else {
                0
            };
        let charon = match charon::find() {
            Ok(path) => charon::Charon::new(path),
            Err(e) => {
                r.fail("device", e.to_string(), "install strongSwan's charon");
                return Some(n.ext.mtu.saturating_sub(overhead));
            }
        };
        if charon.answers().await {
            r.ok("device", format!("charon answers at {}", charon::SOCKET));
        } else {
            r.fail(
                "device",
                format!("no charon answers at {}", charon::SOCKET),
                "no SA can be negotiated; a running flanneld-rs starts it again within its resync period: is it running?",
            );
        }
        let (Some(IpNetwork::V4(own)), public_ip) =
            (n.lease.subnet_of(Family::V4), n.lease.attrs.public_ip)
        else {
            return Some(n.ext.mtu.saturating_sub(overhead));
        };
        let want: BTreeSet<Policy> = n
            .leases
            .iter()
            .filter(|l| BackendKind::Ipsec.is(&l.attrs.backend_type))
            .filter_map(|l| match l.subnet_of(Family::V4) {
                Some(IpNetwork::V4(s)) if s != own => Some((s, l.attrs.public_ip)),
                _ => None,
            })
            .flat_map(|peer| policies_for((own, public_ip), peer))
            .collect();
        match KernelXfrm::policies() {
            Ok(have) => {
                let have: BTreeSet<Policy> =
                    have.into_iter().filter(|p| p.reqid == REQID).collect();
                let missing = want.difference(&have).count();
                if missing == 0 {
                    r.ok("peers", format!("{} ipsec policies exact", want.len()));
                } else {
                    r.fail(
                        "peers",
                        format!("{missing} of {} ipsec policies missing", want.len()),
                        "those peers' traffic leaves unencrypted or not at all; a running flanneld-rs puts them back within its resync period",
                    );
                }
            }
            Err(e) => r.fail("peers", format!("listing the xfrm policies: {e}"), ""),
        }
        Some(n.ext.mtu.saturating_sub(overhead))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backend: &str) -> NetworkConfig {
        NetworkConfig::parse(&format!(
            r#"{{"Network":"10.5.0.0/16","Backend":{backend}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn psk_length_proposal_and_encap_as_upstream() {
        let psk = "k".repeat(96);
        let c = parse(&config(&format!(r#"{{"Type":"ipsec","PSK":"{psk}"}}"#))).unwrap();
        assert_eq!(c.esp_proposal, DEFAULT_ESP_PROPOSAL);
        assert!(!c.udp_encap);
        assert!(!format!("{c:?}").contains(&psk), "the PSK is never logged");
        let c = parse(&config(&format!(
            r#"{{"Type":"ipsec","psk":"{psk}","UDPEncap":true,"ESPProposal":"aes256gcm16"}}"#
        )))
        .unwrap();
        assert!(c.udp_encap);
        assert_eq!(c.esp_proposal, "aes256gcm16");
        let e = parse(&config(&format!(
            r#"{{"Type":"ipsec","PSK":"{}"}}"#,
            "k".repeat(95)
        )))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("config error, password is too short"), "{e}");
        let e = parse(&config(r#"{"Type":"ipsec","UDPEncap":"yes"}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("error decoding IPSEC backend config: UDPEncap"),
            "{e}"
        );
    }

    #[test]
    fn a_peer_has_upstreams_three_policies() {
        let own = ("10.5.1.0/24".parse().unwrap(), "192.0.2.1".parse().unwrap());
        let peer = ("10.5.2.0/24".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let [out, inward, fwd] = policies_for(own, peer);
        assert_eq!((out.src, out.dst, out.dir), (own.0, peer.0, Dir::Out));
        assert_eq!((out.tunnel_src, out.tunnel_dst), (own.1, peer.1));
        assert_eq!(
            (inward.src, inward.dst, inward.dir),
            (peer.0, own.0, Dir::In)
        );
        assert_eq!((inward.tunnel_src, inward.tunnel_dst), (peer.1, own.1));
        assert_eq!(fwd.dir, Dir::Fwd);
        assert!([out, inward, fwd].iter().all(|p| p.reqid == 11));
    }
}
