//! Argo CD detection and rule checking on real Application objects: Argo CD's own CRDs (from
//! the Go module of the pinned release, fetched through the module proxy like the test control
//! plane's other sources) on the real API server, and a KubeadmControlPlane carrying Argo CD's
//! tracking id. Argo CD itself does not run: what is checked is that the controller finds the
//! Application its marker names and reads its rules as Argo CD defines them.
//!
//! One request on a static DCS cluster: with no `ignoreDifferences` the preflight check
//! `GitOpsSafe` blocks with the exact fix and nothing is written; `ignoreDifferences` alone is
//! still not enough (Argo CD only hides the diff without `RespectIgnoreDifferences=true`);
//! with both the check passes and the request proceeds to its first write.

use std::path::PathBuf;
use std::process::Command;

use e2e::site::{ROW_4_2_5, Site};
use e2e::{assert, testenv};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use upgrade_controller::api::{CheckName, CheckState, GitOpsTool, Phase};

/// The Argo CD release whose CRDs are installed.
const ARGOCD_MODULE: &str = "github.com/argoproj/argo-cd/v3@v3.1.8";

/// `manifests/crds` of the pinned Argo CD module, downloaded into Go's module cache once.
fn argocd_crds() -> PathBuf {
    let out = Command::new("go")
        .args(["mod", "download", "-json", ARGOCD_MODULE])
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("running go mod download (Go is a prerequisite of the test control plane)");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "go mod download {ARGOCD_MODULE}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        info.get("Error").is_none(),
        "go mod download {ARGOCD_MODULE}: {}",
        info["Error"]
    );
    let dir = PathBuf::from(info["Dir"].as_str().expect("module directory"));
    dir.join("manifests/crds")
}

fn application_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "argoproj.io",
            "v1alpha1",
            "Application",
        )),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn argo_cd_rules_on_real_applications_block_until_they_protect_the_control_plane() {
    let mut site = Site::new("argo", &ROW_4_2_5, "4.3.2", |_| {}).await;
    let installed = testenv::install_crds(&site.client, &argocd_crds(), false)
        .await
        .expect("installing Argo CD's CRDs");
    assert!(
        installed.contains(&"applications.argoproj.io".to_string()),
        "{installed:?}"
    );
    site.stage("4.3.2").await;
    let ns = site.ns.to_string();
    let kcp = site.cluster.kcp_name();

    // Argo CD tracks the control plane (apps-in-any-namespace form: `<ns>_<app>`).
    let tracking =
        format!("{ns}_clusters:controlplane.cluster.x-k8s.io/KubeadmControlPlane:{ns}/{kcp}");
    e2e::capi::kcp_api(&site.client, &ns)
        .patch(
            &kcp,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "argocd.argoproj.io/tracking-id": tracking}}})),
        )
        .await
        .unwrap();
    let apps = application_api(&site.client, &ns);
    let app: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"name": "clusters", "namespace": ns},
        "spec": {
            "project": "default",
            "destination": {"server": "https://kubernetes.default.svc", "namespace": ns},
            "source": {"repoURL": "https://git.example/platform/clusters.git",
                       "path": "prod", "targetRevision": "main"},
            "syncPolicy": {"automated": {"selfHeal": true}},
        },
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app)
        .await
        .expect("the real CRD admits the Application");

    site.request("up", json!({})).await;
    site.start_controller();
    let message = site.blocked_by("up", CheckName::GitOpsSafe).await;
    for part in [
        &format!("Application {ns}/clusters"),
        "ignoreDifferences",
        "\"/spec/version\"",
        "RespectIgnoreDifferences=true",
    ] {
        assert!(message.contains(part), "{part:?} missing: {message}");
    }
    let ur = site.requests().get("up").await.unwrap();
    let gitops = &ur.status.as_ref().unwrap().gitops;
    assert_eq!(gitops.len(), 1, "{gitops:?}");
    assert_eq!(gitops[0].object, format!("KubeadmControlPlane {kcp}"));
    assert_eq!(gitops[0].tool, GitOpsTool::ArgoCD);
    assert!(!gitops[0].protected);
    site.assert_untouched().await;

    // ignoreDifferences alone: Argo CD would still sync the field back.
    let ignore = json!([{"group": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane",
        "name": kcp, "managedFieldsManagers": [upgrade_controller::FIELD_MANAGER]}]);
    apps.patch(
        "clusters",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ignoreDifferences": ignore}})),
    )
    .await
    .expect("the real CRD admits ignoreDifferences");
    let ur = site
        .wait("up", "GitOpsSafe asking only for the sync option", |ur| {
            assert::check(ur, CheckName::GitOpsSafe).is_some_and(|c| {
                c.state == CheckState::Failed && !c.message.contains("ignoreDifferences: [")
            })
        })
        .await;
    let check = assert::check(&ur, CheckName::GitOpsSafe).unwrap();
    let status = ur.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Preflight));
    assert!(
        check.message.contains("RespectIgnoreDifferences=true"),
        "{}",
        check.message
    );
    site.assert_untouched().await;

    // Both: protected, and the request goes on to Phase 1 and its first KCP write.
    apps.patch(
        "clusters",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"syncPolicy": {
            "automated": {"selfHeal": true},
            "syncOptions": ["ServerSideApply=true", "RespectIgnoreDifferences=true"]}}})),
    )
    .await
    .unwrap();
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    let ur = site.requests().get("up").await.unwrap();
    let status = ur.status.unwrap();
    assert!(status.gitops[0].protected, "{:?}", status.gitops);
    assert!(
        status.gitops[0]
            .message
            .contains("RespectIgnoreDifferences=true"),
        "{}",
        status.gitops[0].message
    );
    site.finish().await;
}
