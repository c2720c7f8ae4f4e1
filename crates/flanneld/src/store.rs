//! The one way to open the store: the options (etcd v3, v2 or auto-detected; kube mode)
//! turned into a [`SubnetManager`], for the daemon, `lease show` and `doctor` alike. No
//! command compares store names; each says where it looked with [`Opened::place`].

use std::time::Duration;

use flannel_net::SubnetKey;
use flannel_subnet::etcd::EtcdConfig;
use flannel_subnet::{EtcdApi, LeasePolicy, SubnetError, SubnetManager};
use tracing::{info, warn};

use crate::options::KubeOptions;

/// Where the leases are kept, from the options.
pub struct StoreOptions<'a> {
    pub etcd: &'a EtcdConfig,
    /// `-etcd-api`: `None` for auto.
    pub etcd_api: Option<EtcdApi>,
    /// `-kube-subnet-mgr` and its settings.
    pub kube: Option<&'a KubeOptions>,
}

/// What the store is opened for.
pub enum Role {
    /// The daemon: it acquires and keeps a lease (with `policy`, reusing `previous` from the
    /// last subnet.env); with `-etcd-api=auto` it waits until either keyspace has the config.
    Daemon {
        policy: LeasePolicy,
        previous: Option<SubnetKey>,
    },
    /// `lease show`, `doctor`: they read; auto-detection looks once (v3 when neither has a
    /// config).
    Reader,
}

/// An opened store.
pub struct Opened {
    pub sm: Box<dyn SubnetManager>,
    /// The etcd API in use (`None` in kube mode), for messages that name the keyspace.
    pub api: Option<EtcdApi>,
}

impl Opened {
    /// Where the leases are, for messages: `etcd v3 API at http://…`, `Kubernetes API (…)`.
    pub fn place(&self, opts: &StoreOptions<'_>) -> String {
        match (self.api, opts.kube) {
            (Some(api), _) => format!("etcd {api} API at {}", opts.etcd.endpoints.join(",")),
            (None, Some(kube)) => format!("Kubernetes API ({})", kube_server(kube)),
            (None, None) => "the store".to_string(),
        }
    }
}

/// The API server flanneld talks to, as the settings name it.
pub fn kube_server(kube: &KubeOptions) -> String {
    kube.settings
        .api_url
        .clone()
        .or_else(|| {
            kube.settings
                .kubeconfig
                .as_ref()
                .map(|p| format!("the server of {}", p.display()))
        })
        .unwrap_or_else(|| "the in-cluster API".into())
}

/// Opens the store the options name, for `role`.
pub async fn open(opts: &StoreOptions<'_>, role: Role) -> anyhow::Result<Opened> {
    if let Some(kube) = opts.kube {
        let sm = match role {
            Role::Daemon { .. } => crate::kube_mode::subnet_manager(kube).await?,
            Role::Reader => crate::kube_mode::subnet_manager_for_listing(kube).await?,
        };
        return Ok(Opened { sm, api: None });
    }
    let (policy, previous, api) = match role {
        Role::Daemon { policy, previous } => {
            let api = match opts.etcd_api {
                Some(api) => api,
                None => wait_for_api(opts.etcd).await,
            };
            (policy, previous, api)
        }
        Role::Reader => {
            let api = match opts.etcd_api {
                Some(api) => api,
                None => flannel_subnet::detect_api(opts.etcd)
                    .await?
                    .unwrap_or(EtcdApi::V3),
            };
            (LeasePolicy::default(), None, api)
        }
    };
    let sm = flannel_subnet::manager(api, opts.etcd, policy, previous).await?;
    Ok(Opened { sm, api: Some(api) })
}

/// `-etcd-api=auto` in the daemon: v3 if `<prefix>/config` is there, else v2 if it is there,
/// else wait for either, saying so every second (upstream's line).
async fn wait_for_api(etcd: &EtcdConfig) -> EtcdApi {
    loop {
        match flannel_subnet::detect_api(etcd).await {
            Ok(Some(api)) => {
                info!(
                    "Using the etcd {api} API: {}/config is there",
                    etcd.prefix.trim_end_matches('/')
                );
                return api;
            }
            Ok(None) => warn!(
                "Couldn't fetch network config: {} (neither in the v3 nor in the v2 keyspace)",
                SubnetError::ConfigNotFound
            ),
            Err(e) => warn!("Couldn't fetch network config: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
