//! Observe (reads only): everything decide and the preflight look at, from the watch caches
//! ([`cache`]) — the request, its Cluster, KubeadmControlPlane, MachineDeployments, Machines,
//! MachinePools, the matrix and the ClusterVersionShadow — and, for a preflight, what the
//! caches cannot hold ([`inputs`]): the workload cluster (through its kubeconfig Secret, as
//! data), the global tier, templates, slot pools and image registrations.

pub mod cache;
pub mod inputs;
pub mod network;
pub mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::Value;

use crate::api::{OSSupportMatrix, StepState, UpgradeRequest};
use crate::capi::{self, Cluster, KubeadmControlPlane, Machine, MachineDeployment, MachinePool};
use crate::decide::kube_ovn::Network;
use crate::platform::{CvshConfig, Unmapped};
use crate::preflight::PreflightObs;

pub use cache::{Cache, ClusterKey};

/// Everything decide looks at, read from the caches (and for a preflight, the API).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub cluster: Option<Cluster>,
    pub kcp: Option<KubeadmControlPlane>,
    /// The Cluster's MachineDeployments.
    pub mds: Vec<MachineDeployment>,
    /// The Cluster's Machines.
    pub machines: Vec<Machine>,
    pub matrix: Option<OSSupportMatrix>,
    /// This cluster's ClusterVersionShadow (an unpublished API: JSON behind `platform`).
    pub cvsh: Option<Value>,
    /// Where that cvsh lives, for messages (`ClusterVersionShadow cpaas-system/prod-a`).
    pub cvsh_where: String,
    /// What the preflight reads, when one is due ([`crate::decide::preflight_scope`]).
    pub preflight: Option<PreflightObs>,
    /// The Kustomizations and Applications applying the cluster's objects, once the plan is
    /// fixed (`None`: not read in this pass).
    pub applied_by: Option<Vec<inputs::AppliedBy>>,
    /// Names of the Cluster's MachinePools (which this controller cannot move).
    pub machine_pools: Vec<String>,
    /// Why the Cluster maps to no ClusterVersionShadow it may move, when it does not.
    pub cvsh_refused: Option<Unmapped>,
    /// Whether the cluster's network is Kube-OVN ([`network`]).
    pub network: Network,
    /// The workload cluster's Kube-OVN AppRelease, read while a KubeOvn step is the next one
    /// (`None`: not read in this pass; `Ok(None)`: it does not exist).
    pub kube_ovn_release: Option<Result<Option<Value>, String>>,
}

