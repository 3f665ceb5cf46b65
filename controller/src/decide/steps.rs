//! The hops (Phase 2): whether the next step may start, and how a running one stands —
//! finished by CAPI's criteria, past its timeout, or changed behind the controller's back.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::handoff::{self, Declared, KCP_VERSION_FIELD, MD_VERSION_FIELD};
use super::plan::CurrentVersions;
use super::{Decision, Stall, StallReason, fresh_plan, gate, plan_steps, same_step};
use crate::api::{
    MAX_TIMEOUT, OSSupportMatrix, PlanStep, PlanStepKind, UpgradeRequestSpec, UpgradeRequestStatus,
};
use crate::capi::{self, KubeadmControlPlane, Machine, MachineDeployment};
use crate::observe::Observed;
use crate::preflight::{self, Scope};
use providers::ImageKey;

fn stall(reason: StallReason, message: impl Into<String>) -> Decision {
    Decision::Stall(Stall::new(reason, message))
}

fn machines_with<'a>(obs: &'a Observed, label: &str, value: &str) -> Vec<&'a Machine> {
    obs.machines
        .iter()
        .filter(|m| m.label(label) == Some(value))
        .collect()
}

/// What keeps pool `md` from being rolled out at `version` (empty = done).
pub fn pool_pending(obs: &Observed, md: &MachineDeployment, version: &str) -> Vec<String> {
    let name = capi::name(&md.metadata);
    let machines = machines_with(obs, capi::DEPLOYMENT_NAME_LABEL, name);
    gate::machine_deployment_pending(md, &machines, version)
        .into_iter()
        .map(|w| format!("{name}: {w}"))
        .collect()
}

/// What keeps the control plane from being rolled out at `version` (empty = done).
pub fn control_plane_pending(
    obs: &Observed,
    kcp: &KubeadmControlPlane,
    version: &str,
) -> Vec<String> {
    let machines = machines_with(
        obs,
        capi::CONTROL_PLANE_NAME_LABEL,
        capi::name(&kcp.metadata),
    );
    gate::control_plane_pending(kcp, &machines, version)
}

/// Step `index` (Pending) may start: the cluster is where the plan expects it, the hop's
/// preflight passed, and workers only follow a control plane completely rolled out.
#[allow(clippy::too_many_arguments)]
pub(super) fn pending_step(
    spec: &UpgradeRequestSpec,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    kcp: &KubeadmControlPlane,
    matrix: &OSSupportMatrix,
    key: ImageKey,
    current: &CurrentVersions,
    index: usize,
    now: Timestamp,
) -> Decision {
    let step = &status.plan[index];
    if spec.paused {
        return Decision::Paused;
    }
    // Before writing, the cluster must still be where the plan expects it: re-planning from
    // what it declares gives the rest of the plan (or, when this step's writes already landed
    // before a restart, the rest after it).
    let remaining = &status.plan[index..];
    let fresh = match fresh_plan(spec, matrix, key, current, obs) {
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
    // This step's writes landed before a restart: its rollout is ours, not a reason to block.
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
            StallReason::ClusterChangedOutside,
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
    if matches!(
        step.kind,
        PlanStepKind::KubeOvn | PlanStepKind::ControlPlane
    ) && !landed
    {
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
                    waiting_for: Vec::new(),
                };
            }
        }
    }
    // Workers only ever follow a control plane that has completely rolled out at their
    // version, whatever the bookkeeping says.
    if step.kind == PlanStepKind::Workers {
        let cp = control_plane_pending(obs, kcp, &step.kubernetes_version);
        if !cp.is_empty() {
            return Decision::Wait {
                index,
                recheck: SignedDuration::from_secs(30),
                waiting_for: cp,
            };
        }
    }
    // Bare metal replaces hosts delete-then-add: no rollout of it may surge.
    if !landed && let Some(s) = surge_refused(kcp, &obs.mds, step) {
        return Decision::Stall(s);
    }
    // A step starts only inside a maintenance window; one whose writes already landed is
    // under way.
    if !landed {
        let what = format!("step {} ({})", index + 1, step.describe());
        if let Some(c) = super::window_closed(spec, now, what) {
            return Decision::OutsideWindow(c);
        }
    }
    let pools = match step.kind {
        PlanStepKind::KubeOvn | PlanStepKind::ControlPlane => Vec::new(),
        PlanStepKind::Workers => step
            .pools
            .iter()
            .take(spec.workers.max_concurrent_pools.max(1) as usize)
            .cloned()
            .collect(),
    };
    Decision::Start { index, pools }
}

