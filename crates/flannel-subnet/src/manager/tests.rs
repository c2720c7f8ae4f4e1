//! The lease semantics against the in-memory store: fast, and able to break the store in
//! every way a real one breaks. The same semantics run against real etcd v3 and v2 in
//! `tests/etcd_v3.rs` and `tests/etcd_v2.rs`.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed assertion

use std::net::Ipv4Addr;
use std::time::Duration;

use flannel_net::{
    Expiration, Lease, LeaseAttrs, LeaseBatch, LeaseEvent, MacAddr, NetworkConfig, VxlanBackendData,
};
use tokio::sync::{mpsc, watch};

use super::{write_config, ConfigWrite, LeaseManager, LeasePolicy};
use crate::memory::MemoryStore;
use crate::store::{Cond, Key, Life, Store};
use crate::{SubnetError, SubnetManager};

const NET: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn attrs(last: u8) -> LeaseAttrs {
    LeaseAttrs::vxlan(
        Ipv4Addr::new(192, 168, 77, last),
        &VxlanBackendData {
            vni: Some(1),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, last]),
        },
    )
}

async fn store_with(config: &str) -> MemoryStore {
    let store = MemoryStore::default();
    assert_eq!(
        write_config(&store, config, false, false).await.unwrap(),
        ConfigWrite::Created
    );
    store
}

fn manager(store: &MemoryStore) -> LeaseManager<MemoryStore> {
    LeaseManager::new(store.clone(), LeasePolicy::default(), None)
}

async fn acquire(m: &LeaseManager<MemoryStore>, last: u8) -> Lease {
    let config = m.get_network_config().await.unwrap();
    m.acquire_lease(&config, &attrs(last)).await.unwrap()
}

fn key(lease: &Lease) -> Key {
    Key::Subnet(lease.key().to_string())
}

/// The next batch, within 20 s (as the real-etcd tests): a watch reconnecting through its
/// backoff after the outages below can take a few seconds on a loaded machine (a CI run once
/// took longer than the 5 s this had).
async fn next(rx: &mut mpsc::Receiver<LeaseBatch>) -> LeaseBatch {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a lease batch within 20 s")
        .expect("the watch goes on")
}

/// Deletes a lease's key, as an operator would.
async fn delete(store: &MemoryStore, lease: &Lease) {
    let (record, _) = store.get(&key(lease)).await.unwrap();
    assert!(store
        .delete(&key(lease), record.unwrap().revision)
        .await
        .unwrap());
}

fn names(batch: &LeaseBatch) -> Vec<String> {
    batch
        .events
        .iter()
        .map(|e| match e {
            LeaseEvent::Added(l) => format!("+{}", l.subnet),
            LeaseEvent::Removed(l) => format!("-{}", l.subnet),
        })
        .collect()
}

