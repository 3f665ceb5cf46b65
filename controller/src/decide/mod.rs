//! Decide (pure): from what was observed and what status already records, what this
//! reconcile does. [`decide`] is the phase machine — the one next thing to do — and [`pass`]
//! runs it over the bookkeeping transitions (a plan made, a preflight recorded, a step found
//! finished, Phase 1 found done) until it reaches a write or a wait, so one reconcile goes
//! once through observe → decide → apply → status. The clock is passed in; the same
//! observations give the same decision, so a restarted controller picks up exactly where it
//! stopped.

pub mod gate;
pub mod handoff;
pub mod kube_ovn;
mod phase_one;
pub mod plan;
mod steps;
pub mod window;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{
    ClusterVersions, OSSupportMatrix, PlanStep, PlanStepKind, PoolStatus, PreflightStatus,
    StepState, TargetRow, UpgradeRequestSpec, UpgradeRequestStatus,
};
use crate::capi::{self, Cluster, KubeadmControlPlane, MachineDeployment, RefKind};
use crate::observe::Observed;
use crate::preflight::{self, Scope};
use crate::status;
use plan::{CurrentVersions, PlanInput, PoolVersion, StepKind};
use providers::ImageKey;

pub use crate::error::{Stall, StallReason};
pub use steps::{control_plane_pending, pool_pending};

/// The next thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing can proceed until a person acts.
    Stall(Stall),
    /// The Cluster is paused (`spec.paused`): CAPI rolls nothing out, so nothing is written.
    ClusterPaused { message: String },
    /// Record a (new) plan.
    SetPlan {
        steps: Vec<PlanStep>,
        current: CurrentVersions,
        target: TargetRow,
    },
    /// Preflight checks block (see status.preflight).
    Blocked { scope: Scope },
    /// The two-step review is not acknowledged yet (see status.review).
    AwaitAcknowledgement { message: String },
    /// Phase 1: write `spec.desiredUpdate.version` to the cluster's cvsh (`write`), or record
    /// that it already asks for the target (someone, or this controller before a restart,
    /// wrote it).
    RequestExtensions { version: String, write: bool },
    /// Phase 1: the cvsh reports the target and Ready.
    ExtensionsDone,
    /// Every step has finished.
    Succeeded,
    /// spec.paused and at a step boundary.
    Paused,
    /// Carry out step `index`'s writes for these pools (all, for a control-plane step).
    Start { index: usize, pools: Vec<String> },
    /// Phase 1 or the next step would start, but no maintenance window is open.
    OutsideWindow(Closed),
    /// Step `index` is complete by CAPI's criteria.
    StepDone { index: usize },
    /// `Handoff` mode: the Git-managed objects of step `index` now declare what it asked.
    GitDeclared { index: usize },
    /// A rollout is under way (or the workers wait for their control plane); check again on
    /// the next event or after `recheck`.
    Wait {
        index: usize,
        recheck: SignedDuration,
        /// What the running step waits for (the gate's unmet criteria), for its status.
        waiting_for: Vec<String>,
    },
}

/// The one write a pass asks for. Its bookkeeping goes into status only once it succeeded
/// ([`status::record_write`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Phase 1: `spec.desiredUpdate.version` of the cluster's cvsh (`write: false`: it asks
    /// for the target already; only record it).
    RequestExtensions { version: String, write: bool },
    /// Step `index`'s writes for these pools (all, for a control-plane step).
    Start { index: usize, pools: Vec<String> },
}

/// How a request stands when a reconcile ends. Status derives phase and conditions from it
/// alone, and the driver the requeue.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Needs a person (the reason and the fix are in the stall).
    Stalled(Stall),
    /// The Cluster is paused; nothing is written until it is unpaused.
    ClusterPaused(String),
    /// Preflight checks of this scope block.
    Blocked(Scope),
    /// The preflight of this scope must be read first: another pass follows at once.
    PreflightDue(Scope),
    /// The two-step review waits for acknowledgements.
    AwaitingAcknowledgement,
    /// Stopped at a step boundary by spec.paused.
    Paused,
    /// Waits for the next maintenance window to start Phase 1 or a step.
    OutsideWindow(Closed),
    /// Phase 1 runs.
    UpgradingExtensions,
    /// A step runs (or is about to start); check again after `recheck` at the latest.
    Upgrading { recheck: Duration },
    /// The request is deleted and waits for the rollout it started.
    Deleting(String),
    /// Both phases done: the cluster is at the target.
    Succeeded,
}

/// All maintenance windows are closed: what would start, and when it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// `Phase 1`, `step 3 (ControlPlane to Kubernetes v1.33.7)`.
    pub what: String,
    /// When the next window opens (`None`: none within the schedule's horizon).
    pub opens: Option<Timestamp>,
    /// That instant in the schedule's time zone, or why there is none.
    pub when: String,
    /// When to look again.
    pub recheck: Duration,
}

/// `Some` when `spec.maintenanceWindow` keeps `what` from starting at `now`. An invalid
/// window was already refused by [`decide`] (a stall), so it does not gate here.
pub(crate) fn window_closed(
    spec: &UpgradeRequestSpec,
    now: Timestamp,
    what: String,
) -> Option<Closed> {
    let schedule = window::Schedule::parse(spec.maintenance_window.as_ref()?).ok()?;
    let window::Now::Closed { opens } = schedule.at(now) else {
        return None;
    };
    // Look again when it opens (a second after), and at least hourly (a spec edit wakes the
    // request anyway).
    let recheck = opens
        .and_then(|o| Duration::try_from(o.duration_since(now)).ok())
        .map_or(Duration::from_secs(3600), |d| {
            (d + Duration::from_secs(1)).min(Duration::from_secs(3600))
        });
    let when = match opens {
        Some(o) => schedule.local(o),
        None => format!(
            "never within the next year ({}: every opening falls on an excluded date)",
            schedule.time_zone()
        ),
    };
    Some(Closed {
        what,
        opens,
        when,
        recheck,
    })
}

/// What [`pass`] concludes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The stored status with this pass's bookkeeping applied.
    pub status: UpgradeRequestStatus,
    /// The write to make, if any.
    pub write: Option<Write>,
    /// How the request stands if the write (when there is one) does not change it.
    pub outcome: Outcome,
}

/// The versions the cluster declares: KCP spec.version and each MD's template version.
pub fn declared(obs: &Observed) -> Option<CurrentVersions> {
    Some(declared_versions(obs.kcp.as_ref()?, &obs.mds))
}

fn declared_versions(kcp: &KubeadmControlPlane, mds: &[MachineDeployment]) -> CurrentVersions {
    let mut pools: Vec<PoolVersion> = mds
        .iter()
        .map(|md| PoolVersion {
            name: capi::name(&md.metadata).to_string(),
            version: md.version().to_string(),
        })
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    CurrentVersions {
        control_plane: kcp.spec.version.clone(),
        pools,
    }
}

fn stall(reason: StallReason, message: impl Into<String>) -> Decision {
    Decision::Stall(Stall::new(reason, message))
}

/// Which row image name the cluster's provider uses, from the KCP's infrastructure template.
pub fn image_key(kcp: &KubeadmControlPlane) -> Result<ImageKey, Stall> {
    let kind = kcp.infrastructure_ref().map_or("", |r| r.kind.as_str());
    providers::for_template_kind(kind)
        .map(|p| p.image_key())
        .map_err(|e| Stall::new(StallReason::UnsupportedProvider, e.to_string()))
}

