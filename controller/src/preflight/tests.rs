//! The preflight as a whole: every check of a scope, skips, and the safety checks.

use super::test_support::*;
use super::*;
use crate::api::CheckName;
use serde_json::json;

#[test]
fn a_healthy_cluster_passes_every_initial_check() {
    let target = row("4.3.2", "v1.34.5-3", &["4.0", "4.1", "4.2"]);
    let checks = run_all(
        &spec(&[]),
        &target,
        &cvsh("4.0.11"),
        &[machine("v1.31.14-2", true)],
        &pobs(),
    );
    assert_eq!(checks.len(), checks_for(Scope::Initial).len());
    for c in checks.values() {
        assert_eq!(c.state, CheckState::Passed, "{c:?}");
    }
}

#[test]
fn each_unmet_prerequisite_fails_its_own_check() {
    let target = row("4.3.2", "v1.34.5-3", &["4.1", "4.2"]);
    let mut obs = pobs();
    obs.globals = vec![
        ("global".into(), Ok(Some(cvsh("4.3.2")))),
        ("standby".into(), Ok(Some(cvsh("4.2.5")))),
    ];
    obs.other_requests = vec![contender("older", "2026-11-21T09:00:00Z", false)];
    let checks = run_all(
        &spec(&[]),
        &target,
        &cvsh("4.0.11"),
        &[machine("v1.31.14-2", false)],
        &obs,
    );
    let failed = |n: CheckName| checks[&n].state == CheckState::Failed;
    assert!(
        failed(CheckName::UpgradePathSupported),
        "4.0 is not in [4.1, 4.2]"
    );
    assert!(
        checks[&CheckName::GlobalTierAtTarget]
            .message
            .contains("standby is at 4.2.5")
    );
    assert!(failed(CheckName::NodesReady));
    assert!(
        checks[&CheckName::NodesReady]
            .message
            .contains("m-1 (node-1)")
    );
    assert!(failed(CheckName::SingleActiveRequest));
    assert!(!failed(CheckName::NotADowngrade));
    // A finished older request no longer holds the cluster; a younger one never does.
    obs.other_requests[0].finished = true;
    obs.other_requests
        .push(contender("younger", "2026-11-21T11:00:00Z", false));
    let checks = run_all(&spec(&[]), &target, &cvsh("4.1.6"), &[], &obs);
    assert_eq!(
        checks[&CheckName::SingleActiveRequest].state,
        CheckState::Passed
    );
}

#[test]
fn skipped_checks_are_recorded_not_run() {
    let target = row("4.3.2", "v1.34.5-3", &["4.0"]);
    let mut obs = pobs();
    obs.workload = Err(WorkloadUnavailable {
        reason: "WorkloadAPIUnreachable",
        message: "connection refused".into(),
    });
    let checks = run_all(
        &spec(&["NodesReady", "ControlPlaneHealthy"]),
        &target,
        &cvsh("4.0.11"),
        &[machine("v1.31.14-2", false)],
        &obs,
    );
    assert_eq!(checks[&CheckName::NodesReady].state, CheckState::Skipped);
    assert_eq!(
        checks[&CheckName::ControlPlaneHealthy].state,
        CheckState::Skipped
    );
    assert!(blocking(&checks.into_values().collect::<Vec<_>>()).is_empty());
}

#[test]
fn safety_checks_run_even_when_skip_lists_them() {
    // An object stored under an older CRD may still list them.
    let target = row("4.3.2", "v1.34.5-3", &["4.1"]);
    let mut obs = pobs();
    obs.globals = vec![("global".into(), Ok(Some(cvsh("4.2.5"))))];
    obs.other_requests = vec![contender("older", "2026-11-21T09:00:00Z", true)];
    let all_safety = [
        "TargetRowExists",
        "UpgradePathSupported",
        "NotADowngrade",
        "KubernetesVersionsCompatible",
        "GlobalTierAtTarget",
        "WorkloadBelowGlobal",
        "SingleActiveRequest",
        "PlatformPreflight",
    ];
    let checks = run_all(
        &spec(&all_safety),
        &target,
        &cvsh("4.0.11"),
        &[machine("v1.31.14-2", true)],
        &obs,
    );
    for name in [
        CheckName::UpgradePathSupported,
        CheckName::GlobalTierAtTarget,
        CheckName::SingleActiveRequest,
    ] {
        assert_eq!(checks[&name].state, CheckState::Failed, "{name:?}");
    }
    assert!(
        checks
            .values()
            .all(|c| c.state != CheckState::Skipped || c.name.skippable())
    );
}

