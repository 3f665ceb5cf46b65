//! The phase machine: from what was observed and what status already records, the one next
//! thing to do. Pure (the clock is passed in) and idempotent: the same observations give the
//! same decision, so a restarted controller picks up exactly where it stopped.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::api::{
    MAX_TIMEOUT, OSSupportMatrix, PlanStep, PlanStepKind, StepState, TargetRow, UpgradeRequestSpec,
    UpgradeRequestStatus,
};
use crate::capi;
use crate::gate;
use crate::plan::{self, CurrentVersions, PlanInput, PoolVersion, StepKind};
use crate::platform;
use crate::preflight::{self, PreflightObs, Scope};
use crate::review;
use providers::ImageKey;

/// Everything `decide` looks at, read from the API server (reads only).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub cluster: Option<Value>,
    pub kcp: Option<Value>,
    /// The Cluster's MachineDeployments.
    pub mds: Vec<Value>,
    /// The Cluster's Machines.
    pub machines: Vec<Value>,
    pub matrix: Option<OSSupportMatrix>,
    /// This cluster's ClusterVersionShadow (read until Phase 1 has succeeded).
    pub cvsh: Option<Value>,
    /// Where that cvsh lives, for messages (`ClusterVersionShadow cpaas-system/prod-a`).
    pub cvsh_where: String,
    /// What the preflight reads, when one is due ([`preflight_scope`]).
    pub preflight: Option<PreflightObs>,
    /// Names of the Cluster's MachinePools (which this controller cannot move).
    pub machine_pools: Vec<String>,
    /// Why the Cluster cannot be mapped to a ClusterVersionShadow, when it cannot
    /// ([`crate::platform::CvshConfig::name_for`]).
    pub cvsh_refused: Option<Stall>,
}

/// Why a request cannot go on; `reason` is the Stalled condition's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub reason: String,
    pub message: String,
}

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
    /// Step `index` is complete by CAPI's criteria.
    StepDone { index: usize },
    /// A rollout is under way; check again on the next event or after `recheck`.
    Wait {
        index: usize,
        recheck: SignedDuration,
    },
}

/// The versions the cluster declares: KCP spec.version and each MD's template version.
pub fn declared(obs: &Observed) -> Option<CurrentVersions> {
    Some(declared_versions(obs.kcp.as_ref()?, &obs.mds))
}

fn declared_versions(kcp: &Value, mds: &[Value]) -> CurrentVersions {
    let mut pools: Vec<PoolVersion> = mds
        .iter()
        .map(|md| PoolVersion {
            name: capi::name(md).to_string(),
            version: capi::md_version(md).unwrap_or("").to_string(),
        })
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    CurrentVersions {
        control_plane: capi::kcp_version(kcp).unwrap_or("").to_string(),
        pools,
    }
}

fn stall(reason: &str, message: impl Into<String>) -> Decision {
    Decision::Stall(Stall {
        reason: reason.into(),
        message: message.into(),
    })
}

/// Which row image name the cluster's provider uses, from the KCP's infrastructure template.
pub fn image_key(kcp: &Value) -> Result<ImageKey, Stall> {
    let kind = capi::kcp_infrastructure_ref(kcp)["kind"]
        .as_str()
        .unwrap_or("");
    providers::for_template_kind(kind)
        .map(|p| p.image_key())
        .map_err(|e| Stall {
            reason: "UnsupportedProvider".into(),
            message: e.to_string(),
        })
}

fn plan_error_reason(e: &plan::PlanError) -> &'static str {
    use plan::PlanError::*;
    match e {
        InvalidTarget(_) => "InvalidTarget",
        InvalidRow { .. } => "InvalidMatrix",
        UnknownTarget { .. } => "UnknownTarget",
        InvalidCurrent { .. } => "InvalidClusterVersion",
        Downgrade { .. } => "Downgrade",
        MajorChange { .. } => "UnsupportedPath",
        MissingRow { .. } => "MissingMatrixRow",
        PoolNewerThanControlPlane { .. } | PoolTooFarBehind { .. } => "VersionSkew",
        NoRowForControlPlaneVersion { .. } => "MissingMatrixRow",
    }
}

/// Plans from the declared versions, as status steps.
fn fresh_plan(
    spec: &UpgradeRequestSpec,
    matrix: &OSSupportMatrix,
    key: ImageKey,
    current: &CurrentVersions,
) -> Result<plan::Plan, Stall> {
    plan::plan(
        PlanInput {
            rows: &matrix.spec.rows,
            target: &spec.target_version,
            strategy: spec.workers.strategy,
            image_key: key,
        },
        current,
    )
    .map_err(|e| Stall {
        reason: plan_error_reason(&e).into(),
        message: e.to_string(),
    })
}

