//! Leases: a node's subnet and what the node says about itself (upstream `pkg/lease`).
//!
//! The value stored under a subnet key is [`LeaseAttrs`] as JSON. flanneld-rs writes it
//! byte-identical to upstream:
//! `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`
//! and reads it as Go does: keys in any case, unknown keys ignored, the v0.10 form without
//! `PublicIPv6` and without `VNI` accepted.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};

use crate::gojson;
use crate::mac::MacAddr;
use crate::subnet_key::SubnetKey;
use crate::{BackendKind, Family};

/// The longest lease value read or written: what a default etcd stores (a request of at most
/// 1.5 MiB, `--max-request-bytes`), less 1 KiB for the key and the request's framing. Upstream
/// stores any value etcd takes (an extension backend's PreStartupCommand output can be tens of
/// kilobytes), so every value another node could write is read; one larger than this is only
/// possible on an etcd configured beyond its default, and is refused as broken or hostile.
/// This node never writes a value it would refuse ([`LeaseAttrs::encode`]).
pub const MAX_LEASE_VALUE_LEN: usize = 1536 * 1024 - 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("lease value is {0} bytes, more than the {MAX_LEASE_VALUE_LEN} allowed")]
    TooLarge(usize),
    #[error("this node's lease value would be {0} bytes, more than the {MAX_LEASE_VALUE_LEN} allowed (etcd's default request limit of 1.5 MiB, less room for the key): nothing was written; make the backend's data smaller (for the extension backend: PreStartupCommand's output)")]
    OwnTooLarge(usize),
    #[error("lease value is not JSON: {0}")]
    Json(String),
    #[error("lease value is a JSON {0}, not an object")]
    NotObject(&'static str),
    #[error("lease field {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

/// What a node publishes about itself in its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    /// `0.0.0.0` when the value has none, as upstream.
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// Empty when absent (upstream omits it then).
    pub backend_type: String,
    /// Backend specific, kept as stored; see [`VxlanBackendData`].
    pub backend_data: Option<BackendData>,
    pub backend_v6_data: Option<BackendData>,
}

/// A lease's `BackendData` (or `BackendV6Data`): compact JSON text, as upstream keeps it
/// (`json.RawMessage`), parsed by the backend that reads it. Text rather than a parsed
/// [`Value`] because every lease of the cluster is held at once (thousands at a cold start):
/// a VXLAN node's data is 41 bytes of text, and about 500 bytes as a map of strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendData(Box<str>);

impl BackendData {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parsed JSON (the text is JSON: it was written from a [`Value`]).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

impl From<&Value> for BackendData {
    fn from(v: &Value) -> Self {
        BackendData(v.to_string().into_boxed_str())
    }
}

impl From<Value> for BackendData {
    fn from(v: Value) -> Self {
        BackendData::from(&v)
    }
}

impl fmt::Display for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The one size check of a lease value, read or written.
fn fits(len: usize) -> bool {
    len <= MAX_LEASE_VALUE_LEN
}

impl LeaseAttrs {
    /// An IPv4 node's attributes with no backend data: `{"PublicIP":…,"PublicIPv6":null}`,
    /// with `"BackendType"` when `backend_type` is not empty (alloc and udp leave it out, as
    /// upstream's do).
    pub fn public_ip_only(public_ip: Ipv4Addr, backend_type: &str) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type.to_string(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// The attributes of a VXLAN node.
    pub fn vxlan(public_ip: Ipv4Addr, data: &VxlanBackendData) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: BackendKind::Vxlan.name().to_string(),
            backend_data: Some(data.to_value().into()),
            backend_v6_data: None,
        }
    }

    /// The same with this node's IPv6 side: `PublicIPv6` and, when the backend has
    /// per-family data (VXLAN), `BackendV6Data`.
    pub fn with_ipv6(mut self, public_ipv6: Ipv6Addr, v6_data: Option<Value>) -> Self {
        self.public_ipv6 = Some(public_ipv6);
        self.backend_v6_data = v6_data.map(BackendData::from);
        self
    }

    /// Without the IPv4 side (IPv6-only): `PublicIP` 0.0.0.0 and no `BackendData`, as
    /// upstream writes it.
    pub fn without_ipv4(mut self) -> Self {
        self.public_ip = Ipv4Addr::UNSPECIFIED;
        self.backend_data = None;
        self
    }

