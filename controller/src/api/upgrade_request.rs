//! `UpgradeRequest`: one operator's request to move one CAPI Cluster to a Distribution Version.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use super::duration::Timeout;

/// A DNS-1123 label (a CAPI Cluster's name).
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A DNS-1123 subdomain (most object names).
pub const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Moves the CAPI Cluster `spec.clusterName` (same namespace) to Distribution Version
/// `spec.targetVersion`, one Kubernetes minor at a time, control plane first, each hop from
/// that minor's OS image in the OS Support Matrix.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "upgrade.cpaas.io",
    version = "v1alpha1",
    kind = "UpgradeRequest",
    namespaced,
    shortname = "ur",
    status = "UpgradeRequestStatus",
    doc = "A request to upgrade one CAPI Cluster to a Distribution Version, one Kubernetes minor at a time",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetVersion"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Next Window","type":"string","jsonPath":".status.nextWindow"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(PLAN_INPUTS_FROZEN).message(PLAN_INPUTS_FROZEN_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRequestSpec {
    /// Name of the CAPI Cluster to upgrade, in this namespace (a DNS label). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("clusterName is immutable; create a new UpgradeRequest for another cluster"))]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub cluster_name: String,

    /// Target Distribution Version: `MAJOR.MINOR` (e.g. `4.3`, meaning that minor's latest
    /// patch row) or an exact row (`4.3.1`). Fixed once Phase 1 has been requested: a new
    /// target then needs a new UpgradeRequest, which runs its own preflight, review and Phase 1.
    #[schemars(
        length(max = 32),
        regex(pattern = r"^v?[0-9]{1,9}\.[0-9]{1,9}(\.[0-9]{1,9})?$")
    )]
    pub target_version: String,

    /// Name of the cluster-scoped OSSupportMatrix to plan from. Fixed once Phase 1 has been
    /// requested.
    #[serde(default = "default_matrix_ref")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub matrix_ref: String,

    /// How node pools follow the control plane.
    #[serde(default)]
    pub workers: Workers,

    /// Stop at the next step boundary (a running rollout is never interrupted) and stay there
    /// until set back to false.
    #[serde(default)]
    pub paused: bool,

    /// How long one rollout may take before the request stops with Stalled=True.
    #[serde(default)]
    pub timeouts: Timeouts,

    /// The two-step review (DOMAIN.md §2): Step 1 modifications and Step 2 impacts the
    /// operator has reviewed, plus OS images confirmed by hand where the platform cannot
    /// check them. Plain spec fields, so they can come from Git.
    #[serde(default)]
    pub acknowledgements: Acknowledgements,

    /// Preflight settings.
    #[serde(default)]
    pub preflight: PreflightSpec,

    /// How a KubeadmControlPlane or MachineDeployment that a GitOps tool applies is moved
    /// (DESIGN.md "GitOps"; `status.gitops` lists the Git-managed objects).
    #[serde(default)]
    pub gitops: GitOpsSpec,

    /// When steps may start (weekly windows in a time zone, and dates without any). Phase 1
    /// and each step start only while a window is open; a step under way runs to its end
    /// (all its pools) even when the window closes. Outside a window, condition
    /// `InMaintenanceWindow` and `status.nextWindow` say when the next one opens. None: any
    /// time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<super::MaintenanceWindow>,
}

/// See [`UpgradeRequestSpec::gitops`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GitOpsSpec {
    /// `Direct` (default): the controller writes Git-managed objects too, by server-side
    /// apply; preflight first checks that the tool leaves those fields alone (an ignore rule
    /// or annotation) and blocks with the YAML to add when it would not. `Handoff`: the
    /// controller never writes a Git-managed object. Each step publishes in
    /// `status.declareInGit` the fields Git must declare (it still creates the cloned
    /// machine templates, which Git does not own), waits until the live object declares
    /// exactly that, and then gates on the rollout. Objects no GitOps tool applies are
    /// written directly in both modes.
    #[serde(default)]
    pub mode: GitOpsMode,
}

/// See [`GitOpsSpec::mode`].
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum GitOpsMode {
    #[default]
    Direct,
    Handoff,
}

/// What the plan is made from (target, matrix, worker strategy) cannot change once the
/// request has asked the platform for the target (Phase 1): the platform would stay at the
/// old target while the hops went on to the new one. Evaluated by the API server, which sees
/// the stored status.
const PLAN_INPUTS_FROZEN: &str = "!has(oldSelf.status) || !has(oldSelf.status.alignedExtensions) || (!has(oldSelf.status.alignedExtensions.requestedAt) && !has(oldSelf.status.alignedExtensions.finishedAt)) || (self.spec.targetVersion == oldSelf.spec.targetVersion && self.spec.matrixRef == oldSelf.spec.matrixRef && self.spec.workers.strategy == oldSelf.spec.workers.strategy)";
const PLAN_INPUTS_FROZEN_MESSAGE: &str = "spec.targetVersion, spec.matrixRef and spec.workers.strategy are fixed once Phase 1 has been requested or found done (status.alignedExtensions.requestedAt or finishedAt); to go elsewhere, let this request finish (or delete it) and create a new UpgradeRequest";

