//! The udp backend's data path, run by flanneld-rs itself (upstream's is a C loop,
//! `proxy_amd64.c`, one thread polling both ends and moving one packet per system call).
//! Here each direction has its own thread, so the two use two cores, and packets move in
//! batches: up to [`BATCH`] read from the TUN device go out in one `sendmmsg`, up to as many
//! datagrams come in through one `recvmmsg`. The wire format is upstream's, so the two
//! interoperate: the bare IP packet as the UDP payload, its TTL decremented at each end.
//!
//! Better than upstream's: a datagram from an address that is no node of the network is
//! dropped (upstream writes whatever reaches its port into the TUN device, for the kernel to
//! route), and no "net unreachable" is sent before the leases were first listed (a restart
//! would otherwise turn away the first packets of every flow).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrIn};
use tracing::warn;

use super::packet;
use crate::DataPathStats;

/// Packets moved per system call.
pub const BATCH: usize = 32;

/// Where each peer subnet's packets go, as the data path reads it.
#[derive(Debug, Default)]
pub struct PeerTable {
    /// Per prefix length, longest first: the subnet's network address → the peer's socket.
    by_prefix: Vec<(u8, HashMap<u32, SocketAddrV4>)>,
    /// The peers' addresses: datagrams from anything else are dropped.
    sources: HashSet<Ipv4Addr>,
    /// A complete listing of the leases is in it.
    listed: bool,
}

impl PeerTable {
    pub fn new<'a>(
        peers: impl IntoIterator<Item = (&'a Ipv4Network, &'a SocketAddrV4)>,
        listed: bool,
    ) -> Self {
        let mut by_prefix: Vec<(u8, HashMap<u32, SocketAddrV4>)> = Vec::new();
        let mut sources = HashSet::new();
        for (subnet, to) in peers {
            sources.insert(*to.ip());
            let key = u32::from(subnet.network());
            match by_prefix.iter_mut().find(|(p, _)| *p == subnet.prefix()) {
                Some((_, map)) => {
                    map.insert(key, *to);
                }
                None => by_prefix.push((subnet.prefix(), HashMap::from([(key, *to)]))),
            }
        }
        by_prefix.sort_by_key(|(prefix, _)| std::cmp::Reverse(*prefix));
        PeerTable {
            by_prefix,
            sources,
            listed,
        }
    }

    /// The socket of the peer whose subnet holds `dst`.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<SocketAddrV4> {
        let dst = u32::from(dst);
        self.by_prefix.iter().find_map(|(prefix, map)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
            map.get(&(dst & mask)).copied()
        })
    }

    pub fn knows(&self, source: Ipv4Addr) -> bool {
        self.sources.contains(&source)
    }
}

/// What the data path's threads share with the backend.
#[derive(Debug, Default)]
pub struct Shared {
    table: RwLock<Arc<PeerTable>>,
    pub stats: Arc<DataPathStats>,
}

impl Shared {
    /// Replaces the peer table (the threads pick it up at their next batch).
    pub fn set_table(&self, table: PeerTable) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        *t = Arc::new(table);
    }

    fn table(&self) -> Arc<PeerTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The running data path: a thread per direction until [`Proxy::stop`].
pub struct Proxy {
    stop: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

/// What a thread of the data path is given.
struct Ends {
    tun: Arc<File>,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    stop: Arc<EventFd>,
    /// The largest packet: the TUN device's MTU.
    mtu: usize,
}

impl Proxy {
    pub fn start(
        tun: File,
        socket: Arc<UdpSocket>,
        shared: Arc<Shared>,
        mtu: u32,
    ) -> io::Result<Proxy> {
        let stop = Arc::new(EventFd::new()?);
        let tun = Arc::new(tun);
        let ends = || Ends {
            tun: tun.clone(),
            socket: socket.clone(),
            shared: shared.clone(),
            stop: stop.clone(),
            mtu: mtu as usize,
        };
        let out = ends();
        let inward = ends();
        let threads = vec![
            std::thread::Builder::new()
                .name("udp-tun-to-net".into())
                .spawn(move || out.tun_to_udp())?,
            std::thread::Builder::new()
                .name("udp-net-to-tun".into())
                .spawn(move || inward.udp_to_tun())?,
        ];
        Ok(Proxy { stop, threads })
    }

