//! The network config stored in etcd at `<prefix>/config` (upstream `pkg/subnet/config.go`).
//!
//! Two steps, as upstream: [`NetworkConfig::parse`] reads the JSON (upstream `ParseConfig`),
//! [`NetworkConfig::check`] fills in the defaults and validates (upstream `CheckNetworkConfig`,
//! which upstream runs only with etcd). [`NetworkConfig::from_etcd`] does both. Error texts are
//! upstream's, so operators' searches and docs keep working.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};

use crate::gojson;

/// Why a network config was refused. The texts are upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or not a JSON object.
    #[error("{0}")]
    Json(String),
    /// A field of the wrong JSON type, worded like Go's decoder.
    #[error("json: cannot unmarshal {kind} into Go struct field Config.{field} of type {go_type}")]
    Type {
        field: &'static str,
        kind: &'static str,
        go_type: &'static str,
    },
    /// A field whose text does not parse (a CIDR or an address).
    #[error("{field}: {message}")]
    Value {
        field: &'static str,
        message: String,
    },
    #[error("error decoding Backend property of config: {0}")]
    Backend(String),
    #[error("please define a correct Network parameter in the flannel config")]
    NoNetwork,
    #[error("SubnetLen must be less than /31")]
    SubnetLenTooLong,
    #[error("network must be able to accommodate at least four subnets")]
    TooFewSubnets,
    #[error("network is too small. Minimum useful network prefix is /28")]
    NetworkTooSmall,
    #[error("SubnetMin is not in the range of the Network")]
    SubnetMinOutside,
    #[error("SubnetMax is not in the range of the Network")]
    SubnetMaxOutside,
    #[error("SubnetMin is not on a SubnetLen boundary: {0}")]
    SubnetMinUnaligned(Ipv4Addr),
    #[error("SubnetMax is not on a SubnetLen boundary: {0}")]
    SubnetMaxUnaligned(Ipv4Addr),
    /// Upstream finds no subnet and says `out of subnets` for ever.
    #[error("SubnetMin ({min}) is greater than SubnetMax ({max}): no subnet fits between them")]
    SubnetRangeEmpty { min: Ipv4Addr, max: Ipv4Addr },
    #[error("please define a correct IPv6Network parameter in the flannel config")]
    NoIpv6Network,
    #[error("SubnetLen must be less than /127")]
    Ipv6SubnetLenTooLong,
    #[error("IPv6Network is too small. Minimum useful network prefix is /124")]
    Ipv6NetworkTooSmall,
    #[error("IPv6SubnetMin is not in the range of the IPv6Network")]
    Ipv6SubnetMinOutside,
    #[error("IPv6SubnetMax is not in the range of the IPv6Network")]
    Ipv6SubnetMaxOutside,
    #[error("IPv6SubnetMin is not on a SubnetLen boundary: {0}")]
    Ipv6SubnetMinUnaligned(Ipv6Addr),
    #[error("IPv6SubnetMax is not on a SubnetLen boundary: {0}")]
    Ipv6SubnetMaxUnaligned(Ipv6Addr),
}

/// The flannel network config. Unset addresses are `0.0.0.0` and unset networks `0.0.0.0/0`,
/// as in upstream, until [`NetworkConfig::check`] fills in the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_nftables: bool,
    pub network: Ipv4Network,
    pub ipv6_network: Option<Ipv6Network>,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub subnet_len: u32,
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    pub ipv6_subnet_len: u32,
    /// `Backend.Type` as written (upstream lower-cases it when it picks the backend);
    /// `udp` when `Backend` is absent, as upstream.
    pub backend_type: String,
    /// The `Backend` object as stored, handed to the backend to decode.
    pub backend: Option<Value>,
}

const FIELDS: [&str; 13] = [
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "Backend",
    "Networks",
];

impl NetworkConfig {
    /// Reads and validates the config as flanneld does in etcd mode.
    pub fn from_etcd(json: &str) -> Result<Self, ConfigError> {
        let mut config = Self::parse(json)?;
        config.check()?;
        Ok(config)
    }