/// Acknowledgement list items: a name, or `*` for all.
const ACK_ITEM: &str = r"^(\*|[A-Za-z0-9][-A-Za-z0-9_./]*)$";

/// What the operator has reviewed and accepts. `"*"` in a list accepts everything of its kind.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledgements {
    /// Step 1: names of the cluster's ResourcePatches (modifications of platform components)
    /// that may be overwritten by the upgrade; listed in `status.review.modifications`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253), regex(pattern = ACK_ITEM)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub modifications: Vec<String>,
    /// Step 2: names of Aligned extensions whose Medium or High impact upgrade is accepted;
    /// listed in `status.review.impacts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253), regex(pattern = ACK_ITEM)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub impacts: Vec<String>,
    /// OS image names the operator confirmed are staged, for providers whose API cannot
    /// show it (the OSImagesStaged check lists the exact names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253), regex(pattern = ACK_ITEM)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub images: Vec<String>,
}

/// Preflight settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PreflightSpec {
    /// Advisory checks not to run (ControlPlaneHealthy, NodesReady, NoRolloutInProgress,
    /// IPPoolCapacity, OSImagesStaged, GitOpsSafe); each shows as `Skipped` in
    /// `status.preflight.checks`.
    /// The checks that keep the platform consistent cannot be skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(SKIP_ONLY_ADVISORY).message(SKIP_ONLY_ADVISORY_MESSAGE))]
    pub skip: Vec<CheckName>,
}

const SKIP_ONLY_ADVISORY: &str = "self.all(c, c in ['ControlPlaneHealthy', 'NodesReady', 'NoRolloutInProgress', 'IPPoolCapacity', 'OSImagesStaged', 'GitOpsSafe'])";
const SKIP_ONLY_ADVISORY_MESSAGE: &str = "only advisory checks can be skipped (ControlPlaneHealthy, NodesReady, NoRolloutInProgress, IPPoolCapacity, OSImagesStaged, GitOpsSafe); TargetRowExists, UpgradePathSupported, NotADowngrade, KubernetesVersionsCompatible, GlobalTierAtTarget, WorkloadBelowGlobal, WorkloadsCompatible, EtcdHealthy, NoRemediationInProgress, SingleActiveRequest, PlatformPreflight and ProviderReady keep the platform consistent";

/// The stable names of the preflight checks.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
pub enum CheckName {
    /// The target resolves to a row of the matrix.
    TargetRowExists,
    /// The target row lists the cluster's Distribution Version in `upgradeableFrom`.
    UpgradePathSupported,
    /// The target is not below the cluster's Distribution Version or Kubernetes versions.
    NotADowngrade,
    /// The cluster's Kubernetes versions are within the target's compatible range.
    KubernetesVersionsCompatible,
    /// The global cluster (and the DR standby, when configured) is at the target.
    GlobalTierAtTarget,
    /// The cluster's Distribution Version is below the global cluster's.
    WorkloadBelowGlobal,
    /// The global cluster's own request: every workload cluster already runs Kubernetes
    /// inside the target row's compatible range.
    WorkloadsCompatible,
    /// The workload API server answers and the control plane is fully ready.
    ControlPlaneHealthy,
    /// The KubeadmControlPlane reports its etcd cluster healthy (`EtcdClusterHealthy`).
    EtcdHealthy,
    /// No MachineHealthCheck remediation of the cluster's Machines is under way.
    NoRemediationInProgress,
    /// Every Machine's node is Ready.
    NodesReady,
    /// No KubeadmControlPlane or MachineDeployment rollout is under way.
    NoRolloutInProgress,
    /// Every slot (IP/hostname) pool a rollout draws from has room for its surge.
    IPPoolCapacity,
    /// Every hop's OS image is staged under its exact name.
    OSImagesStaged,
    /// No other active UpgradeRequest holds this cluster.
    SingleActiveRequest,
    /// The platform's own preflight (the cluster's ClusterVersionShadow) passed.
    PlatformPreflight,
    /// No GitOps tool will put back what the controller writes: every Git-managed
    /// KubeadmControlPlane and MachineDeployment is protected (Flux `ssa`/`reconcile`
    /// annotation or Kustomization `spec.ignore`; Argo CD `ignoreDifferences` with
    /// `RespectIgnoreDifferences=true`). Listing it in `spec.preflight.skip` is the explicit
    /// acknowledgement that a revert is accepted (the version guard then refuses it).
    GitOpsSafe,
    /// The infrastructure provider's AppRelease on the management cluster is installed at its
    /// requested revision with phase `Success`; for a target Kube-OVN chart ≥ v4.4 it is at
    /// or above its full-source release; DCS images of ACP ≥ 4.3.2 go with provider ≥
    /// v1.0.21 and the reverse; a legacy provider that would need the AppRelease revision
    /// patch is refused.
    ProviderReady,
}

