//! A real etcd for one test: Debian's `etcd` on 127.0.0.1, free ports, a temporary data
//! directory; stopped (SIGKILL) when dropped, so nothing outlives a failed test.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::tls::TestCerts;

pub struct TestEtcd {
    child: Option<Child>,
    /// Runs inside this named network namespace (the lab's), else in the caller's.
    netns: Option<String>,
    /// The address clients use; etcd also listens on 127.0.0.1 of its namespace.
    host: String,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
    extra_args: Vec<String>,
    /// A member of a cluster: its name and `--initial-cluster` (peers on their hosts' 2380).
    member: Option<(String, String)>,
}

/// Which certificate a TLS etcd serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCert {
    /// Our CA's, for 127.0.0.1 and localhost.
    Good,
    /// Our CA's for 127.0.0.1, expired in 2021.
    Expired,
    /// Our CA's, valid, but only for the name etcd.example.
    WrongName,
}

#[derive(Clone)]
struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// etcdctl skips verifying the server (whose certificate is bad on purpose).
    ctl_skips_verify: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl TestEtcd {
    /// Plain http etcd.
    pub fn start() -> Self {
        Self::start_with(None, &[])
    }

    /// etcd with extra command-line flags (e.g. `--enable-v2=true`).
    pub fn start_with_args(args: &[&str]) -> Self {
        Self::start_with(None, args)
    }

    /// https etcd that demands client certificates signed by `certs.ca`.
    pub fn start_tls(certs: &TestCerts) -> Self {
        Self::start_tls_with(certs, ServerCert::Good, &[])
    }

    /// TLS etcd serving one of the test server certificates, with `args` added (e.g.
    /// `--enable-v2=true`).
    pub fn start_tls_with(certs: &TestCerts, which: ServerCert, args: &[&str]) -> Self {
        let (server_cert, server_key) = match which {
            ServerCert::Good => (&certs.server_cert, &certs.server_key),
            ServerCert::Expired => (&certs.expired_server_cert, &certs.expired_server_key),
            ServerCert::WrongName => (&certs.wrong_name_server_cert, &certs.wrong_name_server_key),
        };
        let tls = TlsFiles {
            ca: certs.ca.clone(),
            server_cert: server_cert.clone(),
            server_key: server_key.clone(),
            client_cert: certs.client_cert.clone(),
            client_key: certs.client_key.clone(),
            ctl_skips_verify: which != ServerCert::Good,
        };
        Self::start_with(Some(tls), args)
    }

    /// https etcd (our CA's good server certificate, client certificates demanded) inside the
    /// named network namespace `netns`, listening on `host` (and 127.0.0.1 there).
    pub fn start_tls_in_netns(certs: &TestCerts, netns: &str, host: &str, args: &[&str]) -> Self {
        let tls = TlsFiles {
            ca: certs.ca.clone(),
            server_cert: certs.server_cert.clone(),
            server_key: certs.server_key.clone(),
            client_cert: certs.client_cert.clone(),
            client_key: certs.client_key.clone(),
            ctl_skips_verify: false,
        };
        Self::start_full(Some(tls), args, Some(netns.to_string()), host.to_string())
    }

    /// Plain http etcd inside the named network namespace `netns`, listening on `host`
    /// (and 127.0.0.1 there) at the standard ports, with `args` added.
    pub fn start_in_netns(netns: &str, host: &str, args: &[&str]) -> Self {
        Self::start_full(None, args, Some(netns.to_string()), host.to_string())
    }

    fn start_with(tls: Option<TlsFiles>, args: &[&str]) -> Self {
        Self::start_full(tls, args, None, "127.0.0.1".into())
    }

    fn start_full(
        tls: Option<TlsFiles>,
        args: &[&str],
        netns: Option<String>,
        host: String,
    ) -> Self {
        crate::require_program("etcd", "etcd-server");
        crate::require_program("etcdctl", "etcd-client");
        let in_netns = netns.is_some();
        let mut etcd = TestEtcd {
            child: None,
            netns,
            host,
            dir: tempfile::tempdir().expect("temp dir for etcd"),
            client_port: 0,
            peer_port: 0,
            tls,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            member: None,
        };
        // Another test may grab a port between our probe and etcd's bind: try fresh ports.
        for attempt in 0..5 {
            // In a namespace of its own nobody else binds: the standard ports are free.
            (etcd.client_port, etcd.peer_port) = if in_netns {
                (2379, 2380)
            } else {
                (free_port(), free_port())
            };
            if etcd.spawn_and_wait() {
                return etcd;
            }
            eprintln!("etcd did not come up (attempt {attempt}), retrying with other ports");
        }
        panic!("etcd failed to start; log:\n{}", etcd.log());
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:43121`.
    pub fn endpoint(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.host, self.client_port)
    }

    /// The endpoint inside etcd's own namespace (for etcdctl run there).
    fn local_endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// A command that runs `program` where etcd runs (its namespace, if any).
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// The client address, e.g. for a [`crate::proxy::TcpProxy`] in front of etcd.
    pub fn client_addr(&self) -> std::net::SocketAddr {
        let ip: std::net::IpAddr = self.host.parse().expect("etcd host is an IP");
        std::net::SocketAddr::new(ip, self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// etcd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) -> bool {
        let client = self.endpoint();
        let listen = if self.host == "127.0.0.1" {
            client.clone()
        } else {
            format!("{client},{}", self.local_endpoint())
        };
        let (name, peer, cluster) = match &self.member {
            Some((name, cluster)) => (
                name.clone(),
                format!("http://{}:{}", self.host, self.peer_port),
                cluster.clone(),
            ),
            None => {
                let peer = format!("http://127.0.0.1:{}", self.peer_port);
                ("t".to_string(), peer.clone(), format!("t={peer}"))
            }
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let mut cmd = self.command("etcd");
        cmd.args(["--name", &name, "--data-dir"])
            .arg(self.data_dir())
            .args([
                "--listen-client-urls",
                &listen,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &cluster])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key);
        }
        self.child = Some(cmd.spawn().expect("spawn etcd"));
        if self.member.is_some() {
            // a member alone has no quorum: the cluster waits for all of them
            return true;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if self.etcdctl(&["endpoint", "health"]).status.success() {
                return true;
            }
            sleep(Duration::from_millis(50));
        }
        self.stop();
        false
    }

    /// Runs etcdctl (API v3) against this etcd and returns its output.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.local_endpoint())
            .arg("--command-timeout=3s")
            .arg("--dial-timeout=1s");
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
            if tls.ctl_skips_verify {
                cmd.arg("--insecure-skip-tls-verify");
            }
        }
        cmd.args(args).output().expect("run etcdctl")
    }

    /// etcdctl that must succeed; returns its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A cluster of members, member `i` in namespace `members[i].0` at address
    /// `members[i].1` (standard ports), each with `args`; returns once every member is
    /// healthy.
    pub fn start_cluster(members: &[(&str, &str)], args: &[&str]) -> Vec<TestEtcd> {
        crate::require_program("etcd", "etcd-server");
        crate::require_program("etcdctl", "etcd-client");
        let initial: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, (_, ip))| format!("m{}=http://{ip}:2380", i + 1))
            .collect();
        let initial = initial.join(",");
        let mut cluster: Vec<TestEtcd> = members
            .iter()
            .enumerate()
            .map(|(i, (ns, ip))| {
                let mut etcd = TestEtcd {
                    child: None,
                    netns: Some(ns.to_string()),
                    host: ip.to_string(),
                    dir: tempfile::tempdir().expect("temp dir for etcd"),
                    client_port: 2379,
                    peer_port: 2380,
                    tls: None,
                    extra_args: args.iter().map(|s| s.to_string()).collect(),
                    member: Some((format!("m{}", i + 1), initial.clone())),
                };
                etcd.spawn_and_wait();
                etcd
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        for etcd in &mut cluster {
            while !etcd.etcdctl(&["endpoint", "health"]).status.success() {
                assert!(
                    Instant::now() < deadline,
                    "etcd cluster did not come up; log:\n{}",
                    etcd.log()
                );
                sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// Whether this member is the cluster's leader now.
    pub fn is_leader(&self) -> bool {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let s = &status[0]["Status"];
        s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"]
    }

    /// The etcd process's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills etcd (SIGKILL) and waits for it; the data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn_and_wait(),
            "etcd failed to restart; log:\n{}",
            self.log()
        );
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
