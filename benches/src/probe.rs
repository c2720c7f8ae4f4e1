//! Looking at a lab host from the harness: a thread inside the host's namespace with its own
//! runtime, the kernel's netlink notifications, etcd, the healthz server, /proc.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::MulticastGroup;

/// Runs `f` on a new thread inside the named namespace, with a current-thread runtime.
pub fn in_netns<T: Send + 'static, F, Fut>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    spawn_in_netns(ns, f)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// [`in_netns`] without waiting: the thread's handle.
pub fn spawn_in_netns<T: Send + 'static, F, Fut>(ns: &str, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

/// A kernel entry flannel programs for a peer, as the notifications name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entry {
    Route(IpAddr, u8),
    /// A neighbour entry: ARP (IPv4) or NDP (IPv6).
    Arp(IpAddr),
    Fdb([u8; 6]),
}

/// The three entries of a peer with this subnet (network address, /24) and MAC.
pub fn peer_entries(subnet: Ipv4Addr, mac: [u8; 6]) -> [Entry; 3] {
    [
        Entry::Route(IpAddr::V4(subnet), 24),
        Entry::Arp(IpAddr::V4(subnet)),
        Entry::Fdb(mac),
    ]
}

fn neigh_entry(n: &NeighbourMessage) -> Option<Entry> {
    if n.header.family == AddressFamily::Bridge {
        n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(l);
                Some(Entry::Fdb(m))
            }
            _ => None,
        })
    } else {
        n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                Some(Entry::Arp(IpAddr::V4(*ip)))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                Some(Entry::Arp(IpAddr::V6(*ip)))
            }
            _ => None,
        })
    }
}

/// (added?, entry) for a notification about a peer entry.
pub fn classify(msg: &RouteNetlinkMessage) -> Option<(bool, Entry)> {
    match msg {
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                _ => None,
            })?;
            Some((
                matches!(msg, RouteNetlinkMessage::NewRoute(_)),
                Entry::Route(dst, r.header.destination_prefix_length),
            ))
        }
        RouteNetlinkMessage::NewNeighbour(n) => Some((true, neigh_entry(n)?)),
        RouteNetlinkMessage::DelNeighbour(n) => Some((false, neigh_entry(n)?)),
        _ => None,
    }
}

/// The kernel's notifications of routes and neighbours, with a large receive buffer so that
/// thousands of changes in a burst are not dropped.
pub struct Watch {
    events: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
}

impl Watch {
    pub fn start() -> Watch {
        let (mut conn, _handle, events) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])
        .expect("netlink");
        {
            use rtnetlink::sys::AsyncSocket;
            let _ = conn
                .socket_mut()
                .socket_mut()
                .set_rx_buf_sz(64 * 1024 * 1024);
        }
        tokio::spawn(conn);
        Watch { events }
    }

    /// Waits until every entry of `want` was added (or, `added` false, removed); returns
    /// the time it took from `since`, or `None` on timeout.
    pub async fn until(
        &mut self,
        want: &[Entry],
        added: bool,
        since: Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        let mut pending: HashSet<&Entry> = want.iter().collect();
        let deadline = tokio::time::Instant::from_std(since + timeout);
        while !pending.is_empty() {
            let next = tokio::time::timeout_at(deadline, self.events.next())
                .await
                .ok()??;
            if let NetlinkPayload::InnerMessage(msg) = next.0.payload {
                if let Some((a, e)) = classify(&msg) {
                    if a == added {
                        pending.remove(&e);
                    }
                }
            }
        }
        Some(since.elapsed())
    }

    /// Drops the notifications received so far.
    pub fn drain(&mut self) {
        while self.events.try_recv().is_ok() {}
    }
}

/// `GET path` on the host's healthz server: the status code.
pub fn http_status(ip: Ipv4Addr, port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A field of /proc/<pid>/status in KiB (VmHWM, VmRSS).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(&format!("{field}:")))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// etcd's count of gRPC messages received (all requests, stream messages included).
pub fn etcd_messages(etcd_ns: &str) -> f64 {
    etcd_metric(etcd_ns, "grpc_server_msg_received_total")
}

/// The sum of every series of metric `name` that the etcd in `etcd_ns` reports.
pub fn etcd_metric(etcd_ns: &str, name: &str) -> f64 {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            etcd_ns,
            "curl",
            "-s",
            "http://127.0.0.1:2379/metrics",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wrappers on PATH that log every exec of the tools a flanneld may start (any binary's:
/// upstream's iptables calls as ours): put in `dir/shims`; returns the PATH that puts them
/// first and the log, one line per exec.
pub fn exec_shims(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let log = dir.join("exec.log");
    let bin = dir.join("shims");
    std::fs::create_dir_all(&bin).expect("shim dir");
    for tool in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
        "nft",
        "ip",
        "ethtool",
        "sysctl",
        "modprobe",
    ] {
        let real = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if real.is_empty() {
            continue;
        }
        let path = bin.join(tool);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho {tool} >> {}\nexec {real} \"$@\"\n",
                log.display()
            ),
        )
        .expect("shim");
        let _ = std::process::Command::new("chmod")
            .args(["+x", &path.display().to_string()])
            .status();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, log)
}
