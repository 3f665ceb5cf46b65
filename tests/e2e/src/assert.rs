//! Assertions every suite shares: a request stalled with its reason, an object carrying no
//! field of the controller's field manager, the controller's version writes in order.

use serde_json::Value;
use upgrade_controller::FIELD_MANAGER;
use upgrade_controller::api::{CheckName, Phase, PreflightCheck, UpgradeRequest};

use crate::engine::Write;

/// Condition `type_` of a request as (status, reason, message); empty strings when absent.
pub fn condition(ur: &UpgradeRequest, type_: &str) -> (String, String, String) {
    ur.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Preflight check `name` of the request's last preflight, if it ran.
pub fn check(ur: &UpgradeRequest, name: CheckName) -> Option<PreflightCheck> {
    ur.status
        .as_ref()?
        .preflight
        .as_ref()?
        .checks
        .iter()
        .find(|c| c.name == name)
        .cloned()
}

/// Fails unless an entry of the request's history starts with `prefix`.
pub fn in_history(ur: &UpgradeRequest, prefix: &str) {
    let history = ur
        .status
        .as_ref()
        .map(|s| &s.history[..])
        .unwrap_or_default();
    assert!(
        history.iter().any(|h| h.message.starts_with(prefix)),
        "no history entry starts with {prefix:?}: {history:#?}"
    );
}

/// Whether the request's `Stalled` condition is True with `reason`.
pub fn is_stalled(ur: &UpgradeRequest, reason: &str) -> bool {
    let (status, r, _) = condition(ur, "Stalled");
    status == "True" && r == reason
}

/// The request is in phase Stalled, `Stalled=True` with `reason` and a message, and
/// `Ready=False`. Returns the message (the fix an operator reads).
pub fn stalled_with(ur: &UpgradeRequest, reason: &str) -> String {
    let name = ur.metadata.name.as_deref().unwrap_or_default();
    let phase = ur.status.as_ref().and_then(|s| s.phase);
    assert_eq!(phase, Some(Phase::Stalled), "{name}: phase");
    let (status, r, message) = condition(ur, "Stalled");
    assert_eq!(status, "True", "{name}: Stalled condition");
    assert_eq!(r, reason, "{name}: Stalled reason; message: {message}");
    assert!(!message.is_empty(), "{name}: Stalled without a message");
    assert_eq!(condition(ur, "Ready").0, "False", "{name}: Ready condition");
    message
}

/// No entry of `obj`'s managedFields belongs to the controller's field manager.
pub fn no_field_of_ours(obj: &Value) {
    let managers: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|e| e["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !managers.contains(&FIELD_MANAGER),
        "{} {} has fields written by the controller (managers: {managers:?})",
        obj["kind"],
        obj["metadata"]["name"]
    );
}

/// The `spec.version` values `kind` was seen declaring, in the order they were written
/// (starting with the version it had when recording began), equal `expected`.
pub fn writes_in_order(writes: &[Write], kind: &str, expected: &[&str]) {
    let seen: Vec<&str> = writes
        .iter()
        .filter(|w| w.kind == kind)
        .map(|w| w.version.as_str())
        .collect();
    assert_eq!(seen, expected, "{kind} versions in write order");
}
