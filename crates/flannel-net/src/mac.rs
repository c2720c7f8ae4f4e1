//! A 48-bit MAC address, as flannel stores the VTEP MAC in leases (`"VtepMAC":"0a:58:0a:f4:01:00"`).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address: {0:?}")]
pub struct MacParseError(pub String);

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Locally administered and unicast, as upstream makes its random VTEP MACs.
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0x03 == 0x02
    }

    /// Turns any 6 bytes into a locally administered unicast MAC (upstream `NewHardwareAddr`).
    pub fn local_unicast(mut bytes: [u8; 6]) -> Self {
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        MacAddr(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, any case (as Go's `net.ParseMAC`
    /// does for 48-bit addresses).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_lowercase_colon_form() {
        let mac: MacAddr = "26:7D:01:e9:5a:86".parse().unwrap();
        assert_eq!(mac.to_string(), "26:7d:01:e9:5a:86");
        assert_eq!("26-7d-01-e9-5a-86".parse::<MacAddr>().unwrap(), mac);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "26:7d:01:e9:5a",
            "26:7d:01:e9:5a:86:00",
            "2:7d:01:e9:5a:86",
            "zz:7d:01:e9:5a:86",
            "+1:7d:01:e9:5a:86",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn local_unicast_sets_the_bits() {
        let mac = MacAddr::local_unicast([0xff, 1, 2, 3, 4, 5]);
        assert_eq!(mac.0[0], 0xfe);
        assert!(mac.is_local_unicast());
    }
}
