//! A small client of etcd's v2 keys API (`/v2/keys/...`): get, long-poll watch, put with
//! conditions and TTL, delete. HTTP by reqwest, TLS by rustls (CA, client certificate),
//! basic auth. Requests go to the endpoint that answered last; one that does not answer
//! (no connection within 1 s, no answer within 1.5 s) is left for the next at once.

use std::time::Duration;

use serde_json::Value;

use crate::error::{reason, StoreError};
use crate::etcd::EtcdConfig;
use crate::SubnetError;
// The endpoint that answered last in this process, shared with the v3 client (the daemon
// asks v3 first when it detects the API): a new client starts there, not at a dead first
// endpoint.
use crate::etcd::LAST_GOOD;

/// A node of the v2 key space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub key: String,
    pub value: Option<String>,
    pub dir: bool,
    pub nodes: Vec<Node>,
    pub modified_index: u64,
    /// Seconds left; `None` for a key without TTL.
    pub ttl: Option<i64>,
}

impl Node {
    fn from_json(v: &Value) -> Node {
        Node {
            key: v["key"].as_str().unwrap_or_default().to_string(),
            value: v["value"].as_str().map(String::from),
            dir: v["dir"].as_bool().unwrap_or(false),
            nodes: v["nodes"]
                .as_array()
                .map(|a| a.iter().map(Node::from_json).collect())
                .unwrap_or_default(),
            modified_index: v["modifiedIndex"].as_u64().unwrap_or(0),
            ttl: v["ttl"].as_i64(),
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub action: String,
    pub node: Node,
    /// `X-Etcd-Index`: the store's index when it answered.
    pub index: u64,
}

/// etcd's error codes that the v2 store acts on.
pub const KEY_NOT_FOUND: u64 = 100;
pub const COMPARE_FAILED: u64 = 101;
pub const NODE_EXIST: u64 = 105;
pub const EVENT_INDEX_CLEARED: u64 = 401;

/// A failure: etcd's own error (`code`), or the transport's.
#[derive(Debug)]
pub enum V2Error {
    Etcd {
        code: u64,
        message: String,
        index: u64,
    },
    Transport(String),
}

impl V2Error {
    pub fn code(&self) -> Option<u64> {
        match self {
            V2Error::Etcd { code, .. } => Some(*code),
            V2Error::Transport(_) => None,
        }
    }

    /// As a store error; every v2 failure is worth retrying (etcd unreachable, a leader
    /// election), as for v3.
    pub fn into_store_error(self, context: impl Into<String>) -> StoreError {
        let detail = match self {
            V2Error::Etcd { code, message, .. } => format!("etcd error {code}: {message}"),
            V2Error::Transport(t) => t,
        };
        StoreError::transient(context, detail)
    }
}

/// A put's precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Always,
    /// `prevExist=false`: create only.
    Absent,
    /// `prevIndex=N`: compare and swap.
    Index(u64),
}

#[derive(Clone)]
pub struct V2Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    auth: Option<(String, String)>,
    /// The endpoint that answered last (shared by the clones).
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The last health check that passed (endpoint, when): the watches of one node share it.
    healthy: std::sync::Arc<std::sync::Mutex<Option<(usize, std::time::Instant)>>>,
}

/// How long a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a request (not a watch) may take before the member counts as not answering.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);

/// Percent-encodes a form value (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, SubnetError> {
    std::fs::read(path).map_err(|e| {
        SubnetError::Setup(format!(
            "failed to read etcd {what} {}: {e}",
            path.display()
        ))
    })
}

