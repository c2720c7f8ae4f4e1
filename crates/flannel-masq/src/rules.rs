//! The rule sets, as text, from (Network, this node's subnet, options): a pure function.
//!
//! iptables: upstream v0.28.9's chains FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter), each
//! reached by one jump appended to POSTROUTING / FORWARD, in `iptables-save` form (which is
//! also what `iptables -S` prints). nftables: tables `ip flannel-ipv4` / `ip6 flannel-ipv6`
//! with chains `postrtg` and `forward`, in `nft list` form.

use flannel_net::Family;
use ipnetwork::IpNetwork;

pub const MASQ_COMMENT: &str = "flanneld masq";
pub const FORWARD_COMMENT: &str = "flanneld forward";
pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FORWARD_CHAIN: &str = "FLANNEL-FWD";
/// kube-proxy marks packets it has already masqueraded (or will) with this.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// What the rules are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// The flannel Network (cluster CIDR), `N` in the upstream listings.
    pub network: IpNetwork,
    /// This node's lease subnet, `P`.
    pub subnet: IpNetwork,
    /// `--ip-masq`: the masquerade set.
    pub ip_masq: bool,
    /// `--iptables-forward-rules`: the forward set.
    pub forward: bool,
    /// `--random-fully` on MASQUERADE (off with `--ip-masq-fully-random-disable`, or when
    /// the installed iptables/nft cannot do it).
    pub random_fully: bool,
    /// Network and subnet of a previous run (from the old subnet.env): rules older flanneld
    /// releases wrote for them directly into POSTROUTING / FORWARD are removed.
    pub previous: Option<(IpNetwork, IpNetwork)>,
}

impl RuleSpec {
    /// The family of its network.
    pub fn family(&self) -> Family {
        Family::of_network(self.network)
    }

    pub fn is_ipv6(&self) -> bool {
        self.family().is_v6()
    }

    fn multicast(&self) -> &'static str {
        if self.is_ipv6() {
            "ff00::/8"
        } else {
            "224.0.0.0/4"
        }
    }
}

/// Network form of a CIDR, as iptables prints it (`10.5.0.0/16`).
fn cidr(n: IpNetwork) -> String {
    format!("{}/{}", n.network(), n.prefix())
}

/// One table's flannel chain and how it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRules {
    /// `nat` or `filter`.
    pub table: &'static str,
    /// The built-in chain that jumps to ours.
    pub hook: &'static str,
    pub chain: &'static str,
    pub comment: &'static str,
    /// Rule specs of our chain, in order, without the `-A CHAIN ` prefix.
    pub rules: Vec<String>,
    /// Rule specs older releases put into the built-in chain; removed wherever found.
    pub legacy: Vec<String>,
}

impl ChainRules {
    /// The spec of the jump rule (without `-A POSTROUTING `).
    pub fn jump(&self) -> String {
        format!(
            "-m comment --comment \"{}\" -j {}",
            self.comment, self.chain
        )
    }

    /// Lines as `iptables -t <table> -S` prints them for our part (jump, chain, rules).
    pub fn listing(&self) -> Vec<String> {
        let mut out = vec![
            format!("-A {} {}", self.hook, self.jump()),
            format!("-N {}", self.chain),
        ];
        out.extend(self.rules.iter().map(|r| format!("-A {} {r}", self.chain)));
        out
    }
}

/// The nat table's FLANNEL-POSTRTG.
pub fn masq_chain(spec: &RuleSpec) -> ChainRules {
    let (n, p) = (cidr(spec.network), cidr(spec.subnet));
    let c = format!("-m comment --comment \"{MASQ_COMMENT}\"");
    let masq = if spec.random_fully {
        "MASQUERADE --random-fully"
    } else {
        "MASQUERADE"
    };
    let mcast = spec.multicast();
    ChainRules {
        table: "nat",
        hook: "POSTROUTING",
        chain: MASQ_CHAIN,
        comment: MASQ_COMMENT,
        rules: vec![
            format!("-m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN"),
            format!("-s {p} -d {n} {c} -j RETURN"),
            format!("-s {n} -d {p} {c} -j RETURN"),
            format!("! -s {n} -d {p} {c} -j RETURN"),
            format!("-s {n} ! -d {mcast} {c} -j {masq}"),
            format!("! -s {n} -d {n} {c} -j {masq}"),
        ],
        legacy: legacy_masq(spec),
    }
}

/// The filter table's FLANNEL-FWD.
pub fn forward_chain(spec: &RuleSpec) -> ChainRules {
    let n = cidr(spec.network);
    let c = format!("-m comment --comment \"{FORWARD_COMMENT}\"");
    let mut legacy = Vec::new();
    for net in networks_of(spec) {
        let n = cidr(net);
        // v0.10 (no comments) and v0.16 (with comments)
        legacy.push(format!("-s {n} -j ACCEPT"));
        legacy.push(format!("-d {n} -j ACCEPT"));
        legacy.push(format!("-s {n} {c} -j ACCEPT"));
        legacy.push(format!("-d {n} {c} -j ACCEPT"));
    }
    ChainRules {
        table: "filter",
        hook: "FORWARD",
        chain: FORWARD_CHAIN,
        comment: FORWARD_COMMENT,
        rules: vec![
            format!("-s {n} {c} -j ACCEPT"),
            format!("-d {n} {c} -j ACCEPT"),
        ],
        legacy,
    }
}

