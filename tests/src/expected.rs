//! Upstream flanneld's rules as `iptables -S` lists them in a namespace that holds nothing
//! else (upstream v0.28.9's `pkg/trafficmngr`, as v0.20.2 wrote them in a 3-host lab): what
//! the masq and end-to-end tests compare
//! the kernel with, spelled once.

/// `iptables -t nat -S` with upstream's masquerade rules for `network` and this node's
/// `subnet` (`--random-fully` included, as upstream adds it when the kernel has it).
pub fn nat_listing(network: &str, subnet: &str) -> String {
    format!(
        r#"-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N FLANNEL-POSTRTG
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s {subnet} -d {network} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s {network} -d {subnet} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s {network} -d {subnet} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s {network} ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s {network} -d {network} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
"#
    )
}

/// `iptables -S FLANNEL-FWD`: upstream's forward chain for `network`.
pub fn forward_chain(network: &str) -> String {
    format!(
        r#"-N FLANNEL-FWD
-A FLANNEL-FWD -s {network} -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d {network} -m comment --comment "flanneld forward" -j ACCEPT
"#
    )
}

/// `iptables -t filter -S` with upstream's forward rules for `network`.
pub fn filter_listing(network: &str) -> String {
    let chain = forward_chain(network);
    let (new_chain, rules) = chain.split_once('\n').unwrap_or((&chain, ""));
    format!(
        "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n{new_chain}\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n{rules}"
    )
}
