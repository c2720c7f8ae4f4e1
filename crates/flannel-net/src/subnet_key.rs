//! Subnet keys: the last element of `<prefix>/subnets/<key>`, e.g. `10.5.34.0-24` or, for a
//! dual-stack lease, `10.5.34.0-24&fd00:12:13::-56` (upstream `MakeSubnetKey`/`ParseSubnetKey`).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{Ipv4Network, Ipv6Network};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    pub ipv4: Ipv4Network,
    pub ipv6: Option<Ipv6Network>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a subnet key: {key:?} ({reason})")]
pub struct SubnetKeyError {
    pub key: String,
    pub reason: &'static str,
}

impl SubnetKey {
    pub fn new(ipv4: Ipv4Network) -> Self {
        SubnetKey { ipv4, ipv6: None }
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ipv4.ip(), self.ipv4.prefix())?;
        if let Some(v6) = self.ipv6 {
            write!(f, "&{}-{}", v6.ip(), v6.prefix())?;
        }
        Ok(())
    }
}

impl FromStr for SubnetKey {
    type Err = SubnetKeyError;

    /// Strict: the whole text must be a key, the address must be the network address of its
    /// prefix. Upstream's regex is looser, but every flanneld writes keys in this form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| SubnetKeyError {
            key: s.to_string(),
            reason,
        };
        let (v4, v6) = match s.split_once('&') {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (s, None),
        };
        let (ip, len) = v4
            .rsplit_once('-')
            .ok_or_else(|| err("no '-' before the prefix length"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err("not an IPv4 address"))?;
        let len = prefix_len(len, 32).ok_or_else(|| err("IPv4 prefix length is not 0-32"))?;
        let ipv4 = Ipv4Network::new(ip, len).map_err(|_| err("IPv4 prefix length is not 0-32"))?;
        if ipv4.network() != ip {
            return Err(err("IPv4 address has host bits set"));
        }
        let ipv6 = match v6 {
            None => None,
            Some(v6) => {
                let (ip, len) = v6
                    .rsplit_once('-')
                    .ok_or_else(|| err("no '-' before the IPv6 prefix length"))?;
                let ip: Ipv6Addr = ip.parse().map_err(|_| err("not an IPv6 address"))?;
                let len =
                    prefix_len(len, 128).ok_or_else(|| err("IPv6 prefix length is not 0-128"))?;
                let net = Ipv6Network::new(ip, len)
                    .map_err(|_| err("IPv6 prefix length is not 0-128"))?;
                if net.network() != ip {
                    return Err(err("IPv6 address has host bits set"));
                }
                Some(net)
            }
        };
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

fn prefix_len(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u8>().ok().filter(|&l| l <= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_like_upstream() {
        let k = SubnetKey::new("10.5.34.0/24".parse().unwrap());
        assert_eq!(k.to_string(), "10.5.34.0-24");
        let k = SubnetKey {
            ipv4: "10.12.13.0/24".parse().unwrap(),
            ipv6: Some("fd00:12:13::/56".parse().unwrap()),
        };
        assert_eq!(k.to_string(), "10.12.13.0-24&fd00:12:13::-56");
    }

    #[test]
    fn parses_upstream_keys() {
        let k: SubnetKey = "10.200.90.0-24".parse().unwrap();
        assert_eq!(k.ipv4, "10.200.90.0/24".parse().unwrap());
        assert_eq!(k.ipv6, None);
        let k: SubnetKey = "10.12.13.0-24&fd00:12:13::-56".parse().unwrap();
        assert_eq!(k.ipv6, Some("fd00:12:13::/56".parse().unwrap()));
    }

    #[test]
    fn bad_keys_are_reported() {
        for bad in [
            "",
            "config",
            "10.5.34.0",
            "10.5.34.0-",
            "10.5.34.0-33",
            "10.5.34.0-+4",
            "10.5.34.1-24",
            "10.5.34-24",
            "10.5.34.0-24&",
            "10.5.34.0-24&fd00::",
            "10.5.34.0-24&fd00::-129",
            "10.5.34.0-24&fd00::1-64",
            "x10.5.34.0-24",
            "10.5.34.0-24x",
            "256.1.1.0-24",
        ] {
            let e = bad.parse::<SubnetKey>().unwrap_err();
            assert_eq!(e.key, bad);
        }
    }

    proptest! {
        #[test]
        fn round_trips(ip in any::<u32>(), len in 0u8..=32, ip6 in any::<u128>(), len6 in 0u8..=128, dual in any::<bool>()) {
            let v4 = Ipv4Network::new(Ipv4Addr::from(ip), len).unwrap();
            let v4 = Ipv4Network::new(v4.network(), len).unwrap();
            let v6 = Ipv6Network::new(Ipv6Addr::from(ip6), len6).unwrap();
            let v6 = Ipv6Network::new(v6.network(), len6).unwrap();
            let key = SubnetKey { ipv4: v4, ipv6: dual.then_some(v6) };
            prop_assert_eq!(key.to_string().parse::<SubnetKey>().unwrap(), key);
        }

        #[test]
        fn random_text_never_panics(s in ".{0,64}") {
            let _ = s.parse::<SubnetKey>();
        }
    }
}
