//! The imperative shell: observe (reads only) → decide (pure) → execute the decision's writes
//! → one status write. Watches Clusters, KubeadmControlPlanes, MachineDeployments, Machines
//! and matrices, so progress is driven by events rather than polling.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, instrument, warn};

use crate::api::{
    ClusterVersions, ExtensionStage, ExtensionsStatus, OSSupportMatrix, PlanStepKind, PoolStatus,
    PreflightStatus, StepState, UpgradeRequest, UpgradeRequestStatus,
};
use crate::capi;
use crate::decide::{self, Decision, Observed, Stall};
use crate::observe::{Standby, get_opt, observe, observe_preflight, resolve_ref};
use crate::platform::CvshConfig;
use crate::preflight::{self, Scope};
use crate::review;
use crate::status::{self, Waiting};

/// Field manager of every write this controller makes to others' objects.
pub const FIELD_MANAGER: &str = "upgrade.cpaas.io/controller";

/// Errors that are worth a retry (API hiccups). Problems with specs or clusters are status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// A static label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Json(_) => "Serialization",
        }
    }
}

pub struct Context {
    pub client: Client,
    /// The CAPI API version to read and write.
    pub capi: capi::ApiVersion,
    /// Where the Cluster Version Operator's ClusterVersionShadows live.
    pub cvsh: CvshConfig,
    /// The DR standby global cluster, when configured.
    pub standby: Option<Standby>,
}

/// The template `source_ref` (an `infrastructure` or `bootstrap` template reference) points at:
/// its API resource, an API for its namespace, and the object; a person must fix a reference
/// that resolves to nothing.
async fn template_source(
    client: &Client,
    ns: &str,
    source_ref: &Value,
    what: &str,
) -> Result<Result<(ApiResource, Api<DynamicObject>, Value), Stall>, Error> {
    let Some(ar) = resolve_ref(client, source_ref).await? else {
        return Ok(Err(Stall {
            reason: "TemplateNotFound".into(),
            message: format!("invalid {what} template reference {source_ref}"),
        }));
    };
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    let source_name = source_ref["name"].as_str().unwrap_or("");
    let Some(source) = get_opt(&api, source_name).await? else {
        return Ok(Err(Stall {
            reason: "TemplateNotFound".into(),
            message: format!("{} {ns}/{source_name} does not exist", ar.kind),
        }));
    };
    Ok(Ok((ar, api, source)))
}

