//! The `alloc` backend (upstream `pkg/backend/alloc`): the node gets a subnet and writes
//! subnet.env, and nothing else happens: no device, no routes. For clusters whose data path
//! is set up by something else.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flannel_net::{BackendKind, Lease, LeaseAttrs, LeaseBatch, NetworkConfig};
use tokio::sync::{mpsc, watch};

use crate::table::{self, Made, Row};
use crate::{Backend, BackendError, BackendStats, NodeContext};

/// The table's row of alloc: nothing to check, make or leave behind.
pub(crate) const ROW: Row = Row {
    kind: BackendKind::Alloc,
    check: table::nothing_to_check,
    make,
    gateway_routes: table::no_gateway_routes,
    leftovers: table::nothing_left,
    inspect: table::no_data_path,
    inspect_device: table::no_device,
};

fn make(_: &NetworkConfig, node: NodeContext) -> Made<'_> {
    Box::pin(async move { Ok(Box::new(AllocBackend::new(node)) as Box<dyn Backend>) })
}

pub struct AllocBackend {
    public_ip: Ipv4Addr,
    /// Upstream's `SimpleNetwork.MTU()`: the external interface's MTU.
    mtu: u32,
    stats: Arc<BackendStats>,
}

impl AllocBackend {
    pub fn new(node: NodeContext) -> Self {
        AllocBackend {
            public_ip: node.public_ip,
            mtu: node.ext.mtu,
            stats: Arc::default(),
        }
    }
}

#[async_trait]
impl Backend for AllocBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Alloc
    }

    /// `PublicIP` only, as upstream: `{"PublicIP":"192.0.2.1","PublicIPv6":null}`.
    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::public_ip_only(self.public_ip, "")
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn stats(&self) -> Arc<BackendStats> {
        self.stats.clone()
    }

    async fn configure(&mut self, _own: &Lease) -> Result<(), BackendError> {
        Ok(())
    }

    /// Nothing to program: synced at the first complete listing, then the events are read
    /// (so the watch never blocks on us) and dropped.
    async fn run(
        self: Box<Self>,
        mut events: mpsc::Receiver<LeaseBatch>,
        synced: watch::Sender<bool>,
        _resync: Duration,
    ) -> Result<(), BackendError> {
        while let Some(batch) = events.recv().await {
            if batch.snapshot {
                synced.send_replace(true);
            }
        }
        Ok(())
    }
}
