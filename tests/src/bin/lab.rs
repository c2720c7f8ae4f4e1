//! `flannel-lab up|down|status`: the lab of the README, by hand.
//!
//! `up` builds three hosts with flanneld-rs and two pods each, prints every host's lease,
//! the leases in etcd and a ping matrix between all pods, and leaves it all running;
//! `down` removes it; `status` shows what runs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use flannel_lab::lab::{self, Lab, LabSpec, DEFAULT_CONFIG, DEFAULT_PREFIX, ETCD_IP};
use flannel_net::BackendKind;

const NAME: &str = "flab";

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("{name}=")).map(String::from))
        })
}

fn main() -> ExitCode {
    // a failed `up` leaves nothing behind (the release profile aborts on panic: no Drop)
    flannel_lab::lab::cleanup_on_panic();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir =
        PathBuf::from(arg_value(&args, "--dir").unwrap_or_else(|| "/run/flanneld-rs-lab".into()));
    match args.first().map(String::as_str).unwrap_or("up") {
        "up" => up(&args, dir),
        "down" => {
            lab::destroy(NAME);
            let _ = std::fs::remove_dir_all(&dir);
            println!("lab removed");
            ExitCode::SUCCESS
        }
        "status" => {
            let namespaces = lab::namespaces_of(NAME);
            if namespaces.is_empty() {
                println!("no lab running");
            }
            for ns in namespaces {
                let pids = std::process::Command::new("ip")
                    .args(["netns", "pids", &ns])
                    .output();
                let pids = pids
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .split_whitespace()
                            .count()
                    })
                    .unwrap_or(0);
                println!("{ns}: {pids} processes");
            }
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("usage: flannel-lab up [--hosts N] [--pods N] [--backend vxlan|host-gw|wireguard|ipip|udp|ipsec] [--ip ipv4|dual|ipv6] [--mode etcd|kube] [--flanneld PATH] [--dir DIR] | down | status\nunknown command {other:?}");
            ExitCode::from(2)
        }
    }
}