#[tokio::test]
async fn two_nodes_race_for_the_last_subnet_one_wins_one_is_out() {
    // /30 subnets of a /28: 4, of which the first is never handed out; 2 taken
    let store = store_with(r#"{"Network":"10.9.0.0/28","SubnetLen":30}"#).await;
    for (subnet, last) in [("10.9.0.4-30", 100), ("10.9.0.8-30", 101)] {
        let value = attrs(last).to_json();
        let key = Key::Subnet(subnet.into());
        let life = Life::Ttl(Duration::from_secs(60));
        assert!(store
            .put(&key, value.as_bytes(), life, Cond::Absent)
            .await
            .unwrap());
    }
    let (a, b) = (manager(&store), manager(&store));
    let config = a.get_network_config().await.unwrap();
    let (one, two) = (attrs(1), attrs(2));
    let (ra, rb) = tokio::join!(
        a.acquire_lease(&config, &one),
        b.acquire_lease(&config, &two)
    );
    let (won, lost) = match (ra, rb) {
        (Ok(l), Err(e)) | (Err(e), Ok(l)) => (l, e),
        other => panic!("expected one winner: {other:?}"),
    };
    assert_eq!(won.subnet.to_string(), "10.9.0.12/30");
    assert!(matches!(lost, SubnetError::OutOfSubnets), "{lost}");
    assert_eq!(store.list().await.unwrap().0.len(), 3);
}

#[tokio::test]
async fn a_restart_reuses_the_lease_without_writing_and_a_changed_value_is_written() {
    let store = store_with(NET).await;
    let first = acquire(&manager(&store), 1).await;
    let (before, _) = store.get(&key(&first)).await.unwrap();
    let again = acquire(&manager(&store), 1).await;
    assert_eq!(again.subnet, first.subnet);
    let (after, _) = store.get(&key(&first)).await.unwrap();
    assert_eq!(
        before, after,
        "nothing written: the other nodes see no event"
    );
    // a new VTEP MAC is written, on the same TTL handle
    let mut changed = attrs(1);
    changed.backend_data = attrs(9).backend_data;
    let config = NetworkConfig::from_etcd(NET).unwrap();
    let l = manager(&store)
        .acquire_lease(&config, &changed)
        .await
        .unwrap();
    assert_eq!(l.subnet, first.subnet);
    let (now, _) = store.get(&key(&first)).await.unwrap();
    let now = now.unwrap();
    assert_eq!(now.value, changed.to_json().into_bytes());
    assert_eq!(now.ttl_handle, after.unwrap().ttl_handle);
}

#[tokio::test]
async fn the_previous_subnet_is_taken_again_when_free() {
    let store = store_with(NET).await;
    let m = LeaseManager::new(
        store.clone(),
        LeasePolicy::default(),
        Some("10.5.77.0-24".parse().unwrap()),
    );
    assert_eq!(acquire(&m, 3).await.subnet.to_string(), "10.5.77.0/24");
}

#[tokio::test]
async fn a_reservation_is_reused_and_stays_a_reservation() {
    let store = store_with(NET).await;
    let k = Key::Subnet("10.5.3.0-24".into());
    let value = attrs(3).to_json();
    assert!(store
        .put(&k, value.as_bytes(), Life::Forever, Cond::Absent)
        .await
        .unwrap());
    let lease = acquire(&manager(&store), 3).await;
    assert_eq!(lease.subnet.to_string(), "10.5.3.0/24");
    assert_eq!(lease.expiration, Expiration::Never);
    assert_eq!(store.expires(&k), Some(false));
}

/// A lease keeper at work: 40 s TTL, renewed 30 s before expiry (every 10 s).
struct Keeper {
    store: MemoryStore,
    k: Key,
    status: watch::Receiver<Lease>,
    stats: std::sync::Arc<crate::SubnetStats>,
    keeper: tokio::task::JoinHandle<Result<(), SubnetError>>,
}

async fn keeper() -> Keeper {
    keeper_with(LeasePolicy {
        ttl: Duration::from_secs(40),
        renew_margin: Duration::from_secs(30),
    })
    .await
}

async fn keeper_with(policy: LeasePolicy) -> Keeper {
    let store = store_with(NET).await;
    let m = LeaseManager::new(store.clone(), policy, None);
    let lease = acquire(&m, 1).await;
    let k = key(&lease);
    let (status_tx, status) = watch::channel(lease.clone());
    let stats = m.stats();
    let keeper = tokio::spawn(async move { m.keep_lease(lease, status_tx).await });
    Keeper {
        store,
        k,
        status,
        stats,
        keeper,
    }
}

#[tokio::test(start_paused = true)]
async fn the_keeper_renews_recreates_a_lost_key_and_stops_when_the_subnet_is_taken() {
    let Keeper {
        store,
        k,
        mut status,
        stats,
        keeper,
    } = keeper().await;

    // renewed every 10 s (40 s TTL, 30 s margin), the key never expires
    tokio::time::sleep(Duration::from_secs(95)).await;
    let renewals = stats
        .lease_renewals
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!((8..=10).contains(&renewals), "{renewals} renewals in 95 s");
    assert!(store.value(&k).is_some());

    // deleted by an operator: back at once with the same value
    let (record, _) = store.get(&k).await.unwrap();
    let record = record.unwrap();
    assert!(store.delete(&k, record.revision).await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.value(&k), Some(attrs(1).to_json()));
    assert_eq!(
        stats
            .lease_recreations
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let _ = status.borrow_and_update();

    // the store loses everything (restarted with its data wiped): written again
    store.wipe();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(store.value(&k), Some(attrs(1).to_json()));

    // another node writes our key: the keeper stops with LeaseTaken
    let (record, _) = store.get(&k).await.unwrap();
    let other = attrs(2).to_json();
    let life = Life::Ttl(Duration::from_secs(40));
    let record = record.unwrap();
    assert!(store
        .put(&k, other.as_bytes(), life, Cond::Unchanged(&record))
        .await
        .unwrap());
    let err = tokio::time::timeout(Duration::from_secs(5), keeper)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, SubnetError::LeaseTaken { .. }), "{err}");
}

