//! `flanneld-rs`: a drop-in replacement for upstream flanneld (etcd v3 or v2; the vxlan and
//! alloc backends).
//!
//! `flanneld-rs [flags]` runs the daemon with upstream's flags and `FLANNELD_*` environment.
//! Subcommands: `lease show` lists the leases, `install` / `uninstall` lay down (or remove)
//! what the Ansible role did, `migrate --from v2 --to v3` copies a v2 cluster's data.
//! Installed or linked as `flanneld`, it behaves the same.

mod cli;
mod daemon;
mod health;
mod iface;
mod install_cmd;
mod lease_show;
mod memory;
mod migrate_cmd;
mod options;
mod sdnotify;

use std::process::ExitCode;
use std::sync::Arc;

use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn init_logging(verbosity: i64) {
    // klog's -v: 0-1 info, 2-4 debug, 5+ trace. RUST_LOG, when set, wins.
    let level = match verbosity {
        i64::MIN..=1 => "info",
        2..=4 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // One thread: flanneld waits on etcd and netlink; it never needs two cores.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let program = args.first().cloned().unwrap_or_else(|| "flanneld".into());
    let rest = &args[args.len().min(1)..];
    match rest.first().map(String::as_str) {
        Some("lease") => return lease_command(&program, &rest[1..]),
        Some("install") => return install_command(&program, &rest[1..], false),
        Some("uninstall") => return install_command(&program, &rest[1..], true),
        Some("migrate") => return migrate_command(&program, &rest[1..]),
        _ => {}
    }
    daemon_command(&program, rest)
}

fn lease_command(program: &str, args: &[String]) -> ExitCode {
    if args.first().map(String::as_str) != Some("show") {
        eprintln!(
            "usage: {program} lease show [--json] [--subnet CIDR] [--public-ip IP] [-etcd-* flags]"
        );
        return ExitCode::from(2);
    }
    init_logging(0);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(lease_show::run(program, &args[1..])) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn migrate_command(program: &str, args: &[String]) -> ExitCode {
    init_logging(0);
    let result = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(migrate_cmd::run(program, args)));
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
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
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn daemon_command(program: &str, args: &[String]) -> ExitCode {
    // -version is handled before the environment is read, as upstream.
    let values = match cli::parse(cli::DAEMON_FLAGS, args, &|k| std::env::var(k).ok()) {
        Ok(cli::Parsed::Run(v)) => v,
        Ok(cli::Parsed::Help) => {
            eprint!("{}", cli::usage(program, cli::DAEMON_FLAGS));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            eprint!("{}", cli::usage(program, cli::DAEMON_FLAGS));
            return ExitCode::from(2);
        }
    };
    if values.from_cli.contains(&"version") && values.bool(cli::DAEMON_FLAGS, "version") {
        eprintln!("v{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let opts = match options::Options::from_values(&values) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(opts.verbosity);
    info!("CLI flags config: {:?}", values.values);
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
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
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
                        error!("{e:#}");
                        1
                    }
                }
            }
        }
    });
    // Do not wait for background work (a stuck etcd call) to finish: exit now.
    std::process::exit(code);
}
