//! The upgrade engine on the real control plane: a 3-CP / 2x2-worker in-memory cluster goes
//! from Kubernetes 1.31 (ACP 4.0) to the 4.3 row one minor at a time, also across a controller
//! crash; invalid requests stall with their reason and touch nothing. The clean run is also
//! watched the way an operator would: `/metrics` scraped throughout, `kubectl describe` at the
//! end.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::describe::{self, EventRow};
use e2e::engine::*;
use e2e::harness;
use e2e::project::{self, Controller, create_request, wait_request};
use e2e::scrape::{self, Timeline};
use e2e::{assert, capi};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use upgrade_controller::api::{Phase, PlanStepKind, UpgradeRequest};

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
    let controller = Controller::start_with(&ns, &run.platform.controller_args());
    let scraper = scrape::start(controller.metrics_url().await, Duration::from_millis(500));
    let (writes, gates) = run.succeeded(&client).await;
    // The controller's cache may trail the API server a moment: stop once /metrics shows it.
    scraper
        .until(Duration::from_secs(30), "the request Succeeded", |s| {
            s.value(PHASE, "phase=\"Succeeded\"") == Some(1.0)
        })
        .await;
    let timeline = scraper.stop();
    let ur = Api::<UpgradeRequest>::namespaced(client.clone(), &ns)
        .get("to-4-3")
        .await
        .unwrap();
    metrics_moved(&timeline, &ns, &ur, &writes);

    let out = describe::describe("upgraderequest", "to-4-3", &ns);
    eprintln!("kubectl describe upgraderequest to-4-3 -n {ns}:\n{out}");
    events_tell_the_story(&describe::events(&out), &ur);

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

const PHASE: &str = "upgrade_controller_requests";
const RECONCILES: &str = "upgrade_controller_reconcile_duration_seconds";
const STEP: &str = "upgrade_controller_request_step";
const STEP_DURATION: &str = "upgrade_controller_step_duration_seconds";
const WRITES: &str = "upgrade_controller_writes_total";

/// The order a clean run's phases come in (Preflight again before each hop).
const PHASE_ORDER: [&str; 6] = [
    "None",
    "Pending",
    "Preflight",
    "UpgradingExtensions",
    "Upgrading",
    "Succeeded",
];

