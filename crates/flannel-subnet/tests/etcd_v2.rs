//! The etcd v2 keys API registry, auto-detection and migration, against a real etcd started
//! with `--enable-v2=true`.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::time::{Duration, Instant};

use common::{attrs, names, next, NET16, PREFIX};
use etcd_client::Client;
use flannel_lab::etcd::{ServerCert, TestEtcd};
use flannel_net::{Expiration, Lease, MacAddr, NetworkConfig, VxlanBackendData};
use flannel_subnet::etcd::{EtcdConfig, EtcdV3Store};
use flannel_subnet::etcd2::migrate::{migrate, MigrateReport};
use flannel_subnet::etcd2::{Cond, EtcdV2Store, V2Client};
use flannel_subnet::{detect_api, EtcdApi, SubnetManager};
use flannel_subnet::{LeaseManager, LeasePolicy, SubnetError};
use tokio::sync::{mpsc, watch};

/// A lease as upstream v0.16.1 wrote it (../shared/reference/v0.16.1-etcdv2/etcd-v2.txt).
const V016: &str = r#"{"PublicIP":"192.168.77.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"86:a7:d5:ad:6c:4c"}}"#;

fn etcd() -> TestEtcd {
    TestEtcd::start_with_args(&["--enable-v2=true"])
}

fn cfg(etcd: &TestEtcd) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        prefix: PREFIX.into(),
        ..EtcdConfig::default()
    }
}

type EtcdV2SubnetManager = LeaseManager<EtcdV2Store>;

fn v2_manager(
    cfg: EtcdConfig,
    previous: Option<ipnetwork::Ipv4Network>,
) -> Result<EtcdV2SubnetManager, SubnetError> {
    Ok(LeaseManager::new(
        EtcdV2Store::new(&cfg)?,
        LeasePolicy::default(),
        previous.map(flannel_net::SubnetKey::new),
    ))
}

async fn v3_manager(
    cfg: EtcdConfig,
    previous: Option<ipnetwork::Ipv4Network>,
) -> Result<LeaseManager<EtcdV3Store>, SubnetError> {
    let store = EtcdV3Store::new(&cfg).await?;
    Ok(LeaseManager::new(
        store,
        LeasePolicy::default(),
        previous.map(flannel_net::SubnetKey::new),
    ))
}

async fn migrate_v2_to_v3(cfg: &EtcdConfig, dry_run: bool) -> Result<MigrateReport, SubnetError> {
    migrate(
        &EtcdV2Store::new(cfg)?,
        &EtcdV3Store::new(cfg).await?,
        dry_run,
    )
    .await
}

fn v2(etcd: &TestEtcd) -> EtcdV2SubnetManager {
    v2_manager(cfg(etcd), None).unwrap()
}

fn key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// Writes the network config (v2 API) and acquires a lease for 192.168.77.`last`.
async fn config_and_lease(m: &EtcdV2SubnetManager, last: u8) -> (NetworkConfig, Lease) {
    put_config(m.store().client()).await;
    let config = m.get_network_config().await.unwrap();
    let lease = m.acquire_lease(&config, &attrs(last)).await.unwrap();
    (config, lease)
}

async fn put_config(c: &V2Client) {
    c.put(&format!("{PREFIX}/config"), NET16, None, Cond::Always)
        .await
        .unwrap();
}

#[tokio::test]
async fn v016_values_and_expiry_on_v2() {
    let etcd = etcd();
    let m = v2(&etcd);
    let c = m.store().client();
    put_config(c).await;
    c.put(&key("10.200.31.0/24"), V016, Some(86400), Cond::Always)
        .await
        .unwrap();
    let listed = m.list_leases().await.unwrap();
    let old = listed
        .iter()
        .find(|e| e.key == "10.200.31.0-24")
        .unwrap()
        .lease
        .as_ref()
        .unwrap();
    assert_eq!(
        old.attrs
            .vxlan_data()
            .unwrap()
            .unwrap()
            .vtep_mac
            .to_string(),
        "86:a7:d5:ad:6c:4c"
    );
    assert!(matches!(old.expiration, Expiration::At(_)));

    let (tx, mut rx) = mpsc::channel(16);
    let watcher = v2_manager(cfg(&etcd), None).unwrap();
    tokio::spawn(async move { watcher.watch_leases(tx).await });
    let first = next(&mut rx).await;
    assert!(first.snapshot);
    assert_eq!(names(&first), vec!["+10.200.31.0/24"]);
    // a lease with a 2 s TTL: added, then its expiry is a removal
    c.put(
        &key("10.200.240.0/24"),
        &attrs(40).to_json(),
        Some(2),
        Cond::Absent,
    )
    .await
    .unwrap();
    assert_eq!(names(&next(&mut rx).await), vec!["+10.200.240.0/24"]);
    assert_eq!(names(&next(&mut rx).await), vec!["-10.200.240.0/24"]);
}

