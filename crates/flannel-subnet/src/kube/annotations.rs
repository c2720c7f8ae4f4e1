//! The names of flannel's Node annotations under a prefix, with upstream's prefix rules
//! (`pkg/subnet/kube/annotations.go`): at most one `/`; a `/` appended when there is none; a
//! `-` appended when the prefix ends in neither `/` nor `-`; the result must look like
//! `fqdn/[0-9a-z-_]*`.

use regex::Regex;

/// Every annotation flannel reads or writes on a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// The normalised prefix, e.g. `flannel.alpha.coreos.com/`.
    pub prefix: String,
    /// `kube-subnet-manager`: `"true"` on a node flannel runs on; only those are peers.
    pub subnet_kube_managed: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub backend_type: String,
    pub public_ip: String,
    pub public_ipv6: String,
    /// `node-public-ip`: an operator's choice of this node's public IP, read at start.
    pub node_public_ip: String,
    pub node_public_ipv6: String,
    /// `public-ip-overwrite`: copied into `public-ip` instead of the detected address.
    pub public_ip_overwrite: String,
    pub public_ipv6_overwrite: String,
}

impl Annotations {
    /// Upstream's rules and messages (`-kube-annotation-prefix`).
    pub fn new(prefix: &str) -> Result<Self, String> {
        let mut prefix = prefix.to_string();
        let slashes = prefix.matches('/').count();
        if slashes > 1 {
            return Err("subnet/kube: prefix can contain at most single slash".into());
        }
        if slashes == 0 {
            prefix.push('/');
        }
        if !prefix.ends_with('/') && !prefix.ends_with('-') {
            prefix.push('-');
        }
        // upstream's pattern, unanchored at the start as Go's MatchString is
        let pattern = Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
            .map_err(|e| e.to_string())?;
        if !pattern.is_match(&prefix) {
            return Err("subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*".into());
        }
        let name = |suffix: &str| format!("{prefix}{suffix}");
        Ok(Annotations {
            subnet_kube_managed: name("kube-subnet-manager"),
            backend_data: name("backend-data"),
            backend_v6_data: name("backend-v6-data"),
            backend_type: name("backend-type"),
            public_ip: name("public-ip"),
            public_ipv6: name("public-ipv6"),
            node_public_ip: name("node-public-ip"),
            node_public_ipv6: name("node-public-ipv6"),
            public_ip_overwrite: name("public-ip-overwrite"),
            public_ipv6_overwrite: name("public-ipv6-overwrite"),
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised_as_upstream() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        assert_eq!(a.prefix, "flannel.alpha.coreos.com/");
        assert_eq!(a.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(
            a.subnet_kube_managed,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
        assert_eq!(
            Annotations::new("example.com/flannel").unwrap().public_ip,
            "example.com/flannel-public-ip"
        );
        assert_eq!(
            Annotations::new("example.com/flannel-").unwrap().prefix,
            "example.com/flannel-"
        );
        assert_eq!(
            Annotations::new("example.com/").unwrap().prefix,
            "example.com/"
        );
    }

    #[test]
    fn bad_prefixes_get_upstreams_messages() {
        assert_eq!(
            Annotations::new("a.b/c/d").unwrap_err(),
            "subnet/kube: prefix can contain at most single slash"
        );
        for bad in ["flannel", "Example.COM/", "example.com/a.b", ""] {
            assert_eq!(
                Annotations::new(bad).unwrap_err(),
                "subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*",
                "{bad}"
            );
        }
    }
}
