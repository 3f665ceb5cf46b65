//! Kube-OVN before each control-plane hop, on the real control plane (DOMAIN.md §3). The
//! static DCS cluster is Kube-OVN (`DCSCluster.spec.networkType: kube-ovn`); its kubeconfig
//! Secret points at the test control plane, so its `cni-kube-ovn` AppRelease lives there, in
//! the test's platform namespace, reconciled by the stand-in (tests/e2e/src/kube_ovn.rs).
//!
//! - The request's plan has a KubeOvn step before the hop's ControlPlane step; the Cluster
//!   annotation moves to the row's chart, and the AppRelease reports that chart installed with
//!   phase Success, Sync and Health True *at the etcd revision of the KubeadmControlPlane
//!   write* (read with `resourceVersionMatch=Exact`, not a later poll).
//! - From 4.1.6 the DCS provider is a legacy release (v1.0.20, which pairs with 4.2.5's
//!   images): the stand-in provider keeps the AppRelease's source, and upgrade-controller's own
//!   JSON patch moves `targetRevision`.
//! - An AppRelease that ends in DeployFailed stalls the request with its message, and the
//!   control plane is never written.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::capi;
use e2e::kube_ovn;
use e2e::site::{ROW_4_1_6, ROW_4_2_5, Site, WAIT};
use futures::StreamExt;
use kube::api::ListParams;
use kube::api::VersionMatch;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use upgrade_controller::api::{PlanStepKind, StepState};
use upgrade_controller::decide::kube_ovn::{
    RELEASE_NAME, Release, VERSION_ANNOTATION, release_state,
};

/// The resourceVersion of the first KCP object seen declaring `version` (from a watch
/// started before the controller).
fn watch_kcp_write(site: &Site, version: &str) -> Arc<Mutex<Option<String>>> {
    let seen = Arc::new(Mutex::new(None));
    let (api, version, out) = (
        capi::kcp_api(&site.client, &site.ns),
        version.to_string(),
        seen.clone(),
    );
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(Ok(kcp)) = stream.next().await {
            let v = serde_json::to_value(&kcp).unwrap();
            if v["spec"]["version"] == version.as_str() {
                *out.lock().unwrap() = kcp.metadata.resource_version.clone();
                return;
            }
        }
    });
    seen
}

/// Runs a request from `from` until the KubeadmControlPlane is written for the first hop, and
/// proves the order: the Kube-OVN step came first and its AppRelease was done at the write.
async fn kube_ovn_then_control_plane(prefix: &str, from: &e2e::site::Row, hop: (&str, &str, &str)) {
    let (dv, k8s, chart) = hop;
    let started = Instant::now();
    let mut site = Site::new(prefix, from, "4.3.2", |_| {}).await;
    site.stage(dv).await;
    if dv != "4.3.2" {
        site.stage("4.3.2").await;
    }
    let kcp_write = watch_kcp_write(&site, k8s);
    site.request("up", json!({})).await;
    site.start_controller();
    site.assert_proceeds("up", k8s, dv).await;

    // The plan: KubeOvn to the row's chart, then the hop's control plane.
    let ur = site.requests().get("up").await.unwrap();
    let plan = ur.status.unwrap().plan;
    assert_eq!(
        plan.iter().map(|s| s.kind).take(3).collect::<Vec<_>>(),
        [
            PlanStepKind::KubeOvn,
            PlanStepKind::ControlPlane,
            PlanStepKind::Workers
        ],
        "{plan:#?}"
    );
    assert_eq!(plan[0].kube_ovn_chart.as_deref(), Some(chart));
    assert_eq!(plan[0].state, StepState::Succeeded);
    assert_eq!(plan[0].distribution_version, dv);

    // The annotation moved, written by the controller's Kube-OVN field manager.
    let cluster = capi::api(&site.client, &site.ns, capi::CLUSTER_V1BETA1, "Cluster")
        .get(&site.cluster.name)
        .await
        .unwrap();
    assert_eq!(
        cluster.metadata.annotations.as_ref().unwrap()[VERSION_ANNOTATION],
        chart
    );
    let managers: Vec<String> = cluster
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            serde_json::to_string(&m.fields_v1)
                .unwrap()
                .contains(VERSION_ANNOTATION)
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"upgrade.cpaas.io/kube-ovn".to_string()),
        "annotation managers: {managers:?}"
    );

    // At the revision of the KCP write, the AppRelease was done at the chart.
    let rv = {
        let start = Instant::now();
        loop {
            if let Some(rv) = kcp_write.lock().unwrap().clone() {
                break rv;
            }
            assert!(start.elapsed() < WAIT, "the KCP watch never saw {k8s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let at = ListParams::default().at(&rv).matching(VersionMatch::Exact);
    let release = kube_ovn::api(&site.client, &site.platform.namespace)
        .list(&at)
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|r| r.metadata.name.as_deref() == Some(RELEASE_NAME))
        .expect("cni-kube-ovn at the KCP write's revision");
    let release = serde_json::to_value(release).unwrap();
    assert_eq!(
        release_state(&release, chart),
        Release::Done,
        "at the KCP write (rv {rv}) the AppRelease was {release:#}"
    );
    // And it went through the documented phases to get there.
    let history = site.kube_ovn.history.lock().unwrap().clone();
    assert_eq!(
        history,
        [
            format!("{chart} Upgrading"),
            format!("{chart} HealthChecking"),
            format!("{chart} Success")
        ],
        "stand-in phases"
    );
    eprintln!("{prefix}: {:?}", started.elapsed());
    site.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_ovn_reaches_the_hops_chart_before_the_control_plane_is_written() {
    // DCS provider v1.0.22 (full source): the annotation alone moves the AppRelease.
    kube_ovn_then_control_plane("ko-full", &ROW_4_2_5, ("4.3.2", "v1.34.5-3", "v4.3.11")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_dcs_provider_gets_the_apprelease_revision_patched_too() {
    // DCS provider v1.0.20: the stand-in provider leaves the source alone, so only the
    // controller's JSON patch moves targetRevision to 4.2.5's chart.
    kube_ovn_then_control_plane("ko-legacy", &ROW_4_1_6, ("4.2.5", "v1.33.7-4", "v4.2.33")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_kube_ovn_apprelease_stalls_the_request_with_its_message() {
    let mut site = Site::new("ko-fail", &ROW_4_2_5, "4.3.2", |_| {}).await;
    site.stage("4.3.2").await;
    site.kube_ovn.fail_with(Some(
        "helm upgrade kube-ovn: ovn-central did not become ready",
    ));
    site.request("up", json!({})).await;
    site.start_controller();
    let ur = site
        .wait("up", "stalled by KubeOvnFailed", |ur| {
            ur.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Stalled" && c.status == "True" && c.reason == "KubeOvnFailed"
                })
            })
        })
        .await;
    let status = ur.status.unwrap();
    let stalled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    eprintln!("{}", stalled.message);
    assert!(
        stalled.message.contains("DeployFailed")
            && stalled.message.contains("ovn-central did not become ready"),
        "{}",
        stalled.message
    );
    assert_eq!(status.plan[0].kind, PlanStepKind::KubeOvn);
    assert_eq!(status.plan[0].state, StepState::InProgress);
    assert_eq!(status.plan[1].state, StepState::Pending);
    // The annotation moved, the control plane was never written.
    let kcp = site.kcp().await;
    assert_eq!(kcp["spec"]["version"], site.cluster.cp_version.as_str());
    e2e::assert::no_field_of_ours(&kcp);
    site.finish().await;
}
