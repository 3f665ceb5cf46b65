//! Kube-OVN before each control-plane hop (DOMAIN.md §3 "Kube-OVN"; immutable-infra-docs
//! upgrade-cluster/index.mdx "Upgrade Kube-OVN Before the Control Plane"): which hops get a
//! KubeOvn step, and how the cluster's `cni-kube-ovn` AppRelease stands against the step's
//! chart. Pure: the network type and the AppRelease are read by `observe`.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::plan::{Plan, PlanError, Step, StepKind};
use super::{Decision, Stall, StallReason};
use crate::api::{MAX_TIMEOUT, UpgradeRequestSpec, UpgradeRequestStatus};
use crate::capi::Cluster;
use crate::observe::Observed;
use crate::version::ReleaseVersion;
use providers::PlatformFacts;

/// The CAPI Cluster annotation the provider reads the Kube-OVN chart version from.
pub const VERSION_ANNOTATION: &str = "cpaas.io/kube-ovn-version";
/// The Kube-OVN AppRelease on the cluster being upgraded.
pub const RELEASE_NAME: &str = "cni-kube-ovn";
/// Its namespace there (the platform's; configurable for tests like the cvsh namespace).
pub const RELEASE_NAMESPACE: &str = "cpaas-system";
/// Chart names below and from v4.4.
pub const LEGACY_CHART: &str = "acp/chart-cpaas-kube-ovn";
pub const CHART: &str = "acp/chart-kube-ovn";

/// The cluster's network, as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// Not Kube-OVN, or a provider without the platform's Kube-OVN integration (CAPD).
    #[default]
    Other,
    KubeOvn,
    /// It could not be told: the infrastructure cluster is missing or its reference refused.
    Unknown(String),
}

/// The chart the Cluster's annotation asks for today.
pub fn annotated_chart(cluster: &Cluster) -> Option<&str> {
    cluster
        .metadata
        .annotations
        .as_ref()?
        .get(VERSION_ANNOTATION)
        .map(String::as_str)
}

/// The name the chart of `chart`'s version has (DOMAIN.md §3).
pub fn chart_name(chart: &str) -> &'static str {
    match ReleaseVersion::parse(chart) {
        Ok(v) if v.at_least(4, 4) => CHART,
        _ => LEGACY_CHART,
    }
}

/// `plan` with a KubeOvn step before each ControlPlane step whose row's chart differs from
/// the chart in effect then: the annotation's today, then each earlier KubeOvn step's. So
/// re-planning after a KubeOvn step (the annotation moved) gives the rest of the plan.
pub fn with_kube_ovn(plan: Plan, annotation: Option<&str>) -> Result<Plan, PlanError> {
    let mut in_effect = annotation.map(str::to_string);
    let mut steps = Vec::with_capacity(plan.steps.len() * 2);
    for step in plan.steps {
        if step.kind == StepKind::ControlPlane {
            let Some(chart) = step.row.kube_ovn_chart.clone() else {
                return Err(PlanError::MissingKubeOvnChart {
                    row: step.row.distribution_version.clone(),
                });
            };
            if in_effect.as_deref() != Some(chart.as_str()) {
                steps.push(Step {
                    kind: StepKind::KubeOvn,
                    row: step.row.clone(),
                    os_image: String::new(),
                    pools: Vec::new(),
                    kube_ovn_chart: Some(chart.clone()),
                });
                in_effect = Some(chart);
            }
        }
        steps.push(step);
    }
    Ok(Plan {
        target_row: plan.target_row,
        steps,
    })
}

