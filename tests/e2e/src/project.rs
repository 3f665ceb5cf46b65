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
/// platform's CRDs (ClusterVersionShadow, ResourcePatch, AppRelease) from tests/e2e/manifests/platform, and
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
    testenv::apply(client, &matrix)
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
    without_test_cargo_env(&mut build);
    // The profile of the running executable (`make bench` runs a release build).
    let exe = std::env::current_exe().expect("test executable path");
    if exe
        .ancestors()
        .nth(1)
        .is_some_and(|d| d.ends_with("release") || d.ends_with("release/deps"))
    {
        build.arg("--release");
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {name}: {e}"));
    assert!(status.success(), "building {name} failed");
    // Binaries live in <target>/<profile>, integration tests one level down in deps.
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

/// Runs `cmd` to its end; fails the test with its output unless it succeeded.
pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Removes from `cmd`'s environment the variables cargo sets for a running test. Some build
/// scripts (ring's) rerun when CARGO_MANIFEST_DIR changes, so passing them on to a cargo build
/// (directly or through `make`) would rebuild half the dependency tree there and again at the
/// next plain `cargo build`.
pub fn without_test_cargo_env(cmd: &mut Command) -> &mut Command {
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
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// A running controller process limited to one namespace; killed on drop.
pub struct Controller {
    child: Child,
    pub log: PathBuf,
    /// Where this process's log starts in `log` (the file collects every run of a label).
    log_from: u64,
    /// Its `/metrics` URL, once read from its log.
    metrics_url: std::sync::OnceLock<String>,
}

/// Whether the controller binary (`UC_CONTROLLER_BIN` or this workspace's) has `run` flag
/// `flag` (an earlier build run by the same harness may not).
pub fn controller_supports(flag: &str) -> bool {
    let bin = std::env::var_os("UC_CONTROLLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| binary("upgrade-controller", "upgrade-controller"));
    Command::new(bin)
        .args(["run", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// A plain HTTP/1.0 GET of a loopback URL, returning the body (None: no answer, or not 200).
pub async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_string())
}

/// The value of the sample of `metric` with exactly `labels` (`name="value"` pairs, in the
/// exposition's order) in a text exposition.
pub fn sample(exposition: &str, metric: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{metric} ")
    } else {
        format!("{metric}{{{labels}}} ")
    };
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
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
        Self::spawn(label, kubeconfig, args, None)
    }

    /// One replica of a controller of `namespace`: `POD_NAME=<pod>` (its Lease identity and
    /// User-Agent `upgrade-controller/<version> (<pod>)`), its own log
    /// `logs/controller-<namespace>-<pod>.log`.
    pub fn replica(namespace: &str, pod: &str, extra: &[String]) -> Self {
        let mut args: Vec<String> = vec!["run".into(), "--namespace".into(), namespace.into()];
        args.extend_from_slice(extra);
        Self::spawn(
            &format!("{namespace}-{pod}"),
            &harness::env().kubeconfig,
            &args,
            Some(pod),
        )
    }

    fn spawn(label: &str, kubeconfig: &Path, args: &[String], pod: Option<&str>) -> Self {
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
        let log_from = out.metadata().map_or(0, |m| m.len());
        let mut args = args.to_vec();
        // Metrics on a free loopback port (read back from the log), so parallel tests never
        // collide; an earlier build without the flag runs without them.
        if args.first().is_some_and(|a| a == "run") && controller_supports("--metrics-bind-address")
        {
            args.retain(|a| !a.starts_with("--metrics-bind-address"));
            args.push("--metrics-bind-address=127.0.0.1:0".into());
        }
        let mut cmd = Command::new(bin);
        if let Some(pod) = pod {
            cmd.env("POD_NAME", pod);
        }
        let child = cmd
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("starting the controller");
        Self {
            child,
            log,
            log_from,
            metrics_url: std::sync::OnceLock::new(),
        }
    }

    /// This process's `/metrics` URL, from the address it logged at start (waits up to 60 s).
    pub async fn metrics_url(&self) -> String {
        if let Some(url) = self.metrics_url.get() {
            return url.clone();
        }
        let addr = self.logged_address("serving /metrics").await;
        let url = format!("http://{addr}/metrics");
        let _ = self.metrics_url.set(url.clone());
        url
    }

    /// The loopback address (`127.0.0.1:port`) this process logged on the line with `marker`
    /// (waits up to 60 s).
    pub async fn logged_address(&self, marker: &str) -> String {
        let start = Instant::now();
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let mine = String::from_utf8_lossy(&text[(self.log_from as usize).min(text.len())..])
                .to_string();
            if let Some(addr) = mine.lines().filter(|l| l.contains(marker)).find_map(|l| {
                let at = l.find("127.0.0.1:")?;
                let port: String = l[at + 10..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                (!port.is_empty()).then(|| format!("127.0.0.1:{port}"))
            }) {
                return addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the controller never logged {marker:?} with an address ({})",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The controller's current `/metrics` exposition.
    pub async fn metrics(&self) -> String {
        let url = self.metrics_url().await;
        http_get(&url)
            .await
            .unwrap_or_else(|| panic!("GET {url} failed"))
    }

    /// Returns once this process has finished a reconcile of every UpgradeRequest in `ns`
    /// that began after the call: each is touched (an annotation, so a watch event) and its
    /// reconcile count watched in `/metrics`. What a reconcile would have written is then on
    /// the API server, so "nothing was written" can be checked without sleeping.
    pub async fn settle(&self, client: &kube::Client, ns: &str) {
        let api = Api::<UpgradeRequest>::namespaced(client.clone(), ns);
        let requests = api
            .list(&Default::default())
            .await
            .expect("listing requests");
        for ur in requests {
            let name = ur.metadata.name.clone().unwrap_or_default();
            let before = self.reconciles(ns, &name).await;
            let stamp = format!("{:?}", Instant::now());
            api.patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    json!({"metadata": {"annotations": {"e2e/settle": stamp}}}),
                ),
            )
            .await
            .expect("touching the request");
            let start = Instant::now();
            while self.reconciles(ns, &name).await <= before {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "the controller did not reconcile {ns}/{name} within 60 s of a change"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// How many reconciles of request `ns/name` this process has finished.
    pub async fn reconciles(&self, ns: &str, name: &str) -> f64 {
        sample(
            &self.metrics().await,
            "upgrade_controller_reconciles_total",
            &format!("namespace=\"{ns}\",name=\"{name}\""),
        )
        .unwrap_or(0.0)
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
