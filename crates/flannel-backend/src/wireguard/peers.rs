//! A lease as a WireGuard peer of one device: its public key and port from `BackendData`
//! (IPv4) or `BackendV6Data` (IPv6), in v0.28's form `{"PublicKey":"…","Port":51820}` or
//! v0.20's `{"PublicKey":"…"}` (the port is then the device's own, as upstream reads it);
//! its allowed IPs are its subnets of the families the device carries, its endpoint its
//! public address of the family the mode picks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use flannel_net::{BackendData, BackendKind, Lease};
use ipnetwork::IpNetwork;
use serde_json::Value;

use super::config::{Mode, WireGuardConfig};
use super::key;
use crate::lease_check::{self, Skip};
use crate::netlink::wireguard::{Key, WgPeer};
use crate::netlink::Family;
use crate::side::Side;

/// What a lease's backend data says of its node's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerData {
    pub public_key: Key,
    /// Absent in v0.20's form.
    pub port: Option<u16>,
}

/// The JSON upstream writes: `{"PublicKey":"…","Port":51820}`.
pub fn data_value(public_key: &Key, port: u16) -> Value {
    serde_json::json!({"PublicKey": key::encode(public_key), "Port": port})
}

/// Reads `BackendData` / `BackendV6Data`.
pub fn parse_data(data: &BackendData) -> Result<PeerData, String> {
    let v = data.to_value();
    let text = v
        .get("PublicKey")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("backend data {data} has no PublicKey"))?;
    let public_key = key::parse(text).map_err(|e| format!("PublicKey {text:?}: {e}"))?;
    let port = match v.get("Port") {
        None | Some(Value::Null) => None,
        Some(p) => match p.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(0) => None,
            Some(n) => Some(n),
            None => return Err(format!("Port {p} is not a UDP port")),
        },
    };
    Ok(PeerData { public_key, port })
}

/// One device as the peers see it.
#[derive(Debug, Clone)]
pub struct DeviceView<'a> {
    /// The families it carries (one in separate mode).
    pub sides: &'a [Side],
    pub mode: Mode,
    /// Its listen port: the port of a peer whose lease names none.
    pub port: u16,
    /// This node's subnet and public address in each family it has.
    pub own: &'a [(Family, IpNetwork, IpAddr)],
    /// This node has an IPv4 / IPv6 address other nodes reach (upstream's `selectMode`).
    pub has_v4: bool,
    pub public_ipv6: Option<Ipv6Addr>,
}

