//! `flanneld-rs`: a drop-in replacement for upstream flanneld (etcd v3 or v2; the vxlan,
//! host-gw, extension and alloc backends; IPv4, IPv6 and dual-stack).
//!
//! `flanneld-rs [flags]` runs the daemon with upstream's flags and `FLANNELD_*` environment.
//! Subcommands: `lease show` lists the leases, `install` / `uninstall` lay down (or remove)
//! what the Ansible role did, `migrate --from v2 --to v3` copies a v2 cluster's data,
//! `docker-opts` writes Docker's options from subnet.env (upstream's `mk-docker-opts.sh`),
//! `doctor` checks the node and explains what is wrong.
//! Installed or linked as `flanneld`, it behaves the same.

/// `eprintln!` that never panics: a closed stderr (`flanneld-rs ... 2>&1 | head -1`) must
/// not kill the daemon.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics.
macro_rules! err_print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that never panics (`lease show | head -1`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that never panics.
macro_rules! out_print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod cli;
mod daemon;
mod docker_opts;
mod doctor;
mod health;
mod iface;
mod install_cmd;
mod kube_mode;
mod lease_show;
mod lock;
mod memory;
mod migrate_cmd;
mod options;
mod sdnotify;
mod store;

use std::process::ExitCode;
use std::sync::Arc;

use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// flanneld-rs's own crates: what `-v` turns up. Dependencies (HTTP/2, gRPC, netlink) stay
/// at warnings: their debug output says nothing an operator of flannel needs.
const OWN_TARGETS: &[&str] = &[
    "flanneld_rs",
    "flannel_subnet",
    "flannel_backend",
    "flannel_masq",
    "flannel_net",
    "flannel_install",
];

/// The log filter for klog's `-v`: 0-1 info, 2-4 debug, 5+ trace, for flanneld-rs's own
/// lines; dependencies at warn.
fn log_filter(verbosity: i64) -> String {
    let level = match verbosity {
        i64::MIN..=1 => "info",
        2..=4 => "debug",
        _ => "trace",
    };
    let mut directives = vec!["warn".to_string()];
    directives.extend(OWN_TARGETS.iter().map(|t| format!("{t}={level}")));
    // kube-rs logs in its types' words (a token's refresh; each failed request on the proxy
    // path, `failed with error client error (Connect)`); ours says what was tried and what
    // answered. Shown from -v=2.
    if verbosity < 2 {
        directives.push("kube_client=off".to_string());
    }
    directives.join(",")
}

fn init_logging(verbosity: i64) {
    // RUST_LOG, when set, wins.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log_filter(verbosity)));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // a failed write is dropped; reporting it would print to the same broken stderr
        .log_internal_errors(false)
        .init();
}

/// The command line as strings; an argument that is not UTF-8 is named (exit 2).
fn arguments() -> Result<Vec<String>, String> {
    std::env::args_os()
        .enumerate()
        .map(|(i, a)| {
            a.into_string().map_err(|bad| {
                format!("argument {i} is not valid UTF-8: {}", bad.to_string_lossy())
            })
        })
        .collect()
}

/// The `CLI flags config` log line's values, the password masked.
fn loggable(values: &cli::Values) -> std::collections::BTreeMap<&'static str, Vec<String>> {
    let mut shown = values.values.clone();
    if let Some(p) = shown.get_mut("etcd-password") {
        for v in p.iter_mut().filter(|v| !v.is_empty()) {
            *v = "******".into();
        }
    }
    shown
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // One thread: flanneld waits on etcd and netlink; it never needs two cores. Kernel table
    // dumps run on the blocking pool; its idle thread is kept beyond the backend's resync
    // period (10 s, tokio's default keep-alive too), so that a node at rest starts no
    // thread at all (with 10 s, one thread was made and ended about every 20 s).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(120))
        .build()
}

