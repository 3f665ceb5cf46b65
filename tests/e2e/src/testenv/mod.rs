//! The test control plane: etcd, kube-apiserver, kube-controller-manager (garbage collector and
//! namespace controllers only), the Cluster API managers (core, kubeadm bootstrap,
//! KubeadmControlPlane, and CAPD whose DevMachine `backend.inMemory` fakes machines, nodes, the
//! workload API server and etcd) and Flux's kustomize-controller (every namespace, with the
//! `ExternalArtifact` source kind that [`crate::flux`] serves), all as local processes bound to
//! 127.0.0.1.
//!
//! Binaries and the CAPI and Flux manifests come from `tests/e2e/testenv/build.sh` (cached
//! outside the repository). State lives in one directory (`UC_TESTENV_DIR`, default
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

pub use manifests::{apply, install_crds, read_yaml_docs, service_webhooks};
pub use pki::serving_pair;
use process::Spec;

/// The Cluster API managers, in start order, each with its provider name (the webhook manifest
/// it serves, its name prefix).
pub const MANAGERS: [(&str, &str); 4] = [
    ("capi-manager", "capi"),
    ("capi-kubeadm-bootstrap-manager", "capi-kubeadm-bootstrap"),
    (
        "capi-kubeadm-control-plane-manager",
        "capi-kubeadm-control-plane",
    ),
    ("capd-manager", "capd"),
];

/// Flux's kustomize-controller (its binary, process and log name).
const KUSTOMIZE_CONTROLLER: &str = "kustomize-controller";

/// Where things live and which ports they use. Ports are `base + offset`; the base keeps clear
/// of the kernel's ephemeral port range and of CAPD's in-memory workload API servers, which
/// take ports 20000–24000.
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
        let ephemeral = ephemeral_port_range();
        let port_base = match std::env::var("UC_TESTENV_PORT_BASE") {
            Ok(v) => {
                let base: u16 = v
                    .parse()
                    .with_context(|| format!("UC_TESTENV_PORT_BASE={v} is not a port number"))?;
                if let Some(why) = port_block_conflict(base, ephemeral) {
                    bail!("UC_TESTENV_PORT_BASE={base}: {why}");
                }
                base
            }
            Err(_) => default_port_base(ephemeral)?,
        };
        Ok(Self {
            repo_root,
            state_dir,
            port_base,
        })
    }

    /// Every port the control plane listens on.
    fn ports(&self) -> Vec<u16> {
        let mut ports = vec![
            self.etcd_client_port(),
            self.etcd_peer_port(),
            self.apiserver_port(),
            self.controller_manager_port(),
        ];
        for i in 0..MANAGERS.len() as u16 {
            let (a, b, c) = self.manager_ports(i);
            ports.extend([a, b, c]);
        }
        let (metrics, health) = self.kustomize_controller_ports();
        ports.extend([metrics, health]);
        ports
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
    /// Metrics and health-probe ports of kustomize-controller.
    fn kustomize_controller_ports(&self) -> (u16, u16) {
        (self.port(531), self.port(532))
    }
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    /// kube-apiserver's audit log (JSON lines, [`AUDIT_POLICY`]).
    pub fn audit_log(&self) -> PathBuf {
        self.log_dir().join("audit.log")
    }
    fn state_file(&self) -> PathBuf {
        self.state_dir.join("env.json")
    }
    fn lock_file(&self) -> PathBuf {
        self.state_dir.with_extension("lock")
    }
}

