//! Status bookkeeping (pure): applying a decision's outcome to status, and the kstatus
//! conditions derived from it. `lastTransitionTime` only moves when a condition's status does,
//! so an unchanged situation produces an identical status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{HistoryEntry, Phase, StepState, UpgradeRequestStatus};
use crate::decide::Stall;
use crate::preflight;
use crate::review;

/// What a request that is neither stalled nor rolling out waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Nothing: it is progressing (or finished).
    Nothing,
    /// Failed or unknown preflight checks.
    Preflight,
    /// The two-step review.
    Acknowledgement,
    /// The Cluster is paused (`spec.paused`); the message says so.
    ClusterPaused(String),
    /// The request is being deleted and waits for the running rollout to finish.
    Deleting(String),
}

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

/// Recomputes phase, progress and the Ready / Reconciling / Stalled / Paused conditions from
/// the plan and the current stall (if any).
pub fn summarize(
    status: &mut UpgradeRequestStatus,
    stall: Option<&Stall>,
    waiting: Waiting,
    paused: bool,
    generation: i64,
    now: Timestamp,
) {
    let (done, total) = progress(status);
    let planned = status.target.is_some();
    status.progress = planned.then(|| format!("{done}/{total}"));
    status.observed_generation = Some(generation);
    // Finished means both phases: the Distribution Version and every hop.
    let extensions_done = status
        .aligned_extensions
        .as_ref()
        .is_some_and(|e| e.state == Some(StepState::Succeeded));
    let finished = planned && done == total && extensions_done;
    let extensions_running = status
        .aligned_extensions
        .as_ref()
        .is_some_and(|e| e.requested_at.is_some() && e.state != Some(StepState::Succeeded));
    let phase = if let Some(_s) = stall {
        Phase::Stalled
    } else if finished {
        Phase::Succeeded
    } else if waiting == Waiting::Preflight {
        Phase::Preflight
    } else if waiting == Waiting::Acknowledgement {
        Phase::AwaitingAcknowledgement
    } else if matches!(waiting, Waiting::ClusterPaused(_))
        || (paused
            && !extensions_running
            && !status.plan.iter().any(|s| s.state == StepState::InProgress))
    {
        Phase::Paused
    } else if extensions_running {
        Phase::UpgradingExtensions
    } else if planned {
        Phase::Upgrading
    } else {
        Phase::Pending
    };
    status.phase = Some(phase);

    let gate_message = match &waiting {
        Waiting::Preflight => status.preflight.as_ref().map(|pf| {
            let blocking: Vec<String> = preflight::blocking(&pf.checks)
                .iter()
                .map(|c| format!("{:?}: {}", c.name, c.message))
                .collect();
            format!("preflight ({}) blocks: {}", pf.scope, blocking.join("; "))
        }),
        Waiting::Acknowledgement => status.review.as_ref().and_then(review::pending_message),
        Waiting::ClusterPaused(m) | Waiting::Deleting(m) => Some(m.clone()),
        Waiting::Nothing => None,
    };
    let current_step = if let Some(m) = &gate_message {
        Some(m.clone())
    } else if extensions_running {
        Some(format!(
            "Phase 1: the Cluster Version Operator is moving Core and Aligned extensions to {}",
            status
                .aligned_extensions
                .as_ref()
                .and_then(|e| e.version.clone())
                .unwrap_or_default()
        ))
    } else {
        status
            .plan
            .iter()
            .find(|s| s.state != StepState::Succeeded)
            .map(|s| {
                format!(
                    "step {}/{total}: {:?} to Kubernetes {} ({})",
                    s.index + 1,
                    s.kind,
                    s.kubernetes_version,
                    s.distribution_version
                )
            })
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
    match stall {
        Some(s) => set_condition(c, "Stalled", true, &s.reason, &s.message, generation, now),
        None => set_condition(c, "Stalled", false, "NotStalled", "", generation, now),
    }
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
    let c = &mut status.conditions;
    if finished {
        let msg = format!("the cluster is at {target}");
        set_condition(c, "Ready", true, "Succeeded", &msg, generation, now);
    } else {
        let (reason, msg) = match (stall, phase) {
            (Some(s), _) => (s.reason.as_str(), s.message.clone()),
            (None, _) if matches!(waiting, Waiting::Deleting(_)) => {
                ("Deleting", current_step.clone().unwrap_or_default())
            }
            (None, Phase::Paused) if matches!(waiting, Waiting::ClusterPaused(_)) => {
                ("ClusterPaused", current_step.clone().unwrap_or_default())
            }
            (None, Phase::Paused) => ("Paused", "spec.paused is true".to_string()),
            (None, Phase::Preflight) => {
                ("PreflightFailed", current_step.clone().unwrap_or_default())
            }
            (None, Phase::AwaitingAcknowledgement) => (
                "AcknowledgementRequired",
                current_step.clone().unwrap_or_default(),
            ),
            (None, Phase::UpgradingExtensions) => (
                "UpgradingExtensions",
                current_step.clone().unwrap_or_default(),
            ),
            _ => ("Upgrading", current_step.clone().unwrap_or_default()),
        };
        set_condition(c, "Ready", false, reason, &msg, generation, now);
    }
    let reconciling = stall.is_none() && !finished && phase != Phase::Paused;
    let msg = current_step.unwrap_or_default();
    set_condition(
        c,
        "Reconciling",
        reconciling,
        match (reconciling, phase) {
            (false, _) => "Idle",
            (true, Phase::Preflight) => "WaitingForPreflight",
            (true, Phase::AwaitingAcknowledgement) => "WaitingForAcknowledgement",
            (true, Phase::UpgradingExtensions) => "UpgradingExtensions",
            (true, _) if matches!(waiting, Waiting::Deleting(_)) => "Deleting",
            (true, _) => "Upgrading",
        },
        if reconciling { &msg } else { "" },
        generation,
        now,
    );
    let paused_now = phase == Phase::Paused;
    let (paused_reason, paused_message) = match &waiting {
        Waiting::ClusterPaused(m) if paused_now => ("ClusterPaused", m.as_str()),
        _ if paused_now => (
            "PausedBySpec",
            "stopped at a step boundary because spec.paused is true",
        ),
        _ => ("NotPaused", ""),
    };
    set_condition(
        c,
        "Paused",
        paused_now,
        paused_reason,
        paused_message,
        generation,
        now,
    );
}

/// Where a request leaves the cluster, in one line: steps done and the versions the control
/// plane and the pools declare.
pub fn left_at(status: &UpgradeRequestStatus, obs: &crate::decide::Observed) -> String {
    let (done, total) = progress(status);
    let cp = obs
        .kcp
        .as_ref()
        .and_then(crate::capi::kcp_version)
        .unwrap_or("unknown");
    let pools: Vec<String> = obs
        .mds
        .iter()
        .map(|md| {
            format!(
                "{} at {}",
                crate::capi::name(md),
                crate::capi::md_version(md).unwrap_or("unknown")
            )
        })
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
