//! `flanneld-rs docker-opts`: upstream's `mk-docker-opts.sh` (shipped in its image; Docker
//! hosts of the etcd era run it before dockerd). It reads subnet.env and writes the Docker
//! options file with the same flags and the same bytes:
//!
//! ```text
//! DOCKER_OPT_BIP="--bip=10.1.74.1/24"
//! DOCKER_OPT_IPMASQ="--ip-masq=false"
//! DOCKER_OPT_MTU="--mtu=1450"
//! DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450"
//! ```
//! Options `-f FILE` (subnet.env), `-d FILE` (the Docker file), `-i` (individual variables),
//! `-c` (the combined variable), `-k KEY` (its name), `-m` (no `--ip-masq`); neither `-i`
//! nor `-c` means both. The combined value starts with the environment's value of KEY, and
//! `DOCKER_OPT_*` variables of the environment are written too, as the script's `set | grep`
//! does. Where the script writes a useless file, this stops with exit 1 and says why: no
//! subnet.env (the script writes `DOCKER_OPTS=""`), one without FLANNEL_SUBNET or
//! FLANNEL_MTU (Docker would start on its default bridge). As the script, it refuses
//! a FLANNEL_IPMASQ other than true/false and a subnet the routing table already routes via
//! a gateway.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use flannel_netlink::{Family, Netlink};
use ipnetwork::{IpNetwork, Ipv4Network};

/// The script's usage text (its `$0` is the program here).
fn usage(program: &str) -> String {
    format!(
        "{program} docker-opts [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)
"
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    pub flannel_env: PathBuf,
    pub docker_env: PathBuf,
    pub key: String,
    pub individual: bool,
    pub combined: bool,
    pub ip_masq: bool,
}

/// The script's `getopts "f:d:icmk:?h"`: flags may be grouped (`-ic`), a value may follow
/// its flag directly (`-f/x`) or as the next word; parsing stops at `--` or a non-option.
/// `Err` carries the message for stderr (exit 1, as the script).
pub fn parse(program: &str, args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        flannel_env: "/run/flannel/subnet.env".into(),
        docker_env: "/run/docker_opts.env".into(),
        key: "DOCKER_OPTS".into(),
        individual: false,
        combined: false,
        ip_masq: true,
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            break;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            break;
        };
        for (k, flag) in flags.char_indices() {
            match flag {
                'i' => o.individual = true,
                'c' => o.combined = true,
                'm' => o.ip_masq = false,
                'f' | 'd' | 'k' => {
                    let rest = &flags[k + 1..];
                    let value = if rest.is_empty() {
                        i += 1;
                        args.get(i).cloned().ok_or_else(|| {
                            format!("No arg for -{flag} option\n{}", usage(program))
                        })?
                    } else {
                        rest.to_string()
                    };
                    match flag {
                        'f' => o.flannel_env = value.into(),
                        'd' => o.docker_env = value.into(),
                        _ => o.key = value,
                    }
                    break;
                }
                'h' | '?' => return Err(usage(program)),
                other => return Err(format!("Illegal option -{other}\n{}", usage(program))),
            }
        }
        i += 1;
    }
    if !o.individual && !o.combined {
        o.individual = true;
        o.combined = true;
    }
    Ok(o)
}

/// `KEY=VALUE` lines of a sourced env file, quotes removed (what `. $flannel_env` sets).
fn read_env(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            vars.insert(k.trim().to_string(), v.to_string());
        }
    }
    vars
}