/// Renewals failing while the watch goes on (an etcd member without a leader serves the
/// watch, a keep-alive needs the leader): the keeper tries again before the lease expires,
/// not a minute later. Before: a renewal a minute before expiry (`--subnet-lease-renew-margin=1`)
/// that failed once let the lease expire, and every peer dropped the node's routes until it
/// was re-created.
#[tokio::test(start_paused = true)]
async fn a_failed_renewal_is_tried_again_before_the_lease_expires() {
    let Keeper {
        store,
        k,
        stats,
        keeper,
        ..
    } = keeper().await;
    // renewed at 10 s, then every renewal fails from 15 s to 45 s: 25 s left at the failure
    // of 20 s, tried again within a quarter of what is left each time
    tokio::time::sleep(Duration::from_secs(15)).await;
    store.fail_renewals(true);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(store.value(&k).is_some(), "the lease expired");
    }
    store.fail_renewals(false);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(store.value(&k).is_some(), "the lease expired");
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        load(&stats.lease_recreations),
        0,
        "the lease was lost and re-created"
    );
    assert!(
        load(&stats.errors) >= 3,
        "renewals failed: {}",
        load(&stats.errors)
    );
    keeper.abort();
}

/// Found by the chaos run (issue 31, etcd v2, seed 13277286894587368887): with a margin as
/// long as the TTL (the run's 60 s TTL and the default hour) the keeper renewed at half of
/// what was left, counted afresh by each session, so a keeper whose watch kept breaking
/// (etcd members killed one after another) put the renewal off each time, to 3 s before
/// expiry; a leader election then took those 3 s and the lease expired under a live node.
/// Each break also made the keeper pause, growing to 5 s, through which it slept past the
/// renewal. The renewal is now a fixed instant before expiry, whichever session waits for
/// it, and no pause lasts past it.
#[tokio::test(start_paused = true)]
async fn a_keeper_whose_watch_keeps_breaking_renews_on_time() {
    let Keeper {
        store,
        k,
        stats,
        keeper,
        ..
    } = keeper_with(LeasePolicy {
        ttl: Duration::from_secs(60),
        renew_margin: Duration::from_secs(60 * 60),
    })
    .await;
    let renewals = || {
        stats
            .lease_renewals
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // a break every 2 s: the renewal is due at half the TTL all the same
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        store.break_watches();
    }
    assert_eq!(renewals(), 1, "not renewed at half the TTL (30 s)");
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        store.break_watches();
    }
    assert_eq!(renewals(), 3, "renewed every 30 s");
    assert!(store.value(&k).is_some());
    keeper.abort();
}

