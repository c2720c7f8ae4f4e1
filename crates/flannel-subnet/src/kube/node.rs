//! A Node as flannel needs it, and the pure rules on it: its lease (upstream `nodeToLease`),
//! the annotations this node must carry (upstream `AcquireLease`), the patches that set them
//! and the `NetworkUnavailable` condition.
//!
//! Upstream keeps every whole Node object in an informer cache (images, conditions, managed
//! fields: several KiB each). Only the name, the pod CIDRs and flannel's own annotations are
//! kept here; everything else is skipped while the JSON is read.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use flannel_net::{Expiration, Lease, LeaseAttrs, NetworkConfig};
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
        // upstream: VXLAN without an IPv4 side (IPv6-only) writes no IPv4 data
        if backend_type != "vxlan" || data != "null" {
            set.insert(names.backend_data.clone(), data.clone());
            let ip = if overwrite.is_empty() {
                public_ip.clone()
            } else {
                overwrite.to_string()
            };
            set.insert(names.public_ip.clone(), ip);
        }
        if let Some(ip6) = attrs.public_ipv6 {
            if (backend_type == "vxlan" && v6_data != "null")
                || matches!(backend_type, "host-gw" | "extension")
            {
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
fn raw_json(text: &str, name: &str) -> Result<Option<Value>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str(text) {
        Ok(Value::Null) => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(e) => Err(format!("{name}: not JSON: {e}")),
    }
}

/// Go's `json.RawMessage.MarshalJSON`: the bytes, or `null` for none.
fn json_or_null(v: &Option<Value>) -> String {
    v.as_ref()
        .map_or_else(|| "null".to_string(), Value::to_string)
}

/// Whether `network` holds `subnet` (upstream `containsCIDR`).
pub fn contains(network: IpNetwork, subnet: IpNetwork) -> bool {
    network.prefix() <= subnet.prefix() && network.contains(subnet.network())
}
