//! `spec.maintenanceWindow` on the real control plane: a request whose only window opens a
//! minute or two from now plans and passes its preflight at once, then waits with the next
//! opening in status (`Ready=False OutsideMaintenanceWindow`, `InMaintenanceWindow=False`,
//! `status.nextWindow`) having written nothing but its own status (the audit log after a
//! complete reconcile), and asks the platform for Phase 1 only once the real clock has entered
//! the window; the first control-plane write follows inside it. `upgrade-controller status`
//! then shows the running step and the control-plane Machines not yet updated.

use std::time::Duration;

use e2e::engine::{self, KCP};
use e2e::project::{self, Controller};
use e2e::{assert, audit, harness};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use serde_json::json;
use upgrade_controller::api::{Phase, StepState, UpgradeRequest};

const REQUEST: &str = "to-4-3";

/// The first whole minute at least 60 s from now (windows open on a minute).
fn next_minute() -> Timestamp {
    let secs = Timestamp::now().as_second() + 60;
    Timestamp::from_second(secs + (60 - secs.rem_euclid(60)) % 60).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_outside_its_window_writes_nothing_and_starts_when_the_window_opens() {
    let client = harness::client().await;
    let opens = next_minute();
    let start = opens.strftime("%H:%M").to_string();
    let run = engine::start_run(
        &client,
        "window",
        json!({"maintenanceWindow": {"timeZone": "UTC", "windows": [{"start": start, "duration": "2h"}]}}),
    )
    .await;
    let ns = run.ns.to_string();
    let mut controller = Controller::start_with(&ns, &run.platform.controller_args());

    // Planned and past preflight, it waits for the window with the opening in status.
    let ur = project::wait_request(&client, &ns, REQUEST, Duration::from_secs(120), |ur| {
        assert::condition(ur, "Ready").1 == "OutsideMaintenanceWindow"
    })
    .await;
    assert!(
        Timestamp::now() < opens,
        "the test was too slow to see the request wait: {:?}",
        ur.status
    );
    let s = ur.status.clone().unwrap();
    assert_eq!(s.next_window.as_ref().map(|t| t.0), Some(opens));
    assert_eq!(s.phase, Some(Phase::Pending), "nothing started yet");
    let (ready, _, message) = assert::condition(&ur, "Ready");
    assert_eq!(ready, "False");
    let when = format!("{}", opens.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC));
    assert_eq!(
        message,
        format!(
            "Phase 1 starts only inside spec.maintenanceWindow; the next window opens at {when}"
        )
    );
    let (inside, reason, _) = assert::condition(&ur, "InMaintenanceWindow");
    assert_eq!(
        (inside.as_str(), reason.as_str()),
        ("False", "WindowClosed")
    );
    assert_eq!(
        assert::condition(&ur, "Reconciling").1,
        "WaitingForMaintenanceWindow"
    );
    assert!(s.plan.iter().all(|p| p.state == StepState::Pending));
    assert!(
        s.aligned_extensions
            .as_ref()
            .is_none_or(|e| e.requested_at.is_none())
    );

    // After a complete reconcile, still before the window: nothing but the request written.
    controller.settle(&client, &ns).await;
    assert!(Timestamp::now() < opens, "settling took past the opening");
    let cvsh = run.platform.cvsh(&client, "demo").await;
    assert!(
        cvsh["spec"]["desiredUpdate"]["version"].is_null(),
        "Phase 1 was asked for outside the window: {}",
        cvsh["spec"]
    );
    let writes: Vec<_> = audit::entries()
        .into_iter()
        .filter(|e| {
            e.by_controller()
                && e.is_write()
                && (e.namespace == ns || e.namespace == run.platform.namespace)
                && !["upgraderequests", "events"].contains(&e.resource.as_str())
        })
        .collect();
    assert!(writes.is_empty(), "the controller wrote: {writes:?}");

    // The clock enters the window: Phase 1 is asked for then (within the requeue's second
    // and a reconcile), not before; the first hop starts inside the window.
    let ur = project::wait_request(&client, &ns, REQUEST, Duration::from_secs(240), |ur| {
        ur.status
            .as_ref()
            .and_then(|s| s.aligned_extensions.as_ref())
            .is_some_and(|e| e.requested_at.is_some())
    })
    .await;
    let requested = ur
        .status
        .as_ref()
        .unwrap()
        .aligned_extensions
        .as_ref()
        .unwrap()
        .requested_at
        .clone()
        .unwrap()
        .0;
    eprintln!("window opened {opens}, Phase 1 requested {requested}");
    assert!(
        requested >= opens,
        "requested at {requested}, before the window opened at {opens}"
    );
    assert!(
        requested.duration_since(opens) < SignedDuration::from_secs(20),
        "requested {requested}, long after the window opened at {opens}"
    );
    let (inside, _, message) = assert::condition(&ur, "InMaintenanceWindow");
    assert_eq!(inside, "True", "{message}");
    assert_eq!(ur.status.as_ref().unwrap().next_window, None);
    run.wait_for_step(&client, 0).await;
    let kcp_writes: Vec<_> = run
        .writes
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.kind == "KubeadmControlPlane" && w.name == KCP)
        .map(|w| w.version.clone())
        .collect();
    assert!(
        !kcp_writes.is_empty(),
        "the first hop wrote the control plane"
    );
    let ur = Api::<UpgradeRequest>::namespaced(client.clone(), &ns)
        .get(REQUEST)
        .await
        .unwrap();
    let started = ur.status.unwrap().plan[0].started_at.clone().unwrap().0;
    assert!(
        started >= opens,
        "step 1 started at {started}, before {opens}"
    );

    // `upgrade-controller status` on the running upgrade, as an operator would ask it.
    let status = |output: &str| {
        let out =
            std::process::Command::new(project::binary("upgrade-controller", "upgrade-controller"))
                .args(["status", REQUEST, "-n", &ns, "-o", output])
                .env("KUBECONFIG", &harness::env().kubeconfig)
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let report: serde_json::Value = serde_json::from_str(&status("json")).unwrap();
    eprintln!("status -o json: {report:#}");
    assert_eq!(report["request"], format!("{ns}/{REQUEST}"));
    assert_eq!(report["phase"], "Upgrading");
    assert_eq!(report["step"]["number"], 1);
    assert_eq!(report["step"]["kind"], "ControlPlane");
    assert!(report["elapsedSeconds"].as_i64().unwrap() >= 0);
    let pending = report["step"]["machinesPending"].as_array().unwrap();
    for m in pending {
        assert_eq!(m["owner"], format!("KubeadmControlPlane {KCP}"), "{m}");
    }
    if pending.is_empty() {
        // Only once the control plane has rolled out at the hop's version.
        let why = e2e::capi::kcp_rollout_pending(&client, &ns, KCP, "v1.32.11-2")
            .await
            .unwrap();
        assert!(why.is_empty(), "no machine listed while {why:?}");
    }
    let text = status("table");
    for words in [
        format!("UpgradeRequest {ns}/{REQUEST} for Cluster demo"),
        "PREFLIGHT (Hop at step 1".to_string(),
        "STEP 1 (ControlPlane to v1.32.11-2), running".to_string(),
    ] {
        assert!(text.contains(&words), "{words:?} missing from:\n{text}");
    }
    controller.kill();
    run.finish(&client).await;
}
