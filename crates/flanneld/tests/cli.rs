//! The binary as scripts and unit files use it: flags, environment, exit codes.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::process::{Command, Output};

/// flanneld-rs in a network namespace of its own, loopback up (`unshare` and `sh` exec it:
/// the child's PID is flanneld-rs's): a node is a network namespace, and daemons of tests
/// running at once must not share one (the second would find the first's instance lock).
fn flanneld_cmd() -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "--",
        "sh",
        "-c",
        "ip link set lo up && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_flanneld-rs"),
    ]);
    cmd
}

fn flanneld(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = flanneld_cmd();
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_goes_to_stderr_with_exit_0_in_any_dash_style() {
    for flag in ["-version", "--version", "--version=true"] {
        let o = flanneld(&[flag], &[]);
        assert_eq!(o.status.code(), Some(0));
        assert!(o.stdout.is_empty());
        assert_eq!(stderr(&o), format!("v{}\n", env!("CARGO_PKG_VERSION")));
    }
    // as upstream, the environment cannot ask for the version
    let o = flanneld(
        &["-etcd-endpoints=http://127.0.0.1:1", "-healthz-port=70000"],
        &[("FLANNELD_VERSION", "true")],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_prints_upstream_usage_and_exits_0() {
    let o = flanneld(&["-h"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let usage = stderr(&o);
    assert!(usage.starts_with("Usage: "), "{usage}");
    assert!(usage.contains("  -etcd-endpoints string\n    \ta comma-delimited list of etcd endpoints (default \"http://127.0.0.1:4001,http://127.0.0.1:2379\")\n"));
    assert!(usage.contains("  -subnet-lease-renew-margin int\n"));
}

#[test]
fn unknown_flags_and_bad_values_exit_2_before_touching_anything() {
    let o = flanneld(&["-no-such-flag"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("flag provided but not defined: -no-such-flag\nUsage: "));
    for (args, env, want) in [
        (
            vec!["-subnet-lease-renew-margin=0"],
            vec![],
            "Invalid subnet-lease-renew-margin option, out of acceptable range",
        ),
        (
            vec!["-subnet-lease-renew-margin=1440"],
            vec![],
            "out of acceptable range",
        ),
        (vec!["-healthz-port=70000"], vec![], "expected 0 to 65535"),
        (vec!["-ip-masq=maybe"], vec![], "expected a boolean"),
        // a directory (it failed only after the lease and the device were set up)
        (
            vec!["-subnet-file=/tmp"],
            vec![],
            "-subnet-file \"/tmp\": is a directory, not a file",
        ),
        (
            vec![],
            vec![("FLANNELD_IPTABLES_RESYNC", "soon")],
            "FLANNELD_IPTABLES_RESYNC",
        ),
        (
            vec![],
            vec![("FLANNELD_PUBLIC_IP", "300.1.1.1")],
            "not an IPv4 address",
        ),
        (
            vec!["-kube-subnet-mgr"],
            vec![],
            // upstream's words: kube mode needs its net-conf.json
            "failed to read net conf: open /etc/kube-flannel/net-conf.json",
        ),
        (vec!["extra-argument"], vec![], "unexpected argument"),
    ] {
        let o = flanneld(&args, &env);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(want),
            "{args:?} {env:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn lease_subcommand_usage() {
    let o = flanneld(&["lease"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("lease show"));
    let o = flanneld(&["lease", "show", "--bogus"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = flanneld(&["lease", "show", "-h"], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("-json"));
    // `lease --help` is help, not a mistake
    let o = flanneld(&["lease", "--help"], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("lease show"));
    // etcd unreachable: said once, in words, and exit 1
    let o = flanneld(
        &["lease", "show", "-etcd-endpoints=http://127.0.0.1:1"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("cannot reach etcd at http://127.0.0.1:1: connection refused"),
        "{err}"
    );
    assert_eq!(err.matches("connection refused").count(), 1, "{err}");
    assert_eq!(err.matches("This is insecure").count(), 1, "{err}");
    for internal in ["tonic", "Os {", "grpc request error", "transport error"] {
        assert!(!err.contains(internal), "{err}");
    }
}

#[test]
fn arguments_that_are_not_utf8_are_named_not_a_crash() {
    use std::os::unix::ffi::OsStrExt;
    for sub in [&[][..], &["lease", "show"][..]] {
        let o = flanneld_cmd()
            .args(sub)
            .arg(std::ffi::OsStr::from_bytes(b"-etcd-prefix=\xff\xfe"))
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("is not valid UTF-8"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_closed_stderr_does_not_kill_the_daemon() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let subnet_file = format!("-subnet-file={}", dir.path().join("subnet.env").display());
    // no etcd there: the daemon logs a line every second while it waits
    let mut child = flanneld_cmd()
        .args(["-etcd-endpoints=http://127.0.0.1:1", &subnet_file])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // the reader is gone (`2>&1 | head -1`); the next lines meet a closed pipe
    std::thread::sleep(std::time::Duration::from_secs(3));
    let status = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, None, "the daemon died with a closed stderr");
}

#[test]
fn endpoints_and_certificates_that_can_never_work_exit_2_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.txt");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = format!("-etcd-cafile={}", not_pem.display());
    for (args, want) in [
        (vec!["-etcd-endpoints=garbage"], "\"garbage\""),
        (vec!["-etcd-endpoints=ftp://10.0.0.1:2379"], "scheme ftp://"),
        (
            vec!["-etcd-endpoints=http://10.0.0.1:99999"],
            "port \"99999\"",
        ),
        (vec!["-etcd-endpoints=http://10.0.0.1:abc"], "port \"abc\""),
        (
            vec!["-etcd-endpoints=http://10.0.0.1:65536"],
            "port \"65536\"",
        ),
        (vec!["-etcd-endpoints=http://10.0.0.1:"], "port \"\""),
        (
            vec!["-etcd-endpoints=https://10.0.0.1:2379"],
            "--etcd-cafile",
        ),
        (
            vec![
                "-etcd-endpoints=https://10.0.0.1:2379",
                "-etcd-cafile=/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
        (
            vec!["-etcd-endpoints=https://10.0.0.1:2379", &not_pem],
            "is not in PEM format",
        ),
        (
            vec![
                "-etcd-endpoints=http://10.0.0.1:2379",
                "-etcd-certfile=/x.pem",
            ],
            "both --etcd-certfile and --etcd-keyfile",
        ),
        (
            vec!["-etcd-endpoints=http://10.0.0.1:2379,https://10.0.0.2:2379"],
            "mix http:// and https://",
        ),
    ] {
        for sub in [
            &[][..],
            &["lease", "show"][..],
            &["migrate", "--from", "v2", "--to", "v3"][..],
        ] {
            let mut all: Vec<&str> = sub.to_vec();
            all.extend(&args);
            let o = flanneld(&all, &[]);
            assert_eq!(o.status.code(), Some(2), "{all:?}: {}", stderr(&o));
            assert!(stderr(&o).contains(want), "{all:?}: {}", stderr(&o));
        }
    }
}

#[test]
fn help_lists_the_subcommands_and_usage_errors_exit_2_everywhere() {
    let o = flanneld(&["-h"], &[]);
    let usage = stderr(&o);
    for sub in ["lease show", "install", "uninstall", "migrate"] {
        assert!(usage.contains(&format!("\n  {sub} ")), "{usage}");
    }
    assert!(usage.contains(
        "-ip-blackhole-route\n    \tadd blackroute route ont the node for the local podCIDR\n"
    ));
    for args in [
        vec!["migrate", "--bogus"],
        vec!["migrate", "--from", "v3", "--to", "v2"],
        vec!["install", "--bogus"],
        vec!["uninstall", "--bogus"],
        vec!["lease", "show", "--subnet", "nope"],
        vec!["lease", "show", "--subnet", "10.5.1.1/24"],
    ] {
        let o = flanneld(&args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let o = flanneld(&["lease", "show", "--subnet", "10.5.1.1/24"], &[]);
    assert!(stderr(&o).contains("has host bits set: leases are subnets like 10.5.1.0/24"));
    // uninstall --dry-run touches nothing
    let root = tempfile::tempdir().unwrap();
    let root_flag = format!("--root={}", root.path().display());
    let o = flanneld(&["uninstall", "--dry-run", &root_flag], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to remove"));
}

#[test]
fn an_expired_client_certificate_is_named_and_exits_2() {
    let certs = flannel_lab::tls::TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let subnet_file = dir.path().join("subnet.env");
    let flag = |name: &str, path: &std::path::Path| format!("-{name}={}", path.display());
    let tls = [
        flag("etcd-cafile", &certs.ca),
        flag("etcd-certfile", &certs.expired_client_cert),
        flag("etcd-keyfile", &certs.expired_client_key),
        flag("subnet-file", &subnet_file),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let want = format!(
        "the etcd client certificate {} (--etcd-certfile) expired on 2021-01-01T00:00:00Z: renew it",
        certs.expired_client_cert.display()
    );
    // the daemon, before it touches anything: a value that can never work (exit 2)
    let mut args = vec!["-etcd-endpoints=https://127.0.0.1:1", "-etcd-api=v3"];
    args.extend(&tls);
    let o = flanneld(&args, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    assert!(!subnet_file.exists());
    // and lease show
    let mut args = vec!["lease", "show", "-etcd-endpoints=https://127.0.0.1:1"];
    args.extend(&tls[..3]);
    let o = flanneld(&args, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
}

/// Every signal an operator or a process manager may send without meaning "stop" leaves the
/// daemon running (SIGUSR1 and SIGUSR2 ended it without a word once; upstream keeps running);
/// SIGHUP is logged; SIGQUIT, like SIGTERM, ends it cleanly with a log line.
#[test]
fn signals_that_do_not_mean_stop_are_survived_sighup_logged_sigquit_clean() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let subnet_file = format!("-subnet-file={}", dir.path().join("subnet.env").display());
    let mut child = flanneld_cmd()
        .args(["-etcd-endpoints=http://127.0.0.1:1", &subnet_file])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    for signal in [
        "HUP", "USR1", "USR2", "ALRM", "IO", "VTALRM", "PWR", "XCPU", "XFSZ", "PIPE", "WINCH",
    ] {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let status = child.try_wait().unwrap();
        if status.is_some() {
            let _ = child.wait();
        }
        assert_eq!(status, None, "SIG{signal} ended the daemon");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Received SIGHUP; flanneld-rs reloads nothing"),
        "{text}"
    );
    let _ = Command::new("kill")
        .args(["-QUIT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGQUIT: {status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Received SIGQUIT; Exiting cleanly..."),
        "{text}"
    );
}

/// `docker-opts` as Docker hosts run upstream's mk-docker-opts.sh: the same file for the same
/// subnet.env, the environment's DOCKER_OPT_* included; clear errors and exit 1 where the
/// script writes a useless file; the routing check in a namespace of its own.
#[test]
fn docker_opts_writes_what_mk_docker_opts_sh_writes() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("subnet.env");
    let out = dir.path().join("docker_opts.env");
    let (f, d) = (env.to_str().unwrap(), out.to_str().unwrap());
    std::fs::write(
        &env,
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let o = flanneld(
        &["docker-opts", "-f", f, "-d", d],
        &[("DOCKER_OPT_A", "--x")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "DOCKER_OPT_A=\"--x\"\nDOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --x --bip=10.1.74.1/24 --ip-masq=false --mtu=1450\"\n"
    );
    // no subnet.env: exit 1 naming the file (the script writes DOCKER_OPTS="" and exits 0)
    let o = flanneld(
        &["docker-opts", "-f", "/nonexistent/subnet.env", "-d", d],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read /nonexistent/subnet.env"),
        "{}",
        stderr(&o)
    );
    // a partial one (IPv6-only): exit 1 naming what is missing
    std::fs::write(&env, "FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:4::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n").unwrap();
    let o = flanneld(&["docker-opts", "-f", f, "-d", d], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("has no FLANNEL_SUBNET (an IPv6-only network"),
        "{}",
        stderr(&o)
    );
    // the script's own refusals
    std::fs::write(
        &env,
        "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=maybe\n",
    )
    .unwrap();
    let o = flanneld(&["docker-opts", "-f", f, "-d", d], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Invalid value of FLANNEL_IPMASQ: maybe"),
        "{}",
        stderr(&o)
    );
    let o = flanneld(&["docker-opts", "-x"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Illegal option -x"), "{}", stderr(&o));
    // a route to the subnet via a gateway (in a namespace of this test): refused after
    // writing, as the script
    std::fs::write(
        &env,
        "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let ns = format!("dopts{}", std::process::id());
    let ip = |a: &[&str]| {
        assert!(
            Command::new("ip").args(a).status().unwrap().success(),
            "{a:?}"
        );
    };
    ip(&["netns", "add", &ns]);
    let result = std::panic::catch_unwind(|| {
        ip(&[
            "-n", &ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ]);
        ip(&["-n", &ns, "addr", "add", "192.0.2.1/24", "dev", "d0"]);
        ip(&["-n", &ns, "link", "set", "d0", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "10.1.74.0/24",
            "via",
            "192.0.2.9",
        ]);
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                env!("CARGO_BIN_EXE_flanneld-rs"),
                "docker-opts",
                "-f",
                f,
                "-d",
                d,
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains(
                "Your routing table already contains the subnet: 10.1.74.0/24 via 192.0.2.9 dev d0"
            ),
            "{}",
            stderr(&o)
        );
    });
    ip(&["netns", "del", &ns]);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn kube_mode_settings_that_cannot_work_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let subnet_file = format!("-subnet-file={}", dir.path().join("subnet.env").display());
    let good = dir.path().join("net-conf.json");
    std::fs::write(
        &good,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"Network\":").unwrap();
    let conf = |p: &std::path::Path| format!("-net-config-path={}", p.display());
    let missing = dir.path().join("missing.json");
    let no_kubeconfig = format!("-kubeconfig-file={}", dir.path().join("none").display());
    for (args, env, want) in [
        (
            vec![conf(&missing)],
            vec![],
            format!("failed to read net conf: open {}", missing.display()),
        ),
        (vec![conf(&bad)], vec![], "error parsing subnet config".to_string()),
        (
            vec![conf(&good)],
            vec![],
            "neither -kube-api-url nor -kubeconfig-file is set, and this is not a pod with a service account".to_string(),
        ),
        (
            vec![conf(&good), no_kubeconfig.clone()],
            vec![],
            format!("{no_kubeconfig}: ").replace('=', " "),
        ),
        (
            vec![conf(&good), "-kube-api-url=http://127.0.0.1:9".to_string()],
            vec![("POD_NAME", "kube-flannel-ds-x")],
            // upstream's words
            "env variables POD_NAME and POD_NAMESPACE must be set".to_string(),
        ),
    ] {
        let mut all = vec!["-kube-subnet-mgr", subnet_file.as_str()];
        all.extend(args.iter().map(String::as_str));
        let o = flanneld(&all, &env);
        // settings that can never work: exit 2 before anything is touched
        assert_eq!(o.status.code(), Some(2), "{all:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(&want), "{all:?}: want {want:?}\n{}", stderr(&o));
    }
}

/// A server on 127.0.0.1 that answers every request with a web page (HTTP/1.1 404): an
/// endpoint that is not etcd nor a Kubernetes API. Its URL.
fn web_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let _ = stream.read(&mut buf);
            let body = "<!DOCTYPE HTML>\n<html><body><h1>Not Found</h1></body></html>\n";
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

/// An endpoint that answers but is not etcd (v3, v2) nor a Kubernetes API: said in those
/// words, never a library's (`h2 protocol error: http2 error`, `client error (Connect)`, a
/// whole HTML page).
#[test]
fn an_endpoint_that_is_not_etcd_nor_the_kubernetes_api_is_named() {
    let url = web_server();
    let here = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flanneld-rs"))
            .args(args)
            .env_clear()
            .output()
            .unwrap()
    };
    let endpoint = format!("-etcd-endpoints={url}");
    let o = here(&["lease", "show", &endpoint, "-etcd-api=v3"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{url} answered, but not as etcd (no gRPC over HTTP/2)"
        )),
        "{err}"
    );
    let o = here(&["lease", "show", &endpoint, "-etcd-api=v2"]);
    let err = stderr(&o);
    assert!(
        err.contains("HTTP 404 Not Found and no answer of etcd's v2 API (not JSON, it begins \"<!DOCTYPE HTML> <html><body>"),
        "{err}"
    );
    assert!(!err.contains("</html>"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net-conf.json");
    std::fs::write(
        &conf,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let conf = format!("-net-config-path={}", conf.display());
    let api = format!("-kube-api-url={url}");
    let o = here(&["lease", "show", "-kube-subnet-mgr", &api, &conf]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "listing nodes at {url}/: HTTP 404 and no answer of a Kubernetes API"
        )),
        "{err}"
    );
    let o = here(&[
        "lease",
        "show",
        "-kube-subnet-mgr",
        "-kube-api-url=http://127.0.0.1:1",
        &conf,
    ]);
    let err = stderr(&o);
    assert_eq!(
        err.trim(),
        "error: listing nodes at http://127.0.0.1:1/: connection refused",
        "{err}"
    );
    for internal in ["h2 protocol", "http2 error", "client error", "(Connect)"] {
        assert!(!err.contains(internal), "{err}");
    }
}
