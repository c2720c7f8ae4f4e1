//! The `extension` backend (upstream `pkg/backend/extension` at v0.28.9): the data path is
//! the operator's, as commands.
//! - `PreStartupCommand` before the lease is acquired; its output (stdout and stderr,
//!   trimmed) becomes the lease's BackendData (a JSON string);
//! - `PostStartupCommand` once the lease is there, with `NETWORK`, `SUBNET`, `IPV6SUBNET`,
//!   `PUBLIC_IP`, `PUBLIC_IPV6`; a failure stops start-up, as upstream;
//! - `SubnetAddCommand` / `SubnetRemoveCommand` per other node's extension lease, with
//!   `SUBNET`, `IPV6SUBNET`, `PUBLIC_IP`, `PUBLIC_IPV6` and that node's BackendData on stdin.
//!
//! Every command runs as upstream runs it: `sh -c COMMAND` (its Documentation/extension.md:
//! "All commands are run through the `sh` shell"), with the process environment plus the
//! variables above, stdout and stderr combined. The network config is trusted as upstream
//! trusts it: whoever can write it runs commands as flanneld on every node. A failing command
//! is logged with its exit status and output, in upstream's words; one still running after the
//! timeout (`CommandTimeout`, seconds, default 30; flanneld-rs only) is killed with every
//! process it started, and logged.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{
    BackendData, BackendKind, Lease, LeaseAttrs, LeaseBatch, LeaseEvent, NetworkConfig,
};
use ipnetwork::Ipv4Network;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::table::{self, Made, Row};
use crate::{Backend, BackendError, BackendStats, NodeContext};

/// The table's row of the extension backend. Upstream's documented host-gw recipe makes
/// routes of host-gw's shape, which are the commands' to keep: not leftovers.
pub(crate) const ROW: Row = Row {
    kind: BackendKind::Extension,
    check,
    make,
    gateway_routes: commands_route,
    leftovers: table::nothing_left,
    inspect: table::no_data_path,
    inspect_device: table::no_device,
};

fn check(config: &NetworkConfig) -> Result<(), BackendError> {
    ExtensionConfig::from_backend(config.backend.as_ref()).map(|_| ())
}

fn make(config: &NetworkConfig, node: NodeContext) -> Made<'_> {
    Box::pin(async move {
        let backend = ExtensionBackend::new(config.backend.as_ref(), config.network, node).await?;
        Ok(Box::new(backend) as Box<dyn Backend>)
    })
}

fn commands_route(_: &NetworkConfig) -> bool {
    true
}

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
        backend: BackendKind::Extension.name(),
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

/// Go's text for a finished process's status (`exec.ExitError`), which upstream's messages
/// carry: `exit status 1`, `signal: killed`.
fn go_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("signal: {}", signal_name(s)),
            Err(_) => format!("signal: {sig}"),
        },
        (None, None) => status.to_string(),
    }
}

/// Go's names of the signals a command is usually ended by.
fn signal_name(s: nix::sys::signal::Signal) -> &'static str {
    use nix::sys::signal::Signal::*;
    match s {
        SIGKILL => "killed",
        SIGTERM => "terminated",
        SIGINT => "interrupt",
        SIGHUP => "hangup",
        SIGPIPE => "broken pipe",
        SIGSEGV => "segmentation fault",
        SIGABRT => "aborted",
        other => other.as_str(),
    }
}

/// Runs `command` as upstream's `runCmd` does: `sh -c COMMAND`, the process environment
/// plus `vars`, `stdin` and a newline as input, stdout and stderr through one pipe (Go's
/// `CombinedOutput`); the output, trimmed, or what went wrong with the output so far. A
/// command still running after `timeout` is killed with everything it started (its own
/// process group).
async fn run_command(
    command: &str,
    vars: &BTreeMap<&str, String>,
    stdin: &str,
    timeout: Duration,
) -> Result<String, String> {
    let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let group = child
        .id()
        .map(|id| nix::unistd::Pid::from_raw(-(id as i32)));
    if let Some(mut pipe) = child.stdin.take() {
        // a command that does not read its input is fine
        let _ = pipe.write_all(format!("{stdin}\n").as_bytes()).await;
    }
    // the output is read on a thread of its own: it ends when every process holding the
    // pipe's write end (sh and what it started) is gone
    let output = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut reader, &mut out);
        out
    });
    let finished = tokio::time::timeout(timeout, async {
        let status = child.wait().await;
        (status, output.await.unwrap_or_default())
    })
    .await;
    let (status, out) = match finished {
        Ok(done) => done,
        Err(_) => {
            if let Some(group) = group {
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            }
            return Err(format!("still running after {timeout:?}: killed"));
        }
    };
    let text = String::from_utf8_lossy(&out).trim().to_string();
    match status {
        Ok(status) if status.success() => Ok(text),
        Ok(status) => Err(format!("{} Output: {text}", go_status(status))),
        Err(e) => Err(format!("waiting for it: {e}")),
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
        if !BackendKind::Extension.is(&lease.attrs.backend_type) {
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
    fn kind(&self) -> BackendKind {
        BackendKind::Extension
    }

    /// `BackendType` `extension`; `BackendData` PreStartupCommand's output, as a JSON string.
    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
            backend_type: BackendKind::Extension.name().into(),
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
#[allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion
mod tests {
    use super::*;

    fn run(
        command: &str,
        vars: &[(&'static str, &str)],
        stdin: &str,
        timeout: u64,
    ) -> Result<String, String> {
        let vars = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_command(
                command,
                &vars,
                stdin,
                Duration::from_secs(timeout),
            ))
    }

    #[test]
    fn commands_run_through_sh_with_their_variables_and_stdin() {
        // upstream's documented VXLAN recipe is shell: `export`, `;`, `&&`, backticks
        assert_eq!(
            run(
                "export VNI=1; export SUBNET_IP=`echo $SUBNET | cut -d'/' -f 1`; echo $VNI $SUBNET_IP && read VTEP; echo \"$VTEP\" via $PUBLIC_IP",
                &[("SUBNET", "10.50.3.0/24"), ("PUBLIC_IP", "192.168.77.3")],
                "0e:00:00:00:00:01",
                5
            ),
            Ok("1 10.50.3.0\n0e:00:00:00:00:01 via 192.168.77.3".to_string())
        );
        // the process environment is there too
        assert_eq!(
            run("echo $HOME", &[], "", 5),
            Ok(std::env::var("HOME").unwrap_or_default())
        );
        // stdout and stderr in the order they were written (one pipe, as Go's CombinedOutput)
        assert_eq!(
            run("echo a; echo b >&2; echo c", &[], "", 5),
            Ok("a\nb\nc".to_string())
        );
    }

    #[test]
    fn failures_carry_gos_status_text_and_the_output() {
        assert_eq!(
            run("echo half; exit 3", &[], "", 5),
            Err("exit status 3 Output: half".to_string())
        );
        assert_eq!(
            run("kill -9 $$", &[], "", 5),
            Err("signal: killed Output: ".to_string())
        );
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let started = std::time::Instant::now();
        let result = run(
            &format!("(sleep 2; touch {}) & sleep 100", marker.display()),
            &[],
            "",
            1,
        );
        assert_eq!(result, Err("still running after 1s: killed".to_string()));
        assert!(started.elapsed() < Duration::from_secs(3));
        // the background child was in the command's process group: killed too
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            !marker.exists(),
            "a child of the timed-out command lived on"
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
