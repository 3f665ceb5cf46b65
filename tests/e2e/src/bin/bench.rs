//! `make bench`: the controller at scale on the test control plane. One controller (as the
//! chart's ServiceAccount, all namespaces) and, over 50 namespaces, 1,000 UpgradeRequests
//! backed by static DCS clusters (5 Machines each, 5,000 in all) in mixed phases — 40 %
//! Succeeded (already at the target), 30 % waiting for the two-step review, 30 % blocked by
//! preflight (a node not Ready) — plus, one at a time, clusters really upgrading 4.0 → 4.3 with
//! this program playing CAPI's rollouts. It prints one table:
//!
//! - controller RSS (VmRSS, and the peak VmHWM);
//! - API requests per second from the controller after its caches synced, by verb, counted by
//!   the API server (its audit log records every request of the benchmark's ServiceAccount);
//! - reconciles caused by one Machine update;
//! - reconcile duration p50/p99 from the controller's own `/metrics`, where it has them;
//! - gate-true → next write for the upgrading clusters, p50/p99.
//!
//! ```sh
//! make bench                                   # or: cargo run --release -p e2e --bin bench -- --help
//! UC_CONTROLLER_BIN=/path/to/older/upgrade-controller make bench   # the same, for another build
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::dcs::{self, StaticDcsCluster};
use e2e::project::{self, Controller};
use e2e::{capi, chart, cvo, testenv};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use upgrade_controller::api::{Phase, UpgradeRequest};

const PLATFORM_NS: &str = "uc-bench-platform";
const MATRIX: &str = "uc-bench";

struct Args {
    requests: usize,
    namespaces: usize,
    upgrades: usize,
    steady_seconds: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        requests: 1000,
        namespaces: 50,
        upgrades: 4,
        steady_seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |what: &str| -> Result<u64> {
            let v = it.next().with_context(|| format!("{what} needs a value"))?;
            v.parse()
                .with_context(|| format!("{what} {v:?} is not a number"))
        };
        match flag.as_str() {
            "--requests" => args.requests = num("--requests")? as usize,
            "--namespaces" => args.namespaces = num("--namespaces")? as usize,
            "--upgrades" => args.upgrades = num("--upgrades")? as usize,
            "--steady-seconds" => args.steady_seconds = num("--steady-seconds")?,
            "-h" | "--help" => {
                println!(
                    "usage: bench [--requests 1000] [--namespaces 50] [--upgrades 4] [--steady-seconds 60]\n\
                     Runs on the test control plane (started if needed); UC_CONTROLLER_BIN picks the controller build."
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    if args.namespaces == 0 || args.requests < args.namespaces {
        bail!("--requests must be at least --namespaces (and that at least 1)");
    }
    Ok(args)
}

/// What a fixed request is left doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Succeeded,
    Waiting,
    Blocked,
}

impl Kind {
    fn of(i: usize) -> Kind {
        match i % 10 {
            0..=3 => Kind::Succeeded,
            4..=6 => Kind::Waiting,
            _ => Kind::Blocked,
        }
    }
    fn phase(self) -> Phase {
        match self {
            Kind::Succeeded => Phase::Succeeded,
            Kind::Waiting => Phase::AwaitingAcknowledgement,
            Kind::Blocked => Phase::Preflight,
        }
    }
    /// (Distribution Version, Kubernetes, CoreDNS tag, etcd tag) the cluster runs.
    fn row(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::Succeeded => ("4.3.2", "v1.34.5-3", "1.14.2-v4.3.11", "v3.5.28-260625"),
            Kind::Waiting | Kind::Blocked => {
                ("4.2.5", "v1.33.7-4", "1.14.3-v4.2.11", "v3.5.28-260421")
            }
        }
    }
}

fn namespace(args: &Args, i: usize) -> String {
    format!("uc-bench-{:02}", i % args.namespaces)
}

async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await?;
    }
    Ok(())
}

fn static_cluster(name: &str, ns: &str, row: (&str, &str, &str, &str)) -> StaticDcsCluster {
    StaticDcsCluster {
        cp_version: row.1.into(),
        vm_template: format!("bench-{}", row.0),
        coredns_tag: row.2.into(),
        etcd_tag: row.3.into(),
        cp_replicas: 3,
        pools: vec![("md-a".into(), 2)],
        ip_pool_spare: 1,
        // Not Kube-OVN: the clusters share one workload API server (this control plane), so
        // they would share one `cni-kube-ovn` AppRelease; the Kube-OVN step has its own e2e.
        network_type: "calico".into(),
        ..StaticDcsCluster::new(name, ns)
    }
}

