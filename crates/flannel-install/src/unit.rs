//! The systemd unit, rendered from packaging/flanneld.service.in like the role renders its
//! template: flags single-dash, sorted, one per line, the last one with a trailing space.

use std::collections::BTreeMap;

const TEMPLATE: &str = include_str!("../../../packaging/flanneld.service.in");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// The installed binary, e.g. `/usr/local/sbin/flanneld`.
    pub binary: String,
    /// flanneld flags without dashes: `etcd-endpoints` -> `https://...`.
    pub flags: BTreeMap<String, String>,
    /// `ExecStartPost=` (e.g. `/sbin/ethtool -K flannel.1 tx off`).
    pub exec_start_post: Option<String>,
    /// `Before=` and `RequiredBy=docker.service` (the role always adds them).
    pub docker: bool,
    /// `ExecStartPre=`.
    pub exec_start_pre: ExecStartPre,
    /// `RestartSec=`, `LimitNOFILE=`, `LimitNPROC=` (the role's `flannel_systemd_*`).
    pub restart_sec: String,
    pub limit_nofile: String,
    pub limit_nproc: String,
}

/// The unit's `ExecStartPre=` line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ExecStartPre {
    /// `/bin/mkdir -p <the directory of -subnet-file>` (the role's default).
    #[default]
    MakeSubnetDir,
    /// This command.
    Command(String),
    /// No command: the line stays empty (the role with `flannel_systemd_execstartpre` unset).
    None,
}

/// The role's `RestartSec=`, `LimitNOFILE=` and `LimitNPROC=`.
pub const ROLE_RESTART_SEC: &str = "5";
pub const ROLE_LIMIT_NOFILE: &str = "40000";
pub const ROLE_LIMIT_NPROC: &str = "1048576";

impl UnitSpec {
    /// The directory of `-subnet-file`, made by `ExecStartPre`.
    pub fn subnet_dir(&self) -> String {
        let file = self
            .flags
            .get("subnet-file")
            .map_or("/run/flannel/subnet.env", String::as_str);
        match file.rsplit_once('/') {
            Some(("", _)) => "/".to_string(),
            Some((dir, _)) => dir.to_string(),
            None => ".".to_string(),
        }
    }