    /// The JSON upstream writes: fields in this order, `PublicIPv6` always present (null when
    /// unset), the backend fields only when set, no spaces.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(160);
        out.push_str("{\"PublicIP\":\"");
        out.push_str(&self.public_ip.to_string());
        out.push_str("\",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => {
                out.push('"');
                out.push_str(&ip.to_string());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            out.push_str(",\"BackendType\":");
            out.push_str(&Value::String(self.backend_type.clone()).to_string());
        }
        if let Some(data) = &self.backend_data {
            out.push_str(",\"BackendData\":");
            out.push_str(data.as_str());
        }
        if let Some(data) = &self.backend_v6_data {
            out.push_str(",\"BackendV6Data\":");
            out.push_str(data.as_str());
        }
        out.push('}');
        out
    }

    /// The value this node writes ([`Self::to_json`]), refused when it is larger than any
    /// lease value [`Self::from_json`] reads: a node must never write a lease that it, or
    /// any other node, would ignore.
    pub fn encode(&self) -> Result<String, LeaseError> {
        let json = self.to_json();
        if !fits(json.len()) {
            return Err(LeaseError::OwnTooLarge(json.len()));
        }
        Ok(json)
    }

    /// Reads a lease value written by any flanneld release.
    pub fn from_json(value: &[u8]) -> Result<Self, LeaseError> {
        if !fits(value.len()) {
            return Err(LeaseError::TooLarge(value.len()));
        }
        let parsed: Value =
            serde_json::from_slice(value).map_err(|e| LeaseError::Json(e.to_string()))?;
        let obj = match &parsed {
            Value::Object(obj) => obj,
            other => return Err(LeaseError::NotObject(gojson::kind(other))),
        };
        Self::from_object(obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Self, LeaseError> {
        let f = gojson::fields(
            obj,
            &[
                "PublicIP",
                "PublicIPv6",
                "BackendType",
                "BackendData",
                "BackendV6Data",
            ],
        );
        let public_ip = match f.get("PublicIP") {
            None => Ipv4Addr::UNSPECIFIED,
            Some(v) => {
                let text = gojson::text(v);
                text.parse().map_err(|_| LeaseError::Field {
                    field: "PublicIP",
                    message: format!("not an IPv4 address: {text:?}"),
                })?
            }
        };
        let public_ipv6 = match f.get("PublicIPv6") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let text = gojson::text(v);
                Some(text.parse().map_err(|_| LeaseError::Field {
                    field: "PublicIPv6",
                    message: format!("not an IPv6 address: {text:?}"),
                })?)
            }
        };
        let backend_type = match f.get("BackendType") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(LeaseError::Field {
                    field: "BackendType",
                    message: format!("a JSON {}, not a string", gojson::kind(other)),
                })
            }
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: f.get("BackendData").map(BackendData::from),
            backend_v6_data: f.get("BackendV6Data").map(BackendData::from),
        })
    }

    /// The VXLAN data of this lease, when it is a VXLAN lease.
    pub fn vxlan_data(&self) -> Option<Result<VxlanBackendData, LeaseError>> {
        if !BackendKind::Vxlan.is(&self.backend_type) {
            return None;
        }
        Some(match &self.backend_data {
            Some(v) => VxlanBackendData::from_value(&v.to_value()),
            None => Err(LeaseError::Field {
                field: "BackendData",
                message: "missing from a vxlan lease".into(),
            }),
        })
    }

    /// The VXLAN data of the lease's IPv6 side (`BackendV6Data`), when it is a VXLAN lease.
    pub fn vxlan_v6_data(&self) -> Option<Result<VxlanBackendData, LeaseError>> {
        if !BackendKind::Vxlan.is(&self.backend_type) {
            return None;
        }
        Some(match &self.backend_v6_data {
            Some(v) => VxlanBackendData::from_value(&v.to_value()).map_err(|e| match e {
                LeaseError::Field { field, message } => LeaseError::Field {
                    field: if field == "BackendData" {
                        "BackendV6Data"
                    } else {
                        field
                    },
                    message,
                },
                other => other,
            }),
            None => Err(LeaseError::Field {
                field: "BackendV6Data",
                message: "missing from a vxlan lease with an IPv6 subnet".into(),
            }),
        })
    }

    /// The address other nodes reach this node at in `family` (`None`: the lease has none;
    /// `PublicIP` 0.0.0.0 is none).
    pub fn public_ip_of(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V6 => self.public_ipv6.map(IpAddr::V6),
            Family::V4 => {
                Some(IpAddr::V4(self.public_ip)).filter(|_| !self.public_ip.is_unspecified())
            }
        }
    }
}

impl fmt::Display for LeaseAttrs {
    /// Short form for logs, like upstream's `LeaseAttrs.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicIP={} BackendType={}",
            self.public_ip, self.backend_type
        )?;
        if let Some(data) = &self.backend_data {
            write!(f, " BackendData={data}")?;
        }
        if let Some(v6) = self.public_ipv6 {
            write!(f, " PublicIPv6={v6}")?;
        }
        Ok(())
    }
}

/// VXLAN's `BackendData`: `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`. v0.10 wrote only
/// `VtepMAC`; `vni` is then `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanBackendData {
    pub vni: Option<u32>,
    pub vtep_mac: MacAddr,
}