fn request(name: &str, cluster: &str, acknowledge: bool) -> Result<UpgradeRequest> {
    let all: Vec<&str> = if acknowledge { vec!["*"] } else { vec![] };
    Ok(serde_json::from_value(json!({
        "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": name},
        "spec": {"clusterName": cluster, "targetVersion": "4.3", "matrixRef": MATRIX,
                 "acknowledgements": {"modifications": all.clone(), "impacts": all}},
    }))?)
}

/// The audit entries of the benchmark's ServiceAccount between two `stageTimestamp`s.
fn controller_requests(from: &str, to: &str) -> Vec<e2e::audit::Entry> {
    e2e::audit::entries()
        .into_iter()
        .filter(|e| e.by_controller() && e.at.as_str() >= from && e.at.as_str() < to)
        .collect()
}

/// Now as an audit-log timestamp (RFC 3339, microseconds, UTC).
fn audit_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Reconcile durations from the controller's `/metrics` histogram, when it serves one.
async fn reconcile_quantiles(metrics_url: Option<&str>) -> Option<(f64, f64, f64)> {
    let url = metrics_url?;
    let body = project::http_get(url).await?;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut count = 0.0;
    for line in body.lines() {
        if let Some(rest) =
            line.strip_prefix("upgrade_controller_reconcile_duration_seconds_bucket{")
        {
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((le, v));
        }
        if line.starts_with("upgrade_controller_reconcile_duration_seconds_count") {
            count = line.rsplit(' ').next()?.parse().ok()?;
        }
    }
    if count == 0.0 {
        return None;
    }
    let q = |p: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= p * count)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    Some((q(0.5), q(0.99), count))
}

/// Every spec.version change of KCPs and MDs in `ns`: (when seen, kind/name, version).
type Writes = Arc<Mutex<Vec<(Instant, String, String)>>>;

fn watch_writes(client: &kube::Client, ns: &str) -> Writes {
    let writes: Writes = Arc::default();
    for (kind, api, path) in [
        (
            "KubeadmControlPlane",
            capi::kcp_api(client, ns),
            "/spec/version",
        ),
        (
            "MachineDeployment",
            capi::md_api(client, ns),
            "/spec/template/spec/version",
        ),
    ] {
        let writes = writes.clone();
        tokio::spawn(async move {
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(o)) = stream.try_next().await {
                let v = serde_json::to_value(&o).unwrap_or_default();
                let name = format!("{kind}/{}", o.metadata.name.clone().unwrap_or_default());
                let version = v
                    .pointer(path)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if last
                    .insert(name.clone(), version.clone())
                    .is_some_and(|old| old != version)
                {
                    writes.lock().unwrap().push((Instant::now(), name, version));
                }
            }
        });
    }
    writes
}

