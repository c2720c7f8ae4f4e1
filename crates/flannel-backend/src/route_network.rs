//! A backend whose data path is a route per peer (upstream's `RouteNetwork`,
//! `pkg/backend/route_network.go`, shared by host-gw and ipip): the route each lease needs and
//! which kernel routes are the backend's are the [`RouteShape`]'s; the rest is here, once.
//! Routes are added and removed per lease event, the whole set compared with the kernel at
//! start, on a period and soon after the kernel reports one of ours deleted; nothing deleted
//! before the first complete listing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{BackendKind, Lease, LeaseAttrs, LeaseBatch, LeaseEvent};
use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::inspect::{opt, Findings, Inspect};
use crate::lease_check::Skip;
use crate::netlink::events::KernelEvent;
use crate::netlink::request::Request;
use crate::netlink::route::Route;
use crate::netlink::{Family, Netlink};
use crate::reconciler::Reconciler;
use crate::side::{self, Side};
use crate::{hostgw, Backend, BackendError, BackendStats, ExtIface};

/// What differs between the backends of routes.
#[async_trait]
pub trait RouteShape: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// The route `lease` needs on `side`, or why none; `own` is this node's subnet and
    /// address in that family.
    fn route_for(
        &self,
        side: &Side,
        own: Option<(IpNetwork, IpAddr)>,
        lease: &Lease,
        ext: &ExtIface,
    ) -> Result<Route, Skip>;

    /// Whether a kernel route of `side`'s family is the backend's to manage.
    fn is_ours(&self, side: &Side, route: &Route, ext: &ExtIface) -> bool;

    /// FLANNEL_MTU.
    fn mtu(&self, ext: &ExtIface) -> u32;

    /// Makes what the routes go through right for this node's subnets (a tunnel device: it
    /// there, its address, up); the number of things changed.
    async fn ensure_device(
        &mut self,
        _nl: &Netlink,
        _own: &BTreeMap<Family, IpNetwork>,
    ) -> Result<usize, BackendError> {
        Ok(0)
    }

    /// Whether a kernel event damaged the device.
    fn is_device_damage(&self, _event: &KernelEvent) -> bool {
        false
    }

    /// A route planned before the device was made again, through the new device.
    fn rebind(&self, route: Route, _ext: &ExtIface) -> Route {
        route
    }
}

pub struct RouteNetwork<S> {
    pub(crate) shape: S,
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

fn lease_of(event: &LeaseEvent) -> &Lease {
    match event {
        LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l,
    }
}

impl<S: RouteShape> RouteNetwork<S> {
    pub(crate) fn new(
        shape: S,
        nl: Netlink,
        ext: ExtIface,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
        sides: Vec<Side>,
    ) -> Self {
        RouteNetwork {
            shape,
            nl,
            ext,
            public_ip,
            public_ipv6,
            sides,
            own: BTreeMap::new(),
            routes: BTreeMap::new(),
            listed: false,
            stats: Arc::default(),
        }
    }

    fn route_for(&self, side: &Side, lease: &Lease) -> Result<Route, Skip> {
        let own = self.own.get(&side.family).map(|s| (*s, side.public_ip));
        self.shape.route_for(side, own, lease, &self.ext)
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

#[async_trait]
impl<S: RouteShape> Reconciler for RouteNetwork<S> {
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
                                warn!("Ignoring non-{} subnet: type={kind}", self.shape.kind());
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
        let device = self.shape.ensure_device(&self.nl, &self.own).await?;
        if device > 0 {
            self.stats
                .device_recreations
                .fetch_add(1, Ordering::Relaxed);
            for r in self.routes.values_mut() {
                *r = self.shape.rebind(*r, &self.ext);
            }
        }
        let mut observed: Vec<Route> = Vec::new();
        for side in &self.sides {
            observed.extend(
                self.nl
                    .routes(side.family)
                    .await?
                    .into_iter()
                    .filter(|r| self.shape.is_ours(side, r, &self.ext)),
            );
        }
        let (delete, add) = hostgw::plan(&self.routes, &observed, self.listed);
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
        debug!(
            routes = self.routes.len(),
            "{} reconciled",
            self.shape.kind()
        );
        Ok(size + device)
    }

    fn is_damage(&self, event: &KernelEvent) -> bool {
        match event {
            KernelEvent::RouteDeleted { dst } => self.routes.contains_key(dst),
            // the kernel flushed the routes through the external interface while it was down,
            // without a route notification: put back once it is up (found by the chaos run)
            KernelEvent::LinkChanged { index, up: true } if *index == self.ext.index => {
                !self.routes.is_empty()
            }
            other => self.shape.is_device_damage(other),
        }
    }

    fn listed(&self) -> bool {
        self.listed
    }
}

#[async_trait]
impl<S: RouteShape> Backend for RouteNetwork<S> {
    fn kind(&self) -> BackendKind {
        self.shape.kind()
    }