/// What kube-apiserver records in its audit log: every request on this project's own API and
/// on ClusterVersionShadows, and the writes of the CAPI objects the controller changes (not
/// their status: CAPI's own controllers write that all the time) — who, with which
/// User-Agent, when; no bodies — so tests can prove from the server's side what the controller
/// (and which replica of it) did and did not do.
pub const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [\"system:serviceaccount:uc-bench:upgrade-controller\"]
- level: Metadata
  resources:
  - group: upgrade.cpaas.io
  - group: cvo.cpaas.io
- level: Metadata
  verbs: [create, update, patch, delete]
  resources:
  - group: controlplane.cluster.x-k8s.io
    resources: [kubeadmcontrolplanes]
  - group: cluster.x-k8s.io
    resources: [clusters, machinedeployments]
  - group: infrastructure.cluster.x-k8s.io
    resources: [devmachinetemplates]
- level: None
";

/// The identity the scale benchmark runs the controller as: every request it sends is audited,
/// whatever the resource ([`AUDIT_POLICY`]).
pub const BENCH_SERVICE_ACCOUNT: (&str, &str) = ("uc-bench", "upgrade-controller");

/// The control plane's ports are `base + 0..PORT_SPAN`.
const PORT_SPAN: u16 = 600;
/// CAPD's in-memory workload API servers and etcd listen on these ports.
const CAPD_IN_MEMORY_PORTS: (u16, u16) = (20000, 24000);

/// The kernel's range for outgoing connections' local ports
/// (`/proc/sys/net/ipv4/ip_local_port_range`; Linux's default when unreadable). A listener
/// inside it can find its port taken by any client connection, so none of ours is there.
fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Why the ports `base..base + PORT_SPAN` cannot be used, if they cannot.
fn port_block_conflict(base: u16, ephemeral: (u16, u16)) -> Option<String> {
    let end = u32::from(base) + u32::from(PORT_SPAN);
    let overlaps = |(lo, hi): (u16, u16)| u32::from(base) <= u32::from(hi) && end > u32::from(lo);
    if base < 1024 || end > 65535 {
        Some(format!("ports {base}–{end} must lie within 1024–65535"))
    } else if overlaps(ephemeral) {
        Some(format!(
            "ports {base}–{end} overlap the kernel's ephemeral port range {}–{} \
             (net.ipv4.ip_local_port_range), where client connections can hold them",
            ephemeral.0, ephemeral.1
        ))
    } else if overlaps(CAPD_IN_MEMORY_PORTS) {
        Some(format!(
            "ports {base}–{end} overlap {}–{}, which CAPD's in-memory workload clusters use",
            CAPD_IN_MEMORY_PORTS.0, CAPD_IN_MEMORY_PORTS.1
        ))
    } else {
        None
    }
}

/// The first of a few candidate bases that is clear of the ephemeral range and of CAPD.
fn default_port_base(ephemeral: (u16, u16)) -> Result<u16> {
    [30000, 26000, 15000, 10000, 61000]
        .into_iter()
        .find(|&b| port_block_conflict(b, ephemeral).is_none())
        .ok_or_else(|| {
            anyhow!(
                "no default port base is clear of the ephemeral port range {}–{}; set UC_TESTENV_PORT_BASE",
                ephemeral.0,
                ephemeral.1
            )
        })
}

/// Waits (up to 30 s) until every port can be bound on 127.0.0.1. A port still held by a
/// connection in TIME-WAIT frees itself within the kernel's 60 s; anything longer is a process
/// that holds it, named in the error.
fn wait_for_free_ports(ports: &[u16]) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut reported = false;
    loop {
        let busy: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|&p| std::net::TcpListener::bind(loopback(p)).is_err())
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "ports {busy:?} on 127.0.0.1 are still in use after 30 s; stop whatever holds them \
                 (`ss -ltnp`) or set UC_TESTENV_PORT_BASE"
            );
        }
        if !reported {
            eprintln!("testenv: ports {busy:?} on 127.0.0.1 are in use; retrying for up to 30 s");
            reported = true;
        }
        std::thread::sleep(Duration::from_millis(500));
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
    /// kube-apiserver's audit log; an environment recorded without one is replaced.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// The audit policy it was started with; one started with another is replaced.
    #[serde(default)]
    pub audit_policy: String,
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
        if running.build_dir == build_dir && running.audit_log.is_some() && healthy(cfg, &running) {
            return Ok(running);
        }
        eprintln!("testenv: replacing a stale or unhealthy environment");
    }
    stop(cfg)?;
    // A listener that lost a race for its port (a client connection took it between our check
    // and its bind) is retried from scratch; anything else fails at once with every log.
    let mut attempt = 1;
    loop {
        match start(cfg, &build_dir) {
            Ok(running) => return Ok(running),
            Err(e) => {
                let lost_bind = bind_failures(cfg);
                let report = log_report(cfg);
                if lost_bind.is_empty() || attempt == 3 {
                    return Err(anyhow!("{e:#}\n\n{report}"));
                }
                eprintln!(
                    "testenv: attempt {attempt} failed: {} could not bind its port (address already in use); starting again",
                    lost_bind.join(", ")
                );
                stop(cfg)?;
                attempt += 1;
            }
        }
    }
}

