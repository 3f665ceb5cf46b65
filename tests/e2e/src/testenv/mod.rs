//! The test control plane: etcd, kube-apiserver, kube-controller-manager (garbage collector and
//! namespace controllers only) and the Cluster API managers (core, kubeadm bootstrap,
//! KubeadmControlPlane, and CAPD whose DevMachine `backend.inMemory` fakes machines, nodes, the
//! workload API server and etcd), all as local processes bound to 127.0.0.1.
//!
//! Binaries and the CAPI manifests come from `tests/e2e/testenv/build.sh` (cached outside the
//! repository). State lives in one directory (`UC_TESTENV_DIR`, default
//! `$TMPDIR/upgrade-controller-testenv`): PKI, etcd data, logs, the admin kubeconfig and
//! `env.json`, which lets a later run reuse a running environment.

mod manifests;
mod pki;
mod process;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};

pub use manifests::{apply_cluster_scoped, install_crds, read_yaml_docs};
use process::Spec;

/// The Cluster API managers, in start order, with the webhook manifest each serves.
const MANAGERS: [(&str, &str); 4] = [
    ("capi-manager", "capi"),
    ("capi-kubeadm-bootstrap-manager", "capi-kubeadm-bootstrap"),
    (
        "capi-kubeadm-control-plane-manager",
        "capi-kubeadm-control-plane",
    ),
    ("capd-manager", "capd"),
];

/// Where things live and which ports they use. Ports are `base + offset`; the default base
/// keeps clear of CAPD's in-memory workload API servers, which take ports 20000–24000.
#[derive(Debug, Clone)]
pub struct Config {
    /// Repository root (to find `tests/e2e/testenv/build.sh`).
    pub repo_root: PathBuf,
    pub state_dir: PathBuf,
    pub port_base: u16,
}

impl Config {
    /// Reads `UC_TESTENV_DIR` and `UC_TESTENV_PORT_BASE`, with defaults.
    pub fn from_env() -> Result<Self> {
        let repo_root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .context("locating the repository root")?;
        let state_dir = std::env::var_os("UC_TESTENV_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("upgrade-controller-testenv"));
        let port_base = match std::env::var("UC_TESTENV_PORT_BASE") {
            Ok(v) => v
                .parse()
                .with_context(|| format!("UC_TESTENV_PORT_BASE={v} is not a port number"))?,
            Err(_) => 36000,
        };
        if port_base > 65535 - 600 {
            bail!("UC_TESTENV_PORT_BASE={port_base} leaves no room for the 600 ports above it");
        }
        Ok(Self {
            repo_root,
            state_dir,
            port_base,
        })
    }

    fn port(&self, offset: u16) -> u16 {
        self.port_base + offset
    }
    pub fn apiserver_port(&self) -> u16 {
        self.port(443)
    }
    fn etcd_client_port(&self) -> u16 {
        self.port(379)
    }
    fn etcd_peer_port(&self) -> u16 {
        self.port(380)
    }
    fn controller_manager_port(&self) -> u16 {
        self.port(257)
    }
    /// Webhook, health and diagnostics (metrics) ports of the i-th CAPI manager.
    fn manager_ports(&self, i: u16) -> (u16, u16, u16) {
        (self.port(501 + i), self.port(511 + i), self.port(521 + i))
    }
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    fn state_file(&self) -> PathBuf {
        self.state_dir.join("env.json")
    }
    fn lock_file(&self) -> PathBuf {
        self.state_dir.with_extension("lock")
    }
}

/// A running environment, as recorded in `env.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Running {
    /// The build directory (binaries and manifests) it was started from.
    pub build_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    /// Process name → pid (each the leader of its own process group).
    pub pids: BTreeMap<String, u32>,
}

impl Running {
    pub fn kubectl(&self) -> PathBuf {
        self.build_dir.join("bin/kubectl")
    }

    /// Helm, built with the control plane (HELM_VERSION), to render the chart.
    pub fn helm(&self) -> PathBuf {
        self.build_dir.join("bin/helm")
    }
}

