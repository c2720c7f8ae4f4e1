//! `flanneld-rs migrate --from v2 --to v3`: copies the network config and every lease of
//! the etcd v2 keyspace (clusters the Ansible role built with flannel v0.10 / v0.16) to v3.

use flannel_subnet::etcd::EtcdV3Store;
use flannel_subnet::etcd2::migrate::migrate;
use flannel_subnet::etcd2::EtcdV2Store;

use crate::cli::{self, CliError, Flag, Kind, Parsed, DAEMON_FLAGS};
use crate::options::checked_etcd_config;

fn flags() -> Vec<Flag> {
    let mut flags: Vec<Flag> = DAEMON_FLAGS
        .iter()
        .copied()
        .filter(|f| f.name.starts_with("etcd-") && f.name != "etcd-api")
        .collect();
    for (name, kind, default, usage) in [
        ("from", Kind::Str, "", "the keyspace to copy from: v2"),
        ("to", Kind::Str, "", "the keyspace to copy to: v3"),
        (
            "dry-run",
            Kind::Bool,
            "false",
            "only list what would be copied",
        ),
    ] {
        flags.push(Flag {
            name,
            kind,
            default,
            usage,
            hidden: false,
        });
    }
    flags
}

pub async fn run(program: &str, args: &[String]) -> anyhow::Result<i32> {
    let flags = flags();
    let usage = || cli::usage(&format!("{program} migrate"), &flags);
    let values = match cli::parse(&flags, args, &|k| std::env::var(k).ok()) {
        Ok(Parsed::Run(v)) => v,
        Ok(Parsed::Help) => {
            err_print!("{}", usage());
            return Ok(0);
        }
        Err(e) => return Err(CliError(format!("{e}\n{}", usage())).into()),
    };
    if values.string(&flags, "from") != "v2" || values.string(&flags, "to") != "v3" {
        return Err(CliError(format!("only --from v2 --to v3 is supported\n{}", usage())).into());
    }
    let cfg = checked_etcd_config(&values)?;
    cfg.insecure_warning();
    let from = EtcdV2Store::new(&cfg)?;
    let to = EtcdV3Store::new(&cfg).await?;
    let report = migrate(&from, &to, values.bool(&flags, "dry-run")).await?;
    for line in &report.lines {
        outln!("{line}");
    }
    outln!(
        "{} copied, {} unchanged, {} conflicts, {} skipped{}",
        report.copied,
        report.unchanged,
        report.conflicts,
        report.skipped,
        if values.bool(&flags, "dry-run") {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    if report.conflicts == 0 && !values.bool(&flags, "dry-run") {
        outln!("restart the nodes one by one with -etcd-api=v3 (or auto): each keeps its subnet");
    }
    Ok(if report.conflicts > 0 { 1 } else { 0 })
}
