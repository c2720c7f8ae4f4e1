//! The Kubernetes subnet manager (`-kube-subnet-mgr`, upstream `pkg/subnet/kube/kube.go`):
//! this node's subnet is its `spec.podCIDR(s)`, assigned by the controller manager; the
//! peers are the Nodes annotated by flannel. Nothing is allocated and nothing expires, so
//! this is a [`SubnetManager`] of its own rather than a store under the etcd lease manager:
//! it shares the lease vocabulary, the [`LeaseSet`] that turns a re-listing into exactly the
//! difference, and the daemon's rules (first batch is a snapshot, no event lost after a break).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use flannel_net::{
    BackendKind, Expiration, Lease, LeaseAttrs, LeaseBatch, LeaseEvent, NetworkConfig, SubnetKey,
};
use futures::StreamExt;
use ipnetwork::IpNetwork;
use kube::core::WatchEvent;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::annotations::Annotations;
use super::client::{ApiError, KubeApi, WATCH_SECONDS};
use super::node::{self, Node};
use crate::backoff::{sleep_unless, Backoff};
use crate::error::StoreError;
use crate::lease_set::LeaseSet;
use crate::{LeaseEntry, SubnetError, SubnetManager, SubnetStats};

/// Upstream polls for the node and retries the patch every 3 s for up to 30 s.
const POLL: Duration = Duration::from_secs(3);
const POLL_FOR: Duration = Duration::from_secs(30);

pub struct KubeSubnetManager {
    api: KubeApi,
    names: Annotations,
    node_name: String,
    config: NetworkConfig,
    /// `-set-node-network-unavailable`: set `NetworkUnavailable=False` once ready.
    set_network_unavailable: bool,
    stats: Arc<SubnetStats>,
    /// This node's Node as the lease watch last saw it, for the keeper: no request of its own.
    own: watch::Sender<OwnNode>,
}

/// This node's Node, as the lease watch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnNode {
    /// Not listed yet.
    Unseen,
    /// Deleted, or absent from the last listing.
    Gone,
    Present(Node),
}

impl KubeSubnetManager {
    pub fn new(
        api: KubeApi,
        names: Annotations,
        node_name: String,
        config: NetworkConfig,
        set_network_unavailable: bool,
    ) -> Self {
        KubeSubnetManager {
            api,
            names,
            node_name,
            config,
            set_network_unavailable,
            stats: Arc::default(),
            own: watch::Sender::new(OwnNode::Unseen),
        }
    }

    /// What the lease watch saw of `node` (`None`: deleted), when it is this node's.
    fn saw(&self, name: &str, node: Option<&Node>) {
        if name != self.node_name {
            return;
        }
        let state = node.map_or(OwnNode::Gone, |n| OwnNode::Present(n.clone()));
        self.own.send_if_modified(|own| {
            let changed = *own != state;
            *own = state;
            changed
        });
    }

    /// A node's lease when it is a flannel node with usable annotations; a bad one is said.
    fn peer_lease(&self, node: &Node) -> Option<Lease> {
        if !node.is_flannel_node(&self.names) {
            return None;
        }
        match node.to_lease(&self.names, &self.config) {
            Ok(lease) => Some(lease),
            Err(e) => {
                // upstream's words
                warn!("Error turning node {:?} to lease: {e}", node.name);
                None
            }
        }
    }

