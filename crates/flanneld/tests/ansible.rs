//! The Ansible role packaging/ansible/roles/flanneld_rs as an operator runs it: ansible-core
//! from PyPI (tests/install-deps.sh puts it in /opt/flanneld-rs-ansible), the example playbook
//! of githubixx.flanneld's README with only the role's name changed (tests/ansible/site.yml),
//! three systemd-nspawn hosts booted with systemd as PID 1 in lab namespaces, a TLS-only
//! etcd 3.4 that holds no network config yet. Host 1 installs the .deb (built by
//! packaging/check-deb.sh, which tests/run.sh runs first), hosts 2 and 3 the binary and CNI
//! plugin named with their checksums. Ansible reaches the hosts through nsenter
//! (tests/ansible/connection_plugins; nodes are reached over SSH in real life).
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::nspawn::Container;
use common::*;
use flannel_lab::lab::{wait_until, Lab};
use flannel_lab::tls::TestCerts;

const ANSIBLE_PLAYBOOK: &str = "/opt/flanneld-rs-ansible/bin/ansible-playbook";

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The .deb packaging/check-deb.sh built.
fn deb() -> PathBuf {
    let target = Path::new(env!("CARGO_BIN_EXE_flanneld-rs"))
        .parent()
        .and_then(Path::parent)
        .unwrap();
    std::fs::read_dir(target.join("debian"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| {
            panic!(
                "no .deb in {}: run packaging/check-deb.sh first (tests/run.sh does)",
                target.join("debian").display()
            )
        })
}

/// One run of the playbook; its output, and `changed=` of each host of the recap.
fn play(inventory: &Path, home: &Path, extra: &[&str]) -> (String, BTreeMap<String, u32>) {
    let (ok, text, changed) = try_play(inventory, home, extra);
    assert!(ok, "ansible-playbook {extra:?} failed:\n{text}");
    (text, changed)
}

/// A run that may fail: whether it succeeded, its output, `changed=` per host.
fn try_play(
    inventory: &Path,
    home: &Path,
    extra: &[&str],
) -> (bool, String, BTreeMap<String, u32>) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(ANSIBLE_PLAYBOOK)
        .arg("-i")
        .arg(inventory)
        .arg(repo.join("tests/ansible/site.yml"))
        .args(extra)
        .env("HOME", home)
        .env(
            "ANSIBLE_CONNECTION_PLUGINS",
            repo.join("tests/ansible/connection_plugins"),
        )
        .env("ANSIBLE_ROLES_PATH", repo.join("packaging/ansible/roles"))
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .output()
        .unwrap_or_else(|e| {
            panic!("{ANSIBLE_PLAYBOOK}: {e} (tests/install-deps.sh installs ansible-core)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let changed = text
        .lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .filter_map(|l| {
            let (host, counts) = l.split_once(" : ")?;
            let n = counts
                .split_whitespace()
                .find_map(|c| c.strip_prefix("changed="))?
                .parse()
                .ok()?;
            Some((host.trim().to_string(), n))
        })
        .collect();
    (out.status.success(), text, changed)
}

/// The inventory an operator of githubixx.flanneld has, pointed at this lab.
fn inventory(dir: &Path, lab: &Lab, containers: &[Container], certs_dir: &Path) -> PathBuf {
    let inv = dir.join("inventory");
    std::fs::create_dir_all(inv.join("group_vars")).unwrap();
    std::fs::create_dir_all(inv.join("host_vars")).unwrap();
    let mut hosts = String::from("[flannel]\n");
    for (i, c) in containers.iter().enumerate() {
        writeln!(hosts, "h{} ansible_nsenter_pid={}", i + 1, c.init).unwrap();
    }
    write!(
        hosts,
        "\n[flannel:vars]\nansible_connection=nsenter_target\n\n\
         [k8s_etcd]\netcd ansible_nsenter_netns={}-etcd ansible_connection=nsenter_target\n",
        lab.spec.name
    )
    .unwrap();
    std::fs::write(inv.join("hosts"), hosts).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_flanneld-rs"));
    let plugin = bin.with_file_name("flannel");
    std::fs::write(
        inv.join("group_vars/all.yml"),
        format!(
            "ansible_python_interpreter: /usr/bin/python3\n\
             k8s_interface: eth0\n\
             k8s_ca_conf_directory: {certs}\n\
             flanneld_rs_binary: {bin}\n\
             flanneld_rs_binary_sha256: {bin_sum}\n\
             flanneld_rs_cni_plugin: {plugin}\n\
             flanneld_rs_cni_plugin_sha256: {plugin_sum}\n",
            certs = certs_dir.display(),
            bin = bin.display(),
            bin_sum = sha256(&bin),
            plugin = plugin.display(),
            plugin_sum = sha256(&plugin),
        ),
    )
    .unwrap();
    let deb = deb();
    std::fs::write(
        inv.join("host_vars/h1.yml"),
        format!(
            "flanneld_rs_binary: \"\"\nflanneld_rs_deb: {}\nflanneld_rs_deb_sha256: {}\n",
            deb.display(),
            sha256(&deb)
        ),
    )
    .unwrap();
    inv
}

#[test]
fn the_role_deploys_flanneld_rs_onto_systemd_hosts_against_a_tls_etcd() {
    assert!(
        Path::new(ANSIBLE_PLAYBOOK).exists(),
        "{ANSIBLE_PLAYBOOK} is missing: tests/install-deps.sh installs ansible-core from PyPI"
    );
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    let certs = TestCerts::generate();
    // no network config: the role puts it
    let (mut lab, dir) = lab_with_tls('A', 3, None, &certs);
    // the operator's certificates directory on the controller (k8s_ca_conf_directory)
    let certs_dir = dir.path().join("k8s-certs");
    std::fs::create_dir_all(&certs_dir).unwrap();
    for (from, to) in [
        (&certs.ca, "ca-etcd.pem"),
        (&certs.client_cert, "cert-etcd.pem"),
        (&certs.client_key, "cert-etcd-key.pem"),
    ] {
        std::fs::copy(from, certs_dir.join(to)).unwrap();
    }
    std::fs::write(certs_dir.join("ca-etcd-key.pem"), "the CA's private key").unwrap();
    let build = Path::new(env!("CARGO_BIN_EXE_flanneld-rs"))
        .parent()
        .unwrap();
    let containers: Vec<Container> = (1..=3)
        .map(|i| {
            // forwarding is set from outside (the container's /proc/sys is read-only)
            lab.on_host(i, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let ns = lab.hosts[i - 1].ns.clone();
            Container::boot(
                &format!("fa{}-{i}", std::process::id()),
                &ns,
                build,
                &dir.path().join(format!("nspawn-{i}.log")),
                // a node's /usr/local/sbin and dpkg database are writable (into the
                // container's tmpfs)
                // (and dpkg finds the groups its statoverride file names)
                &[
                    "--overlay=/usr::/usr",
                    "--overlay=/var::/var",
                    "--bind-ro=/etc/passwd",
                    "--bind-ro=/etc/group",
                ],
            )
        })
        .collect();
    step("booted");
    let home = dir.path().join("controller");
    std::fs::create_dir_all(home.join("tmp")).unwrap();
    let inv = inventory(dir.path(), &lab, &containers, &certs_dir);

    // a check run before anything is installed: every host would change, nothing did
    let (out, changed) = play(&inv, &home, &["--check", "--diff"]);
    step("check run on fresh hosts");
    for (i, c) in containers.iter().enumerate() {
        let h = format!("h{}", i + 1);
        assert!(changed[&h] > 0, "{h}:\n{out}");
        assert!(
            !c.run(&["test", "-e", "/etc/systemd/system/flanneld.service"])
                .status
                .success(),
            "{h}: a check run installed the unit"
        );
    }
    assert_eq!(
        lab.etcd().ctl(&[
            "get",
            "--print-value-only",
            "/kubernetes-cluster/network/config"
        ]),
        "",
        "a check run wrote the network config"
    );

    // first run: installed, started, ready
    let (out, changed) = play(&inv, &home, &[]);
    step("first run");
    for h in ["h1", "h2", "h3"] {
        assert!(changed[h] > 0, "{h} changed nothing:\n{out}");
    }
    for (i, c) in containers.iter().enumerate() {
        assert_eq!(c.active(), "active", "h{}", i + 1);
        assert_eq!(c.show("Type"), "notify");
        let unit = c.ok(&["cat", "/etc/systemd/system/flanneld.service"]);
        assert!(
            unit.contains("ExecStart=/usr/local/sbin/flanneld \\\n  -etcd-cafile=/var/lib/kubernetes/ca-etcd.pem \\\n  -etcd-certfile=/var/lib/kubernetes/cert-etcd.pem \\\n  -etcd-endpoints=https://192.168.77.254:2379 \\\n"),
            "{unit}"
        );
        assert!(unit.contains("RequiredBy=docker.service"), "{unit}");
        assert!(
            unit.contains(&format!("  -public-ip=192.168.77.{} \\\n", i + 1)),
            "{unit}"
        );
        // flanneld never reads the CA's key: not copied
        assert!(!c
            .run(&["test", "-e", "/var/lib/kubernetes/ca-etcd-key.pem"])
            .status
            .success());
        assert!(c
            .run(&["test", "-s", "/etc/cni/net.d/10-flannel.conflist"])
            .status
            .success());
    }
    // host 1 from the .deb, the others from the binary named
    assert!(containers[0]
        .ok(&["dpkg-query", "-W", "-f=${Status}", "flanneld-rs"])
        .contains("install ok installed"));
    assert_eq!(
        containers[0].ok(&["sha256sum", "/usr/local/sbin/flanneld"])[..64],
        containers[0].ok(&["sha256sum", "/usr/sbin/flanneld-rs"])[..64]
    );
    assert_eq!(
        &containers[1].ok(&["sha256sum", "/usr/local/sbin/flanneld"])[..64],
        sha256(Path::new(env!("CARGO_BIN_EXE_flanneld-rs")))
    );
    // the network config, into etcd's v3 keyspace (a new cluster), over TLS, without etcdctl
    assert_eq!(
        lab.etcd()
            .ctl(&[
                "get",
                "--print-value-only",
                "/kubernetes-cluster/network/config"
            ])
            .trim(),
        r#"{"Network":"10.200.0.0/16","Backend":{"Type":"vxlan"}}"#
    );
    let subnets = leases(&lab);
    assert_eq!(subnets.len(), 3, "{subnets:?}");

    // the mesh: pods (wired by the CNI plugin from each node's subnet.env) ping across
    for (i, c) in containers.iter().enumerate() {
        let env = c.ok(&["cat", "/run/flannel/subnet.env"]);
        std::fs::write(&lab.hosts[i].subnet_file, env).unwrap();
        lab.add_pod(i + 1);
    }
    let failed = lab.ping_matrix();
    assert!(
        failed.is_empty(),
        "pods that did not reach each other: {failed:?}"
    );
    step("meshed, pods ping");

    // second run: nothing changed
    let pids: Vec<String> = containers.iter().map(|c| c.show("MainPID")).collect();
    let (out, changed) = play(&inv, &home, &[]);
    step("second run");
    for h in ["h1", "h2", "h3"] {
        assert_eq!(changed[h], 0, "{h}:\n{out}");
    }
    let same: Vec<String> = containers.iter().map(|c| c.show("MainPID")).collect();
    assert_eq!(pids, same, "a run that changed nothing restarted flanneld");

    // --check --diff of a changed variable: shown, not done
    let (out, changed) = play(
        &inv,
        &home,
        &["--check", "--diff", "-e", "flannel_systemd_restartsec=7"],
    );
    step("check run");
    assert!(changed["h2"] > 0, "{out}");
    assert!(out.contains("-RestartSec=5"), "{out}");
    assert!(out.contains("+RestartSec=7"), "{out}");
    assert_eq!(containers[1].show("RestartUSec"), "5s");
    let same: Vec<String> = containers.iter().map(|c| c.show("MainPID")).collect();
    assert_eq!(pids, same, "a check run restarted flanneld");

    // the change for real: the unit rewritten, reloaded, restarted; each keeps its subnet
    let (out, changed) = play(&inv, &home, &["-e", "flannel_systemd_restartsec=7"]);
    step("changed variable");
    for (i, c) in containers.iter().enumerate() {
        let h = format!("h{}", i + 1);
        assert!(changed[&h] > 0, "{h}:\n{out}");
        assert_eq!(c.show("RestartUSec"), "7s", "{h}");
        assert_ne!(c.show("MainPID"), pids[i], "{h} not restarted");
        assert_eq!(c.active(), "active", "{h}");
    }
    assert_eq!(leases(&lab), subnets, "a restart changed a subnet");
    assert!(wait_until(Duration::from_secs(20), || lab
        .ping_matrix()
        .is_empty()));
    let (out, changed) = play(&inv, &home, &["-e", "flannel_systemd_restartsec=7"]);
    step("again");
    for h in ["h1", "h2", "h3"] {
        assert_eq!(changed[h], 0, "{h}:\n{out}");
    }

    // a binary whose checksum is not the one the inventory names: refused on the
    // controller, nothing on the nodes touched
    let wrong = "0".repeat(64);
    let (ok, out, _) = try_play(
        &inv,
        &home,
        &["-e", &format!("flanneld_rs_binary_sha256={wrong}")],
    );
    step("wrong checksum");
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "its SHA-256 is {}, not {wrong} as the inventory says",
            sha256(Path::new(env!("CARGO_BIN_EXE_flanneld-rs")))
        )),
        "{out}"
    );
    assert_eq!(containers[1].show("RestartUSec"), "7s");
    assert_eq!(containers[1].active(), "active");
    drop(containers);
    step("containers gone");
}
