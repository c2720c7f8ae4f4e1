//! The iptables driver. Reads the tables with one `iptables-save`, compares them with the
//! wanted chains, and writes only when something is missing or changed, with one
//! `iptables-restore --noflush` for all tables (atomic per table: a chain is never seen
//! half-filled).

use tracing::{debug, info};

use flannel_net::Family;

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

/// Every table of an `iptables-save` listing, by name.
pub fn parse_tables(text: &str) -> std::collections::HashMap<String, SavedTable> {
    let mut out = std::collections::HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            current = Some((name.trim().to_string(), String::new()));
        } else if line == "COMMIT" {
            if let Some((name, body)) = current.take() {
                out.insert(name, SavedTable::parse(&body));
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
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

/// What is wrong with `want` in `current`, in an operator's words (`None`: nothing; the same
/// test as [`restore_payload`]).
pub fn difference(current: &SavedTable, want: &ChainRules, keep: bool) -> Option<String> {
    restore_payload(current, want, keep)?;
    let (chain, table, hook) = (want.chain, want.table, want.hook);
    let jump = want.jump();
    let jumps = current.rules_of(hook).filter(|r| *r == jump).count();
    let mut why = Vec::new();
    if !keep {
        if current.has_chain(chain) {
            why.push(format!(
                "chain {chain} of table {table} is there but should be gone"
            ));
        }
        if jumps > 0 {
            why.push(format!("{hook} still jumps to {chain}"));
        }
    } else if !current.has_chain(chain) {
        why.push(format!("chain {chain} of table {table} is missing"));
    } else {
        let have: Vec<&str> = current.rules_of(chain).collect();
        if have.is_empty() {
            why.push(format!("chain {chain} of table {table} is empty (flushed)"));
        } else if !have
            .iter()
            .copied()
            .eq(want.rules.iter().map(String::as_str))
        {
            let missing = want
                .rules
                .iter()
                .filter(|r| !have.contains(&r.as_str()))
                .count();
            let foreign = have
                .iter()
                .filter(|r| !want.rules.iter().any(|w| w == *r))
                .count();
            why.push(format!(
                "chain {chain} of table {table} differs from flannel's: {missing} of its {} rules missing, {foreign} not flannel's{}",
                want.rules.len(),
                if missing == 0 && foreign == 0 { ", in another order" } else { "" }
            ));
        }
    }
    if keep && jumps == 0 {
        why.push(format!("no jump to {chain} from {hook}"));
    } else if keep && jumps > 1 {
        why.push(format!("{jumps} jumps to {chain} from {hook}, not one"));
    }
    if current
        .rules_of(hook)
        .any(|r| want.legacy.iter().any(|l| l == r))
    {
        why.push(format!("an old flannel rule is left in {hook}"));
    }
    Some(why.join("; "))
}

/// Drives iptables (or ip6tables) for one address family.
#[derive(Debug, Clone)]
pub struct Iptables {
    save: std::path::PathBuf,
    restore: std::path::PathBuf,
    cli: std::path::PathBuf,
}

impl Iptables {
    pub fn new(tools: &Tools, family: Family) -> Self {
        if family.is_v6() {
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

    /// `iptables --version`, e.g. `iptables v1.8.9 (nf_tables)`. Read from where the
    /// `iptables` link points when it is one of the xtables multi-binaries (1.8 and later:
    /// no process); else asked with one process, at start.
    pub async fn version(&self) -> Result<String, MasqError> {
        if let Some(v) = version_from_link(&self.cli) {
            return Ok(v);
        }
        run(&self.cli, &["--version"], None).await
    }

    /// What is wrong with each chain of `chains` whose table does not hold it as wanted (a
    /// missing, flushed or changed chain, a missing or doubled jump, one left that should be
    /// gone), in words: one `iptables-save`, nothing written.
    pub async fn differing(&self, chains: &[(ChainRules, bool)]) -> Result<Vec<String>, MasqError> {
        let tables = parse_tables(&run(&self.save, &[], None).await?);
        let empty = SavedTable::default();
        Ok(chains
            .iter()
            .filter_map(|(want, keep)| {
                difference(tables.get(want.table).unwrap_or(&empty), want, *keep)
            })
            .collect())
    }

    /// Makes each table hold its chain (or none of it where `keep` is false): one
    /// `iptables-save` for all tables, one `iptables-restore` only when something differs.
    /// Returns the number of tables rewritten.
    pub async fn ensure(&self, chains: &[(ChainRules, bool)]) -> Result<usize, MasqError> {
        let tables = parse_tables(&run(&self.save, &[], None).await?);
        let empty = SavedTable::default();
        let mut payload = String::new();
        let mut written = 0;
        for (want, keep) in chains {
            let current = tables.get(want.table).unwrap_or(&empty);
            if let Some(p) = restore_payload(current, want, *keep) {
                if *keep {
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
                payload += &p;
                written += 1;
            }
        }
        if written > 0 {
            debug!("iptables-restore payload:\n{payload}");
            run(&self.restore, &["--noflush", "--wait"], Some(&payload)).await?;
        }
        Ok(written)
    }
}

/// Debian and most distributions install iptables 1.8+ as links to `xtables-nft-multi` or
/// `xtables-legacy-multi`: the link says which backend it is.
fn version_from_link(cli: &std::path::Path) -> Option<String> {
    let path = if cli.is_absolute() {
        cli.to_path_buf()
    } else {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| std::path::Path::new(d).join(cli))
            .find(|p| p.exists())?
    };
    let target = std::fs::canonicalize(path).ok()?;
    match target.file_name()?.to_str()? {
        "xtables-nft-multi" => Some("iptables v1.8 (nf_tables)".into()),
        "xtables-legacy-multi" => Some("iptables v1.8 (legacy)".into()),
        _ => None,
    }
}

/// Whether MASQUERADE `--random-fully` is available: iptables 1.6.2 or later, as upstream's
/// go-iptables `HasRandomFully`.
pub fn has_random_fully(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v >= (1, 6, 2))
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
    use crate::rules::{example_spec, masq_chain};

    fn want() -> ChainRules {
        masq_chain(&example_spec())
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

    /// doctor's words for each way a chain can be wrong (issue 32: a flushed chain was "not
    /// flannel's").
    #[test]
    fn each_difference_is_said_in_words() {
        let w = want();
        let said = |text: &str, keep| difference(&SavedTable::parse(text), &w, keep);
        assert_eq!(said(&saved(""), true), None);
        let flushed = format!(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING {}\nCOMMIT\n",
            w.jump()
        );
        assert_eq!(
            said(&flushed, true).unwrap(),
            "chain FLANNEL-POSTRTG of table nat is empty (flushed)"
        );
        assert_eq!(
            said("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", true).unwrap(),
            "chain FLANNEL-POSTRTG of table nat is missing; no jump to FLANNEL-POSTRTG from POSTROUTING"
        );
        let extra = said(&saved("-A FLANNEL-POSTRTG -j ACCEPT\n"), true).unwrap();
        assert_eq!(
            extra,
            format!(
                "chain FLANNEL-POSTRTG of table nat differs from flannel's: 0 of its {} rules missing, 1 not flannel's",
                w.rules.len()
            )
        );
        let doubled = said(&saved(&format!("-A POSTROUTING {}\n", w.jump())), true).unwrap();
        assert_eq!(
            doubled,
            "2 jumps to FLANNEL-POSTRTG from POSTROUTING, not one"
        );
        assert_eq!(
            said(&saved(""), false).unwrap(),
            "chain FLANNEL-POSTRTG of table nat is there but should be gone; POSTROUTING still jumps to FLANNEL-POSTRTG"
        );
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
    fn all_tables_of_one_save() {
        let text = "# Generated\n*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j X\nCOMMIT\n*nat\n:FLANNEL-POSTRTG - [0:0]\n-A FLANNEL-POSTRTG -j RETURN\nCOMMIT\n";
        let t = parse_tables(text);
        assert_eq!(
            t["filter"].rules,
            vec![("FORWARD".to_string(), "-j X".to_string())]
        );
        assert_eq!(t["nat"].chains, vec!["FLANNEL-POSTRTG".to_string()]);
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
