//! `flanneld-rs migrate --from v2 --to v3`: the network config and every lease copied from the
//! etcd v2 keyspace to v3, as they are (same subnets, same values), TTLs carried over as etcd
//! leases of the remaining time, reservations as keys without lease. Idempotent; refuses
//! when v3 already holds a different config. Nodes restarted with `-etcd-api=v3` then find
//! their lease by PublicIP and keep their subnet. Reads and writes through the two stores.

use crate::store::{Cond, Key, Life, Store};
use crate::SubnetError;

/// What a migration did (or, dry, would do), one line per key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub lines: Vec<String>,
    pub copied: usize,
    pub unchanged: usize,
    /// Keys that exist in v3 with another value: left alone.
    pub conflicts: usize,
    /// Keys left in v2 because they are no lease (not a subnet key, a value that does not
    /// parse): each has a line saying why.
    pub skipped: usize,
}

pub async fn migrate(
    from: &dyn Store,
    to: &dyn Store,
    dry_run: bool,
) -> Result<MigrateReport, SubnetError> {
    let mut report = MigrateReport::default();
    let verb = if dry_run { "would copy" } else { "copied" };
    let config_key = from.describe(&Key::Config);

    let Some(config) = from.get(&Key::Config).await?.0 else {
        return Err(SubnetError::Setup(format!(
            "no network config at {config_key} in the {} keyspace: nothing to migrate",
            from.name()
        )));
    };
    let config_text = String::from_utf8_lossy(&config.value).into_owned();
    if let Err(e) = flannel_net::NetworkConfig::from_etcd(&config_text) {
        return Err(SubnetError::Setup(format!(
            "the network config at {config_key} in the {} keyspace is not valid ({e}): {config_text}; fix it there before migrating",
            from.name()
        )));
    }
    match to.get(&Key::Config).await?.0 {
        Some(v) if v.value == config.value => {
            report.unchanged += 1;
            report.lines.push(format!("unchanged: {config_key}"));
        }
        Some(v) => {
            return Err(SubnetError::Setup(format!(
                "the {} keyspace holds a different network config at {config_key}: {} ({} has {config_text}); refusing to migrate",
                to.name(),
                String::from_utf8_lossy(&v.value),
                from.name(),
            )))
        }
        None => {
            if !dry_run && !to.put(&Key::Config, &config.value, Life::Forever, Cond::Absent).await? {
                return Err(SubnetError::Conflict(to.describe(&Key::Config)));
            }
            report.copied += 1;
            report.lines.push(format!("{verb}: {config_key} = {config_text}"));
        }
    }

    let (records, _) = from.list().await?;
    for record in records {
        let key = Key::Subnet(record.name.clone());
        let name = to.describe(&key);
        let why = match record.name.parse::<flannel_net::SubnetKey>() {
            Err(e) => Some(e.to_string()),
            Ok(_) => flannel_net::LeaseAttrs::from_json(&record.value)
                .err()
                .map(|e| e.to_string()),
        };
        if let Some(why) = why {
            report.skipped += 1;
            report.lines.push(format!(
                "warning: skipped {}: not a lease ({why}); left in the {} keyspace",
                from.describe(&key),
                from.name()
            ));
            continue;
        }
        if let Some(current) = to.get(&key).await?.0 {
            if current.value == record.value {
                report.unchanged += 1;
                report.lines.push(format!("unchanged: {name}"));
            } else {
                report.conflicts += 1;
                report.lines.push(format!(
                    "conflict: {name} holds another value in {}, left alone: {}",
                    to.name(),
                    String::from_utf8_lossy(&current.value)
                ));
            }
            continue;
        }
        let (life, what) = match (record.expires, record.remaining) {
            (false, _) => (Life::Forever, "as a reservation (no TTL)".to_string()),
            (true, left) => {
                let left = left.unwrap_or(crate::SUBNET_TTL);
                (
                    Life::Ttl(left),
                    format!("with a {} s lease", left.as_secs()),
                )
            }
        };
        if !dry_run && !to.put(&key, &record.value, life, Cond::Absent).await? {
            report.conflicts += 1;
            report.lines.push(format!(
                "conflict: {name} appeared in {} meanwhile, left alone",
                to.name()
            ));
            continue;
        }
        report.copied += 1;
        report.lines.push(format!("{verb}: {name} {what}"));
    }
    Ok(report)
}
