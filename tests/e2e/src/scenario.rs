//! One upgrade scenario, two machine backends. A cluster named `demo` (one control-plane
//! machine, pool `pool-a`) goes from the first row of a four-row matrix (one Kubernetes minor
//! per row, 1.31 to 1.34) to the last through an UpgradeRequest, and the workload cluster's
//! own API is read throughout: every hop must replace every node, with nodes backed by
//! Machines at the hop's version.
//!
//! - [`Backend::InMemory`]: CAPD's in-memory machines (part of `make test`). Their fake
//!   kubelets report no version, so a node's version is its Machine's.
//! - [`Backend::Docker`]: CAPD's docker backend with real kubeadm nodes in containers of the
//!   node images `tests/e2e/kind/build-images.sh` builds (`make e2e-kind`); each node's kubelet
//!   must also report the hop's version itself. The management cluster is then a kind cluster
//!   ([`crate::kind`]) with Cluster API in pods, and the controller runs there as its Helm chart
//!   installs it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use upgrade_controller::api::{Phase, PlanStepKind, StepState};
use upgrade_controller::apply::kubelet_access;

use crate::engine::{self, KCP};
use crate::harness::{self, TestNamespace};
use crate::platform::Platform;
use crate::project::{self, Controller};
use crate::{capi, fixture, testenv};

/// The scenario's cluster and its one pool.
pub const CLUSTER: &str = "demo";
pub const POOL: &str = "demo-pool-a";

/// One matrix row of the scenario: a Distribution Version and its Kubernetes release.
#[derive(Debug, Clone)]
pub struct Row {
    pub dv: String,
    pub k8s: String,
    pub image: String,
    pub etcd: String,
    pub coredns: String,
}

/// Where the cluster's machines run.
pub enum Backend {
    InMemory,
    Docker(KindImages),
}

/// The images of the kind + CAPD suite, as `tests/e2e/kind/build-images.sh` names them.
#[derive(Debug, Clone)]
pub struct KindImages {
    pub lb_repository: String,
    pub lb_tag: String,
    pub etcd_tag: String,
    /// Node image per Kubernetes release of `tests/e2e/kind/versions.env`, in order.
    pub nodes: Vec<(String, String)>,
    /// upgrade-controller's image, loaded into the kind management cluster.
    pub controller_image: String,
}

fn run_script(args: &[&str]) -> String {
    let script = project::repo_root().join(args[0]);
    let out = Command::new(&script)
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("script output is UTF-8")
}