/// For a provider that allows no surge (bare metal, DOMAIN.md §4), the rollouts of `step`
/// that have one, as a stall with the fix.
fn surge_refused(
    kcp: &KubeadmControlPlane,
    mds: &[crate::capi::MachineDeployment],
    step: &PlanStep,
) -> Option<Stall> {
    let provider = providers::for_template_kind(&kcp.infrastructure_ref()?.kind).ok()?;
    if provider.surge_allowed() {
        return None;
    }
    let mut refused = Vec::new();
    match step.kind {
        PlanStepKind::KubeOvn => {}
        PlanStepKind::ControlPlane => {
            let s = capi::surge(kcp.replicas(), kcp.strategy());
            if s > 0 {
                refused.push(format!(
                    "KubeadmControlPlane {} has maxSurge {s}",
                    capi::name(&kcp.metadata)
                ));
            }
        }
        PlanStepKind::Workers => {
            for md in mds
                .iter()
                .filter(|md| step.pools.iter().any(|p| p == capi::name(&md.metadata)))
            {
                let s = capi::surge(md.replicas(), md.strategy());
                if s > 0 {
                    refused.push(format!(
                        "MachineDeployment {} has maxSurge {s}",
                        capi::name(&md.metadata)
                    ));
                }
            }
        }
    }
    (!refused.is_empty()).then(|| {
        Stall::new(
            StallReason::SurgeNotAllowed,
            format!(
                "the {} provider replaces hosts delete-then-add, so maxSurge must be 0: {}; set spec.rolloutStrategy.rollingUpdate.maxSurge: 0 on the KubeadmControlPlane (it needs 3 or more replicas then) and spec.strategy.rollingUpdate.maxSurge: 0 with maxUnavailable of 1 or more on each MachineDeployment; the request goes on once they are",
                provider.name(),
                refused.join(", ")
            ),
        )
    })
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

/// The version the control plane declared before step `index`: the last finished
/// control-plane step's, or what it declared when the plan was made.
fn cp_version_before(status: &UpgradeRequestStatus, index: usize) -> Option<String> {
    status.plan[..index]
        .iter()
        .rev()
        .find(|s| s.kind == PlanStepKind::ControlPlane)
        .map(|s| s.kubernetes_version.clone())
        .or_else(|| status.current.as_ref().map(|c| c.control_plane.clone()))
}

/// `Handoff` mode: how a Git-managed object stands against what step `number` asked Git to
/// declare (`None`: nothing was asked of it for this step).
fn git_declared<T: serde::Serialize>(
    status: &UpgradeRequestStatus,
    object: &str,
    live: &T,
    version_field: &str,
    version: &str,
    before: Option<&str>,
) -> Option<Declared> {
    let asked = handoff::asked_for(status, object, version_field, version);
    if asked.is_empty() {
        return None;
    }
    let live = serde_json::to_value(live).unwrap_or_default();
    Some(handoff::compare(&live, &asked, version_field, before))
}

fn git_waits(object: &str, missing: &[String]) -> String {
    format!(
        "Git to declare what status.declareInGit lists for {object} ({})",
        missing.join("; ")
    )
}

fn git_otherwise(number: usize, object: &str, diff: &[String]) -> Decision {
    stall(
        StallReason::GitDeclaresOtherwise,
        format!(
            "step {number}: Git declares other values for {object} than the step needs: {}; commit exactly what status.declareInGit lists",
            diff.join("; ")
        ),
    )
}

/// Who wrote the field at `path` of an object with metadata `meta`, for messages.
fn written_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    path: &[&str],
) -> String {
    let managers = capi::field_managers(meta, path);
    if managers.is_empty() {
        "a writer that left no managedFields entry".to_string()
    } else {
        format!("field manager {}", managers.join(", "))
    }
}

