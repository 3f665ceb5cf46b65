//! Cluster API objects for the tests: API resources, an in-memory demo cluster, and rollout
//! checks by CAPI's own criteria (the controller's `gate` module, fed from the API).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

pub const CLUSTER_V1BETA1: &str = "cluster.x-k8s.io/v1beta1";
pub const CONTROLPLANE_V1BETA1: &str = "controlplane.cluster.x-k8s.io/v1beta1";
pub const BOOTSTRAP_V1BETA1: &str = "bootstrap.cluster.x-k8s.io/v1beta1";
pub const INFRA_V1BETA1: &str = "infrastructure.cluster.x-k8s.io/v1beta1";

/// The API resource of `kind` in `api_version` (plural = lowercase kind + "s", true for every
/// kind used here).
pub fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

pub fn api(client: &kube::Client, ns: &str, api_version: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource(api_version, kind))
}

pub fn kcp_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    api(client, ns, CONTROLPLANE_V1BETA1, "KubeadmControlPlane")
}
pub fn md_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    api(client, ns, CLUSTER_V1BETA1, "MachineDeployment")
}
pub fn machine_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    api(client, ns, CLUSTER_V1BETA1, "Machine")
}
pub fn dev_machine_template_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    api(client, ns, INFRA_V1BETA1, "DevMachineTemplate")
}

/// A DevMachineTemplate using CAPD's in-memory backend with short, fixed provisioning times,
/// so a machine is "running" a few seconds after it is created.
pub fn dev_machine_template(name: &str) -> Value {
    let quick = json!({"provisioning": {"startupDuration": "2s", "startupJitter": "0.2"}});
    json!({
        "apiVersion": INFRA_V1BETA1,
        "kind": "DevMachineTemplate",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"backend": {"inMemory": {
            "vm": {"provisioning": {"startupDuration": "3s", "startupJitter": "0.2"}},
            "node": quick, "apiServer": quick, "etcd": quick,
        }}}}}
    })
}

/// An in-memory workload cluster: Cluster + DevCluster, a KubeadmControlPlane with
/// `cp_replicas` replicas, and one MachineDeployment per entry of `pools` (name, replicas),
/// all at Kubernetes `version`. Templates are named `<cluster>-cp-<suffix>` and
/// `<cluster>-md-<suffix>`.
pub fn in_memory_cluster(
    name: &str,
    version: &str,
    template_suffix: &str,
    cp_replicas: u32,
    pools: &[(&str, u32)],
) -> Vec<Value> {
    let node_registration = json!({
        "criSocket": "unix:///var/run/containerd/containerd.sock",
        "kubeletExtraArgs": {"eviction-hard": "nodefs.available<0%,nodefs.inodesFree<0%,imagefs.available<0%"},
    });
    let mut objects = vec![
        json!({
            "apiVersion": INFRA_V1BETA1, "kind": "DevCluster",
            // CAPD v1.10's in-memory backend writes its listener annotation into
            // metadata.annotations without creating the map, and panics on a DevCluster that
            // has none (ClusterClass-made DevClusters always carry some). Give it one.
            "metadata": {"name": name, "annotations": {"upgrade.cpaas.io/fixture": "in-memory-cluster"}},
            "spec": {"backend": {"inMemory": {}}},
        }),
        dev_machine_template(&format!("{name}-cp-{template_suffix}")),
        dev_machine_template(&format!("{name}-md-{template_suffix}")),
        json!({
            "apiVersion": BOOTSTRAP_V1BETA1, "kind": "KubeadmConfigTemplate",
            "metadata": {"name": format!("{name}-workers")},
            "spec": {"template": {"spec": {"joinConfiguration": {"nodeRegistration": node_registration}}}},
        }),
        json!({
            "apiVersion": CONTROLPLANE_V1BETA1, "kind": "KubeadmControlPlane",
            "metadata": {"name": format!("{name}-cp")},
            "spec": {
                "replicas": cp_replicas,
                "version": version,
                "machineTemplate": {"infrastructureRef": {
                    "apiVersion": INFRA_V1BETA1, "kind": "DevMachineTemplate",
                    "name": format!("{name}-cp-{template_suffix}"),
                }},
                "kubeadmConfigSpec": {
                    "clusterConfiguration": {"apiServer": {"certSANs": ["localhost", "127.0.0.1"]}},
                    "initConfiguration": {"nodeRegistration": node_registration},
                    "joinConfiguration": {"nodeRegistration": node_registration},
                },
            },
        }),
        json!({
            "apiVersion": CLUSTER_V1BETA1, "kind": "Cluster",
            "metadata": {"name": name},
            "spec": {
                "clusterNetwork": {
                    "services": {"cidrBlocks": ["10.128.0.0/12"]},
                    "pods": {"cidrBlocks": ["192.168.0.0/16"]},
                    "serviceDomain": "cluster.local",
                },
                "infrastructureRef": {"apiVersion": INFRA_V1BETA1, "kind": "DevCluster", "name": name},
                "controlPlaneRef": {
                    "apiVersion": CONTROLPLANE_V1BETA1, "kind": "KubeadmControlPlane",
                    "name": format!("{name}-cp"),
                },
            },
        }),
    ];
    for (pool, replicas) in pools {
        objects.push(json!({
            "apiVersion": CLUSTER_V1BETA1, "kind": "MachineDeployment",
            "metadata": {"name": format!("{name}-{pool}")},
            "spec": {
                "clusterName": name,
                "replicas": replicas,
                "template": {"spec": {
                    "clusterName": name,
                    "version": version,
                    "bootstrap": {"configRef": {
                        "apiVersion": BOOTSTRAP_V1BETA1, "kind": "KubeadmConfigTemplate",
                        "name": format!("{name}-workers"),
                    }},
                    "infrastructureRef": {
                        "apiVersion": INFRA_V1BETA1, "kind": "DevMachineTemplate",
                        "name": format!("{name}-md-{template_suffix}"),
                    },
                }},
            },
        }));
    }
    objects
}