impl VxlanBackendData {
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        if let Some(vni) = self.vni {
            obj.insert("VNI".into(), Value::from(vni));
        }
        obj.insert("VtepMAC".into(), Value::String(self.vtep_mac.to_string()));
        Value::Object(obj)
    }

    pub fn from_value(v: &Value) -> Result<Self, LeaseError> {
        let obj = match v {
            Value::Object(obj) => obj,
            other => {
                return Err(LeaseError::Field {
                    field: "BackendData",
                    message: format!("a JSON {}, not an object", gojson::kind(other)),
                })
            }
        };
        let f = gojson::fields(obj, &["VNI", "VtepMAC"]);
        let vni = match f.get("VNI") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| LeaseError::Field {
                        field: "BackendData.VNI",
                        message: format!("{n} is not a VNI"),
                    })?,
            ),
            Some(other) => {
                return Err(LeaseError::Field {
                    field: "BackendData.VNI",
                    message: format!("a JSON {}, not a number", gojson::kind(other)),
                })
            }
        };
        let vtep_mac = match f.get("VtepMAC") {
            Some(Value::String(s)) => s.parse().map_err(|_| LeaseError::Field {
                field: "BackendData.VtepMAC",
                message: format!("not a MAC address: {s:?}"),
            })?,
            Some(other) => {
                return Err(LeaseError::Field {
                    field: "BackendData.VtepMAC",
                    message: format!("a JSON {}, not a string", gojson::kind(other)),
                })
            }
            None => {
                return Err(LeaseError::Field {
                    field: "BackendData.VtepMAC",
                    message: "missing".into(),
                })
            }
        };
        Ok(VxlanBackendData { vni, vtep_mac })
    }
}

/// When a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiration {
    /// A reservation: a key without TTL, kept for its node forever (upstream
    /// `Documentation/reservations.md`).
    Never,
    /// Expires at this time unless renewed.
    At(SystemTime),
    /// Has a TTL, not looked up (watch events do not carry it).
    Unknown,
}

/// A node's subnet lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    pub ipv6_subnet: Option<Ipv6Network>,
    pub attrs: LeaseAttrs,
    pub expiration: Expiration,
}

