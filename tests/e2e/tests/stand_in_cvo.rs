//! The stand-in CVO (a test double of the platform's Cluster Version Operator, DOMAIN.md §2) on
//! the real control plane: it initialises a ClusterVersionShadow's status, walks an upgrade
//! through its stages into history, and obeys the test controls (failed preflight, stall) with
//! recovery when a control is removed — all without a test writing the cvsh status itself.
//!
//! Each test runs its own stand-in process in its own namespace (the first one in the default
//! `cpaas-system`), so they run in parallel without sharing objects.

use std::time::{Duration, Instant};

use e2e::cvo::{self, StandInCvo};
use e2e::harness::{self, TestNamespace};
use e2e::project;
use futures::TryStreamExt;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

const FROM: &str = "4.2.5";
const TO: &str = "4.3.2";
const TIMEOUT: Duration = Duration::from_secs(60);

/// The test's own namespace with a stand-in CVO serving it.
async fn setup(client: &kube::Client, prefix: &str) -> (TestNamespace, StandInCvo) {
    project::install(client).await;
    let ns = harness::namespace(client, prefix).await;
    let cvo = StandInCvo::start(&ns);
    (ns, cvo)
}

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// `(status, reason)` of a condition, for compact assertions.
fn cond(obj: &Value, type_: &str) -> (String, String) {
    let c = condition(obj, type_);
    (
        c["status"].as_str().unwrap_or("").into(),
        c["reason"].as_str().unwrap_or("").into(),
    )
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.into(), reason.into())
}

fn stage_states(obj: &Value) -> String {
    obj["status"]["stages"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    format!(
                        "{}={}",
                        s["name"].as_str().unwrap_or("?"),
                        s["state"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn at(obj: &Value, version: &str) -> bool {
    obj["status"]["current"]["version"] == version && cond(obj, "Ready").0 == "True"
}

/// Watches cvsh `name` until `done` holds and returns every version of it seen on the way
/// (every write, since a watch delivers each revision), or fails after [`TIMEOUT`] with the
/// last one.
async fn follow(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let api = cvo::cvsh_api(client, ns);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(api, cfg).applied_objects());
    let mut seen: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.try_next()).await;
        let obj = match next {
            Ok(Ok(Some(obj))) => serde_json::to_value(obj).unwrap(),
            Ok(Ok(None)) => panic!("the watch on {name} ended"),
            Ok(Err(e)) => panic!("watching {name}: {e}"),
            Err(_) => panic!(
                "{name}: not {what} within {TIMEOUT:?}; last seen:\n{:#}",
                seen.last().unwrap_or(&Value::Null)
            ),
        };
        let finished = done(&obj);
        seen.push(obj);
        if finished {
            return seen;
        }
    }
}

async fn request(client: &kube::Client, ns: &str, name: &str, version: &str) {
    cvo::cvsh_api(client, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"desiredUpdate": {"version": version}}})),
        )
        .await
        .expect("setting spec.desiredUpdate.version");
}