/// The processes whose log says they failed to bind a listener.
fn bind_failures(cfg: &Config) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(cfg.log_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| process::tail(p, 40).contains("address already in use"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    out.sort();
    out
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

/// Waits (up to 90 s) until kube-apiserver `pid` answers `/readyz` with `ok`.
async fn apiserver_ready(cfg: &Config, pid: u32) -> Result<kube::Client> {
    let kubeconfig_path = cfg.kubeconfig_path();
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
}

/// Restarts kube-apiserver with the command line it runs with (etcd and every other process
/// keep running, so no object is lost) and returns once it is ready again. Every client's
/// watches break, as in a control-plane upgrade or an API server crash.
pub async fn restart_apiserver(cfg: &Config) -> Result<()> {
    let mut running = current(cfg)?.context("no test control plane is running")?;
    let pid = *running
        .pids
        .get("kube-apiserver")
        .context("env.json records no kube-apiserver")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("reading the command line of kube-apiserver (pid {pid})"))?;
    let mut words = cmdline
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned());
    let program = words
        .next()
        .context("kube-apiserver has an empty command line")?;
    let args: Vec<String> = words.collect();
    process::stop_group(pid, Duration::from_secs(10));
    wait_for_free_ports(&[cfg.apiserver_port()])?;
    let spec = Spec {
        name: "kube-apiserver",
        program: PathBuf::from(program),
        args,
        env: vec![],
    };
    let pid = process::spawn(&spec, &cfg.log_dir())?;
    running.pids.insert(spec.name.to_string(), pid);
    std::fs::write(cfg.state_file(), serde_json::to_vec_pretty(&running)?)?;
    apiserver_ready(cfg, pid).await?;
    Ok(())
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
    wait_for_free_ports(&cfg.ports())?;

    let pki = pki::generate(&cfg.state_dir.join("pki"))?;
    let server = format!("https://127.0.0.1:{}", cfg.apiserver_port());
    write_kubeconfig(&cfg.kubeconfig_path(), &server, &pki)?;
    let kubeconfig = cfg.kubeconfig_path().display().to_string();
    let mut running = Running {
        build_dir: build_dir.to_path_buf(),
        kubeconfig: cfg.kubeconfig_path(),
        server: server.clone(),
        pids: BTreeMap::new(),
        audit_log: Some(cfg.audit_log()),
        audit_policy: AUDIT_POLICY.to_string(),
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
    let audit_policy = cfg.state_dir.join("pki/audit-policy.yaml");
    std::fs::write(&audit_policy, AUDIT_POLICY)?;
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
                format!("--audit-policy-file={}", p(&audit_policy)),
                format!("--audit-log-path={}", p(&cfg.audit_log())),
                "--audit-log-format=json".into(),
                "--audit-log-maxsize=200".into(),
                "--audit-log-maxbackup=1".into(),
                "--v=1".into(),
            ],
            env: vec![],
        },
        &mut running,
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = rt.block_on(apiserver_ready(cfg, pid))?;

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
        manifests::install_crds(&client, &build_dir.join("manifests/flux-crd"), false).await?;
        for (i, (_, provider)) in MANAGERS.iter().enumerate() {
            let (webhook_port, _, _) = cfg.manager_ports(i as u16);
            let docs = read_yaml_docs(
                &build_dir
                    .join("manifests/webhook")
                    .join(format!("{provider}.yaml")),
            )?;
            let hooks = manifests::localize_webhooks(docs, provider, webhook_port, &ca_pem);
            manifests::apply(&client, &hooks).await?;
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
            // Its docker backend runs in the kind + CAPD suite's own management cluster
            // (tests/e2e/src/kind.rs), not here.
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

    // Flux's kustomize-controller as the admin, as a single replica, reaching nothing outside
    // this machine: no notification-controller to post events to (they stay Kubernetes
    // Events), no remote kustomize bases. Its temporary directories are its own: at start it
    // deletes every `kustomization-*` directory in TMPDIR, another environment's too.
    let (metrics_port, health_port) = cfg.kustomize_controller_ports();
    let tmp = cfg.state_dir.join("tmp").join(KUSTOMIZE_CONTROLLER);
    std::fs::create_dir_all(&tmp)?;
    let flux_pid = launch(
        Spec {
            name: KUSTOMIZE_CONTROLLER,
            program: bin(KUSTOMIZE_CONTROLLER),
            args: vec![
                "--watch-all-namespaces=true".into(),
                "--feature-gates=ExternalArtifact=true".into(),
                format!("--metrics-addr=127.0.0.1:{metrics_port}"),
                format!("--health-addr=127.0.0.1:{health_port}"),
                "--events-addr=".into(),
                "--enable-leader-election=false".into(),
                "--no-remote-bases=true".into(),
            ],
            env: vec![("KUBECONFIG", kubeconfig.clone()), ("TMPDIR", p(&tmp))],
        },
        &mut running,
    )?;

    for (name, pid, health) in managers {
        process::wait_until(name, pid, Duration::from_secs(120), || {
            process::http_ok(health, "/readyz")
        })?;
    }
    // Its /readyz answers before its caches have synced; the Kustomization controller logs
    // "Starting workers" once they have (and exits if a watched kind has no CRD).
    let flux_log = log_dir.join(format!("{KUSTOMIZE_CONTROLLER}.log"));
    process::wait_until(
        KUSTOMIZE_CONTROLLER,
        flux_pid,
        Duration::from_secs(120),
        || {
            process::http_ok(loopback(health_port), "/readyz")
                && process::tail(&flux_log, 2000).lines().any(|l| {
                    l.contains("Starting workers") && l.contains(r#""controller":"kustomization""#)
                })
        },
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_port_base_stays_out_of_the_ephemeral_range_and_capd() {
        let linux_default = (32768, 60999);
        let base = default_port_base(linux_default).unwrap();
        assert!(port_block_conflict(base, linux_default).is_none());
        assert!(u32::from(base) + u32::from(PORT_SPAN) < 32768, "{base}");
        // The old default sat inside the range.
        assert!(
            port_block_conflict(36000, linux_default)
                .unwrap()
                .contains("ephemeral")
        );
        assert!(
            port_block_conflict(19800, linux_default)
                .unwrap()
                .contains("CAPD")
        );
        // A machine whose range starts low still gets a clear base, or a clear error.
        let low = (10000, 65000);
        assert!(default_port_base(low).is_err());
        let narrow = (40000, 50000);
        assert_eq!(default_port_base(narrow).unwrap(), 30000);
    }

    #[test]
    fn every_listener_port_is_inside_the_checked_block() {
        let cfg = Config {
            repo_root: PathBuf::from("/"),
            state_dir: PathBuf::from("/tmp/x"),
            port_base: 30000,
        };
        for p in cfg.ports() {
            assert!((30000..30000 + PORT_SPAN).contains(&p), "{p}");
        }
    }
}
