//! Test harness: one environment per test run, shared by every test (and reused across test
//! binaries while it stays healthy). A missing prerequisite fails the test; nothing is skipped.

use std::path::PathBuf;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

use crate::testenv::{self, Running};

static ENV: OnceLock<Result<Running, String>> = OnceLock::new();

/// The admin kubeconfig of a management cluster other than the test control plane (the kind
/// suite's, [`crate::kind`]); unset, the tests use the test control plane.
static MANAGEMENT: OnceLock<PathBuf> = OnceLock::new();

/// The test control plane's build directory (binaries, manifests), found without starting it.
static BUILD_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Points every helper of this test binary at the management cluster of `kubeconfig` instead
/// of the test control plane. Once per binary, before the first [`client`].
pub fn use_management(kubeconfig: PathBuf) {
    let set = MANAGEMENT.get_or_init(|| kubeconfig.clone());
    assert_eq!(
        set, &kubeconfig,
        "this test binary already uses another management cluster"
    );
}

/// The admin kubeconfig of the management cluster the tests run against.
pub fn kubeconfig() -> PathBuf {
    MANAGEMENT
        .get()
        .cloned()
        .unwrap_or_else(|| env().kubeconfig.clone())
}

/// Where the processes a test starts (controller, stand-in CVO) write their logs: `logs/`
/// beside [`kubeconfig`].
pub fn log_dir() -> PathBuf {
    let dir = kubeconfig()
        .parent()
        .expect("a kubeconfig's directory")
        .join("logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// The test control plane's build directory (`tests/e2e/testenv/build.sh`, cached), whether or
/// not the control plane runs: its helm and kubectl, CAPI's binaries and manifests.
pub fn build_dir() -> PathBuf {
    if let Some(Ok(env)) = ENV.get() {
        return env.build_dir.clone();
    }
    BUILD_DIR
        .get_or_init(|| {
            testenv::Config::from_env()
                .and_then(|cfg| testenv::build(&cfg))
                .unwrap_or_else(|e| panic!("tests/e2e/testenv/build.sh: {e:#}"))
        })
        .clone()
}

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

/// A client for the management cluster's admin kubeconfig (the test control plane's unless
/// [`use_management`] said otherwise), bound to the calling test's runtime.
pub async fn client() -> kube::Client {
    let kubeconfig = kubeconfig();
    testenv::client_from(&kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("building a client from {}: {e:#}", kubeconfig.display()))
}

/// A test's own namespace, and what else the test made outside it, deleted when the test ends:
/// by [`TestNamespace::finish`] at the end of a test that passed, or on drop when it failed
/// (panicked), so a failing test leaves nothing behind for the next. Derefs to the name.
pub struct TestNamespace {
    name: String,
    /// Further namespaces of the test (its platform namespace), deleted with it.
    others: Vec<String>,
    /// Cluster-scoped OSSupportMatrices the test created.
    matrices: Vec<String>,
    finished: bool,
}

/// Creates a namespace unique to this test (`<prefix>-<random>`).
pub async fn namespace(client: &kube::Client, prefix: &str) -> TestNamespace {
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
    TestNamespace {
        name,
        others: Vec::new(),
        matrices: Vec::new(),
        finished: false,
    }
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes namespace `other` (the test's platform namespace) with this one.
    pub fn delete_with(&mut self, other: &str) {
        self.others.push(other.to_string());
    }

    /// Deletes the cluster-scoped OSSupportMatrix `name` with this namespace.
    pub fn delete_matrix_with(&mut self, name: &str) {
        self.matrices.push(name.to_string());
    }

    /// Keeps the namespace (the demo leaves its cluster for the user to inspect).
    pub fn keep(mut self) -> String {
        self.finished = true;
        std::mem::take(&mut self.name)
    }

    /// The end of a test that passed: everything deleted now (without waiting for the
    /// namespace controller to empty the namespaces).
    pub async fn finish(mut self, client: &kube::Client) {
        self.finished = true;
        teardown(client, &self.name, &self.others, &self.matrices).await;
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// As its name (in `json!` fixtures).
impl serde::Serialize for TestNamespace {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl Drop for TestNamespace {
    /// A test that did not reach [`TestNamespace::finish`]: the same teardown, on a runtime of
    /// its own since the test's may be unwinding. (A test's controller is a [`Controller`]
    /// field or local of the test, killed by its own drop.)
    ///
    /// [`Controller`]: crate::project::Controller
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (name, others, matrices) = (
            self.name.clone(),
            std::mem::take(&mut self.others),
            std::mem::take(&mut self.matrices),
        );
        let kubeconfig = kubeconfig();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = testenv::client_from(&kubeconfig).await.ok()?;
                teardown(&client, &name, &others, &matrices).await;
                Some(())
            })
        })
        .join();
    }
}

/// Releases the controller's finalizer from every UpgradeRequest of `name` (the test's
/// controller may be gone), deletes its Clusters ([`delete_clusters`]), then the matrices and
/// the namespaces. The namespace and garbage-collector controllers remove the rest. Best
/// effort: what is already gone is fine.
pub(crate) async fn teardown(
    client: &kube::Client,
    name: &str,
    others: &[String],
    matrices: &[String],
) {
    delete_clusters(client, name, CLUSTER_DELETION).await;
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
    let matrix_api = crate::site::matrix_api(client);
    for m in matrices {
        let _ = matrix_api.delete(m, &Default::default()).await;
    }
    let namespaces = Api::<Namespace>::all(client.clone());
    for ns in std::iter::once(name).chain(others.iter().map(String::as_str)) {
        let _ = namespaces.delete(ns, &Default::default()).await;
    }
}

/// How long [`teardown`] waits for a docker-backed Cluster to go before it deletes the
/// namespace anyway (CAPD removes a two-node cluster in well under a minute).
const CLUSTER_DELETION: std::time::Duration = std::time::Duration::from_secs(300);

/// Deletes every Cluster of namespace `ns` and waits, up to `timeout`, until those on CAPD's
/// docker backend are gone.
///
/// Cluster API tears a cluster down through its Cluster object: deleting it, the Cluster
/// controller deletes the workers, then the control plane, and the infrastructure cluster
/// last (`cluster_controller.go`, `reconcileDelete`). A namespace deletion marks them all at once,
/// and on CAPD's docker backend that strands the control-plane node (reproduced here by
/// deleting a Running cluster's namespace): the DockerCluster's finalizer removes the load
/// balancer container while the control-plane DockerMachine is being deleted, whose load
/// balancer update then fails ("failed to update DockerCluster.loadbalancer configuration");
/// once the DockerCluster is gone, CAPD's DockerMachine controller stops at "DockerCluster is
/// not available yet" and never removes its finalizer. The Machine, the KubeadmControlPlane,
/// the Cluster and the namespace stay Terminating for good, after every container is gone.
/// In-memory clusters have no load balancer and are not waited for.
/// Best effort, as [`teardown`]: a cluster still there at `timeout` is left to the namespace
/// deletion, with a line on stderr.
pub async fn delete_clusters(client: &kube::Client, ns: &str, timeout: std::time::Duration) {
    use kube::api::{DeleteParams, ListParams};
    let clusters = crate::capi::api(client, ns, crate::capi::CLUSTER_V1BETA1, "Cluster");
    let Ok(list) = clusters.list(&ListParams::default()).await else {
        return;
    };
    let docker_backed = |c: &kube::api::DynamicObject| {
        c.data
            .pointer("/spec/infrastructureRef/kind")
            .and_then(|k| k.as_str())
            == Some("DockerCluster")
    };
    let mut waited = Vec::new();
    for c in &list.items {
        let name = c.metadata.name.clone().unwrap_or_default();
        let _ = clusters.delete(&name, &DeleteParams::default()).await;
        if docker_backed(c) {
            waited.push(name);
        }
    }
    let start = std::time::Instant::now();
    while !waited.is_empty() {
        let mut left = Vec::new();
        for name in waited {
            if !matches!(clusters.get_opt(&name).await, Ok(None)) {
                left.push(name);
            }
        }
        waited = left;
        if waited.is_empty() {
            return;
        }
        if start.elapsed() > timeout {
            eprintln!(
                "teardown: Clusters {waited:?} of namespace {ns} not gone within {timeout:?}; deleting the namespace anyway"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}
