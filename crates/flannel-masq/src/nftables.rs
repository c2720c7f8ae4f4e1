//! The nftables driver (`"EnableNFTables": true`): one table per family, applied with one
//! `nft -f` transaction, checked with one `nft list table` per resync (upstream has no resync).

use tracing::info;

use crate::exec::{run, Tools};
use crate::rules::{nft_listing, nft_script, nft_table, RuleSpec};
use crate::MasqError;

#[derive(Debug, Clone)]
pub struct Nftables {
    nft: std::path::PathBuf,
}

impl Nftables {
    pub fn new(tools: &Tools) -> Self {
        Nftables {
            nft: tools.nft.clone(),
        }
    }

    /// Whether `masquerade fully-random` is accepted (upstream checks a test chain).
    pub async fn has_random_fully(&self) -> Result<bool, MasqError> {
        let probe = "add table ip flannel-probe\nadd chain ip flannel-probe masqueradeTest { type nat hook postrouting priority srcnat ; }\nadd rule ip flannel-probe masqueradeTest masquerade fully-random\n";
        match run(&self.nft, &["--check", "-f", "-"], Some(probe)).await {
            Ok(_) => Ok(true),
            Err(MasqError::Failed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The table as nft prints it; `None` when it does not exist.
    pub async fn read(&self, family: &str, table: &str) -> Result<Option<String>, MasqError> {
        match run(&self.nft, &["list", "table", family, table], None).await {
            Ok(text) => Ok(Some(text)),
            Err(MasqError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the family's flannel table hold exactly our chains. Returns whether it wrote.
    pub async fn ensure(&self, spec: &RuleSpec) -> Result<bool, MasqError> {
        let (family, table) = nft_table(spec);
        let want = nft_listing(spec);
        if self.read(family, table).await?.as_deref() == Some(want.as_str()) {
            return Ok(false);
        }
        info!("nftables table {family} {table} is missing rules; applying them");
        run(&self.nft, &["-f", "-"], Some(&nft_script(spec))).await?;
        Ok(true)
    }

    /// Removes a flannel table (when iptables mode is chosen). Returns whether it existed.
    pub async fn remove(&self, family: &str, table: &str) -> Result<bool, MasqError> {
        match run(&self.nft, &["delete", "table", family, table], None).await {
            Ok(_) => Ok(true),
            Err(MasqError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// The rule lines of an `nft list table` listing (not the table, chain and hook lines).
fn rule_lines(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && *l != "}"
                && !l.starts_with("table ")
                && !l.starts_with("chain ")
                && !l.starts_with("type ")
        })
        .collect()
}

/// How the table listed as `have` differs from flannel's `want`, in words.
pub fn difference(have: &str, want: &str) -> String {
    let (have, want) = (rule_lines(have), rule_lines(want));
    if have.is_empty() {
        return "holds none of flannel's rules (flushed)".to_string();
    }
    let missing = want.iter().filter(|r| !have.contains(r)).count();
    let foreign = have.iter().filter(|r| !want.contains(r)).count();
    format!(
        "differs from flannel's: {missing} of its {} rules missing, {foreign} not flannel's{}",
        want.len(),
        if missing == 0 && foreign == 0 {
            " (its chains differ)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{example_spec, nft_listing};

    #[test]
    fn a_flushed_or_changed_table_is_said_in_words() {
        let want = nft_listing(&example_spec());
        let flushed: String = want
            .lines()
            .filter(|l| {
                let t = l.trim();
                t.starts_with("table")
                    || t.starts_with("chain")
                    || t.starts_with("type")
                    || t == "}"
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            difference(&flushed, &want),
            "holds none of flannel's rules (flushed)"
        );
        let one_gone: String = want
            .lines()
            .filter(|l| !l.contains("masquerade"))
            .map(|l| format!("{l}\n"))
            .collect();
        let said = difference(&one_gone, &want);
        assert!(said.starts_with("differs from flannel's: "), "{said}");
        assert!(!said.contains(" 0 of its"), "{said}");
    }
}