/// The provider's AppReleases among `releases`: those with a chart whose name ends in
/// `suffix` (`chart-cluster-api-provider-dcs`), each with that chart entry.
pub fn provider_releases<'a>(releases: &'a [Value], suffix: &str) -> Vec<(&'a Value, &'a Value)> {
    releases
        .iter()
        .filter_map(|r| {
            r["spec"]["source"]["charts"]
                .as_array()?
                .iter()
                .find(|c| c["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
                .map(|c| (r, c))
        })
        .collect()
}

/// The provider release installed, when exactly one AppRelease installs the provider and it
/// is at its requested revision with phase `Success` (what `ProviderReady` requires).
pub fn installed_provider(releases: &[Value], facts: &PlatformFacts) -> Option<ReleaseVersion> {
    let [(release, chart)] = provider_releases(releases, facts.provider_chart)[..] else {
        return None;
    };
    let status = chart_status(release, chart["name"].as_str().unwrap_or_default())?;
    let installed = status["installedRevision"].as_str()?;
    (chart["targetRevision"].as_str() == Some(installed) && status["phase"] == "Success")
        .then(|| ReleaseVersion::parse(installed).ok())
        .flatten()
}

/// Whether moving to `chart` also needs the legacy patch of the AppRelease's
/// `/spec/source/charts/0/targetRevision` (DOMAIN.md §3): a DCS (≤ v1.0.21) or HCS
/// (≤ v1.0.3) provider below its full-source release keeps the source, for charts below v4.4
/// (from v4.4 `ProviderReady` requires the full-source provider).
pub fn needs_revision_patch(
    facts: &PlatformFacts,
    installed: &ReleaseVersion,
    chart: &str,
) -> bool {
    let full_source = ReleaseVersion::parse(facts.full_source_from).ok();
    facts.legacy_needs_revision_patch
        && full_source.is_some_and(|f| *installed < f)
        && ReleaseVersion::parse(chart).is_ok_and(|c| !c.at_least(4, 4))
}

/// How the AppRelease stands against a chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// `targetRevision` and `installedRevision` are the chart, phase `Success`, `Sync` and
    /// `Health` True, and the chart's name is the one of its version.
    Done,
    /// What is not there yet.
    Waiting(Vec<String>),
    /// `DownloadFailed`, `DeployFailed` or `NotReady`: the phase and the AppRelease's messages.
    Failed(String),
}

/// The phases that stop the upgrade (DOMAIN.md §3).
const FAILED_PHASES: &[&str] = &["DownloadFailed", "DeployFailed", "NotReady"];

/// The status entry of chart `name`: `status.charts` as a list of entries (with `name`) or as
/// a map keyed by chart name (the platform's docs read it as `.status.charts.*`); a single
/// entry is taken whatever its key.
pub(crate) fn chart_status<'a>(release: &'a Value, name: &str) -> Option<&'a Value> {
    let charts = &release["status"]["charts"];
    let entries: Vec<(&str, &Value)> = match charts {
        Value::Array(a) => a
            .iter()
            .map(|e| (e["name"].as_str().unwrap_or_default(), e))
            .collect(),
        Value::Object(m) => m.iter().map(|(k, e)| (k.as_str(), e)).collect(),
        _ => return None,
    };
    entries
        .iter()
        .find(|(n, e)| *n == name || e["name"].as_str() == Some(name))
        .or_else(|| (entries.len() == 1).then(|| &entries[0]))
        .map(|(_, e)| *e)
}

fn condition<'a>(release: &'a Value, type_: &str) -> Option<&'a Value> {
    release["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The AppRelease's own words: every condition and chart message, for a failure.
fn messages(release: &Value, chart: Option<&Value>) -> String {
    let mut out = Vec::new();
    if let Some(m) = chart
        .and_then(|c| c["message"].as_str())
        .filter(|m| !m.is_empty())
    {
        out.push(m.to_string());
    }
    for c in release["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(m) = c["message"].as_str().filter(|m| !m.is_empty()) {
            out.push(format!(
                "{} {} ({}): {m}",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("")
            ));
        }
    }
    if out.is_empty() {
        "no message".into()
    } else {
        out.join("; ")
    }
}