    /// Stops both threads and waits for them (they wake at once).
    pub fn stop(self) {
        let _ = self.stop.write(1);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Logs a failure at most every few seconds (a broken peer sends thousands a second).
struct Throttle(Option<Instant>);

impl Throttle {
    fn warn(&mut self, what: impl FnOnce() -> String) {
        if self.0.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            self.0 = Some(Instant::now());
            warn!("{}", what());
        }
    }
}

impl Ends {
    /// Waits until `fd` is readable; false when the data path is stopped (or the fd broke:
    /// then it waits for the stop).
    fn wait(&self, fd: &impl AsFd) -> bool {
        loop {
            let mut fds = [
                PollFd::new(fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("udp data path: poll: {e}");
                    return self.wait_for_stop();
                }
                Ok(_) => {}
            }
            if fds[1].any().unwrap_or(true) {
                return false;
            }
            let r = fds[0].revents().unwrap_or(PollFlags::empty());
            if r.contains(PollFlags::POLLIN) {
                return true;
            }
            if r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
                // the device deleted under us: the reconcile makes it again and restarts us
                return self.wait_for_stop();
            }
        }
    }

    fn wait_for_stop(&self) -> bool {
        let mut fds = [PollFd::new(self.stop.as_fd(), PollFlags::POLLIN)];
        while matches!(poll(&mut fds, PollTimeout::NONE), Err(Errno::EINTR)) {}
        false
    }

