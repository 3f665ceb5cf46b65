//! The container image and the pod the chart's Deployment makes of it (test tier 5): the image
//! `make image` builds, run by podman the way the kubelet runs the Deployment's pod template —
//! its image, args and env, the pod and container securityContext (numeric user, read-only root
//! filesystem, no privilege escalation, capabilities dropped), its memory limit and CPU
//! request, its Secret volumes, and the ServiceAccount token, CA and namespace at
//! `/var/run/secrets/kubernetes.io/serviceaccount` with `KUBERNETES_SERVICE_HOST/PORT` — against
//! the test control plane.
//!
//! One difference, forced by the machine: no pod network here, so the container shares the
//! host's (`--network host`) and listens on loopback: `0.0.0.0:` in its args becomes
//! `127.0.0.1:`. A pod field this module does not know how to run fails the test rather than
//! being left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::Api;
use serde_json::Value;

use crate::project::{self, run_ok};
use crate::{chart, harness};

/// podman with the global flags that work on these machines: runc (crun fails on hybrid
/// cgroups and on raising rlimits) and cgroupfs (no systemd).
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd
}

/// Fails the test unless buildah, podman and runc are installed.
pub fn require_tools() {
    for tool in ["buildah", "podman", "runc"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{tool} is not installed: tests/e2e/testenv/container-tools.sh installs buildah, podman \
             and runc (`make test` and `make image` run it)"
        );
    }
}

/// An image built by `make image`, removed from local storage on drop.
pub struct Image {
    /// `repository:tag`.
    pub reference: String,
    /// `podman image inspect` of it.
    pub inspect: Value,
}

impl Image {
    /// `make image IMAGE=<reference>`: the static binary (a no-op cargo build when current) and
    /// the image around it.
    pub fn build(reference: &str) -> Self {
        let start = Instant::now();
        let mut make = Command::new("make");
        make.args(["-s", "image", &format!("IMAGE={reference}")])
            .current_dir(project::repo_root())
            .stdin(Stdio::null());
        project::without_test_cargo_env(&mut make);
        let status = make.status().expect("running make image");
        assert!(status.success(), "make image failed ({status})");
        eprintln!("make image {reference}: {:.1?}", start.elapsed());
        let out = run_ok(
            podman().args(["image", "inspect", reference]),
            "podman image inspect",
        );
        let inspect: Value = serde_json::from_slice(&out.stdout).expect("image inspect JSON");
        Self {
            reference: reference.to_string(),
            inspect: inspect[0].clone(),
        }
    }

    pub fn repository(&self) -> &str {
        self.reference.rsplit_once(':').unwrap().0
    }

    pub fn tag(&self) -> &str {
        self.reference.rsplit_once(':').unwrap().1
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.inspect["Labels"][key].as_str()
    }

    /// The image's size as podman reports it (the uncompressed layers), in bytes.
    pub fn size(&self) -> u64 {
        self.inspect["Size"].as_u64().expect("image size")
    }

    /// Every path in the image's root filesystem with its mode (`podman image mount`).
    pub fn files(&self) -> BTreeMap<String, u32> {
        use std::os::unix::fs::PermissionsExt;
        let out = run_ok(
            podman().args(["image", "mount", &self.reference]),
            "podman image mount",
        );
        let root = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let mut files = BTreeMap::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let meta = std::fs::symlink_metadata(entry.path()).unwrap();
                let rel = entry
                    .path()
                    .strip_prefix(&root)
                    .unwrap()
                    .display()
                    .to_string();
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    files.insert(format!("/{rel}"), meta.permissions().mode());
                }
            }
        }
        run_ok(
            podman().args(["image", "unmount", &self.reference]),
            "podman image unmount",
        );
        files
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman().args(["rmi", &self.reference]).output();
    }
}

/// Bytes of a Kubernetes memory quantity (`256Mi`, `1Gi`, `500M`, `1048576`).
pub fn memory_bytes(q: &str) -> u64 {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a memory quantity") * factor;
        }
    }
    q.parse().expect("a memory quantity")
}

