//! The healthz server (`--healthz-ip`, `--healthz-port`): `/healthz` and `/readyz` with
//! upstream's bodies, and `/metrics` in the Prometheus text format (upstream has none).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::UNIX_EPOCH;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use flannel_backend::BackendStats;
use flannel_net::{Expiration, Lease};
use flannel_subnet::SubnetStats;
use tracing::info;

/// What the daemon shares with the healthz server.
#[derive(Debug, Default)]
pub struct Shared {
    /// subnet.env written and the peers known at start programmed.
    pub ready: AtomicBool,
    pub lease: Mutex<Option<Lease>>,
    pub subnet_stats: OnceLock<Arc<SubnetStats>>,
    pub backend_stats: OnceLock<Arc<BackendStats>>,
    pub rule_checks: AtomicU64,
    /// The config in etcd differs from the one this node runs with.
    pub config_stale: AtomicBool,
    pub rule_repairs: AtomicU64,
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn healthz() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, TEXT)], "flanneld is running")
}

async fn readyz(shared: Arc<Shared>) -> impl IntoResponse {
    if shared.ready.load(Ordering::Relaxed) {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT)],
            "flanneld is ready",
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            "flanneld is not ready yet",
        )
    }
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, TEXT),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "404 page not found\n",
    )
}

/// The metrics text: one row per metric; a row without a value (its component not started
/// yet) is left out.
#[rustfmt::skip] // a table reads better unwrapped
pub fn metrics_text(shared: &Shared) -> String {
    const GAUGE: &str = "gauge";
    const COUNTER: &str = "counter";
    let flag = |b: &std::sync::atomic::AtomicBool| f64::from(u8::from(b.load(Ordering::Relaxed)));
    let counter = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    let lease = shared.lease.lock().map(|l| l.clone()).unwrap_or(None);
    let (expiry, reservation) = match lease.map(|l| l.expiration) {
        Some(Expiration::At(t)) => (
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            0.0,
        ),
        Some(Expiration::Never) => (0.0, 1.0),
        _ => (0.0, 0.0),
    };
    let backend = shared.backend_stats.get();
    let subnet = shared.subnet_stats.get();
    let data_path = backend.and_then(|s| s.data_path.as_ref());
    let rows: [(&str, &str, &str, Option<f64>); 21] = [
        ("flanneld_ready", GAUGE,
            "1 once subnet.env is written and the peers known at start are programmed.",
            Some(flag(&shared.ready))),
        ("flanneld_lease_expiry_timestamp_seconds", GAUGE,
            "When this node's subnet lease expires unless renewed (0: none, or a reservation).",
            Some(expiry)),
        ("flanneld_lease_reservation", GAUGE,
            "1 when this node's subnet is a reservation (no TTL).",
            Some(reservation)),
        ("flanneld_peers", GAUGE,
            "Remote nodes programmed for IPv4 (route, ARP, FDB).",
            backend.map(|s| counter(&s.peers))),
        ("flanneld_peers_ipv6", GAUGE,
            "Remote nodes programmed for IPv6 (route, NDP, FDB).",
            backend.map(|s| counter(&s.peers_v6))),
        ("flanneld_reconciles_total", COUNTER,
            "Full reconciles of the kernel state.",
            backend.map(|s| counter(&s.reconciles))),
        ("flanneld_reconcile_repairs_total", COUNTER,
            "Kernel entries a reconcile had to add or delete (drift repaired).",
            backend.map(|s| counter(&s.repairs))),
        ("flanneld_device_recreations_total", COUNTER,
            "Times the VXLAN device was found missing and re-created.",
            backend.map(|s| counter(&s.device_recreations))),
        ("flanneld_netlink_errors_total", COUNTER,
            "Netlink operations that failed.",
            backend.map(|s| counter(&s.errors))),
        ("flanneld_udp_packets_sent_total", COUNTER,
            "udp backend: packets sent to other nodes.",
            data_path.map(|d| counter(&d.sent))),
        ("flanneld_udp_packets_received_total", COUNTER,
            "udp backend: packets received from other nodes and given to the kernel.",
            data_path.map(|d| counter(&d.received))),
        ("flanneld_udp_packets_no_route_total", COUNTER,
            "udp backend: packets for no node's subnet (answered net unreachable).",
            data_path.map(|d| counter(&d.no_route))),
        ("flanneld_udp_datagrams_unknown_source_total", COUNTER,
            "udp backend: datagrams dropped because their source is no node of the network.",
            data_path.map(|d| counter(&d.unknown_source))),
        ("flanneld_udp_packets_dropped_total", COUNTER,
            "udp backend: packets dropped (TTL ran out, not IPv4, too long) or refused by the socket or device.",
            data_path.map(|d| counter(&d.dropped) + counter(&d.errors))),
        ("flanneld_etcd_errors_total", COUNTER,
            "etcd requests that failed (each retried).",
            subnet.map(|s| counter(&s.errors))),
        ("flanneld_watch_resyncs_total", COUNTER,
            "Full re-listings of the leases after a watch break or compaction.",
            subnet.map(|s| counter(&s.watch_resyncs))),
        ("flanneld_lease_renewals_total", COUNTER,
            "Renewals of this node's lease.",
            subnet.map(|s| counter(&s.lease_renewals))),
        ("flanneld_lease_recreations_total", COUNTER,
            "Times this node's lease was found missing in etcd and written again.",
            subnet.map(|s| counter(&s.lease_recreations))),
        ("flanneld_config_stale", GAUGE,
            "1 when the network config in etcd differs from the one this node runs with (restart to apply).",
            Some(flag(&shared.config_stale))),
        ("flanneld_rule_resyncs_total", COUNTER,
            "Checks of the masquerade/forward rules.",
            Some(counter(&shared.rule_checks))),
        ("flanneld_rule_repairs_total", COUNTER,
            "Tables whose flannel rules had to be rewritten.",
            Some(counter(&shared.rule_repairs))),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
    out
}

/// Binds now (so that a bad address fails start-up) and serves in the background.
pub async fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let ready = shared.clone();
    let metrics = shared.clone();
    let app = Router::new()
        .route("/healthz", any(healthz))
        .route("/readyz", any(move || readyz(ready.clone())))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics_text(&m),
                    )
                }
            }),
        )
        .fallback(not_found);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!("Start healthz server on {addr}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("healthz server stopped: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text_and_absent_until_their_component_runs() {
        let shared = Shared::default();
        shared.ready.store(true, Ordering::Relaxed);
        let text = metrics_text(&shared);
        assert!(text.starts_with(
            "# HELP flanneld_ready 1 once subnet.env is written and the peers known at start are programmed.\n\
             # TYPE flanneld_ready gauge\nflanneld_ready 1\n"
        ));
        assert!(!text.contains("flanneld_peers"), "{text}");
        assert!(text.contains(
            "\n# TYPE flanneld_rule_repairs_total counter\nflanneld_rule_repairs_total 0\n"
        ));
        let stats = Arc::new(BackendStats::default());
        stats.peers.store(5000, Ordering::Relaxed);
        let _ = shared.backend_stats.set(stats);
        let text = metrics_text(&shared);
        assert!(text.contains("\nflanneld_peers 5000\n"), "{text}");
        // every sample line follows its HELP and TYPE lines
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() % 3, 0);
        for chunk in lines.chunks(3) {
            let name = chunk[2].split(' ').next().unwrap_or_default();
            assert!(
                chunk[0].starts_with(&format!("# HELP {name} ")),
                "{chunk:?}"
            );
            assert!(
                chunk[1].starts_with(&format!("# TYPE {name} ")),
                "{chunk:?}"
            );
        }
    }
}