async fn get(client: &kube::Client, ns: &str, name: &str) -> Value {
    serde_json::to_value(cvo::cvsh_api(client, ns).get(name).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_cvsh_gets_its_installed_version_ready_and_the_platform_checks() {
    let client = harness::client().await;
    project::install(&client).await;
    // Idempotent: the namespace may exist from an earlier run on the same control plane.
    cvo::ensure_namespace(&client, cvo::NAMESPACE)
        .await
        .unwrap();
    cvo::ensure_namespace(&client, cvo::NAMESPACE)
        .await
        .unwrap();
    let _cvo = StandInCvo::start(cvo::NAMESPACE);
    let suffix = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 0xff_ffff
    );
    let name = format!("initial-{suffix}");
    let bare = format!("no-version-{suffix}");
    cvo::create_cvsh(&client, &name, FROM).await.unwrap();
    // No installed-version annotation: the stand-in has nothing to start from and leaves it.
    let api = cvo::cvsh_api(&client, cvo::NAMESPACE);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": cvo::API_VERSION, "kind": "ClusterVersionShadow",
        "metadata": {"name": bare, "namespace": cvo::NAMESPACE}, "spec": {},
    }))
    .unwrap();
    api.create(&Default::default(), &obj).await.unwrap();

    let t0 = Instant::now();
    let seen = follow(&client, cvo::NAMESPACE, &name, "initialised", |o| {
        at(o, FROM)
    })
    .await;
    eprintln!("initialised after {:?}", t0.elapsed());
    let obj = seen.last().unwrap();
    assert_eq!(cond(obj, "Ready"), pair("True", "AsExpected"));
    assert_eq!(cond(obj, "Reconciling"), pair("False", "AsExpected"));
    assert_eq!(cond(obj, "Stalled"), pair("False", "AsExpected"));
    assert_eq!(cond(obj, "PreflightReady"), pair("True", "AsExpected"));
    for c in obj["status"]["conditions"].as_array().unwrap() {
        assert!(c["lastTransitionTime"].is_string(), "{c}");
        assert!(c["message"].is_string(), "{c}");
    }
    let checks = obj["status"]["preflight"]["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, cvo::CHECKS);
    assert!(
        checks
            .iter()
            .all(|c| c["state"] == "Passed" && c["policy"] == "Block"),
        "{checks:#?}"
    );
    assert!(obj["status"]["preflight"]["observedAt"].is_string());
    assert_eq!(obj["status"]["desired"]["version"], FROM);

    // Nothing changes, so nothing is written.
    let rv = obj["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get(&client, cvo::NAMESPACE, &name).await["metadata"]["resourceVersion"],
        rv
    );
    assert!(
        get(&client, cvo::NAMESPACE, &bare)
            .await
            .get("status")
            .is_none()
    );

    for n in [&name, &bare] {
        api.delete(n, &Default::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_walks_core_then_aligned_extensions_and_ends_ready_with_history() {
    let client = harness::client().await;
    let (ns, _cvo) = setup(&client, "cvo-upgrade").await;
    cvo::create_cvsh_in(&client, &ns, "prod-a", FROM)
        .await
        .unwrap();
    follow(&client, &ns, "prod-a", "initialised", |o| at(o, FROM)).await;

    let t0 = Instant::now();
    request(&client, &ns, "prod-a", TO).await;
    let seen = follow(&client, &ns, "prod-a", "upgraded", |o| at(o, TO)).await;
    let took = t0.elapsed();
    eprintln!(
        "upgrade {FROM} -> {TO} took {took:?} over {} writes",
        seen.len()
    );

    let mut walk: Vec<String> = Vec::new();
    for o in &seen {
        let s = stage_states(o);
        if !s.is_empty() && walk.last() != Some(&s) {
            walk.push(s);
        }
    }
    assert_eq!(
        walk,
        [
            "Core=Running,AlignedExtensions=Pending",
            "Core=Completed,AlignedExtensions=Pending",
            "Core=Completed,AlignedExtensions=Running",
            "Core=Completed,AlignedExtensions=Completed",
        ]
    );
    assert!(
        seen.iter()
            .any(|o| cond(o, "Reconciling") == pair("True", "Upgrading")
                && cond(o, "Ready").0 == "False"
                && o["status"]["desired"]["version"] == TO
                && o["status"]["current"]["version"] == FROM),
        "an in-progress state: Reconciling=True, Ready=False, current {FROM}, desired {TO}"
    );

    let done = seen.last().unwrap();
    let status = &done["status"];
    assert_eq!(status["desired"]["version"], TO);
    assert_eq!(cond(done, "Reconciling"), pair("False", "AsExpected"));
    assert_eq!(cond(done, "Stalled").0, "False");
    assert!(
        condition(done, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains(TO)
    );
    let history = status["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0]["version"], TO);
    assert_eq!(history[0]["state"], "Completed");
    assert!(history[0]["startedTime"].is_string() && history[0]["completionTime"].is_string());
    for stage in status["stages"].as_array().unwrap() {
        assert!(
            stage["startedTime"].is_string() && stage["completionTime"].is_string(),
            "{stage}"
        );
    }
    // Two stages of at least --stage-seconds 1 each.
    assert!(took >= Duration::from_secs(2), "{took:?}");

    // At rest again: no more writes.
    let rv = done["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get(&client, &ns, "prod-a").await["metadata"]["resourceVersion"],
        rv
    );
    ns.finish(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_preflight_check_blocks_the_upgrade_until_it_passes() {
    let client = harness::client().await;
    let (ns, _cvo) = setup(&client, "cvo-preflight").await;
    cvo::set_control_in(
        &client,
        &ns,
        "fail-preflight.prod-b",
        Some(
            "PlatformLicense: the platform license expired\nClusterRunning: node cp-1 is NotReady",
        ),
    )
    .await
    .unwrap();
    cvo::create_cvsh_in(&client, &ns, "prod-b", FROM)
        .await
        .unwrap();
    let seen = follow(&client, &ns, "prod-b", "initialised", |o| {
        o["status"]["current"]["version"] == FROM
    })
    .await;
    let obj = seen.last().unwrap();
    // The reason is the first failed check in the platform's order.
    assert_eq!(cond(obj, "PreflightReady"), pair("False", "ClusterRunning"));
    assert_eq!(
        condition(obj, "PreflightReady")["message"],
        "node cp-1 is NotReady"
    );
    let checks = obj["status"]["preflight"]["checks"].as_array().unwrap();
    let failed: Vec<(&str, &str, &str)> = checks
        .iter()
        .filter(|c| c["state"] == "Failed")
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["reason"].as_str().unwrap(),
                c["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            ("ClusterRunning", "CheckFailed", "node cp-1 is NotReady"),
            (
                "PlatformLicense",
                "CheckFailed",
                "the platform license expired"
            ),
        ]
    );

    request(&client, &ns, "prod-b", TO).await;
    let seen = follow(&client, &ns, "prod-b", "blocked", |o| {
        cond(o, "Reconciling") == pair("False", "PreflightFailed")
    })
    .await;
    let blocked = seen.last().unwrap();
    assert_eq!(blocked["status"]["desired"]["version"], TO);
    assert!(
        condition(blocked, "Reconciling")["message"]
            .as_str()
            .unwrap()
            .contains("ClusterRunning")
    );
    // It stays blocked: no stages, no history, still at FROM and Ready there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = get(&client, &ns, "prod-b").await;
    assert_eq!(
        still["metadata"]["resourceVersion"],
        blocked["metadata"]["resourceVersion"]
    );
    assert!(still["status"].get("history").is_none() && still["status"].get("stages").is_none());
    assert_eq!(still["status"]["current"]["version"], FROM);
    assert_eq!(cond(&still, "Ready"), pair("True", "AsExpected"));

    let t0 = Instant::now();
    cvo::set_control_in(&client, &ns, "fail-preflight.prod-b", None)
        .await
        .unwrap();
    let seen = follow(
        &client,
        &ns,
        "prod-b",
        "upgraded after the checks passed",
        |o| at(o, TO),
    )
    .await;
    eprintln!("recovered and upgraded in {:?}", t0.elapsed());
    let done = seen.last().unwrap();
    assert_eq!(cond(done, "PreflightReady"), pair("True", "AsExpected"));
    assert!(
        done["status"]["preflight"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "Passed")
    );
    assert_eq!(done["status"]["history"][0]["state"], "Completed");
    ns.finish(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stall_stops_at_aligned_extensions_with_its_reason_and_resumes_when_lifted() {
    let client = harness::client().await;
    let (ns, _cvo) = setup(&client, "cvo-stall").await;
    cvo::set_control_in(
        &client,
        &ns,
        "stall.prod-c",
        Some("ExtensionUpgradeFailed: kube-ovn upgrade hook timed out"),
    )
    .await
    .unwrap();
    cvo::create_cvsh_in(&client, &ns, "prod-c", FROM)
        .await
        .unwrap();
    follow(&client, &ns, "prod-c", "initialised", |o| at(o, FROM)).await;

    request(&client, &ns, "prod-c", TO).await;
    let seen = follow(&client, &ns, "prod-c", "stalled", |o| {
        cond(o, "Stalled").0 == "True"
    })
    .await;
    let stalled = seen.last().unwrap();
    assert_eq!(
        cond(stalled, "Stalled"),
        pair("True", "ExtensionUpgradeFailed")
    );
    assert_eq!(
        condition(stalled, "Stalled")["message"],
        "kube-ovn upgrade hook timed out"
    );
    assert_eq!(cond(stalled, "Reconciling").0, "False");
    assert_eq!(cond(stalled, "Ready").0, "False");
    assert_eq!(
        stage_states(stalled),
        "Core=Completed,AlignedExtensions=Failed"
    );
    assert_eq!(
        stalled["status"]["stages"][1]["message"],
        "kube-ovn upgrade hook timed out"
    );
    assert_eq!(stalled["status"]["current"]["version"], FROM);
    assert_eq!(stalled["status"]["history"][0]["state"], "Partial");
    assert!(
        stalled["status"]["history"][0]
            .get("completionTime")
            .is_none()
    );

    // It stays stalled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = get(&client, &ns, "prod-c").await;
    assert_eq!(
        still["metadata"]["resourceVersion"],
        stalled["metadata"]["resourceVersion"]
    );

    let t0 = Instant::now();
    cvo::set_control_in(&client, &ns, "stall.prod-c", None)
        .await
        .unwrap();
    let seen = follow(
        &client,
        &ns,
        "prod-c",
        "upgraded after the stall was lifted",
        |o| at(o, TO),
    )
    .await;
    eprintln!("resumed and finished in {:?}", t0.elapsed());
    assert!(
        seen.iter().any(
            |o| stage_states(o) == "Core=Completed,AlignedExtensions=Running"
                && cond(o, "Stalled").0 == "False"
                && cond(o, "Reconciling").0 == "True"
        ),
        "resumed: AlignedExtensions Running again, Stalled=False, Reconciling=True"
    );
    let done = seen.last().unwrap();
    assert_eq!(cond(done, "Stalled"), pair("False", "AsExpected"));
    let history = done["status"]["history"].as_array().unwrap();
    assert_eq!(
        history.len(),
        1,
        "the resumed upgrade is the same history entry"
    );
    assert_eq!(history[0]["state"], "Completed");
    ns.finish(&client).await;
}
