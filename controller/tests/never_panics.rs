//! No spec the CRD admits, no matrix, no cluster state and no stored status — clock skew and
//! steps "started" in the future included — makes the decision or the status computation
//! panic, and every outcome that stops the request says why.
//!
//! The generators stay inside what the CRDs accept (patterns, lengths, bounds of
//! `config/crd/`), so a failure here is a crash a user could cause. `UC_PROPTEST_CASES`
//! overrides the number of cases (default 4000).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};
use upgrade_controller::api::{
    ExtensionsStatus, OSSupportMatrix, Phase, StepState, UpgradeRequestSpec, UpgradeRequestStatus,
};
use upgrade_controller::decide::{self, Decision, Outcome};
use upgrade_controller::observe::Observed;
use upgrade_controller::status;

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a fixture of the typed shape")
}

fn cases() -> u32 {
    std::env::var("UC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000)
}

/// A Kubernetes version as the matrix pattern admits it.
fn kube_version() -> impl Strategy<Value = String> {
    (
        prop_oneof![28u32..40, Just(1), Just(999)],
        0u32..30,
        prop_oneof![
            Just(""),
            Just("-2"),
            Just("-acp.1"),
            Just("+meta"),
            Just("-4")
        ],
    )
        .prop_map(|(minor, patch, suffix)| format!("v1.{minor}.{patch}{suffix}"))
}

fn distribution_version() -> impl Strategy<Value = String> {
    (3u32..6, 0u32..6, 0u32..12, any::<bool>())
        .prop_map(|(a, b, c, v)| format!("{}{a}.{b}.{c}", if v { "v" } else { "" }))
}

fn row() -> impl Strategy<Value = Value> {
    (
        distribution_version(),
        kube_version(),
        "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
        prop::option::of("[a-z][a-z0-9 ._-]{0,30}[a-z0-9]"),
        prop::collection::vec("v?[0-9]\\.[0-9](\\.[0-9])?", 0..3),
        prop::option::of((28u32..36, 28u32..36)),
        prop::collection::vec(("[a-z]{1,8}", "[0-9]\\.[0-9]", 0usize..3), 0..3),
    )
        .prop_map(|(dv, k8s, tag, image, from, range, ext)| {
            let mut r = json!({
                "distributionVersion": dv, "kubernetesVersion": k8s,
                "coreDNSImageTag": tag, "etcdImageTag": tag,
                "osImageVersion": format!("img-{dv}"),
                "upgradeableFrom": from,
                "alignedExtensions": ext.iter().map(|(n, v, i)| {
                    let impact = ["Low", "Medium", "High"][*i];
                    json!({"name": n, "version": v, "impact": impact})
                }).collect::<Vec<_>>(),
            });
            if let Some(image) = image {
                r["images"] = json!({"dcs": image.clone(), "vsphere": image.clone(), "hcs": image});
            }
            if let Some((a, b)) = range {
                r["compatibleKubernetes"] =
                    json!({"min": format!("1.{a}"), "max": format!("1.{b}")});
            }
            r
        })
}

fn timeout() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..=720).prop_map(|h| format!("{h}h")),
        (1u32..=43200).prop_map(|m| format!("{m}m")),
        (60u32..=2_592_000).prop_map(|s| format!("{s}s")),
        (0u32..=719, 0u32..60).prop_map(|(h, m)| format!("{h}h{m}m")),
    ]
}

fn spec() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            4 => prop::sample::select(vec!["4.1", "4.2", "4.3", "4.3.1", "4.3.2", "4.2.5"])
                .prop_map(str::to_string),
            1 => distribution_version(),
            1 => "v?[0-9]{1,3}\\.[0-9]{1,3}",
        ],
        any::<bool>(),
        1u32..=50,
        any::<bool>(),
        timeout(),
        timeout(),
        prop::collection::vec(prop_oneof![Just("*".to_string()), "[a-z]{1,6}"], 0..3),
        prop::collection::vec(
            prop_oneof![
                Just("ControlPlaneHealthy"),
                Just("NodesReady"),
                Just("NoRolloutInProgress"),
                Just("IPPoolCapacity"),
                Just("OSImagesStaged"),
            ],
            0..3,
        ),
    )
        .prop_map(|(target, skip_level, pools, paused, cp, wp, acks, skip)| {
            json!({
                "clusterName": "c", "targetVersion": target, "matrixRef": "m",
                "workers": {"strategy": if skip_level { "SkipLevel" } else { "EveryHop" },
                            "maxConcurrentPools": pools},
                "paused": paused,
                "timeouts": {"controlPlane": cp, "workerPool": wp},
                "acknowledgements": {"modifications": acks.clone(), "impacts": acks.clone(), "images": acks},
                "preflight": {"skip": skip},
            })
        })
}

