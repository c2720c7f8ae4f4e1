//! `flanneld-rs install` and `flanneld-rs uninstall`: what the Ansible role did on a node
//! (binary, systemd unit, CNI conflist and plugin, etcd certificates, the network config in
//! etcd), idempotently; `--dry-run` shows a diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use flannel_install::{plan, under, ExecStartPre, InstallSpec, Undo, UnitSpec};
use flannel_net::NetworkConfig;
use flannel_subnet::etcd::EtcdV3Store;
use flannel_subnet::etcd2::EtcdV2Store;
use flannel_subnet::store::{Key, Store};
use flannel_subnet::{write_config, ConfigWrite, EtcdApi};

use crate::cli::{self, flag, CliError, Flag, Kind, Parsed, Values, DAEMON_FLAGS};
use crate::options::{etcd_config, Options};

pub const INSTALL_FLAGS: &[Flag] = &[
    flag(
        "root",
        Kind::Str,
        "/",
        "install under this directory (for image builds and tests)",
    ),
    flag(
        "binary",
        Kind::Str,
        "",
        "the flanneld-rs binary to install (default: this one)",
    ),
    flag(
        "bin-dir",
        Kind::Str,
        "/usr/local/sbin",
        "where the binary goes",
    ),
    flag(
        "bin-name",
        Kind::Str,
        "flanneld",
        "the binary's name there (flanneld keeps scripts working)",
    ),
    flag(
        "flag",
        Kind::List,
        "",
        "a flanneld flag for the unit, key=value (repeatable; overrides the settings file)",
    ),
    flag(
        "settings",
        Kind::Str,
        "",
        "a file of flanneld flags, key=value per line",
    ),
    flag(
        "exec-start-post",
        Kind::Str,
        "",
        "ExecStartPost= command of the unit (e.g. /sbin/ethtool -K flannel.1 tx off)",
    ),
    flag(
        "exec-start-pre",
        Kind::Str,
        "",
        "ExecStartPre= command of the unit (default: /bin/mkdir -p <the directory of -subnet-file>; none: no command)",
    ),
    flag("restart-sec", Kind::Str, flannel_install::unit::ROLE_RESTART_SEC, "RestartSec= of the unit"),
    flag("limit-nofile", Kind::Str, flannel_install::unit::ROLE_LIMIT_NOFILE, "LimitNOFILE= of the unit"),
    flag("limit-nproc", Kind::Str, flannel_install::unit::ROLE_LIMIT_NPROC, "LimitNPROC= of the unit"),
    flag(
        "docker",
        Kind::Bool,
        "false",
        "order flanneld before docker.service (Before= and RequiredBy=docker.service)",
    ),
    flag(
        "cni-conf-dir",
        Kind::Str,
        "/etc/cni/net.d",
        "where 10-flannel.conflist goes",
    ),
    flag(
        "cni-bin-dir",
        Kind::Str,
        "/opt/cni/bin",
        "where the flannel CNI plugin goes",
    ),
    flag(
        "cni-plugin",
        Kind::Str,
        "",
        "the flannel CNI plugin binary to install (default: `flannel` next to the binary)",
    ),
    flag("cni-name", Kind::Str, "cni0", "the CNI network name"),
    flag(
        "cni-conflist",
        Kind::Str,
        "",
        "a file whose JSON is written as 10-flannel.conflist as it is (instead of one rendered from -cni-name and -cni-version)",
    ),
    flag(
        "cni-version",
        Kind::Str,
        "1.0.0",
        "cniVersion of the conflist",
    ),
    flag(
        "cni-only",
        Kind::Bool,
        "false",
        "install only the CNI conflist and plugin (a DaemonSet's init step)",
    ),
    flag(
        "certs-from",
        Kind::Str,
        "",
        "copy ca-etcd.pem, cert-etcd.pem, cert-etcd-key.pem from this directory",
    ),
    flag(
        "certs-dir",
        Kind::Str,
        "/var/lib/kubernetes",
        "where the etcd certificates go",
    ),
    flag(
        "network",
        Kind::Str,
        "",
        "put {\"Network\":CIDR,\"Backend\":{\"Type\":BACKEND}} into etcd if there is no config",
    ),
    flag(
        "backend",
        Kind::Str,
        flannel_net::BackendKind::Vxlan.name(),
        "the backend type for -network",
    ),
    flag(
        "network-config",
        Kind::Str,
        "",
        "a file with the network config JSON to put into etcd if there is none",
    ),
    flag(
        "force-network-config",
        Kind::Bool,
        "false",
        "replace a different network config in etcd",
    ),
    flag(
        "dry-run",
        Kind::Bool,
        "false",
        "change nothing; print a diff of every file that would change",
    ),
    flag(
        "no-restart",
        Kind::Bool,
        "false",
        "do not run systemctl daemon-reload / restart",
    ),
];

