//! What the lab tests share: a lab per test, etcd listings, the kernel state upstream
//! would program.
#![allow(dead_code)] // each test file uses its part
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed assertion

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flannel_lab::lab::{try_nsexec, wait_until, Lab, LabSpec, DEFAULT_PREFIX};

pub mod nspawn;

pub const LONG: Duration = Duration::from_secs(30);

pub fn lab(tag: char, hosts: usize, config: Option<&str>) -> (Lab, tempfile::TempDir) {
    lab_with_etcd(tag, hosts, config, &[])
}

pub fn lab_with_etcd(
    tag: char,
    hosts: usize,
    config: Option<&str>,
    etcd_args: &[&str],
) -> (Lab, tempfile::TempDir) {
    let (spec, dir) = spec(tag, etcd_args);
    (Lab::create(spec, hosts, config), dir)
}

/// A lab whose etcd speaks TLS only (client certificates of `certs`' CA demanded).
pub fn lab_with_tls(
    tag: char,
    hosts: usize,
    config: Option<&str>,
    certs: &flannel_lab::tls::TestCerts,
) -> (Lab, tempfile::TempDir) {
    let (spec, dir) = spec(tag, &[]);
    (Lab::create_with_tls(spec, hosts, config, certs), dir)
}

/// A lab whose etcd is a 3-member cluster (every host gets the three endpoints).
pub fn lab_with_etcd_cluster(
    tag: char,
    hosts: usize,
    config: Option<&str>,
    etcd_args: &[&str],
) -> (Lab, tempfile::TempDir) {
    let (spec, dir) = spec(tag, etcd_args);
    (Lab::create_with_etcd_cluster(spec, hosts, config), dir)
}

fn spec(tag: char, etcd_args: &[&str]) -> (LabSpec, tempfile::TempDir) {
    assert!(nix_is_root(), "the lab tests need root (CI runs as root)");
    let dir = tempfile::tempdir().unwrap();
    let spec = LabSpec {
        name: format!("e{:05}{tag}", std::process::id() % 100_000),
        flanneld: PathBuf::from(env!("CARGO_BIN_EXE_flanneld-rs")),
        // built with the workspace, next to flanneld-rs
        cni_plugin: PathBuf::from(env!("CARGO_BIN_EXE_flanneld-rs")).with_file_name("flannel"),
        prefix: DEFAULT_PREFIX.into(),
        extra_flags: vec![],
        dir: dir.path().to_path_buf(),
        etcd_args: etcd_args.iter().map(|s| s.to_string()).collect(),
    };
    (spec, dir)
}

pub fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// subnet key -> value, as etcdctl shows them.
pub fn leases(lab: &Lab) -> BTreeMap<String, String> {
    let out = lab
        .etcd()
        .ctl(&["get", "--prefix", &format!("{DEFAULT_PREFIX}/subnets/")]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| {
            (
                c[0].rsplit('/').next().unwrap().to_string(),
                c[1].to_string(),
            )
        })
        .collect()
}

/// (subnet "10.200.36.0/24", public ip, vtep mac) of every lease.
pub fn peers(lab: &Lab) -> Vec<(String, String, String)> {
    leases(lab)
        .values()
        .map(|v| {
            let j: serde_json::Value = serde_json::from_str(v).unwrap();
            (
                String::new(),
                j["PublicIP"].as_str().unwrap().to_string(),
                j["BackendData"]["VtepMAC"].as_str().unwrap().to_string(),
            )
        })
        .zip(leases(lab).keys())
        .map(|((_, ip, mac), key)| (key.replace('-', "/"), ip, mac))
        .collect()
}

pub fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// What upstream programs on host `index` for every other host (reference form).
pub fn expected_kernel(lab: &Lab, index: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
    expected_kernel_of(lab, index, peers(lab))
}

/// The same for these peers (subnet, public ip, vtep mac), wherever they are read from.
pub fn expected_kernel_of(
    lab: &Lab,
    index: usize,
    peers: Vec<(String, String, String)>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let me = lab.hosts[index - 1].ip.to_string();
    let (mut neigh, mut fdb, mut routes) = (vec![], vec![], vec![]);
    for (subnet, ip, mac) in peers.into_iter().filter(|(_, ip, _)| *ip != me) {
        let gw = subnet.split('/').next().unwrap().to_string();
        neigh.push(format!("{gw} lladdr {mac} PERMANENT"));
        fdb.push(format!("{mac} dst {ip} self permanent"));
        routes.push(format!("{subnet} via {gw} dev flannel.1 onlink"));
    }
    neigh.sort();
    fdb.sort();
    routes.sort();
    (neigh, fdb, routes)
}

/// The entries on host `index`'s flannel.1. A route through a nexthop object (flanneld-rs's
/// default where the kernel has them: `<subnet> nhid <id> via <gw> dev flannel.1 onlink`) is
/// compared by what it does, as the classic form upstream makes; the form itself is asserted
/// by `nexthops.rs`.
/// While flannel.1 is missing (deleted by a test, not yet re-created by flanneld) the
/// neighbour and FDB lists say so instead of panicking, so a wait keeps polling.
pub fn actual_kernel(lab: &Lab, index: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
    let on_device = |args: &[&str]| {
        let (ok, out) = try_nsexec(&lab.hosts[index - 1].ns, args);
        if ok {
            sorted_lines(&out)
        } else {
            vec![format!("({} failed: {})", args.join(" "), out.trim())]
        }
    };
    (
        on_device(&["ip", "neigh", "show", "dev", "flannel.1"]),
        on_device(&["bridge", "fdb", "show", "dev", "flannel.1"]),
        sorted_lines(&lab.on_host(index, &["ip", "route"]))
            .into_iter()
            .filter(|l| l.contains("flannel.1"))
            .map(|l| without_nhid(&l))
            .collect(),
    )
}

