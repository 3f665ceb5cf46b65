//! The stand-in CVO's behaviour (see the module above): its test controls ([`knobs`]) and
//! the pure status function [`next_status`] the `stand-in-cvo` binary runs on every pass, with
//! [`merge_patch`] for its writes. Nothing here talks to an API server.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

use super::{CHECKS, INSTALLED_VERSION_ANNOTATION, STAGES, STALL_STAGE};

// ---------------------------------------------------------------------------------------------
// Test controls
// ---------------------------------------------------------------------------------------------

/// What the test controls ask of one cvsh.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Knobs {
    /// `(check, message)` for each check that must fail.
    pub failed_checks: Vec<(String, String)>,
    /// `(reason, message)` when the upgrade must stall at [`STALL_STAGE`].
    pub stall: Option<(String, String)>,
    /// How long each stage runs.
    pub stage_seconds: u64,
}

/// Parses a `Name: message` line; a line without a colon is all name.
fn name_and_message(line: &str, default_message: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    Some(match line.split_once(':') {
        Some((name, message)) => (name.trim().to_string(), message.trim().to_string()),
        None => (line.to_string(), default_message.to_string()),
    })
}

/// The knobs for cvsh `name` from the control ConfigMap's data. An unparsable `stage-seconds`
/// is reported as `Err` and `default_stage_seconds` used.
pub fn knobs(
    data: &BTreeMap<String, String>,
    name: &str,
    default_stage_seconds: u64,
) -> (Knobs, Option<String>) {
    let mut problem = None;
    let stage_seconds = match data.get("stage-seconds") {
        None => default_stage_seconds,
        Some(v) => v.trim().parse().unwrap_or_else(|_| {
            problem = Some(format!(
                "ConfigMap key stage-seconds={v:?} is not a number of seconds; using {default_stage_seconds}"
            ));
            default_stage_seconds
        }),
    };
    let failed_checks = data
        .get(&format!("fail-preflight.{name}"))
        .map(|v| {
            v.lines()
                .filter_map(|l| name_and_message(l, "failed (stand-in CVO control)"))
                .collect()
        })
        .unwrap_or_default();
    let stall = data
        .get(&format!("stall.{name}"))
        .and_then(|v| name_and_message(v, "stalled (stand-in CVO control)"));
    (
        Knobs {
            failed_checks,
            stall,
            stage_seconds,
        },
        problem,
    )
}

// ---------------------------------------------------------------------------------------------
// Behaviour (pure)
// ---------------------------------------------------------------------------------------------

/// metav1.Time text (second precision, UTC), as Kubernetes writes it.
pub fn time(t: Timestamp) -> String {
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t)
        .expect("a UTC timestamp always formats")
}

fn same_version(a: &str, b: &str) -> bool {
    a.trim_start_matches('v') == b.trim_start_matches('v')
}

fn non_empty(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// Condition `type_` as a metav1.Condition, keeping the previous `lastTransitionTime` (from
/// `old`) when its status did not change.
fn condition(
    old: &[Value],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let prev = old.iter().find(|c| c["type"] == type_);
    let since = match prev {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    })
}

/// The upgrade in the status is still under way towards `target`: the newest history entry is
/// a Partial one for it, without a completion time.
fn in_progress(status: &Value, target: &str) -> bool {
    let latest = &status["history"][0];
    non_empty(&latest["version"]).is_some_and(|v| same_version(v, target))
        && latest["state"] == "Partial"
        && latest.get("completionTime").is_none_or(Value::is_null)
        && status["stages"].as_array().is_some_and(|s| !s.is_empty())
}