    /// Reads the JSON without defaults or range checks (upstream `ParseConfig`).
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        let obj = match &value {
            Value::Object(obj) => obj,
            other => {
                return Err(ConfigError::Json(format!(
                    "json: cannot unmarshal {} into Go value of type subnet.Config",
                    gojson::kind(other)
                )))
            }
        };
        let f = gojson::fields(obj, &FIELDS);
        let mut config = NetworkConfig {
            enable_ipv4: true,
            enable_ipv6: false,
            enable_nftables: false,
            network: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("prefix 0 is valid"),
            ipv6_network: None,
            subnet_min: Ipv4Addr::UNSPECIFIED,
            subnet_max: Ipv4Addr::UNSPECIFIED,
            subnet_len: 0,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            ipv6_subnet_len: 0,
            backend_type: String::new(),
            backend: None,
        };
        if let Some(v) = f.get("EnableIPv4") {
            config.enable_ipv4 = bool_field(v, "EnableIPv4")?.unwrap_or(config.enable_ipv4);
        }
        if let Some(v) = f.get("EnableIPv6") {
            config.enable_ipv6 = bool_field(v, "EnableIPv6")?.unwrap_or(config.enable_ipv6);
        }
        if let Some(v) = f.get("EnableNFTables") {
            config.enable_nftables =
                bool_field(v, "EnableNFTables")?.unwrap_or(config.enable_nftables);
        }
        if let Some(v) = f.get("Network") {
            config.network =
                parse_cidr_v4(&gojson::text(v)).map_err(|message| ConfigError::Value {
                    field: "Network",
                    message,
                })?;
        }
        if let Some(v) = f.get("IPv6Network") {
            config.ipv6_network =
                Some(
                    parse_cidr_v6(&gojson::text(v)).map_err(|message| ConfigError::Value {
                        field: "IPv6Network",
                        message,
                    })?,
                );
        }
        if let Some(v) = f.get("SubnetMin") {
            config.subnet_min = parse_ip4(v, "SubnetMin")?;
        }
        if let Some(v) = f.get("SubnetMax") {
            config.subnet_max = parse_ip4(v, "SubnetMax")?;
        }
        if let Some(v) = f.get("IPv6SubnetMin") {
            config.ipv6_subnet_min = parse_ip6(v, "IPv6SubnetMin")?;
        }
        if let Some(v) = f.get("IPv6SubnetMax") {
            config.ipv6_subnet_max = parse_ip6(v, "IPv6SubnetMax")?;
        }
        if let Some(v) = f.get("SubnetLen") {
            config.subnet_len = uint_field(v, "SubnetLen")?.unwrap_or(0);
        }
        if let Some(v) = f.get("IPv6SubnetLen") {
            config.ipv6_subnet_len = uint_field(v, "IPv6SubnetLen")?.unwrap_or(0);
        }
        config.backend = f.get("Backend").cloned();
        config.backend_type = backend_type(config.backend.as_ref())?;
        // "Networks" is the multi-cluster-CIDR list of v0.21-v0.22 (kube mode only):
        // accepted and ignored.
        Ok(config)
    }

    /// The config as JSON that [`Self::parse`] reads back to the same config (the running
    /// config a daemon records for `doctor`); every field written, `Backend` as stored.
    pub fn to_json(&self) -> String {
        let mut o = Map::new();
        o.insert("EnableIPv4".into(), Value::Bool(self.enable_ipv4));
        o.insert("EnableIPv6".into(), Value::Bool(self.enable_ipv6));
        o.insert("EnableNFTables".into(), Value::Bool(self.enable_nftables));
        o.insert("Network".into(), Value::String(self.network.to_string()));
        o.insert("SubnetLen".into(), Value::from(self.subnet_len));
        o.insert(
            "SubnetMin".into(),
            Value::String(self.subnet_min.to_string()),
        );
        o.insert(
            "SubnetMax".into(),
            Value::String(self.subnet_max.to_string()),
        );
        if let Some(n6) = self.ipv6_network {
            o.insert("IPv6Network".into(), Value::String(n6.to_string()));
        }
        o.insert("IPv6SubnetLen".into(), Value::from(self.ipv6_subnet_len));
        if let Some(min) = self.ipv6_subnet_min {
            o.insert("IPv6SubnetMin".into(), Value::String(min.to_string()));
        }
        if let Some(max) = self.ipv6_subnet_max {
            o.insert("IPv6SubnetMax".into(), Value::String(max.to_string()));
        }
        if let Some(backend) = &self.backend {
            o.insert("Backend".into(), backend.clone());
        }
        Value::Object(o).to_string()
    }

    /// Fills in SubnetLen, SubnetMin and SubnetMax and validates them (upstream
    /// `CheckNetworkConfig`), IPv4 when enabled, then IPv6 when enabled.
    pub fn check(&mut self) -> Result<(), ConfigError> {
        if self.enable_ipv4 {
            self.check_ipv4()?;
        }
        if self.enable_ipv6 {
            self.check_ipv6()?;
        }
        Ok(())
    }

    fn check_ipv4(&mut self) -> Result<(), ConfigError> {
        let prefix = u32::from(self.network.prefix());
        if self.network.ip().is_unspecified() && prefix == 0 {
            return Err(ConfigError::NoNetwork);
        }
        if self.subnet_len > 0 {
            if self.subnet_len > 30 {
                return Err(ConfigError::SubnetLenTooLong);
            }
            if self.subnet_len < prefix + 2 {
                return Err(ConfigError::TooFewSubnets);
            }
        } else if prefix > 28 {
            return Err(ConfigError::NetworkTooSmall);
        } else if prefix <= 22 {
            self.subnet_len = 24;
        } else {
            self.subnet_len = prefix + 2;
        }
        let size = self.subnet_size();
        let net = u32::from(self.network.network());
        if self.subnet_min.is_unspecified() {
            // The first subnet is skipped: its .0 would be the Network's own address.
            self.subnet_min = Ipv4Addr::from(net.wrapping_add(size));
        } else if !self.network.contains(self.subnet_min) {
            return Err(ConfigError::SubnetMinOutside);
        }
        if self.subnet_max.is_unspecified() {
            let next = net.wrapping_add(1u32.checked_shl(32 - prefix).unwrap_or(0));
            self.subnet_max = Ipv4Addr::from(next.wrapping_sub(size));
        } else if !self.network.contains(self.subnet_max) {
            return Err(ConfigError::SubnetMaxOutside);
        }
        let mask = u32::MAX << (32 - self.subnet_len);
        if u32::from(self.subnet_min) & mask != u32::from(self.subnet_min) {
            return Err(ConfigError::SubnetMinUnaligned(self.subnet_min));
        }
        if u32::from(self.subnet_max) & mask != u32::from(self.subnet_max) {
            return Err(ConfigError::SubnetMaxUnaligned(self.subnet_max));
        }
        if self.subnet_min > self.subnet_max {
            return Err(ConfigError::SubnetRangeEmpty {
                min: self.subnet_min,
                max: self.subnet_max,
            });
        }
        Ok(())
    }

    fn check_ipv6(&mut self) -> Result<(), ConfigError> {
        let network = match self.ipv6_network {
            Some(n) if !(n.ip().is_unspecified() && n.prefix() == 0) => n,
            _ => return Err(ConfigError::NoIpv6Network),
        };
        let prefix = u32::from(network.prefix());
        if self.ipv6_subnet_len > 0 {
            if self.ipv6_subnet_len > 126 {
                return Err(ConfigError::Ipv6SubnetLenTooLong);
            }
            if self.ipv6_subnet_len < prefix + 2 {
                return Err(ConfigError::TooFewSubnets);
            }
        } else if prefix > 124 {
            return Err(ConfigError::Ipv6NetworkTooSmall);
        } else if prefix <= 62 {
            self.ipv6_subnet_len = 64;
        } else {
            self.ipv6_subnet_len = prefix + 2;
        }
        let size: u128 = 1u128 << (128 - self.ipv6_subnet_len);
        let net = u128::from(network.network());
        let min = match self.ipv6_subnet_min {
            None => Ipv6Addr::from(net.wrapping_add(size)),
            Some(ip) if ip.is_unspecified() => Ipv6Addr::from(net.wrapping_add(size)),
            Some(ip) if !network.contains(ip) => return Err(ConfigError::Ipv6SubnetMinOutside),
            Some(ip) => ip,
        };
        let next = net.wrapping_add(1u128.checked_shl(128 - prefix).unwrap_or(0));
        let max = match self.ipv6_subnet_max {
            None => Ipv6Addr::from(next.wrapping_sub(size)),
            Some(ip) if ip.is_unspecified() => Ipv6Addr::from(next.wrapping_sub(size)),
            Some(ip) if !network.contains(ip) => return Err(ConfigError::Ipv6SubnetMaxOutside),
            Some(ip) => ip,
        };
        let mask = u128::MAX << (128 - self.ipv6_subnet_len);
        if u128::from(min) & mask != u128::from(min) {
            return Err(ConfigError::Ipv6SubnetMinUnaligned(min));
        }
        if u128::from(max) & mask != u128::from(max) {
            return Err(ConfigError::Ipv6SubnetMaxUnaligned(max));
        }
        self.ipv6_subnet_min = Some(min);
        self.ipv6_subnet_max = Some(max);
        Ok(())
    }

    /// The number of addresses in one node subnet (valid after [`NetworkConfig::check`]).
    pub fn subnet_size(&self) -> u32 {
        1u32.checked_shl(32 - self.subnet_len.min(32)).unwrap_or(0)
    }

    /// Whether a lease's IPv4 subnet fits this config: between SubnetMin and SubnetMax and of
    /// length SubnetLen (upstream `isSubnetConfigCompat`).
    pub fn is_compatible(&self, subnet: Ipv4Network) -> bool {
        subnet.ip() >= self.subnet_min
            && subnet.ip() <= self.subnet_max
            && u32::from(subnet.prefix()) == self.subnet_len
    }

    /// The IPv6 counterpart of [`NetworkConfig::is_compatible`].
    pub fn is_compatible_ipv6(&self, subnet: Ipv6Network) -> bool {
        match (self.ipv6_subnet_min, self.ipv6_subnet_max) {
            (Some(min), Some(max)) => {
                subnet.ip() >= min
                    && subnet.ip() <= max
                    && u32::from(subnet.prefix()) == self.ipv6_subnet_len
            }
            _ => false,
        }
    }

    /// The backend `Backend.Type` names (any case, as upstream's backend manager lower-cases
    /// it); `None` for a type flanneld-rs does not run.
    pub fn backend_kind(&self) -> Option<crate::BackendKind> {
        crate::BackendKind::from_type(&self.backend_type)
    }
}

