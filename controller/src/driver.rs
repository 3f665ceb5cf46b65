//! The driver: one reconcile goes once through observe (caches, and a preflight's inputs) →
//! decide (pure) → apply (at most one write) → status (one write, by server-side apply), then
//! Events. [`run`] wires the watches: one per kind, into the caches observe reads, each event
//! waking only the unfinished requests of its Cluster.
//!
//! Isolation: the requests of one cluster are reconciled one at a time (so the
//! one-request-per-cluster check sees every earlier decision), a panic in one request's
//! reconcile is caught, and failures back off per request and, when they persist, show in its
//! status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::api::{
    OSSupportMatrix, Phase, PlanStepKind, StepState, UpgradeRequest, UpgradeRequestStatus,
};
use crate::apply::{self, finalizer};
use crate::capi::{self, Cluster, KubeadmControlPlane, Machine, MachineDeployment, MachinePool};
use crate::decide::{self, Outcome, Write};
use crate::error::{self, Error, Stall};
use crate::leader::{Leadership, LeaseOptions};
use crate::metrics::{self, Metrics};
use crate::observe::inputs::{Claims, Shard, Sources, Standby};
use crate::observe::workload::WorkloadClients;
use crate::observe::{Caches, ClusterKey, Observed, cache};
use crate::platform::CvshConfig;
use crate::status;

pub use crate::FIELD_MANAGER;

/// How the controller runs (`upgrade-controller run` flags).
pub struct RunOptions {
    /// Only this namespace's requests and CAPI objects; `None`: all.
    pub namespace: Option<String>,
    pub capi: capi::ApiVersion,
    pub cvsh: CvshConfig,
    pub standby: Option<Standby>,
    /// Requests reconciled at the same time.
    pub concurrency: u16,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None`: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where the validating webhook is served, and its certificate directory (`None`: not
    /// served).
    pub webhook: Option<(std::net::SocketAddr, std::path::PathBuf)>,
    pub gitops: crate::observe::inputs::GitOpsConfig,
    /// Where the Kube-OVN AppRelease lives on the clusters being upgraded.
    pub kube_ovn_namespace: String,
    /// Leader election (`--leader-elect`); `None`: this process leads alone.
    pub leader: Option<LeaseOptions>,
    /// `--shard-selector`: a label selector on Clusters; only their requests are handled.
    pub shard_selector: Option<String>,
}

pub struct Context {
    pub sources: Sources,
    /// Who publishes the Events (a Recorder is made per Event, see [`Context::event`]).
    reporter: Reporter,
    /// Consecutive failed reconciles per request (for backoff and for reporting).
    failures: Mutex<HashMap<ObjectRef<UpgradeRequest>, u32>>,
    /// One lock per cluster: its requests are reconciled one at a time.
    clusters: Mutex<HashMap<ClusterKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The resourceVersion of each request's last status write by this process: a cached
    /// request older than that is read again before deciding.
    written: Mutex<HashMap<String, String>>,
    pub metrics: Arc<Metrics>,
    /// Whether this replica may reconcile (a standby never writes).
    leadership: Leadership,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Context {
    pub fn new(sources: Sources) -> Self {
        let reporter = Reporter {
            controller: "upgrade-controller".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let metrics = Arc::new(if sources.shard.is_some() {
            Metrics::sharded()
        } else {
            Metrics::new()
        });
        Self {
            reporter,
            sources,
            failures: Mutex::default(),
            clusters: Mutex::default(),
            written: Mutex::default(),
            metrics,
            leadership: Leadership::sole(),
        }
    }

    /// Reconciles only while `leadership` says this replica leads.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    fn client(&self) -> &Client {
        &self.sources.client
    }

    fn cluster_lock(&self, key: &ClusterKey) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.clusters).entry(key.clone()).or_default().clone()
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
        // A Recorder of its own: a long-lived one folds every Event with the same reason into
        // the first one's series (kube-runtime keys them without the note), so `kubectl
        // describe` would show one "Progress" message and a count.
        let recorder = Recorder::new(self.client().clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&ev, reference).await {
            warn!(reason, "could not publish an Event: {e}");
        }
    }
}

/// The Event reason of a kubelet-client binding the controller created ([`apply::prepare`]).
const GRANTED: &str = "KubeletClientAccessGranted";

