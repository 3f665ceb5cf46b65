//! The test control plane is real: Cluster API rolls in-memory machines through a version
//! change exactly as it would on a provider, and its admission webhooks reject what CAPI
//! rejects. These tests use only the API, as the controller will.

use std::time::Duration;

use e2e::capi;
use e2e::harness;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

const FROM: &str = "v1.31.14";
const TO: &str = "v1.32.7";
/// Bound on every wait below: a stuck rollout fails the test instead of hanging CI.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

async fn create_template(client: &kube::Client, ns: &str, name: &str) {
    let tpl: DynamicObject =
        serde_json::from_value(capi::dev_machine_template(name)).expect("template object");
    capi::dev_machine_template_api(client, ns)
        .create(&PostParams::default(), &tpl)
        .await
        .expect("creating a DevMachineTemplate");
}

#[tokio::test(flavor = "multi_thread")]
async fn capi_rolls_kcp_then_one_machine_deployment_to_the_next_minor() {
    let client = harness::client().await;
    let ns = harness::namespace(&client, "rollout").await;
    let (cluster, kcp, md_a, md_b) = ("demo", "demo-cp", "demo-pool-a", "demo-pool-b");
    let objects =
        capi::in_memory_cluster(cluster, FROM, "v131", 3, &[("pool-a", 2), ("pool-b", 2)]);
    capi::create_all(&client, &ns, &objects)
        .await
        .expect("creating the cluster");

    let took = capi::wait_done("initial control plane", ROLLOUT_TIMEOUT, || {
        capi::kcp_rollout_pending(&client, &ns, kcp, FROM)
    })
    .await
    .unwrap();
    eprintln!("control plane (3 machines) ready at {FROM} after {took:?}");
    for md in [md_a, md_b] {
        capi::wait_done(md, ROLLOUT_TIMEOUT, || {
            capi::md_rollout_pending(&client, &ns, md, FROM)
        })
        .await
        .unwrap();
    }

    // Control plane: new template + version in one write, as the upgrade engine will do.
    create_template(&client, &ns, "demo-cp-v132").await;
    let patch = json!({"spec": {
        "version": TO,
        "machineTemplate": {"infrastructureRef": {"name": "demo-cp-v132"}},
    }});
    capi::kcp_api(&client, &ns)
        .patch(kcp, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching the KubeadmControlPlane");
    let took = capi::wait_done("control plane rollout", ROLLOUT_TIMEOUT, || {
        capi::kcp_rollout_pending(&client, &ns, kcp, TO)
    })
    .await
    .unwrap();
    eprintln!("control plane rolled {FROM} -> {TO} in {took:?}");
    assert_machines_use_template(
        &client,
        &ns,
        "cluster.x-k8s.io/control-plane-name",
        kcp,
        "demo-cp-v132",
    )
    .await;

    // One node pool.
    create_template(&client, &ns, "demo-md-v132").await;
    let patch = json!({"spec": {"template": {"spec": {
        "version": TO,
        "infrastructureRef": {"name": "demo-md-v132"},
    }}}});
    capi::md_api(&client, &ns)
        .patch(md_a, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching the MachineDeployment");
    let took = capi::wait_done("pool-a rollout", ROLLOUT_TIMEOUT, || {
        capi::md_rollout_pending(&client, &ns, md_a, TO)
    })
    .await
    .unwrap();
    eprintln!("pool-a rolled {FROM} -> {TO} in {took:?}");
    assert_machines_use_template(
        &client,
        &ns,
        "cluster.x-k8s.io/deployment-name",
        md_a,
        "demo-md-v132",
    )
    .await;

    // The untouched pool stayed where it was: CAPI rolled only what was changed.
    let pending = capi::md_rollout_pending(&client, &ns, md_b, FROM)
        .await
        .unwrap();
    assert!(
        pending.is_empty(),
        "pool-b should be untouched at {FROM}: {pending:?}"
    );
}

/// Every Machine selected by `label=value` has an infrastructure machine cloned from `template`.
async fn assert_machines_use_template(
    client: &kube::Client,
    ns: &str,
    label: &str,
    value: &str,
    template: &str,
) {
    let machines = capi::machine_api(client, ns)
        .list(&kube::api::ListParams::default().labels(&format!("{label}={value}")))
        .await
        .unwrap()
        .items;
    assert!(!machines.is_empty());
    let dev_machines = capi::api(client, ns, capi::INFRA_V1BETA1, "DevMachine");
    for m in machines {
        let m = serde_json::to_value(m).unwrap();
        let infra = m["spec"]["infrastructureRef"]["name"].as_str().unwrap();
        let dm = dev_machines.get(infra).await.unwrap();
        let cloned_from = dm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("cluster.x-k8s.io/cloned-from-name"))
            .map(String::as_str);
        assert_eq!(cloned_from, Some(template), "DevMachine {infra}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn capi_webhook_rejects_a_kcp_version_that_skips_a_minor() {
    let client = harness::client().await;
    let ns = harness::namespace(&client, "skew").await;
    let objects = capi::in_memory_cluster("skew", TO, "v132", 1, &[]);
    let kcp_only: Vec<_> = objects
        .into_iter()
        .filter(|o| o["kind"] == "KubeadmControlPlane")
        .collect();
    capi::create_all(&client, &ns, &kcp_only).await.unwrap();
    let kcps = capi::kcp_api(&client, &ns);

    let skip = json!({"spec": {"version": "v1.34.5"}});
    let err = kcps
        .patch("skew-cp", &PatchParams::default(), &Patch::Merge(&skip))
        .await
        .expect_err("a v1.32 -> v1.34 KCP update must be rejected");
    let kube::Error::Api(status) = err else {
        panic!("expected an API rejection, got {err:?}");
    };
    assert!(
        status.message.contains("admission webhook")
            && status.message.contains(&format!(
                "cannot update Kubernetes version from {TO} to v1.34.5"
            )),
        "unexpected rejection: {status:?}"
    );
    let kcp = kcps.get("skew-cp").await.unwrap();
    assert_eq!(serde_json::to_value(&kcp).unwrap()["spec"]["version"], TO);

    // The same webhook lets a one-minor step through, so the rejection above is about the skip.
    let next = json!({"spec": {"version": "v1.33.7"}});
    kcps.patch("skew-cp", &PatchParams::default(), &Patch::Merge(&next))
        .await
        .expect("a one-minor KCP update is accepted");

    // A KCP that no Cluster owns keeps its finalizer forever (the KCP controller waits for an
    // owner before it handles deletion), so release it before deleting the namespace.
    let release = json!({"metadata": {"finalizers": null}});
    kcps.patch("skew-cp", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    ns.finish(&client).await;
}
