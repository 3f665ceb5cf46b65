//! Phase 1 and the gates before it (DOMAIN.md §2): the initial preflight, the two-step review,
//! then the Distribution Version (Core and Aligned extensions) through the cluster's
//! ClusterVersionShadow.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::{Decision, Stall, StallReason};
use crate::api::{StepState, UpgradeRequestSpec, UpgradeRequestStatus};
use crate::observe::Observed;
use crate::platform;
use crate::preflight::{self, Scope, review};

/// Phase 1 was asked for and has not finished.
pub(super) fn running(status: &UpgradeRequestStatus) -> bool {
    status
        .aligned_extensions
        .as_ref()
        .is_some_and(|e| e.requested_at.is_some() && e.state != Some(StepState::Succeeded))
}

/// The next thing to do for Phase 1; `None` once it has succeeded.
pub(super) fn phase_one(
    spec: &UpgradeRequestSpec,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    now: Timestamp,
) -> Option<Decision> {
    let ext = status.aligned_extensions.clone().unwrap_or_default();
    if ext.state == Some(StepState::Succeeded) {
        return None;
    }
    let target = status.target.as_ref()?.distribution_version.clone();
    let wait = Decision::Wait {
        index: 0,
        recheck: SignedDuration::from_secs(5),
        waiting_for: Vec::new(),
    };
    let stall = |reason, message: String| Some(Decision::Stall(Stall::new(reason, message)));
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
        return stall(
            StallReason::ClusterVersionShadowNotFound,
            format!(
                "{} does not exist; the Cluster Version Operator must track this cluster before its Distribution Version can move",
                obs.cvsh_where
            ),
        );
    };
    if platform::at_version(cvsh, &target) {
        return Some(Decision::ExtensionsDone);
    }
    if let Some((true, reason, message)) = platform::condition(cvsh, "Stalled") {
        return stall(
            if reason.is_empty() {
                StallReason::ExtensionsStalled
            } else {
                StallReason::Platform(reason.to_string())
            },
            format!(
                "the Cluster Version Operator stopped moving the cluster to {target} ({}): {message}; fix the cause on the platform, the upgrade resumes when it clears",
                obs.cvsh_where
            ),
        );
    }
    let desired = platform::desired_version(cvsh);
    let asks_target = desired.is_some_and(|d| platform::same_version(d, &target));
    if !requested {
        // Asking the platform starts the upgrade: only inside a maintenance window (found
        // asking already, it is under way).
        if !asks_target && let Some(c) = super::window_closed(spec, now, "Phase 1".into()) {
            return Some(Decision::OutsideWindow(c));
        }
        return Some(Decision::RequestExtensions {
            version: target,
            write: !asks_target,
        });
    }
    if !asks_target {
        return stall(
            StallReason::ExtensionsTargetChanged,
            format!(
                "{} spec.desiredUpdate.version is {:?}, not {target} as this request set it; this request never asks twice — restore it to {target}, or delete this request and create a new one",
                obs.cvsh_where,
                desired.unwrap_or("")
            ),
        );
    }
    Some(wait)
}
