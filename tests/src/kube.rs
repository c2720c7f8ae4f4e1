//! A real kube-apiserver for kube-mode tests: Debian's `kubernetes` 1.20.2 built once by
//! `tests/kube-apiserver.sh` into `/var/cache/flanneld-rs` (or `$KUBE_APISERVER`), run
//! against the lab's etcd inside the lab's etcd namespace, with its own CA and serving
//! certificate, token authentication (an admin in `system:masters`, and `flanneld`), and
//! either every request allowed or RBAC. Tests talk to it with curl as the admin.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use serde_json::Value;

use crate::lab::wait_until;

/// Where `tests/kube-apiserver.sh` puts the binary.
pub const DEFAULT_BINARY: &str = "/var/cache/flanneld-rs/kube-apiserver";
pub const PORT: u16 = 6443;
const ADMIN_TOKEN: &str = "admin-token-for-tests";
const FLANNELD_TOKEN: &str = "flanneld-token-for-tests";

/// Who may do what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authz {
    AlwaysAllow,
    /// `--authorization-mode=RBAC`: `flanneld` may do only what a test grants it.
    Rbac,
}

pub struct TestApiServer {
    child: Option<Child>,
    netns: String,
    ip: String,
    etcd: String,
    authz: Authz,
    dir: PathBuf,
    /// A kubeconfig for flanneld (token auth, the CA), readable from every namespace.
    pub kubeconfig: PathBuf,
    /// The same user authenticated by a client certificate instead of a token.
    pub kubeconfig_cert: PathBuf,
    pub ca: PathBuf,
}

/// The apiserver binary: `$KUBE_APISERVER`, else the cache; a clear failure without it.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("KUBE_APISERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
    assert!(
        path.is_file(),
        "{} is missing: run tests/kube-apiserver.sh (tests/run.sh and .ci/run do) to build it once",
        path.display()
    );
    path
}

impl TestApiServer {
    /// Starts it in `netns`, serving on `ip`:6443, with etcd at `etcd`; waits until ready.
    pub fn start(netns: &str, ip: &str, etcd: &str, dir: &Path, authz: Authz) -> Self {
        crate::require_program("curl", "curl");
        let dir = dir.join("kube-apiserver");
        fs::create_dir_all(&dir).expect("apiserver dir");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            fs::write(&p, text).expect("write apiserver file");
            p
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kube test CA");
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let mut params =
            CertificateParams::new(vec![ip.to_string(), "localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("sign");
        let ca_path = write("ca.pem", &ca.pem());
        write("server.pem", &cert.pem());
        write("server-key.pem", &key.serialize_pem());
        let sa = KeyPair::generate().expect("service account key");
        write("sa.key", &sa.serialize_pem());
        write("sa.pub", &sa.public_key_pem());
        write(
            "tokens.csv",
            &format!("{ADMIN_TOKEN},admin,1,\"system:masters\"\n{FLANNELD_TOKEN},flanneld,2\n"),
        );
        let kubeconfig = write(
            "flanneld.kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{ip}:{PORT}\n    certificate-authority: {}\nusers:\n- name: flanneld\n  user:\n    token: {FLANNELD_TOKEN}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: flanneld\ncurrent-context: lab\n",
                ca_path.display()
            ),
        );
        // the same user by client certificate (the apiserver trusts the CA for clients)
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
        client
            .distinguished_name
            .push(DnType::CommonName, "flanneld");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().expect("key");
        let client_cert = client.signed_by(&client_key, &ca).expect("sign");
        let cert_path = write("flanneld.pem", &client_cert.pem());
        let key_path = write("flanneld-key.pem", &client_key.serialize_pem());
        let kubeconfig_cert = write(
            "flanneld-cert.kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{ip}:{PORT}\n    certificate-authority: {}\nusers:\n- name: flanneld\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: flanneld\ncurrent-context: lab\n",
                ca_path.display(),
                cert_path.display(),
                key_path.display()
            ),
        );
        let mut s = TestApiServer {
            child: None,
            netns: netns.to_string(),
            ip: ip.to_string(),
            etcd: etcd.to_string(),
            authz,
            dir,
            kubeconfig,
            kubeconfig_cert,
            ca: ca_path,
        };
        s.restart();
        s
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("https://{}:{PORT}", self.ip)
    }