/// Runs `build.sh` (a no-op when its cache is warm) and returns the build directory.
pub fn build(cfg: &Config) -> Result<PathBuf> {
    let script = cfg.repo_root.join("tests/e2e/testenv/build.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let dir = String::from_utf8(out.stdout)?.trim().to_string();
    if dir.is_empty() {
        bail!("{} printed no build directory", script.display());
    }
    Ok(PathBuf::from(dir))
}

/// Brings the environment up, or returns the running one when it is healthy and was started
/// from the current build. Safe to call from several processes at once (file lock).
pub fn up(cfg: &Config) -> Result<Running> {
    let build_dir = build(cfg)?;
    if let Some(parent) = cfg.state_dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let lock = File::create(cfg.lock_file()).context("creating the testenv lock file")?;
    lock.lock().context("locking the testenv")?;
    if let Some(running) = current(cfg)? {
        if running.build_dir == build_dir && healthy(cfg, &running) {
            return Ok(running);
        }
        eprintln!("testenv: replacing a stale or unhealthy environment");
    }
    stop(cfg)?;
    start(cfg, &build_dir).map_err(|e| {
        let report = log_report(cfg);
        anyhow!("{e:#}\n\n{report}")
    })
}

/// Stops the environment (if any) and deletes its state, keeping the logs.
pub fn down(cfg: &Config) -> Result<bool> {
    if let Some(parent) = cfg.state_dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let lock = File::create(cfg.lock_file()).context("creating the testenv lock file")?;
    lock.lock().context("locking the testenv")?;
    stop(cfg)
}

/// The recorded environment, if `env.json` exists.
pub fn current(cfg: &Config) -> Result<Option<Running>> {
    match std::fs::read(cfg.state_file()) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).context("reading env.json")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading env.json"),
    }
}

/// Every recorded process is alive and the API server answers.
pub fn healthy(cfg: &Config, running: &Running) -> bool {
    running.pids.values().all(|&pid| process::alive(pid))
        && TcpStream::connect_timeout(&loopback(cfg.apiserver_port()), Duration::from_secs(1))
            .is_ok()
}