/// Found by the chaos run (issue 31, etcd v3, seed 12521565913987212555): a watch catching up
/// after etcd lost its quorum got a lease's creation and its deletion in one response; the
/// batch carried both events and the VXLAN backend, applying removals first, kept the peer
/// programmed for good. A batch now says where each lease ends up, once.
#[tokio::test(start_paused = true)]
async fn a_lease_written_and_deleted_within_one_watch_response_yields_nothing() {
    let store = store_with(NET).await;
    let la = acquire(&manager(&store), 1).await;
    let (tx, mut rx) = mpsc::channel(16);
    let watcher = manager(&store);
    let task = tokio::spawn(async move { watcher.watch_leases(tx).await });
    assert!(next(&mut rx).await.snapshot);

    store.hold();
    let lb = acquire(&manager(&store), 2).await;
    delete(&store, &lb).await;
    let lc = acquire(&manager(&store), 3).await;
    delete(&store, &la).await;
    store.release();
    assert_eq!(
        names(&next(&mut rx).await),
        vec![format!("-{}", la.subnet), format!("+{}", lc.subnet)]
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn the_watch_reports_every_change_across_breaks_compaction_and_outages() {
    let store = store_with(NET).await;
    let a = manager(&store);
    let la = acquire(&a, 1).await;
    let lb = acquire(&manager(&store), 2).await;
    let (tx, mut rx) = mpsc::channel(16);
    let watcher = manager(&store);
    let task = tokio::spawn(async move { watcher.watch_leases(tx).await });
    let first = next(&mut rx).await;
    assert!(first.snapshot);
    assert_eq!(first.events.len(), 2);

    // a new node, seen as it comes
    let lc = acquire(&manager(&store), 3).await;
    assert_eq!(names(&next(&mut rx).await), vec![format!("+{}", lc.subnet)]);

    // the connection breaks; meanwhile b leaves, d comes and the history is compacted:
    // the re-list reports exactly that, the removal included
    store.set_down(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.set_down(false);
    let (rb, _) = store.get(&key(&lb)).await.unwrap();
    assert!(store.delete(&key(&lb), rb.unwrap().revision).await.unwrap());
    let ld = acquire(&manager(&store), 4).await;
    store.compact();
    store.set_down(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.set_down(false);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = next(&mut rx).await;
        seen.extend(names(&batch));
    }
    seen.sort();
    let mut want = vec![format!("-{}", lb.subnet), format!("+{}", ld.subnet)];
    want.sort();
    assert_eq!(seen, want);

    // compaction while connected: a watch that falls behind lists again, nothing lost
    store.break_watches();
    store.compact();
    let (ra, _) = store.get(&key(&la)).await.unwrap();
    assert!(store.delete(&key(&la), ra.unwrap().revision).await.unwrap());
    store.compact();
    let batch = next(&mut rx).await;
    assert_eq!(names(&batch), vec![format!("-{}", la.subnet)]);

    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The Ansible role's etcdctl wrote `{"Type": "vxlan"}`; the installer's `{"Type":"vxlan"}` is
/// the same config, not one to warn about.
#[tokio::test]
async fn the_same_json_with_other_spacing_is_the_same_config() {
    let store = MemoryStore::default();
    let role = r#"{"Network":"10.200.0.0/16","Backend":{"Type": "vxlan"}}"#;
    let ours = r#"{"Network":"10.200.0.0/16","Backend":{"Type":"vxlan"}}"#;
    assert_eq!(
        write_config(&store, role, false, false).await.unwrap(),
        ConfigWrite::Created
    );
    assert_eq!(
        write_config(&store, ours, false, false).await.unwrap(),
        ConfigWrite::Unchanged
    );
    assert_eq!(
        write_config(&store, ours, true, false).await.unwrap(),
        ConfigWrite::Unchanged,
        "nothing to force"
    );
}

#[tokio::test]
async fn config_written_only_when_absent_or_forced_and_changes_are_watched() {
    let store = MemoryStore::default();
    let m = manager(&store);
    assert!(matches!(
        m.get_network_config().await,
        Err(SubnetError::NoConfigAt { .. })
    ));
    assert_eq!(
        write_config(&store, NET, false, true).await.unwrap(),
        ConfigWrite::WouldCreate
    );
    assert_eq!(
        write_config(&store, NET, false, false).await.unwrap(),
        ConfigWrite::Created
    );
    assert_eq!(
        write_config(&store, NET, false, false).await.unwrap(),
        ConfigWrite::Unchanged
    );
    let other = r#"{"Network":"10.6.0.0/16"}"#;
    assert_eq!(
        write_config(&store, other, false, false).await.unwrap(),
        ConfigWrite::Differs(NET.into())
    );
    let (tx, mut rx) = mpsc::channel(4);
    let task = tokio::spawn(async move { m.watch_config(tx).await });
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        write_config(&store, other, true, false).await.unwrap(),
        ConfigWrite::Replaced(NET.into())
    );
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.network.to_string(), "10.6.0.0/16");
    drop(rx);
    task.await.unwrap().unwrap();
}

const DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"vxlan"}}"#;
const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"vxlan"}}"#;

fn dual_attrs(last: u8) -> LeaseAttrs {
    let v6 = VxlanBackendData {
        vni: Some(1),
        vtep_mac: MacAddr([4, 0, 0, 0, 0, last]),
    };
    attrs(last).with_ipv6(
        format!("fd77::{last}").parse().unwrap(),
        Some(v6.to_value()),
    )
}

