//! The few Kubernetes API calls flannel makes, over kube-rs's client (which reads kubeconfig
//! files and the in-cluster service account as client-go does: tokens, client certificates,
//! CA): get a Node or a Pod, list Nodes (streamed), watch Nodes, patch a Node's status.
//! Requests are typed by the small structs of [`super::node`], not by whole Node objects.

use std::path::PathBuf;
use std::time::Duration;

use futures::{Stream, StreamExt};
use http::Request;
use kube::core::WatchEvent;
use serde::Deserialize;
use serde_json::Value;
use tracing::debug;

use super::annotations::Annotations;
use super::node::{Node, NodeObject};
use super::node_list::NodeListReader;
use super::proto;
use crate::error::{ErrorKind, StoreError};

/// Where the API server is and how to authenticate (upstream: `-kube-api-url`,
/// `-kubeconfig-file`, else the in-cluster service account).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSettings {
    pub api_url: Option<String>,
    pub kubeconfig: Option<PathBuf>,
}

impl KubeSettings {
    /// Whether these settings can work at all, without a request: the kubeconfig file
    /// readable, or the in-cluster service account there when neither flag is set.
    pub fn check(&self) -> Result<(), String> {
        match (&self.kubeconfig, &self.api_url) {
            (Some(path), _) => kube::config::Kubeconfig::read_from(path)
                .map(|_| ())
                .map_err(|e| format!("-kubeconfig-file {}: {e}", path.display())),
            (None, Some(url)) => url
                .parse::<http::Uri>()
                .map(|_| ())
                .map_err(|e| format!("-kube-api-url {url:?}: {e}")),
            (None, None) => kube::Config::incluster().map(|_| ()).map_err(|e| {
                format!(
                    "neither -kube-api-url nor -kubeconfig-file is set, and this is not a pod with a service account: {e}"
                )
            }),
        }
    }
}

