//! Cluster API objects for the tests: API resources, an in-memory demo cluster, and rollout
//! checks by CAPI's own criteria (the controller's `gate` module, fed from the API).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::fixture;

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

/// A DevMachineTemplate using CAPD's in-memory backend with short, fixed provisioning times
/// (fixture `dev-machine-template.yaml`).
pub fn dev_machine_template(name: &str) -> Value {
    fixture::render_one("dev-machine-template.yaml", &[("NAME", &name)])
}

/// An in-memory workload cluster: Cluster + DevCluster, a KubeadmControlPlane with
/// `cp_replicas` replicas, and one MachineDeployment per entry of `pools` (name, replicas),
/// all at Kubernetes `version` (fixtures `in-memory-cluster.yaml`, `in-memory-pool.yaml`).
/// Templates are named `<cluster>-cp-<suffix>` and `<cluster>-md-<suffix>`.
pub fn in_memory_cluster(
    name: &str,
    version: &str,
    template_suffix: &str,
    cp_replicas: u32,
    pools: &[(&str, u32)],
) -> Vec<Value> {
    let mut objects = fixture::render(
        "in-memory-cluster.yaml",
        &[
            ("NAME", &name),
            ("VERSION", &version),
            ("TEMPLATE_SUFFIX", &template_suffix),
            ("CP_REPLICAS", &cp_replicas),
        ],
    );
    // The templates right after the DevCluster, as before the KCP and pools that name them.
    objects.insert(
        1,
        dev_machine_template(&format!("{name}-cp-{template_suffix}")),
    );
    objects.insert(
        2,
        dev_machine_template(&format!("{name}-md-{template_suffix}")),
    );
    for (pool, replicas) in pools {
        objects.push(fixture::render_one(
            "in-memory-pool.yaml",
            &[
                ("NAME", &name),
                ("POOL", pool),
                ("REPLICAS", replicas),
                ("VERSION", &version),
                ("TEMPLATE_SUFFIX", &template_suffix),
            ],
        ));
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

/// A dry-run merge patch of `name`: Ok, or the API server's refusal message (admission tests
/// try refused writes this way, so a refusal that did not happen changes nothing).
pub async fn dry_run_patch(
    api: &kube::Api<kube::api::DynamicObject>,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), String> {
    use kube::api::{Patch, PatchParams};
    match api
        .patch(
            name,
            &PatchParams::default().dry_run(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => Err(e.message),
        Err(e) => panic!("patching {name}: {e}"),
    }
}
