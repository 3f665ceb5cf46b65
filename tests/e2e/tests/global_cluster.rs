//! The global cluster's own upgrade (self-hosted: the controller runs on the cluster it
//! upgrades). A controller of every namespace, as the global cluster's must be: the request
//! waits while one workload cluster is outside the target row's compatible Kubernetes range,
//! named in the check, and proceeds once it is inside; the controller evicted mid-hop (its own
//! node replaced) is rescheduled and the upgrade resumes.
//!
//! Its own test binary: a controller of all namespaces would reconcile other suites' requests.

use std::time::Duration;

use e2e::engine::{self, START};
use e2e::platform::Platform;
use e2e::project::{self, Controller};
use e2e::{assert, capi, harness};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use upgrade_controller::api::{CheckName, CheckState, Phase, StepState, UpgradeRequest};

/// Below 4.3's compatible range (1.31-1.34).
const TENANT_START: &str = "v1.30.14-2";

fn check(ur: &UpgradeRequest, name: CheckName) -> Option<(CheckState, String)> {
    assert::check(ur, name).map(|c| (c.state, c.message))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_global_cluster_waits_for_every_workload_cluster_and_resumes_after_its_controller_is_evicted_mid_hop()
 {
    let client = harness::client().await;
    let mut ns = harness::namespace(&client, "global").await;
    project::install(&client).await;
    // The platform namespace holds the global cluster's cvsh (4.0.11) and the global
    // Cluster itself; the tenant's cvsh is `<ns>.tenant`.
    let platform = Platform::start(&client, &ns, "tenant", "4.0.11", "4.0.11").await;
    ns.delete_with(&platform.namespace);
    let pns = platform.namespace.clone();
    let tenant = capi::in_memory_cluster("tenant", TENANT_START, "v130", 1, &[]);
    capi::create_all(&client, &ns, &tenant).await.unwrap();
    engine::small_cluster(&client, &pns, "global").await;
    let writes = engine::record_writes(&client, &pns);
    project::create_request(
        &client,
        &pns,
        "global-to-4-3",
        json!({"clusterName": "global", "targetVersion": "4.3"}),
    )
    .await;
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(platform.controller_args());
    let label = format!("{ns}-global");
    let mut controller = Controller::start_as(&label, &harness::env().kubeconfig, &args);

    // Blocked by the tenant cluster, named with what it declares; WorkloadBelowGlobal does not
    // apply to the global cluster itself.
    let tenant_name = format!("{ns}/tenant");
    let blocked = project::wait_request(
        &client,
        &pns,
        "global-to-4-3",
        Duration::from_secs(120),
        |ur| {
            check(ur, CheckName::WorkloadsCompatible)
                .is_some_and(|(s, m)| s == CheckState::Failed && m.contains(&tenant_name))
        },
    )
    .await;
    let (_, message) = check(&blocked, CheckName::WorkloadsCompatible).unwrap();
    eprintln!("WorkloadsCompatible: {message}");
    assert!(message.contains("1.30"), "{message}");
    assert_eq!(
        blocked.status.as_ref().unwrap().phase,
        Some(Phase::Preflight)
    );
    assert!(
        check(&blocked, CheckName::WorkloadBelowGlobal)
            .is_none_or(|(s, _)| s == CheckState::Passed),
        "{:?}",
        check(&blocked, CheckName::WorkloadBelowGlobal)
    );
    let cvsh = platform.cvsh(&client, "global").await;
    assert!(
        cvsh["spec"]["desiredUpdate"].is_null(),
        "Phase 1 started while blocked: {}",
        cvsh["spec"]
    );

    // The tenant's control plane moves into the range: the global request proceeds (woken by
    // that KCP's change, not by a timer).
    capi::kcp_api(&client, &ns)
        .patch(
            "tenant-cp",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"version": START}})),
        )
        .await
        .unwrap();
    let moved = std::time::Instant::now();
    project::wait_request(
        &client,
        &pns,
        "global-to-4-3",
        Duration::from_secs(120),
        |ur| {
            check(ur, CheckName::WorkloadsCompatible).is_some_and(|(s, _)| s == CheckState::Passed)
        },
    )
    .await;
    let woke = moved.elapsed();
    eprintln!("WorkloadsCompatible passed {woke:?} after the tenant's KCP moved to {START}");
    assert!(
        woke < Duration::from_secs(30),
        "re-checked only by a timer: {woke:?}"
    );

    // Evicted while the second hop's control plane rolls out, rescheduled, resumed.
    project::wait_request(
        &client,
        &pns,
        "global-to-4-3",
        engine::UPGRADE_TIMEOUT,
        |ur| {
            ur.status.as_ref().is_some_and(|s| {
                s.plan
                    .get(2)
                    .is_some_and(|st| st.state == StepState::InProgress)
            })
        },
    )
    .await;
    controller.kill();
    eprintln!("the global cluster's controller evicted during step 3");
    let _rescheduled = Controller::start_as(&label, &harness::env().kubeconfig, &args);
    let done = project::wait_request(
        &client,
        &pns,
        "global-to-4-3",
        engine::UPGRADE_TIMEOUT,
        |ur| ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded),
    )
    .await;
    assert_eq!(
        done.status.as_ref().unwrap().progress.as_deref(),
        Some("6/6")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = writes.lock().unwrap().clone();
    assert::writes_in_order(
        &writes,
        "KubeadmControlPlane",
        &[START, "v1.32.11-2", "v1.33.7-4", "v1.34.5-3"],
    );
    let cvsh = platform.cvsh(&client, "global").await;
    assert!(
        cvsh["spec"]["desiredUpdate"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("4.3")),
        "Phase 1 of the global cluster: {}",
        cvsh["spec"]
    );
    ns.finish(&client).await;
}
