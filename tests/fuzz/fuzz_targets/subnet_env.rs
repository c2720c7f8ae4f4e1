//! A subnet.env left by any earlier run: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (env, _warnings) = flannel_net::SubnetEnv::parse(&String::from_utf8_lossy(data));
    let _ = env.to_string();
});
