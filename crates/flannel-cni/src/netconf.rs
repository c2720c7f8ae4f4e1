//! What the plugin computes, pure: the network config it is given, the subnet.env it reads,
//! and the delegate config it hands to the `bridge` plugin (flannel-io/cni-plugin
//! `flannel.go`, `flannel_linux.go`).

use flannel_net::SubnetEnv;
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::{json, Map, Value};

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// A CNI error: `code` as the CNI spec numbers them, `msg` for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
        }
    }
}

/// Error codes of the CNI spec used here.
pub const ERR_INVALID_ENV: u32 = 4;
pub const ERR_IO: u32 = 5;
pub const ERR_DECODE: u32 = 6;
pub const ERR_INVALID_CONFIG: u32 = 7;
/// libcni's code for other plugin failures (what upstream's plugin returns for them).
pub const ERR_INTERNAL: u32 = 999;

/// The plugin's network config (its entry of the conflist).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub subnet_file: String,
    pub data_dir: String,
    pub delegate: Map<String, Value>,
    pub ipam: Map<String, Value>,
    pub runtime_config: Option<Value>,
    pub prev_result: Option<Value>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(ERR_DECODE, format!("failed to load netconf: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            CniError::new(ERR_DECODE, "failed to load netconf: not a JSON object")
        })?;
        let text = |key: &str, default: &str| -> Result<String, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(CniError::new(
                    ERR_INVALID_CONFIG,
                    format!("{key} must be a string"),
                )),
            }
        };
        let map = |key: &str| -> Result<Map<String, Value>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(Map::new()),
                Some(Value::Object(m)) => Ok(m.clone()),
                Some(_) => Err(CniError::new(
                    ERR_INVALID_CONFIG,
                    format!("{key} must be an object"),
                )),
            }
        };
        let delegate = map("delegate")?;
        if delegate.contains_key("name") {
            return Err(CniError::new(
                ERR_INVALID_CONFIG,
                "\"delegate\" must not have \"name\" field",
            ));
        }
        if delegate.contains_key("ipam") {
            return Err(CniError::new(
                ERR_INVALID_CONFIG,
                "\"delegate\" must not have \"ipam\" field",
            ));
        }
        if delegate.get("type").is_some_and(|t| !t.is_string()) {
            return Err(CniError::new(
                ERR_INVALID_CONFIG,
                "\"delegate\" field \"type\" must be a string",
            ));
        }
        Ok(NetConf {
            cni_version: text("cniVersion", "")?,
            name: text("name", "")?,
            subnet_file: text("subnetFile", DEFAULT_SUBNET_FILE)?,
            data_dir: text("dataDir", DEFAULT_DATA_DIR)?,
            delegate,
            ipam: map("ipam")?,
            runtime_config: obj.get("runtimeConfig").cloned(),
            prev_result: obj.get("prevResult").cloned(),
        })
    }
}

/// What the plugin needs from subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelEnv {
    pub networks: Vec<String>,
    pub subnet: Option<Ipv4Network>,
    pub ipv6_subnet: Option<Ipv6Network>,
    pub mtu: u32,
    pub ip_masq: bool,
}

/// Reads subnet.env text; the message names every missing key, as upstream, and every key
/// whose value is there but invalid (`FLANNEL_SUBNET is not an IPv4 CIDR: "notacidr"`).
pub fn load_env(path: &str, text: &str) -> Result<FlannelEnv, CniError> {
    let (env, warnings) = SubnetEnv::parse(text);
    let invalid: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains(" FLANNEL_"))
        .collect();
    if !invalid.is_empty() {
        let list: Vec<&str> = invalid.iter().map(|w| w.as_str()).collect();
        return Err(CniError::new(
            ERR_INTERNAL,
            format!("{path} has invalid values: {}", list.join("; ")),
        ));
    }
    let has = |key: &str| {
        text.lines().any(|l| {
            l.trim()
                .trim_start_matches("export ")
                .starts_with(&format!("{key}="))
        })
    };
    let mut networks: Vec<String> = Vec::new();
    for key in ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"] {
        if let Some(line) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        {
            for n in line
                .trim_matches('"')
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
            {
                if !networks.contains(&n.to_string()) {
                    networks.push(n.to_string());
                }
            }
        }
    }
    let mut missing = Vec::new();
    if networks.is_empty() {
        missing.push("FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK");
    }
    if env.subnet.is_none() && env.ipv6_subnet.is_none() {
        missing.push("FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET");
    }
    if !has("FLANNEL_MTU") || env.mtu == 0 {
        missing.push("FLANNEL_MTU");
    }
    if !has("FLANNEL_IPMASQ") {
        missing.push("FLANNEL_IPMASQ");
    }
    if !missing.is_empty() {
        return Err(CniError::new(
            ERR_INTERNAL,
            format!("{path} is missing {}", missing.join(", ")),
        ));
    }
    Ok(FlannelEnv {
        networks,
        subnet: env.subnet,
        ipv6_subnet: env.ipv6_subnet,
        mtu: env.mtu,
        ip_masq: env.ip_masq,
    })
}

