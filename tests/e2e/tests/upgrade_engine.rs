//! The upgrade engine on the real control plane: a 3-CP / 2x2-worker in-memory cluster goes
//! from Kubernetes 1.31 (ACP 4.0) to the 4.3 row one minor at a time, also across a controller
//! crash; invalid requests stall with their reason and touch nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::capi;
use e2e::harness;
use e2e::platform::Platform;
use e2e::project::{self, Controller, create_request, wait_request};
use futures::TryStreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, VersionMatch};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use upgrade_controller::api::{Phase, StepState, UpgradeRequest};

const START: &str = "v1.31.14-2";
const KCP: &str = "demo-cp";
const POOLS: [&str; 2] = ["demo-pool-a", "demo-pool-b"];
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(900);

/// A `spec.version` write seen on a KCP or MD.
#[derive(Debug, Clone)]
struct Write {
    at: Instant,
    kind: &'static str,
    name: String,
    version: String,
    template: String,
    /// For a pool write: why the control plane was not rolled out at this version in the
    /// cluster state of the write's own resourceVersion (empty = it was).
    control_plane_pending: Vec<String>,
}

/// The control plane's rollout state at `version` exactly as of etcd revision `rv`, read with
/// `resourceVersionMatch=Exact`, so the answer is about that instant and not a later poll.
async fn control_plane_pending_at(
    client: &kube::Client,
    ns: &str,
    rv: &str,
    version: &str,
) -> Vec<String> {
    let at = ListParams::default().at(rv).matching(VersionMatch::Exact);
    let kcp = capi::kcp_api(client, ns)
        .list(&at)
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|k| k.metadata.name.as_deref() == Some(KCP))
        .expect("the KCP at that revision");
    let machines: Vec<upgrade_controller::capi::Machine> = capi::machine_api(client, ns)
        .list(
            &at.clone()
                .labels(&format!("cluster.x-k8s.io/control-plane-name={KCP}")),
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|m| serde_json::from_value(serde_json::to_value(m).unwrap()).unwrap())
        .collect();
    let kcp: upgrade_controller::capi::KubeadmControlPlane =
        serde_json::from_value(serde_json::to_value(kcp).unwrap()).unwrap();
    upgrade_controller::decide::gate::control_plane_pending(
        &kcp,
        &machines.iter().collect::<Vec<_>>(),
        version,
    )
}

/// Records every spec.version change of the namespace's KCPs and MDs, from a watch.
fn record_writes(client: &kube::Client, ns: &str) -> Arc<Mutex<Vec<Write>>> {
    let writes = Arc::new(Mutex::new(Vec::new()));
    for (kind, api) in [
        ("KubeadmControlPlane", capi::kcp_api(client, ns)),
        ("MachineDeployment", capi::md_api(client, ns)),
    ] {
        let writes = writes.clone();
        let (client, ns) = (client.clone(), ns.to_string());
        tokio::spawn(async move {
            let mut last: HashMap<String, String> = HashMap::new();
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(obj)) = stream.try_next().await {
                let v = serde_json::to_value(&obj).unwrap();
                let name = obj.metadata.name.clone().unwrap_or_default();
                let (version, template) = if kind == "KubeadmControlPlane" {
                    (
                        &v["spec"]["version"],
                        &v["spec"]["machineTemplate"]["infrastructureRef"]["name"],
                    )
                } else {
                    (
                        &v["spec"]["template"]["spec"]["version"],
                        &v["spec"]["template"]["spec"]["infrastructureRef"]["name"],
                    )
                };
                let version = version.as_str().unwrap_or("").to_string();
                if last.get(&name) != Some(&version) {
                    let at = Instant::now();
                    let first = last.insert(name.clone(), version.clone()).is_none();
                    let control_plane_pending = if kind == "MachineDeployment" && !first {
                        let rv = obj.metadata.resource_version.clone().unwrap_or_default();
                        control_plane_pending_at(&client, &ns, &rv, &version).await
                    } else {
                        Vec::new()
                    };
                    writes.lock().unwrap().push(Write {
                        at,
                        kind,
                        name,
                        version,
                        template: template.as_str().unwrap_or("").to_string(),
                        control_plane_pending,
                    });
                }
            }
        });
    }
    writes
}