fn parse(args: &[String], program: &str, flags: &[Flag]) -> anyhow::Result<Option<Values>> {
    match cli::parse(flags, args, &|_| None) {
        Ok(Parsed::Run(v)) => Ok(Some(v)),
        Ok(Parsed::Help) => {
            err_print!("{}", cli::usage(program, flags));
            Ok(None)
        }
        Err(e) => Err(CliError(format!("{e}\n{}", cli::usage(program, flags))).into()),
    }
}

fn systemd_running(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .context("running systemctl")?;
    if !status.success() {
        bail!("systemctl {} failed with {status}", args.join(" "));
    }
    outln!("ran systemctl {}", args.join(" "));
    Ok(())
}

/// The unit's flanneld flags: the role's defaults, the certificates when copied, the
/// settings file, then each `-flag`. Every key must be a flanneld flag and the whole set
/// must pass flanneld's own checks.
fn unit_flags(v: &Values) -> anyhow::Result<BTreeMap<String, String>> {
    let f = INSTALL_FLAGS;
    let mut flags: BTreeMap<String, String> = [
        ("etcd-prefix", "/kubernetes-cluster/network"),
        ("healthz-ip", "0.0.0.0"),
        ("healthz-port", "0"),
        ("ip-masq", "true"),
        ("subnet-file", "/run/flannel/subnet.env"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if !v.string(f, "certs-from").is_empty() {
        let dir = PathBuf::from(v.string(f, "certs-dir"));
        for (flag, file) in [
            ("etcd-cafile", "ca-etcd.pem"),
            ("etcd-certfile", "cert-etcd.pem"),
            ("etcd-keyfile", "cert-etcd-key.pem"),
        ] {
            flags.insert(flag.into(), dir.join(file).display().to_string());
        }
    }
    let settings = v.string(f, "settings");
    if !settings.is_empty() {
        let text = std::fs::read_to_string(&settings)
            .map_err(|e| CliError(format!("-settings {settings}: {e}")))?;
        flags.extend(
            flannel_install::parse_settings(&text)
                .map_err(|e| CliError(format!("-settings {settings}: {e}")))?,
        );
    }
    for item in v.list("flag") {
        let (k, val) =
            flannel_install::parse_flag(&item).map_err(|e| CliError(format!("-flag {e}")))?;
        flags.insert(k, val);
    }
    for k in flags.keys() {
        if !DAEMON_FLAGS.iter().any(|d| d.name == k && !d.hidden) || k == "version" {
            return Err(CliError(format!("-flag {k}: flanneld has no such flag")).into());
        }
    }
    if !flags.contains_key("etcd-endpoints") {
        return Err(CliError(
            "give the etcd endpoints: -flag etcd-endpoints=https://ETCD1:2379,https://ETCD2:2379"
                .into(),
        )
        .into());
    }
    Options::from_values(&daemon_values(&flags)?)
        .map_err(|e| CliError(format!("the flanneld flags are not valid: {e}")))?;
    Ok(flags)
}

/// The unit's flags as flanneld would parse them.
fn daemon_values(flags: &BTreeMap<String, String>) -> anyhow::Result<Values> {
    let args: Vec<String> = flags.iter().map(|(k, v)| format!("-{k}={v}")).collect();
    match cli::parse(DAEMON_FLAGS, &args, &|_| None) {
        Ok(Parsed::Run(v)) => Ok(v),
        Ok(Parsed::Help) => Err(CliError("unexpected help flag".into()).into()),
        Err(e) => Err(CliError(format!("the flanneld flags are not valid: {e}")).into()),
    }
}

pub async fn install(program: &str, args: &[String]) -> anyhow::Result<i32> {
    let Some(v) = parse(args, &format!("{program} install"), INSTALL_FLAGS)? else {
        return Ok(0);
    };
    let f = INSTALL_FLAGS;
    let root = PathBuf::from(v.string(f, "root"));
    let dry_run = v.bool(f, "dry-run");
    let cni_only = v.bool(f, "cni-only");
    let binary_source = match v.string(f, "binary") {
        s if s.is_empty() => std::env::current_exe().context("finding this binary")?,
        s => PathBuf::from(s),
    };
    if !binary_source.is_file() {
        return Err(CliError(format!("-binary {}: no such file", binary_source.display())).into());
    }
    let cni_plugin_source = match v.string(f, "cni-plugin") {
        s if s.is_empty() => binary_source.with_file_name("flannel"),
        s => PathBuf::from(s),
    };
    if !cni_plugin_source.is_file() {
        return Err(CliError(format!(
            "-cni-plugin {}: no such file (the flannel CNI plugin; by default it is looked for next to the binary)",
            cni_plugin_source.display()
        ))
        .into());
    }
    let cni_version = v.string(f, "cni-version");
    if !flannel_net::cni::CNI_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CliError(format!(
            "-cni-version {cni_version:?}: the flannel CNI plugin speaks {}",
            flannel_net::cni::CNI_VERSIONS.join(", ")
        ))
        .into());
    }
    let flags = if cni_only {
        BTreeMap::new()
    } else {
        unit_flags(&v)?
    };
    let network = if cni_only { None } else { wanted_network(&v)? };
    let binary_path = PathBuf::from(v.string(f, "bin-dir")).join(v.string(f, "bin-name"));
    let cni_conflist = match v.string(f, "cni-conflist") {
        c if c.is_empty() => None,
        c => Some(given_conflist(&c)?),
    };
    let exec_start_pre = match v.string(f, "exec-start-pre") {
        c if c.is_empty() => ExecStartPre::MakeSubnetDir,
        c if c == "none" => ExecStartPre::None,
        c => ExecStartPre::Command(one_line("exec-start-pre", c)?),
    };
    let spec = InstallSpec {
        root: root.clone(),
        binary_source,
        binary_path: binary_path.clone(),
        unit: UnitSpec {
            binary: binary_path.display().to_string(),
            flags: flags.clone(),
            exec_start_post: Some(one_line("exec-start-post", v.string(f, "exec-start-post"))?)
                .filter(|s| !s.is_empty()),
            docker: v.bool(f, "docker"),
            exec_start_pre,
            restart_sec: unit_number(&v, "restart-sec", false)?,
            limit_nofile: unit_number(&v, "limit-nofile", true)?,
            limit_nproc: unit_number(&v, "limit-nproc", true)?,
        },
        unit_path: "/etc/systemd/system/flanneld.service".into(),
        cni_conf_dir: v.string(f, "cni-conf-dir").into(),
        cni_name: v.string(f, "cni-name"),
        cni_version,
        cni_bin_dir: v.string(f, "cni-bin-dir").into(),
        cni_plugin_source,
        certs_from: Some(v.string(f, "certs-from"))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        certs_dir: v.string(f, "certs-dir").into(),
        cni_only,
        cni_conflist,
    };
    let plan = plan(&spec)?;
    for note in &plan.notes {
        outln!("note: {note}");
    }
    for stale in &plan.stale {
        outln!(
            "warning: {} is left from an older install; it may shadow the new config: remove it",
            stale.display()
        );
    }
    if dry_run {
        out_print!("{}", plan.diff());
    } else {
        plan.apply()?;
    }
    for (file, change) in &plan.files {
        let what = match change {
            flannel_install::Change::Create => "created",
            flannel_install::Change::Update { .. } => "updated",
            flannel_install::Change::Unchanged => "unchanged",
        };
        let what = if dry_run && what != "unchanged" {
            format!("would be {what}")
        } else {
            what.to_string()
        };
        let kept = if plan.replaced.contains(&file.path) {
            format!(
                " (not laid down by flanneld-rs: the file there {} kept in {}; uninstall puts it back)",
                if dry_run { "would be" } else { "is" },
                under(&root, &flannel_install::replaced_path(&file.path)).display()
            )
        } else {
            String::new()
        };
        outln!("{what}: {}{kept}", under(&root, &file.path).display());
    }

    let network_changed = match &network {
        Some(json) => put_network(&v, json, &flags, &root, dry_run).await?,
        None => false,
    };
    if plan.is_unchanged() && !network_changed {
        outln!("nothing changed");
    }
    if !dry_run && plan.needs_restart() && !v.bool(f, "no-restart") {
        if systemd_running(&root) {
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", "flanneld.service"])?;
            systemctl(&["restart", "flanneld.service"])?;
        } else {
            outln!(
                "note: systemd is not running here: skipped daemon-reload and restart of flanneld"
            );
        }
    }
    Ok(0)
}

