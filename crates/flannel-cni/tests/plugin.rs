//! The plugin as a container runtime calls it, with Debian's bridge and host-local plugins,
//! in a network namespace of its own (root needed; CI runs as root).
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use flannel_lab::netns::{self, ip, run_cmd};
use serde_json::{json, Value};

/// A named namespace for the pod, deleted when dropped.
struct PodNs(String);

impl PodNs {
    fn new() -> PodNs {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("flcni-{}-{n}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run_cmd("ip", &["netns", "add", &name]);
        PodNs(name)
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn plugin(command: &str, conf: &Value, pod: &str) -> (bool, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flannel"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_NETNS", format!("/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap()
    };
    (out.status.success(), v)
}

fn conf(dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "cni0",
        "type": "flannel",
        "subnetFile": dir.join("subnet.env"),
        "dataDir": dir.join("data"),
        "ipam": {"dataDir": dir.join("ipam")},
        "delegate": {"hairpinMode": true, "isDefaultGateway": true}
    })
}

#[test]
fn add_check_del_with_the_bridge_plugin() {
    flannel_lab::require_program("/usr/lib/cni/bridge", "containernetworking-plugins");
    netns::run(|| async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("subnet.env"),
            "FLANNEL_NETWORK=10.200.0.0/16\nFLANNEL_SUBNET=10.200.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let pod = PodNs::new();
        let conf = conf(dir.path());

        let (ok, result) = plugin("ADD", &conf, &pod.0);
        assert!(ok, "{result}");
        assert_eq!(result["ips"][0]["address"], "10.200.74.2/24", "{result}");
        assert_eq!(result["ips"][0]["gateway"], "10.200.74.1", "{result}");
        let pod_addr = run_cmd("ip", &["-n", &pod.0, "-4", "addr", "show", "dev", "eth0"]);
        assert!(pod_addr.contains("inet 10.200.74.2/24"), "{pod_addr}");
        assert!(pod_addr.contains("mtu 1450"), "{pod_addr}");
        let pod_routes = run_cmd("ip", &["-n", &pod.0, "route"]);
        assert!(
            pod_routes.contains("default via 10.200.74.1 dev eth0"),
            "{pod_routes}"
        );
        assert!(
            pod_routes.contains("10.200.0.0/16 via 10.200.74.1 dev eth0"),
            "{pod_routes}"
        );
        assert!(ip(&["-4", "addr", "show", "dev", "cni0"]).contains("inet 10.200.74.1/24"));
        let saved: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("data/c0ffee")).unwrap())
                .unwrap();
        assert_eq!(saved["ipMasq"], false, "!FLANNEL_IPMASQ");
        assert_eq!(
            saved["ipam"]["ranges"],
            json!([[{"subnet": "10.200.74.0/24"}]])
        );

        let mut check = conf.clone();
        check["prevResult"] = result.clone();
        let (ok, out) = plugin("CHECK", &check, &pod.0);
        assert!(ok, "CHECK: {out}");

        let (ok, out) = plugin("DEL", &conf, &pod.0);
        assert!(ok, "DEL: {out}");
        assert!(!run_cmd("ip", &["-n", &pod.0, "link"]).contains("eth0"));
        assert!(!dir.path().join("data/c0ffee").exists());
        let (ok, _) = plugin("DEL", &conf, &pod.0);
        assert!(ok, "a second DEL succeeds");
    });
}

/// ADD then CHECK for dual-stack and IPv6-only subnet.env: every route of the result names
/// its gateway, so that the bridge plugin's CHECK finds it in the pod's table (issue 32: the
/// IPv6 routes had none, and CHECK failed with `Expected Route {Dst:fd00:200::/56 GW:<nil>}
/// not found in routing table`).
#[test]
fn check_passes_for_dual_stack_and_ipv6_only() {
    flannel_lab::require_program("/usr/lib/cni/bridge", "containernetworking-plugins");
    let dual = "FLANNEL_NETWORK=10.200.0.0/16\nFLANNEL_SUBNET=10.200.74.1/24\nFLANNEL_IPV6_NETWORK=fd00:200::/56\nFLANNEL_IPV6_SUBNET=fd00:200:0:4a::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    let v6only = "FLANNEL_IPV6_NETWORK=fd00:200::/56\nFLANNEL_IPV6_SUBNET=fd00:200:0:4a::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n";
    for env in [dual, v6only] {
        netns::run(move || async move {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("subnet.env"), env).unwrap();
            let pod = PodNs::new();
            let conf = conf(dir.path());
            let (ok, result) = plugin("ADD", &conf, &pod.0);
            assert!(ok, "{result}");
            let routes = result["routes"].as_array().unwrap();
            assert!(
                routes.contains(&json!({"dst": "fd00:200::/56", "gw": "fd00:200:0:4a::1"})),
                "{result}"
            );
            assert!(routes.iter().all(|r| r.get("gw").is_some()), "{result}");
            let pod_routes = run_cmd("ip", &["-n", &pod.0, "-6", "route"]);
            assert!(
                pod_routes.contains("fd00:200::/56 via fd00:200:0:4a::1 dev eth0"),
                "{pod_routes}"
            );
            let mut check = conf.clone();
            check["prevResult"] = result.clone();
            let (ok, out) = plugin("CHECK", &check, &pod.0);
            assert!(ok, "CHECK ({env}): {out}");
            let (ok, out) = plugin("DEL", &conf, &pod.0);
            assert!(ok, "DEL: {out}");
        });
    }
}

#[test]
fn bad_subnet_env_and_version() {
    netns::run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let pod = PodNs::new();
        let (ok, err) = plugin("ADD", &conf(dir.path()), &pod.0);
        assert!(!ok);
        assert_eq!(err["code"], 999);
        assert_eq!(err["cniVersion"], "1.0.0");
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.starts_with("failed to load flannel 'subnet.env' file: open "),
            "{msg}"
        );
        assert!(
            msg.ends_with("Check the flannel pod log for this node."),
            "{msg}"
        );
        std::fs::write(dir.path().join("subnet.env"), "FLANNEL_MTU=1450\n").unwrap();
        let (ok, err) = plugin("ADD", &conf(dir.path()), &pod.0);
        assert!(!ok);
        assert!(
            err["msg"]
                .as_str()
                .unwrap()
                .contains("is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK"),
            "{err}"
        );
        let (ok, v) = plugin("VERSION", &json!({}), &pod.0);
        assert!(ok);
        assert!(v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("0.3.1")));
        let (ok, err) = plugin("ADD", &json!("not an object"), &pod.0);
        assert!(!ok);
        assert_eq!(err["code"], 6);
    });
}
