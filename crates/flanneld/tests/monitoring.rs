//! The alerting rules of `packaging/monitoring/` with Debian's Prometheus: promtool checks
//! them and runs their unit tests (each alert fires on its series, stays quiet on a healthy
//! node); then a real Prometheus, in the lab's etcd namespace, scrapes three flanneld-rs and
//! an alert fires for the one node whose access to etcd is cut, and for no other.
//! The lab's Prometheus evaluates the same expressions with the rules' waits shortened
//! (`for: 5m` → 5 s, windows of minutes → 15 s): the timing is the unit tests'.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use flannel_lab::lab::{nsexec, wait_until, DEFAULT_CONFIG, ETCD_IP};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/monitoring")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .expect("promtool (Debian's prometheus package)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The `flanneld_*` names in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("flanneld_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_rules_check_and_their_unit_tests_pass() {
    // every metric the rules and the dashboard name is one /metrics has (health.rs's table)
    let exposed = metric_names(include_str!("../src/health.rs"));
    for file in ["flanneld-rs-alerts.yml", "flanneld-rs-dashboard.json"] {
        let text = std::fs::read_to_string(monitoring_dir().join(file)).unwrap();
        let unknown: Vec<String> = metric_names(&text)
            .into_iter()
            .filter(|n| !exposed.contains(n))
            .collect();
        assert_eq!(
            unknown,
            Vec::<String>::new(),
            "{file} names metrics flanneld-rs has not"
        );
    }
    let out = promtool(&["check", "rules", "flanneld-rs-alerts.yml"]);
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
    let out = promtool(&["test", "rules", "flanneld-rs-alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The rules with their waits shortened for a lab that lives a minute.
fn quick_rules() -> String {
    let rules = std::fs::read_to_string(monitoring_dir().join("flanneld-rs-alerts.yml")).unwrap();
    let mut out = rules;
    for (from, to) in [
        ("for: 5m", "for: 5s"),
        ("for: 10m", "for: 5s"),
        ("for: 15m", "for: 5s"),
        ("[5m]", "[15s]"),
        ("[10m]", "[15s]"),
        ("[15m]", "[15s]"),
        ("[30m]", "[15s]"),
        ("[1h]", "[15s]"),
    ] {
        out = out.replace(from, to);
    }
    out
}

/// Kills Prometheus when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_fires_for_the_node_cut_from_etcd() {
    let (mut lab, dir) = lab('Y', 3, Some(DEFAULT_CONFIG));
    lab.start_all();
    lab.wait_ready(LONG);
    let d = dir.path();
    std::fs::write(d.join("rules.yml"), quick_rules()).unwrap();
    let targets: Vec<String> = lab
        .hosts
        .iter()
        .map(|h| format!("\"{}:9090\"", h.ip))
        .collect();
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{}]\nscrape_configs:\n  - job_name: flanneld\n    static_configs: [{{targets: [{}]}}]\n",
            d.join("rules.yml").display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let etcd_ns = format!("{}-etcd", lab.spec.name);
    let listen = format!("{ETCD_IP}:9091");
    let _prometheus = Running(
        Command::new("ip")
            .args(["netns", "exec", &etcd_ns, "prometheus"])
            .arg(format!(
                "--config.file={}",
                d.join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian's prometheus package)"),
    );
    let api = |path: &str| -> serde_json::Value {
        let (ok, out) = flannel_lab::lab::try_nsexec(
            &etcd_ns,
            &["curl", "-s", &format!("http://{listen}{path}")],
        );
        if !ok {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&out).unwrap_or_default()
    };
    // every node scraped and ready
    assert!(
        wait_until(Duration::from_secs(60), || {
            api("/api/v1/query?query=sum(flanneld_ready)")["data"]["result"][0]["value"][1] == "3"
        }),
        "{}",
        std::fs::read_to_string(d.join("prometheus.log")).unwrap_or_default()
    );
    let firing = || -> Vec<(String, String)> {
        api("/api/v1/alerts")["data"]["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["state"] == "firing")
                    .map(|x| {
                        (
                            x["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                            x["labels"]["instance"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(firing(), vec![], "a healthy lab fires nothing");
    // every query of the dashboard is one Prometheus runs
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring_dir().join("flanneld-rs-dashboard.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let encoded: String = expr
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let answer = api(&format!("/api/v1/query?query={encoded}"));
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
        }
    }
    // h3 cut from etcd (its packets to etcd's port refused)
    nsexec(
        &lab.hosts[2].ns,
        &[
            "iptables",
            "-I",
            "OUTPUT",
            "-d",
            ETCD_IP,
            "-p",
            "tcp",
            "--dport",
            "2379",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    );
    let h3 = format!("{}:9090", lab.hosts[2].ip);
    assert!(
        wait_until(Duration::from_secs(90), || firing()
            .contains(&("FlanneldStoreUnreachable".to_string(), h3.clone()))),
        "{:?}\n{}",
        firing(),
        lab.log(3)
    );
    assert!(
        firing().iter().all(|(_, instance)| *instance == h3),
        "only h3 is cut: {:?}",
        firing()
    );
}
