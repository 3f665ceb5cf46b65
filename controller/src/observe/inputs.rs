//! What a preflight reads besides the watched objects: the global tier's ClusterVersionShadows
//! (cached, the DR standby's through its own client), the workload cluster (reachability and
//! ResourcePatches, through a client cached per cluster), the other requests for the cluster
//! (cached, plus the claims this process made), and per hop the machine templates, their slot
//! pools and the OS image registrations (cached where the kinds are watched).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::workload::WorkloadClients;
use super::{Caches, ClusterKey, Observed};
use crate::api::{UpgradeRequest, UpgradeRequestStatus};
use crate::capi::{self, Reference};
use crate::error::Error;
use crate::platform::{self, CvshConfig};
use crate::preflight::gitops::{self, GitOpsObs, Source, Target};
use crate::preflight::{
    self, Contender, ImageObs, PreflightObs, Scope, SlotObs, WorkloadObs, WorkloadUnavailable,
};

/// A second global cluster (global DR): its client and how messages name it.
#[derive(Clone)]
pub struct Standby {
    pub client: Client,
    pub label: String,
}

/// Requests that asked the platform for their target in this process, by Cluster, before the
/// cache shows it (the claim is made under the Cluster's lock, so the next request of that
/// Cluster sees it even when the watch has not delivered the status write yet).
#[derive(Default, Clone)]
pub struct Claims(Arc<Mutex<HashMap<ClusterKey, String>>>);

impl Claims {
    pub fn claim(&self, cluster: ClusterKey, uid: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster, uid);
    }

    pub fn release(&self, cluster: &ClusterKey, uid: &str) {
        let mut claims = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if claims.get(cluster).is_some_and(|u| u == uid) {
            claims.remove(cluster);
        }
    }

    fn holder(&self, cluster: &ClusterKey) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .cloned()
    }
}

/// Where the rules of GitOps tools may be read (README "GitOps").
#[derive(Clone, Debug)]
pub struct GitOpsConfig {
    /// Namespaces besides the request's own whose Kustomizations and Applications may be read.
    pub namespaces: Vec<String>,
    /// Where an Application named without a namespace lives.
    pub argocd_namespace: String,
}

impl Default for GitOpsConfig {
    fn default() -> Self {
        GitOpsConfig {
            namespaces: vec!["flux-system".into(), "argocd".into()],
            argocd_namespace: "argocd".into(),
        }
    }
}

/// Flux's Kustomization and Argo CD's Application, the rule sets read for GitOpsSafe.
fn kustomization_resource() -> kube::core::ApiResource {
    kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
    )
}

fn application_resource() -> kube::core::ApiResource {
    kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application"),
        "applications",
    )
}

/// A Flux Kustomization or Argo CD Application that applies some of a cluster's objects, as
/// read during a run.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedBy {
    /// `Kustomization flux-system/clusters`.
    pub source: String,
    /// An Argo CD Application (else a Kustomization).
    pub argo: bool,
    /// `KubeadmControlPlane cp`, `MachineDeployment md-a`.
    pub objects: Vec<String>,
    /// The object: `Ok(None)` it does not exist, `Err` why it was not read.
    pub read: Result<Option<Value>, String>,
}

/// Where preflight inputs come from.
#[derive(Clone)]
pub struct Sources {
    pub client: Client,
    pub caches: Caches,
    pub cvsh: CvshConfig,
    pub standby: Option<Standby>,
    pub workloads: WorkloadClients,
    pub claims: Claims,
    pub gitops: GitOpsConfig,
    /// The one namespace the controller is limited to (`--namespace`), if any.
    pub watch_namespace: Option<String>,
    /// Where the Kube-OVN AppRelease lives on the clusters being upgraded.
    pub kube_ovn_namespace: String,
    /// `--shard-selector`: only Clusters with these labels are cached (and so handled).
    pub shard: Option<Shard>,
}

/// One shard of the controllers (`--shard-selector`).
#[derive(Clone, Debug)]
pub struct Shard {
    /// The label selector on Clusters.
    pub selector: String,
    /// The Cluster API resource, to tell a Cluster of another shard from one that is gone.
    pub clusters: kube::core::ApiResource,
}

