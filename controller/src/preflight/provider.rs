//! ProviderReady: the infrastructure provider, as its AppRelease on the management cluster
//! reports it (DOMAIN.md §3 "Provider version"; immutable-infra-docs upgrade-cluster/index.mdx
//! "Identify the Installed Provider Version"), is fit for the hops that remain:
//! - installed at the requested revision, phase `Success`;
//! - at or above its full-source release when the target row's Kube-OVN chart is ≥ v4.4;
//! - (a legacy DCS/HCS release is named: its Kube-OVN steps also JSON-patch the workload
//!   AppRelease's `targetRevision`, see `apply::kube_ovn`);
//! - DCS pairing (DOMAIN.md §1): images of ACP ≥ 4.3.2 need provider ≥ v1.0.21 and the
//!   reverse, for the hop this preflight is for (each hop's preflight checks its own; a
//!   cross-boundary upgrade needs the provider upgraded between hops, which the message says).

use serde_json::Value;

use super::{Input, Scope, check, passed};
use crate::api::{CheckName, CheckState, PlanStepKind, PreflightCheck, StepState};
use crate::decide::kube_ovn::{chart_status, provider_releases};
use crate::version::{DistributionVersion, ReleaseVersion};

/// DCS pairing rule (DOMAIN.md §1): images of ACP ≥ 4.3.2 go with provider ≥ v1.0.21.
const DCS_PAIRING_ACP: (u64, u64, u64) = (4, 3, 2);
const DCS_PAIRING_PROVIDER: &str = "v1.0.21";