#[tokio::test]
async fn tls_on_v2_verifies_both_sides_and_names_expired_certificates() {
    let certs = flannel_lab::tls::TestCerts::generate();
    let tls_cfg = |etcd: &TestEtcd, cert: &std::path::Path, key: &std::path::Path| EtcdConfig {
        ca_file: Some(certs.ca.clone()),
        cert_file: Some(cert.to_path_buf()),
        key_file: Some(key.to_path_buf()),
        ..cfg(etcd)
    };
    let etcd = TestEtcd::start_tls_with(&certs, ServerCert::Good, &["--enable-v2=true"]);
    assert!(etcd.endpoint().starts_with("https://"));
    let m = v2_manager(tls_cfg(&etcd, &certs.client_cert, &certs.client_key), None).unwrap();
    let (config, lease) = config_and_lease(&m, 1).await;
    assert!(config.is_compatible(lease.subnet));
    // an expired client certificate is named before anything is sent
    let err = v2_manager(
        tls_cfg(&etcd, &certs.expired_client_cert, &certs.expired_client_key),
        None,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("(--etcd-certfile) expired on 2021-01-01T00:00:00Z"),
        "{err}"
    );

    // a server whose certificate expired: the error says so
    let old = TestEtcd::start_tls_with(&certs, ServerCert::Expired, &["--enable-v2=true"]);
    let m = v2_manager(tls_cfg(&old, &certs.client_cert, &certs.client_key), None).unwrap();
    let err = m.get_network_config().await.unwrap_err().to_string();
    assert!(err.contains("certificate expired"), "{err}");
}

#[tokio::test]
async fn keeper_refreshes_the_ttl_and_recreates_a_deleted_key_on_v2() {
    let etcd = etcd();
    let short = LeasePolicy {
        ttl: Duration::from_secs(4),
        renew_margin: Duration::from_secs(3),
    };
    let m = LeaseManager::new(EtcdV2Store::new(&cfg(&etcd)).unwrap(), short, None);
    let (_, lease) = config_and_lease(&m, 1).await;
    let k = key(&lease.subnet.to_string());
    let (status_tx, _status) = watch::channel(lease.clone());
    let checker = v2_manager(cfg(&etcd), None).unwrap();
    tokio::spawn(async move { m.keep_lease(lease, status_tx).await });
    // alive after twice its TTL
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        checker.store().client().get(&k, false).await.is_ok(),
        "lease expired despite renewals"
    );
    // deleted by an operator: back at once
    checker.store().client().delete(&k, None).await.unwrap();
    let start = Instant::now();
    while checker.store().client().get(&k, false).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "not re-created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn auto_detection_in_all_three_states() {
    let etcd = etcd();
    assert_eq!(detect_api(&cfg(&etcd)).await.unwrap(), None);
    put_config(v2(&etcd).store().client()).await;
    assert_eq!(detect_api(&cfg(&etcd)).await.unwrap(), Some(EtcdApi::V2));
    etcd.ctl(&["put", &format!("{PREFIX}/config"), NET16]);
    assert_eq!(
        detect_api(&cfg(&etcd)).await.unwrap(),
        Some(EtcdApi::V3),
        "v3 wins"
    );
    // an etcd without the v2 API: v2 counts as empty
    let plain = TestEtcd::start();
    assert_eq!(detect_api(&cfg(&plain)).await.unwrap(), None);
}

#[tokio::test]
async fn migrate_copies_leases_and_reservations_then_v3_reuses_the_subnet() {
    let etcd = etcd();
    let c = v2(&etcd);
    let c = c.store().client();
    put_config(c).await;
    for (subnet, last) in [
        ("10.200.31.0/24", 3),
        ("10.200.34.0/24", 1),
        ("10.200.73.0/24", 2),
    ] {
        c.put(
            &key(subnet),
            &attrs(last).to_json(),
            Some(86400),
            Cond::Always,
        )
        .await
        .unwrap();
    }
    c.put(
        &key("10.200.5.0/24"),
        &attrs(5).to_json(),
        None,
        Cond::Always,
    )
    .await
    .unwrap();

    let dry = migrate_v2_to_v3(&cfg(&etcd), true).await.unwrap();
    assert_eq!(dry.copied, 5, "{:?}", dry.lines);
    assert_eq!(
        etcd.ctl(&["get", "--prefix", PREFIX]),
        "",
        "a dry run writes nothing"
    );

    let done = migrate_v2_to_v3(&cfg(&etcd), false).await.unwrap();
    assert_eq!((done.copied, done.conflicts), (5, 0), "{:?}", done.lines);
    let mut v3 = Client::connect([etcd.endpoint()], None).await.unwrap();
    let kv = v3.get(key("10.200.34.0/24"), None).await.unwrap();
    let kv = kv.kvs().first().unwrap();
    assert_eq!(kv.value_str().unwrap(), attrs(1).to_json());
    let ttl = v3.lease_time_to_live(kv.lease(), None).await.unwrap().ttl();
    assert!(ttl > 86_000 && ttl <= 86_400, "{ttl}");
    let reservation = v3.get(key("10.200.5.0/24"), None).await.unwrap();
    assert_eq!(
        reservation.kvs().first().unwrap().lease(),
        0,
        "a reservation stays one"
    );

    let again = migrate_v2_to_v3(&cfg(&etcd), false).await.unwrap();
    assert_eq!(
        (again.copied, again.unchanged),
        (0, 5),
        "idempotent: {:?}",
        again.lines
    );

    // a node restarted on v3 keeps its subnet
    let m3 = v3_manager(cfg(&etcd), None).await.unwrap();
    let config = m3.get_network_config().await.unwrap();
    assert_eq!(
        m3.acquire_lease(&config, &attrs(1))
            .await
            .unwrap()
            .subnet
            .to_string(),
        "10.200.34.0/24"
    );

    // v3 holding another config: refused
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.99.0.0/16"}"#,
    ]);
    let err = migrate_v2_to_v3(&cfg(&etcd), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds a different network config"), "{err}");
}