fn plan_error_reason(e: &plan::PlanError) -> StallReason {
    use plan::PlanError::*;
    match e {
        InvalidTarget(_) => StallReason::InvalidTarget,
        InvalidRow { .. } => StallReason::InvalidMatrix,
        UnknownTarget { .. } => StallReason::UnknownTarget,
        InvalidCurrent { .. } => StallReason::InvalidClusterVersion,
        Downgrade { .. } => StallReason::Downgrade,
        MajorChange { .. } => StallReason::UnsupportedPath,
        MissingRow { .. } => StallReason::MissingMatrixRow,
        PoolNewerThanControlPlane { .. } | PoolTooFarBehind { .. } => StallReason::VersionSkew,
        NoRowForControlPlaneVersion { .. } => StallReason::MissingMatrixRow,
        MissingKubeOvnChart { .. } => StallReason::InvalidMatrix,
    }
}

/// Plans from the declared versions (and, for a Kube-OVN cluster, the chart its Cluster
/// annotation asks for).
fn fresh_plan(
    spec: &UpgradeRequestSpec,
    matrix: &OSSupportMatrix,
    key: ImageKey,
    current: &CurrentVersions,
    obs: &Observed,
) -> Result<plan::Plan, Stall> {
    let hops = plan::plan(
        PlanInput {
            rows: &matrix.spec.rows,
            target: &spec.target_version,
            strategy: spec.workers.strategy,
            image_key: key,
        },
        current,
    )
    .map_err(|e| Stall::new(plan_error_reason(&e), e.to_string()))?;
    with_network(hops, obs)
}

/// `hops` with the Kube-OVN steps the cluster's network needs (DOMAIN.md §3).
pub fn with_network(hops: plan::Plan, obs: &Observed) -> Result<plan::Plan, Stall> {
    match &obs.network {
        kube_ovn::Network::Other => Ok(hops),
        kube_ovn::Network::Unknown(why) => Err(Stall::new(StallReason::NetworkUnknown, why)),
        kube_ovn::Network::KubeOvn => {
            let annotation = obs.cluster.as_ref().and_then(kube_ovn::annotated_chart);
            kube_ovn::with_kube_ovn(hops, annotation)
                .map_err(|e| Stall::new(plan_error_reason(&e), e.to_string()))
        }
    }
}

/// Status steps for a plan, all Pending.
pub fn plan_steps(p: &plan::Plan) -> Vec<PlanStep> {
    p.steps
        .iter()
        .enumerate()
        .map(|(i, s)| PlanStep {
            index: i as u32,
            kind: match s.kind {
                StepKind::KubeOvn => PlanStepKind::KubeOvn,
                StepKind::ControlPlane => PlanStepKind::ControlPlane,
                StepKind::Workers => PlanStepKind::Workers,
            },
            distribution_version: s.row.distribution_version.clone(),
            kubernetes_version: s.row.kubernetes_version.clone(),
            os_image: s.os_image.clone(),
            kube_ovn_chart: s.kube_ovn_chart.clone(),
            pools: s.pools.clone(),
            state: StepState::Pending,
            started_at: None,
            finished_at: None,
            declared_at: None,
            message: None,
        })
        .collect()
}

/// Same step ignoring bookkeeping (state, timestamps, index).
fn same_step(a: &PlanStep, b: &PlanStep) -> bool {
    a.kind == b.kind
        && a.distribution_version == b.distribution_version
        && a.kubernetes_version == b.kubernetes_version
        && a.os_image == b.os_image
        && a.pools == b.pools
        && a.kube_ovn_chart == b.kube_ovn_chart
}

/// Whether the plan is fixed: the platform was asked for the target (or found at it). Before
/// that the plan follows the cluster and the spec on every pass; after it, finished steps and
/// step numbers never change, and the API server refuses edits of the plan's inputs
/// (`UpgradeRequest` CEL rule).
pub fn plan_frozen(status: &UpgradeRequestStatus) -> bool {
    status
        .aligned_extensions
        .as_ref()
        .is_some_and(|e| e.requested_at.is_some() || e.finished_at.is_some())
        || status.plan.iter().any(|s| s.state != StepState::Pending)
}

/// What this controller cannot upgrade, said before anything else (DESIGN.md "Flow" 1):
/// ClusterClass clusters, MachinePools, a control plane owned by another Cluster, and
/// references that leave the namespace or name unexpected kinds.
fn unsupported(spec: &UpgradeRequestSpec, obs: &Observed, cluster: &Cluster) -> Option<Stall> {
    let name = &spec.cluster_name;
    if cluster.spec.topology.as_ref().is_some_and(|t| !t.is_null()) {
        return Some(Stall::new(
            StallReason::ClusterClassManaged,
            format!(
                "Cluster {name} is managed by a ClusterClass (spec.topology): upgrade it by raising spec.topology.version one minor at a time, which CAPI's topology controller rolls out itself; this controller only moves clusters without spec.topology"
            ),
        ));
    }
    if !obs.machine_pools.is_empty() {
        return Some(Stall::new(
            StallReason::MachinePoolsUnsupported,
            format!(
                "Cluster {name} has MachinePools ({}); this controller moves KubeadmControlPlane and MachineDeployments only, so the MachinePools would fall out of the version-skew policy — move their workers to MachineDeployments, or upgrade this cluster by hand",
                obs.machine_pools.join(", ")
            ),
        ));
    }
    if let Some(kcp) = &obs.kcp
        && let Some(why) = capi::not_owned_by(kcp, cluster)
    {
        return Some(Stall::new(
            StallReason::ControlPlaneNotOwned,
            format!(
                "KubeadmControlPlane {} {why}; spec.controlPlaneRef of Cluster {name} must name the Cluster's own control plane",
                capi::name(&kcp.metadata)
            ),
        ));
    }
    let ns = cluster.metadata.namespace.as_deref().unwrap_or("");
    let mut refs = Vec::new();
    if let Some(kcp) = &obs.kcp {
        refs.push((
            format!(
                "KubeadmControlPlane {} infrastructure template",
                capi::name(&kcp.metadata)
            ),
            kcp.infrastructure_ref(),
            RefKind::InfrastructureTemplate,
        ));
    }
    for md in &obs.mds {
        let name = capi::name(&md.metadata);
        let template = &md.spec.template.spec;
        refs.push((
            format!("MachineDeployment {name} infrastructure template"),
            Some(&template.infrastructure_ref),
            RefKind::InfrastructureTemplate,
        ));
        refs.push((
            format!("MachineDeployment {name} bootstrap template"),
            template.bootstrap.config_ref.as_ref(),
            RefKind::BootstrapTemplate,
        ));
    }
    for (what, reference, kind) in refs {
        if let Err(why) = capi::check_reference(reference, kind, ns) {
            return Some(Stall::new(
                StallReason::ReferenceRefused,
                format!(
                    "the {what} reference {} {why}; this controller only reads and clones templates of the expected kinds in the request's own namespace",
                    reference.map(ToString::to_string).unwrap_or_default()
                ),
            ));
        }
    }
    None
}

