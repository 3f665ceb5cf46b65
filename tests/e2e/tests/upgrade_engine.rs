//! The upgrade engine on the real control plane: a 3-CP / 2x2-worker in-memory cluster goes
//! from Kubernetes 1.31 (ACP 4.0) to the 4.3 row one minor at a time, also across a controller
//! crash; invalid requests stall with their reason and touch nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::engine::*;
use e2e::harness;
use e2e::project::{self, Controller, create_request, wait_request};
use e2e::{assert, capi};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use upgrade_controller::api::{Phase, UpgradeRequest};

#[tokio::test(flavor = "multi_thread")]
async fn demo_cluster_upgrades_from_4_0_to_4_3_one_minor_at_a_time() {
    let client = harness::client().await;
    let run = start_run(
        &client,
        "engine",
        json!({"workers": {"maxConcurrentPools": 2}}),
    )
    .await;
    let ns = run.ns.to_string();
    let _controller = Controller::start_with(&ns, &run.platform.controller_args());
    let (writes, gates) = run.succeeded(&client).await;

    let mut lat = gate_to_write(&writes, &gates);
    lat.sort();
    assert_eq!(
        lat.len(),
        5,
        "3 control-plane gates and 2 worker gates before a next write"
    );
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "gate -> next write over {} transitions: p50 {:?}, p99 {:?}, all {:?}",
        lat.len(),
        p(0.5),
        p(0.99),
        lat
    );
    // Watch-driven: far below the 30 s requeue fallback. (Resolution: the 100 ms gate poll.)
    assert!(
        p(0.99) < Duration::from_secs(3),
        "gate to next write too slow: {lat:?}"
    );
    run.finish(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_resumes_after_the_controller_is_killed_mid_hop() {
    let client = harness::client().await;
    let run = start_run(&client, "crash", json!({})).await;
    let ns = run.ns.to_string();
    let mut controller = Controller::start_with(&ns, &run.platform.controller_args());
    // Kill it while the second hop's control plane is rolling out.
    run.wait_for_step(&client, 2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    controller.kill();
    eprintln!("controller killed during step 3 (control plane to 1.33)");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _controller = Controller::start_with(&ns, &run.platform.controller_args());
    run.succeeded(&client).await;
    run.finish(&client).await;
}

/// Every CAPI object in `ns` without what CAPI's own controllers keep updating (status,
/// resourceVersion, managedFields), to prove nothing else was written. Also fails if any object
/// carries a field owned by this controller's field manager.
async fn snapshot(client: &kube::Client, ns: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (api_version, kind) in [
        (capi::CLUSTER_V1BETA1, "Cluster"),
        (capi::CONTROLPLANE_V1BETA1, "KubeadmControlPlane"),
        (capi::CLUSTER_V1BETA1, "MachineDeployment"),
        (capi::INFRA_V1BETA1, "DevMachineTemplate"),
    ] {
        for o in capi::api(client, ns, api_version, kind)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            let mut v = serde_json::to_value(&o).unwrap();
            assert::no_field_of_ours(&v);
            v.as_object_mut().unwrap().remove("status");
            let meta = v["metadata"].as_object_mut().unwrap();
            meta.remove("resourceVersion");
            meta.remove("managedFields");
            out.insert(format!("{kind}/{}", o.metadata.name.unwrap_or_default()), v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_requests_stall_with_their_reason_and_change_nothing() {
    let client = harness::client().await;
    let mut ns = harness::namespace(&client, "invalid").await;
    ns.delete_matrix_with(&format!("gap-{ns}"));
    project::install(&client).await;
    // A paused cluster at 4.1 (Kubernetes 1.32): CAPI leaves it alone, so any change would be ours.
    let mut objects = capi::in_memory_cluster("c41", "v1.32.7", "v132", 1, &[("pool", 1)]);
    for o in &mut objects {
        if o["kind"] == "Cluster" {
            o["spec"]["paused"] = json!(true);
        }
    }
    capi::create_all(&client, &ns, &objects).await.unwrap();
    // A matrix without the 4.2 rows: 4.1 -> 4.3 has no row for Kubernetes 1.33.
    let mut gap = project::sample_matrix();
    gap["metadata"] = json!({"name": format!("gap-{ns}")});
    let rows: Vec<Value> = gap["spec"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            !r["distributionVersion"]
                .as_str()
                .unwrap()
                .starts_with("4.2.")
        })
        .cloned()
        .collect();
    gap["spec"]["rows"] = json!(rows);
    e2e::testenv::apply_cluster_scoped(&client, &[gap])
        .await
        .unwrap();
    let before = snapshot(&client, &ns).await;

    let cases = [
        (
            "unknown-target",
            json!({"clusterName": "c41", "targetVersion": "4.9"}),
            "UnknownTarget",
        ),
        (
            "downgrade",
            json!({"clusterName": "c41", "targetVersion": "4.0"}),
            "Downgrade",
        ),
        (
            "missing-row",
            json!({"clusterName": "c41", "targetVersion": "4.3", "matrixRef": format!("gap-{ns}")}),
            "MissingMatrixRow",
        ),
        (
            "no-cluster",
            json!({"clusterName": "nope", "targetVersion": "4.3"}),
            "ClusterNotFound",
        ),
        (
            "no-matrix",
            json!({"clusterName": "c41", "targetVersion": "4.3", "matrixRef": "nope"}),
            "MatrixNotFound",
        ),
    ];
    for (name, spec, _) in &cases {
        create_request(&client, &ns, name, spec.clone()).await;
    }
    let controller = Controller::start(&ns);
    for (name, _, reason) in &cases {
        let ur = wait_request(&client, &ns, name, Duration::from_secs(60), |ur| {
            ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Stalled)
        })
        .await;
        let message = assert::stalled_with(&ur, reason);
        eprintln!("{name}: Stalled/{reason}: {message}");
    }
    // After a complete reconcile of every request, prove nothing was written.
    controller.settle(&client, &ns).await;
    assert_eq!(
        snapshot(&client, &ns).await,
        before,
        "a stalled request changed CAPI objects"
    );

    // What the API server itself refuses: a malformed target, and changing the cluster.
    let api = Api::<UpgradeRequest>::namespaced(client.clone(), &ns);
    let bad: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": "bad-target"}, "spec": {"clusterName": "c41", "targetVersion": "latest"},
    })).unwrap();
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("pattern must reject 'latest'");
    assert!(err.to_string().contains("targetVersion"), "{err}");
    let err = api
        .patch(
            "downgrade",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterName": "other"}})),
        )
        .await
        .expect_err("clusterName is immutable");
    assert!(
        err.to_string().contains("clusterName is immutable"),
        "{err}"
    );

    // CAPI only tears down an unpaused Cluster, so unpause it for the namespace to go away.
    capi::api(&client, &ns, capi::CLUSTER_V1BETA1, "Cluster")
        .patch(
            "c41",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    ns.finish(&client).await;
}
