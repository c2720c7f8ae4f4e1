//! WireGuard's cross-platform UAPI (https://www.wireguard.com/xplatform/): the text protocol
//! a userspace implementation (wireguard-go) serves on `/var/run/wireguard/<device>.sock`,
//! and what `wg` speaks to it. `get=1` lists the device; `set=1` changes it, any number of
//! peers in one request. Keys are hex here (base64 in `wg`'s output and in leases). Written
//! here rather than taken from the `wireguard-uapi` crate, whose userspace client comes with
//! its own netlink stack (neli 0.4, pinned) beside the rust-netlink family used everywhere
//! else.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::netlink::wireguard::{DeviceChange, Key, PeerChange, WgDevice, WgPeer};

/// Where wireguard-go serves device `name`.
pub fn socket_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{name}.sock"))
}

fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Key, String> {
    if text.len() != 64 || !text.is_ascii() {
        return Err(format!("not a hex key: {text:?}"));
    }
    let mut key = [0; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("not a hex key: {text:?}"))?;
    }
    Ok(key)
}

/// The `set=1` request of `change`.
pub fn set_request(change: &DeviceChange) -> String {
    let mut out = String::from("set=1\n");
    if let Some(k) = &change.private_key {
        out += &format!("private_key={}\n", hex(k));
    }
    if let Some(p) = change.listen_port {
        out += &format!("listen_port={p}\n");
    }
    for peer in &change.peers {
        out += &format!("public_key={}\n", hex(peer.public_key()));
        match peer {
            PeerChange::Remove(_) => out += "remove=true\n",
            PeerChange::Set(p) => {
                out += &format!(
                    "preshared_key={}\n",
                    hex(&p.preshared_key.unwrap_or([0; 32]))
                );
                if let Some(e) = p.endpoint {
                    out += &format!("endpoint={e}\n");
                }
                out += &format!("persistent_keepalive_interval={}\n", p.keepalive);
                out += "replace_allowed_ips=true\n";
                for ip in &p.allowed_ips {
                    out += &format!("allowed_ip={}/{}\n", ip.network(), ip.prefix());
                }
            }
        }
    }
    out.push('\n');
    out
}

/// The device a `get=1` reply describes (its lines up to `errno=`).
pub fn parse_get(reply: &str) -> Result<WgDevice, String> {
    let mut device = WgDevice::default();
    for line in reply.lines() {
        if line.is_empty() {
            break;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("a line that is not key=value: {line:?}"))?;
        let bad = |e: String| format!("{key}: {e}");
        match key {
            "private_key" => device.private_key = Some(unhex(value).map_err(bad)?),
            "listen_port" => {
                device.listen_port = value.parse().map_err(|_| bad(value.to_string()))?
            }
            "public_key" => device.peers.push(WgPeer {
                public_key: unhex(value).map_err(bad)?,
                endpoint: None,
                allowed_ips: Vec::new(),
                keepalive: 0,
                preshared_key: None,
            }),
            "errno" if value != "0" => return Err(format!("the device answered errno={value}")),
            _ => {
                let Some(peer) = device.peers.last_mut() else {
                    continue;
                };
                match key {
                    "preshared_key" => peer.preshared_key = Some(unhex(value).map_err(bad)?),
                    "endpoint" => {
                        peer.endpoint = Some(
                            value
                                .parse::<SocketAddr>()
                                .map_err(|e| bad(e.to_string()))?,
                        )
                    }
                    "persistent_keepalive_interval" => {
                        peer.keepalive = value.parse().map_err(|_| bad(value.to_string()))?
                    }
                    "allowed_ip" => peer
                        .allowed_ips
                        .push(value.parse::<IpNetwork>().map_err(|e| bad(e.to_string()))?),
                    _ => {}
                }
            }
        }
    }
    device.peers = device.peers.into_iter().map(WgPeer::normalized).collect();
    Ok(device)
}

/// One request on the device's socket; the reply's lines up to the blank line that ends it.
fn exchange(socket: &Path, request: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\n" {
            return Ok(reply);
        }
        reply.push_str(&line);
    }
}

/// The configuration of the device served at `socket`.
pub fn get(socket: &Path) -> Result<WgDevice, String> {
    let reply = exchange(socket, "get=1\n\n").map_err(|e| format!("{}: {e}", socket.display()))?;
    parse_get(&reply)
}

/// Applies `change` to the device served at `socket`.
pub fn set(socket: &Path, change: &DeviceChange) -> Result<(), String> {
    let reply =
        exchange(socket, &set_request(change)).map_err(|e| format!("{}: {e}", socket.display()))?;
    match reply.trim() {
        "errno=0" => Ok(()),
        other => Err(format!("the device refused the change: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_and_a_listing_read_back() {
        let peer = WgPeer {
            public_key: [1; 32],
            endpoint: Some("[2001:db8::1]:51821".parse().unwrap()),
            allowed_ips: vec![
                "10.5.3.0/24".parse().unwrap(),
                "fd00:5:3::/64".parse().unwrap(),
            ],
            keepalive: 25,
            preshared_key: Some([2; 32]),
        };
        let req = set_request(&DeviceChange {
            private_key: Some([3; 32]),
            listen_port: Some(51820),
            peers: vec![PeerChange::Set(peer.clone()), PeerChange::Remove([4; 32])],
        });
        assert!(req.starts_with("set=1\nprivate_key=0303"));
        assert!(req.contains("endpoint=[2001:db8::1]:51821\n"));
        assert!(req.contains("public_key=0404040404040404040404040404040404040404040404040404040404040404\nremove=true\n"));
        assert!(req.ends_with("\n\n"));
        // what wireguard-go answers to get=1 for that device
        let listing = req
            .replace("set=1\n", "")
            .replace("replace_allowed_ips=true\n", "")
            .replace(
                "public_key=0404040404040404040404040404040404040404040404040404040404040404\nremove=true\n",
                "",
            )
            .trim_end()
            .to_string()
            + "\nlast_handshake_time_sec=0\nrx_bytes=0\nprotocol_version=1\nerrno=0\n";
        let device = parse_get(&listing).unwrap();
        assert_eq!(device.private_key, Some([3; 32]));
        assert_eq!(device.listen_port, 51820);
        assert_eq!(device.peers, vec![peer.normalized()]);
        assert!(parse_get("errno=1\n").is_err());
        assert!(parse_get("public_key=zz\n").is_err());
    }
}