fn tls_config(cfg: &EtcdConfig) -> Result<rustls::ClientConfig, SubnetError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SubnetError::Setup(format!("TLS setup: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let ca = cfg.ca_file.as_ref().ok_or_else(|| {
        SubnetError::Setup(
            "https etcd endpoints need the CA that signed etcd's certificate (--etcd-cafile)"
                .into(),
        )
    })?;
    for cert in CertificateDer::pem_slice_iter(&read_file(ca, "CA (--etcd-cafile)")?) {
        let cert =
            cert.map_err(|e| SubnetError::Setup(format!("etcd CA {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| SubnetError::Setup(format!("etcd CA {}: {e}", ca.display())))?;
    }
    let builder = builder.with_root_certificates(roots);
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain =
                CertificateDer::pem_slice_iter(&read_file(cert, "certificate (--etcd-certfile)")?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        SubnetError::Setup(format!("etcd certificate {}: {e}", cert.display()))
                    })?;
            let key = PrivateKeyDer::from_pem_slice(&read_file(key, "key (--etcd-keyfile)")?)
                .map_err(|e| SubnetError::Setup(format!("etcd key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SubnetError::Setup(format!("etcd client certificate: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(SubnetError::Setup(
            "a client certificate needs both --etcd-certfile and --etcd-keyfile".into(),
        )),
    }
}

impl V2Client {
    pub fn new(cfg: &EtcdConfig) -> Result<V2Client, SubnetError> {
        // The same checks of endpoints and certificate files as for v3.
        cfg.connect_options()?;
        let https = cfg.endpoints.iter().any(|e| e.starts_with("https://"));
        // reqwest wants a TLS setup even for http endpoints: one with ring (the provider
        // etcd-client uses too) and no trusted roots, which can never verify anything.
        let tls = if https {
            tls_config(cfg)?
        } else {
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| SubnetError::Setup(format!("TLS setup: {e}")))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tls_backend_preconfigured(tls);
        let http = builder
            .build()
            .map_err(|e| SubnetError::Setup(format!("HTTP client: {e}")))?;
        let auth = cfg
            .username
            .clone()
            .filter(|u| !u.is_empty())
            .map(|u| (u, cfg.password.clone().unwrap_or_default()));
        Ok(V2Client {
            http,
            endpoints: cfg
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            auth,
            current: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(
                LAST_GOOD.load(std::sync::atomic::Ordering::Relaxed),
            )),
            healthy: Default::default(),
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        key: &str,
        query: &str,
        body: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<Response, V2Error> {
        use std::sync::atomic::Ordering;
        let mut last = V2Error::Transport("no etcd endpoint".into());
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n.max(1);
        // a watch's long poll ends by its timeout in the normal course: not a failure
        let is_watch = query.contains("wait=true");
        for k in 0..n {
            let i = (start + k) % n;
            let endpoint = &self.endpoints[i];
            let url = format!("{endpoint}/v2/keys{key}{query}");
            let mut req = self.http.request(method.clone(), &url);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some((u, p)) = &self.auth {
                req = req.basic_auth(u, Some(p));
            }
            if let Some(b) = &body {
                req = req
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(b.clone());
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if is_watch && e.is_timeout() => {
                    return Err(V2Error::Transport(format!("{url}: timed out")))
                }
                Err(e) => {
                    let why = if e.is_timeout() {
                        "timed out".to_string()
                    } else {
                        reason(&e)
                    };
                    last = V2Error::Transport(format!("cannot reach etcd at {endpoint}: {why}"));
                    continue;
                }
            };
            let index = resp
                .headers()
                .get("X-Etcd-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let status = resp.status();
            let text = match resp.text().await {
                Ok(t) => t,
                Err(e) if is_watch && e.is_timeout() => {
                    return Err(V2Error::Transport(format!("{url}: timed out")))
                }
                Err(e) => {
                    let why = if e.is_timeout() {
                        "timed out".to_string()
                    } else {
                        reason(&e)
                    };
                    last = V2Error::Transport(format!("reading etcd's answer from {url}: {why}"));
                    if is_watch {
                        // the member went away under a long poll: the watcher lists again
                        // on the next one rather than wait there from an index it may not
                        // serve the same way
                        self.failed(i);
                        return Err(last);
                    }
                    continue;
                }
            };
            let json: Value = serde_json::from_str(&text).map_err(|_| {
                V2Error::Transport(format!(
                    "{url}: HTTP {status} and no answer of etcd's v2 API (not JSON, it begins {:?}): is it etcd's client URL, with its v2 API enabled (--enable-v2)?",
                    text.split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .chars()
                        .take(40)
                        .collect::<String>()
                ))
            })?;
            if let Some(code) = json["errorCode"].as_u64() {
                return Err(V2Error::Etcd {
                    code,
                    message: format!(
                        "{} ({})",
                        json["message"].as_str().unwrap_or(""),
                        json["cause"].as_str().unwrap_or("")
                    ),
                    index: json["index"].as_u64().unwrap_or(index),
                });
            }
            if !status.is_success() {
                return Err(V2Error::Transport(format!("{url}: HTTP {status}")));
            }
            self.current.store(i, Ordering::Relaxed);
            LAST_GOOD.store(i, Ordering::Relaxed);
            return Ok(Response {
                action: json["action"].as_str().unwrap_or_default().to_string(),
                node: Node::from_json(&json["node"]),
                index,
            });
        }
        Err(last)
    }

    /// The endpoint requests go to now.
    pub fn current(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Leaves endpoint `i` for the next one (it stopped answering).
    pub fn failed(&self, i: usize) {
        let next = (i + 1) % self.endpoints.len().max(1);
        LAST_GOOD.store(next, std::sync::atomic::Ordering::Relaxed);
        let _ = self.current.compare_exchange(
            i,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Whether endpoint `i` answers its `/health` within a second (a frozen member's kernel
    /// still holds the TCP connection of a long poll; only an answer tells it is alive).
    /// One check per second at most, however many watches ask.
    pub async fn alive(&self, i: usize) -> bool {
        let recent = |h: &Option<(usize, std::time::Instant)>| {
            h.is_some_and(|(e, at)| e == i && at.elapsed() < Duration::from_millis(900))
        };
        if self.healthy.lock().is_ok_and(|h| recent(&h)) {
            return true;
        }
        let Some(endpoint) = self.endpoints.get(i) else {
            return false;
        };
        let mut req = self
            .http
            .get(format!("{endpoint}/health"))
            .timeout(Duration::from_secs(1));
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let ok = matches!(req.send().await, Ok(r) if r.status().is_success());
        if ok {
            if let Ok(mut h) = self.healthy.lock() {
                *h = Some((i, std::time::Instant::now()));
            }
        }
        ok
    }

    /// A quorum read of a key or (recursive) directory.
    pub async fn get(&self, key: &str, recursive: bool) -> Result<Response, V2Error> {
        let query = if recursive {
            "?quorum=true&recursive=true&sorted=true"
        } else {
            "?quorum=true"
        };
        self.send(
            reqwest::Method::GET,
            key,
            query,
            None,
            Some(REQUEST_TIMEOUT),
        )
        .await
    }

    /// Waits for the next change at or after `wait_index` under `key` (a long poll). `Ok(None)`
    /// when nothing happened within `timeout`: ask again with the same index.
    pub async fn watch(
        &self,
        key: &str,
        wait_index: u64,
        timeout: Duration,
    ) -> Result<Option<Response>, V2Error> {
        let query = format!("?wait=true&recursive=true&waitIndex={wait_index}");
        match self
            .send(reqwest::Method::GET, key, &query, None, Some(timeout))
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(V2Error::Transport(t))
                if t.contains("timed out") || t.contains("operation timed out") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `value` at `key`; `ttl` `None` writes a key without TTL.
    pub async fn put(
        &self,
        key: &str,
        value: &str,
        ttl: Option<u64>,
        cond: Cond,
    ) -> Result<Response, V2Error> {
        let mut body = format!("value={}", encode(value));
        match ttl {
            Some(t) => body += &format!("&ttl={t}"),
            None => body += "&ttl=",
        }
        match cond {
            Cond::Always => {}
            Cond::Absent => body += "&prevExist=false",
            Cond::Index(i) => body += &format!("&prevIndex={i}"),
        }
        self.send(
            reqwest::Method::PUT,
            key,
            "",
            Some(body),
            Some(REQUEST_TIMEOUT),
        )
        .await
    }

    /// Refreshes a key's TTL without changing its value or notifying watchers.
    pub async fn refresh(&self, key: &str, ttl: u64) -> Result<Response, V2Error> {
        let body = format!("ttl={ttl}&refresh=true&prevExist=true");
        self.send(
            reqwest::Method::PUT,
            key,
            "",
            Some(body),
            Some(REQUEST_TIMEOUT),
        )
        .await
    }

    pub async fn delete(&self, key: &str, prev_index: Option<u64>) -> Result<Response, V2Error> {
        let query = prev_index.map_or(String::new(), |i| format!("?prevIndex={i}"));
        self.send(
            reqwest::Method::DELETE,
            key,
            &query,
            None,
            Some(REQUEST_TIMEOUT),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_percent_encoded() {
        assert_eq!(
            encode(r#"{"PublicIP":"1.2.3.4"}"#),
            "%7B%22PublicIP%22%3A%221.2.3.4%22%7D"
        );
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn nodes_parse_with_and_without_ttl() {
        let v: Value = serde_json::from_str(
            r#"{"key":"/n/subnets","dir":true,"nodes":[{"key":"/n/subnets/10.0.1.0-24","value":"{}","ttl":86385,"modifiedIndex":7},{"key":"/n/subnets/10.0.2.0-24","value":"{}","modifiedIndex":5}],"modifiedIndex":5}"#,
        )
        .unwrap();
        let n = Node::from_json(&v);
        assert!(n.dir);
        assert_eq!(n.nodes.len(), 2);
        assert_eq!(n.nodes[0].ttl, Some(86385));
        assert_eq!(n.nodes[1].ttl, None);
        assert_eq!(n.nodes[1].modified_index, 5);
    }
}