    /// This node, waiting up to 30 s for it to exist; an unreachable API is retried for as
    /// long as it takes, saying so.
    async fn own_node(&self) -> Result<Node, SubnetError> {
        let mut missing_since: Option<tokio::time::Instant> = None;
        loop {
            match self.api.get_node(&self.node_name).await {
                Ok(Some(object)) => return Ok(Node::from_object(object, &self.names)),
                Ok(None) => {
                    let since = *missing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= POLL_FOR {
                        // upstream's words, and the cause
                        return Err(SubnetError::Setup(format!(
                            "timeout contacting kube-api, failed to patch node {:?}. Error: node {:?} does not exist",
                            self.node_name, self.node_name
                        )));
                    }
                    info!("node {:?} does not exist (yet); waiting", self.node_name);
                }
                Err(e) if e.is_transient() => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "cannot reach the Kubernetes API at {} to read node {:?}: {e}; retrying in {POLL:?}",
                        self.api.server, self.node_name
                    );
                }
                Err(e) => return Err(refused(&e, &format!("reading node {:?}", self.node_name))),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Patches this node's status subresource, retrying what may pass (upstream: every 3 s
    /// for 30 s); a refusal is an error at once, naming the permission.
    async fn patch_status(&self, patch: &serde_json::Value, what: &str) -> Result<(), SubnetError> {
        let started = tokio::time::Instant::now();
        loop {
            match self.api.patch_node_status(&self.node_name, patch).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && started.elapsed() < POLL_FOR => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "Failed to patch node {:?} ({what}): {e}; retrying in {POLL:?}",
                        self.node_name
                    );
                    tokio::time::sleep(POLL).await;
                }
                Err(e) if e.is_transient() => {
                    return Err(SubnetError::Store(StoreError::transient(
                        format!(
                            "timeout contacting kube-api, failed to patch node {:?}",
                            self.node_name
                        ),
                        e.message,
                    )))
                }
                Err(e) => {
                    return Err(refused(
                        &e,
                        &format!("patching node {:?} ({what})", self.node_name),
                    ))
                }
            }
        }
    }

    /// One listing of every Node: the leases of flannel nodes by node name, and the
    /// resource version to watch from.
    async fn list(&self) -> Result<(BTreeMap<String, Lease>, String), ApiError> {
        let started = std::time::Instant::now();
        let mut leases = BTreeMap::new();
        let mut own = None;
        let mut count = 0usize;
        let rv = self
            .api
            .list_nodes(&self.names, |n| {
                count += 1;
                if n.name == self.node_name {
                    own = Some(n.clone());
                }
                if let Some(lease) = self.peer_lease(&n) {
                    leases.insert(n.name, lease);
                }
            })
            .await?;
        self.saw(&self.node_name, own.as_ref());
        debug!(
            "listed {count} Nodes ({} flannel nodes) in {} ms",
            leases.len(),
            started.elapsed().as_millis()
        );
        Ok((leases, rv))
    }
}

/// A permanent API error in words: 401/403 name what flanneld's account lacks.
fn refused(e: &ApiError, what: &str) -> SubnetError {
    let hint = match e.code {
        Some(401) => " (the API server does not accept flanneld's credentials)",
        Some(403) => {
            " (flanneld's account needs these permissions: nodes get, list, watch; nodes/status patch; \
             see the ClusterRole in packaging/kube-flannel-rs.yml)"
        }
        _ => "",
    };
    SubnetError::Store(StoreError::permanent(what, format!("{}{hint}", e.message)))
}

/// The peers by node name, kept in step with a [`LeaseSet`] (keyed by subnet).
#[derive(Default)]
struct Peers {
    set: LeaseSet,
    by_name: BTreeMap<String, SubnetKey>,
}

impl Peers {
    fn reset(&mut self, leases: BTreeMap<String, Lease>) -> Vec<LeaseEvent> {
        self.by_name = leases.iter().map(|(n, l)| (n.clone(), l.key())).collect();
        self.set.reset(leases.into_values())
    }

    /// A node's new state: its lease, or `None` when it is gone or no (usable) flannel node.
    fn update(&mut self, name: &str, lease: Option<Lease>) -> Vec<LeaseEvent> {
        let mut events = Vec::new();
        let old = self.by_name.get(name).copied();
        let new_key = lease.as_ref().map(Lease::key);
        if let Some(old) = old.filter(|k| Some(*k) != new_key) {
            self.by_name.remove(name);
            events.extend(self.set.remove(&old));
        }
        if let Some(lease) = lease {
            self.by_name.insert(name.to_string(), lease.key());
            events.extend(self.set.put(lease));
        }
        events
    }
}

#[async_trait]
impl SubnetManager for KubeSubnetManager {
    fn stats(&self) -> Arc<SubnetStats> {
        self.stats.clone()
    }

    fn name(&self) -> String {
        // upstream's text
        format!("Kubernetes Subnet Manager - {}", self.node_name)
    }

