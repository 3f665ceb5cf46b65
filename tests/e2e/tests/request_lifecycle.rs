//! A request's life against real CAPI controllers (in-memory machines): two requests for one
//! cluster (one wins, by a rule the other states truthfully, and the other succeeds once the
//! cluster stands at its target, its plan emptied), the plan's inputs fixed once Phase 1 was
//! asked, finished steps kept across spec edits, and a request deleted mid-hop (its rollout
//! finishes, nothing new starts, the Cluster records where it stopped).

use std::time::{Duration, Instant};

use e2e::audit;
use e2e::capi;
use e2e::harness::{self, TestNamespace};
use e2e::platform::Platform;
use e2e::project::{Controller, create_request, wait_request};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use upgrade_controller::api::{Phase, StepState, UpgradeRequest};

const START: &str = "v1.33.7-4";
const TARGET_K8S: &str = "v1.34.5-3";
const WAIT: Duration = Duration::from_secs(600);

/// A 1-CP / 1-worker in-memory cluster `lc` at ACP 4.2.5 (Kubernetes 1.33), rolled out, with
/// its platform (global at 4.3.2).
async fn cluster(client: &kube::Client, prefix: &str) -> (TestNamespace, Platform) {
    let mut ns = harness::namespace(client, prefix).await;
    e2e::project::install(client).await;
    let objects = capi::in_memory_cluster("lc", START, "v133", 1, &[("pool-a", 1)]);
    capi::create_all(client, &ns, &objects).await.unwrap();
    capi::wait_done("initial control plane", Duration::from_secs(300), || {
        capi::kcp_rollout_pending(client, &ns, "lc-cp", START)
    })
    .await
    .unwrap();
    capi::wait_done("initial pool", Duration::from_secs(300), || {
        capi::md_rollout_pending(client, &ns, "lc-pool-a", START)
    })
    .await
    .unwrap();
    let platform = Platform::start(client, &ns, "lc", "4.2.5", "4.3.2").await;
    ns.delete_with(&platform.namespace);
    (ns, platform)
}

fn phase(ur: &UpgradeRequest) -> Option<Phase> {
    ur.status.as_ref().and_then(|s| s.phase)
}

fn requested(ur: &UpgradeRequest) -> bool {
    ur.status
        .as_ref()
        .and_then(|s| s.aligned_extensions.as_ref())
        .is_some_and(|e| e.requested_at.is_some())
}