/// Millicores of a CPU quantity (`50m`, `1`, `0.5`).
pub fn cpu_millis(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().expect("a CPU quantity"),
        None => (q.parse::<f64>().expect("a CPU quantity") * 1000.0).round() as u64,
    }
}

/// Pod spec fields that only place a pod on a node, or that the API server defaults to what a
/// single container run here does anyway (restart, DNS, the deprecated `serviceAccount` alias).
const POD_FIELDS_WITHOUT_EFFECT: [&str; 9] = [
    "nodeSelector",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "priorityClassName",
    "schedulerName",
    "restartPolicy",
    "dnsPolicy",
    "serviceAccount",
];

/// A Deployment's pod template turned into a `podman run`.
pub struct PodSpec {
    /// podman run flags (user, security, limits, mounts), without env.
    flags: Vec<String>,
    env: BTreeMap<String, String>,
    image: String,
    args: Vec<String>,
    /// Container port name -> port (on loopback: the host's network).
    pub ports: BTreeMap<String, u16>,
    /// `livenessProbe` / `readinessProbe` -> URL of its httpGet.
    pub probes: BTreeMap<String, String>,
    pub grace: Duration,
    /// The memory limit the container runs under, in bytes.
    pub memory_limit: Option<u64>,
    /// Where the volumes' files are written.
    pub dir: PathBuf,
}