#[test]
fn gitops_safe_fails_on_any_unprotected_object_and_can_be_skipped() {
    use super::gitops::{GitOpsObs, Ownership, Target};
    use crate::api::GitOpsTool;
    let target = row("4.3.2", "v1.34.5-3", &["4.0", "4.1", "4.2"]);
    let applied_by = |manager: &str| GitOpsObs {
        object: "MachineDeployment md-a".into(),
        target: Target::default(),
        ownership: Ownership {
            tool: GitOpsTool::Unknown,
            source: None,
            evidence: vec![format!(
                "field manager {manager} applies spec.template.spec.version"
            )],
            opted_out: None,
        },
        paths: vec!["/spec/template/spec/version".into()],
        source: None,
    };
    let mut obs = pobs();
    obs.gitops = vec![applied_by("terraform")];
    let run = |skip: &[&str], obs: &PreflightObs| {
        run_all(
            &spec(skip),
            &target,
            &cvsh("4.0.11"),
            &[machine("v1.31.14-2", true)],
            obs,
        )
    };
    let checks = run(&[], &obs);
    let c = &checks[&CheckName::GitOpsSafe];
    assert_eq!(c.state, CheckState::Failed);
    assert_eq!(c.reason, "GitOpsWouldRevert");
    assert!(
        c.message
            .starts_with("MachineDeployment md-a: field manager terraform applies"),
        "{}",
        c.message
    );
    // Only GitOpsSafe blocks.
    assert_eq!(
        blocking(&checks.values().cloned().collect::<Vec<_>>()).len(),
        1
    );
    // The explicit acknowledgement: listed in spec.preflight.skip.
    let checks = run(&["GitOpsSafe"], &obs);
    assert_eq!(checks[&CheckName::GitOpsSafe].state, CheckState::Skipped);
    // Before every hop too.
    assert!(checks_for(Scope::Hop(2)).contains(&CheckName::GitOpsSafe));
}

#[test]
fn etcd_must_be_reported_healthy_unless_external() {
    let i = |kcp: &crate::capi::KubeadmControlPlane| {
        health::etcd_healthy(&Input {
            spec: &spec(&[]),
            scope: Scope::Hop(0),
            cluster_name: "c",
            kcp,
            mds: &[],
            machines: &[],
            plan: &[],
            target: &row("4.3.2", "v1.34.5-3", &["4.0"]),
            cvsh: None,
            cvsh_where: String::new(),
            obs: &pobs(),
        })
    };
    assert_eq!(i(&kcp("v1.33.7")).state, CheckState::Passed);
    // v1beta1 KCP as CAPI v1.10 reports it when a member is sick.
    let mut sick = kcp("v1.33.7");
    sick.status.conditions = vec![typed(
        json!({"type": "EtcdClusterHealthy", "status": "False",
        "reason": "EtcdClusterUnhealthy", "message": "Following machines are reporting unhealthy etcd member status: cp-abc"}),
    )];
    let c = i(&sick);
    assert_eq!(
        (c.state, c.reason.as_str()),
        (CheckState::Failed, "EtcdNotHealthy")
    );
    assert!(c.message.contains("EtcdClusterHealthy=False (EtcdClusterUnhealthy: Following machines are reporting unhealthy etcd member status: cp-abc)"), "{}", c.message);
    // v1beta2 keeps the v1beta1 condition under status.deprecated.v1beta1.
    let mut v1beta2 = kcp("v1.33.7");
    v1beta2.status.conditions.clear();
    v1beta2.status.deprecated.v1beta1.conditions = vec![typed(
        json!({"type": "EtcdClusterHealthy", "status": "True"}),
    )];
    assert_eq!(i(&v1beta2).state, CheckState::Passed);
    let mut silent = kcp("v1.33.7");
    silent.status.conditions.clear();
    assert_eq!(i(&silent).state, CheckState::Unknown);
    silent
        .spec
        .kubeadm_config_spec
        .cluster_configuration
        .etcd
        .external = Some(json!({"endpoints": ["https://etcd:2379"]}));
    let c = i(&silent);
    assert_eq!(c.state, CheckState::Passed);
    assert!(c.message.contains("external etcd"));
}

#[test]
fn a_remediation_under_way_blocks_and_names_the_machines() {
    let mut remediated = machine("v1.33.7", false);
    remediated
        .status
        .conditions
        .push(typed(json!({"type": "OwnerRemediated", "status": "False",
        "reason": "WaitingForRemediation", "severity": "Warning"})));
    let mut cp = kcp("v1.33.7");
    let i = |kcp: &crate::capi::KubeadmControlPlane, machines: &[Machine]| {
        health::no_remediation(&Input {
            spec: &spec(&[]),
            scope: Scope::Hop(0),
            cluster_name: "c",
            kcp,
            mds: &[],
            machines,
            plan: &[],
            target: &row("4.3.2", "v1.34.5-3", &["4.0"]),
            cvsh: None,
            cvsh_where: String::new(),
            obs: &pobs(),
        })
    };
    assert_eq!(
        i(&cp, &[machine("v1.33.7", true)]).state,
        CheckState::Passed
    );
    let c = i(&cp, &[machine("v1.33.7", true), remediated.clone()]);
    assert_eq!(
        (c.state, c.reason.as_str()),
        (CheckState::Failed, "RemediationInProgress")
    );
    assert_eq!(
        c.message,
        "waiting for the remediation under way to finish: Machine m-1 (OwnerRemediated=False: WaitingForRemediation)"
    );
    cp.metadata.annotations = Some(
        [(
            "controlplane.cluster.x-k8s.io/remediation-in-progress".to_string(),
            "{}".to_string(),
        )]
        .into(),
    );
    let c = i(&cp, &[]);
    assert!(
        c.message
            .contains("KubeadmControlPlane cp is remediating a control-plane machine"),
        "{}",
        c.message
    );
    // Not skippable: it keeps a rollout from racing the replacement.
    assert!(!CheckName::NoRemediationInProgress.skippable());
    assert!(!CheckName::EtcdHealthy.skippable());
}

