//! Errors of lease management, in the user's terms and free of any store's types: a store
//! says what failed and whether waiting may help ([`ErrorKind`]); what retries reads that.

use flannel_net::ConfigError;

/// Whether an error may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store is unreachable, electing a leader, overloaded...: retry.
    Transient,
    /// Retrying the same request cannot help (refused, malformed, not permitted).
    Permanent,
}

/// A request to the store (etcd v3, etcd v2, ...) that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{context}: {message}")]
pub struct StoreError {
    pub kind: ErrorKind,
    /// What was being done, e.g. `listing leases`.
    pub context: String,
    /// Why it failed, in the store's words.
    pub message: String,
}

impl StoreError {
    pub fn transient(context: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError {
            kind: ErrorKind::Transient,
            context: context.into(),
            message: message.into(),
        }
    }

    pub fn permanent(context: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError {
            kind: ErrorKind::Permanent,
            context: context.into(),
            message: message.into(),
        }
    }
}

/// Why a request failed, in an operator's words: the innermost cause of `e`, with an I/O
/// error's kind spelled out (`connection refused`), instead of a chain of library types.
pub fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e;
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let words = match io.kind() {
                K::ConnectionRefused => "connection refused",
                K::ConnectionReset => "connection reset",
                K::ConnectionAborted => "connection aborted",
                K::TimedOut => "timed out",
                K::HostUnreachable => "no route to host",
                K::NetworkUnreachable => "network unreachable",
                K::AddrNotAvailable => "address not available",
                // another error carried as an I/O error (TLS, a client's own): its cause
                _ => match io.get_ref() {
                    Some(inner) => {
                        innermost = inner;
                        current = inner.source();
                        continue;
                    }
                    None => return io.to_string(),
                },
            };
            return words.to_string();
        }
        innermost = err;
        current = err.source();
    }
    let text = innermost.to_string();
    if text.is_empty() {
        e.to_string()
    } else {
        text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    /// Upstream's text, logged every second while flanneld waits for the config.
    #[error(
        "flannel config not found in etcd store. Did you create your config using etcdv3 API?"
    )]
    ConfigNotFound,
    /// The same, for a store whose users never heard of etcdv3 (the v2 keys API).
    #[error("flannel config not found at {key} in the {store} keyspace")]
    NoConfigAt { key: String, store: &'static str },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("out of subnets")]
    OutOfSubnets,
    #[error("max retries reached trying to acquire a subnet")]
    MaxRetries,
    /// Our subnet's key now names another node: this node must not keep using the subnet.
    #[error("subnet {subnet} is now held by {holder}; this node ({ours}) lost its lease")]
    LeaseTaken {
        subnet: String,
        holder: String,
        ours: String,
    },
    /// This node's own lease value cannot be written (too large).
    #[error("{0}")]
    LeaseValue(#[from] flannel_net::LeaseError),
    #[error("{0} is not supported yet by flanneld-rs")]
    Unsupported(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad store setting (endpoint, certificate file, ...), found before connecting.
    #[error("{0}")]
    Setup(String),
    /// A key changed between our read and our conditional write; nothing was written.
    #[error("{0} changed while being written; run again")]
    Conflict(String),
    /// Nobody listens any more: the receiver of the watch was dropped.
    #[error("the lease watch has no receiver")]
    Closed,
}

impl SubnetError {
    /// Errors that may go away by themselves (store unreachable, leader election): retry these.
    pub fn is_transient(&self) -> bool {
        match self {
            SubnetError::Store(e) => e.kind == ErrorKind::Transient,
            SubnetError::ConfigNotFound | SubnetError::NoConfigAt { .. } => true,
            _ => false,
        }
    }
}