fn where_(release: &Value) -> String {
    format!(
        "AppRelease {}/{}",
        release["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default(),
        release["metadata"]["name"].as_str().unwrap_or_default()
    )
}

pub(super) fn provider_ready(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::ProviderReady;
    let provider = i
        .kcp
        .infrastructure_ref()
        .and_then(|r| providers::for_template_kind(&r.kind).ok());
    let Some((provider, facts)) = provider.and_then(|p| Some((p, p.platform_facts()?))) else {
        return passed(
            name,
            "the cluster's infrastructure provider is not installed by the platform (no provider AppRelease to check)",
        );
    };
    let releases = match &i.obs.provider_releases {
        Ok(r) => r,
        Err(why) => return check(name, CheckState::Unknown, "ProviderReleaseUnreadable", why),
    };
    let found = provider_releases(releases, facts.provider_chart);
    let Some(&(release, chart)) = found.first() else {
        return check(
            name,
            CheckState::Failed,
            "ProviderReleaseNotFound",
            format!(
                "no AppRelease of the management cluster's platform namespace installs a chart ending in {}; install the {} provider as the platform's docs say (its AppRelease is how its version is known)",
                facts.provider_chart,
                provider.name()
            ),
        );
    };
    if found.len() > 1 {
        return check(
            name,
            CheckState::Failed,
            "ProviderReleaseAmbiguous",
            format!(
                "{} AppReleases install a chart ending in {}: {}; keep one",
                found.len(),
                facts.provider_chart,
                found
                    .iter()
                    .map(|(r, _)| where_(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let at = where_(release);
    let chart_name = chart["name"].as_str().unwrap_or_default();
    let requested = chart["targetRevision"].as_str().unwrap_or_default();
    let status = chart_status(release, chart_name);
    let installed = status
        .and_then(|s| s["installedRevision"].as_str())
        .unwrap_or_default();
    let phase = status.and_then(|s| s["phase"].as_str()).unwrap_or_default();
    if requested != installed || phase != "Success" {
        return check(
            name,
            CheckState::Failed,
            "ProviderNotAtRevision",
            format!(
                "{at} requests {chart_name} {requested} but reports installedRevision {installed:?} with phase {:?}; finish or repair the provider upgrade before upgrading the cluster",
                if phase.is_empty() {
                    "unreported"
                } else {
                    phase
                }
            ),
        );
    }
    let Ok(version) = ReleaseVersion::parse(installed) else {
        return check(
            name,
            CheckState::Unknown,
            "ProviderVersionInvalid",
            format!("{at} reports installedRevision {installed:?}, which is not a release version"),
        );
    };
    let full_source = ReleaseVersion::parse(facts.full_source_from).expect("a valid constant");
    let legacy = version < full_source;
    let target_chart = i.target.kube_ovn_chart.as_deref();
    if legacy
        && let Some(c) =
            target_chart.filter(|c| ReleaseVersion::parse(c).is_ok_and(|v| v.at_least(4, 4)))
    {
        return check(
            name,
            CheckState::Failed,
            "ProviderBelowFullSource",
            format!(
                "the target row {} uses Kube-OVN chart {c} (v4.4 or later), which needs the {} provider at {} or later (full-source reconciliation, also of CoreDNS and kube-proxy), but {at} has {installed}; upgrade the provider first",
                i.target.distribution_version,
                provider.name(),
                facts.full_source_from
            ),
        );
    }
    let from = match i.scope {
        Scope::Initial => 0,
        Scope::Hop(n) => n,
    };
    let remaining = || {
        i.plan
            .iter()
            .skip(from)
            .filter(|s| s.state != StepState::Succeeded)
    };
    let mut notes = Vec::new();
    if legacy
        && facts.legacy_needs_revision_patch
        && let Some(s) = remaining().find(|s| s.kind == PlanStepKind::KubeOvn)
    {
        notes.push(format!(
            "a legacy release (below {}): each Kube-OVN step (the first is step {}, to {}) also patches cni-kube-ovn's /spec/source/charts/0/targetRevision on the workload cluster",
            facts.full_source_from,
            s.index + 1,
            s.kube_ovn_chart.as_deref().unwrap_or_default()
        ));
    }
    if provider.name() == "dcs" {
        let pairing = ReleaseVersion::parse(DCS_PAIRING_PROVIDER).expect("a valid constant");
        let (ma, mi, pa) = DCS_PAIRING_ACP;
        let boundary = DistributionVersion::parse(&format!("{ma}.{mi}.{pa}")).expect("valid");
        let new_provider = version >= pairing;
        let mut hops: Vec<(&str, bool)> = Vec::new();
        for s in remaining() {
            if let Ok(dv) = DistributionVersion::parse(&s.distribution_version)
                && !hops.iter().any(|(d, _)| *d == s.distribution_version)
            {
                hops.push((s.distribution_version.as_str(), dv >= boundary));
            }
        }
        if let Some(&(dv, new_images)) = hops.first()
            && new_images != new_provider
        {
            return check(
                name,
                CheckState::Failed,
                "ProviderImagePairing",
                format!(
                    "the next hop uses the DCS images of ACP {dv}, and images of ACP 4.3.2 or later need the DCS provider at {DCS_PAIRING_PROVIDER} or later and the reverse, but {at} has {installed}; {}",
                    if new_images {
                        format!("upgrade the provider to {DCS_PAIRING_PROVIDER} or later first")
                    } else {
                        format!(
                            "this hop needs a provider below {DCS_PAIRING_PROVIDER}: finish it with the provider it was made for"
                        )
                    }
                ),
            );
        }
        if let Some(&(dv, _)) = hops.iter().skip(1).find(|(_, n)| *n != new_provider) {
            notes.push(format!(
                "the later hop to ACP {dv} needs the DCS provider {} {DCS_PAIRING_PROVIDER}: upgrade it between the hops (that hop's preflight checks again)",
                if new_provider { "below" } else { "at or above" }
            ));
        }
    }
    passed(
        name,
        format!(
            "{at}: {chart_name} {installed} installed, phase Success{}",
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MatrixRow, PlanStep};
    use crate::capi::KubeadmControlPlane;
    use crate::preflight::test_support::{pobs, spec, typed};
    use serde_json::json;

    /// The DCS provider's AppRelease as the platform's install guide applies it
    /// (immutable-infra-docs global/install.mdx), with the status its operator reports.
    fn provider_release(requested: &str, installed: &str, phase: &str) -> Value {
        let text = format!(
            r#"
apiVersion: operator.alauda.io/v1alpha1
kind: AppRelease
metadata:
  annotations:
    auto-recycle: "true"
    interval-sync: "true"
  name: cluster-api-provider-dcs
  namespace: cpaas-system
spec:
  destination:
    cluster: ""
    namespace: ""
  source:
    charts:
      - name: ait/chart-cluster-api-provider-dcs
        releaseName: cluster-api-provider-dcs
        targetRevision: {requested}
    repoURL: 192.168.10.2:11443
  timeout: 120
  values:
    global:
      cluster:
        isGlobal: true
        name: global
        networkType: kube-ovn
        type: Baremetal
status:
  charts:
    ait/chart-cluster-api-provider-dcs:
      installedRevision: {installed}
      phase: {phase}
  conditions:
    - type: Sync
      status: "True"
    - type: Health
      status: "True"
"#
        );
        serde_yaml_ng::from_str(&text).unwrap()
    }

    fn kubeadm_release() -> Value {
        let mut r = provider_release("v1.0.22", "v1.0.22", "Success");
        r["metadata"]["name"] = json!("cluster-api-provider-kubeadm");
        r["spec"]["source"]["charts"][0]["name"] = json!("ait/chart-cluster-api-provider-kubeadm");
        r
    }

    fn dcs_kcp() -> KubeadmControlPlane {
        let mut kcp =
            serde_json::to_value(crate::preflight::test_support::kcp("v1.33.7-4")).unwrap();
        kcp["spec"]["machineTemplate"] = json!({"infrastructureRef": {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DCSMachineTemplate", "name": "cp"}});
        typed(kcp)
    }

    fn row(dv: &str, chart: &str) -> MatrixRow {
        typed(
            json!({"distributionVersion": dv, "kubernetesVersion": "v1.34.5-3", "coreDNSImageTag": "x",
            "etcdImageTag": "y", "osImageVersion": "img", "kubeOvnChart": chart}),
        )
    }

    fn step(index: u32, kind: &str, dv: &str, chart: Option<&str>) -> PlanStep {
        typed(
            json!({"index": index, "kind": kind, "distributionVersion": dv,
            "kubernetesVersion": "v1.34.5-3", "osImage": "img", "kubeOvnChart": chart, "state": "Pending"}),
        )
    }

    fn run(releases: Vec<Value>, target: &MatrixRow, plan: &[PlanStep]) -> PreflightCheck {
        run_with(&dcs_kcp(), Ok(releases), target, plan)
    }

    fn run_with(
        kcp: &KubeadmControlPlane,
        releases: Result<Vec<Value>, String>,
        target: &MatrixRow,
        plan: &[PlanStep],
    ) -> PreflightCheck {
        let spec = spec(&[]);
        let mut obs = pobs();
        obs.provider_releases = releases;
        provider_ready(&Input {
            spec: &spec,
            scope: Scope::Initial,
            cluster_name: "c",
            kcp,
            mds: &[],
            machines: &[],
            plan,
            target,
            cvsh: None,
            cvsh_where: String::new(),
            obs: &obs,
        })
    }

    /// The provider installed at `v`.
    fn at(v: &str) -> Vec<Value> {
        vec![provider_release(v, v, "Success")]
    }

    fn assert_fails(c: &PreflightCheck, reason: &str) {
        assert_eq!(
            (c.state, c.reason.as_str()),
            (CheckState::Failed, reason),
            "{c:?}"
        );
    }

    fn to_4_3_2() -> (MatrixRow, Vec<PlanStep>) {
        (
            row("4.3.2", "v4.3.11"),
            vec![
                step(0, "KubeOvn", "4.3.2", Some("v4.3.11")),
                step(1, "ControlPlane", "4.3.2", None),
                step(2, "Workers", "4.3.2", None),
            ],
        )
    }

    #[test]
    fn a_provider_installed_at_its_revision_passes() {
        let (target, plan) = to_4_3_2();
        let releases = vec![
            kubeadm_release(),
            provider_release("v1.0.22", "v1.0.22", "Success"),
        ];
        let c = run(releases, &target, &plan);
        assert_eq!(c.state, CheckState::Passed, "{c:?}");
        assert!(
            c.message.contains("cpaas-system/cluster-api-provider-dcs"),
            "{}",
            c.message
        );
    }

    #[test]
    fn a_provider_upgrade_not_finished_blocks_with_the_fix() {
        let (target, plan) = to_4_3_2();
        for (installed, phase) in [("v1.0.21", "Upgrading"), ("v1.0.22", "DeployFailed")] {
            let c = run(
                vec![provider_release("v1.0.22", installed, phase)],
                &target,
                &plan,
            );
            assert_fails(&c, "ProviderNotAtRevision");
            assert!(
                c.message.contains(installed) && c.message.contains(phase),
                "{}",
                c.message
            );
            assert!(
                c.message.contains("finish or repair the provider upgrade"),
                "{}",
                c.message
            );
        }
        let c = run(vec![kubeadm_release()], &target, &plan);
        assert_eq!(c.reason, "ProviderReleaseNotFound");
        assert!(
            c.message.contains("chart-cluster-api-provider-dcs"),
            "{}",
            c.message
        );
        let c = run(vec![], &target, &plan);
        assert_eq!(c.state, CheckState::Failed);
    }

    #[test]
    fn a_target_chart_from_v4_4_needs_the_full_source_provider() {
        let target = row("4.4.0", "v4.4.1");
        let plan = vec![step(0, "ControlPlane", "4.4.0", None)];
        let c = run(at("v1.0.21"), &target, &plan);
        assert_fails(&c, "ProviderBelowFullSource");
        assert!(c.message.contains("v1.0.22 or later"), "{}", c.message);
        let c = run(at("v1.0.22"), &target, &plan);
        assert_eq!(c.state, CheckState::Passed, "{c:?}");
    }

    #[test]
    fn a_legacy_dcs_provider_is_named_for_a_kube_ovn_hop() {
        let (target, plan) = to_4_3_2();
        let c = run(at("v1.0.21"), &target, &plan);
        assert_eq!(c.state, CheckState::Passed, "{c:?}");
        assert!(
            c.message.contains("step 1, to v4.3.11) also patches cni-kube-ovn's /spec/source/charts/0/targetRevision"),
            "{}",
            c.message
        );
        // Not a Kube-OVN cluster (no KubeOvn step): nothing to say.
        let c = run(at("v1.0.21"), &target, &plan[1..]);
        assert_eq!(c.state, CheckState::Passed, "{c:?}");
        assert!(!c.message.contains("legacy"), "{}", c.message);
    }

    #[test]
    fn dcs_images_and_provider_pair_at_4_3_2_for_the_next_hop() {
        let (target, _) = to_4_3_2();
        let hop = |dv: &str| {
            vec![
                step(0, "ControlPlane", dv, None),
                step(1, "Workers", dv, None),
            ]
        };
        // 4.3.2 images with an older provider.
        let c = run(at("v1.0.20"), &target, &hop("4.3.2"));
        assert_fails(&c, "ProviderImagePairing");
        assert!(
            c.message.contains("upgrade the provider to v1.0.21"),
            "{}",
            c.message
        );
        // And the reverse: 4.2.5 images with a provider of 4.3.2's generation.
        let c = run(at("v1.0.22"), &target, &hop("4.2.5"));
        assert_eq!(c.reason, "ProviderImagePairing");
        // A later hop across the boundary passes now and says what it will need.
        let mut plan = hop("4.2.5");
        plan.extend([
            step(2, "ControlPlane", "4.3.2", None),
            step(3, "Workers", "4.3.2", None),
        ]);
        let c = run(at("v1.0.20"), &target, &plan);
        assert_eq!(c.state, CheckState::Passed, "{c:?}");
        assert!(
            c.message
                .contains("later hop to ACP 4.3.2 needs the DCS provider at or above v1.0.21"),
            "{}",
            c.message
        );
    }

    #[test]
    fn providers_the_platform_does_not_install_pass() {
        let (target, plan) = to_4_3_2();
        let capd = crate::preflight::test_support::kcp("v1.33.7-4");
        let c = run_with(&capd, Err("must not be looked at".into()), &target, &plan);
        assert_eq!(c.state, CheckState::Passed, "{c:?}");
    }
}