/// The figures a scrape of `/metrics` every 500 ms saw move during the clean run: the phase
/// gauge walked forward to Succeeded (back to Preflight only for a hop's preflight), the reconcile histogram kept counting, the step gauge
/// went through every step, each finished step was timed and each write counted.
fn metrics_moved(t: &Timeline, ns: &str, ur: &UpgradeRequest, writes: &[Write]) {
    let plan = &ur.status.as_ref().unwrap().plan;
    let took = t.last().at - t.first().at;
    eprintln!(
        "/metrics: {} scrapes over {took:?} ({} without an answer)",
        t.scrapes.len(),
        t.failed
    );
    assert_eq!(t.failed, 0, "/metrics did not always answer");
    assert!(
        t.scrapes.len() >= 20,
        "too few scrapes for a timeline: {}",
        t.scrapes.len()
    );

    // Phase gauge: exactly one request, in one phase at a time, moving only forward (but
    // for Preflight, which runs again before a hop).
    let phases = t.nonzero(PHASE);
    eprintln!("phase gauge: {phases:?}");
    let mut walked: Vec<&str> = Vec::new();
    for (at, set) in &phases {
        match &set[..] {
            // Before the watch cache has its first list.
            [] if walked.is_empty() => {}
            [one] => {
                let (phase, n) = one.split_once('=').unwrap();
                assert_eq!(n, "1", "{one} at {at:?}: one request only");
                walked.push(phase);
            }
            other => panic!("phase gauge at {at:?} is {other:?}: {phases:?}"),
        }
    }
    let mut forward: Vec<usize> = walked
        .iter()
        .filter(|p| **p != "Preflight")
        .map(|p| {
            PHASE_ORDER
                .iter()
                .position(|o| o == p)
                .unwrap_or_else(|| panic!("phase {p} in a clean run: {phases:?}"))
        })
        .collect();
    forward.dedup();
    assert!(
        forward.windows(2).all(|w| w[0] < w[1]),
        "the phase went back: {phases:?}"
    );
    for phase in ["UpgradingExtensions", "Upgrading", "Succeeded"] {
        assert!(walked.contains(&phase), "never {phase}: {walked:?}");
    }
    assert_eq!(walked.last(), Some(&"Succeeded"), "{walked:?}");

    // Reconcile histogram: never shrinks, keeps counting while the hops run, and its buckets
    // are cumulative up to +Inf = count.
    let counts: Vec<f64> = t
        .series(&format!("{RECONCILES}_count"), "")
        .into_iter()
        .map(|c| c.expect("the reconcile histogram in every scrape"))
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "the reconcile count went down: {counts:?}"
    );
    let upgrading: Vec<f64> = t
        .scrapes
        .iter()
        .zip(&counts)
        .filter(|(s, _)| s.value(PHASE, "phase=\"Upgrading\"") == Some(1.0))
        .map(|(_, c)| *c)
        .collect();
    let (first, last) = (counts[0], *counts.last().unwrap());
    eprintln!(
        "reconcile histogram count: {first} at the first scrape, {} -> {} while Upgrading, {last} at the last ({} distinct values)",
        upgrading.first().unwrap(),
        upgrading.last().unwrap(),
        t.changes(&format!("{RECONCILES}_count"), "").len()
    );
    assert!(
        upgrading.last().unwrap() - upgrading.first().unwrap() >= plan.len() as f64,
        "fewer reconciles than steps while Upgrading: {upgrading:?}"
    );
    for s in [t.first(), t.last()] {
        let buckets = s.samples(&format!("{RECONCILES}_bucket"));
        assert_eq!(buckets.len(), 18, "17 buckets and +Inf: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "buckets not cumulative: {buckets:?}"
        );
        assert_eq!(buckets.last().unwrap().0, "le=\"+Inf\"");
        assert_eq!(
            Some(buckets.last().unwrap().1),
            s.value(&format!("{RECONCILES}_count"), "")
        );
    }
    let grew = |s: &scrape::Scrape| s.samples(&format!("{RECONCILES}_bucket"));
    let (b0, b1) = (grew(t.first()), grew(t.last()));
    eprintln!("reconcile buckets at the last scrape: {b1:?}");
    assert!(
        b0.iter()
            .zip(&b1)
            .any(|(a, b)| a.1 < b.1 && a.0 != "le=\"+Inf\""),
        "no finite bucket grew: {b0:?} -> {b1:?}"
    );

    // The request's step gauge: through every step, one at a time, to steps + 1.
    let step_labels = format!("namespace=\"{ns}\",name=\"to-4-3\"");
    let steps = t.changes(STEP, &step_labels);
    eprintln!("step gauge: {steps:?}");
    let values: Vec<f64> = steps.iter().filter_map(|(_, v)| *v).collect();
    assert!(values[0] <= 1.0, "scraping began after step 1: {steps:?}");
    assert!(
        values.windows(2).all(|w| w[1] == w[0] + 1.0),
        "the step gauge did not go one step at a time: {steps:?}"
    );
    assert_eq!(*values.last().unwrap(), plan.len() as f64 + 1.0);

    // Every finished step timed under its kind (its sum agreeing with the status's times to
    // their one-second resolution), one at a time.
    for (kind, name) in [
        (PlanStepKind::ControlPlane, "ControlPlane"),
        (PlanStepKind::Workers, "Workers"),
    ] {
        let mine: Vec<_> = plan.iter().filter(|s| s.kind == kind).collect();
        let labels = format!("kind=\"{name}\"");
        let counts = t.changes(&format!("{STEP_DURATION}_count"), &labels);
        eprintln!("{name} step duration count: {counts:?}");
        let seen: Vec<f64> = counts.iter().filter_map(|(_, v)| *v).collect();
        let expected: Vec<f64> = (1..=mine.len()).map(|n| n as f64).collect();
        assert_eq!(seen, expected, "{name} steps timed: {counts:?}");
        let sum = t
            .last()
            .value(&format!("{STEP_DURATION}_sum"), &labels)
            .unwrap();
        let status_sum: f64 = mine
            .iter()
            .map(|s| {
                let (a, b) = (
                    s.started_at.as_ref().unwrap(),
                    s.finished_at.as_ref().unwrap(),
                );
                b.0.duration_since(a.0).as_secs_f64()
            })
            .sum();
        eprintln!("{name} step durations: {sum:.1} s in /metrics, {status_sum} s by status");
        assert!(
            (sum - status_sum).abs() <= mine.len() as f64,
            "{name}: {sum} s in /metrics, {status_sum} s by status"
        );
    }

    // Writes: Phase 1 once, one control-plane write per hop, as the KCP watch saw them.
    let cvsh = t.changes(WRITES, "kind=\"ClusterVersionShadow\"");
    let cp = t.changes(WRITES, "kind=\"ControlPlane\"");
    let workers = t.changes(WRITES, "kind=\"Workers\"");
    eprintln!("writes: ClusterVersionShadow {cvsh:?}, ControlPlane {cp:?}, Workers {workers:?}");
    let last = |name: &str| t.last().value(WRITES, &format!("kind=\"{name}\""));
    assert_eq!(last("ClusterVersionShadow"), Some(1.0));
    let kcp_writes = writes
        .iter()
        .filter(|w| w.kind == "KubeadmControlPlane" && w.version != START)
        .count();
    assert_eq!(last("ControlPlane"), Some(kcp_writes as f64));
    assert_eq!(cp.len(), kcp_writes + 1, "counted one by one: {cp:?}");
    let worker_steps = plan
        .iter()
        .filter(|s| s.kind == PlanStepKind::Workers)
        .count();
    assert_eq!(last("Workers"), Some(worker_steps as f64), "{workers:?}");
}