fn machine(name: &str, label: (&str, &str), version: &str, healthy: bool) -> Value {
    json!({
        "metadata": {"name": name, "labels": {label.0: label.1, "cluster.x-k8s.io/cluster-name": "c"}},
        "spec": {"version": version},
        "status": {"nodeInfo": {"kubeletVersion": version},
                   "conditions": [{"type": "NodeHealthy", "status": if healthy { "True" } else { "False" }}]},
    })
}

/// The published rows (config/samples/os-support-matrix.yaml), so most generated requests
/// reach a plan and its steps.
fn sample_rows() -> Vec<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("../config/samples/os-support-matrix.yaml"))
        .expect("sample matrix");
    let m: Value = serde_yaml_ng::from_str(&text).expect("sample matrix parses");
    m["spec"]["rows"].as_array().cloned().unwrap_or_default()
}

/// A version the sample rows carry, or any other.
fn cluster_version() -> impl Strategy<Value = String> {
    let published: Vec<String> = sample_rows()
        .iter()
        .filter_map(|r| r["kubernetesVersion"].as_str().map(str::to_string))
        .collect();
    prop_oneof![3 => prop::sample::select(published), 1 => kube_version()]
}

/// A cluster in any state: versions, counters, machines, pause, ClusterClass, odd references.
fn observed() -> impl Strategy<Value = (Observed, Vec<Value>)> {
    (
        (prop::bool::weighted(0.85), prop::collection::vec(row(), 0..6)),
        cluster_version(),
        prop::collection::vec(cluster_version(), 0..3),
        (0i64..5, 0i64..5, 0i64..3, any::<bool>()),
        prop::bool::weighted(0.1),
        prop_oneof![8 => Just(0u8), 1 => 1u8..8],
        prop::option::of((distribution_version(), any::<bool>(), prop::bool::weighted(0.2))),
    )
        .prop_map(|((published, extra), cp, pools, (replicas, ready, gen_lag, healthy), paused, oddity, cvsh)| {
            let mut rows: Vec<Value> = if published { sample_rows() } else { vec![] };
            // distributionVersion is the list's key: the API server refuses duplicates.
            for r in extra {
                if !rows.iter().any(|o| o["distributionVersion"] == r["distributionVersion"]) {
                    rows.push(r);
                }
            }
            let kcp = json!({
                "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
                "metadata": {"name": "c-cp", "namespace": "ns", "generation": 3,
                             "labels": {"cluster.x-k8s.io/cluster-name": "c"}},
                "spec": {"version": cp, "replicas": replicas,
                         "machineTemplate": {"infrastructureRef": {
                             "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
                             "kind": if oddity == 1 { "AWSMachineTemplate" } else { "DevMachineTemplate" },
                             "name": "t",
                             "namespace": if oddity == 2 { "elsewhere" } else { "ns" }}}},
                "status": {"observedGeneration": 3 - gen_lag, "replicas": replicas,
                           "updatedReplicas": ready, "readyReplicas": ready,
                           "unavailableReplicas": replicas - ready, "version": cp},
            });
            let mut machines = vec![machine("cp-0", ("cluster.x-k8s.io/control-plane-name", "c-cp"), &cp, healthy)];
            let mds: Vec<Value> = pools
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let name = format!("md-{i}");
                    machines.push(machine(&format!("{name}-0"), ("cluster.x-k8s.io/deployment-name", &name), v, healthy));
                    json!({
                        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineDeployment",
                        "metadata": {"name": name, "namespace": "ns", "generation": 1},
                        "spec": {"clusterName": "c", "replicas": 1, "template": {"spec": {
                            "version": v,
                            "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DevMachineTemplate", "name": "t"},
                            "bootstrap": {"configRef": if oddity == 3 {
                                json!({"apiVersion": "v1", "kind": "Secret", "name": "s"})
                            } else {
                                json!({"apiVersion": "bootstrap.cluster.x-k8s.io/v1beta1", "kind": "KubeadmConfigTemplate", "name": "b"})
                            }},
                        }}},
                        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                                   "readyReplicas": 1, "availableReplicas": 1},
                    })
                })
                .collect();
            let mut cluster = json!({
                "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
                "metadata": {"name": "c", "namespace": "ns", "uid": "u1"},
                "spec": {"paused": paused, "controlPlaneRef": {"kind": "KubeadmControlPlane", "name": "c-cp"}},
            });
            if oddity == 4 {
                cluster["spec"]["topology"] = json!({"class": "x", "version": cp});
            }
            let matrix: Option<OSSupportMatrix> = (oddity != 5).then(|| {
                serde_json::from_value(json!({
                    "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "OSSupportMatrix",
                    "metadata": {"name": "m"}, "spec": {"rows": rows},
                }))
                .expect("generated rows follow the CRD")
            });
            let cvsh = cvsh.map(|(v, ready, stalled)| json!({
                "spec": {"desiredUpdate": {"version": v}},
                "status": {"current": {"version": v}, "conditions": [
                    {"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "r", "message": "m"},
                    {"type": "Stalled", "status": if stalled { "True" } else { "False" }, "reason": "", "message": "m"},
                ]},
            }));
            let obs = Observed {
                cluster: (oddity != 6).then(|| typed(cluster)),
                kcp: (oddity != 7).then(|| typed(kcp)),
                mds: mds.into_iter().map(typed).collect(),
                machines: machines.iter().cloned().map(typed).collect(),
                matrix,
                cvsh,
                cvsh_where: "ClusterVersionShadow cpaas-system/c".into(),
                preflight: None,
                applied_by: None,
                machine_pools: if oddity == 7 { vec!["mp".into()] } else { vec![] },
                cvsh_refused: None,
                ..Default::default()
            };
            (obs, machines)
        })
}