fn main() -> ExitCode {
    let args = match arguments() {
        Ok(a) => a,
        Err(e) => {
            errln!("{e}");
            return ExitCode::from(2);
        }
    };
    let program = args.first().cloned().unwrap_or_else(|| "flanneld".into());
    let rest = &args[args.len().min(1)..];
    match rest.first().map(String::as_str) {
        Some("lease") => return lease_command(&program, &rest[1..]),
        Some("install") => return install_command(&program, &rest[1..], false),
        Some("uninstall") => return install_command(&program, &rest[1..], true),
        Some("migrate") => return migrate_command(&program, &rest[1..]),
        Some("docker-opts") => return docker_opts_command(&program, &rest[1..]),
        Some("doctor") => return doctor_command(&program, &rest[1..]),
        _ => {}
    }
    daemon_command(&program, rest)
}

/// An error with its causes, each said once: a cause whose text the message already holds
/// (`writing x: Read-only file system` over `Read-only file system`) is not repeated.
fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let line = cause.to_string();
        if text.contains(&line) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&line);
    }
    text
}

/// Exit status of a subcommand's error: 2 for a bad command line or a value that can never
/// work (as the daemon), 1 for everything else.
fn failure(e: &anyhow::Error) -> ExitCode {
    errln!("error: {}", chain_text(e));
    if e.downcast_ref::<cli::CliError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn lease_command(program: &str, args: &[String]) -> ExitCode {
    let usage = format!(
        "usage: {program} lease show [--json] [--subnet CIDR] [--public-ip IP] [-etcd-* flags]"
    );
    match args.first().map(String::as_str) {
        Some("show") => {}
        Some("-h" | "-help" | "--help") => {
            errln!("{usage}");
            return ExitCode::SUCCESS;
        }
        _ => {
            errln!("{usage}");
            return ExitCode::from(2);
        }
    }
    init_logging(0);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(lease_show::run(program, &args[1..])) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => failure(&e),
    }
}

fn migrate_command(program: &str, args: &[String]) -> ExitCode {
    init_logging(0);
    let result = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(migrate_cmd::run(program, args)));
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => failure(&e),
    }
}

fn doctor_command(program: &str, args: &[String]) -> ExitCode {
    let result = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(doctor::run(program, args)));
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => failure(&e),
    }
}

fn docker_opts_command(program: &str, args: &[String]) -> ExitCode {
    let result = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(docker_opts::run(program, args)));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // the script's convention: every failure is exit 1
            errln!("error: {}", chain_text(&e));
            ExitCode::from(1)
        }
    }
}

fn install_command(program: &str, args: &[String], uninstall: bool) -> ExitCode {
    init_logging(0);
    let result = if uninstall {
        install_cmd::uninstall(program, args)
    } else {
        match runtime() {
            Ok(rt) => rt.block_on(install_cmd::install(program, args)),
            Err(e) => Err(e.into()),
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => failure(&e),
    }
}

/// Signals whose default action would end the process, that an operator or a process manager
/// may send without meaning "stop" (`kill -USR1` to ask for a dump, a CPU or file size
/// limit, a power event): caught and ignored, as Go's runtime (and so upstream) ignores them.
/// Must be called inside the runtime.
fn ignore_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let ignored = [
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
        (SignalKind::alarm(), "SIGALRM"),
        (SignalKind::io(), "SIGIO"),
        (SignalKind::from_raw(nix::libc::SIGVTALRM), "SIGVTALRM"),
        (SignalKind::from_raw(nix::libc::SIGPWR), "SIGPWR"),
        (SignalKind::from_raw(nix::libc::SIGXCPU), "SIGXCPU"),
        (SignalKind::from_raw(nix::libc::SIGXFSZ), "SIGXFSZ"),
    ];
    for (kind, name) in ignored {
        match signal(kind) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        tracing::debug!("Received {name}; ignored");
                    }
                });
            }
            Err(e) => warn!("cannot catch {name}, which would then end flanneld-rs: {e}"),
        }
    }
}

