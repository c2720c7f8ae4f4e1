//! The store a chaos cluster runs on (`--store v3|v2|kube`): how the lab is built around it,
//! how its leases are read, how the network config is written again, and how simulated
//! peers come and go.
//!
//! - v3: a 3-member etcd, the config and the peers' leases written over the v3 API;
//! - v2: the same members with `--enable-v2`, everything through the v2 keys API (the
//!   keyspace the Ansible role's clusters hold), with curl from a member's namespace;
//! - kube: one etcd under a kube-apiserver; a host's lease is its Node's pod CIDR and
//!   flannel annotations; a simulated peer is a Node created and deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use flannel_lab::kube::{Admin, Authz};
use flannel_lab::lab::{Lab, LabSpec, ETCD_MEMBERS};

use crate::{host_gw, peer_value, PREFIX};

/// A lease as the hosts must program it: the peer's PublicIP and VTEP MAC ("" for host-gw).
pub(super) type Leases = BTreeMap<Ipv4Addr, (Ipv4Addr, String)>;

const ANNOTATION: &str = "flannel.alpha.coreos.com/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    V3,
    V2,
    Kube,
}

impl Store {
    pub(crate) fn parse(s: &str) -> Option<Store> {
        match s {
            "v3" => Some(Store::V3),
            "v2" => Some(Store::V2),
            "kube" => Some(Store::Kube),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Store::V3 => "etcd v3",
            Store::V2 => "etcd v2",
            Store::Kube => "kube",
        }
    }

    /// The etcd members the faults may hit: three, or kube mode's one (member 2).
    pub(super) fn members(self) -> &'static [usize] {
        match self {
            Store::Kube => &[2],
            _ => &[0, 1, 2],
        }
    }

    /// The lab: the store with `config` in it, `hosts` host namespaces (flanneld not started).
    pub(super) fn lab(self, mut spec: LabSpec, hosts: usize, config: &str) -> Lab {
        match self {
            Store::V3 => Lab::create_with_etcd_cluster(spec, hosts, Some(config)),
            Store::V2 => {
                spec.etcd_args = vec!["--enable-v2=true".into()];
                let lab = Lab::create_with_etcd_cluster(spec, hosts, None);
                // as the Ansible role writes it (`etcdctl set`)
                let written = (0..3).any(|m| v2_put_config(&lab, m, config));
                assert!(written, "the v2 config could not be written");
                lab
            }
            Store::Kube => {
                let mut lab = Lab::create(spec, hosts, None);
                lab.use_kube(Authz::AlwaysAllow, config);
                for h in 1..=hosts {
                    lab.kube()
                        .create_node(&lab.node_name(h), &[&kube_pod_cidr(h)], None);
                }
                lab
            }
        }
    }

    /// The leases in the store now; `None` when it cannot be read.
    pub(super) fn leases(self, lab: &Lab) -> Option<Leases> {
        match self {
            Store::V3 => (0..3).find_map(|m| v3_leases(lab, m)),
            Store::V2 => (0..3).find_map(|m| v2_leases(lab, m)),
            Store::Kube => kube_leases(&lab.kube().admin()),
        }
    }

    /// The network config written again with the same value (kube mode reads its file at
    /// start only: nothing to do).
    pub(super) fn rewrite_config(self, lab: &Lab, config: &str) {
        let config_key = format!("{PREFIX}/config");
        match self {
            Store::V3 => {
                let _ = (0..3).any(|m| {
                    lab.member(m)
                        .etcdctl(&["put", &config_key, config])
                        .status
                        .success()
                });
            }
            Store::V2 => {
                let _ = (0..3).any(|m| v2_put_config(lab, m, config));
            }
            Store::Kube => {}
        }
    }

    /// Simulated peers added and removed (about five operations a second), each where no
    /// lease is and never on `exclude` (the real hosts' subnets), while `paused` is not
    /// set, until `stop`. Returns the operations done.
    pub(super) fn churn(
        self,
        lab: &Lab,
        seed: u64,
        exclude: BTreeSet<Ipv4Addr>,
        paused: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<u64> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut peers = PeerSet::default();
        match self {
            Store::V3 => crate::probe::spawn_in_netns(&lab.member_ns(0), move || async move {
                let mut ops = 0u64;
                let mut client: Option<Client> = None;
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if paused.load(Ordering::Relaxed) {
                        continue;
                    }
                    if client.is_none() {
                        client = v3_client().await;
                    }
                    let Some(c) = client.as_mut() else { continue };
                    let Some(op) = peers.next(&mut rng, &exclude) else {
                        continue;
                    };
                    match v3_apply(c, op).await {
                        Ok(()) => ops += 1,
                        Err(_) => {
                            peers.failed(op);
                            client = None;
                        }
                    }
                }
                ops
            }),
            Store::V2 => {
                let ns = lab.member_ns(0);
                let mut member = 0;
                std::thread::spawn(move || {
                    churn_loop(peers, rng, exclude, paused, stop, |op| {
                        let ok = v2_apply(&ns, member, op);
                        if !ok {
                            member = (member + 1) % 3;
                        }
                        ok
                    })
                })
            }
            Store::Kube => {
                let admin = lab.kube().admin();
                std::thread::spawn(move || {
                    churn_loop(peers, rng, exclude, paused, stop, |op| {
                        kube_apply(&admin, op)
                    })
                })
            }
        }
    }
}

