//! Condition `GitOpsSynced` (pure): whether the GitOps tools that apply the cluster's control
//! plane and pools still apply Git while a run goes on. The version guard refuses a revert
//! (DOMAIN.md §8: Flux re-applies Git's old version on every interval), so the cluster is
//! safe, but the tool then stops applying anything of that Kustomization or Application until
//! Git declares what the controller wrote: that is shown here, with the tool's own message,
//! rather than found out later. It never stalls the request.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::api::UpgradeRequestStatus;
use crate::observe::inputs::AppliedBy;

use super::push_history;

pub const CONDITION: &str = "GitOpsSynced";

/// The tool's messages are kept to this many characters each.
const MESSAGE_LIMIT: usize = 1024;

/// One rule set's state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Git is applied (or the tool is told not to apply: suspended).
    Synced(String),
    /// The tool could not apply Git, or will change the objects: its words.
    Failing {
        reason: &'static str,
        message: String,
    },
    /// Still reconciling, or not readable.
    Unknown(String),
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(MESSAGE_LIMIT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

/// A Kustomization: its `Ready` condition (kustomize-controller sets it `False` with the
/// apply's error, e.g. an admission refusal of the dry-run, and `True` once a revision applied).
fn kustomization(k: &Value) -> State {
    if k["spec"]["suspend"] == true {
        return State::Synced("suspended (spec.suspend), applies nothing".into());
    }
    let ready = k["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready");
    let Some(c) = ready else {
        return State::Unknown("has not reported Ready yet".into());
    };
    let (reason, message) = (text(c, &["reason"]), clip(text(c, &["message"])));
    match text(c, &["status"]) {
        "True" => State::Synced(format!("Ready: {message}")),
        "False" => State::Failing {
            reason: "FluxNotReady",
            message: format!("not Ready ({reason}): {message}"),
        },
        _ => State::Unknown(format!("reconciling ({reason}): {message}")),
    }
}

/// An Application: a failed last sync first, then the sync status (OutOfSync: Argo CD sees
/// Git differ from the live objects in fields it does not ignore, and selfHeal would sync).
fn application(a: &Value) -> State {
    let op = &a["status"]["operationState"];
    if matches!(text(op, &["phase"]), "Failed" | "Error") {
        return State::Failing {
            reason: "ArgoSyncFailed",
            message: format!(
                "last sync {}: {}",
                text(op, &["phase"]),
                clip(text(op, &["message"]))
            ),
        };
    }
    match text(a, &["status", "sync", "status"]) {
        "Synced" => State::Synced(format!(
            "Synced at {}",
            text(a, &["status", "sync", "revision"])
        )),
        "OutOfSync" => State::Failing {
            reason: "ArgoOutOfSync",
            message: "OutOfSync: Git declares other values than the live objects in fields the Application does not ignore".into(),
        },
        other => State::Unknown(format!("sync status {other:?}")),
    }
}

fn state(a: &AppliedBy) -> State {
    match &a.read {
        Err(why) => State::Unknown(format!("not read: {why}")),
        Ok(None) => State::Unknown("does not exist (named by the objects' markers)".into()),
        Ok(Some(v)) if a.argo => application(v),
        Ok(Some(v)) => kustomization(v),
    }
}

/// Sets `GitOpsSynced` from what applies the cluster's objects: `False` when one of them fails
/// (with its message; recorded in the history when it starts and when it ends), `Unknown`
/// while one reconciles or cannot be read, `True` when all apply Git. No rule set: no
/// condition. `None`: not read in this pass, nothing changes.
pub fn record(
    status: &mut UpgradeRequestStatus,
    applied_by: Option<&[AppliedBy]>,
    generation: i64,
    now: Timestamp,
) {
    let Some(applied_by) = applied_by else {
        return;
    };
    if applied_by.is_empty() {
        status.conditions.retain(|c| c.type_ != CONDITION);
        return;
    }
    let mut failing = Vec::new();
    let mut unknown = Vec::new();
    let mut synced = Vec::new();
    let mut reason = "Synced";
    for a in applied_by {
        let line = |what: &str| format!("{} (applies {}) {what}", a.source, a.objects.join(", "));
        match state(a) {
            State::Failing { reason: r, message } => {
                if failing.is_empty() {
                    reason = r;
                }
                failing.push(line(&message));
            }
            State::Unknown(m) => unknown.push(line(&m)),
            State::Synced(m) => synced.push(line(&m)),
        }
    }
    let (value, message) = if !failing.is_empty() {
        (
            "False",
            format!(
                "{}. The version guard keeps the cluster where the upgrade put it; make Git declare what status.declareInGit lists (or the protection GitOpsSafe names)",
                failing.join("; ")
            ),
        )
    } else if !unknown.is_empty() {
        reason = "Reconciling";
        ("Unknown", unknown.join("; "))
    } else {
        ("True", synced.join("; "))
    };
    let before = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION)
        .map(|c| c.status.clone());
    if value == "False" && before.as_deref() != Some("False") {
        push_history(status, now, format!("GitOps: {message}"));
    } else if value == "True" && before.as_deref() == Some("False") {
        push_history(status, now, format!("GitOps: applies Git again: {message}"));
    }
    match status.conditions.iter_mut().find(|c| c.type_ == CONDITION) {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Time(now);
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = Some(generation);
        }
        None => status.conditions.push(Condition {
            type_: CONDITION.into(),
            status: value.into(),
            reason: reason.into(),
            message,
            observed_generation: Some(generation),
            last_transition_time: Time(now),
        }),
    }
}