pub(crate) fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub(crate) fn describe_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// The API resource a (v1beta1 or v1beta2) reference points at; v1beta2 references name only
/// the group, so the version comes from discovery (the group's preferred version).
pub async fn resolve_ref(
    client: &Client,
    reference: &Reference,
) -> Result<Option<kube::core::ApiResource>, Error> {
    if reference.kind.is_empty() {
        return Ok(None);
    }
    if let Some(version) = reference.version() {
        return Ok(Some(kube::core::ApiResource::from_gvk(
            &kube::core::GroupVersionKind::gvk(reference.group(), version, &reference.kind),
        )));
    }
    let discovered = kube::discovery::group(client, reference.group()).await?;
    Ok(discovered
        .recommended_kind(&reference.kind)
        .map(|(ar, _)| ar))
}

/// `GET` as JSON, `None` when absent.
pub async fn get_opt(api: &Api<DynamicObject>, name: &str) -> Result<Option<Value>, Error> {
    match api.get(name).await {
        Ok(o) => Ok(Some(serde_json::to_value(o)?)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How an UpgradeRequest ranks for its cluster ([`preflight::Contender`]).
pub fn contender(ur: &UpgradeRequest, claimed: bool) -> Contender {
    let status = ur.status.clone().unwrap_or_default();
    let finished = status.phase == Some(crate::api::Phase::Succeeded);
    let ext = status.aligned_extensions.as_ref();
    Contender {
        name: ur.name_any(),
        created: ur.metadata.creation_timestamp.as_ref().map(|t| t.0),
        holds: (crate::decide::plan_frozen(&status) || claimed) && !finished,
        holds_since: ext
            .and_then(|e| e.requested_at.as_ref().or(e.finished_at.as_ref()))
            .map(|t| t.0),
        finished,
    }
}

impl Sources {
    /// A cvsh of the global tier from the cache (the standby's through its own client).
    async fn global_cvsh(&self, standby: Option<&Standby>) -> Result<Option<Value>, String> {
        match standby {
            None => Ok(self
                .caches
                .cvsh
                .get(&self.cvsh.namespace, &self.cvsh.global_name)
                .and_then(|o| serde_json::to_value(o.as_ref()).ok())),
            Some(s) => {
                let api = Api::<DynamicObject>::namespaced_with(
                    s.client.clone(),
                    &self.cvsh.namespace,
                    &self.cvsh.resource,
                );
                match api.get(&self.cvsh.global_name).await {
                    Ok(o) => serde_json::to_value(o).map(Some).map_err(|e| e.to_string()),
                    Err(e) if not_found(&e) => Ok(None),
                    Err(e) => Err(describe_error(&e)),
                }
            }
        }
    }

    /// The workload cluster: reachable, and (for the initial preflight) its ResourcePatches.
    async fn workload(
        &self,
        ns: &str,
        cluster: &str,
        with_patches: bool,
    ) -> Result<WorkloadObs, WorkloadUnavailable> {
        let workload = self.workloads.client(&self.client, ns, cluster).await?;
        let unreachable = |message: String| WorkloadUnavailable {
            reason: "WorkloadAPIUnreachable",
            message,
        };
        // API group discovery doubles as the reachability probe (CAPI's in-memory test servers
        // answer it too, but not /version).
        let groups = workload
            .list_api_groups()
            .await
            .map_err(|e| unreachable(format!("GET /apis: {}", describe_error(&e))))?;
        let mut obs = WorkloadObs::default();
        let rp = platform::resource_patch_resource();
        let served = groups
            .groups
            .iter()
            .any(|g| g.name == rp.group && g.versions.iter().any(|v| v.version == rp.version));
        // Without the ResourcePatch API there is nothing a ResourcePatch could have modified.
        if with_patches && served {
            let api = Api::<DynamicObject>::all_with(workload, &rp);
            let list = api.list(&ListParams::default()).await.map_err(|e| {
                unreachable(format!("listing ResourcePatches: {}", describe_error(&e)))
            })?;
            for rp in list.items {
                obs.resource_patches
                    .push(serde_json::to_value(rp).map_err(|e| unreachable(e.to_string()))?);
            }
        }
        Ok(obs)
    }

    /// A slot pool, and the objects holding its entries, from the caches when the kinds are
    /// watched (else read).
    async fn slot_count(
        &self,
        ns: &str,
        provider: &'static dyn providers::Provider,
        pool: &providers::SlotPoolRef,
    ) -> Result<providers::SlotCount, String> {
        let pool_ns = pool.namespace.clone().unwrap_or_else(|| ns.to_string());
        let object = match self.caches.pools.get(&pool.kind) {
            Some(cache) => cache
                .get(&pool_ns, &pool.name)
                .map(|o| serde_json::to_value(o.as_ref()).unwrap_or_default()),
            None => {
                let ar = capi::api_resource(&pool.api_version, &pool.kind);
                let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &pool_ns, &ar);
                get_opt(&api, &pool.name)
                    .await
                    .map_err(|e| format!("reading {} {pool_ns}/{}: {e}", pool.kind, pool.name))?
            }
        };
        let Some(object) = object else {
            return Err(format!(
                "{} {pool_ns}/{} does not exist",
                pool.kind, pool.name
            ));
        };
        let mut holders = Vec::new();
        if let Some(kind) = provider.slot_holder_kind() {
            match self.caches.pools.get(kind) {
                Some(cache) => {
                    for h in cache.in_namespace(&pool_ns) {
                        holders.push(serde_json::to_value(h.as_ref()).map_err(|e| e.to_string())?);
                    }
                }
                None => {
                    // Holders are of the pool's group and version.
                    let ar = capi::api_resource(&pool.api_version, kind);
                    let api =
                        Api::<DynamicObject>::namespaced_with(self.client.clone(), &pool_ns, &ar);
                    let list = api.list(&ListParams::default()).await.map_err(|e| {
                        format!("listing {kind} in {pool_ns}: {}", describe_error(&e))
                    })?;
                    for h in list.items {
                        holders.push(serde_json::to_value(h).map_err(|e| e.to_string())?);
                    }
                }
            }
        }
        provider
            .free_slots(&object, &holders)
            .map_err(|e| e.to_string())
    }

    /// Whether the platform shows `image` registered (from the cache of the ConfigMaps it is
    /// found by, else by listing them).
    async fn image_confirmed(&self, lookup: &providers::ImageLookup) -> Result<bool, Error> {
        // Bare metal's catalog: one ConfigMap whose namespace and name the provider fixes.
        if let providers::ImageLookup::ConfigMapKey {
            namespace, name, ..
        } = lookup
        {
            let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
            let found = match cms.get_opt(name).await? {
                Some(cm) => vec![serde_json::to_value(cm)?],
                None => Vec::new(),
            };
            return Ok(providers::image_confirmed(lookup, &found));
        }
        let providers::ImageLookup::ConfigMap {
            namespace,
            label_selector,
            ..
        } = lookup
        else {
            return Ok(false);
        };
        let key = label_selector.split('=').next().unwrap_or_default();
        let found: Vec<Value> = match self.caches.image_configmaps.get(key) {
            Some(cache) if namespace == providers::PLATFORM_NAMESPACE => cache
                .in_namespace(namespace)
                .iter()
                .filter_map(|cm| serde_json::to_value(cm.as_ref()).ok())
                .collect(),
            _ => {
                let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                cms.list(&ListParams::default().labels(label_selector))
                    .await?
                    .items
                    .into_iter()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(providers::image_confirmed(lookup, &found))
    }

    /// Everything the preflight of `scope` reads besides `obs`.
    pub async fn preflight(
        &self,
        ur: &UpgradeRequest,
        status: &UpgradeRequestStatus,
        obs: &Observed,
        scope: Scope,
    ) -> Result<PreflightObs, Error> {
        let ns = ur.namespace().unwrap_or_default();
        let cluster_name = &ur.spec.cluster_name;
        let key: ClusterKey = (ns.clone(), cluster_name.clone());

        let mut globals = vec![(
            format!(
                "global cluster (ClusterVersionShadow {}/{})",
                self.cvsh.namespace, self.cvsh.global_name
            ),
            self.global_cvsh(None).await,
        )];
        if let Some(s) = &self.standby {
            globals.push((s.label.clone(), self.global_cvsh(Some(s)).await));
        }

        let workload = self
            .workload(&ns, cluster_name, scope == Scope::Initial)
            .await;

        let holder = self.claims.holder(&key);
        let claimed = |u: &UpgradeRequest| holder.as_deref() == u.metadata.uid.as_deref();
        let other_requests = self
            .caches
            .requests
            .of_cluster(&key)
            .iter()
            .filter(|o| o.name_any() != ur.name_any())
            .map(|o| contender(o, claimed(o)))
            .collect();

        let from = match scope {
            Scope::Initial => 0,
            Scope::Hop(i) => i,
        };
        let mut slots = Vec::new();
        let mut images = Vec::new();
        if let Some(kcp) = &obs.kcp
            && let Some(kcp_ref) = kcp.infrastructure_ref()
            && let Ok(provider) = providers::for_template_kind(&kcp_ref.kind)
        {
            let pools = preflight::remaining_pools(&status.plan, from);
            let mut users = vec![(
                format!("KubeadmControlPlane {}", capi::name(&kcp.metadata)),
                true,
                capi::surge(kcp.replicas(), kcp.strategy()),
                kcp_ref.clone(),
            )];
            for md in obs
                .mds
                .iter()
                .filter(|md| pools.iter().any(|p| p == capi::name(&md.metadata)))
            {
                users.push((
                    format!("MachineDeployment {}", capi::name(&md.metadata)),
                    false,
                    capi::surge(md.replicas(), md.strategy()),
                    md.spec.template.spec.infrastructure_ref.clone(),
                ));
            }
            for (user, control_plane, surge, tref) in users {
                let Some(ar) = resolve_ref(&self.client, &tref).await? else {
                    continue;
                };
                let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &ns, &ar);
                let Some(template) = get_opt(&api, &tref.name).await? else {
                    continue;
                };
                if let Some(pool) = provider.slot_pool(&template) {
                    let count = match providers::check_pool_ref(provider, &pool, &ns) {
                        Ok(()) => self.slot_count(&ns, provider, &pool).await,
                        Err(why) => Err(why),
                    };
                    slots.push(SlotObs {
                        user,
                        control_plane,
                        surge,
                        pool,
                        count,
                    });
                }
            }
            for image in preflight::remaining_images(&status.plan, from) {
                let lookup = provider.image_lookup(&image);
                let confirmed = self.image_confirmed(&lookup).await?;
                images.push(ImageObs {
                    image,
                    lookup,
                    confirmed,
                });
            }
        }

        let gitops = self.gitops_obs(&ns, obs).await;
        let global_self = self
            .cvsh
            .is_global(&ns, cluster_name)
            .then(|| self.workloads(&key));
        let platform_provider = obs
            .kcp
            .as_ref()
            .and_then(|k| k.infrastructure_ref())
            .and_then(|r| providers::for_template_kind(&r.kind).ok())
            .is_some_and(|p| p.platform_facts().is_some());
        let provider_releases = if platform_provider {
            self.provider_releases().await
        } else {
            Ok(Vec::new())
        };

        Ok(PreflightObs {
            scope,
            globals,
            workload,
            me: contender(ur, claimed(ur)),
            other_requests,
            slots,
            images,
            gitops,
            global_self,
            provider_releases,
        })
    }

    /// Every Cluster in the caches but `me`, with the versions its control plane and pools
    /// declare.
    fn workloads(&self, me: &ClusterKey) -> preflight::Workloads {
        let mut clusters = Vec::new();
        for c in self.caches.clusters.all() {
            let key: ClusterKey = (
                c.metadata.namespace.clone().unwrap_or_default(),
                capi::name(&c.metadata).to_string(),
            );
            if &key == me {
                continue;
            }
            let mut versions = Vec::new();
            for kcp in self.caches.kcps.of_cluster(&key) {
                versions.push((
                    format!("KubeadmControlPlane {}", capi::name(&kcp.metadata)),
                    kcp.spec.version.clone(),
                ));
            }
            for md in self.caches.mds.of_cluster(&key) {
                versions.push((
                    format!("MachineDeployment {}", capi::name(&md.metadata)),
                    md.version().to_string(),
                ));
            }
            clusters.push((format!("{}/{}", key.0, key.1), versions));
        }
        clusters.sort();
        preflight::Workloads {
            clusters,
            only_namespace: self.watch_namespace.clone(),
            only_shard: self.shard.as_ref().map(|s| s.selector.clone()),
        }
    }

    /// The cluster's Git-managed control plane and pools, each with the rule set (Kustomization
    /// or Application) its markers name, read only from the request's namespace or one of
    /// [`GitOpsConfig::namespaces`].
    async fn gitops_obs(&self, ns: &str, obs: &Observed) -> Vec<GitOpsObs> {
        let mut objects = Vec::new();
        if let Some(kcp) = &obs.kcp {
            objects.push((
                format!("KubeadmControlPlane {}", capi::name(&kcp.metadata)),
                Target::of(&kcp.api_version, "KubeadmControlPlane", &kcp.metadata),
                &kcp.metadata,
                true,
                kcp.is_v1beta2(),
            ));
        }
        for md in &obs.mds {
            objects.push((
                format!("MachineDeployment {}", capi::name(&md.metadata)),
                Target::of(&md.api_version, "MachineDeployment", &md.metadata),
                &md.metadata,
                false,
                md.is_v1beta2(),
            ));
        }
        let mut read: HashMap<String, Result<Option<Value>, String>> = HashMap::new();
        let mut out = Vec::new();
        for (object, target, meta, control_plane, v1beta2) in objects {
            let version_path: &[&str] = if control_plane {
                &["spec", "version"]
            } else {
                &["spec", "template", "spec", "version"]
            };
            let Some(ownership) = gitops::detect(meta, version_path) else {
                continue;
            };
            let paths = gitops::written_paths(
                control_plane,
                v1beta2,
                meta,
                gitops::tool_manager(&ownership),
            );
            let source = match (&ownership.source, &ownership.opted_out) {
                (Some(src), None) => {
                    let key = src.to_string();
                    if !read.contains_key(&key) {
                        let value = self.rule_set(ns, src).await;
                        read.insert(key.clone(), value);
                    }
                    read.get(&key).cloned()
                }
                _ => None,
            };
            out.push(GitOpsObs {
                object,
                target,
                ownership,
                paths,
                source,
            });
        }
        out
    }

    /// The Kustomizations and Applications that apply the cluster's control plane and pools,
    /// each read once (from the request's namespace or one of [`GitOpsConfig::namespaces`]),
    /// with the objects it applies: whether the tool still applies Git while a run goes on
    /// (status condition `GitOpsSynced`). A HelmRelease is not read.
    pub async fn applied_by(&self, ur: &UpgradeRequest, obs: &Observed) -> Vec<AppliedBy> {
        let ns = ur.namespace().unwrap_or_default();
        let mut objects = Vec::new();
        if let Some(kcp) = &obs.kcp {
            objects.push((
                format!("KubeadmControlPlane {}", capi::name(&kcp.metadata)),
                &kcp.metadata,
                &["spec", "version"][..],
            ));
        }
        for md in &obs.mds {
            objects.push((
                format!("MachineDeployment {}", capi::name(&md.metadata)),
                &md.metadata,
                &["spec", "template", "spec", "version"][..],
            ));
        }
        let mut out: Vec<(Source, Vec<String>)> = Vec::new();
        for (object, meta, version_path) in objects {
            let Some(src) = gitops::detect(meta, version_path).and_then(|o| o.source) else {
                continue;
            };
            if matches!(src, Source::HelmRelease { .. }) {
                continue;
            }
            match out.iter_mut().find(|(s, _)| *s == src) {
                Some((_, objs)) => objs.push(object),
                None => out.push((src, vec![object])),
            }
        }
        let mut applied = Vec::with_capacity(out.len());
        for (src, objects) in out {
            let read = self.rule_set(&ns, &src).await;
            applied.push(AppliedBy {
                source: src.to_string(),
                argo: matches!(src, Source::Application { .. }),
                objects,
                read,
            });
        }
        applied
    }

    /// Reads the Kustomization or Application `src` names (a HelmRelease is not read: its
    /// rules cannot protect a field, see [`gitops::protection`]).
    async fn rule_set(&self, ns: &str, src: &Source) -> Result<Option<Value>, String> {
        let (namespace, name, ar) = match src {
            Source::Kustomization { namespace, name } => {
                (namespace.clone(), name.clone(), kustomization_resource())
            }
            Source::Application { namespace, name } => (
                namespace
                    .clone()
                    .unwrap_or_else(|| self.gitops.argocd_namespace.clone()),
                name.clone(),
                application_resource(),
            ),
            Source::HelmRelease { .. } => return Ok(None),
        };
        if namespace != ns && !self.gitops.namespaces.contains(&namespace) {
            return Err(format!(
                "namespace {namespace} is neither the request's nor one of --gitops-namespaces ({}); a platform admin adds it there",
                self.gitops.namespaces.join(",")
            ));
        }
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &namespace, &ar);
        match api.get_opt(&name).await {
            Ok(found) => Ok(found.map(|o| serde_json::to_value(o).unwrap_or_default())),
            Err(e) => Err(describe_error(&e)),
        }
    }
}
