//! The imperative shell: observe (reads only) → decide (pure) → apply the decision's writes
//! → one status write, by server-side apply. Watches Clusters, KubeadmControlPlanes,
//! MachineDeployments, Machines and matrices, so progress is driven by events rather than
//! polling.
//!
//! Isolation: the requests of one cluster are reconciled one at a time (so the one-request-
//! per-cluster check reads every earlier decision), a panic in one request's reconcile is
//! caught, and failures back off per request and, when they persist, show in its status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, instrument, warn};

use crate::api::{
    ClusterVersions, ExtensionStage, ExtensionsStatus, OSSupportMatrix, PlanStepKind, PoolStatus,
    PreflightStatus, StepState, UpgradeRequest, UpgradeRequestStatus,
};
use crate::apply;
use crate::capi;
use crate::decide::{self, Decision, Observed, Stall};
use crate::error::{self, Error};
use crate::observe::{Standby, observe, observe_preflight};
use crate::platform::CvshConfig;
use crate::preflight::{self, Scope};
use crate::review;
use crate::status::{self, Waiting};

pub use crate::FIELD_MANAGER;

pub struct Context {
    pub client: Client,
    /// The CAPI API version to read and write.
    pub capi: capi::ApiVersion,
    /// Where the Cluster Version Operator's ClusterVersionShadows live.
    pub cvsh: CvshConfig,
    /// The DR standby global cluster, when configured.
    pub standby: Option<Standby>,
    recorder: Recorder,
    /// Consecutive failed reconciles per request (for backoff and for reporting).
    failures: Mutex<HashMap<ObjectRef<UpgradeRequest>, u32>>,
    /// One lock per cluster (namespace, name): its requests are reconciled one at a time.
    clusters: Mutex<HashMap<ClusterKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// A CAPI Cluster: (namespace, name).
type ClusterKey = (String, String);

impl Context {
    pub fn new(
        client: Client,
        capi: capi::ApiVersion,
        cvsh: CvshConfig,
        standby: Option<Standby>,
    ) -> Self {
        let reporter = Reporter {
            controller: "upgrade-controller".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            capi,
            cvsh,
            standby,
            failures: Mutex::default(),
            clusters: Mutex::default(),
        }
    }

    fn cluster_lock(&self, ns: &str, cluster: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        locks
            .entry((ns.to_string(), cluster.to_string()))
            .or_default()
            .clone()
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<UpgradeRequest>, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an Event on `reference`; a failure to publish is logged, never fatal.
    async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            warn!(reason, "could not publish an Event: {e}");
        }
    }
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

/// The status write: server-side apply of the whole status under this controller's field
/// manager, so a list that became empty (a plan re-made to no steps) is emptied on the server.
async fn write_status(
    api: &Api<UpgradeRequest>,
    name: &str,
    status: &UpgradeRequestStatus,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": UpgradeRequest::api_version(&()),
        "kind": UpgradeRequest::kind(&()),
        "status": status,
    });
    match api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted since it was read: nothing left to record.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// An ObjectReference to a CAPI object read as JSON (for Events on it).
fn reference_of(obj: &Value) -> ObjectReference {
    let s = |k: &str| obj["metadata"][k].as_str().map(str::to_string);
    ObjectReference {
        api_version: obj["apiVersion"].as_str().map(str::to_string),
        kind: obj["kind"].as_str().map(str::to_string),
        name: s("name"),
        namespace: s("namespace"),
        uid: s("uid"),
        ..ObjectReference::default()
    }
}

