//! A datagram from the kernel (acks, a dump's end, dump entries of routes, neighbours, links
//! and nexthops): never a panic, whatever the bytes.
#![no_main]
use flannel_netlink::socket::{parse, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for reply in parse(data) {
        if let Reply::Message { kind, body, .. } = reply {
            let _ = flannel_netlink::dump::message(kind, body);
            let _ = flannel_netlink::nexthop::parse_entry(body);
        }
    }
});
