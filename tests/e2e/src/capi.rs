//! Cluster API objects for the tests: API resources, an in-memory demo cluster, and CAPI's own
//! "rollout complete" criteria (DOMAIN.md §5) with a readable account of what is not done yet.

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

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn condition_true(obj: &Value, type_: &str) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    })
}

/// Why the replica counters of a KCP or MD (v1beta1) do not yet say "rollout complete":
/// observedGeneration current, and spec.replicas == replicas == updatedReplicas ==
/// readyReplicas (== availableReplicas for MDs) with no unavailable replicas.
fn counters_pending(obj: &Value, with_available: bool) -> Vec<String> {
    let mut why = Vec::new();
    let generation = int(&obj["metadata"]["generation"]);
    let observed = int(&obj["status"]["observedGeneration"]);
    if observed != generation {
        why.push(format!(
            "observedGeneration {observed} != generation {generation}"
        ));
    }
    let want = int(&obj["spec"]["replicas"]);
    let mut fields = vec!["replicas", "updatedReplicas", "readyReplicas"];
    if with_available {
        fields.push("availableReplicas");
    }
    for field in fields {
        let got = int(&obj["status"][field]);
        if got != want {
            why.push(format!("status.{field} {got} != spec.replicas {want}"));
        }
    }
    let unavailable = int(&obj["status"]["unavailableReplicas"]);
    if unavailable != 0 {
        why.push(format!("status.unavailableReplicas {unavailable}"));
    }
    why
}

/// Why the given Machines are not all at `version` with a healthy node. The kubelet version is
/// compared where the node reports one (CAPD's in-memory nodes report none).
fn machines_pending(machines: &[DynamicObject], version: &str, want: i64) -> Vec<String> {
    let mut why = Vec::new();
    if machines.len() as i64 != want {
        why.push(format!("{} machines, want {want}", machines.len()));
    }
    for m in machines {
        let v = serde_json::to_value(m).unwrap_or_default();
        let name = m.metadata.name.as_deref().unwrap_or("?");
        if m.metadata.deletion_timestamp.is_some() {
            why.push(format!("machine {name} is being deleted"));
            continue;
        }
        let spec_version = v["spec"]["version"].as_str().unwrap_or("");
        if spec_version != version {
            why.push(format!("machine {name} spec.version {spec_version}"));
        }
        let kubelet = v["status"]["nodeInfo"]["kubeletVersion"]
            .as_str()
            .unwrap_or("");
        if !kubelet.is_empty() && kubelet != version {
            why.push(format!("machine {name} kubelet {kubelet}"));
        }
        if !condition_true(&v, "NodeHealthy") {
            why.push(format!("machine {name} NodeHealthy is not True"));
        }
    }
    why
}

/// What keeps the KubeadmControlPlane `name` from being completely rolled out at `version`
/// (empty when it is done).
pub async fn kcp_rollout_pending(
    client: &kube::Client,
    ns: &str,
    name: &str,
    version: &str,
) -> Result<Vec<String>> {
    let kcp = serde_json::to_value(kcp_api(client, ns).get(name).await?)?;
    let mut why = counters_pending(&kcp, false);
    let status_version = kcp["status"]["version"].as_str().unwrap_or("");
    if status_version != version {
        why.push(format!("status.version {status_version:?}"));
    }
    let machines = machine_api(client, ns)
        .list(&ListParams::default().labels(&format!("cluster.x-k8s.io/control-plane-name={name}")))
        .await?
        .items;
    why.extend(machines_pending(
        &machines,
        version,
        int(&kcp["spec"]["replicas"]),
    ));
    Ok(why)
}

/// What keeps the MachineDeployment `name` from being completely rolled out at `version`
/// (empty when it is done).
pub async fn md_rollout_pending(
    client: &kube::Client,
    ns: &str,
    name: &str,
    version: &str,
) -> Result<Vec<String>> {
    let md = serde_json::to_value(md_api(client, ns).get(name).await?)?;
    let mut why = counters_pending(&md, true);
    let machines = machine_api(client, ns)
        .list(&ListParams::default().labels(&format!("cluster.x-k8s.io/deployment-name={name}")))
        .await?
        .items;
    why.extend(machines_pending(
        &machines,
        version,
        int(&md["spec"]["replicas"]),
    ));
    Ok(why)
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