impl Lease {
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            ipv4: self.subnet,
            ipv6: self.ipv6_subnet,
        }
    }

    /// Whether the lease has an IPv4 subnet (an IPv6-only lease's key starts `0.0.0.0-0&`).
    pub fn has_ipv4(&self) -> bool {
        self.subnet.prefix() != 0
    }

    /// The lease's subnet in one family, when it has one.
    pub fn subnet_of(&self, family: Family) -> Option<IpNetwork> {
        match family {
            Family::V6 => self.ipv6_subnet.map(IpNetwork::V6),
            Family::V4 => self.has_ipv4().then_some(IpNetwork::V4(self.subnet)),
        }
    }

    /// Both subnets for logs, as upstream prints them: `ip: 10.5.34.0/24 ipv6: ::/0`.
    pub fn subnets_text(&self) -> String {
        format!(
            "ip: {} ipv6: {}",
            self.subnet,
            self.ipv6_subnet
                .map_or_else(|| "::/0".to_string(), |s| s.to_string())
        )
    }

    pub fn is_reservation(&self) -> bool {
        self.expiration == Expiration::Never
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V020: &str = r#"{"PublicIP":"192.168.77.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6a:02:fc:e4:63:47"}}"#;

    #[test]
    fn writes_upstream_bytes() {
        let data = VxlanBackendData {
            vni: Some(1),
            vtep_mac: "6a:02:fc:e4:63:47".parse().unwrap(),
        };
        let attrs = LeaseAttrs::vxlan("192.168.77.2".parse().unwrap(), &data);
        assert_eq!(attrs.to_json(), V020);
    }

    #[test]
    fn round_trips_upstream_value() {
        let attrs = LeaseAttrs::from_json(V020.as_bytes()).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 168, 77, 2));
        assert_eq!(attrs.public_ipv6, None);
        assert_eq!(attrs.to_json(), V020);
        let vx = attrs.vxlan_data().unwrap().unwrap();
        assert_eq!(vx.vni, Some(1));
        assert_eq!(vx.vtep_mac.to_string(), "6a:02:fc:e4:63:47");
    }

    #[test]
    fn reads_v010_value_without_vni_or_ipv6() {
        let v = br#"{"PublicIP":"10.0.0.5","BackendType":"vxlan","BackendData":{"VtepMAC":"ae:2f:d6:1d:74:57"}}"#;
        let attrs = LeaseAttrs::from_json(v).unwrap();
        assert_eq!(attrs.public_ipv6, None);
        let vx = attrs.vxlan_data().unwrap().unwrap();
        assert_eq!(vx.vni, None);
        assert_eq!(vx.vtep_mac.to_string(), "ae:2f:d6:1d:74:57");
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_are_ignored() {
        let v = br#"{"publicip":"10.0.0.5","backendtype":"host-gw","Extra":[1,2]}"#;
        let attrs = LeaseAttrs::from_json(v).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(attrs.backend_type, "host-gw");
        assert!(attrs.vxlan_data().is_none());
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
    }

    #[test]
    fn dual_stack_value_round_trips() {
        let v = r#"{"PublicIP":"10.0.0.5","PublicIPv6":"fd00::5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ae:2f:d6:1d:74:57"},"BackendV6Data":{"VNI":1,"VtepMAC":"ae:2f:d6:1d:74:58"}}"#;
        let attrs = LeaseAttrs::from_json(v.as_bytes()).unwrap();
        assert_eq!(attrs.public_ipv6, Some("fd00::5".parse().unwrap()));
        assert_eq!(attrs.to_json(), v);
    }

    #[test]
    fn malformed_values_are_errors_naming_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not JSON"),
            (b"[1]", "array"),
            (br#"{"PublicIP":"fd00::1"}"#, "PublicIP"),
            (br#"{"PublicIP":5}"#, "PublicIP"),
            (
                br#"{"PublicIP":"1.2.3.4","PublicIPv6":"1.2.3.4"}"#,
                "PublicIPv6",
            ),
            (br#"{"PublicIP":"1.2.3.4","BackendType":7}"#, "BackendType"),
        ];
        for (v, want) in cases {
            let err = LeaseAttrs::from_json(v).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should name {want}");
        }
        let huge = vec![b' '; MAX_LEASE_VALUE_LEN + 1];
        assert!(matches!(
            LeaseAttrs::from_json(&huge),
            Err(LeaseError::TooLarge(_))
        ));
    }

    /// What a node writes it reads back, up to the limit; past it, nothing is written.
    #[test]
    fn a_node_writes_only_values_it_would_read() {
        let with_data = |len: usize| LeaseAttrs {
            public_ip: Ipv4Addr::new(192, 168, 77, 2),
            public_ipv6: None,
            backend_type: "extension".into(),
            backend_data: Some(Value::String("x".repeat(len)).into()),
            backend_v6_data: None,
        };
        // 67 KB, as an extension's PreStartupCommand printing `seq 1 13000`
        let big = with_data(67_000);
        let value = big.encode().unwrap();
        assert_eq!(LeaseAttrs::from_json(value.as_bytes()).unwrap(), big);
        let frame = with_data(0).to_json().len();
        let largest = with_data(MAX_LEASE_VALUE_LEN - frame);
        let value = largest.encode().unwrap();
        assert_eq!(value.len(), MAX_LEASE_VALUE_LEN);
        assert!(LeaseAttrs::from_json(value.as_bytes()).is_ok());
        let over = with_data(MAX_LEASE_VALUE_LEN - frame + 1);
        assert_eq!(
            over.encode(),
            Err(LeaseError::OwnTooLarge(MAX_LEASE_VALUE_LEN + 1))
        );
    }

    #[test]
    fn backend_data_is_kept_as_compact_text() {
        let v = br#"{"PublicIP":"10.0.0.5","BackendType":"vxlan","BackendData":{ "VNI" : 1, "VtepMAC":"ae:2f:d6:1d:74:57" }}"#;
        let attrs = LeaseAttrs::from_json(v).unwrap();
        let data = attrs.backend_data.as_ref().unwrap();
        assert_eq!(data.as_str(), r#"{"VNI":1,"VtepMAC":"ae:2f:d6:1d:74:57"}"#);
        assert_eq!(BackendData::from(data.to_value()), *data);
        assert_eq!(attrs.vxlan_data().unwrap().unwrap().vni, Some(1));
        // null is kept as it was written
        let null = br#"{"PublicIP":"10.0.0.5","BackendType":"host-gw","BackendData":null}"#;
        let attrs = LeaseAttrs::from_json(null).unwrap();
        assert_eq!(attrs.backend_data.unwrap().as_str(), "null");
    }

    #[test]
    fn bad_vxlan_data_is_an_error() {
        for data in [
            r#""x""#,
            r#"{"VNI":1}"#,
            r#"{"VNI":-1,"VtepMAC":"ae:2f:d6:1d:74:57"}"#,
            r#"{"VNI":"1","VtepMAC":"ae:2f:d6:1d:74:57"}"#,
            r#"{"VNI":1,"VtepMAC":"nope"}"#,
        ] {
            let v =
                format!(r#"{{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{data}}}"#);
            let attrs = LeaseAttrs::from_json(v.as_bytes()).unwrap();
            assert!(attrs.vxlan_data().unwrap().is_err(), "{data}");
        }
    }
}