impl fmt::Display for NetworkConfig {
    /// One line for logs: the IPv4 Network and subnet range, the backend, the IPv6 ones. A family
    /// that is off is left out, and so is a range that is not set (kube mode's config has
    /// none: the pod CIDRs are the subnets), never printed as zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.enable_ipv4 {
            parts.push(format!("Network={}", self.network));
            if self.subnet_len != 0 {
                parts.push(format!(
                    "SubnetLen={} SubnetMin={} SubnetMax={}",
                    self.subnet_len, self.subnet_min, self.subnet_max
                ));
            }
        }
        parts.push(format!("Backend={}", self.backend_type));
        if let Some(n6) = self.ipv6_network.filter(|_| self.enable_ipv6) {
            parts.push(format!("IPv6Network={n6}"));
            if self.ipv6_subnet_len != 0 {
                parts.push(format!("IPv6SubnetLen={}", self.ipv6_subnet_len));
            }
            if let (Some(min), Some(max)) = (self.ipv6_subnet_min, self.ipv6_subnet_max) {
                parts.push(format!("IPv6SubnetMin={min} IPv6SubnetMax={max}"));
            }
        }
        f.write_str(&parts.join(" "))
    }
}

fn bool_field(v: &Value, field: &'static str) -> Result<Option<bool>, ConfigError> {
    match v {
        Value::Bool(b) => Ok(Some(*b)),
        Value::Null => Ok(None),
        other => Err(ConfigError::Type {
            field,
            kind: gojson::kind(other),
            go_type: "bool",
        }),
    }
}

