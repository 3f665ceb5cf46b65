//! The version guard (`config/admission/version-guard.yaml`, a ValidatingAdmissionPolicy) on
//! the real kube-apiserver, in front of CAPI's own webhooks: on a static DCS cluster's
//! KubeadmControlPlane and MachineDeployment it refuses a lower minor, a control-plane skip
//! and a pool jump of more than three minors, admits everything else, and lets the recovery
//! annotation through. Refusals are tried as dry runs, so a refusal that did not happen would
//! not change the cluster for the next case either.
//!
//! The policy is the shipped one; its binding is the shipped one limited to the test's
//! namespace, so other suites on the same control plane are not guarded.

use e2e::capi::{self, CLUSTER_V1BETA1, CONTROLPLANE_V1BETA1};
use e2e::dcs::StaticDcsCluster;
use e2e::guard::{self, VersionGuard};
use e2e::harness;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

const POLICY: &str = "upgrade-controller-version-guard";

use e2e::capi::dry_run_patch as try_patch;

fn kcp_version(v: &str) -> Value {
    json!({"spec": {"version": v}})
}

fn md_version(v: &str) -> Value {
    json!({"spec": {"template": {"spec": {"version": v}}}})
}

/// Refused by the version guard (not by anything else), with `words` in its message.
fn refused_by_guard(result: Result<(), String>, words: &[&str]) {
    let message = result.expect_err("the version guard must refuse this write");
    assert!(
        message.contains(&format!("ValidatingAdmissionPolicy '{POLICY}'")),
        "refused, but not by the version guard: {message}"
    );
    for w in words {
        assert!(message.contains(w), "{w:?} missing from: {message}");
    }
    eprintln!("refused: {message}");
}