/// The next thing to do for a request with `spec` and `status`, given `obs`, at `now`.
pub fn decide(
    spec: &UpgradeRequestSpec,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    now: Timestamp,
) -> Decision {
    let Some(cluster) = &obs.cluster else {
        return stall(
            StallReason::ClusterNotFound,
            format!(
                "Cluster {:?} does not exist in this namespace; set spec.clusterName to an existing Cluster",
                spec.cluster_name
            ),
        );
    };
    if let Some(s) = unsupported(spec, obs, cluster) {
        return Decision::Stall(s);
    }
    let Some(kcp) = &obs.kcp else {
        let cp_ref = cluster
            .spec
            .control_plane_ref
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "none".into());
        return stall(
            StallReason::ControlPlaneNotFound,
            format!(
                "Cluster {} has no KubeadmControlPlane (controlPlaneRef: {cp_ref}); only kubeadm control planes are supported",
                spec.cluster_name
            ),
        );
    };
    let Some(matrix) = &obs.matrix else {
        return stall(
            StallReason::MatrixNotFound,
            format!(
                "OSSupportMatrix {:?} does not exist; create it or set spec.matrixRef",
                spec.matrix_ref
            ),
        );
    };
    for (field, t) in [
        ("spec.timeouts.controlPlane", &spec.timeouts.control_plane),
        ("spec.timeouts.workerPool", &spec.timeouts.worker_pool),
    ] {
        if let Err(e) = t.get() {
            return stall(
                StallReason::InvalidSpec,
                format!("{field}: {e}; set a duration between 1m and 720h such as 45m"),
            );
        }
    }
    if let Some(w) = &spec.maintenance_window
        && let Err(e) = window::Schedule::parse(w)
    {
        return stall(StallReason::InvalidSpec, e);
    }
    let key = match image_key(kcp) {
        Ok(k) => k,
        Err(s) => return Decision::Stall(s),
    };
    let current = declared_versions(kcp, &obs.mds);

    // Until the platform is asked for the target, the plan follows the cluster and the spec
    // (a request held by another one re-plans from wherever that one left the cluster).
    if !plan_frozen(status) {
        let p = match fresh_plan(spec, matrix, key, &current, obs) {
            Ok(p) => p,
            Err(s) => return Decision::Stall(s),
        };
        let steps = plan_steps(&p);
        let target = TargetRow {
            distribution_version: p.target_row.distribution_version.clone(),
            kubernetes_version: p.target_row.kubernetes_version.clone(),
        };
        let same_plan = status.plan.len() == steps.len()
            && status.plan.iter().zip(&steps).all(|(a, b)| same_step(a, b));
        if status.target.as_ref() != Some(&target) || !same_plan {
            return Decision::SetPlan {
                steps,
                current,
                target,
            };
        }
    }

    // The platform's side comes after the spec's own problems: a Cluster that maps to no
    // ClusterVersionShadow it may move goes no further.
    if let Some(u) = &obs.cvsh_refused {
        return stall(StallReason::from_unmapped(u), u.message.clone());
    }
    if cluster.paused() {
        return Decision::ClusterPaused {
            message: format!(
                "Cluster {} has spec.paused: true, and CAPI rolls nothing out in a paused cluster; nothing is written until it is unpaused",
                spec.cluster_name
            ),
        };
    }

    // Phase 1 (and the gates before it) comes before any Kubernetes hop.
    if let Some(d) = phase_one::phase_one(spec, status, obs, now) {
        return d;
    }

    let Some(index) = status
        .plan
        .iter()
        .position(|s| s.state != StepState::Succeeded)
    else {
        return Decision::Succeeded;
    };
    match status.plan[index].state {
        StepState::Pending | StepState::Failed => {
            steps::pending_step(spec, status, obs, kcp, matrix, key, &current, index, now)
        }
        StepState::InProgress => steps::in_progress_step(spec, status, obs, kcp, index, now),
        StepState::Succeeded => unreachable!("position() skipped succeeded steps"),
    }
}

/// Which preflight is due now, if any: the initial one until Phase 1 has been requested, then
/// one before each hop's control-plane step.
pub fn preflight_scope(status: &UpgradeRequestStatus) -> Option<Scope> {
    status.target.as_ref()?;
    let ext = status.aligned_extensions.clone().unwrap_or_default();
    if ext.state != Some(StepState::Succeeded) {
        return ext.requested_at.is_none().then_some(Scope::Initial);
    }
    let index = status
        .plan
        .iter()
        .position(|s| s.state != StepState::Succeeded)?;
    let step = &status.plan[index];
    (matches!(
        step.kind,
        PlanStepKind::KubeOvn | PlanStepKind::ControlPlane
    ) && matches!(step.state, StepState::Pending | StepState::Failed))
    .then_some(Scope::Hop(index))
}

