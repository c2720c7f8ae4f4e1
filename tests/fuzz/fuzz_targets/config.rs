//! The network config from etcd: parse and check must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(mut config) = flannel_net::NetworkConfig::parse(text) {
            if config.check().is_ok() {
                let _ = config.to_string();
                let _ = config.is_compatible(config.network);
            }
        }
    }
});
