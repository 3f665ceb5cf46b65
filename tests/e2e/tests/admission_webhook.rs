//! The controller's validating webhook on the real kube-apiserver, registered by the chart's
//! own ValidatingWebhookConfiguration (its rules and matchConditions as rendered; only the
//! client config points at this test's controller on loopback, with the test control plane's
//! CA): on a static DCS cluster it refuses a MachineDeployment newer than its control plane and
//! a control-plane version whose template lacks that minor's matrix image, admits the version
//! with the right template, and, with the controller gone, still admits writes that change
//! neither (matchConditions keep them away from the webhook) while refusing the rest
//! (failurePolicy Fail). Writes are tried as dry runs.

use std::time::{Duration, Instant};

use base64::Engine;
use e2e::capi::{self, CLUSTER_V1BETA1, CONTROLPLANE_V1BETA1, INFRA_V1BETA1};
use e2e::dcs::StaticDcsCluster;
use e2e::project::{self, Controller};
use e2e::testenv::apply;
use e2e::{chart, harness};
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

use e2e::capi::dry_run_patch as try_patch;

fn refused(result: Result<(), String>, words: &[&str]) -> String {
    let message = result.expect_err("the webhook must refuse this write");
    assert!(
        message.contains("versions.upgrade.cpaas.io"),
        "refused, but not by the webhook: {message}"
    );
    for w in words {
        assert!(message.contains(w), "{w:?} missing from: {message}");
    }
    eprintln!("refused: {message}");
    message
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_refuses_a_pool_above_its_control_plane_and_a_template_without_the_rows_image()
{
    let client = harness::client().await;
    // On a fresh control plane this test may run first: the matrix CRD must be there.
    project::install(&client).await;
    let mut ns = harness::namespace(&client, "webhook").await;
    // This test's matrix: its own image names, so no other suite's rows match them.
    let mut matrix = project::sample_matrix();
    matrix["metadata"] = json!({"name": ns.name()});
    for row in matrix["spec"]["rows"].as_array_mut().unwrap() {
        let dv = row["distributionVersion"].as_str().unwrap().to_string();
        row["images"] = json!({"dcs": format!("wh-{}-{dv}", ns.name())});
    }
    apply(&client, &[matrix]).await.unwrap();
    let matrix_name = ns.name().to_string();
    ns.delete_matrix_with(&matrix_name);
    let image = |dv: &str| format!("wh-{}-{dv}", ns.name());
    let cluster = StaticDcsCluster {
        cp_version: "v1.32.11-2".into(),
        cp_replicas: 1,
        pools: vec![("md-a".into(), 1)],
        vm_template: image("4.1.6"),
        ..StaticDcsCluster::new("wh", &ns)
    };
    cluster.create(&client).await.unwrap();
    let kcps = capi::api(&client, &ns, CONTROLPLANE_V1BETA1, "KubeadmControlPlane");
    let mds = capi::api(&client, &ns, CLUSTER_V1BETA1, "MachineDeployment");
    let templates = capi::api(&client, &ns, INFRA_V1BETA1, "DCSMachineTemplate");
    let (kcp, md) = (cluster.kcp_name(), cluster.md_name("md-a"));

    // A template with the 1.33 row's image, as an UpgradeRequest's hop would clone it.
    let mut next = templates.get(&cluster.cp_template_name()).await.unwrap();
    next.metadata = kube::api::ObjectMeta {
        name: Some(format!("{}-133", cluster.cp_template_name())),
        labels: next.metadata.labels.clone(),
        ..Default::default()
    };
    next.data["spec"]["template"]["spec"]["vmTemplateName"] = json!(image("4.2.5"));
    templates
        .create(&PostParams::default(), &next)
        .await
        .unwrap();
    let next_name = next.metadata.name.clone().unwrap();

    // The controller, serving the webhook with the test control plane's loopback certificate.
    let env = harness::env();
    let pki = env.kubeconfig.with_file_name("pki");
    let mut controller = Controller::start_with(
        &ns,
        &[
            "--webhook-bind-address=127.0.0.1:0".into(),
            format!("--webhook-cert-dir={}", pki.join("webhook").display()),
        ],
    );
    let addr = controller
        .logged_address("serving the validating webhook")
        .await;

    // The chart's configuration, pointed at it and limited to this namespace.
    let mut config = chart::render("wh", "uc-system", &[])
        .into_iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .expect("the chart renders the webhook configuration");
    let name = format!("upgrade-controller-{}", ns.name());
    config["metadata"]["name"] = json!(name);
    let ca = std::fs::read(pki.join("ca.crt")).unwrap();
    let hook = &mut config["webhooks"][0];
    hook["clientConfig"] = json!({
        "url": format!("https://{addr}/validate"),
        "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
    });
    hook["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": ns.name()}});
    apply(&client, &[config]).await.unwrap();
    let configs = chart::webhook_configurations(&client);

    // The API server loads a new configuration asynchronously: wait for the first refusal.
    let md_above = json!({"spec": {"template": {"spec": {"version": "v1.33.7-4"}}}});
    let start = Instant::now();
    let first = loop {
        let r = try_patch(&mds, &md, md_above.clone()).await;
        if r.is_err() || start.elapsed() > Duration::from_secs(60) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    refused(
        first,
        &[
            "newer minor than its control plane",
            &format!("KubeadmControlPlane {}/{kcp}", ns.name()),
            "v1.32.11-2",
        ],
    );

    // The control plane to 1.33 with the 1.32 image: refused, naming the row's image.
    refused(
        try_patch(&kcps, &kcp, json!({"spec": {"version": "v1.33.7-4"}})).await,
        &[
            &format!("uses image {}", image("4.1.6")),
            &image("4.2.5"),
            "Kubernetes 1.33",
        ],
    );
    // With the template carrying the 1.33 row's image: admitted.
    let with_template = json!({"spec": {"version": "v1.33.7-4", "machineTemplate": {
        "infrastructureRef": {"apiVersion": INFRA_V1BETA1, "kind": "DCSMachineTemplate",
                              "name": next_name}}}});
    assert_eq!(try_patch(&kcps, &kcp, with_template.clone()).await, Ok(()));
    // A pool at its control plane's minor, on the template of its own row: admitted.
    assert_eq!(
        try_patch(&mds, &md, json!({"metadata": {"labels": {"x": "y"}}})).await,
        Ok(())
    );

    // The controller gone: what matchConditions filter out never reaches the webhook and is
    // admitted; a version change fails closed (failurePolicy Fail).
    controller.kill();
    let label = json!({"metadata": {"labels": {"touched": "yes"}}});
    assert_eq!(try_patch(&kcps, &kcp, label.clone()).await, Ok(()));
    assert_eq!(try_patch(&mds, &md, label).await, Ok(()));
    let down = try_patch(&kcps, &kcp, with_template)
        .await
        .expect_err("a version change is refused while the webhook is unreachable");
    assert!(down.contains("failed calling webhook"), "{down}");

    let _ = configs.delete(&name, &DeleteParams::default()).await;
    ns.finish(&client).await;
}

