//! The `extension` backend (upstream `pkg/backend/extension` at v0.28.9): the data path is
//! the operator's, as commands.
//! - `PreStartupCommand` before the lease is acquired; its output (stdout and stderr,
//!   trimmed) becomes the lease's BackendData (a JSON string);
//! - `PostStartupCommand` once the lease is there, with `NETWORK`, `SUBNET`, `IPV6SUBNET`,
//!   `PUBLIC_IP`, `PUBLIC_IPV6`; a failure stops start-up, as upstream;
//! - `SubnetAddCommand` / `SubnetRemoveCommand` per other node's extension lease, with
//!   `SUBNET`, `IPV6SUBNET`, `PUBLIC_IP`, `PUBLIC_IPV6` and that node's BackendData on stdin.
//!
//! A command is split on whitespace and each word `$VAR`/`${VAR}`-expanded (the variables
//! above, then the process environment); a word in double quotes loses them (so upstream's
//! documented `ip route add "$SUBNET" via "$PUBLIC_IP"` works). Never through a shell: the
//! words are the program and its arguments. A failing command is logged with its exit status
//! and output; one still running after the timeout (`CommandTimeout`, seconds, default 30;
//! flanneld-rs only) is killed and logged.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{BackendData, Lease, LeaseAttrs, LeaseBatch, LeaseEvent};
use ipnetwork::Ipv4Network;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::{Backend, BackendError, BackendStats, NodeContext};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `Backend` object of `"Type": "extension"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionConfig {
    pub pre_startup: String,
    pub post_startup: String,
    pub subnet_add: String,
    pub subnet_remove: String,
    pub timeout: Option<Duration>,
}

fn config_error(message: String) -> BackendError {
    BackendError::Config {
        backend: "extension",
        message,
    }
}

impl ExtensionConfig {
    /// Keys case-insensitive, unknown ones ignored, as Go reads them.
    pub fn from_backend(backend: Option<&Value>) -> Result<Self, BackendError> {
        let mut cfg = ExtensionConfig::default();
        let obj = match backend {
            None | Some(Value::Null) => return Ok(cfg),
            Some(Value::Object(obj)) => obj,
            Some(other) => return Err(config_error(format!("expected an object, got {other}"))),
        };
        for (key, v) in obj {
            let text = || {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| config_error(format!("{key}: expected a string, got {v}")))
            };
            match key.to_ascii_lowercase().as_str() {
                "prestartupcommand" => cfg.pre_startup = text()?,
                "poststartupcommand" => cfg.post_startup = text()?,
                "subnetaddcommand" => cfg.subnet_add = text()?,
                "subnetremovecommand" => cfg.subnet_remove = text()?,
                "commandtimeout" => {
                    let secs = v
                        .as_u64()
                        .filter(|s| (1..=3600).contains(s))
                        .ok_or_else(|| {
                            config_error(format!(
                                "CommandTimeout: expected 1 to 3600 seconds, got {v}"
                            ))
                        })?;
                    cfg.timeout = Some(Duration::from_secs(secs));
                }
                _ => {}
            }
        }
        Ok(cfg)
    }
}

/// `$NAME` and `${NAME}` replaced by `vars`, then by the environment (Go's `os.Expand`
/// with the same lookup); a `$` not followed by a name stays.
pub fn expand(word: &str, vars: &BTreeMap<&str, String>) -> String {
    let lookup = |name: &str| {
        vars.get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .unwrap_or_default()
    };
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(braced) = after.strip_prefix('{') {
            if let Some(end) = braced.find('}') {
                out.push_str(&lookup(&braced[..end]));
                rest = &braced[end + 1..];
                continue;
            }
        }
        let len = after
            .char_indices()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
            .count();
        if len == 0 {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&lookup(&after[..len]));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

/// The program and its arguments: whitespace-separated words, each expanded, surrounding
/// double quotes removed.
pub fn command_words(command: &str, vars: &BTreeMap<&str, String>) -> Vec<String> {
    command
        .split_whitespace()
        .map(|w| {
            let w = w
                .strip_prefix('"')
                .and_then(|w| w.strip_suffix('"'))
                .unwrap_or(w);
            expand(w, vars)
        })
        .collect()
}

/// Runs `command` with `vars` in its environment and `stdin` (and a newline) as input,
/// as upstream's `runCmd`; the output, trimmed, or what went wrong.
async fn run_command(
    command: &str,
    vars: &BTreeMap<&str, String>,
    stdin: &str,
    timeout: Duration,
) -> Result<String, String> {
    let words = command_words(command, vars);
    let Some((program, args)) = words.split_first() else {
        return Ok(String::new());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    if let Some(mut pipe) = child.stdin.take() {
        // a command that does not read its input is fine
        let _ = pipe.write_all(format!("{stdin}\n").as_bytes()).await;
    }
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("waiting for it: {e}")),
        // dropping the child kills it
        Err(_) => return Err(format!("still running after {timeout:?}: killed")),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{}; output: {text}", out.status))
    }
}

pub struct ExtensionBackend {
    config: ExtensionConfig,
    network: Ipv4Network,
    public_ip: Ipv4Addr,
    /// With IPv6 enabled: this node's PublicIPv6 (in the lease and `PUBLIC_IPV6`).
    public_ipv6: Option<std::net::Ipv6Addr>,
    mtu: u32,
    /// PreStartupCommand's output.
    backend_data: Option<String>,
    own: Option<Ipv4Network>,
    stats: Arc<BackendStats>,
}

impl ExtensionBackend {
    /// Reads the config and runs PreStartupCommand.
    pub async fn new(
        backend: Option<&Value>,
        network: Ipv4Network,
        node: NodeContext,
    ) -> Result<Self, BackendError> {
        let config = ExtensionConfig::from_backend(backend)?;
        let timeout = config.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let backend_data = if config.pre_startup.is_empty() {
            info!("No pre startup command configured - skipping");
            None
        } else {
            match run_command(&config.pre_startup, &BTreeMap::new(), "", timeout).await {
                Ok(out) => {
                    info!("Ran command: {}\n Output: {out}", config.pre_startup);
                    Some(out)
                }
                Err(e) => {
                    return Err(BackendError::Device(format!(
                        "failed to run command: {} Err: {e}",
                        config.pre_startup
                    )))
                }
            }
        };
        Ok(ExtensionBackend {
            config,
            network,
            public_ip: node.public_ip,
            public_ipv6: node.public_ipv6,
            mtu: node.ext.mtu,
            backend_data,
            own: None,
            stats: Arc::default(),
        })
    }

    fn timeout(&self) -> Duration {
        self.config.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Runs SubnetAddCommand or SubnetRemoveCommand for another node's lease.
    async fn on_peer(&self, lease: &Lease, added: bool) {
        let command = if added {
            &self.config.subnet_add
        } else {
            &self.config.subnet_remove
        };
        if self.own == Some(lease.subnet) && lease.attrs.public_ip == self.public_ip {
            return;
        }
        if added {
            info!(
                "Subnet added: {} via {}",
                lease.subnet, lease.attrs.public_ip
            );
        } else {
            info!("Subnet removed: {}", lease.subnet);
        }
        if lease.attrs.backend_type != "extension" {
            warn!(
                "Ignoring non-extension subnet: type={}",
                lease.attrs.backend_type
            );
            return;
        }
        if command.is_empty() {
            return;
        }
        let stdin = match lease.attrs.backend_data.as_ref().map(BackendData::to_value) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                error!("failed to unmarshal BackendData: not a string: {other}");
                return;
            }
        };
        let vars = BTreeMap::from([
            ("SUBNET", lease.subnet.to_string()),
            (
                "IPV6SUBNET",
                lease.ipv6_subnet.map(|s| s.to_string()).unwrap_or_default(),
            ),
            ("PUBLIC_IP", lease.attrs.public_ip.to_string()),
            (
                "PUBLIC_IPV6",
                lease
                    .attrs
                    .public_ipv6
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            ),
        ]);
        match run_command(command, &vars, &stdin, self.timeout()).await {
            Ok(out) => info!("Ran command: {command}\n Output: {out}"),
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                error!("failed to run command: {command} Err: {e}");
            }
        }
    }
}

#[async_trait]
impl Backend for ExtensionBackend {
    fn kind(&self) -> &'static str {
        "extension"
    }

    /// `BackendType` `extension`; `BackendData` PreStartupCommand's output, as a JSON string.
    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
            backend_type: "extension".into(),
            backend_data: self.backend_data.clone().map(|s| Value::String(s).into()),
            backend_v6_data: None,
        }
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn stats(&self) -> Arc<BackendStats> {
        self.stats.clone()
    }

    /// Runs PostStartupCommand; its failure stops start-up, as upstream.
    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.own = Some(own.subnet);
        let command = &self.config.post_startup;
        if command.is_empty() {
            info!("No post startup command configured - skipping");
            return Ok(());
        }
        let vars = BTreeMap::from([
            ("NETWORK", self.network.to_string()),
            ("SUBNET", own.subnet.to_string()),
            (
                "IPV6SUBNET",
                own.ipv6_subnet.map(|s| s.to_string()).unwrap_or_default(),
            ),
            ("PUBLIC_IP", self.public_ip.to_string()),
            (
                "PUBLIC_IPV6",
                self.public_ipv6
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
            ),
        ]);
        match run_command(command, &vars, "", self.timeout()).await {
            Ok(out) => {
                info!("Ran command: {command}\n Output: {out}");
                Ok(())
            }
            Err(e) => Err(BackendError::Device(format!(
                "failed to run command: {command} Err: {e}"
            ))),
        }
    }

    /// The commands per event, in order (no reconcile: the data path is the commands').
    async fn run(
        self: Box<Self>,
        mut events: mpsc::Receiver<LeaseBatch>,
        synced: watch::Sender<bool>,
        _resync: Duration,
    ) -> Result<(), BackendError> {
        while let Some(batch) = events.recv().await {
            for event in &batch.events {
                match event {
                    LeaseEvent::Added(l) => self.on_peer(l, true).await,
                    LeaseEvent::Removed(l) => self.on_peer(l, false).await,
                }
            }
            if batch.snapshot {
                synced.send_replace(true);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_expanded_and_unquoted_never_shell_parsed() {
        let vars = BTreeMap::from([
            ("SUBNET", "10.50.3.0/24".to_string()),
            ("PUBLIC_IP", "192.168.77.3".to_string()),
        ]);
        assert_eq!(
            command_words(r#"ip route add "$SUBNET" via "$PUBLIC_IP""#, &vars),
            ["ip", "route", "add", "10.50.3.0/24", "via", "192.168.77.3"]
        );
        assert_eq!(
            command_words("echo ${SUBNET}x $NOPE_NOT_SET $ a$", &vars),
            ["echo", "10.50.3.0/24x", "", "$", "a$"]
        );
        // shell syntax is just text
        assert_eq!(
            command_words("echo $(id) ; rm -rf / && `x`", &vars),
            ["echo", "$(id)", ";", "rm", "-rf", "/", "&&", "`x`"]
        );
    }

    #[test]
    fn config_keys_any_case_and_bad_values_named() {
        let c = ExtensionConfig::from_backend(Some(&serde_json::json!({
            "Type": "extension",
            "subnetaddcommand": "a",
            "SubnetRemoveCommand": "b",
            "CommandTimeout": 5
        })))
        .unwrap();
        assert_eq!(
            (c.subnet_add.as_str(), c.subnet_remove.as_str()),
            ("a", "b")
        );
        assert_eq!(c.timeout, Some(Duration::from_secs(5)));
        let e = ExtensionConfig::from_backend(Some(&serde_json::json!({"PreStartupCommand": 1})))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("error decoding extension backend config: PreStartupCommand"),
            "{e}"
        );
    }
}
