//! Recovery after kube-apiserver restarts in the middle of a hop: every watch of the
//! controller breaks, its caches relist, and the upgrade carries on promptly from the gate.
//!
//! Its own test binary: the restart drops every client's connections, and cargo runs test
//! binaries one at a time, so no other test sees the API server go away.

use std::time::Duration;

use e2e::engine::*;
use e2e::harness;
use e2e::project::Controller;
use e2e::testenv;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn after_an_api_server_restart_mid_hop_the_next_write_follows_its_gate_within_15s() {
    let client = harness::client().await;
    let run = start_run(
        &client,
        "restart",
        json!({"workers": {"maxConcurrentPools": 2}}),
    )
    .await;
    let ns = run.ns.to_string();
    let mut controller = Controller::start_with(&ns, &run.platform.controller_args());
    // The second hop's control plane is rolling out.
    run.wait_for_step(&client, 2).await;
    let pending = e2e::capi::kcp_rollout_pending(&client, &ns, KCP, "v1.33.7-4")
        .await
        .unwrap();
    assert!(
        !pending.is_empty(),
        "the restart must fall inside the control plane's rollout"
    );
    let cfg = testenv::Config::from_env().unwrap();
    let t = std::time::Instant::now();
    testenv::restart_apiserver(&cfg).await.unwrap();
    let restarted_at = std::time::Instant::now();
    eprintln!(
        "kube-apiserver restarted (down and back in {:?})",
        t.elapsed()
    );

    let (writes, gates) = run.succeeded(&client).await;
    assert!(
        controller.is_running(),
        "the controller survived the restart"
    );

    // The first gate after the restart is the 1.33 control plane's; its next write is the
    // pools' (and every later transition is measured too).
    let after: Vec<&Write> = writes.iter().filter(|w| w.at > restarted_at).collect();
    assert!(
        after
            .iter()
            .any(|w| w.kind == "MachineDeployment" && w.version == "v1.33.7-4"),
        "the 1.33 pool writes came after the restart: {writes:#?}"
    );
    let lat = gate_to_write(&writes, &gates);
    eprintln!("gate -> next write, every transition (the restart falls in the 1.33 hop): {lat:?}");
    assert_eq!(lat.len(), 5, "{lat:?}");
    for l in &lat {
        assert!(
            *l < Duration::from_secs(15),
            "a write came {l:?} after its gate (restart recovery too slow): {lat:?}"
        );
    }
    drop(controller);
    run.finish(&client).await;
}