/// The delegate config (upstream `doCmdAdd` + `getDelegateIPAM`): the network name, type
/// `bridge` by default, `ipMasq` = !FLANNEL_IPMASQ, `mtu` = FLANNEL_MTU, a gateway bridge,
/// host-local IPAM over the node subnet with routes to the flannel networks.
pub fn delegate(n: &NetConf, env: &FlannelEnv) -> Value {
    let mut d = n.delegate.clone();
    d.insert("name".into(), json!(n.name));
    d.entry("type").or_insert(json!("bridge"));
    d.entry("ipMasq").or_insert(json!(!env.ip_masq));
    d.entry("mtu").or_insert(json!(env.mtu));
    if d.get("type") == Some(&json!("bridge")) {
        d.entry("isGateway").or_insert(json!(true));
    }
    if !n.cni_version.is_empty() {
        d.insert("cniVersion".into(), json!(n.cni_version));
    }
    if let Some(rc) = &n.runtime_config {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    let mut ipam = n.ipam.clone();
    ipam.entry("type").or_insert(json!("host-local"));
    let mut ranges = Vec::new();
    if let Some(sn) = env.subnet {
        ranges.push(json!([{"subnet": format!("{}/{}", sn.network(), sn.prefix())}]));
    }
    if let Some(sn) = env.ipv6_subnet {
        ranges.push(json!([{"subnet": format!("{}/{}", sn.network(), sn.prefix())}]));
    }
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = match ipam.get("routes") {
        Some(Value::Array(r)) => r.clone(),
        _ => Vec::new(),
    };
    // With a gateway bridge the kernel routes the networks via the bridge's address (the
    // subnet's first, as host-local gives it) anyway; naming that gateway, for each family,
    // makes the result say so, and the bridge plugin's CHECK (which compares the result's
    // routes with the kernel's) pass. Upstream leaves it out, and its CHECK fails.
    let gateway_bridge =
        d.get("type") == Some(&json!("bridge")) && d.get("isGateway") == Some(&json!(true));
    let gw4 = env
        .subnet
        .filter(|_| gateway_bridge)
        .map(|sn| std::net::Ipv4Addr::from(u32::from(sn.network()) + 1).to_string());
    let gw6 = env
        .ipv6_subnet
        .filter(|_| gateway_bridge)
        .map(|sn| std::net::Ipv6Addr::from(u128::from(sn.network()) + 1).to_string());
    for nw in &env.networks {
        let gw = if nw.contains(':') { &gw6 } else { &gw4 };
        match gw {
            Some(gw) => routes.push(json!({"dst": nw, "gw": gw})),
            None => routes.push(json!({"dst": nw})),
        }
    }
    ipam.insert("routes".into(), Value::Array(routes));
    d.insert("ipam".into(), Value::Object(ipam));
    Value::Object(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "FLANNEL_NETWORK=10.200.0.0/16\nFLANNEL_SUBNET=10.200.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(format!(r#"{{"cniVersion":"1.0.0","name":"cni0","type":"flannel","delegate":{{"hairpinMode":true,"isDefaultGateway":true}}{extra}}}"#).as_bytes())
            .unwrap()
    }

    #[test]
    fn delegate_is_what_upstream_builds() {
        let env = load_env("/run/flannel/subnet.env", ENV).unwrap();
        let d = delegate(&conf(""), &env);
        assert_eq!(
            d,
            json!({
                "hairpinMode": true,
                "isDefaultGateway": true,
                "name": "cni0",
                "type": "bridge",
                "ipMasq": false,
                "mtu": 1450,
                "isGateway": true,
                "cniVersion": "1.0.0",
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.200.74.0/24"}]],
                    "routes": [{"dst": "10.200.0.0/16", "gw": "10.200.74.1"}]
                }
            })
        );
    }

    #[test]
    fn delegate_keeps_what_the_operator_set() {
        let env = load_env("x", &ENV.replace("true", "false")).unwrap();
        let n = conf(
            r#","ipam":{"routes":[{"dst":"192.0.2.0/24"}]},"runtimeConfig":{"portMappings":[]}"#,
        );
        let mut n2 = n.clone();
        n2.delegate.insert("mtu".into(), json!(1400));
        let d = delegate(&n2, &env);
        assert_eq!(d["ipMasq"], true, "!FLANNEL_IPMASQ");
        assert_eq!(d["mtu"], 1400);
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst": "192.0.2.0/24"}, {"dst": "10.200.0.0/16", "gw": "10.200.74.1"}])
        );
        let mut plain = n.clone();
        plain.delegate.insert("isGateway".into(), json!(false));
        assert_eq!(
            delegate(&plain, &env)["ipam"]["routes"][1],
            json!({"dst": "10.200.0.0/16"})
        );
        assert_eq!(d["runtimeConfig"], json!({"portMappings": []}));
    }

    #[test]
    fn bad_inputs_are_cni_errors() {
        assert_eq!(NetConf::parse(b"nope").unwrap_err().code, ERR_DECODE);
        assert_eq!(
            NetConf::parse(br#"{"delegate":{"name":"x"}}"#)
                .unwrap_err()
                .code,
            ERR_INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"delegate":{"ipam":{}}}"#)
                .unwrap_err()
                .code,
            ERR_INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"delegate":{"type":1}}"#)
                .unwrap_err()
                .code,
            ERR_INVALID_CONFIG
        );
        let bad = "FLANNEL_NETWORK=10.200.0.0/16\nFLANNEL_SUBNET=notacidr\nFLANNEL_MTU=abc\nFLANNEL_IPMASQ=true\n";
        let e = load_env("/run/flannel/subnet.env", bad).unwrap_err();
        assert!(
            e.msg.contains("invalid values: line 2: FLANNEL_SUBNET is not an IPv4 CIDR: \"notacidr\"; line 3: FLANNEL_MTU is not a number: \"abc\""),
            "{}",
            e.msg
        );
        assert!(!e.msg.contains("missing"), "{}", e.msg);
        let e = load_env("/run/flannel/subnet.env", "FLANNEL_MTU=1450\n").unwrap_err();
        assert_eq!(
            e.msg,
            "/run/flannel/subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ"
        );
        assert!(load_env("f", "garbage\n")
            .unwrap_err()
            .msg
            .contains("FLANNEL_MTU"));
    }
}
