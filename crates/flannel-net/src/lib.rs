//! The flannel vocabulary, shared by every other crate of flanneld-rs.
//!
//! Everything here is pure (no network, no kernel) except the atomic write of subnet.env.
//! The formats are upstream flanneld's, byte for byte where it writes them and as tolerant
//! as Go's `encoding/json` where it reads them: JSON keys match case-insensitively, unknown
//! keys are ignored, values of older releases (v0.10, v0.16) parse.

mod gojson;

pub mod backend_kind;
pub mod cert_validity;
pub mod cni;
pub mod config;
pub mod event;
pub mod family;
pub mod lease;
pub mod mac;
pub mod subnet_env;
pub mod subnet_key;
pub mod time;

pub use backend_kind::BackendKind;
pub use config::{ConfigError, NetworkConfig};
pub use event::{LeaseBatch, LeaseEvent};
pub use family::Family;
pub use lease::{
    BackendData, Expiration, Lease, LeaseAttrs, LeaseError, VxlanBackendData, MAX_LEASE_VALUE_LEN,
};
pub use mac::MacAddr;
pub use subnet_env::{SubnetEnv, SubnetEnvError};
pub use subnet_key::{SubnetKey, SubnetKeyError};