/// How AppRelease `release` stands against chart version `chart`.
pub fn release_state(release: &Value, chart: &str) -> Release {
    let source = &release["spec"]["source"]["charts"][0];
    let name = source["name"].as_str().unwrap_or_default();
    let target = source["targetRevision"].as_str().unwrap_or_default();
    let status = chart_status(release, name);
    let phase = status.and_then(|s| s["phase"].as_str()).unwrap_or_default();
    let installed = status
        .and_then(|s| s["installedRevision"].as_str())
        .unwrap_or_default();
    // A failure of the requested chart stops the upgrade; one of an older request that the
    // provider has not replaced yet is waited out.
    if target == chart && FAILED_PHASES.contains(&phase) {
        return Release::Failed(format!(
            "chart {name} {chart} is in phase {phase}: {}",
            messages(release, status)
        ));
    }
    let mut waiting = Vec::new();
    if target != chart {
        waiting.push(format!(
            "spec.source.charts[0].targetRevision is {target:?}, not {chart:?} yet"
        ));
    }
    let want_name = chart_name(chart);
    if !name.is_empty() && target == chart && name != want_name {
        waiting.push(format!(
            "spec.source.charts[0].name is {name:?}, not {want_name:?} (the chart name of {chart})"
        ));
    }
    if installed != chart {
        waiting.push(format!("installedRevision is {installed:?}"));
    }
    if phase != "Success" {
        waiting.push(format!(
            "phase is {:?}",
            if phase.is_empty() {
                "unreported"
            } else {
                phase
            }
        ));
    }
    for type_ in ["Sync", "Health"] {
        let status = condition(release, type_)
            .and_then(|c| c["status"].as_str())
            .unwrap_or("unreported");
        if status != "True" {
            waiting.push(format!("condition {type_} is {status}"));
        }
    }
    if waiting.is_empty() {
        Release::Done
    } else {
        Release::Waiting(waiting)
    }
}