fn daemon_command(program: &str, args: &[String]) -> ExitCode {
    // -version is handled before the environment is read, as upstream.
    let values = match cli::parse(cli::DAEMON_FLAGS, args, &|k| std::env::var(k).ok()) {
        Ok(cli::Parsed::Run(v)) => v,
        Ok(cli::Parsed::Help) => {
            err_print!("{}", cli::usage(program, cli::DAEMON_FLAGS));
            err_print!("{}", cli::SUBCOMMANDS);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            errln!("{e}");
            err_print!("{}", cli::usage(program, cli::DAEMON_FLAGS));
            return ExitCode::from(2);
        }
    };
    if values.from_cli.contains(&"version") && values.bool(cli::DAEMON_FLAGS, "version") {
        errln!("v{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let opts = match options::Options::from_values(&values).and_then(|o| match &o.kube {
        Some(kube) => kube_mode::check_settings(kube).map(|()| o),
        None => options::check_etcd_files(&o.etcd).map(|()| o),
    }) {
        Ok(o) => o,
        Err(e) => {
            errln!("{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(opts.verbosity);
    info!("CLI flags config: {:?}", loggable(&values));
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error!("starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let shared = Arc::new(health::Shared::default());
    let code = rt.block_on(async {
        let signals = async {
            use tokio::signal::unix::{signal, SignalKind};
            ignore_signals();
            let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::quit()),
                signal(SignalKind::hangup()),
            ) else {
                return std::future::pending().await;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => return "SIGTERM",
                    _ = int.recv() => return "SIGINT",
                    _ = quit.recv() => return "SIGQUIT",
                    _ = hup.recv() => info!(
                        "Received SIGHUP; flanneld-rs reloads nothing: restart it to apply changed flags or network config"
                    ),
                }
            }
        };
        tokio::select! {
            name = signals => {
                // Nothing is torn down: device, routes, rules, subnet.env and the lease stay,
                // so that a restart does not disturb traffic (upstream behaves the same).
                info!("Received {name}; Exiting cleanly...");
                sdnotify::notify("STOPPING=1");
                0
            }
            result = daemon::run(opts, shared) => {
                match result {
                    Ok(()) => 0,
                    Err(e) => {
                        error!("{}", chain_text(&e));
                        1
                    }
                }
            }
        }
    });
    // Do not wait for background work (a stuck etcd call) to finish: exit now.
    std::process::exit(code);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(30);
        let inner = flannel_net::SubnetEnvError::Write {
            path: "/run/flannel/subnet.env".into(),
            source: io,
        };
        let e = anyhow::Error::new(inner).context("writing the subnet file");
        assert_eq!(
            chain_text(&e),
            "writing the subnet file: failed to write subnet file /run/flannel/subnet.env: Read-only file system (os error 30)"
        );
    }

    #[test]
    fn verbosity_raises_our_levels_only() {
        assert!(log_filter(0).starts_with("warn,flanneld_rs=info,"));
        let debug = log_filter(2);
        assert!(debug.starts_with("warn,"));
        assert!(debug.contains("flannel_subnet=debug"));
        assert!(!debug.contains("h2") && !debug.contains("netlink_proto"));
        assert!(log_filter(0).contains("kube_client=off"));
        assert!(!debug.contains("kube_client"));
        assert!(log_filter(5).contains("flannel_backend=trace"));
    }

    #[test]
    fn the_password_is_not_logged() {
        let args: Vec<String> = ["-etcd-password=s3cret", "-etcd-username=flannel"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cli::Parsed::Run(v) = cli::parse(cli::DAEMON_FLAGS, &args, &|_| None).unwrap() else {
            panic!("not a run")
        };
        let shown = format!("{:?}", loggable(&v));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("\"etcd-password\": [\"******\"]"), "{shown}");
        assert!(shown.contains("flannel"), "{shown}");
    }
}
