//! Status (pure): a write's bookkeeping, the mirror of Phase 1, and phase and kstatus
//! conditions from the reconcile's [`Outcome`] alone. `lastTransitionTime` only moves when a
//! condition's status does, so an unchanged situation gives an identical status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::api::{
    ExtensionStage, ExtensionsStatus, GitDeclaration, HistoryEntry, Phase, PlanStepKind, StepState,
    UpgradeRequestStatus,
};
use crate::capi;
use crate::decide::{Outcome, Write, handoff};
use crate::observe::Observed;
use crate::preflight::{self, review};

pub mod git_sync;
pub mod window;

/// Keep this many history entries.
const HISTORY_LIMIT: usize = 50;

/// Sets (or updates) condition `type_`, moving lastTransitionTime only on a status change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(generation),
            last_transition_time: Time(now),
        }),
    }
}

pub fn push_history(status: &mut UpgradeRequestStatus, now: Timestamp, message: String) {
    status.history.insert(
        0,
        HistoryEntry {
            time: Time(now),
            message,
        },
    );
    status.history.truncate(HISTORY_LIMIT);
}

/// (finished, all) steps of the plan.
fn progress(status: &UpgradeRequestStatus) -> (usize, usize) {
    let done = status
        .plan
        .iter()
        .filter(|s| s.state == StepState::Succeeded)
        .count();
    (done, status.plan.len())
}

/// Records a write that succeeded: Phase 1 asked for, or a step started.
pub fn record_write(
    status: &mut UpgradeRequestStatus,
    write: &Write,
    handed_off: &[GitDeclaration],
    now: Timestamp,
    cvsh_where: &str,
) {
    match write {
        Write::RequestExtensions { version, write } => {
            status.aligned_extensions = Some(ExtensionsStatus {
                version: Some(version.clone()),
                state: Some(StepState::InProgress),
                requested_at: Some(Time(now)),
                ..Default::default()
            });
            push_history(
                status,
                now,
                format!(
                    "Phase 1: {} {cvsh_where} asked to move Core and Aligned extensions to {version}",
                    if *write { "set" } else { "found" }
                ),
            );
        }
        Write::Start { index, .. } => {
            let step = &mut status.plan[*index];
            if step.state != StepState::InProgress {
                step.state = StepState::InProgress;
                step.started_at.get_or_insert(Time(now));
                step.message = None;
                let msg = format!("step {}: {} started", index + 1, step.describe());
                push_history(status, now, msg);
            }
            if !handed_off.is_empty() {
                handoff::publish(status, handed_off);
                let mut objects: Vec<&str> = handed_off.iter().map(|d| d.object.as_str()).collect();
                objects.dedup();
                let msg = format!(
                    "step {}: Git must now declare the fields status.declareInGit lists for {}",
                    index + 1,
                    objects.join(", ")
                );
                push_history(status, now, msg);
            }
        }
    }
}