    /// `{"PublicIP":"…","PublicIPv6":null,"BackendType":"…"}`, as upstream (the PublicIPv6
    /// set with IPv6, PublicIP 0.0.0.0 without IPv4).
    fn lease_attrs(&self) -> LeaseAttrs {
        let has = |f: Family| self.sides.iter().any(|s| s.family == f);
        LeaseAttrs {
            public_ip: if has(Family::V4) {
                self.public_ip
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            public_ipv6: self.public_ipv6.filter(|_| has(Family::V6)),
            backend_type: self.shape.kind().name().into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    fn mtu(&self) -> u32 {
        self.shape.mtu(&self.ext)
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
        self.shape.ensure_device(&self.nl, &self.own).await?;
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

/// doctor: the routes the shape's backend would program for the leases (the same
/// [`RouteShape::route_for`], lease checks included) against the kernel's routes of its
/// shape, with the backend's own plan; a peer it cannot reach (host-gw: off the segment) is a
/// problem (its pods are unreachable from here). Reads only.
pub(crate) async fn inspect_routes<S: RouteShape>(shape: &S, n: &Inspect<'_>, r: &mut Findings) {
    let Inspect {
        config,
        lease,
        leases,
        ext,
        nl,
        ..
    } = *n;
    for (side, own) in side::of_lease(config, lease) {
        let mut want = BTreeMap::new();
        for l in leases {
            match shape.route_for(&side, Some((own, side.public_ip)), l, ext) {
                Ok(route) => {
                    want.insert(route.dst, route);
                }
                Err(Skip::Unreachable(why)) => r.fail(
                    "peers",
                    format!("lease {}: {why}", l.key()),
                    "that node's pods are unreachable from here, and the daemon programs no route to it (use vxlan, or put the nodes on one segment)",
                ),
                Err(Skip::Invalid(why)) => r.warn(
                    "peers",
                    format!("lease {} is skipped: {why}", l.key()),
                    "no node programs it; fix or delete it",
                ),
                Err(Skip::Own | Skip::NoPart | Skip::OtherType(_)) => {}
            }
        }
        let observed: Vec<Route> = match nl.routes(side.family).await {
            Ok(all) => all
                .into_iter()
                .filter(|rt| shape.is_ours(&side, rt, ext))
                .collect(),
            Err(e) => {
                r.fail("peers", format!("listing the routes: {e}"), "");
                continue;
            }
        };
        let (stray, missing) = hostgw::plan(&want, &observed, true);
        let text = |list: &[Route]| {
            list.iter()
                .map(|rt| format!("{} via {}", rt.dst, opt(rt.gateway)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if !missing.is_empty() {
            r.fail(
                "peers",
                format!("routes missing: {}", text(&missing)),
                "pods of those nodes cannot be reached from here; a running flanneld-rs repairs this within milliseconds: is it running?",
            );
        }
        if !stray.is_empty() {
            r.fail(
                "peers",
                format!("routes no lease explains: {}", text(&stray)),
                "traffic goes to a node that is gone; flanneld-rs removes them within 10 s when it runs",
            );
        }
        if missing.is_empty() && stray.is_empty() {
            r.ok(
                "peers",
                format!("{} {} routes exact", want.len(), shape.kind()),
            );
        }
    }
}