/// The Docker env file's text for subnet.env's variables `env` and the caller's environment
/// `environ` (the combined key's value, `DOCKER_OPT_*`, from either; subnet.env's win, as
/// the script sources it), as the script writes it.
pub fn render(
    o: &Opts,
    env: &BTreeMap<String, String>,
    environ: &BTreeMap<String, String>,
) -> Result<String, String> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty());
    // the script sources subnet.env into its environment: what the file sets wins
    let mut vars = environ.clone();
    vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // `set | grep DOCKER_OPT_` lists them sorted by name, the environment's and the file's
    let mut opts: BTreeMap<String, String> = vars
        .iter()
        .filter(|(k, _)| k.contains("DOCKER_OPT_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(subnet) = get("FLANNEL_SUBNET") {
        opts.insert("DOCKER_OPT_BIP".into(), format!("--bip={subnet}"));
    }
    if let Some(mtu) = get("FLANNEL_MTU") {
        opts.insert("DOCKER_OPT_MTU".into(), format!("--mtu={mtu}"));
    }
    if let (Some(masq), true) = (get("FLANNEL_IPMASQ"), o.ip_masq) {
        let docker = match masq.as_str() {
            "true" => "false",
            "false" => "true",
            other => return Err(format!("Invalid value of FLANNEL_IPMASQ: {other}")),
        };
        opts.insert("DOCKER_OPT_IPMASQ".into(), format!("--ip-masq={docker}"));
    }
    let mut combined = vars.get(&o.key).cloned().unwrap_or_default();
    if !combined.is_empty() {
        combined.push(' ');
    }
    let mut out = String::new();
    for (name, value) in &opts {
        if o.individual {
            out += &format!("{name}=\"{value}\"\n");
        }
        combined += &format!(" {value}");
    }
    if o.combined {
        out += &format!("{}=\"{combined}\"\n", o.key);
    }
    Ok(out)
}

/// FLANNEL_SUBNET (`10.1.74.1/24`) as its network (`10.1.74.0/24`), as the script computes it.
fn subnet_network(first: &str) -> Option<Ipv4Network> {
    let (ip, len) = first.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    Ipv4Network::new(
        Ipv4Addr::from(u32::from(ip).wrapping_sub(1)),
        len.parse().ok()?,
    )
    .ok()
}

/// The script's last check: a route to the node's subnet via a gateway means another
/// network already claims it.
async fn routed_via_gateway(subnet: Ipv4Network) -> anyhow::Result<Option<String>> {
    let nl = Netlink::connect().context("opening netlink")?;
    let dst = IpNetwork::V4(subnet);
    let links = nl.links().await.unwrap_or_default();
    for r in nl.routes(Family::V4).await? {
        if r.dst == dst {
            if let Some(gw) = r.gateway {
                let dev = r
                    .oif
                    .and_then(|i| links.iter().find(|l| l.index == i))
                    .map(|l| format!(" dev {}", l.name))
                    .unwrap_or_default();
                return Ok(Some(format!("{dst} via {gw}{dev}")));
            }
        }
    }
    Ok(None)
}