/// When `who` was first seen declaring `version` (waits for it).
async fn written(writes: &Writes, who: &str, version: &str, timeout: Duration) -> Result<Instant> {
    let start = Instant::now();
    loop {
        if let Some(t) = writes
            .lock()
            .unwrap()
            .iter()
            .find(|(_, n, v)| n == who && v == version)
            .map(|(t, _, _)| *t)
        {
            return Ok(t);
        }
        if start.elapsed() > timeout {
            bail!("timed out waiting for {who} at {version}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The DCS provider's AppRelease (ProviderReady) installed at `version`. The pairing rule
/// (DOMAIN.md §4: images of ACP >= 4.3.2 need provider >= v1.0.21, and the reverse) wants
/// v1.0.20 for hops to 4.1.6 and 4.2.5 and v1.0.22 for 4.3.2, as an operator would upgrade it.
async fn set_provider(client: &kube::Client, version: &str) -> Result<()> {
    let api = e2e::kube_ovn::api(client, PLATFORM_NS);
    let name = "cluster-api-provider-dcs";
    if api.get_opt(name).await?.is_some() {
        api.delete(name, &Default::default()).await?;
        while api.get_opt(name).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    e2e::kube_ovn::create_with_status(
        client,
        PLATFORM_NS,
        e2e::kube_ovn::provider_release(PLATFORM_NS, version),
    )
    .await;
    Ok(())
}

/// One cluster upgrading 4.0.11 → 4.3.2 (three hops), this program playing CAPI's rollouts.
/// Returns the gate-true → next-write latencies: the control plane done → the pool's write,
/// and the pool done → the next hop's control-plane write.
async fn upgrade_one(
    client: &kube::Client,
    cluster: &StaticDcsCluster,
    name: &str,
) -> Result<Vec<Duration>> {
    let ns = &cluster.namespace;
    let writes = watch_writes(client, ns);
    set_provider(client, "v1.0.20").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Api::<UpgradeRequest>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &request(name, &cluster.name, true)?)
        .await?;
    let kcp = format!("KubeadmControlPlane/{}", cluster.kcp_name());
    let md = format!("MachineDeployment/{}", cluster.md_name("md-a"));
    let hops = ["v1.32.11-2", "v1.33.7-4", "v1.34.5-3"];
    let mut latencies = Vec::new();
    written(&writes, &kcp, hops[0], Duration::from_secs(300)).await?;
    for (i, version) in hops.iter().enumerate() {
        cluster.roll_out(client).await?;
        let gate = Instant::now();
        let next = written(&writes, &md, version, Duration::from_secs(120)).await?;
        latencies.push(next.saturating_duration_since(gate));
        if i == 1 {
            // Before the hop to 4.3.2's images.
            set_provider(client, "v1.0.22").await?;
        }
        cluster.roll_out(client).await?;
        let gate = Instant::now();
        if let Some(next_version) = hops.get(i + 1) {
            let next = written(&writes, &kcp, next_version, Duration::from_secs(120)).await?;
            latencies.push(next.saturating_duration_since(gate));
        }
    }
    let api = Api::<UpgradeRequest>::namespaced(client.clone(), ns);
    let start = Instant::now();
    while api.get(name).await?.status.and_then(|s| s.phase) != Some(Phase::Succeeded) {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{ns}/{name} did not succeed");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(latencies)
}

/// Whether the controller binary has a flag (older builds lack the newer ones).
#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let t0 = Instant::now();
    let cfg = testenv::Config::from_env()?;
    let env = tokio::task::spawn_blocking(move || testenv::up(&cfg)).await??;
    let client = testenv::client_from(&env.kubeconfig).await?;
    project::install(&client).await;
    dcs::install_crds(&client).await?;

    // The controller's identity: the chart's ClusterRole, bound to the audited ServiceAccount.
    let (sa_ns, sa_name) = testenv::BENCH_SERVICE_ACCOUNT;
    ensure_namespace(&client, sa_ns).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), sa_ns);
    if sas.get_opt(sa_name).await?.is_none() {
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": sa_name}}))?,
        )
        .await?;
    }
    let rbac: Vec<Value> = chart::render("uc-bench", sa_ns, &[])
        .into_iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
        .map(|mut d| {
            if d["kind"] == "ClusterRoleBinding" {
                d["subjects"] =
                    json!([{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}]);
            }
            d
        })
        .collect();
    testenv::apply(&client, &rbac).await?;
    let kubeconfig = chart::service_account_kubeconfig(&client, sa_ns, sa_name).await;

    // The platform: the global cluster at 4.3.2, a shadow per cluster, one stand-in CVO.
    cvo::ensure_namespace(&client, PLATFORM_NS).await?;
    cvo::set_control_in(&client, PLATFORM_NS, "stage-seconds", Some("1")).await?;
    let _ = cvo::create_cvsh_in(&client, PLATFORM_NS, "global", "4.3.2").await;
    let mut matrix = project::sample_matrix();
    matrix["metadata"] = json!({"name": MATRIX});
    for row in matrix["spec"]["rows"].as_array_mut().unwrap() {
        let dv = row["distributionVersion"].as_str().unwrap().to_string();
        row["images"] = json!({"dcs": format!("bench-{dv}")});
    }
    testenv::apply(&client, &[matrix]).await?;
    dcs::stage_images(&client, &["bench-4.1.6", "bench-4.2.5", "bench-4.3.2"]).await?;
    // The DCS provider installed (ProviderReady) at a release that pairs with 4.3.2's images,
    // the only hop the requests make (4.2.5 -> 4.3.2).
    set_provider(&client, "v1.0.22").await?;
    // A modification of the (shared) workload cluster: requests that do not acknowledge it wait.
    let rp = Api::<kube::api::DynamicObject>::all_with(
        client.clone(),
        &upgrade_controller::platform::resource_patch_resource(),
    );
    let _ = rp
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "operator.alauda.io/v1alpha1", "kind": "ResourcePatch",
                "metadata": {"name": "uc-bench-rp"},
                "spec": {"jsonPatch": [{"op": "replace", "path": "/spec/replicas", "value": 3}]},
            }))?,
        )
        .await;

    // The clusters and their requests.
    eprintln!(
        "bench: creating {} static clusters over {} namespaces",
        args.requests, args.namespaces
    );
    for n in 0..args.namespaces {
        ensure_namespace(&client, &namespace(&args, n)).await?;
    }
    let fixed = args.requests - 1;
    let created = Instant::now();
    let results: Vec<Result<()>> = stream::iter(0..fixed)
        .map(|i| {
            let client = client.clone();
            let ns = namespace(&args, i);
            async move {
                let kind = Kind::of(i);
                let name = format!("c-{i:04}");
                let cluster = static_cluster(&name, &ns, kind.row());
                let shadow = format!("{ns}.{name}");
                if cluster_exists(&client, &ns, &name).await? {
                    return Ok(());
                }
                cluster.create(&client).await?;
                let _ = cvo::create_cvsh_in(&client, PLATFORM_NS, &shadow, kind.row().0).await;
                if kind == Kind::Blocked {
                    dcs::set_node_ready(&client, &ns, &cluster.cp_machine_names()[0], false)
                        .await?;
                }
                Api::<UpgradeRequest>::namespaced(client.clone(), &ns)
                    .create(
                        &PostParams::default(),
                        &request(&name, &name, kind != Kind::Waiting)?,
                    )
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let mut upgraders = Vec::new();
    for k in 0..args.upgrades {
        let ns = namespace(&args, k);
        let name = format!("up-{k}");
        let cluster = static_cluster(
            &name,
            &ns,
            ("4.0.11", "v1.31.14-2", "1.12.4-v4.0.20", "v3.5.25-251215"),
        );
        if !cluster_exists(&client, &ns, &name).await? {
            cluster.create(&client).await?;
            let _ =
                cvo::create_cvsh_in(&client, PLATFORM_NS, &format!("{ns}.{name}"), "4.0.11").await;
        }
        upgraders.push(cluster);
    }
    eprintln!("bench: fixtures ready in {:?}", created.elapsed());
    let _cvo = cvo::StandInCvo::start_with(PLATFORM_NS, &["--poll-ms", "3000"]);

    // The controller, as the Deployment runs it (metrics, where the build serves them, on a
    // free loopback port the harness reads back from its log).
    let run_args: Vec<String> = vec![
        "run".into(),
        "--log-format=json".into(),
        format!("--cvsh-namespace={PLATFORM_NS}"),
        "--cvsh-mapping=namespaced-name".into(),
    ];
    let started = Instant::now();
    let controller = Controller::start_as("bench", &kubeconfig, &run_args);
    let pid = controller.pid();
    let metrics_url = if project::controller_supports("--metrics-bind-address") {
        Some(controller.metrics_url().await)
    } else {
        None
    };

    // Steady state: every fixed request in its phase.
    let requests: Api<UpgradeRequest> = Api::all(client.clone());
    loop {
        let list = requests.list(&ListParams::default()).await?;
        let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
        let mut settled = 0;
        for ur in &list.items {
            let name = ur.metadata.name.clone().unwrap_or_default();
            let Some(i) = name
                .strip_prefix("c-")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let phase = ur.status.as_ref().and_then(|s| s.phase);
            *by_phase.entry(format!("{phase:?}")).or_default() += 1;
            if phase == Some(Kind::of(i).phase()) {
                settled += 1;
            }
        }
        if settled == fixed {
            eprintln!(
                "bench: all {fixed} requests settled {:?} after start: {by_phase:?}",
                started.elapsed()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("not settled after 30 min: {by_phase:?}");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let settled_after = started.elapsed();
    // Let the initial wave of requeues pass before measuring.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let from = audit_now();
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let to = audit_now();
    let steady = controller_requests(&from, &to);
    let mut by_verb: BTreeMap<String, usize> = BTreeMap::new();
    for e in &steady {
        *by_verb.entry(e.verb.clone()).or_default() += 1;
    }
    let non_watch = steady.iter().filter(|e| e.verb != "watch").count();
    let lists = steady.iter().filter(|e| e.verb == "list").count();

    // One Machine update in a namespace of waiting requests.
    let probe = (0..fixed).find(|i| Kind::of(*i) == Kind::Waiting).unwrap();
    let (probe_ns, probe_cluster) = (namespace(&args, probe), format!("c-{probe:04}"));
    let machine = static_cluster(&probe_cluster, &probe_ns, Kind::Waiting.row()).cp_machine_names()
        [0]
    .clone();
    let in_ns_gets = |from: &str, to: &str| {
        controller_requests(from, to)
            .into_iter()
            .filter(|e| {
                e.resource == "upgraderequests" && e.namespace == probe_ns && e.verb == "get"
            })
            .count()
    };
    let reconciles_at_quiet_start = reconciles_in(metrics_url.as_deref(), &probe_ns).await;
    let quiet_from = audit_now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let quiet_to = audit_now();
    let baseline = in_ns_gets(&quiet_from, &quiet_to);
    let reconciles_at_quiet_end = reconciles_in(metrics_url.as_deref(), &probe_ns).await;
    let reconciles_quiet = match (reconciles_at_quiet_start, &reconciles_at_quiet_end) {
        (Some(a), Some(b)) => Some(diff(&a, b)),
        _ => None,
    };
    let touch_from = audit_now();
    capi::machine_api(&client, &probe_ns)
        .patch(
            &machine,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"uc-bench/touched": "1"}}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let touch_to = audit_now();
    let after_touch = in_ns_gets(&touch_from, &touch_to);
    let reconciles_touch = match (
        reconciles_at_quiet_end,
        reconciles_in(metrics_url.as_deref(), &probe_ns).await,
    ) {
        (Some(a), Some(b)) => Some(diff(&a, &b)),
        _ => None,
    };

    // The upgrades, one at a time, with the others present.
    let mut latencies = Vec::new();
    for (k, cluster) in upgraders.iter().enumerate() {
        let l = upgrade_one(&client, cluster, &format!("up-{k}")).await?;
        eprintln!("bench: upgrade {k}: gate → next write {l:?}");
        latencies.extend(l);
    }
    let (rss, hwm) = rss_kib(pid);
    let quantiles = reconcile_quantiles(metrics_url.as_deref()).await;
    let mut lat: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64()).collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());

    let window = args.steady_seconds as f64;
    println!("\n| figure | value |\n|---|---|");
    println!(
        "| controller build | {} |",
        std::env::var("UC_CONTROLLER_BIN").unwrap_or_else(|_| "this workspace".into())
    );
    println!(
        "| UpgradeRequests / namespaces / Machines | {} / {} / {} |",
        fixed + args.upgrades,
        args.namespaces,
        (fixed + args.upgrades) * 5
    );
    println!(
        "| all requests settled after start | {:.0} s |",
        settled_after.as_secs_f64()
    );
    println!(
        "| controller RSS (peak) | {:.1} MiB ({:.1} MiB) |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "| API requests/s after sync ({window:.0} s window, watches excluded) | {:.2} |",
        non_watch as f64 / window
    );
    println!("| ... by verb | {by_verb:?} |");
    println!("| LISTs in the window | {lists} |");
    match (reconciles_quiet, reconciles_touch) {
        (Some(quiet), Some(touch)) => {
            let sum = |m: &BTreeMap<String, f64>| m.values().sum::<f64>();
            println!(
                "| reconciles in the touched Machine's namespace ({} requests), 10 s after one Machine update / a quiet 10 s before (controller's per-request counter) | {:.0} / {:.0}; of the touched cluster's request: {:.0} |",
                args.requests / args.namespaces,
                sum(&touch),
                sum(&quiet),
                touch.get(&probe_cluster).copied().unwrap_or(0.0)
            );
            eprintln!("bench: reconciles after the touch, by request: {touch:?}");
        }
        _ => println!(
            "| reconciles caused by one Machine update (request GETs in its namespace, 10 s, minus a quiet 10 s) | {} ({} − {baseline}) |",
            after_touch.saturating_sub(baseline),
            after_touch
        ),
    }
    match quantiles {
        Some((p50, p99, n)) => println!(
            "| reconcile duration p50 / p99 (controller's histogram, {n:.0} reconciles) | ≤ {p50} s / ≤ {p99} s |"
        ),
        None => println!(
            "| reconcile duration p50 / p99 | not measured: this build serves no reconcile histogram |"
        ),
    }
    println!(
        "| gate-true → next write, {} transitions, p50 / p99 | {:.3} s / {:.3} s |",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!("| whole benchmark | {:.0} s |", t0.elapsed().as_secs_f64());
    drop(controller);
    Ok(())
}

/// `upgrade_controller_reconciles_total` of every request in namespace `ns`, by request name.
async fn reconciles_in(metrics_url: Option<&str>, ns: &str) -> Option<BTreeMap<String, f64>> {
    let body = project::http_get(metrics_url?).await?;
    let mut out = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("upgrade_controller_reconciles_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ")?;
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        if label("namespace").as_deref() == Some(ns) {
            out.insert(label("name")?, value.trim().parse().ok()?);
        }
    }
    Some(out)
}

/// Per-request increase from `a` to `b` (requests without one left out).
fn diff(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

async fn cluster_exists(client: &kube::Client, ns: &str, name: &str) -> Result<bool> {
    Ok(capi::api(client, ns, capi::CLUSTER_V1BETA1, "Cluster")
        .get_opt(name)
        .await?
        .is_some())
}
