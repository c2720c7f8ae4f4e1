//! The backends flanneld-rs runs, named once: the `Backend.Type` of the network config and
//! the `BackendType` of a lease. Here is what the crates other than flannel-backend ask of a
//! kind (its name, the address families it carries, the shape of the annotations kube mode
//! writes for it); how a kind is checked, made, run and inspected is flannel-backend's table
//! of backends, one row per kind.

use std::fmt;

/// A backend flanneld-rs implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    Vxlan,
    HostGw,
    WireGuard,
    Ipip,
    Extension,
    Alloc,
    Udp,
    Ipsec,
}

/// What is known of a kind outside its backend.
struct Row {
    /// `Backend.Type` and `BackendType`, as upstream spells it (matched case-insensitively).
    name: &'static str,
    /// Carries IPv6 beside IPv4 (dual-stack and IPv6-only): the node gets a subnet of each
    /// family the config enables. Upstream: vxlan, host-gw, wireguard.
    dual_stack: bool,
    /// `BackendData` is absent for a node without IPv4 (VXLAN's VTEP MAC of the IPv4
    /// device): kube mode then writes no IPv4 annotations (upstream's rule; WireGuard's
    /// IPv4 data is written, null, all the same).
    per_family_data: bool,
    /// Kube mode writes the IPv6 annotations (`backend-v6-data`, `public-ipv6`) for a node
    /// with an IPv6 address even when its `BackendV6Data` is null (upstream's rule).
    ipv6_annotations: bool,
}

impl BackendKind {
    /// Every kind.
    pub const ALL: [BackendKind; 8] = [
        BackendKind::Vxlan,
        BackendKind::HostGw,
        BackendKind::WireGuard,
        BackendKind::Ipip,
        BackendKind::Extension,
        BackendKind::Alloc,
        BackendKind::Udp,
        BackendKind::Ipsec,
    ];

    /// The one table of kinds.
    const fn row(self) -> Row {
        match self {
            BackendKind::Vxlan => Row {
                name: "vxlan",
                dual_stack: true,
                per_family_data: true,
                ipv6_annotations: false,
            },
            BackendKind::HostGw => Row {
                name: "host-gw",
                dual_stack: true,
                per_family_data: false,
                ipv6_annotations: true,
            },
            BackendKind::WireGuard => Row {
                name: "wireguard",
                dual_stack: true,
                per_family_data: false,
                ipv6_annotations: false,
            },
            BackendKind::Ipip => Row {
                name: "ipip",
                dual_stack: false,
                per_family_data: false,
                ipv6_annotations: false,
            },
            BackendKind::Extension => Row {
                name: "extension",
                dual_stack: false,
                per_family_data: false,
                ipv6_annotations: true,
            },
            BackendKind::Alloc => Row {
                name: "alloc",
                dual_stack: false,
                per_family_data: false,
                ipv6_annotations: false,
            },
            BackendKind::Udp => Row {
                name: "udp",
                dual_stack: false,
                per_family_data: false,
                ipv6_annotations: false,
            },
            BackendKind::Ipsec => Row {
                name: "ipsec",
                dual_stack: false,
                per_family_data: false,
                ipv6_annotations: false,
            },
        }
    }

    /// Every kind, in the table's order.
    pub fn all() -> impl Iterator<Item = BackendKind> {
        Self::ALL.into_iter()
    }

    /// The kind a `Backend.Type` or `BackendType` names (any case, as upstream lower-cases
    /// it); `None` for a type flanneld-rs does not run.
    pub fn from_type(backend_type: &str) -> Option<BackendKind> {
        Self::all().find(|k| k.name().eq_ignore_ascii_case(backend_type))
    }

    /// Its `Backend.Type` name: `vxlan`, `host-gw`.
    pub const fn name(self) -> &'static str {
        self.row().name
    }

    /// Whether it carries IPv6 (dual-stack and IPv6-only).
    pub const fn dual_stack(self) -> bool {
        self.row().dual_stack
    }

    /// Whether its IPv4 lease data is absent for a node without IPv4 (VXLAN).
    pub const fn per_family_data(self) -> bool {
        self.row().per_family_data
    }

    /// Whether kube mode writes the IPv6 annotations of a node with an IPv6 address even
    /// without per-family data.
    pub const fn ipv6_annotations(self) -> bool {
        self.row().ipv6_annotations
    }

    /// Whether a lease's `BackendType` names this kind: exactly, as upstream compares it
    /// (only the config's `Backend.Type` is lower-cased first).
    pub fn is(self, backend_type: &str) -> bool {
        self.name() == backend_type
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_name_and_it_reads_back() {
        for (i, kind) in BackendKind::ALL.iter().enumerate() {
            assert_eq!(BackendKind::from_type(kind.name()), Some(*kind));
            assert_eq!(
                BackendKind::from_type(&kind.name().to_ascii_uppercase()),
                Some(*kind)
            );
            assert!(BackendKind::ALL[i + 1..]
                .iter()
                .all(|o| o != kind && o.name() != kind.name()));
        }
        assert_eq!(BackendKind::from_type("gce"), None);
        assert_eq!(BackendKind::HostGw.to_string(), "host-gw");
        assert!(BackendKind::Vxlan.is("vxlan") && !BackendKind::Vxlan.is("VXLAN"));
    }
}