    /// Starts the process (again) and waits until it answers as ready.
    pub fn restart(&mut self) {
        self.stop();
        let d = |name: &str| self.dir.join(name).display().to_string();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kube-apiserver.log"))
            .expect("apiserver log");
        let mode = match self.authz {
            Authz::AlwaysAllow => "AlwaysAllow",
            Authz::Rbac => "RBAC",
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(binary())
            .args([
                format!("--etcd-servers={}", self.etcd),
                format!("--bind-address={}", self.ip),
                format!("--advertise-address={}", self.ip),
                format!("--secure-port={PORT}"),
                "--insecure-port=0".into(),
                format!("--tls-cert-file={}", d("server.pem")),
                format!("--tls-private-key-file={}", d("server-key.pem")),
                format!("--cert-dir={}", d("certs")),
                format!("--token-auth-file={}", d("tokens.csv")),
                format!("--client-ca-file={}", d("ca.pem")),
                format!("--authorization-mode={mode}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", d("sa.pub")),
                format!("--service-account-signing-key-file={}", d("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                // 1.20 keeps a node's second pod CIDR (dual-stack) only with this gate
                "--feature-gates=IPv6DualStack=true".into(),
                "--v=1".into(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start kube-apiserver"));
        let ready = wait_until(Duration::from_secs(60), || {
            matches!(self.try_request("GET", "/readyz", None), Some((200, _)))
        });
        assert!(
            ready,
            "kube-apiserver not ready within 60 s:\n{}",
            self.log()
        );
    }

    /// Kills the process (SIGKILL); [`TestApiServer::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
        let start = text.len().saturating_sub(8000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// A request as the admin: the status code and the body (JSON when it parses); `None`
    /// when the server did not answer.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> Option<(u16, Value)> {
        self.admin().try_request(method, path, body)
    }

    /// The admin's requests, apart from the server's handle (for another thread).
    pub fn admin(&self) -> Admin {
        Admin {
            netns: self.netns.clone(),
            url: self.url(),
            ca: self.ca.clone(),
        }
    }

    /// A request that must succeed (2xx); its body.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &Value)>) -> Value {
        match self.try_request(method, path, body) {
            Some((code, v)) if (200..300).contains(&code) => v,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    /// Creates a Node with these pod CIDRs (as the controller manager would assign them)
    /// and, when given, annotations.
    pub fn create_node(&self, name: &str, pod_cidrs: &[&str], annotations: Option<Value>) {
        let mut node = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name },
            "spec": {},
        });
        if let Some(first) = pod_cidrs.first() {
            node["spec"]["podCIDR"] = Value::from(*first);
            node["spec"]["podCIDRs"] = Value::from(pod_cidrs.to_vec());
        }
        if let Some(a) = annotations {
            node["metadata"]["annotations"] = a;
        }
        self.request("POST", "/api/v1/nodes", Some(("application/json", &node)));
    }

    /// Creates many Node objects (whole, status included, as a kubelet registers them)
    /// with one curl running 64 requests at a time; panics unless every one is created.
    pub fn create_nodes(&self, nodes: &[Value]) {
        let mut config = String::new();
        for (i, node) in nodes.iter().enumerate() {
            if i > 0 {
                config.push_str("next\n");
            }
            let body = node.to_string().replace('\\', "\\\\").replace('"', "\\\"");
            config.push_str(&format!(
                "url = \"{}/api/v1/nodes\"\nrequest = \"POST\"\nsilent\ncacert = \"{}\"\nheader = \"Authorization: Bearer {ADMIN_TOKEN}\"\nheader = \"Content-Type: application/json\"\ndata-binary = \"{body}\"\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\n",
                self.url(),
                self.ca.display()
            ));
        }
        let path = self.dir.join("create-nodes.curl");
        fs::write(&path, config).expect("curl config");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "--parallel",
                "--parallel-max",
                "64",
                "-K",
            ])
            .arg(&path)
            .output()
            .expect("curl");
        let codes = String::from_utf8_lossy(&out.stdout);
        let created = codes.lines().filter(|l| l.trim() == "201").count();
        assert_eq!(
            created,
            nodes.len(),
            "nodes created: {created} of {}; codes: {}",
            nodes.len(),
            codes
                .lines()
                .filter(|l| l.trim() != "201")
                .take(5)
                .collect::<Vec<_>>()
                .join(",")
        );
    }

    pub fn node(&self, name: &str) -> Value {
        self.request("GET", &format!("/api/v1/nodes/{name}"), None)
    }

    /// A node's annotations as a map.
    pub fn annotations(&self, name: &str) -> serde_json::Map<String, Value> {
        self.node(name)["metadata"]["annotations"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    pub fn delete_node(&self, name: &str) {
        self.request("DELETE", &format!("/api/v1/nodes/{name}"), None);
    }

    /// A JSON merge patch of a node (metadata, spec).
    pub fn patch_node(&self, name: &str, patch: &Value) {
        self.request(
            "PATCH",
            &format!("/api/v1/nodes/{name}"),
            Some(("application/merge-patch+json", patch)),
        );
    }

    /// RBAC: gives `flanneld` upstream's ClusterRole (`nodes` get/list/watch, and
    /// `nodes/status` patch when `patch_status`).
    pub fn grant_flanneld(&self, patch_status: bool) {
        let mut rules = vec![serde_json::json!({
            "apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"],
        })];
        if patch_status {
            rules.push(serde_json::json!({
                "apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"],
            }));
        }
        let role = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": "flannel" }, "rules": rules,
        });
        let _ = self.try_request(
            "DELETE",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/flannel",
            None,
        );
        self.request(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            Some(("application/json", &role)),
        );
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": "flannel" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel" },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "flanneld" }],
        });
        if self
            .try_request(
                "GET",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/flannel",
                None,
            )
            .is_none_or(|(c, _)| c == 404)
        {
            self.request(
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                Some(("application/json", &binding)),
            );
        }
    }
}

/// Requests as the admin, with curl from the server's namespace.
#[derive(Debug, Clone)]
pub struct Admin {
    netns: String,
    url: String,
    ca: PathBuf,
}

impl Admin {
    /// The status code and the body (JSON when it parses); `None` when the server did not
    /// answer.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.url);
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            self.netns.clone(),
            "curl".into(),
            "-s".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
            "-H".into(),
            format!("Authorization: Bearer {ADMIN_TOKEN}"),
            "-X".into(),
            method.into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some((content_type, value)) = body {
            args.extend([
                "-H".into(),
                format!("Content-Type: {content_type}"),
                "--data-binary".into(),
                value.to_string(),
            ]);
        }
        args.push(url);
        let out = Command::new("ip").args(&args).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        let code: u16 = code.trim().parse().ok()?;
        if code == 0 {
            return None;
        }
        let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
        Some((code, value))
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