/// A command for a unit line: one line.
fn one_line(flag: &str, value: String) -> anyhow::Result<String> {
    if value.contains(['\n', '\r']) {
        return Err(CliError(format!(
            "-{flag} {value:?}: a unit line cannot hold a line break"
        ))
        .into());
    }
    Ok(value)
}

/// `-restart-sec`, `-limit-nofile`, `-limit-nproc`: a number (of seconds or a limit), or
/// `infinity` for a limit, as systemd takes them.
fn unit_number(v: &Values, flag: &str, limit: bool) -> anyhow::Result<String> {
    let value = v.string(INSTALL_FLAGS, flag).trim().to_string();
    let ok = value.parse::<u64>().is_ok()
        || (limit && value == "infinity")
        || (!limit && value.parse::<f64>().is_ok_and(|s| s >= 0.0));
    if !ok {
        return Err(CliError(format!(
            "-{flag} {value:?}: expected a number{}",
            if limit { " or infinity" } else { " of seconds" }
        ))
        .into());
    }
    Ok(value)
}

/// `-cni-conflist`: the file's bytes, if they are a JSON object with a "plugins" list.
fn given_conflist(path: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| CliError(format!("-cni-conflist {path}: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| CliError(format!("-cni-conflist {path}: not JSON: {e}")))?;
    if !value
        .get("plugins")
        .is_some_and(serde_json::Value::is_array)
    {
        return Err(CliError(format!(
            "-cni-conflist {path}: not a CNI network config list (no \"plugins\" list)"
        ))
        .into());
    }
    Ok(bytes)
}

/// The network config asked for (`-network` or `-network-config`), checked.
fn wanted_network(v: &Values) -> anyhow::Result<Option<String>> {
    let f = INSTALL_FLAGS;
    let json = match (v.string(f, "network"), v.string(f, "network-config")) {
        (n, c) if n.is_empty() && c.is_empty() => return Ok(None),
        (n, c) if !n.is_empty() && !c.is_empty() => {
            return Err(CliError("give -network or -network-config, not both".into()).into())
        }
        (n, _) if !n.is_empty() => {
            serde_json::json!({"Network": n, "Backend": {"Type": v.string(f, "backend")}})
                .to_string()
        }
        (_, c) => {
            let json = std::fs::read_to_string(&c)
                .map_err(|e| CliError(format!("-network-config {c}: {e}")))?
                .trim()
                .to_string();
            let config = NetworkConfig::from_etcd(&json).map_err(|e| {
                CliError(format!(
                    "-network-config {c}: not a valid network config: {e}"
                ))
            })?;
            flannel_backend::check_backend(&config)
                .map_err(|e| CliError(format!("-network-config {c}: {e}")))?;
            return Ok(Some(json));
        }
    };
    let config = NetworkConfig::from_etcd(&json)
        .map_err(|e| CliError(format!("the network config {json} is not valid: {e}")))?;
    flannel_backend::check_backend(&config).map_err(|e| CliError(format!("-backend: {e}")))?;
    Ok(Some(json))
}

/// Puts the network config into etcd unless one is there; whether it wrote it.
async fn put_network(
    v: &Values,
    json: &str,
    flags: &BTreeMap<String, String>,
    root: &Path,
    dry_run: bool,
) -> anyhow::Result<bool> {
    let f = INSTALL_FLAGS;
    let mut etcd = etcd_config(&daemon_values(flags)?).map_err(|e| anyhow!(e.0))?;
    // the certificates are read where this install put them
    for file in [&mut etcd.ca_file, &mut etcd.cert_file, &mut etcd.key_file]
        .into_iter()
        .flatten()
    {
        *file = under(root, file);
    }
    // the keyspace the cluster's flanneld read: -etcd-api of the unit's flags, else the one
    // that holds a config already, else v3 (a new cluster)
    let api = match crate::options::etcd_api(&daemon_values(flags)?, DAEMON_FLAGS)? {
        Some(api) => api,
        None => flannel_subnet::detect_api(&etcd)
            .await?
            .unwrap_or(EtcdApi::V3),
    };
    let store: Box<dyn Store> = match api {
        EtcdApi::V3 => Box::new(EtcdV3Store::new(&etcd).await?),
        EtcdApi::V2 => Box::new(EtcdV2Store::new(&etcd)?),
    };
    let key = match api {
        EtcdApi::V3 => store.describe(&Key::Config),
        EtcdApi::V2 => format!("v2 {}", store.describe(&Key::Config)),
    };
    let store = &*store;
    match write_config(store, json, v.bool(f, "force-network-config"), dry_run).await? {
        ConfigWrite::Created => {
            outln!("created: etcd {key} = {json}");
            Ok(true)
        }
        ConfigWrite::WouldCreate => {
            outln!("would be created: etcd {key} = {json}");
            Ok(true)
        }
        ConfigWrite::Unchanged => {
            outln!("unchanged: etcd {key}");
            Ok(false)
        }
        ConfigWrite::Differs(old) => {
            outln!(
                "warning: etcd {key} holds a different network config, left as it is:\n  stored: {old}\n  wanted: {json}\n  (-force-network-config replaces it)"
            );
            Ok(false)
        }
        ConfigWrite::Replaced(old) => {
            outln!("updated: etcd {key} = {json} (was {old})");
            Ok(true)
        }
    }
}

pub fn uninstall(program: &str, args: &[String]) -> anyhow::Result<i32> {
    let flags: Vec<Flag> = INSTALL_FLAGS
        .iter()
        .copied()
        .filter(|f| matches!(f.name, "root" | "no-restart" | "dry-run"))
        .collect();
    let Some(v) = parse(args, &format!("{program} uninstall"), &flags)? else {
        return Ok(0);
    };
    let root = PathBuf::from(v.string(&flags, "root"));
    let dry_run = v.bool(&flags, "dry-run");
    let systemd = systemd_running(&root) && !v.bool(&flags, "no-restart") && !dry_run;
    if systemd {
        systemctl(&["disable", "--now", "flanneld.service"])?;
    }
    let done = flannel_install::uninstall(&root, dry_run)?;
    let would = if dry_run { "would be " } else { "" };
    for (p, undo) in &done {
        let at = under(&root, p).display().to_string();
        match undo {
            Undo::Removed => outln!("{would}removed: {at}"),
            Undo::Restored => {
                outln!("{would}restored: {at} (the file that was there before install)")
            }
            Undo::Changed { kept: None } => outln!(
                "kept: {at} (changed since install: remove it by hand if it is no longer wanted)"
            ),
            Undo::Changed { kept: Some(k) } => outln!(
                "kept: {at} (changed since install); the file install replaced there is in {}",
                under(&root, k).display()
            ),
        }
    }
    if done.is_empty() {
        outln!("nothing to remove");
    }
    // the flanneld that was there before install is back: it runs again
    let restored_unit = done.iter().any(|(p, undo)| {
        *undo == Undo::Restored && p == Path::new("/etc/systemd/system/flanneld.service")
    });
    if systemd {
        systemctl(&["daemon-reload"])?;
        if restored_unit {
            systemctl(&["enable", "--now", "flanneld.service"])?;
            outln!("started: flanneld.service (the unit that was there before install)");
        }
    } else if restored_unit && !dry_run {
        outln!("note: flanneld.service was restored to the unit that was there before install: enable and start it");
    }
    outln!("note: the network config and the leases in etcd are left as they are");
    Ok(0)
}