fn up(args: &[String], dir: PathBuf) -> ExitCode {
    let hosts: usize = arg_value(args, "--hosts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 50);
    let pods: usize = arg_value(args, "--pods")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .clamp(1, 10);
    let flanneld = PathBuf::from(
        arg_value(args, "--flanneld").unwrap_or_else(|| "target/release/flanneld-rs".into()),
    );
    let flanneld = flanneld.canonicalize().unwrap_or(flanneld);
    let cni_plugin = flanneld.with_file_name("flannel");
    let _ = std::fs::remove_dir_all(&dir);
    let spec = LabSpec {
        name: NAME.into(),
        flanneld: flanneld.clone(),
        cni_plugin,
        prefix: DEFAULT_PREFIX.into(),
        extra_flags: vec![],
        dir: dir.clone(),
        etcd_args: vec![],
    };
    // `--backend host-gw` (or any Backend.Type flanneld-rs has): the lab's config with it
    let backend = match arg_value(args, "--backend") {
        None => None,
        Some(name) => match BackendKind::from_type(&name) {
            Some(kind) => Some(kind),
            None => {
                let kinds: Vec<&str> = BackendKind::all().map(BackendKind::name).collect();
                eprintln!("--backend {name:?}: one of {}", kinds.join(", "));
                return ExitCode::from(2);
            }
        },
    };
    let default_type = format!(r#""Type":"{}""#, BackendKind::Vxlan);
    let mut config = match backend {
        // ipsec needs a pre-shared key of at least 96 characters: a new one per lab
        Some(BackendKind::Ipsec) => DEFAULT_CONFIG.replace(
            &default_type,
            &format!(
                r#""Type":"{}","PSK":"{}""#,
                BackendKind::Ipsec,
                random_psk()
            ),
        ),
        Some(kind) => DEFAULT_CONFIG.replace(&default_type, &format!(r#""Type":"{kind}""#)),
        None => DEFAULT_CONFIG.to_string(),
    };
    // `--ip dual` or `--ip ipv6`: the same with IPv6 (the underlay has fd77::N on every host)
    let v6 = r#""EnableIPv6":true,"IPv6Network":"fd00:200::/56","#;
    match arg_value(args, "--ip").as_deref() {
        None | Some("ipv4") => {}
        Some("dual") => config = config.replacen('{', &format!("{{{v6}"), 1),
        Some("ipv6") => {
            config = config
                .replace(r#""Network":"10.200.0.0/16","SubnetLen":24,"#, "")
                .replacen('{', &format!(r#"{{"EnableIPv4":false,{v6}"#), 1)
        }
        Some(other) => {
            eprintln!("--ip {other:?}: expected ipv4, dual or ipv6");
            return ExitCode::from(2);
        }
    }
    // `--mode kube`: flanneld -kube-subnet-mgr against a kube-apiserver over the lab's etcd,
    // a Node per host with the pod CIDRs a controller manager would assign
    let kube = match arg_value(args, "--mode").as_deref() {
        None | Some("etcd") => false,
        Some("kube") => true,
        Some(other) => {
            eprintln!("--mode {other:?}: expected etcd or kube");
            return ExitCode::from(2);
        }
    };
    let mut lab = if kube {
        println!("creating {hosts} hosts, a kube-apiserver at https://{ETCD_IP}:6443, net-conf.json {config}");
        let mut lab = Lab::create(spec, hosts, None);
        lab.use_kube(flannel_lab::kube::Authz::AlwaysAllow, &config);
        let ipv4 = !config.contains(r#""EnableIPv4":false"#);
        let ipv6 = config.contains(r#""EnableIPv6":true"#);
        for h in 1..=hosts {
            let mut cidrs = Vec::new();
            if ipv4 {
                cidrs.push(format!("10.200.{h}.0/24"));
            }
            if ipv6 {
                cidrs.push(format!("fd00:200:0:{h:x}::/64"));
            }
            let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
            lab.kube().create_node(&lab.node_name(h), &cidrs, None);
        }
        lab
    } else {
        println!("creating {hosts} hosts, etcd at {ETCD_IP}, network config {config}");
        Lab::create(spec, hosts, Some(&config))
    };
    let wireguard = backend == Some(BackendKind::WireGuard);
    let ipsec = backend == Some(BackendKind::Ipsec);
    if wireguard || ipsec {
        // wireguard-go (a kernel without the module) serves /var/run/wireguard/flannel-wg.sock,
        // charon keeps /var/run/charon.pid and charon.vici: each host its own
        lab.private_run();
    }
    if ipsec {
        // upstream's ipsec adds no route: packets to other nodes' subnets follow the node's
        // routes (here: none but this) and its policies send them through ESP
        for h in 1..=hosts {
            lab.on_host(h, &["ip", "route", "add", "10.200.0.0/16", "dev", "eth0"]);
        }
    }
    lab.start_all();
    lab.wait_ready(Duration::from_secs(60));
    if wireguard {
        let log = lab.log(1);
        let which = log
            .lines()
            .find(|l| l.contains("WireGuard: public key"))
            .unwrap_or("(no WireGuard line in the log)");
        println!("\n== WireGuard on h1: {}", which.trim());
        print!("{}", lab.on_host(1, &["wg", "show", "flannel-wg"]));
    }
    if ipsec {
        println!("\n== IPsec policies on h1 (ip xfrm policy):");
        print!("{}", lab.on_host(1, &["ip", "xfrm", "policy"]));
    }
    for h in 1..=hosts {
        println!(
            "\n== host h{h} ({}), {}:",
            lab.hosts[h - 1].ip,
            lab.hosts[h - 1].subnet_file.display()
        );
        print!("{}", lab.subnet_env(h));
    }
    println!("\n== flanneld-rs lease show (on h1):");
    let mut show = vec![
        flanneld.to_str().unwrap_or("flanneld-rs").to_string(),
        "lease".into(),
        "show".into(),
    ];
    // the store flags the hosts run with
    show.extend(lab.flags(1).into_iter().filter(|f| {
        f.starts_with("-etcd-") || f.starts_with("-kube") || f.starts_with("-net-config-path")
    }));
    let show: Vec<&str> = show.iter().map(String::as_str).collect();
    print!("{}", lab.on_host(1, &show));
    for h in 1..=hosts {
        for _ in 0..pods {
            lab.add_pod(h);
        }
    }
    if ipsec {
        // the first packets of each pair wait for its IKE negotiation
        lab::wait_until(Duration::from_secs(30), || lab.ping_matrix().is_empty());
    }
    // a matrix per family the pods have (dual-stack: IPv4, then IPv6)
    let families: Vec<(&str, Vec<Option<IpAddr>>)> = [
        (
            "IPv4",
            lab.pods
                .iter()
                .map(|p| (!p.ip.is_unspecified()).then_some(IpAddr::V4(p.ip)))
                .collect::<Vec<_>>(),
        ),
        (
            "IPv6",
            lab.pods.iter().map(|p| p.ip6.map(IpAddr::V6)).collect(),
        ),
    ]
    .into_iter()
    .filter(|(_, addrs)| addrs.iter().any(Option::is_some))
    .collect();
    // a pair fails when a ping of any family fails
    let mut failed: Vec<(usize, usize)> = Vec::new();
    for (family, addrs) in &families {
        println!("\n== {family} ping matrix (rows ping columns):");
        print!("{:>28}", "");
        for p in &lab.pods {
            print!(" {:>10}", p.ns.trim_start_matches("flab-"));
        }
        println!();
        for (i, from) in lab.pods.iter().enumerate() {
            let own = addrs[i].map_or_else(String::new, |a| a.to_string());
            print!(
                "{:>28}",
                format!("{} {own}", from.ns.trim_start_matches("flab-"))
            );
            for (j, to) in addrs.iter().enumerate() {
                let cell = match to {
                    _ if i == j => "-",
                    None => "n/a",
                    Some(a) if lab.ping(i + 1, *a) => "ok",
                    Some(_) => {
                        if !failed.contains(&(i + 1, j + 1)) {
                            failed.push((i + 1, j + 1));
                        }
                        "FAIL"
                    }
                };
                print!(" {cell:>10}");
            }
            println!();
        }
    }
    if ipsec {
        println!("\n== ESP SAs on h1 after the pings (ip -s xfrm state, abridged):");
        for line in lab.on_host(1, &["ip", "-s", "xfrm", "state"]).lines() {
            if line.starts_with("src") || line.contains("proto esp") || line.contains("(bytes)") {
                println!("{line}");
            }
        }
    }
    let pairs = lab.pods.len() * (lab.pods.len() - 1);
    println!(
        "\n{} of {pairs} pod pairs can ping each other",
        pairs - failed.len()
    );
    println!(
        "logs: {}/h*/flanneld.log; enter a host: ip netns exec flab-h1 bash",
        dir.display()
    );
    println!("tear down with: ./tests/lab.sh down");
    lab.keep();
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// 128 hexadecimal characters from the kernel's random source.
fn random_psk() -> String {
    let mut bytes = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
