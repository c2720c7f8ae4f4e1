//! The `Backend` object of the network config, for `"Type": "vxlan"` (upstream `VXLANConfig`).

use serde_json::Value;

use crate::netlink::Family;
use crate::BackendError;

/// The smallest `MTU` that leaves IPv4's minimum (68) after an IPv4 encapsulation.
const MIN_MTU: u64 = 50 + 68;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// Default 1.
    pub vni: u32,
    /// 0: the kernel's default, 8472.
    pub port: u16,
    /// The underlay MTU to plan for; `None`: the external interface's MTU.
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            vni: 1,
            port: 0,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false,
        }
    }
}

/// What VXLAN adds to each packet over an underlay of `family`: outer Ethernet 14, IP (20
/// for IPv4, 40 for IPv6), UDP 8, VXLAN 8.
pub fn encap_overhead(family: Family) -> u32 {
    match family {
        Family::V4 => 50,
        Family::V6 => 70,
    }
}

fn config_error(message: String) -> BackendError {
    BackendError::Config {
        backend: "VXLAN",
        message,
    }
}

impl VxlanConfig {
    /// Reads the `Backend` object; keys case-insensitive, unknown keys (`Type`, ...) ignored.
    pub fn from_backend(backend: Option<&Value>) -> Result<Self, BackendError> {
        let mut cfg = VxlanConfig::default();
        let obj = match backend {
            None | Some(Value::Null) => return Ok(cfg),
            Some(Value::Object(obj)) => obj,
            Some(other) => return Err(config_error(format!("expected an object, got {other}"))),
        };
        let bad = |key: &str, want: &str, v: &Value| {
            config_error(format!("{key}: expected {want}, got {v}"))
        };
        for (key, v) in obj {
            match key.to_ascii_lowercase().as_str() {
                "vni" => {
                    // 0 is a VNI too: upstream makes flannel.0 for it
                    cfg.vni = v
                        .as_u64()
                        .filter(|n| *n <= 0xff_ffff)
                        .ok_or_else(|| bad("VNI", "a number from 0 to 16777215", v))?
                        as u32
                }
                "port" => {
                    cfg.port = v
                        .as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .ok_or_else(|| bad("Port", "a UDP port (0-65535)", v))?
                }
                "mtu" => {
                    let mtu = v
                        .as_u64()
                        .filter(|n| *n == 0 || (MIN_MTU..=65535).contains(n))
                        .ok_or_else(|| bad("MTU", "0 or a number from 118 to 65535", v))?;
                    cfg.mtu = (mtu != 0).then_some(mtu as u32);
                }
                "gbp" => cfg.gbp = v.as_bool().ok_or_else(|| bad("GBP", "true or false", v))?,
                "learning" => {
                    cfg.learning = v
                        .as_bool()
                        .ok_or_else(|| bad("Learning", "true or false", v))?
                }
                "directrouting" => {
                    cfg.direct_routing = v
                        .as_bool()
                        .ok_or_else(|| bad("DirectRouting", "true or false", v))?
                }
                _ => {}
            }
        }
        // the kernel's IFNAMSIZ: 15 characters and the NUL
        let name = cfg.device_name();
        if name.len() > 15 {
            return Err(config_error(format!(
                "VNI {}: the device name {name} would be longer than the 15 characters an interface name may have; use a VNI below 10000000",
                cfg.vni
            )));
        }
        Ok(cfg)
    }

    /// `flannel.<VNI>`
    pub fn device_name(&self) -> String {
        format!("flannel.{}", self.vni)
    }

    /// `flannel-v6.<VNI>`, the device of the IPv6 side (upstream's name).
    pub fn device_name_v6(&self) -> String {
        format!("flannel-v6.{}", self.vni)
    }

    /// The device of `family`'s side.
    pub fn device_name_of(&self, family: Family) -> String {
        match family {
            Family::V4 => self.device_name(),
            Family::V6 => self.device_name_v6(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VxlanConfig, BackendError> {
        let v: Value = serde_json::from_str(json).unwrap();
        VxlanConfig::from_backend(Some(&v))
    }

    #[test]
    fn defaults() {
        let c = parse(r#"{"Type":"vxlan"}"#).unwrap();
        assert_eq!(c, VxlanConfig::default());
        assert_eq!(c.device_name(), "flannel.1");
        assert_eq!(
            VxlanConfig::from_backend(None).unwrap(),
            VxlanConfig::default()
        );
    }

    #[test]
    fn all_fields_any_case() {
        let c = parse(r#"{"type":"vxlan","vni":4096,"PORT":4789,"Mtu":9000,"gbp":true,"LEARNING":true,"directRouting":true}"#)
            .unwrap();
        assert_eq!(
            c,
            VxlanConfig {
                vni: 4096,
                port: 4789,
                mtu: Some(9000),
                gbp: true,
                learning: true,
                direct_routing: true
            }
        );
        assert_eq!(c.device_name(), "flannel.4096");
    }

    #[test]
    fn vni_0_is_a_vni_and_names_longer_than_the_kernel_allows_are_refused() {
        let c = parse(r#"{"VNI":0}"#).unwrap();
        assert_eq!((c.vni, c.device_name()), (0, "flannel.0".to_string()));
        assert_eq!(
            parse(r#"{"VNI":9999999}"#).unwrap().device_name(),
            "flannel.9999999"
        );
        let e = parse(r#"{"VNI":10000000}"#).unwrap_err().to_string();
        assert!(
            e.contains("the device name flannel.10000000 would be longer than the 15 characters"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (json, field) in [
            (r#"{"VNI":"1"}"#, "VNI"),
            (r#"{"VNI":-1}"#, "VNI"),
            (r#"{"VNI":16777216}"#, "VNI"),
            (r#"{"Port":70000}"#, "Port"),
            (r#"{"Port":-1}"#, "Port"),
            (r#"{"MTU":50}"#, "MTU"),
            (r#"{"GBP":"yes"}"#, "GBP"),
            (r#"{"DirectRouting":1}"#, "DirectRouting"),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(
                e.starts_with("error decoding VXLAN backend config: "),
                "{e}"
            );
            assert!(e.contains(field), "{e}");
        }
    }
}
