//! Traffic rules of flanneld-rs: upstream's masquerade (`--ip-masq`) and forward
//! (`--iptables-forward-rules`) rules, byte-identical, kept in place cheaply.
//!
//! [`rules`] makes the rule text (pure). [`TrafficManager`] keeps it in the kernel with the
//! iptables driver or, with `"EnableNFTables": true`, the nftables driver, and removes the
//! other mode's flannel rules. A resync in steady state starts no process: the nf_tables
//! generation, read over netlink, says whether anything changed since the rules were last
//! found intact; only then are they read (one `iptables-save`) and, if needed, written (one
//! `iptables-restore`). Upstream runs about 20 iptables processes per period and fights
//! kube-proxy for the xtables lock (#933, #2145). Rules stay in place when flanneld exits, as upstream, so a
//! restart does not interrupt traffic.

pub mod exec;
pub mod iptables;
pub mod nfgen;
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
    /// It started, but its input or output broke (not a missing package).
    #[error("talking to `{command}`: {source}")]
    Pipe {
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
#[derive(Debug)]
pub struct TrafficManager {
    mode: Mode,
    spec: RuleSpec,
    iptables: iptables::Iptables,
    nft: nftables::Nftables,
    /// The rules live in nf_tables (nftables mode, or iptables-nft): its generation tells
    /// whether anything changed since the last check.
    generation_usable: bool,
    /// The generation at which the rules were last found intact.
    verified: std::sync::Mutex<Option<u32>>,
    /// Where that generation is recorded for the next run (see [`TrafficManager::with_state_file`]).
    state_file: Option<std::path::PathBuf>,
}

impl TrafficManager {
    /// `spec.random_fully` is the operator's wish; it is turned off here when the installed
    /// tools cannot do it.
    pub async fn new(mode: Mode, tools: &Tools, mut spec: RuleSpec) -> Result<Self, MasqError> {
        let iptables = iptables::Iptables::new(tools, spec.family());
        let nft = nftables::Nftables::new(tools);
        let version = match mode {
            Mode::Iptables => Some(iptables.version().await?),
            Mode::Nftables => None,
        };
        let generation_usable = match &version {
            Some(v) => v.contains("nf_tables"),
            None => true,
        } && nfgen::ruleset_generation().is_ok();
        if spec.ip_masq && spec.random_fully {
            let supported = match &version {
                Some(v) => iptables::has_random_fully(v),
                None => nft.has_random_fully().await?,
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
            generation_usable,
            verified: std::sync::Mutex::new(None),
            state_file: None,
        })
    }

    /// Records, in `path`, the nf_tables generation at which the rules were found intact,
    /// with the boot, the network namespace, the mode and the rules it holds for. A restart
    /// in the same boot and namespace, for the same rules, with the generation unchanged
    /// since, trusts it and starts no process to check the rules.
    pub fn with_state_file(mut self, path: std::path::PathBuf) -> Self {
        self.state_file = Some(path);
        self
    }

    fn state_text(&self, generation: u32) -> Option<String> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let netns = std::fs::read_link("/proc/thread-self/ns/net").ok()?;
        Some(format!(
            "boot {}\nnetns {}\ngeneration {generation}\nmode {:?}\nspec {:?}\n",
            boot.trim(),
            netns.display(),
            self.mode,
            self.spec
        ))
    }

    /// Whether the state file says the rules were intact at `generation`.
    fn recorded_intact(&self, generation: u32) -> bool {
        match (&self.state_file, self.state_text(generation)) {
            (Some(path), Some(want)) => {
                std::fs::read_to_string(path).is_ok_and(|have| have == want)
            }
            _ => false,
        }
    }

    fn record_intact(&self, generation: u32) {
        if let (Some(path), Some(text)) = (&self.state_file, self.state_text(generation)) {
            if let Err(e) = flannel_net::subnet_env::write_atomic(path, text.as_bytes(), 0o644) {
                tracing::debug!("recording the rules' state in {}: {e}", path.display());
            }
        }
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
                // Ask the kernel first: no `nft` process when there is nothing to remove.
                if nfgen::table_exists(family, table).ok() == Some(false) {
                    return Ok(());
                }
                if ignore_missing(self.nft.remove(family, table).await)? {
                    info!("removed nftables table {family} {table} (iptables mode)");
                }
            }
            Mode::Nftables => {
                let chains = [
                    (rules::masq_chain(&self.spec), false),
                    (rules::forward_chain(&self.spec), false),
                ];
                match self.iptables.ensure(&chains).await {
                    Err(MasqError::Spawn { .. }) | Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Checks the rules and restores what is missing or changed. When the nf_tables
    /// generation shows no change since the rules were last found intact, nothing is read
    /// (no process at all); else one read, one write only when needed. Returns the
    /// number of tables rewritten.
    pub async fn ensure(&self) -> Result<usize, MasqError> {
        let generation = if self.generation_usable {
            nfgen::ruleset_generation().ok()
        } else {
            None
        };
        let verified = self.verified.lock().map(|v| *v).unwrap_or(None);
        if generation.is_some() && generation == verified {
            return Ok(0);
        }
        if let (Some(g), None) = (generation, verified) {
            if self.recorded_intact(g) {
                if let Ok(mut v) = self.verified.lock() {
                    *v = Some(g);
                }
                return Ok(0);
            }
        }
        let written = self.check_and_repair().await?;
        // After our own write the generation moved; the next check reads once more and only
        // then trusts the generation, so that nobody else's change slips in unverified.
        if let Ok(mut v) = self.verified.lock() {
            *v = if written == 0 { generation } else { None };
        }
        if let (0, Some(g)) = (written, generation) {
            self.record_intact(g);
        }
        Ok(written)
    }

    async fn check_and_repair(&self) -> Result<usize, MasqError> {
        let mut written = 0;
        match self.mode {
            Mode::Iptables => {
                let chains = [
                    (rules::masq_chain(&self.spec), self.spec.ip_masq),
                    (rules::forward_chain(&self.spec), self.spec.forward),
                ];
                written += self.iptables.ensure(&chains).await?;
            }
            Mode::Nftables => written += usize::from(self.nft.ensure(&self.spec).await?),
        }
        Ok(written)
    }

    /// What differs from flannel's rules, one line each (empty: all in place); nothing is
    /// written (for `flanneld-rs doctor`).
    pub async fn check(&self) -> Result<Vec<String>, MasqError> {
        let mut out = Vec::new();
        match self.mode {
            Mode::Iptables => {
                let chains = [
                    (rules::masq_chain(&self.spec), self.spec.ip_masq),
                    (rules::forward_chain(&self.spec), self.spec.forward),
                ];
                let tool = if self.spec.is_ipv6() {
                    "ip6tables"
                } else {
                    "iptables"
                };
                for why in self.iptables.differing(&chains).await? {
                    out.push(format!("{tool}: {why}"));
                }
            }
            Mode::Nftables => {
                let (family, table) = rules::nft_table(&self.spec);
                let want = rules::nft_listing(&self.spec);
                match self.nft.read(family, table).await? {
                    None => out.push(format!("nftables: table {family} {table} is missing")),
                    Some(have) if have != want => out.push(format!(
                        "nftables: table {family} {table} {}",
                        nftables::difference(&have, &want)
                    )),
                    Some(_) => {}
                }
            }
        }
        Ok(out)
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
