//! A Node as flannel needs it, and the pure rules on it: its lease (upstream `nodeToLease`),
//! the annotations this node must carry (upstream `AcquireLease`), the patches that set them
//! and the `NetworkUnavailable` condition.
//!
//! Upstream keeps every whole Node object in an informer cache (images, conditions, managed
//! fields: several KiB each). Only the name, the pod CIDRs and flannel's own annotations are
//! kept here; everything else is skipped while the list (protobuf or JSON) or a watch event is
//! read.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use flannel_net::{BackendData, BackendKind, Expiration, Lease, LeaseAttrs, NetworkConfig};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::Deserialize;
use serde_json::Value;

use super::annotations::Annotations;

/// The parts of a Node object flannel reads, as the API sends them.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeObject {
    pub metadata: NodeMeta,
    #[serde(default)]
    pub spec: NodeSpec,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeMeta {
    pub name: String,
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: String,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeSpec {
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Option<Vec<String>>,
}

/// What is kept of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// `spec.podCIDRs`, or `spec.podCIDR` alone when the list is empty (as upstream reads it).
    pub pod_cidrs: Vec<String>,
    /// Only the annotations under flannel's prefix.
    pub annotations: BTreeMap<String, String>,
}

impl Node {
    /// Keeps what flannel needs of `object`.
    pub fn from_object(object: NodeObject, names: &Annotations) -> Node {
        let pod_cidrs = match object.spec.pod_cidrs.filter(|l| !l.is_empty()) {
            Some(list) => list,
            None => object.spec.pod_cidr.into_iter().collect(),
        };
        let mut annotations = object.metadata.annotations.unwrap_or_default();
        annotations.retain(|k, _| k.starts_with(&names.prefix));
        Node {
            name: object.metadata.name,
            pod_cidrs,
            annotations,
        }
    }

    fn get(&self, name: &str) -> &str {
        self.annotations.get(name).map_or("", String::as_str)
    }

    /// Whether flannel runs on this node (`kube-subnet-manager: "true"`): only those are peers.
    pub fn is_flannel_node(&self, names: &Annotations) -> bool {
        self.get(&names.subnet_kube_managed) == "true"
    }

    /// The IPv4 and IPv6 pod CIDRs; upstream's message for more than two.
    pub fn pod_subnets(&self) -> Result<(Option<Ipv4Network>, Option<Ipv6Network>), String> {
        if self.pod_cidrs.len() > 2 {
            return Err(format!(
                "node {:?} pod cidrs should be IPv4/IPv6 only or dualstack",
                self.name
            ));
        }
        let (mut v4, mut v6) = (None, None);
        for text in &self.pod_cidrs {
            match parse_cidr(text)? {
                IpNetwork::V4(n) => v4 = v4.or(Some(n)),
                IpNetwork::V6(n) => v6 = v6.or(Some(n)),
            }
        }
        Ok((v4, v6))
    }