fn ready_message(ur: &UpgradeRequest) -> String {
    ur.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The audit time of this test's own (non-controller) `patch` of request `name` that set
/// annotation `touch=<value>`: the latest such patch.
fn touched_at(ns: &str, name: &str) -> String {
    audit::entries()
        .into_iter()
        .filter(|e| {
            !e.by_controller()
                && e.verb == "patch"
                && e.resource == "upgraderequests"
                && e.subresource.is_empty()
                && e.namespace == ns
                && e.name == name
        })
        .map(|e| e.at)
        .max()
        .expect("the test's own patch is audited")
}

/// Touches request `name` (an annotation: a watch event, so the controller reconciles it) and
/// returns once the controller's metrics count one more finished reconcile of it, with the
/// audit time of the touch.
async fn touch_and_see_a_reconcile(
    api: &Api<UpgradeRequest>,
    controller: &Controller,
    ns: &str,
    name: &str,
    n: u32,
) -> String {
    let before = controller.reconciles(ns, name).await;
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"e2e/touch": n.to_string()}}})),
    )
    .await
    .unwrap();
    let touched = touched_at(ns, name);
    let start = Instant::now();
    while controller.reconciles(ns, name).await <= before {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the controller never reconciled {name} after touch {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    touched
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_per_cluster_wins_truthfully_and_the_other_succeeds_at_its_target() {
    let client = harness::client().await;
    let (ns, platform) = cluster(&client, "lc-single").await;
    let api = Api::<UpgradeRequest>::namespaced(client.clone(), &ns);
    // Created back to back, before any controller runs: usually within the same second.
    create_request(
        &client,
        &ns,
        "b-first",
        json!({"clusterName": "lc", "targetVersion": "4.3"}),
    )
    .await;
    create_request(
        &client,
        &ns,
        "a-second",
        json!({"clusterName": "lc", "targetVersion": "4.3"}),
    )
    .await;
    let created = |ur: &UpgradeRequest| ur.metadata.creation_timestamp.clone().unwrap().0;
    let (b, a) = (
        api.get("b-first").await.unwrap(),
        api.get("a-second").await.unwrap(),
    );
    let same_second = created(&a) == created(&b);
    // Same second: the first by name goes first; otherwise the older one.
    let (winner, held) = if same_second {
        ("a-second", "b-first")
    } else {
        ("b-first", "a-second")
    };
    eprintln!("created in the same second: {same_second}; expected winner {winner}");
    let controller = Controller::start_with(&ns, &platform.controller_args());

    let w = wait_request(&client, &ns, winner, WAIT, requested).await;
    let h = wait_request(&client, &ns, held, WAIT, |ur| {
        phase(ur) == Some(Phase::Preflight)
    })
    .await;
    assert!(!requested(&h), "both requests asked the platform");
    let check = h
        .status
        .as_ref()
        .unwrap()
        .preflight
        .as_ref()
        .unwrap()
        .checks
        .iter()
        .find(|c| c.name == upgrade_controller::api::CheckName::SingleActiveRequest)
        .unwrap()
        .clone();
    eprintln!("{held}: {}", check.message);
    assert!(check.message.contains(winner), "{}", check.message);
    let truthful = if same_second {
        check.message.contains("same second") || check.message.contains("already holds")
    } else {
        check.message.contains("before this request") || check.message.contains("already holds")
    };
    assert!(truthful, "{}", check.message);
    assert!(requested(&w));

    // Once the platform was asked, the plan's inputs are fixed by the API server...
    let err = api
        .patch(
            winner,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"targetVersion": "4.2"}})),
        )
        .await
        .expect_err("targetVersion is fixed once Phase 1 was requested");
    assert!(err.to_string().contains("fixed once Phase 1"), "{err}");
    // ... while pausing is an edit like any other, and finished steps keep their numbers.
    wait_request(&client, &ns, winner, WAIT, |ur| {
        ur.status.as_ref().is_some_and(|s| {
            s.plan
                .first()
                .is_some_and(|st| st.state == StepState::InProgress)
        })
    })
    .await;
    api.patch(
        winner,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    let paused = wait_request(&client, &ns, winner, WAIT, |ur| {
        phase(ur) == Some(Phase::Paused)
    })
    .await;
    let s = paused.status.unwrap();
    assert_eq!(s.progress.as_deref(), Some("1/2"), "{:?}", s.plan);
    assert_eq!(
        s.plan.iter().map(|p| p.index).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(s.plan[0].state, StepState::Succeeded);
    api.patch(
        winner,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await
    .unwrap();
    let done = wait_request(&client, &ns, winner, WAIT, |ur| {
        phase(ur) == Some(Phase::Succeeded)
    })
    .await;
    assert_eq!(done.status.unwrap().progress.as_deref(), Some("2/2"));

    // The held request re-plans from where the winner left the cluster: nothing to do.
    let h = wait_request(&client, &ns, held, WAIT, |ur| {
        phase(ur) == Some(Phase::Succeeded)
    })
    .await;
    assert!(ready_message(&h).contains("4.3.2"), "{}", ready_message(&h));
    let raw: serde_json::Value = serde_json::to_value(
        Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            &ns,
            &kube::core::ApiResource::erase::<UpgradeRequest>(&()),
        )
        .get(held)
        .await
        .unwrap(),
    )
    .unwrap();
    assert!(
        raw["status"]["plan"]
            .as_array()
            .is_none_or(|p| p.is_empty()),
        "the emptied plan is emptied on the server: {}",
        raw["status"]["plan"]
    );
    assert_eq!(raw["status"]["progress"], "0/0");
    // No write follows: two complete reconciles of the finished request (counted by the
    // controller's own metrics) change nothing, by the audit log.
    touch_and_see_a_reconcile(&api, &controller, &ns, held, 1).await;
    let from = touch_and_see_a_reconcile(&api, &controller, &ns, held, 2).await;
    touch_and_see_a_reconcile(&api, &controller, &ns, held, 3).await;
    let writes: Vec<_> = audit::controller_requests("upgraderequests", &ns, held)
        .into_iter()
        .filter(|e| e.is_write() && e.at > from)
        .collect();
    assert!(
        writes.is_empty(),
        "the controller wrote a finished request: {writes:?}"
    );
    ns.finish(&client).await;
    platform.delete(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_request_mid_hop_lets_the_rollout_finish_and_records_where_it_stopped() {
    let client = harness::client().await;
    let (ns, platform) = cluster(&client, "lc-delete").await;
    let api = Api::<UpgradeRequest>::namespaced(client.clone(), &ns);
    create_request(
        &client,
        &ns,
        "up",
        json!({"clusterName": "lc", "targetVersion": "4.3"}),
    )
    .await;
    let _controller = Controller::start_with(&ns, &platform.controller_args());
    wait_request(&client, &ns, "up", WAIT, |ur| {
        ur.status.as_ref().is_some_and(|s| {
            s.plan
                .first()
                .is_some_and(|st| st.state == StepState::InProgress)
        })
    })
    .await;
    api.delete("up", &DeleteParams::default()).await.unwrap();
    // It stays while the control plane rolls out, and says why.
    let deleting = api.get("up").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let rollout_was_running = !capi::kcp_rollout_pending(&client, &ns, "lc-cp", TARGET_K8S)
        .await
        .unwrap()
        .is_empty();
    let start = Instant::now();
    let mut saw_deleting = false;
    while let Some(ur) = api.get_opt("up").await.unwrap() {
        let ready = ur
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .cloned();
        if let Some(c) = ready.filter(|c| c.reason == "Deleting") {
            if !saw_deleting {
                eprintln!("while deleting: {}", c.message);
            }
            saw_deleting = true;
        }
        assert!(start.elapsed() < WAIT, "the request was never released");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("released {:?} after the delete", start.elapsed());
    if rollout_was_running {
        assert!(
            saw_deleting,
            "the wait for the running rollout was not shown"
        );
    }
    // The rollout it started finished; nothing new was started.
    assert!(
        capi::kcp_rollout_pending(&client, &ns, "lc-cp", TARGET_K8S)
            .await
            .unwrap()
            .is_empty(),
        "the control plane was left half rolled out"
    );
    let md =
        serde_json::to_value(capi::md_api(&client, &ns).get("lc-pool-a").await.unwrap()).unwrap();
    assert_eq!(
        md["spec"]["template"]["spec"]["version"], START,
        "a new step was started"
    );
    // Where it stopped is on the Cluster, and in an Event there.
    let cluster = serde_json::to_value(
        capi::api(&client, &ns, capi::CLUSTER_V1BETA1, "Cluster")
            .get("lc")
            .await
            .unwrap(),
    )
    .unwrap();
    let note = cluster["metadata"]["annotations"]["upgrade.cpaas.io/left-by-deleted-request"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!("Cluster annotation: {note}");
    assert!(
        note.contains("1/2 steps done") && note.contains(TARGET_K8S),
        "{note}"
    );
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("UpgradeRequestDeleted")
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Cluster")),
        "no Event on the Cluster"
    );
    ns.finish(&client).await;
    platform.delete(&client).await;
}