#[tokio::test]
async fn dual_stack_leases_have_both_subnets_and_are_reused() {
    let store = store_with(DUAL).await;
    let m = manager(&store);
    let config = m.get_network_config().await.unwrap();
    let a = m.acquire_lease(&config, &dual_attrs(1)).await.unwrap();
    let b = m.acquire_lease(&config, &dual_attrs(2)).await.unwrap();
    let (a6, b6) = (a.ipv6_subnet.unwrap(), b.ipv6_subnet.unwrap());
    assert_ne!(a6, b6);
    for (l, sn6) in [(&a, a6), (&b, b6)] {
        assert_eq!(sn6.prefix(), 64);
        assert!(config.is_compatible_ipv6(sn6), "{sn6}");
        // the key upstream writes: `10.5.34.0-24&fd00:5:0:22::-64`
        let name = l.key().to_string();
        assert_eq!(name, format!("{}-24&{}-64", l.subnet.ip(), sn6.ip()));
    }
    let (value, _) = store.get(&key(&a)).await.unwrap();
    assert_eq!(
        String::from_utf8(value.unwrap().value).unwrap(),
        r#"{"PublicIP":"192.168.77.1","PublicIPv6":"fd77::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"04:00:00:00:00:01"}}"#
    );
    // a restart gets the same two subnets back
    let again = m.acquire_lease(&config, &dual_attrs(1)).await.unwrap();
    assert_eq!(again.key(), a.key());
}

#[tokio::test]
async fn an_ipv4_lease_is_replaced_when_ipv6_is_turned_on() {
    let store = store_with(NET).await;
    let m = manager(&store);
    let v4 = acquire(&m, 1).await;
    assert_eq!(v4.ipv6_subnet, None);
    let mut dual = NetworkConfig::from_etcd(DUAL).unwrap();
    dual.check().unwrap();
    let l = m.acquire_lease(&dual, &dual_attrs(1)).await.unwrap();
    assert!(l.ipv6_subnet.is_some());
    assert_eq!(
        store.get(&key(&v4)).await.unwrap().0,
        None,
        "the IPv4-only key is gone"
    );
}

#[tokio::test]
async fn ipv6_only_nodes_each_get_a_subnet_and_keep_it() {
    // upstream finds every IPv6-only lease "overlapping" (0.0.0.0/0) and its PublicIP
    // (0.0.0.0) equal: the second node reuses the first one's lease
    let store = store_with(V6_ONLY).await;
    let m = manager(&store);
    let config = m.get_network_config().await.unwrap();
    let only6 = |last: u8| dual_attrs(last).without_ipv4();
    let a = m.acquire_lease(&config, &only6(1)).await.unwrap();
    let b = m.acquire_lease(&config, &only6(2)).await.unwrap();
    assert!(!a.has_ipv4() && !b.has_ipv4());
    assert_ne!(a.ipv6_subnet, b.ipv6_subnet);
    assert!(
        a.key().to_string().starts_with("0.0.0.0-0&fd00:5:0:"),
        "{}",
        a.key()
    );
    let (value, _) = store.get(&key(&a)).await.unwrap();
    assert_eq!(
        String::from_utf8(value.unwrap().value).unwrap(),
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd77::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"04:00:00:00:00:01"}}"#
    );
    assert_eq!(
        m.acquire_lease(&config, &only6(2)).await.unwrap().key(),
        b.key()
    );
}

#[tokio::test]
async fn the_previous_dual_stack_subnets_are_taken_again_when_free() {
    let store = store_with(DUAL).await;
    let m = LeaseManager::new(
        store.clone(),
        LeasePolicy::default(),
        Some("10.5.77.0-24&fd00:5:0:4d::-64".parse().unwrap()),
    );
    let config = m.get_network_config().await.unwrap();
    let l = m.acquire_lease(&config, &dual_attrs(3)).await.unwrap();
    assert_eq!(l.key().to_string(), "10.5.77.0-24&fd00:5:0:4d::-64");
}

/// A lease value too large to be read back is refused before anything is written (issue 32:
/// the node wrote it, ignored its own key at the next start and took another subnet each time).
#[tokio::test]
async fn a_lease_value_this_node_would_refuse_is_never_written() {
    let store = store_with(NET).await;
    let m = manager(&store);
    let config = m.get_network_config().await.unwrap();
    let mut big = attrs(1);
    big.backend_type = "extension".into();
    big.backend_data =
        Some(serde_json::Value::String("x".repeat(flannel_net::MAX_LEASE_VALUE_LEN)).into());
    let err = m.acquire_lease(&config, &big).await.unwrap_err();
    assert!(matches!(err, SubnetError::LeaseValue(_)), "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
    assert!(store.list().await.unwrap().0.is_empty());
}
