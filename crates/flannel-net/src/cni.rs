//! What the `flannel` CNI plugin (crates/flannel-cni) and the installer's conflist agree on.

/// The CNI spec versions the plugin speaks (`cniVersion` of a conflist it accepts).
pub const CNI_VERSIONS: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
