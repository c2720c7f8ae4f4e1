//! This node's address on a tunnel device (VXLAN's, WireGuard's): the subnet's network
//! address as a host address (/32, /128), as upstream gives it; other addresses of the flannel
//! network on the device are removed (upstream v0.10 crashlooped on those, #1060).

use ipnetwork::IpNetwork;
use tracing::info;

use crate::netlink::Netlink;
use crate::BackendError;

/// Gives link `index` (named `name`) the address of `own` in `network`, alone of the
/// network's.
pub(crate) async fn ensure(
    nl: &Netlink,
    index: u32,
    name: &str,
    network: IpNetwork,
    own: IpNetwork,
) -> Result<(), BackendError> {
    let host = match own {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    };
    let want =
        IpNetwork::new(own.network(), host).map_err(|e| BackendError::Device(e.to_string()))?;
    let mut present = false;
    for addr in nl
        .addresses(index, crate::netlink::Family::of(own.ip()))
        .await?
    {
        if addr == want {
            present = true;
        } else if network.contains(addr.ip()) {
            info!("removing stale address {addr} from {name}");
            nl.del_address(index, addr).await?;
        }
    }
    if !present {
        nl.add_address(index, want).await?;
    }
    Ok(())
}
