//! A throwaway certificate authority with a server certificate for 127.0.0.1 (and the lab's
//! etcd address) and a client
//! certificate, written as PEM files into a temporary directory.

use std::fs;
use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tempfile::TempDir;

pub struct TestCerts {
    _dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate signed by another CA, which the server must refuse.
    pub foreign_client_cert: PathBuf,
    pub foreign_client_key: PathBuf,
    /// That other CA, which does not sign the server's certificate.
    pub foreign_ca: PathBuf,
    /// A client certificate of our CA that expired in 2021.
    pub expired_client_cert: PathBuf,
    pub expired_client_key: PathBuf,
    /// A server certificate of our CA for 127.0.0.1 that expired in 2021.
    pub expired_server_cert: PathBuf,
    pub expired_server_key: PathBuf,
    /// A valid server certificate of our CA for etcd.example only (not 127.0.0.1).
    pub wrong_name_server_cert: PathBuf,
    pub wrong_name_server_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    leaf_with(issuer, name, sans, usage, |_| {})
}

fn leaf_with(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    adjust: impl FnOnce(&mut CertificateParams),
) -> (String, String) {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    adjust(&mut params);
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

impl TestCerts {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            fs::write(&path, pem).expect("write PEM");
            path
        };
        let authority = ca("flanneld-rs test CA");
        let (server_cert, server_key) = leaf(
            &authority,
            "etcd",
            // and the lab's etcd address, for a TLS etcd in the lab
            &["127.0.0.1", "localhost", crate::lab::ETCD_IP],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &authority,
            "flanneld",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        // valid during 2020 only
        let in_2020 = |p: &mut CertificateParams| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        };
        let (expired_cert, expired_key) = leaf_with(
            &authority,
            "flanneld-old",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            in_2020,
        );
        let (expired_server_cert, expired_server_key) = leaf_with(
            &authority,
            "etcd-old",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            in_2020,
        );
        let (wrong_name_cert, wrong_name_key) = leaf(
            &authority,
            "etcd-elsewhere",
            &["etcd.example"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let foreign = ca("some other CA");
        let (foreign_cert, foreign_key) = leaf(
            &foreign,
            "intruder",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestCerts {
            ca: write("ca.pem", &authority.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            foreign_client_cert: write("foreign.pem", &foreign_cert),
            foreign_client_key: write("foreign-key.pem", &foreign_key),
            foreign_ca: write("foreign-ca.pem", &foreign.pem()),
            expired_client_cert: write("expired.pem", &expired_cert),
            expired_client_key: write("expired-key.pem", &expired_key),
            expired_server_cert: write("expired-server.pem", &expired_server_cert),
            expired_server_key: write("expired-server-key.pem", &expired_server_key),
            wrong_name_server_cert: write("wrong-name.pem", &wrong_name_cert),
            wrong_name_server_key: write("wrong-name-key.pem", &wrong_name_key),
            _dir: dir,
        }
    }
}
