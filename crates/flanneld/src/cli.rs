//! Command-line flags the way Go's `flag` package reads them, so that every upstream command
//! line works unchanged: `-flag` and `--flag`, `-flag=value` and `-flag value`, booleans as
//! `-flag` or `-flag=false` (`1 t T TRUE true True 0 f F FALSE false False`), integers in Go's
//! bases (`0x10`), repeatable list flags, `--` to end the flags. Then `FLANNELD_<FLAG>` for
//! every flag not given (upstream `flagutil.SetFlagsFromEnv`). Unlike upstream, an unknown
//! flag or a bad value is an error (exit 2), not a silent exit 0.

use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    /// Repeatable; every use appends.
    List,
}

/// One flag: name, kind, default (as text) and upstream's usage string.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub usage: &'static str,
    /// Shown in the usage text (hidden flags are for tests).
    pub hidden: bool,
}

/// A flag shown in the usage text.
pub const fn flag(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    usage: &'static str,
) -> Flag {
    Flag {
        name,
        kind,
        default,
        usage,
        hidden: false,
    }
}

/// Parsed values, by flag name. Lists hold every value; others the last one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    pub values: BTreeMap<&'static str, Vec<String>>,
    /// Flags given on the command line (the environment is not consulted for these).
    pub from_cli: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Run(Values),
    /// `-h`, `-help`, `--help`: print usage, exit 0.
    Help,
}

/// A command line or environment that cannot be used; the text says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, `0x`/`0o`/`0b`/leading-`0` bases,
/// underscores only with a base prefix.
pub fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body, prefixed) = if let Some(b) = lower.strip_prefix("0x") {
        (16, b.to_string(), true)
    } else if let Some(b) = lower.strip_prefix("0o") {
        (8, b.to_string(), true)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower.clone(), false)
    };
    if body.is_empty()
        || (!prefixed && body.contains('_'))
        || body.starts_with('_')
        || body.ends_with('_')
        || body.contains("__")
    {
        return None;
    }
    let body = body.replace('_', "");
    if !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i128::from_str_radix(&body, radix).ok()?;
    i64::try_from(if neg { -v } else { v }).ok()
}

fn check_value(f: &Flag, value: &str, source: &str) -> Result<(), CliError> {
    let ok = match f.kind {
        Kind::Int => parse_int(value).is_some(),
        Kind::Bool => parse_bool(value).is_some(),
        Kind::Str | Kind::List => true,
    };
    if ok {
        Ok(())
    } else {
        let want = if f.kind == Kind::Int {
            "an integer"
        } else {
            "a boolean"
        };
        Err(CliError(format!(
            "invalid value {value:?} for {source}: expected {want}"
        )))
    }
}

/// Parses `args` (without the program name) against `flags`, then fills the flags not
/// given from `env` (`FLANNELD_ETCD_ENDPOINTS` for `etcd-endpoints`).
pub fn parse(
    flags: &[Flag],
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, CliError> {
    let mut out = Values::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            if let Some(extra) = args.get(i) {
                return Err(CliError(format!("unexpected argument {extra:?}")));
            }
            break;
        }
        let Some(body) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|b| !b.is_empty() && !b.starts_with('-'))
        else {
            return Err(CliError(format!(
                "unexpected argument {arg:?} (flags start with - or --)"
            )));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if matches!(name, "h" | "help") {
            return Ok(Parsed::Help);
        }
        let Some(f) = flags.iter().find(|f| f.name == name) else {
            return Err(CliError(format!("flag provided but not defined: -{name}")));
        };
        let value = match (f.kind, inline) {
            (_, Some(v)) => v,
            (Kind::Bool, None) => "true".to_string(),
            (_, None) => match args.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => return Err(CliError(format!("flag needs an argument: -{name}"))),
            },
        };
        check_value(f, &value, &format!("flag -{name}"))?;
        let slot = out.values.entry(f.name).or_default();
        if f.kind != Kind::List {
            slot.clear();
        }
        slot.push(value);
        if !out.from_cli.contains(&f.name) {
            out.from_cli.push(f.name);
        }
    }
    for f in flags {
        if out.from_cli.contains(&f.name) {
            continue;
        }
        let var = env_name(f.name);
        if let Some(value) = env(&var).filter(|v| !v.is_empty()) {
            check_value(f, &value, &format!("environment variable {var}"))?;
            out.values.insert(f.name, vec![value]);
        }
    }
    Ok(Parsed::Run(out))
}

