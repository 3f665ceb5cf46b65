//! This project on the test control plane: its CRDs, the sample OS Support Matrix, and the
//! controller binary run as a real process (so tests can kill it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use upgrade_controller::api::UpgradeRequest;

use crate::harness;
use crate::testenv::{self, install_crds, read_yaml_docs};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Installs (idempotently) the project's CRDs from config/crd, the test copies of the
/// platform's CRDs (ClusterVersionShadow, ResourcePatch) from tests/e2e/manifests/platform, and
/// the sample matrix `default`.
pub async fn install(client: &kube::Client) {
    install_crds(client, &repo_root().join("config/crd"), false)
        .await
        .expect("installing the project's CRDs");
    install_crds(
        client,
        &repo_root().join("tests/e2e/manifests/platform"),
        false,
    )
    .await
    .expect("installing the test copies of the platform's CRDs");
    let matrix = read_yaml_docs(&repo_root().join("config/samples/os-support-matrix.yaml"))
        .expect("reading the sample matrix");
    testenv::apply_cluster_scoped(client, &matrix)
        .await
        .expect("applying the sample matrix");
}

/// The sample matrix rows as JSON (to derive variants in tests).
pub fn sample_matrix() -> serde_json::Value {
    read_yaml_docs(&repo_root().join("config/samples/os-support-matrix.yaml"))
        .expect("reading the sample matrix")
        .remove(0)
}

/// Builds binary `name` of workspace package `package` (a no-op when it is current) and returns
/// its path. Tests run it as a real process: the controller, and test doubles of external
/// systems such as the stand-in CVO.
pub fn binary(package: &str, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", package, "--bin", name])
        .current_dir(repo_root());
    // Cargo runs tests with the package's own variables set. Some build scripts (ring's) rerun
    // when CARGO_MANIFEST_DIR changes, so passing them on would rebuild half the dependency
    // tree here and again at the next plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&key.as_ref())
        {
            build.env_remove(key.as_ref());
        }
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {name}: {e}"));
    assert!(status.success(), "building {name} failed");
    // Binaries live in <target>/debug, integration tests one level down in debug/deps.
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("executable directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target profile directory");
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found after building it",
        bin.display()
    );
    bin
}

/// A running controller process limited to one namespace; killed on drop.
pub struct Controller {
    child: Child,
    pub log: PathBuf,
}

impl Controller {
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &[])
    }

    /// [`Controller::start`] with extra `run` flags (e.g. [`crate::platform::Platform::controller_args`]).
    pub fn start_with(namespace: &str, extra: &[String]) -> Self {
        let mut args: Vec<String> = vec!["run".into(), "--namespace".into(), namespace.into()];
        args.extend_from_slice(extra);
        Self::start_as(namespace, &harness::env().kubeconfig, &args)
    }

    /// The controller binary with exactly `args`, authenticated by `kubeconfig` (e.g. a
    /// ServiceAccount token, to prove its RBAC); logs to `logs/controller-<label>.log`.
    /// `UC_CONTROLLER_BIN` runs another build of the controller instead of this workspace's
    /// (to measure or test an earlier release with the same harness).
    pub fn start_as(label: &str, kubeconfig: &Path, args: &[String]) -> Self {
        let env = harness::env();
        let bin = std::env::var_os("UC_CONTROLLER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| binary("upgrade-controller", "upgrade-controller"));
        let log = env
            .kubeconfig
            .parent()
            .expect("state dir")
            .join(format!("logs/controller-{label}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("controller log file");
        let child = Command::new(bin)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("starting the controller");
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not crashed or exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no graceful shutdown, as when a node dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates UpgradeRequest `name` in `ns` with `spec`.
pub async fn create_request(client: &kube::Client, ns: &str, name: &str, spec: Value) {
    let ur: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<UpgradeRequest>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &ur)
        .await
        .expect("creating the UpgradeRequest");
}

/// Polls request `name` until `done` holds, failing after `timeout` with its status.
pub async fn wait_request(
    client: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    done: impl Fn(&UpgradeRequest) -> bool,
) -> UpgradeRequest {
    let api = Api::<UpgradeRequest>::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        let ur = api.get(name).await.unwrap();
        if done(&ur) {
            return ur;
        }
        assert!(
            start.elapsed() < timeout,
            "UpgradeRequest {name} not there after {timeout:?}; status: {}",
            serde_json::to_string_pretty(&ur.status).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
