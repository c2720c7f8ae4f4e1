//! Helpers the store tests share: a VXLAN node's lease attributes, a batch's events in
//! short form, the next batch of a watch.
#![allow(dead_code)] // each test file uses some of them

use std::time::Duration;

use flannel_net::{LeaseAttrs, LeaseBatch, LeaseEvent, MacAddr, VxlanBackendData};
use tokio::sync::mpsc;

pub const PREFIX: &str = "/kubernetes-cluster/network";
pub const NET16: &str = r#"{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

/// The attributes of the VXLAN node 192.168.77.`last`.
pub fn attrs(last: u8) -> LeaseAttrs {
    LeaseAttrs::vxlan(
        [192, 168, 77, last].into(),
        &VxlanBackendData {
            vni: Some(1),
            vtep_mac: MacAddr([0x0a, 0x58, 0, 0, 0, last]),
        },
    )
}

/// `+10.200.3.0/24` for an addition, `-…` for a removal.
pub fn names(batch: &LeaseBatch) -> Vec<String> {
    batch
        .events
        .iter()
        .map(|e| match e {
            LeaseEvent::Added(l) => format!("+{}", l.subnet),
            LeaseEvent::Removed(l) => format!("-{}", l.subnet),
        })
        .collect()
}

/// The next batch of a lease watch, within 20 s.
pub async fn next(rx: &mut mpsc::Receiver<LeaseBatch>) -> LeaseBatch {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a lease batch within 20 s")
        .expect("the watch goes on")
}