/// `kind name`'s field at `path` holds `found` instead of `expected`: the
/// `ClusterChangedOutside` stall naming the object, the field and who wrote it.
fn changed_outside(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &str,
    path: &[&str],
    found: &str,
    expected: &str,
    step: usize,
) -> Decision {
    stall(
        StallReason::ClusterChangedOutside,
        format!(
            "{kind} {} {} was changed to {found:?} by {} while step {step} runs (it must stay {expected:?}); restore {expected:?}, or stop the tool that reverts it (see spec.gitops), and the step continues",
            capi::name(meta),
            path.join("."),
            written_by(meta, path),
        ),
    )
}

const KCP_VERSION_PATH: &[&str] = &["spec", "version"];
const MD_VERSION_PATH: &[&str] = &["spec", "template", "spec", "version"];
const KCP_DNS_TAG_PATH: &[&str] = &[
    "spec",
    "kubeadmConfigSpec",
    "clusterConfiguration",
    "dns",
    "imageTag",
];
const KCP_ETCD_TAG_PATH: &[&str] = &[
    "spec",
    "kubeadmConfigSpec",
    "clusterConfiguration",
    "etcd",
    "local",
    "imageTag",
];

/// Before step `index` starts: the objects whose declared version is neither what the finished
/// steps left nor what this step writes, with the field manager that wrote it.
fn outside_details(
    status: &UpgradeRequestStatus,
    index: usize,
    obs: &Observed,
    kcp: &KubeadmControlPlane,
) -> Vec<String> {
    let step = &status.plan[index];
    let mut out = Vec::new();
    let describe = |meta, kind: &str, path: &[&str], found: &str, want: &str| {
        let managers = capi::field_managers(meta, path);
        format!(
            "{kind} {} {} is {found:?}, the plan expects {want:?}{}",
            capi::name(meta),
            path.join("."),
            if managers.is_empty() {
                String::new()
            } else {
                format!(", written by field manager {}", managers.join(", "))
            }
        )
    };
    let cp_before = cp_version_before(status, index);
    let declared = kcp.spec.version.as_str();
    let landed = step.kind == PlanStepKind::ControlPlane && declared == step.kubernetes_version;
    if let Some(want) = cp_before
        && declared != want
        && !landed
    {
        out.push(describe(
            &kcp.metadata,
            "KubeadmControlPlane",
            KCP_VERSION_PATH,
            declared,
            &want,
        ));
    }
    for md in &obs.mds {
        let name = capi::name(&md.metadata);
        let declared = md.version();
        let in_step = step.kind == PlanStepKind::Workers && step.pools.iter().any(|p| p == name);
        match pool_version_before(status, index, name) {
            None => out.push(format!(
                "MachineDeployment {name} appeared after the plan was made"
            )),
            Some(want) if declared != want && !(in_step && declared == step.kubernetes_version) => {
                out.push(describe(
                    &md.metadata,
                    "MachineDeployment",
                    MD_VERSION_PATH,
                    declared,
                    &want,
                ))
            }
            Some(_) => {}
        }
    }
    out
}

/// A running KubeOvn step: the chart's AppRelease, not a rollout.
fn kube_ovn_step(
    spec: &UpgradeRequestSpec,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    index: usize,
    now: Timestamp,
) -> Decision {
    match &obs.cluster {
        Some(cluster) => super::kube_ovn::in_progress(spec, status, obs, cluster, index, now),
        None => stall(
            StallReason::ClusterNotFound,
            "the Cluster disappeared while its Kube-OVN chart moves",
        ),
    }
}

