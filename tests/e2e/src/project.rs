//! This project on the test control plane: its CRDs, the sample OS Support Matrix, and the
//! controller binary run as a real process (so tests can kill it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::harness;
use crate::testenv::{self, install_crds, read_yaml_docs};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Installs (idempotently) the project's CRDs from config/crd and the sample matrix `default`.
pub async fn install(client: &kube::Client) {
    install_crds(client, &repo_root().join("config/crd"), false)
        .await
        .expect("installing the project's CRDs");
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

/// Builds the controller binary (a no-op when it is current) and returns its path.
fn controller_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "upgrade-controller",
            "--bin",
            "upgrade-controller",
        ])
        .current_dir(repo_root())
        .status()
        .expect("running cargo build for the controller");
    assert!(status.success(), "building upgrade-controller failed");
    // Binaries live in <target>/debug, integration tests one level down in debug/deps.
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("executable directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target profile directory");
    }
    let bin = dir.join("upgrade-controller");
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
        let env = harness::env();
        let bin = controller_binary();
        let log = env
            .kubeconfig
            .parent()
            .expect("state dir")
            .join(format!("logs/controller-{namespace}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("controller log file");
        let child = Command::new(bin)
            .args(["run", "--namespace", namespace])
            .env("KUBECONFIG", &env.kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("starting the controller");
        Self { child, log }
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