fn networks_of(spec: &RuleSpec) -> Vec<IpNetwork> {
    let mut v = vec![spec.network];
    if let Some((n, _)) = spec.previous {
        if n != spec.network && n.is_ipv6() == spec.is_ipv6() {
            v.push(n);
        }
    }
    v
}

/// The rules v0.10 and v0.16 wrote straight into POSTROUTING, for the current and the
/// previous network/subnet.
fn legacy_masq(spec: &RuleSpec) -> Vec<String> {
    let mut pairs = vec![(spec.network, spec.subnet)];
    if let Some(prev) = spec.previous {
        if prev != pairs[0] && prev.0.is_ipv6() == spec.is_ipv6() {
            pairs.push(prev);
        }
    }
    let mcast = spec.multicast();
    let mut out = Vec::new();
    for (n, p) in pairs {
        let (n, p) = (cidr(n), cidr(p));
        // v0.10.0
        out.push(format!("-s {n} -d {n} -j RETURN"));
        out.push(format!("-s {n} ! -d {mcast} -j MASQUERADE"));
        out.push(format!("! -s {n} -d {p} -j RETURN"));
        out.push(format!("! -s {n} -d {n} -j MASQUERADE"));
        // v0.16.x, with comments (and its "flannel masq" typo), with and without --random-fully
        for comment in [MASQ_COMMENT, "flannel masq"] {
            let c = format!("-m comment --comment \"{comment}\"");
            out.push(format!("-s {n} -d {n} {c} -j RETURN"));
            out.push(format!("! -s {n} -d {p} {c} -j RETURN"));
            for masq in ["MASQUERADE", "MASQUERADE --random-fully"] {
                out.push(format!("-s {n} ! -d {mcast} {c} -j {masq}"));
                out.push(format!("! -s {n} -d {n} {c} -j {masq}"));
            }
        }
    }
    out
}

/// The nftables table name and family for this spec.
pub fn nft_table(spec: &RuleSpec) -> (&'static str, &'static str) {
    if spec.is_ipv6() {
        ("ip6", "flannel-ipv6")
    } else {
        ("ip", "flannel-ipv4")
    }
}

/// One chain of flannel's nftables table: the data both the script that writes it and the
/// listing that checks it are rendered from.
struct NftChain {
    name: &'static str,
    /// `nat hook postrouting priority srcnat`.
    hook: &'static str,
    comment: &'static str,
    /// As written; nft lists them the same but for the mark, which it pads.
    rules: Vec<String>,
    /// Whether the spec wants the chain (else it is deleted).
    wanted: bool,
}

/// The chains of the family's table.
fn nft_chains(spec: &RuleSpec) -> [NftChain; 2] {
    let ip = if spec.is_ipv6() { "ip6" } else { "ip" };
    let (n, p) = (cidr(spec.network), cidr(spec.subnet));
    let fully = if spec.random_fully {
        " fully-random"
    } else {
        ""
    };
    let mcast = spec.multicast();
    [
        NftChain {
            name: "postrtg",
            hook: "nat hook postrouting priority srcnat",
            comment: "chain to manage traffic masquerading by flannel",
            rules: vec![
                "meta mark 0x4000 return".to_string(),
                format!("{ip} saddr {p} {ip} daddr {n} return"),
                format!("{ip} saddr {n} {ip} daddr {p} return"),
                format!("{ip} saddr != {p} {ip} daddr {n} return"),
                format!("{ip} saddr {n} {ip} daddr != {mcast} masquerade{fully}"),
                format!("{ip} saddr != {n} {ip} daddr {n} masquerade{fully}"),
            ],
            wanted: spec.ip_masq,
        },
        NftChain {
            name: "forward",
            hook: "filter hook forward priority filter",
            comment: "chain to accept flannel traffic",
            rules: vec![
                format!("{ip} saddr {n} accept"),
                format!("{ip} daddr {n} accept"),
            ],
            wanted: spec.forward,
        },
    ]
}

/// A rule as `nft list` prints it: the mark padded to 32 bits.
fn listed_rule(rule: &str) -> String {
    rule.replace("meta mark 0x4000 ", "meta mark 0x00004000 ")
}