/// Step `index` is running: finished, past its timeout, changed behind its back, or more
/// pools to start.
pub(super) fn in_progress_step(
    spec: &UpgradeRequestSpec,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    kcp: &KubeadmControlPlane,
    index: usize,
    now: Timestamp,
) -> Decision {
    let step = &status.plan[index];
    if step.kind == PlanStepKind::KubeOvn {
        return kube_ovn_step(spec, status, obs, index, now);
    }
    let number = index + 1;
    let version = step.kubernetes_version.as_str();
    // Handoff: the step runs once Git declares what it asked for; until then there is no
    // rollout to time out.
    let mut git_pending = false;
    let mut handed_off = false;
    if step.kind == PlanStepKind::ControlPlane {
        let object = handoff::kcp_object(kcp);
        let before = cp_version_before(status, index);
        match git_declared(
            status,
            &object,
            kcp,
            KCP_VERSION_FIELD,
            version,
            before.as_deref(),
        ) {
            None => {}
            Some(Declared::Yes) => handed_off = true,
            Some(Declared::NotYet(missing)) => {
                return Decision::Wait {
                    index,
                    recheck: SignedDuration::from_secs(60),
                    waiting_for: vec![git_waits(&object, &missing)],
                };
            }
            Some(Declared::Otherwise(diff)) => return git_otherwise(number, &object, &diff),
        }
    }
    // Someone else's write to what this step wrote stops the request at once (DESIGN.md
    // "GitOps"), instead of waiting out the rollout timeout.
    if kcp.spec.version != version {
        return changed_outside(
            &kcp.metadata,
            "KubeadmControlPlane",
            KCP_VERSION_PATH,
            &kcp.spec.version,
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
        for (path, got, want) in [
            (KCP_DNS_TAG_PATH, kcp.dns_tag(), &row.core_dns_image_tag),
            (KCP_ETCD_TAG_PATH, kcp.etcd_tag(), &row.etcd_image_tag),
        ] {
            if got != want {
                return changed_outside(
                    &kcp.metadata,
                    "KubeadmControlPlane",
                    path,
                    got,
                    want,
                    number,
                );
            }
        }
    }
    let (pending, timeout) = match step.kind {
        PlanStepKind::KubeOvn => return kube_ovn_step(spec, status, obs, index, now),
        PlanStepKind::ControlPlane => (
            control_plane_pending(obs, kcp, version),
            spec.timeouts.control_plane.get().unwrap_or(MAX_TIMEOUT),
        ),
        PlanStepKind::Workers => {
            let mut pending = Vec::new();
            let mut rolling = 0usize;
            let mut waiting = Vec::new();
            for pool in &step.pools {
                let Some(md) = obs.mds.iter().find(|md| capi::name(&md.metadata) == pool) else {
                    return stall(
                        StallReason::PoolNotFound,
                        format!(
                            "MachineDeployment {pool} of step {number} no longer exists; recreate it, or delete this request and create a new one"
                        ),
                    );
                };
                let object = handoff::md_object(md);
                let before = pool_version_before(status, index, pool);
                match git_declared(
                    status,
                    &object,
                    md,
                    MD_VERSION_FIELD,
                    version,
                    before.as_deref(),
                ) {
                    None => {}
                    Some(Declared::Yes) => handed_off = true,
                    Some(Declared::NotYet(missing)) => {
                        git_pending = true;
                        rolling += 1;
                        pending.push(git_waits(&object, &missing));
                        continue;
                    }
                    Some(Declared::Otherwise(diff)) => {
                        return git_otherwise(number, &object, &diff);
                    }
                }
                let declared = md.version();
                if declared != version {
                    if before.as_deref() != Some(declared) {
                        return changed_outside(
                            &md.metadata,
                            "MachineDeployment",
                            MD_VERSION_PATH,
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
    if handed_off && !git_pending && step.declared_at.is_none() {
        return Decision::GitDeclared { index };
    }
    if pending.is_empty() {
        return Decision::StepDone { index };
    }
    // A handed-off step's rollout starts when Git has declared it.
    let since = step.declared_at.as_ref().or(step.started_at.as_ref());
    let elapsed = now.duration_since(since.map_or(now, |t| t.0));
    // Clock skew can put startedAt in the future; that is no time spent.
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    if elapsed > timeout && !git_pending {
        return stall(
            StallReason::RolloutTimeout,
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
        waiting_for: pending,
    }
}