#[test]
fn the_chart_serves_the_webhook_with_its_own_or_a_given_certificate_and_can_leave_it_out() {
    let kinds = |set: &[&str]| -> Vec<String> {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        chart::render("r", "uc-system", &set)
            .iter()
            .filter_map(|d| d["kind"].as_str().map(str::to_string))
            .collect()
    };
    let docs = chart::render("r", "uc-system", &[]);
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .unwrap();
    // The generated certificate's CA is the configuration's caBundle.
    assert_eq!(
        secret["data"]["ca.crt"],
        config["webhooks"][0]["clientConfig"]["caBundle"]
    );
    assert_eq!(config["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(
        config["webhooks"][0]["clientConfig"]["service"]["name"],
        "r-webhook"
    );
    let args = docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"]
        ["containers"][0]["args"]
        .to_string();
    assert!(
        args.contains("--webhook-bind-address=0.0.0.0:9443"),
        "{args}"
    );

    // A given Secret: no generated one, and the CA is required.
    let given = kinds(&[
        "webhook.certificate.secretName=mine",
        "webhook.certificate.caBundle=Q0E=",
    ]);
    assert!(!given.contains(&"Secret".to_string()), "{given:?}");
    assert!(given.contains(&"ValidatingWebhookConfiguration".to_string()));
    let out = std::process::Command::new(harness::env().helm())
        .args([
            "template",
            "r",
            "charts/upgrade-controller",
            "--set",
            "webhook.certificate.secretName=mine",
        ])
        .current_dir(project::repo_root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("webhook.certificate.caBundle"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let off = kinds(&["webhook.enabled=false"]);
    for k in ["Secret", "ValidatingWebhookConfiguration"] {
        assert!(!off.contains(&k.to_string()), "{k} rendered: {off:?}");
    }
    // Only the metrics Service is left.
    let services: Vec<Value> = chart::render("r", "uc-system", &["webhook.enabled=false".into()])
        .into_iter()
        .filter(|d| d["kind"] == "Service")
        .map(|d| d["metadata"]["name"].clone())
        .collect();
    assert_eq!(services, [json!("r-metrics")]);
}
