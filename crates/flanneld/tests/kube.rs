//! Kube mode (`-kube-subnet-mgr`) against a real kube-apiserver (Debian's 1.20.2, built once
//! by tests/kube-apiserver.sh): nodes created by the test with pod CIDRs, as the controller
//! manager would assign them; flanneld on each lab host as node `h<i>`.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use common::*;
use flannel_lab::kube::Authz;
use flannel_lab::lab::{wait_until, Lab};
use serde_json::{json, Value};

const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const P: &str = "flannel.alpha.coreos.com/";

fn pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// (subnet, public ip, vtep mac) of every flannel node, from its annotations.
fn node_peers(lab: &Lab) -> Vec<(String, String, String)> {
    let nodes = lab.kube().request("GET", "/api/v1/nodes", None);
    nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["metadata"]["annotations"][format!("{P}kube-subnet-manager")] == "true")
        .map(|n| {
            let a = &n["metadata"]["annotations"];
            let data: Value =
                serde_json::from_str(a[format!("{P}backend-data")].as_str().unwrap()).unwrap();
            (
                n["spec"]["podCIDR"].as_str().unwrap().to_string(),
                a[format!("{P}public-ip")].as_str().unwrap().to_string(),
                data["VtepMAC"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The hosts whose node is a flannel node.
fn flannel_hosts(lab: &Lab) -> Vec<usize> {
    let ips: Vec<String> = node_peers(lab).into_iter().map(|(_, ip, _)| ip).collect();
    (1..=lab.hosts.len())
        .filter(|&i| ips.contains(&lab.hosts[i - 1].ip.to_string()))
        .collect()
}

fn kube_converged(lab: &Lab) -> bool {
    let peers = node_peers(lab);
    flannel_hosts(lab)
        .into_iter()
        .all(|i| actual_kernel(lab, i) == expected_kernel_of(lab, i, peers.clone()))
}

fn wait_kube_converged(lab: &Lab) {
    if !wait_until(LONG, || kube_converged(lab)) {
        let peers = node_peers(lab);
        let detail: Vec<String> = flannel_hosts(lab)
            .into_iter()
            .map(|i| {
                format!(
                    "h{i}: want {:?}\n    have {:?}\n{}",
                    expected_kernel_of(lab, i, peers.clone()),
                    actual_kernel(lab, i),
                    lab.log(i)
                )
            })
            .collect();
        panic!("the mesh did not converge:\n{}", detail.join("\n"));
    }
}

fn vtep_mac(lab: &Lab, i: usize) -> String {
    let out = lab.on_host(i, &["cat", "/sys/class/net/flannel.1/address"]);
    out.trim().to_string()
}

/// A kube lab of `hosts` hosts whose first `running` have their Node and a flanneld-rs
/// running, meshed.
fn meshed(tag: char, hosts: usize, running: usize) -> (Lab, tempfile::TempDir) {
    let (mut lab, dir) = lab(tag, hosts, None);
    lab.use_kube(Authz::AlwaysAllow, NET_CONF);
    for i in 1..=running {
        lab.kube()
            .create_node(&lab.node_name(i), &[&pod_cidr(i)], None);
    }
    for i in 1..=running {
        lab.start(i);
    }
    lab.wait_ready(LONG);
    wait_kube_converged(&lab);
    (lab, dir)
}

#[test]
fn three_nodes_mesh_with_upstreams_annotations_and_follow_the_nodes() {
    let (mut lab, _dir) = lab('k', 3, None);
    lab.use_kube(Authz::AlwaysAllow, NET_CONF);
    for i in 1..=3 {
        lab.kube()
            .create_node(&lab.node_name(i), &[&pod_cidr(i)], None);
    }
    lab.start_all();
    lab.wait_ready(LONG);
    // subnet.env: the pod CIDR
    for i in 1..=3 {
        let env = lab.subnet_env(i);
        assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16\n"), "{env}");
        assert!(
            env.contains(&format!("FLANNEL_SUBNET=10.244.{i}.1/24\n")),
            "{env}"
        );
        assert!(env.contains("FLANNEL_MTU=1450\n"), "{env}");
    }
    // upstream's annotations, byte for byte
    for i in 1..=3 {
        let a = lab.kube().annotations(&lab.node_name(i));
        let want = json!({
            format!("{P}backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"{}\"}}", vtep_mac(&lab, i)),
            format!("{P}backend-type"): "vxlan",
            format!("{P}kube-subnet-manager"): "true",
            format!("{P}public-ip"): lab.hosts[i - 1].ip.to_string(),
        });
        assert_eq!(Value::Object(a), want);
        // the NetworkUnavailable condition
        let node = lab.kube().node(&lab.node_name(i));
        let cond = node["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "NetworkUnavailable"))
            .cloned()
            .unwrap_or_else(|| panic!("no NetworkUnavailable condition: {node}"));
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "FlannelIsUp");
        assert_eq!(cond["message"], "Flannel is running on this node");
    }
    wait_kube_converged(&lab);
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert!(lab.ping_matrix().is_empty(), "pods do not reach each other");

    // lease show in kube mode: a row per flannel node, from the annotations
    let kube_flags: Vec<String> = lab
        .flags(1)
        .into_iter()
        .filter(|f| f.starts_with("-kube") || f.starts_with("-net-config-path"))
        .collect();
    let mut args = vec![
        lab.spec.flanneld.display().to_string(),
        "lease".into(),
        "show".into(),
    ];
    args.extend(kube_flags.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let table = lab.on_host(1, &args);
    // the pod CIDRs are the subnets: no range of zeros (issue 32)
    assert!(
        table.starts_with("network config: Network=10.244.0.0/16 Backend=vxlan\n"),
        "{table}"
    );
    for i in 1..=3 {
        let mut want = vec![format!("10.244.{i}.0/24")];
        if i == 1 {
            want.push("*".into());
        }
        want.extend([
            lab.hosts[i - 1].ip.to_string(),
            "vxlan".into(),
            vtep_mac(&lab, i),
            format!("h{i}"),
        ]);
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == want),
            "want {want:?} in\n{table}"
        );
    }
    args_json_check(&lab, &args);
    // doctor with the daemon's flags: all good (exit 0), the nodes read from the API
    let mut doctor = vec![lab.spec.flanneld.display().to_string(), "doctor".into()];
    doctor.extend(lab.flags(1));
    let doctor: Vec<&str> = doctor.iter().map(String::as_str).collect();
    let (ok, report) = flannel_lab::lab::try_nsexec(&lab.hosts[0].ns, &doctor);
    assert!(ok, "{report}");
    assert!(report.contains("3 flannel nodes"), "{report}");
    let words = report.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("(the pod CIDR of its Node)"), "{report}");
    assert!(
        !report.contains("reservation") && !report.contains("::/0"),
        "{report}"
    );

    // a node that is not a flannel node (no annotations) is no peer; one without any
    // annotation does not crash anybody (upstream v0.20.2 panics on it)
    lab.kube()
        .create_node("bystander", &["10.244.99.0/24"], None);
    // an annotation changed (as a re-created device would): the peers' FDB follows. h3's
    // own flanneld is stopped first: running, it writes its annotations back (they are its
    // lease, kept as the etcd keeper keeps a lease value)
    lab.stop(3, "KILL");
    let new_mac = "0a:0b:0c:0d:0e:0f";
    lab.kube().patch_node(
        "h3",
        &json!({"metadata": {"annotations": {
            format!("{P}backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"{new_mac}\"}}"),
        }}}),
    );
    wait_kube_converged(&lab);
    assert!(lab
        .on_host(1, &["bridge", "fdb", "show", "dev", "flannel.1"])
        .contains(new_mac));
    // node deleted: its peer entries go
    lab.kube().delete_node("h3");
    assert!(
        wait_until(LONG, || !lab
            .on_host(1, &["ip", "route"])
            .contains("10.244.3.0/24")),
        "{}",
        lab.on_host(1, &["ip", "route"])
    );
    assert!(lab.running(1) && lab.running(2));
    // doctor on the node whose Node is gone says so (not "same -iface / -public-ip?")
    let mut doctor3 = vec![
        "env".to_string(),
        "NODE_NAME=h3".into(),
        lab.spec.flanneld.display().to_string(),
        "doctor".into(),
    ];
    doctor3.extend(lab.flags(3));
    let doctor3: Vec<&str> = doctor3.iter().map(String::as_str).collect();
    let (ok, report) = flannel_lab::lab::try_nsexec(&lab.hosts[2].ns, &doctor3);
    assert!(!ok, "{report}");
    assert!(
        report.contains("Node \"h3\" does not exist in the API"),
        "{report}"
    );
}

#[test]
fn restarts_keep_the_mac_delete_nothing_and_the_apiserver_may_come_and_go() {
    let (mut lab, dir) = meshed('r', 3, 2);
    let mac = vtep_mac(&lab, 1);
    let annotations = lab.kube().annotations("h1");

    // a restart (SIGTERM, then kill -9) deletes nothing live and changes no annotation
    let monitors = Monitors::start(&lab, 1, dir.path());
    for signal in ["TERM", "KILL"] {
        lab.stop(1, signal);
        lab.start(1);
        assert!(wait_until(LONG, || lab.ready(1)), "{}", lab.log(1));
    }
    wait_kube_converged(&lab);
    assert_eq!(monitors.deleted(), Vec::<String>::new());
    drop(monitors);
    assert_eq!(lab.kube().annotations("h1"), annotations);

    // the device gone while flanneld was down: the new one takes the MAC the node's
    // backend-data advertises, so the peers' entries stay right
    lab.stop(1, "TERM");
    lab.on_host(1, &["ip", "link", "del", "flannel.1"]);
    lab.start(1);
    assert!(wait_until(LONG, || lab.ready(1)), "{}", lab.log(1));
    assert_eq!(vtep_mac(&lab, 1), mac);
    assert_eq!(lab.kube().annotations("h1"), annotations);

    // the API server dies and comes back: nobody exits, and what changed meanwhile (a node
    // created while the watches were broken) arrives
    lab.kube_mut().stop();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(lab.running(1) && lab.running(2));
    lab.kube_mut().restart();
    lab.kube().create_node("h3", &[&pod_cidr(3)], None);
    lab.start(3);
    assert!(wait_until(LONG, || lab.ready(3)), "{}", lab.log(3));
    wait_kube_converged(&lab);

    // down at start: the new flanneld waits, saying why, and starts once it is back
    lab.stop(3, "TERM");
    lab.kube_mut().stop();
    lab.start(3);
    assert!(
        wait_until(LONG, || lab
            .log(3)
            .contains("cannot reach the Kubernetes API at")),
        "{}",
        lab.log(3)
    );
    assert!(lab.running(3) && !lab.ready(3));
    lab.kube_mut().restart();
    assert!(wait_until(LONG, || lab.ready(3)), "{}", lab.log(3));
    wait_kube_converged(&lab);
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert!(lab.ping_matrix().is_empty(), "pods do not reach each other");
}

/// `lease show --json` in kube mode names the node of each lease.
fn args_json_check(lab: &Lab, args: &[&str]) {
    let mut args = args.to_vec();
    args.push("--json");
    let out: Value = serde_json::from_str(&lab.on_host(1, &args)).unwrap();
    let leases = out["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 3, "{out}");
    assert_eq!(leases[1]["node"], "h2");
    assert_eq!(leases[1]["subnet"], "10.244.2.0/24");
    assert_eq!(leases[1]["reservation"], false);
    assert_eq!(
        out["config"],
        serde_json::json!({"network": "10.244.0.0/16", "backend_type": "vxlan"})
    );
}

/// The node's own Node deleted while flanneld runs (issue 32: nothing was said, /readyz stayed
/// 200, and a re-created Node stayed without annotations until a restart): said, not ready,
/// annotated again once kubelet (here the test) creates it again, ready again, peers follow;
/// re-created with another pod CIDR, flanneld ends saying so, and the same RBAC that stops a
/// fresh node stops a restart whose annotations are already there.
#[test]
fn the_own_node_deleted_while_running_is_said_and_annotated_again() {
    let (mut lab, _dir) = meshed('n', 2, 2);

    lab.kube().delete_node("h2");
    assert!(
        wait_until(LONG, || lab
            .log(2)
            .contains("this node's Node \"h2\" was deleted")),
        "{}",
        lab.log(2)
    );
    assert!(wait_until(LONG, || !lab.ready(2)), "h2 still ready");
    assert!(lab.running(2));
    assert!(wait_until(LONG, || !lab
        .on_host(1, &["ip", "route"])
        .contains(&pod_cidr(2))));

    // kubelet registers the Node again: flanneld-rs annotates it, is ready, peers follow
    lab.kube().create_node("h2", &[&pod_cidr(2)], None);
    assert!(
        wait_until(LONG, || lab.log(2).contains("annotated Node \"h2\" again")),
        "{}",
        lab.log(2)
    );
    assert!(wait_until(LONG, || lab.ready(2)), "{}", lab.log(2));
    let a = lab.kube().annotations("h2");
    assert_eq!(a[&format!("{P}kube-subnet-manager")], "true");
    assert_eq!(
        a[&format!("{P}backend-data")],
        format!("{{\"VNI\":1,\"VtepMAC\":\"{}\"}}", vtep_mac(&lab, 2))
    );
    wait_kube_converged(&lab);

    // annotations removed by hand: written again
    lab.kube().patch_node(
        "h2",
        &json!({"metadata": {"annotations": {format!("{P}backend-data"): null}}}),
    );
    assert!(wait_until(LONG, || lab
        .kube()
        .annotations("h2")
        .contains_key(&format!("{P}backend-data"))));

    // created again with another pod CIDR: this node's subnet is gone
    lab.kube().delete_node("h2");
    lab.kube().create_node("h2", &["10.244.9.0/24"], None);
    let log = exits(&mut lab, 2);
    assert!(
        log.contains(
            "Node \"h2\" now has podCIDR 10.244.9.0/24, not this node's subnet 10.244.2.0-24"
        ),
        "{log}"
    );
    assert_eq!(lab.stop(2, "KILL"), Some(1));
    assert!(lab.running(1));
}

/// Host `i`'s traffic with the API server dropped both ways (`-I`), or let through again
/// (`-D`): a partition that sends no RST, so the Node watch's connection survives it.
fn cut_off(lab: &Lab, i: usize, op: &str) {
    let port = flannel_lab::kube::PORT.to_string();
    for (chain, side) in [("OUTPUT", "--dport"), ("INPUT", "--sport")] {
        lab.on_host(
            i,
            &[
                "iptables", "-w", op, chain, "-p", "tcp", side, &port, "-j", "DROP",
            ],
        );
    }
}

/// Two chaos run findings (issue 31). The events a partition swallows are sent again by the
/// API server's TCP only as its retransmission timer backs off (0.2 s, 0.6, 1.4, 3, 6.2,
/// 12.6, 25.4 s after the first lost one), so after a 15 s partition an HTTP/1.1 watch
/// stayed stalled for 11 s more: the watch runs on HTTP/2 with pings now, a ping unanswered
/// closes the connection, and the watch is taken up again from its resource version on a
/// new one. And the pause before that was 5 s for good once an API server outage had grown
/// it: it starts over after a watch that worked.
#[test]
fn a_node_cut_off_from_the_api_server_catches_up_soon_after_it_heals() {
    let (mut lab, _dir) = meshed('O', 3, 2);
    // an outage first: the watch's pauses grow to 5 s; then it works again for a while
    lab.kube_mut().stop();
    std::thread::sleep(std::time::Duration::from_secs(10));
    lab.kube_mut().restart();
    assert!(
        wait_until(LONG, || lab.log(1).contains("watching again in 5s")),
        "{}",
        lab.log(1)
    );
    wait_kube_converged(&lab);
    std::thread::sleep(std::time::Duration::from_secs(6));
    let before = lab.log(1).len();

    // h1 cut off; meanwhile h3 joins (its Node created, then annotated by its flanneld)
    cut_off(&lab, 1, "-I");
    let cut = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(500));
    lab.kube().create_node("h3", &[&pod_cidr(3)], None);
    lab.start(3);
    assert!(wait_until(LONG, || lab.ready(3)), "{}", lab.log(3));
    std::thread::sleep(std::time::Duration::from_secs(15).saturating_sub(cut.elapsed()));
    assert!(lab.running(1), "{}", lab.log(1));
    cut_off(&lab, 1, "-D");
    let healed = std::time::Instant::now();
    let caught_up = wait_until(LONG, || kube_converged(&lab));
    let after = healed.elapsed();
    eprintln!("h1 caught up {after:?} after the partition healed");
    assert!(
        caught_up && after < std::time::Duration::from_secs(5),
        "h1 caught up {after:?} after the partition healed (converged: {caught_up}):\n{}",
        lab.log(1)
    );
    // the first pause after the watch that worked is the shortest again
    let log = lab.log(1);
    let first = log[before..]
        .lines()
        .find(|l| l.contains("node watch interrupted"))
        .unwrap_or_else(|| panic!("no interruption logged after the cut:\n{log}"));
    assert!(first.ends_with("watching again in 100ms"), "{first}");
    for i in 1..=3 {
        lab.add_pod(i);
    }
    assert!(lab.ping_matrix().is_empty(), "pods do not reach each other");
}

/// Runs flanneld on host `i` until it exits; its log.
fn exits(lab: &mut Lab, i: usize) -> String {
    assert!(
        wait_until(std::time::Duration::from_secs(60), || !lab.running(i)),
        "flanneld on h{i} still runs:\n{}",
        lab.log(i)
    );
    lab.log(i)
}

#[test]
fn what_cannot_work_ends_start_up_in_upstreams_words() {
    let (mut lab, _dir) = lab('x', 4, None);
    lab.use_kube(Authz::Rbac, NET_CONF);
    // RBAC without nodes/status patch: refused at once, naming the permission
    lab.kube().grant_flanneld(false);
    lab.kube().create_node("h4", &[&pod_cidr(4)], None);
    lab.start(4);
    let log = exits(&mut lab, 4);
    assert!(log.contains("patching node \"h4\" (annotations)"), "{log}");
    assert!(
        log.contains("cannot patch resource \"nodes/status\""),
        "{log}"
    );
    assert!(log.contains("nodes/status patch"), "{log}");
    // with upstream's ClusterRole, the same node starts
    lab.kube().grant_flanneld(true);
    lab.start(4);
    assert!(wait_until(LONG, || lab.ready(4)), "{}", lab.log(4));
    // the same RBAC on a restart whose annotations are there already: the same refusal
    // (before: `CompleteLease … forbidden` logged, then ready)
    lab.stop(4, "TERM");
    let before = lab.log(4).len();
    lab.kube().grant_flanneld(false);
    lab.start(4);
    let log = exits(&mut lab, 4)[before..].to_string();
    assert!(log.contains("patching node \"h4\" (annotations)"), "{log}");
    assert!(log.contains("nodes/status patch"), "{log}");
    assert!(!log.contains("flannel is ready"), "{log}");
    lab.kube().grant_flanneld(true);
    lab.start(4);
    assert!(wait_until(LONG, || lab.ready(4)), "{}", lab.log(4));

    // no node (30 s, as upstream), no pod CIDR, a pod CIDR outside the Network
    lab.kube().create_node("h2", &[], None);
    lab.kube().create_node("h3", &["10.99.3.0/24"], None);
    for i in 1..=3 {
        lab.start(i);
    }
    let log = exits(&mut lab, 2);
    assert!(log.contains("node \"h2\" pod cidr not assigned"), "{log}");
    let log = exits(&mut lab, 3);
    assert!(
        log.contains("subnet \"10.244.0.0/16\" specified in the flannel net config doesn't contain \"10.99.3.0/24\" PodCIDR of the \"h3\" node"),
        "{log}"
    );
    let log = exits(&mut lab, 1);
    assert!(
        log.contains("timeout contacting kube-api, failed to patch node \"h1\". Error: node \"h1\" does not exist"),
        "{log}"
    );
    assert!(lab.running(4));
}

/// The API path that creates an object of this manifest document.
fn collection(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap();
    let ns = doc["metadata"]["namespace"].as_str().unwrap_or("");
    match kind {
        "Namespace" => "/api/v1/namespaces".into(),
        "ClusterRole" => "/apis/rbac.authorization.k8s.io/v1/clusterroles".into(),
        "ClusterRoleBinding" => "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings".into(),
        "ServiceAccount" => format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        "ConfigMap" => format!("/api/v1/namespaces/{ns}/configmaps"),
        "DaemonSet" => format!("/apis/apps/v1/namespaces/{ns}/daemonsets"),
        other => panic!("unexpected kind {other} in the manifest"),
    }
}

#[test]
fn the_daemonset_manifest_applies_and_its_role_is_all_flanneld_needs() {
    let (mut lab, _dir) = lab('m', 2, None);
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/kube-flannel-rs.yml"
    ))
    .unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&manifest).unwrap();
    let net_conf = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["net-conf.json"].as_str())
        .unwrap()
        .to_string();
    lab.use_kube(Authz::Rbac, &net_conf);
    // every object is accepted as written
    for doc in &docs {
        lab.kube()
            .request("POST", &collection(doc), Some(("application/json", doc)));
    }
    // the manifest's ClusterRole, given to the lab's flanneld user (the pods' service
    // account has no token without a controller manager), is enough to run
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": "flannel-lab" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "flanneld" }],
    });
    lab.kube().request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        Some(("application/json", &binding)),
    );
    // the node is found from the pod, as in the DaemonSet (POD_NAME, POD_NAMESPACE)
    for i in 1..=2 {
        lab.kube()
            .create_node(&lab.node_name(i), &[&pod_cidr(i)], None);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": format!("kube-flannel-ds-{i}"), "namespace": "kube-flannel" },
            "spec": {
                "nodeName": lab.node_name(i),
                "serviceAccountName": "flannel",
                "automountServiceAccountToken": false,
                "containers": [{ "name": "kube-flannel", "image": "flanneld-rs:0.1.0" }],
            },
        });
        lab.kube().request(
            "POST",
            "/api/v1/namespaces/kube-flannel/pods",
            Some(("application/json", &pod)),
        );
        let env = [
            ("NODE_NAME".to_string(), String::new()),
            ("POD_NAME".to_string(), format!("kube-flannel-ds-{i}")),
            ("POD_NAMESPACE".to_string(), "kube-flannel".to_string()),
        ];
        let bin = lab.spec.flanneld.clone();
        lab.start_binary(i, &bin, &env);
    }
    lab.wait_ready(LONG);
    wait_kube_converged(&lab);
    assert!(lab.subnet_env(2).contains("FLANNEL_SUBNET=10.244.2.1/24\n"));
}

