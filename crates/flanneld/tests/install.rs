//! `flanneld-rs install` / `uninstall` into a temporary root, with a real etcd.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::path::Path;
use std::process::{Command, Output};

use flannel_lab::etcd::TestEtcd;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flanneld-rs"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

#[test]
fn install_is_idempotent_puts_config_only_when_absent_and_uninstalls() {
    let etcd = TestEtcd::start();
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let plugin = src.path().join("flannel");
    std::fs::write(&plugin, "cni plugin").unwrap();
    let settings = src.path().join("flanneld.settings");
    std::fs::write(
        &settings,
        "# node settings\niface=eth0\npublic-ip=192.168.77.1\n",
    )
    .unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let endpoints = format!("etcd-endpoints={}", etcd.endpoint());
    let base = [
        root_arg.as_str(),
        "--cni-plugin",
        plugin.to_str().unwrap(),
        "--settings",
        settings.to_str().unwrap(),
        "--flag",
        endpoints.as_str(),
    ];
    let with = |extra: &[&str]| {
        let mut a = vec!["install"];
        a.extend(base.iter().copied());
        a.extend_from_slice(extra);
        run(&a)
    };

    let dry = ok(with(&["--network=10.200.0.0/16", "--dry-run"]));
    assert!(
        dry.contains("+++ b/etc/systemd/system/flanneld.service"),
        "{dry}"
    );
    assert!(dry.contains("+  -iface=eth0 \\"), "{dry}");
    assert!(
        dry.contains("would be created: etcd /kubernetes-cluster/network/config"),
        "{dry}"
    );
    assert!(
        !root.path().join("etc").exists(),
        "a dry run writes nothing"
    );
    assert_eq!(etcd.ctl(&["get", "/kubernetes-cluster/network/config"]), "");

    let first = ok(with(&["--network=10.200.0.0/16"]));
    assert!(first.contains("created: "), "{first}");
    assert!(first.contains("skipped daemon-reload"), "{first}");
    assert_eq!(
        etcd.ctl(&[
            "get",
            "--print-value-only",
            "/kubernetes-cluster/network/config"
        ])
        .trim(),
        r#"{"Network":"10.200.0.0/16","Backend":{"Type":"vxlan"}}"#
    );
    let unit =
        std::fs::read_to_string(root.path().join("etc/systemd/system/flanneld.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/sbin/flanneld \\\n  -etcd-endpoints="),
        "{unit}"
    );
    assert!(unit.contains("  -iface=eth0 \\\n  -ip-masq=true \\\n  -public-ip=192.168.77.1 \\\n  -subnet-file=/run/flannel/subnet.env \n"), "{unit}");
    let installed = root.path().join("usr/local/sbin/flanneld");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_flanneld-rs")).unwrap()
    );
    assert!(root
        .path()
        .join("etc/cni/net.d/10-flannel.conflist")
        .exists());
    assert!(root.path().join("opt/cni/bin/flannel").exists());

    let second = ok(with(&["--network=10.200.0.0/16"]));
    assert!(second.contains("nothing changed"), "{second}");
    assert!(second.contains("unchanged: etcd"), "{second}");
    assert!(!second.contains("created"), "{second}");

    // another network: reported, not overwritten; forced: replaced
    let differ = ok(with(&["--network=10.99.0.0/16"]));
    assert!(
        differ.contains("holds a different network config, left as it is"),
        "{differ}"
    );
    assert!(etcd
        .ctl(&["get", "/kubernetes-cluster/network/config"])
        .contains("10.200.0.0/16"));
    let forced = ok(with(&["--network=10.99.0.0/16", "--force-network-config"]));
    assert!(forced.contains("updated: etcd"), "{forced}");
    assert!(etcd
        .ctl(&["get", "/kubernetes-cluster/network/config"])
        .contains("10.99.0.0/16"));

    let removed = ok(run(&["uninstall", &root_arg]));
    assert!(removed.contains("removed: "), "{removed}");
    assert!(
        etcd.ctl(&["get", "/kubernetes-cluster/network/config"])
            .contains("10.99.0.0/16"),
        "config stays"
    );
    assert!(files(root.path()).is_empty(), "{:?}", files(root.path()));
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let root_arg = format!("--root={}", root.path().display());
    for (args, want) in [
        (
            vec![
                "--flag",
                "etcd-endpoints=http://127.0.0.1:2379",
                "--flag",
                "ifcae=eth0",
            ],
            "flanneld has no such flag",
        ),
        (vec!["--flag", "iface=eth0"], "give the etcd endpoints"),
        (
            vec![
                "--flag",
                "etcd-endpoints=http://127.0.0.1:2379",
                "--flag",
                "healthz-port=70000",
            ],
            "expected 0 to 65535",
        ),
        (
            vec![
                "--flag",
                "etcd-endpoints=http://127.0.0.1:2379",
                "--flag",
                "novalue",
            ],
            "not key=value",
        ),
        (
            vec![
                "--flag",
                "etcd-endpoints=http://127.0.0.1:2379",
                "--network=10.0.0.0/29",
                "--cni-plugin=/bin/true",
            ],
            "is not valid",
        ),
        (vec!["--bogus"], "flag provided but not defined"),
    ] {
        let mut a = vec!["install", root_arg.as_str()];
        a.extend(args.iter().copied());
        let o = run(&a);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        // bad input exits 2, as the daemon's (README: exit codes)
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(files(root.path()).is_empty(), "{args:?} wrote files");
    }
}

