//! The etcd v3 registry against a real etcd (Debian's etcd-server, started per test).
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{names, next, NET16, PREFIX};
use etcd_client::{Client, GetOptions, PutOptions};
use flannel_lab::etcd::{ServerCert, TestEtcd};
use flannel_lab::proxy::TcpProxy;
use flannel_lab::tls::TestCerts;
use flannel_net::{Expiration, Lease, LeaseAttrs, MacAddr, NetworkConfig, VxlanBackendData};
use flannel_subnet::etcd::{EtcdConfig, EtcdV3Store};
use flannel_subnet::{LeaseEvent, SubnetError, SubnetManager};
use flannel_subnet::{LeaseManager, LeasePolicy};
use ipnetwork::Ipv4Network;
use tokio::sync::{mpsc, watch};

fn cfg(endpoint: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        prefix: PREFIX.into(),
        ..EtcdConfig::default()
    }
}

async fn client(etcd: &TestEtcd) -> Client {
    Client::connect([etcd.endpoint()], None).await.unwrap()
}

async fn put_config(etcd: &TestEtcd, json: &str) {
    client(etcd)
        .await
        .put(format!("{PREFIX}/config"), json, None)
        .await
        .unwrap();
}

type EtcdSubnetManager = LeaseManager<EtcdV3Store>;

async fn v3_manager(
    cfg: EtcdConfig,
    previous: Option<ipnetwork::Ipv4Network>,
) -> Result<EtcdSubnetManager, SubnetError> {
    let store = EtcdV3Store::new(&cfg).await?;
    Ok(LeaseManager::new(
        store,
        LeasePolicy::default(),
        previous.map(flannel_net::SubnetKey::new),
    ))
}

async fn manager(etcd: &TestEtcd, previous: Option<&str>) -> EtcdSubnetManager {
    v3_manager(cfg(&etcd.endpoint()), previous.map(|p| p.parse().unwrap()))
        .await
        .unwrap()
}

fn attrs(ip: [u8; 4]) -> LeaseAttrs {
    let data = VxlanBackendData {
        vni: Some(1),
        vtep_mac: MacAddr([0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]]),
    };
    LeaseAttrs::vxlan(Ipv4Addr::from(ip), &data)
}

/// Reads the network config and acquires a lease for PublicIP `ip`.
async fn config_and_lease(m: &EtcdSubnetManager, ip: [u8; 4]) -> (NetworkConfig, Lease) {
    let config = m.get_network_config().await.unwrap();
    let lease = lease_for(m, &config, ip).await;
    (config, lease)
}

async fn lease_for(m: &EtcdSubnetManager, config: &NetworkConfig, ip: [u8; 4]) -> Lease {
    m.acquire_lease(config, &attrs(ip)).await.unwrap()
}

/// (value, etcd lease id) stored at a subnet key.
async fn stored(etcd: &TestEtcd, subnet: Ipv4Network) -> Option<(String, i64)> {
    let key = format!("{PREFIX}/subnets/{}-{}", subnet.ip(), subnet.prefix());
    let resp = client(etcd).await.get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| (kv.value_str().unwrap().to_string(), kv.lease()))
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn config_not_found_then_found_and_invalid() {
    let etcd = TestEtcd::start();
    let m = manager(&etcd, None).await;
    let err = m.get_network_config().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "flannel config not found in etcd store. Did you create your config using etcdv3 API?"
    );
    put_config(&etcd, NET16).await;
    let c = m.get_network_config().await.unwrap();
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 200, 1, 0));
    assert_eq!(c.backend_type, "vxlan");
    put_config(&etcd, r#"{"Network":"10.200.0.0/29"}"#).await;
    let err = m.get_network_config().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "network is too small. Minimum useful network prefix is /28"
    );
    assert!(m.name().contains("Previous Subnet: None"));
}

#[tokio::test]
async fn acquire_writes_upstream_value_with_a_24h_etcd_lease() {
    let etcd = TestEtcd::start();
    put_config(&etcd, NET16).await;
    let m = manager(&etcd, None).await;
    let (config, lease) = config_and_lease(&m, [192, 168, 77, 1]).await;
    assert!(config.is_compatible(lease.subnet), "{}", lease.subnet);
    // among the first 100 free subnets
    assert!(lease.subnet.ip() < Ipv4Addr::new(10, 200, 101, 0));
    let (value, id) = stored(&etcd, lease.subnet).await.unwrap();
    assert_eq!(
        value,
        r#"{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:c0:a8:4d:01"}}"#
    );
    assert_ne!(id, 0);
    let ttl = client(&etcd)
        .await
        .lease_time_to_live(id, None)
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 86400);
    assert!(matches!(lease.expiration, Expiration::At(_)));
}