/// The churn over a blocking `apply` (true: the store answered).
fn churn_loop(
    mut peers: PeerSet,
    mut rng: StdRng,
    exclude: BTreeSet<Ipv4Addr>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    mut apply: impl FnMut(Op) -> bool,
) -> u64 {
    let mut ops = 0u64;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if paused.load(Ordering::Relaxed) {
            continue;
        }
        let Some(op) = peers.next(&mut rng, &exclude) else {
            continue;
        };
        if apply(op) {
            ops += 1;
        } else {
            peers.failed(op);
        }
    }
    ops
}

/// Host `h`'s Node's pod CIDR in kube mode (inside 10.0.0.0/12, outside the peers' range).
fn kube_pod_cidr(h: usize) -> String {
    format!("10.15.{h}.0/24")
}

/// One churn operation: add peer `i` (only if no lease is at its subnet), or remove it.
#[derive(Debug, Clone, Copy)]
enum Op {
    Add(u32),
    Remove(u32),
}

/// The simulated peers that may hold a lease. An add is counted live whatever the store
/// answered (taken: only the churn writes these subnets, so it is an earlier add of ours
/// that timed out but happened); a remove the store did not answer is tried again later.
#[derive(Default)]
struct PeerSet {
    live: Vec<u32>,
}

impl PeerSet {
    fn next(&mut self, rng: &mut StdRng, exclude: &BTreeSet<Ipv4Addr>) -> Option<Op> {
        let n = self.live.len();
        let add = n < 40 || (n < 120 && rng.random_bool(0.5));
        if add {
            let i = rng.random_range(0..2000u32);
            if self.live.contains(&i) || exclude.contains(&peer_value(i).0) {
                return None;
            }
            self.live.push(i);
            Some(Op::Add(i))
        } else {
            Some(Op::Remove(self.live.swap_remove(rng.random_range(0..n))))
        }
    }

    fn failed(&mut self, op: Op) {
        if let Op::Remove(i) = op {
            self.live.push(i);
        }
    }
}

async fn v3_client() -> Option<Client> {
    let endpoints: Vec<String> = ETCD_MEMBERS
        .iter()
        .map(|(_, ip)| format!("http://{ip}:2379"))
        .collect();
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(1));
    Client::connect(endpoints, Some(options)).await.ok()
}

async fn v3_apply(c: &mut Client, op: Op) -> Result<(), etcd_client::Error> {
    match op {
        Op::Add(i) => {
            let (subnet, _, value) = peer_value(i);
            let key = format!("{PREFIX}/subnets/{subnet}-24");
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value, None)]);
            c.txn(txn).await.map(|_| ())
        }
        Op::Remove(i) => {
            let key = format!("{PREFIX}/subnets/{}-24", peer_value(i).0);
            c.delete(key, None).await.map(|_| ())
        }
    }
}

/// The leases over the v3 API, read through member `member`.
fn v3_leases(lab: &Lab, member: usize) -> Option<Leases> {
    let out = lab
        .member(member)
        .etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut map = BTreeMap::new();
    for pair in lines.chunks(2) {
        let [key, value] = pair else { continue };
        let (subnet, lease) = lease_of(key, value)?;
        map.insert(subnet, lease);
    }
    Some(map)
}

