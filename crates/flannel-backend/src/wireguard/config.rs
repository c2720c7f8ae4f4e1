//! The `Backend` object of the network config, for `"Type": "wireguard"` (upstream's
//! `RegisterNetwork` in `pkg/backend/wireguard/wireguard.go`): `ListenPort` (51820),
//! `ListenPortV6` (51821), `MTU` (the interface's), `PSK`, `PersistentKeepaliveInterval`
//! (seconds), `Mode` (`separate`, `auto`, `ipv4`, `ipv6`).

use serde_json::Value;

use super::key;
use crate::netlink::wireguard::Key;
use crate::BackendError;

/// What WireGuard adds to each packet (upstream's `overhead`: an IPv6 header 40, UDP 8,
/// type 4, key index 4, nonce 8, tag 16): the device's MTU and FLANNEL_MTU are the
/// underlay's less this.
pub const OVERHEAD: u32 = 80;

/// The smallest `MTU` that leaves IPv4's minimum (68) inside the tunnel.
const MIN_MTU: u64 = OVERHEAD as u64 + 68;

/// How the address families map to devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One device per family: `flannel-wg` (IPv4) and `flannel-wg-v6` (IPv6), each peer
    /// reached over its own family.
    Separate,
    /// One device, `flannel-wg`, carrying both families; each peer reached over the family
    /// upstream's `selectMode` picks.
    Auto,
    /// One device; peers reached over IPv4.
    Ipv4,
    /// One device; peers reached over IPv6.
    Ipv6,
}

impl Mode {
    /// Upstream's spelling (compared exactly, as upstream does).
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "separate" => Mode::Separate,
            "auto" => Mode::Auto,
            "ipv4" => Mode::Ipv4,
            "ipv6" => Mode::Ipv6,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuardConfig {
    pub listen_port: u16,
    pub listen_port_v6: u16,
    /// The underlay MTU to plan for; `None`: the external interface's.
    pub mtu: Option<u32>,
    pub psk: Option<Key>,
    /// Seconds; 0: off.
    pub keepalive: u16,
    pub mode: Mode,
}

impl Default for WireGuardConfig {
    fn default() -> Self {
        WireGuardConfig {
            listen_port: 51820,
            listen_port_v6: 51821,
            mtu: None,
            psk: None,
            keepalive: 0,
            mode: Mode::Separate,
        }
    }
}

fn config_error(message: String) -> BackendError {
    BackendError::Config {
        backend: "WireGuard",
        message,
    }
}

impl WireGuardConfig {
    /// Reads the `Backend` object; keys case-insensitive as Go's decoder, unknown keys
    /// (`Type`, ...) ignored.
    pub fn from_backend(backend: Option<&Value>) -> Result<Self, BackendError> {
        let mut cfg = WireGuardConfig::default();
        let obj = match backend {
            None | Some(Value::Null) => return Ok(cfg),
            Some(Value::Object(obj)) => obj,
            Some(other) => return Err(config_error(format!("expected an object, got {other}"))),
        };
        let bad = |key: &str, want: &str, v: &Value| {
            config_error(format!("{key}: expected {want}, got {v}"))
        };
        let port = |key: &str, v: &Value| {
            v.as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(key, "a UDP port (1-65535)", v))
        };
        for (key, v) in obj {
            match key.to_ascii_lowercase().as_str() {
                "listenport" => cfg.listen_port = port("ListenPort", v)?,
                "listenportv6" => cfg.listen_port_v6 = port("ListenPortV6", v)?,
                "mtu" => {
                    let mtu = v
                        .as_u64()
                        .filter(|n| *n == 0 || (MIN_MTU..=65535).contains(n))
                        .ok_or_else(|| bad("MTU", "0 or a number from 148 to 65535", v))?;
                    cfg.mtu = (mtu != 0).then_some(mtu as u32);
                }
                "psk" => {
                    let text = v
                        .as_str()
                        .ok_or_else(|| bad("PSK", "a key in base64 (wg genpsk)", v))?;
                    if !text.is_empty() {
                        cfg.psk = Some(key::parse(text).map_err(|e| {
                            config_error(format!("could not parse psk: {e}"))
                        })?);
                    }
                }
                "persistentkeepaliveinterval" => {
                    cfg.keepalive = v
                        .as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .ok_or_else(|| {
                            bad(
                                "PersistentKeepaliveInterval",
                                "seconds, from 0 (off) to 65535",
                                v,
                            )
                        })?
                }
                "mode" => {
                    cfg.mode = v.as_str().and_then(Mode::parse).ok_or_else(|| {
                        config_error(format!(
                            "no valid Mode configured: {v} (one of \"separate\", \"auto\", \"ipv4\", \"ipv6\")"
                        ))
                    })?
                }
                _ => {}
            }
        }
        Ok(cfg)
    }

    /// The MTU of the devices and of pods (FLANNEL_MTU) over an underlay of `ext_mtu`.
    pub fn inner_mtu(&self, ext_mtu: u32) -> u32 {
        self.mtu.unwrap_or(ext_mtu).saturating_sub(OVERHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upstream_defaults_and_every_key() {
        assert_eq!(
            WireGuardConfig::from_backend(Some(&json!({"Type": "wireguard"}))).unwrap(),
            WireGuardConfig::default()
        );
        let psk = "oHW1ONvVS3P4r1YY/+9CmVoYNXu7XYPi2G+8QIyFsy4=";
        let c = WireGuardConfig::from_backend(Some(&json!({
            "Type": "wireguard", "ListenPort": 51000, "listenPortV6": 51001, "MTU": 1400,
            "PSK": psk, "PersistentKeepaliveInterval": 25, "Mode": "auto"
        })))
        .unwrap();
        assert_eq!(c.listen_port, 51000);
        assert_eq!(c.listen_port_v6, 51001);
        assert_eq!(c.inner_mtu(1500), 1320);
        assert_eq!(c.keepalive, 25);
        assert_eq!(c.mode, Mode::Auto);
        assert_eq!(c.psk, Some(key::parse(psk).unwrap()));
        assert_eq!(WireGuardConfig::default().inner_mtu(1500), 1420);
    }

    #[test]
    fn wrong_values_are_refused_with_the_key_named() {
        for (backend, words) in [
            (json!({"ListenPort": 0}), "ListenPort"),
            (json!({"ListenPort": 70000}), "ListenPort"),
            (json!({"ListenPortV6": "x"}), "ListenPortV6"),
            (json!({"MTU": 100}), "MTU"),
            (json!({"PSK": "short"}), "could not parse psk"),
            (json!({"PSK": 5}), "PSK"),
            (
                json!({"PersistentKeepaliveInterval": -1}),
                "PersistentKeepaliveInterval",
            ),
            (json!({"Mode": "Separate"}), "no valid Mode configured"),
            (json!([]), "expected an object"),
        ] {
            let e = WireGuardConfig::from_backend(Some(&backend))
                .unwrap_err()
                .to_string();
            assert!(e.contains(words), "{backend}: {e}");
            assert!(
                e.starts_with("error decoding WireGuard backend config"),
                "{e}"
            );
        }
    }
}
