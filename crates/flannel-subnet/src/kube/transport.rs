//! The connection to the API server: HTTP/2 where the server offers it (over TLS, as
//! client-go speaks to it), every request on one TCP connection, pinged while a request (the
//! Node watch) is open and nothing has been read for [`PING_AFTER`].
//!
//! Why the pings: a partition sends no RST, so the Node watch's connection outlives it, and
//! the events the partition swallowed come only when the server's TCP sends them again, its
//! retransmission timer backing off from 0.2 s to 25 s and more apart (a 15 s partition left
//! an HTTP/1.1 watch stalled for 11 s more; the chaos run's finding, issue 31). A ping's
//! answer is queued behind those lost bytes, so an answer missing for [`PONG_WITHIN`] ends
//! the connection, and the watch is taken up again on a new one from its resource version
//! (no list). A quiet watch thus costs a ping every [`PING_AFTER`], a 17-byte frame the API
//! server answers without a handler; a busy one none.
//!
//! kube-rs's own client speaks HTTP/1.1 only, so this builds the same stack (TLS settings,
//! authentication, headers, kube-rs's retry of 429/503/504) over a hyper client with both
//! versions. A plain `http://` server and a proxy keep HTTP/1.1 (no pings: the watch's
//! silence bound, [`super::client::WATCH_SECONDS`], is their liveness check).

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// How long a connection with an open request may go without reading anything before it is
/// pinged.
pub const PING_AFTER: Duration = Duration::from_secs(3);
/// How long the answer to a ping may take before the connection counts as dead.
pub const PONG_WITHIN: Duration = Duration::from_secs(2);

/// A client for `config`: HTTP/2 with pings where the server speaks it.
pub(super) fn client(config: kube::Config) -> Result<kube::Client, String> {
    let server = config.cluster_url.to_string();
    let failed = |e: kube::Error| format!("Kubernetes API client for {server}: {e}");
    if config.proxy_url.is_some() {
        // kube-rs's own stack says what it makes of a proxy
        return kube::Client::try_from(config).map_err(failed);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let tls = config.rustls_client_config().map_err(failed)?;
    let mut https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls_pki_types::ServerName::try_from(name.clone())
            .map_err(|e| format!("tls-server-name {name:?}: {e}"))?;
        https = https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = https.enable_http1().enable_http2().wrap_connector(http);
    let hyper: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(PING_AFTER)
            .http2_keep_alive_timeout(PONG_WITHIN)
            .build(https);
    let auth = config.auth_layer().map_err(failed)?;
    let headers = config.extra_headers_layer().map_err(failed)?;
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(auth)
        .layer(headers)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(ClientBuilder::new(service, config.default_namespace).build())
}