fn uint_field(v: &Value, field: &'static str) -> Result<Option<u32>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64() {
            // Anything past u32 is far past the /31 and /127 limits: clamp so the range
            // check reports it with upstream's message.
            Some(n) => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
            None => Err(ConfigError::Type {
                field,
                kind: "number",
                go_type: "uint",
            }),
        },
        other => Err(ConfigError::Type {
            field,
            kind: gojson::kind(other),
            go_type: "uint",
        }),
    }
}

fn parse_ip4(v: &Value, field: &'static str) -> Result<Ipv4Addr, ConfigError> {
    let text = gojson::text(v);
    text.parse().map_err(|_| ConfigError::Value {
        field,
        message: format!("Invalid IP address format: {text:?}"),
    })
}

fn parse_ip6(v: &Value, field: &'static str) -> Result<Option<Ipv6Addr>, ConfigError> {
    if v.is_null() {
        return Ok(None);
    }
    let text = gojson::text(v);
    text.parse().map(Some).map_err(|_| ConfigError::Value {
        field,
        message: format!("Invalid IP address format: {text:?}"),
    })
}

/// Parses a CIDR like Go's `net.ParseCIDR` and returns the network (host bits masked).
pub fn parse_cidr_v4(s: &str) -> Result<Ipv4Network, String> {
    let (ip, prefix) = split_cidr(s)?;
    let ip: Ipv4Addr = match ip.parse() {
        Ok(ip) => ip,
        Err(_) if ip.parse::<Ipv6Addr>().is_ok() => return Err("invalid IPv4 CIDR format".into()),
        Err(_) => return Err(format!("invalid CIDR address: {s}")),
    };
    if prefix > 32 {
        return Err(format!("invalid CIDR address: {s}"));
    }
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Ipv4Network::new(Ipv4Addr::from(u32::from(ip) & mask), prefix as u8)
        .map_err(|_| format!("invalid CIDR address: {s}"))
}

