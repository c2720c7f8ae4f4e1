//! `flanneld-rs migrate --from v2 --to v3`: the network config and every lease copied from the
//! etcd v2 keyspace to v3, as they are (same subnets, same values), TTLs carried over as etcd
//! leases of the remaining time, reservations as keys without lease. Idempotent; refuses
//! when v3 already holds a different config. Nodes restarted with `-etcd-api=v3` then find
//! their lease by PublicIP and keep their subnet.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{client, EtcdV2SubnetManager};
use crate::etcd::{join_key, EtcdConfig};
use crate::SubnetError;

/// What a migration did (or, dry, would do), one line per key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub lines: Vec<String>,
    pub copied: usize,
    pub unchanged: usize,
    /// Keys that exist in v3 with another value: left alone.
    pub conflicts: usize,
}

fn v3_err(context: String) -> impl FnOnce(etcd_client::Error) -> SubnetError {
    move |source| SubnetError::Etcd { context, source }
}

pub async fn migrate_v2_to_v3(
    cfg: &EtcdConfig,
    dry_run: bool,
) -> Result<MigrateReport, SubnetError> {
    let v2 = EtcdV2SubnetManager::new(cfg.clone(), None)?;
    let mut v3 = cfg.connect().await?;
    let config_key = join_key(&cfg.prefix, "config");
    let subnets = join_key(&cfg.prefix, "subnets");
    let mut report = MigrateReport::default();
    let verb = if dry_run { "would copy" } else { "copied" };

    let config = match v2.client().get(&config_key, false).await {
        Ok(r) => r.node.value.unwrap_or_default(),
        Err(e) if e.code() == Some(client::KEY_NOT_FOUND) => {
            return Err(SubnetError::Setup(format!(
                "no network config at {config_key} in the etcd v2 keyspace: nothing to migrate"
            )))
        }
        Err(e) => return Err(e.into_subnet_error("reading the v2 network config")),
    };
    let existing = v3
        .get(config_key.as_str(), None)
        .await
        .map_err(v3_err(format!("reading {config_key} (v3)")))?;
    match existing.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()) {
        Some(v) if v == config => {
            report.unchanged += 1;
            report.lines.push(format!("unchanged: {config_key}"));
        }
        Some(v) => {
            return Err(SubnetError::Setup(format!(
                "the etcd v3 keyspace holds a different network config at {config_key}: {v} (v2 has {config}); refusing to migrate"
            )))
        }
        None => {
            if !dry_run {
                v3.put(config_key.as_str(), config.as_str(), None)
                    .await
                    .map_err(v3_err(format!("writing {config_key} (v3)")))?;
            }
            report.copied += 1;
            report.lines.push(format!("{verb}: {config_key} = {config}"));
        }
    }

    let nodes = match v2.client().get(&subnets, true).await {
        Ok(r) => r.node.nodes,
        Err(e) if e.code() == Some(client::KEY_NOT_FOUND) => Vec::new(),
        Err(e) => return Err(e.into_subnet_error("listing the v2 leases")),
    };
    for node in nodes {
        let key = node.key.clone();
        let value = node.value.clone().unwrap_or_default();
        let current = v3
            .get(key.as_str(), None)
            .await
            .map_err(v3_err(format!("reading {key} (v3)")))?;
        if let Some(kv) = current.kvs().first() {
            if kv.value() == value.as_bytes() {
                report.unchanged += 1;
                report.lines.push(format!("unchanged: {key}"));
            } else {
                report.conflicts += 1;
                report.lines.push(format!(
                    "conflict: {key} holds another value in v3, left alone: {}",
                    String::from_utf8_lossy(kv.value())
                ));
            }
            continue;
        }
        let what = match node.ttl {
            Some(t) => format!("with a {t} s lease"),
            None => "as a reservation (no TTL)".to_string(),
        };
        if !dry_run {
            let opts = match node.ttl {
                Some(t) => {
                    let lease = v3
                        .lease_grant(t.max(1), None)
                        .await
                        .map_err(v3_err(format!("granting a lease for {key}")))?;
                    Some(PutOptions::new().with_lease(lease.id()))
                }
                None => None,
            };
            let txn = Txn::new()
                .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), opts)]);
            let created = v3
                .txn(txn)
                .await
                .map_err(v3_err(format!("writing {key} (v3)")))?
                .succeeded();
            if !created {
                report.conflicts += 1;
                report.lines.push(format!(
                    "conflict: {key} appeared in v3 meanwhile, left alone"
                ));
                continue;
            }
        }
        report.copied += 1;
        report.lines.push(format!("{verb}: {key} {what}"));
    }
    Ok(report)
}
