//! subnet.env, the file the CNI plugin reads (upstream `WriteSubnetFile`):
//!
//! ```text
//! FLANNEL_NETWORK=10.5.0.0/16
//! FLANNEL_SUBNET=10.5.72.1/24
//! FLANNEL_IPV6_NETWORK=2001:cafe:42::/56
//! FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! Keys in this order, the IPv4 pair only for IPv4, the IPv6 pair only for IPv6, LF endings,
//! a final newline. The subnets are written as their first usable address (`.1`). The file is
//! replaced atomically so the CNI plugin never reads half of it.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::config::{parse_cidr_v4, parse_cidr_v6};

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("failed to read subnet file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to write subnet file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The contents of subnet.env. `subnet` and `ipv6_subnet` are the lease subnets in network
/// form (`10.5.72.0/24`); the file holds them as `10.5.72.1/24`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubnetEnv {
    pub network: Option<Ipv4Network>,
    pub subnet: Option<Ipv4Network>,
    pub ipv6_network: Option<Ipv6Network>,
    pub ipv6_subnet: Option<Ipv6Network>,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl fmt::Display for SubnetEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(network), Some(subnet)) = (self.network, self.subnet) {
            let first = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
            writeln!(f, "FLANNEL_NETWORK={network}")?;
            writeln!(f, "FLANNEL_SUBNET={first}/{}", subnet.prefix())?;
        }
        if let (Some(network), Some(subnet)) = (self.ipv6_network, self.ipv6_subnet) {
            let first = Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(1));
            writeln!(f, "FLANNEL_IPV6_NETWORK={network}")?;
            writeln!(f, "FLANNEL_IPV6_SUBNET={first}/{}", subnet.prefix())?;
        }
        writeln!(f, "FLANNEL_MTU={}", self.mtu)?;
        writeln!(f, "FLANNEL_IPMASQ={}", self.ip_masq)
    }
}

