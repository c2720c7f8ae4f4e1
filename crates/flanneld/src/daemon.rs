//! The daemon: upstream's start-up order (`main.go` at v0.20.2), then the steady state.
//!
//! instance lock → previous subnet.env → healthz → subnet manager → network config (retried every second)
//! → external interface → ip_forward → backend (VXLAN: the device) → lease → backend
//! configured with it (device address) → traffic rules → subnet.env → lease watch feeding
//! the backend (ready once the peers known at start are programmed) → keep the lease,
//! resync the rules, until a signal.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use flannel_backend::{Backend, NodeContext};
use flannel_masq::{Mode, Tools, TrafficManager};
use flannel_net::{Expiration, Family, Lease, LeaseBatch, NetworkConfig, SubnetEnv, SubnetKey};
use flannel_netlink::Netlink;
use flannel_subnet::{SubnetError, SubnetManager};
use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::health::{self, Shared};
use crate::iface;
use crate::memory;
use crate::options::Options;
use crate::sdnotify;
use crate::store::{Role, StoreOptions};

/// How often the backend compares the whole kernel state with the leases (damage the kernel
/// reports is repaired at once; this catches the rest).
const BACKEND_RESYNC: Duration = Duration::from_secs(10);

/// Runs until an unrecoverable error; the caller ends it on SIGTERM/SIGINT.
pub async fn run(mut opts: Options, shared: Arc<Shared>) -> anyhow::Result<()> {
    // before anything is touched: a second instance would undo the first one's work
    let mut lock = crate::lock::acquire()?;
    let previous = read_previous(&opts.subnet_file);
    if opts.kube.is_none() {
        opts.etcd.insecure_warning();
    }
    // Liveness answers while flanneld waits for etcd and the config, as upstream.
    if let Some(addr) = opts.healthz {
        health::start(addr, shared.clone())
            .await
            .with_context(|| format!("Start healthz server error. listen {addr}"))?;
    }
    let store = StoreOptions {
        etcd: &opts.etcd,
        etcd_api: opts.etcd_api,
        kube: opts.kube.as_ref(),
    };
    let role = Role::Daemon {
        policy: opts.lease_policy,
        previous: previous.as_ref().and_then(previous_key),
    };
    let opened = crate::store::open(&store, role)
        .await
        .context("creating the subnet manager")?;
    if let Some(api) = opened.api {
        info!(
            "Created subnet manager: {} (etcd {api} API)",
            opened.sm.name()
        );
    }
    let sm = opened.sm;
    let sm: &dyn SubnetManager = sm.as_ref();
    let _ = shared.subnet_stats.set(sm.stats());

    let config = wait_for_config(sm).await;
    lock.record_config(&config);
    info!(
        "Found network config - Backend type: {}",
        config.backend_type
    );
    let Some(stack) = iface::Stack::of(config.enable_ipv4, config.enable_ipv6) else {
        bail!("the network config has EnableIPv4 and EnableIPv6 both false: there is nothing for flannel to do");
    };
    if opts.kube.is_some() {
        crate::kube_mode::apply_stored_public_ips(sm, &mut opts).await?;
    }

    let nl = Netlink::connect()
        .context("opening netlink")?
        .with_nexthops(opts.nexthop_objects)
        .await?;
    let snapshot = iface::Snapshot::read(&nl)
        .await
        .context("reading the interfaces")?;
    let chosen = iface::select(&snapshot, &opts, stack).map_err(|e| anyhow!(e))?;
    let (public_ip, public_ipv6) = iface::log_choice(&chosen, &opts);
    if config.enable_ipv4 {
        ensure_forwarding("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward");
    }
    if config.enable_ipv6 {
        ensure_forwarding(
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        );
    }
    let node_ip = public_ip
        .map(IpAddr::V4)
        .or(public_ipv6.map(IpAddr::V6))
        .ok_or_else(|| anyhow!("no external address was chosen"))?;
    let node = NodeContext {
        nl: nl.clone(),
        ext: chosen.ext,
        public_ip: public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        public_ipv6,
        previous_lease: previous_lease(sm, node_ip).await,
    };
    let mut backend = flannel_backend::new_backend(&config, node)
        .await
        .with_context(|| format!("setting up the {} backend", config.backend_type))?;
    let _ = shared.backend_stats.set(backend.stats());

    let lease = acquire(sm, &config, backend.as_ref()).await?;
    backend
        .configure(&lease)
        .await
        .with_context(|| format!("configuring the {} backend", backend.kind()))?;
    *shared
        .lease
        .lock()
        .map_err(|_| anyhow!("lease lock poisoned"))? = Some(lease.clone());

    let mut masq = Vec::new();
    if config.enable_ipv4 {
        masq.push(setup_rules(&opts, &config, &lease, previous.as_ref(), Family::V4).await?);
    }
    if config.enable_ipv6 {
        masq.push(setup_rules(&opts, &config, &lease, previous.as_ref(), Family::V6).await?);
    }
    shared.rule_checks.fetch_add(1, Ordering::Relaxed);

    let env = SubnetEnv {
        network: config.enable_ipv4.then_some(config.network),
        subnet: lease.has_ipv4().then_some(lease.subnet),
        ipv6_network: config.ipv6_network.filter(|_| config.enable_ipv6),
        ipv6_subnet: lease.ipv6_subnet,
        mtu: backend.mtu(),
        ip_masq: opts.ip_masq,
    };
    env.write(&opts.subnet_file)
        .context("writing the subnet file")?;
    info!("Wrote subnet file to {}", opts.subnet_file.display());
    if let Err(e) = sm.complete_lease().await {
        // upstream's words; the node keeps running
        error!("CompleteLease execute error err: {e}");
    }
    info!("Running backend.");

    for subnet in own_subnets(&lease) {
        ensure_blackhole(&nl, subnet, opts.ip_blackhole_route).await;
    }
    steady_state(sm, backend, masq, &nl, lease, &config, &opts, shared).await
}