fn stop(cfg: &Config) -> Result<bool> {
    let Some(running) = current(cfg)? else {
        return Ok(false);
    };
    // Managers first so they do not log a storm of errors while the API server goes away.
    let mut order: Vec<_> = running.pids.iter().collect();
    order.sort_by_key(|(name, _)| match name.as_str() {
        "etcd" => 2,
        "kube-apiserver" => 1,
        _ => 0,
    });
    for (_, &pid) in order {
        process::stop_group(pid, Duration::from_secs(10));
    }
    std::fs::remove_file(cfg.state_file())?;
    for dir in ["etcd", "pki"] {
        let path = cfg.state_dir.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(true)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn log_report(cfg: &Config) -> String {
    let mut out = String::from("--- testenv process logs (last 40 lines each) ---\n");
    let Ok(entries) = std::fs::read_dir(cfg.log_dir()) else {
        return out + "(no logs)\n";
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        out.push_str(&format!(
            "=== {}\n{}\n",
            path.display(),
            process::tail(&path, 40)
        ));
    }
    out
}

fn start(cfg: &Config, build_dir: &Path) -> Result<Running> {
    let bin = |name: &str| build_dir.join("bin").join(name);
    for dir in ["etcd", "pki", "logs"] {
        let path = cfg.state_dir.join(dir);
        if dir != "logs" && path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
    }
    // Fresh logs for a fresh environment.
    for entry in std::fs::read_dir(cfg.log_dir())? {
        std::fs::remove_file(entry?.path())?;
    }
    for port in [
        cfg.etcd_client_port(),
        cfg.etcd_peer_port(),
        cfg.apiserver_port(),
    ] {
        if TcpStream::connect_timeout(&loopback(port), Duration::from_millis(300)).is_ok() {
            bail!(
                "port {port} on 127.0.0.1 is already in use; stop whatever holds it or set UC_TESTENV_PORT_BASE"
            );
        }
    }

    let pki = pki::generate(&cfg.state_dir.join("pki"))?;
    let server = format!("https://127.0.0.1:{}", cfg.apiserver_port());
    write_kubeconfig(&cfg.kubeconfig_path(), &server, &pki)?;
    let kubeconfig = cfg.kubeconfig_path().display().to_string();
    let mut running = Running {
        build_dir: build_dir.to_path_buf(),
        kubeconfig: cfg.kubeconfig_path(),
        server: server.clone(),
        pids: BTreeMap::new(),
    };
    let log_dir = cfg.log_dir();
    let launch = |spec: Spec, running: &mut Running| -> Result<u32> {
        let pid = process::spawn(&spec, &log_dir)?;
        running.pids.insert(spec.name.to_string(), pid);
        // Record every pid as soon as it exists, so `down` can clean up a half-started env.
        std::fs::write(cfg.state_file(), serde_json::to_vec_pretty(running)?)?;
        Ok(pid)
    };

    // etcd. --unsafe-no-fsync: test data, and fsync dominates etcd latency on shared disks.
    let etcd_url = format!("http://127.0.0.1:{}", cfg.etcd_client_port());
    let peer_url = format!("http://127.0.0.1:{}", cfg.etcd_peer_port());
    let pid = launch(
        Spec {
            name: "etcd",
            program: bin("etcd"),
            args: vec![
                "--name=testenv".into(),
                format!("--data-dir={}", cfg.state_dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testenv={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            env: vec![],
        },
        &mut running,
    )?;
    let health = loopback(cfg.etcd_client_port());
    process::wait_until("etcd", pid, Duration::from_secs(60), || {
        process::http_ok(health, "/health")
    })?;

    let p = |path: &Path| path.display().to_string();
    let pid = launch(
        Spec {
            name: "kube-apiserver",
            program: bin("kube-apiserver"),
            args: vec![
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={}", cfg.apiserver_port()),
                format!("--tls-cert-file={}", p(&pki.apiserver_cert)),
                format!("--tls-private-key-file={}", p(&pki.apiserver_key)),
                format!("--client-ca-file={}", p(&pki.ca_cert)),
                format!("--service-account-key-file={}", p(&pki.service_account_pub)),
                format!(
                    "--service-account-signing-key-file={}",
                    p(&pki.service_account_key)
                ),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                // The `kubernetes` Service cannot have a loopback endpoint; nothing here needs it.
                "--endpoint-reconciler-type=none".into(),
                format!("--cert-dir={}", cfg.state_dir.join("pki").display()),
                "--v=1".into(),
            ],
            env: vec![],
        },
        &mut running,
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let kubeconfig_path = cfg.kubeconfig_path();
    let client = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(client) = client_from(&kubeconfig_path).await {
                let req = http_get("/readyz");
                if let Ok(body) = client.request_text(req).await
                    && body.trim() == "ok"
                {
                    return Ok(client);
                }
            }
            if !process::alive(pid) {
                bail!("kube-apiserver exited before it became ready");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("kube-apiserver was not ready within 90s");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })?;

    launch(
        Spec {
            name: "kube-controller-manager",
            program: bin("kube-controller-manager"),
            args: vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", cfg.controller_manager_port()),
                // Only what Cluster API and the tests rely on: owner-reference cascading
                // deletion and namespace deletion.
                "--controllers=garbage-collector-controller,namespace-controller".into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=false".into(),
                "--v=1".into(),
            ],
            env: vec![],
        },
        &mut running,
    )?;

    let ca_pem = std::fs::read_to_string(&pki.ca_cert)?;
    let crd_dir = build_dir.join("manifests/crd");
    rt.block_on(async {
        manifests::install_crds(&client, &crd_dir, true).await?;
        for (i, (_, provider)) in MANAGERS.iter().enumerate() {
            let (webhook_port, _, _) = cfg.manager_ports(i as u16);
            let docs = read_yaml_docs(
                &build_dir
                    .join("manifests/webhook")
                    .join(format!("{provider}.yaml")),
            )?;
            let hooks = manifests::localize_webhooks(docs, provider, webhook_port, &ca_pem);
            manifests::apply_cluster_scoped(&client, &hooks).await?;
        }
        anyhow::Ok(())
    })?;

    let mut managers = Vec::new();
    for (i, (name, _)) in MANAGERS.iter().enumerate() {
        let (webhook_port, health_port, diagnostics_port) = cfg.manager_ports(i as u16);
        let mut args = vec![
            format!("--webhook-port={webhook_port}"),
            format!("--webhook-cert-dir={}", p(&pki.webhook_cert_dir)),
            format!("--health-addr=127.0.0.1:{health_port}"),
            format!("--diagnostics-address=127.0.0.1:{diagnostics_port}"),
            "--insecure-diagnostics".into(),
            "--leader-elect=false".into(),
        ];
        if *name == "capi-manager" {
            // ClusterClass-based clusters (CAPD's in-memory ClusterClass among them).
            args.push("--feature-gates=ClusterTopology=true".into());
        }
        let mut env = vec![("KUBECONFIG", kubeconfig.clone())];
        if *name == "capd-manager" {
            // CAPD's in-memory backend serves each fake workload cluster's API server and
            // etcd on POD_IP; outside a pod that must be set explicitly.
            env.push(("POD_IP", "127.0.0.1".into()));
        }
        let pid = launch(
            Spec {
                name,
                program: bin(name),
                args,
                env,
            },
            &mut running,
        )?;
        managers.push((*name, pid, loopback(health_port)));
    }
    for (name, pid, health) in managers {
        process::wait_until(name, pid, Duration::from_secs(120), || {
            process::http_ok(health, "/readyz")
        })?;
    }
    Ok(running)
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .expect("a GET request with a static path is valid")
}

/// A client for the admin kubeconfig at `path`.
pub async fn client_from(path: &Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

fn write_kubeconfig(path: &Path, server: &str, pki: &pki::Pki) -> Result<()> {
    let b64 = |p: &Path| -> Result<String> {
        Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(p)?))
    };
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": server,
            "certificate-authority-data": b64(&pki.ca_cert)?,
        }}],
        "users": [{"name": "testenv-admin", "user": {
            "client-certificate-data": b64(&pki.admin_cert)?,
            "client-key-data": b64(&pki.admin_key)?,
        }}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "testenv-admin"}}],
        "current-context": "testenv",
    });
    std::fs::write(path, serde_yaml_ng::to_string(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}
