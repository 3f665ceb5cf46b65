//! Test harness: one environment per test run, shared by every test (and reused across test
//! binaries while it stays healthy). A missing prerequisite fails the test; nothing is skipped.

use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

use crate::testenv::{self, Running};

static ENV: OnceLock<Result<Running, String>> = OnceLock::new();

/// The running environment, started on first use. Panics (failing the test) when it cannot be
/// brought up, with the tail of every process log in the message.
pub fn env() -> &'static Running {
    let result = ENV.get_or_init(|| {
        // `up` drives its own runtime, so run it off whatever runtime the test is on.
        std::thread::spawn(|| {
            testenv::Config::from_env()
                .and_then(|cfg| testenv::up(&cfg))
                .map_err(|e| format!("{e:#}"))
        })
        .join()
        .unwrap_or_else(|_| Err("testenv::up panicked".into()))
    });
    match result {
        Ok(env) => env,
        Err(e) => panic!("the test control plane is not available:\n{e}"),
    }
}

/// A client for the environment's admin kubeconfig, bound to the calling test's runtime.
pub async fn client() -> kube::Client {
    let env = env();
    testenv::client_from(&env.kubeconfig)
        .await
        .expect("building a client from the testenv kubeconfig")
}

/// Creates a namespace unique to this test (`<prefix>-<random>`) and returns its name.
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    let suffix = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos()
            % 0xff_ffff
    );
    let name = format!("{prefix}-{suffix}");
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
        .expect("a namespace object");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the test namespace");
    name
}

/// Deletes a test namespace (without waiting); the namespace and garbage-collector controllers
/// remove its contents, and CAPI's own finalizers tear down clusters in it. The controller's
/// finalizer is removed from every UpgradeRequest first: the test's controller may be gone.
pub async fn delete_namespace(client: &kube::Client, name: &str) {
    let requests: Api<upgrade_controller::api::UpgradeRequest> =
        Api::namespaced(client.clone(), name);
    if let Ok(list) = requests.list(&Default::default()).await {
        for ur in list {
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            let _ = requests
                .patch(
                    &ur.metadata.name.unwrap_or_default(),
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await;
        }
    }
    Api::<Namespace>::all(client.clone())
        .delete(name, &Default::default())
        .await
        .expect("deleting the test namespace");
}