/// A request that failed: the HTTP code when the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Option<u16>,
    pub message: String,
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        self.code == Some(404)
    }

    /// `410 Gone`: the resource version is too old to watch from; list again.
    pub fn is_gone(&self) -> bool {
        self.code == Some(410)
    }

    /// Whether waiting may help: no answer, a server error, throttling, a timeout.
    pub fn is_transient(&self) -> bool {
        match self.code {
            None => true,
            Some(c) => c >= 500 || c == 429 || c == 408,
        }
    }

    pub fn into_store_error(self, context: impl Into<String>) -> StoreError {
        StoreError {
            kind: if self.is_transient() {
                ErrorKind::Transient
            } else {
                ErrorKind::Permanent
            },
            context: context.into(),
            message: self.message,
        }
    }

    fn from_kube(e: kube::Error) -> ApiError {
        match e {
            // a body that is no Kubernetes Status (a web server's page): not the API
            kube::Error::Api(status) if status.message.trim_start().starts_with('<') => ApiError {
                code: Some(status.code),
                message: format!(
                    "HTTP {} and no answer of a Kubernetes API (it begins {:?}): check -kube-api-url or the kubeconfig's server",
                    status.code,
                    status
                        .message
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .chars()
                        .take(40)
                        .collect::<String>()
                ),
            },
            kube::Error::Api(status) => ApiError {
                code: Some(status.code),
                message: if status.message.is_empty() {
                    format!("{} ({})", status.reason, status.code)
                } else {
                    status.message.clone()
                },
            },
            other => {
                let mut message = crate::error::reason(&other);
                if message.contains("corrupt message") || message.contains("InvalidContentType") {
                    message += " (a TLS handshake with a server that does not speak TLS there: http:// or https:// in the URL?)";
                }
                ApiError {
                    code: None,
                    message,
                }
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How long a request other than a watch may take (the Node list: until its first bytes, and
/// between two of its chunks).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The server ends a watch after this long (and sends a bookmark before); a watch that has
/// been silent for longer than this plus a margin is dead (a partition sends no RST).
pub const WATCH_SECONDS: u64 = 290;

/// A connected client.
#[derive(Clone)]
pub struct KubeApi {
    client: kube::Client,
    /// For messages: the API server's URL.
    pub server: String,
}

#[derive(Deserialize)]
struct PodObject {
    #[serde(default)]
    spec: PodSpec,
}

#[derive(Deserialize, Default)]
struct PodSpec {
    #[serde(rename = "nodeName", default)]
    node_name: String,
}

fn request(
    method: &str,
    path: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
) -> Request<Vec<u8>> {
    let mut r = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        r = r.header(http::header::CONTENT_TYPE, ct);
    }
    // the builder takes only a method and a path made here: it cannot fail
    r.body(body).unwrap_or_default()
}

/// A path element or query value, percent-escaped but for RFC 3986's unreserved characters
/// (node and pod names are DNS names; this keeps a bad one from reaching another URL).
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl KubeApi {
    /// Reads the settings (kubeconfig file, in-cluster account) and makes the client; no
    /// request yet. An unreadable setting is an error naming it.
    pub async fn connect(settings: &KubeSettings) -> Result<KubeApi, String> {
        let mut config = match (&settings.kubeconfig, &settings.api_url) {
            (Some(path), _) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("-kubeconfig-file {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| format!("-kubeconfig-file {}: {e}", path.display()))?
            }
            (None, Some(url)) => kube::Config::new(
                url.parse()
                    .map_err(|e| format!("-kube-api-url {url:?}: {e}"))?,
            ),
            (None, None) => kube::Config::incluster().map_err(|e| {
                format!(
                    "neither -kube-api-url nor -kubeconfig-file is set, and this is not a pod with a service account: {e}"
                )
            })?,
        };
        if let (Some(_), Some(url)) = (&settings.kubeconfig, &settings.api_url) {
            // client-go: the master URL overrides the kubeconfig's server
            config.cluster_url = url
                .parse()
                .map_err(|e| format!("-kube-api-url {url:?}: {e}"))?;
        }
        config.connect_timeout = Some(Duration::from_secs(5));
        // a watch is silent for minutes; each other request has its own timeout
        config.read_timeout = None;
        let server = config.cluster_url.to_string();
        let client = super::transport::client(config)?;
        Ok(KubeApi { client, server })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<Vec<u8>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request::<T>(req)).await {
            Ok(r) => r.map_err(ApiError::from_kube),
            Err(_) => Err(ApiError {
                code: None,
                message: format!("no answer from {} within {REQUEST_TIMEOUT:?}", self.server),
            }),
        }
    }

    /// One Node; `None` when it does not exist.
    pub async fn get_node(&self, name: &str) -> Result<Option<NodeObject>, ApiError> {
        let path = format!("/api/v1/nodes/{}", escape(name));
        match self.call(request("GET", &path, vec![], None)).await {
            Ok(node) => Ok(Some(node)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The node a pod runs on (upstream: `POD_NAME` / `POD_NAMESPACE`).
    pub async fn pod_node_name(&self, namespace: &str, pod: &str) -> Result<String, ApiError> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}",
            escape(namespace),
            escape(pod)
        );
        let p: PodObject = self.call(request("GET", &path, vec![], None)).await?;
        Ok(p.spec.node_name)
    }

    /// Every Node, each handed to `each` as it is read, and the resource version to watch
    /// from. The list comes from the API server's watch cache (`resourceVersion=0`, as
    /// upstream's informer asks: no read of etcd, no pages), in protobuf where the server
    /// offers it (a tenth of JSON's time at 5 000 Nodes, see [`proto`]), and is decoded as it
    /// arrives: one Node's bytes at a time are held, never the list.
    pub async fn list_nodes(
        &self,
        names: &Annotations,
        mut each: impl FnMut(Node),
    ) -> Result<String, ApiError> {
        use http_body_util::BodyExt;

        let timeout = |what: &str| ApiError {
            code: None,
            message: format!(
                "no answer from {} within {REQUEST_TIMEOUT:?} ({what})",
                self.server
            ),
        };
        let bad = |e: String| ApiError {
            code: None,
            message: format!("reading the Node list from {}: {e}", self.server),
        };
        let mut req = request("GET", "/api/v1/nodes?resourceVersion=0", vec![], None);
        req.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/vnd.kubernetes.protobuf, application/json"),
        );
        let response = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.client.send(req.map(kube::client::Body::from)),
        )
        .await
        .map_err(|_| timeout("listing Nodes"))?
        .map_err(ApiError::from_kube)?;
        let status = response.status();
        let protobuf = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(proto::CONTENT_TYPE));
        debug!(
            "the Node list comes as {}",
            if protobuf { "protobuf" } else { "JSON" }
        );
        let mut body = response.into_body();
        if !status.is_success() {
            let text = tokio::time::timeout(REQUEST_TIMEOUT, body.collect_bytes())
                .await
                .map_err(|_| timeout("reading an error"))?
                .map_err(ApiError::from_kube)?;
            return Err(error_of(status.as_u16(), &text));
        }
        let mut reader = NodeListReader::new(protobuf);
        loop {
            let frame = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
                .await
                .map_err(|_| timeout("in the middle of the Node list"))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| bad(crate::error::reason(&e)))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            reader.feed(&data, names, &mut each).map_err(bad)?;
        }
        reader.finish().map_err(bad)
    }

    /// The Node changes after `resource_version`, with bookmarks; ends when the server
    /// closes the watch (after [`WATCH_SECONDS`]).
    pub async fn watch_nodes(
        &self,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<WatchEvent<NodeObject>, ApiError>> + use<>, ApiError>
    {
        let path = format!(
            "/api/v1/nodes?watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
            escape(resource_version)
        );
        let connect = self
            .client
            .request_events::<NodeObject>(request("GET", &path, vec![], None));
        let stream = match tokio::time::timeout(REQUEST_TIMEOUT, connect).await {
            Ok(r) => r.map_err(ApiError::from_kube)?,
            Err(_) => {
                return Err(ApiError {
                    code: None,
                    message: format!("no answer from {} within {REQUEST_TIMEOUT:?}", self.server),
                })
            }
        };
        Ok(stream.map(|r| r.map_err(ApiError::from_kube)).boxed())
    }

    /// A strategic merge patch of the Node's status subresource (upstream patches both the
    /// annotations and the conditions there).
    pub async fn patch_node_status(&self, name: &str, patch: &Value) -> Result<(), ApiError> {
        let path = format!("/api/v1/nodes/{}/status", escape(name));
        let _: Value = self
            .call(request(
                "PATCH",
                &path,
                patch.to_string().into_bytes(),
                Some("application/strategic-merge-patch+json"),
            ))
            .await?;
        Ok(())
    }
}

/// An error answer's body (a `Status` in JSON or protobuf, or anything else) in words.
fn error_of(code: u16, body: &[u8]) -> ApiError {
    #[derive(Deserialize)]
    struct Status {
        #[serde(default)]
        message: String,
        #[serde(default)]
        reason: String,
    }
    let message = match serde_json::from_slice::<Status>(body) {
        Ok(s) if !s.message.is_empty() => s.message,
        Ok(s) if !s.reason.is_empty() => format!("{} ({code})", s.reason),
        _ => proto::status_message(body).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.starts_with('<') {
                format!(
                    "HTTP {code} and no answer of a Kubernetes API (it begins {:?}): check -kube-api-url or the kubeconfig's server",
                    text.chars().take(40).collect::<String>()
                )
            } else if text.is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code}: {}", text.chars().take(200).collect::<String>())
            }
        }),
    };
    ApiError {
        code: Some(code),
        message,
    }
}
