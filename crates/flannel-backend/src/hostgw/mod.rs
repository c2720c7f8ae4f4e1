//! The `host-gw` backend (upstream `pkg/backend/hostgw` and `route_network.go`): no
//! encapsulation, a plain route to each node's subnet via its PublicIP on the external
//! interface, for nodes on one L2 segment; IPv6 subnets via the PublicIPv6, in dual-stack and
//! IPv6-only clusters. MTU: the interface's.
//!
//! Reconciled like VXLAN (the loop is `reconciler.rs`): routes added and removed per
//! lease event, the whole set compared with the kernel at start, on a period and soon after
//! the kernel reports one of ours deleted; nothing deleted before the first complete listing.
//! Upstream re-adds missing routes every 10 s and never removes stale ones. Our routes are
//! known by their shape: on the external interface, via a gateway, to a subnet inside the
//! Network that is longer than the Network (others' routes are never touched).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{BackendKind, Lease, LeaseAttrs, LeaseBatch, LeaseEvent, NetworkConfig};
use futures::future::BoxFuture;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::lease_check::Skip;
use crate::netlink::events::KernelEvent;
use crate::netlink::request::Request;
use crate::netlink::route::Route;
use crate::netlink::{Family, Netlink};
use crate::reconciler::Reconciler;
use crate::side::{self, Side};
use crate::table::{self, Leaving, Made, Row};
use crate::{Backend, BackendError, BackendStats, ExtIface, NodeContext};

/// The table's row of host-gw.
pub(crate) const ROW: Row = Row {
    kind: BackendKind::HostGw,
    check: table::nothing_to_check,
    make,
    gateway_routes: makes_gateway_routes,
    leftovers,
    inspect: inspect::inspect,
    inspect_device: table::no_device,
};

fn make(config: &NetworkConfig, node: NodeContext) -> Made<'_> {
    Box::pin(async move {
        let (network, network6) = side::networks(config);
        let backend = HostGwBackend::new_dual(network, network6, node)?;
        Ok(Box::new(backend) as Box<dyn Backend>)
    })
}

fn makes_gateway_routes(_: &NetworkConfig) -> bool {
    true
}