fn label_cluster(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<String> {
    capi::label(meta, capi::CLUSTER_NAME_LABEL).map(str::to_string)
}

fn keyed(ns: &Option<String>, name: Option<String>) -> Option<ClusterKey> {
    Some((
        ns.clone().unwrap_or_default(),
        name.filter(|n| !n.is_empty())?,
    ))
}

/// Every kind the controller watches, each in one cache.
#[derive(Clone)]
pub struct Caches {
    pub requests: Cache<UpgradeRequest>,
    pub clusters: Cache<Cluster>,
    pub kcps: Cache<KubeadmControlPlane>,
    pub mds: Cache<MachineDeployment>,
    pub machines: Cache<Machine>,
    pub machine_pools: Cache<MachinePool>,
    pub matrices: Cache<OSSupportMatrix>,
    /// The ClusterVersionShadows of the cvsh namespace.
    pub cvsh: Cache<DynamicObject>,
    /// The platform's image registrations, by the label key they are found by.
    pub image_configmaps: BTreeMap<&'static str, Cache<ConfigMap>>,
    /// Slot pools and the machines that hold their entries, by kind (only the kinds this
    /// management cluster serves).
    pub pools: BTreeMap<String, Cache<DynamicObject>>,
}

impl Default for Caches {
    fn default() -> Self {
        Self::new()
    }
}

impl Caches {
    pub fn new() -> Self {
        Self {
            requests: Cache::new(|ur: &UpgradeRequest| {
                keyed(&ur.metadata.namespace, Some(ur.spec.cluster_name.clone()))
            }),
            clusters: Cache::new(|c: &Cluster| {
                keyed(&c.metadata.namespace, c.metadata.name.clone())
            }),
            kcps: Cache::with_managed_fields(|k: &KubeadmControlPlane| {
                let owner = k
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.kind == "Cluster")
                    .map(|o| o.name.clone());
                keyed(
                    &k.metadata.namespace,
                    owner.or_else(|| label_cluster(&k.metadata)),
                )
            }),
            mds: Cache::with_managed_fields(|md: &MachineDeployment| {
                keyed(&md.metadata.namespace, Some(md.spec.cluster_name.clone()))
            }),
            machines: Cache::new(|m: &Machine| {
                let name = label_cluster(&m.metadata).or_else(|| Some(m.spec.cluster_name.clone()));
                keyed(&m.metadata.namespace, name)
            }),
            machine_pools: Cache::new(|p: &MachinePool| {
                let name = label_cluster(&p.metadata).or_else(|| Some(p.spec.cluster_name.clone()));
                keyed(&p.metadata.namespace, name)
            }),
            matrices: Cache::new(|_| None),
            cvsh: Cache::new(|_| None),
            image_configmaps: BTreeMap::new(),
            pools: BTreeMap::new(),
        }
    }

    /// Every cache has completed its first list.
    pub fn synced(&self) -> bool {
        self.requests.synced()
            && self.clusters.synced()
            && self.kcps.synced()
            && self.mds.synced()
            && self.machines.synced()
            && self.machine_pools.synced()
            && self.matrices.synced()
            && self.cvsh.synced()
            && self.image_configmaps.values().all(Cache::synced)
            && self.pools.values().all(Cache::synced)
    }

    /// Why the caches that have not completed their first list cannot, when their watch
    /// fails.
    pub fn failing(&self) -> Vec<cache::WatchFailure> {
        fn of<K: kube::Resource>(c: &Cache<K>) -> Option<cache::WatchFailure> {
            if c.synced() { None } else { c.failing() }
        }
        [
            of(&self.requests),
            of(&self.clusters),
            of(&self.kcps),
            of(&self.mds),
            of(&self.machines),
            of(&self.machine_pools),
            of(&self.matrices),
            of(&self.cvsh),
        ]
        .into_iter()
        .flatten()
        .chain(self.image_configmaps.values().filter_map(of))
        .chain(self.pools.values().filter_map(of))
        .collect()
    }

    /// The cached objects, per kind (for logs).
    pub fn sizes(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("UpgradeRequest", self.requests.len()),
            ("Cluster", self.clusters.len()),
            ("KubeadmControlPlane", self.kcps.len()),
            ("MachineDeployment", self.mds.len()),
            ("Machine", self.machines.len()),
            ("OSSupportMatrix", self.matrices.len()),
            ("ClusterVersionShadow", self.cvsh.len()),
        ]
    }

    /// What decide needs of request `ur`, from the caches alone.
    pub fn observe(&self, ur: &UpgradeRequest, cvsh: &CvshConfig) -> Observed {
        let ns = ur.namespace().unwrap_or_default();
        let cluster_name = &ur.spec.cluster_name;
        let key: ClusterKey = (ns.clone(), cluster_name.clone());
        let cluster = self.clusters.get(&ns, cluster_name).map(|c| (*c).clone());
        let mapped = cvsh.name_for(&ns, cluster_name);
        let mut obs = Observed {
            cvsh_where: format!(
                "ClusterVersionShadow {}/{}",
                cvsh.namespace,
                mapped.as_deref().unwrap_or("(none)")
            ),
            cvsh_refused: mapped.as_ref().err().cloned(),
            matrix: self
                .matrices
                .get("", &ur.spec.matrix_ref)
                .map(|m| (*m).clone()),
            ..Observed::default()
        };
        let phase_one_done = ur
            .status
            .as_ref()
            .and_then(|s| s.aligned_extensions.as_ref())
            .is_some_and(|e| e.state == Some(StepState::Succeeded));
        if !phase_one_done && let Ok(name) = &mapped {
            obs.cvsh = self
                .cvsh
                .get(&cvsh.namespace, name)
                .and_then(|o| serde_json::to_value(o.as_ref()).ok());
        }
        let Some(cluster) = cluster else {
            return obs;
        };
        if let Some(cp) = &cluster.spec.control_plane_ref
            && cp.kind == "KubeadmControlPlane"
        {
            obs.kcp = self.kcps.get(&ns, &cp.name).map(|k| (*k).clone());
        }
        let mut mds: Vec<MachineDeployment> = self
            .mds
            .of_cluster(&key)
            .iter()
            .map(|m| (**m).clone())
            .collect();
        mds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        obs.mds = mds;
        let mut machines: Vec<Machine> = self
            .machines
            .of_cluster(&key)
            .iter()
            .map(|m| (**m).clone())
            .collect();
        machines.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        obs.machines = machines;
        obs.machine_pools = self
            .machine_pools
            .of_cluster(&key)
            .iter()
            .map(|p| p.name_any())
            .collect();
        obs.cluster = Some(cluster);
        obs
    }
}

