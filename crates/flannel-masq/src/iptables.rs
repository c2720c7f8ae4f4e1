//! The iptables driver. Reads one table with one `iptables-save -t <table>`, compares it with
//! the wanted chain, and writes only when something is missing or changed, with one
//! `iptables-restore --noflush` per table (atomic: the chain is never seen half-filled).

use tracing::{debug, info};

use crate::exec::{run, Tools};
use crate::rules::ChainRules;
use crate::MasqError;

/// One table as `iptables-save -t <table>` shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SavedTable {
    pub chains: Vec<String>,
    /// (chain, rule spec) in order.
    pub rules: Vec<(String, String)>,
}

impl SavedTable {
    pub fn parse(text: &str) -> SavedTable {
        let mut t = SavedTable::default();
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    t.chains.push(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                if let Some((chain, spec)) = rule.split_once(' ') {
                    t.rules.push((chain.to_string(), spec.to_string()));
                }
            }
        }
        t
    }

    fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.rules
            .iter()
            .filter(move |(c, _)| c == chain)
            .map(|(_, r)| r.as_str())
    }

    fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }
}

/// The `iptables-restore --noflush` payload that turns `current` into `want` (or removes our
/// chain when `want` has no rules to keep), `None` when nothing is to be done.
pub fn restore_payload(current: &SavedTable, want: &ChainRules, keep: bool) -> Option<String> {
    let jump = want.jump();
    let jumps = current.rules_of(want.hook).filter(|r| *r == jump).count();
    let legacy: Vec<&str> = current
        .rules_of(want.hook)
        .filter(|r| want.legacy.iter().any(|l| l == r))
        .collect();
    let chain_ok = current.has_chain(want.chain)
        && current
            .rules_of(want.chain)
            .eq(want.rules.iter().map(String::as_str));
    let mut body = String::new();
    if keep {
        if chain_ok && jumps == 1 && legacy.is_empty() {
            return None;
        }
        if !chain_ok {
            // declaring a user chain in a --noflush restore creates it or flushes it
            body += &format!(":{} - [0:0]\n", want.chain);
            for r in &want.rules {
                body += &format!("-A {} {r}\n", want.chain);
            }
        }
        for _ in 1..jumps.max(1) {
            body += &format!("-D {} {jump}\n", want.hook);
        }
        if jumps == 0 {
            body += &format!("-A {} {jump}\n", want.hook);
        }
    } else {
        if !current.has_chain(want.chain) && jumps == 0 && legacy.is_empty() {
            return None;
        }
        for _ in 0..jumps {
            body += &format!("-D {} {jump}\n", want.hook);
        }
        if current.has_chain(want.chain) {
            body += &format!(":{} - [0:0]\n-X {}\n", want.chain, want.chain);
        }
    }
    for rule in legacy {
        body += &format!("-D {} {rule}\n", want.hook);
    }
    Some(format!("*{}\n{body}COMMIT\n", want.table))
}

/// Drives iptables (or ip6tables) for one address family.
#[derive(Debug, Clone)]
pub struct Iptables {
    save: std::path::PathBuf,
    restore: std::path::PathBuf,
    cli: std::path::PathBuf,
}

impl Iptables {
    pub fn new(tools: &Tools, ipv6: bool) -> Self {
        if ipv6 {
            Iptables {
                save: tools.ip6tables_save.clone(),
                restore: tools.ip6tables_restore.clone(),
                cli: tools.ip6tables.clone(),
            }
        } else {
            Iptables {
                save: tools.iptables_save.clone(),
                restore: tools.iptables_restore.clone(),
                cli: tools.iptables.clone(),
            }
        }
    }

    /// Whether MASQUERADE `--random-fully` is available (iptables 1.6.2 or later, as
    /// upstream's go-iptables `HasRandomFully`). One process, at start.
    pub async fn has_random_fully(&self) -> Result<bool, MasqError> {
        let out = run(&self.cli, &["--version"], None).await?;
        Ok(parse_version(&out).is_some_and(|v| v >= (1, 6, 2)))
    }

