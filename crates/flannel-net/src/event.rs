//! Lease events: what a subnet manager emits and a backend consumes (upstream
//! `subnet.Event` / `LeaseWatchResult`). Defined here, in the vocabulary, so that the two meet
//! without knowing each other.

use std::sync::Arc;

use crate::lease::Lease;

/// The lease is shared with the watcher's lease set: a first listing's thousands of events
/// are a pointer each, not a copy of every lease (a megabyte at 5 000 leases, held while the
/// backend applies them).
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// A new lease, or a lease whose attributes changed (the new version).
    Added(Arc<Lease>),
    /// A lease that is gone (the last version seen: its VTEP MAC is needed to clean up).
    Removed(Arc<Lease>),
}

impl LeaseEvent {
    pub fn added(lease: Lease) -> Self {
        LeaseEvent::Added(Arc::new(lease))
    }

    pub fn removed(lease: Lease) -> Self {
        LeaseEvent::Removed(Arc::new(lease))
    }

    pub fn lease(&self) -> &Lease {
        match self {
            LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l,
        }
    }
}

/// What a lease watch delivers at a time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseBatch {
    /// At most one event per subnet: what moves a consumer from the state before the batch
    /// to the state after it. Consumers may apply a batch's removals before its additions.
    pub events: Vec<LeaseEvent>,
    /// True when this batch follows a full listing: after applying it the consumer knows
    /// every lease there is (the first batch of a watch is always one, even if empty).
    pub snapshot: bool,
}

impl LeaseBatch {
    /// A batch of additions only (tests, benchmarks).
    pub fn added(leases: impl IntoIterator<Item = Lease>) -> Self {
        LeaseBatch {
            events: leases.into_iter().map(LeaseEvent::added).collect(),
            snapshot: false,
        }
    }

    /// A batch of removals only (tests, benchmarks).
    pub fn removed(leases: impl IntoIterator<Item = Lease>) -> Self {
        LeaseBatch {
            events: leases.into_iter().map(LeaseEvent::removed).collect(),
            snapshot: false,
        }
    }
}
