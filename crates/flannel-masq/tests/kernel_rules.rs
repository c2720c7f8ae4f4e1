//! The rules in a real kernel: each test in a network namespace of its own (root needed; CI
//! runs as root), with Debian's iptables (nf_tables backend) and nft.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::path::{Path, PathBuf};

use flannel_lab::expected;
use flannel_lab::netns::{self, run_cmd};
use flannel_masq::{Mode, RuleSpec, Tools, TrafficManager};

fn spec(subnet: &str) -> RuleSpec {
    RuleSpec {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet: subnet.parse().unwrap(),
        ip_masq: true,
        forward: true,
        random_fully: true,
        previous: None,
    }
}

const NETWORK: &str = "10.244.0.0/16";

fn nat_listing(subnet: &str) -> String {
    expected::nat_listing(NETWORK, subnet)
}

fn iptables_s(table: &str) -> String {
    run_cmd("iptables", &["-t", table, "-S"])
}

/// Tools that log every process they start to `log`, then run the real program.
fn counting_tools(dir: &Path) -> (Tools, PathBuf) {
    let log = dir.join("exec.log");
    let wrap = |name: &str| {
        let real = run_cmd("sh", &["-c", &format!("command -v {name}")])
            .trim()
            .to_string();
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> {}\nexec {real} \"$@\"\n",
                log.display()
            ),
        )
        .unwrap();
        run_cmd("chmod", &["+x", path.to_str().unwrap()]);
        path
    };
    let tools = Tools {
        iptables: wrap("iptables"),
        iptables_save: wrap("iptables-save"),
        iptables_restore: wrap("iptables-restore"),
        nft: wrap("nft"),
        ..Tools::default()
    };
    (tools, log)
}

fn take_log(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    text.lines().map(|l| l.trim_end().to_string()).collect()
}

#[test]
fn iptables_rules_exact_idempotent_and_resynced() {
    netns::run(|| async {
        let tm = TrafficManager::new(Mode::Iptables, &Tools::default(), spec("10.244.1.0/24"))
            .await
            .unwrap();
        assert_eq!(tm.ensure().await.unwrap(), 2);
        assert_eq!(iptables_s("nat"), nat_listing("10.244.1.0/24"));
        assert_eq!(iptables_s("filter"), expected::filter_listing(NETWORK));

        // again: nothing written, no duplicate jump (a restart does the same)
        assert_eq!(tm.ensure().await.unwrap(), 0);
        let again = TrafficManager::new(Mode::Iptables, &Tools::default(), spec("10.244.1.0/24"))
            .await
            .unwrap();
        assert_eq!(again.ensure().await.unwrap(), 0);
        assert_eq!(iptables_s("nat"), nat_listing("10.244.1.0/24"));

        // one rule deleted, the chain of the other table flushed, by another program
        run_cmd(
            "iptables",
            &[
                "-t",
                "nat",
                "-D",
                "FLANNEL-POSTRTG",
                "-s",
                "10.244.1.0/24",
                "-d",
                "10.244.0.0/16",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "RETURN",
            ],
        );
        run_cmd("iptables", &["-F", "FLANNEL-FWD"]);
        assert_eq!(tm.resync().await, 2);
        assert_eq!(iptables_s("nat"), nat_listing("10.244.1.0/24"));
        assert_eq!(iptables_s("filter"), expected::filter_listing(NETWORK));

        // the jump deleted
        run_cmd(
            "iptables",
            &[
                "-t",
                "nat",
                "-D",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG",
            ],
        );
        assert_eq!(tm.resync().await, 1);
        assert_eq!(iptables_s("nat"), nat_listing("10.244.1.0/24"));
    });
}