/// Runs the subcommand; the exit status (1 for every failure, as the script).
pub async fn run(program: &str, args: &[String]) -> anyhow::Result<u8> {
    let o = match parse(program, args) {
        Ok(o) => o,
        Err(text) => {
            errln!("{text}");
            return Ok(1);
        }
    };
    let text = std::fs::read_to_string(&o.flannel_env).map_err(|e| {
        anyhow!(
            "cannot read {}: {e}; flanneld writes it once this node has its subnet lease (is flanneld running, and is -f the path of its -subnet-file?)",
            o.flannel_env.display()
        )
    })?;
    let env = read_env(&text);
    let missing: Vec<&str> = ["FLANNEL_SUBNET", "FLANNEL_MTU"]
        .into_iter()
        .filter(|k| env.get(*k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        let why = if env.contains_key("FLANNEL_IPV6_SUBNET") {
            " (an IPv6-only network: Docker's --bip takes an IPv4 subnet)"
        } else {
            ""
        };
        bail!(
            "{} has no {}{why}: Docker would start on its default bridge, outside the flannel network",
            o.flannel_env.display(),
            missing.join(" and ")
        );
    }
    let environ: BTreeMap<String, String> = std::env::vars().collect();
    let out = render(&o, &env, &environ).map_err(|e| anyhow!(e))?;
    flannel_net::subnet_env::write_atomic(&o.docker_env, out.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", o.docker_env.display()))?;
    if let Some(subnet) = env.get("FLANNEL_SUBNET").and_then(|s| subnet_network(s)) {
        if let Some(route) = routed_via_gateway(subnet).await? {
            bail!("Your routing table already contains the subnet: {route}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &str) -> Vec<String> {
        a.split_whitespace().map(String::from).collect()
    }

    const ENV: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    /// DOCKER_OPTS and DOCKER_OPT_* set inside subnet.env, which the script sources: they
    /// count, and win over the environment's (upstream v0.20.2's script under dash wrote
    /// exactly this, with and without the environment's own values).
    #[test]
    fn docker_options_inside_subnet_env_count_as_the_script_sources_them() {
        let env = read_env(&format!(
            "{ENV}DOCKER_OPTS=\"--debug\"\nDOCKER_OPT_LOG=\"--log-level=warn\"\n"
        ));
        let want = "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_LOG=\"--log-level=warn\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\"--debug  --bip=10.1.74.1/24 --ip-masq=false --log-level=warn --mtu=1450\"\n";
        let o = parse("p", &[]).unwrap();
        assert_eq!(render(&o, &env, &BTreeMap::new()).unwrap(), want);
        let environ = BTreeMap::from([
            ("DOCKER_OPTS".to_string(), "--iptables=false".to_string()),
            ("DOCKER_OPT_LOG".to_string(), "--x".to_string()),
        ]);
        assert_eq!(render(&o, &env, &environ).unwrap(), want);
    }

    /// What upstream's mk-docker-opts.sh (v0.28.9, run under Debian's dash) wrote for ENV.
    #[test]
    fn the_scripts_output_byte_for_byte() {
        let env = read_env(ENV);
        let none = BTreeMap::new();
        let out = |a: &str, environ: &BTreeMap<String, String>| {
            render(&parse("p", &args(a)).unwrap(), &env, environ).unwrap()
        };
        assert_eq!(
            out("", &none),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450\"\n"
        );
        assert_eq!(
            out("-i", &none),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n"
        );
        assert_eq!(
            out("-c", &none),
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450\"\n"
        );
        assert_eq!(
            out("-m", &none),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1450\"\n"
        );
        assert_eq!(
            out("-k FOO", &none),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nFOO=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450\"\n"
        );
        assert_eq!(
            out("-c -k DOCKER_NETWORK_OPTIONS", &none),
            "DOCKER_NETWORK_OPTIONS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450\"\n"
        );
        assert_eq!(
            out("-ck DOCKER_NETWORK_OPTIONS", &none),
            out("-c -k DOCKER_NETWORK_OPTIONS", &none)
        );
        let environ = BTreeMap::from([("DOCKER_OPTS".to_string(), "--debug".to_string())]);
        assert_eq!(
            out("", &environ),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\"--debug  --bip=10.1.74.1/24 --ip-masq=false --mtu=1450\"\n"
        );
        let masq_off = read_env(&ENV.replace("IPMASQ=true", "IPMASQ=false"));
        assert_eq!(
            render(&parse("p", &[]).unwrap(), &masq_off, &none).unwrap(),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1450\"\n"
        );
    }

    #[test]
    fn bad_values_and_options_say_so() {
        let env = read_env("FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=maybe\n");
        assert_eq!(
            render(&parse("p", &[]).unwrap(), &env, &BTreeMap::new()).unwrap_err(),
            "Invalid value of FLANNEL_IPMASQ: maybe"
        );
        let err = parse("p", &args("-x")).unwrap_err();
        assert!(
            err.starts_with("Illegal option -x\np docker-opts [-f FLANNEL-ENV-FILE]"),
            "{err}"
        );
        assert!(parse("p", &args("-f"))
            .unwrap_err()
            .starts_with("No arg for -f option"));
        let o = parse("p", &args("-f/tmp/s.env -d /tmp/d.env")).unwrap();
        assert_eq!(o.flannel_env, PathBuf::from("/tmp/s.env"));
        assert_eq!(o.docker_env, PathBuf::from("/tmp/d.env"));
        assert_eq!(
            subnet_network("10.1.74.1/24"),
            Some("10.1.74.0/24".parse().unwrap())
        );
    }
}
