//! `flannel`, the CNI plugin that the flannel conflist names (flannel-io/cni-plugin's
//! behaviour): ADD reads subnet.env, builds the delegate config (bridge + host-local by
//! default), saves it under `dataDir` for DEL, runs the delegate from CNI_PATH and passes its
//! result through; DEL and CHECK use the saved config; VERSION lists the versions.

mod netconf;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use netconf::{CniError, NetConf, ERR_INTERNAL, ERR_INVALID_ENV, ERR_IO};
use serde_json::{json, Value};

const SUPPORTED: [&str; 6] = flannel_net::cni::CNI_VERSIONS;

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn need(key: &str) -> Result<String, CniError> {
    env(key).ok_or_else(|| {
        CniError::new(
            ERR_INVALID_ENV,
            format!("required env variable {key} missing"),
        )
    })
}

/// Runs the delegate plugin with the same CNI environment; returns its stdout or its error.
fn run_delegate(command: &str, conf: &Value) -> Result<Vec<u8>, (Vec<u8>, CniError)> {
    let kind = conf["type"].as_str().unwrap_or("bridge");
    let paths = env("CNI_PATH").unwrap_or_default();
    let plugin = paths
        .split(':')
        .map(|d| Path::new(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            (
                Vec::new(),
                CniError::new(
                    ERR_INTERNAL,
                    format!("failed to find plugin {kind:?} in path [{paths}]"),
                ),
            )
        })?;
    let run = || -> std::io::Result<std::process::Output> {
        let mut child = Command::new(&plugin)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes())?;
        }
        child.wait_with_output()
    };
    let out = run().map_err(|e| {
        (
            Vec::new(),
            CniError::new(ERR_INTERNAL, format!("running {}: {e}", plugin.display())),
        )
    })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let msg = format!("delegate {} failed with {}", plugin.display(), out.status);
        Err((out.stdout, CniError::new(ERR_INTERNAL, msg)))
    }
}

fn saved_conf_path(n: &NetConf, container: &str) -> PathBuf {
    Path::new(&n.data_dir).join(container)
}

fn save(path: &Path, conf: &Value) -> Result<(), CniError> {
    let io = |e: std::io::Error| {
        CniError::new(
            ERR_IO,
            format!("saving the delegate config to {}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(conf.to_string().as_bytes()).map_err(io)
}

fn load_saved(path: &Path) -> Result<Option<Value>, CniError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CniError::new(
                ERR_INTERNAL,
                format!("{} is not a delegate config: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(
            ERR_IO,
            format!("reading {}: {e}", path.display()),
        )),
    }
}

/// What the plugin prints on success.
enum Outcome {
    Print(Vec<u8>),
    Nothing,
}

fn cmd(command: &str, stdin: &[u8]) -> Result<Outcome, (Vec<u8>, CniError)> {
    let plain = |e: CniError| (Vec::new(), e);
    if command == "VERSION" {
        return Ok(Outcome::Print(
            json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED})
                .to_string()
                .into_bytes(),
        ));
    }
    let n = NetConf::parse(stdin).map_err(plain)?;
    let container = need("CNI_CONTAINERID").map_err(plain)?;
    let saved = saved_conf_path(&n, &container);
    match command {
        "ADD" => {
            need("CNI_NETNS").map_err(plain)?;
            need("CNI_IFNAME").map_err(plain)?;
            let text = std::fs::read_to_string(&n.subnet_file).map_err(|e| {
                plain(CniError::new(
                    ERR_INTERNAL,
                    format!(
                        "failed to load flannel 'subnet.env' file: open {}: {e}. Check the flannel pod log for this node.",
                        n.subnet_file
                    ),
                ))
            })?;
            let fenv = netconf::load_env(&n.subnet_file, &text).map_err(|e| {
                plain(CniError::new(
                    e.code,
                    format!("failed to load flannel 'subnet.env' file: {}. Check the flannel pod log for this node.", e.msg),
                ))
            })?;
            let conf = netconf::delegate(&n, &fenv);
            save(&saved, &conf).map_err(plain)?;
            run_delegate("ADD", &conf).map(Outcome::Print)
        }
        "DEL" => {
            // Already cleaned up (or never added): DEL must succeed all the same.
            let Some(conf) = load_saved(&saved).map_err(plain)? else {
                return Ok(Outcome::Nothing);
            };
            run_delegate("DEL", &conf)?;
            let _ = std::fs::remove_file(&saved);
            Ok(Outcome::Nothing)
        }
        "CHECK" => {
            let mut conf = load_saved(&saved).map_err(plain)?.ok_or_else(|| {
                plain(CniError::new(
                    ERR_INTERNAL,
                    format!("no saved delegate config for container {container}"),
                ))
            })?;
            if let (Some(prev), Some(obj)) = (&n.prev_result, conf.as_object_mut()) {
                obj.insert("prevResult".into(), prev.clone());
            }
            run_delegate("CHECK", &conf)?;
            Ok(Outcome::Nothing)
        }
        other => Err(plain(CniError::new(
            ERR_INVALID_ENV,
            format!("unknown CNI_COMMAND: {other}"),
        ))),
    }
}

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let command = env("CNI_COMMAND");
    let read = std::io::stdin().read_to_end(&mut stdin);
    let result = match (command, read) {
        (None, _) => Err((
            Vec::new(),
            CniError::new(ERR_INVALID_ENV, "required env variable CNI_COMMAND missing"),
        )),
        (Some(c), _) if c == "VERSION" => cmd("VERSION", &stdin),
        (Some(_), Err(e)) => Err((
            Vec::new(),
            CniError::new(ERR_IO, format!("reading stdin: {e}")),
        )),
        (Some(c), Ok(_)) => cmd(&c, &stdin),
    };
    let mut out = std::io::stdout();
    match result {
        Ok(Outcome::Print(bytes)) => {
            let _ = out.write_all(&bytes);
            ExitCode::SUCCESS
        }
        Ok(Outcome::Nothing) => ExitCode::SUCCESS,
        Err((delegate_output, e)) => {
            // A delegate's own error JSON is passed through as it is.
            if !delegate_output.is_empty() {
                let _ = out.write_all(&delegate_output);
            } else {
                let version = serde_json::from_slice::<Value>(&stdin)
                    .ok()
                    .and_then(|v| v["cniVersion"].as_str().map(String::from))
                    .unwrap_or_else(|| "1.0.0".into());
                let _ = out.write_all(
                    json!({"cniVersion": version, "code": e.code, "msg": e.msg})
                        .to_string()
                        .as_bytes(),
                );
            }
            ExitCode::FAILURE
        }
    }
}
