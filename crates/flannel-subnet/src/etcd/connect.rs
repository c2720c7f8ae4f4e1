//! Connecting to etcd: endpoints, TLS (CA, client certificate and key, via rustls), basic auth.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
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
    /// Parses `--etcd-endpoints`: a comma-delimited list.
    pub fn parse_endpoints(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect()
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
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
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
            if identity.is_some() || self.ca_file.is_some() {
                warn!("etcd certificate files are given but the endpoints are http://: they are not used");
            } else {
                // upstream's warning, word for word
                warn!("no certificate provided: connecting to etcd with http. This is insecure");
            }
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

    /// A client; lazy unless a username is set (then it logs in now).
    pub async fn connect(&self) -> Result<Client, SubnetError> {
        let opts = self.connect_options()?;
        Client::connect(&self.endpoints, Some(opts))
            .await
            .map_err(|e| {
                crate::StoreError::transient(
                    format!("connecting to etcd at {}", self.endpoints.join(",")),
                    e.to_string(),
                )
                .into()
            })
    }
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
            EtcdConfig::parse_endpoints("http://a:2379, http://b:2379,,"),
            vec!["http://a:2379".to_string(), "http://b:2379".to_string()]
        );
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