/// A subnet key's last part (`10.1.2.0-24`) and its value, as the hosts must program it.
fn lease_of(key: &str, value: &str) -> Option<(Ipv4Addr, (Ipv4Addr, String))> {
    let name = key.rsplit('/').next()?;
    let subnet: Ipv4Addr = name.split('-').next()?.parse().ok()?;
    let v: serde_json::Value = serde_json::from_str(value).ok()?;
    let ip: Ipv4Addr = v["PublicIP"].as_str()?.parse().ok()?;
    let mac = v["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap_or("")
        .to_string();
    Some((subnet, (ip, mac)))
}

/// curl against member `member`'s v2 keys API, from namespace `ns`: (HTTP code, body).
fn v2_curl(ns: &str, member: usize, method: &str, path: &str, args: &[&str]) -> (u16, String) {
    let url = format!(
        "http://{}:2379/v2/keys{PREFIX}{path}",
        ETCD_MEMBERS[member].1
    );
    let mut all = vec![
        "curl",
        "-s",
        "--max-time",
        "2",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ];
    all.extend_from_slice(args);
    all.push(&url);
    let (_, out) = flannel_lab::lab::try_nsexec(ns, &all);
    match out.rsplit_once('\n') {
        Some((body, code)) => (code.trim().parse().unwrap_or(0), body.to_string()),
        None => (out.trim().parse().unwrap_or(0), String::new()),
    }
}

fn v2_put_config(lab: &Lab, member: usize, config: &str) -> bool {
    let value = format!("value={config}");
    let (code, _) = v2_curl(
        &lab.member_ns(member),
        member,
        "PUT",
        "/config",
        &["--data-urlencode", &value],
    );
    (200..300).contains(&code)
}

/// An op over the v2 API; `false` when the member did not answer.
fn v2_apply(ns: &str, member: usize, op: Op) -> bool {
    let (code, _) = match op {
        Op::Add(i) => {
            let (subnet, _, value) = peer_value(i);
            let value = format!("value={value}");
            v2_curl(
                ns,
                member,
                "PUT",
                &format!("/subnets/{subnet}-24?prevExist=false"),
                &["--data-urlencode", &value],
            )
        }
        Op::Remove(i) => v2_curl(
            ns,
            member,
            "DELETE",
            &format!("/subnets/{}-24", peer_value(i).0),
            &[],
        ),
    };
    // 201 created, 412 taken, 200 deleted, 404 already gone
    matches!(code, 200 | 201 | 404 | 412)
}

/// The leases over the v2 API (a quorum read), through member `member`.
fn v2_leases(lab: &Lab, member: usize) -> Option<Leases> {
    let (code, body) = v2_curl(
        &lab.member_ns(member),
        member,
        "GET",
        "/subnets?recursive=true&quorum=true",
        &[],
    );
    let v: Value = serde_json::from_str(&body).ok()?;
    if code == 404 {
        return Some(Leases::new());
    }
    if code != 200 {
        return None;
    }
    let mut map = BTreeMap::new();
    for node in v["node"]["nodes"].as_array().into_iter().flatten() {
        let (subnet, lease) = lease_of(node["key"].as_str()?, node["value"].as_str()?)?;
        map.insert(subnet, lease);
    }
    Some(map)
}

/// Simulated peer `i` as a Node another flanneld annotated.
fn kube_node(i: u32) -> Value {
    let (subnet, mac, _) = peer_value(i);
    let public_ip = Ipv4Addr::from(0xac10_0000 + i + 1);
    let kind = super::backend();
    let data = if host_gw() {
        "null".to_string()
    } else {
        format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, flannel_net::MacAddr(mac))
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": format!("sim-{i}"),
            "annotations": {
                format!("{ANNOTATION}backend-data"): data,
                format!("{ANNOTATION}backend-type"): kind,
                format!("{ANNOTATION}kube-subnet-manager"): "true",
                format!("{ANNOTATION}public-ip"): public_ip.to_string(),
            },
        },
        "spec": { "podCIDR": format!("{subnet}/24"), "podCIDRs": [format!("{subnet}/24")] },
    })
}

/// An op as Nodes; `false` when the API server did not answer.
fn kube_apply(admin: &Admin, op: Op) -> bool {
    let answer = match op {
        Op::Add(i) => admin.try_request(
            "POST",
            "/api/v1/nodes",
            Some(("application/json", &kube_node(i))),
        ),
        Op::Remove(i) => admin.try_request("DELETE", &format!("/api/v1/nodes/sim-{i}"), None),
    };
    // 201 created, 409 exists, 200 deleted, 404 already gone
    matches!(answer, Some((200 | 201 | 404 | 409, _)))
}

/// The leases as Nodes: every annotated Node's pod CIDR, PublicIP and VTEP MAC.
fn kube_leases(admin: &Admin) -> Option<Leases> {
    let (code, list) = admin.try_request("GET", "/api/v1/nodes", None)?;
    if code != 200 {
        return None;
    }
    let mut map = BTreeMap::new();
    for node in list["items"].as_array()? {
        let annotations = &node["metadata"]["annotations"];
        let Some(ip) = annotations[format!("{ANNOTATION}public-ip")].as_str() else {
            continue; // not annotated yet
        };
        let cidr = node["spec"]["podCIDR"].as_str()?;
        let subnet: Ipv4Addr = cidr.split('/').next()?.parse().ok()?;
        let data: Value = annotations[format!("{ANNOTATION}backend-data")]
            .as_str()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let mac = data["VtepMAC"].as_str().unwrap_or("").to_string();
        map.insert(subnet, (ip.parse().ok()?, mac));
    }
    Some(map)
}