#[test]
fn the_chart_installs_the_same_policy_with_its_failure_policy_and_can_leave_it_out() {
    let shipped = guard::shipped("x", "x");
    let rendered = |set: &[String]| -> Vec<Value> {
        e2e::chart::render("r", "uc-system", set)
            .into_iter()
            .filter(|d| {
                d["kind"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("ValidatingAdmissionPolicy")
            })
            .collect()
    };
    let docs = rendered(&[]);
    assert_eq!(docs.len(), 2, "the policy and its binding");
    assert_eq!(docs[0]["spec"], shipped[0]["spec"]);
    // The chart names its policy after the release, so a policy applied
    // from config/ (named POLICY) and the chart's never collide.
    assert_eq!(docs[0]["metadata"]["name"], "r-version-guard");
    assert_eq!(docs[1]["metadata"]["name"], "r-version-guard");
    assert_eq!(docs[1]["spec"]["policyName"], docs[0]["metadata"]["name"]);
    assert_eq!(
        docs[1]["spec"].get("matchResources"),
        None,
        "the chart's binding guards every namespace"
    );
    let ignore = rendered(&["versionGuard.failurePolicy=Ignore".to_string()]);
    assert_eq!(ignore[0]["spec"]["failurePolicy"], "Ignore");
    assert!(rendered(&["versionGuard.enabled=false".to_string()]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_version_guard_refuses_downgrades_and_skips_and_admits_the_rest() {
    let client = harness::client().await;
    let ns = harness::namespace(&client, "guard").await;
    let cluster = StaticDcsCluster {
        cp_version: "v1.33.7-4".into(),
        cp_replicas: 1,
        pools: vec![("md-a".into(), 1)],
        ..StaticDcsCluster::new("vg", &ns)
    };
    cluster.create(&client).await.unwrap();
    let kcps = capi::api(&client, &ns, CONTROLPLANE_V1BETA1, "KubeadmControlPlane");
    let mds = capi::api(&client, &ns, CLUSTER_V1BETA1, "MachineDeployment");
    let (kcp, md) = (cluster.kcp_name(), cluster.md_name("md-a"));

    // Without the guard, CAPI admits lowering the control plane a minor: what the guard is for.
    assert_eq!(
        try_patch(&kcps, &kcp, kcp_version("v1.32.11-2")).await,
        Ok(()),
        "CAPI's own webhook admits a KCP downgrade"
    );

    let guard = VersionGuard::apply(&client, &ns, &kcp, "v1.32.11-2").await;
    assert_eq!(guard.policy, POLICY);
    let downgrade = try_patch(&kcps, &kcp, kcp_version("v1.32.11-2")).await;
    eprintln!("the guard took effect after {:?}", guard.took);
    refused_by_guard(
        downgrade,
        &[
            &format!(
                "lowering the Kubernetes minor of KubeadmControlPlane {ns}/{kcp} from v1.33.7-4 to v1.32.11-2"
            ),
            "UpgradeRequest",
            "upgrade.cpaas.io/version-guard=recovery",
        ],
    );
    // A skip of the control plane: refused by the guard before CAPI's webhook sees it.
    refused_by_guard(
        try_patch(&kcps, &kcp, kcp_version("v1.35.0")).await,
        &["skips a minor", "from v1.33.7-4 to v1.35.0"],
    );
    refused_by_guard(
        try_patch(&kcps, &kcp, kcp_version("v2.33.0")).await,
        &["skips a minor"],
    );
    // Admitted: the next minor, a patch release, any other field.
    assert_eq!(
        try_patch(&kcps, &kcp, kcp_version("v1.34.5-3")).await,
        Ok(())
    );
    assert_eq!(try_patch(&kcps, &kcp, kcp_version("v1.33.8")).await, Ok(()));
    assert_eq!(
        try_patch(
            &kcps,
            &kcp,
            json!({"metadata": {"labels": {"team": "platform"}}})
        )
        .await,
        Ok(())
    );

    // Pools: never down, at most three minors up (SkipLevel), whatever the control plane is.
    refused_by_guard(
        try_patch(&mds, &md, md_version("v1.32.11-2")).await,
        &[&format!(
            "lowering the Kubernetes minor of MachineDeployment {ns}/{md} from v1.33.7-4 to v1.32.11-2"
        )],
    );
    refused_by_guard(
        try_patch(&mds, &md, md_version("v1.37.0")).await,
        &["more than three minors", "version skew"],
    );
    assert_eq!(try_patch(&mds, &md, md_version("v1.36.2")).await, Ok(()));
    assert_eq!(try_patch(&mds, &md, md_version("v1.34.5-3")).await, Ok(()));

    // Recovery case 1: with the annotation set on purpose, the old values may be restored.
    let recovery = |mut patch: Value| {
        patch["metadata"] = json!({"annotations": {"upgrade.cpaas.io/version-guard": "recovery"}});
        patch
    };
    assert_eq!(
        try_patch(&kcps, &kcp, recovery(kcp_version("v1.32.11-2"))).await,
        Ok(())
    );
    assert_eq!(
        try_patch(&mds, &md, recovery(md_version("v1.32.11-2"))).await,
        Ok(())
    );
    // ... but never a skip.
    refused_by_guard(
        try_patch(&kcps, &kcp, recovery(kcp_version("v1.35.0"))).await,
        &["skips a minor"],
    );
    // Any other value of the annotation is no escape hatch.
    let mut wrong = kcp_version("v1.32.11-2");
    wrong["metadata"] = json!({"annotations": {"upgrade.cpaas.io/version-guard": "yes"}});
    refused_by_guard(try_patch(&kcps, &kcp, wrong).await, &["lowering"]);

    // A real (not dry-run) write the guard admits goes through, and nothing above was written.
    kcps.patch(
        &kcp,
        &PatchParams::default(),
        &Patch::Merge(&kcp_version("v1.34.5-3")),
    )
    .await
    .expect("one minor up is admitted");
    let live = serde_json::to_value(kcps.get(&kcp).await.unwrap()).unwrap();
    assert_eq!(live["spec"]["version"], "v1.34.5-3");
    let live = serde_json::to_value(mds.get(&md).await.unwrap()).unwrap();
    assert_eq!(live["spec"]["template"]["spec"]["version"], "v1.33.7-4");

    guard.remove(&client).await;
    e2e::dcs::delete_namespace(&client, &ns).await.unwrap();
    ns.finish(&client).await;
}
