//! The shipped version guard (`config/admission/version-guard.yaml`, a
//! ValidatingAdmissionPolicy and its binding) on the test control plane, its binding renamed and
//! limited to one namespace so other suites on the same control plane are not guarded.

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};

use crate::capi;
use crate::testenv::{apply, read_yaml_docs};

/// The shipped policy, and the shipped binding renamed `binding` and limited to namespace `ns`.
pub fn shipped(ns: &str, binding: &str) -> Vec<Value> {
    let mut docs =
        read_yaml_docs(&crate::project::repo_root().join("config/admission/version-guard.yaml"))
            .unwrap();
    assert_eq!(docs.len(), 2, "a policy and its binding");
    assert_eq!(docs[1]["kind"], "ValidatingAdmissionPolicyBinding");
    docs[1]["metadata"]["name"] = json!(binding);
    docs[1]["spec"]["matchResources"] = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
    });
    docs
}

/// The guard in effect for one namespace; [`VersionGuard::remove`] deletes its binding.
pub struct VersionGuard {
    pub policy: String,
    pub binding: String,
    /// How long the API server took to enforce the new binding.
    pub took: Duration,
    /// The refusal that showed it in effect.
    pub refusal: String,
}

impl VersionGuard {
    /// Applies the guard for `ns` and waits (60 s at most) until it refuses a dry-run lowering
    /// of KubeadmControlPlane `kcp`'s minor to `lower` (`spec.version`): the API server loads
    /// a new binding asynchronously.
    pub async fn apply(client: &kube::Client, ns: &str, kcp: &str, lower: &str) -> VersionGuard {
        let docs = shipped(ns, "");
        let policy = docs[0]["metadata"]["name"].as_str().unwrap().to_string();
        let binding = format!("{policy}-{ns}");
        apply(client, &shipped(ns, &binding)).await.unwrap();
        let kcps = capi::kcp_api(client, ns);
        let by_guard = format!("ValidatingAdmissionPolicy '{policy}'");
        let start = Instant::now();
        let refusal = loop {
            let r = capi::dry_run_patch(&kcps, kcp, json!({"spec": {"version": lower}})).await;
            match r {
                Err(message) if message.contains(&by_guard) => break message,
                _ => assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "the version guard took no effect within 60 s: {r:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        VersionGuard {
            policy,
            binding,
            took: start.elapsed(),
            refusal,
        }
    }

    /// Deletes the binding (the policy is shared with other suites).
    pub async fn remove(self, client: &kube::Client) {
        let bindings: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &capi::resource(
                "admissionregistration.k8s.io/v1",
                "ValidatingAdmissionPolicyBinding",
            ),
        );
        bindings
            .delete(&self.binding, &DeleteParams::default())
            .await
            .unwrap();
    }
}
