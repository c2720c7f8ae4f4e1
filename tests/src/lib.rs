//! Test harnesses for flanneld-rs.
//!
//! - [`etcd::TestEtcd`]: a real etcd (Debian's etcd-server) per test, on 127.0.0.1 with free
//!   ports and a temporary data directory, killed when dropped.
//! - [`lab::Lab`]: hosts, etcd and pods in namespaces, flanneld on each host.
//! - [`kube::TestApiServer`]: a real kube-apiserver (built once by tests/kube-apiserver.sh).
//! - [`proxy::TcpProxy`]: a TCP proxy a test can cut and heal, to partition a client.
//! - [`netns`]: run a test in a fresh network namespace of its own; `ip`/`bridge` helpers.
//! - [`tls::TestCerts`]: a throwaway CA with server and client certificates, for TLS tests.
//! - [`expected`]: upstream's rules as `iptables -S` lists them.
//!
//! These fail loudly when a tool is missing: `.ci/run` installs them, and a test that quietly
//! skipped would hide a broken feature.

pub mod etcd;
pub mod expected;
pub mod kube;
pub mod lab;
pub mod netns;
pub mod proxy;
pub mod tls;

use std::process::Command;

/// Fails the test with an install hint when `program` is not on PATH.
pub fn require_program(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is not installed: run `apt-get install -y {package}` (.ci/run does this)"
    );
}