/// The IPv6 counterpart of [`parse_cidr_v4`].
pub fn parse_cidr_v6(s: &str) -> Result<Ipv6Network, String> {
    let (ip, prefix) = split_cidr(s)?;
    let ip: Ipv6Addr = match ip.parse() {
        Ok(ip) => ip,
        Err(_) if ip.parse::<Ipv4Addr>().is_ok() => return Err("invalid IPv6 CIDR format".into()),
        Err(_) => return Err(format!("invalid CIDR address: {s}")),
    };
    if prefix > 128 {
        return Err(format!("invalid CIDR address: {s}"));
    }
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    Ipv6Network::new(Ipv6Addr::from(u128::from(ip) & mask), prefix as u8)
        .map_err(|_| format!("invalid CIDR address: {s}"))
}

fn split_cidr(s: &str) -> Result<(&str, u32), String> {
    let bad = || format!("invalid CIDR address: {s}");
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok((ip, prefix.parse().map_err(|_| bad())?))
}

fn backend_type(backend: Option<&Value>) -> Result<String, ConfigError> {
    match backend {
        // upstream's default when the config names no backend
        None => Ok(crate::BackendKind::Udp.name().to_string()),
        Some(Value::Null) => Ok(String::new()),
        Some(Value::Object(obj)) => match gojson::fields(obj, &["Type"]).get("Type") {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(t)) => Ok(t.clone()),
            Some(other) => Err(ConfigError::Backend(format!(
                "json: cannot unmarshal {} into Go struct field .Type of type string",
                gojson::kind(other)
            ))),
        },
        Some(other) => Err(ConfigError::Backend(format!(
            "json: cannot unmarshal {} into Go value of type struct {{ Type string }}",
            gojson::kind(other)
        ))),
    }
}

#[cfg(test)]
mod tests;