/// Copies the cvsh's stages and conditions into status (while Phase 1 runs, and once it is
/// done).
pub fn mirror_extensions(status: &mut UpgradeRequestStatus, cvsh: &Value) {
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

/// Phase, progress and the Ready / Reconciling / Stalled / Paused / PreflightPassed /
/// AcknowledgementRequired conditions, from the outcome (and, for messages, the plan).
pub fn summarize(
    status: &mut UpgradeRequestStatus,
    outcome: &Outcome,
    generation: i64,
    now: Timestamp,
) {
    let (done, total) = progress(status);
    status.progress = status.target.is_some().then(|| format!("{done}/{total}"));
    status.observed_generation = Some(generation);
    let phase = match outcome {
        Outcome::Stalled(_) => Phase::Stalled,
        Outcome::Succeeded => Phase::Succeeded,
        Outcome::Blocked(_) | Outcome::PreflightDue(_) => Phase::Preflight,
        Outcome::AwaitingAcknowledgement => Phase::AwaitingAcknowledgement,
        Outcome::ClusterPaused(_) | Outcome::Paused => Phase::Paused,
        Outcome::UpgradingExtensions => Phase::UpgradingExtensions,
        // Waiting for a window before anything started is still Pending.
        Outcome::OutsideWindow(_) if !crate::decide::plan_frozen(status) => Phase::Pending,
        Outcome::Upgrading { .. } | Outcome::Deleting(_) | Outcome::OutsideWindow(_) => {
            if status.target.is_some() {
                Phase::Upgrading
            } else {
                Phase::Pending
            }
        }
    };
    status.phase = Some(phase);

    let step_message = || {
        status
            .plan
            .iter()
            .find(|s| s.state != StepState::Succeeded)
            .map(|s| {
                format!(
                    "step {}/{total}: {} ({})",
                    s.index + 1,
                    s.describe(),
                    s.distribution_version
                )
            })
            .unwrap_or_default()
    };
    let preflight_message = || {
        status
            .preflight
            .as_ref()
            .map(|pf| {
                let blocking: Vec<String> = preflight::blocking(&pf.checks)
                    .iter()
                    .map(|c| format!("{:?}: {}", c.name, c.message))
                    .collect();
                format!("preflight ({}) blocks: {}", pf.scope, blocking.join("; "))
            })
            .unwrap_or_default()
    };
    let target = status
        .target
        .as_ref()
        .map(|t| {
            format!(
                "{} (Kubernetes {})",
                t.distribution_version, t.kubernetes_version
            )
        })
        .unwrap_or_default();
    // (Ready reason, message; Reconciling reason, or None when not reconciling)
    let (ready_reason, message, reconciling): (String, String, Option<&str>) = match outcome {
        Outcome::Stalled(s) => (s.reason.to_string(), s.message.clone(), None),
        Outcome::Succeeded => (
            "Succeeded".into(),
            format!("the cluster is at {target}"),
            None,
        ),
        Outcome::Blocked(_) => (
            "PreflightFailed".into(),
            preflight_message(),
            Some("WaitingForPreflight"),
        ),
        Outcome::PreflightDue(scope) => (
            "Preflight".into(),
            format!("running the preflight ({})", scope.label()),
            Some("WaitingForPreflight"),
        ),
        Outcome::AwaitingAcknowledgement => (
            "AcknowledgementRequired".into(),
            status
                .review
                .as_ref()
                .and_then(review::pending_message)
                .unwrap_or_default(),
            Some("WaitingForAcknowledgement"),
        ),
        Outcome::Paused => ("Paused".into(), "spec.paused is true".into(), None),
        Outcome::ClusterPaused(m) => ("ClusterPaused".into(), m.clone(), None),
        Outcome::UpgradingExtensions => (
            "UpgradingExtensions".into(),
            format!(
                "Phase 1: the Cluster Version Operator is moving Core and Aligned extensions to {}",
                status
                    .aligned_extensions
                    .as_ref()
                    .and_then(|e| e.version.clone())
                    .unwrap_or_default()
            ),
            Some("UpgradingExtensions"),
        ),
        Outcome::Upgrading { .. } => ("Upgrading".into(), step_message(), Some("Upgrading")),
        Outcome::OutsideWindow(c) => (
            "OutsideMaintenanceWindow".into(),
            format!(
                "{} starts only inside spec.maintenanceWindow; the next window opens {}",
                c.what,
                if c.opens.is_some() {
                    format!("at {}", c.when)
                } else {
                    c.when.clone()
                }
            ),
            Some("WaitingForMaintenanceWindow"),
        ),
        Outcome::Deleting(m) => ("Deleting".into(), m.clone(), Some("Deleting")),
    };

    if let Some(pf) = &status.preflight {
        let blocking = preflight::blocking(&pf.checks);
        let (ok, reason, msg) = match blocking.first() {
            None => (
                true,
                "AllChecksPassed".to_string(),
                format!(
                    "{} checks passed or skipped ({})",
                    pf.checks.len(),
                    pf.scope
                ),
            ),
            Some(first) => (
                false,
                format!("{:?}", first.name),
                blocking
                    .iter()
                    .map(|c| format!("{:?}: {}", c.name, c.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        set_condition(
            &mut status.conditions,
            "PreflightPassed",
            ok,
            &reason,
            &msg,
            generation,
            now,
        );
    }
    if let Some(r) = &status.review {
        let requested = status
            .aligned_extensions
            .as_ref()
            .is_some_and(|e| e.requested_at.is_some() || e.state == Some(StepState::Succeeded));
        let pending = if requested {
            None
        } else {
            review::pending_message(r)
        };
        let (reason, msg) = match &pending {
            Some(m) => ("AcknowledgementRequired", m.clone()),
            None => ("Acknowledged", String::new()),
        };
        set_condition(
            &mut status.conditions,
            "AcknowledgementRequired",
            pending.is_some(),
            reason,
            &msg,
            generation,
            now,
        );
    }
    let c = &mut status.conditions;
    match outcome {
        Outcome::Stalled(s) => set_condition(
            c,
            "Stalled",
            true,
            s.reason.as_str(),
            &s.message,
            generation,
            now,
        ),
        _ => set_condition(c, "Stalled", false, "NotStalled", "", generation, now),
    }
    let finished = *outcome == Outcome::Succeeded;
    set_condition(
        c,
        "Ready",
        finished,
        &ready_reason,
        &message,
        generation,
        now,
    );
    set_condition(
        c,
        "Reconciling",
        reconciling.is_some(),
        reconciling.unwrap_or("Idle"),
        if reconciling.is_some() { &message } else { "" },
        generation,
        now,
    );
    let (paused, paused_reason, paused_message) = match outcome {
        Outcome::ClusterPaused(m) => (true, "ClusterPaused", m.as_str()),
        Outcome::Paused => (
            true,
            "PausedBySpec",
            "stopped at a step boundary because spec.paused is true",
        ),
        _ => (false, "NotPaused", ""),
    };
    set_condition(
        c,
        "Paused",
        paused,
        paused_reason,
        paused_message,
        generation,
        now,
    );
}

/// Where a request leaves the cluster, in one line: steps done and the versions the control
/// plane and the pools declare.
pub fn left_at(status: &UpgradeRequestStatus, obs: &Observed) -> String {
    let (done, total) = progress(status);
    let cp = obs
        .kcp
        .as_ref()
        .map_or("unknown", |k| k.spec.version.as_str());
    let pools: Vec<String> = obs
        .mds
        .iter()
        .map(|md| format!("{} at {}", capi::name(&md.metadata), md.version()))
        .collect();
    format!(
        "{done}/{total} steps done; control plane at {cp}{}",
        if pools.is_empty() {
            String::new()
        } else {
            format!(", {}", pools.join(", "))
        }
    )
}

/// The step a deleted request lets finish, and what it still waits for (empty: finished).
pub fn running_step(status: &UpgradeRequestStatus) -> Option<(usize, PlanStepKind, String)> {
    status
        .plan
        .iter()
        .position(|s| s.state == StepState::InProgress)
        .map(|i| {
            let s = &status.plan[i];
            (i, s.kind, s.kubernetes_version.clone())
        })
}