/// The Events section of `kubectl describe` after the clean run: one row per Event (none
/// folded into a series of repeats), the phases in order, the plan, Phase 1 asked and
/// finished, then every step started and finished in turn. The only warning allowed is the
/// preflight waiting a moment (etcd reports itself unhealthy for a while after the cluster is
/// created).
fn events_tell_the_story(events: &[EventRow], ur: &UpgradeRequest) {
    let status = ur.status.as_ref().unwrap();
    assert!(!events.is_empty(), "describe shows no Events");
    for e in events {
        assert_eq!(e.from, "upgrade-controller", "{e:?}");
        assert!(
            e.type_ == "Normal" || e.reason == "PreflightBlocked",
            "a warning in a clean run: {e:?}"
        );
        // kube's Recorder folds an Event into an earlier one with the same type, action and
        // reason (whatever its note): the row keeps the first note and only counts the rest.
        assert!(
            !e.age.contains("(x"),
            "Events folded into one row, their own messages lost: {e:?}"
        );
    }
    // Phase changes chain: each starts where the one before ended, ending at Succeeded.
    let messages = |reason: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e.reason == reason)
            .map(|e| e.message.as_str())
            .collect()
    };
    let phases = messages("PhaseChanged");
    let mut at = "None".to_string();
    for m in &phases {
        let (from, rest) = m.split_once(" → ").unwrap_or_else(|| panic!("{m}"));
        let to = rest.split(':').next().unwrap();
        let from = from.trim_start_matches("Some(").trim_end_matches(')');
        assert_eq!(from, at, "phase changes out of order: {phases:#?}");
        at = to.to_string();
    }
    assert_eq!(at, "Succeeded", "{phases:#?}");
    for phase in ["Preflight", "UpgradingExtensions", "Upgrading"] {
        assert!(
            phases.iter().any(|m| m.contains(&format!(" → {phase}:"))),
            "no change to {phase}: {phases:#?}"
        );
    }
    assert!(
        phases.last().unwrap().contains("the cluster is at 4.3.2"),
        "{phases:#?}"
    );

    // The story told by Progress: planned, Phase 1 asked and finished, each step's start and
    // finish, in this order and nothing else.
    let progress = messages("Progress");
    let mut expected = vec![
        format!("planned {} steps to 4.3.2", status.plan.len()),
        "Phase 1: set".to_string(),
        "Phase 1 finished".to_string(),
    ];
    for step in &status.plan {
        for edge in ["started", "finished"] {
            expected.push(format!(
                "step {}: {} {edge}",
                step.index + 1,
                step.describe()
            ));
        }
    }
    assert_eq!(
        progress.len(),
        expected.len(),
        "Progress events: {progress:#?}"
    );
    for (got, want) in progress.iter().zip(&expected) {
        assert!(
            got.starts_with(want.as_str()),
            "{got:?} is not {want:?}: {progress:#?}"
        );
    }
    // The same story as the request's own history (newest first there).
    let history: Vec<&str> = status
        .history
        .iter()
        .rev()
        .map(|h| h.message.as_str())
        .collect();
    assert_eq!(
        progress, history,
        "Progress events and status.history differ"
    );
    // CAPI v1.10 never creates the kubelet-client binding: the first control-plane step does,
    // once (controller/src/apply/kubelet_access.rs).
    let granted = events
        .iter()
        .filter(|e| e.reason == "KubeletClientAccessGranted")
        .count();
    assert_eq!(granted, 1, "kubelet-client binding Events: {events:#?}");
    let others: Vec<&EventRow> = events
        .iter()
        .filter(|e| {
            ![
                "Progress",
                "PhaseChanged",
                "PreflightBlocked",
                "KubeletClientAccessGranted",
            ]
            .contains(&e.reason.as_str())
        })
        .collect();
    assert!(others.is_empty(), "unexpected Events: {others:#?}");
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
    e2e::testenv::apply(&client, &[gap]).await.unwrap();
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
