//! `UpgradeRequest`: one operator's request to move one CAPI Cluster to a Distribution Version.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

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
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRequestSpec {
    /// Name of the CAPI Cluster to upgrade, in this namespace. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("clusterName is immutable; create a new UpgradeRequest for another cluster"))]
    #[schemars(length(min = 1, max = 63))]
    pub cluster_name: String,

    /// Target Distribution Version: `MAJOR.MINOR` (e.g. `4.3`, meaning that minor's latest
    /// patch row) or an exact row (`4.3.1`).
    #[schemars(regex(pattern = r"^v?[0-9]+\.[0-9]+(\.[0-9]+)?$"))]
    pub target_version: String,

    /// Name of the cluster-scoped OSSupportMatrix to plan from.
    #[serde(default = "default_matrix_ref")]
    #[schemars(length(min = 1))]
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

/// Per-step rollout timeouts, as Go-style durations (`45m`, `1h30m`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// One control-plane rollout (all KubeadmControlPlane machines replaced and healthy).
    #[serde(default = "default_cp_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    pub control_plane: String,
    /// One MachineDeployment rollout.
    #[serde(default = "default_pool_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    pub worker_pool: String,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            control_plane: default_cp_timeout(),
            worker_pool: default_pool_timeout(),
        }
    }
}

fn default_cp_timeout() -> String {
    "45m".into()
}
fn default_pool_timeout() -> String {
    "60m".into()
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
}

/// Coarse state of a request.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; not planned yet.
    Pending,
    /// Rolling out the plan.
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
    /// Image (VM template) name the new machine templates use.
    pub os_image: String,
    /// MachineDeployments moved by a Workers step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a step moves.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanStepKind {
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