impl CheckName {
    /// Whether `spec.preflight.skip` may disable this check. The others keep the platform
    /// consistent (versions, ordering against the global tier, one request per cluster, the
    /// platform's own checks) and always run; the CRD refuses them in `skip`, and the
    /// controller ignores them there should an older CRD have let one through.
    pub fn skippable(self) -> bool {
        use CheckName::*;
        matches!(
            self,
            ControlPlaneHealthy
                | NodesReady
                | NoRolloutInProgress
                | GitOpsSafe
                | IPPoolCapacity
                | OSImagesStaged
        )
    }
}

fn default_matrix_ref() -> String {
    "default".into()
}

/// Worker (MachineDeployment) policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Workers {
    /// `EveryHop` (default): every pool follows the control plane in every hop.
    /// `SkipLevel`: pools stay until the final hop, moving earlier only when the next
    /// control-plane hop would leave them more than 3 minors behind.
    #[serde(default)]
    pub strategy: WorkerStrategy,
    /// How many MachineDeployments roll out at the same time within a hop.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 50))]
    pub max_concurrent_pools: u32,
}

impl Default for Workers {
    fn default() -> Self {
        Self {
            strategy: WorkerStrategy::default(),
            max_concurrent_pools: 1,
        }
    }
}

fn one() -> u32 {
    1
}

/// See [`Workers::strategy`].
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum WorkerStrategy {
    #[default]
    EveryHop,
    SkipLevel,
}

/// Per-step rollout timeouts, as Go-style durations between 1m and 720h (`45m`, `1h30m`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// One control-plane rollout (all KubeadmControlPlane machines replaced and healthy).
    #[serde(default = "default_cp_timeout")]
    pub control_plane: Timeout,
    /// One MachineDeployment rollout.
    #[serde(default = "default_pool_timeout")]
    pub worker_pool: Timeout,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            control_plane: default_cp_timeout(),
            worker_pool: default_pool_timeout(),
        }
    }
}

fn default_cp_timeout() -> Timeout {
    Timeout::new("45m")
}
fn default_pool_timeout() -> Timeout {
    Timeout::new("60m")
}

/// Observed state of an UpgradeRequest. Written only by the controller, after every step, so a
/// restarted controller resumes from it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRequestStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The spec generation `plan` was made for; a changed spec is re-planned at the next
    /// step boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Ready`, `Reconciling`, `Stalled`, `Paused` (kstatus-compatible).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Kubernetes versions the cluster declared when the request was planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<ClusterVersions>,
    /// The matrix row the request leads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetRow>,
    /// `done/total` steps, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The ordered steps, with their state and timestamps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlanStep>,
    /// Finished steps and outcomes, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// The last preflight: before anything is written, then before each hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightStatus>,
    /// The two-step review: what needs acknowledging and whether it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewStatus>,
    /// Phase 1: the Distribution Version (Core + Aligned extensions) through the cluster's
    /// ClusterVersionShadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aligned_extensions: Option<ExtensionsStatus>,
    /// The cluster's Git-managed KubeadmControlPlane and MachineDeployments, as the last
    /// preflight found them (empty: none is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["object"]))]
    pub gitops: Vec<GitOpsObject>,
    /// What Git must declare for the cluster's Git-managed objects: in `Handoff` mode, the
    /// running step's fields (commit exactly these); once the upgrade has finished, in either
    /// mode, the versions and template names Git should now declare so that it matches the
    /// cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["object", "field"]))]
    pub declare_in_git: Vec<GitDeclaration>,
    /// When the next maintenance window opens, while all are closed and the request has
    /// something left to start (`spec.maintenanceWindow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window: Option<Time>,
}

/// One field Git must declare.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitDeclaration {
    /// `KubeadmControlPlane <name>` or `MachineDeployment <name>`.
    pub object: String,
    /// Dotted path (`spec.version`, `spec.machineTemplate.infrastructureRef.name`).
    pub field: String,
    /// The value: the string itself, or JSON for a list.
    pub value: String,
}

/// A Git-managed object of the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitOpsObject {
    /// `KubeadmControlPlane <name>` or `MachineDeployment <name>`.
    pub object: String,
    pub tool: GitOpsTool,
    /// The Kustomization, HelmRelease or Application that applies it, when its markers say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The markers it was recognised by (labels, annotations, field managers).
    pub evidence: String,
    /// Whether the tool leaves the fields this controller writes alone, and why (or why not).
    pub protected: bool,
    pub message: String,
}