/// A space-separated list of `tests/e2e/kind/versions.env`, which both backends use:
/// `KIND_KUBERNETES_VERSIONS` (one release per minor) or `KIND_COREDNS_VERSIONS` (kubeadm's
/// CoreDNS of each, which KCP's webhook accepts and, on real nodes, deploys).
fn kind_versions(key: &str) -> Vec<String> {
    let path = project::repo_root().join("tests/e2e/kind/versions.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("versions.env sets no {key}"))
        .trim_matches('"')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

impl KindImages {
    /// Builds the node and load-balancer images (a no-op when they are cached) and, on a host
    /// with Docker, copies them into Docker (`management.sh images`); the controller runs
    /// `controller_image`. Fails, never skips, when they cannot be built here.
    pub fn prepare(controller_image: &str) -> Self {
        let env_file = run_script(&["tests/e2e/kind/management.sh", "images"]);
        let text = std::fs::read_to_string(env_file.trim())
            .unwrap_or_else(|e| panic!("reading {}: {e}", env_file.trim()));
        let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| {
            vars.get(k)
                .unwrap_or_else(|| panic!("{} names no {k}", env_file.trim()))
                .to_string()
        };
        let nodes = kind_versions("KIND_KUBERNETES_VERSIONS")
            .into_iter()
            .map(|v| {
                let minor = v.rsplit_once('.').unwrap().0.replace('.', "_");
                let image = get(&format!("UC_KIND_NODE_IMAGE_{minor}"));
                (v, image)
            })
            .collect();
        Self {
            lb_repository: get("UC_KIND_LB_REPOSITORY"),
            lb_tag: get("UC_KIND_LB_TAG"),
            etcd_tag: get("UC_KIND_ETCD_TAG"),
            nodes,
            controller_image: controller_image.to_string(),
        }
    }
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::InMemory => "in-memory",
            Backend::Docker(_) => "docker",
        }
    }

    /// The four rows, ACP 4.0 to 4.3, one minor each.
    pub fn rows(&self) -> Vec<Row> {
        let releases: Vec<(String, String, String)> = match self {
            Backend::InMemory => kind_versions("KIND_KUBERNETES_VERSIONS")
                .into_iter()
                .map(|v| {
                    let image = format!("in-memory-{v}");
                    (v, image, "3.5.21-0".into())
                })
                .collect(),
            Backend::Docker(images) => images
                .nodes
                .iter()
                .map(|(v, image)| (v.clone(), image.clone(), images.etcd_tag.clone()))
                .collect(),
        };
        assert_eq!(releases.len(), 4, "one release per minor, 1.31 to 1.34");
        let corednses = kind_versions("KIND_COREDNS_VERSIONS");
        assert_eq!(corednses.len(), 4, "one CoreDNS version per release");
        releases
            .into_iter()
            .zip(corednses)
            .enumerate()
            .map(|(i, ((k8s, image, etcd), coredns))| Row {
                dv: format!("4.{i}.0"),
                coredns,
                k8s,
                image,
                etcd,
            })
            .collect()
    }

    /// The cluster's objects at `row`, in creation order.
    fn cluster_objects(&self, row: &Row) -> Vec<Value> {
        match self {
            Backend::InMemory => {
                capi::in_memory_cluster(CLUSTER, &row.k8s, "v131", 1, &[("pool-a", 1)])
            }
            Backend::Docker(images) => fixture::render(
                "docker-cluster.yaml",
                &[
                    ("NAME", &CLUSTER),
                    ("VERSION", &row.k8s),
                    ("TEMPLATE_SUFFIX", &"v131"),
                    ("IMAGE", &row.image),
                    ("ETCD_TAG", &row.etcd),
                    ("LB_REPOSITORY", &images.lb_repository),
                    ("LB_TAG", &images.lb_tag),
                    ("WORKERS", &1),
                ],
            ),
        }
    }

    /// How long one rollout may take: booting a real node is minutes on two cores.
    fn rollout_timeout(&self) -> Duration {
        match self {
            Backend::InMemory => Duration::from_secs(300),
            Backend::Docker(_) => Duration::from_secs(900),
        }
    }
}

/// What the workload cluster looked like at one moment: its Nodes (name -> the version its
/// kubelet reports) and, from the management cluster, each node's Machine version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub at: Instant,
    pub kubelets: BTreeMap<String, Option<String>>,
    pub machines: BTreeMap<String, String>,
}

/// The version every node of `s` is at, when they agree and each is backed by a Machine at it
/// (and, where kubelets report one, reports it too).
fn uniform_version(s: &Snapshot, kubelets_report: bool) -> Option<String> {
    let mut versions = BTreeSet::new();
    for (node, kubelet) in &s.kubelets {
        let machine = s.machines.get(node)?;
        if kubelets_report && kubelet.as_deref() != Some(machine.as_str()) {
            return None;
        }
        versions.insert(machine.clone());
    }
    (versions.len() == 1).then(|| versions.into_iter().next().unwrap())
}

/// A client of the workload cluster, from CAPI's `<cluster>-kubeconfig` Secret.
pub async fn workload_client(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
) -> anyhow::Result<kube::Client> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{cluster}-kubeconfig"))
        .await?;
    let value = secret
        .data
        .and_then(|d| d.get("value").cloned())
        .ok_or_else(|| anyhow::anyhow!("{cluster}-kubeconfig has no data.value"))?;
    let kubeconfig = Kubeconfig::from_yaml(std::str::from_utf8(&value.0)?)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// kubeadm's two addons in the workload cluster, as KCP keeps them: the kube-proxy DaemonSet's
