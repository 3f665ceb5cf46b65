//! Observe (reads only): everything `decide` and the preflight look at, from the management
//! cluster, the global tier's ClusterVersionShadows and the workload cluster itself.

use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::api::{OSSupportMatrix, StepState, UpgradeRequest, UpgradeRequestStatus};
use crate::capi;
use crate::decide::{Observed, Stall};
use crate::error::Error;
use crate::platform::{self, CvshConfig};
use crate::preflight::{
    self, Contender, ImageObs, PreflightObs, Scope, SlotObs, WorkloadObs, WorkloadUnavailable,
};

/// A second global cluster (global DR): its client and how messages name it.
#[derive(Clone)]
pub struct Standby {
    pub client: Client,
    pub label: String,
}

/// Reads everything `decide` needs.
pub(crate) fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub(crate) async fn get_opt(api: &Api<DynamicObject>, name: &str) -> Result<Option<Value>, Error> {
    match api.get(name).await {
        Ok(o) => Ok(Some(serde_json::to_value(o)?)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads everything `decide` needs.
pub async fn observe(
    client: &Client,
    ur: &UpgradeRequest,
    capi_version: capi::ApiVersion,
    cvsh: &CvshConfig,
) -> Result<Observed, Error> {
    let ns = ur.namespace().unwrap_or_default();
    let cluster_name = &ur.spec.cluster_name;
    let ns_api = |ar: &kube::core::ApiResource| {
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns, ar)
    };
    let cluster = get_opt(&ns_api(&capi_version.cluster()), cluster_name).await?;
    let mapped = cvsh.name_for(&ns, cluster_name);
    let mut obs = Observed {
        cluster: cluster.clone(),
        cvsh_where: format!(
            "ClusterVersionShadow {}/{}",
            cvsh.namespace,
            mapped.as_deref().unwrap_or("(none)")
        ),
        cvsh_refused: mapped.as_ref().err().map(|u| Stall {
            reason: u.reason.into(),
            message: u.message.clone(),
        }),
        ..Observed::default()
    };
    let phase_one_done = ur
        .status
        .as_ref()
        .and_then(|s| s.aligned_extensions.as_ref())
        .is_some_and(|e| e.state == Some(StepState::Succeeded));
    if !phase_one_done && let Ok(name) = &mapped {
        let api =
            Api::<DynamicObject>::namespaced_with(client.clone(), &cvsh.namespace, &cvsh.resource);
        obs.cvsh = get_opt(&api, name).await?;
    }
    obs.matrix = match Api::<OSSupportMatrix>::all(client.clone())
        .get(&ur.spec.matrix_ref)
        .await
    {
        Ok(m) => Some(m),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(cluster) = cluster else {
        return Ok(obs);
    };
    let cp_ref = &cluster["spec"]["controlPlaneRef"];
    if cp_ref["kind"] == "KubeadmControlPlane"
        && let Some(name) = cp_ref["name"].as_str()
    {
        obs.kcp = get_opt(&ns_api(&capi_version.kubeadm_control_plane()), name).await?;
    }
    let mds = ns_api(&capi_version.machine_deployment())
        .list(&ListParams::default())
        .await?;
    for md in mds.items {
        let md = serde_json::to_value(md)?;
        if md["spec"]["clusterName"].as_str() == Some(cluster_name) {
            obs.mds.push(md);
        }
    }
    let machines = ns_api(&capi_version.machine())
        .list(
            &ListParams::default().labels(&format!("{}={cluster_name}", capi::CLUSTER_NAME_LABEL)),
        )
        .await?;
    for m in machines.items {
        obs.machines.push(serde_json::to_value(m)?);
    }
    // MachinePools are an optional CAPI API (their CRD may be absent: then there are none).
    let pools = ns_api(&capi_version.machine_pool())
        .list(
            &ListParams::default().labels(&format!("{}={cluster_name}", capi::CLUSTER_NAME_LABEL)),
        )
        .await;
    match pools {
        Ok(list) => obs.machine_pools = list.items.iter().map(|p| p.name_any()).collect(),
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(obs)
}

/// The API resource a (v1beta1 or v1beta2) reference points at; v1beta2 references name only
/// the group, so the version comes from discovery (the group's preferred version).
pub(crate) async fn resolve_ref(
    client: &Client,
    reference: &Value,
) -> Result<Option<kube::core::ApiResource>, Error> {
    let Some((group, version, kind)) = capi::ref_group_kind(reference) else {
        return Ok(None);
    };
    if let Some(version) = version {
        return Ok(Some(kube::core::ApiResource::from_gvk(
            &kube::core::GroupVersionKind::gvk(&group, &version, &kind),
        )));
    }
    let discovered = kube::discovery::group(client, &group).await?;
    Ok(discovered.recommended_kind(&kind).map(|(ar, _)| ar))
}

fn describe_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// A cvsh on some cluster: Ok(None) when absent, Err(message) when it cannot be read (the
/// preflight reports that rather than failing the reconcile).
async fn read_cvsh(
    client: &Client,
    cvsh: &CvshConfig,
    name: &str,
) -> Result<Option<Value>, String> {
    let api =
        Api::<DynamicObject>::namespaced_with(client.clone(), &cvsh.namespace, &cvsh.resource);
    match api.get(name).await {
        Ok(o) => serde_json::to_value(o).map(Some).map_err(|e| e.to_string()),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(describe_error(&e)),
    }
}

/// A client for the workload cluster from CAPI's `<cluster>-kubeconfig` Secret (key `value`),
/// which is data only ([`crate::workload`]).
async fn workload_client(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> Result<Client, WorkloadUnavailable> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let name = format!("{cluster}-kubeconfig");
    let unreadable = |message: String| WorkloadUnavailable {
        reason: "KubeconfigUnreadable",
        message,
    };
    let secret = secrets.get(&name).await.map_err(|e| {
        unreadable(format!(
            "reading Secret {ns}/{name}: {}",
            describe_error(&e)
        ))
    })?;
    let data = secret
        .data
        .and_then(|d| d.get("value").cloned())
        .ok_or_else(|| unreadable(format!("Secret {ns}/{name} has no key \"value\"")))?;
    let text = String::from_utf8(data.0)
        .map_err(|_| unreadable(format!("Secret {ns}/{name} is not UTF-8")))?;
    let refused = |e: crate::workload::KubeconfigError| WorkloadUnavailable {
        reason: e.reason(),
        message: format!("the kubeconfig in Secret {ns}/{name} (key value) {e}"),
    };
    let inline = crate::workload::inline_kubeconfig(&text).map_err(refused)?;
    inline.client().await.map_err(refused)
}

/// The workload cluster: reachable, and (for the initial preflight) its ResourcePatches.
async fn observe_workload(
    client: &Client,
    ns: &str,
    cluster: &str,
    with_patches: bool,
) -> Result<WorkloadObs, WorkloadUnavailable> {
    let workload = workload_client(client, ns, cluster).await?;
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
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| unreachable(format!("listing ResourcePatches: {}", describe_error(&e))))?;
        for rp in list.items {
            obs.resource_patches
                .push(serde_json::to_value(rp).map_err(|e| unreachable(e.to_string()))?);
        }
    }
    Ok(obs)
}

/// Free slots of the pool a template draws from, or why they cannot be counted.
async fn slot_count(
    client: &Client,
    ns: &str,
    provider: &'static dyn providers::Provider,
    pool: &providers::SlotPoolRef,
) -> Result<providers::SlotCount, String> {
    let pool_ns = pool.namespace.clone().unwrap_or_else(|| ns.to_string());
    let ar = capi::api_resource(&pool.api_version, &pool.kind);
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &pool_ns, &ar);
    let object = match api.get(&pool.name).await {
        Ok(o) => serde_json::to_value(o).map_err(|e| e.to_string())?,
        Err(e) if not_found(&e) => {
            return Err(format!(
                "{} {pool_ns}/{} does not exist",
                pool.kind, pool.name
            ));
        }
        Err(e) => {
            return Err(format!(
                "reading {} {pool_ns}/{}: {}",
                pool.kind,
                pool.name,
                describe_error(&e)
            ));
        }
    };
    let mut holders = Vec::new();
    if let Some(kind) = provider.slot_holder_kind() {
        // Holders are of the pool's group and version.
        let ar = capi::api_resource(&pool.api_version, kind);
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), &pool_ns, &ar);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing {kind} in {pool_ns}: {}", describe_error(&e)))?;
        for h in list.items {
            holders.push(serde_json::to_value(h).map_err(|e| e.to_string())?);
        }
    }
    provider
        .free_slots(&object, &holders)
        .map_err(|e| e.to_string())
}