impl PodSpec {
    /// `deployment`'s pod template as pod `pod` in `ns` would run it: the ServiceAccount's
    /// token (a TokenRequest, as the kubelet's projected volume holds), the control plane's CA
    /// and the namespace under `/var/run/secrets/kubernetes.io/serviceaccount`, each Secret
    /// volume read from the API server.
    pub async fn from_deployment(client: &kube::Client, deployment: &Value, pod: &str) -> Self {
        let ns = deployment["metadata"]["namespace"]
            .as_str()
            .expect("the Deployment's namespace");
        let spec = &deployment["spec"]["template"]["spec"];
        for key in spec.as_object().expect("a pod spec").keys() {
            assert!(
                [
                    "serviceAccountName",
                    "securityContext",
                    "containers",
                    "volumes",
                    "terminationGracePeriodSeconds",
                ]
                .contains(&key.as_str())
                    || POD_FIELDS_WITHOUT_EFFECT.contains(&key.as_str()),
                "the pod spec has {key}, which this test does not know how to run"
            );
        }
        let containers = spec["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container expected");
        let c = &containers[0];
        for key in c.as_object().unwrap().keys() {
            assert!(
                [
                    "name",
                    "image",
                    "imagePullPolicy",
                    "args",
                    "env",
                    "ports",
                    "securityContext",
                    "resources",
                    "volumeMounts",
                    "livenessProbe",
                    "readinessProbe",
                    // API server defaults about the termination message file.
                    "terminationMessagePath",
                    "terminationMessagePolicy",
                ]
                .contains(&key.as_str()),
                "the container has {key}, which this test does not know how to run"
            );
        }
        let dir = harness::env()
            .kubeconfig
            .with_file_name(format!("pod-{pod}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();

        let mut flags: Vec<String> = vec![
            "--pull=never".into(),
            "--network=host".into(),
            "--ulimit=nofile=1024:1024".into(),
            "--ulimit=nproc=1000:1000".into(),
        ];
        // The pod's securityContext, overridden by the container's.
        let psc = &spec["securityContext"];
        let csc = &c["securityContext"];
        let pick = |key: &str| {
            if csc[key].is_null() {
                psc[key].clone()
            } else {
                csc[key].clone()
            }
        };
        let user = pick("runAsUser").as_u64().expect("a numeric runAsUser");
        let group = pick("runAsGroup").as_u64().expect("a numeric runAsGroup");
        if pick("runAsNonRoot") == true {
            assert_ne!(user, 0, "runAsNonRoot with runAsUser 0");
        }
        flags.push(format!("--user={user}:{group}"));
        let seccomp = pick("seccompProfile");
        assert!(
            seccomp.is_null() || seccomp["type"] == "RuntimeDefault",
            "seccompProfile {seccomp}: only RuntimeDefault (podman's default profile) is run here"
        );
        for key in csc.as_object().into_iter().flat_map(|o| o.keys()) {
            match key.as_str() {
                "readOnlyRootFilesystem" if csc[key] == true => {
                    // The kubelet mounts no tmpfs of its own: only the pod's volumes are writable.
                    flags.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
                }
                "allowPrivilegeEscalation" if csc[key] == false => {
                    flags.push("--security-opt=no-new-privileges".into());
                }
                "capabilities" => {
                    for cap in csc[key]["drop"].as_array().into_iter().flatten() {
                        flags.push(format!("--cap-drop={}", cap.as_str().unwrap()));
                    }
                    for cap in csc[key]["add"].as_array().into_iter().flatten() {
                        flags.push(format!("--cap-add={}", cap.as_str().unwrap()));
                    }
                }
                "runAsUser" | "runAsGroup" | "runAsNonRoot" | "seccompProfile" => {}
                other => panic!(
                    "container securityContext {other}={} is not run here",
                    csc[key]
                ),
            }
        }
        // Resources as the kubelet sets the cgroup: the memory limit (no swap beyond it), the
        // CPU limit as a quota, the CPU request as shares.
        let resources = &c["resources"];
        let memory_limit = resources["limits"]["memory"].as_str().map(memory_bytes);
        if let Some(bytes) = memory_limit {
            flags.push(format!("--memory={bytes}"));
            flags.push(format!("--memory-swap={bytes}"));
        }
        if let Some(cpu) = resources["limits"]["cpu"].as_str() {
            flags.push(format!("--cpus={:.3}", cpu_millis(cpu) as f64 / 1000.0));
        }
        if let Some(cpu) = resources["requests"]["cpu"].as_str() {
            flags.push(format!(
                "--cpu-shares={}",
                (cpu_millis(cpu) * 1024 / 1000).max(2)
            ));
        }

        // The ServiceAccount volume the kubelet projects into every pod.
        let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
        let sa_dir = dir.join("serviceaccount");
        std::fs::create_dir_all(&sa_dir).unwrap();
        let token = chart::service_account_token(client, ns, sa).await;
        write_file(&sa_dir.join("token"), token.as_bytes());
        write_file(&sa_dir.join("ca.crt"), &control_plane_ca());
        write_file(&sa_dir.join("namespace"), ns.as_bytes());
        flags.push(format!(
            "--volume={}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
            sa_dir.display()
        ));
        // The pod's volumes, where the container mounts them.
        let volumes: BTreeMap<&str, &Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        for mount in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = mount["name"].as_str().unwrap();
            let path = mount["mountPath"].as_str().unwrap();
            let volume = volumes
                .get(name)
                .unwrap_or_else(|| panic!("volumeMount {name} without a volume"));
            let ro = if mount["readOnly"] == true { ":ro" } else { "" };
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                assert!(
                    volume["secret"]["items"].is_null(),
                    "Secret volume {name} with items is not run here"
                );
                let vdir = dir.join(format!("volume-{name}"));
                std::fs::create_dir_all(&vdir).unwrap();
                let data =
                    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
                        .get(secret)
                        .await
                        .unwrap_or_else(|e| panic!("Secret {ns}/{secret} of volume {name}: {e}"))
                        .data
                        .unwrap_or_default();
                for (key, value) in data {
                    write_file(&vdir.join(key), &value.0);
                }
                flags.push(format!("--volume={}:{path}{ro}", vdir.display()));
            } else if volume["emptyDir"].is_object() {
                flags.push(format!("--tmpfs={path}:rw,mode=1777"));
            } else {
                panic!("volume {name} ({volume}) is not run here");
            }
        }

        // In-cluster config: the API server's address as the kubelet sets it, and the
        // container's own env.
        let server = &harness::env().server;
        let (host, port) = server
            .trim_start_matches("https://")
            .rsplit_once(':')
            .expect("the API server's host:port");
        let mut env = BTreeMap::from([
            ("KUBERNETES_SERVICE_HOST".to_string(), host.to_string()),
            ("KUBERNETES_SERVICE_PORT".to_string(), port.to_string()),
        ]);
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod.to_string(),
                    Some("metadata.namespace") => ns.to_string(),
                    Some("status.podIP") => "127.0.0.1".to_string(),
                    _ => panic!("env {name} ({e}) is not run here"),
                }
            };
            env.insert(name, value);
        }

        let ports: BTreeMap<String, u16> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_string(),
                    p["containerPort"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        let mut probes = BTreeMap::new();
        for kind in ["livenessProbe", "readinessProbe"] {
            let probe = &c[kind];
            if probe.is_null() {
                continue;
            }
            let get = &probe["httpGet"];
            assert!(get.is_object(), "{kind} {probe}: only httpGet is run here");
            let port = match &get["port"] {
                Value::String(name) => *ports
                    .get(name)
                    .unwrap_or_else(|| panic!("{kind} names port {name}, which is not declared")),
                p => p.as_u64().unwrap() as u16,
            };
            probes.insert(
                kind.to_string(),
                format!(
                    "http://127.0.0.1:{port}{}",
                    get["path"].as_str().unwrap_or("/")
                ),
            );
        }
        let args = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a.as_str().unwrap().replace("=0.0.0.0:", "=127.0.0.1:"))
            .collect();
        Self {
            flags,
            env,
            image: c["image"]
                .as_str()
                .expect("the container's image")
                .to_string(),
            args,
            ports,
            probes,
            grace: Duration::from_secs(
                spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
            ),
            memory_limit,
            dir,
        }
    }

    fn command(&self, name: &str, env: &[(&str, &str)], args: &[String]) -> Command {
        let mut cmd = podman();
        cmd.args(["run", "--rm", "--name", name]).args(&self.flags);
        let mut all = self.env.clone();
        for (k, v) in env {
            all.insert(k.to_string(), v.to_string());
        }
        for (k, v) in all {
            cmd.arg(format!("--env={k}={v}"));
        }
        cmd.arg(&self.image).args(args).stdin(Stdio::null());
        cmd
    }

    /// Starts the pod's container as `name`; its output goes to `logs/pod-<name>.log`.
    pub fn start(&self, name: &str) -> Pod {
        let log = harness::env()
            .kubeconfig
            .with_file_name(format!("logs/pod-{name}.log"));
        let out = std::fs::File::create(&log).expect("pod log file");
        let _ = podman().args(["rm", "--force", name]).output();
        let child = self
            .command(name, &[], &self.args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting podman run");
        Pod {
            name: name.to_string(),
            child,
            log,
            grace: self.grace,
            started: Instant::now(),
        }
    }

    /// One container of the same pod spec with other args and env, run to its end.
    pub fn run_once(&self, name: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.command(name, env, &args)
            .output()
            .expect("running podman run")
    }
}

