//! What a tenant can and cannot make the controller do, on the real control plane (issue 8):
//! kubeconfig Secrets are data, a Cluster reaches only its own ClusterVersionShadow, references
//! stay in the namespace, a missing RBAC rule or a change behind the controller's back shows in
//! status at once, a paused Cluster is waited for, MachinePools are refused, and no spec the
//! API server admits crashes the controller.
//!
//! The clusters are static DCS clusters (tests/e2e/src/dcs.rs, tests/e2e/src/site.rs); what
//! the controller sent is read from the API server's audit log (tests/e2e/src/audit.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::assert::{condition, is_stalled};
use e2e::audit;
use e2e::capi;
use e2e::chart;
use e2e::cvo;
use e2e::dcs::{self, StaticDcsCluster};
use e2e::harness;
use e2e::project::Controller;
use e2e::site::{ROW_4_2_5, Site};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use upgrade_controller::api::{CheckName, CheckState, Phase, UpgradeRequest};

/// A TCP listener on 127.0.0.1 that only counts the connections it is offered.
async fn connection_counter() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, count)
}

/// The controller's writes (by the audit log) to cvsh `name` in the platform namespace.
fn cvsh_writes(site: &Site, name: &str) -> Vec<audit::Entry> {
    audit::controller_requests("clusterversionshadows", &site.platform.namespace, name)
        .into_iter()
        .filter(|e| e.is_write())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeconfig_secrets_with_code_or_file_references_are_refused_and_never_used() {
    let mut site = Site::new("hd-kubeconfig", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let secrets: Api<Secret> = Api::namespaced(site.client.clone(), &site.ns);
    let name = format!("{}-kubeconfig", site.cluster.name);
    let original = secrets.get(&name).await.unwrap();
    let dir = std::env::temp_dir().join(format!("uc-{}", site.ns));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("exec-ran");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "controller-secret-token").unwrap();
    let admin_pki = harness::env().kubeconfig.parent().unwrap().join("pki");
    let (port, connections) = connection_counter().await;

    site.request("up", json!({})).await;
    site.start_controller();
    let variants = [
        (
            "users[u].user.exec",
            json!({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "/bin/sh",
                            "args": ["-c", format!("touch {}; exit 1", marker.display())],
                            "interactiveMode": "Never"}}),
        ),
        (
            "users[u].user.auth-provider",
            json!({"auth-provider": {"name": "oidc", "config": {
                "idp-issuer-url": format!("https://127.0.0.1:{port}"), "client-id": "x",
                "id-token": "x", "refresh-token": "x"}}}),
        ),
        (
            "users[u].user.tokenFile",
            json!({"tokenFile": token_file.display().to_string()}),
        ),
        (
            "users[u].user.client-certificate",
            json!({"client-certificate": admin_pki.join("admin.crt").display().to_string(),
                   "client-key": admin_pki.join("admin.key").display().to_string()}),
        ),
    ];
    for (field, user) in variants {
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": format!("https://127.0.0.1:{port}")}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "ctx",
        });
        secrets
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": null, "stringData": {
                    "value": serde_yaml_ng::to_string(&kubeconfig).unwrap()}})),
            )
            .await
            .unwrap();
        let ur = site
            .wait("up", &format!("refused for {field}"), |ur| {
                ur.status.as_ref().is_some_and(|s| {
                    s.preflight.as_ref().is_some_and(|p| {
                        p.checks.iter().any(|c| {
                            c.name == CheckName::ControlPlaneHealthy
                                && c.state == CheckState::Failed
                                && c.reason == "KubeconfigRefused"
                                && c.message.contains(field)
                        })
                    })
                })
            })
            .await;
        assert_eq!(ur.status.unwrap().phase, Some(Phase::Preflight));
        eprintln!("{field}: refused");
    }
    assert!(!marker.exists(), "the exec plugin ran in the controller");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the controller connected to the Secret's server with a refused kubeconfig"
    );
    site.assert_untouched().await;
    // Inline data again: the request goes on by itself.
    secrets
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": null, "data": original.data})),
        )
        .await
        .unwrap();
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    let _ = std::fs::remove_dir_all(&dir);
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_cluster_named_global_never_reaches_the_global_clusters_shadow() {
    let mut site = Site::with_cluster("hd-global", "global", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    // The platform's convention: only Clusters in the cvsh namespace have a shadow.
    site.controller = Some(Controller::start_with(
        &site.ns,
        &["--cvsh-namespace".into(), site.platform.namespace.clone()],
    ));
    site.request(
        "up",
        json!({"preflight": {"skip": ["ControlPlaneHealthy", "NodesReady"]}}),
    )
    .await;
    let ur = site
        .wait("up", "refused as unmapped", |ur| {
            is_stalled(ur, "ClusterVersionShadowUnmapped")
        })
        .await;
    eprintln!("Name mapping: {}", condition(&ur, "Stalled").2);
    assert!(cvsh_writes(&site, "global").is_empty());
    // Mapped by namespace, the tenant's `global` is `<ns>.global`, never the platform's.
    site.controller.take().unwrap().kill();
    site.start_controller();
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    let own = format!("{}.global", site.ns);
    assert!(
        !cvsh_writes(&site, &own).is_empty(),
        "the tenant's own shadow was asked"
    );
    assert!(
        cvsh_writes(&site, "global").is_empty(),
        "the global cluster's shadow was written: {:?}",
        cvsh_writes(&site, "global")
    );
    let global = site.platform.cvsh(&site.client, "global").await;
    assert!(global["spec"]["desiredUpdate"]["version"].is_null());
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_namespaces_with_a_cluster_named_prod_each_move_only_their_own_shadow() {
    let mut a = Site::with_cluster("hd-prod-a", "prod", &ROW_4_2_5, "4.3.2", |_| {}).await;
    a.stage("4.3.2").await;
    // The platform's own cluster `prod` (in the cvsh namespace) has the shadow `prod`.
    cvo::create_cvsh_in(&a.client, &a.platform.namespace, "prod", "4.2.5")
        .await
        .unwrap();
    // A second tenant with a Cluster of the same name, same platform.
    let ns_b = harness::namespace(&a.client, "hd-prod-b").await;
    let b = StaticDcsCluster {
        vm_template: a.cluster.vm_template.clone(),
        ..a.cluster.clone()
    };
    let b = StaticDcsCluster {
        namespace: ns_b.to_string(),
        ..b
    };
    b.create(&a.client).await.unwrap();
    cvo::create_cvsh_in(
        &a.client,
        &a.platform.namespace,
        &format!("{ns_b}.prod"),
        "4.2.5",
    )
    .await
    .unwrap();
    let requests_b: Api<UpgradeRequest> = Api::namespaced(a.client.clone(), &ns_b);
    let ur: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": "up"},
        "spec": {"clusterName": "prod", "targetVersion": "4.3", "matrixRef": a.ns,
                 "acknowledgements": {"modifications": ["*"]}},
    }))
    .unwrap();
    requests_b
        .create(&PostParams::default(), &ur)
        .await
        .unwrap();
    // B's cluster is Kube-OVN too: its AppRelease in B's namespace, with its own stand-in.
    let _kube_ovn_b = e2e::kube_ovn::StandInKubeOvn::start(
        &a.client,
        &ns_b,
        "prod",
        &ns_b,
        ROW_4_2_5.kube_ovn_chart,
        false,
    )
    .await;
    let mut args_b = a.platform.controller_args();
    args_b.extend(["--kube-ovn-namespace".into(), ns_b.to_string()]);
    let _controller_b = Controller::start_with(&ns_b, &args_b);
    a.request("up", json!({})).await;
    a.start_controller();
    a.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    // B's cluster moved too, from B's own shadow.
    let kcp_b = capi::kcp_api(&a.client, &ns_b);
    let start = Instant::now();
    while serde_json::to_value(kcp_b.get("prod-cp").await.unwrap()).unwrap()["spec"]["version"]
        != "v1.34.5-3"
    {
        assert!(start.elapsed() < Duration::from_secs(120), "B never moved");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for shadow in [format!("{}.prod", a.ns), format!("{ns_b}.prod")] {
        let v =
            serde_json::to_value(a.platform.api(&a.client).get(&shadow).await.unwrap()).unwrap();
        assert_eq!(v["spec"]["desiredUpdate"]["version"], "4.3.2", "{shadow}");
        assert_eq!(cvsh_writes(&a, &shadow).len(), 1, "{shadow} asked once");
    }
    assert!(
        cvsh_writes(&a, "prod").is_empty(),
        "the platform's own `prod` shadow was written"
    );
    dcs::delete_namespace(&a.client, &ns_b).await.unwrap();
    ns_b.finish(&a.client).await;
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_to_another_kind_is_refused_before_anything_is_read_or_written() {
    let mut site = Site::new("hd-refs", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let md = site.cluster.md_name("md-a");
    capi::md_api(&site.client, &site.ns)
        .patch(
            &md,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"bootstrap": {"configRef": {
                "apiVersion": "v1", "kind": "Secret", "name": format!("{}-kubeconfig", site.cluster.name),
            }}}}}})),
        )
        .await
        .unwrap();
    site.request("up", json!({})).await;
    site.start_controller();
    let ur = site
        .wait("up", "refused", |ur| is_stalled(ur, "ReferenceRefused"))
        .await;
    let message = condition(&ur, "Stalled").2;
    assert!(message.contains("Secret"), "{message}");
    eprintln!("{message}");
    site.assert_untouched().await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn machine_pools_are_refused_up_front() {
    let mut site = Site::new("hd-mp", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let mp = json!({
        "apiVersion": capi::CLUSTER_V1BETA1, "kind": "MachinePool",
        "metadata": {"name": "mp-a", "labels": {"cluster.x-k8s.io/cluster-name": site.cluster.name},
                     "annotations": {dcs::PAUSED_ANNOTATION: ""}},
        "spec": {"clusterName": site.cluster.name, "replicas": 1, "template": {"spec": {
            "clusterName": site.cluster.name, "version": site.cluster.cp_version,
            "bootstrap": {"dataSecretName": "mp-bootstrap"},
            "infrastructureRef": {"apiVersion": capi::INFRA_V1BETA1, "kind": "DCSMachine", "name": "mp-a"},
        }}},
    });
    capi::create_all(&site.client, &site.ns, &[mp])
        .await
        .unwrap();
    site.request("up", json!({})).await;
    site.start_controller();
    let ur = site
        .wait("up", "refused", |ur| {
            is_stalled(ur, "MachinePoolsUnsupported")
        })
        .await;
    assert!(condition(&ur, "Stalled").2.contains("mp-a"));
    site.assert_untouched().await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_cluster_is_waited_for_and_a_change_behind_the_controller_stalls_at_once() {
    let mut site = Site::new("hd-paused", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let clusters = capi::api(&site.client, &site.ns, capi::CLUSTER_V1BETA1, "Cluster");
    let pause = |paused: bool| json!({"spec": {"paused": paused}});
    clusters
        .patch(
            &site.cluster.name,
            &PatchParams::default(),
            &Patch::Merge(pause(true)),
        )
        .await
        .unwrap();
    site.request("up", json!({})).await;
    site.start_controller();
    let ur = site
        .wait("up", "waiting for the Cluster", |ur| {
            ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Paused)
                && condition(ur, "Paused").1 == "ClusterPaused"
        })
        .await;
    let (_, reason, message) = condition(&ur, "Ready");
    assert_eq!(reason, "ClusterPaused", "{message}");
    assert!(message.contains("spec.paused"), "{message}");
    site.assert_untouched().await;
    assert!(cvsh_writes(&site, &site.platform.cvsh_name(&site.cluster.name)).is_empty());
    clusters
        .patch(
            &site.cluster.name,
            &PatchParams::default(),
            &Patch::Merge(pause(false)),
        )
        .await
        .unwrap();
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    // The control-plane step (after the Kube-OVN step: the static cluster is Kube-OVN).
    site.wait("up", "the control-plane step in progress", |ur| {
        ur.status.as_ref().is_some_and(|s| {
            s.plan
                .iter()
                .find(|st| st.kind == upgrade_controller::api::PlanStepKind::ControlPlane)
                .is_some_and(|st| st.state == upgrade_controller::api::StepState::InProgress)
        })
    })
    .await;

    // Someone puts the control plane's version back while the step runs (the static cluster
    // never finishes rolling out, so the step is still in progress).
    let kcps = capi::kcp_api(&site.client, &site.ns);
    let reverted = Instant::now();
    kcps.patch(
        &site.cluster.kcp_name(),
        &PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"spec": {"version": site.cluster.cp_version}})),
    )
    .await
    .unwrap();
    let ur = site
        .wait("up", "ClusterChangedOutside", |ur| {
            is_stalled(ur, "ClusterChangedOutside")
        })
        .await;
    let took = reverted.elapsed();
    let message = condition(&ur, "Stalled").2;
    eprintln!("stalled {took:?} after the revert: {message}");
    for part in ["KubeadmControlPlane", "spec.version", "kubectl-edit"] {
        assert!(message.contains(part), "{part} not in: {message}");
    }
    assert!(
        took < Duration::from_secs(15),
        "took {took:?}: one reconcile, not a timeout"
    );
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_rbac_rule_shows_in_status_with_the_api_servers_message() {
    let mut site = Site::new("hd-rbac", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let release = chart::Release::for_site(&site);
    // The ClusterRole without `patch` on KubeadmControlPlanes.
    let mut crippled = release.cluster_scoped.clone();
    for doc in &mut crippled {
        if doc["kind"] == "ClusterRole" {
            for rule in doc["rules"].as_array_mut().unwrap() {
                if rule["resources"] == json!(["kubeadmcontrolplanes"]) {
                    rule["verbs"] = json!(["get", "list", "watch"]);
                }
            }
        }
    }
    site.controller = Some(release.run(&site, &crippled).await);
    site.request("up", json!({})).await;
    let ur = site
        .wait("up", "Stalled by Forbidden", |ur| {
            is_stalled(ur, "Forbidden")
        })
        .await;
    let message = condition(&ur, "Stalled").2;
    eprintln!("{message}");
    assert!(
        message.contains("cannot patch resource \"kubeadmcontrolplanes\""),
        "the missing rule is named: {message}"
    );
    assert_eq!(condition(&ur, "Ready").1, "Forbidden");
    // Granting the rule is the whole fix.
    e2e::testenv::apply(&site.client, &release.cluster_scoped)
        .await
        .unwrap();
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    let ur = site.requests().get("up").await.unwrap();
    assert_eq!(
        condition(&ur, "Stalled").0,
        "False",
        "cleared once it works"
    );
    release.delete(&site.client).await;
    site.finish().await;
}

/// A small deterministic generator (xorshift64*), so a failing case can be replayed from the
/// seed printed with it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// A spec that may or may not be valid: every field drawn from values the CRD accepts, then
/// none, one or two of them replaced by values it must refuse.
fn random_spec(rng: &mut Rng, cluster: &str, matrix: &str) -> Value {
    let fields: [(&str, Vec<Value>, Vec<Value>); 10] = [
        (
            "/clusterName",
            vec![json!(cluster), json!(cluster), json!("nope")],
            vec![
                json!("a/b"),
                json!("UPPER"),
                json!("has space"),
                json!("x?y#z"),
                json!(""),
            ],
        ),
        (
            "/targetVersion",
            vec![
                json!("4.3"),
                json!("4.2"),
                json!("4.2.5"),
                json!("4.3.2"),
                json!("4.9"),
                json!("v4.1"),
                json!("4.0"),
            ],
            vec![json!("latest"), json!(""), json!("4.3.2.1"), json!("4")],
        ),
        (
            "/matrixRef",
            vec![json!(matrix), json!(matrix), json!("missing")],
            vec![json!("bad/name"), json!(""), json!("Bad")],
        ),
        (
            "/timeouts/controlPlane",
            vec![json!("45m"), json!("1h30m"), json!("90s"), json!("720h")],
            vec![
                json!("30s"),
                json!("721h"),
                json!(""),
                json!("5"),
                json!("4611686018427387904s"),
                json!("99999h"),
                json!("1h1h"),
            ],
        ),
        (
            "/timeouts/workerPool",
            vec![json!("60m"), json!("2h")],
            vec![json!("0s"), json!("9999999s")],
        ),
        (
            "/preflight/skip",
            vec![
                json!([]),
                json!(["NodesReady"]),
                json!(["IPPoolCapacity", "OSImagesStaged"]),
            ],
            vec![
                json!(["NotADowngrade"]),
                json!(["GlobalTierAtTarget", "SingleActiveRequest"]),
                json!(["NoSuchCheck"]),
            ],
        ),
        (
            "/workers/maxConcurrentPools",
            vec![json!(1), json!(2), json!(50)],
            vec![json!(0), json!(51), json!(-1)],
        ),
        (
            "/workers/strategy",
            vec![json!("EveryHop"), json!("SkipLevel")],
            vec![json!("Sometimes")],
        ),
        (
            "/paused",
            vec![json!(false), json!(false), json!(true)],
            vec![json!("yes")],
        ),
        (
            "/acknowledgements/modifications",
            vec![json!(["*"]), json!([])],
            vec![json!(["a b"])],
        ),
    ];
    let broken: Vec<usize> = match rng.next() % 4 {
        0 | 1 => vec![],
        2 => vec![(rng.next() % 10) as usize],
        _ => vec![(rng.next() % 10) as usize, (rng.next() % 10) as usize],
    };
    let mut spec = json!({"timeouts": {}, "preflight": {}, "workers": {}, "acknowledgements": {}});
    for (i, (path, valid, invalid)) in fields.iter().enumerate() {
        let value = if broken.contains(&i) {
            rng.pick(invalid).clone()
        } else {
            rng.pick(valid).clone()
        };
        let (parent, key) = path.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut spec
        } else {
            spec.pointer_mut(parent).unwrap()
        };
        target[key] = value;
    }
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn random_specs_are_refused_at_admission_or_explained_in_status_and_never_crash_it() {
    const N: usize = 120;
    // The global cluster is behind the 4.3 target, so nothing here may move the cluster.
    let mut site = Site::new("hd-fuzz", &ROW_4_2_5, "4.2.5", |_| {}).await;
    site.start_controller();
    let seed = 0x5eed_0008_u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
    eprintln!("fuzz seed {seed:#x}");
    let mut rng = Rng(seed | 1);
    let (mut refused, mut admitted) = (Vec::new(), Vec::new());
    for i in 0..N {
        let spec = random_spec(&mut rng, &site.cluster.name, &site.ns);
        let body = json!({
            "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
            "metadata": {"name": format!("f-{i}")}, "spec": spec,
        });
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            site.client.clone(),
            &site.ns,
            &kube::core::ApiResource::erase::<UpgradeRequest>(&()),
        );
        match api
            .create(
                &PostParams::default(),
                &serde_json::from_value(body).unwrap(),
            )
            .await
        {
            Ok(_) => admitted.push(format!("f-{i}")),
            Err(kube::Error::Api(s)) => {
                assert!(
                    matches!(s.code, 400 | 422) && !s.message.is_empty(),
                    "{s:?}"
                );
                refused.push((spec, s.message));
            }
            Err(e) => panic!("creating f-{i}: {e}"),
        }
    }
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for name in &admitted {
        let ur = site
            .wait(name, "explained in status", |ur| {
                ur.status.as_ref().is_some_and(|s| {
                    let phase = s.phase;
                    let explained = match phase {
                        Some(Phase::Stalled) => !condition(ur, "Stalled").2.is_empty(),
                        Some(Phase::Preflight) => s.preflight.is_some(),
                        Some(_) => !condition(ur, "Ready").1.is_empty(),
                        None => false,
                    };
                    s.observed_generation.is_some() && explained
                })
            })
            .await;
        let s = ur.status.clone().unwrap();
        *outcomes
            .entry(format!(
                "{:?}/{}",
                s.phase.unwrap(),
                condition(&ur, "Ready").1
            ))
            .or_insert(0) += 1;
    }
    assert!(
        site.controller.as_mut().unwrap().is_running(),
        "the controller exited"
    );
    eprintln!(
        "{N} random specs: {} refused at admission, {} admitted and explained in status ({outcomes:?}), 0 crashes",
        refused.len(),
        admitted.len()
    );
    for (spec, message) in refused.iter().take(3) {
        eprintln!("refused {spec}: {message}");
    }
    assert!(!refused.is_empty() && !admitted.is_empty());
    site.assert_untouched().await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_refuses_skipped_safety_checks_and_unbounded_values() {
    let client = harness::client().await;
    e2e::project::install(&client).await;
    let ns = harness::namespace(&client, "hd-admission").await;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::core::ApiResource::erase::<UpgradeRequest>(&()),
    );
    let base = json!({"clusterName": "prod", "targetVersion": "4.3"});
    let cases = [
        (
            json!({"preflight": {"skip": ["NotADowngrade"]}}),
            "only advisory checks can be skipped",
        ),
        (
            json!({"preflight": {"skip": ["NodesReady", "SingleActiveRequest"]}}),
            "only advisory checks can be skipped",
        ),
        (
            json!({"timeouts": {"controlPlane": "4611686018427387904s"}}),
            "spec.timeouts.controlPlane",
        ),
        (
            json!({"timeouts": {"workerPool": "30s"}}),
            "between 1m and 720h",
        ),
        (
            json!({"timeouts": {"workerPool": ""}}),
            "spec.timeouts.workerPool",
        ),
        (json!({"clusterName": "prod/../../x"}), "spec.clusterName"),
        (json!({"matrixRef": "a b?c#d"}), "spec.matrixRef"),
        (json!({"targetVersion": "4.3.2-rc.1"}), "spec.targetVersion"),
    ];
    for (i, (extra, expected)) in cases.iter().enumerate() {
        let mut spec = base.clone();
        e2e::site::merge(&mut spec, extra.clone());
        let body = json!({"apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
                          "metadata": {"name": format!("c-{i}")}, "spec": spec});
        let err = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(body).unwrap(),
            )
            .await
            .expect_err("the API server must refuse it");
        assert!(err.to_string().contains(expected), "{extra}: {err}");
    }
    // The advisory ones may be skipped.
    let mut spec = base.clone();
    e2e::site::merge(
        &mut spec,
        json!({"preflight": {"skip": ["NodesReady", "OSImagesStaged"]}}),
    );
    let ok = json!({"apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
                    "metadata": {"name": "advisory"}, "spec": spec});
    api.create(&PostParams::default(), &serde_json::from_value(ok).unwrap())
        .await
        .unwrap();
    ns.finish(&client).await;
}
