//! The engine suites' world: a 3-CP / 2x2-worker in-memory cluster at Kubernetes 1.31, and
//! recorders of what happens to it — every `spec.version` write on its KCP and MDs (from a
//! watch) and the moment each rollout completes by CAPI's criteria (polled) — with the
//! checks every engine run must pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ListParams, VersionMatch};
use kube::runtime::{WatchStreamExt, watcher};
use upgrade_controller::api::{Phase, StepState, UpgradeRequest};

use crate::capi;
use crate::harness::{self, TestNamespace};
use crate::platform::Platform;
use crate::project;

pub const START: &str = "v1.31.14-2";
pub const KCP: &str = "demo-cp";
pub const POOLS: [&str; 2] = ["demo-pool-a", "demo-pool-b"];
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(900);

/// A `spec.version` write seen on a KCP or MD.
#[derive(Debug, Clone)]
pub struct Write {
    pub at: Instant,
    pub kind: &'static str,
    pub name: String,
    pub version: String,
    pub template: String,
    /// For a pool write: why the control plane was not rolled out at this version in the
    /// cluster state of the write's own resourceVersion (empty = it was).
    pub control_plane_pending: Vec<String>,
}

/// The control plane's rollout state at `version` exactly as of etcd revision `rv`, read with
/// `resourceVersionMatch=Exact`, so the answer is about that instant and not a later poll.
pub async fn control_plane_pending_at(
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
pub fn record_writes(client: &kube::Client, ns: &str) -> Arc<Mutex<Vec<Write>>> {
    let writes = Arc::new(Mutex::new(Vec::new()));
    for (kind, api) in [
        ("KubeadmControlPlane", capi::kcp_api(client, ns)),
        ("MachineDeployment", capi::md_api(client, ns)),
    ] {
        let writes = writes.clone();
        let (client, ns) = (client.clone(), ns.to_string());
        tokio::spawn(async move {
            let mut last: HashMap<String, String> = HashMap::new();
            // Through API server restarts too: errors are retried with backoff, and a relist
            // brings any write made meanwhile (seen late, so measured conservatively).
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            while let Some(next) = stream.next().await {
                let Ok(obj) = next else { continue };
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
pub fn record_gates(
    client: &kube::Client,
    ns: &str,
) -> Arc<Mutex<HashMap<(String, String), Instant>>> {
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

/// The demo cluster (in-memory machines, three control-plane replicas, two pools of two) at
/// [`START`] in a new namespace, every rollout finished.
pub async fn demo_cluster(client: &kube::Client, prefix: &str) -> TestNamespace {
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

/// A small in-memory cluster `name` at [`START`] in `ns` (one control-plane machine, pool
/// `pool-a` of one), every rollout finished.
pub async fn small_cluster(client: &kube::Client, ns: &str, name: &str) {
    let objects = capi::in_memory_cluster(name, START, "v131", 1, &[("pool-a", 1)]);
    capi::create_all(client, ns, &objects).await.unwrap();
    let (kcp, pool) = (format!("{name}-cp"), format!("{name}-pool-a"));
    capi::wait_done(&kcp, Duration::from_secs(300), || {
        capi::kcp_rollout_pending(client, ns, &kcp, START)
    })
    .await
    .unwrap();
    capi::wait_done(&pool, Duration::from_secs(300), || {
        capi::md_rollout_pending(client, ns, &pool, START)
    })
    .await
    .unwrap();
}

pub fn minor(v: &str) -> u64 {
    v.trim_start_matches('v')
        .split('.')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// The checks shared by the clean run and the crash run.
pub async fn assert_upgrade(
    client: &kube::Client,
    ns: &str,
    ur: &UpgradeRequest,
    writes: &[Write],
) {
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
    crate::assert::writes_in_order(
        writes,
        "KubeadmControlPlane",
        &[START, "v1.32.11-2", "v1.33.7-4", "v1.34.5-3"],
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
pub async fn assert_phase_one(client: &kube::Client, platform: &Platform, ur: &UpgradeRequest) {
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
pub fn gate_to_write(
    writes: &[Write],
    gates: &HashMap<(String, String), Instant>,
) -> Vec<Duration> {
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

/// What an engine run records: the namespace, its platform, every write and every gate.
pub struct Run {
    /// Deleted, with the platform namespace, when the run is dropped or finished.
    pub ns: TestNamespace,
    pub platform: Platform,
    pub writes: Arc<Mutex<Vec<Write>>>,
    pub gates: Arc<Mutex<HashMap<(String, String), Instant>>>,
}

/// The demo cluster in a new namespace (`prefix`), its platform at 4.0.11 under a global at
/// 4.3.2, the recorders running, and request `to-4-3` (target 4.3, `extra` merged into its
/// spec) created before any controller runs.
pub async fn start_run(client: &kube::Client, prefix: &str, extra: serde_json::Value) -> Run {
    let mut ns = demo_cluster(client, prefix).await;
    let platform = Platform::start(client, &ns, "demo", "4.0.11", "4.3.2").await;
    ns.delete_with(&platform.namespace);
    let writes = record_writes(client, &ns);
    let gates = record_gates(client, &ns);
    let mut spec = serde_json::json!({"clusterName": "demo", "targetVersion": "4.3"});
    crate::site::merge(&mut spec, extra);
    project::create_request(client, &ns, "to-4-3", spec).await;
    Run {
        ns,
        platform,
        writes,
        gates,
    }
}

impl Run {
    /// The end of a run that passed: its namespaces deleted.
    pub async fn finish(self, client: &kube::Client) {
        self.ns.finish(client).await;
    }

    /// Waits until step `index` (0-based) of `to-4-3` is in progress.
    pub async fn wait_for_step(&self, client: &kube::Client, index: usize) {
        project::wait_request(client, &self.ns, "to-4-3", UPGRADE_TIMEOUT, |ur| {
            ur.status.as_ref().is_some_and(|s| {
                s.plan
                    .get(index)
                    .is_some_and(|st| st.state == StepState::InProgress)
            })
        })
        .await;
    }

    /// Waits for `to-4-3` to succeed, then checks the whole run ([`assert_upgrade`],
    /// [`assert_phase_one`]) and returns what was recorded: every write, every gate.
    pub async fn succeeded(
        &self,
        client: &kube::Client,
    ) -> (Vec<Write>, HashMap<(String, String), Instant>) {
        let ur = project::wait_request(client, &self.ns, "to-4-3", UPGRADE_TIMEOUT, |ur| {
            ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded)
        })
        .await;
        // The recorders' last events.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let writes = self.writes.lock().unwrap().clone();
        let gates = self.gates.lock().unwrap().clone();
        assert_upgrade(client, &self.ns, &ur, &writes).await;
        assert_phase_one(client, &self.platform, &ur).await;
        (writes, gates)
    }
}
