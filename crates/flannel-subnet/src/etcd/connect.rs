//! Connecting to etcd: endpoints, TLS (CA, client certificate and key, via rustls), basic auth.

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tracing::warn;

use crate::SubnetError;

/// How to reach etcd and where flannel's keys live; the `--etcd-*` flags.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Default `/coreos.com/network`.
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec![
                "http://127.0.0.1:4001".into(),
                "http://127.0.0.1:2379".into(),
            ],
            prefix: "/coreos.com/network".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        }
    }
}

impl EtcdConfig {
    /// Parses `--etcd-endpoints`: a comma-delimited list of `http://host:port` or
    /// `https://host:port` (a trailing path is kept). `host:port` without a scheme is http,
    /// as upstream's client takes it. An endpoint that can never work is an error naming it.
    pub fn parse_endpoints(list: &str) -> Result<Vec<String>, String> {
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_endpoint)
            .collect::<Result<_, _>>()?;
        if endpoints.is_empty() {
            return Err("no endpoint given".into());
        }
        Ok(endpoints)
    }

    /// Says, once per process, that the connection is not encrypted (upstream's warning,
    /// word for word), or that certificate files go unused.
    pub fn insecure_warning(&self) {
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            return;
        }
        if self.cert_file.is_some() || self.key_file.is_some() || self.ca_file.is_some() {
            warn!(
                "etcd certificate files are given but the endpoints are http://: they are not used"
            );
        } else {
            warn!("no certificate provided: connecting to etcd with http. This is insecure");
        }
    }

    /// Checks the settings and builds the client options, reading the certificate files.
    /// Nothing is sent: the connection is made on the first request.
    pub fn connect_options(&self) -> Result<ConnectOptions, SubnetError> {
        if self.endpoints.is_empty() {
            return Err(SubnetError::Setup("no etcd endpoints given".into()));
        }
        let mut https = 0;
        for e in &self.endpoints {
            if e.starts_with("https://") {
                https += 1;
            } else if !e.starts_with("http://") {
                return Err(SubnetError::Setup(format!(
                    "etcd endpoint {e:?} must start with http:// or https://"
                )));
            }
        }
        if https != 0 && https != self.endpoints.len() {
            return Err(SubnetError::Setup(
                "etcd endpoints mix http:// and https://; use one scheme for all".into(),
            ));
        }
        let (ping, answer) = super::members::KEEPALIVE;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(super::members::CONNECT_TIMEOUT)
            .with_timeout(super::members::REQUEST_TIMEOUT)
            .with_keep_alive(ping, answer)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        match (&self.username, &self.password) {
            (Some(user), password) if !user.is_empty() => {
                opts = opts.with_user(user.clone(), password.clone().unwrap_or_default());
            }
            _ => {}
        }
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((
                (cert, read_pem(cert, "certificate (--etcd-certfile)")?),
                (key, read_pem(key, "key (--etcd-keyfile)")?),
            )),
            (None, None) => None,
            _ => {
                return Err(SubnetError::Setup(
                    "a client certificate needs both --etcd-certfile and --etcd-keyfile".into(),
                ))
            }
        };
        if https == 0 {
            return Ok(opts);
        }
        let Some(ca) = &self.ca_file else {
            return Err(SubnetError::Setup(
                "https etcd endpoints need the CA that signed etcd's certificate (--etcd-cafile)"
                    .into(),
            ));
        };
        let ca_pem = read_pem(ca, "CA (--etcd-cafile)")?;
        check_dates(ca, &ca_pem, false)?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some(((cert, cert_pem), (key, key_pem))) = identity {
            check_dates(cert, &cert_pem, true)?;
            check_key_pair((cert, &cert_pem), (key, &key_pem))?;
            tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
        }
        Ok(opts.with_tls(tls))
    }

    /// The members to talk to, one client each, with failover (see [`super::members`]).
    /// Credentials are dropped with a warning for an etcd without authentication, as
    /// upstream's client does.
    pub(crate) fn members(&self) -> Result<super::members::Members, SubnetError> {
        let options = self.connect_options()?;
        let anonymous = self
            .username
            .is_some()
            .then(|| {
                EtcdConfig {
                    username: None,
                    password: None,
                    ..self.clone()
                }
                .connect_options()
            })
            .transpose()?;
        Ok(super::members::Members::new(
            &self.endpoints,
            options,
            anonymous,
        ))
    }
}

/// One endpoint, checked and with a scheme.
fn parse_endpoint(e: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{e:?}: {why}"));
    let (scheme, rest) = match e.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
            (s.to_ascii_lowercase(), rest)
        }
        Some((s, _)) => return bad(&format!("scheme {s}:// is neither http:// nor https://")),
        // upstream's client reads `host:port` as plain http; a bare word is a typo
        None if e.contains(':') => ("http".to_string(), e),
        None => return bad("expected http://host:port, https://host:port or host:port"),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return bad("unclosed [ in the host"),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("no host");
    }
    if let Some(port) = port {
        match port.parse::<u32>() {
            Ok(1..=65535) if port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return bad(&format!("port {port:?} is not a number from 1 to 65535")),
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Refuses a client certificate (the first of `--etcd-certfile`, when `client`) that is
/// expired or not yet valid: etcd would refuse it during the handshake with a less telling
/// error. Other certificates (a CA bundle may hold old CAs beside the one in use, a chain
/// intermediates) only get a warning naming them.
fn check_dates(path: &Path, pem: &[u8], client: bool) -> Result<(), SubnetError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let now = std::time::SystemTime::now();
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let validity = cert
            .ok()
            .and_then(|der| flannel_net::cert_validity::of_der(&der));
        let Some(problem) = validity.and_then(|v| v.problem_at(now)) else {
            continue;
        };
        if client && i == 0 {
            return Err(SubnetError::Setup(format!(
                "the etcd client certificate {} (--etcd-certfile) {problem}: renew it",
                path.display()
            )));
        }
        warn!("certificate {} in {} {problem}", i + 1, path.display());
    }
    Ok(())
}