#[tokio::test]
async fn reuse_by_public_ip_keeps_subnet_and_etcd_lease() {
    let etcd = TestEtcd::start();
    put_config(&etcd, NET16).await;
    let first = manager(&etcd, None).await;
    let (config, lease) = config_and_lease(&first, [192, 168, 77, 1]).await;
    let (_, id) = stored(&etcd, lease.subnet).await.unwrap();
    // a restart, with a new VTEP MAC: same subnet, same etcd lease, value updated
    let second = manager(&etcd, None).await;
    let mut new_attrs = attrs([192, 168, 77, 1]);
    new_attrs.backend_data = Some(
        VxlanBackendData {
            vni: Some(1),
            vtep_mac: "02:00:00:00:00:09".parse().unwrap(),
        }
        .to_value()
        .into(),
    );
    let again = second.acquire_lease(&config, &new_attrs).await.unwrap();
    assert_eq!(again.subnet, lease.subnet);
    let (value, id2) = stored(&etcd, lease.subnet).await.unwrap();
    assert_eq!(id2, id, "no new etcd lease per restart");
    assert!(value.contains("02:00:00:00:00:09"));
    let all = client(&etcd)
        .await
        .get(
            format!("{PREFIX}/subnets/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 1);
    assert_eq!(
        client(&etcd).await.leases().await.unwrap().leases().len(),
        1
    );
}

#[tokio::test]
async fn incompatible_own_lease_is_replaced() {
    let etcd = TestEtcd::start();
    put_config(
        &etcd,
        r#"{"Network":"10.200.0.0/16","SubnetMin":"10.200.50.0","SubnetMax":"10.200.60.0"}"#,
    )
    .await;
    let mut c = client(&etcd).await;
    c.put(
        format!("{PREFIX}/subnets/10.200.7.0-24"),
        attrs([192, 168, 77, 1]).to_json(),
        None,
    )
    .await
    .unwrap();
    let m = manager(&etcd, None).await;
    let (_, lease) = config_and_lease(&m, [192, 168, 77, 1]).await;
    assert!(lease.subnet.ip() >= Ipv4Addr::new(10, 200, 50, 0));
    assert!(
        stored(&etcd, "10.200.7.0/24".parse().unwrap())
            .await
            .is_none(),
        "old lease deleted"
    );
}

#[tokio::test]
async fn previous_subnet_from_subnet_env_is_reused_when_free() {
    let etcd = TestEtcd::start();
    put_config(&etcd, NET16).await;
    let m = manager(&etcd, Some("10.200.77.0/24")).await;
    assert_eq!(
        m.name(),
        "Etcd Local Manager with Previous Subnet: 10.200.77.0/24"
    );
    let (config, lease) = config_and_lease(&m, [192, 168, 77, 1]).await;
    assert_eq!(
        lease.subnet,
        "10.200.77.0/24".parse::<Ipv4Network>().unwrap()
    );

    // taken by another node meanwhile: not stolen
    let other = manager(&etcd, Some("10.200.77.0/24")).await;
    let lease2 = lease_for(&other, &config, [192, 168, 77, 2]).await;
    assert_ne!(lease2.subnet, lease.subnet);
    let (value, _) = stored(&etcd, lease.subnet).await.unwrap();
    assert!(value.contains("192.168.77.1"));

    // outside the config's range: ignored
    let third = manager(&etcd, Some("10.99.0.0/24")).await;
    let lease3 = lease_for(&third, &config, [192, 168, 77, 3]).await;
    assert!(config.is_compatible(lease3.subnet));
}

#[tokio::test]
async fn reservation_is_reused_and_stays_a_reservation() {
    let etcd = TestEtcd::start();
    put_config(&etcd, NET16).await;
    let mut c = client(&etcd).await;
    c.put(
        format!("{PREFIX}/subnets/10.200.5.0-24"),
        r#"{"PublicIP":"192.168.77.1"}"#,
        None,
    )
    .await
    .unwrap();
    let m = manager(&etcd, None).await;
    let (_, lease) = config_and_lease(&m, [192, 168, 77, 1]).await;
    assert_eq!(
        lease.subnet,
        "10.200.5.0/24".parse::<Ipv4Network>().unwrap()
    );
    assert_eq!(lease.expiration, Expiration::Never);
    let (value, id) = stored(&etcd, lease.subnet).await.unwrap();
    assert_eq!(id, 0, "no TTL attached to a reservation (upstream #1329)");
    assert_eq!(value, attrs([192, 168, 77, 1]).to_json());
}

#[tokio::test]
async fn out_of_subnets_and_bad_keys_are_never_allocated_over() {
    let etcd = TestEtcd::start();
    // /28 in /30s: three usable subnets, .4 .8 .12
    put_config(
        &etcd,
        r#"{"Network":"10.9.0.0/28","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let mut c = client(&etcd).await;
    // a garbage value still holds its subnet
    c.put(format!("{PREFIX}/subnets/10.9.0.4-30"), "garbage", None)
        .await
        .unwrap();
    c.put(format!("{PREFIX}/subnets/not-a-key"), "{}", None)
        .await
        .unwrap();
    let m = manager(&etcd, None).await;
    let (config, a) = config_and_lease(&m, [192, 168, 77, 1]).await;
    let b = lease_for(&m, &config, [192, 168, 77, 2]).await;
    let mut got = vec![a.subnet.to_string(), b.subnet.to_string()];
    got.sort();
    assert_eq!(got, vec!["10.9.0.12/30", "10.9.0.8/30"]);
    let err = m
        .acquire_lease(&config, &attrs([192, 168, 77, 3]))
        .await
        .unwrap_err();
    assert!(matches!(err, SubnetError::OutOfSubnets));
    assert_eq!(err.to_string(), "out of subnets");
}

#[tokio::test]
async fn two_managers_racing_for_the_last_subnet() {
    let etcd = TestEtcd::start();
    put_config(
        &etcd,
        r#"{"Network":"10.9.0.0/28","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let mut c = client(&etcd).await;
    c.put(
        format!("{PREFIX}/subnets/10.9.0.4-30"),
        attrs([192, 168, 1, 4]).to_json(),
        None,
    )
    .await
    .unwrap();
    c.put(
        format!("{PREFIX}/subnets/10.9.0.8-30"),
        attrs([192, 168, 1, 8]).to_json(),
        None,
    )
    .await
    .unwrap();
    for round in 0..5 {
        let _ = c
            .delete(format!("{PREFIX}/subnets/10.9.0.12-30"), None)
            .await
            .unwrap();
        let m1 = manager(&etcd, None).await;
        let m2 = manager(&etcd, None).await;
        let config = m1.get_network_config().await.unwrap();
        let (a1, a2) = (
            attrs([192, 168, 77, 1 + 2 * round]),
            attrs([192, 168, 77, 2 + 2 * round]),
        );
        let (r1, r2) = tokio::join!(
            m1.acquire_lease(&config, &a1),
            m2.acquire_lease(&config, &a2)
        );
        let (winner, loser) = match (r1, r2) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            other => panic!("exactly one must win: {other:?}"),
        };
        let oks = [&winner];
        assert_eq!(oks[0].subnet.to_string(), "10.9.0.12/30");
        assert!(matches!(loser, SubnetError::OutOfSubnets), "{loser}");
        let (value, _) = stored(&etcd, oks[0].subnet).await.unwrap();
        assert_eq!(value, oks[0].attrs.to_json());
    }
}

#[tokio::test]
async fn keep_alive_renews_and_lost_key_is_recreated() {
    let etcd = TestEtcd::start();
    put_config(&etcd, NET16).await;
    let short = LeasePolicy {
        ttl: Duration::from_secs(4),
        renew_margin: Duration::from_secs(3),
    };
    let store = EtcdV3Store::new(&cfg(&etcd.endpoint())).await.unwrap();
    let m = LeaseManager::new(store, short, None);
    let (_, lease) = config_and_lease(&m, [192, 168, 77, 1]).await;
    let (status_tx, mut status) = watch::channel(lease.clone());
    let keeper = tokio::spawn(async move { m.keep_lease(lease, status_tx).await });
    let subnet = status.borrow().subnet;

    // renewed several times: the key outlives its 4 s TTL
    let start = Instant::now();
    let mut renewals = 0;
    while start.elapsed() < Duration::from_secs(9) {
        if tokio::time::timeout(Duration::from_secs(3), status.changed())
            .await
            .is_ok()
        {
            renewals += 1;
        }
    }
    assert!(renewals >= 3, "only {renewals} renewals in 9 s");
    let (_, id) = stored(&etcd, subnet).await.expect("key alive after 2 TTLs");

    // deleted by an operator: back at once, same value
    let value = stored(&etcd, subnet).await.unwrap().0;
    client(&etcd)
        .await
        .delete(
            format!("{PREFIX}/subnets/{}-{}", subnet.ip(), subnet.prefix()),
            None,
        )
        .await
        .unwrap();
    eventually("key re-created", || async {
        stored(&etcd, subnet).await.is_some()
    })
    .await;
    let (value2, id2) = stored(&etcd, subnet).await.unwrap();
    assert_eq!(value2, value);
    assert_ne!(id2, id);

    // its etcd lease revoked (as an expiry would): back again
    client(&etcd).await.lease_revoke(id2).await.unwrap();
    eventually("key re-created after expiry", || async {
        stored(&etcd, subnet).await.is_some_and(|(_, id)| id != id2)
    })
    .await;

    // taken over by another node: the keeper gives up with a clear error
    client(&etcd)
        .await
        .put(
            format!("{PREFIX}/subnets/{}-{}", subnet.ip(), subnet.prefix()),
            attrs([192, 168, 77, 9]).to_json(),
            None,
        )
        .await
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), keeper)
        .await
        .expect("keeper ends")
        .unwrap();
    let err = res.unwrap_err();
    assert!(matches!(err, SubnetError::LeaseTaken { .. }), "{err}");
}

fn lease_put(subnet: &str, ip: [u8; 4]) -> (String, String) {
    let net: Ipv4Network = subnet.parse().unwrap();
    (
        format!("{PREFIX}/subnets/{}-{}", net.ip(), net.prefix()),
        attrs(ip).to_json(),
    )
}

#[tokio::test]
async fn watch_snapshot_then_adds_and_removes_skipping_bad_values() {
    let etcd = TestEtcd::start();
    put_config(&etcd, NET16).await;
    let mut c = client(&etcd).await;
    let (k, v) = lease_put("10.200.1.0/24", [192, 168, 77, 1]);
    c.put(k, v, None).await.unwrap();
    let m = manager(&etcd, None).await;
    let (tx, mut rx) = mpsc::channel(16);
    let watcher = tokio::spawn(async move { m.watch_leases(tx).await });
    let first = next(&mut rx).await;
    assert!(first.snapshot);
    assert_eq!(names(&first), vec!["+10.200.1.0/24"]);

    let grant = c.lease_grant(60, None).await.unwrap().id();
    let (k2, v2) = lease_put("10.200.2.0/24", [192, 168, 77, 2]);
    c.put(k2.clone(), v2, Some(PutOptions::new().with_lease(grant)))
        .await
        .unwrap();
    let b = next(&mut rx).await;
    assert!(!b.snapshot);
    assert_eq!(names(&b), vec!["+10.200.2.0/24"]);

    // a malformed update is skipped and the node's last good state kept
    c.put(
        k2.clone(),
        "{broken",
        Some(PutOptions::new().with_lease(grant)),
    )
    .await
    .unwrap();
    c.put(
        format!("{PREFIX}/subnets/10.200.3.0-24"),
        r#"{"PublicIP":"::1"}"#,
        None,
    )
    .await
    .unwrap();
    // expiry (lease revoke) is a removal, reported with the last good attributes
    c.lease_revoke(grant).await.unwrap();
    let b = next(&mut rx).await;
    assert_eq!(names(&b), vec!["-10.200.2.0/24"]);
    match &b.events[0] {
        LeaseEvent::Removed(l) => assert_eq!(l.attrs.public_ip, Ipv4Addr::new(192, 168, 77, 2)),
        e => panic!("{e:?}"),
    }
    // a renewal (same value) is silent; a change is an Added
    let (k1, v1) = lease_put("10.200.1.0/24", [192, 168, 77, 1]);
    c.put(k1.clone(), v1, None).await.unwrap();
    let (_, v1b) = lease_put("10.200.1.0/24", [192, 168, 77, 11]);
    c.put(k1, v1b, None).await.unwrap();
    let b = next(&mut rx).await;
    assert_eq!(names(&b), vec!["+10.200.1.0/24"]);
    drop(rx);
    // the watcher ends once nobody listens (on its next event)
    c.put(
        format!("{PREFIX}/subnets/10.200.9.0-24"),
        attrs([1, 2, 3, 4]).to_json(),
        None,
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn watch_across_partition_and_compaction_reports_every_change() {
    let etcd = TestEtcd::start();
    put_config(&etcd, NET16).await;
    let mut c = client(&etcd).await;
    for (i, s) in ["10.200.1.0/24", "10.200.2.0/24", "10.200.3.0/24"]
        .iter()
        .enumerate()
    {
        let (k, v) = lease_put(s, [192, 168, 77, 1 + i as u8]);
        c.put(k, v, None).await.unwrap();
    }
    let proxy = TcpProxy::start(etcd.client_addr());
    let m = v3_manager(cfg(&format!("http://{}", proxy.addr())), None)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(async move { m.watch_leases(tx).await });
    assert_eq!(next(&mut rx).await.events.len(), 3);

    proxy.cut();
    // while partitioned: one node leaves, one joins, one changes; then history is compacted
    c.delete(lease_put("10.200.2.0/24", [0; 4]).0, None)
        .await
        .unwrap();
    let (k, v) = lease_put("10.200.4.0/24", [192, 168, 77, 4]);
    c.put(k, v, None).await.unwrap();
    let (k, v) = lease_put("10.200.3.0/24", [192, 168, 77, 33]);
    c.put(k, v, None).await.unwrap();
    let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    proxy.heal();

    let b = next(&mut rx).await;
    assert!(b.snapshot);
    assert_eq!(
        names(&b),
        vec!["-10.200.2.0/24", "+10.200.3.0/24", "+10.200.4.0/24"]
    );
}

#[tokio::test]
async fn watch_resumes_after_etcd_restart() {
    let mut etcd = TestEtcd::start();
    put_config(&etcd, NET16).await;
    let m = manager(&etcd, None).await;
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(async move { m.watch_leases(tx).await });
    assert!(next(&mut rx).await.events.is_empty());
    etcd.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart();
    let (k, v) = lease_put("10.200.8.0/24", [192, 168, 77, 8]);
    client(&etcd).await.put(k, v, None).await.unwrap();
    // after the restart the watch re-lists (possibly an empty snapshot first), then sees the add
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.contains(&"+10.200.8.0/24".to_string()) {
        assert!(
            Instant::now() < deadline,
            "add not seen after restart: {seen:?}"
        );
        seen.extend(names(&next(&mut rx).await));
    }
}

#[tokio::test]
async fn list_leases_shows_ttls_reservations_and_bad_keys() {
    let etcd = TestEtcd::start();
    put_config(&etcd, NET16).await;
    let mut c = client(&etcd).await;
    let grant = c.lease_grant(600, None).await.unwrap().id();
    let (k, v) = lease_put("10.200.1.0/24", [192, 168, 77, 1]);
    c.put(k, v, Some(PutOptions::new().with_lease(grant)))
        .await
        .unwrap();
    let (k, v) = lease_put("10.200.2.0/24", [192, 168, 77, 2]);
    c.put(k, v, None).await.unwrap();
    c.put(format!("{PREFIX}/subnets/bogus"), "{}", None)
        .await
        .unwrap();
    let m = manager(&etcd, None).await;
    let entries = m.list_leases().await.unwrap();
    assert_eq!(entries.len(), 3);
    let l1 = entries
        .iter()
        .find(|e| e.key == "10.200.1.0-24")
        .unwrap()
        .lease
        .as_ref()
        .unwrap();
    match l1.expiration {
        Expiration::At(t) => {
            let left = t.duration_since(std::time::SystemTime::now()).unwrap();
            assert!(
                left > Duration::from_secs(590) && left <= Duration::from_secs(600),
                "{left:?}"
            );
        }
        e => panic!("{e:?}"),
    }
    let l2 = entries
        .iter()
        .find(|e| e.key == "10.200.2.0-24")
        .unwrap()
        .lease
        .as_ref()
        .unwrap();
    assert!(l2.is_reservation());
    assert!(entries
        .iter()
        .find(|e| e.key == "bogus")
        .unwrap()
        .lease
        .is_err());
}

/// What reading the config from an etcd serving `which` fails with, as the daemon logs it.
async fn config_error_against(which: ServerCert) -> String {
    let certs = TestCerts::generate();
    let etcd = TestEtcd::start_tls_with(&certs, which, &[]);
    let m = v3_manager(
        EtcdConfig {
            ca_file: Some(certs.ca.clone()),
            cert_file: Some(certs.client_cert.clone()),
            key_file: Some(certs.client_key.clone()),
            ..cfg(&etcd.endpoint())
        },
        None,
    )
    .await
    .unwrap();
    let err = m.get_network_config().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SubnetError::Store(_)), "{text}");
    assert!(
        text.starts_with("reading /kubernetes-cluster/network/config: "),
        "{text}"
    );
    text
}

#[tokio::test]
async fn tls_refuses_an_expired_server_certificate() {
    let text = config_error_against(ServerCert::Expired).await;
    assert!(
        text.contains("invalid peer certificate: certificate expired"),
        "{text}"
    );
}

#[tokio::test]
async fn tls_refuses_a_server_certificate_for_another_name() {
    let text = config_error_against(ServerCert::WrongName).await;
    assert!(
        text.contains("invalid peer certificate: certificate not valid for name"),
        "{text}"
    );
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let certs = TestCerts::generate();
    let etcd = TestEtcd::start_tls(&certs);
    etcd.ctl(&["put", &format!("{PREFIX}/config"), NET16]);
    let tls_cfg =
        |cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path| EtcdConfig {
            ca_file: Some(ca.to_path_buf()),
            cert_file: Some(cert.to_path_buf()),
            key_file: Some(key.to_path_buf()),
            ..cfg(&etcd.endpoint())
        };
    let good = v3_manager(
        tls_cfg(&certs.client_cert, &certs.client_key, &certs.ca),
        None,
    )
    .await
    .unwrap();
    let (config, lease) = config_and_lease(&good, [192, 168, 77, 1]).await;
    assert!(config.is_compatible(lease.subnet));

    // a client certificate from another CA is refused
    let foreign = v3_manager(
        tls_cfg(
            &certs.foreign_client_cert,
            &certs.foreign_client_key,
            &certs.ca,
        ),
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        foreign.get_network_config().await,
        Err(SubnetError::Store(_))
    ));
    // a server certificate that our CA did not sign is refused
    let wrong_ca = v3_manager(
        tls_cfg(&certs.client_cert, &certs.client_key, &certs.foreign_ca),
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        wrong_ca.get_network_config().await,
        Err(SubnetError::Store(_))
    ));
    // a key that belongs to another certificate: refused at start, naming both files
    let err = v3_manager(
        tls_cfg(&certs.client_cert, &certs.foreign_client_key, &certs.ca),
        None,
    )
    .await
    .err()
    .expect("a key of another certificate is refused")
    .to_string();
    assert_eq!(
        err,
        format!(
            "the etcd key {} (--etcd-keyfile) does not belong to the certificate {} (--etcd-certfile)",
            certs.foreign_client_key.display(),
            certs.client_cert.display()
        )
    );
    // an expired client certificate: refused at start, naming the file and the date
    let err = v3_manager(
        tls_cfg(
            &certs.expired_client_cert,
            &certs.expired_client_key,
            &certs.ca,
        ),
        None,
    )
    .await
    .err()
    .expect("an expired client certificate is refused")
    .to_string();
    assert_eq!(
        err,
        format!(
            "the etcd client certificate {} (--etcd-certfile) expired on 2021-01-01T00:00:00Z: renew it",
            certs.expired_client_cert.display()
        )
    );
    // no client certificate at all
    let anonymous = v3_manager(
        EtcdConfig {
            ca_file: Some(certs.ca.clone()),
            ..cfg(&etcd.endpoint())
        },
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        anonymous.get_network_config().await,
        Err(SubnetError::Store(_))
    ));
}
