//! Start-up of kube mode (`-kube-subnet-mgr`, upstream `kube.NewSubnetManager`): the network
//! config from `-net-config-path`, the API client, this node's name (`NODE_NAME`, else the
//! node of pod `POD_NAMESPACE/POD_NAME`), and the operator's `node-public-ip` annotations.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use flannel_net::NetworkConfig;
use flannel_subnet::kube::{KubeApi, KubeSubnetManager};
use flannel_subnet::SubnetManager;
use tracing::{info, warn};

use crate::cli::CliError;
use crate::options::{check_node_address, check_node_address6, KubeOptions, Options};

/// The kube subnet manager, once its config, client and node name are known. An API server
/// that does not answer is waited for (said every 3 s); settings that can never work end
/// start-up with upstream's words.
pub async fn subnet_manager(kube: &KubeOptions) -> anyhow::Result<Box<dyn SubnetManager>> {
    let (config, api) = config_and_client(kube).await?;
    let node_name = node_name(&api).await?;
    let sm = KubeSubnetManager::new(
        api,
        kube.annotations.clone(),
        node_name,
        config,
        kube.set_node_network_unavailable,
    );
    info!("Created subnet manager: {}", sm.name());
    Ok(Box::new(sm))
}

/// The same for `lease show`, which reads only: no node name is needed (`NODE_NAME` names
/// one when set).
pub async fn subnet_manager_for_listing(
    kube: &KubeOptions,
) -> anyhow::Result<Box<dyn SubnetManager>> {
    let (config, api) = config_and_client(kube).await?;
    let node = env("NODE_NAME").unwrap_or_default();
    Ok(Box::new(KubeSubnetManager::new(
        api,
        kube.annotations.clone(),
        node,
        config,
        false,
    )))
}

/// What can never work, found before anything is touched (exit 2, as for etcd's
/// certificate files): the net conf missing or invalid, the kubeconfig unreadable, no API
/// settings outside a pod, no node name (upstream's words where it has them).
pub fn check_settings(kube: &KubeOptions) -> Result<(), CliError> {
    read_net_conf(kube).map_err(|e| CliError(e.to_string()))?;
    kube.settings.check().map_err(CliError)?;
    if env("NODE_NAME").is_none() && (env("POD_NAME").is_none() || env("POD_NAMESPACE").is_none()) {
        return Err(CliError(
            "env variables POD_NAME and POD_NAMESPACE must be set".into(),
        ));
    }
    Ok(())
}

fn read_net_conf(kube: &KubeOptions) -> anyhow::Result<NetworkConfig> {
    let path = &kube.net_config_path;
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("failed to read net conf: open {}: {e}", path.display()))?;
    NetworkConfig::parse(&text).map_err(|e| anyhow!("error parsing subnet config: {e}"))
}

async fn config_and_client(kube: &KubeOptions) -> anyhow::Result<(NetworkConfig, KubeApi)> {
    let config = read_net_conf(kube)?;
    let api = KubeApi::connect(&kube.settings)
        .await
        .map_err(|e| anyhow!(e))?;
    Ok((config, api))
}

/// An environment variable that is set and not empty (upstream treats empty as unset).
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn node_name(api: &KubeApi) -> anyhow::Result<String> {
    if let Some(name) = env("NODE_NAME") {
        return Ok(name);
    }
    let (Some(pod), Some(namespace)) = (env("POD_NAME"), env("POD_NAMESPACE")) else {
        // upstream's words
        bail!("env variables POD_NAME and POD_NAMESPACE must be set");
    };
    loop {
        match api.pod_node_name(&namespace, &pod).await {
            Ok(name) if name.is_empty() => {
                bail!("node name not present in pod spec '{namespace}/{pod}'")
            }
            Ok(name) => return Ok(name),
            Err(e) if e.is_transient() => {
                warn!("error retrieving pod spec for '{namespace}/{pod}': {e}; retrying in 3s");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(e) => bail!("error retrieving pod spec for '{namespace}/{pod}': {e}"),
        }
    }
}

/// Upstream `GetStoredPublicIP`: the node's `node-public-ip(v6)` annotations replace
/// `-public-ip(v6)`. Unreadable now: said, and the flags stay.
pub async fn apply_stored_public_ips(
    sm: &dyn SubnetManager,
    opts: &mut Options,
) -> anyhow::Result<()> {
    match sm.stored_public_ips().await {
        Ok((v4, v6)) => {
            if let Some(ip) = v4 {
                check_node_address(ip).map_err(|e| anyhow!("node-public-ip annotation: {e}"))?;
                info!("using the public IP {ip} of the node's node-public-ip annotation");
                opts.public_ip = Some(ip);
            }
            if let Some(ip) = v6 {
                check_node_address6(ip).map_err(|e| anyhow!("node-public-ipv6 annotation: {e}"))?;
                info!("using the public IPv6 {ip} of the node's node-public-ipv6 annotation");
                opts.public_ipv6 = Some(ip);
            }
        }
        Err(e) if e.is_transient() => {
            warn!("Failed to get node for backend data: {e}")
        }
        Err(e) => return Err(anyhow!(e)).context("reading the node's public IP annotations"),
    }
    Ok(())
}
