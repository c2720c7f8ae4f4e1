//! Kubernetes mode (`-kube-subnet-mgr`): subnets from Nodes' pod CIDRs, peers from Node
//! annotations, compatible with upstream flanneld's annotations so both share a cluster.

pub mod annotations;
pub mod client;
mod list_split;
mod manager;
pub mod node;
mod node_list;
mod proto;
mod transport;

pub use annotations::Annotations;
pub use client::{ApiError, KubeApi, KubeSettings};
pub use manager::KubeSubnetManager;