fn read_previous(path: &Path) -> Option<SubnetEnv> {
    match SubnetEnv::read(path) {
        Ok(Some((env, warnings))) => {
            for w in warnings {
                warn!("{}: {w}; ignoring that value", path.display());
            }
            Some(env)
        }
        Ok(None) => None,
        Err(e) => {
            warn!("{e}; starting without the previous subnet");
            None
        }
    }
}

async fn wait_for_config(sm: &dyn SubnetManager) -> NetworkConfig {
    loop {
        match sm.get_network_config().await {
            Ok(config) => return config,
            Err(e) => {
                warn!("Couldn't fetch network config: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Upstream leaves forwarding as it finds it, and pods behind cni0 on other nodes are then
/// unreachable. Turn it on (for each enabled family), and say so.
fn ensure_forwarding(path: &str, name: &str) {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "0" => match std::fs::write(path, "1") {
            Ok(()) => {
                info!("{name} was 0; enabled it so that pods can be reached from other nodes")
            }
            Err(e) => warn!(
                "{name} is 0 and could not be enabled ({e}): pods on this node will be unreachable"
            ),
        },
        Ok(_) => {}
        Err(e) => warn!("cannot read {path}: {e}"),
    }
}

/// The previous run's subnets from its subnet.env, as a lease key (`None` without any).
fn previous_key(env: &SubnetEnv) -> Option<SubnetKey> {
    let ipv4 = env.subnet.unwrap_or_else(flannel_subnet::acquire::no_ipv4);
    (env.subnet.is_some() || env.ipv6_subnet.is_some()).then_some(SubnetKey {
        ipv4,
        ipv6: env.ipv6_subnet,
    })
}

/// This node's subnets, IPv4 first.
fn own_subnets(lease: &Lease) -> Vec<IpNetwork> {
    Family::BOTH
        .map(|f| lease.subnet_of(f))
        .into_iter()
        .flatten()
        .collect()
}

/// The lease this node already holds in the store, if any (what it advertised before: a
/// re-created VXLAN device keeps its VTEP MAC).
async fn previous_lease(sm: &dyn SubnetManager, public_ip: IpAddr) -> Option<Lease> {
    match sm.lease_of(public_ip).await {
        Ok(lease) => lease,
        Err(e) => {
            warn!("could not look up this node's lease (for what it advertised before): {e}");
            None
        }
    }
}

async fn acquire(
    sm: &dyn SubnetManager,
    config: &NetworkConfig,
    backend: &dyn Backend,
) -> anyhow::Result<Lease> {
    let attrs = backend.lease_attrs();
    loop {
        match sm.acquire_lease(config, &attrs).await {
            Ok(lease) => return Ok(lease),
            Err(e @ (SubnetError::OutOfSubnets | SubnetError::MaxRetries)) => {
                error!("failed to acquire a subnet lease: {e}; trying again in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) if e.is_transient() => {
                warn!("failed to acquire a subnet lease: {e}; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow!(e).context("Error registering network")),
        }
    }
}

/// The traffic rules of one family (IPv6: ip6tables, or the nftables table `flannel-ipv6`),
/// set up.
async fn setup_rules(
    opts: &Options,
    config: &NetworkConfig,
    lease: &Lease,
    previous: Option<&SubnetEnv>,
    family: Family,
) -> anyhow::Result<TrafficManager> {
    let mode = if config.enable_nftables {
        Mode::Nftables
    } else {
        Mode::Iptables
    };
    let (network, subnet, previous) = if family.is_v6() {
        let network = config
            .ipv6_network
            .ok_or_else(|| anyhow!("IPv6 is enabled without an IPv6Network"))?;
        let subnet = lease
            .ipv6_subnet
            .ok_or_else(|| anyhow!("this node's lease has no IPv6 subnet"))?;
        let previous = previous.and_then(|p| {
            Some((
                IpNetwork::V6(p.ipv6_network?),
                IpNetwork::V6(p.ipv6_subnet?),
            ))
        });
        (IpNetwork::V6(network), IpNetwork::V6(subnet), previous)
    } else {
        let previous =
            previous.and_then(|p| Some((IpNetwork::V4(p.network?), IpNetwork::V4(p.subnet?))));
        (
            IpNetwork::V4(config.network),
            IpNetwork::V4(lease.subnet),
            previous,
        )
    };
    let spec = opts.rule_spec(network, subnet, previous);
    // next to subnet.env (/run/flannel: a tmpfs, emptied at boot)
    let state = opts.subnet_file.with_file_name(if family.is_v6() {
        ".flanneld-rs-rules6.state"
    } else {
        ".flanneld-rs-rules.state"
    });
    let masq = TrafficManager::new(mode, &Tools::default(), spec)
        .await
        .context("setting up traffic rules")?
        .with_state_file(state);
    masq.remove_other_mode()
        .await
        .context("removing the other mode's rules")?;
    if opts.ip_masq {
        info!("Setting up masking rules");
    }
    if opts.iptables_forward_rules {
        info!("Changing default FORWARD chain policy to ACCEPT");
    }
    masq.ensure().await.context("setting up traffic rules")?;
    Ok(masq)
}

/// `-ip-blackhole-route` (upstream v0.27.1+, for CNI setups without a bridge that owns the
/// subnet, e.g. Canal): a blackhole route for this node's subnet, so that traffic to its
/// unused addresses is dropped here instead of going out by the default route. Without the
/// flag, one a previous run left for this subnet is removed. A route dump, no process.
async fn ensure_blackhole(nl: &Netlink, dst: IpNetwork, wanted: bool) {
    let family = flannel_netlink::Family::of(dst.ip());
    let present = match nl.blackholes(family).await {
        Ok(list) => list.contains(&dst),
        Err(e) => {
            warn!("listing blackhole routes: {e}");
            return;
        }
    };
    if wanted && !present {
        match nl.add_blackhole(dst).await {
            Ok(()) => info!("added the blackhole route for {dst} (-ip-blackhole-route)"),
            // upstream's words
            Err(e) => error!("Failed to setup blackhole route, {e}"),
        }
    } else if !wanted && present {
        match nl.del_blackhole(dst).await {
            Ok(()) => info!("removed the blackhole route for {dst} (-ip-blackhole-route is off)"),
            Err(e) => warn!("{e}"),
        }
    }
}

/// Whether a new config needs nothing re-plumbed on this node.
pub(crate) fn same_plumbing(running: &NetworkConfig, new: &NetworkConfig) -> bool {
    running.network == new.network
        && running.subnet_len == new.subnet_len
        && running.subnet_min == new.subnet_min
        && running.subnet_max == new.subnet_max
        && running.backend_kind() == new.backend_kind()
        && running.backend == new.backend
        && running.enable_nftables == new.enable_nftables
        && running.enable_ipv4 == new.enable_ipv4
        && running.enable_ipv6 == new.enable_ipv6
        && running.ipv6_network == new.ipv6_network
        && running.ipv6_subnet_len == new.ipv6_subnet_len
        && running.ipv6_subnet_min == new.ipv6_subnet_min
        && running.ipv6_subnet_max == new.ipv6_subnet_max
}

#[allow(clippy::too_many_arguments)] // the pieces start-up made, handed over once
async fn steady_state(
    sm: &dyn SubnetManager,
    backend: Box<dyn Backend>,
    masq: Vec<TrafficManager>,
    nl: &Netlink,
    lease: Lease,
    config: &NetworkConfig,
    opts: &Options,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let kind = backend.kind();
    let (config_tx, mut config_rx) = mpsc::channel::<Result<NetworkConfig, String>>(4);
    let config_changes = async {
        while let Some(update) = config_rx.recv().await {
            let stale = match update {
                Ok(new) if same_plumbing(config, &new) => {
                    info!("network config rewritten in etcd; unchanged for this node");
                    false
                }
                Ok(new) => {
                    error!(
                        "the network config in etcd changed ({config} -> {new}); flanneld-rs does not re-plumb a running node: \
                         it keeps the running config (device, routes, rules, subnet.env) so that traffic keeps flowing. \
                         To apply the new config, restart flanneld on every node; a node whose subnet no longer fits gets a \
                         new one, and its pods need new addresses"
                    );
                    true
                }
                Err(e) => {
                    warn!("the network config in etcd is not usable now ({e}); keeping the running config");
                    true
                }
            };
            shared.config_stale.store(stale, Ordering::Relaxed);
        }
        std::future::pending::<()>().await
    };
    let (status_tx, mut status_rx) = watch::channel(lease.clone());
    let (batch_tx, batch_rx) = mpsc::channel::<LeaseBatch>(64);
    let (synced_tx, mut synced_rx) = watch::channel(false);
    let mut synced_for_memory = synced_rx.clone();

    let synced_for_status = synced_rx.clone();
    let ready = async {
        let _ = synced_rx.wait_for(|s| *s).await;
        shared.ready.store(true, Ordering::Relaxed);
        sdnotify::notify("READY=1");
        info!("flannel is ready");
        std::future::pending::<()>().await
    };
    // a lease the keeper publishes as lost for now (kube mode: the Node was deleted) makes
    // the node not ready until it is back
    let lease_status = async {
        while status_rx.changed().await.is_ok() {
            let lease = status_rx.borrow_and_update().clone();
            let lost = lease.expiration == Expiration::Unknown;
            if let Ok(mut slot) = shared.lease.lock() {
                *slot = Some(lease);
            }
            if lost {
                shared.ready.store(false, Ordering::Relaxed);
            } else if *synced_for_status.borrow() {
                shared.ready.store(true, Ordering::Relaxed);
            }
        }
        std::future::pending::<()>().await
    };
    // freed heap pages back to the kernel: once the peers known at start are programmed, then
    // every resync period (the backend's reconciles run on the same period, each a burst)
    let memory = async {
        let _ = synced_for_memory.wait_for(|s| *s).await;
        let mut tick = tokio::time::interval(BACKEND_RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            memory::release_free_heap();
        }
    };
    let subnets = own_subnets(&lease);
    let rules = async {
        let mut tick = tokio::time::interval(opts.iptables_resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            shared.rule_checks.fetch_add(1, Ordering::Relaxed);
            for m in &masq {
                let written = m.resync().await;
                shared
                    .rule_repairs
                    .fetch_add(written as u64, Ordering::Relaxed);
            }
            // upstream re-adds the blackhole route on the same period
            if opts.ip_blackhole_route {
                for subnet in &subnets {
                    ensure_blackhole(nl, *subnet, true).await;
                }
            }
        }
    };
    tokio::select! {
        r = sm.keep_lease(lease, status_tx) => r.map_err(|e| anyhow!(e).context("lost this node's subnet lease")),
        r = sm.watch_leases(batch_tx) => r.map_err(|e| anyhow!(e).context("lease watch failed")),
        r = sm.watch_config(config_tx) => r.map_err(|e| anyhow!(e).context("config watch failed")),
        () = config_changes => unreachable!("pending"),
        r = backend.run(batch_rx, synced_tx, BACKEND_RESYNC) => match r {
            Ok(()) => Err(anyhow!("the lease watch stopped")),
            Err(e) => Err(anyhow!(e).context(format!("the {kind} backend failed"))),
        },
        () = ready => unreachable!("pending"),
        () = lease_status => unreachable!("pending"),
        () = rules => unreachable!("endless loop"),
        () = memory => unreachable!("endless loop"),
    }
}
