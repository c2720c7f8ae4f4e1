//! What `flanneld-rs doctor` asks of a backend: what its data path should hold for the
//! leases, compared with what the kernel holds, as findings (one line each, with what it
//! means and what to do). Each backend answers in its own module (`vxlan/inspect.rs`,
//! `hostgw/inspect.rs`) through its row of the table; reads only.

use flannel_net::{Lease, NetworkConfig};

use crate::netlink::Netlink;
use crate::ExtIface;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    /// The area: `daemon`, `store`, `lease`, `subnet.env`, `device`, `peers`, `rules`, `host`.
    pub check: &'static str,
    pub status: Status,
    pub text: String,
    /// What it means and what to do (empty for an ok).
    pub advice: String,
}

/// Findings, in the order they were found.
#[derive(Debug, Default)]
pub struct Findings {
    pub list: Vec<Finding>,
}

impl Findings {
    pub fn ok(&mut self, check: &'static str, text: impl Into<String>) {
        self.push(check, Status::Ok, text.into(), String::new());
    }

    pub fn warn(
        &mut self,
        check: &'static str,
        text: impl Into<String>,
        advice: impl Into<String>,
    ) {
        self.push(check, Status::Warn, text.into(), advice.into());
    }

    pub fn fail(
        &mut self,
        check: &'static str,
        text: impl Into<String>,
        advice: impl Into<String>,
    ) {
        self.push(check, Status::Fail, text.into(), advice.into());
    }

    fn push(&mut self, check: &'static str, status: Status, text: String, advice: String) {
        self.list.push(Finding {
            check,
            status,
            text,
            advice,
        });
    }
}

/// What the data path checks look at: the config, this node's lease, every lease, the
/// external interface.
pub struct Inspect<'a> {
    pub config: &'a NetworkConfig,
    pub lease: &'a Lease,
    pub leases: &'a [Lease],
    pub ext: &'a ExtIface,
    pub nl: &'a Netlink,
    /// The PublicIP is not an address of the interface (`-public-ip` behind NAT).
    pub behind_nat: bool,
}

/// `none` for an absent value.
pub(crate) fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// A tunnel device of the backend, said: `name` of link kind `kind` (`ipip`, `tun`; `what`
/// names it in the failure, as upstream's refusal does), its MTU against `mtu` when known.
/// Its index, or `None` when it is missing or of another kind.
pub(crate) async fn device_finding(
    nl: &Netlink,
    name: &str,
    kind: &str,
    what: &str,
    mtu: Option<u32>,
    r: &mut Findings,
) -> Option<u32> {
    let link = match nl.link_by_name(name).await {
        Ok(Some(link)) if link.is_kind(kind) => link,
        Ok(Some(_)) => {
            r.fail(
                "device",
                format!("{name} isn't {what}"),
                format!("flanneld-rs refuses to start over it: remove it (ip link del {name})"),
            );
            return None;
        }
        Ok(None) => {
            r.fail(
                "device",
                format!("{name} is missing"),
                "no pod traffic leaves or reaches this node; a running flanneld-rs makes it again within milliseconds: is it running?",
            );
            return None;
        }
        Err(e) => {
            r.fail("device", format!("reading {name}: {e}"), "");
            return None;
        }
    };
    match mtu.filter(|m| *m != link.mtu) {
        Some(m) => r.warn(
            "device",
            format!("{name} has MTU {}, the interface gives {m}", link.mtu),
            "flanneld-rs sets it at start",
        ),
        None => r.ok("device", format!("{name} up={} mtu {}", link.up, link.mtu)),
    }
    Some(link.index)
}
