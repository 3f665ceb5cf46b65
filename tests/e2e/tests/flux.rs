//! Flux's kustomize-controller on the test control plane (a smoke test of [`e2e::flux`]): it
//! applies what a published artifact declares, takes back a field another manager changed
//! (even by forced server-side apply) on the next reconcile, leaves an
//! `ssa: IfNotPresent` object alone, applies and prunes by the next revision, and reports an
//! apply the API server refuses as `Ready=False` with the server's message. These are the
//! behaviours the controller's GitOps handling (DOMAIN.md §8) is built on.

use std::time::{Duration, Instant};

use e2e::flux::{
    FIELD_MANAGER, Kustomization, NAME_LABEL, NAMESPACE_LABEL, RECONCILE_TIMEOUT, SSA_ANNOTATION,
    Source,
};
use e2e::harness;
use e2e::testenv::apply;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Someone else writing a field Flux declares, as our controller would.
const OUTSIDE: &str = "e2e-outside";
/// ConfigMaps carrying this label are refused by the test's admission policy.
const REFUSE_LABEL: &str = "e2e.flux/refuse";

/// ConfigMap `name` as YAML, with `metadata` (labels, annotations) and `data`.
fn config_map(ns: &str, name: &str, metadata: Value, data: Value) -> String {
    let mut cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    });
    json_patch::merge(&mut cm["metadata"], &metadata);
    serde_yaml_ng::to_string(&cm).unwrap()
}

/// The tree a revision publishes: under app/, ConfigMaps `settings` (data.size `size`),
/// `seeded` (applied only if absent, data.color `seeded`) and `third`; under refused/, one
/// ConfigMap the test's admission policy refuses.
fn tree(ns: &str, size: &str, seeded: &str, third: &str) -> Vec<(String, String)> {
    let blue = json!({"color": "blue"});
    let if_not_present = json!({"annotations": {SSA_ANNOTATION: "IfNotPresent"}});
    vec![
        (
            "app/settings.yaml".into(),
            config_map(
                ns,
                "settings",
                json!({}),
                json!({"color": "blue", "size": size}),
            ),
        ),
        (
            "app/seeded.yaml".into(),
            config_map(ns, "seeded", if_not_present, json!({"color": seeded})),
        ),
        (
            format!("app/{third}.yaml"),
            config_map(ns, third, json!({}), blue.clone()),
        ),
        (
            "refused/refused.yaml".into(),
            config_map(
                ns,
                "refused",
                json!({"labels": {REFUSE_LABEL: "yes"}}),
                blue,
            ),
        ),
    ]
}

/// The managers owning `data.<key>` of `cm`.
fn owners_of_data(cm: &ConfigMap, key: &str) -> Vec<String> {
    let field = format!("f:{key}");
    cm.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:data"].get(&field).is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect()
}

fn data(cm: &ConfigMap, key: &str) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
        .unwrap_or_default()
}

/// A ValidatingAdmissionPolicy and binding refusing, in namespace `ns` only, every ConfigMap
/// labelled [`REFUSE_LABEL`]; applied, and in effect when this returns.
async fn refuse_labelled_config_maps(client: &kube::Client, ns: &str) -> String {
    let name = format!("e2e-flux-refuse-{ns}");
    apply(
        client,
        &[
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [{
                        "apiGroups": [""], "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"],
                    }]},
                    "validations": [{
                        "expression": format!(
                            "!has(object.metadata.labels) || !('{REFUSE_LABEL}' in object.metadata.labels)"
                        ),
                        "message": "ConfigMaps labelled e2e.flux/refuse are not admitted here",
                    }],
                },
            }),
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {"namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": ns},
                    }},
                },
            }),
        ],
    )
    .await
    .unwrap();
    // The API server loads a new policy asynchronously: wait until it refuses a dry run.
    let probe: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "probe", "labels": {REFUSE_LABEL: "yes"}},
    }))
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    while cms
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &probe,
        )
        .await
        .is_ok()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the admission policy took no effect within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    name
}

