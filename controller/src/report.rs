//! `upgrade-controller status`: one UpgradeRequest as an operator reads it during an upgrade
//! (what `oc adm upgrade status` gives): a summary with an estimate of the time left, the
//! preflight table, the steps, and the running step's Machines not yet updated with their
//! node's state. Pure: the request, the cluster's Machines and `now` are passed in.

use std::fmt::Write as _;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::api::{PlanStep, PlanStepKind, StepState, UpgradeRequest};
use crate::capi::{self, Machine};

/// What `status` prints (`-o json` prints this).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub request: String,
    pub cluster: String,
    /// What the cluster declared when planned (`Kubernetes v1.31.14-2 (pools: md-a v1.31.14-2)`).
    pub current: Option<String>,
    pub target: Option<String>,
    pub phase: Option<String>,
    /// `Ready` condition: status, reason, message.
    pub ready: Option<(String, String, String)>,
    /// `3/6`.
    pub progress: Option<String>,
    pub step: Option<RunningStep>,
    /// Seconds since Phase 1 was asked for (or the first step started), to the end or now.
    pub elapsed_seconds: Option<i64>,
    /// Seconds left by the finished steps' average duration per kind; `None` before any step
    /// finished, or when finished.
    pub estimated_seconds_left: Option<i64>,
    pub preflight: Option<Preflight>,
    pub steps: Vec<PlanStep>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunningStep {
    /// 1-based.
    pub number: usize,
    pub kind: PlanStepKind,
    pub kubernetes_version: String,
    pub state: StepState,
    pub running_seconds: Option<i64>,
    pub message: Option<String>,
    /// The step's Machines not yet at its version with a healthy node.
    pub machines_pending: Vec<PendingMachine>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingMachine {
    pub name: String,
    /// `KubeadmControlPlane x` or `MachineDeployment y`.
    pub owner: String,
    pub version: String,
    pub node: Option<String>,
    /// `Healthy`, or the NodeHealthy condition's reason (`NodeProvisioning`, ...).
    pub node_state: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Preflight {
    pub scope: String,
    pub observed_at: Timestamp,
    pub checks: Vec<(String, String, String)>,
}

fn seconds(d: SignedDuration) -> i64 {
    d.as_secs().max(0)
}

fn duration_of(s: &PlanStep) -> Option<SignedDuration> {
    Some(
        s.finished_at
            .as_ref()?
            .0
            .duration_since(s.started_at.as_ref()?.0),
    )
}

/// The Machines of `step` not yet at its version with a healthy node.
fn pending_machines(step: &PlanStep, machines: &[Machine]) -> Vec<PendingMachine> {
    let mut out = Vec::new();
    for m in machines {
        let owner = match step.kind {
            // A chart step moves no Machine.
            PlanStepKind::KubeOvn => None,
            PlanStepKind::ControlPlane => m
                .label(capi::CONTROL_PLANE_NAME_LABEL)
                .map(|k| format!("KubeadmControlPlane {k}")),
            PlanStepKind::Workers => m
                .label(capi::DEPLOYMENT_NAME_LABEL)
                .filter(|d| step.pools.iter().any(|p| p == d))
                .map(|d| format!("MachineDeployment {d}")),
        };
        let Some(owner) = owner else { continue };
        if m.version() == step.kubernetes_version && m.node_healthy() {
            continue;
        }
        let node_state = if m.node_healthy() {
            "Healthy".to_string()
        } else {
            m.status
                .conditions
                .iter()
                .find(|c| c.type_ == "NodeHealthy")
                .map(|c| {
                    c.reason
                        .clone()
                        .unwrap_or_else(|| format!("NodeHealthy={}", c.status))
                })
                .unwrap_or_else(|| "no node yet".into())
        };
        out.push(PendingMachine {
            name: capi::name(&m.metadata).to_string(),
            owner,
            version: m.version().to_string(),
            node: m.status.node_ref.as_ref().map(|n| n.name.clone()),
            node_state,
        });
    }
    out.sort_by(|a, b| (&a.owner, &a.name).cmp(&(&b.owner, &b.name)));
    out
}

/// The report of `ur` at `now`, with `machines` the Cluster's Machines.
pub fn report(ur: &UpgradeRequest, machines: &[Machine], now: Timestamp) -> Report {
    let status = ur.status.clone().unwrap_or_default();
    let plan = &status.plan;
    let start = status
        .aligned_extensions
        .as_ref()
        .and_then(|e| e.requested_at.as_ref().map(|t| t.0))
        .or_else(|| {
            plan.iter()
                .filter_map(|s| s.started_at.as_ref().map(|t| t.0))
                .min()
        });
    let finished = plan.iter().all(|s| s.state == StepState::Succeeded) && !plan.is_empty();
    let end = if finished {
        plan.iter()
            .filter_map(|s| s.finished_at.as_ref().map(|t| t.0))
            .max()
    } else {
        Some(now)
    };
    let elapsed_seconds = start.zip(end).map(|(s, e)| seconds(e.duration_since(s)));

    // The time left: each unfinished step at the average of its kind's finished ones (the
    // other kind's when none of its own finished), less what the running one has run.
    let average = |kind: PlanStepKind| -> Option<SignedDuration> {
        let done: Vec<SignedDuration> = plan
            .iter()
            .filter(|s| s.kind == kind && s.state == StepState::Succeeded)
            .filter_map(duration_of)
            .collect();
        let n = i32::try_from(done.len()).ok().filter(|n| *n > 0)?;
        let total = done
            .iter()
            .fold(SignedDuration::ZERO, |a, d| a.saturating_add(*d));
        Some(total / n)
    };
    let estimated_seconds_left = if finished {
        None
    } else {
        let (ovn, cp, workers) = (
            average(PlanStepKind::KubeOvn),
            average(PlanStepKind::ControlPlane),
            average(PlanStepKind::Workers),
        );
        let mut left = Some(SignedDuration::ZERO);
        for s in plan.iter().filter(|s| s.state != StepState::Succeeded) {
            let each = match s.kind {
                // A chart step takes about as long as the last one, else no time is guessed
                // for it (it moves no Machine).
                PlanStepKind::KubeOvn => ovn.or(Some(SignedDuration::ZERO)),
                PlanStepKind::ControlPlane => cp.or(workers),
                PlanStepKind::Workers => workers.or(cp),
            };
            let ran = match (&s.state, &s.started_at) {
                (StepState::InProgress, Some(t)) => now.duration_since(t.0),
                _ => SignedDuration::ZERO,
            };
            left = left
                .zip(each)
                .map(|(l, e)| l.saturating_add((e - ran).max(SignedDuration::ZERO)));
        }
        left.map(seconds)
    };

    let step = plan
        .iter()
        .find(|s| s.state != StepState::Succeeded)
        .map(|s| RunningStep {
            number: s.index as usize + 1,
            kind: s.kind,
            kubernetes_version: s.kubernetes_version.clone(),
            state: s.state,
            running_seconds: s
                .started_at
                .as_ref()
                .filter(|_| s.state == StepState::InProgress)
                .map(|t| seconds(now.duration_since(t.0))),
            message: s.message.clone(),
            machines_pending: if s.state == StepState::InProgress {
                pending_machines(s, machines)
            } else {
                Vec::new()
            },
        });
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let versions = |dv: &str, k8s: &str| format!("{dv} (Kubernetes {k8s})");
    Report {
        request: format!(
            "{}/{}",
            ur.metadata.namespace.as_deref().unwrap_or_default(),
            ur.metadata.name.as_deref().unwrap_or_default()
        ),
        cluster: ur.spec.cluster_name.clone(),
        current: status.current.as_ref().map(|c| {
            let pools: Vec<String> = c
                .pools
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect();
            if pools.is_empty() {
                format!("Kubernetes {}", c.control_plane)
            } else {
                format!(
                    "Kubernetes {} (pools: {})",
                    c.control_plane,
                    pools.join(", ")
                )
            }
        }),
        target: status
            .target
            .as_ref()
            .map(|t| versions(&t.distribution_version, &t.kubernetes_version)),
        phase: status.phase.map(|p| format!("{p:?}")),
        ready: condition("Ready"),
        progress: status.progress.clone(),
        step,
        elapsed_seconds,
        estimated_seconds_left,
        preflight: status.preflight.as_ref().map(|p| Preflight {
            scope: p.scope.clone(),
            observed_at: p.observed_at.0,
            checks: p
                .checks
                .iter()
                .map(|c| {
                    (
                        format!("{:?}", c.name),
                        format!("{:?}", c.state),
                        c.message.clone(),
                    )
                })
                .collect(),
        }),
        steps: plan.clone(),
    }
}

/// `1h2m3s`-style, or `-`.
fn human(secs: Option<i64>) -> String {
    let Some(s) = secs else { return "-".into() };
    let (h, m, s) = (s / 3600, s % 3600 / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m"),
    }
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// The report as text.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "UpgradeRequest {} for Cluster {}",
        r.request, r.cluster
    );
    let _ = writeln!(
        out,
        "  {} -> {}",
        r.current.as_deref().unwrap_or("(not planned yet)"),
        r.target.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "  phase {}, step {}, elapsed {}, estimated time left {}",
        r.phase.as_deref().unwrap_or("-"),
        r.progress.as_deref().unwrap_or("-"),
        human(r.elapsed_seconds),
        if r.estimated_seconds_left.is_some() {
            human(r.estimated_seconds_left)
        } else {
            "unknown (no step finished yet)".into()
        }
    );
    if let Some((status, reason, message)) = &r.ready {
        let _ = writeln!(out, "  Ready={status} {reason}: {message}");
    }
    if let Some(p) = &r.preflight {
        let _ = writeln!(out, "\nPREFLIGHT ({}, observed {})", p.scope, p.observed_at);
        let rows: Vec<Vec<String>> = p
            .checks
            .iter()
            .map(|(n, s, m)| vec![n.clone(), s.clone(), m.clone()])
            .collect();
        table(&mut out, &["CHECK", "STATE", "MESSAGE"], &rows);
    }
    if !r.steps.is_empty() {
        let _ = writeln!(out, "\nSTEPS");
        let rows: Vec<Vec<String>> = r
            .steps
            .iter()
            .map(|s| {
                vec![
                    (s.index + 1).to_string(),
                    format!("{:?}", s.kind),
                    s.kubernetes_version.clone(),
                    s.distribution_version.clone(),
                    format!("{:?}", s.state),
                    human(duration_of(s).map(seconds)),
                    s.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "STEP",
                "KIND",
                "KUBERNETES",
                "DISTRIBUTION",
                "STATE",
                "TOOK",
                "MESSAGE",
            ],
            &rows,
        );
    }
    if let Some(s) = &r.step
        && s.state == StepState::InProgress
    {
        let _ = writeln!(
            out,
            "\nSTEP {} ({:?} to {}), running {}: MACHINES NOT YET UPDATED",
            s.number,
            s.kind,
            s.kubernetes_version,
            human(s.running_seconds)
        );
        if s.machines_pending.is_empty() {
            let _ = writeln!(
                out,
                "(none: every machine is at the version with a healthy node)"
            );
        } else {
            let rows: Vec<Vec<String>> = s
                .machines_pending
                .iter()
                .map(|m| {
                    vec![
                        m.name.clone(),
                        m.owner.clone(),
                        m.version.clone(),
                        m.node.clone().unwrap_or_else(|| "-".into()),
                        m.node_state.clone(),
                    ]
                })
                .collect();
            table(
                &mut out,
                &["MACHINE", "OWNER", "VERSION", "NODE", "NODE STATE"],
                &rows,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn request() -> UpgradeRequest {
        let step =
            |i: u32, kind: &str, k8s: &str, state: &str, times: (Option<&str>, Option<&str>)| {
                let mut s = json!({"index": i, "kind": kind, "distributionVersion": "4.x",
                "kubernetesVersion": k8s, "osImage": "img", "state": state,
                "pools": if kind == "Workers" { json!(["md-a"]) } else { json!([]) }});
                if let Some(t) = times.0 {
                    s["startedAt"] = json!(t);
                }
                if let Some(t) = times.1 {
                    s["finishedAt"] = json!(t);
                }
                s
            };
        serde_json::from_value(json!({
            "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
            "metadata": {"name": "to-4-3", "namespace": "team-a"},
            "spec": {"clusterName": "prod-a", "targetVersion": "4.3"},
            "status": {
                "phase": "Upgrading", "progress": "2/4",
                "current": {"controlPlane": "v1.31.14-2", "pools": [{"name": "md-a", "version": "v1.31.14-2"}]},
                "target": {"distributionVersion": "4.3.2", "kubernetesVersion": "v1.33.7-4"},
                "alignedExtensions": {"requestedAt": "2026-12-02T10:00:00Z"},
                "conditions": [{"type": "Ready", "status": "False", "reason": "Upgrading", "message": "step 3/4",
                    "lastTransitionTime": "2026-12-02T10:00:00Z"}],
                "plan": [
                    step(0, "ControlPlane", "v1.32.11-2", "Succeeded", (Some("2026-12-02T10:05:00Z"), Some("2026-12-02T10:15:00Z"))),
                    step(1, "Workers", "v1.32.11-2", "Succeeded", (Some("2026-12-02T10:15:00Z"), Some("2026-12-02T10:35:00Z"))),
                    step(2, "ControlPlane", "v1.33.7-4", "InProgress", (Some("2026-12-02T10:35:00Z"), None)),
                    step(3, "Workers", "v1.33.7-4", "Pending", (None, None)),
                ],
            },
        }))
        .unwrap()
    }

    fn machine(name: &str, cp: bool, version: &str, healthy: Option<bool>) -> Machine {
        let label = if cp {
            json!({"cluster.x-k8s.io/control-plane-name": "prod-a-cp"})
        } else {
            json!({"cluster.x-k8s.io/deployment-name": "md-a"})
        };
        let mut m =
            json!({"metadata": {"name": name, "labels": label}, "spec": {"version": version}});
        if let Some(h) = healthy {
            m["status"] = json!({"nodeRef": {"name": format!("node-{name}")}, "conditions": [
                if h { json!({"type": "NodeHealthy", "status": "True"}) }
                else { json!({"type": "NodeHealthy", "status": "False", "reason": "NodeProvisioning"}) }]});
        }
        serde_json::from_value(m).unwrap()
    }

    #[test]
    fn the_time_left_comes_from_the_finished_steps_and_the_pending_machines_are_named() {
        let machines = [
            machine("cp-new", true, "v1.33.7-4", Some(true)),
            machine("cp-newer", true, "v1.33.7-4", Some(false)),
            machine("cp-old", true, "v1.32.11-2", Some(true)),
            machine("cp-none", true, "v1.33.7-4", None),
            machine("w-1", false, "v1.32.11-2", Some(true)),
        ];
        let r = report(&request(), &machines, at("2026-12-02T10:39:00Z"));
        assert_eq!(r.elapsed_seconds, Some(39 * 60));
        // The running control plane has run 4 of its average 10 minutes; the pool step takes
        // the workers' average 20.
        assert_eq!(r.estimated_seconds_left, Some((6 + 20) * 60));
        let step = r.step.as_ref().unwrap();
        assert_eq!((step.number, step.running_seconds), (3, Some(240)));
        let pending: Vec<(&str, &str)> = step
            .machines_pending
            .iter()
            .map(|m| (m.name.as_str(), m.node_state.as_str()))
            .collect();
        assert_eq!(
            pending,
            [
                ("cp-newer", "NodeProvisioning"),
                ("cp-none", "no node yet"),
                ("cp-old", "Healthy")
            ]
        );
        assert_eq!(
            r.current.as_deref(),
            Some("Kubernetes v1.31.14-2 (pools: md-a v1.31.14-2)")
        );
        let text = text(&r);
        for line in [
            "UpgradeRequest team-a/to-4-3 for Cluster prod-a",
            "phase Upgrading, step 2/4, elapsed 39m00s, estimated time left 26m00s",
            "STEP 3 (ControlPlane to v1.33.7-4), running 4m00s: MACHINES NOT YET UPDATED",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("cp-newer "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            [
                "cp-newer",
                "KubeadmControlPlane",
                "prod-a-cp",
                "v1.33.7-4",
                "node-cp-newer",
                "NodeProvisioning"
            ]
        );
    }

    #[test]
    fn before_any_step_finished_the_estimate_is_unknown_and_when_done_none() {
        let mut ur = request();
        let s = ur.status.as_mut().unwrap();
        for step in &mut s.plan {
            step.state = StepState::Pending;
            step.started_at = None;
            step.finished_at = None;
        }
        let r = report(&ur, &[], at("2026-12-02T10:01:00Z"));
        assert_eq!(
            (r.estimated_seconds_left, r.elapsed_seconds),
            (None, Some(60))
        );
        assert!(text(&r).contains("estimated time left unknown (no step finished yet)"));
        let s = ur.status.as_mut().unwrap();
        for step in &mut s.plan {
            step.state = StepState::Succeeded;
            step.started_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(
                "2026-12-02T10:05:00Z",
            )));
            step.finished_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(
                "2026-12-02T11:00:00Z",
            )));
        }
        let r = report(&ur, &[], at("2026-12-02T15:00:00Z"));
        assert_eq!(
            r.elapsed_seconds,
            Some(3600),
            "to the last step's end, not now"
        );
        assert_eq!(r.estimated_seconds_left, None);
    }
}
