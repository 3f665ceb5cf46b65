//! Preflight (pure): the checks that must hold before anything is written, and again before
//! each hop's control plane is touched (DESIGN.md "Flow" step 3, DOMAIN.md §1, §2, §4).
//! Every check has a stable name ([`CheckName`]) and ends Passed, Failed, Unknown or Skipped;
//! Failed and Unknown block, and the message says what was found and the exact fix.

mod capacity;
pub mod gitops;
mod health;
mod images;
mod platform;
mod provider;
mod requests;
pub mod review;
mod versions;

use serde_json::Value;

use crate::api::{
    CheckName, CheckState, MatrixRow, PlanStep, PlanStepKind, PreflightCheck, StepState,
    UpgradeRequestSpec,
};
use crate::capi::{KubeadmControlPlane, Machine, MachineDeployment};
use k8s_openapi::jiff::Timestamp;
use providers::{ImageLookup, SlotPoolRef};

/// When a preflight runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Before anything is written: every check.
    Initial,
    /// Before the control-plane step at this plan index: the checks about the cluster's
    /// health and capacity (the version checks were settled by the initial run, and Phase 1
    /// has since moved the Distribution Version).
    Hop(usize),
}

impl Scope {
    pub fn label(self) -> String {
        match self {
            Scope::Initial => "Initial".into(),
            Scope::Hop(i) => format!("Hop at step {}", i + 1),
        }
    }
}

/// An UpgradeRequest for the cluster (this one, or another naming the same Cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contender {
    pub name: String,
    /// `metadata.creationTimestamp` (one-second resolution, so ties are common).
    pub created: Option<Timestamp>,
    /// Whether it holds the cluster: its plan is fixed because it asked the platform for its
    /// target (or found it there), and it has not finished.
    pub holds: bool,
    /// For messages: since when and why it holds the cluster.
    pub holds_since: Option<Timestamp>,
    /// Succeeded requests no longer hold the cluster.
    pub finished: bool,
}

impl Contender {
    /// Who goes first: a request already holding the cluster, then the oldest, then the
    /// first by name (names are unique within the namespace, so there is always one winner).
    pub(crate) fn rank(&self) -> (bool, Option<Timestamp>, &str) {
        (!self.holds, self.created, self.name.as_str())
    }
}

/// A pool of per-machine slots a rollout draws from, as observed.
#[derive(Debug, Clone)]
pub struct SlotObs {
    /// The object whose rollout draws from the pool (`KubeadmControlPlane cp`,
    /// `MachineDeployment md-a`).
    pub user: String,
    /// Whether the user is the control plane (it rolls out alone).
    pub control_plane: bool,
    /// Extra machines its rollout creates at a time (maxSurge).
    pub surge: u32,
    pub pool: SlotPoolRef,
    /// Free and total slots, or why they could not be counted.
    pub count: Result<providers::SlotCount, String>,
}

/// The workload cluster, as seen through CAPI's kubeconfig Secret.
#[derive(Debug, Clone, Default)]
pub struct WorkloadObs {
    /// The platform's ResourcePatches in the cluster (empty when the API is not served).
    pub resource_patches: Vec<Value>,
}

/// Why the workload cluster could not be asked: `reason` is the check's reason
/// (`KubeconfigRefused`, `KubeconfigInvalid`, `KubeconfigUnreadable`, `WorkloadAPIUnreachable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadUnavailable {
    pub reason: &'static str,
    pub message: String,
}

/// Everything the preflight reads besides the CAPI objects in [`crate::decide::Observed`].
#[derive(Debug, Clone)]
pub struct PreflightObs {
    /// The scope these inputs were read for.
    pub scope: Scope,
    /// The global cluster's cvsh (and the DR standby's), labelled for messages.
    pub globals: Vec<(String, Result<Option<Value>, String>)>,
    /// Err: the workload API server could not be asked (the reason and message say why).
    pub workload: Result<WorkloadObs, WorkloadUnavailable>,
    /// This request, as the others see it.
    pub me: Contender,
    /// Other UpgradeRequests naming the same cluster, read after every earlier decision about
    /// this cluster was recorded (the shell serializes the requests of one cluster).
    pub other_requests: Vec<Contender>,
    pub slots: Vec<SlotObs>,
    /// How each hop image can be confirmed, and whether it was.
    pub images: Vec<ImageObs>,
    /// The Git-managed KubeadmControlPlane and MachineDeployments, with their tools' rules.
    pub gitops: Vec<gitops::GitOpsObs>,
    /// The management cluster's AppReleases in the platform namespace (empty when the
    /// provider is not installed by the platform), or why they could not be listed.
    pub provider_releases: Result<Vec<Value>, String>,
    /// For the global cluster's own request: the workload clusters it must not leave behind.
    pub global_self: Option<Workloads>,
}

/// Every other Cluster the controller watches, with the Kubernetes versions it declares
/// (`KubeadmControlPlane cp` → `v1.33.7`), for the global cluster's own upgrade.
#[derive(Debug, Clone, Default)]
pub struct Workloads {
    /// `namespace/name` and its versions.
    pub clusters: Vec<(String, Vec<(String, String)>)>,
    /// The one namespace the controller is limited to (`--namespace`), if any: then other
    /// namespaces' Clusters are not seen.
    pub only_namespace: Option<String>,
    /// The label selector the controller's Clusters are limited to (`--shard-selector`), if
    /// any: then other shards' Clusters are not seen.
    pub only_shard: Option<String>,
}

/// An OS image of a remaining hop.
#[derive(Debug, Clone)]
pub struct ImageObs {
    pub image: String,
    pub lookup: ImageLookup,
    /// For [`ImageLookup::ConfigMap`]: a matching ConfigMap exists.
    pub confirmed: bool,
}