#[test]
fn the_global_clusters_own_request_checks_the_workload_clusters_and_the_standby_first() {
    let target = row("4.3.2", "v1.34.5-3", &["4.0"]);
    let mut obs = pobs();
    obs.global_self = Some(Workloads {
        clusters: vec![
            (
                "cpaas-system/edge-1".into(),
                vec![
                    ("KubeadmControlPlane edge-1-cp".into(), "v1.31.14-2".into()),
                    ("MachineDeployment edge-1-md".into(), "v1.31.14-2".into()),
                ],
            ),
            (
                "team-a/old".into(),
                vec![
                    ("KubeadmControlPlane old-cp".into(), "v1.30.9".into()),
                    ("MachineDeployment old-md".into(), "v1.29.3".into()),
                ],
            ),
        ],
        only_namespace: None,
        only_shard: None,
    });
    // The global cluster itself runs 4.0.11; its own cvsh is the primary global.
    obs.globals = vec![("global".into(), Ok(Some(cvsh("4.0.11"))))];
    let checks = run_all(&spec(&[]), &target, &cvsh("4.0.11"), &[], &obs);
    let c = &checks[&CheckName::WorkloadsCompatible];
    assert_eq!(
        (c.state, c.reason.as_str()),
        (CheckState::Failed, "WorkloadClusterOutOfRange")
    );
    assert!(
        c.message.contains("Kubernetes 1.31–1.34 only, and 1 of them are outside: team-a/old (KubeadmControlPlane old-cp at v1.30.9, MachineDeployment old-md at v1.29.3)"),
        "{}",
        c.message
    );
    assert!(!c.message.contains("edge-1"), "{}", c.message);
    assert_eq!(
        checks[&CheckName::WorkloadBelowGlobal].state,
        CheckState::Passed
    );
    let g = &checks[&CheckName::GlobalTierAtTarget];
    assert_eq!(g.state, CheckState::Passed, "{}", g.message);
    assert!(g.message.contains("no DR standby"), "{}", g.message);

    // Under DR the standby must be at the target first.
    obs.globals
        .push(("standby global".into(), Ok(Some(cvsh("4.2.5")))));
    obs.global_self.as_mut().unwrap().clusters.pop();
    let checks = run_all(&spec(&[]), &target, &cvsh("4.0.11"), &[], &obs);
    assert_eq!(
        checks[&CheckName::WorkloadsCompatible].state,
        CheckState::Passed
    );
    let g = &checks[&CheckName::GlobalTierAtTarget];
    assert_eq!(g.state, CheckState::Failed);
    assert!(
        g.message.contains("standby global is at 4.2.5"),
        "{}",
        g.message
    );
    obs.globals[1] = ("standby global".into(), Ok(Some(cvsh("4.3.2"))));
    let checks = run_all(&spec(&[]), &target, &cvsh("4.0.11"), &[], &obs);
    assert_eq!(
        checks[&CheckName::GlobalTierAtTarget].state,
        CheckState::Passed
    );

    // A controller limited to one namespace cannot see them all.
    obs.global_self.as_mut().unwrap().only_namespace = Some("cpaas-system".into());
    let checks = run_all(&spec(&[]), &target, &cvsh("4.0.11"), &[], &obs);
    assert_eq!(
        checks[&CheckName::WorkloadsCompatible].state,
        CheckState::Unknown
    );
    // Nor can one shard of the controllers.
    let w = obs.global_self.as_mut().unwrap();
    w.only_namespace = None;
    w.only_shard = Some("tier=gold".into());
    let checks = run_all(&spec(&[]), &target, &cvsh("4.0.11"), &[], &obs);
    let c = &checks[&CheckName::WorkloadsCompatible];
    assert_eq!(c.state, CheckState::Unknown);
    assert!(c.message.contains("--shard-selector"), "{}", c.message);
    // Not the global cluster: the check does not apply.
    obs.global_self = None;
    let checks = run_all(&spec(&[]), &target, &cvsh("4.0.11"), &[], &obs);
    assert_eq!(
        checks[&CheckName::WorkloadsCompatible].state,
        CheckState::Passed
    );
    assert!(!CheckName::WorkloadsCompatible.skippable());
}