/// KubeOvn step `index` is running: the annotation must stay at the chart, and the
/// AppRelease must reach it.
pub(super) fn in_progress(
    spec: &UpgradeRequestSpec,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    cluster: &Cluster,
    index: usize,
    now: Timestamp,
) -> Decision {
    let step = &status.plan[index];
    let number = index + 1;
    let chart = step.kube_ovn_chart.as_deref().unwrap_or_default();
    let where_ = format!("AppRelease {RELEASE_NAMESPACE}/{RELEASE_NAME} of the workload cluster");
    let annotated = annotated_chart(cluster);
    if annotated != Some(chart) {
        return Decision::Stall(Stall::new(
            StallReason::ClusterChangedOutside,
            format!(
                "Cluster {} annotation {VERSION_ANNOTATION} was changed to {annotated:?} while step {number} runs (it must stay {chart:?}); restore {chart:?} and the step continues",
                spec.cluster_name
            ),
        ));
    }
    let pending = match &obs.kube_ovn_release {
        None => vec![format!("{where_} to be read")],
        Some(Err(why)) => vec![format!("{where_}: {why}")],
        Some(Ok(None)) => vec![format!("{where_} to exist")],
        Some(Ok(Some(release))) => match release_state(release, chart) {
            Release::Done => return Decision::StepDone { index },
            Release::Failed(why) => {
                return Decision::Stall(Stall::new(
                    StallReason::KubeOvnFailed,
                    format!(
                        "step {number}: {where_}: {why}; fix the chart's installation (kubectl describe apprelease {RELEASE_NAME} -n {RELEASE_NAMESPACE} on the workload cluster), and once it reports Success the step continues"
                    ),
                ));
            }
            Release::Waiting(w) => w.into_iter().map(|w| format!("{where_}: {w}")).collect(),
        },
    };
    let timeout = spec.timeouts.control_plane.get().unwrap_or(MAX_TIMEOUT);
    let since = step.started_at.as_ref().map_or(now, |t| t.0);
    let elapsed = std::time::Duration::try_from(now.duration_since(since)).unwrap_or_default();
    if elapsed > timeout {
        return Decision::Stall(Stall::new(
            StallReason::RolloutTimeout,
            format!(
                "step {number} (KubeOvn to chart {chart}) has not finished after {}s (timeout {}s, spec.timeouts.controlPlane): {}",
                elapsed.as_secs(),
                timeout.as_secs(),
                pending.join("; ")
            ),
        ));
    }
    Decision::Wait {
        index,
        recheck: SignedDuration::from_secs(5),
        waiting_for: pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MatrixRow;
    use crate::decide::plan::{CurrentVersions, PlanInput, PoolVersion, apply_step, plan};
    use serde_json::json;

    fn sample_rows() -> Vec<MatrixRow> {
        let text = include_str!("../../../config/samples/os-support-matrix.yaml");
        let doc: Value = serde_yaml_ng::from_str(text).unwrap();
        serde_json::from_value(doc["spec"]["rows"].clone()).unwrap()
    }

    fn render(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .map(|s| match s.kind {
                StepKind::KubeOvn => format!("OVN {}", s.kube_ovn_chart.as_deref().unwrap()),
                StepKind::ControlPlane => format!("CP {}", s.row.kubernetes_version),
                StepKind::Workers => format!("W {}", s.row.kubernetes_version),
            })
            .collect()
    }

    fn from_4_1_6() -> (Vec<MatrixRow>, CurrentVersions) {
        let current = CurrentVersions {
            control_plane: "v1.32.11-2".into(),
            pools: vec![PoolVersion {
                name: "md-a".into(),
                version: "v1.32.11-2".into(),
            }],
        };
        (sample_rows(), current)
    }

    fn input(rows: &[MatrixRow]) -> PlanInput<'_> {
        PlanInput {
            rows,
            target: "4.3",
            strategy: crate::api::WorkerStrategy::EveryHop,
            image_key: providers::ImageKey::Dcs,
        }
    }

    #[test]
    fn every_control_plane_hop_is_preceded_by_its_rows_chart() {
        let (rows, current) = from_4_1_6();
        let hops = plan(input(&rows), &current).unwrap();
        let p = with_kube_ovn(hops.clone(), Some("v4.1.32")).unwrap();
        assert_eq!(
            render(&p),
            [
                "OVN v4.2.33",
                "CP v1.33.7-4",
                "W v1.33.7-4",
                "OVN v4.3.11",
                "CP v1.34.5-3",
                "W v1.34.5-3",
            ]
        );
        // The chart step carries the hop's row, and no image.
        assert_eq!(p.steps[0].row.distribution_version, "4.2.5");
        assert_eq!(p.steps[0].os_image, "");
        // No annotation yet: the first hop still moves the chart.
        assert_eq!(
            render(&with_kube_ovn(hops.clone(), None).unwrap())[0],
            "OVN v4.2.33"
        );
        // The annotation already at the first hop's chart: no step for it.
        assert_eq!(
            render(&with_kube_ovn(hops, Some("v4.2.33")).unwrap()),
            [
                "CP v1.33.7-4",
                "W v1.33.7-4",
                "OVN v4.3.11",
                "CP v1.34.5-3",
                "W v1.34.5-3"
            ]
        );
    }

    #[test]
    fn replanning_after_each_step_gives_the_rest_of_the_plan() {
        let (rows, mut current) = from_4_1_6();
        let mut annotation = Some("v4.1.32".to_string());
        let full =
            with_kube_ovn(plan(input(&rows), &current).unwrap(), annotation.as_deref()).unwrap();
        for (i, step) in full.steps.iter().enumerate() {
            if step.kind == StepKind::KubeOvn {
                annotation = step.kube_ovn_chart.clone();
            }
            current = apply_step(&current, step);
            let rest = with_kube_ovn(plan(input(&rows), &current).unwrap(), annotation.as_deref())
                .unwrap();
            assert_eq!(rest.steps, full.steps[i + 1..], "after step {}", i + 1);
        }
    }

    #[test]
    fn a_row_without_a_chart_is_refused_for_a_kube_ovn_cluster() {
        let (mut rows, current) = from_4_1_6();
        for r in &mut rows {
            if r.distribution_version == "4.3.2" {
                r.kube_ovn_chart = None;
            }
        }
        let err = with_kube_ovn(plan(input(&rows), &current).unwrap(), None).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingKubeOvnChart {
                row: "4.3.2".into()
            }
        );
        assert!(err.to_string().contains("no kubeOvnChart"), "{err}");
    }

    /// `cni-kube-ovn` as the platform shows it (immutable-infra-docs upgrade-cluster, "Verify
    /// the Kube-OVN AppRelease"): `spec.source.charts[0]`, `status.charts.*`, conditions.
    fn release(target: &str, installed: &str, phase: &str, sync: &str, health: &str) -> Value {
        json!({
            "apiVersion": "operator.alauda.io/v1alpha1", "kind": "AppRelease",
            "metadata": {"name": "cni-kube-ovn", "namespace": "cpaas-system"},
            "spec": {"source": {"charts": [{"name": chart_name(target), "releaseName": "kube-ovn",
                "targetRevision": target}], "repoURL": "registry.example:5000"}},
            "status": {
                "charts": {chart_name(target): {"installedRevision": installed, "phase": phase}},
                "conditions": [
                    {"type": "Sync", "status": sync, "reason": "Synced"},
                    {"type": "Health", "status": health, "reason": if health == "True" {"Healthy"} else {"Progressing"},
                     "message": if health == "True" {""} else {"kube-ovn-controller 1/3 ready"}},
                ],
            },
        })
    }

    #[test]
    fn only_success_with_both_revisions_and_conditions_is_done() {
        let chart = "v4.3.11";
        assert_eq!(
            release_state(&release(chart, chart, "Success", "True", "True"), chart),
            Release::Done
        );
        // The normal sequence: requested, Upgrading, HealthChecking (installedRevision
        // already moved: not enough), Success.
        for (r, waits_for) in [
            (
                release("v4.2.33", "v4.2.33", "Success", "True", "True"),
                "targetRevision",
            ),
            (
                release(chart, "v4.2.33", "Upgrading", "False", "True"),
                "installedRevision",
            ),
            (
                release(chart, chart, "HealthChecking", "True", "False"),
                "phase is \"HealthChecking\"",
            ),
            (
                release(chart, chart, "Success", "True", "False"),
                "condition Health is False",
            ),
            (
                release(chart, chart, "Success", "Unknown", "True"),
                "condition Sync is Unknown",
            ),
        ] {
            match release_state(&r, chart) {
                Release::Waiting(w) => {
                    assert!(
                        w.iter().any(|w| w.contains(waits_for)),
                        "{w:?} lacks {waits_for}"
                    )
                }
                other => panic!("{other:?} for {r}"),
            }
        }
    }

    #[test]
    fn a_failed_phase_stops_with_the_apprelease_message() {
        let chart = "v4.3.11";
        for phase in ["DownloadFailed", "DeployFailed", "NotReady"] {
            let mut r = release(chart, "v4.2.33", phase, "False", "False");
            r["status"]["conditions"][0]["message"] =
                json!("helm upgrade failed: timed out waiting for the condition");
            let Release::Failed(why) = release_state(&r, chart) else {
                panic!("{phase} must fail");
            };
            assert!(why.contains(phase), "{why}");
            assert!(why.contains("helm upgrade failed: timed out"), "{why}");
        }
        // A failure of the chart requested before is not this step's: wait for the provider.
        let old = release("v4.2.33", "v4.2.33", "DeployFailed", "False", "False");
        assert!(matches!(release_state(&old, chart), Release::Waiting(_)));
    }

    #[test]
    fn only_legacy_dcs_and_hcs_below_v4_4_need_the_revision_patch() {
        let facts = |kind: &str| {
            providers::for_template_kind(kind)
                .unwrap()
                .platform_facts()
                .unwrap()
        };
        let v = |s| ReleaseVersion::parse(s).unwrap();
        let dcs = facts("DCSMachineTemplate");
        assert!(needs_revision_patch(&dcs, &v("v1.0.21"), "v4.3.11"));
        assert!(!needs_revision_patch(&dcs, &v("v1.0.22"), "v4.3.11"));
        assert!(!needs_revision_patch(&dcs, &v("v1.0.21"), "v4.4.1"));
        let hcs = facts("HCSMachineTemplate");
        assert!(needs_revision_patch(&hcs, &v("v1.0.3"), "v4.2.33"));
        assert!(!needs_revision_patch(&hcs, &v("v1.0.4"), "v4.2.33"));
        // Legacy vSphere needs the annotation only.
        let vsphere = facts("VSphereMachineTemplate");
        assert!(!needs_revision_patch(&vsphere, &v("v1.0.15"), "v4.3.11"));
    }

    #[test]
    fn status_charts_may_be_a_list_and_the_chart_name_follows_the_v4_4_boundary() {
        let chart = "v4.4.1";
        let mut r = release(chart, chart, "Success", "True", "True");
        r["status"]["charts"] =
            json!([{"name": "acp/chart-kube-ovn", "installedRevision": chart, "phase": "Success"}]);
        assert_eq!(release_state(&r, chart), Release::Done);
        r["spec"]["source"]["charts"][0]["name"] = json!("acp/chart-cpaas-kube-ovn");
        match release_state(&r, chart) {
            Release::Waiting(w) => assert!(w[0].contains("acp/chart-kube-ovn"), "{w:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(chart_name("v4.3.11"), LEGACY_CHART);
        assert_eq!(chart_name("v4.4.1"), CHART);
    }
}