/// A stored status: nothing, or a plan the decision made, with steps in arbitrary states and
/// timestamps anywhere from ten years ago to ten years ahead.
fn mutate_status(
    status: &mut UpgradeRequestStatus,
    states: &[u8],
    offsets: &[i64],
    phase_one: u8,
    now: Timestamp,
) {
    let at = |o: i64| {
        Time(
            now.saturating_add(SignedDuration::from_secs(o))
                .unwrap_or(now),
        )
    };
    // Mostly what a real run leaves (a finished prefix, one step under way), sometimes any mix.
    let scrambled = states.first().is_some_and(|b| b % 5 == 0);
    let done = states
        .get(1)
        .map_or(0, |b| *b as usize % (status.plan.len() + 1));
    for (i, step) in status.plan.iter_mut().enumerate() {
        let pick = states.get(i + 2).copied().unwrap_or(0);
        step.state = if scrambled {
            match pick % 4 {
                0 => StepState::Pending,
                1 => StepState::InProgress,
                2 => StepState::Succeeded,
                _ => StepState::Failed,
            }
        } else if i < done {
            StepState::Succeeded
        } else if i == done && pick % 2 == 0 {
            StepState::InProgress
        } else {
            StepState::Pending
        };
        if let Some(o) = offsets.get(i) {
            step.started_at = Some(at(*o));
            step.finished_at = Some(at(-*o));
        }
    }
    status.aligned_extensions = match phase_one % 4 {
        0 => None,
        1 => Some(ExtensionsStatus {
            requested_at: Some(at(offsets.first().copied().unwrap_or(0))),
            state: Some(StepState::InProgress),
            ..Default::default()
        }),
        2 => Some(ExtensionsStatus {
            state: Some(StepState::Succeeded),
            finished_at: Some(at(0)),
            ..Default::default()
        }),
        _ => Some(ExtensionsStatus {
            state: Some(StepState::Failed),
            ..Default::default()
        }),
    };
}

fn explained(d: &Decision) -> Result<(), String> {
    match d {
        Decision::Stall(s) if s.reason.as_str().is_empty() || s.message.is_empty() => {
            Err(format!("a stall without a reason or message: {s:?}"))
        }
        Decision::ClusterPaused { message } if message.is_empty() => {
            Err("a paused cluster without a message".into())
        }
        _ => Ok(()),
    }
}