    async fn get_network_config(&self) -> Result<NetworkConfig, SubnetError> {
        Ok(self.config.clone())
    }

    async fn acquire_lease(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, SubnetError> {
        attrs.encode()?;
        let node = self.own_node().await?;
        if node.pod_cidrs.is_empty() {
            return Err(SubnetError::Setup(format!(
                "node {:?} pod cidr not assigned",
                self.node_name
            )));
        }
        let (cidr, ipv6_cidr) = node.pod_subnets().map_err(SubnetError::Setup)?;
        let wanted = node.wanted_annotations(&self.names, attrs);
        if wanted.is_none() {
            // nothing to write (a restart), but the keeper may have to write them again
            // later and the Node is marked ready: a permission that is missing stops start-up
            // now, as on a node that needs its annotations (an empty patch changes nothing)
            self.patch_status(&serde_json::json!({}), "annotations")
                .await?;
        }
        if let Some(set) = wanted {
            if let Some(ip) = set.get(&self.names.public_ip) {
                if ip != &attrs.public_ip.to_string() {
                    info!(
                        "Overriding public ip with '{ip}' from node annotation '{}'",
                        self.names.public_ip_overwrite
                    );
                }
            }
            debug!(?set, "annotating node {:?}", self.node_name);
            self.patch_status(&node::annotations_patch(&set), "annotations")
                .await?;
        }
        // the lease carries what this node detected (upstream: `Attrs: *attrs`)
        let mut lease = Lease {
            subnet: crate::acquire::no_ipv4(),
            ipv6_subnet: None,
            attrs: attrs.clone(),
            expiration: Expiration::At(SystemTime::now() + crate::SUBNET_TTL),
        };
        if config.enable_ipv4 {
            let cidr = cidr.ok_or_else(|| {
                SubnetError::Setup(format!(
                    "node {:?} has no IPv4 pod CIDR ({}) but the network config enables IPv4",
                    self.node_name,
                    node.pod_cidrs.join(",")
                ))
            })?;
            if !node::contains(IpNetwork::V4(config.network), IpNetwork::V4(cidr)) {
                return Err(SubnetError::Setup(format!(
                    "subnet {:?} specified in the flannel net config doesn't contain {:?} PodCIDR of the {:?} node",
                    config.network.to_string(),
                    cidr.to_string(),
                    self.node_name
                )));
            }
            lease.subnet = cidr;
        }
        let dual_capable =
            BackendKind::from_type(&attrs.backend_type).is_some_and(BackendKind::dual_stack);
        if config.enable_ipv6 && dual_capable {
            let cidr = ipv6_cidr.ok_or_else(|| {
                SubnetError::Setup(format!(
                    "node {:?} has no IPv6 pod CIDR ({}) but the network config enables IPv6",
                    self.node_name,
                    node.pod_cidrs.join(",")
                ))
            })?;
            let network = config.ipv6_network.map(IpNetwork::V6);
            if !network.is_some_and(|n| node::contains(n, IpNetwork::V6(cidr))) {
                return Err(SubnetError::Setup(format!(
                    "subnet {:?} specified in the flannel net config doesn't contain {:?} IPv6 PodCIDR of the {:?} node",
                    network.map(|n| n.to_string()).unwrap_or_default(),
                    cidr.to_string(),
                    self.node_name
                )));
            }
            lease.ipv6_subnet = Some(cidr);
        }
        Ok(lease)
    }

    /// Nothing expires in kube mode: the lease is the Node's pod CIDR and flannel's
    /// annotations, for the Node's life. The keeper follows the Node as the lease watch sees
    /// it: annotations removed are written again; a deleted Node is said, and the lease
    /// published as lost (`Expiration::Unknown`: not ready) until the Node is created again
    /// (kubelet re-registers it) and annotated again; a re-created Node with another pod CIDR
    /// ends it with an error (this node's subnet is gone: restart to take the new one).
    async fn keep_lease(
        &self,
        lease: Lease,
        status: watch::Sender<Lease>,
    ) -> Result<(), SubnetError> {
        let mut own = self.own.subscribe();
        let mut lost = false;
        let mut retry = false;
        loop {
            if retry {
                tokio::select! {
                    r = own.changed() => if r.is_err() { return std::future::pending().await },
                    () = tokio::time::sleep(POLL) => {}
                }
            } else if own.changed().await.is_err() {
                return std::future::pending().await;
            }
            let state = own.borrow_and_update().clone();
            retry = false;
            let node = match state {
                OwnNode::Unseen => continue,
                OwnNode::Gone => {
                    if !lost {
                        lost = true;
                        warn!(
                            "this node's Node {:?} was deleted: the other nodes drop their routes to its pods; not ready until the Node is created again (kubelet re-registers it), which flanneld-rs then annotates again",
                            self.node_name
                        );
                        status.send_replace(Lease {
                            expiration: Expiration::Unknown,
                            ..lease.clone()
                        });
                    }
                    continue;
                }
                OwnNode::Present(node) => node,
            };
            // flannel's annotations of this node as written (an operator's later
            // public-ip-overwrite is for the next start, as upstream: not fought here)
            let annotated = node.is_flannel_node(&self.names)
                && node.to_lease(&self.names, &self.config).is_ok_and(|l| {
                    l.attrs.backend_type == lease.attrs.backend_type
                        && l.attrs.backend_data == lease.attrs.backend_data
                        && l.attrs.backend_v6_data == lease.attrs.backend_v6_data
                });
            let wanted = node.wanted_annotations(&self.names, &lease.attrs);
            let (false, Some(set)) = (annotated, wanted) else {
                if std::mem::take(&mut lost) {
                    status.send_replace(Lease {
                        expiration: Expiration::At(SystemTime::now() + crate::SUBNET_TTL),
                        ..lease.clone()
                    });
                }
                continue;
            };
            if node.pod_cidrs.is_empty() {
                info!(
                    "Node {:?} has no podCIDR yet; annotating it once it has",
                    self.node_name
                );
                continue;
            }
            let (v4, v6) = node.pod_subnets().map_err(SubnetError::Setup)?;
            let same = (!lease.has_ipv4() || v4 == Some(lease.subnet))
                && (lease.ipv6_subnet.is_none() || v6 == lease.ipv6_subnet);
            if !same {
                return Err(SubnetError::Setup(format!(
                    "Node {:?} now has podCIDR {}, not this node's subnet {}: restart flanneld-rs to use the new one (the pods of this node need new addresses)",
                    self.node_name,
                    node.pod_cidrs.join(","),
                    lease.key()
                )));
            }
            match self
                .patch_status(&node::annotations_patch(&set), "annotations")
                .await
            {
                Ok(()) => {
                    info!(
                        "annotated Node {:?} again (its flannel annotations were {})",
                        self.node_name,
                        if lost { "gone with it" } else { "changed" }
                    );
                    if lost {
                        if let Err(e) = self.complete_lease().await {
                            warn!("marking the re-created Node's network available: {e}");
                        }
                    }
                }
                Err(e) => {
                    warn!("annotating Node {:?} again: {e}; retrying", self.node_name);
                    retry = true;
                }
            }
        }
    }

    async fn watch_leases(&self, tx: mpsc::Sender<LeaseBatch>) -> Result<(), SubnetError> {
        if self.config.backend_kind() == Some(BackendKind::Alloc) {
            // upstream #1617: with alloc, something else routes; no node is watched
            info!("Node controller skips sync");
            if tx
                .send(LeaseBatch {
                    events: Vec::new(),
                    snapshot: true,
                })
                .await
                .is_ok()
            {
                tx.closed().await;
            }
            return Ok(());
        }
        let mut peers = Peers::default();
        let mut first = true;
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let (leases, mut rv) = match self.list().await {
                Ok(listing) => listing,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    let pause = backoff.next(started);
                    warn!(
                        "listing nodes at {}: {e}; trying again in {pause:?}",
                        self.api.server
                    );
                    if !sleep_unless(pause, tx.closed()).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            if !std::mem::take(&mut first) {
                self.stats.watch_resyncs.fetch_add(1, Ordering::Relaxed);
            }
            let events = peers.reset(leases);
            if tx
                .send(LeaseBatch {
                    events,
                    snapshot: true,
                })
                .await
                .is_err()
            {
                return Ok(());
            }
            // follow the changes; a watch the server ends is taken up again from the last
            // resource version; a break that may have lost history lists again
            loop {
                let started = Instant::now();
                match self.follow(&mut peers, &mut rv, &tx).await {
                    Ok(Follow::Again) => backoff = Backoff::new(),
                    Ok(Follow::Closed) => return Ok(()),
                    Ok(Follow::Relist) => break,
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        let pause = backoff.next(started);
                        warn!("node watch interrupted: {e}; watching again in {pause:?}");
                        if !sleep_unless(pause, tx.closed()).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn list_leases(&self) -> Result<Vec<LeaseEntry>, SubnetError> {
        let mut nodes = Vec::new();
        self.api
            .list_nodes(&self.names, |n| nodes.push(n))
            .await
            .map_err(|e| {
                SubnetError::Store(
                    e.into_store_error(format!("listing nodes at {}", self.api.server)),
                )
            })?;
        // the API server's watch cache lists in no particular order
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes
            .iter()
            .filter(|n| n.is_flannel_node(&self.names))
            .map(|n| LeaseEntry {
                key: n.name.clone(),
                lease: n.to_lease(&self.names, &self.config).map(|mut l| {
                    l.expiration = Expiration::Never;
                    l
                }),
            })
            .collect())
    }

    /// The config comes from a file read once at start (as upstream).
    async fn watch_config(
        &self,
        _tx: mpsc::Sender<Result<NetworkConfig, String>>,
    ) -> Result<(), SubnetError> {
        std::future::pending().await
    }

    /// This node's lease as its annotations say (upstream v0.24.1+ reads the VTEP MAC back
    /// from its own `backend-data`), whatever the address.
    async fn lease_of(&self, _public_ip: IpAddr) -> Result<Option<Lease>, SubnetError> {
        match self.api.get_node(&self.node_name).await {
            Ok(Some(object)) => Ok(self.peer_lease(&Node::from_object(object, &self.names))),
            Ok(None) => Ok(None),
            Err(e) => Err(SubnetError::Store(
                e.into_store_error(format!("reading node {:?}", self.node_name)),
            )),
        }
    }

    async fn why_no_lease(&self) -> Result<Option<String>, SubnetError> {
        if self.node_name.is_empty() {
            return Ok(None);
        }
        let name = &self.node_name;
        let object = self.api.get_node(name).await.map_err(|e| {
            SubnetError::Store(e.into_store_error(format!("reading node {name:?}")))
        })?;
        let Some(object) = object else {
            return Ok(Some(format!(
                "Node {name:?} does not exist in the API (deleted?)"
            )));
        };
        let node = Node::from_object(object, &self.names);
        Ok(Some(if node.pod_cidrs.is_empty() {
            format!("Node {name:?} has no podCIDR (the controller manager assigns them with --allocate-node-cidrs)")
        } else if !node.is_flannel_node(&self.names) {
            format!("Node {name:?} has podCIDR {} but no flannel annotations (flanneld-rs writes them when it starts on that node)", node.pod_cidrs.join(","))
        } else {
            match node.to_lease(&self.names, &self.config) {
                Ok(_) => return Ok(None),
                Err(e) => format!("Node {name:?}: {e}"),
            }
        }))
    }

    async fn stored_public_ips(&self) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), SubnetError> {
        match self.api.get_node(&self.node_name).await {
            Ok(Some(object)) => Node::from_object(object, &self.names)
                .stored_public_ips(&self.names)
                .map_err(SubnetError::Setup),
            Ok(None) => Ok((None, None)),
            Err(e) => Err(SubnetError::Store(
                e.into_store_error(format!("reading node {:?}", self.node_name)),
            )),
        }
    }

    /// Upstream `CompleteLease`: `NetworkUnavailable=False` (`FlannelIsUp`) unless
    /// `-set-node-network-unavailable=false`.
    async fn complete_lease(&self) -> Result<(), SubnetError> {
        if !self.set_network_unavailable {
            return Ok(());
        }
        self.patch_status(
            &node::network_available_patch(SystemTime::now()),
            "NetworkUnavailable condition",
        )
        .await
    }
}

enum Follow {
    /// The server ended the watch: watch again from the last resource version.
    Again,
    /// The history is gone (410) or unknown: list again.
    Relist,
    Closed,
}

impl KubeSubnetManager {
    /// One watch of the Nodes from `rv`, applying each change to `peers` and sending its
    /// events.
    async fn follow(
        &self,
        peers: &mut Peers,
        rv: &mut String,
        tx: &mpsc::Sender<LeaseBatch>,
    ) -> Result<Follow, ApiError> {
        let mut stream = match self.api.watch_nodes(rv).await {
            Ok(s) => s,
            Err(e) if e.is_gone() => return Ok(Follow::Relist),
            Err(e) => return Err(e),
        };
        // a watch silent for longer than the server's own limit is dead (a partition)
        let silence = Duration::from_secs(WATCH_SECONDS + 15);
        loop {
            let item = tokio::select! {
                item = tokio::time::timeout(silence, stream.next()) => item,
                () = tx.closed() => return Ok(Follow::Closed),
            };
            let event = match item {
                Err(_) => {
                    return Err(ApiError {
                        code: None,
                        message: format!("no word from {} for {silence:?}", self.api.server),
                    })
                }
                Ok(None) => return Ok(Follow::Again),
                Ok(Some(Err(e))) if e.is_gone() => return Ok(Follow::Relist),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(event))) => event,
            };
            let events = match event {
                WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                    rv.clone_from(&object.metadata.resource_version);
                    let node = Node::from_object(object, &self.names);
                    self.saw(&node.name, Some(&node));
                    let lease = self.peer_lease(&node);
                    peers.update(&node.name, lease)
                }
                WatchEvent::Deleted(object) => {
                    rv.clone_from(&object.metadata.resource_version);
                    self.saw(&object.metadata.name, None);
                    peers.update(&object.metadata.name, None)
                }
                WatchEvent::Bookmark(b) => {
                    rv.clone_from(&b.metadata.resource_version);
                    Vec::new()
                }
                WatchEvent::Error(status) if status.code == 410 => return Ok(Follow::Relist),
                WatchEvent::Error(status) => {
                    warn!(
                        "node watch: the API server said: {} ({})",
                        status.message, status.code
                    );
                    return Ok(Follow::Relist);
                }
            };
            if !events.is_empty()
                && tx
                    .send(LeaseBatch {
                        events,
                        snapshot: false,
                    })
                    .await
                    .is_err()
            {
                return Ok(Follow::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_net::LeaseAttrs;

    fn lease(subnet: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.into(),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: None,
                backend_v6_data: None,
            },
            expiration: Expiration::Unknown,
        }
    }

    #[test]
    fn a_node_that_changes_subnet_or_goes_away_is_removed_with_its_last_lease() {
        let mut peers = Peers::default();
        let first = BTreeMap::from([("a".to_string(), lease("10.244.1.0/24", [192, 168, 1, 1]))]);
        assert_eq!(peers.reset(first).len(), 1);
        // unchanged: silent
        assert!(peers
            .update("a", Some(lease("10.244.1.0/24", [192, 168, 1, 1])))
            .is_empty());
        // a new public IP: one Added
        let ev = peers.update("a", Some(lease("10.244.1.0/24", [192, 168, 1, 2])));
        assert!(matches!(ev.as_slice(), [LeaseEvent::Added(_)]));
        // a new pod CIDR (node re-created): the old subnet removed, the new one added
        let ev = peers.update("a", Some(lease("10.244.7.0/24", [192, 168, 1, 2])));
        assert!(
            matches!(ev.as_slice(), [LeaseEvent::Removed(l), LeaseEvent::Added(_)] if l.subnet.to_string() == "10.244.1.0/24")
        );
        // annotations removed or node deleted
        let ev = peers.update("a", None);
        assert!(
            matches!(ev.as_slice(), [LeaseEvent::Removed(l)] if l.attrs.public_ip == Ipv4Addr::new(192, 168, 1, 2))
        );
        assert!(peers.update("a", None).is_empty());
    }
}