#[tokio::test]
async fn migrate_refuses_an_invalid_config_and_skips_keys_that_are_no_lease() {
    let etcd = etcd();
    let c = v2(&etcd).store().client().clone();
    c.put(&format!("{PREFIX}/config"), "{bad json", None, Cond::Always)
        .await
        .unwrap();
    let err = migrate_v2_to_v3(&cfg(&etcd), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not valid"), "{err}");
    assert!(err.contains("fix it there before migrating"), "{err}");
    assert_eq!(etcd.ctl(&["get", "--prefix", PREFIX]), "", "nothing copied");

    put_config(&c).await;
    c.put(
        &key("10.200.7.0/24"),
        &attrs(7).to_json(),
        Some(600),
        Cond::Always,
    )
    .await
    .unwrap();
    c.put(&key("10.200.8.0/24"), "garbage", Some(600), Cond::Always)
        .await
        .unwrap();
    c.put(
        &format!("{PREFIX}/subnets/not-a-subnet"),
        "{}",
        None,
        Cond::Always,
    )
    .await
    .unwrap();
    let done = migrate_v2_to_v3(&cfg(&etcd), false).await.unwrap();
    assert_eq!(
        (done.copied, done.skipped),
        (2, 2),
        "the config and one lease copied: {:?}",
        done.lines
    );
    let warnings: Vec<&String> = done
        .lines
        .iter()
        .filter(|l| l.starts_with("warning: skipped"))
        .collect();
    assert_eq!(warnings.len(), 2, "{:?}", done.lines);
    assert!(warnings
        .iter()
        .any(|l| l.contains("10.200.8.0-24") && l.contains("not a lease")));
    assert!(warnings.iter().any(|l| l.contains("not-a-subnet")));
    assert_eq!(
        etcd.ctl(&[
            "get",
            "--prefix",
            "--keys-only",
            &format!("{PREFIX}/subnets/")
        ])
        .lines()
        .filter(|l| !l.is_empty())
        .count(),
        1
    );
}

/// Dual-stack leases on the v2 keys API (keys with `&`, as upstream v0.16 writes them),
/// then carried to v3 by the migration, key and value unchanged.
#[tokio::test]
async fn dual_stack_leases_on_v2_and_their_migration_to_v3() {
    const DUAL: &str = r#"{"Network":"10.200.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:200::/56","Backend":{"Type":"vxlan"}}"#;
    let etcd = etcd();
    let m = v2(&etcd);
    m.store()
        .client()
        .put(&format!("{PREFIX}/config"), DUAL, None, Cond::Always)
        .await
        .unwrap();
    let config = m.get_network_config().await.unwrap();
    let dual = |last: u8| {
        let v6 = VxlanBackendData {
            vni: Some(1),
            vtep_mac: MacAddr([0x0e, 0x58, 0, 0, 0, last]),
        };
        attrs(last).with_ipv6(
            format!("fd77::{last}").parse().unwrap(),
            Some(v6.to_value()),
        )
    };
    let a = m.acquire_lease(&config, &dual(1)).await.unwrap();
    let b = m.acquire_lease(&config, &dual(2)).await.unwrap();
    assert!(a.ipv6_subnet.is_some() && b.ipv6_subnet.is_some());
    assert_ne!(a.ipv6_subnet, b.ipv6_subnet);
    // a restart reuses it
    assert_eq!(
        m.acquire_lease(&config, &dual(1)).await.unwrap().key(),
        a.key()
    );
    let listed: Vec<String> = m
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert!(listed.contains(&a.key().to_string()), "{listed:?}");

    let done = migrate_v2_to_v3(&cfg(&etcd), false).await.unwrap();
    assert_eq!(
        done.copied, 3,
        "the config and two leases: {:?}",
        done.lines
    );
    let mut v3 = Client::connect([etcd.endpoint()], None).await.unwrap();
    let got = v3
        .get(format!("{PREFIX}/subnets/{}", a.key()), None)
        .await
        .unwrap();
    assert_eq!(
        got.kvs().first().unwrap().value_str().unwrap(),
        dual(1).to_json()
    );
    // and a v3 manager reuses the same two subnets
    let m3 = v3_manager(cfg(&etcd), None).await.unwrap();
    assert_eq!(
        m3.acquire_lease(&config, &dual(2)).await.unwrap().key(),
        b.key()
    );
}