/// RFC 1918 and unique local addresses (Go's `IP.IsPrivate`).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_private(),
        IpAddr::V6(ip) => (ip.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Upstream's `selectMode` for `auto`: IPv4 unless the peer has an IPv6 address and the
/// IPv4 side looks unusable while both IPv6 addresses are public.
fn select_mode(view: &DeviceView<'_>, ip4: Ipv4Addr, ip6: Option<Ipv6Addr>) -> Mode {
    let Some(ip6) = ip6 else { return Mode::Ipv4 };
    if !ip4.is_private() && view.has_v4 {
        return Mode::Ipv4;
    }
    match view.public_ipv6 {
        Some(own6) if !is_private(IpAddr::V6(ip6)) && !is_private(IpAddr::V6(own6)) => Mode::Ipv6,
        _ => Mode::Ipv4,
    }
}

/// The peer `lease` is on the device `view`, with the settings of `config`.
pub fn peer_for(
    view: &DeviceView<'_>,
    config: &WireGuardConfig,
    lease: &Lease,
) -> Result<WgPeer, Skip> {
    if !BackendKind::WireGuard.is(&lease.attrs.backend_type) {
        return Err(Skip::OtherType(lease.attrs.backend_type.clone()));
    }
    let mut allowed_ips = Vec::new();
    let mut data = None;
    for side in view.sides {
        let own = view
            .own
            .iter()
            .find(|(f, ..)| *f == side.family)
            .map(|(_, subnet, ip)| (*subnet, *ip));
        match lease_check::check(lease, side.family, side.network, own) {
            Ok(part) => allowed_ips.push(part.subnet),
            Err(Skip::NoPart) => continue,
            Err(skip) => return Err(skip),
        }
        let field = match side.family {
            Family::V4 => &lease.attrs.backend_data,
            Family::V6 => &lease.attrs.backend_v6_data,
        };
        if data.is_none() {
            if let Some(d) = field {
                data = Some(parse_data(d).map_err(Skip::Invalid)?);
            }
        }
    }
    if allowed_ips.is_empty() {
        return Err(Skip::NoPart);
    }
    let data = data.ok_or_else(|| Skip::Invalid("no backend data with a PublicKey".into()))?;
    let family = match view.mode {
        Mode::Separate => view.sides[0].family,
        Mode::Ipv4 => Family::V4,
        Mode::Ipv6 => Family::V6,
        Mode::Auto => match select_mode(view, lease.attrs.public_ip, lease.attrs.public_ipv6) {
            Mode::Ipv6 => Family::V6,
            _ => Family::V4,
        },
    };
    let ip = lease
        .attrs
        .public_ip_of(family)
        .filter(|ip| !ip.is_unspecified())
        .ok_or_else(|| Skip::Invalid(format!("no {family} public address to reach it at")))?;
    Ok(WgPeer {
        public_key: data.public_key,
        endpoint: Some(SocketAddr::new(ip, data.port.unwrap_or(view.port))),
        allowed_ips,
        keepalive: config.keepalive,
        preshared_key: config.psk,
    }
    .normalized())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_net::{Expiration, LeaseAttrs};

    const PK: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn lease(subnet: &str, ip: &str, data: Option<&str>) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: "wireguard".into(),
                backend_data: data
                    .map(|d| BackendData::from(serde_json::from_str::<Value>(d).unwrap())),
                backend_v6_data: None,
            },
            expiration: Expiration::Never,
        }
    }

    fn view<'a>(sides: &'a [Side], own: &'a [(Family, IpNetwork, IpAddr)]) -> DeviceView<'a> {
        DeviceView {
            sides,
            mode: Mode::Separate,
            port: 51820,
            own,
            has_v4: true,
            public_ipv6: None,
        }
    }

    #[test]
    fn both_forms_of_backend_data() {
        let sides = [Side {
            family: Family::V4,
            network: "10.5.0.0/16".parse().unwrap(),
            public_ip: "192.168.77.1".parse().unwrap(),
        }];
        let own = [(
            Family::V4,
            "10.5.1.0/24".parse().unwrap(),
            "192.168.77.1".parse().unwrap(),
        )];
        let v = view(&sides, &own);
        let cfg = WireGuardConfig {
            keepalive: 25,
            ..Default::default()
        };
        // v0.28: the port it names
        let new = format!(r#"{{"PublicKey":"{PK}","Port":51900}}"#);
        let p = peer_for(&v, &cfg, &lease("10.5.2.0/24", "192.168.77.2", Some(&new))).unwrap();
        assert_eq!(p.endpoint, Some("192.168.77.2:51900".parse().unwrap()));
        assert_eq!(
            p.allowed_ips,
            vec!["10.5.2.0/24".parse::<IpNetwork>().unwrap()]
        );
        assert_eq!(p.keepalive, 25);
        assert_eq!(key::encode(&p.public_key), PK);
        // v0.20: the device's own port
        let old = format!(r#"{{"PublicKey":"{PK}"}}"#);
        let p = peer_for(&v, &cfg, &lease("10.5.2.0/24", "192.168.77.2", Some(&old))).unwrap();
        assert_eq!(p.endpoint, Some("192.168.77.2:51820".parse().unwrap()));
        // own lease, other types, bad data
        assert_eq!(
            peer_for(&v, &cfg, &lease("10.5.1.0/24", "192.168.77.1", Some(&new))),
            Err(Skip::Own)
        );
        let mut vx = lease("10.5.3.0/24", "192.168.77.3", None);
        vx.attrs.backend_type = "vxlan".into();
        assert_eq!(
            peer_for(&v, &cfg, &vx),
            Err(Skip::OtherType("vxlan".into()))
        );
        for bad in [
            None,
            Some(r#"{"PublicKey":"abc"}"#),
            Some(r#"{"PublicKey":5}"#),
        ] {
            assert!(matches!(
                peer_for(&v, &cfg, &lease("10.5.3.0/24", "192.168.77.3", bad)),
                Err(Skip::Invalid(_))
            ));
        }
        assert_eq!(
            data_value(&key::parse(PK).unwrap(), 51820).to_string(),
            format!(r#"{{"PublicKey":"{PK}","Port":51820}}"#)
        );
    }

    #[test]
    fn auto_prefers_ipv4_unless_only_ipv6_is_public() {
        let sides = [];
        let own = [];
        let mut v = view(&sides, &own);
        v.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        let public6 = Some("2001:db8::2".parse().unwrap());
        assert_eq!(
            select_mode(&v, "10.0.0.2".parse().unwrap(), None),
            Mode::Ipv4
        );
        assert_eq!(
            select_mode(&v, "198.51.100.2".parse().unwrap(), public6),
            Mode::Ipv4
        );
        assert_eq!(
            select_mode(&v, "10.0.0.2".parse().unwrap(), public6),
            Mode::Ipv6
        );
        assert_eq!(
            select_mode(
                &v,
                "10.0.0.2".parse().unwrap(),
                Some("fd00::2".parse().unwrap())
            ),
            Mode::Ipv4
        );
    }
}