#[test]
fn new_subnet_replaces_old_rules_and_others_rules_are_untouched() {
    netns::run(|| async {
        // kube-proxy's rules, and rules v0.16 wrote straight into POSTROUTING / FORWARD
        run_cmd("iptables", &["-t", "nat", "-N", "KUBE-POSTROUTING"]);
        run_cmd(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "kubernetes postrouting rules",
                "-j",
                "KUBE-POSTROUTING",
            ],
        );
        run_cmd(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "KUBE-POSTROUTING",
                "-m",
                "mark",
                "--mark",
                "0x4000/0x4000",
                "-j",
                "MASQUERADE",
            ],
        );
        run_cmd(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "10.244.0.0/16",
                "-d",
                "10.244.0.0/16",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "RETURN",
            ],
        );
        run_cmd(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "10.244.0.0/16",
                "!",
                "-d",
                "224.0.0.0/4",
                "-m",
                "comment",
                "--comment",
                "flannel masq",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ],
        );
        run_cmd(
            "iptables",
            &["-A", "FORWARD", "-s", "10.244.0.0/16", "-j", "ACCEPT"],
        );
        let kube = "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n";

        let first = TrafficManager::new(Mode::Iptables, &Tools::default(), spec("10.244.1.0/24"))
            .await
            .unwrap();
        first.ensure().await.unwrap();
        let nat = iptables_s("nat");
        assert!(nat.contains(kube), "{nat}");
        assert!(
            nat.contains("-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE"),
            "{nat}"
        );
        assert!(
            !nat.contains("flannel masq") && !nat.contains("-A POSTROUTING -s"),
            "legacy rules removed: {nat}"
        );
        assert_eq!(iptables_s("filter"), expected::filter_listing(NETWORK));

        // the node got another subnet: the chain now holds only the new rules
        let mut s = spec("10.244.7.0/24");
        s.previous = Some((
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        ));
        let second = TrafficManager::new(Mode::Iptables, &Tools::default(), s)
            .await
            .unwrap();
        assert_eq!(second.ensure().await.unwrap(), 1);
        let nat = iptables_s("nat");
        assert!(!nat.contains("10.244.1.0/24"), "{nat}");
        assert_eq!(nat.matches("-j FLANNEL-POSTRTG").count(), 1);
        // jump appended after kube-proxy's, as upstream
        let kube_at = nat.find(kube).unwrap();
        let ours_at = nat
            .find("-A POSTROUTING -m comment --comment \"flanneld masq\"")
            .unwrap();
        assert!(kube_at < ours_at);
    });
}

#[test]
fn options_drop_random_fully_and_forward_rules() {
    netns::run(|| async {
        let mut s = spec("10.244.1.0/24");
        s.random_fully = false;
        s.forward = false;
        let tm = TrafficManager::new(Mode::Iptables, &Tools::default(), s)
            .await
            .unwrap();
        tm.ensure().await.unwrap();
        assert_eq!(
            iptables_s("nat"),
            nat_listing("10.244.1.0/24").replace(" --random-fully", "")
        );
        assert_eq!(
            iptables_s("filter"),
            "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
        );
        // forward rules switched off after they existed: removed
        let on = TrafficManager::new(Mode::Iptables, &Tools::default(), spec("10.244.1.0/24"))
            .await
            .unwrap();
        on.ensure().await.unwrap();
        assert_eq!(iptables_s("filter"), expected::filter_listing(NETWORK));
        assert_eq!(
            tm.ensure().await.unwrap(),
            2,
            "nat (random-fully) and filter rewritten"
        );
        assert_eq!(
            iptables_s("filter"),
            "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
        );
    });
}

#[test]
fn steady_state_resync_starts_no_process_until_the_ruleset_changes() {
    netns::run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (tools, log) = counting_tools(dir.path());
        let tm = TrafficManager::new(Mode::Iptables, &tools, spec("10.244.1.0/24"))
            .await
            .unwrap();
        assert_eq!(take_log(&log), vec!["iptables --version"]);
        tm.ensure().await.unwrap();
        // one read of all tables, one write for both
        assert_eq!(
            take_log(&log),
            vec!["iptables-save", "iptables-restore --noflush --wait"]
        );
        // after its own write it reads once more, and writes nothing
        assert_eq!(tm.resync().await, 0);
        assert_eq!(take_log(&log), vec!["iptables-save"]);
        // then, while nothing changes, the nf_tables generation says so: no process at all
        for _ in 0..3 {
            assert_eq!(tm.resync().await, 0);
            assert_eq!(take_log(&log), Vec::<String>::new());
        }
        // somebody else changes the ruleset (kube-proxy adds a chain): one read
        run_cmd("iptables", &["-t", "nat", "-N", "KUBE-SERVICES"]);
        assert_eq!(tm.resync().await, 0);
        assert_eq!(take_log(&log), vec!["iptables-save"]);
        assert_eq!(tm.resync().await, 0);
        assert_eq!(take_log(&log), Vec::<String>::new());
        // somebody deletes one of ours: found and restored
        run_cmd("iptables", &["-F", "FLANNEL-FWD"]);
        assert_eq!(tm.resync().await, 1);
        assert_eq!(iptables_s("filter"), expected::filter_listing(NETWORK));
    });
}