    pub fn render(&self) -> String {
        let flags: Vec<String> = self
            .flags
            .iter()
            .map(|(k, v)| format!("  -{k}={v}"))
            .collect();
        let flags = if flags.is_empty() {
            String::new()
        } else {
            flags.join(" \\\n") + " "
        };
        TEMPLATE
            .replace(
                "@@BEFORE_DOCKER@@\n",
                if self.docker {
                    "Before=docker.service\n"
                } else {
                    ""
                },
            )
            .replace(
                "@@REQUIRED_BY_DOCKER@@\n",
                if self.docker {
                    "RequiredBy=docker.service\n"
                } else {
                    ""
                },
            )
            .replace(
                "@@EXEC_START_POST@@",
                &self
                    .exec_start_post
                    .as_ref()
                    .map_or(String::new(), |c| format!("ExecStartPost={c}")),
            )
            .replace(
                "@@EXEC_START_PRE@@",
                &match &self.exec_start_pre {
                    ExecStartPre::MakeSubnetDir => {
                        format!("ExecStartPre=/bin/mkdir -p {}", self.subnet_dir())
                    }
                    ExecStartPre::Command(c) => format!("ExecStartPre={c}"),
                    ExecStartPre::None => String::new(),
                },
            )
            .replace("@@RESTART_SEC@@", &self.restart_sec)
            .replace("@@LIMIT_NOFILE@@", &self.limit_nofile)
            .replace("@@LIMIT_NPROC@@", &self.limit_nproc)
            .replace("@@BINARY@@", &self.binary)
            .replace("@@FLAGS@@", &flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit the Ansible role githubixx.flanneld renders (its `templates/flanneld.service.j2`
    /// with the role's defaults), byte for byte.
    const ROLE_UNIT: &str = "[Unit]
Description=Network fabric for containers
After=network.target
After=network-online.target
Wants=network-online.target
Before=docker.service

[Service]
Type=notify
Restart=always
RestartSec=5
LimitNOFILE=40000
LimitNPROC=1048576
ExecStartPre=/bin/mkdir -p /run/flannel

ExecStart=/usr/local/sbin/flanneld \\
  -etcd-cafile=/var/lib/kubernetes/ca-etcd.pem \\
  -etcd-certfile=/var/lib/kubernetes/cert-etcd.pem \\
  -etcd-endpoints=https://10.8.0.101:2379,https://10.8.0.102:2379,https://10.8.0.103:2379 \\
  -etcd-keyfile=/var/lib/kubernetes/cert-etcd-key.pem \\
  -etcd-prefix=/kubernetes-cluster/network \\
  -healthz-ip=0.0.0.0 \\
  -healthz-port=0 \\
  -iface=wg0 \\
  -ip-masq=true \\
  -public-ip=10.8.0.111 \\
  -subnet-file=/run/flannel/subnet.env 

[Install]
WantedBy=multi-user.target
RequiredBy=docker.service
";

    fn role_spec() -> UnitSpec {
        let flags = [
            ("etcd-cafile", "/var/lib/kubernetes/ca-etcd.pem"),
            ("etcd-certfile", "/var/lib/kubernetes/cert-etcd.pem"),
            (
                "etcd-endpoints",
                "https://10.8.0.101:2379,https://10.8.0.102:2379,https://10.8.0.103:2379",
            ),
            ("etcd-keyfile", "/var/lib/kubernetes/cert-etcd-key.pem"),
            ("etcd-prefix", "/kubernetes-cluster/network"),
            ("healthz-ip", "0.0.0.0"),
            ("healthz-port", "0"),
            ("iface", "wg0"),
            ("ip-masq", "true"),
            ("public-ip", "10.8.0.111"),
            ("subnet-file", "/run/flannel/subnet.env"),
        ];
        UnitSpec {
            binary: "/usr/local/sbin/flanneld".into(),
            flags: flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            exec_start_post: None,
            docker: true,
            exec_start_pre: ExecStartPre::MakeSubnetDir,
            restart_sec: ROLE_RESTART_SEC.into(),
            limit_nofile: ROLE_LIMIT_NOFILE.into(),
            limit_nproc: ROLE_LIMIT_NPROC.into(),
        }
    }

    #[test]
    fn renders_the_roles_unit_byte_for_byte() {
        assert_eq!(role_spec().render(), ROLE_UNIT);
    }

    #[test]
    fn exec_start_post_and_no_docker() {
        let mut s = role_spec();
        s.exec_start_post = Some("/sbin/ethtool -K flannel.1 tx off".into());
        s.docker = false;
        s.flags
            .insert("subnet-file".into(), "/run/flannel-x/subnet.env".into());
        let u = s.render();
        assert!(u.contains("ExecStartPre=/bin/mkdir -p /run/flannel-x\nExecStartPost=/sbin/ethtool -K flannel.1 tx off\nExecStart="));
        assert!(!u.contains("docker"));
        assert!(u.contains("Wants=network-online.target\n\n[Service]"));
        assert!(u.ends_with("WantedBy=multi-user.target\n"));
    }

    #[test]
    fn the_roles_flannel_systemd_variables() {
        let mut s = role_spec();
        s.restart_sec = "10".into();
        s.limit_nofile = "infinity".into();
        s.limit_nproc = "4096".into();
        s.exec_start_pre = ExecStartPre::Command("/bin/mkdir -p /run/other".into());
        let u = s.render();
        assert!(u.contains(
            "RestartSec=10\nLimitNOFILE=infinity\nLimitNPROC=4096\nExecStartPre=/bin/mkdir -p /run/other\n\nExecStart="
        ));
        // flannel_systemd_execstartpre unset: the role's template leaves the line empty
        s.exec_start_pre = ExecStartPre::None;
        assert!(s.render().contains("LimitNPROC=4096\n\n\nExecStart="));
    }
}