/// Status steps for a plan, all Pending.
pub fn plan_steps(p: &plan::Plan) -> Vec<PlanStep> {
    p.steps
        .iter()
        .enumerate()
        .map(|(i, s)| PlanStep {
            index: i as u32,
            kind: match s.kind {
                StepKind::ControlPlane => PlanStepKind::ControlPlane,
                StepKind::Workers => PlanStepKind::Workers,
            },
            distribution_version: s.row.distribution_version.clone(),
            kubernetes_version: s.row.kubernetes_version.clone(),
            os_image: s.os_image.clone(),
            pools: s.pools.clone(),
            state: StepState::Pending,
            started_at: None,
            finished_at: None,
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
}

fn machines_with(obs: &Observed, label: &str, value: &str) -> Vec<Value> {
    obs.machines
        .iter()
        .filter(|m| m["metadata"]["labels"][label].as_str() == Some(value))
        .cloned()
        .collect()
}

/// What keeps pool `md` from being rolled out at `version` (empty = done).
pub fn pool_pending(obs: &Observed, md: &Value, version: &str) -> Vec<String> {
    let machines = machines_with(obs, capi::DEPLOYMENT_NAME_LABEL, capi::name(md));
    gate::machine_deployment_pending(md, &machines, version)
        .into_iter()
        .map(|w| format!("{}: {w}", capi::name(md)))
        .collect()
}

/// What keeps the control plane from being rolled out at `version` (empty = done).
pub fn control_plane_pending(obs: &Observed, kcp: &Value, version: &str) -> Vec<String> {
    let machines = machines_with(obs, capi::CONTROL_PLANE_NAME_LABEL, capi::name(kcp));
    gate::control_plane_pending(kcp, &machines, version)
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
fn unsupported(spec: &UpgradeRequestSpec, obs: &Observed, cluster: &Value) -> Option<Stall> {
    let name = &spec.cluster_name;
    if !cluster["spec"]["topology"].is_null() {
        return Some(Stall {
            reason: "ClusterClassManaged".into(),
            message: format!(
                "Cluster {name} is managed by a ClusterClass (spec.topology): upgrade it by raising spec.topology.version one minor at a time, which CAPI's topology controller rolls out itself; this controller only moves clusters without spec.topology"
            ),
        });
    }
    if !obs.machine_pools.is_empty() {
        return Some(Stall {
            reason: "MachinePoolsUnsupported".into(),
            message: format!(
                "Cluster {name} has MachinePools ({}); this controller moves KubeadmControlPlane and MachineDeployments only, so the MachinePools would fall out of the version-skew policy — move their workers to MachineDeployments, or upgrade this cluster by hand",
                obs.machine_pools.join(", ")
            ),
        });
    }
    if let Some(kcp) = &obs.kcp
        && let Some(why) = capi::not_owned_by(kcp, cluster)
    {
        return Some(Stall {
            reason: "ControlPlaneNotOwned".into(),
            message: format!(
                "KubeadmControlPlane {} {why}; spec.controlPlaneRef of Cluster {name} must name the Cluster's own control plane",
                capi::name(kcp)
            ),
        });
    }
    let ns = cluster["metadata"]["namespace"].as_str().unwrap_or("");
    let mut refs = Vec::new();
    if let Some(kcp) = &obs.kcp {
        refs.push((
            format!(
                "KubeadmControlPlane {} infrastructure template",
                capi::name(kcp)
            ),
            capi::kcp_infrastructure_ref(kcp),
            capi::RefKind::InfrastructureTemplate,
        ));
    }
    for md in &obs.mds {
        refs.push((
            format!(
                "MachineDeployment {} infrastructure template",
                capi::name(md)
            ),
            capi::md_infrastructure_ref(md),
            capi::RefKind::InfrastructureTemplate,
        ));
        refs.push((
            format!("MachineDeployment {} bootstrap template", capi::name(md)),
            capi::md_bootstrap_ref(md),
            capi::RefKind::BootstrapTemplate,
        ));
    }
    for (what, reference, kind) in refs {
        if let Err(why) = capi::check_reference(reference, kind, ns) {
            return Some(Stall {
                reason: "ReferenceRefused".into(),
                message: format!(
                    "the {what} reference {reference} {why}; this controller only reads and clones templates of the expected kinds in the request's own namespace"
                ),
            });
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
            "ClusterNotFound",
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
        let cp_ref = &cluster["spec"]["controlPlaneRef"];
        return stall(
            "ControlPlaneNotFound",
            format!(
                "Cluster {} has no KubeadmControlPlane (controlPlaneRef: {cp_ref}); only kubeadm control planes are supported",
                spec.cluster_name
            ),
        );
    };
    let Some(matrix) = &obs.matrix else {
        return stall(
            "MatrixNotFound",
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
                "InvalidSpec",
                format!("{field}: {e}; set a duration between 1m and 720h such as 45m"),
            );
        }
    }
    let key = match image_key(kcp) {
        Ok(k) => k,
        Err(s) => return Decision::Stall(s),
    };
    let current = declared_versions(kcp, &obs.mds);

    // Until the platform is asked for the target, the plan follows the cluster and the spec
    // (a request held by another one re-plans from wherever that one left the cluster).
    if !plan_frozen(status) {
        let p = match fresh_plan(spec, matrix, key, &current) {
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
    if let Some(s) = &obs.cvsh_refused {
        return Decision::Stall(s.clone());
    }
    if capi::bool_at(cluster, &["spec", "paused"]) {
        return Decision::ClusterPaused {
            message: format!(
                "Cluster {} has spec.paused: true, and CAPI rolls nothing out in a paused cluster; nothing is written until it is unpaused",
                spec.cluster_name
            ),
        };
    }

    // Phase 1 (and the gates before it) comes before any Kubernetes hop.
    if let Some(d) = phase_one(spec, status, obs) {
        return d;
    }

    let Some(index) = status
        .plan
        .iter()
        .position(|s| s.state != StepState::Succeeded)
    else {
        return Decision::Succeeded;
    };
    let step = &status.plan[index];
    match step.state {
        StepState::Pending | StepState::Failed => {
            if spec.paused {
                return Decision::Paused;
            }
            // Before writing, the cluster must still be where the plan expects it: re-planning
            // from what it declares gives the rest of the plan (or, when this step's writes
            // already landed before a restart, the rest after it).
            let remaining = &status.plan[index..];
            let fresh = match fresh_plan(spec, matrix, key, &current) {
                Ok(p) => plan_steps(&p),
                Err(s) => return Decision::Stall(s),
            };
            let matches = |a: &[PlanStep], b: &[PlanStep]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_step(x, y))
            };
            let partial_workers = step.kind == PlanStepKind::Workers
                && !fresh.is_empty()
                && fresh[0].kind == PlanStepKind::Workers
                && fresh[0].kubernetes_version == step.kubernetes_version
                && fresh[0].pools.iter().all(|p| step.pools.contains(p))
                && matches(&fresh[1..], &remaining[1..]);
            // This step's writes landed before a restart: its rollout is ours, not a reason
            // to block.
            let landed = !matches(&fresh, remaining) && matches(&fresh, &remaining[1..]);
            if !(matches(&fresh, remaining) || landed || partial_workers) {
                let describe = |steps: &[PlanStep]| {
                    steps
                        .iter()
                        .map(|s| format!("{:?} {}", s.kind, s.kubernetes_version))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let details = outside_details(status, index, obs, kcp);
                return stall(
                    "ClusterChangedOutside",
                    format!(
                        "the cluster's declared versions changed outside this request{}: the plan expects next [{}] but the cluster now needs [{}]; restore the versions or create a new UpgradeRequest",
                        if details.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", details.join("; "))
                        },
                        describe(remaining),
                        describe(&fresh)
                    ),
                );
            }
            // Each hop starts with a fresh preflight (health, capacity, images).
            if step.kind == PlanStepKind::ControlPlane && !landed {
                let scope = Scope::Hop(index);
                match &status.preflight {
                    Some(pf) if pf.scope == scope.label() => {
                        if !preflight::blocking(&pf.checks).is_empty() {
                            return Decision::Blocked { scope };
                        }
                    }
                    _ => {
                        return Decision::Wait {
                            index,
                            recheck: SignedDuration::from_secs(5),
                        };
                    }
                }
            }
            // Workers only ever follow a control plane that has completely rolled out at
            // their version, whatever the bookkeeping says.
            if step.kind == PlanStepKind::Workers {
                let cp_pending = control_plane_pending(obs, kcp, &step.kubernetes_version);
                if !cp_pending.is_empty() {
                    return Decision::Wait {
                        index,
                        recheck: SignedDuration::from_secs(30),
                    };
                }
            }
            let pools = match step.kind {
                PlanStepKind::ControlPlane => Vec::new(),
                PlanStepKind::Workers => step
                    .pools
                    .iter()
                    .take(spec.workers.max_concurrent_pools.max(1) as usize)
                    .cloned()
                    .collect(),
            };
            Decision::Start { index, pools }
        }
        StepState::InProgress => in_progress_step(spec, status, obs, kcp, index, now),
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
    (step.kind == PlanStepKind::ControlPlane
        && matches!(step.state, StepState::Pending | StepState::Failed))
    .then_some(Scope::Hop(index))
}

/// Phase 1 and the gates before it (DOMAIN.md §2): the initial preflight, the two-step review,
/// then the Distribution Version through the cluster's cvsh. `None` once Phase 1 succeeded.
fn phase_one(
    spec: &UpgradeRequestSpec,
    status: &UpgradeRequestStatus,
    obs: &Observed,
) -> Option<Decision> {
    let ext = status.aligned_extensions.clone().unwrap_or_default();
    if ext.state == Some(StepState::Succeeded) {
        return None;
    }
    let target = status.target.as_ref()?.distribution_version.clone();
    let wait = Decision::Wait {
        index: 0,
        recheck: SignedDuration::from_secs(5),
    };
    let requested = ext.requested_at.is_some();
    if !requested {
        if spec.paused {
            return Some(Decision::Paused);
        }
        match &status.preflight {
            Some(pf) if pf.scope == Scope::Initial.label() => {
                if !preflight::blocking(&pf.checks).is_empty() {
                    return Some(Decision::Blocked {
                        scope: Scope::Initial,
                    });
                }
            }
            _ => return Some(wait),
        }
        if let Some(message) = status.review.as_ref().and_then(review::pending_message) {
            return Some(Decision::AwaitAcknowledgement { message });
        }
    }
    let Some(cvsh) = &obs.cvsh else {
        return Some(stall(
            "ClusterVersionShadowNotFound",
            format!(
                "{} does not exist; the Cluster Version Operator must track this cluster before its Distribution Version can move",
                obs.cvsh_where
            ),
        ));
    };
    if platform::at_version(cvsh, &target) {
        return Some(Decision::ExtensionsDone);
    }
    if let Some((true, reason, message)) = platform::condition(cvsh, "Stalled") {
        return Some(stall(
            if reason.is_empty() {
                "ExtensionsStalled"
            } else {
                reason
            },
            format!(
                "the Cluster Version Operator stopped moving the cluster to {target} ({}): {message}; fix the cause on the platform, the upgrade resumes when it clears",
                obs.cvsh_where
            ),
        ));
    }
    let desired = platform::desired_version(cvsh);
    let asks_target = desired.is_some_and(|d| platform::same_version(d, &target));
    if !requested {
        return Some(Decision::RequestExtensions {
            version: target,
            write: !asks_target,
        });
    }
    if !asks_target {
        return Some(stall(
            "ExtensionsTargetChanged",
            format!(
                "{} spec.desiredUpdate.version is {:?}, not {target} as this request set it; this request never asks twice — restore it to {target}, or delete this request and create a new one",
                obs.cvsh_where,
                desired.unwrap_or("")
            ),
        ));
    }
    Some(wait)
}

/// The version pool `pool` declared before step `index`: the last finished Workers step that
/// moved it, or what it declared when the plan was made.
fn pool_version_before(status: &UpgradeRequestStatus, index: usize, pool: &str) -> Option<String> {
    status.plan[..index]
        .iter()
        .rev()
        .find(|s| s.kind == PlanStepKind::Workers && s.pools.iter().any(|p| p == pool))
        .map(|s| s.kubernetes_version.clone())
        .or_else(|| {
            status
                .current
                .as_ref()?
                .pools
                .iter()
                .find(|p| p.name == pool)
                .map(|p| p.version.clone())
        })
}

/// `what`'s field at `path` holds `found` instead of one of `expected`: the
/// `ClusterChangedOutside` stall naming the object, the field and who wrote it.
fn changed_outside(
    obj: &Value,
    kind: &str,
    path: &[&str],
    found: &str,
    expected: &str,
    step: usize,
) -> Decision {
    let managers = capi::field_managers(obj, path);
    let by = if managers.is_empty() {
        "a writer that left no managedFields entry".to_string()
    } else {
        format!("field manager {}", managers.join(", "))
    };
    stall(
        "ClusterChangedOutside",
        format!(
            "{kind} {} {} was changed to {found:?} by {by} while step {step} runs (it must stay {expected:?}); restore {expected:?}, or stop the tool that reverts it (see spec.gitops), and the step continues",
            capi::name(obj),
            path.join("."),
        ),
    )
}

/// Before step `index` starts: the objects whose declared version is neither what the finished
/// steps left nor what this step writes, with the field manager that wrote it.
fn outside_details(
    status: &UpgradeRequestStatus,
    index: usize,
    obs: &Observed,
    kcp: &Value,
) -> Vec<String> {
    let step = &status.plan[index];
    let mut out = Vec::new();
    let describe = |obj: &Value, kind: &str, path: &[&str], found: &str, want: &str| {
        let managers = capi::field_managers(obj, path);
        format!(
            "{kind} {} {} is {found:?}, the plan expects {want:?}{}",
            capi::name(obj),
            path.join("."),
            if managers.is_empty() {
                String::new()
            } else {
                format!(", written by field manager {}", managers.join(", "))
            }
        )
    };
    let cp_before = status.plan[..index]
        .iter()
        .rev()
        .find(|s| s.kind == PlanStepKind::ControlPlane)
        .map(|s| s.kubernetes_version.clone())
        .or_else(|| status.current.as_ref().map(|c| c.control_plane.clone()));
    let declared = capi::kcp_version(kcp).unwrap_or("");
    let landed = step.kind == PlanStepKind::ControlPlane && declared == step.kubernetes_version;
    if let Some(want) = cp_before
        && declared != want
        && !landed
    {
        out.push(describe(
            kcp,
            "KubeadmControlPlane",
            &["spec", "version"],
            declared,
            &want,
        ));
    }
    for md in &obs.mds {
        let name = capi::name(md);
        let declared = capi::md_version(md).unwrap_or("");
        let in_step = step.kind == PlanStepKind::Workers && step.pools.iter().any(|p| p == name);
        match pool_version_before(status, index, name) {
            None => out.push(format!(
                "MachineDeployment {name} appeared after the plan was made"
            )),
            Some(want) if declared != want && !(in_step && declared == step.kubernetes_version) => {
                out.push(describe(
                    md,
                    "MachineDeployment",
                    &["spec", "template", "spec", "version"],
                    declared,
                    &want,
                ))
            }
            Some(_) => {}
        }
    }
    out
}

fn in_progress_step(
    spec: &UpgradeRequestSpec,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    kcp: &Value,
    index: usize,
    now: Timestamp,
) -> Decision {
    let step = &status.plan[index];
    let number = index + 1;
    let version = step.kubernetes_version.as_str();
    // Someone else's write to what this step wrote stops the request at once (DESIGN.md
    // "GitOps"), instead of waiting out the rollout timeout.
    let kcp_version = capi::kcp_version(kcp).unwrap_or("");
    if kcp_version != version {
        return changed_outside(
            kcp,
            "KubeadmControlPlane",
            &["spec", "version"],
            kcp_version,
            version,
            number,
        );
    }
    if step.kind == PlanStepKind::ControlPlane
        && let Some(row) = obs.matrix.as_ref().and_then(|m| {
            m.spec
                .rows
                .iter()
                .find(|r| r.distribution_version == step.distribution_version)
        })
    {
        for (path, want) in [
            (capi::KCP_DNS_TAG_PATH, &row.core_dns_image_tag),
            (capi::KCP_ETCD_TAG_PATH, &row.etcd_image_tag),
        ] {
            let got = capi::str_at(kcp, path).unwrap_or("");
            if got != want {
                return changed_outside(kcp, "KubeadmControlPlane", path, got, want, number);
            }
        }
    }
    let elapsed = now.duration_since(step.started_at.as_ref().map_or(now, |t| t.0));
    // Clock skew can put startedAt in the future; that is no time spent.
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    let (pending, timeout) = match step.kind {
        PlanStepKind::ControlPlane => (
            control_plane_pending(obs, kcp, version),
            spec.timeouts.control_plane.get().unwrap_or(MAX_TIMEOUT),
        ),
        PlanStepKind::Workers => {
            let mut pending = Vec::new();
            let mut rolling = 0usize;
            let mut waiting = Vec::new();
            for pool in &step.pools {
                let Some(md) = obs.mds.iter().find(|md| capi::name(md) == pool) else {
                    return stall(
                        "PoolNotFound",
                        format!(
                            "MachineDeployment {pool} of step {number} no longer exists; recreate it, or delete this request and create a new one"
                        ),
                    );
                };
                let declared = capi::md_version(md).unwrap_or("");
                if declared != version {
                    let before = pool_version_before(status, index, pool);
                    if before.as_deref() != Some(declared) {
                        return changed_outside(
                            md,
                            "MachineDeployment",
                            &["spec", "template", "spec", "version"],
                            declared,
                            before.as_deref().unwrap_or(version),
                            number,
                        );
                    }
                    waiting.push(pool.clone());
                    continue;
                }
                let why = pool_pending(obs, md, version);
                if !why.is_empty() {
                    rolling += 1;
                    pending.extend(why);
                }
            }
            let concurrency = spec.workers.max_concurrent_pools.clamp(1, 50) as usize;
            let capacity = concurrency.saturating_sub(rolling);
            if !waiting.is_empty() && capacity > 0 {
                return Decision::Start {
                    index,
                    pools: waiting.into_iter().take(capacity).collect(),
                };
            }
            pending.extend(
                waiting
                    .iter()
                    .map(|p| format!("{p}: not started (waiting for a free slot)")),
            );
            let batches = step.pools.len().div_ceil(concurrency).max(1);
            let per_pool = spec.timeouts.worker_pool.get().unwrap_or(MAX_TIMEOUT);
            let batches = u32::try_from(batches).unwrap_or(u32::MAX);
            (
                pending,
                per_pool.checked_mul(batches).unwrap_or(Duration::MAX),
            )
        }
    };
    if pending.is_empty() {
        return Decision::StepDone { index };
    }
    if elapsed > timeout {
        return stall(
            "RolloutTimeout",
            format!(
                "step {number} ({:?} to {version}) has not finished after {}s (timeout {}s): {}",
                step.kind,
                elapsed.as_secs(),
                timeout.as_secs(),
                pending.join("; ")
            ),
        );
    }
    let left = timeout
        .saturating_sub(elapsed)
        .min(Duration::from_secs(300));
    Decision::Wait {
        index,
        recheck: SignedDuration::try_from(left).unwrap_or(SignedDuration::from_secs(300)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        CheckName, CheckState, ExtensionsStatus, MatrixRow, Modification, OSSupportMatrixSpec,
        PreflightCheck, PreflightStatus, ReviewStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

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
            cluster: Some(json!({"metadata": {"name": "c"}})),
            kcp: Some(kcp),
            mds: vec![
                json!({"metadata": {"name": "pool"}, "spec": {"template": {"spec": {"version": pool}}}}),
            ],
            machines: vec![machine],
            matrix: Some(OSSupportMatrix::new(
                "default",
                OSSupportMatrixSpec {
                    rows: vec![row("4.1.0", "v1.32.7"), row("4.2.0", "v1.33.7")],
                },
            )),
            cvsh: Some(cvsh("4.1.0", None, &[("Ready", "True", "AsExpected")])),
            cvsh_where: "ClusterVersionShadow cpaas-system/c".into(),
            preflight: None,
            machine_pools: vec![],
            cvsh_refused: None,
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
                s.reason
            }
            other => panic!("expected a stall, got {other:?}"),
        }
    }

    #[test]
    fn what_the_controller_cannot_handle_is_said_before_anything_else() {
        let now = Timestamp::UNIX_EPOCH;
        let status = UpgradeRequestStatus::default();
        let mut o = obs("v1.32.7", "v1.32.7", true);
        o.cluster.as_mut().unwrap()["spec"]["topology"] =
            json!({"class": "c", "version": "v1.32.7"});
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
        o.kcp.as_mut().unwrap()["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] =
            json!("other");
        assert_eq!(
            stall_reason(decide(&spec(false), &status, &o, now)),
            "ControlPlaneNotOwned"
        );
        let mut o = obs("v1.32.7", "v1.32.7", true);
        o.mds[0]["spec"]["template"]["spec"]["bootstrap"] =
            json!({"configRef": {"apiVersion": "v1", "kind": "Secret", "name": "x"}});
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
        o.cluster.as_mut().unwrap()["spec"]["paused"] = json!(true);
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
        reverted.kcp.as_mut().unwrap()["metadata"]["managedFields"] = json!([
            {"manager": "kustomize-controller", "operation": "Apply", "fieldsV1": {"f:spec": {"f:version": {}}}},
        ]);
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
        retagged.kcp.as_mut().unwrap()["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]["dns"]
            ["imageTag"] = json!("1.11.1");
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
}
