//! Kube mode at scale (`--scenario kube-cold`): a real kube-apiserver (tests/kube-apiserver.sh)
//! holding N Nodes as kubelets register them (status with conditions, addresses, node info
//! and images: a few KiB each, as in a real cluster), flannel-annotated as other flanneld
//! nodes leave them; flanneld starts in kube mode until every peer's route, ARP and FDB entry
//! is programmed and /readyz answers; then its peak and idle memory. Upstream keeps every
//! whole Node in an informer cache; flanneld-rs keeps the name, pod CIDRs and flannel's
//! annotations.

use std::path::Path;
use std::time::Duration;

use flannel_lab::kube::Authz;
use flannel_lab::lab::Lab;
use flannel_net::BackendKind;
use serde_json::{json, Value};

use crate::{label, peer_value, spec, Opts, Row};

const P: &str = "flannel.alpha.coreos.com/";

/// Node `i` as a kubelet registers it and flanneld annotates it.
fn node(i: u32) -> Value {
    let (subnet, mac, _) = peer_value(i);
    let public_ip = std::net::Ipv4Addr::from(0xac10_0000 + i + 1);
    let mac = flannel_net::MacAddr(mac);
    let name = format!("node-{i:05}");
    let condition = |t: &str, status: &str, reason: &str| {
        json!({"type": t, "status": status, "lastHeartbeatTime": "2026-12-01T10:00:00Z",
               "lastTransitionTime": "2026-11-01T10:00:00Z", "reason": reason,
               "message": format!("kubelet reports {t} is {status}")})
    };
    let images: Vec<Value> = (0..12)
        .map(|k| {
            json!({"names": [
                format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", u64::from(i) * 31 + k),
                format!("registry.example.com/team-{k}/service-{k}:v1.{k}.{i}"),
            ], "sizeBytes": 50_000_000 + k * 1_000_003})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "standard-8",
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                format!("{P}backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
                format!("{P}backend-type"): BackendKind::Vxlan.name(),
                format!("{P}kube-subnet-manager"): "true",
                format!("{P}public-ip"): public_ip.to_string(),
            },
        },
        "spec": { "podCIDR": format!("{subnet}/24"), "podCIDRs": [format!("{subnet}/24")] },
        "status": {
            "capacity": {"cpu": "8", "ephemeral-storage": "101445540Ki", "hugepages-2Mi": "0", "memory": "32780412Ki", "pods": "110"},
            "allocatable": {"cpu": "8", "ephemeral-storage": "93492209510", "hugepages-2Mi": "0", "memory": "32678012Ki", "pods": "110"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True", "KubeletReady"),
                condition("NetworkUnavailable", "False", "FlannelIsUp"),
            ],
            "addresses": [{"type": "InternalIP", "address": public_ip.to_string()}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{:032x}", u128::from(i) * 7919), "systemUUID": format!("{:032x}", u128::from(i) * 104_729),
                "bootID": format!("{:032x}", u128::from(i) * 15_485_863), "kernelVersion": "6.1.0-28-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.6.20",
                "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64",
            },
            "images": images,
        },
    })
}

/// `--scenario kube-cold`: N = 100 (`--quick`), 1000 and 5000 nodes.
pub fn cold(o: &Opts, dir: &Path) -> Vec<Row> {
    if crate::dual() || crate::host_gw() {
        eprintln!("kube-cold runs with vxlan over IPv4 only; skipped");
        return Vec::new();
    }
    let sizes: &[u32] = if o.quick { &[100] } else { &[1000, 5000] };
    let idle = if o.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(60)
    };
    let mut rows = Vec::new();
    for &n in sizes {
        for bin in &o.binaries {
            let mut lab = Lab::create(spec("bq", bin, &dir.join(format!("{n}"))), 1, None);
            lab.use_kube(
                Authz::AlwaysAllow,
                &crate::net_config("10.0.0.0/8", BackendKind::Vxlan).to_string(),
            );
            let nodes: Vec<Value> = (0..n).map(node).collect();
            lab.kube().create_nodes(&nodes);
            // this node: one annotation (upstream v0.20.2 panics on a node without any)
            lab.kube().create_node(
                "h1",
                &["10.255.0.0/24"],
                Some(json!({"node.alpha.kubernetes.io/ttl": "0"})),
            );
            rows.push(Row {
                scenario: format!("kube cold start, {n} nodes"),
                binary: label(bin),
                metrics: crate::cold_start(&mut lab, bin, &[], n, idle, Duration::from_secs(300)),
            });
        }
    }
    rows
}