/// Runs the preflight of `scope` (and, for the initial one, the two-step review) into
/// `status`. `observedAt` moves only when a check changes, so an unchanged result writes
/// nothing.
fn record_preflight(
    status: &mut UpgradeRequestStatus,
    spec: &UpgradeRequestSpec,
    obs: &Observed,
    pobs: &preflight::PreflightObs,
    scope: Scope,
    now: Timestamp,
) {
    let (Some(kcp), Some(matrix), Some(target)) = (&obs.kcp, &obs.matrix, &status.target) else {
        return;
    };
    let Some(row) = matrix
        .spec
        .rows
        .iter()
        .find(|r| r.distribution_version == target.distribution_version)
    else {
        return;
    };
    let checks = preflight::evaluate(&preflight::Input {
        spec,
        scope,
        cluster_name: &spec.cluster_name,
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
    status.gitops = preflight::gitops::objects(&pobs.gitops);
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
        status.review = Some(preflight::review::review(
            patches,
            current_row,
            row,
            &spec.acknowledgements,
        ));
    }
}

/// One reconcile's decision: [`decide`] over the bookkeeping transitions (each applied to a
/// copy of the stored status) until it reaches a write, a wait or a stop.
pub fn pass(
    spec: &UpgradeRequestSpec,
    stored: &UpgradeRequestStatus,
    obs: &Observed,
    now: Timestamp,
) -> Decided {
    let mut status = stored.clone();
    let done = |status: UpgradeRequestStatus, write: Option<Write>, outcome: Outcome| Decided {
        status,
        write,
        outcome,
    };
    // Each transition records progress that lets the next decision go further; a plan of n
    // steps needs at most n + 4 of them.
    for _ in 0..status.plan.len().max(16) + 4 {
        if let Some(scope) = preflight_scope(&status) {
            match &obs.preflight {
                Some(pobs) if pobs.scope == scope => {
                    record_preflight(&mut status, spec, obs, pobs, scope, now);
                }
                // Its inputs were read for another scope (or not at all): the next pass
                // reads them.
                _ => return done(status, None, Outcome::PreflightDue(scope)),
            }
        }
        match decide(spec, &status, obs, now) {
            Decision::Stall(s) => {
                if !plan_frozen(&status)
                    && let Some(c) = preflight::from_plan_error(s.reason.as_str(), &s.message)
                {
                    status.preflight = Some(PreflightStatus {
                        observed_at: Time(now),
                        scope: Scope::Initial.label(),
                        checks: vec![c],
                    });
                }
                return done(status, None, Outcome::Stalled(s));
            }
            Decision::ClusterPaused { message } => {
                return done(status, None, Outcome::ClusterPaused(message));
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
            Decision::Blocked { scope } => return done(status, None, Outcome::Blocked(scope)),
            Decision::AwaitAcknowledgement { .. } => {
                return done(status, None, Outcome::AwaitingAcknowledgement);
            }
            Decision::RequestExtensions { version, write } => {
                let w = Write::RequestExtensions { version, write };
                return done(status, Some(w), Outcome::UpgradingExtensions);
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
                    status::mirror_extensions(&mut status, cvsh);
                }
                let msg = format!(
                    "Phase 1 finished: {} reports the target and Ready",
                    obs.cvsh_where
                );
                status::push_history(&mut status, now, msg);
            }
            Decision::Succeeded => {
                if let Some(kcp) = &obs.kcp {
                    status.declare_in_git = handoff::final_values(&status, kcp, &obs.mds);
                }
                return done(status, None, Outcome::Succeeded);
            }
            Decision::Paused => return done(status, None, Outcome::Paused),
            Decision::OutsideWindow(c) => {
                return done(status, None, Outcome::OutsideWindow(c));
            }
            Decision::Start { index, pools } => {
                let w = Write::Start { index, pools };
                let recheck = Duration::from_secs(30);
                return done(status, Some(w), Outcome::Upgrading { recheck });
            }
            Decision::GitDeclared { index } => {
                let step = &mut status.plan[index];
                step.declared_at = Some(Time(now));
                let msg = format!(
                    "step {}: Git declares what the step asked for; its rollout runs",
                    index + 1
                );
                status::push_history(&mut status, now, msg);
            }
            Decision::StepDone { index } => {
                let step = &mut status.plan[index];
                step.state = StepState::Succeeded;
                step.finished_at = Some(Time(now));
                step.message = None;
                let msg = format!("step {}: {} finished", index + 1, step.describe());
                status::push_history(&mut status, now, msg);
            }
            Decision::Wait {
                index,
                recheck,
                waiting_for,
            } => {
                // A running step says what it waits for (`kubectl get -o yaml`, describe).
                if let Some(step) = status.plan.get_mut(index)
                    && step.state == StepState::InProgress
                {
                    step.message = (!waiting_for.is_empty())
                        .then(|| format!("waiting for: {}", waiting_for.join("; ")));
                }
                // Phase 1 under way: the cvsh's progress is mirrored into status.
                if phase_one::running(&status) {
                    if let Some(cvsh) = &obs.cvsh {
                        status::mirror_extensions(&mut status, cvsh);
                    }
                    return done(status, None, Outcome::UpgradingExtensions);
                }
                let recheck = Duration::try_from(recheck)
                    .unwrap_or(Duration::from_secs(300))
                    .clamp(Duration::from_secs(1), Duration::from_secs(300));
                return done(status, None, Outcome::Upgrading { recheck });
            }
        }
    }
    let recheck = Duration::from_secs(1);
    done(status, None, Outcome::Upgrading { recheck })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        CheckName, CheckState, ExtensionsStatus, MatrixRow, Modification, OSSupportMatrixSpec,
        PreflightCheck, PreflightStatus, ReviewStatus,
    };
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    fn typed<T: DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn row(dv: &str, k8s: &str) -> MatrixRow {
        serde_json::from_value(json!({
            "distributionVersion": dv, "kubernetesVersion": k8s, "coreDNSImageTag": "1.12.4",
            "etcdImageTag": "v3.5.21", "osImageVersion": format!("img-{dv}"),
        }))
        .unwrap()
    }

    fn obs(cp: &str, pool: &str, cp_rolled: bool) -> Observed {
        let kcp = json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
            "metadata": {"name": "c-cp", "generation": 2, "labels": {"cluster.x-k8s.io/cluster-name": "c"}},
            "spec": {"version": cp, "replicas": 1, "machineTemplate": {"infrastructureRef": {
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DevMachineTemplate", "name": "t"}},
                "kubeadmConfigSpec": {"clusterConfiguration": {
                    "dns": {"imageTag": "1.12.4"}, "etcd": {"local": {"imageTag": "v3.5.21"}}}}},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                       "readyReplicas": if cp_rolled { 1 } else { 0 }, "unavailableReplicas": 0, "version": cp},
        });
        let machine = json!({
            "metadata": {"name": "m", "labels": {"cluster.x-k8s.io/control-plane-name": "c-cp"}},
            "spec": {"version": cp},
            "status": {"conditions": [{"type": "NodeHealthy", "status": "True"}]},
        });
        Observed {
            cluster: Some(typed(json!({"metadata": {"name": "c"}}))),
            kcp: Some(typed(kcp)),
            mds: vec![typed(
                json!({"metadata": {"name": "pool"}, "spec": {"template": {"spec": {"version": pool}}}}),
            )],
            machines: vec![typed(machine)],
            matrix: Some(OSSupportMatrix::new(
                "default",
                OSSupportMatrixSpec {
                    rows: vec![row("4.1.0", "v1.32.7"), row("4.2.0", "v1.33.7")],
                },
            )),
            cvsh: Some(cvsh("4.1.0", None, &[("Ready", "True", "AsExpected")])),
            cvsh_where: "ClusterVersionShadow cpaas-system/c".into(),
            preflight: None,
            applied_by: None,
            machine_pools: vec![],
            cvsh_refused: None,
            network: Default::default(),
            kube_ovn_release: None,
        }
    }

    fn cvsh(current: &str, desired: Option<&str>, conditions: &[(&str, &str, &str)]) -> Value {
        json!({
            "spec": {"desiredUpdate": {"version": desired}},
            "status": {
                "current": {"version": current},
                "conditions": conditions.iter().map(|(t, s, r)| json!({"type": t, "status": s, "reason": r, "message": "m"})).collect::<Vec<_>>(),
            },
        })
    }

    fn preflight_status(scope: Scope, failing: Option<CheckName>) -> PreflightStatus {
        let check = |name: CheckName, state: CheckState| PreflightCheck {
            name,
            state,
            reason: "r".into(),
            message: "m".into(),
        };
        let mut checks = vec![check(CheckName::NodesReady, CheckState::Passed)];
        if let Some(name) = failing {
            checks.push(check(name, CheckState::Failed));
        }
        PreflightStatus {
            observed_at: Time(Timestamp::UNIX_EPOCH),
            scope: scope.label(),
            checks,
        }
    }

    /// Planned, before Phase 1, with the initial preflight recorded.
    fn before_phase_one(o: &Observed, failing: Option<CheckName>) -> UpgradeRequestStatus {
        let Decision::SetPlan { steps, target, .. } = decide(
            &spec(false),
            &UpgradeRequestStatus::default(),
            o,
            Timestamp::UNIX_EPOCH,
        ) else {
            panic!("expected a plan");
        };
        UpgradeRequestStatus {
            plan: steps,
            target: Some(target),
            preflight: Some(preflight_status(Scope::Initial, failing)),
            review: Some(ReviewStatus::default()),
            ..Default::default()
        }
    }

    fn spec(paused: bool) -> UpgradeRequestSpec {
        serde_json::from_value(
            json!({"clusterName": "c", "targetVersion": "4.2", "paused": paused}),
        )
        .unwrap()
    }

    fn planned(o: &Observed, _generation: i64) -> UpgradeRequestStatus {
        let Decision::SetPlan { steps, target, .. } = decide(
            &spec(false),
            &UpgradeRequestStatus::default(),
            o,
            Timestamp::UNIX_EPOCH,
        ) else {
            panic!("expected a plan");
        };
        // Phase 1 done and the first hop's preflight passed.
        UpgradeRequestStatus {
            plan: steps,
            target: Some(target),
            aligned_extensions: Some(ExtensionsStatus {
                state: Some(StepState::Succeeded),
                finished_at: Some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }),
            preflight: Some(preflight_status(Scope::Hop(0), None)),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_is_requested_while_preflight_blocks_or_acknowledgements_are_missing() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let blocked = before_phase_one(&o, Some(CheckName::GlobalTierAtTarget));
        assert_eq!(preflight_scope(&blocked), Some(Scope::Initial));
        assert_eq!(
            decide(&spec(false), &blocked, &o, Timestamp::UNIX_EPOCH),
            Decision::Blocked {
                scope: Scope::Initial
            }
        );
        let mut unreviewed = before_phase_one(&o, None);
        unreviewed.review = Some(ReviewStatus {
            modifications: vec![Modification {
                name: "rp-1".into(),
                acknowledged: false,
            }],
            impacts: vec![],
        });
        assert!(matches!(
            decide(&spec(false), &unreviewed, &o, Timestamp::UNIX_EPOCH),
            Decision::AwaitAcknowledgement { message } if message.contains("rp-1")
        ));
        // A preflight of another scope (or none yet) never lets Phase 1 start.
        let mut stale = before_phase_one(&o, None);
        stale.preflight = Some(preflight_status(Scope::Hop(0), None));
        assert!(matches!(
            decide(&spec(false), &stale, &o, Timestamp::UNIX_EPOCH),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn phase_one_is_requested_once_and_followed_to_ready() {
        let mut o = obs("v1.32.7", "v1.32.7", true);
        let clear = before_phase_one(&o, None);
        assert_eq!(
            decide(&spec(false), &clear, &o, Timestamp::UNIX_EPOCH),
            Decision::RequestExtensions {
                version: "4.2.0".into(),
                write: true
            }
        );
        // Already asked for (a restart after the write): record it, do not write again.
        o.cvsh = Some(cvsh(
            "4.1.0",
            Some("4.2.0"),
            &[("Ready", "True", "AsExpected")],
        ));
        assert_eq!(
            decide(&spec(false), &clear, &o, Timestamp::UNIX_EPOCH),
            Decision::RequestExtensions {
                version: "4.2.0".into(),
                write: false
            }
        );
        let mut requested = clear.clone();
        requested.aligned_extensions = Some(ExtensionsStatus {
            version: Some("4.2.0".into()),
            state: Some(StepState::InProgress),
            requested_at: Some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        });
        assert_eq!(
            preflight_scope(&requested),
            None,
            "no preflight while Phase 1 runs"
        );
        assert!(matches!(
            decide(&spec(false), &requested, &o, Timestamp::UNIX_EPOCH),
            Decision::Wait { .. }
        ));
        o.cvsh = Some(cvsh(
            "4.1.0",
            Some("4.2.0"),
            &[
                ("Ready", "True", "AsExpected"),
                ("Stalled", "True", "AppReleaseFailed"),
            ],
        ));
        let Decision::Stall(s) = decide(&spec(false), &requested, &o, Timestamp::UNIX_EPOCH) else {
            panic!("expected a stall");
        };
        assert_eq!(s.reason, "AppReleaseFailed", "the CVO's own reason");
        o.cvsh = Some(cvsh(
            "4.1.0",
            Some("4.3.0"),
            &[("Ready", "True", "AsExpected")],
        ));
        let Decision::Stall(s) = decide(&spec(false), &requested, &o, Timestamp::UNIX_EPOCH) else {
            panic!("expected a stall");
        };
        assert_eq!(s.reason, "ExtensionsTargetChanged");
        o.cvsh = Some(cvsh(
            "4.2.0",
            Some("4.2.0"),
            &[("Ready", "True", "AsExpected")],
        ));
        assert_eq!(
            decide(&spec(false), &requested, &o, Timestamp::UNIX_EPOCH),
            Decision::ExtensionsDone
        );
        // Not Ready yet at the new version: keep waiting.
        o.cvsh = Some(cvsh(
            "4.2.0",
            Some("4.2.0"),
            &[("Ready", "False", "Progressing")],
        ));
        assert!(matches!(
            decide(&spec(false), &requested, &o, Timestamp::UNIX_EPOCH),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn each_hop_waits_for_its_own_passing_preflight() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let mut status = planned(&o, 1);
        assert_eq!(preflight_scope(&status), Some(Scope::Hop(0)));
        status.preflight = Some(preflight_status(
            Scope::Hop(0),
            Some(CheckName::IPPoolCapacity),
        ));
        assert_eq!(
            decide(&spec(false), &status, &o, Timestamp::UNIX_EPOCH),
            Decision::Blocked {
                scope: Scope::Hop(0)
            }
        );
        status.preflight = Some(preflight_status(Scope::Initial, None));
        assert!(matches!(
            decide(&spec(false), &status, &o, Timestamp::UNIX_EPOCH),
            Decision::Wait { .. }
        ));
        // Workers steps follow their control plane without a new preflight.
        status.plan[0].state = StepState::Succeeded;
        assert_eq!(preflight_scope(&status), None);
    }

    fn windowed(tz: &str) -> UpgradeRequestSpec {
        serde_json::from_value(json!({
            "clusterName": "c", "targetVersion": "4.2",
            "maintenanceWindow": {"timeZone": tz, "windows": [{"start": "22:00", "duration": "2h"}]},
        }))
        .unwrap()
    }

    #[test]
    fn phase_one_and_each_step_start_only_inside_a_window_and_a_running_step_goes_on() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let o = obs("v1.32.7", "v1.32.7", true);
        let spec = windowed("UTC");
        let clear = before_phase_one(&o, None);
        let Decision::OutsideWindow(c) = decide(&spec, &clear, &o, at("2026-12-02T12:00:00Z"))
        else {
            panic!("Phase 1 must wait for the window");
        };
        assert_eq!(c.what, "Phase 1");
        assert_eq!(c.opens, Some(at("2026-12-02T22:00:00Z")));
        assert_eq!(c.when, "2026-12-02T22:00:00+00:00[UTC]");
        assert_eq!(c.recheck, Duration::from_secs(3600), "at least hourly");
        let Decision::OutsideWindow(c) = decide(&spec, &clear, &o, at("2026-12-02T21:59:30Z"))
        else {
            panic!("still closed");
        };
        assert_eq!(c.recheck, Duration::from_secs(31), "just after it opens");
        assert!(matches!(
            decide(&spec, &clear, &o, at("2026-12-02T22:30:00Z")),
            Decision::RequestExtensions { write: true, .. }
        ));
        // Found asking for the target already: Phase 1 is under way, recorded at any time.
        let mut asked = o.clone();
        asked.cvsh = Some(cvsh(
            "4.1.0",
            Some("4.2.0"),
            &[("Ready", "True", "AsExpected")],
        ));
        assert!(matches!(
            decide(&spec, &clear, &asked, at("2026-12-02T12:00:00Z")),
            Decision::RequestExtensions { write: false, .. }
        ));

        let status = planned(&o, 1);
        let Decision::OutsideWindow(c) = decide(&spec, &status, &o, at("2026-12-03T02:00:00Z"))
        else {
            panic!("the step must wait for the window");
        };
        assert_eq!(c.what, "step 1 (ControlPlane to Kubernetes v1.33.7)");
        assert_eq!(c.opens, Some(at("2026-12-03T22:00:00Z")));
        assert!(matches!(
            decide(&spec, &status, &o, at("2026-12-03T23:59:00Z")),
            Decision::Start { index: 0, .. }
        ));
        // A step under way is followed to its end when the window closes.
        let mut running = status.clone();
        running.plan[0].state = StepState::InProgress;
        running.plan[0].started_at = Some(Time(at("2026-12-03T23:59:00Z")));
        let rolling = obs("v1.33.7", "v1.32.7", false);
        assert!(matches!(
            decide(&spec, &running, &rolling, at("2026-12-04T00:10:00Z")),
            Decision::Wait { index: 0, .. }
        ));
        // The same window in another zone opens at another instant.
        let Decision::OutsideWindow(c) = decide(
            &windowed("Asia/Shanghai"),
            &status,
            &o,
            at("2026-12-03T02:00:00Z"),
        ) else {
            panic!("closed in Shanghai too");
        };
        assert_eq!(c.opens, Some(at("2026-12-03T14:00:00Z")));
    }

    #[test]
    fn a_window_the_api_server_cannot_check_stalls_with_the_field() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let Decision::Stall(s) = decide(
            &windowed("Europe/Atlantis"),
            &planned(&o, 1),
            &o,
            Timestamp::UNIX_EPOCH,
        ) else {
            panic!("expected a stall");
        };
        assert_eq!(s.reason, "InvalidSpec");
        assert!(
            s.message
                .starts_with("spec.maintenanceWindow.timeZone: \"Europe/Atlantis\""),
            "{}",
            s.message
        );
    }

    #[test]
    fn bare_metal_hops_keep_the_template_take_the_version_as_image_and_never_surge() {
        let mut o = obs("v1.32.7", "v1.32.7", true);
        let kcp = o.kcp.as_mut().unwrap();
        kcp.spec.machine_template.infrastructure_ref = Some(typed(json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
            "kind": "BaremetalMachineTemplate", "name": "c-control-plane"})));
        kcp.spec.replicas = Some(3);
        let status = planned(&o, 1);
        // The catalog key: the row's Kubernetes version itself.
        assert_eq!(status.plan[0].os_image, "v1.33.7");
        // KCP's default rollout surges one machine: refused with the fix.
        let Decision::Stall(s) = decide(&spec(false), &status, &o, Timestamp::UNIX_EPOCH) else {
            panic!("a surge must stall");
        };
        assert_eq!(s.reason, "SurgeNotAllowed");
        assert!(
            s.message.starts_with("the baremetal provider replaces hosts delete-then-add, so maxSurge must be 0: KubeadmControlPlane c-cp has maxSurge 1"),
            "{}",
            s.message
        );
        o.kcp.as_mut().unwrap().spec.rollout_strategy =
            Some(typed(json!({"rollingUpdate": {"maxSurge": 0}})));
        assert!(matches!(
            decide(&spec(false), &status, &o, Timestamp::UNIX_EPOCH),
            Decision::Start { index: 0, .. }
        ));
    }

    #[test]
    fn paused_stops_at_a_step_boundary_only() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let status = planned(&o, 1);
        assert_eq!(
            decide(&spec(true), &status, &o, Timestamp::UNIX_EPOCH),
            Decision::Paused
        );
        assert!(matches!(
            decide(&spec(false), &status, &o, Timestamp::UNIX_EPOCH),
            Decision::Start { index: 0, .. }
        ));
        // A step already under way is followed to its end even when paused.
        let mut running = status.clone();
        running.plan[0].state = StepState::InProgress;
        running.plan[0].started_at = Some(Time(Timestamp::UNIX_EPOCH));
        let o = obs("v1.33.7", "v1.32.7", false);
        assert!(matches!(
            decide(&spec(true), &running, &o, Timestamp::UNIX_EPOCH),
            Decision::Wait { index: 0, .. }
        ));
    }

    #[test]
    fn a_rollout_past_its_timeout_stalls_with_what_is_missing() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let mut status = planned(&o, 1);
        status.plan[0].state = StepState::InProgress;
        status.plan[0].started_at = Some(Time(Timestamp::UNIX_EPOCH));
        let rolling = obs("v1.33.7", "v1.32.7", false);
        let later = Timestamp::UNIX_EPOCH + SignedDuration::from_mins(46);
        let Decision::Stall(s) = decide(&spec(false), &status, &rolling, later) else {
            panic!("expected a stall");
        };
        assert_eq!(s.reason, "RolloutTimeout");
        assert!(s.message.contains("readyReplicas is 0"), "{}", s.message);
        // Once the rollout completes, the same request carries on by itself.
        let done = obs("v1.33.7", "v1.32.7", true);
        assert_eq!(
            decide(&spec(false), &status, &done, later),
            Decision::StepDone { index: 0 }
        );
    }

    #[test]
    fn workers_never_start_before_the_control_plane_rollout_completes() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let mut status = planned(&o, 1);
        status.plan[0].state = StepState::Succeeded;
        let rolling = obs("v1.33.7", "v1.32.7", false);
        assert!(matches!(
            decide(&spec(false), &status, &rolling, Timestamp::UNIX_EPOCH),
            Decision::Wait { index: 1, .. }
        ));
        let rolled = obs("v1.33.7", "v1.32.7", true);
        assert_eq!(
            decide(&spec(false), &status, &rolled, Timestamp::UNIX_EPOCH),
            Decision::Start {
                index: 1,
                pools: vec!["pool".into()]
            }
        );
    }

    #[test]
    fn versions_changed_behind_the_plan_stall_instead_of_writing() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let status = planned(&o, 1);
        // Someone moved the pool by hand to a version the plan never chose.
        let moved = obs("v1.32.7", "v1.31.3", true);
        let Decision::Stall(s) = decide(&spec(false), &status, &moved, Timestamp::UNIX_EPOCH)
        else {
            panic!("expected a stall");
        };
        assert_eq!(s.reason, "ClusterChangedOutside");
    }

    fn stall_reason(d: Decision) -> String {
        match d {
            Decision::Stall(s) => {
                assert!(!s.message.is_empty());
                s.reason.to_string()
            }
            other => panic!("expected a stall, got {other:?}"),
        }
    }

    #[test]
    fn what_the_controller_cannot_handle_is_said_before_anything_else() {
        let now = Timestamp::UNIX_EPOCH;
        let status = UpgradeRequestStatus::default();
        let mut o = obs("v1.32.7", "v1.32.7", true);
        o.cluster.as_mut().unwrap().spec.topology =
            Some(json!({"class": "c", "version": "v1.32.7"}));
        assert_eq!(
            stall_reason(decide(&spec(false), &status, &o, now)),
            "ClusterClassManaged"
        );
        let mut o = obs("v1.32.7", "v1.32.7", true);
        o.machine_pools = vec!["mp".into()];
        assert_eq!(
            stall_reason(decide(&spec(false), &status, &o, now)),
            "MachinePoolsUnsupported"
        );
        let mut o = obs("v1.32.7", "v1.32.7", true);
        o.kcp
            .as_mut()
            .unwrap()
            .metadata
            .labels
            .get_or_insert_default()
            .insert("cluster.x-k8s.io/cluster-name".into(), "other".into());
        assert_eq!(
            stall_reason(decide(&spec(false), &status, &o, now)),
            "ControlPlaneNotOwned"
        );
        let mut o = obs("v1.32.7", "v1.32.7", true);
        o.mds[0].spec.template.spec.bootstrap.config_ref = Some(typed(
            json!({"apiVersion": "v1", "kind": "Secret", "name": "x"}),
        ));
        assert_eq!(
            stall_reason(decide(&spec(false), &status, &o, now)),
            "ReferenceRefused"
        );
        // A timeout stored under an older, looser CRD is reported, not used.
        let mut bad = spec(false);
        bad.timeouts.control_plane = crate::api::Timeout::new("4611686018427387904s");
        let o = obs("v1.32.7", "v1.32.7", true);
        assert_eq!(stall_reason(decide(&bad, &status, &o, now)), "InvalidSpec");
    }

    #[test]
    fn a_paused_cluster_gets_no_write_and_no_timeout() {
        let mut o = obs("v1.32.7", "v1.32.7", true);
        o.cluster.as_mut().unwrap().spec.paused = Some(true);
        let status = planned(&o, 1);
        assert!(matches!(
            decide(&spec(false), &status, &o, Timestamp::UNIX_EPOCH),
            Decision::ClusterPaused { .. }
        ));
        // Mid-step, far past the timeout: still only waiting.
        let mut running = status.clone();
        running.plan[0].state = StepState::InProgress;
        running.plan[0].started_at = Some(Time(Timestamp::UNIX_EPOCH));
        let mut rolling = obs("v1.33.7", "v1.32.7", false);
        rolling.cluster = o.cluster.clone();
        let later = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(10);
        assert!(matches!(
            decide(&spec(false), &running, &rolling, later),
            Decision::ClusterPaused { .. }
        ));
    }

    #[test]
    fn a_field_changed_while_its_step_runs_stalls_naming_field_and_manager() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let mut status = planned(&o, 1);
        status.plan[0].state = StepState::InProgress;
        status.plan[0].started_at = Some(Time(Timestamp::UNIX_EPOCH));
        // The KCP went back to 1.32 (someone's revert) while step 1 rolls it to 1.33.
        let mut reverted = obs("v1.32.7", "v1.32.7", true);
        reverted.kcp.as_mut().unwrap().metadata.managed_fields = typed(json!([
            {"manager": "kustomize-controller", "operation": "Apply", "fieldsV1": {"f:spec": {"f:version": {}}}},
        ]));
        let Decision::Stall(s) = decide(&spec(false), &status, &reverted, Timestamp::UNIX_EPOCH)
        else {
            panic!("expected a stall");
        };
        assert_eq!(s.reason, "ClusterChangedOutside");
        for part in [
            "KubeadmControlPlane c-cp",
            "spec.version",
            "kustomize-controller",
            "v1.33.7",
        ] {
            assert!(s.message.contains(part), "{part}: {}", s.message);
        }
        // The CoreDNS tag this step wrote, changed by hand.
        let mut retagged = obs("v1.33.7", "v1.32.7", false);
        retagged
            .kcp
            .as_mut()
            .unwrap()
            .spec
            .kubeadm_config_spec
            .cluster_configuration
            .dns
            .image_tag = Some("1.11.1".into());
        let Decision::Stall(s) = decide(&spec(false), &status, &retagged, Timestamp::UNIX_EPOCH)
        else {
            panic!("expected a stall");
        };
        assert!(s.message.contains("dns.imageTag"), "{}", s.message);
    }

    #[test]
    fn a_step_started_in_the_future_is_no_time_spent() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let mut status = planned(&o, 1);
        status.plan[0].state = StepState::InProgress;
        // Written by a controller whose clock ran a year ahead.
        status.plan[0].started_at = Some(Time(
            Timestamp::UNIX_EPOCH + SignedDuration::from_hours(24 * 365),
        ));
        let rolling = obs("v1.33.7", "v1.32.7", false);
        assert!(matches!(
            decide(&spec(false), &status, &rolling, Timestamp::UNIX_EPOCH),
            Decision::Wait { index: 0, .. }
        ));
    }

    #[test]
    fn the_plan_follows_the_cluster_until_phase_one_then_keeps_its_steps() {
        let o = obs("v1.32.7", "v1.32.7", true);
        // Not frozen: a cluster that moved gets a new plan.
        let mut status = before_phase_one(&o, None);
        assert!(!plan_frozen(&status));
        let moved = obs("v1.33.7", "v1.33.7", true);
        let Decision::SetPlan { steps, .. } =
            decide(&spec(false), &status, &moved, Timestamp::UNIX_EPOCH)
        else {
            panic!("expected a new plan");
        };
        assert!(steps.is_empty(), "already at the target: {steps:?}");
        // Frozen: the same situation is a change behind the plan's back, never a new plan.
        status.aligned_extensions = Some(ExtensionsStatus {
            requested_at: Some(Time(Timestamp::UNIX_EPOCH)),
            state: Some(StepState::Succeeded),
            finished_at: Some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        });
        status.preflight = Some(preflight_status(Scope::Hop(0), None));
        assert!(plan_frozen(&status));
        assert!(!matches!(
            decide(&spec(true), &status, &o, Timestamp::UNIX_EPOCH),
            Decision::SetPlan { .. }
        ));
    }

    /// Handoff: a Git-managed KCP's step publishes what Git must declare and waits for it
    /// without a timeout; the exact values let the rollout gate run (its timeout from then);
    /// a skipped minor stalls with the difference.
    #[test]
    fn handoff_waits_for_git_to_declare_exactly_what_the_step_asks() {
        let o = obs("v1.32.7", "v1.32.7", true);
        let mut spec = spec(false);
        spec.gitops.mode = crate::api::GitOpsMode::Handoff;
        let mut status = planned(&o, 1);
        status.current = Some(ClusterVersions {
            control_plane: "v1.32.7".into(),
            pools: vec![],
        });
        status.gitops = vec![crate::api::GitOpsObject {
            object: "KubeadmControlPlane c-cp".into(),
            tool: crate::api::GitOpsTool::Flux,
            source: None,
            evidence: "labels".into(),
            protected: false,
            message: String::new(),
        }];
        assert!(handoff::handed_off(
            &spec,
            &status,
            "KubeadmControlPlane c-cp"
        ));
        assert!(!handoff::handed_off(
            &spec,
            &status,
            "MachineDeployment pool"
        ));
        // The step starts (apply makes the clone and returns the fields instead of writing).
        let kcp = o.kcp.as_ref().unwrap();
        let write = capi::kcp_apply(
            kcp,
            "v1.33.7",
            (1, 33),
            "1.12.4",
            "v3.5.21",
            capi::Reference {
                api_version: Some("infrastructure.cluster.x-k8s.io/v1beta1".into()),
                api_group: None,
                kind: "DevMachineTemplate".into(),
                name: "t-133".into(),
                namespace: None,
            },
        );
        let asked = handoff::declarations("KubeadmControlPlane c-cp", &write);
        status::record_write(
            &mut status,
            &Write::Start {
                index: 0,
                pools: vec![],
            },
            &asked,
            Timestamp::UNIX_EPOCH,
            "",
        );
        assert_eq!(status.declare_in_git, asked);
        assert!(status.history[0].message.contains("Git must now declare"));

        // Git has not caught up, long after the timeout: it waits, saying for what.
        let later = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(5);
        let Decision::Wait { waiting_for, .. } = decide(&spec, &status, &o, later) else {
            panic!("expected a wait for Git");
        };
        assert!(waiting_for[0].contains("Git to declare"), "{waiting_for:?}");
        assert!(waiting_for[0].contains("t-133"), "{waiting_for:?}");

        // Git declares exactly that: recorded, then the rollout gate runs.
        let mut declared = obs("v1.33.7", "v1.32.7", false);
        {
            let k = declared.kcp.as_mut().unwrap();
            k.metadata.annotations =
                Some([(capi::SKIP_COREDNS_ANNOTATION.to_string(), String::new())].into());
            k.spec
                .machine_template
                .infrastructure_ref
                .as_mut()
                .unwrap()
                .name = "t-133".into();
        }
        assert_eq!(
            decide(&spec, &status, &declared, later),
            Decision::GitDeclared { index: 0 }
        );
        let d = pass(&spec, &status, &declared, later);
        assert_eq!(d.status.plan[0].declared_at, Some(Time(later)));
        assert!(
            matches!(d.outcome, Outcome::Upgrading { .. }),
            "{:?}",
            d.outcome
        );
        // Its timeout counts from the declaration, not from the step's start.
        let mut status = d.status;
        let soon = later + SignedDuration::from_mins(10);
        assert!(matches!(
            decide(&spec, &status, &declared, soon),
            Decision::Wait { index: 0, .. }
        ));
        // A commit that skips a minor stalls with the difference.
        status.plan[0].declared_at = None;
        let mut skipped = declared.clone();
        skipped.kcp.as_mut().unwrap().spec.version = "v1.34.2".into();
        let Decision::Stall(s) = decide(&spec, &status, &skipped, soon) else {
            panic!("expected a stall");
        };
        assert_eq!(s.reason, "GitDeclaresOtherwise");
        assert!(
            s.message
                .contains(r#"spec.version is "v1.34.2", the step needs "v1.33.7""#),
            "{}",
            s.message
        );
    }

    /// A Kube-OVN cluster whose Cluster annotation asks for `annotation`, with the charts of
    /// the sample matrix's 4.1.0 and 4.2.0 rows.
    fn kube_ovn_obs(annotation: &str) -> Observed {
        let mut o = obs("v1.32.7", "v1.32.7", true);
        o.network = kube_ovn::Network::KubeOvn;
        let matrix = o.matrix.as_mut().unwrap();
        matrix.spec.rows[0].kube_ovn_chart = Some("v4.1.4".into());
        matrix.spec.rows[1].kube_ovn_chart = Some("v4.2.6".into());
        o.cluster = Some(typed(
            json!({"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
            "metadata": {"name": "c", "annotations": {"cpaas.io/kube-ovn-version": annotation}}}),
        ));
        o
    }

    fn kube_ovn_release(target: &str, installed: &str, phase: &str, health: &str) -> Value {
        json!({
            "metadata": {"name": "cni-kube-ovn", "namespace": "cpaas-system"},
            "spec": {"source": {"charts": [{"name": "acp/chart-cpaas-kube-ovn", "targetRevision": target}]}},
            "status": {"charts": {"acp/chart-cpaas-kube-ovn": {"installedRevision": installed, "phase": phase}},
                "conditions": [{"type": "Sync", "status": "True"},
                    {"type": "Health", "status": health, "message": "kube-ovn-cni 2/3 ready"}]},
        })
    }

    #[test]
    fn a_kube_ovn_cluster_moves_its_chart_before_the_control_plane_others_do_not() {
        let kinds = |st: &UpgradeRequestStatus| st.plan.iter().map(|s| s.kind).collect::<Vec<_>>();
        let plain = planned(&obs("v1.32.7", "v1.32.7", true), 1);
        assert_eq!(
            kinds(&plain),
            [PlanStepKind::ControlPlane, PlanStepKind::Workers],
            "a cluster that is not Kube-OVN keeps its plan"
        );
        let o = kube_ovn_obs("v4.1.4");
        let st = planned(&o, 1);
        assert_eq!(
            kinds(&st),
            [
                PlanStepKind::KubeOvn,
                PlanStepKind::ControlPlane,
                PlanStepKind::Workers
            ]
        );
        assert_eq!(st.plan[0].kube_ovn_chart.as_deref(), Some("v4.2.6"));
        assert_eq!(
            preflight_scope(&st),
            Some(Scope::Hop(0)),
            "the hop's preflight comes first"
        );
        assert_eq!(
            decide(&spec(false), &st, &o, Timestamp::UNIX_EPOCH),
            Decision::Start {
                index: 0,
                pools: vec![]
            }
        );
        // Already at the hop's chart: no KubeOvn step.
        assert_eq!(
            kinds(&planned(&kube_ovn_obs("v4.2.6"), 1)),
            [PlanStepKind::ControlPlane, PlanStepKind::Workers]
        );
        // A network that cannot be told stops the request instead of guessing.
        let mut unknown = o.clone();
        unknown.network = kube_ovn::Network::Unknown("DCSCluster ns/c does not exist".into());
        let Decision::Stall(s) = decide(
            &spec(false),
            &UpgradeRequestStatus::default(),
            &unknown,
            Timestamp::UNIX_EPOCH,
        ) else {
            panic!("expected a stall");
        };
        assert_eq!(
            (s.reason.as_str(), s.message.as_str()),
            ("NetworkUnknown", "DCSCluster ns/c does not exist")
        );
    }

    #[test]
    fn the_kube_ovn_step_waits_for_success_and_stops_on_a_failed_apprelease() {
        let start = Timestamp::UNIX_EPOCH;
        let mut st = planned(&kube_ovn_obs("v4.1.4"), 1);
        st.plan[0].state = StepState::InProgress;
        st.plan[0].started_at = Some(Time(start));
        let mut o = kube_ovn_obs("v4.2.6");
        let at = |o: &Observed| decide(&spec(false), &st, o, start);
        // installedRevision moved, but the chart is still health checking.
        o.kube_ovn_release = Some(Ok(Some(kube_ovn_release(
            "v4.2.6",
            "v4.2.6",
            "HealthChecking",
            "False",
        ))));
        let Decision::Wait { waiting_for, .. } = at(&o) else {
            panic!("expected a wait, got {:?}", at(&o));
        };
        assert!(
            waiting_for.iter().any(|w| w.contains("HealthChecking")),
            "{waiting_for:?}"
        );
        o.kube_ovn_release = Some(Ok(Some(kube_ovn_release(
            "v4.2.6", "v4.2.6", "Success", "True",
        ))));
        assert_eq!(at(&o), Decision::StepDone { index: 0 });
        o.kube_ovn_release = Some(Ok(Some(kube_ovn_release(
            "v4.2.6",
            "v4.1.4",
            "DeployFailed",
            "False",
        ))));
        let Decision::Stall(s) = at(&o) else {
            panic!("expected a stall");
        };
        assert_eq!(s.reason, "KubeOvnFailed");
        assert!(
            s.message.contains("DeployFailed") && s.message.contains("kube-ovn-cni 2/3 ready"),
            "{}",
            s.message
        );
        // The annotation moved by someone else while the step runs.
        let other = kube_ovn_obs("v4.1.5");
        let Decision::Stall(s) = at(&other) else {
            panic!("expected a stall");
        };
        assert_eq!(s.reason, "ClusterChangedOutside");
        // Done: the control plane's step is next, after its own preflight, and the plan made
        // from the moved annotation is still the rest of it.
        st.plan[0].state = StepState::Succeeded;
        assert_eq!(preflight_scope(&st), Some(Scope::Hop(1)));
        st.preflight = Some(preflight_status(Scope::Hop(1), None));
        assert_eq!(
            decide(&spec(false), &st, &kube_ovn_obs("v4.2.6"), start),
            Decision::Start {
                index: 1,
                pools: vec![]
            }
        );
    }

    #[test]
    fn a_kube_ovn_write_that_landed_before_a_restart_is_taken_up_again() {
        // The annotation is at the chart but status still says Pending: the step starts
        // again (the write is idempotent) instead of calling it a change from outside.
        let st = planned(&kube_ovn_obs("v4.1.4"), 1);
        assert_eq!(
            decide(
                &spec(false),
                &st,
                &kube_ovn_obs("v4.2.6"),
                Timestamp::UNIX_EPOCH
            ),
            Decision::Start {
                index: 0,
                pools: vec![]
            }
        );
    }
}