#[test]
fn cni_only_lays_down_the_cni_part() {
    let root = tempfile::tempdir().unwrap();
    let out = ok(run(&[
        "install",
        "--cni-only",
        &format!("--root={}", root.path().display()),
        "--cni-plugin=/bin/true",
    ]));
    assert!(out.contains("10-flannel.conflist"), "{out}");
    let mut f = files(root.path());
    f.sort();
    let names: Vec<String> = f
        .iter()
        .map(|p| p.strip_prefix(root.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        vec![
            "etc/cni/net.d/10-flannel.conflist",
            "opt/cni/bin/flannel",
            "var/lib/flanneld-rs/installed"
        ]
    );
}

#[test]
fn bad_inputs_are_refused_naming_the_flag() {
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let plugin = src.path().join("flannel");
    std::fs::write(&plugin, "cni plugin").unwrap();
    let secret = src.path().join("net.json");
    std::fs::write(&secret, "not json but private\n").unwrap();
    let bogus_type = src.path().join("bogus.json");
    std::fs::write(
        &bogus_type,
        r#"{"Network":"10.200.0.0/16","Backend":{"Type":"bogus"}}"#,
    )
    .unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let plugin_arg = format!("--cni-plugin={}", plugin.display());
    let secret_arg = format!("--network-config={}", secret.display());
    let bogus_arg = format!("--network-config={}", bogus_type.display());
    let not_a_list = src.path().join("c.conflist");
    std::fs::write(&not_a_list, r#"{"name":"cni0","type":"flannel"}"#).unwrap();
    let cni_not_a_list = format!("--cni-conflist={}", not_a_list.display());
    // etcd is never reached: every one is refused first
    let endpoints = "etcd-endpoints=http://127.0.0.1:1";
    for (extra, want) in [
        (
            vec!["--network=10.200.0.0/16", "--backend=bogus"],
            "-backend: unknown backend type: bogus",
        ),
        (vec![bogus_arg.as_str()], "unknown backend type: bogus"),
        (vec![secret_arg.as_str()], "not a valid network config"),
        (
            vec!["--cni-version=9.9.9"],
            "-cni-version \"9.9.9\": the flannel CNI plugin speaks",
        ),
        (
            vec!["--binary=/nonexistent/flanneld"],
            "-binary /nonexistent/flanneld: no such file",
        ),
        (
            vec!["--restart-sec=5\nUser=nobody"],
            "-restart-sec \"5\\nUser=nobody\": expected a number",
        ),
        (
            vec!["--limit-nofile=lots"],
            "-limit-nofile \"lots\": expected a number or infinity",
        ),
        (
            vec!["--exec-start-pre=/bin/true\nUser=x"],
            "-exec-start-pre \"/bin/true\\nUser=x\": a unit line cannot hold a line break",
        ),
        (
            vec![cni_not_a_list.as_str()],
            "not a CNI network config list (no \"plugins\" list)",
        ),
        (
            vec!["--cni-conflist=/nonexistent/c.conflist"],
            "-cni-conflist /nonexistent/c.conflist: No such file",
        ),
    ] {
        let mut args = vec!["install", &root_arg, &plugin_arg, "--flag", endpoints];
        args.extend(extra.iter().copied());
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(
            !err.contains("private"),
            "the file's content was printed: {err}"
        );
        assert!(
            std::fs::read_dir(root.path()).unwrap().next().is_none(),
            "{extra:?} wrote something"
        );
    }
}

/// What the Ansible role passes: its `flannel_systemd_*` variables, its own `flannel_cni_conf`
/// text, into a cluster whose flannel data is in the etcd v2 keyspace (the role's clusters of
/// flannel v0.10 / v0.16), where the role's etcdctl wrote the config with its own spacing.
#[test]
fn the_roles_variables_into_a_v2_cluster() {
    let etcd = TestEtcd::start_with_args(&["--enable-v2=true"]);
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let plugin = src.path().join("flannel");
    std::fs::write(&plugin, "cni plugin").unwrap();
    // the role's text, as `copy: content:` of classic Jinja leaves it (one line)
    let conflist = r#"{"name": "cni0", "cniVersion": "0.3.1", "plugins": [{"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}}, {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;
    let conflist_file = src.path().join("10-flannel.conflist");
    std::fs::write(&conflist_file, conflist).unwrap();
    let role_config = r#"{"Network":"10.200.0.0/16","Backend":{"Type": "vxlan"}}"#;
    let put = v2_put(
        &etcd.endpoint(),
        "/kubernetes-cluster/network/config",
        role_config,
    );
    assert!(put.contains("\"action\":\"set\""), "{put}");
    let root_arg = format!("--root={}", root.path().display());
    let endpoints = format!("etcd-endpoints={}", etcd.endpoint());
    let conflist_arg = format!("--cni-conflist={}", conflist_file.display());
    let args = |extra: &[&str]| {
        let mut a = vec![
            "install",
            &root_arg,
            "--cni-plugin",
            plugin.to_str().unwrap(),
            "--flag",
            &endpoints,
            "--network=10.200.0.0/16",
            "--restart-sec=10",
            "--limit-nofile=infinity",
            "--limit-nproc=4096",
            "--exec-start-pre=none",
            &conflist_arg,
        ];
        a.extend_from_slice(extra);
        ok(run(&a))
    };
    let first = args(&[]);
    // found in the v2 keyspace, and the same JSON is the same config
    assert!(
        first.contains("unchanged: etcd v2 /kubernetes-cluster/network/config"),
        "{first}"
    );
    assert!(!first.contains("different network config"), "{first}");
    let unit =
        std::fs::read_to_string(root.path().join("etc/systemd/system/flanneld.service")).unwrap();
    assert!(
        unit.contains("RestartSec=10\nLimitNOFILE=infinity\nLimitNPROC=4096\n\n\nExecStart="),
        "{unit}"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/cni/net.d/10-flannel.conflist")).unwrap(),
        conflist
    );
    assert!(args(&[]).contains("nothing changed"));
    // a new cluster: the config goes into v3 (where flanneld-rs looks first)
    let v3 = TestEtcd::start();
    let endpoints = format!("etcd-endpoints={}", v3.endpoint());
    let out = ok(run(&[
        "install",
        &root_arg,
        "--cni-plugin",
        plugin.to_str().unwrap(),
        "--flag",
        &endpoints,
        "--network=10.200.0.0/16",
    ]));
    assert!(
        out.contains("created: etcd /kubernetes-cluster/network/config"),
        "{out}"
    );
}

/// A PUT of the etcd v2 keys API, with curl (etcdctl of etcd 3.4 speaks v3 unless told).
fn v2_put(endpoint: &str, key: &str, value: &str) -> String {
    let o = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "PUT",
            &format!("{endpoint}/v2/keys{key}"),
            "--data-urlencode",
        ])
        .arg(format!("value={value}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// Over upstream's flanneld: install says it keeps the files it replaces, uninstall says it
/// puts them back (and which file it leaves because it changed since install).
#[test]
fn install_over_upstream_then_uninstall_says_what_it_kept_and_restored() {
    let root = tempfile::tempdir().unwrap();
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));
    for (path, text) in [
        ("/usr/local/sbin/flanneld", "upstream flanneld"),
        ("/etc/systemd/system/flanneld.service", "[Service]\n"),
    ] {
        std::fs::create_dir_all(at(path).parent().unwrap()).unwrap();
        std::fs::write(at(path), text).unwrap();
    }
    let root_arg = format!("--root={}", root.path().display());
    let out = ok(run(&[
        "install",
        &root_arg,
        "--cni-plugin=/bin/true",
        "--no-restart",
        "--flag",
        "etcd-endpoints=http://127.0.0.1:2379",
    ]));
    let kept = |path: &str| {
        format!(
            "updated: {} (not laid down by flanneld-rs: the file there is kept in {}; uninstall puts it back)",
            at(path).display(),
            at(&format!("/var/lib/flanneld-rs/replaced{path}")).display()
        )
    };
    assert!(out.contains(&kept("/usr/local/sbin/flanneld")), "{out}");
    assert!(
        out.contains(&kept("/etc/systemd/system/flanneld.service")),
        "{out}"
    );
    std::fs::write(at("/etc/cni/net.d/10-flannel.conflist"), "{}").unwrap();
    let out = ok(run(&["uninstall", &root_arg, "--no-restart"]));
    for path in [
        "/usr/local/sbin/flanneld",
        "/etc/systemd/system/flanneld.service",
    ] {
        assert!(
            out.contains(&format!(
                "restored: {} (the file that was there before install)",
                at(path).display()
            )),
            "{out}"
        );
    }
    assert!(
        out.contains(&format!(
            "kept: {} (changed since install: remove it by hand if it is no longer wanted)",
            at("/etc/cni/net.d/10-flannel.conflist").display()
        )),
        "{out}"
    );
    assert!(out.contains("flanneld.service was restored"), "{out}");
    assert_eq!(
        std::fs::read_to_string(at("/usr/local/sbin/flanneld")).unwrap(),
        "upstream flanneld"
    );
}