/// Gets or creates the hop's clone of the template `source_ref` points at. A clone that exists
/// with another image is a conflict a person must resolve.
async fn ensure_template_clone(
    client: &Client,
    ns: &str,
    source_ref: &Value,
    version: &str,
    image: &str,
    owner: &Value,
    v1beta2_holder: bool,
) -> Result<Result<Value, Stall>, Error> {
    let (ar, api, source) = match template_source(client, ns, source_ref, "infrastructure").await? {
        Ok(found) => found,
        Err(s) => return Ok(Err(s)),
    };
    let provider = match providers::for_template_kind(&ar.kind) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Err(Stall {
                reason: "UnsupportedProvider".into(),
                message: e.to_string(),
            }));
        }
    };
    // A source that already is this hop's clone (a retried step) is reused as is.
    if source["metadata"]["annotations"][providers::KUBERNETES_VERSION_ANNOTATION] == version
        && provider.image_of(&source).as_deref() == Some(image)
    {
        return Ok(Ok(capi::reference_to(&source, v1beta2_holder)));
    }
    let clone = match providers::clone_template(
        provider,
        &source,
        version,
        image,
        capi::owner_reference(owner),
    ) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Err(Stall {
                reason: "TemplateInvalid".into(),
                message: e.to_string(),
            }));
        }
    };
    let name = capi::name(&clone).to_string();
    let existing = match get_opt(&api, &name).await? {
        Some(existing) => existing,
        None => {
            let obj: DynamicObject = serde_json::from_value(clone)?;
            info!(template = %name, kind = %ar.kind, "creating machine template for hop");
            match api.create(&PostParams::default(), &obj).await {
                Ok(o) => serde_json::to_value(o)?,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    get_opt(&api, &name).await?.unwrap_or_default()
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if provider.image_of(&existing).as_deref() != Some(image) {
        return Ok(Err(Stall {
            reason: "TemplateConflict".into(),
            message: format!(
                "{} {ns}/{name} exists but uses image {:?}, not {image}; delete it or fix the matrix",
                ar.kind,
                provider.image_of(&existing)
            ),
        }));
    }
    Ok(Ok(capi::reference_to(&existing, v1beta2_holder)))
}

/// Server-side applies a partial CAPI object under this controller's field manager.
async fn apply(client: &Client, ns: &str, obj: &Value) -> Result<(), Error> {
    let ar = capi::api_resource(
        obj["apiVersion"].as_str().unwrap_or_default(),
        obj["kind"].as_str().unwrap_or_default(),
    );
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    api.patch(
        capi::name(obj),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Carries out step `index`'s writes for `pools` (or the control plane).
async fn execute(
    client: &Client,
    ur: &UpgradeRequest,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    index: usize,
    pools: &[String],
) -> Result<Result<(), Stall>, Error> {
    let ns = ur.namespace().unwrap_or_default();
    let step = &status.plan[index];
    let (Some(cluster), Some(kcp), Some(matrix)) = (&obs.cluster, &obs.kcp, &obs.matrix) else {
        unreachable!("decide only starts steps with a cluster, a KCP and a matrix");
    };
    let Some(row) = matrix
        .spec
        .rows
        .iter()
        .find(|r| r.distribution_version == step.distribution_version)
    else {
        return Ok(Err(Stall {
            reason: "MissingMatrixRow".into(),
            message: format!(
                "row {} left the matrix during the upgrade",
                step.distribution_version
            ),
        }));
    };
    let version = step.kubernetes_version.as_str();
    let minor = crate::version::KubeVersion::parse(version)
        .map(|v| v.minor())
        .unwrap_or((1, 0));
    match step.kind {
        PlanStepKind::ControlPlane => {
            let tref = match ensure_template_clone(
                client,
                &ns,
                capi::kcp_infrastructure_ref(kcp),
                version,
                &step.os_image,
                cluster,
                capi::is_v1beta2(kcp),
            )
            .await?
            {
                Ok(r) => r,
                Err(s) => return Ok(Err(s)),
            };
            let write = capi::kcp_apply(
                kcp,
                version,
                minor,
                &row.core_dns_image_tag,
                &row.etcd_image_tag,
                tref,
            );
            info!(
                kcp = capi::name(kcp),
                version, "patching KubeadmControlPlane"
            );
            apply(client, &ns, &write).await?;
        }
        PlanStepKind::Workers => {
            for pool in pools {
                let Some(md) = obs.mds.iter().find(|m| capi::name(m) == pool) else {
                    return Ok(Err(Stall {
                        reason: "PoolNotFound".into(),
                        message: format!("MachineDeployment {pool} no longer exists"),
                    }));
                };
                let tref = match ensure_template_clone(
                    client,
                    &ns,
                    capi::md_infrastructure_ref(md),
                    version,
                    &step.os_image,
                    cluster,
                    capi::is_v1beta2(md),
                )
                .await?
                {
                    Ok(r) => r,
                    Err(s) => return Ok(Err(s)),
                };
                let bootstrap = if capi::needs_kubelet_patch(minor) {
                    match ensure_bootstrap_clone(
                        client,
                        &ns,
                        capi::md_bootstrap_ref(md),
                        version,
                        cluster,
                        capi::is_v1beta2(md),
                    )
                    .await?
                    {
                        Ok(r) => Some(r),
                        Err(s) => return Ok(Err(s)),
                    }
                } else {
                    None
                };
                let write = capi::md_apply(md, version, tref, bootstrap);
                info!(pool, version, "patching MachineDeployment");
                apply(client, &ns, &write).await?;
            }
        }
    }
    Ok(Ok(()))
}

/// For hops to ≥ 1.35: a KubeadmConfigTemplate clone whose nodes get the kubelet patch file
/// (DOMAIN.md §3).
async fn ensure_bootstrap_clone(
    client: &Client,
    ns: &str,
    source_ref: &Value,
    version: &str,
    owner: &Value,
    v1beta2_holder: bool,
) -> Result<Result<Value, Stall>, Error> {
    let (_, api, source) = match template_source(client, ns, source_ref, "bootstrap").await? {
        Ok(found) => found,
        Err(s) => return Ok(Err(s)),
    };
    let base =
        providers::template_base(&source).unwrap_or_else(|_| capi::name(&source).to_string());
    let name = providers::clone_name(&base, version, capi::KUBELET_PATCH_PATH);
    if get_opt(&api, &name).await?.is_none() {
        let mut spec = source["spec"].clone();
        spec["template"]["spec"]["files"] =
            capi::with_kubelet_patch(&spec["template"]["spec"]["files"]);
        let clone = json!({
            "apiVersion": source["apiVersion"], "kind": source["kind"],
            "metadata": {
                "name": name, "namespace": ns,
                "ownerReferences": [capi::owner_reference(owner)],
                "annotations": {providers::TEMPLATE_BASE_ANNOTATION: base, providers::KUBERNETES_VERSION_ANNOTATION: version},
            },
            "spec": spec,
        });
        let obj: DynamicObject = serde_json::from_value(clone)?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let clone = json!({"apiVersion": source["apiVersion"], "kind": source["kind"],
                       "metadata": {"name": name, "namespace": ns}});
    Ok(Ok(capi::reference_to(&clone, v1beta2_holder)))
}

/// Runs the preflight of `scope` and the (initial) review into `status`. `observedAt` moves
/// only when a check changes, so an unchanged result writes nothing.
fn record_preflight(
    status: &mut UpgradeRequestStatus,
    ur: &UpgradeRequest,
    obs: &Observed,
    scope: Scope,
    now: Timestamp,
) {
    let (Some(kcp), Some(matrix), Some(target)) = (&obs.kcp, &obs.matrix, &status.target) else {
        return;
    };
    let Some(pobs) = &obs.preflight else { return };
    let Some(row) = matrix
        .spec
        .rows
        .iter()
        .find(|r| r.distribution_version == target.distribution_version)
    else {
        return;
    };
    let checks = preflight::evaluate(&preflight::Input {
        spec: &ur.spec,
        scope,
        cluster_name: &ur.spec.cluster_name,
        kcp,
        mds: &obs.mds,
        machines: &obs.machines,
        plan: &status.plan,
        target: row,
        cvsh: obs.cvsh.as_ref(),
        cvsh_where: obs.cvsh_where.clone(),
        obs: pobs,
    });
    let label = scope.label();
    let unchanged = status
        .preflight
        .as_ref()
        .is_some_and(|p| p.scope == label && p.checks == checks);
    if !unchanged {
        status.preflight = Some(PreflightStatus {
            observed_at: Time(now),
            scope: label,
            checks,
        });
    }
    if scope == Scope::Initial {
        let patches = pobs
            .workload
            .as_ref()
            .map(|w| w.resource_patches.as_slice())
            .unwrap_or_default();
        let current_row = obs
            .cvsh
            .as_ref()
            .and_then(crate::platform::current_version)
            .and_then(|v| {
                matrix
                    .spec
                    .rows
                    .iter()
                    .find(|r| crate::platform::same_version(&r.distribution_version, v))
            });
        status.review = Some(review::review(
            patches,
            current_row,
            row,
            &ur.spec.acknowledgements,
        ));
    }
}

/// Copies the cvsh's stages and conditions into status while Phase 1 runs.
fn mirror_extensions(status: &mut UpgradeRequestStatus, cvsh: &Value) {
    let Some(ext) = status.aligned_extensions.as_mut() else {
        return;
    };
    ext.stages = cvsh["status"]["stages"]
        .as_array()
        .map(|stages| {
            stages
                .iter()
                .map(|s| ExtensionStage {
                    name: s["name"].as_str().unwrap_or("").to_string(),
                    state: s["state"].as_str().map(str::to_string),
                    message: s["message"]
                        .as_str()
                        .filter(|m| !m.is_empty())
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default();
    ext.conditions = cvsh["status"]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| serde_json::from_value(c.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
}

#[instrument(skip_all, fields(request = %ur.name_any(), namespace = ur.namespace().unwrap_or_default()))]
pub async fn reconcile(ur: Arc<UpgradeRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let client = &ctx.client;
    // Decide from the stored status, never from the watch cache: the cache may not yet hold
    // the status this controller wrote a moment ago, and deciding from an older one would
    // re-plan or repeat a step.
    let requests: Api<UpgradeRequest> =
        Api::namespaced(client.clone(), &ur.namespace().unwrap_or_default());
    let ur = match requests.get(&ur.name_any()).await {
        Ok(fresh) => fresh,
        Err(e) if crate::observe::not_found(&e) => return Ok(Action::await_change()),
        Err(e) => return Err(e.into()),
    };
    let mut obs = observe(client, &ur, ctx.capi, &ctx.cvsh).await?;
    let generation = ur.metadata.generation.unwrap_or(0);
    let original = ur.status.clone().unwrap_or_default();
    let mut status = original.clone();
    let mut stall: Option<Stall> = None;
    let mut waiting = Waiting::Nothing;
    let mut requeue = Duration::from_secs(300);
    let now = Timestamp::now();
    let mut observed_scope: Option<Scope> = None;

    // Each pass either finishes (break) or records progress that lets the next pass decide
    // further; a plan of n steps needs at most n + 4 passes.
    for _ in 0..status.plan.len().max(16) + 4 {
        if let Some(scope) = decide::preflight_scope(&status) {
            if observed_scope != Some(scope) {
                obs.preflight = Some(
                    observe_preflight(
                        client,
                        &ctx.cvsh,
                        ctx.standby.as_ref(),
                        &ur,
                        &status,
                        &obs,
                        scope,
                    )
                    .await?,
                );
                observed_scope = Some(scope);
            }
            record_preflight(&mut status, &ur, &obs, scope, now);
        }
        match decide::decide(&ur.spec, generation, &status, &obs, now) {
            Decision::Stall(s) => {
                if status.plan_generation != Some(generation)
                    && let Some(c) = preflight::from_plan_error(&s.reason, &s.message)
                {
                    status.preflight = Some(PreflightStatus {
                        observed_at: Time(now),
                        scope: Scope::Initial.label(),
                        checks: vec![c],
                    });
                }
                stall = Some(s);
                requeue = Duration::from_secs(60);
                break;
            }
            Decision::SetPlan {
                steps,
                current,
                target,
            } => {
                let n = steps.len();
                status.plan = steps;
                status.plan_generation = Some(generation);
                status.current = Some(ClusterVersions {
                    control_plane: current.control_plane,
                    pools: current
                        .pools
                        .into_iter()
                        .map(|p| PoolStatus {
                            name: p.name,
                            version: p.version,
                        })
                        .collect(),
                });
                status::push_history(
                    &mut status,
                    now,
                    format!(
                        "planned {n} steps to {} (Kubernetes {})",
                        target.distribution_version, target.kubernetes_version
                    ),
                );
                status.target = Some(target);
            }
            Decision::Blocked { .. } => {
                waiting = Waiting::Preflight;
                requeue = Duration::from_secs(10);
                break;
            }
            Decision::AwaitAcknowledgement { .. } => {
                waiting = Waiting::Acknowledgement;
                requeue = Duration::from_secs(15);
                break;
            }
            Decision::RequestExtensions { version, write } => {
                if write {
                    let obj = ctx.cvsh.desired_update(&ur.spec.cluster_name, &version);
                    info!(cvsh = %obs.cvsh_where, version, "requesting the Distribution Version");
                    let api = Api::<DynamicObject>::namespaced_with(
                        client.clone(),
                        &ctx.cvsh.namespace,
                        &ctx.cvsh.resource,
                    );
                    api.patch(
                        &ur.spec.cluster_name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&obj),
                    )
                    .await?;
                }
                status.aligned_extensions = Some(ExtensionsStatus {
                    version: Some(version.clone()),
                    state: Some(StepState::InProgress),
                    requested_at: Some(Time(now)),
                    ..Default::default()
                });
                status::push_history(
                    &mut status,
                    now,
                    format!(
                        "Phase 1: {} {} asked to move Core and Aligned extensions to {version}",
                        if write { "set" } else { "found" },
                        obs.cvsh_where
                    ),
                );
                requeue = Duration::from_secs(5);
                break;
            }
            Decision::ExtensionsDone => {
                let ext = status
                    .aligned_extensions
                    .get_or_insert_with(Default::default);
                ext.state = Some(StepState::Succeeded);
                ext.finished_at = Some(Time(now));
                if ext.version.is_none() {
                    ext.version = status
                        .target
                        .as_ref()
                        .map(|t| t.distribution_version.clone());
                }
                if let Some(cvsh) = &obs.cvsh {
                    mirror_extensions(&mut status, cvsh);
                }
                let msg = format!(
                    "Phase 1 finished: {} reports the target and Ready",
                    obs.cvsh_where
                );
                info!("{msg}");
                status::push_history(&mut status, now, msg);
            }
            Decision::Succeeded | Decision::Paused => break,
            Decision::Start { index, pools } => {
                match execute(client, &ur, &status, &obs, index, &pools).await? {
                    Ok(()) => {
                        let step = &mut status.plan[index];
                        if step.state != StepState::InProgress {
                            step.state = StepState::InProgress;
                            step.started_at.get_or_insert(Time(now));
                            step.message = None;
                            let msg = format!(
                                "step {}: {:?} to Kubernetes {} started",
                                index + 1,
                                step.kind,
                                step.kubernetes_version
                            );
                            status::push_history(&mut status, now, msg);
                        }
                        requeue = Duration::from_secs(30);
                    }
                    Err(s) => stall = Some(s),
                }
                break;
            }
            Decision::StepDone { index } => {
                let step = &mut status.plan[index];
                step.state = StepState::Succeeded;
                step.finished_at = Some(Time(now));
                let msg = format!(
                    "step {}: {:?} to Kubernetes {} finished",
                    index + 1,
                    step.kind,
                    step.kubernetes_version
                );
                info!("{msg}");
                status::push_history(&mut status, now, msg);
            }
            Decision::Wait { recheck, .. } => {
                requeue = Duration::from_secs(recheck.as_secs().clamp(1, 300) as u64);
                break;
            }
        }
    }
    if let Some(cvsh) = &obs.cvsh
        && status
            .aligned_extensions
            .as_ref()
            .is_some_and(|e| e.state == Some(StepState::InProgress))
    {
        mirror_extensions(&mut status, cvsh);
    }
    status::summarize(
        &mut status,
        stall.as_ref(),
        waiting,
        ur.spec.paused,
        generation,
        now,
    );
    if status != original {
        let api: Api<UpgradeRequest> =
            Api::namespaced(client.clone(), &ur.namespace().unwrap_or_default());
        api.patch_status(
            &ur.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    if let Some(s) = &stall {
        warn!(reason = %s.reason, "stalled: {}", s.message);
    }
    Ok(Action::requeue(requeue))
}

fn error_policy(_ur: Arc<UpgradeRequest>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(reason = error.reason(), "reconcile failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the controller until SIGTERM / Ctrl-C, for every namespace or only `namespace`,
/// reading and writing CAPI objects at `capi_version`.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    capi_version: capi::ApiVersion,
    cvsh: CvshConfig,
    standby: Option<Standby>,
) -> anyhow::Result<()> {
    let requests: Api<UpgradeRequest> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller = Controller::new(requests, watcher::Config::default());
    let store = controller.store();
    // Any CAPI object change in a namespace re-evaluates that namespace's requests.
    let in_namespace = move |obj: DynamicObject| {
        let ns = obj.namespace();
        store
            .state()
            .iter()
            .filter(|ur| ur.namespace() == ns)
            .map(|ur| ObjectRef::from_obj(ur.as_ref()))
            .collect::<Vec<_>>()
    };
    let matrix_store = controller.store();
    let by_matrix = move |m: OSSupportMatrix| {
        let name = m.name_any();
        matrix_store
            .state()
            .iter()
            .filter(|ur| ur.spec.matrix_ref == name)
            .map(|ur| ObjectRef::from_obj(ur.as_ref()))
            .collect::<Vec<_>>()
    };
    let mut c = controller.watches(
        Api::<OSSupportMatrix>::all(client.clone()),
        watcher::Config::default(),
        by_matrix,
    );
    for ar in [
        capi_version.cluster(),
        capi_version.kubeadm_control_plane(),
        capi_version.machine_deployment(),
        capi_version.machine(),
    ] {
        let api = match &namespace {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar),
            None => Api::<DynamicObject>::all_with(client.clone(), &ar),
        };
        c = c.watches_with(
            api,
            ar.clone(),
            watcher::Config::default(),
            in_namespace.clone(),
        );
    }
    info!(
        namespace = namespace.as_deref().unwrap_or("*"),
        "upgrade-controller started"
    );
    c.shutdown_on_signal()
        .run(
            reconcile,
            error_policy,
            Arc::new(Context {
                client,
                capi: capi_version,
                cvsh,
                standby,
            }),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!("reconcile: {e}");
            }
        })
        .await;
    Ok(())
}