    /// The operator's `node-public-ip` / `node-public-ipv6`, read at start (upstream
    /// `GetStoredPublicIP`); a value that is not an address is an error naming it.
    pub fn stored_public_ips(
        &self,
        names: &Annotations,
    ) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), String> {
        let v4 = match self.get(&names.node_public_ip) {
            "" => None,
            s => Some(s.parse().map_err(|_| {
                format!(
                    "annotation {} {s:?}: not an IPv4 address",
                    names.node_public_ip
                )
            })?),
        };
        let v6 = match self.get(&names.node_public_ipv6) {
            "" => None,
            s => Some(s.parse().map_err(|_| {
                format!(
                    "annotation {} {s:?}: not an IPv6 address",
                    names.node_public_ipv6
                )
            })?),
        };
        Ok((v4, v6))
    }

    /// A peer's lease from its annotations and pod CIDRs, in the families the network
    /// config enables (upstream `nodeToLease`).
    pub fn to_lease(&self, names: &Annotations, config: &NetworkConfig) -> Result<Lease, String> {
        let (v4, v6) = self.pod_subnets()?;
        let mut attrs = LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: self.get(&names.backend_type).to_string(),
            backend_data: None,
            backend_v6_data: None,
        };
        let mut subnet = crate::acquire::no_ipv4();
        if config.enable_ipv4 {
            attrs.public_ip = self
                .get(&names.public_ip)
                .parse()
                .map_err(|_| format!("{}: not an IPv4 address", names.public_ip))?;
            attrs.backend_data = raw_json(self.get(&names.backend_data), &names.backend_data)?;
            subnet = v4.ok_or("missing IPv4 address on n.Spec.PodCIDRs")?;
        }
        let mut ipv6_subnet = None;
        if config.enable_ipv6 {
            attrs.public_ipv6 = Some(
                self.get(&names.public_ipv6)
                    .parse()
                    .map_err(|_| format!("{}: not an IPv6 address", names.public_ipv6))?,
            );
            attrs.backend_v6_data =
                raw_json(self.get(&names.backend_v6_data), &names.backend_v6_data)?;
            ipv6_subnet = Some(v6.ok_or("missing IPv6 address on n.Spec.PodCIDRs")?);
        }
        Ok(Lease {
            subnet,
            ipv6_subnet,
            attrs,
            expiration: Expiration::Unknown,
        })
    }

    /// The annotations this node must carry for `attrs` (upstream `AcquireLease`): `None`
    /// when it carries them already, else every annotation to set. `public-ip-overwrite`
    /// wins over the detected address.
    pub fn wanted_annotations(
        &self,
        names: &Annotations,
        attrs: &LeaseAttrs,
    ) -> Option<BTreeMap<String, String>> {
        let backend_type = attrs.backend_type.as_str();
        let data = json_or_null(&attrs.backend_data);
        let v6_data = json_or_null(&attrs.backend_v6_data);
        let public_ip = attrs.public_ip.to_string();
        let overwrite = self.get(&names.public_ip_overwrite);
        let overwrite6 = self.get(&names.public_ipv6_overwrite);
        let managed = self.get(&names.subnet_kube_managed) == "true";
        let v4_differs = self.get(&names.backend_data) != data
            || self.get(&names.backend_type) != backend_type
            || self.get(&names.public_ip) != public_ip
            || !managed
            || (!overwrite.is_empty() && overwrite != public_ip);
        let v6_differs = attrs.public_ipv6.is_some_and(|ip6| {
            self.get(&names.backend_v6_data) != v6_data
                || self.get(&names.backend_type) != backend_type
                || self.get(&names.public_ipv6) != ip6.to_string()
                || !managed
                || (!overwrite6.is_empty() && overwrite6 != ip6.to_string())
        });
        if !v4_differs && !v6_differs {
            return None;
        }
        let mut set = BTreeMap::new();
        set.insert(names.backend_type.clone(), backend_type.to_string());
        // upstream: per-family data (VXLAN) without an IPv4 side (IPv6-only) writes no IPv4
        // data
        let kind = BackendKind::from_type(backend_type);
        let per_family = kind.is_some_and(BackendKind::per_family_data);
        if !per_family || data != "null" {
            set.insert(names.backend_data.clone(), data.clone());
            let ip = if overwrite.is_empty() {
                public_ip.clone()
            } else {
                overwrite.to_string()
            };
            set.insert(names.public_ip.clone(), ip);
        }
        if let Some(ip6) = attrs.public_ipv6 {
            // upstream: data of the IPv6 side (VXLAN's, WireGuard's) when there is some;
            // host-gw and extension write theirs (null) all the same
            if v6_data != "null" || kind.is_some_and(BackendKind::ipv6_annotations) {
                set.insert(names.backend_v6_data.clone(), v6_data);
                let ip = if overwrite6.is_empty() {
                    ip6.to_string()
                } else {
                    overwrite6.to_string()
                };
                set.insert(names.public_ipv6.clone(), ip);
            }
        }
        set.insert(names.subnet_kube_managed.clone(), "true".into());
        // only what differs goes into the patch, as a two-way merge patch would have it
        set.retain(|k, v| self.annotations.get(k) != Some(v));
        Some(set)
    }
}

/// A strategic merge patch that sets these annotations.
pub fn annotations_patch(set: &BTreeMap<String, String>) -> Value {
    serde_json::json!({ "metadata": { "annotations": set } })
}

/// Upstream's `CompleteLease` patch: the node's network is available.
pub fn network_available_patch(now: SystemTime) -> Value {
    let t = flannel_net::time::format_utc(now);
    serde_json::json!({ "status": { "conditions": [{
        "type": "NetworkUnavailable",
        "status": "False",
        "lastHeartbeatTime": t,
        "lastTransitionTime": t,
        "reason": "FlannelIsUp",
        "message": "Flannel is running on this node",
    }]}})
}

/// Go's `net.ParseCIDR` then the network (`10.244.1.5/24` is `10.244.1.0/24`).
fn parse_cidr(text: &str) -> Result<IpNetwork, String> {
    let n: IpNetwork = text
        .parse()
        .map_err(|_| format!("invalid CIDR address: {text}"))?;
    IpNetwork::new(n.network(), n.prefix()).map_err(|e| e.to_string())
}

