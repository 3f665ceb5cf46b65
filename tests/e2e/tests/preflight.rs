//! Phase 1 and the gates before it on the real control plane: each blocking preflight check
//! holds a request with that check's name and message while nothing is written (no CAPI
//! object, no ClusterVersionShadow), and fixing the cause alone lets it proceed; the two-step
//! review waits visibly until spec.acknowledgements covers it; Phase 1 runs through the
//! stand-in Cluster Version Operator and finishes before the first KubeadmControlPlane write;
//! a stalled CVO stalls the request with its reason.
//!
//! The workload clusters are static DCS clusters (tests/e2e/src/dcs.rs): real CAPI objects,
//! validated by CAPI's webhooks, paused so CAPI's controllers leave them to the test, which
//! plays the DCS infrastructure (machines, IP pools, image registration). Their kubeconfig
//! Secret points at the test control plane, which therefore is also their "workload API".

use std::time::{Duration, Instant};

use e2e::capi::{self, INFRA_V1BETA1};
use e2e::dcs::{self, StaticDcsCluster};
use e2e::harness;
use e2e::platform::{GLOBAL, Platform};
use e2e::project::{self, Controller};
use futures::TryStreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use upgrade_controller::api::{CheckName, CheckState, Phase, StepState, UpgradeRequest};
use upgrade_controller::reconcile::FIELD_MANAGER;

const CLUSTER: &str = "dcs";
const WAIT: Duration = Duration::from_secs(120);

/// The matrix row a static cluster starts from.
struct Row {
    dv: &'static str,
    k8s: &'static str,
    coredns: &'static str,
    etcd: &'static str,
}

const ROW_4_2_5: Row = Row {
    dv: "4.2.5",
    k8s: "v1.33.7-4",
    coredns: "1.14.3-v4.2.11",
    etcd: "v3.5.28-260421",
};
const ROW_4_1_6: Row = Row {
    dv: "4.1.6",
    k8s: "v1.32.11-2",
    coredns: "1.12.4-v4.1.5",
    etcd: "v3.5.25-251215",
};

/// One test's world: a static DCS cluster, its own matrix (with DCS image names unique to the
/// test, so image registration never leaks between tests), its platform namespace with a
/// stand-in CVO, and the controller pointed at both.
struct Site {
    client: kube::Client,
    ns: String,
    cluster: StaticDcsCluster,
    platform: Platform,
    controller: Option<Controller>,
}

impl Site {
    async fn new(prefix: &str, from: &Row, global: &str, tweak: impl FnOnce(&mut Site)) -> Site {
        let client = harness::client().await;
        project::install(&client).await;
        dcs::install_crds(&client).await.unwrap();
        let ns = harness::namespace(&client, prefix).await;
        // The test's matrix: the sample rows with DCS image names of this test.
        let mut matrix = project::sample_matrix();
        matrix["metadata"] = json!({"name": ns});
        for row in matrix["spec"]["rows"].as_array_mut().unwrap() {
            let dv = row["distributionVersion"].as_str().unwrap().to_string();
            row["images"] = json!({"dcs": format!("{ns}-{dv}")});
        }
        e2e::testenv::apply_cluster_scoped(&client, &[matrix])
            .await
            .unwrap();
        let cluster = StaticDcsCluster {
            cp_version: from.k8s.into(),
            vm_template: format!("{ns}-{}", from.dv),
            coredns_tag: from.coredns.into(),
            etcd_tag: from.etcd.into(),
            pools: vec![("md-a".into(), 2)],
            ip_pool_spare: 1,
            ..StaticDcsCluster::new(CLUSTER, &ns)
        };
        let platform = Platform::start(&client, &ns, CLUSTER, from.dv, global).await;
        let mut site = Site {
            client,
            ns,
            cluster,
            platform,
            controller: None,
        };
        tweak(&mut site);
        site.cluster.create(&site.client).await.unwrap();
        site
    }

    fn image(&self, dv: &str) -> String {
        format!("{}-{dv}", self.ns)
    }

    async fn stage(&self, dv: &str) {
        dcs::stage_images(&self.client, &[&self.image(dv)])
            .await
            .unwrap();
    }