/// image and the CoreDNS Deployment's, each with whether every pod of it is updated and Ready.
#[derive(Debug, PartialEq)]
pub struct Addons {
    pub kube_proxy: (String, bool),
    pub coredns: (String, bool),
}

async fn addons(workload: &kube::Client) -> anyhow::Result<Addons> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    let image = |spec: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
        spec.and_then(|t| t.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    let ds = Api::<DaemonSet>::namespaced(workload.clone(), "kube-system")
        .get("kube-proxy")
        .await?;
    let ds_status = ds.status.clone().unwrap_or_default();
    let ds_done = ds_status.observed_generation == ds.metadata.generation
        && ds_status.desired_number_scheduled > 0
        && ds_status.updated_number_scheduled == Some(ds_status.desired_number_scheduled)
        && ds_status.number_ready == ds_status.desired_number_scheduled;
    let dep = Api::<Deployment>::namespaced(workload.clone(), "kube-system")
        .get("coredns")
        .await?;
    let dep_done = crate::kind::rolled_out(&dep);
    Ok(Addons {
        kube_proxy: (image(ds.spec.as_ref().map(|s| &s.template)), ds_done),
        coredns: (image(dep.spec.as_ref().map(|s| &s.template)), dep_done),
    })
}

/// Waits until the workload cluster's kube-proxy runs `registry.k8s.io/kube-proxy:<k8s>` and
/// its CoreDNS `registry.k8s.io/coredns/coredns:<coredns>`, every pod updated and Ready.
async fn wait_addons(
    client: &kube::Client,
    ns: &str,
    k8s: &str,
    coredns: &str,
    timeout: Duration,
) -> Addons {
    let want = Addons {
        kube_proxy: (format!("registry.k8s.io/kube-proxy:{k8s}"), true),
        coredns: (format!("registry.k8s.io/coredns/coredns:{coredns}"), true),
    };
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Ok(w) = workload_client(client, ns, CLUSTER).await {
            match addons(&w).await {
                Ok(a) if a == want => return a,
                Ok(a) => last = Some(format!("{a:?}")),
                Err(e) => last = Some(format!("{e:#}")),
            }
        }
        assert!(
            start.elapsed() < timeout,
            "the workload cluster's addons are not {want:?} within {timeout:?}; last seen: {last:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Samples the workload cluster once a second until dropped, keeping each distinct picture.
/// Reads fail while a hop swaps the API server behind the load balancer; they are counted.
pub struct NodeRecorder {
    pub snapshots: Arc<Mutex<Vec<Snapshot>>>,
    pub failed_reads: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NodeRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NodeRecorder {
    pub fn start(client: &kube::Client, ns: &str) -> Self {
        let snapshots = Arc::new(Mutex::new(Vec::<Snapshot>::new()));
        let failed_reads = Arc::new(AtomicU32::new(0));
        let (client, ns) = (client.clone(), ns.to_string());
        let (shots, failed) = (snapshots.clone(), failed_reads.clone());
        let task = tokio::spawn(async move {
            let mut workload: Option<kube::Client> = None;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if workload.is_none() {
                    workload = workload_client(&client, &ns, CLUSTER).await.ok();
                }
                let Some(w) = &workload else { continue };
                let nodes = match Api::<Node>::all(w.clone())
                    .list(&ListParams::default())
                    .await
                {
                    Ok(n) => n.items,
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let Ok(machines) = capi::machine_api(&client, &ns)
                    .list(&ListParams::default())
                    .await
                else {
                    continue;
                };
                let kubelets = nodes
                    .into_iter()
                    .map(|n| {
                        let name = n.metadata.name.unwrap_or_default();
                        let version = n
                            .status
                            .and_then(|s| s.node_info)
                            .map(|i| i.kubelet_version);
                        (name, version)
                    })
                    .collect();
                let machines = machines
                    .items
                    .iter()
                    .filter_map(|m| {
                        let m = serde_json::to_value(m).ok()?;
                        let node = m["status"]["nodeRef"]["name"].as_str()?.to_string();
                        Some((node, m["spec"]["version"].as_str()?.to_string()))
                    })
                    .collect();
                let shot = Snapshot {
                    at: Instant::now(),
                    kubelets,
                    machines,
                };
                let mut all = shots.lock().unwrap();
                if all
                    .last()
                    .is_none_or(|l| (&l.kubelets, &l.machines) != (&shot.kubelets, &shot.machines))
                {
                    all.push(shot);
                }
            }
        });
        Self {
            snapshots,
            failed_reads,
            task,
        }
    }
}

/// The controller of a run: a process on this machine (the test control plane), or the Helm
/// release in the kind management cluster; stopped (killed, or uninstalled) on drop.
enum Running {
    Process { _controller: Controller },
    Chart { _release: crate::chart::Installed },
}

/// What one run measured.
#[derive(Debug)]
pub struct Report {
    /// Per hop (target version): control-plane and worker step durations.
    pub hops: Vec<(String, Duration, Duration)>,
    /// Per version of the chain: the node names that served it.
    pub nodes: Vec<(String, BTreeSet<String>)>,
    pub initial_cluster: Duration,
    pub upgrade: Duration,
}

/// The scenario. Panics (fails the test) on any deviation; returns the figures.
pub async fn upgrade_one_minor_at_a_time(backend: &Backend, prefix: &str) -> Report {
    let client = harness::client().await;
    project::install(&client).await;
    let rows = backend.rows();
    let mut ns: TestNamespace = harness::namespace(&client, prefix).await;
    let matrix_name = ns.to_string();
    ns.delete_matrix_with(&matrix_name);
    let last = rows.len() - 1;
    let matrix = json!({
        "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "OSSupportMatrix",
        "metadata": {"name": matrix_name},
        "spec": {"rows": rows.iter().enumerate().map(|(i, r)| {
            let mut row = json!({
                "distributionVersion": r.dv, "kubernetesVersion": r.k8s,
                "coreDNSImageTag": r.coredns, "etcdImageTag": r.etcd, "osImageVersion": r.image,
            });
            if i == last {
                row["upgradeableFrom"] = json!(["4.0", "4.1", "4.2", "4.3"]);
                row["compatibleKubernetes"] = json!({"min": "1.31", "max": "1.34"});
            }
            row
        }).collect::<Vec<_>>()},
    });
    testenv::apply(&client, &[matrix]).await.unwrap();

    let started = Instant::now();
    capi::create_all(&client, &ns, &backend.cluster_objects(&rows[0]))
        .await
        .unwrap();
    let timeout = backend.rollout_timeout();
    capi::wait_done("initial control plane", timeout, || {
        capi::kcp_rollout_pending(&client, &ns, KCP, &rows[0].k8s)
    })
    .await
    .unwrap();
    capi::wait_done(POOL, timeout, || {
        capi::md_rollout_pending(&client, &ns, POOL, &rows[0].k8s)
    })
    .await
    .unwrap();
    let initial_cluster = started.elapsed();
    eprintln!(
        "[{}] cluster {CLUSTER} at {} in {initial_cluster:?}",
        backend.name(),
        rows[0].k8s
    );

    // Cluster API v1.10 never creates the kube-apiserver's kubelet-client binding that kubeadm
    // from May 2026 relies on (controller/src/apply/kubelet_access.rs): the controller does.
    // (Listed, not read by name: CAPI's in-memory API server answers a missing object's read
    // with a body that is not a Status, so kube cannot tell that 404 from other errors.)
    let workload = workload_client(&client, &ns, CLUSTER).await.unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(workload);
    let kubelet_binding = async || {
        bindings
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|b| b.metadata.name.as_deref() == Some(kubelet_access::BINDING))
    };
    assert!(
        kubelet_binding().await.is_none(),
        "[{}] {} exists before the upgrade",
        backend.name(),
        kubelet_access::BINDING
    );

    // On real nodes kubeadm's addons run too, at the first row's versions.
    let real_nodes = matches!(backend, Backend::Docker(_));
    if real_nodes {
        let a = wait_addons(
            &client,
            &ns,
            &rows[0].k8s,
            &rows[0].coredns,
            Duration::from_secs(300),
        )
        .await;
        eprintln!("[{}] addons before the upgrade: {a:?}", backend.name());
    }

    let recorder = NodeRecorder::start(&client, &ns);
    let platform = Platform::start(&client, &ns, CLUSTER, &rows[0].dv, &rows[last].dv).await;
    ns.delete_with(&platform.namespace);
    let writes = engine::record_writes(&client, &ns);
    project::create_request(
        &client,
        &ns,
        "to-4-3",
        json!({"clusterName": CLUSTER, "targetVersion": "4.3", "matrixRef": matrix_name}),
    )
    .await;
    let controller = match backend {
        Backend::InMemory => Running::Process {
            _controller: Controller::start_with(&ns, &platform.controller_args()),
        },
        Backend::Docker(images) => Running::Chart {
            _release: crate::kind::install_controller(
                &client,
                &ns,
                &images.controller_image,
                &platform,
            )
            .await,
        },
    };
    let upgrade_started = Instant::now();
    // Two rollouts (control plane, workers) per hop.
    let rollouts = 2 * (rows.len() as u32 - 1);
    let ur = project::wait_request(&client, &ns, "to-4-3", timeout * rollouts, |ur| {
        ur.status.as_ref().is_some_and(|s| {
            matches!(s.phase, Some(Phase::Succeeded | Phase::Stalled))
                || s.plan.iter().any(|p| p.state == StepState::Failed)
        })
    })
    .await;
    let upgrade = upgrade_started.elapsed();
    let status = ur.status.clone().unwrap();
    if status.phase != Some(Phase::Succeeded) && matches!(backend, Backend::Docker(_)) {
        eprintln!(
            "the controller's pods:\n{}\nCluster API's:\n{}",
            crate::kind::pods_report(&client, &ns, "app.kubernetes.io/name=upgrade-controller")
                .await,
            crate::kind::pods_report(&client, crate::kind::CAPI_NAMESPACE, "app").await
        );
    }
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "the request: {:#?}",
        status
    );
    // The nodes of the last hop, read once more after the request finished.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(controller);
    let snapshots = recorder.snapshots.lock().unwrap().clone();
    let failed_reads = recorder.failed_reads.load(Ordering::Relaxed);
    drop(recorder);

    // KCP moves kube-proxy to each hop's version once its control plane has rolled. CoreDNS it
    // leaves alone: the controller writes the row's tag but annotates skip-coredns, since the
    // platform's providers reconcile CoreDNS themselves (DOMAIN.md §5; CAPD does not). After
    // the last hop: kube-proxy at the last row's version, CoreDNS still the first row's, every
    // pod of both Ready on the new nodes, and the KCP carrying the last row's tag.
    if real_nodes {
        let a = wait_addons(
            &client,
            &ns,
            &rows[last].k8s,
            &rows[0].coredns,
            Duration::from_secs(300),
        )
        .await;
        eprintln!("[{}] addons after the upgrade: {a:?}", backend.name());
        let kcp =
            serde_json::to_value(capi::kcp_api(&client, &ns).get(KCP).await.unwrap()).unwrap();
        assert_eq!(
            kcp["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]["dns"]["imageTag"],
            json!(rows[last].coredns),
            "[{}] the KubeadmControlPlane's CoreDNS tag",
            backend.name()
        );
        assert!(
            kcp["metadata"]["annotations"]
                .get(upgrade_controller::capi::SKIP_COREDNS_ANNOTATION)
                .is_some(),
            "[{}] the KubeadmControlPlane lacks {}",
            backend.name(),
            upgrade_controller::capi::SKIP_COREDNS_ANNOTATION
        );
    }

    let binding = kubelet_binding().await.unwrap_or_else(|| {
        panic!(
            "[{}] the controller did not create {}",
            backend.name(),
            kubelet_access::BINDING
        )
    });
    let want = kubelet_access::binding();
    assert_eq!(binding.role_ref, want.role_ref);
    assert_eq!(binding.subjects, want.subjects);

    // One control-plane step and one worker step per hop, in order.
    let hops = &rows[1..];
    assert_eq!(
        status.plan.len(),
        2 * hops.len(),
        "plan: {:#?}",
        status.plan
    );
    let mut report_hops = Vec::new();
    for (pair, row) in status.plan.chunks(2).zip(hops) {
        assert_eq!(
            (pair[0].kind, pair[1].kind),
            (PlanStepKind::ControlPlane, PlanStepKind::Workers)
        );
        for step in pair {
            assert_eq!(step.kubernetes_version, row.k8s);
            assert_eq!(step.os_image, row.image);
            assert_eq!(step.state, StepState::Succeeded);
        }
        let took = |s: &upgrade_controller::api::PlanStep| {
            let (started, finished) = (
                s.started_at.as_ref().unwrap(),
                s.finished_at.as_ref().unwrap(),
            );
            Duration::try_from(finished.0.duration_since(started.0)).unwrap_or_default()
        };
        report_hops.push((row.k8s.clone(), took(&pair[0]), took(&pair[1])));
    }
    let writes = writes.lock().unwrap().clone();
    crate::assert::writes_in_order(
        &writes,
        "KubeadmControlPlane",
        &rows.iter().map(|r| r.k8s.as_str()).collect::<Vec<_>>(),
    );

    // From the workload cluster's API: for each version of the chain, a moment when every
    // node ran it; each hop's nodes are all new; the moments come in the chain's order.
    let kubelets_report = real_nodes;
    let mut nodes: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut after = None;
    for row in &rows {
        let shot = snapshots
            .iter()
            .filter(|s| after.is_none_or(|t| s.at > t))
            .find(|s| s.kubelets.len() == 2 && uniform_version(s, kubelets_report).as_deref() == Some(&row.k8s))
            .unwrap_or_else(|| {
                panic!(
                    "[{}] no moment when both nodes ran {} (after the previous version's); {} snapshots, {failed_reads} failed reads: {snapshots:#?}",
                    backend.name(),
                    row.k8s,
                    snapshots.len()
                )
            });
        after = Some(shot.at);
        let names: BTreeSet<String> = shot.kubelets.keys().cloned().collect();
        if let Some((prev, prev_names)) = nodes.last() {
            assert!(
                names.is_disjoint(prev_names),
                "[{}] nodes {names:?} at {} include nodes of {prev}: {prev_names:?}",
                backend.name(),
                row.k8s
            );
        }
        nodes.push((row.k8s.clone(), names));
    }
    eprintln!(
        "[{}] nodes per version: {nodes:?}; {} snapshots, {failed_reads} failed reads",
        backend.name(),
        snapshots.len()
    );
    for (to, cp, workers) in &report_hops {
        eprintln!(
            "[{}] hop to {to}: control plane {cp:?}, workers {workers:?}",
            backend.name()
        );
    }
    eprintln!("[{}] upgrade 1.31 -> 1.34 took {upgrade:?}", backend.name());
    ns.finish(&client).await;
    Report {
        hops: report_hops,
        nodes,
        initial_cluster,
        upgrade,
    }
}