fn write_file(path: &Path, data: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).unwrap();
    // The kubelet's default mode for Secret and projected volumes.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The test control plane's CA (PEM), from its admin kubeconfig.
pub fn control_plane_ca() -> Vec<u8> {
    use base64::Engine;
    let text = std::fs::read_to_string(&harness::env().kubeconfig).unwrap();
    let kc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let data = kc["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .expect("certificate-authority-data in the admin kubeconfig");
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap()
}

/// A running pod container; removed on drop.
pub struct Pod {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    grace: Duration,
    started: Instant,
}

impl Pod {
    /// The container's `podman inspect` (waits up to 60 s for it to exist).
    pub fn inspect(&self) -> Value {
        let start = Instant::now();
        loop {
            let out = podman()
                .args(["container", "inspect", &self.name])
                .output()
                .unwrap();
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                return v[0].clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "container {} never appeared: {}; log {}",
                self.name,
                String::from_utf8_lossy(&out.stderr),
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The host pid of the container's process (pid 1 inside it).
    pub fn pid(&self) -> u32 {
        let start = Instant::now();
        loop {
            let v = self.inspect();
            if let Some(pid) = v["State"]["Pid"].as_u64().filter(|p| *p > 0) {
                return pid as u32;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "container {} never started: {}",
                self.name,
                v["State"]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether `podman run` is still attached (the container has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the probe's URL answers 200, as the kubelet's httpGet probe would see it;
    /// returns the time since `podman run` was started.
    pub async fn wait_probe(&mut self, url: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if project::http_get(url).await.is_some() {
                return self.started.elapsed();
            }
            assert!(
                self.is_running(),
                "the container exited; log {}",
                self.log.display()
            );
            assert!(
                start.elapsed() < timeout,
                "{url} did not answer 200 within {timeout:?}; log {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What the kubelet does when the pod is deleted: SIGTERM, then SIGKILL after the grace
    /// period. Returns how long the container took to exit and its exit code.
    pub fn stop(&mut self) -> (Duration, Option<i32>) {
        let start = Instant::now();
        run_ok(
            podman().args([
                "stop",
                "--time",
                &self.grace.as_secs().to_string(),
                &self.name,
            ]),
            "podman stop",
        );
        let status = self.child.wait().expect("waiting for podman run");
        (start.elapsed(), status.code())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", &self.name]).output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resource use of one process, sampled from /proc every second until dropped.
pub struct Usage {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

/// One reading of /proc/<pid>.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// Resident set (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set so far (VmHWM), KiB.
    pub hwm_kib: u64,
    /// User + system CPU time so far.
    pub cpu: Duration,
}

fn read_sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .ok()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th of them.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Sample {
        at: Instant::now(),
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
        cpu: Duration::from_millis(ticks * 1000 / hz),
    })
}

/// What [`Usage`] measured.
#[derive(Debug, Clone, Copy)]
pub struct UsageSummary {
    pub samples: usize,
    pub wall: Duration,
    pub cpu: Duration,
    /// Peak resident set (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// Resident set at the last sample, MiB.
    pub last_rss_mib: f64,
    /// CPU over the whole run, millicores.
    pub avg_millicores: f64,
    /// The busiest 10 s window, millicores.
    pub peak_millicores: f64,
}

impl Usage {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match read_sample(pid) {
                    Some(sample) => out.lock().unwrap().push(sample),
                    None => break,
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Self { stop, samples }
    }

    pub fn summary(&self) -> UsageSummary {
        let samples = self.samples.lock().unwrap().clone();
        assert!(samples.len() >= 2, "fewer than two samples of the process");
        let (first, last) = (samples[0], *samples.last().unwrap());
        let wall = last.at - first.at;
        let cpu = last.cpu - first.cpu;
        let millis = |cpu: Duration, wall: Duration| {
            cpu.as_secs_f64() * 1000.0 / wall.as_secs_f64().max(0.001)
        };
        let mut peak = 0.0f64;
        for (i, a) in samples.iter().enumerate() {
            if let Some(b) = samples[i..]
                .iter()
                .find(|b| b.at - a.at >= Duration::from_secs(10))
            {
                peak = peak.max(millis(b.cpu - a.cpu, b.at - a.at));
            }
        }
        UsageSummary {
            samples: samples.len(),
            wall,
            cpu,
            peak_rss_mib: last.hwm_kib as f64 / 1024.0,
            last_rss_mib: last.rss_kib as f64 / 1024.0,
            avg_millicores: millis(cpu, wall),
            peak_millicores: peak,
        }
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The chart installed for a test namespace and the Deployment it created, read back from the
/// API server: what the kubelet would run.
pub async fn installed_deployment(client: &kube::Client, release: &chart::Installed) -> Value {
    use k8s_openapi::api::apps::v1::Deployment;
    let d = Api::<Deployment>::namespaced(client.clone(), &release.namespace)
        .get(&release.name)
        .await
        .unwrap_or_else(|e| panic!("the release's Deployment {}: {e}", release.name));
    serde_json::to_value(d).unwrap()
}