#[test]
fn a_restart_trusts_the_recorded_generation_and_starts_no_process() {
    netns::run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (tools, log) = counting_tools(dir.path());
        let state = dir.path().join("rules.state");
        let first = TrafficManager::new(Mode::Iptables, &tools, spec("10.244.1.0/24"))
            .await
            .unwrap()
            .with_state_file(state.clone());
        first.ensure().await.unwrap();
        first.resync().await; // verifies what it wrote and records it
        assert!(state.exists());
        take_log(&log);
        // "restart": a new manager for the same rules reads nothing
        let second = TrafficManager::new(Mode::Iptables, &tools, spec("10.244.1.0/24"))
            .await
            .unwrap()
            .with_state_file(state.clone());
        assert_eq!(take_log(&log), vec!["iptables --version"]);
        assert_eq!(second.ensure().await.unwrap(), 0);
        assert_eq!(take_log(&log), Vec::<String>::new());
        // other rules (another subnet): the record does not apply
        let other = TrafficManager::new(Mode::Iptables, &tools, spec("10.244.2.0/24"))
            .await
            .unwrap()
            .with_state_file(state.clone());
        take_log(&log);
        assert_eq!(other.ensure().await.unwrap(), 1);
        assert_eq!(
            take_log(&log),
            vec!["iptables-save", "iptables-restore --noflush --wait"]
        );
        // the ruleset changed since the record: read again
        let third = TrafficManager::new(Mode::Iptables, &tools, spec("10.244.2.0/24"))
            .await
            .unwrap()
            .with_state_file(state.clone());
        run_cmd("iptables", &["-t", "nat", "-F", "FLANNEL-POSTRTG"]);
        take_log(&log);
        assert_eq!(third.ensure().await.unwrap(), 1);
        assert_eq!(
            take_log(&log),
            vec!["iptables-save", "iptables-restore --noflush --wait"]
        );
    });
}

#[test]
fn nftables_rules_exact_resynced_and_mode_switch_cleans_the_other() {
    netns::run(|| async {
        // iptables mode first, then switch to nftables
        let ipt = TrafficManager::new(Mode::Iptables, &Tools::default(), spec("10.244.1.0/24"))
            .await
            .unwrap();
        ipt.ensure().await.unwrap();
        let nft = TrafficManager::new(Mode::Nftables, &Tools::default(), spec("10.244.1.0/24"))
            .await
            .unwrap();
        nft.remove_other_mode().await.unwrap();
        assert_eq!(
            iptables_s("nat"),
            "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n"
        );
        assert_eq!(
            iptables_s("filter"),
            "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
        );

        assert_eq!(nft.ensure().await.unwrap(), 1);
        // upstream v0.28.9 `pkg/trafficmngr/nftables` rules, N = 10.244.0.0/16, P = 10.244.1.0/24
        assert_eq!(
            run_cmd("nft", &["list", "chain", "ip", "flannel-ipv4", "postrtg"]),
            "table ip flannel-ipv4 {
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
}
"
        );
        assert_eq!(
            run_cmd("nft", &["list", "chain", "ip", "flannel-ipv4", "forward"]),
            "table ip flannel-ipv4 {
\tchain forward {
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
"
        );
        assert_eq!(nft.ensure().await.unwrap(), 0, "intact: no write");
        run_cmd("nft", &["flush", "chain", "ip", "flannel-ipv4", "postrtg"]);
        assert_eq!(
            nft.resync().await,
            1,
            "flushed by another program: restored"
        );
        assert_eq!(nft.ensure().await.unwrap(), 0);

        // back to iptables: the nftables table goes
        ipt.remove_other_mode().await.unwrap();
        assert!(!run_cmd("nft", &["list", "tables"]).contains("flannel-ipv4"));
    });
}

#[test]
fn missing_tool_is_a_clear_error() {
    netns::run(|| async {
        let tools = Tools {
            iptables: "/nonexistent/iptables".into(),
            ..Tools::default()
        };
        let err = TrafficManager::new(Mode::Iptables, &tools, spec("10.244.1.0/24"))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/iptables --version"), "{msg}");
        assert!(msg.contains("installed"), "{msg}");
        // a failing restore names the command and carries its stderr
        let tools = Tools {
            iptables_restore: "false".into(),
            ..Tools::default()
        };
        let tm = TrafficManager::new(Mode::Iptables, &tools, spec("10.244.1.0/24"))
            .await
            .unwrap();
        let msg = tm.ensure().await.unwrap_err().to_string();
        assert!(
            msg.contains("`false --noflush --wait` failed with status 1"),
            "{msg}"
        );
    });
}