    /// Reads one table.
    pub async fn read(&self, table: &str) -> Result<SavedTable, MasqError> {
        Ok(SavedTable::parse(
            &run(&self.save, &["-t", table], None).await?,
        ))
    }

    /// Makes the table hold `want` (or none of it when `keep` is false). One read; one write
    /// only when needed. Returns whether it wrote.
    pub async fn ensure(&self, want: &ChainRules, keep: bool) -> Result<bool, MasqError> {
        let current = self.read(want.table).await?;
        let Some(payload) = restore_payload(&current, want, keep) else {
            return Ok(false);
        };
        if keep {
            info!(
                "Some iptables rules are missing in table {}; restoring {}",
                want.table, want.chain
            );
        } else {
            info!(
                "removing flannel's {} chain from table {}",
                want.chain, want.table
            );
        }
        debug!("iptables-restore payload:\n{payload}");
        run(&self.restore, &["--noflush", "--wait"], Some(&payload)).await?;
        Ok(true)
    }
}

/// `iptables v1.8.9 (nf_tables)` -> (1, 8, 9)
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{masq_chain, RuleSpec};

    fn want() -> ChainRules {
        masq_chain(&RuleSpec {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            ip_masq: true,
            forward: true,
            random_fully: true,
            previous: None,
        })
    }

    fn saved(extra: &str) -> String {
        let w = want();
        let mut s = String::from(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n",
        );
        s += "-A POSTROUTING -j KUBE-POSTROUTING\n";
        s += &format!("-A POSTROUTING {}\n", w.jump());
        for r in &w.rules {
            s += &format!("-A FLANNEL-POSTRTG {r}\n");
        }
        s += extra;
        s + "COMMIT\n"
    }

    #[test]
    fn intact_rules_need_no_write() {
        assert_eq!(
            restore_payload(&SavedTable::parse(&saved("")), &want(), true),
            None
        );
    }

    #[test]
    fn fresh_table_gets_chain_and_one_jump() {
        let p = restore_payload(
            &SavedTable::parse("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"),
            &want(),
            true,
        )
        .unwrap();
        assert!(p.starts_with("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A FLANNEL-POSTRTG -m mark"));
        assert!(p.ends_with(
            "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\nCOMMIT\n"
        ));
    }

    #[test]
    fn changed_chain_is_rewritten_duplicate_jumps_and_legacy_rules_removed() {
        let w = want();
        let text = saved(&format!(
            "-A POSTROUTING {}\n-A POSTROUTING -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN\n",
            w.jump()
        ))
        .replace(
            "-A FLANNEL-POSTRTG -s 10.244.1.0/24",
            "-A FLANNEL-POSTRTG -s 10.244.9.0/24",
        );
        let p = restore_payload(&SavedTable::parse(&text), &w, true).unwrap();
        assert!(p.contains(":FLANNEL-POSTRTG - [0:0]\n"));
        assert_eq!(
            p.matches(&format!("-D POSTROUTING {}", w.jump())).count(),
            1
        );
        assert!(!p.contains("-A POSTROUTING"));
        assert!(p.contains("-D POSTROUTING -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN\n"));
        assert!(!p.contains("KUBE"), "never touches other rules");
    }

    #[test]
    fn removal_deletes_jumps_then_the_chain() {
        let p = restore_payload(&SavedTable::parse(&saved("")), &want(), false).unwrap();
        assert_eq!(
            p,
            "*nat\n-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n:FLANNEL-POSTRTG - [0:0]\n-X FLANNEL-POSTRTG\nCOMMIT\n"
        );
        assert_eq!(
            restore_payload(&SavedTable::parse("*nat\nCOMMIT\n"), &want(), false),
            None
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)\n"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_version("iptables v1.6\n"), Some((1, 6, 0)));
        assert_eq!(parse_version("garbage"), None);
    }
}
