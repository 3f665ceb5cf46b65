//! `upgrade-controller`: `run` the controller, or preview a `plan`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use upgrade_controller::api::{OSSupportMatrix, UpgradeRequestSpec, WorkerStrategy};
use upgrade_controller::driver::{self, RunOptions};
use upgrade_controller::observe::inputs::Standby;
use upgrade_controller::observe::{self, Observed};
use upgrade_controller::platform::{CvshConfig, CvshMapping};
use upgrade_controller::preview;

#[derive(Parser)]
#[command(
    version,
    about = "Upgrades CAPI clusters on immutable infrastructure one Kubernetes minor at a time"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value = "compact", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Compact,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster of the current kubeconfig (or in-cluster config).
    Run {
        /// Only handle UpgradeRequests (and watch CAPI objects) in this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// CAPI API version to read and write: v1beta1 (CAPI ≤ v1.10, the platform's) or
        /// v1beta2 (CAPI ≥ v1.11).
        #[arg(long, value_enum, default_value = "v1beta1")]
        capi_api_version: CapiApiVersion,
        /// Requests reconciled at the same time (1–64).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Address of `/metrics`, `/healthz` and `/readyz` (`host:port`; port 0 picks a free
        /// one, logged at start; `0` alone turns them off).
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_bind_address: String,
        /// Address of the validating webhook (`/validate`, HTTPS; `host:port`, `0` turns it
        /// off): refuses a MachineDeployment newer than its control plane, and a version
        /// whose machine template lacks that minor's matrix image (README "Admission").
        #[arg(long, default_value = "0")]
        webhook_bind_address: String,
        /// Directory holding the webhook's `tls.crt` and `tls.key` (a mounted
        /// `kubernetes.io/tls` Secret); files that change are read again.
        #[arg(long, default_value = "/tmp/k8s-webhook-server/serving-certs")]
        webhook_cert_dir: std::path::PathBuf,
        #[command(flatten)]
        platform: PlatformArgs,
        /// Namespaces besides a request's own where the Flux Kustomizations and Argo CD
        /// Applications that apply its cluster may be read (comma-separated). A marker on a
        /// tenant's object naming a rule set elsewhere is not followed.
        #[arg(long, value_delimiter = ',', default_value = "flux-system,argocd")]
        gitops_namespaces: Vec<String>,
        /// Argo CD's own namespace: where an Application named by a tracking id without a
        /// namespace lives.
        #[arg(long, default_value = "argocd")]
        argocd_namespace: String,
        #[command(flatten)]
        election: ElectionArgs,
        /// Handle only the requests of Clusters with these labels (a label selector such as
        /// `upgrade.cpaas.io/shard=a`), as one shard of several controllers, each with its own
        /// Lease (`--leader-election-lease`). README "Sharding".
        #[arg(long)]
        shard_selector: Option<String>,
    },
    /// Print the hop table for a cluster without changing anything.
    Plan(PlanArgs),
    /// Show one UpgradeRequest: summary with the time left, preflight, steps, and the running
    /// step's Machines not yet updated.
    Status(StatusArgs),
}

/// Where the platform's Cluster Version Operator keeps its ClusterVersionShadows.
#[derive(clap::Args)]
struct PlatformArgs {
    /// API group/version of ClusterVersionShadow (the platform does not publish it; check with
    /// `kubectl api-resources | grep -i clusterversionshadow`).
    #[arg(long, default_value = upgrade_controller::platform::DEFAULT_CVSH_API_VERSION)]
    cvsh_api_version: String,
    /// Namespace of the ClusterVersionShadows (one per cluster, named after it).
    #[arg(long, default_value = upgrade_controller::platform::DEFAULT_CVSH_NAMESPACE)]
    cvsh_namespace: String,
    /// Name of the global cluster's own ClusterVersionShadow.
    #[arg(long, default_value = "global")]
    global_cluster: String,
    /// How a CAPI Cluster maps to its ClusterVersionShadow: `name` (the platform's
    /// convention: only Clusters in the cvsh namespace, shadow named after the Cluster) or
    /// `namespaced-name` (also Clusters of other namespaces, shadow `<namespace>.<cluster>`).
    #[arg(long, value_enum, default_value = "name")]
    cvsh_mapping: CvshMappingArg,
    /// Kubeconfig of the DR standby global cluster; when set, its ClusterVersionShadow must
    /// also be at the target before a workload cluster moves.
    #[arg(long)]
    global_standby_kubeconfig: Option<PathBuf>,
    /// Namespace of the Kube-OVN AppRelease (`cni-kube-ovn`) on the clusters being upgraded.
    /// The provider's own AppRelease is read from `--cvsh-namespace` of the management
    /// cluster.
    #[arg(long, default_value = upgrade_controller::decide::kube_ovn::RELEASE_NAMESPACE)]
    kube_ovn_namespace: String,
}