#[tokio::test(flavor = "multi_thread")]
async fn flux_applies_git_takes_back_outside_changes_spares_if_not_present_and_reports_refusals() {
    let client = harness::client().await;
    let ns = harness::namespace(&client, "flux").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let get = |name: &'static str| {
        let cms = cms.clone();
        async move { cms.get(name).await.unwrap() }
    };

    // Revision 1: three ConfigMaps under app/, one Flux may only create.
    let mut git = Source::new(&client, &ns, "git");
    let r1 = git
        .publish(&tree(&ns, "small", "blue", "retired"))
        .await
        .unwrap();
    let app = Kustomization::create(&client, &ns, "app", &git, "./app", json!({}))
        .await
        .unwrap();
    let out = app.reconcile(&r1.revision).await.unwrap();
    assert_eq!(
        (out.ready.status.as_str(), out.ready.reason.as_str()),
        ("True", "ReconciliationSucceeded"),
        "{:?}",
        out.ready
    );
    assert_eq!(out.last_applied_revision, r1.revision);
    assert_eq!(out.inventory.len(), 3, "{:?}", out.inventory);
    let settings = get("settings").await;
    assert_eq!(data(&settings, "color"), "blue");
    assert_eq!(data(&settings, "size"), "small");
    let labels = settings.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(NAME_LABEL).map(String::as_str), Some("app"));
    assert_eq!(labels.get(NAMESPACE_LABEL).map(String::as_str), Some(&*ns));
    assert_eq!(owners_of_data(&settings, "color"), [FIELD_MANAGER]);
    assert_eq!(data(&get("seeded").await, "color"), "blue");
    get("retired").await;

    // Someone else takes data.color of both by forced server-side apply.
    for name in ["settings", "seeded"] {
        let patch = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"color": "red"}});
        cms.patch(
            name,
            &PatchParams::apply(OUTSIDE).force(),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();
    }
    assert_eq!(owners_of_data(&get("settings").await, "color"), [OUTSIDE]);

    // The next reconcile takes the field declared in Git back; IfNotPresent keeps it out.
    let out = app.reconcile(&r1.revision).await.unwrap();
    assert_eq!(out.ready.status, "True", "{:?}", out.ready);
    let settings = get("settings").await;
    assert_eq!(
        data(&settings, "color"),
        "blue",
        "Flux reverts the outside change"
    );
    assert_eq!(owners_of_data(&settings, "color"), [FIELD_MANAGER]);
    let seeded = get("seeded").await;
    assert_eq!(
        data(&seeded, "color"),
        "red",
        "ssa: IfNotPresent is left alone"
    );
    assert_eq!(owners_of_data(&seeded, "color"), [OUTSIDE]);

    // Revision 2, applied on publication alone: a changed value, a new object, one removed
    // (pruned), and a change to the IfNotPresent object that Flux does not apply either.
    let r2 = git
        .publish(&tree(&ns, "large", "green", "added"))
        .await
        .unwrap();
    assert_ne!(r1.revision, r2.revision);
    let out = app
        .wait_revision(&r2.revision, RECONCILE_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.ready.status, "True", "{:?}", out.ready);
    assert_eq!(out.last_applied_revision, r2.revision);
    assert_eq!(data(&get("settings").await, "size"), "large");
    assert_eq!(data(&get("seeded").await, "color"), "red");
    assert_eq!(data(&get("added").await, "color"), "blue");
    assert!(
        cms.get_opt("retired").await.unwrap().is_none(),
        "pruned once no revision declares it"
    );
    assert!(
        out.inventory.iter().any(|id| id.contains("_added_")),
        "{:?}",
        out.inventory
    );
    assert!(
        !out.inventory.iter().any(|id| id.contains("_retired_")),
        "{:?}",
        out.inventory
    );

    // An apply the API server refuses: Ready=False with the server's own message.
    let policy = refuse_labelled_config_maps(&client, &ns).await;
    let refused = Kustomization::create(&client, &ns, "refused", &git, "./refused", json!({}))
        .await
        .unwrap();
    let out = refused.reconcile(&r2.revision).await.unwrap();
    eprintln!("refused: {:?}", out.ready);
    assert_eq!(
        (out.ready.status.as_str(), out.ready.reason.as_str()),
        ("False", "ReconciliationFailed"),
        "{:?}",
        out.ready
    );
    for words in [
        format!("ConfigMap/{ns}/refused"),
        format!("ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request"),
        "ConfigMaps labelled e2e.flux/refuse are not admitted here".to_string(),
    ] {
        assert!(
            out.ready.message.contains(&words),
            "{words:?} missing from: {}",
            out.ready.message
        );
    }
    assert_eq!(
        out.last_applied_revision, "",
        "nothing of it was ever applied"
    );
    assert!(cms.get_opt("refused").await.unwrap().is_none());
    // The other Kustomization is not affected.
    let out = app.reconcile(&r2.revision).await.unwrap();
    assert_eq!(out.ready.status, "True", "{:?}", out.ready);

    for kind in [
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
    ] {
        let api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &e2e::capi::resource("admissionregistration.k8s.io/v1", kind),
        );
        api.delete(&policy, &DeleteParams::default()).await.unwrap();
    }
    ns.finish(&client).await;
}
