//! Two replicas and a Lease: the leader killed mid-hop, the standby takes over within the lease
//! duration and finishes with no duplicate write and no skipped minor; while both run, only the
//! holder writes. Shards: two controllers, each with its own Lease and `--shard-selector`,
//! upgrade their own Clusters of one namespace at the same time, and one shard's leader dying
//! leaves the other's upgrade alone. Who wrote what comes from the API server's audit log
//! (every replica's User-Agent names its pod).

use std::time::{Duration, Instant};

use e2e::audit::{self, Entry};
use e2e::engine::{self, KCP, Run, START, start_run};
use e2e::harness;
use e2e::project::{self, Controller, http_get};
use e2e::{assert, capi};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use upgrade_controller::api::{Phase, StepState, UpgradeRequest};

/// Short, so the failover is quick; the chart's default is 15 s.
const LEASE_SECONDS: u64 = 6;
const RENEW_BEFORE_SECONDS: u64 = 2;

fn election_args(run: &Run, lease: &str) -> Vec<String> {
    let mut args = run.platform.controller_args();
    args.extend(
        [
            "--leader-elect",
            "--leader-election-namespace",
            &run.ns.to_string(),
            "--leader-election-lease",
            lease,
            "--leader-election-lease-duration",
            &LEASE_SECONDS.to_string(),
            "--leader-election-renew-before",
            &RENEW_BEFORE_SECONDS.to_string(),
        ]
        .map(String::from),
    );
    args
}

async fn lease_spec(
    client: &kube::Client,
    ns: &str,
    lease: &str,
) -> Option<k8s_openapi::api::coordination::v1::LeaseSpec> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
}

async fn holder(client: &kube::Client, ns: &str, lease: &str) -> Option<String> {
    lease_spec(client, ns, lease)
        .await
        .and_then(|s| s.holder_identity)
}

