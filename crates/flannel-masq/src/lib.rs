//! Traffic rules of flanneld-rs: upstream's masquerade (`--ip-masq`) and forward
//! (`--iptables-forward-rules`) rules, byte-identical, kept in place cheaply.
//!
//! [`rules`] makes the rule text (pure). [`TrafficManager`] keeps it in the kernel with the
//! iptables driver or, with `"EnableNFTables": true`, the nftables driver, and removes the
//! other mode's flannel rules. A resync in steady state is one read per table and no write
//! (upstream runs about 20 iptables processes per period and fights kube-proxy for the
//! xtables lock, #933, #2145). Rules stay in place when flanneld exits, as upstream, so a
//! restart does not interrupt traffic.

pub mod exec;
pub mod iptables;
pub mod nftables;
pub mod rules;

use tracing::{info, warn};

pub use exec::Tools;
pub use rules::RuleSpec;

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("cannot run `{command}`: {source} (is the iptables/nftables package installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed with status {status}: {stderr}")]
    Failed {
        command: String,
        status: i32,
        stderr: String,
        /// What was fed on stdin (a restore payload), for the debug log.
        input: Option<String>,
    },
}

/// Which kernel interface holds the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Nftables,
}

/// Keeps the rules of one address family in place.
#[derive(Debug, Clone)]
pub struct TrafficManager {
    mode: Mode,
    spec: RuleSpec,
    iptables: iptables::Iptables,
    nft: nftables::Nftables,
}

impl TrafficManager {
    /// `spec.random_fully` is the operator's wish; it is turned off here when the installed
    /// tools cannot do it.
    pub async fn new(mode: Mode, tools: &Tools, mut spec: RuleSpec) -> Result<Self, MasqError> {
        let iptables = iptables::Iptables::new(tools, spec.is_ipv6());
        let nft = nftables::Nftables::new(tools);
        if spec.ip_masq && spec.random_fully {
            let supported = match mode {
                Mode::Iptables => iptables.has_random_fully().await?,
                Mode::Nftables => nft.has_random_fully().await?,
            };
            if !supported {
                info!(
                    "MASQUERADE fully-random is not supported by the installed tools; not using it"
                );
                spec.random_fully = false;
            }
        }
        Ok(TrafficManager {
            mode,
            spec,
            iptables,
            nft,
        })
    }

    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Removes the other mode's flannel rules (upstream `CleanUp` of the other manager).
    /// A missing tool means there is nothing of that mode to remove.
    pub async fn remove_other_mode(&self) -> Result<(), MasqError> {
        let ignore_missing = |r: Result<bool, MasqError>| match r {
            Err(MasqError::Spawn { .. }) => Ok(false),
            other => other,
        };
        match self.mode {
            Mode::Iptables => {
                let (family, table) = rules::nft_table(&self.spec);
                if ignore_missing(self.nft.remove(family, table).await)? {
                    info!("removed nftables table {family} {table} (iptables mode)");
                }
            }
            Mode::Nftables => {
                for chain in [
                    rules::masq_chain(&self.spec),
                    rules::forward_chain(&self.spec),
                ] {
                    ignore_missing(self.iptables.ensure(&chain, false).await)?;
                }
            }
        }
        Ok(())
    }

    /// Checks the rules and restores what is missing or changed; one read per table, writes
    /// only when needed. Returns the number of tables rewritten.
    pub async fn ensure(&self) -> Result<usize, MasqError> {
        let mut written = 0;
        match self.mode {
            Mode::Iptables => {
                written += usize::from(
                    self.iptables
                        .ensure(&rules::masq_chain(&self.spec), self.spec.ip_masq)
                        .await?,
                );
                written += usize::from(
                    self.iptables
                        .ensure(&rules::forward_chain(&self.spec), self.spec.forward)
                        .await?,
                );
            }
            Mode::Nftables => written += usize::from(self.nft.ensure(&self.spec).await?),
        }
        Ok(written)
    }

    /// [`TrafficManager::ensure`] that logs instead of failing: for the resync loop.
    pub async fn resync(&self) -> usize {
        match self.ensure().await {
            Ok(n) => n,
            Err(e) => {
                warn!("resyncing traffic rules: {e}");
                0
            }
        }
    }
}