/// Moves the first unfinished stage on by at most one transition, so every state a stage goes
/// through is written (and seen by watchers) at least once.
fn advance_stages(stages: &mut [Value], target: &str, knobs: &Knobs, now: Timestamp) {
    let now_s = time(now);
    let Some(stage) = stages.iter_mut().find(|s| s["state"] != "Completed") else {
        return;
    };
    let name = stage["name"].as_str().unwrap_or_default().to_string();
    let stall = knobs.stall.as_ref().filter(|_| name == STALL_STAGE);
    let state = stage["state"].as_str().unwrap_or("Pending").to_string();
    match (state.as_str(), stall) {
        ("Pending" | "Running", Some((_, message))) => {
            if stage.get("startedTime").is_none_or(Value::is_null) {
                stage["startedTime"] = json!(now_s);
            }
            stage["state"] = json!("Failed");
            stage["message"] = json!(message);
        }
        ("Failed", Some(_)) => {}
        ("Pending" | "Failed", None) => {
            let resuming = state == "Failed";
            stage["state"] = json!("Running");
            stage["startedTime"] = json!(now_s);
            stage["message"] = json!(if resuming {
                format!("Resuming the upgrade of {name} to {target}")
            } else {
                format!("Upgrading {name} to {target}")
            });
        }
        (_, None) => {
            let started = non_empty(&stage["startedTime"])
                .and_then(|t| t.parse::<Timestamp>().ok())
                .unwrap_or(now);
            // startedTime has whole seconds (truncated), so count from one second later: a stage
            // runs for at least stage-seconds (and less than one second more).
            let secs = i64::try_from(knobs.stage_seconds).unwrap_or(i64::MAX / 2);
            let rounding = i64::from(secs > 0);
            if now.duration_since(started) >= SignedDuration::from_secs(secs + rounding) {
                stage["state"] = json!("Completed");
                stage["completionTime"] = json!(now_s);
                stage["message"] = json!(format!("{name} is at {target}"));
            }
        }
        (_, Some(_)) => {}
    }
}

/// Why a cvsh is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// No `status.current` and no installed-version annotation to start from.
    NoInstalledVersion,
}

