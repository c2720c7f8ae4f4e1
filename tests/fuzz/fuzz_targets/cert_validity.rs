//! The DER of a certificate file (--etcd-certfile, --etcd-cafile): never a panic, and
//! what is read has notBefore and notAfter after the epoch.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(v) = flannel_net::cert_validity::of_der(data) {
        let _ = v.problem_at(std::time::SystemTime::now());
    }
});