/// Which replica reconciles: the holder of a Lease.
#[derive(clap::Args)]
struct ElectionArgs {
    /// Reconcile only while holding the leader Lease (run two replicas or more); the others
    /// watch, serve the webhook and stand by.
    #[arg(long)]
    leader_elect: bool,
    /// Name of the Lease (one per shard).
    #[arg(long, default_value = "upgrade-controller")]
    leader_election_lease: String,
    /// Namespace of the Lease (default: `POD_NAMESPACE`, else the ServiceAccount's namespace).
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// Seconds the Lease stays valid after its last renewal: at most this long after the
    /// leader dies, a standby takes over.
    #[arg(long, default_value_t = 15)]
    leader_election_lease_duration: u64,
    /// Seconds before expiry the leader renews (and the most it keeps retrying a failed
    /// renewal before it stops leading).
    #[arg(long, default_value_t = 5)]
    leader_election_renew_before: u64,
}

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// This replica's name: the pod's (`POD_NAME`, from the chart's downward API); outside a pod,
/// the host's and the process id.
fn instance_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("{host}-{}", std::process::id())
        })
}

impl ElectionArgs {
    fn lease(
        &self,
        identity: &str,
    ) -> anyhow::Result<Option<upgrade_controller::leader::LeaseOptions>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let namespace = match &self.leader_election_namespace {
            Some(ns) => ns.clone(),
            None => std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
                .or_else(|| {
                    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                        .ok()
                        .map(|n| n.trim().to_string())
                })
                .context(
                    "--leader-elect: pass --leader-election-namespace (no POD_NAMESPACE, no ServiceAccount namespace file)",
                )?,
        };
        let identity = identity.to_string();
        let opts = upgrade_controller::leader::LeaseOptions {
            name: self.leader_election_lease.clone(),
            namespace,
            identity,
            duration: std::time::Duration::from_secs(self.leader_election_lease_duration),
            renew_before: std::time::Duration::from_secs(self.leader_election_renew_before),
        };
        opts.validate().map_err(anyhow::Error::msg)?;
        Ok(Some(opts))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum CvshMappingArg {
    Name,
    NamespacedName,
}

impl From<CvshMappingArg> for CvshMapping {
    fn from(v: CvshMappingArg) -> Self {
        match v {
            CvshMappingArg::Name => CvshMapping::Name,
            CvshMappingArg::NamespacedName => CvshMapping::NamespacedName,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum CapiApiVersion {
    V1beta1,
    V1beta2,
}

impl From<CapiApiVersion> for upgrade_controller::capi::ApiVersion {
    fn from(v: CapiApiVersion) -> Self {
        match v {
            CapiApiVersion::V1beta1 => Self::V1beta1,
            CapiApiVersion::V1beta2 => Self::V1beta2,
        }
    }
}

#[derive(clap::Args)]
struct PlanArgs {
    /// Target Distribution Version (`4.3` or `4.3.1`).
    #[arg(long)]
    target: String,
    /// Cluster name (live mode).
    #[arg(long, required_unless_present = "objects")]
    cluster: Option<String>,
    /// Namespace of the cluster (live mode).
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// OSSupportMatrix name (live mode) ...
    #[arg(long, default_value = "default")]
    matrix: String,
    /// ... or a YAML file holding an OSSupportMatrix (file mode, or to override live mode).
    #[arg(long)]
    matrix_file: Option<PathBuf>,
    /// YAML file with the cluster's KubeadmControlPlane and MachineDeployments (file mode).
    #[arg(long, requires = "matrix_file")]
    objects: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "every-hop")]
    strategy: Strategy,
    /// YAML file with an UpgradeRequest whose spec.maintenanceWindow, timeouts and
    /// maxConcurrentPools place the steps in maintenance windows (worst case, by the timeouts).
    #[arg(long)]
    request_file: Option<PathBuf>,
    /// Where the window placement starts (RFC 3339; default now).
    #[arg(long)]
    from: Option<k8s_openapi::jiff::Timestamp>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The UpgradeRequest's name.
    name: String,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// CAPI API version the Machines are read at.
    #[arg(long, value_enum, default_value = "v1beta1")]
    capi_api_version: CapiApiVersion,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
enum Strategy {
    EveryHop,
    SkipLevel,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn read_yaml_docs(path: &PathBuf) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde::Deserialize;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc)
            .with_context(|| format!("parsing {}", path.display()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

async fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let matrix_from_file = match &args.matrix_file {
        Some(path) => {
            let doc = read_yaml_docs(path)?
                .into_iter()
                .find(|d| d["kind"] == "OSSupportMatrix")
                .with_context(|| format!("no OSSupportMatrix in {}", path.display()))?;
            Some(serde_json::from_value::<OSSupportMatrix>(doc)?)
        }
        None => None,
    };
    let obs = match &args.objects {
        Some(path) => {
            let docs = read_yaml_docs(path)?;
            let mut obs = Observed {
                cluster: docs
                    .iter()
                    .find(|d| d["kind"] == "Cluster")
                    .map(|d| serde_json::from_value(d.clone()))
                    .transpose()
                    .context("reading the Cluster")?,
                kcp: docs
                    .iter()
                    .find(|d| d["kind"] == "KubeadmControlPlane")
                    .map(|d| serde_json::from_value(d.clone()))
                    .transpose()
                    .context("reading the KubeadmControlPlane")?,
                mds: docs
                    .iter()
                    .filter(|d| d["kind"] == "MachineDeployment")
                    .map(|d| serde_json::from_value(d.clone()))
                    .collect::<Result<_, _>>()
                    .context("reading the MachineDeployments")?,
                matrix: matrix_from_file.clone(),
                ..Observed::default()
            };
            obs.network = observe::network::from_objects(&obs, &docs);
            obs
        }
        None => {
            let client = kube::Client::try_default().await?;
            let spec: UpgradeRequestSpec = serde_json::from_value(serde_json::json!({
                "clusterName": args.cluster.clone().unwrap_or_default(),
                "targetVersion": args.target,
                "matrixRef": args.matrix,
            }))?;
            let mut ur = upgrade_controller::api::UpgradeRequest::new("preview", spec);
            ur.metadata.namespace = Some(args.namespace.clone());
            let cvsh = upgrade_controller::platform::CvshConfig::new(
                upgrade_controller::platform::DEFAULT_CVSH_API_VERSION,
                upgrade_controller::platform::DEFAULT_CVSH_NAMESPACE,
                "global",
                CvshMapping::Name,
            )
            .map_err(anyhow::Error::msg)?;
            let mut obs = observe::snapshot(&client, &ur, Default::default(), &cvsh).await?;
            if obs.cluster.is_none() {
                anyhow::bail!(
                    "Cluster {}/{} not found",
                    args.namespace,
                    args.cluster.unwrap_or_default()
                );
            }
            if matrix_from_file.is_some() {
                obs.matrix = matrix_from_file.clone();
            }
            obs
        }
    };
    let matrix = obs
        .matrix
        .clone()
        .with_context(|| format!("OSSupportMatrix {:?} not found", args.matrix))?;
    let strategy = match args.strategy {
        Strategy::EveryHop => WorkerStrategy::EveryHop,
        Strategy::SkipLevel => WorkerStrategy::SkipLevel,
    };
    let mut steps = preview::preview(&obs, &matrix.spec.rows, &args.target, strategy)?;
    if let Some(path) = &args.request_file {
        let doc = read_yaml_docs(path)?
            .into_iter()
            .find(|d| d["kind"] == "UpgradeRequest")
            .with_context(|| format!("no UpgradeRequest in {}", path.display()))?;
        let spec: UpgradeRequestSpec = serde_json::from_value(doc["spec"].clone())
            .with_context(|| format!("reading the UpgradeRequest in {}", path.display()))?;
        let from = args.from.unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
        preview::schedule(&mut steps, &spec, from)?;
    }
    match args.output {
        Output::Table => print!("{}", preview::table(&steps)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&steps)?),
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    use kube::api::{Api, DynamicObject, ListParams};
    use upgrade_controller::api::UpgradeRequest;
    let client = kube::Client::try_default().await?;
    let ur = Api::<UpgradeRequest>::namespaced(client.clone(), &args.namespace)
        .get(&args.name)
        .await
        .with_context(|| format!("reading UpgradeRequest {}/{}", args.namespace, args.name))?;
    let version: upgrade_controller::capi::ApiVersion = args.capi_api_version.into();
    let machines =
        Api::<DynamicObject>::namespaced_with(client, &args.namespace, &version.machine())
            .list(&ListParams::default().labels(&format!(
                "{}={}",
                upgrade_controller::capi::CLUSTER_NAME_LABEL,
                ur.spec.cluster_name
            )))
            .await
            .context("listing the Cluster's Machines")?
            .items
            .into_iter()
            .map(|m| serde_json::from_value(serde_json::to_value(m)?))
            .collect::<Result<Vec<upgrade_controller::capi::Machine>, _>>()?;
    let r = upgrade_controller::report::report(&ur, &machines, k8s_openapi::jiff::Timestamp::now());
    match args.output {
        Output::Table => print!("{}", upgrade_controller::report::text(&r)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Compact => builder.compact().init(),
        LogFormat::Json => builder.json().init(),
    }
    match cli.command {
        Command::Run {
            namespace,
            capi_api_version,
            concurrency,
            metrics_bind_address,
            webhook_bind_address,
            webhook_cert_dir,
            platform,
            gitops_namespaces,
            argocd_namespace,
            election,
            shard_selector,
        } => {
            let identity = instance_identity();
            let leader = election.lease(&identity)?;
            let shard_selector = shard_selector.filter(|s| !s.trim().is_empty());
            let metrics_addr = match metrics_bind_address.as_str() {
                "0" => None,
                addr => Some(addr.parse().with_context(|| {
                    format!(
                        "--metrics-bind-address {addr:?}: want host:port such as 0.0.0.0:8080, or 0"
                    )
                })?),
            };
            let webhook = match webhook_bind_address.as_str() {
                "0" => None,
                addr => Some((
                    addr.parse().with_context(|| {
                        format!(
                            "--webhook-bind-address {addr:?}: want host:port such as 0.0.0.0:9443, or 0"
                        )
                    })?,
                    webhook_cert_dir,
                )),
            };
            let mut config = kube::Config::infer().await?;
            // Every request says who sent it (API server audit logs, metrics by user agent).
            config.headers.push((
                http::header::USER_AGENT,
                upgrade_controller::user_agent_of(&identity),
            ));
            let client = kube::Client::try_from(config)?;
            let cvsh = CvshConfig::new(
                &platform.cvsh_api_version,
                &platform.cvsh_namespace,
                &platform.global_cluster,
                platform.cvsh_mapping.into(),
            )
            .map_err(anyhow::Error::msg)?;
            let standby = match &platform.global_standby_kubeconfig {
                Some(path) => {
                    let kubeconfig = kube::config::Kubeconfig::read_from(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let config = kube::Config::from_custom_kubeconfig(
                        kubeconfig,
                        &kube::config::KubeConfigOptions::default(),
                    )
                    .await?;
                    Some(Standby {
                        client: kube::Client::try_from(config)?,
                        label: format!(
                            "DR standby global cluster (ClusterVersionShadow {}/{} via {})",
                            platform.cvsh_namespace,
                            platform.global_cluster,
                            path.display()
                        ),
                    })
                }
                None => None,
            };
            driver::run(
                client,
                RunOptions {
                    namespace,
                    capi: capi_api_version.into(),
                    cvsh,
                    standby,
                    concurrency,
                    metrics_addr,
                    webhook,
                    kube_ovn_namespace: platform.kube_ovn_namespace.clone(),
                    leader,
                    shard_selector,
                    gitops: upgrade_controller::observe::inputs::GitOpsConfig {
                        namespaces: gitops_namespaces
                            .into_iter()
                            .map(|n| n.trim().to_string())
                            .filter(|n| !n.is_empty())
                            .collect(),
                        argocd_namespace,
                    },
                },
            )
            .await
        }
        Command::Plan(args) => plan(args).await,
        Command::Status(args) => status(args).await,
    }
}
