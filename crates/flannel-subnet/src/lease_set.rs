//! The set of leases a watcher has seen, and the events ([`flannel_net::LeaseEvent`]) that
//! move a consumer from one state to the next (upstream `LeaseWatcher`). A full re-list (after
//! compaction or a reconnect) is turned into the difference, so removals that happened while
//! the watch was down are still reported, with the lease as it was last seen (its VTEP MAC is
//! needed to clean up).
//!
//! A B-tree, not a hash table: under churn (adds and deletes of different keys) a hash table
//! fills with tombstones and once doubles its allocation (seen as a 4 MiB step of resident
//! memory at 5000 leases in the soak); a B-tree's memory follows the live leases only, and
//! it keeps them in key order for the events.

use std::collections::BTreeMap;
use std::sync::Arc;

use flannel_net::{Lease, LeaseEvent, SubnetKey};

/// Each lease is held once, shared with the events that carry it.
#[derive(Debug, Default, Clone)]
pub struct LeaseSet {
    leases: BTreeMap<SubnetKey, Arc<Lease>>,
}

impl LeaseSet {
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn get(&self, key: &SubnetKey) -> Option<&Lease> {
        self.leases.get(key).map(|l| &**l)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values().map(|l| &**l)
    }

    /// Replaces the whole set: `Removed` for what is gone, `Added` for what is new or changed;
    /// unchanged leases stay silent. Events come in key order.
    pub fn reset(&mut self, snapshot: impl IntoIterator<Item = Lease>) -> Vec<LeaseEvent> {
        let fresh: BTreeMap<SubnetKey, Arc<Lease>> = snapshot
            .into_iter()
            .map(|l| (l.key(), Arc::new(l)))
            .collect();
        let removed = self
            .leases
            .iter()
            .filter(|(key, _)| !fresh.contains_key(key))
            .map(|(_, lease)| lease);
        let added = fresh
            .iter()
            .filter(|(key, new)| {
                self.leases
                    .get(key)
                    .is_none_or(|old| old.attrs != new.attrs)
            })
            .map(|(_, lease)| lease);
        // at its size at once: a first listing adds thousands
        let mut events = Vec::with_capacity(removed.clone().count() + added.clone().count());
        events.extend(
            removed
                .map(|l| LeaseEvent::Removed(Arc::clone(l)))
                .chain(added.map(|l| LeaseEvent::Added(Arc::clone(l)))),
        );
        self.leases = fresh;
        events
    }

    /// Records a new version of one lease; an event when it is new or its attributes changed.
    pub fn put(&mut self, lease: Lease) -> Option<LeaseEvent> {
        let key = lease.key();
        let lease = Arc::new(lease);
        match self.leases.get(&key) {
            Some(old) if old.attrs == lease.attrs => {
                // A renewal: keep the newer expiration, say nothing.
                self.leases.insert(key, lease);
                None
            }
            _ => {
                self.leases.insert(key, Arc::clone(&lease));
                Some(LeaseEvent::Added(lease))
            }
        }
    }

    /// Forgets a lease; `Removed` with its last version when it was known.
    pub fn remove(&mut self, key: &SubnetKey) -> Option<LeaseEvent> {
        self.leases.remove(key).map(LeaseEvent::Removed)
    }