/// `ip route` on host `i`, routes through nexthop objects written as the classic form
/// (`<subnet> via …`), so that a check of a peer's route means the same in both forms.
pub fn routes_text(lab: &Lab, i: usize) -> String {
    lab.on_host(i, &["ip", "route"])
        .lines()
        .map(without_nhid)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `10.200.2.0/24 nhid 180879872 via …` → `10.200.2.0/24 via …`.
pub fn without_nhid(route: &str) -> String {
    let words: Vec<&str> = route.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "nhid" {
            i += 2;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

pub fn converged(lab: &Lab) -> bool {
    (1..=lab.hosts.len()).all(|i| actual_kernel(lab, i) == expected_kernel(lab, i))
}

pub fn wait_converged(lab: &Lab) {
    if !wait_until(LONG, || converged(lab)) {
        let detail: Vec<String> = (1..=lab.hosts.len())
            .map(|i| {
                format!(
                    "h{i}: want {:?}\n    have {:?}\n{}",
                    expected_kernel(lab, i),
                    actual_kernel(lab, i),
                    lab.log(i)
                )
            })
            .collect();
        panic!("the mesh did not converge:\n{}", detail.join("\n"));
    }
}

/// Every lease's value is `want(PublicIP)`, byte for byte (upstream's form for a backend).
pub fn assert_lease_values(lab: &Lab, want: impl Fn(&str) -> String) {
    for (key, value) in leases(lab) {
        let ip = serde_json::from_str::<serde_json::Value>(&value).unwrap()["PublicIP"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(value, want(&ip), "{key}");
    }
}

/// Stops and starts every host's flanneld-rs, one after the other (a new config read).
pub fn restart_all(lab: &mut Lab) {
    for i in 1..=lab.hosts.len() {
        lab.stop(i, "TERM");
        lab.start(i);
    }
    lab.wait_ready(LONG);
}

/// The network config switched to vxlan and every host restarted: nothing of the backend
/// before is left (`device` on no host, every route through `flannel.1`), pods ping.
pub fn switch_to_vxlan(lab: &mut Lab, config: &str, device: &str) {
    lab.etcd()
        .ctl(&["put", &format!("{DEFAULT_PREFIX}/config"), config]);
    restart_all(lab);
    for i in 1..=lab.hosts.len() {
        let links = lab.on_host(i, &["ls", "/sys/class/net"]);
        assert!(!links.lines().any(|l| l == device), "{links}");
        assert!(
            wait_until(LONG, || flannel_routes(lab, i)
                .iter()
                .all(|r| r.contains("flannel.1"))),
            "{:?}",
            flannel_routes(lab, i)
        );
    }
    assert!(wait_until(LONG, || lab.ping_matrix().is_empty()));
}

/// Kernel notifications on one host, recorded to files until dropped.
pub struct Monitors {
    children: Vec<std::process::Child>,
    files: Vec<PathBuf>,
}

impl Monitors {
    pub fn start(lab: &Lab, index: usize, dir: &std::path::Path) -> Monitors {
        let ns = &lab.hosts[index - 1].ns;
        let mut m = Monitors {
            children: vec![],
            files: vec![],
        };
        for (name, args) in [
            ("ip-monitor", &["ip", "monitor", "route", "neigh"][..]),
            ("bridge-monitor", &["bridge", "monitor", "fdb"][..]),
        ] {
            let path = dir.join(name);
            let child = std::process::Command::new("ip")
                .args(["netns", "exec", ns])
                .args(args)
                .stdout(std::fs::File::create(&path).unwrap())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            m.children.push(child);
            m.files.push(path);
        }
        // the monitors subscribe before anything else happens
        std::thread::sleep(Duration::from_millis(300));
        m
    }

    /// Every `Deleted` line recorded so far.
    pub fn deleted(&self) -> Vec<String> {
        self.files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.starts_with("Deleted"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The routes of host `i` into the lab's flannel network (10.200.0.0/16) but its own cni0's,
/// as `ip route` prints them.
/// How many times host `i` logged a repair of kernel damage it was told of (the periodic
/// reconcile logs none): a repair seen here came from a kernel notification.
pub fn repairs(lab: &Lab, i: usize) -> usize {
    lab.log(i)
        .lines()
        .filter(|l| l.contains("repaired") && l.contains("kernel entries"))
        .count()
}

pub fn flannel_routes(lab: &Lab, i: usize) -> Vec<String> {
    sorted_lines(&lab.on_host(i, &["ip", "route"]))
        .into_iter()
        .filter(|l| l.starts_with("10.200.") && !l.contains("cni0"))
        .collect()
}

/// Upstream's gateway routes on host `i`: `<subnet> via <PublicIP> dev <dev>` for every
/// other host with a subnet (`dev`: `eth0` for host-gw, `flannel.ipip onlink` for ipip).
pub fn gateway_routes(lab: &Lab, i: usize, dev: &str) -> Vec<String> {
    let mut want: Vec<String> = (1..=lab.hosts.len())
        .filter(|&j| j != i && lab.subnet(j).is_some())
        .map(|j| {
            format!(
                "{} via {} dev {dev}",
                lab.subnet(j).unwrap(),
                lab.hosts[j - 1].ip
            )
        })
        .collect();
    want.sort();
    want
}