    fn start_controller(&mut self) {
        self.controller = Some(Controller::start_with(
            &self.ns,
            &self.platform.controller_args(),
        ));
    }

    /// A request for this cluster to 4.3 from this test's matrix. The ResourcePatches of the
    /// shared control plane (the review test creates some) are acknowledged wholesale, except
    /// where a test sets its own acknowledgements.
    async fn request(&self, name: &str, extra: Value) {
        let mut spec = json!({
            "clusterName": CLUSTER, "targetVersion": "4.3", "matrixRef": self.ns,
            "acknowledgements": {"modifications": ["*"]},
        });
        merge(&mut spec, extra);
        let ur: UpgradeRequest = serde_json::from_value(json!({
            "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        self.requests()
            .create(&PostParams::default(), &ur)
            .await
            .expect("creating the UpgradeRequest");
    }

    fn requests(&self) -> Api<UpgradeRequest> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn wait(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&UpgradeRequest) -> bool,
    ) -> UpgradeRequest {
        let start = Instant::now();
        loop {
            let ur = self.requests().get(name).await.unwrap();
            if done(&ur) {
                return ur;
            }
            assert!(
                start.elapsed() < WAIT,
                "{name}: not {what} after {WAIT:?}; status: {}\ncontroller log: {}",
                serde_json::to_string_pretty(&ur.status).unwrap(),
                self.controller
                    .as_ref()
                    .map(|c| c.log.display().to_string())
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until `name` is held by preflight with exactly `check` blocking, and returns
    /// that check's message.
    async fn blocked_by(&self, name: &str, check: CheckName) -> String {
        let ur = self
            .wait(name, &format!("blocked by {check:?}"), |ur| {
                ur.status.as_ref().is_some_and(|s| {
                    s.phase == Some(Phase::Preflight)
                        && s.preflight.as_ref().is_some_and(|p| {
                            p.checks
                                .iter()
                                .any(|c| c.name == check && c.state == CheckState::Failed)
                        })
                })
            })
            .await;
        let status = ur.status.unwrap();
        let pf = status.preflight.unwrap();
        let blocking: Vec<_> = pf
            .checks
            .iter()
            .filter(|c| matches!(c.state, CheckState::Failed | CheckState::Unknown))
            .collect();
        assert_eq!(
            blocking.iter().map(|c| c.name).collect::<Vec<_>>(),
            vec![check],
            "only {check:?} blocks: {blocking:#?}"
        );
        let cond = status
            .conditions
            .iter()
            .find(|c| c.type_ == "PreflightPassed")
            .expect("PreflightPassed condition");
        assert_eq!(cond.status, "False");
        assert_eq!(cond.reason, format!("{check:?}"));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.reason, "PreflightFailed");
        let message = blocking[0].message.clone();
        eprintln!("{}: {check:?}: {message}", self.ns);
        message
    }

    /// Nothing was written: no field of this controller on the KCP, the MachineDeployments or
    /// the cluster's cvsh, no new machine template, versions and desired version unchanged.
    async fn assert_untouched(&self) {
        // Give a misbehaving controller time to write first.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let kcp = self.kcp().await;
        assert_eq!(kcp["spec"]["version"], self.cluster.cp_version.as_str());
        let mut objects = vec![kcp];
        for md in capi::md_api(&self.client, &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            objects.push(serde_json::to_value(md).unwrap());
        }
        let cvsh = self.platform.cvsh(&self.client, CLUSTER).await;
        assert!(
            cvsh["spec"]["desiredUpdate"]["version"].is_null(),
            "cvsh was asked for {}",
            cvsh["spec"]["desiredUpdate"]["version"]
        );
        objects.push(cvsh);
        for o in &objects {
            let managers: Vec<&str> = o["metadata"]["managedFields"]
                .as_array()
                .map(|m| m.iter().filter_map(|e| e["manager"].as_str()).collect())
                .unwrap_or_default();
            assert!(
                !managers.contains(&FIELD_MANAGER),
                "{} {} has fields written by the controller",
                o["kind"],
                o["metadata"]["name"]
            );
        }
        let templates = capi::api(&self.client, &self.ns, INFRA_V1BETA1, "DCSMachineTemplate")
            .list(&ListParams::default())
            .await
            .unwrap();
        assert_eq!(
            templates.items.len(),
            1 + self.cluster.pools.len(),
            "no template was cloned"
        );
    }

    async fn kcp(&self) -> Value {
        serde_json::to_value(
            capi::kcp_api(&self.client, &self.ns)
                .get(&self.cluster.kcp_name())
                .await
                .unwrap(),
        )
        .unwrap()
    }

    /// The request went all the way: Phase 1 done through the stand-in CVO, then the first
    /// hop's KubeadmControlPlane write with a template cloned from the row's image.
    async fn assert_proceeds(&self, name: &str, k8s: &str, dv: &str) {
        let start = Instant::now();
        loop {
            if self.kcp().await["spec"]["version"] == k8s {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "the KubeadmControlPlane never moved to {k8s}; request status: {}",
                serde_json::to_string_pretty(&self.requests().get(name).await.unwrap().status)
                    .unwrap()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let kcp = self.kcp().await;
        let template = kcp["spec"]["machineTemplate"]["infrastructureRef"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let t = capi::api(&self.client, &self.ns, INFRA_V1BETA1, "DCSMachineTemplate")
            .get(&template)
            .await
            .unwrap();
        let t = serde_json::to_value(t).unwrap();
        assert_eq!(
            t["spec"]["template"]["spec"]["vmTemplateName"],
            self.image(dv).as_str()
        );
        let ur = self.requests().get(name).await.unwrap();
        let ext = ur.status.unwrap().aligned_extensions.unwrap();
        assert_eq!(ext.state, Some(StepState::Succeeded));
        assert!(
            self.platform.cvsh(&self.client, CLUSTER).await["status"]["current"]["version"]
                == "4.3.2"
        );
    }

    async fn finish(mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill();
        }
        for ur in self.requests().list(&ListParams::default()).await.unwrap() {
            let _ = self
                .requests()
                .delete(&ur.metadata.name.unwrap(), &DeleteParams::default())
                .await;
        }
        let _ = matrix_api(&self.client)
            .delete(&self.ns, &DeleteParams::default())
            .await;
        let images: Vec<String> = ["4.1.6", "4.2.5", "4.3.2"]
            .iter()
            .map(|dv| self.image(dv))
            .collect();
        let _ = dcs::unstage_images(
            &self.client,
            &images.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        dcs::delete_namespace(&self.client, &self.ns).await.unwrap();
        self.platform.delete(&self.client).await;
    }
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn global_tier_behind_blocks_until_the_global_cluster_reaches_the_target() {
    let mut site = Site::new("pf-global", &ROW_4_1_6, "4.2.5", |_| {}).await;
    site.stage("4.2.5").await;
    site.stage("4.3.2").await;
    site.request("up", json!({})).await;
    site.start_controller();
    let message = site.blocked_by("up", CheckName::GlobalTierAtTarget).await;
    assert!(
        message.contains("global") && message.contains("4.2.5"),
        "{message}"
    );
    site.assert_untouched().await;
    // The platform upgrades the global cluster; the request is not touched.
    site.platform
        .api(&site.client)
        .patch(
            GLOBAL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"desiredUpdate": {"version": "4.3.2"}}})),
        )
        .await
        .unwrap();
    site.assert_proceeds("up", "v1.33.7-4", "4.2.5").await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_path_blocks_until_the_matrix_allows_it() {
    let mut site = Site::new("pf-path", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    // This site's matrix publishes 4.3 as reachable from 4.0 and 4.1 only.
    set_upgradeable_from(&site.client, &site.ns, json!(["4.0", "4.1"])).await;
    site.request("up", json!({})).await;
    site.start_controller();
    let message = site.blocked_by("up", CheckName::UpgradePathSupported).await;
    assert!(
        message.contains("4.2.5") && message.contains("[4.0, 4.1]"),
        "{message}"
    );
    site.assert_untouched().await;
    set_upgradeable_from(&site.client, &site.ns, json!(["4.0", "4.1", "4.2"])).await;
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_not_ready_blocks_until_it_recovers() {
    let mut site = Site::new("pf-node", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let worker = site.cluster.md_machine_names("md-a")[0].clone();
    dcs::set_node_ready(&site.client, &site.ns, &worker, false)
        .await
        .unwrap();
    site.request("up", json!({})).await;
    site.start_controller();
    let message = site.blocked_by("up", CheckName::NodesReady).await;
    assert!(message.contains(&worker), "{message}");
    site.assert_untouched().await;
    dcs::set_node_ready(&site.client, &site.ns, &worker, true)
        .await
        .unwrap();
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ip_pool_one_address_short_blocks_until_an_entry_is_added() {
    let mut site = Site::new("pf-pool", &ROW_4_2_5, "4.3.2", |s| {
        s.cluster.ip_pool_spare = 0;
    })
    .await;
    site.stage("4.3.2").await;
    site.request("up", json!({})).await;
    site.start_controller();
    let message = site.blocked_by("up", CheckName::IPPoolCapacity).await;
    let cp_pool = site.cluster.cp_pool_name();
    assert!(
        message.contains(&format!("DCSIpHostnamePool {cp_pool} has 0 free of 3")),
        "{message}"
    );
    assert!(message.contains("add 1 more entry"), "{message}");
    site.assert_untouched().await;
    dcs::add_pool_entry(&site.client, &site.ns, &cp_pool)
        .await
        .unwrap();
    dcs::add_pool_entry(&site.client, &site.ns, &site.cluster.md_pool_name("md-a"))
        .await
        .unwrap();
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_not_staged_blocks_until_it_is_registered() {
    let mut site = Site::new("pf-image", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.request("up", json!({})).await;
    site.start_controller();
    let message = site.blocked_by("up", CheckName::OSImagesStaged).await;
    assert!(message.contains(&site.image("4.3.2")), "{message}");
    site.assert_untouched().await;
    site.stage("4.3.2").await;
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_request_for_the_cluster_waits_for_the_first() {
    let mut site = Site::new("pf-second", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    // The first request holds the cluster (paused before writing anything).
    site.request("first", json!({"paused": true})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    site.request("second", json!({})).await;
    site.start_controller();
    site.wait("first", "Paused", |ur| {
        ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::Paused)
    })
    .await;
    let message = site
        .blocked_by("second", CheckName::SingleActiveRequest)
        .await;
    assert!(message.contains("UpgradeRequest first"), "{message}");
    site.assert_untouched().await;
    site.requests()
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    site.assert_proceeds("second", "v1.34.5-3", "4.3.2").await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_preflight_failure_blocks_until_the_platform_passes() {
    let mut site = Site::new("pf-platform", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let key = format!("fail-preflight.{}", site.platform.cvsh_name(CLUSTER));
    site.platform
        .control(
            &site.client,
            &key,
            Some("PlatformLicense: the platform license expired"),
        )
        .await;
    site.request("up", json!({})).await;
    site.start_controller();
    let message = site.blocked_by("up", CheckName::PlatformPreflight).await;
    assert!(
        message.contains("PlatformLicense") && message.contains("license expired"),
        "{message}"
    );
    site.assert_untouched().await;
    site.platform.control(&site.client, &key, None).await;
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    site.finish().await;
}

/// Sets upgradeableFrom of matrix `name`'s 4.3 rows.
async fn set_upgradeable_from(client: &kube::Client, name: &str, from: Value) {
    let matrices = matrix_api(client);
    let mut m = serde_json::to_value(matrices.get(name).await.unwrap()).unwrap();
    for row in m["spec"]["rows"].as_array_mut().unwrap() {
        if row["distributionVersion"]
            .as_str()
            .unwrap()
            .starts_with("4.3.")
        {
            row["upgradeableFrom"] = from.clone();
        }
    }
    matrices
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rows": m["spec"]["rows"]}})),
        )
        .await
        .unwrap();
}

fn matrix_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("upgrade.cpaas.io", "v1alpha1", "OSSupportMatrix"),
            "ossupportmatrices",
        ),
    )
}

/// The platform's ResourcePatches (cluster-scoped).
fn resource_patch_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &upgrade_controller::platform::resource_patch_resource(),
    )
}

/// A ResourcePatch on the (shared) control plane, the workload API of every static cluster.
async fn resource_patch(client: &kube::Client, name: &str, exempt_for: Option<&str>) {
    let api = resource_patch_api(client);
    let mut obj = json!({
        "apiVersion": "operator.alauda.io/v1alpha1", "kind": "ResourcePatch",
        "metadata": {"name": name, "annotations": {}},
        "spec": {"jsonPatch": [{"op": "replace", "path": "/spec/replicas", "value": 3}]},
    });
    if let Some(v) = exempt_for {
        obj["metadata"]["annotations"]["config.cpaas.io/exempt-for-ver"] = json!(v);
    }
    let _ = api.delete(name, &DeleteParams::default()).await;
    api.create(
        &PostParams::default(),
        &serde_json::from_value(obj).unwrap(),
    )
    .await
    .unwrap();
}

/// When the cluster's cvsh first reported the target and Ready, and when the KCP's
/// spec.version first changed, as (etcd revision, arrival) from two watches.
type Seen = std::sync::Arc<std::sync::Mutex<(Option<(u64, Instant)>, Option<(u64, Instant)>)>>;

fn watch_order(site: &Site, target: &'static str) -> Seen {
    let seen: Seen = Default::default();
    let (cvsh_api, kcp_api) = (
        site.platform.api(&site.client),
        capi::kcp_api(&site.client, &site.ns),
    );
    let from = site.cluster.cp_version.clone();
    let s = seen.clone();
    tokio::spawn(async move {
        let stream = watcher(
            cvsh_api,
            watcher::Config::default().fields(&format!("metadata.name={CLUSTER}")),
        )
        .applied_objects();
        futures::pin_mut!(stream);
        while let Ok(Some(o)) = stream.try_next().await {
            let v = serde_json::to_value(&o).unwrap();
            let ready = v["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if v["status"]["current"]["version"] == target && ready {
                let rv = o.metadata.resource_version.unwrap().parse().unwrap();
                s.lock().unwrap().0.get_or_insert((rv, Instant::now()));
            }
        }
    });
    let s = seen.clone();
    tokio::spawn(async move {
        let stream = watcher(kcp_api, watcher::Config::default()).applied_objects();
        futures::pin_mut!(stream);
        while let Ok(Some(o)) = stream.try_next().await {
            let v = serde_json::to_value(&o).unwrap();
            if v["spec"]["version"] != from.as_str() {
                let rv = o.metadata.resource_version.unwrap().parse().unwrap();
                s.lock().unwrap().1.get_or_insert((rv, Instant::now()));
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn the_review_waits_for_acknowledgements_then_phase_one_precedes_any_kcp_write() {
    let mut site = Site::new("pf-review", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    // Aligned extensions: logging moves with High impact, monitoring with Low.
    let matrices = matrix_api(&site.client);
    let mut m = serde_json::to_value(matrices.get(&site.ns).await.unwrap()).unwrap();
    for row in m["spec"]["rows"].as_array_mut().unwrap() {
        match row["distributionVersion"].as_str().unwrap() {
            "4.2.5" => {
                row["alignedExtensions"] = json!([
                    {"name": "logging", "version": "4.2.3", "impact": "Low"},
                    {"name": "monitoring", "version": "4.2.1", "impact": "Low"}]);
            }
            "4.3.2" => {
                row["alignedExtensions"] = json!([
                    {"name": "logging", "version": "4.3.0", "impact": "High"},
                    {"name": "monitoring", "version": "4.3.1", "impact": "Low"}]);
            }
            _ => {}
        }
    }
    matrices
        .patch(
            &site.ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rows": m["spec"]["rows"]}})),
        )
        .await
        .unwrap();
    let rp = format!("{}-custom", site.ns);
    let rp_exempt = format!("{}-exempt", site.ns);
    resource_patch(&site.client, &rp, None).await;
    resource_patch(&site.client, &rp_exempt, Some("4.3.2")).await;
    let seen = watch_order(&site, "4.3.2");

    site.request("up", json!({"acknowledgements": {"modifications": []}}))
        .await;
    site.start_controller();
    let ur = site
        .wait("up", "AwaitingAcknowledgement", |ur| {
            ur.status.as_ref().and_then(|s| s.phase) == Some(Phase::AwaitingAcknowledgement)
        })
        .await;
    let status = ur.status.unwrap();
    let review = status.review.unwrap();
    let modification = review
        .modifications
        .iter()
        .find(|m| m.name == rp)
        .expect("the custom patch is listed");
    assert!(!modification.acknowledged);
    assert!(
        !review.modifications.iter().any(|m| m.name == rp_exempt),
        "a patch exempted for 4.3.2 needs no review"
    );
    let logging = review.impacts.iter().find(|i| i.name == "logging").unwrap();
    assert!(logging.acknowledgement_required && !logging.acknowledged);
    assert_eq!(logging.from.as_deref(), Some("4.2.3"));
    let monitoring = review
        .impacts
        .iter()
        .find(|i| i.name == "monitoring")
        .unwrap();
    assert!(
        !monitoring.acknowledgement_required,
        "Low impact needs no acknowledgement"
    );
    let cond = status
        .conditions
        .iter()
        .find(|c| c.type_ == "AcknowledgementRequired")
        .unwrap();
    assert_eq!(cond.status, "True");
    assert!(
        cond.message.contains(&rp) && cond.message.contains("logging"),
        "{}",
        cond.message
    );
    site.assert_untouched().await;

    // Step 1 alone is not enough.
    site.requests()
        .patch(
            "up",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"acknowledgements": {"modifications": [rp]}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ur = site.requests().get("up").await.unwrap();
    assert_eq!(
        ur.status.as_ref().unwrap().phase,
        Some(Phase::AwaitingAcknowledgement)
    );
    site.assert_untouched().await;
    // Step 2 as well: Phase 1, then the first hop.
    site.requests()
        .patch(
            "up",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"acknowledgements": {"impacts": ["logging"]}}})),
        )
        .await
        .unwrap();
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (phase_one, kcp) = *seen.lock().unwrap();
    let (phase_one, kcp) = (
        phase_one.expect("cvsh reached 4.3.2"),
        kcp.expect("KCP write"),
    );
    assert!(
        phase_one.0 < kcp.0 && phase_one.1 <= kcp.1,
        "Phase 1 (revision {}) must finish before the KCP write (revision {})",
        phase_one.0,
        kcp.0
    );
    eprintln!(
        "Phase 1 done at revision {}, first KCP write at revision {} ({:?} later)",
        phase_one.0,
        kcp.0,
        kcp.1 - phase_one.1
    );
    let ur = site.requests().get("up").await.unwrap();
    let ext = ur.status.unwrap().aligned_extensions.unwrap();
    let stages: Vec<(String, Option<String>)> = ext
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.state.clone()))
        .collect();
    assert_eq!(
        stages,
        vec![
            ("Core".into(), Some("Completed".into())),
            ("AlignedExtensions".into(), Some("Completed".into()))
        ],
        "the CVO's stages are mirrored"
    );
    for name in [&rp, &rp_exempt] {
        let _ = resource_patch_api(&site.client)
            .delete(name, &DeleteParams::default())
            .await;
    }
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_cluster_version_operator_stalls_the_request_with_its_reason() {
    let mut site = Site::new("pf-stall", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let key = format!("stall.{}", site.platform.cvsh_name(CLUSTER));
    site.platform
        .control(
            &site.client,
            &key,
            Some("ChartInstallFailed: chart kube-ovn v4.3.11 failed to install"),
        )
        .await;
    site.request("up", json!({})).await;
    site.start_controller();
    let ur = site
        .wait("up", "Stalled", |ur| {
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
    assert_eq!(stalled.reason, "ChartInstallFailed");
    assert!(
        stalled.message.contains("chart kube-ovn v4.3.11 failed"),
        "{}",
        stalled.message
    );
    // Phase 1 was asked for once; no KubeadmControlPlane write happened.
    let cvsh = site.platform.cvsh(&site.client, CLUSTER).await;
    assert_eq!(cvsh["spec"]["desiredUpdate"]["version"], "4.3.2");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(site.kcp().await["spec"]["version"], ROW_4_2_5.k8s);
    // The platform recovers; the request carries on by itself.
    site.platform.control(&site.client, &key, None).await;
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    site.finish().await;
}

/// Renders the Helm chart with `helm template` for release `release` in `ns`.
fn render_chart(release: &str, ns: &str, set: &[String]) -> Vec<Value> {
    use serde::Deserialize;
    let helm = harness::env().helm();
    assert!(
        helm.exists(),
        "{} is missing: the running test control plane predates helm in tests/e2e/testenv/build.sh; run `make testenv-down` and retry",
        helm.display()
    );
    let mut cmd = std::process::Command::new(&helm);
    cmd.args([
        "template",
        release,
        "charts/upgrade-controller",
        "--namespace",
        ns,
    ])
    .current_dir(project::repo_root());
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("running helm template");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// A kubeconfig for the test control plane that authenticates as ServiceAccount `ns/name`.
async fn service_account_kubeconfig(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> std::path::PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let tr = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(
            name,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("a token for the chart's ServiceAccount");
    let token = tr.status.expect("token status").token;
    let admin = std::fs::read_to_string(&harness::env().kubeconfig).unwrap();
    let mut kc: Value = serde_yaml_ng::from_str(&admin).unwrap();
    for user in kc["users"].as_array_mut().unwrap() {
        user["user"] = json!({"token": token});
    }
    let path = harness::env()
        .kubeconfig
        .with_file_name(format!("kubeconfig-{ns}-{name}"));
    std::fs::write(&path, serde_yaml_ng::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_helm_chart_runs_the_controller_with_only_the_rights_it_grants() {
    let mut site = Site::new("pf-chart", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let release = site.ns.clone();
    let docs = render_chart(
        &release,
        &site.ns,
        &[
            format!("watchNamespace={}", site.ns),
            format!("cvsh.namespace={}", site.platform.namespace),
            "cvsh.mapping=namespaced-name".to_string(),
        ],
    );
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment"
        ]
    );
    // Everything the chart renders is accepted by the API server as is.
    let (cluster_scoped, namespaced): (Vec<Value>, Vec<Value>) = docs
        .into_iter()
        .partition(|d| d["kind"].as_str().unwrap().starts_with("Cluster"));
    e2e::testenv::apply_cluster_scoped(&site.client, &cluster_scoped)
        .await
        .unwrap();
    capi::create_all(&site.client, &site.ns, &namespaced)
        .await
        .unwrap();
    // Run the controller as the Deployment would: its args, its ServiceAccount's token.
    let deployment = namespaced
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(args.contains(&format!("--cvsh-namespace={}", site.platform.namespace)));
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let kubeconfig = service_account_kubeconfig(&site.client, &site.ns, sa).await;
    site.controller = Some(Controller::start_as(
        &format!("{}-chart", site.ns),
        &kubeconfig,
        &args,
    ));
    site.request("up", json!({})).await;
    // Preflight (pools, machines, Secrets, ConfigMaps, requests), Phase 1 (cvsh), the template
    // clone and the KCP write all happen with the ClusterRole's rights alone.
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    let log = std::fs::read_to_string(&site.controller.as_ref().unwrap().log).unwrap();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the controller hit an RBAC denial:\n{log}"
    );
    for (kind, plural) in [
        ("ClusterRole", "clusterroles"),
        ("ClusterRoleBinding", "clusterrolebindings"),
    ] {
        let api: Api<DynamicObject> = Api::all_with(
            site.client.clone(),
            &kube::core::ApiResource::from_gvk_with_plural(
                &kube::core::GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
                plural,
            ),
        );
        let _ = api.delete(&release, &DeleteParams::default()).await;
    }
    site.finish().await;
}
