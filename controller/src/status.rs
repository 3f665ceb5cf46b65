//! Status bookkeeping (pure): applying a decision's outcome to status, and the kstatus
//! conditions derived from it. `lastTransitionTime` only moves when a condition's status does,
//! so an unchanged situation produces an identical status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{HistoryEntry, Phase, StepState, UpgradeRequestStatus};
use crate::decide::Stall;

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

/// Recomputes phase, progress and the Ready / Reconciling / Stalled / Paused conditions from
/// the plan and the current stall (if any).
pub fn summarize(
    status: &mut UpgradeRequestStatus,
    stall: Option<&Stall>,
    paused: bool,
    generation: i64,
    now: Timestamp,
) {
    let total = status.plan.len();
    let done = status
        .plan
        .iter()
        .filter(|s| s.state == StepState::Succeeded)
        .count();
    let planned = status.plan_generation.is_some();
    status.progress = planned.then(|| format!("{done}/{total}"));
    status.observed_generation = Some(generation);
    let finished = planned && done == total;
    let phase = if let Some(_s) = stall {
        Phase::Stalled
    } else if finished {
        Phase::Succeeded
    } else if paused && !status.plan.iter().any(|s| s.state == StepState::InProgress) {
        Phase::Paused
    } else if planned {
        Phase::Upgrading
    } else {
        Phase::Pending
    };
    status.phase = Some(phase);

    let current_step = status
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
        });
    let c = &mut status.conditions;
    match stall {
        Some(s) => set_condition(c, "Stalled", true, s.reason, &s.message, generation, now),
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
            (Some(s), _) => (s.reason, s.message.clone()),
            (None, Phase::Paused) => ("Paused", "spec.paused is true".to_string()),
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
        if reconciling { "Upgrading" } else { "Idle" },
        if reconciling { &msg } else { "" },
        generation,
        now,
    );
    let paused_now = phase == Phase::Paused;
    set_condition(
        c,
        "Paused",
        paused_now,
        if paused_now {
            "PausedBySpec"
        } else {
            "NotPaused"
        },
        if paused_now {
            "stopped at a step boundary because spec.paused is true"
        } else {
            ""
        },
        generation,
        now,
    );
}
