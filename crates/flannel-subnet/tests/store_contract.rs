//! The contract every store keeps, run against each of them: the in-memory store, etcd v3
//! and etcd v2 (real etcd). First the storage calls one by one, then the lease semantics the
//! one lease manager builds on them. A new store passes this suite before anything else.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

mod common;

use std::time::Duration;

use common::{attrs, names, next, NET16, PREFIX};
use flannel_lab::etcd::TestEtcd;
use flannel_net::Expiration;
use flannel_subnet::etcd::{EtcdConfig, EtcdV3Store};
use flannel_subnet::etcd2::EtcdV2Store;
use flannel_subnet::memory::MemoryStore;
use flannel_subnet::store::{Change, Cond, Key, Life, Store, Watched};
use flannel_subnet::{write_config, ConfigWrite, LeaseManager, LeasePolicy, SubnetManager};
use futures::StreamExt;
use tokio::sync::mpsc;

fn cfg(etcd: &TestEtcd) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        prefix: PREFIX.into(),
        ..EtcdConfig::default()
    }
}

fn subnet(name: &str) -> Key {
    Key::Subnet(name.into())
}

/// The storage calls, one by one.
async fn storage_calls<S: Store>(store: &S) {
    // the config: absent, created only when absent, replaced only as read
    assert_eq!(store.get(&Key::Config).await.unwrap().0, None);
    let forever = Life::Forever;
    assert!(store
        .put(&Key::Config, b"{}", forever, Cond::Absent)
        .await
        .unwrap());
    assert!(!store
        .put(&Key::Config, b"{1}", forever, Cond::Absent)
        .await
        .unwrap());
    let (read, _) = store.get(&Key::Config).await.unwrap();
    let read = read.unwrap();
    assert_eq!(
        (read.name.as_str(), &read.value[..], read.expires),
        ("config", &b"{}"[..], false)
    );
    assert!(store
        .put(&Key::Config, b"{2}", forever, Cond::Unchanged(&read))
        .await
        .unwrap());
    // a record read before that write is stale: nothing written
    assert!(!store
        .put(&Key::Config, b"{3}", forever, Cond::Unchanged(&read))
        .await
        .unwrap());
    assert_eq!(
        store.get(&Key::Config).await.unwrap().0.unwrap().value,
        b"{2}"
    );

    // a lease (TTL) and a reservation (none); the config is no subnet
    let ttl = Life::Ttl(Duration::from_secs(600));
    assert!(store
        .put(&subnet("10.5.1.0-24"), b"a", ttl, Cond::Absent)
        .await
        .unwrap());
    assert!(store
        .put(&subnet("10.5.2.0-24"), b"b", forever, Cond::Absent)
        .await
        .unwrap());
    let (mut listed, _) = store.list().await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = listed
        .iter()
        .map(|r| (r.name.as_str(), r.expires))
        .collect();
    assert_eq!(names, [("10.5.1.0-24", true), ("10.5.2.0-24", false)]);
    let mut lease = listed[0].clone();
    let left = store.time_to_live(&lease).await.unwrap().unwrap();
    assert!(
        left > Duration::from_secs(500) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    // renewed: its full TTL again (etcd v3 keeps the etcd lease and its granted TTL, so the
    // TTL given is the one it was written with, as the lease manager does)
    let left = store
        .renew(&mut lease, Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    assert!(left > Duration::from_secs(590), "{left:?}");

    // the changes after a listing, in order: an addition, a deletion; a deletion at a
    // revision the key is no longer at does nothing
    let (listed, at) = store.list().await.unwrap();
    let reservation = listed
        .iter()
        .find(|r| r.name == "10.5.2.0-24")
        .unwrap()
        .clone();
    let mut watch = store.watch(None, at).await.unwrap();
    assert!(store
        .put(&subnet("10.5.3.0-24"), b"c", ttl, Cond::Absent)
        .await
        .unwrap());
    assert!(store
        .delete(&subnet("10.5.2.0-24"), reservation.revision)
        .await
        .unwrap());
    assert!(!store
        .delete(&subnet("10.5.1.0-24"), reservation.revision)
        .await
        .unwrap());
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("changes within 20 s")
            .expect("the watch goes on")
            .unwrap();
        match item {
            Watched::Changes(changes) => seen.extend(changes.into_iter().map(|c| match c {
                Change::Put(r) => format!("+{} {}", r.name, String::from_utf8_lossy(&r.value)),
                Change::Delete(name) => format!("-{name}"),
            })),
            Watched::Reset => panic!("a fresh watch needs no reset"),
        }
    }
    assert_eq!(seen, ["+10.5.3.0-24 c", "-10.5.2.0-24"]);
    assert_eq!(
        store
            .get(&subnet("10.5.1.0-24"))
            .await
            .unwrap()
            .0
            .unwrap()
            .value,
        b"a"
    );
}

/// The lease semantics over the store: the config, acquiring (upstream's value, a 24 h TTL),
/// a restart reusing the subnet, a reservation reused as one, the lease watch.
async fn lease_semantics<S: Store + Clone + 'static>(store: S) {
    let m = LeaseManager::new(store.clone(), LeasePolicy::default(), None);
    assert!(m.get_network_config().await.is_err());
    assert_eq!(
        write_config(&store, NET16, false, false).await.unwrap(),
        ConfigWrite::Created
    );
    let config = m.get_network_config().await.unwrap();
    // another node's reservation
    let reserved = subnet("10.200.5.0-24");
    let value = attrs(5).to_json();
    assert!(store
        .put(&reserved, value.as_bytes(), Life::Forever, Cond::Absent)
        .await
        .unwrap());

    let mine = m.acquire_lease(&config, &attrs(1)).await.unwrap();
    let key = subnet(&mine.key().to_string());
    let record = store.get(&key).await.unwrap().0.unwrap();
    assert_eq!(
        record.value,
        attrs(1).to_json().into_bytes(),
        "upstream's value"
    );
    let left = store.time_to_live(&record).await.unwrap().unwrap();
    assert!(left > Duration::from_secs(86_000), "{left:?}");
    // a restart keeps the subnet
    let again = LeaseManager::new(store.clone(), LeasePolicy::default(), None);
    assert_eq!(
        again
            .acquire_lease(&config, &attrs(1))
            .await
            .unwrap()
            .subnet,
        mine.subnet
    );
    // the reservation's node gets it, and it stays one
    let five = m.acquire_lease(&config, &attrs(5)).await.unwrap();
    assert_eq!(five.subnet.to_string(), "10.200.5.0/24");
    assert_eq!(five.expiration, Expiration::Never);
    assert!(!store.get(&reserved).await.unwrap().0.unwrap().expires);

    // the lease watch: every lease, then each change
    let (tx, mut rx) = mpsc::channel(16);
    let watcher = LeaseManager::new(store.clone(), LeasePolicy::default(), None);
    let watching = tokio::spawn(async move { watcher.watch_leases(tx).await });
    let first = next(&mut rx).await;
    assert!(first.snapshot);
    let mut listed = names(&first);
    listed.sort();
    let mut want = vec![format!("+{}", mine.subnet), "+10.200.5.0/24".into()];
    want.sort();
    assert_eq!(listed, want);
    let other = subnet("10.200.240.0-24");
    let value = attrs(40).to_json();
    let ttl = Life::Ttl(Duration::from_secs(600));
    assert!(store
        .put(&other, value.as_bytes(), ttl, Cond::Absent)
        .await
        .unwrap());
    assert_eq!(names(&next(&mut rx).await), ["+10.200.240.0/24"]);
    let record = store.get(&other).await.unwrap().0.unwrap();
    assert!(store.delete(&other, record.revision).await.unwrap());
    let removed = next(&mut rx).await;
    assert_eq!(names(&removed), ["-10.200.240.0/24"]);
    // with the last value seen
    assert_eq!(removed.events[0].lease().attrs, attrs(40));
    watching.abort();
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    storage_calls(&MemoryStore::default()).await;
    lease_semantics(MemoryStore::default()).await;
}

#[tokio::test]
async fn etcd_v3_keeps_the_contract() {
    let etcd = TestEtcd::start();
    storage_calls(&EtcdV3Store::new(&cfg(&etcd)).await.unwrap()).await;
    let etcd = TestEtcd::start();
    lease_semantics(EtcdV3Store::new(&cfg(&etcd)).await.unwrap()).await;
}

#[tokio::test]
async fn etcd_v2_keeps_the_contract() {
    let etcd = TestEtcd::start_with_args(&["--enable-v2=true"]);
    storage_calls(&EtcdV2Store::new(&cfg(&etcd)).unwrap()).await;
    let etcd = TestEtcd::start_with_args(&["--enable-v2=true"]);
    lease_semantics(EtcdV2Store::new(&cfg(&etcd)).unwrap()).await;
}