/// The status write: server-side apply of the whole status under this controller's field
/// manager, so a list that became empty (a plan re-made to no steps) is emptied on the server.
/// Returns the request's new resourceVersion; `None` when the request is gone.
async fn write_status(
    api: &Api<UpgradeRequest>,
    name: &str,
    status: &UpgradeRequestStatus,
) -> Result<Option<String>, Error> {
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
        Ok(written) => Ok(Some(written.resource_version().unwrap_or_default())),
        // Deleted since it was read: nothing left to record.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// An ObjectReference to a Cluster (for Events on it).
fn reference_of(cluster: &Cluster) -> ObjectReference {
    ObjectReference {
        api_version: Some(cluster.api_version.clone()),
        kind: Some(cluster.kind.clone()),
        name: cluster.metadata.name.clone(),
        namespace: cluster.metadata.namespace.clone(),
        uid: cluster.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

fn condition<'a>(
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
                "{} → {phase:?}: {}",
                before
                    .phase
                    .map_or("None".to_string(), |p| format!("{p:?}")),
                condition(after, "Ready").map_or("", |c| c.2)
            ),
        )
        .await;
    }
    let flagged = |s: &UpgradeRequestStatus, type_: &str, when: &str| {
        condition(s, type_)
            .filter(|c| c.0 == when)
            .map(|c| (c.1.to_string(), c.2.to_string()))
    };
    if let Some((reason, message)) = flagged(after, "Stalled", "True")
        && flagged(before, "Stalled", "True").map(|b| b.0) != Some(reason.clone())
    {
        ctx.event(&reference, EventType::Warning, &reason, message)
            .await;
    }
    if let Some((reason, message)) = flagged(after, "PreflightPassed", "False")
        && flagged(before, "PreflightPassed", "False").map(|b| b.0) != Some(reason.clone())
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
    if !ctx.leadership.is_leader() {
        // A standby lets every event pass: when it wins the Lease, every request is
        // reconciled anew (`run`), and nothing is written before that.
        return Ok(Action::await_change());
    }
    let key = ObjectRef::from_obj(ur.as_ref());
    let started = std::time::Instant::now();
    let result = error::contain(reconcile_request(&ur, &ctx)).await;
    ctx.metrics.reconciled(
        &ur.namespace().unwrap_or_default(),
        &ur.name_any(),
        started.elapsed(),
        result.as_ref().err().map(Error::reason),
    );
    match result {
        Ok(action) => {
            lock(&ctx.failures).remove(&key);
            Ok(action)
        }
        Err(e) => {
            let attempts = {
                let mut failures = lock(&ctx.failures);
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
        Api::namespaced(ctx.client().clone(), &ur.namespace().unwrap_or_default());
    let fresh = match api.get(&ur.name_any()).await {
        Ok(f) => f,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    let before = fresh.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let next = error::backoff(attempts + 1, 0.5).as_secs();
    let failure = Stall::new(
        decide::StallReason::Api(e.reason()),
        format!(
            "{e} ({}; failed {attempts} times in a row, retrying in about {next}s)",
            e.advice()
        ),
    );
    status::summarize(
        &mut status,
        &Outcome::Stalled(failure),
        fresh.metadata.generation.unwrap_or(0),
        Timestamp::now(),
    );
    if status != before {
        let rv = write_status(&api, &fresh.name_any(), &status).await?;
        if let (Some(uid), Some(rv)) = (fresh.metadata.uid.clone(), rv) {
            lock(&ctx.written).insert(uid, rv);
        }
        publish_changes(ctx, &fresh, &before, &status).await;
    }
    Ok(())
}

/// What a deleted request still waits for: the rollout of its running step (nothing new is
/// started). Empty when there is nothing to wait for.
fn running_rollout(status: &UpgradeRequestStatus, obs: &Observed) -> Vec<String> {
    let (Some(_), Some(kcp)) = (
        obs.cluster
            .as_ref()
            .filter(|c| c.metadata.deletion_timestamp.is_none()),
        &obs.kcp,
    ) else {
        return Vec::new();
    };
    let Some(step) = status
        .plan
        .iter()
        .find(|s| s.state == StepState::InProgress)
    else {
        return Vec::new();
    };
    let version = step.kubernetes_version.as_str();
    match step.kind {
        // The provider moves the chart on its own; no Machine waits for it.
        PlanStepKind::KubeOvn => Vec::new(),
        PlanStepKind::ControlPlane => decide::control_plane_pending(obs, kcp, version),
        PlanStepKind::Workers => obs
            .mds
            .iter()
            .filter(|md| step.pools.iter().any(|p| p == capi::name(&md.metadata)))
            .filter(|md| md.version() == version)
            .flat_map(|md| decide::pool_pending(obs, md, version))
            .collect(),
    }
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
    if !ur.finalizers().iter().any(|f| f == finalizer::FINALIZER) {
        return Ok(Action::await_change());
    }
    let before = ur.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let pending = running_rollout(&before, obs);
    if !pending.is_empty() {
        let step = before
            .plan
            .iter()
            .find(|s| s.state == StepState::InProgress)
            .cloned()
            .unwrap_or_else(|| before.plan[0].clone());
        let msg = format!(
            "deleting: step {}/{} ({:?} to Kubernetes {}) is rolling out and is let finish before the request goes (nothing new is started): {}",
            step.index + 1,
            before.plan.len(),
            step.kind,
            step.kubernetes_version,
            pending.join("; ")
        );
        let mut status = before.clone();
        status::summarize(
            &mut status,
            &Outcome::Deleting(msg),
            ur.metadata.generation.unwrap_or(0),
            now,
        );
        if status != before {
            write_status(api, &ur.name_any(), &status).await?;
            publish_changes(ctx, ur, &before, &status).await;
        }
        return Ok(Action::requeue(Duration::from_secs(30)));
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
    let ns = ur.namespace().unwrap_or_default();
    let note = format!(
        "UpgradeRequest {ns}/{} was deleted at {now} before it finished: {}; create a new UpgradeRequest to continue",
        ur.name_any(),
        status::left_at(&after, obs)
    );
    let finished = before.phase == Some(Phase::Succeeded);
    if let Some(cluster) = obs
        .cluster
        .as_ref()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        && decide::plan_frozen(&before)
        && !finished
    {
        finalizer::record_left_at(ctx.client(), cluster, &note).await?;
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
    let key = (ns, ur.spec.cluster_name.clone());
    ctx.sources
        .claims
        .release(&key, ur.metadata.uid.as_deref().unwrap_or_default());
    finalizer::remove_finalizer(api, ur).await?;
    Ok(Action::await_change())
}

/// When to look again without an event, by outcome (events of the objects it watches wake a
/// request at once).
fn requeue(outcome: &Outcome) -> Action {
    let after = |s: u64| Action::requeue(Duration::from_secs(s));
    match outcome {
        Outcome::PreflightDue(_) => Action::requeue(Duration::from_millis(200)),
        Outcome::Upgrading { recheck } => Action::requeue(*recheck),
        Outcome::OutsideWindow(c) => Action::requeue(c.recheck),
        Outcome::UpgradingExtensions => after(30),
        // The workload cluster and the platform's registrations are not all watched.
        Outcome::Blocked(_) => after(60),
        Outcome::Deleting(_) => after(30),
        Outcome::Stalled(_)
        | Outcome::ClusterPaused(_)
        | Outcome::AwaitingAcknowledgement
        | Outcome::Paused => after(300),
        Outcome::Succeeded => Action::await_change(),
    }
}

async fn reconcile_request(cached: &UpgradeRequest, ctx: &Context) -> Result<Action, Error> {
    let sources = &ctx.sources;
    if !sources.caches.synced() {
        // Nothing is decided from an incomplete cache; a watch the API server refuses is
        // this request's failure (and, after retries, its status).
        if let Some(f) = sources.caches.failing().into_iter().next() {
            return Err(Error::Watch {
                reason: f.reason,
                message: f.message,
            });
        }
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let ns = cached.namespace().unwrap_or_default();
    let key: ClusterKey = (ns.clone(), cached.spec.cluster_name.clone());
    // One cluster's requests one at a time: the preflight of one then sees every decision
    // recorded by the others (SingleActiveRequest cannot be passed by two at once).
    let cluster_lock = ctx.cluster_lock(&key);
    let _held = cluster_lock.lock().await;
    let requests: Api<UpgradeRequest> = Api::namespaced(sources.client.clone(), &ns);
    // Decide from the status this process wrote last, never from an older one: a cached
    // request that predates that write is read again.
    let uid = cached.metadata.uid.clone().unwrap_or_default();
    let stale = lock_written(ctx, &uid).is_some_and(|rv| Some(rv) != cached.resource_version());
    let fresh;
    let ur = if stale {
        fresh = match requests.get(&cached.name_any()).await {
            Ok(f) => f,
            Err(e) if crate::observe::inputs::not_found(&e) => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        };
        &fresh
    } else {
        cached
    };
    let mut obs = sources.caches.observe(ur, &sources.cvsh);
    if obs.cluster.is_none()
        && let Some(shard) = &sources.shard
        && !(ur.metadata.deletion_timestamp.is_some() && cluster_gone(shard, sources, ur).await?)
    {
        // Another shard's Cluster (or one no shard selects): not this shard's to report on.
        // A request being deleted whose Cluster no longer exists is let go by any shard.
        tracing::debug!(selector = %shard.selector, "the Cluster is not in this shard");
        return Ok(Action::await_change());
    }
    if ur.metadata.deletion_timestamp.is_some() {
        return finalize(ctx, &requests, ur, &obs).await;
    }
    let generation = ur.metadata.generation.unwrap_or(0);
    let stored = ur.status.clone().unwrap_or_default();
    obs.network = crate::observe::network::network(&sources.client, &obs).await?;
    if crate::observe::network::kube_ovn_step_next(&stored) {
        obs.kube_ovn_release = Some(sources.kube_ovn_release(&ns, &ur.spec.cluster_name).await);
    }
    let now = Timestamp::now();
    if let Some(scope) = decide::preflight_scope(&stored) {
        obs.preflight = Some(sources.preflight(ur, &stored, &obs, scope).await?);
    }
    // From the moment the plan is fixed: does Git still get applied (status `GitOpsSynced`)?
    if decide::plan_frozen(&stored) {
        obs.applied_by = Some(sources.applied_by(ur, &obs).await);
    }
    let decided = decide::pass(&ur.spec, &stored, &obs, now);
    let mut status = decided.status;
    let mut outcome = decided.outcome;
    // From the moment its plan is fixed the request holds the cluster: a deletion must let it
    // finish what it started.
    if decide::plan_frozen(&status) || decided.write.is_some() {
        finalizer::add_finalizer(&requests, ur).await?;
    }
    if let Some(write) = &decided.write {
        let applied = async {
            if let Some(note) = apply::prepare(sources, ur, &status, write).await? {
                ctx.event(&ur.object_ref(&()), EventType::Normal, GRANTED, note)
                    .await;
            }
            apply::execute(sources, ur, &status, &obs, write).await
        };
        match applied.await {
            Ok(applied) => {
                match write {
                    // Found asking for the target already, or handed to Git: recorded,
                    // nothing written.
                    _ if !applied.wrote => {}
                    Write::RequestExtensions { .. } => ctx.metrics.wrote("ClusterVersionShadow"),
                    Write::Start { index, .. } => {
                        ctx.metrics
                            .wrote(match status.plan.get(*index).map(|s| s.kind) {
                                Some(PlanStepKind::ControlPlane) => "ControlPlane",
                                Some(PlanStepKind::KubeOvn) => "Cluster",
                                _ => "Workers",
                            })
                    }
                }
                status::record_write(
                    &mut status,
                    write,
                    &applied.handed_off,
                    now,
                    &obs.cvsh_where,
                );
                if matches!(write, Write::RequestExtensions { .. }) {
                    sources.claims.claim(key.clone(), uid.clone());
                }
                if applied.wrote
                    && let Write::Start { index, pools } = write
                    && let Some(step) = status.plan.get(*index)
                {
                    await_own_write(&sources.caches, &key, step, pools).await;
                }
            }
            Err(Error::Stall(s)) => outcome = Outcome::Stalled(s),
            Err(e) => return Err(e),
        }
    }
    if outcome == Outcome::Succeeded {
        sources.claims.release(&key, &uid);
    }
    status::git_sync::record(&mut status, obs.applied_by.as_deref(), generation, now);
    status::window::record(&mut status, &ur.spec, &outcome, generation, now);
    status::summarize(&mut status, &outcome, generation, now);
    if status != stored {
        let Some(rv) = write_status(&requests, &ur.name_any(), &status).await? else {
            // Deleted since it was read: nothing to record, nobody to tell.
            return Ok(Action::await_change());
        };
        lock(&ctx.written).insert(uid, rv);
        ctx.metrics.steps_finished(&stored, &status);
        publish_changes(ctx, ur, &stored, &status).await;
    }
    if let Outcome::Stalled(s) = &outcome {
        warn!(reason = %s.reason, "stalled: {}", s.message);
    }
    if outcome == Outcome::Succeeded && status::git_sync::awaiting_git(&status) {
        // Finished, but Git is not applied yet: look again until it is (GitOpsSynced).
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    Ok(requeue(&outcome))
}

/// Whether the request's Cluster does not exist at all (read live: the shard's cache holds only
/// its own Clusters).
async fn cluster_gone(
    shard: &Shard,
    sources: &Sources,
    ur: &UpgradeRequest,
) -> Result<bool, Error> {
    let ns = ur.namespace().unwrap_or_default();
    let clusters: Api<DynamicObject> =
        Api::namespaced_with(sources.client.clone(), &ns, &shard.clusters);
    match clusters.get_metadata_opt(&ur.spec.cluster_name).await {
        Ok(found) => Ok(found.is_none()),
        Err(e) => Err(e.into()),
    }
}

/// Waits (5 s at most) until the watch caches show a step start's own write: the next
/// reconcile, woken by the status write at once, must not decide from a cache that predates
/// it and write the same version again.
async fn await_own_write(
    caches: &Caches,
    key: &ClusterKey,
    step: &crate::api::PlanStep,
    pools: &[String],
) {
    let version = step.kubernetes_version.as_str();
    let seen = || match step.kind {
        PlanStepKind::ControlPlane => caches
            .kcps
            .of_cluster(key)
            .iter()
            .any(|k| k.spec.version == version),
        PlanStepKind::Workers => {
            let mds = caches.mds.of_cluster(key);
            pools.iter().all(|p| {
                mds.iter()
                    .find(|md| capi::name(&md.metadata) == p)
                    // A MachinePool or a pool gone: nothing of ours to wait for.
                    .is_none_or(|md| md.version() == version)
            })
        }
        PlanStepKind::KubeOvn => true,
    };
    let start = std::time::Instant::now();
    while !seen() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn lock_written(ctx: &Context, uid: &str) -> Option<String> {
    lock(&ctx.written).get(uid).cloned()
}

fn error_policy(ur: Arc<UpgradeRequest>, _error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = lock(&ctx.failures)
        .get(&ObjectRef::from_obj(ur.as_ref()))
        .copied()
        .unwrap_or(1);
    Action::requeue(error::backoff(attempts, error::jitter()))
}

/// The unfinished requests of `cluster` (finished ones are not woken by CAPI events).
fn requests_of(caches: &Caches, cluster: Option<ClusterKey>) -> Vec<ObjectRef<UpgradeRequest>> {
    let Some(cluster) = cluster else {
        return Vec::new();
    };
    caches
        .requests
        .of_cluster(&cluster)
        .iter()
        .filter(|ur| ur.status.as_ref().and_then(|s| s.phase) != Some(Phase::Succeeded))
        .map(|ur| ObjectRef::from_obj(ur.as_ref()))
        .collect()
}

/// The unfinished requests that `keep` selects (for the rare events that concern many: a
/// matrix, the global cluster, an image registration).
fn unfinished(
    caches: &Caches,
    keep: impl Fn(&UpgradeRequest) -> bool,
) -> Vec<ObjectRef<UpgradeRequest>> {
    caches
        .requests
        .all()
        .iter()
        .filter(|ur| ur.status.as_ref().and_then(|s| s.phase) != Some(Phase::Succeeded))
        .filter(|ur| keep(ur))
        .map(|ur| ObjectRef::from_obj(ur.as_ref()))
        .collect()
}

/// The global cluster's own requests in preflight: any workload cluster's declared versions
/// decide its `WorkloadsCompatible` check, so a change to any KCP or pool wakes them.
fn global_in_preflight(caches: &Caches, cvsh: &CvshConfig) -> Vec<ObjectRef<UpgradeRequest>> {
    caches
        .requests
        .of_cluster(&(cvsh.namespace.clone(), cvsh.global_name.clone()))
        .iter()
        .filter(|ur| in_preflight(ur))
        .map(|ur| ObjectRef::from_obj(ur.as_ref()))
        .collect()
}

fn in_preflight(ur: &UpgradeRequest) -> bool {
    ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Preflight)
}

/// The kinds of `group` this API server serves (empty when the group is not served).
async fn served_kinds(client: &Client, group: &str) -> Vec<(String, kube::core::ApiResource)> {
    match kube::discovery::group(client, group).await {
        Ok(g) => g
            .recommended_resources()
            .into_iter()
            .map(|(ar, _)| (ar.kind.clone(), ar))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs the controller until SIGTERM / Ctrl-C.
pub async fn run(client: Client, opts: RunOptions) -> anyhow::Result<()> {
    let mut caches = Caches::new();
    let namespaced = |ar: &kube::core::ApiResource| -> Api<DeserializeGuard<DynamicObject>> {
        match &opts.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        }
    };
    fn typed<K>(
        client: &Client,
        ns: &Option<String>,
        ar: &kube::core::ApiResource,
    ) -> Api<DeserializeGuard<K>>
    where
        K: Resource<
                DynamicType = kube::core::ApiResource,
                Scope = kube::core::DynamicResourceScope,
            >,
    {
        match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        }
    }
    let cfg = watcher::Config::default;
    // A shard caches only its Clusters; the selector is tried once so a malformed one stops
    // the start with the API server's words rather than failing every watch.
    let cluster_cfg = match &opts.shard_selector {
        Some(selector) => {
            check_selector(&client, &opts, selector).await?;
            cfg().labels(selector)
        }
        None => cfg(),
    };

    // Optional kinds: only what this API server serves is watched.
    let capi_kinds = served_kinds(&client, capi::CLUSTER_GROUP).await;
    let serves_machine_pools = capi_kinds.iter().any(|(k, _)| k == "MachinePool");
    let infra = served_kinds(&client, capi::INFRASTRUCTURE_GROUP).await;
    let pool_kinds = [
        "DCSIpHostnamePool",
        "HCSMachineConfigPool",
        "VSphereMachineConfigPool",
        "DCSMachine",
    ];
    let mut pool_watches = Vec::new();
    for (kind, ar) in infra
        .into_iter()
        .filter(|(k, _)| pool_kinds.contains(&k.as_str()))
    {
        let mut c: cache::Cache<DynamicObject> = cache::Cache::new(|o: &DynamicObject| {
            capi::label(&o.metadata, capi::CLUSTER_NAME_LABEL).map(|c| {
                (
                    o.metadata.namespace.clone().unwrap_or_default(),
                    c.to_string(),
                )
            })
        });
        // Only what the provider counts slots from is kept (a DCSMachine's spec is most of
        // it, and there is one per Machine).
        if let Some(provider) = providers::for_slot_kind(&kind) {
            c = c.trimmed(move |o: &mut DynamicObject| {
                providers::keep_only(&mut o.data, provider.slot_fields())
            });
        }
        caches.pools.insert(kind.clone(), c.clone());
        pool_watches.push((kind, ar, c));
    }
    for key in [
        providers::DCS_VM_TEMPLATE_LABEL,
        providers::HCS_OS_RELEASE_LABEL,
    ] {
        caches
            .image_configmaps
            .insert(key, cache::Cache::new(|_: &ConfigMap| None));
    }

    // The requests: one watch into the cache and into the controller's own store.
    let requests_api: Api<DeserializeGuard<UpgradeRequest>> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let requests = cache::events(
        requests_api,
        cfg(),
        caches.requests.clone(),
        "UpgradeRequest",
    )
    // The controller's store does not need managedFields (a request's status writes are
    // most of them).
    .modify(|ur| ur.metadata.managed_fields = None)
    .reflect(writer)
    .touched_objects();
    let mut controller = Controller::for_stream(requests, reader)
        .with_config(controller::Config::default().concurrency(opts.concurrency));

    let wake_cluster = {
        let caches = caches.clone();
        move |c: Cluster| requests_of(&caches, caches.clusters.cluster_of(&c))
    };
    controller = controller.watches_stream_with(
        cache::watch(
            typed::<Cluster>(&client, &opts.namespace, &opts.capi.cluster()),
            cluster_cfg,
            caches.clusters.clone(),
            "Cluster",
        ),
        wake_cluster,
        opts.capi.cluster(),
    );
    let wake_kcp = {
        let caches = caches.clone();
        let cvsh = opts.cvsh.clone();
        move |k: KubeadmControlPlane| {
            let cluster = caches.kcps.cluster_of(&k).or_else(|| {
                // Not adopted yet: the Cluster whose controlPlaneRef names it.
                let ns = k.metadata.namespace.clone().unwrap_or_default();
                caches
                    .clusters
                    .in_namespace(&ns)
                    .iter()
                    .find(|c| {
                        c.spec
                            .control_plane_ref
                            .as_ref()
                            .is_some_and(|r| Some(&r.name) == k.metadata.name.as_ref())
                    })
                    .map(|c| (ns.clone(), c.name_any()))
            });
            let mut woken = requests_of(&caches, cluster);
            woken.extend(global_in_preflight(&caches, &cvsh));
            woken
        }
    };
    controller = controller.watches_stream_with(
        cache::watch(
            typed::<KubeadmControlPlane>(
                &client,
                &opts.namespace,
                &opts.capi.kubeadm_control_plane(),
            ),
            cfg(),
            caches.kcps.clone(),
            "KubeadmControlPlane",
        ),
        wake_kcp,
        opts.capi.kubeadm_control_plane(),
    );
    let wake_md = {
        let caches = caches.clone();
        let cvsh = opts.cvsh.clone();
        move |md: MachineDeployment| {
            let mut woken = requests_of(&caches, caches.mds.cluster_of(&md));
            woken.extend(global_in_preflight(&caches, &cvsh));
            woken
        }
    };
    controller = controller.watches_stream_with(
        cache::watch(
            typed::<MachineDeployment>(&client, &opts.namespace, &opts.capi.machine_deployment()),
            cfg(),
            caches.mds.clone(),
            "MachineDeployment",
        ),
        wake_md,
        opts.capi.machine_deployment(),
    );
    let wake_machine = {
        let caches = caches.clone();
        move |m: Machine| requests_of(&caches, caches.machines.cluster_of(&m))
    };
    controller = controller.watches_stream_with(
        cache::watch(
            typed::<Machine>(&client, &opts.namespace, &opts.capi.machine()),
            cfg(),
            caches.machines.clone(),
            "Machine",
        ),
        wake_machine,
        opts.capi.machine(),
    );
    if serves_machine_pools {
        let wake_pool = {
            let caches = caches.clone();
            move |p: MachinePool| requests_of(&caches, caches.machine_pools.cluster_of(&p))
        };
        controller = controller.watches_stream_with(
            cache::watch(
                typed::<MachinePool>(&client, &opts.namespace, &opts.capi.machine_pool()),
                cfg(),
                caches.machine_pools.clone(),
                "MachinePool",
            ),
            wake_pool,
            opts.capi.machine_pool(),
        );
    } else {
        caches.machine_pools.mark_synced();
    }
    let wake_matrix = {
        let caches = caches.clone();
        move |m: OSSupportMatrix| {
            let name = m.name_any();
            unfinished(&caches, |ur| ur.spec.matrix_ref == name)
        }
    };
    controller = controller.watches_stream(
        cache::watch(
            Api::<DeserializeGuard<OSSupportMatrix>>::all(client.clone()),
            cfg(),
            caches.matrices.clone(),
            "OSSupportMatrix",
        ),
        wake_matrix,
    );
    let wake_cvsh = {
        let caches = caches.clone();
        let cvsh = opts.cvsh.clone();
        move |o: DynamicObject| {
            let name = o.name_any();
            if name == cvsh.global_name {
                return unfinished(&caches, in_preflight);
            }
            requests_of(&caches, cvsh.cluster_for(&name))
        }
    };
    controller = controller.watches_stream_with(
        cache::watch(
            Api::<DeserializeGuard<DynamicObject>>::namespaced_with(
                client.clone(),
                &opts.cvsh.namespace,
                &opts.cvsh.resource,
            ),
            cfg(),
            caches.cvsh.clone(),
            "ClusterVersionShadow",
        ),
        wake_cvsh,
        opts.cvsh.resource.clone(),
    );
    for (key, c) in caches.image_configmaps.clone() {
        let wake = {
            let caches = caches.clone();
            move |_: ConfigMap| unfinished(&caches, in_preflight)
        };
        controller = controller.watches_stream(
            cache::watch(
                Api::<DeserializeGuard<ConfigMap>>::namespaced(
                    client.clone(),
                    providers::PLATFORM_NAMESPACE,
                ),
                watcher::Config::default().labels(key),
                c,
                "ConfigMap",
            ),
            wake,
        );
    }
    for (kind, ar, c) in pool_watches {
        let wake = {
            let caches = caches.clone();
            move |o: DynamicObject| {
                let ns = o.metadata.namespace.clone().unwrap_or_default();
                unfinished(&caches, |ur| {
                    in_preflight(ur) && ur.metadata.namespace.as_deref() == Some(ns.as_str())
                })
            }
        };
        let _ = &kind;
        controller = controller.watches_stream_with(
            cache::watch(namespaced(&ar), cfg(), c, "slot pool"),
            wake,
            ar,
        );
    }

    let sources = Sources {
        client: client.clone(),
        caches: caches.clone(),
        cvsh: opts.cvsh,
        standby: opts.standby,
        workloads: WorkloadClients::default(),
        claims: Claims::default(),
        gitops: opts.gitops,
        watch_namespace: opts.namespace.clone(),
        kube_ovn_namespace: opts.kube_ovn_namespace,
        shard: opts.shard_selector.clone().map(|selector| Shard {
            selector,
            clusters: opts.capi.cluster(),
        }),
    };
    // Every replica watches and serves; only the leader reconciles.
    let leadership = match &opts.leader {
        Some(lease) => Leadership::elect(client.clone(), lease).await?,
        None => Leadership::sole(),
    };
    if opts.leader.is_some() {
        // What a standby let pass is looked at when it wins the Lease.
        controller = controller.reconcile_all_on(leadership.acquired());
    }
    let ctx = Arc::new(Context::new(sources).with_leadership(leadership.clone()));
    if let Some(addr) = opts.metrics_addr {
        let (bound, server) = metrics::serve(
            addr,
            ctx.metrics.clone(),
            caches.clone(),
            leadership.clone(),
        )
        .await?;
        info!(address = %bound, "serving /metrics, /healthz and /readyz");
        tokio::spawn(async move {
            if let Err(e) = server.await {
                warn!("the metrics server stopped: {e}");
            }
        });
    }
    if let Some((addr, cert_dir)) = opts.webhook.clone() {
        let (bound, server) =
            crate::admission::server::serve(addr, cert_dir, client.clone(), caches.clone()).await?;
        info!(address = %bound, path = crate::admission::server::PATH, "serving the validating webhook");
        tokio::spawn(server);
    }
    info!(
        namespace = opts.namespace.as_deref().unwrap_or("*"),
        shard = opts.shard_selector.as_deref().unwrap_or("*"),
        concurrency = opts.concurrency,
        "upgrade-controller started"
    );
    {
        let caches = caches.clone();
        tokio::spawn(async move {
            while !caches.synced() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            info!(cached = %cache::summary(&caches.sizes()), "caches synced");
        });
    }
    let reconciling = controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!("reconcile: {e}");
            }
        });
    tokio::select! {
        // SIGTERM / Ctrl-C: the reconciles under way finished; a standby need not wait for the
        // Lease to expire.
        () = reconciling => {
            leadership.release().await;
            Ok(())
        }
        // Dropping the controller cancels what is under way: nothing more is sent.
        () = leadership.lost() => anyhow::bail!(
            "lost the leader Lease; stopping so that only the new leader writes (the restarted process stands by)"
        ),
    }
}

/// Lists one Cluster with `selector`, so that a selector the API server refuses stops the start
/// with its message.
async fn check_selector(client: &Client, opts: &RunOptions, selector: &str) -> anyhow::Result<()> {
    let clusters: Api<DynamicObject> = match &opts.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &opts.capi.cluster()),
        None => Api::all_with(client.clone(), &opts.capi.cluster()),
    };
    clusters
        .list_metadata(&kube::api::ListParams::default().labels(selector).limit(1))
        .await
        .map_err(|e| anyhow::anyhow!("--shard-selector {selector:?}: {e}"))?;
    Ok(())
}