/// Everything the preflight of `scope` reads besides `obs`.
pub async fn observe_preflight(
    client: &Client,
    cvsh: &CvshConfig,
    standby: Option<&Standby>,
    ur: &UpgradeRequest,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    scope: Scope,
) -> Result<PreflightObs, Error> {
    let ns = ur.namespace().unwrap_or_default();
    let cluster_name = &ur.spec.cluster_name;

    let mut globals = vec![(
        format!(
            "global cluster (ClusterVersionShadow {}/{})",
            cvsh.namespace, cvsh.global_name
        ),
        read_cvsh(client, cvsh, &cvsh.global_name).await,
    )];
    if let Some(s) = standby {
        globals.push((
            s.label.clone(),
            read_cvsh(&s.client, cvsh, &cvsh.global_name).await,
        ));
    }

    let workload = observe_workload(client, &ns, cluster_name, scope == Scope::Initial).await;

    // Read fresh: the shell runs one cluster's requests one at a time, so every earlier
    // decision about this cluster is in these statuses already.
    let requests: Api<UpgradeRequest> = Api::namespaced(client.clone(), &ns);
    let other_requests = requests
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|o| o.spec.cluster_name == *cluster_name && o.name_any() != ur.name_any())
        .map(contender)
        .collect();

    let from = match scope {
        Scope::Initial => 0,
        Scope::Hop(i) => i,
    };
    let mut slots = Vec::new();
    let mut images = Vec::new();
    if let Some(kcp) = &obs.kcp {
        let kind = capi::kcp_infrastructure_ref(kcp)["kind"]
            .as_str()
            .unwrap_or("");
        if let Ok(provider) = providers::for_template_kind(kind) {
            let pools = preflight::remaining_pools(&status.plan, from);
            let mut users = vec![(
                format!("KubeadmControlPlane {}", capi::name(kcp)),
                true,
                providers::surge_of_kcp(kcp),
                capi::kcp_infrastructure_ref(kcp).clone(),
            )];
            for md in obs
                .mds
                .iter()
                .filter(|md| pools.iter().any(|p| p == capi::name(md)))
            {
                users.push((
                    format!("MachineDeployment {}", capi::name(md)),
                    false,
                    providers::surge_of_md(md),
                    capi::md_infrastructure_ref(md).clone(),
                ));
            }
            for (user, control_plane, surge, tref) in users {
                let Some(ar) = resolve_ref(client, &tref).await? else {
                    continue;
                };
                let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar);
                let Some(template) = get_opt(&api, tref["name"].as_str().unwrap_or("")).await?
                else {
                    continue;
                };
                if let Some(pool) = provider.slot_pool(&template) {
                    let count = match providers::check_pool_ref(provider, &pool, &ns) {
                        Ok(()) => slot_count(client, &ns, provider, &pool).await,
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
                let confirmed = match &lookup {
                    providers::ImageLookup::ConfigMap {
                        namespace,
                        label_selector,
                        ..
                    } => {
                        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
                            Api::namespaced(client.clone(), namespace);
                        let found = cms
                            .list(&ListParams::default().labels(label_selector))
                            .await?;
                        let found: Vec<Value> = found
                            .items
                            .into_iter()
                            .map(serde_json::to_value)
                            .collect::<Result<_, _>>()?;
                        providers::image_confirmed(&lookup, &found)
                    }
                    _ => false,
                };
                images.push(ImageObs {
                    image,
                    lookup,
                    confirmed,
                });
            }
        }
    }

    Ok(PreflightObs {
        globals,
        workload,
        me: contender(ur),
        other_requests,
        slots,
        images,
    })
}

/// How an UpgradeRequest ranks for its cluster ([`preflight::Contender`]).
fn contender(ur: &UpgradeRequest) -> Contender {
    let status = ur.status.clone().unwrap_or_default();
    let finished = status.phase == Some(crate::api::Phase::Succeeded);
    let ext = status.aligned_extensions.as_ref();
    Contender {
        name: ur.name_any(),
        created: ur.metadata.creation_timestamp.as_ref().map(|t| t.0),
        holds: crate::decide::plan_frozen(&status) && !finished,
        holds_since: ext
            .and_then(|e| e.requested_at.as_ref().or(e.finished_at.as_ref()))
            .map(|t| t.0),
        finished,
    }
}
