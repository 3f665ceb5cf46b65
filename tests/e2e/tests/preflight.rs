//! Phase 1 and the gates before it on the real control plane: each blocking preflight check
//! holds a request with that check's name and message while nothing is written (no CAPI
//! object, no ClusterVersionShadow), and fixing the cause alone lets it proceed; the two-step
//! review waits visibly until spec.acknowledgements covers it; Phase 1 runs through the
//! stand-in Cluster Version Operator and finishes before the first KubeadmControlPlane write;
//! a stalled CVO stalls the request with its reason; the infrastructure provider must be
//! installed at its requested revision (ProviderReady).
//!
//! The workload clusters are static DCS clusters (tests/e2e/src/dcs.rs): real CAPI objects,
//! validated by CAPI's webhooks, paused so CAPI's controllers leave them to the test, which
//! plays the DCS infrastructure (machines, IP pools, image registration). Their kubeconfig
//! Secret points at the test control plane, which therefore is also their "workload API".

use std::time::{Duration, Instant};

use e2e::capi;
use e2e::chart;
use e2e::dcs;
use e2e::platform::GLOBAL;
use e2e::site::{CLUSTER, ROW_4_1_6, ROW_4_2_5, Site, matrix_api};
use futures::TryStreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use upgrade_controller::api::{CheckName, Phase};

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
async fn an_unhealthy_etcd_or_a_remediation_under_way_blocks_until_it_clears() {
    let mut site = Site::new("pf-etcd", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let kcps = capi::kcp_api(&site.client, &site.ns);
    let kcp = site.cluster.kcp_name();
    let sick = "Following machines are reporting unhealthy etcd member status: cp-0";
    dcs::set_condition(
        &kcps,
        &kcp,
        "EtcdClusterHealthy",
        Some(("EtcdClusterUnhealthy", sick)),
    )
    .await
    .unwrap();
    site.request("up", json!({})).await;
    site.start_controller();
    let message = site.blocked_by("up", CheckName::EtcdHealthy).await;
    assert!(message.contains(sick), "{message}");
    site.assert_untouched().await;
    // etcd recovers, but a MachineHealthCheck now has a worker remediated: still held.
    let worker = site.cluster.md_machine_names("md-a")[0].clone();
    let machines = capi::machine_api(&site.client, &site.ns);
    dcs::set_condition(
        &machines,
        &worker,
        "OwnerRemediated",
        Some((
            "WaitingForRemediation",
            "MachineHealthCheck found the node unhealthy",
        )),
    )
    .await
    .unwrap();
    dcs::set_condition(&kcps, &kcp, "EtcdClusterHealthy", None)
        .await
        .unwrap();
    let message = site
        .blocked_by("up", CheckName::NoRemediationInProgress)
        .await;
    assert!(
        message.contains(&format!(
            "Machine {worker} (OwnerRemediated=False: WaitingForRemediation)"
        )),
        "{message}"
    );
    site.assert_untouched().await;
    // Its owner replaced the machine: the request goes on by itself.
    dcs::set_condition(&machines, &worker, "OwnerRemediated", None)
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
    let shadow = site.platform.cvsh_name(CLUSTER);
    tokio::spawn(async move {
        let stream = watcher(
            cvsh_api,
            watcher::Config::default().fields(&format!("metadata.name={shadow}")),
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
    site.controller
        .as_ref()
        .unwrap()
        .settle(&site.client, &site.ns)
        .await;
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
    let message = e2e::assert::stalled_with(&ur, "ChartInstallFailed");
    assert!(
        message.contains("chart kube-ovn v4.3.11 failed"),
        "{message}"
    );
    // Phase 1 was asked for once; no KubeadmControlPlane write happened.
    let cvsh = site.platform.cvsh(&site.client, CLUSTER).await;
    assert_eq!(cvsh["spec"]["desiredUpdate"]["version"], "4.3.2");
    site.controller
        .as_ref()
        .unwrap()
        .settle(&site.client, &site.ns)
        .await;
    assert_eq!(site.kcp().await["spec"]["version"], ROW_4_2_5.k8s);
    // The platform recovers; the request carries on by itself.
    site.platform.control(&site.client, &key, None).await;
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_helm_chart_runs_the_controller_with_only_the_rights_it_grants() {
    let mut site = Site::new("pf-chart", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    let release = chart::Release::for_site(&site);
    assert_eq!(
        release.kinds,
        [
            "PodDisruptionBudget",
            "ServiceAccount",
            "Secret",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "Deployment",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingWebhookConfiguration"
        ]
    );
    assert!(
        release
            .args()
            .contains(&format!("--cvsh-namespace={}", site.platform.namespace))
    );
    // Everything the chart renders is accepted by the API server as is.
    site.controller = Some(release.run(&site, &release.cluster_scoped).await);
    site.request("up", json!({})).await;
    // Preflight (pools, machines, Secrets, ConfigMaps, requests), Phase 1 (cvsh), the template
    // clone and the KCP write all happen with the ClusterRole's rights alone.
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    // The webhook runs on the certificate the chart generated for its Service.
    site.controller
        .as_ref()
        .unwrap()
        .logged_address("serving the validating webhook")
        .await;
    let log = std::fs::read_to_string(&site.controller.as_ref().unwrap().log).unwrap();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the controller hit an RBAC denial:\n{log}"
    );
    release.delete(&site.client).await;
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_not_at_its_requested_revision_blocks_until_installed() {
    let mut site = Site::new("pf-provider", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    // The platform is halfway through upgrading the DCS provider.
    let ns = site.platform.namespace.clone();
    let provider = "cluster-api-provider-dcs";
    let requested = e2e::kube_ovn::release(
        provider,
        &ns,
        "ait/chart-cluster-api-provider-dcs",
        "v1.0.23",
        "v1.0.22",
        "Upgrading",
    );
    e2e::kube_ovn::api(&site.client, &ns)
        .patch(
            provider,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": requested["spec"]})),
        )
        .await
        .unwrap();
    e2e::kube_ovn::set_status(&site.client, &ns, provider, requested["status"].clone()).await;
    site.request("up", json!({})).await;
    site.start_controller();
    let message = site.blocked_by("up", CheckName::ProviderReady).await;
    assert!(
        message.contains("v1.0.23")
            && message.contains("\"v1.0.22\"")
            && message.contains("Upgrading")
            && message.contains("finish or repair the provider upgrade"),
        "{message}"
    );
    site.assert_untouched().await;
    // The provider upgrade finishes.
    let done = e2e::kube_ovn::provider_release(&ns, "v1.0.23");
    e2e::kube_ovn::set_status(&site.client, &ns, provider, done["status"].clone()).await;
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    site.finish().await;
}
