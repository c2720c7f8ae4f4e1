//! The etcd v3 API: where upstream flanneld (v0.18 and later) keeps the network config and
//! the leases. [`EtcdV3Store`] serves the [`crate::store::Store`] calls over it.
//!
//! Layout (upstream's): `<prefix>/config` holds the network config, `<prefix>/subnets/<key>`
//! one lease each, the value being the node's [`flannel_net::LeaseAttrs`] as JSON, attached to
//! an etcd lease with a 24 h TTL, or to none for a reservation.

mod connect;
mod members;
mod store;
mod watch_check;

pub use connect::EtcdConfig;
pub(crate) use members::LAST_GOOD;
pub use store::EtcdV3Store;

/// `path.Join(prefix, rest)` as Go cleans it: one `/` between elements, no trailing `/`.
pub fn join_key(prefix: &str, rest: &str) -> String {
    let mut out = String::new();
    if prefix.starts_with('/') {
        out.push('/');
    }
    let parts: Vec<&str> = prefix
        .split('/')
        .chain(rest.split('/'))
        .filter(|p| !p.is_empty())
        .collect();
    out.push_str(&parts.join("/"));
    out
}

#[cfg(test)]
mod tests {
    use super::join_key;

    #[test]
    fn keys_are_cleaned_like_go_path_join() {
        assert_eq!(
            join_key("/coreos.com/network", "config"),
            "/coreos.com/network/config"
        );
        assert_eq!(
            join_key("/coreos.com/network/", "subnets"),
            "/coreos.com/network/subnets"
        );
        assert_eq!(
            join_key("//kubernetes-cluster//network", "config"),
            "/kubernetes-cluster/network/config"
        );
        assert_eq!(join_key("flannel", "config"), "flannel/config");
    }
}