fn condition_reason<'a>(
    status: &'a UpgradeRequestStatus,
    type_: &str,
) -> Option<(&'a str, &'a str, &'a str)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

/// Events for what changed between `before` and `after`: every new history entry (plans,
/// Phase 1, step start and finish), a new stall, a new preflight block, a phase change.
async fn publish_changes(
    ctx: &Context,
    ur: &UpgradeRequest,
    before: &UpgradeRequestStatus,
    after: &UpgradeRequestStatus,
) {
    let reference = ur.object_ref(&());
    let new_entries = after
        .history
        .iter()
        .take_while(|h| before.history.first() != Some(*h))
        .collect::<Vec<_>>();
    for h in new_entries.into_iter().rev() {
        ctx.event(&reference, EventType::Normal, "Progress", h.message.clone())
            .await;
    }
    if after.phase != before.phase
        && let Some(phase) = after.phase
    {
        ctx.event(
            &reference,
            EventType::Normal,
            "PhaseChanged",
            format!(
                "{:?} → {phase:?}: {}",
                before.phase,
                condition_reason(after, "Ready").map_or("", |c| c.2)
            ),
        )
        .await;
    }
    let stalled = |s: &UpgradeRequestStatus| {
        condition_reason(s, "Stalled")
            .filter(|c| c.0 == "True")
            .map(|c| (c.1.to_string(), c.2.to_string()))
    };
    if let Some((reason, message)) = stalled(after)
        && stalled(before).map(|b| b.0) != Some(reason.clone())
    {
        ctx.event(&reference, EventType::Warning, &reason, message)
            .await;
    }
    let blocked = |s: &UpgradeRequestStatus| {
        condition_reason(s, "PreflightPassed")
            .filter(|c| c.0 == "False")
            .map(|c| (c.1.to_string(), c.2.to_string()))
    };
    if let Some((reason, message)) = blocked(after)
        && blocked(before).map(|b| b.0) != Some(reason.clone())
    {
        ctx.event(
            &reference,
            EventType::Warning,
            "PreflightBlocked",
            format!("{reason}: {message}"),
        )
        .await;
    }
}

/// Reconciles one request; a panic inside is caught and becomes an error of this request
/// only. Failures are counted per request: they back off exponentially, and from the
/// [`error::FAILURES_BEFORE_REPORT`]th in a row the request's status says what failed.
#[instrument(skip_all, fields(request = %ur.name_any(), namespace = ur.namespace().unwrap_or_default()))]
pub async fn reconcile(ur: Arc<UpgradeRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(ur.as_ref());
    let outcome = error::contain(reconcile_request(&ur, &ctx)).await;
    match outcome {
        Ok(action) => {
            ctx.failures().remove(&key);
            Ok(action)
        }
        Err(e) => {
            let attempts = {
                let mut failures = ctx.failures();
                let n = failures.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                *n
            };
            warn!(reason = e.reason(), attempts, "reconcile failed: {e}");
            if attempts >= error::FAILURES_BEFORE_REPORT
                && let Err(report) = report_failure(&ctx, &ur, &e, attempts).await
            {
                warn!("could not record the failure in status: {report}");
            }
            Err(e)
        }
    }
}

/// Shows a persistent failure in the request's status: `Stalled=True` (and `Ready=False`)
/// with the failure's reason and the API server's own message. The next successful reconcile
/// recomputes the conditions and clears it.
async fn report_failure(
    ctx: &Context,
    ur: &UpgradeRequest,
    e: &Error,
    attempts: u32,
) -> Result<(), Error> {
    let api: Api<UpgradeRequest> =
        Api::namespaced(ctx.client.clone(), &ur.namespace().unwrap_or_default());
    let fresh = match api.get(&ur.name_any()).await {
        Ok(f) => f,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    let before = fresh.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let generation = fresh.metadata.generation.unwrap_or(0);
    let next = error::backoff(attempts + 1, 0.5).as_secs();
    let failure = Stall {
        reason: e.reason().to_string(),
        message: format!(
            "{e} ({}; failed {attempts} times in a row, retrying in about {next}s)",
            e.advice()
        ),
    };
    status::summarize(
        &mut status,
        Some(&failure),
        Waiting::Nothing,
        fresh.spec.paused,
        generation,
        Timestamp::now(),
    );
    if status != before {
        write_status(&api, &fresh.name_any(), &status).await?;
        publish_changes(ctx, &fresh, &before, &status).await;
    }
    Ok(())
}

/// While a request is deleted: a rollout it started is let finish (nothing new is started),
/// then where it leaves the cluster is recorded on the Cluster and in Events, and the
/// finalizer is removed.
async fn finalize(
    ctx: &Context,
    api: &Api<UpgradeRequest>,
    ur: &UpgradeRequest,
    obs: &Observed,
) -> Result<Action, Error> {
    if !ur.finalizers().iter().any(|f| f == apply::FINALIZER) {
        return Ok(Action::await_change());
    }
    let before = ur.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let cluster_live = obs
        .cluster
        .as_ref()
        .filter(|c| c["metadata"]["deletionTimestamp"].is_null());
    if let (Some(_), Some(kcp), Some(index)) = (
        cluster_live,
        &obs.kcp,
        before
            .plan
            .iter()
            .position(|s| s.state == StepState::InProgress),
    ) {
        let step = &before.plan[index];
        let version = step.kubernetes_version.as_str();
        let pending: Vec<String> = match step.kind {
            PlanStepKind::ControlPlane => decide::control_plane_pending(obs, kcp, version),
            PlanStepKind::Workers => obs
                .mds
                .iter()
                .filter(|md| step.pools.iter().any(|p| p == capi::name(md)))
                .filter(|md| capi::md_version(md) == Some(version))
                .flat_map(|md| decide::pool_pending(obs, md, version))
                .collect(),
        };
        if !pending.is_empty() {
            let msg = format!(
                "deleting: step {}/{} ({:?} to Kubernetes {version}) is rolling out and is let finish before the request goes (nothing new is started): {}",
                index + 1,
                before.plan.len(),
                step.kind,
                pending.join("; ")
            );
            let mut status = before.clone();
            status::summarize(
                &mut status,
                None,
                Waiting::Deleting(msg),
                ur.spec.paused,
                ur.metadata.generation.unwrap_or(0),
                now,
            );
            if status != before {
                write_status(api, &ur.name_any(), &status).await?;
                publish_changes(ctx, ur, &before, &status).await;
            }
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }
    // A step whose rollout has finished is recorded as such before the note is written.
    let mut after = before.clone();
    if let Some(step) = after
        .plan
        .iter_mut()
        .find(|s| s.state == StepState::InProgress)
    {
        step.state = StepState::Succeeded;
        step.finished_at = Some(Time(now));
    }
    let note = format!(
        "UpgradeRequest {}/{} was deleted at {now} before it finished: {}; create a new UpgradeRequest to continue",
        ur.namespace().unwrap_or_default(),
        ur.name_any(),
        status::left_at(&after, obs)
    );
    let finished = before.phase == Some(crate::api::Phase::Succeeded);
    if let Some(cluster) = cluster_live
        && decide::plan_frozen(&before)
        && !finished
    {
        apply::record_left_at(&ctx.client, cluster, &note).await?;
        ctx.event(
            &reference_of(cluster),
            EventType::Warning,
            "UpgradeRequestDeleted",
            note.clone(),
        )
        .await;
    }
    ctx.event(
        &ur.object_ref(&()),
        EventType::Normal,
        "Deleted",
        if finished {
            "the request had finished; nothing was left in flight".into()
        } else {
            note
        },
    )
    .await;
    apply::remove_finalizer(api, ur).await?;
    Ok(Action::await_change())
}

async fn reconcile_request(ur: &UpgradeRequest, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = ur.namespace().unwrap_or_default();
    // One cluster's requests one at a time: the preflight of one then sees every decision
    // recorded by the others (SingleActiveRequest cannot be passed by two at once).
    let lock = ctx.cluster_lock(&ns, &ur.spec.cluster_name);
    let _held = lock.lock().await;
    // Decide from the stored status, never from the watch cache: the cache may not yet hold
    // the status this controller wrote a moment ago, and deciding from an older one would
    // re-plan or repeat a step.
    let requests: Api<UpgradeRequest> = Api::namespaced(client.clone(), &ns);
    let ur = match requests.get(&ur.name_any()).await {
        Ok(fresh) => fresh,
        Err(e) if crate::observe::not_found(&e) => return Ok(Action::await_change()),
        Err(e) => return Err(e.into()),
    };
    let mut obs = observe(client, &ur, ctx.capi, &ctx.cvsh).await?;
    if ur.metadata.deletion_timestamp.is_some() {
        return finalize(ctx, &requests, &ur, &obs).await;
    }
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
        match decide::decide(&ur.spec, &status, &obs, now) {
            Decision::Stall(s) => {
                if !decide::plan_frozen(&status)
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
            Decision::ClusterPaused { message } => {
                waiting = Waiting::ClusterPaused(message);
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
                // From here on the request holds the cluster: a deletion must let it finish
                // what it started.
                apply::add_finalizer(&requests, &ur).await?;
                if write {
                    let Ok(name) = ctx.cvsh.name_for(&ns, &ur.spec.cluster_name) else {
                        unreachable!("decide stalls requests whose cluster maps to no cvsh");
                    };
                    info!(cvsh = %obs.cvsh_where, version, "requesting the Distribution Version");
                    apply::request_extensions(client, &ctx.cvsh, &name, &version).await?;
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
                apply::add_finalizer(&requests, &ur).await?;
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
                match apply::execute(client, &ur, &status, &obs, index, &pools).await? {
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
        write_status(&requests, &ur.name_any(), &status).await?;
        publish_changes(ctx, &ur, &original, &status).await;
    }
    if let Some(s) = &stall {
        warn!(reason = %s.reason, "stalled: {}", s.message);
    }
    Ok(Action::requeue(requeue))
}

fn error_policy(ur: Arc<UpgradeRequest>, _error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = ctx
        .failures()
        .get(&ObjectRef::from_obj(ur.as_ref()))
        .copied()
        .unwrap_or(1);
    Action::requeue(error::backoff(attempts, error::jitter()))
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
            Arc::new(Context::new(client, capi_version, cvsh, standby)),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!("reconcile: {e}");
            }
        })
        .await;
    Ok(())
}