/// Routes of host-gw's shape, left when the config names a backend that keeps none (host-gw
/// before; VXLAN with DirectRouting and the extension backend's recipes make them too).
fn leftovers(l: Leaving<'_>) -> BoxFuture<'_, Result<(), BackendError>> {
    Box::pin(async move {
        if l.gateway_routes_kept {
            return Ok(());
        }
        let config = l.config;
        let mut networks = vec![IpNetwork::V4(config.network)];
        networks.extend(config.ipv6_network.map(IpNetwork::V6));
        for network in networks.into_iter().filter(|n| n.prefix() > 0) {
            for r in l.node.nl.routes(Family::of(network.ip())).await? {
                if is_gateway_route(&r, network, l.node.ext.index) {
                    info!(
                        "removing the route to {} via {}, left by the host-gw backend",
                        r.dst,
                        r.gateway.map_or(String::new(), |g| g.to_string())
                    );
                    l.node.nl.del_route(r).await?;
                }
            }
        }
        Ok(())
    })
}

/// Upstream's refusal, word for word.
const NAT_REFUSAL: &str = "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend";

mod inspect;
mod routes;

pub use routes::is_gateway_route;

pub struct HostGwBackend {
    nl: Netlink,
    ext: ExtIface,
    public_ip: Ipv4Addr,
    public_ipv6: Option<Ipv6Addr>,
    /// One per enabled family, IPv4 first.
    sides: Vec<Side>,
    /// This node's subnet of each family, once acquired.
    own: BTreeMap<Family, IpNetwork>,
    /// The route each peer's subnet needs.
    routes: BTreeMap<IpNetwork, Route>,
    listed: bool,
    stats: Arc<BackendStats>,
}

impl HostGwBackend {
    /// IPv4 only.
    pub fn new(network: Ipv4Network, node: NodeContext) -> Result<Self, BackendError> {
        Self::new_dual(Some(network), None, node)
    }

    /// Refuses a PublicIP (or PublicIPv6) that is not the external interface's (NAT), as
    /// upstream.
    pub fn new_dual(
        network: Option<Ipv4Network>,
        network6: Option<Ipv6Network>,
        node: NodeContext,
    ) -> Result<Self, BackendError> {
        let sides = side::of_node(network, network6, &node)?;
        let NodeContext {
            nl,
            ext,
            public_ip,
            public_ipv6,
            ..
        } = node;
        for side in &sides {
            if !ext.addresses.iter().any(|a| a.ip() == side.public_ip) {
                return Err(BackendError::Device(NAT_REFUSAL.into()));
            }
        }
        Ok(HostGwBackend {
            nl,
            ext,
            public_ip,
            public_ipv6,
            sides,
            own: BTreeMap::new(),
            routes: BTreeMap::new(),
            listed: false,
            stats: Arc::default(),
        })
    }

    /// `side`'s route for `lease`, or why it gets none.
    fn route_for(&self, side: &Side, lease: &Lease) -> Result<Route, Skip> {
        let own = self.own.get(&side.family).map(|s| (*s, side.public_ip));
        routes::route_for(lease, side.family, side.network, own, &self.ext)
    }

    /// Whether a kernel route is one host-gw makes (see the module's header).
    fn is_ours(&self, side: &Side, r: &Route) -> bool {
        is_gateway_route(r, side.network, self.ext.index)
    }

    fn count_peers(&self) {
        let v6 = self.routes.keys().filter(|d| d.is_ipv6()).count();
        let v4 = self.routes.len() - v6;
        self.stats.peers.store(v4 as u64, Ordering::Relaxed);
        self.stats.peers_v6.store(v6 as u64, Ordering::Relaxed);
    }

    /// Runs route changes (deletions first, in one bulk call); the number that failed, each
    /// logged.
    async fn execute(&self, delete: Vec<Route>, add: Vec<Route>) -> usize {
        let requests = delete
            .into_iter()
            .map(Request::DelRoute)
            .chain(add.into_iter().map(Request::Route))
            .collect();
        let mut failures = 0;
        for e in self
            .nl
            .send_all(requests)
            .await
            .into_iter()
            .filter_map(Result::err)
        {
            warn!("{e}");
            failures += 1;
        }
        self.stats
            .errors
            .fetch_add(failures as u64, Ordering::Relaxed);
        failures
    }
}

fn lease_of(event: &LeaseEvent) -> &Lease {
    match event {
        LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l,
    }
}

#[async_trait]
impl Reconciler for HostGwBackend {
    async fn apply(&mut self, batch: &LeaseBatch) -> usize {
        self.listed |= batch.snapshot;
        let (mut delete, mut add) = (Vec::new(), Vec::new());
        for event in &batch.events {
            for (k, side) in self.sides.iter().enumerate() {
                // the lease's lines once, from its first side
                let first = k == 0 || lease_of(event).subnet_of(Family::V4).is_none();
                match event {
                    LeaseEvent::Removed(lease) => {
                        let Some(subnet) = lease.subnet_of(side.family) else {
                            continue;
                        };
                        if let Some(r) = self.routes.remove(&subnet) {
                            info!("Subnet removed: {subnet}");
                            delete.push(r);
                        }
                    }
                    LeaseEvent::Added(lease) => match self.route_for(side, lease) {
                        Ok(r) => {
                            if self.routes.insert(r.dst, r) != Some(r) {
                                info!(
                                    "Subnet added: {} via {}",
                                    r.dst,
                                    r.gateway.map_or_else(String::new, |g| g.to_string())
                                );
                                add.push(r);
                            }
                        }
                        Err(Skip::Own | Skip::NoPart) => {}
                        Err(Skip::OtherType(kind)) => {
                            if first {
                                // upstream's line
                                warn!("Ignoring non-host-gw subnet: type={kind}");
                            }
                            if let Some(r) = lease
                                .subnet_of(side.family)
                                .and_then(|s| self.routes.remove(&s))
                            {
                                delete.push(r);
                            }
                        }
                        Err(Skip::Invalid(why) | Skip::Unreachable(why)) => {
                            warn!(subnet = %lease.key(), "ignoring lease: {why}");
                            if let Some(r) = lease
                                .subnet_of(side.family)
                                .and_then(|s| self.routes.remove(&s))
                            {
                                delete.push(r);
                            }
                        }
                    },
                }
            }
        }
        self.count_peers();
        self.execute(delete, add).await
    }

    async fn reconcile(&mut self) -> Result<usize, BackendError> {
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let mut observed: Vec<Route> = Vec::new();
        for side in &self.sides {
            observed.extend(
                self.nl
                    .routes(side.family)
                    .await?
                    .into_iter()
                    .filter(|r| self.is_ours(side, r)),
            );
        }
        let (delete, add) = routes::plan(&self.routes, &observed, self.listed);
        let size = delete.len() + add.len();
        if size > 0 {
            info!(
                "reconcile: {} stale routes to delete; {} routes to (re)add",
                delete.len(),
                add.len()
            );
            self.stats.repairs.fetch_add(size as u64, Ordering::Relaxed);
        }
        let failures = self.execute(delete, add).await;
        if failures > 0 {
            return Err(BackendError::Device(format!(
                "{failures} route changes failed during reconcile"
            )));
        }
        debug!(routes = self.routes.len(), "host-gw reconciled");
        Ok(size)
    }

    fn is_damage(&self, event: &KernelEvent) -> bool {
        match event {
            KernelEvent::RouteDeleted { dst } => self.routes.contains_key(dst),
            _ => false,
        }
    }

    fn listed(&self) -> bool {
        self.listed
    }
}

#[async_trait]
impl Backend for HostGwBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }

    /// `{"PublicIP":"…","PublicIPv6":null,"BackendType":"host-gw"}`, as upstream (the
    /// PublicIPv6 set with IPv6, PublicIP 0.0.0.0 without IPv4).
    fn lease_attrs(&self) -> LeaseAttrs {
        let has = |f: Family| self.sides.iter().any(|s| s.family == f);
        LeaseAttrs {
            public_ip: if has(Family::V4) {
                self.public_ip
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            public_ipv6: self.public_ipv6.filter(|_| has(Family::V6)),
            backend_type: BackendKind::HostGw.name().into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    fn stats(&self) -> Arc<BackendStats> {
        self.stats.clone()
    }

    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.own = self
            .sides
            .iter()
            .filter_map(|s| Some((s.family, own.subnet_of(s.family)?)))
            .collect();
        Ok(())
    }

    async fn run(
        self: Box<Self>,
        events: mpsc::Receiver<LeaseBatch>,
        synced: watch::Sender<bool>,
        resync: Duration,
    ) -> Result<(), BackendError> {
        crate::reconciler::serve(*self, events, synced, resync).await
    }
}
