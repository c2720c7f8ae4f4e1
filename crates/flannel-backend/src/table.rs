//! The table of backends: one row per [`BackendKind`], holding everything flannel-backend
//! does differently by kind (after upstream's backend registry, `pkg/backend/manager.go`).
//! [`crate::check_backend`], [`crate::new_backend`], the unknown-type message and the removal
//! of another backend's leftovers read it; no other code asks which backend it is.
//!
//! Adding a backend: its module (the [`crate::Backend`] implementation and a `ROW`), and its
//! row in [`ROWS`] (and its kind in flannel-net's table of names).

use flannel_net::{BackendKind, NetworkConfig};
use futures::future::BoxFuture;

use crate::inspect::{Findings, Inspect};
use crate::netlink::Netlink;
use crate::{
    alloc, extension, hostgw, ipip, ipsec, udp, vxlan, wireguard, Backend, BackendError,
    NodeContext,
};

/// A backend made for a config, or why not.
pub(crate) type Made<'a> = BoxFuture<'a, Result<Box<dyn Backend>, BackendError>>;

/// What a backend's leftovers function is told at start, before the backend the config names
/// is made.
pub(crate) struct Leaving<'a> {
    pub config: &'a NetworkConfig,
    pub node: &'a NodeContext,
    /// The config still names this backend (only what it no longer uses is removed: a
    /// family turned off).
    pub running: bool,
    /// The backend that will run keeps routes of host-gw's shape itself (they are its to
    /// reconcile, not leftovers).
    pub gateway_routes_kept: bool,
}

/// One backend.
pub(crate) struct Row {
    pub kind: BackendKind,
    /// Checks the config's `Backend` object (start-up; the installer before it writes a
    /// config).
    pub check: fn(&NetworkConfig) -> Result<(), BackendError>,
    /// Makes the backend (its device, if it has one) for the config.
    pub make: for<'a> fn(&'a NetworkConfig, NodeContext) -> Made<'a>,
    /// Whether, with this config, it programs routes of host-gw's shape:
    /// `<subnet> via <PublicIP> dev <external interface>` ([`hostgw::is_gateway_route`]).
    pub gateway_routes: fn(&NetworkConfig) -> bool,
    /// Removes what it left on this node and no longer needs (a device, routes).
    pub leftovers: for<'a> fn(Leaving<'a>) -> BoxFuture<'a, Result<(), BackendError>>,
    /// doctor: what its data path should hold for the leases against what the kernel holds;
    /// the MTU pods should get, when it can be told.
    pub inspect: for<'a> fn(&'a Inspect<'a>, &'a mut Findings) -> BoxFuture<'a, Option<u32>>,
    /// doctor without the leases (the store unreachable): its devices, as far as the config
    /// tells them.
    pub inspect_device:
        for<'a> fn(&'a NetworkConfig, &'a Netlink, &'a mut Findings) -> BoxFuture<'a, ()>,
}

/// The backends flanneld-rs runs.
pub(crate) const ROWS: [Row; 8] = [
    vxlan::ROW,
    hostgw::ROW,
    wireguard::ROW,
    ipip::ROW,
    extension::ROW,
    alloc::ROW,
    udp::ROW,
    ipsec::ROW,
];

/// The row of `kind`.
pub(crate) fn row(kind: BackendKind) -> Option<&'static Row> {
    ROWS.iter().find(|r| r.kind == kind)
}

/// The names of the backends flanneld-rs runs, for messages: `vxlan, host-gw, …`.
pub(crate) fn names() -> String {
    ROWS.iter()
        .map(|r| r.kind.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// For rows without a data path of their own to inspect.
pub(crate) fn no_data_path<'a>(
    n: &'a Inspect<'a>,
    r: &'a mut Findings,
) -> BoxFuture<'a, Option<u32>> {
    Box::pin(async move {
        r.ok(
            "device",
            format!("backend {}: no data path to check", n.config.backend_type),
        );
        None
    })
}

/// For rows without devices.
pub(crate) fn no_device<'a>(
    _: &'a NetworkConfig,
    _: &'a Netlink,
    _: &'a mut Findings,
) -> BoxFuture<'a, ()> {
    Box::pin(async {})
}

/// For rows without leftovers.
pub(crate) fn nothing_left(_: Leaving<'_>) -> BoxFuture<'_, Result<(), BackendError>> {
    Box::pin(async { Ok(()) })
}

/// For rows whose `Backend` object has no settings to check.
pub(crate) fn nothing_to_check(_: &NetworkConfig) -> Result<(), BackendError> {
    Ok(())
}

/// For rows that make no routes of host-gw's shape.
pub(crate) fn no_gateway_routes(_: &NetworkConfig) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_exactly_one_row() {
        for kind in BackendKind::all() {
            assert_eq!(ROWS.iter().filter(|r| r.kind == kind).count(), 1, "{kind}");
        }
        assert_eq!(ROWS.len(), BackendKind::all().count());
    }
}