/// Polls (every 100 ms) until `pod` holds Lease `lease`; how long that took.
async fn wait_holder(client: &kube::Client, ns: &str, lease: &str, pod: &str) -> Duration {
    let start = Instant::now();
    loop {
        if holder(client, ns, lease).await.as_deref() == Some(pod) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{pod} did not take Lease {ns}/{lease} within 60 s (holder {:?})",
            holder(client, ns, lease).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/readyz` of a replica (its body says leader or standby).
async fn readyz(c: &Controller) -> String {
    let url = c.metrics_url().await.replace("/metrics", "/readyz");
    let start = Instant::now();
    loop {
        if let Some(body) = http_get(&url).await {
            return body;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{url} not ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sent_by(e: &Entry, pod: &str) -> bool {
    e.by_controller() && e.user_agent.ends_with(&format!("({pod})"))
}

fn at(e: &Entry) -> Timestamp {
    e.at.parse()
        .unwrap_or_else(|err| panic!("audit time {:?}: {err}", e.at))
}

/// The controller's audited writes in `ns`, oldest first.
fn writes_in(ns: &str) -> Vec<Entry> {
    audit::entries()
        .into_iter()
        .filter(|e| e.by_controller() && e.is_write() && e.namespace == ns)
        .collect()
}

fn describe(e: &Entry) -> String {
    let sub = if e.subresource.is_empty() {
        String::new()
    } else {
        format!("/{}", e.subresource)
    };
    format!("{} {}{sub} {} at {}", e.verb, e.resource, e.name, e.at)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_takes_over_within_the_lease_when_the_leader_is_killed_mid_hop() {
    let client = harness::client().await;
    let run = start_run(&client, "leader", json!({})).await;
    let ns = run.ns.to_string();
    let lease = "upgrade-controller";
    let args = election_args(&run, lease);

    let mut a = Controller::replica(&ns, "replica-a", &args);
    let took = wait_holder(&client, &ns, lease, "replica-a").await;
    eprintln!("replica-a took the free Lease in {took:?}");
    let b = Controller::replica(&ns, "replica-b", &args);
    let both_from = Timestamp::now();
    assert!(readyz(&a).await.contains("leader"), "{}", readyz(&a).await);
    let standby = readyz(&b).await;
    assert!(
        standby.contains("standby"),
        "replica-b's /readyz: {standby}"
    );
    let scrape = http_get(&b.metrics_url().await).await.unwrap();
    assert_eq!(
        project::sample(&scrape, "upgrade_controller_leader", ""),
        Some(0.0)
    );

    // Killed while the second hop's control plane rolls out.
    run.wait_for_step(&client, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.kill();
    let killed = Instant::now();
    let killed_at = Timestamp::now();
    let last_renewal = lease_spec(&client, &ns, lease)
        .await
        .and_then(|s| s.renew_time)
        .expect("replica-a renewed the Lease")
        .0;
    let takeover = wait_holder(&client, &ns, lease, "replica-b").await;
    let acquired = lease_spec(&client, &ns, lease)
        .await
        .and_then(|s| s.acquire_time)
        .expect("replica-b's acquireTime")
        .0;
    let since_renewal = acquired.duration_since(last_renewal);
    eprintln!(
        "replica-a killed during step 3; replica-b holds the Lease {takeover:?} after the kill, {} ms after replica-a's last renewal (lease {LEASE_SECONDS}s)",
        since_renewal.as_millis()
    );
    // The Lease expires LEASE_SECONDS after its last renewal; kube-lease-manager then waits a
    // random 0.1-1 s before taking it (so that standbys do not collide).
    assert!(
        since_renewal.as_millis() <= i128::from(LEASE_SECONDS * 1000 + 1500),
        "takeover {} ms after the last renewal",
        since_renewal.as_millis()
    );

    let (writes, _) = run.succeeded(&client).await;
    let finished = killed.elapsed();

    let all = writes_in(&ns);
    let (by_a, by_b): (Vec<&Entry>, Vec<&Entry>) = (
        all.iter().filter(|e| sent_by(e, "replica-a")).collect(),
        all.iter().filter(|e| sent_by(e, "replica-b")).collect(),
    );
    assert_eq!(
        by_a.len() + by_b.len(),
        all.len(),
        "a write by another controller: {:?}",
        all.iter()
            .filter(|e| !sent_by(e, "replica-a") && !sent_by(e, "replica-b"))
            .map(describe)
            .collect::<Vec<_>>()
    );
    // While both ran, only the holder wrote: replica-a (it did write then), never replica-b.
    let a_while_both = by_a.iter().filter(|e| at(e) > both_from).count();
    assert!(
        a_while_both > 0,
        "replica-a wrote nothing while both ran: the audit cannot tell"
    );
    let b_early: Vec<String> = by_b
        .iter()
        .filter(|e| at(e) <= killed_at)
        .map(|e| describe(e))
        .collect();
    assert!(
        b_early.is_empty(),
        "the standby wrote before the leader died: {b_early:?}"
    );
    let first_b = by_b.first().expect("replica-b finished the upgrade");
    eprintln!(
        "writes: replica-a {} ({a_while_both} while both ran), replica-b {}; replica-b's first write {} ms after the kill; upgrade finished {finished:?} after it",
        by_a.len(),
        by_b.len(),
        at(first_b).duration_since(killed_at).as_millis()
    );
    // No duplicate write: one KCP write per control-plane hop and one per pool per hop
    // across both replicas (and `succeeded` found one template clone per hop, and the
    // versions one minor at a time).
    let patches = |resource: &str, name: &str| {
        all.iter()
            .filter(|e| e.verb == "patch" && e.resource == resource && e.name == name)
            .count()
    };
    assert_eq!(patches("kubeadmcontrolplanes", KCP), 3, "KCP writes");
    for pool in engine::POOLS {
        assert_eq!(patches("machinedeployments", pool), 3, "{pool} writes");
    }
    assert::writes_in_order(
        &writes,
        "KubeadmControlPlane",
        &[START, "v1.32.11-2", "v1.33.7-4", "v1.34.5-3"],
    );
    drop(b);
    run.finish(&client).await;
}

/// Waits until request `name` is upgrading (a step in progress or done).
async fn wait_upgrading(client: &kube::Client, ns: &str, name: &str) -> UpgradeRequest {
    project::wait_request(client, ns, name, engine::UPGRADE_TIMEOUT, |ur| {
        ur.status.as_ref().is_some_and(|s| {
            s.phase == Some(Phase::Upgrading)
                && s.plan.iter().any(|st| st.state == StepState::InProgress)
        })
    })
    .await
}

async fn succeeded(client: &kube::Client, ns: &str, name: &str) -> UpgradeRequest {
    project::wait_request(client, ns, name, engine::UPGRADE_TIMEOUT, |ur| {
        ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded)
    })
    .await
}

/// Which shard's objects an audited write touched (`west`: the demo cluster and its request,
/// `east`: the east cluster and its request).
fn shard_of(e: &Entry) -> &'static str {
    let east = e.name.starts_with("east") || e.name == "to-4-3-east";
    if east { "east" } else { "west" }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_shards_upgrade_their_own_clusters_and_one_leader_dying_leaves_the_other_alone() {
    let client = harness::client().await;
    // West: the demo cluster (3 control-plane machines, 2 pools of 2) and request to-4-3.
    let run = start_run(&client, "shards", json!({})).await;
    let ns = run.ns.to_string();
    // East: a smaller cluster in the same namespace, with its own request.
    engine::small_cluster(&client, &ns, "east").await;
    run.platform.add_cluster(&client, "east", "4.0.11").await;
    let clusters = capi::api(&client, &ns, capi::CLUSTER_V1BETA1, "Cluster");
    for (cluster, shard) in [("demo", "west"), ("east", "east")] {
        clusters
            .patch(
                cluster,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"upgrade.cpaas.io/shard": shard}}})),
            )
            .await
            .unwrap();
    }
    project::create_request(
        &client,
        &ns,
        "to-4-3-east",
        json!({"clusterName": "east", "targetVersion": "4.3"}),
    )
    .await;

    let shard_args = |shard: &str| {
        let mut args = election_args(&run, &format!("upgrade-controller-{shard}"));
        args.push(format!("--shard-selector=upgrade.cpaas.io/shard={shard}"));
        args
    };
    let west = Controller::replica(&ns, "west-0", &shard_args("west"));
    let mut east = Controller::replica(&ns, "east-0", &shard_args("east"));
    wait_holder(&client, &ns, "upgrade-controller-west", "west-0").await;
    wait_holder(&client, &ns, "upgrade-controller-east", "east-0").await;

    // Both upgrading at once.
    wait_upgrading(&client, &ns, "to-4-3").await;
    let east_ur = wait_upgrading(&client, &ns, "to-4-3-east").await;
    let west_ur: UpgradeRequest = Api::namespaced(client.clone(), &ns)
        .get("to-4-3")
        .await
        .unwrap();
    assert_ne!(
        west_ur.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Succeeded),
        "west finished before east started: not concurrent"
    );
    eprintln!(
        "both shards upgrading: west at {:?}, east at {:?}",
        west_ur.status.as_ref().and_then(|s| s.progress.clone()),
        east_ur.status.as_ref().and_then(|s| s.progress.clone())
    );

    // East's leader dies mid-upgrade; west goes on to the end on its own.
    east.kill();
    let killed_at = Timestamp::now();
    succeeded(&client, &ns, "to-4-3").await;
    let east_frozen: UpgradeRequest = Api::namespaced(client.clone(), &ns)
        .get("to-4-3-east")
        .await
        .unwrap();
    assert_ne!(
        east_frozen.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Succeeded)
    );
    let west_after: Vec<Entry> = writes_in(&ns)
        .into_iter()
        .filter(|e| at(e) > killed_at)
        .collect();
    assert!(
        west_after.iter().any(|e| sent_by(e, "west-0")),
        "west wrote nothing after east's leader died"
    );
    let touched_east: Vec<String> = west_after
        .iter()
        .filter(|e| shard_of(e) == "east")
        .map(describe)
        .collect();
    assert!(
        touched_east.is_empty(),
        "east's objects were written while its shard had no leader: {touched_east:?}"
    );

    // A new east replica takes east's Lease and finishes east.
    let _east = Controller::replica(&ns, "east-1", &shard_args("east"));
    let takeover = wait_holder(&client, &ns, "upgrade-controller-east", "east-1").await;
    eprintln!("east-1 took east's Lease {takeover:?} after it started");
    let done = succeeded(&client, &ns, "to-4-3-east").await;
    assert_eq!(
        done.status.as_ref().and_then(|s| s.progress.as_deref()),
        Some("6/6")
    );
    // Each shard wrote only its own objects, and the West Lease never changed hands.
    for e in writes_in(&ns) {
        let want = shard_of(&e);
        let pod_shard = if sent_by(&e, "west-0") {
            "west"
        } else if sent_by(&e, "east-0") || sent_by(&e, "east-1") {
            "east"
        } else {
            panic!("a write by another controller: {}", describe(&e))
        };
        assert_eq!(pod_shard, want, "{} by the {pod_shard} shard", describe(&e));
    }
    assert_eq!(
        holder(&client, &ns, "upgrade-controller-west")
            .await
            .as_deref(),
        Some("west-0")
    );
    drop(west);
    run.finish(&client).await;
}