/// Dual-stack pod CIDRs, and a kubeconfig with a client certificate.
#[test]
fn dual_stack_nodes_carry_both_families() {
    let (mut lab, _dir) = lab('d', 2, None);
    lab.use_kube(
        Authz::AlwaysAllow,
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}"#,
    );
    for i in 1..=2 {
        lab.kube().create_node(
            &lab.node_name(i),
            &[&pod_cidr(i), &format!("fd00:10:0:{i}::/64")],
            None,
        );
    }
    // this test's flanneld authenticates with a client certificate (the others: a token)
    let server = lab.kube_mut();
    server.kubeconfig = server.kubeconfig_cert.clone();
    lab.start_all();
    lab.wait_ready(LONG);
    for i in 1..=2 {
        let env = lab.subnet_env(i);
        assert!(
            env.contains(&format!("FLANNEL_IPV6_SUBNET=fd00:10:0:{i}::1/64\n")),
            "{env}"
        );
        let a = lab.kube().annotations(&lab.node_name(i));
        let mac6 = lab.on_host(i, &["cat", "/sys/class/net/flannel-v6.1/address"]);
        assert_eq!(a[&format!("{P}public-ipv6")], lab.ip6(i).to_string());
        assert_eq!(
            a[&format!("{P}backend-v6-data")],
            format!("{{\"VNI\":1,\"VtepMAC\":\"{}\"}}", mac6.trim())
        );
    }
    for i in 1..=2 {
        lab.add_pod(i);
    }
    // both families between the pods
    assert!(
        wait_until(LONG, || lab.ping_matrix().is_empty()),
        "pods do not reach each other"
    );
}