    /// Applies the changes of one watch response in order (`Some`: a new version, `None`:
    /// gone) and returns the net events: one per lease at most, from its state before the
    /// batch to its state after. A lease written and deleted within the batch (a watch
    /// catching up gets many revisions in one response) yields nothing; both events would
    /// leave it programmed by a consumer that applies removals first.
    pub fn apply(
        &mut self,
        changes: impl IntoIterator<Item = (SubnetKey, Option<Lease>)>,
    ) -> Vec<LeaseEvent> {
        let mut before: BTreeMap<SubnetKey, Option<Arc<Lease>>> = BTreeMap::new();
        for (key, change) in changes {
            before
                .entry(key)
                .or_insert_with(|| self.leases.get(&key).cloned());
            match change {
                Some(lease) => {
                    self.leases.insert(key, Arc::new(lease));
                }
                None => {
                    self.leases.remove(&key);
                }
            }
        }
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for (key, old) in before {
            match (old, self.leases.get(&key)) {
                (Some(old), None) => removed.push(LeaseEvent::Removed(old)),
                (None, Some(new)) => added.push(LeaseEvent::Added(Arc::clone(new))),
                (Some(old), Some(new)) if old.attrs != new.attrs => {
                    added.push(LeaseEvent::Added(Arc::clone(new)));
                }
                _ => {}
            }
        }
        removed.extend(added);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_net::{Expiration, LeaseAttrs};

    fn lease(subnet: &str, ip: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: None,
                backend_v6_data: None,
            },
            expiration: Expiration::Unknown,
        }
    }

    fn names(events: &[LeaseEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                LeaseEvent::Added(l) => format!("+{}", l.subnet),
                LeaseEvent::Removed(l) => format!("-{}", l.subnet),
            })
            .collect()
    }

    #[test]
    fn a_batch_yields_one_net_event_per_lease() {
        let mut set = LeaseSet::default();
        set.put(lease("10.1.1.0/24", "192.0.2.1"));
        set.put(lease("10.1.2.0/24", "192.0.2.2"));
        let key = |s: &str| lease(s, "192.0.2.9").key();
        let events = set.apply(vec![
            // written and deleted within the batch: nothing
            (key("10.1.3.0/24"), Some(lease("10.1.3.0/24", "192.0.2.3"))),
            (key("10.1.3.0/24"), None),
            // deleted and written again unchanged: nothing
            (key("10.1.1.0/24"), None),
            (key("10.1.1.0/24"), Some(lease("10.1.1.0/24", "192.0.2.1"))),
            // changed twice: the last version
            (key("10.1.2.0/24"), Some(lease("10.1.2.0/24", "192.0.2.20"))),
            (key("10.1.2.0/24"), Some(lease("10.1.2.0/24", "192.0.2.22"))),
            // new
            (key("10.1.4.0/24"), Some(lease("10.1.4.0/24", "192.0.2.4"))),
        ]);
        assert_eq!(names(&events), vec!["+10.1.2.0/24", "+10.1.4.0/24"]);
        let LeaseEvent::Added(changed) = &events[0] else {
            unreachable!()
        };
        assert_eq!(changed.attrs.public_ip.to_string(), "192.0.2.22");
        let events = set.apply(vec![(key("10.1.4.0/24"), None)]);
        assert_eq!(names(&events), vec!["-10.1.4.0/24"]);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn reset_reports_only_the_difference() {
        let mut set = LeaseSet::default();
        let first = set.reset(vec![
            lease("10.1.1.0/24", "192.0.2.1"),
            lease("10.1.2.0/24", "192.0.2.2"),
        ]);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|e| matches!(e, LeaseEvent::Added(_))));
        // .1 unchanged, .2 gone, .3 new, and .4 changed its PublicIP
        set.put(lease("10.1.4.0/24", "192.0.2.4"));
        let events = set.reset(vec![
            lease("10.1.1.0/24", "192.0.2.1"),
            lease("10.1.3.0/24", "192.0.2.3"),
            lease("10.1.4.0/24", "192.0.2.44"),
        ]);
        assert_eq!(
            events,
            vec![
                LeaseEvent::removed(lease("10.1.2.0/24", "192.0.2.2")),
                LeaseEvent::added(lease("10.1.3.0/24", "192.0.2.3")),
                LeaseEvent::added(lease("10.1.4.0/24", "192.0.2.44")),
            ]
        );
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn put_is_silent_for_renewals_and_remove_returns_the_last_version() {
        let mut set = LeaseSet::default();
        assert!(set.put(lease("10.1.1.0/24", "192.0.2.1")).is_some());
        assert!(set.put(lease("10.1.1.0/24", "192.0.2.1")).is_none());
        assert_eq!(
            set.put(lease("10.1.1.0/24", "192.0.2.9")),
            Some(LeaseEvent::added(lease("10.1.1.0/24", "192.0.2.9")))
        );
        let key = lease("10.1.1.0/24", "192.0.2.9").key();
        assert_eq!(
            set.remove(&key),
            Some(LeaseEvent::removed(lease("10.1.1.0/24", "192.0.2.9")))
        );
        assert_eq!(set.remove(&key), None);
        assert!(set.is_empty());
    }
}