/// Whether a finished request should look again: Git was not applied yet when it finished
/// (it tells when Git catches up with status.declareInGit).
pub fn awaiting_git(status: &UpgradeRequestStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION && c.status != "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flux(read: Result<Option<Value>, String>) -> AppliedBy {
        AppliedBy {
            source: "Kustomization flux-system/clusters".into(),
            argo: false,
            objects: vec![
                "KubeadmControlPlane cp".into(),
                "MachineDeployment md".into(),
            ],
            read,
        }
    }

    fn ready(status: &str, reason: &str, message: &str) -> Value {
        json!({"status": {"conditions": [
            {"type": "Reconciling", "status": "False"},
            {"type": "Ready", "status": status, "reason": reason, "message": message},
        ]}})
    }

    fn condition(s: &UpgradeRequestStatus) -> (&str, &str, &str) {
        let c = s.conditions.iter().find(|c| c.type_ == CONDITION).unwrap();
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn a_refused_flux_apply_is_false_with_fluxs_words_and_history_at_both_edges() {
        let mut s = UpgradeRequestStatus::default();
        let ok = [flux(Ok(Some(ready(
            "True",
            "ReconciliationSucceeded",
            "Applied revision: r1",
        ))))];
        record(&mut s, Some(&ok), 1, at(10));
        assert_eq!(condition(&s).0, "True");
        assert!(s.history.is_empty());

        let refused = "KubeadmControlPlane/ns/cp dry-run failed: ValidatingAdmissionPolicy 'guard' denied request: lowering the Kubernetes minor";
        let bad = [flux(Ok(Some(ready(
            "False",
            "ReconciliationFailed",
            refused,
        ))))];
        record(&mut s, Some(&bad), 1, at(20));
        let (value, reason, message) = condition(&s);
        assert_eq!((value, reason), ("False", "FluxNotReady"));
        assert!(awaiting_git(&s));
        assert!(message.starts_with("Kustomization flux-system/clusters (applies KubeadmControlPlane cp, MachineDeployment md) not Ready (ReconciliationFailed): KubeadmControlPlane/ns/cp dry-run failed"), "{message}");
        assert!(message.contains("status.declareInGit"), "{message}");
        assert_eq!(s.history.len(), 1);
        assert!(s.history[0].message.starts_with("GitOps: Kustomization"));
        // The same reading again: nothing moves, no second entry.
        let before = s.clone();
        record(&mut s, Some(&bad), 1, at(30));
        assert_eq!(s, before);

        record(&mut s, Some(&ok), 1, at(40));
        assert_eq!(condition(&s).0, "True");
        assert!(!awaiting_git(&s));
        assert_eq!(s.history.len(), 2);
        assert!(
            s.history[0]
                .message
                .starts_with("GitOps: applies Git again")
        );
        let c = s.conditions.iter().find(|c| c.type_ == CONDITION).unwrap();
        assert_eq!(c.last_transition_time, Time(at(40)));
    }

    #[test]
    fn reconciling_unreadable_and_missing_are_unknown_and_not_read_changes_nothing() {
        let mut s = UpgradeRequestStatus::default();
        record(&mut s, Some(&[flux(Ok(Some(json!({}))))]), 1, at(1));
        assert_eq!(condition(&s).0, "Unknown");
        record(
            &mut s,
            Some(&[flux(Err("forbidden (403)".into()))]),
            1,
            at(2),
        );
        assert!(condition(&s).2.contains("not read: forbidden (403)"));
        record(&mut s, Some(&[flux(Ok(None))]), 1, at(3));
        assert!(condition(&s).2.contains("does not exist"));
        let before = s.clone();
        record(&mut s, None, 1, at(4));
        assert_eq!(s, before);
        record(&mut s, Some(&[]), 1, at(5));
        assert!(s.conditions.iter().all(|c| c.type_ != CONDITION));
        assert!(s.history.is_empty(), "{:?}", s.history);
    }

    #[test]
    fn a_suspended_kustomization_applies_nothing_and_is_not_a_failure() {
        let mut s = UpgradeRequestStatus::default();
        let mut k = ready("False", "ReconciliationFailed", "old failure");
        k["spec"] = json!({"suspend": true});
        record(&mut s, Some(&[flux(Ok(Some(k)))]), 1, at(1));
        assert_eq!(condition(&s).0, "True");
        assert!(condition(&s).2.contains("suspended"));
    }

    #[test]
    fn argo_cd_failed_sync_and_out_of_sync_are_false_synced_is_true() {
        let app = |v: Value| AppliedBy {
            source: "Application argocd/clusters".into(),
            argo: true,
            objects: vec!["MachineDeployment md".into()],
            read: Ok(Some(v)),
        };
        let mut s = UpgradeRequestStatus::default();
        let failed = json!({"status": {"sync": {"status": "OutOfSync"}, "operationState": {"phase": "Failed", "message": "admission webhook denied"}}});
        record(&mut s, Some(&[app(failed)]), 1, at(1));
        assert_eq!(condition(&s).1, "ArgoSyncFailed");
        assert!(
            condition(&s)
                .2
                .contains("last sync Failed: admission webhook denied")
        );
        let drift = json!({"status": {"sync": {"status": "OutOfSync"}, "operationState": {"phase": "Succeeded"}}});
        record(&mut s, Some(&[app(drift)]), 1, at(2));
        assert_eq!(condition(&s).1, "ArgoOutOfSync");
        let synced = json!({"status": {"sync": {"status": "Synced", "revision": "abc"}}});
        record(
            &mut s,
            Some(&[app(synced), flux(Ok(Some(ready("True", "ok", "Applied"))))]),
            1,
            at(3),
        );
        let (value, _, message) = condition(&s);
        assert_eq!(value, "True");
        assert!(message.contains("Application argocd/clusters (applies MachineDeployment md) Synced at abc; Kustomization"), "{message}");
    }

    #[test]
    fn long_messages_are_clipped() {
        let long = "x".repeat(5000);
        let mut s = UpgradeRequestStatus::default();
        record(
            &mut s,
            Some(&[flux(Ok(Some(ready("False", "Failed", &long))))]),
            1,
            at(1),
        );
        assert!(condition(&s).2.len() < 1500);
    }
}
