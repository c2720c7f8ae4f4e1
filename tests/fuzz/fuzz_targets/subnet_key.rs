//! A key under <prefix>/subnets/: never a panic, and what parses formats back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = text.parse::<flannel_net::SubnetKey>() {
            assert_eq!(key.to_string().parse::<flannel_net::SubnetKey>().ok(), Some(key));
        }
    }
});