/// Refuses a key that does not belong to the client certificate (a common slip when
/// certificates are renewed): the handshake would fail with a signature error.
fn check_key_pair(cert: (&Path, &[u8]), key: (&Path, &[u8])) -> Result<(), SubnetError> {
    use rustls::crypto::ring::default_provider;
    use rustls::sign::CertifiedKey;
    use rustls::{Error, InconsistentKeys};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_path, key_path) = (cert.0.display(), key.0.display());
    let chain = CertificateDer::pem_slice_iter(cert.1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SubnetError::Setup(format!("etcd certificate {cert_path}: {e}")))?;
    if chain.is_empty() {
        return Err(SubnetError::Setup(format!(
            "etcd certificate {cert_path} (--etcd-certfile) holds no certificate"
        )));
    }
    let private = PrivateKeyDer::from_pem_slice(key.1)
        .map_err(|e| SubnetError::Setup(format!("etcd key {key_path} (--etcd-keyfile): {e}")))?;
    match CertifiedKey::from_der(chain, private, &default_provider()) {
        Ok(_) => Ok(()),
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(SubnetError::Setup(
            format!("the etcd key {key_path} (--etcd-keyfile) does not belong to the certificate {cert_path} (--etcd-certfile)"),
        )),
        Err(e) => Err(SubnetError::Setup(format!(
            "etcd client certificate {cert_path} and key {key_path}: {e}"
        ))),
    }
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, SubnetError> {
    let bytes = std::fs::read(path).map_err(|e| {
        SubnetError::Setup(format!(
            "failed to read etcd {what} {}: {e}",
            path.display()
        ))
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(SubnetError::Setup(format!(
            "etcd {what} {} is not in PEM format",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup_err(cfg: &EtcdConfig) -> String {
        match cfg.connect_options() {
            Err(SubnetError::Setup(msg)) => msg,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn endpoints_list_is_comma_delimited() {
        assert_eq!(
            EtcdConfig::parse_endpoints("http://a:2379, http://b:2379,,").unwrap(),
            vec!["http://a:2379".to_string(), "http://b:2379".to_string()]
        );
    }

    #[test]
    fn endpoints_without_scheme_are_http_and_bad_ones_are_named() {
        let ok = |list: &str| EtcdConfig::parse_endpoints(list).unwrap();
        assert_eq!(ok("10.0.0.1:2379"), vec!["http://10.0.0.1:2379"]);
        assert_eq!(
            ok("HTTPS://etcd.example:2379/"),
            vec!["https://etcd.example:2379/"]
        );
        assert_eq!(ok("http://[fd00::1]:2379"), vec!["http://[fd00::1]:2379"]);
        assert_eq!(ok("http://etcd"), vec!["http://etcd"]);
        for (list, why) in [
            ("garbage", "expected http://host:port"),
            ("ftp://10.0.0.1:2379", "scheme ftp://"),
            ("http://10.0.0.1:99999", "port \"99999\""),
            ("http://10.0.0.1:65536", "port \"65536\""),
            ("http://10.0.0.1:abc", "port \"abc\""),
            ("http://10.0.0.1:", "port \"\""),
            ("10.0.0.1:0", "port \"0\""),
            ("http://:2379", "no host"),
            ("http://[fd00::1:2379", "unclosed ["),
            ("http://a:1,http://b:x", "\"http://b:x\""),
            (" , ", "no endpoint"),
        ] {
            let err = EtcdConfig::parse_endpoints(list).unwrap_err();
            assert!(err.contains(why), "{list}: {err}");
        }
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let mut cfg = EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            ..EtcdConfig::default()
        };
        assert!(setup_err(&cfg).contains("must start with http:// or https://"));
        cfg.endpoints = vec!["https://127.0.0.1:2379".into()];
        assert!(setup_err(&cfg).contains("--etcd-cafile"));
        cfg.ca_file = Some("/nonexistent/ca.pem".into());
        let msg = setup_err(&cfg);
        assert!(
            msg.contains("failed to read etcd CA (--etcd-cafile) /nonexistent/ca.pem"),
            "{msg}"
        );
        cfg.cert_file = Some("/nonexistent/cert.pem".into());
        assert!(setup_err(&cfg).contains("both --etcd-certfile and --etcd-keyfile"));
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        cfg.cert_file = None;
        cfg.ca_file = Some(junk);
        assert!(setup_err(&cfg).contains("is not in PEM format"));
        cfg.endpoints = vec![];
        assert!(setup_err(&cfg).contains("no etcd endpoints"));
    }
}
