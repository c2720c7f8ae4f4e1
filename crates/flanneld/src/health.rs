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
use flannel_backend::vxlan::BackendStats;
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

/// The metrics text.
pub fn metrics_text(shared: &Shared) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "flanneld_ready",
        "gauge",
        "1 once subnet.env is written and the peers known at start are programmed.",
        f64::from(u8::from(shared.ready.load(Ordering::Relaxed))),
    );
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
    metric(
        "flanneld_lease_expiry_timestamp_seconds",
        "gauge",
        "When this node's subnet lease expires unless renewed (0: none, or a reservation).",
        expiry,
    );
    metric(
        "flanneld_lease_reservation",
        "gauge",
        "1 when this node's subnet is a reservation (no TTL).",
        reservation,
    );
    let counter = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    if let Some(s) = shared.backend_stats.get() {
        metric(
            "flanneld_peers",
            "gauge",
            "Remote nodes programmed (route, ARP, FDB).",
            counter(&s.peers),
        );
        metric(
            "flanneld_reconciles_total",
            "counter",
            "Full reconciles of the kernel state.",
            counter(&s.reconciles),
        );
        metric(
            "flanneld_reconcile_repairs_total",
            "counter",
            "Kernel entries a reconcile had to add or delete (drift repaired).",
            counter(&s.repairs),
        );
        metric(
            "flanneld_device_recreations_total",
            "counter",
            "Times the VXLAN device was found missing and re-created.",
            counter(&s.device_recreations),
        );
        metric(
            "flanneld_netlink_errors_total",
            "counter",
            "Netlink operations that failed.",
            counter(&s.errors),
        );
    }
    if let Some(s) = shared.subnet_stats.get() {
        metric(
            "flanneld_etcd_errors_total",
            "counter",
            "etcd requests that failed (each retried).",
            counter(&s.errors),
        );
        metric(
            "flanneld_watch_resyncs_total",
            "counter",
            "Full re-listings of the leases after a watch break or compaction.",
            counter(&s.watch_resyncs),
        );
        metric(
            "flanneld_lease_renewals_total",
            "counter",
            "Renewals of this node's lease.",
            counter(&s.lease_renewals),
        );
        metric(
            "flanneld_lease_recreations_total",
            "counter",
            "Times this node's lease was found missing in etcd and written again.",
            counter(&s.lease_recreations),
        );
    }
    metric(
        "flanneld_config_stale",
        "gauge",
        "1 when the network config in etcd differs from the one this node runs with (restart to apply).",
        f64::from(u8::from(shared.config_stale.load(Ordering::Relaxed))),
    );
    metric(
        "flanneld_rule_resyncs_total",
        "counter",
        "Checks of the masquerade/forward rules.",
        counter(&shared.rule_checks),
    );
    metric(
        "flanneld_rule_repairs_total",
        "counter",
        "Tables whose flannel rules had to be rewritten.",
        counter(&shared.rule_repairs),
    );
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