impl SubnetEnv {
    /// Parses a subnet.env (dotenv syntax: `KEY=VALUE`, optional `export `, quotes and
    /// comments). Values that do not parse are left out and described in the returned
    /// warnings: a broken previous file must never stop a node.
    pub fn parse(text: &str) -> (SubnetEnv, Vec<String>) {
        let mut env = SubnetEnv::default();
        let mut warnings = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                warnings.push(format!("line {}: no '=' in {line:?}", n + 1));
                continue;
            };
            let value = unquote(value.trim());
            let mut bad = |what: &str| {
                warnings.push(format!(
                    "line {}: {} is not {what}: {value:?}",
                    n + 1,
                    key.trim()
                ))
            };
            match key.trim() {
                "FLANNEL_NETWORK" => match first_cidr(value, parse_cidr_v4) {
                    Some(v) => env.network = Some(v),
                    None => bad("an IPv4 CIDR"),
                },
                "FLANNEL_SUBNET" => match parse_cidr_v4(value) {
                    Ok(v) => env.subnet = Some(v),
                    Err(_) => bad("an IPv4 CIDR"),
                },
                "FLANNEL_IPV6_NETWORK" => match first_cidr(value, parse_cidr_v6) {
                    Some(v) => env.ipv6_network = Some(v),
                    None => bad("an IPv6 CIDR"),
                },
                "FLANNEL_IPV6_SUBNET" => match parse_cidr_v6(value) {
                    Ok(v) => env.ipv6_subnet = Some(v),
                    Err(_) => bad("an IPv6 CIDR"),
                },
                "FLANNEL_MTU" => match value.parse() {
                    Ok(v) => env.mtu = v,
                    Err(_) => bad("a number"),
                },
                "FLANNEL_IPMASQ" => env.ip_masq = value == "true",
                _ => {}
            }
        }
        (env, warnings)
    }

    /// Reads the file at `path`; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<(SubnetEnv, Vec<String>)>, SubnetEnvError> {
        match fs::read(path) {
            Ok(bytes) => Ok(Some(Self::parse(&String::from_utf8_lossy(&bytes)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SubnetEnvError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the file atomically with mode 0644, creating its directory (0755) if needed.
    pub fn write(&self, path: &Path) -> Result<(), SubnetEnvError> {
        write_atomic(path, self.to_string().as_bytes(), 0o644).map_err(|source| {
            SubnetEnvError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }
}

/// FLANNEL_NETWORK may be a comma-separated list (v0.21-v0.22); the first valid entry counts.
fn first_cidr<T>(value: &str, parse: fn(&str) -> Result<T, String>) -> Option<T> {
    value.split(',').map(str::trim).find_map(|v| parse(v).ok())
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// Replaces `path` with `contents`: a temporary file in the same directory, fsync, the mode
/// set explicitly (the umask does not apply), rename over the target, fsync of the directory.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SubnetEnv {
        SubnetEnv {
            network: Some("10.200.0.0/16".parse().unwrap()),
            subnet: Some("10.200.90.0/24".parse().unwrap()),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ip_masq: true,
        }
    }

    #[test]
    fn formats_exactly_like_upstream() {
        // ../shared/reference/v0.20.2-etcdv3/h1-subnet.env
        assert_eq!(
            sample().to_string(),
            "FLANNEL_NETWORK=10.200.0.0/16\nFLANNEL_SUBNET=10.200.90.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn dual_stack_key_order() {
        let mut env = sample();
        env.ipv6_network = Some("2001:cafe:42::/56".parse().unwrap());
        env.ipv6_subnet = Some("2001:cafe:42::/64".parse().unwrap());
        env.ip_masq = false;
        assert_eq!(
            env.to_string(),
            "FLANNEL_NETWORK=10.200.0.0/16\nFLANNEL_SUBNET=10.200.90.1/24\n\
             FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn parse_masks_the_subnet_back_to_the_lease() {
        let (env, warnings) = SubnetEnv::parse(&sample().to_string());
        assert!(warnings.is_empty());
        assert_eq!(env, sample());
    }

    #[test]
    fn parse_tolerates_dotenv_syntax_and_reports_garbage() {
        let text = "# comment\nexport FLANNEL_NETWORK=\"10.1.0.0/16,10.2.0.0/16\"\nFLANNEL_SUBNET=nonsense\nFLANNEL_MTU=abc\njunk\nFLANNEL_IPMASQ=true\n";
        let (env, warnings) = SubnetEnv::parse(text);
        assert_eq!(env.network, Some("10.1.0.0/16".parse().unwrap()));
        assert_eq!(env.subnet, None);
        assert_eq!(env.mtu, 0);
        assert!(env.ip_masq);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("FLANNEL_SUBNET"));
    }

    #[test]
    fn writes_atomically_with_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        sample().write(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), sample().to_string());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o755);
        // a second write replaces the file, leaving no temporary behind
        let mut other = sample();
        other.mtu = 1400;
        other.write(&path).unwrap();
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains("FLANNEL_MTU=1400"));
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("subnet.env")]);
        let (read, _) = SubnetEnv::read(&path).unwrap().unwrap();
        assert_eq!(read, other);
    }

    #[test]
    fn read_of_missing_file_is_none_and_unwritable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SubnetEnv::read(&dir.path().join("absent"))
            .unwrap()
            .is_none());
        let file = dir.path().join("plain");
        fs::write(&file, "x").unwrap();
        // a file where the directory should be
        let err = sample().write(&file.join("subnet.env")).unwrap_err();
        assert!(
            err.to_string().contains("failed to write subnet file"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn round_trips(net in any::<u32>(), len in 8u8..=16, sub in any::<u32>(), sublen in 17u8..=30,
                       v6 in proptest::option::of((any::<u128>(), 16u8..=56, any::<u128>(), 64u8..=126)),
                       mtu in any::<u32>(), masq in any::<bool>()) {
            let network = Ipv4Network::new(Ipv4Addr::from(net), len).unwrap();
            let subnet = Ipv4Network::new(Ipv4Addr::from(sub), sublen).unwrap();
            let mut env = SubnetEnv {
                network: Some(Ipv4Network::new(network.network(), len).unwrap()),
                subnet: Some(Ipv4Network::new(subnet.network(), sublen).unwrap()),
                ipv6_network: None, ipv6_subnet: None, mtu, ip_masq: masq,
            };
            if let Some((n6, l6, s6, sl6)) = v6 {
                let n = Ipv6Network::new(Ipv6Addr::from(n6), l6).unwrap();
                let s = Ipv6Network::new(Ipv6Addr::from(s6), sl6).unwrap();
                env.ipv6_network = Some(Ipv6Network::new(n.network(), l6).unwrap());
                env.ipv6_subnet = Some(Ipv6Network::new(s.network(), sl6).unwrap());
            }
            let (back, warnings) = SubnetEnv::parse(&env.to_string());
            prop_assert!(warnings.is_empty());
            prop_assert_eq!(back, env);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SubnetEnv::parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