/// Creates each object (namespaced, in `ns`) through the API.
pub async fn create_all(client: &kube::Client, ns: &str, objects: &[Value]) -> Result<()> {
    for obj in objects {
        let kind = obj["kind"].as_str().context("object without kind")?;
        let api_version = obj["apiVersion"]
            .as_str()
            .context("object without apiVersion")?;
        let dynamic: DynamicObject = serde_json::from_value(obj.clone())?;
        api(client, ns, api_version, kind)
            .create(&PostParams::default(), &dynamic)
            .await
            .with_context(|| {
                format!(
                    "creating {kind} {}",
                    dynamic.metadata.name.as_deref().unwrap_or("?")
                )
            })?;
    }
    Ok(())
}

/// What keeps the KubeadmControlPlane `name` from being completely rolled out at `version`
/// (empty when it is done).
pub async fn kcp_rollout_pending(
    client: &kube::Client,
    ns: &str,
    name: &str,
    version: &str,
) -> Result<Vec<String>> {
    let kcp: upgrade_controller::capi::KubeadmControlPlane =
        serde_json::from_value(serde_json::to_value(kcp_api(client, ns).get(name).await?)?)?;
    let machines = machines(
        client,
        ns,
        &format!("cluster.x-k8s.io/control-plane-name={name}"),
    )
    .await?;
    let machines: Vec<_> = machines.iter().collect();
    Ok(upgrade_controller::decide::gate::control_plane_pending(
        &kcp, &machines, version,
    ))
}

async fn machines(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> Result<Vec<upgrade_controller::capi::Machine>> {
    machine_api(client, ns)
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .map(|m| Ok(serde_json::from_value(serde_json::to_value(m)?)?))
        .collect()
}

/// What keeps the MachineDeployment `name` from being completely rolled out at `version`
/// (empty when it is done).
pub async fn md_rollout_pending(
    client: &kube::Client,
    ns: &str,
    name: &str,
    version: &str,
) -> Result<Vec<String>> {
    let md: upgrade_controller::capi::MachineDeployment =
        serde_json::from_value(serde_json::to_value(md_api(client, ns).get(name).await?)?)?;
    let machines = machines(
        client,
        ns,
        &format!("cluster.x-k8s.io/deployment-name={name}"),
    )
    .await?;
    let machines: Vec<_> = machines.iter().collect();
    Ok(upgrade_controller::decide::gate::machine_deployment_pending(&md, &machines, version))
}

/// Polls `pending` until it returns nothing, failing with its last answer after `timeout`.
pub async fn wait_done<F, Fut>(what: &str, timeout: Duration, mut pending: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<String>>>,
{
    let start = Instant::now();
    loop {
        let why = pending().await?;
        if why.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!(
                "{what} not done after {}s: {}",
                timeout.as_secs(),
                why.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