/// Polls (every 100 ms) when each object's rollout at its declared version becomes complete
/// by CAPI's criteria: (name, version) -> first instant seen complete.
fn record_gates(client: &kube::Client, ns: &str) -> Arc<Mutex<HashMap<(String, String), Instant>>> {
    let gates = Arc::new(Mutex::new(HashMap::new()));
    let (client, ns, out) = (client.clone(), ns.to_string(), gates.clone());
    tokio::spawn(async move {
        loop {
            let mut objects = vec![(KCP.to_string(), true)];
            objects.extend(POOLS.iter().map(|p| (p.to_string(), false)));
            for (name, is_kcp) in objects {
                let api = if is_kcp {
                    capi::kcp_api(&client, &ns)
                } else {
                    capi::md_api(&client, &ns)
                };
                let Ok(obj) = api.get(&name).await else {
                    continue;
                };
                let v = serde_json::to_value(&obj).unwrap();
                let version = if is_kcp {
                    &v["spec"]["version"]
                } else {
                    &v["spec"]["template"]["spec"]["version"]
                };
                let version = version.as_str().unwrap_or("").to_string();
                let key = (name.clone(), version.clone());
                if out.lock().unwrap().contains_key(&key) {
                    continue;
                }
                let pending = if is_kcp {
                    capi::kcp_rollout_pending(&client, &ns, &name, &version).await
                } else {
                    capi::md_rollout_pending(&client, &ns, &name, &version).await
                };
                if pending.is_ok_and(|p| p.is_empty()) {
                    out.lock().unwrap().insert(key, Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    gates
}

async fn demo_cluster(client: &kube::Client, prefix: &str) -> String {
    let ns = harness::namespace(client, prefix).await;
    project::install(client).await;
    let objects =
        capi::in_memory_cluster("demo", START, "v131", 3, &[("pool-a", 2), ("pool-b", 2)]);
    capi::create_all(client, &ns, &objects).await.unwrap();
    capi::wait_done("initial control plane", Duration::from_secs(300), || {
        capi::kcp_rollout_pending(client, &ns, KCP, START)
    })
    .await
    .unwrap();
    for pool in POOLS {
        capi::wait_done(pool, Duration::from_secs(300), || {
            capi::md_rollout_pending(client, &ns, pool, START)
        })
        .await
        .unwrap();
    }
    ns
}

fn minor(v: &str) -> u64 {
    v.trim_start_matches('v')
        .split('.')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// The checks shared by the clean run and the crash run.
async fn assert_upgrade(client: &kube::Client, ns: &str, ur: &UpgradeRequest, writes: &[Write]) {
    let status = ur.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(status.progress.as_deref(), Some("6/6"));
    for step in &status.plan {
        assert_eq!(step.state, StepState::Succeeded, "{step:?}");
        let (Some(s), Some(f)) = (&step.started_at, &step.finished_at) else {
            panic!("step without timestamps: {step:?}");
        };
        assert!(s.0 <= f.0);
    }

    // Strictly one minor per KCP write, in order, ending at the 4.3 row.
    let kcp_versions: Vec<&str> = writes
        .iter()
        .filter(|w| w.kind == "KubeadmControlPlane")
        .map(|w| w.version.as_str())
        .collect();
    assert_eq!(
        kcp_versions,
        vec![START, "v1.32.11-2", "v1.33.7-4", "v1.34.5-3"]
    );
    for pair in kcp_versions.windows(2) {
        assert_eq!(minor(pair[1]), minor(pair[0]) + 1, "KCP writes {pair:?}");
    }
    // Control plane before the pools in every hop; each pool follows every hop.
    for version in &kcp_versions[1..] {
        let cp_at = writes
            .iter()
            .find(|w| w.kind == "KubeadmControlPlane" && w.version == *version)
            .unwrap()
            .at;
        for pool in POOLS {
            let w = writes
                .iter()
                .find(|w| w.name == pool && w.version == *version)
                .unwrap_or_else(|| panic!("{pool} never moved to {version}"));
            assert!(
                w.at > cp_at,
                "{pool} moved to {version} before the control plane"
            );
            // ... and only once the control plane's rollout to it was complete, judged on the
            // cluster exactly as it was at the pool write's revision.
            assert!(
                w.control_plane_pending.is_empty(),
                "{pool} moved to {version} before the control plane finished rolling out: {:?}",
                w.control_plane_pending
            );
        }
    }
    // Every template written carries its row's image.
    let matrix = project::sample_matrix();
    let rows = matrix["spec"]["rows"].as_array().unwrap();
    let templates = capi::dev_machine_template_api(client, ns);
    for w in writes.iter().filter(|w| w.version != START) {
        let step = status
            .plan
            .iter()
            .find(|s| s.kubernetes_version == w.version)
            .unwrap();
        let row = rows
            .iter()
            .find(|r| r["distributionVersion"] == step.distribution_version.as_str())
            .unwrap();
        let tpl = templates.get(&w.template).await.unwrap();
        let image = tpl
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("upgrade.cpaas.io/os-image"))
            .cloned();
        assert_eq!(
            image.as_deref(),
            row["osImageVersion"].as_str(),
            "template {} of {} {}",
            w.template,
            w.name,
            w.version
        );
    }
    // One clone per source template per hop, nothing else: 2 originals + 2 x 3 hops.
    let all = templates.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        all.len(),
        8,
        "templates: {:?}",
        all.iter()
            .map(|t| t.metadata.name.clone())
            .collect::<Vec<_>>()
    );
}

/// Phase 1 ran through the stand-in CVO, was asked for exactly once, and finished before the
/// first hop started; every initial preflight check passed.
async fn assert_phase_one(client: &kube::Client, platform: &Platform, ur: &UpgradeRequest) {
    let status = ur.status.as_ref().unwrap();
    let ext = status.aligned_extensions.as_ref().expect("Phase 1 status");
    assert_eq!(ext.state, Some(StepState::Succeeded));
    assert_eq!(ext.version.as_deref(), Some("4.3.2"));
    let done = ext.finished_at.as_ref().expect("Phase 1 finish time").0;
    let first_hop = status.plan[0].started_at.as_ref().unwrap().0;
    assert!(
        done <= first_hop,
        "Phase 1 finished {done} after the first hop started {first_hop}"
    );
    let cvsh = platform.cvsh(client, "demo").await;
    assert_eq!(cvsh["status"]["current"]["version"], "4.3.2");
    assert_eq!(cvsh["spec"]["desiredUpdate"]["version"], "4.3.2");
    let history = cvsh["status"]["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "requested once: {history:?}");
    assert!(
        ur.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "PreflightPassed" && c.status == "True"),
        "the last preflight passed"
    );
}

/// Latency from a step's gate turning true to the controller's next write, per hop.
fn gate_to_write(writes: &[Write], gates: &HashMap<(String, String), Instant>) -> Vec<Duration> {
    let mut out = Vec::new();
    let kcp: Vec<&Write> = writes
        .iter()
        .filter(|w| w.kind == "KubeadmControlPlane")
        .collect();
    for (i, w) in kcp.iter().enumerate().skip(1) {
        // Control plane done at w.version -> first pool write of that version.
        if let Some(g) = gates.get(&(KCP.to_string(), w.version.clone()))
            && let Some(next) = writes
                .iter()
                .filter(|x| x.kind == "MachineDeployment" && x.version == w.version)
                .map(|x| x.at)
                .min()
        {
            out.push(next.saturating_duration_since(*g));
        }
        // All pools done at w.version -> next control-plane write.
        if let Some(next) = kcp.get(i + 1) {
            let done: Option<Instant> = POOLS
                .iter()
                .map(|p| gates.get(&(p.to_string(), w.version.clone())).copied())
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().max());
            if let Some(g) = done {
                out.push(next.at.saturating_duration_since(g));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_cluster_upgrades_from_4_0_to_4_3_one_minor_at_a_time() {
    let client = harness::client().await;
    let ns = demo_cluster(&client, "engine").await;
    let platform = Platform::start(&client, &ns, "demo", "4.0.11", "4.3.2").await;
    let writes = record_writes(&client, &ns);
    let gates = record_gates(&client, &ns);
    create_request(
        &client,
        &ns,
        "to-4-3",
        json!({
            "clusterName": "demo", "targetVersion": "4.3", "workers": {"maxConcurrentPools": 2},
        }),
    )
    .await;
    let _controller = Controller::start_with(&ns, &platform.controller_args());
    let ur = wait_request(&client, &ns, "to-4-3", UPGRADE_TIMEOUT, |ur| {
        ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = writes.lock().unwrap().clone();
    let gates = gates.lock().unwrap().clone();
    assert_upgrade(&client, &ns, &ur, &writes).await;
    assert_phase_one(&client, &platform, &ur).await;

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
    harness::delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_resumes_after_the_controller_is_killed_mid_hop() {
    let client = harness::client().await;
    let ns = demo_cluster(&client, "crash").await;
    let platform = Platform::start(&client, &ns, "demo", "4.0.11", "4.3.2").await;
    let writes = record_writes(&client, &ns);
    create_request(
        &client,
        &ns,
        "to-4-3",
        json!({"clusterName": "demo", "targetVersion": "4.3"}),
    )
    .await;
    let mut controller = Controller::start_with(&ns, &platform.controller_args());
    // Kill it while the second hop's control plane is rolling out.
    wait_request(&client, &ns, "to-4-3", UPGRADE_TIMEOUT, |ur| {
        ur.status.as_ref().is_some_and(|s| {
            s.plan
                .get(2)
                .is_some_and(|st| st.state == StepState::InProgress)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    controller.kill();
    eprintln!("controller killed during step 3 (control plane to 1.33)");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _controller = Controller::start_with(&ns, &platform.controller_args());
    let ur = wait_request(&client, &ns, "to-4-3", UPGRADE_TIMEOUT, |ur| {
        ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = writes.lock().unwrap().clone();
    assert_upgrade(&client, &ns, &ur, &writes).await;
    assert_phase_one(&client, &platform, &ur).await;
    harness::delete_namespace(&client, &ns).await;
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
            let managers: Vec<&str> = v["metadata"]["managedFields"]
                .as_array()
                .map(|m| m.iter().filter_map(|e| e["manager"].as_str()).collect())
                .unwrap_or_default();
            assert!(
                !managers.contains(&upgrade_controller::FIELD_MANAGER),
                "{kind} {:?} has fields written by the controller",
                o.metadata.name
            );
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
    let ns = harness::namespace(&client, "invalid").await;
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
    let _controller = Controller::start(&ns);
    for (name, _, reason) in &cases {
        let ur = wait_request(&client, &ns, name, Duration::from_secs(60), |ur| {
            ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Stalled)
        })
        .await;
        let status = ur.status.unwrap();
        let stalled = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap();
        assert_eq!(stalled.status, "True");
        assert_eq!(&stalled.reason, reason, "{name}: {}", stalled.message);
        assert!(!stalled.message.is_empty());
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        eprintln!("{name}: Stalled/{reason}: {}", stalled.message);
    }
    // Give a misbehaving controller time to write, then prove it did not.
    tokio::time::sleep(Duration::from_secs(3)).await;
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
    harness::delete_namespace(&client, &ns).await;
}