/// How a request stands after a decision, as the engine's pass reports it.
fn outcome_of(d: &Decision) -> Outcome {
    match d {
        Decision::Stall(s) => Outcome::Stalled(s.clone()),
        Decision::ClusterPaused { message } => Outcome::ClusterPaused(message.clone()),
        Decision::Blocked { scope } => Outcome::Blocked(*scope),
        Decision::AwaitAcknowledgement { .. } => Outcome::AwaitingAcknowledgement,
        Decision::Paused => Outcome::Paused,
        Decision::Succeeded => Outcome::Succeeded,
        Decision::RequestExtensions { .. } | Decision::ExtensionsDone => {
            Outcome::UpgradingExtensions
        }
        _ => Outcome::Upgrading {
            recheck: std::time::Duration::from_secs(30),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn decide_and_status_never_panic_and_always_explain(
        spec in spec(),
        (obs, _) in observed(),
        states in prop::collection::vec(any::<u8>(), 0..12),
        offsets in prop::collection::vec(-315_360_000i64..315_360_000, 0..12),
        phase_one in any::<u8>(),
        passes in 1usize..6,
    ) {
        let spec: UpgradeRequestSpec = serde_json::from_value(spec).expect("generated specs follow the CRD");
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut status = UpgradeRequestStatus::default();
        // Let the decision plan (and record what it would), then scramble the result.
        for pass in 0..passes {
            let d = decide::decide(&spec, &status, &obs, now);
            prop_assert!(explained(&d).is_ok(), "{:?}", explained(&d));
            if let Decision::SetPlan { steps, target, .. } = d {
                status.plan = steps;
                status.target = Some(target);
            }
            if pass == 0 {
                mutate_status(&mut status, &states, &offsets, phase_one, now);
            }
            // A passed preflight for whatever is due, so steps start and run.
            if let Some(scope) = decide::preflight_scope(&status) {
                status.preflight = Some(upgrade_controller::api::PreflightStatus {
                    observed_at: Time(now),
                    scope: scope.label(),
                    checks: vec![],
                });
            }
        }
        let d = decide::decide(&spec, &status, &obs, now);
        prop_assert!(explained(&d).is_ok(), "{:?}", explained(&d));
        let outcome = outcome_of(&d);
        status::summarize(&mut status, &outcome, 1, now);
        prop_assert!(status.phase.is_some());
        if status.phase == Some(Phase::Stalled) {
            let c = status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
            prop_assert!(c.status == "True" && !c.message.is_empty());
        }
        // Unchanged inputs give an unchanged status: no write follows.
        let again = status.clone();
        status::summarize(&mut status, &outcome, 1, now);
        prop_assert_eq!(status, again);
    }
}

/// A fake CAPI for whole runs: writes land as the controller makes them, rollouts complete
/// when the run says so.
struct FakeCluster {
    obs: Observed,
}

impl FakeCluster {
    /// A consistent 1-CP/2-pool cluster at Kubernetes `cp`, everything rolled out.
    fn new(cp: &str, rows: Vec<Value>, phase: &str) -> Self {
        let (obs, _) = (Observed::default(), ());
        let mut f = FakeCluster { obs };
        let matrix: OSSupportMatrix = serde_json::from_value(json!({
            "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "OSSupportMatrix",
            "metadata": {"name": "m"}, "spec": {"rows": rows},
        }))
        .unwrap();
        f.obs.matrix = Some(matrix);
        f.obs.cluster = Some(typed(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
            "metadata": {"name": "c", "namespace": "ns", "uid": "u1"},
            "spec": {"controlPlaneRef": {"kind": "KubeadmControlPlane", "name": "c-cp"}},
        })));
        f.obs.kcp = Some(typed(json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
            "metadata": {"name": "c-cp", "namespace": "ns", "generation": 1,
                         "labels": {"cluster.x-k8s.io/cluster-name": "c"}},
            "spec": {"version": cp, "replicas": 1,
                     "machineTemplate": {"infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DevMachineTemplate", "name": "t"}}},
        })));
        for pool in ["md-a", "md-b"] {
            f.obs.mds.push(typed(json!({
                "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineDeployment",
                "metadata": {"name": pool, "namespace": "ns", "generation": 1},
                "spec": {"clusterName": "c", "replicas": 1, "template": {"spec": {"version": cp,
                    "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DevMachineTemplate", "name": "t"}}}},
            })));
        }
        f.obs.cvsh = Some(json!({"spec": {}, "status": {"current": {"version": phase},
            "conditions": [{"type": "Ready", "status": "True", "reason": "r", "message": ""}]}}));
        f.obs.cvsh_where = "cvsh".into();
        f.settle();
        f
    }

    /// CAPI finishes every rollout: statuses and machines at the declared versions.
    fn settle(&mut self) {
        let kcp = self.obs.kcp.as_mut().unwrap();
        let v = kcp.spec.version.clone();
        kcp.status = typed(
            json!({"observedGeneration": kcp.metadata.generation, "replicas": 1,
            "updatedReplicas": 1, "readyReplicas": 1, "unavailableReplicas": 0, "version": v}),
        );
        let mut machines = vec![machine(
            "cp-0",
            ("cluster.x-k8s.io/control-plane-name", "c-cp"),
            &v,
            true,
        )];
        for md in &mut self.obs.mds {
            let v = md.version().to_string();
            md.status = typed(
                json!({"observedGeneration": md.metadata.generation, "replicas": 1,
                "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}),
            );
            let name = md.metadata.name.clone().unwrap();
            machines.push(machine(
                &format!("{name}-0"),
                ("cluster.x-k8s.io/deployment-name", &name),
                &v,
                true,
            ));
        }
        self.obs.machines = machines.into_iter().map(typed).collect();
    }

    fn write_kcp(&mut self, version: &str, dns: &str, etcd: &str) {
        let kcp = self.obs.kcp.as_mut().unwrap();
        kcp.spec.version = version.to_string();
        kcp.spec.kubeadm_config_spec = typed(json!({"clusterConfiguration": {
            "dns": {"imageTag": dns}, "etcd": {"local": {"imageTag": etcd}}}}));
        kcp.metadata.generation = Some(kcp.metadata.generation.unwrap() + 1);
    }

    fn write_md(&mut self, pool: &str, version: &str) {
        let md = self
            .obs
            .mds
            .iter_mut()
            .find(|m| m.metadata.name.as_deref() == Some(pool))
            .unwrap();
        md.spec.template.spec.version = Some(version.to_string());
        md.metadata.generation = Some(md.metadata.generation.unwrap() + 1);
    }
}

fn minor(v: &str) -> u64 {
    upgrade_controller::version::KubeVersion::parse(v).map_or(0, |k| k.minor().1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 4, ..ProptestConfig::default() })]

    /// Whole runs: the controller's decisions applied to a fake cluster whose rollouts finish
    /// at random moments, with the clock jumping (backwards too) and the spec edited on the
    /// way (pause, timeouts; the target before Phase 1). Nothing panics, the control plane
    /// never skips a minor, finished steps keep their number, and every run ends at the
    /// target or explained.
    #[test]
    fn whole_runs_keep_their_steps_and_never_skip_a_minor(
        start in prop::sample::select(vec!["v1.31.14-2", "v1.32.11-2", "v1.33.7-4"]),
        target in prop::sample::select(vec!["4.2", "4.3", "4.3.1", "4.3.2"]),
        skip_level in any::<bool>(),
        events in prop::collection::vec(any::<u8>(), 10..120),
    ) {
        let phase = match start { "v1.31.14-2" => "4.0.11", "v1.32.11-2" => "4.1.6", _ => "4.2.5" };
        let mut fake = FakeCluster::new(start, sample_rows(), phase);
        let mut spec: UpgradeRequestSpec = serde_json::from_value(json!({
            "clusterName": "c", "targetVersion": target, "matrixRef": "m",
            "workers": {"strategy": if skip_level { "SkipLevel" } else { "EveryHop" }},
        })).unwrap();
        let mut status = UpgradeRequestStatus::default();
        let mut now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut finished: Vec<(u32, String)> = Vec::new();
        let mut outcome = None;
        for e in events {
            // The world moves: rollouts finish, the clock jumps, a person edits the spec.
            match e % 8 {
                0 | 1 => fake.settle(),
                2 => now = now.saturating_sub(SignedDuration::from_secs(i64::from(e))).unwrap_or(now),
                3 => spec.paused = !spec.paused,
                4 => spec.timeouts.control_plane = upgrade_controller::api::Timeout::new(format!("{}m", 1 + e as u32)),
                5 if !decide::plan_frozen(&status) => spec.target_version = "4.3".into(),
                _ => now = now.saturating_add(SignedDuration::from_secs(i64::from(e) * 7)).unwrap_or(now),
            }
            if let Some(scope) = decide::preflight_scope(&status) {
                status.preflight = Some(upgrade_controller::api::PreflightStatus {
                    observed_at: Time(now), scope: scope.label(), checks: vec![],
                });
            }
            let d = decide::decide(&spec, &status, &fake.obs, now);
            prop_assert!(explained(&d).is_ok(), "{:?}", explained(&d));
            match d {
                Decision::SetPlan { steps, target, current } => {
                    prop_assert!(!decide::plan_frozen(&status), "re-planned a frozen plan");
                    status.plan = steps;
                    status.target = Some(target);
                    status.current = Some(upgrade_controller::api::ClusterVersions {
                        control_plane: current.control_plane,
                        pools: current.pools.into_iter().map(|p| upgrade_controller::api::PoolStatus { name: p.name, version: p.version }).collect(),
                    });
                }
                Decision::RequestExtensions { version, .. } => {
                    status.aligned_extensions = Some(ExtensionsStatus {
                        version: Some(version.clone()), state: Some(StepState::InProgress),
                        requested_at: Some(Time(now)), ..Default::default()
                    });
                    fake.obs.cvsh = Some(json!({"spec": {"desiredUpdate": {"version": version}},
                        "status": {"current": {"version": version},
                        "conditions": [{"type": "Ready", "status": "True", "reason": "r", "message": ""}]}}));
                }
                Decision::ExtensionsDone => {
                    let ext = status.aligned_extensions.get_or_insert_with(Default::default);
                    ext.state = Some(StepState::Succeeded);
                    ext.finished_at = Some(Time(now));
                }
                Decision::Start { index, pools } => {
                    let step = status.plan[index].clone();
                    if step.kind == upgrade_controller::api::PlanStepKind::ControlPlane {
                        let from = minor(&fake.obs.kcp.as_ref().unwrap().spec.version);
                        prop_assert!(minor(&step.kubernetes_version) <= from + 1, "skipped a minor");
                        let row = fake.obs.matrix.as_ref().unwrap().spec.rows.iter()
                            .find(|r| r.distribution_version == step.distribution_version).unwrap().clone();
                        fake.write_kcp(&step.kubernetes_version, &row.core_dns_image_tag, &row.etcd_image_tag);
                    }
                    for p in &pools {
                        fake.write_md(p, &step.kubernetes_version);
                    }
                    let s = &mut status.plan[index];
                    s.state = StepState::InProgress;
                    s.started_at.get_or_insert(Time(now));
                }
                Decision::StepDone { index } => {
                    status.plan[index].state = StepState::Succeeded;
                    finished.push((status.plan[index].index, status.plan[index].kubernetes_version.clone()));
                }
                Decision::Succeeded => { outcome = Some("Succeeded".to_string()); break; }
                Decision::Stall(s) => {
                    // Only these can stop a run against a cluster that does what it is told.
                    prop_assert!(
                        ["RolloutTimeout", "UnknownTarget", "Downgrade"].contains(&s.reason.as_str()),
                        "unexpected stall {s:?}"
                    );
                    if s.reason != "RolloutTimeout" { outcome = Some(s.reason.to_string()); break; }
                }
                _ => {}
            }
            // Finished steps keep their place, number and content.
            for (index, version) in &finished {
                let step = &status.plan[*index as usize];
                prop_assert_eq!(step.index, *index);
                prop_assert_eq!(&step.kubernetes_version, version);
                prop_assert_eq!(step.state, StepState::Succeeded);
            }
            for (i, s) in status.plan.iter().enumerate() {
                prop_assert_eq!(s.index as usize, i);
            }
        }
        if outcome.as_deref() == Some("Succeeded") {
            let want = &status.target.as_ref().unwrap().kubernetes_version;
            prop_assert_eq!(&fake.obs.kcp.as_ref().unwrap().spec.version, want);
        }
    }
}
