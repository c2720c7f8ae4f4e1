//! A lease value written by another node: never a panic, and what parses writes back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(attrs) = flannel_net::LeaseAttrs::from_json(data) {
        let again = flannel_net::LeaseAttrs::from_json(attrs.to_json().as_bytes()).expect("our own JSON parses");
        assert_eq!(again.public_ip, attrs.public_ip);
        let _ = attrs.vxlan_data();
    }
});