/// The stand-in's whole behaviour: the status `cvsh` should have next, given the test controls
/// and the time. Fields of the old status it does not manage are kept. The same inputs give the
/// same output, so an unchanged status is not re-written.
pub fn next_status(cvsh: &Value, knobs: &Knobs, now: Timestamp) -> Result<Value, Skip> {
    let now_s = time(now);
    let generation = cvsh["metadata"]["generation"].as_i64().unwrap_or(0);
    let old = cvsh.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut status = match old {
        Value::Object(_) => old.clone(),
        _ => json!({}),
    };
    let old_conditions = old["conditions"].as_array().cloned().unwrap_or_default();
    let cond = |type_: &str, ok: bool, reason: &str, message: &str| {
        condition(
            &old_conditions,
            type_,
            ok,
            reason,
            message,
            generation,
            &now_s,
        )
    };

    let current = match non_empty(&old["current"]["version"])
        .or_else(|| non_empty(&cvsh["metadata"]["annotations"][INSTALLED_VERSION_ANNOTATION]))
    {
        Some(v) => v.to_string(),
        None => return Err(Skip::NoInstalledVersion),
    };

    // Preflight: the 13 platform checks, then any other check a test asked to fail.
    let failed = |name: &str| knobs.failed_checks.iter().find(|(n, _)| n == name);
    let check = |name: &str| match failed(name) {
        Some((_, message)) => json!({
            "name": name, "policy": "Block", "state": "Failed",
            "reason": "CheckFailed", "message": message,
        }),
        None => json!({
            "name": name, "policy": "Block", "state": "Passed",
            "reason": "AsExpected", "message": "",
        }),
    };
    let mut checks: Vec<Value> = CHECKS.iter().map(|n| check(n)).collect();
    for (name, _) in &knobs.failed_checks {
        if !CHECKS.contains(&name.as_str()) && !checks.iter().any(|c| c["name"] == **name) {
            checks.push(check(name));
        }
    }
    let observed_at = if old["preflight"]["checks"].as_array() == Some(&checks) {
        old["preflight"]["observedAt"].clone()
    } else {
        json!(now_s)
    };
    status["preflight"] = json!({"observedAt": observed_at, "checks": checks});
    let first_failed = checks.iter().find(|c| c["state"] == "Failed").map(|c| {
        (
            c["name"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        )
    });
    let preflight_ready = match &first_failed {
        None => cond(
            "PreflightReady",
            true,
            "AsExpected",
            &format!("All {} preflight checks passed", checks.len()),
        ),
        Some((name, message)) => cond("PreflightReady", false, name, message),
    };

    let at_rest = |version: &str| {
        [
            cond(
                "Ready",
                true,
                "AsExpected",
                &format!("Cluster is at version {version}"),
            ),
            cond("Reconciling", false, "AsExpected", ""),
            cond("Stalled", false, "AsExpected", ""),
        ]
    };
    let target = non_empty(&cvsh["spec"]["desiredUpdate"]["version"])
        .filter(|d| !same_version(d, &current))
        .map(str::to_string);
    let [ready, reconciling, stalled] = match target {
        None => {
            status["current"] = json!({"version": current});
            status["desired"] = json!({"version": current});
            at_rest(&current)
        }
        Some(target) if !in_progress(&old, &target) && first_failed.is_some() => {
            let (name, message) = first_failed.clone().unwrap_or_default();
            status["current"] = json!({"version": current});
            status["desired"] = json!({"version": target});
            let ready = old_conditions
                .iter()
                .find(|c| c["type"] == "Ready")
                .cloned()
                .unwrap_or_else(|| at_rest(&current)[0].clone());
            [
                ready,
                cond(
                    "Reconciling",
                    false,
                    "PreflightFailed",
                    &format!("Not upgrading to {target}: preflight check {name} failed: {message}"),
                ),
                cond("Stalled", false, "AsExpected", ""),
            ]
        }
        Some(target) => {
            status["current"] = json!({"version": current});
            status["desired"] = json!({"version": target});
            let mut history = status["history"].as_array().cloned().unwrap_or_default();
            if !in_progress(&old, &target) {
                // A new upgrade; one still under way to another version is superseded.
                if let Some(latest) = history.first_mut()
                    && latest["state"] == "Partial"
                    && latest.get("completionTime").is_none_or(Value::is_null)
                {
                    latest["completionTime"] = json!(now_s);
                }
                history.insert(
                    0,
                    json!({"version": target, "state": "Partial", "startedTime": now_s}),
                );
                status["stages"] = json!(
                    STAGES
                        .iter()
                        .map(|s| json!({"name": s, "state": "Pending", "message": ""}))
                        .collect::<Vec<_>>()
                );
            }
            let mut stages = status["stages"].as_array().cloned().unwrap_or_default();
            advance_stages(&mut stages, &target, knobs, now);
            let stalled_stage = stages.iter().find(|s| s["state"] == "Failed").cloned();
            let running = stages
                .iter()
                .find(|s| s["state"] != "Completed")
                .and_then(|s| s["name"].as_str())
                .map(str::to_string);
            status["stages"] = json!(stages);
            let conditions = if let Some(stage) = stalled_stage {
                let (reason, message) = knobs.stall.clone().unwrap_or_default();
                let name = stage["name"].as_str().unwrap_or_default();
                [
                    cond(
                        "Ready",
                        false,
                        "Upgrading",
                        &format!("Upgrading from {current} to {target}"),
                    ),
                    cond(
                        "Reconciling",
                        false,
                        "Stalled",
                        &format!("The upgrade to {target} stalled at stage {name}"),
                    ),
                    cond("Stalled", true, &reason, &message),
                ]
            } else if let Some(stage) = running {
                [
                    cond(
                        "Ready",
                        false,
                        "Upgrading",
                        &format!("Upgrading from {current} to {target}"),
                    ),
                    cond(
                        "Reconciling",
                        true,
                        "Upgrading",
                        &format!("Upgrading to {target}: stage {stage}"),
                    ),
                    cond("Stalled", false, "AsExpected", ""),
                ]
            } else {
                if let Some(latest) = history.first_mut() {
                    latest["state"] = json!("Completed");
                    latest["completionTime"] = json!(now_s);
                }
                status["current"] = json!({"version": target});
                at_rest(&target)
            };
            status["history"] = json!(history);
            conditions
        }
    };
    status["conditions"] = json!([preflight_ready, ready, reconciling, stalled]);
    Ok(status)
}

/// The RFC 7386 merge patch that turns `old` into `new` (`null` for removed keys; arrays and
/// scalars replaced whole).
pub fn merge_patch(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) if ov == nv => {}
                    Some(ov) => {
                        patch.insert(k.clone(), merge_patch(ov, nv));
                    }
                    None => {
                        patch.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    patch.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn cvsh(status: Option<Value>, desired: Option<&str>) -> Value {
        let mut obj = json!({
            "metadata": {
                "name": "prod-a", "generation": 2,
                "annotations": {INSTALLED_VERSION_ANNOTATION: "4.2.5"},
            },
            "spec": {},
        });
        if let Some(d) = desired {
            obj["spec"]["desiredUpdate"]["version"] = json!(d);
        }
        if let Some(s) = status {
            obj["status"] = s;
        }
        obj
    }

    fn knobs_with(failed: &[(&str, &str)], stall: Option<(&str, &str)>) -> Knobs {
        Knobs {
            failed_checks: failed
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            stall: stall.map(|(a, b)| (a.to_string(), b.to_string())),
            stage_seconds: 1,
        }
    }

    fn cond<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
    }

    fn stage_states(status: &Value) -> Vec<String> {
        status["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}={}",
                    s["name"].as_str().unwrap(),
                    s["state"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn a_new_cvsh_starts_at_its_installed_version_and_is_then_stable() {
        let s = next_status(&cvsh(None, None), &Knobs::default(), at(0)).unwrap();
        assert_eq!(s["current"]["version"], "4.2.5");
        assert_eq!(cond(&s, "Ready")["status"], "True");
        assert_eq!(cond(&s, "Ready")["reason"], "AsExpected");
        assert_eq!(cond(&s, "Reconciling")["status"], "False");
        assert_eq!(cond(&s, "Stalled")["status"], "False");
        assert_eq!(cond(&s, "PreflightReady")["status"], "True");
        assert_eq!(s["preflight"]["checks"].as_array().unwrap().len(), 13);
        let again = next_status(&cvsh(Some(s.clone()), None), &Knobs::default(), at(5)).unwrap();
        assert_eq!(again, s, "nothing changed, so nothing to write");

        let mut bare = cvsh(None, None);
        bare["metadata"]["annotations"] = json!({});
        assert_eq!(
            next_status(&bare, &Knobs::default(), at(0)),
            Err(Skip::NoInstalledVersion)
        );
    }

    #[test]
    fn an_upgrade_walks_core_then_aligned_extensions_and_records_history() {
        let k = knobs_with(&[], None);
        let mut s = next_status(&cvsh(None, None), &k, at(0)).unwrap();
        let mut seen = Vec::new();
        for t in 1..20 {
            s = next_status(&cvsh(Some(s), Some("4.3.2")), &k, at(t)).unwrap();
            let states = stage_states(&s).join(",");
            if seen.last() != Some(&states) {
                seen.push(states);
            }
        }
        assert_eq!(
            seen,
            [
                "Core=Running,AlignedExtensions=Pending",
                "Core=Completed,AlignedExtensions=Pending",
                "Core=Completed,AlignedExtensions=Running",
                "Core=Completed,AlignedExtensions=Completed",
            ]
        );
        assert_eq!(s["current"]["version"], "4.3.2");
        assert_eq!(cond(&s, "Ready")["status"], "True");
        assert!(
            cond(&s, "Ready")["message"]
                .as_str()
                .unwrap()
                .contains("4.3.2")
        );
        assert_eq!(cond(&s, "Reconciling")["status"], "False");
        let history = s["history"].as_array().unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0]["state"], "Completed");
        assert_eq!(history[0]["startedTime"], time(at(1)));
        assert!(history[0]["completionTime"].is_string());
    }

    #[test]
    fn failed_preflight_blocks_the_start_and_recovers() {
        let blocked = knobs_with(&[("PlatformLicense", "license expired")], None);
        let s0 = next_status(&cvsh(None, None), &Knobs::default(), at(0)).unwrap();
        let s = next_status(&cvsh(Some(s0.clone()), Some("4.3.2")), &blocked, at(1)).unwrap();
        let pf = cond(&s, "PreflightReady");
        assert_eq!(
            (pf["status"].as_str(), pf["reason"].as_str()),
            (Some("False"), Some("PlatformLicense"))
        );
        assert_eq!(pf["message"], "license expired");
        assert_eq!(cond(&s, "Reconciling")["reason"], "PreflightFailed");
        assert_eq!(
            cond(&s, "Ready"),
            cond(&s0, "Ready"),
            "Ready stays as it was"
        );
        assert_eq!(s["desired"]["version"], "4.3.2");
        assert!(s.get("history").is_none() && s.get("stages").is_none());
        assert_ne!(s["preflight"]["observedAt"], s0["preflight"]["observedAt"]);

        let s = next_status(&cvsh(Some(s), Some("4.3.2")), &Knobs::default(), at(2)).unwrap();
        assert_eq!(cond(&s, "PreflightReady")["status"], "True");
        assert_eq!(cond(&s, "Reconciling")["status"], "True");
        assert_eq!(
            cond(&s, "PreflightReady")["lastTransitionTime"],
            time(at(2))
        );
    }

    #[test]
    fn a_stall_fails_aligned_extensions_and_resumes_when_lifted() {
        let stall = knobs_with(
            &[],
            Some(("ExtensionUpgradeFailed", "kube-ovn hook failed")),
        );
        let mut s = next_status(&cvsh(None, None), &stall, at(0)).unwrap();
        for t in 1..10 {
            s = next_status(&cvsh(Some(s), Some("4.3.2")), &stall, at(t)).unwrap();
        }
        assert_eq!(
            stage_states(&s),
            ["Core=Completed", "AlignedExtensions=Failed"]
        );
        let st = cond(&s, "Stalled");
        assert_eq!(st["status"], "True");
        assert_eq!(st["reason"], "ExtensionUpgradeFailed");
        assert_eq!(st["message"], "kube-ovn hook failed");
        assert_eq!(cond(&s, "Reconciling")["status"], "False");
        assert_eq!(s["current"]["version"], "4.2.5");
        assert_eq!(s["history"][0]["state"], "Partial");

        let go = knobs_with(&[], None);
        for t in 10..20 {
            s = next_status(&cvsh(Some(s), Some("4.3.2")), &go, at(t)).unwrap();
        }
        assert_eq!(
            stage_states(&s),
            ["Core=Completed", "AlignedExtensions=Completed"]
        );
        assert_eq!(cond(&s, "Stalled")["status"], "False");
        assert_eq!(s["current"]["version"], "4.3.2");
        assert_eq!(s["history"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn controls_parse_per_cvsh() {
        let data: BTreeMap<String, String> = [
            (
                "fail-preflight.prod-a",
                "PlatformLicense: expired\nClusterRunning: node down\n",
            ),
            ("stall.prod-a", "HookFailed: the hook failed: twice"),
            ("stall.other", "X: y"),
            ("stage-seconds", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (k, problem) = knobs(&data, "prod-a", 1);
        assert!(problem.is_none());
        assert_eq!(k.stage_seconds, 3);
        assert_eq!(
            k.failed_checks,
            [
                ("PlatformLicense".to_string(), "expired".to_string()),
                ("ClusterRunning".to_string(), "node down".to_string()),
            ]
        );
        assert_eq!(
            k.stall,
            Some((
                "HookFailed".to_string(),
                "the hook failed: twice".to_string()
            ))
        );
        let (k, _) = knobs(&data, "prod-b", 1);
        assert!(k.failed_checks.is_empty() && k.stall.is_none());
    }

    #[test]
    fn merge_patch_nulls_removed_keys_and_keeps_equal_ones_out() {
        let old = json!({"a": 1, "b": {"c": 1, "d": 2}, "e": [1]});
        let new = json!({"a": 1, "b": {"c": 3}, "e": [1, 2]});
        assert_eq!(
            merge_patch(&old, &new),
            json!({"b": {"c": 3, "d": null}, "e": [1, 2]})
        );
    }
}