/// The `nft -f` script that makes the table hold exactly our chains (one transaction).
pub fn nft_script(spec: &RuleSpec) -> String {
    let (family, table) = nft_table(spec);
    let mut s = format!("add table {family} {table} {{ comment \"rules for {table}\" ; }}\n");
    for chain in nft_chains(spec) {
        let name = chain.name;
        s += &format!(
            "add chain {family} {table} {name} {{ type {} ; policy accept ; comment \"{}\" ; }}\n",
            chain.hook, chain.comment
        );
        if chain.wanted {
            s += &format!("flush chain {family} {table} {name}\n");
            for rule in &chain.rules {
                s += &format!("add rule {family} {table} {name} {rule}\n");
            }
        } else {
            s += &format!("delete chain {family} {table} {name}\n");
        }
    }
    s
}

/// What `nft list table <family> <table>` prints once [`nft_script`] is applied.
pub fn nft_listing(spec: &RuleSpec) -> String {
    let (family, table) = nft_table(spec);
    let chains: Vec<String> = nft_chains(spec)
        .into_iter()
        .filter(|c| c.wanted)
        .map(|c| {
            let rules: String = c
                .rules
                .iter()
                .map(|r| format!("\t\t{}\n", listed_rule(r)))
                .collect();
            format!(
                "\tchain {} {{\n\t\tcomment \"{}\"\n\t\ttype {}; policy accept;\n{rules}\t}}\n",
                c.name, c.comment, c.hook
            )
        })
        .collect();
    format!(
        "table {family} {table} {{\n\tcomment \"rules for {table}\"\n{}}}\n",
        chains.join("\n")
    )
}

/// The rule spec the unit tests of the drivers share: upstream's example network.
#[cfg(test)]
pub(crate) fn example_spec() -> RuleSpec {
    RuleSpec {
        network: "10.244.0.0/16".parse().expect("a CIDR"),
        subnet: "10.244.1.0/24".parse().expect("a CIDR"),
        ip_masq: true,
        forward: true,
        random_fully: true,
        previous: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RuleSpec {
        example_spec()
    }

    #[test]
    fn iptables_listing_is_upstream_v0_28_9() {
        // upstream v0.28.9 `pkg/trafficmngr/iptables` rules with N = 10.244.0.0/16, P = 10.244.1.0/24
        let expected = r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#;
        assert_eq!(masq_chain(&spec()).listing().join("\n"), expected);
        let expected_fwd = r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-N FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#;
        assert_eq!(forward_chain(&spec()).listing().join("\n"), expected_fwd);
    }

    #[test]
    fn random_fully_can_be_disabled() {
        let mut s = spec();
        s.random_fully = false;
        let rules = masq_chain(&s).rules;
        assert!(rules[4].ends_with("-j MASQUERADE"));
        assert!(rules.iter().all(|r| !r.contains("random-fully")));
    }

    #[test]
    fn ipv6_uses_ff00() {
        let s = RuleSpec {
            network: "fd00:10::/56".parse().unwrap(),
            subnet: "fd00:10:0:1::/64".parse().unwrap(),
            ..spec()
        };
        let rules = masq_chain(&s).rules;
        assert_eq!(
            rules[4],
            r#"-s fd00:10::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#
        );
        assert!(nft_listing(&s).starts_with("table ip6 flannel-ipv6 {"));
        assert!(nft_listing(&s)
            .contains("ip6 saddr fd00:10::/56 ip6 daddr != ff00::/8 masquerade fully-random"));
    }

    #[test]
    fn legacy_rules_cover_v0_10_and_v0_16() {
        let mut s = spec();
        s.previous = Some((
            "10.99.0.0/16".parse().unwrap(),
            "10.99.3.0/24".parse().unwrap(),
        ));
        let legacy = masq_chain(&s).legacy;
        assert!(legacy.contains(&"-s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN".to_string()));
        assert!(legacy.contains(&"! -s 10.99.0.0/16 -d 10.99.3.0/24 -j RETURN".to_string()));
        assert!(legacy.contains(
            &r#"-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flannel masq" -j MASQUERADE --random-fully"#
                .to_string()
        ));
        let fwd = forward_chain(&s).legacy;
        assert!(fwd.contains(&"-s 10.99.0.0/16 -j ACCEPT".to_string()));
        // legacy rules are looked for in POSTROUTING / FORWARD only, where our one rule is the jump
        assert!(!legacy.contains(&masq_chain(&s).jump()));
        assert!(!fwd.contains(&forward_chain(&s).jump()));
    }

    #[test]
    fn nft_listing_is_upstream_form() {
        let expected = "table ip flannel-ipv4 {
\tcomment \"rules for flannel-ipv4\"
\tchain postrtg {
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}

\tchain forward {
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
";
        assert_eq!(nft_listing(&spec()), expected);
        let script = nft_script(&spec());
        assert!(script.contains("flush chain ip flannel-ipv4 postrtg\n"));
        let mut s = spec();
        s.forward = false;
        assert!(nft_script(&s).contains("delete chain ip flannel-ipv4 forward\n"));
        assert!(!nft_listing(&s).contains("chain forward"));
    }
}