/// One request's observation read straight from the API (for the CLIs, which run once and
/// keep no caches).
pub async fn snapshot(
    client: &kube::Client,
    ur: &UpgradeRequest,
    capi_version: capi::ApiVersion,
    cvsh: &CvshConfig,
) -> Result<Observed, crate::error::Error> {
    use kube::api::{Api, ListParams};
    let ns = ur.namespace().unwrap_or_default();
    let cluster_name = &ur.spec.cluster_name;
    let caches = Caches::new();
    let clusters = Api::<Cluster>::namespaced_with(client.clone(), &ns, &capi_version.cluster());
    let kcps = Api::<KubeadmControlPlane>::namespaced_with(
        client.clone(),
        &ns,
        &capi_version.kubeadm_control_plane(),
    );
    let by_cluster =
        ListParams::default().labels(&format!("{}={cluster_name}", capi::CLUSTER_NAME_LABEL));
    let mds = Api::<MachineDeployment>::namespaced_with(
        client.clone(),
        &ns,
        &capi_version.machine_deployment(),
    );
    let machines = Api::<Machine>::namespaced_with(client.clone(), &ns, &capi_version.machine());
    let pools =
        Api::<MachinePool>::namespaced_with(client.clone(), &ns, &capi_version.machine_pool());
    replace(
        &caches.clusters,
        clusters.get_opt(cluster_name).await?.into_iter().collect(),
    );
    replace(&caches.kcps, kcps.list(&ListParams::default()).await?.items);
    replace(&caches.mds, mds.list(&ListParams::default()).await?.items);
    replace(&caches.machines, machines.list(&by_cluster).await?.items);
    match pools.list(&by_cluster).await {
        Ok(list) => replace(&caches.machine_pools, list.items),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let matrices = Api::<OSSupportMatrix>::all(client.clone());
    replace(
        &caches.matrices,
        matrices
            .get_opt(&ur.spec.matrix_ref)
            .await?
            .into_iter()
            .collect(),
    );
    if let Ok(name) = cvsh.name_for(&ns, cluster_name) {
        let api =
            Api::<DynamicObject>::namespaced_with(client.clone(), &cvsh.namespace, &cvsh.resource);
        replace(
            &caches.cvsh,
            api.get_opt(&name).await?.into_iter().collect(),
        );
    }
    let mut obs = caches.observe(ur, cvsh);
    obs.network = network::network(client, &obs).await?;
    Ok(obs)
}

/// Fills `cache` with exactly `objects`, as a completed list would.
fn replace<K: kube::Resource + Clone>(cache: &Cache<K>, objects: Vec<K>) {
    use kube::runtime::watcher::Event;
    cache.apply(&Event::Init);
    for o in objects {
        cache.apply(&Event::InitApply(o));
    }
    cache.apply(&Event::InitDone);
}