    /// The node's packets for other nodes: TUN device → peers.
    fn tun_to_udp(self) {
        let stats = &self.shared.stats;
        let mut bufs = vec![vec![0u8; self.mtu]; BATCH];
        let mut lens = [0usize; BATCH];
        let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
        let mut throttle = Throttle(None);
        while self.wait(&*self.tun) {
            loop {
                let mut n = 0;
                let mut broken = false;
                while n < BATCH {
                    match (&*self.tun).read(&mut bufs[n]) {
                        Ok(len) => {
                            lens[n] = len;
                            n += 1;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            throttle.warn(|| format!("udp data path: reading the TUN device: {e}"));
                            broken = true;
                            break;
                        }
                    }
                }
                let table = self.shared.table();
                let mut out: Vec<usize> = Vec::with_capacity(n);
                let mut to: Vec<Option<SockaddrIn>> = Vec::with_capacity(n);
                for (i, buf) in bufs.iter_mut().enumerate().take(n) {
                    let p = &mut buf[..lens[i]];
                    let Some(dst) = packet::destination(p) else {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let Some(peer) = table.lookup(dst) else {
                        stats.no_route.fetch_add(1, Ordering::Relaxed);
                        if table.listed {
                            if let Some(icmp) = packet::net_unreachable(p) {
                                let _ = (&*self.tun).write(&icmp);
                            }
                        }
                        continue;
                    };
                    if !packet::decrement_ttl(p) {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    out.push(i);
                    to.push(Some(SockaddrIn::from(peer)));
                }
                let mut first = 0;
                while first < out.len() {
                    let slices: Vec<[IoSlice<'_>; 1]> = out[first..]
                        .iter()
                        .map(|&i| [IoSlice::new(&bufs[i][..lens[i]])])
                        .collect();
                    let sent = sendmmsg(
                        self.socket.as_raw_fd(),
                        &mut headers,
                        &slices,
                        &to[first..],
                        [],
                        MsgFlags::empty(),
                    )
                    .map(|r| r.count());
                    match sent {
                        Ok(k) => {
                            stats.sent.fetch_add(k as u64, Ordering::Relaxed);
                            first += k.max(1);
                            if k == 0 {
                                stats.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(Errno::EINTR) => {}
                        Err(e) => {
                            // the first of the rest failed (a peer unreachable): skip it
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            throttle.warn(|| {
                                format!(
                                    "UDP send to {} failed: {e}",
                                    to[first].map_or_else(String::new, |a| a.to_string())
                                )
                            });
                            first += 1;
                        }
                    }
                }
                if broken {
                    self.wait_for_stop();
                    return;
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }

    /// The peers' packets for this node: socket → TUN device.
    fn udp_to_tun(self) {
        let stats = &self.shared.stats;
        // a datagram longer than our MTU is cut (MSG_TRUNC) and dropped
        let mut bufs = vec![vec![0u8; self.mtu]; BATCH];
        let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
        let mut throttle = Throttle(None);
        let mut stranger = Throttle(None);
        while self.wait(&*self.socket) {
            loop {
                let received: Vec<(usize, Option<SockaddrIn>, bool)> = {
                    let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
                        .iter_mut()
                        .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                        .collect();
                    match recvmmsg(
                        self.socket.as_raw_fd(),
                        &mut headers,
                        slices.iter_mut(),
                        MsgFlags::MSG_DONTWAIT,
                        None,
                    ) {
                        Ok(r) => r
                            .map(|m| (m.bytes, m.address, m.flags.contains(MsgFlags::MSG_TRUNC)))
                            .collect(),
                        Err(Errno::EINTR) => continue,
                        Err(Errno::EAGAIN) => break,
                        Err(e) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            throttle.warn(|| format!("UDP recv failed: {e}"));
                            break;
                        }
                    }
                };
                let n = received.len();
                let table = self.shared.table();
                for (i, (len, from, truncated)) in received.into_iter().enumerate() {
                    let from = from.map(|a| a.ip()).unwrap_or(Ipv4Addr::UNSPECIFIED);
                    if !table.knows(from) {
                        stats.unknown_source.fetch_add(1, Ordering::Relaxed);
                        stranger.warn(|| {
                            format!("dropping datagrams from {from}: no node of this network has that address")
                        });
                        continue;
                    }
                    let p = &mut bufs[i][..len];
                    if truncated || packet::destination(p).is_none() || !packet::decrement_ttl(p) {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    self.write_to_tun(p, &mut throttle);
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }

    fn write_to_tun(&self, p: &[u8], throttle: &mut Throttle) {
        for _ in 0..100 {
            match (&*self.tun).write(p) {
                Ok(_) => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    throttle.warn(|| format!("TUN send failed: {e}"));
                    return;
                }
            }
        }
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_finds_a_peer_by_its_subnet_longest_prefix_first() {
        let a: Ipv4Network = "10.5.2.0/24".parse().unwrap();
        let b: Ipv4Network = "10.5.3.0/25".parse().unwrap();
        let wide: Ipv4Network = "10.5.0.0/20".parse().unwrap();
        let (pa, pb, pw) = (
            "192.0.2.2:8285".parse().unwrap(),
            "192.0.2.3:8285".parse().unwrap(),
            "192.0.2.9:8285".parse().unwrap(),
        );
        let t = PeerTable::new([(&a, &pa), (&b, &pb), (&wide, &pw)], true);
        assert_eq!(t.lookup("10.5.2.77".parse().unwrap()), Some(pa));
        assert_eq!(t.lookup("10.5.3.1".parse().unwrap()), Some(pb));
        assert_eq!(t.lookup("10.5.3.200".parse().unwrap()), Some(pw));
        assert_eq!(t.lookup("10.6.0.1".parse().unwrap()), None);
        assert!(t.knows("192.0.2.3".parse().unwrap()));
        assert!(!t.knows("192.0.2.4".parse().unwrap()));
    }
}