/// An annotation that holds raw JSON (`backend-data`): `None` for empty or `null`.
fn raw_json(text: &str, name: &str) -> Result<Option<BackendData>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str(text) {
        Ok(Value::Null) => Ok(None),
        Ok(v) => Ok(Some(BackendData::from(v))),
        Err(e) => Err(format!("{name}: not JSON: {e}")),
    }
}

/// Go's `json.RawMessage.MarshalJSON`: the bytes, or `null` for none.
fn json_or_null(v: &Option<BackendData>) -> String {
    v.as_ref()
        .map_or_else(|| "null".to_string(), BackendData::to_string)
}

/// Whether `network` holds `subnet` (upstream `containsCIDR`).
pub fn contains(network: IpNetwork, subnet: IpNetwork) -> bool {
    network.prefix() <= subnet.prefix() && network.contains(subnet.network())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn names() -> Annotations {
        Annotations::new("flannel.alpha.coreos.com").unwrap()
    }

    fn node(cidrs: &[&str], annotations: &[(&str, &str)]) -> Node {
        let object: NodeObject = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "n1",
                "resourceVersion": "7",
                "annotations": annotations
                    .iter()
                    .map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), v.to_string()))
                    .chain([("other.io/x".to_string(), "y".to_string())])
                    .collect::<BTreeMap<_, _>>(),
            },
            "spec": { "podCIDR": cidrs.first(), "podCIDRs": cidrs },
            "status": { "images": [{ "names": ["big"], "sizeBytes": 1 }] },
        }))
        .unwrap();
        Node::from_object(object, &names())
    }

    fn config(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}"#;

    fn vxlan_attrs(mac: &str) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::new(192, 168, 77, 1),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac}).into()),
            backend_v6_data: None,
        }
    }

    #[test]
    fn only_flannels_annotations_are_kept_and_no_annotation_at_all_is_fine() {
        let n = node(&["10.244.1.0/24"], &[("public-ip", "192.168.77.1")]);
        assert_eq!(n.annotations.len(), 1);
        let bare: NodeObject =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n2"}})).unwrap();
        let bare = Node::from_object(bare, &names());
        assert!(!bare.is_flannel_node(&names()) && bare.pod_cidrs.is_empty());
        // a podCIDR without podCIDRs (clusters before 1.16)
        let old: NodeObject = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "n3"}, "spec": {"podCIDR": "10.244.3.0/24"}}),
        )
        .unwrap();
        assert_eq!(
            Node::from_object(old, &names()).pod_cidrs,
            ["10.244.3.0/24"]
        );
    }

    #[test]
    fn a_peers_lease_comes_from_its_annotations_and_pod_cidrs() {
        let n = node(
            &["10.244.1.0/24", "fd00:10:0:1::/64"],
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("backend-data", r#"{"VNI":1,"VtepMAC":"7a:7c:0f:00:99:ce"}"#),
                ("public-ip", "192.168.77.2"),
                (
                    "backend-v6-data",
                    r#"{"VNI":1,"VtepMAC":"7a:7c:0f:00:99:cf"}"#,
                ),
                ("public-ipv6", "fd77::2"),
            ],
        );
        assert!(n.is_flannel_node(&names()));
        let l = n.to_lease(&names(), &config(VXLAN)).unwrap();
        assert_eq!(l.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(l.ipv6_subnet, None);
        assert_eq!(l.attrs.public_ip, Ipv4Addr::new(192, 168, 77, 2));
        assert_eq!(
            l.attrs.vxlan_data().unwrap().unwrap().vtep_mac.to_string(),
            "7a:7c:0f:00:99:ce"
        );
        let l = n.to_lease(&names(), &config(DUAL)).unwrap();
        assert_eq!(l.ipv6_subnet.unwrap().to_string(), "fd00:10:0:1::/64");
        assert_eq!(l.attrs.public_ipv6, Some("fd77::2".parse().unwrap()));
        // upstream's messages for what does not fit
        let v6_only = node(&["fd00:10:0:1::/64"], &[("public-ip", "192.168.77.2")]);
        assert_eq!(
            v6_only.to_lease(&names(), &config(VXLAN)).unwrap_err(),
            "missing IPv4 address on n.Spec.PodCIDRs"
        );
        let bad_ip = node(&["10.244.1.0/24"], &[("public-ip", "nope")]);
        assert!(bad_ip.to_lease(&names(), &config(VXLAN)).is_err());
        let three = node(&["10.244.1.0/24", "10.244.2.0/24", "fd00::/64"], &[]);
        assert_eq!(
            three.pod_subnets().unwrap_err(),
            "node \"n1\" pod cidrs should be IPv4/IPv6 only or dualstack"
        );
        assert_eq!(
            node(&["10.244.1.5/24"], &[])
                .pod_subnets()
                .unwrap()
                .0
                .unwrap()
                .to_string(),
            "10.244.1.0/24"
        );
    }

    #[test]
    fn annotations_are_patched_only_when_they_differ_as_upstream_writes_them() {
        let n = node(&["10.244.1.0/24"], &[]);
        let attrs = vxlan_attrs("7a:7c:0f:00:99:ce");
        let set = n.wanted_annotations(&names(), &attrs).unwrap();
        let got: Vec<(String, String)> = set.into_iter().collect();
        let p = "flannel.alpha.coreos.com/";
        assert_eq!(
            got,
            [
                (
                    format!("{p}backend-data"),
                    r#"{"VNI":1,"VtepMAC":"7a:7c:0f:00:99:ce"}"#.to_string()
                ),
                (format!("{p}backend-type"), "vxlan".to_string()),
                (format!("{p}kube-subnet-manager"), "true".to_string()),
                (format!("{p}public-ip"), "192.168.77.1".to_string()),
            ]
        );
        // already there: nothing to patch
        let done = node(
            &["10.244.1.0/24"],
            &[
                ("backend-data", r#"{"VNI":1,"VtepMAC":"7a:7c:0f:00:99:ce"}"#),
                ("backend-type", "vxlan"),
                ("kube-subnet-manager", "true"),
                ("public-ip", "192.168.77.1"),
            ],
        );
        assert_eq!(done.wanted_annotations(&names(), &attrs), None);
        // a new MAC: only backend-data in the patch
        let set = done
            .wanted_annotations(&names(), &vxlan_attrs("7a:7c:0f:00:99:00"))
            .unwrap();
        assert_eq!(
            set.keys().collect::<Vec<_>>(),
            [&format!("{p}backend-data")]
        );
        // public-ip-overwrite wins
        let over = node(
            &["10.244.1.0/24"],
            &[("public-ip-overwrite", "203.0.113.9")],
        );
        let set = over.wanted_annotations(&names(), &attrs).unwrap();
        assert_eq!(set[&format!("{p}public-ip")], "203.0.113.9");
        // host-gw has no backend data: upstream writes "null"
        let hostgw = LeaseAttrs {
            backend_type: "host-gw".into(),
            backend_data: None,
            ..attrs.clone()
        };
        let set = n.wanted_annotations(&names(), &hostgw).unwrap();
        assert_eq!(set[&format!("{p}backend-data")], "null");
        // dual-stack VXLAN: the v6 pair as well
        let dual = LeaseAttrs {
            public_ipv6: Some("fd77::1".parse().unwrap()),
            backend_v6_data: Some(
                serde_json::json!({"VNI": 1, "VtepMAC": "7a:7c:0f:00:99:cf"}).into(),
            ),
            ..attrs
        };
        let set = n.wanted_annotations(&names(), &dual).unwrap();
        assert_eq!(set[&format!("{p}public-ipv6")], "fd77::1");
        assert_eq!(
            set[&format!("{p}backend-v6-data")],
            r#"{"VNI":1,"VtepMAC":"7a:7c:0f:00:99:cf"}"#
        );
    }

    #[test]
    fn the_condition_patch_is_upstreams() {
        let t = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        assert_eq!(
            network_available_patch(t).to_string(),
            r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","lastHeartbeatTime":"2026-05-28T20:26:40Z","lastTransitionTime":"2026-05-28T20:26:40Z","reason":"FlannelIsUp","message":"Flannel is running on this node"}]}}"#
        );
    }

    #[test]
    fn stored_public_ips_are_checked() {
        let n = node(
            &[],
            &[
                ("node-public-ip", "203.0.113.1"),
                ("node-public-ipv6", "2001:db8::1"),
            ],
        );
        assert_eq!(
            n.stored_public_ips(&names()).unwrap(),
            (
                Some(Ipv4Addr::new(203, 0, 113, 1)),
                Some("2001:db8::1".parse().unwrap())
            )
        );
        let bad = node(&[], &[("node-public-ip", "x")]);
        assert!(bad
            .stored_public_ips(&names())
            .unwrap_err()
            .contains("flannel.alpha.coreos.com/node-public-ip \"x\": not an IPv4 address"));
    }
}