/// `etcd-endpoints` -> `FLANNELD_ETCD_ENDPOINTS`
pub fn env_name(flag: &str) -> String {
    format!("FLANNELD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

impl Values {
    fn raw<'a>(&'a self, flags: &'a [Flag], name: &str) -> &'a str {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
            .or_else(|| flags.iter().find(|f| f.name == name).map(|f| f.default))
            .unwrap_or("")
    }

    pub fn string(&self, flags: &[Flag], name: &str) -> String {
        self.raw(flags, name).to_string()
    }

    /// Values are checked while parsing, defaults are valid: this cannot fail.
    pub fn int(&self, flags: &[Flag], name: &str) -> i64 {
        parse_int(self.raw(flags, name)).unwrap_or(0)
    }

    pub fn bool(&self, flags: &[Flag], name: &str) -> bool {
        parse_bool(self.raw(flags, name)).unwrap_or(false)
    }

    pub fn list(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }
}

/// Go's `PrintDefaults` layout, after `Usage: <argv0> [OPTION]...`.
pub fn usage(program: &str, flags: &[Flag]) -> String {
    let mut out = format!("Usage: {program} [OPTION]...\n");
    let mut sorted: Vec<&Flag> = flags.iter().filter(|f| !f.hidden).collect();
    sorted.sort_by_key(|f| f.name);
    for f in sorted {
        let type_name = match f.kind {
            Kind::Str => " string",
            Kind::Int => " int",
            Kind::Bool => "",
            Kind::List => " value",
        };
        let _ = write!(out, "  -{}{type_name}\n    \t{}", f.name, f.usage);
        let shown = match f.kind {
            Kind::Str if !f.default.is_empty() => Some(format!("{:?}", f.default)),
            Kind::Int if f.default != "0" => Some(f.default.to_string()),
            Kind::Bool if f.default == "true" => Some("true".into()),
            _ => None,
        };
        if let Some(d) = shown {
            let _ = write!(out, " (default {d})");
        }
        out.push('\n');
    }
    out
}

/// Printed after the daemon's usage: what else the binary does.
pub const SUBCOMMANDS: &str = "
Subcommands (each with -h):
  lease show    list the leases in etcd, marking this node's
  install       lay down what the Ansible role githubixx.flanneld did (unit, CNI, network config)
  uninstall     remove what install laid down
  migrate       copy a cluster's network config and leases from etcd v2 to v3
  docker-opts   write Docker's options from subnet.env (upstream's mk-docker-opts.sh)
  doctor        check this node (daemon, etcd, lease, subnet.env, data path, rules, host)
";

/// `--json` of the subcommands that print for scripts (`lease show`, `doctor`).
pub const JSON_FLAG: Flag = Flag {
    name: "json",
    kind: Kind::Bool,
    default: "false",
    usage: "print JSON for scripts",
    hidden: false,
};

/// upstream v0.28.9's flags (`main.go` `init()`), with its usage strings.
pub const DAEMON_FLAGS: &[Flag] = &[
    flag("etcd-endpoints", Kind::Str, "http://127.0.0.1:4001,http://127.0.0.1:2379", "a comma-delimited list of etcd endpoints"),
    flag("etcd-prefix", Kind::Str, "/coreos.com/network", "etcd prefix"),
    flag("etcd-keyfile", Kind::Str, "", "SSL key file used to secure etcd communication"),
    flag("etcd-certfile", Kind::Str, "", "SSL certification file used to secure etcd communication"),
    flag("etcd-cafile", Kind::Str, "", "SSL Certificate Authority file used to secure etcd communication"),
    flag("etcd-username", Kind::Str, "", "username for BasicAuth to etcd"),
    flag("etcd-password", Kind::Str, "", "password for BasicAuth to etcd"),
    flag("etcd-api", Kind::Str, "auto", "the etcd API holding flannel's data: v3, v2, or auto (v3 if <prefix>/config is there, else v2 if it is there, else wait for either) (flanneld-rs only)"),
    flag("iface", Kind::List, "", "interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each option in order. Returns the first match found."),
    flag("iface-regex", Kind::List, "", "regex expression to match the first interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each regex in order. Returns the first match found. Regexes are checked after specific interfaces specified by the iface option have already been checked."),
    flag("iface-can-reach", Kind::Str, "", "detect interface to use (IP or name) for inter-host communication based on which will be used for provided IP. This is exactly the interface to use of command 'ip route get <ip-address>'"),
    flag("subnet-file", Kind::Str, "/run/flannel/subnet.env", "filename where env variables (subnet, MTU, ... ) will be written to"),
    flag("public-ip", Kind::Str, "", "IP accessible by other nodes for inter-host communication"),
    flag("public-ipv6", Kind::Str, "", "IPv6 accessible by other nodes for inter-host communication"),
    flag("subnet-lease-renew-margin", Kind::Int, "60", "subnet lease renewal margin, in minutes, ranging from 1 to 1439"),
    flag("ip-masq", Kind::Bool, "false", "setup IP masquerade rule for traffic destined outside of overlay network"),
    flag("ip-masq-fully-random-disable", Kind::Bool, "false", "disable fully-random mode for MASQUERADE"),
    flag("kube-subnet-mgr", Kind::Bool, "false", "contact the Kubernetes API for subnet assignment instead of etcd."),
    flag("kube-api-url", Kind::Str, "", "Kubernetes API server URL. Does not need to be specified if flannel is running in a pod."),
    flag("kube-annotation-prefix", Kind::Str, "flannel.alpha.coreos.com", "Kubernetes annotation prefix. Can contain single slash \"/\", otherwise it will be appended at the end."),
    flag("kubeconfig-file", Kind::Str, "", "kubeconfig file location. Does not need to be specified if flannel is running in a pod."),
    flag("version", Kind::Bool, "false", "print version and exit"),
    flag("healthz-ip", Kind::Str, "0.0.0.0", "the IP address for healthz server to listen"),
    flag("healthz-port", Kind::Int, "0", "the port for healthz server to listen(0 to disable)"),
    flag("iptables-resync", Kind::Int, "5", "resync period for iptables rules, in seconds"),
    flag("iptables-forward-rules", Kind::Bool, "true", "add default accept rules to FORWARD chain in iptables"),
    flag("ip-blackhole-route", Kind::Bool, "false", "add blackroute route ont the node for the local podCIDR"),
    flag("nexthop-objects", Kind::Str, "auto", "VXLAN peer routes through kernel nexthop objects (Linux 5.3+; a flat cost per peer): auto (when the kernel has them), on, or off (classic onlink routes, as upstream) (flanneld-rs only)"),
    flag("net-config-path", Kind::Str, "/etc/kube-flannel/net-conf.json", "path to the network configuration file"),
    flag("set-node-network-unavailable", Kind::Bool, "true", "set NodeNetworkUnavailable after ready"),
    flag("v", Kind::Int, "0", "number for the log level verbosity"),
    flag("vmodule", Kind::Str, "", "comma-separated list of pattern=N settings for file-filtered logging"),
    flag("log_backtrace_at", Kind::Str, "", "when logging hits line file:N, emit a stack trace"),
    Flag {
        name: "subnet-ttl-for-tests",
        kind: Kind::Int,
        default: "0",
        usage: "seconds a new lease lives (tests only; 0: 24 h as upstream)",
        hidden: true,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn run(a: &[&str]) -> Values {
        match parse(DAEMON_FLAGS, &args(a), &no_env).unwrap() {
            Parsed::Run(v) => v,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn single_and_double_dash_with_and_without_equals() {
        let v = run(&[
            "-etcd-endpoints=http://a:2379",
            "--etcd-prefix",
            "/x",
            "-iface",
            "eth0",
            "--iface=eth1",
            "-healthz-port",
            "0x10",
        ]);
        let f = DAEMON_FLAGS;
        assert_eq!(v.string(f, "etcd-endpoints"), "http://a:2379");
        assert_eq!(v.string(f, "etcd-prefix"), "/x");
        assert_eq!(v.list("iface"), vec!["eth0", "eth1"]);
        assert_eq!(v.int(f, "healthz-port"), 16);
        assert_eq!(
            v.string(f, "subnet-file"),
            "/run/flannel/subnet.env",
            "default"
        );
        assert!(v.bool(f, "iptables-forward-rules"), "default true");
    }

    #[test]
    fn go_booleans() {
        let f = DAEMON_FLAGS;
        assert!(run(&["-ip-masq"]).bool(f, "ip-masq"));
        assert!(run(&["--ip-masq=true"]).bool(f, "ip-masq"));
        assert!(run(&["--ip-masq=1"]).bool(f, "ip-masq"));
        assert!(run(&["--ip-masq=T"]).bool(f, "ip-masq"));
        assert!(!run(&["--iptables-forward-rules=false"]).bool(f, "iptables-forward-rules"));
        assert!(!run(&["--iptables-forward-rules=0"]).bool(f, "iptables-forward-rules"));
        // a bool takes no separate value: "false" would be an unexpected argument
        assert!(parse(f, &args(&["-ip-masq", "false"]), &no_env).is_err());
        assert!(parse(f, &args(&["-ip-masq=yes"]), &no_env)
            .unwrap_err()
            .0
            .contains("expected a boolean"));
    }

    #[test]
    fn klog_flags_are_accepted() {
        let v = run(&["-v", "10", "-vmodule=foo=2", "-log_backtrace_at=x.go:1"]);
        assert_eq!(v.int(DAEMON_FLAGS, "v"), 10);
    }

    #[test]
    fn errors_and_help() {
        let e = parse(DAEMON_FLAGS, &args(&["-nope"]), &no_env).unwrap_err();
        assert_eq!(e.0, "flag provided but not defined: -nope");
        assert!(parse(DAEMON_FLAGS, &args(&["-etcd-prefix"]), &no_env)
            .unwrap_err()
            .0
            .contains("needs an argument"));
        assert!(parse(DAEMON_FLAGS, &args(&["positional"]), &no_env).is_err());
        assert!(parse(DAEMON_FLAGS, &args(&["-healthz-port=abc"]), &no_env)
            .unwrap_err()
            .0
            .contains("expected an integer"));
        assert_eq!(
            parse(DAEMON_FLAGS, &args(&["-h"]), &no_env).unwrap(),
            Parsed::Help
        );
        assert_eq!(
            parse(DAEMON_FLAGS, &args(&["--help"]), &no_env).unwrap(),
            Parsed::Help
        );
    }

    #[test]
    fn environment_fills_flags_not_given() {
        let env = |k: &str| match k {
            "FLANNELD_ETCD_ENDPOINTS" => Some("http://env:2379".to_string()),
            "FLANNELD_ETCD_PREFIX" => Some("/from-env".to_string()),
            "FLANNELD_IFACE" => Some("eth0,eth1".to_string()),
            "FLANNELD_IP_MASQ" => Some("true".to_string()),
            "FLANNELD_V" => Some("".to_string()),
            _ => None,
        };
        let Parsed::Run(v) = parse(DAEMON_FLAGS, &args(&["-etcd-prefix=/cli"]), &env).unwrap()
        else {
            panic!()
        };
        let f = DAEMON_FLAGS;
        assert_eq!(v.string(f, "etcd-endpoints"), "http://env:2379");
        assert_eq!(v.string(f, "etcd-prefix"), "/cli", "the command line wins");
        assert_eq!(v.list("iface"), vec!["eth0,eth1"], "one element, not split");
        assert!(v.bool(f, "ip-masq"));
        assert_eq!(v.int(f, "v"), 0, "empty env ignored");
        let bad = |k: &str| (k == "FLANNELD_HEALTHZ_PORT").then(|| "x".to_string());
        assert!(parse(DAEMON_FLAGS, &[], &bad)
            .unwrap_err()
            .0
            .contains("FLANNELD_HEALTHZ_PORT"));
    }

    #[test]
    fn go_integers() {
        assert_eq!(parse_int("10"), Some(10));
        assert_eq!(parse_int("-5"), Some(-5));
        assert_eq!(parse_int("0x1F"), Some(31));
        assert_eq!(parse_int("010"), Some(8));
        assert_eq!(parse_int("0b101"), Some(5));
        assert_eq!(parse_int("1_000"), None);
        assert_eq!(parse_int("0x1_0"), Some(16));
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("99999999999999999999"), None);
    }

    #[test]
    fn usage_matches_go_layout() {
        let u = usage("/usr/local/sbin/flanneld", DAEMON_FLAGS);
        assert!(u.starts_with("Usage: /usr/local/sbin/flanneld [OPTION]...\n  -etcd-api string\n"));
        assert!(u.contains("  -etcd-cafile string\n    \tSSL Certificate Authority file used to secure etcd communication\n"));
        assert!(u.contains("  -etcd-endpoints string\n    \ta comma-delimited list of etcd endpoints (default \"http://127.0.0.1:4001,http://127.0.0.1:2379\")\n"));
        assert!(u.contains("  -ip-masq\n    \tsetup IP masquerade rule for traffic destined outside of overlay network\n"));
        assert!(u.contains("  -iptables-forward-rules\n    \tadd default accept rules to FORWARD chain in iptables (default true)\n"));
        assert!(u.contains("  -iptables-resync int\n    \tresync period for iptables rules, in seconds (default 5)\n"));
        assert!(u.contains("  -iface value\n"));
        assert!(!u.contains("subnet-ttl-for-tests"));
    }
}