/// A GitOps tool, as recognised by its markers (DOMAIN.md §8).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitOpsTool {
    Flux,
    ArgoCD,
    /// Another manager applying the version field by server-side apply.
    Unknown,
}

/// Result of the last preflight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreflightStatus {
    /// When the checks last changed.
    pub observed_at: Time,
    /// `Initial` (before anything is written) or `Hop N` (before hop N's control plane).
    pub scope: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub checks: Vec<PreflightCheck>,
}

/// One preflight check.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreflightCheck {
    pub name: CheckName,
    pub state: CheckState,
    /// CamelCase reason.
    pub reason: String,
    /// What was found and, when not Passed, the exact fix.
    pub message: String,
}

/// Outcome of a check. Failed and Unknown block; Skipped was disabled by spec.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckState {
    Passed,
    Failed,
    Unknown,
    Skipped,
}

/// What the operator must acknowledge before anything is written.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReviewStatus {
    /// Step 1: the cluster's ResourcePatches not exempted for the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modifications: Vec<Modification>,
    /// Step 2: Aligned extensions whose version changes, with their impact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub impacts: Vec<ExtensionImpact>,
}

/// A ResourcePatch the upgrade may overwrite.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Modification {
    pub name: String,
    pub acknowledged: bool,
}

/// An Aligned extension moving between the current and the target row.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionImpact {
    pub name: String,
    /// Version in the cluster's current row (absent when the extension is new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    pub impact: crate::api::Impact,
    /// Medium and High need acknowledgement.
    pub acknowledgement_required: bool,
    pub acknowledged: bool,
}

/// Phase 1 through the ClusterVersionShadow (DOMAIN.md §2).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionsStatus {
    /// The Distribution Version requested in `spec.desiredUpdate.version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StepState>,
    /// When the request was written (never re-requested after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The ClusterVersionShadow's stages, mirrored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<ExtensionStage>,
    /// The ClusterVersionShadow's conditions, mirrored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One stage reported by the Cluster Version Operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionStage {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Coarse state of a request.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; not planned yet.
    Pending,
    /// Waiting for failed or unknown preflight checks (see status.preflight).
    Preflight,
    /// Waiting for the two-step review in spec.acknowledgements (see status.review).
    AwaitingAcknowledgement,
    /// Phase 1: the Cluster Version Operator moves Core and Aligned extensions.
    UpgradingExtensions,
    /// Phase 2: rolling out the Kubernetes hops.
    Upgrading,
    /// Stopped at a step boundary because spec.paused is true.
    Paused,
    /// Every step finished; the cluster is at the target.
    Succeeded,
    /// Needs a person: see the Stalled condition.
    Stalled,
}

/// Declared Kubernetes versions of a cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterVersions {
    pub control_plane: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolStatus>,
}

/// A node pool and its declared version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub name: String,
    pub version: String,
}

/// The row the request resolves to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRow {
    pub distribution_version: String,
    pub kubernetes_version: String,
}

/// One step of the plan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// Position in the plan, from 0.
    pub index: u32,
    pub kind: PlanStepKind,
    /// The matrix row of this hop.
    pub distribution_version: String,
    pub kubernetes_version: String,
    /// Image (VM template) name the new machine templates use (empty for a KubeOvn step).
    pub os_image: String,
    /// A KubeOvn step: the chart version the Cluster annotation `cpaas.io/kube-ovn-version`
    /// is set to (the row's `kubeOvnChart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_ovn_chart: Option<String>,
    /// MachineDeployments moved by a Workers step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// `Handoff` mode: when the Git-managed objects first declared what `declareInGit` asks
    /// (the step's timeout counts from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PlanStep {
    /// `ControlPlane to Kubernetes v1.33.7-4`, `KubeOvn to chart v4.3.11 (before Kubernetes
    /// v1.34.5-3)`, for messages.
    pub fn describe(&self) -> String {
        match (&self.kind, &self.kube_ovn_chart) {
            (PlanStepKind::KubeOvn, Some(chart)) => format!(
                "KubeOvn to chart {chart} (before Kubernetes {})",
                self.kubernetes_version
            ),
            (kind, _) => format!("{kind:?} to Kubernetes {}", self.kubernetes_version),
        }
    }
}

/// What a step moves.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanStepKind {
    /// Kube-OVN to the hop's chart before its control plane (Kube-OVN clusters only).
    KubeOvn,
    ControlPlane,
    Workers,
}

/// Lifecycle of a step.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepState {
    Pending,
    InProgress,
    Succeeded,
    Failed,
}

/// A finished step or request outcome.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub time: Time,
    pub message: String,
}