/// What a preflight looks at.
pub struct Input<'a> {
    pub spec: &'a UpgradeRequestSpec,
    pub scope: Scope,
    pub cluster_name: &'a str,
    pub kcp: &'a KubeadmControlPlane,
    pub mds: &'a [MachineDeployment],
    pub machines: &'a [Machine],
    pub plan: &'a [PlanStep],
    pub target: &'a MatrixRow,
    /// This cluster's cvsh.
    pub cvsh: Option<&'a Value>,
    pub cvsh_where: String,
    pub obs: &'a PreflightObs,
}

pub(crate) fn check(
    name: CheckName,
    state: CheckState,
    reason: &str,
    message: impl Into<String>,
) -> PreflightCheck {
    PreflightCheck {
        name,
        state,
        reason: reason.into(),
        message: message.into(),
    }
}

pub(crate) fn passed(name: CheckName, message: impl Into<String>) -> PreflightCheck {
    check(name, CheckState::Passed, "Passed", message)
}

/// The checks of `scope`, in a fixed order.
pub fn checks_for(scope: Scope) -> &'static [CheckName] {
    use CheckName::*;
    match scope {
        Scope::Initial => &[
            TargetRowExists,
            UpgradePathSupported,
            NotADowngrade,
            KubernetesVersionsCompatible,
            GlobalTierAtTarget,
            WorkloadBelowGlobal,
            WorkloadsCompatible,
            ControlPlaneHealthy,
            EtcdHealthy,
            NoRemediationInProgress,
            NodesReady,
            NoRolloutInProgress,
            IPPoolCapacity,
            OSImagesStaged,
            SingleActiveRequest,
            PlatformPreflight,
            ProviderReady,
            GitOpsSafe,
        ],
        Scope::Hop(_) => &[
            ControlPlaneHealthy,
            EtcdHealthy,
            NoRemediationInProgress,
            NodesReady,
            NoRolloutInProgress,
            IPPoolCapacity,
            OSImagesStaged,
            SingleActiveRequest,
            ProviderReady,
            GitOpsSafe,
        ],
    }
}

/// Runs the checks of `input.scope`.
pub fn evaluate(input: &Input<'_>) -> Vec<PreflightCheck> {
    checks_for(input.scope)
        .iter()
        .map(|&name| {
            // Safety checks run whatever `skip` says (the CRD refuses them there already).
            if name.skippable() && input.spec.preflight.skip.contains(&name) {
                return check(
                    name,
                    CheckState::Skipped,
                    "SkippedBySpec",
                    "skipped because spec.preflight.skip lists it",
                );
            }
            run(name, input)
        })
        .collect()
}

/// The checks that block (Failed or Unknown).
pub fn blocking(checks: &[PreflightCheck]) -> Vec<&PreflightCheck> {
    checks
        .iter()
        .filter(|c| matches!(c.state, CheckState::Failed | CheckState::Unknown))
        .collect()
}

/// The checks recorded when planning itself failed: the plan error names the failed check.
pub fn from_plan_error(reason: &str, message: &str) -> Option<PreflightCheck> {
    let name = match reason {
        "UnknownTarget" | "MissingMatrixRow" | "InvalidTarget" => CheckName::TargetRowExists,
        "Downgrade" => CheckName::NotADowngrade,
        "UnsupportedPath" => CheckName::UpgradePathSupported,
        "VersionSkew" | "InvalidClusterVersion" => CheckName::KubernetesVersionsCompatible,
        _ => return None,
    };
    Some(check(name, CheckState::Failed, reason, message))
}

fn run(name: CheckName, i: &Input<'_>) -> PreflightCheck {
    use CheckName::*;
    match name {
        TargetRowExists => passed(
            name,
            format!(
                "spec.targetVersion {} resolves to row {} (Kubernetes {})",
                i.spec.target_version, i.target.distribution_version, i.target.kubernetes_version
            ),
        ),
        UpgradePathSupported => versions::upgrade_path(i),
        NotADowngrade => versions::not_a_downgrade(i),
        KubernetesVersionsCompatible => versions::kubernetes_compatible(i),
        GlobalTierAtTarget => versions::global_at_target(i),
        WorkloadBelowGlobal => versions::below_global(i),
        WorkloadsCompatible => versions::workloads_compatible(i),
        ControlPlaneHealthy => health::control_plane_healthy(i),
        EtcdHealthy => health::etcd_healthy(i),
        NoRemediationInProgress => health::no_remediation(i),
        NodesReady => health::nodes_ready(i),
        NoRolloutInProgress => health::no_rollout(i),
        IPPoolCapacity => capacity::capacity(i),
        OSImagesStaged => images::images(i),
        SingleActiveRequest => requests::single_request(i),
        PlatformPreflight => platform::platform_preflight(i),
        ProviderReady => provider::provider_ready(i),
        GitOpsSafe => gitops::gitops_safe(i),
    }
}

/// Images of the steps from `from` on that are not finished, deduplicated, in plan order.
pub fn remaining_images(plan: &[PlanStep], from: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in plan.iter().skip(from) {
        if s.kind == PlanStepKind::KubeOvn {
            continue;
        }
        if s.state != StepState::Succeeded && !out.contains(&s.os_image) {
            out.push(s.os_image.clone());
        }
    }
    out
}

/// Pools moved by the steps from `from` on.
pub fn remaining_pools(plan: &[PlanStep], from: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in plan.iter().skip(from) {
        if s.kind == PlanStepKind::Workers {
            for p in &s.pools {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
