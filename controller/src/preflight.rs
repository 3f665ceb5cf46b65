//! Preflight (pure): the checks that must hold before anything is written, and again before
//! each hop's control plane is touched (DESIGN.md "Flow" step 3, DOMAIN.md §1, §2, §4).
//! Every check has a stable name ([`CheckName`]) and ends Passed, Failed, Unknown or Skipped;
//! Failed and Unknown block, and the message says what was found and the exact fix.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::api::{
    CheckName, CheckState, MatrixRow, PlanStep, PlanStepKind, PreflightCheck, StepState,
    UpgradeRequestSpec,
};
use crate::capi;
use crate::gate;
use crate::platform;
use crate::version::{DistributionVersion, KubeVersion, minor_str};
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
    fn rank(&self) -> (bool, Option<Timestamp>, &str) {
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
    pub kcp: &'a Value,
    pub mds: &'a [Value],
    pub machines: &'a [Value],
    pub plan: &'a [PlanStep],
    pub target: &'a MatrixRow,
    /// This cluster's cvsh.
    pub cvsh: Option<&'a Value>,
    pub cvsh_where: String,
    pub obs: &'a PreflightObs,
}

fn check(
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

fn passed(name: CheckName, message: impl Into<String>) -> PreflightCheck {
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
            ControlPlaneHealthy,
            NodesReady,
            NoRolloutInProgress,
            IPPoolCapacity,
            OSImagesStaged,
            SingleActiveRequest,
            PlatformPreflight,
        ],
        Scope::Hop(_) => &[
            ControlPlaneHealthy,
            NodesReady,
            NoRolloutInProgress,
            IPPoolCapacity,
            OSImagesStaged,
            SingleActiveRequest,
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
        UpgradePathSupported => upgrade_path(i),
        NotADowngrade => not_a_downgrade(i),
        KubernetesVersionsCompatible => kubernetes_compatible(i),
        GlobalTierAtTarget => global_at_target(i),
        WorkloadBelowGlobal => below_global(i),
        ControlPlaneHealthy => control_plane_healthy(i),
        NodesReady => nodes_ready(i),
        NoRolloutInProgress => no_rollout(i),
        IPPoolCapacity => capacity(i),
        OSImagesStaged => images(i),
        SingleActiveRequest => single_request(i),
        PlatformPreflight => platform_preflight(i),
    }
}

/// The cluster's Distribution Version from its cvsh, or the check that explains why not.
fn cluster_version(i: &Input<'_>, name: CheckName) -> Result<String, PreflightCheck> {
    let Some(cvsh) = i.cvsh else {
        return Err(check(
            name,
            CheckState::Unknown,
            "ClusterVersionShadowNotFound",
            format!(
                "{} does not exist, so the cluster's Distribution Version is unknown; the platform creates it when the cluster is registered: check the Cluster Version Operator, or the controller's --cvsh-api-version / --cvsh-namespace",
                i.cvsh_where
            ),
        ));
    };
    platform::current_version(cvsh)
        .map(str::to_string)
        .ok_or_else(|| {
            check(
                name,
                CheckState::Unknown,
                "CurrentVersionUnknown",
                format!("{} reports no status.current.version yet", i.cvsh_where),
            )
        })
}

fn parse_dv(v: &str) -> Option<DistributionVersion> {
    DistributionVersion::parse(v).ok()
}

fn upgrade_path(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::UpgradePathSupported;
    let current = match cluster_version(i, name) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let target = &i.target.distribution_version;
    if platform::same_version(&current, target) {
        return passed(name, format!("the cluster is already at {target}"));
    }
    if i.target.upgradeable_from.is_empty() {
        return passed(
            name,
            format!("row {target} publishes no upgradeableFrom restriction"),
        );
    }
    let cur = current.trim_start_matches('v');
    let allowed = i.target.upgradeable_from.iter().any(|from| {
        let from = from.trim_start_matches('v');
        cur == from
            || cur
                .strip_prefix(from)
                .is_some_and(|rest| rest.starts_with('.'))
    });
    if allowed {
        passed(name, format!("{current} → {target} is a supported path"))
    } else {
        check(
            name,
            CheckState::Failed,
            "UnsupportedUpgradePath",
            format!(
                "the cluster runs {current}, but row {target} may only be reached from [{}]; upgrade to one of those first, or correct the row's upgradeableFrom in the OSSupportMatrix",
                i.target.upgradeable_from.join(", ")
            ),
        )
    }
}

fn not_a_downgrade(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::NotADowngrade;
    let current = match cluster_version(i, name) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let target = &i.target.distribution_version;
    match (parse_dv(&current), parse_dv(target)) {
        (Some(c), Some(t)) if t < c => check(
            name,
            CheckState::Failed,
            "Downgrade",
            format!(
                "the cluster runs {current}, newer than the target {target}; the platform does not downgrade — set spec.targetVersion to {current} or later"
            ),
        ),
        (Some(_), Some(_)) => passed(name, format!("{current} → {target}")),
        _ => check(
            name,
            CheckState::Unknown,
            "UnparsableVersion",
            format!("cannot compare {current:?} with {target:?} as Distribution Versions"),
        ),
    }
}

fn kubernetes_compatible(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::KubernetesVersionsCompatible;
    let Ok(target) = KubeVersion::parse(&i.target.kubernetes_version) else {
        return check(
            name,
            CheckState::Failed,
            "InvalidMatrix",
            format!(
                "row {} has an unparsable kubernetesVersion",
                i.target.distribution_version
            ),
        );
    };
    let (major, tminor) = target.minor();
    let parse_minor = |s: &str| -> Option<(u64, u64)> {
        let (ma, mi) = s.trim_start_matches('v').split_once('.')?;
        Some((ma.parse().ok()?, mi.parse().ok()?))
    };
    let (min, max) = match &i.target.compatible_kubernetes {
        Some(r) => match (parse_minor(&r.min), parse_minor(&r.max)) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return check(
                    name,
                    CheckState::Failed,
                    "InvalidMatrix",
                    format!(
                        "row {} compatibleKubernetes {{min: {}, max: {}}} is not MAJOR.MINOR",
                        i.target.distribution_version, r.min, r.max
                    ),
                );
            }
        },
        None => ((major, tminor.saturating_sub(3)), (major, tminor)),
    };
    let mut outside = Vec::new();
    let mut seen = vec![(
        format!("KubeadmControlPlane {}", capi::name(i.kcp)),
        capi::kcp_version(i.kcp).unwrap_or(""),
    )];
    for md in i.mds {
        seen.push((
            format!("MachineDeployment {}", capi::name(md)),
            capi::md_version(md).unwrap_or(""),
        ));
    }
    for (what, v) in &seen {
        match KubeVersion::parse(v) {
            Ok(k) if k.minor() >= min && k.minor() <= max => {}
            _ => outside.push(format!("{what} at {v:?}")),
        }
    }
    let range = format!("{}–{}", minor_str(min), minor_str(max));
    if outside.is_empty() {
        passed(
            name,
            format!(
                "every control plane and pool is within {range}, the range row {} supports",
                i.target.distribution_version
            ),
        )
    } else {
        check(
            name,
            CheckState::Failed,
            "KubernetesVersionOutOfRange",
            format!(
                "row {} supports clusters at Kubernetes {range}, but {}; bring them into range first",
                i.target.distribution_version,
                outside.join(", ")
            ),
        )
    }
}

fn global_at_target(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::GlobalTierAtTarget;
    let target = &i.target.distribution_version;
    let Some(t) = parse_dv(target) else {
        return check(
            name,
            CheckState::Failed,
            "InvalidMatrix",
            "unparsable target",
        );
    };
    let mut behind = Vec::new();
    let mut unknown = Vec::new();
    for (label, cvsh) in &i.obs.globals {
        match cvsh {
            Err(e) => unknown.push(format!("{label}: {e}")),
            Ok(None) => unknown.push(format!("{label} does not exist")),
            Ok(Some(c)) => match platform::current_version(c).and_then(parse_dv) {
                Some(v) if v >= t => {}
                Some(v) => behind.push(format!("{label} is at {v}")),
                None => unknown.push(format!("{label} reports no status.current.version")),
            },
        }
    }
    if !behind.is_empty() {
        return check(
            name,
            CheckState::Failed,
            "GlobalTierBehind",
            format!(
                "a workload cluster may only move to a version the global tier already runs (with DR: the standby first, then the primary); {}; upgrade the global tier to {target} first",
                behind.join(", ")
            ),
        );
    }
    if !unknown.is_empty() {
        return check(
            name,
            CheckState::Unknown,
            "GlobalVersionUnknown",
            format!(
                "cannot tell whether the global tier runs {target}: {}",
                unknown.join("; ")
            ),
        );
    }
    passed(
        name,
        format!(
            "{} at {target} or later",
            i.obs
                .globals
                .iter()
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    )
}

fn below_global(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::WorkloadBelowGlobal;
    let current = match cluster_version(i, name) {
        Ok(c) => c,
        Err(c) => return c,
    };
    if platform::same_version(&current, &i.target.distribution_version) {
        return passed(
            name,
            format!("the cluster is already at the target {current}"),
        );
    }
    let Some(cur) = parse_dv(&current) else {
        return check(
            name,
            CheckState::Unknown,
            "UnparsableVersion",
            format!("cannot parse the cluster's version {current:?}"),
        );
    };
    let mut not_below = Vec::new();
    for (label, cvsh) in &i.obs.globals {
        if let Ok(Some(c)) = cvsh
            && let Some(g) = platform::current_version(c).and_then(parse_dv)
            && cur >= g
        {
            not_below.push(format!("{label} is at {g}"));
        }
    }
    if not_below.is_empty() {
        passed(
            name,
            format!("the cluster ({current}) is below the global tier"),
        )
    } else {
        check(
            name,
            CheckState::Failed,
            "NotBelowGlobal",
            format!(
                "the cluster runs {current}, not below the global tier ({}); a workload cluster must stay below global — upgrade the global tier first",
                not_below.join(", ")
            ),
        )
    }
}

fn control_plane_healthy(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::ControlPlaneHealthy;
    if let Err(e) = &i.obs.workload {
        return check(
            name,
            CheckState::Failed,
            e.reason,
            format!(
                "the workload API server of {} cannot be asked: {}",
                i.cluster_name, e.message
            ),
        );
    }
    let kcp = i.kcp;
    let want = kcp["spec"]["replicas"].as_i64().unwrap_or(1);
    let ready = kcp["status"]["readyReplicas"].as_i64().unwrap_or(0);
    let cp_machines: Vec<&Value> = i
        .machines
        .iter()
        .filter(|m| m["metadata"]["labels"][capi::CONTROL_PLANE_NAME_LABEL] == capi::name(kcp))
        .collect();
    let unhealthy: Vec<&str> = cp_machines
        .iter()
        .filter(|m| !gate::condition_true(m, "NodeHealthy"))
        .map(|m| capi::name(m))
        .collect();
    if ready < want || !unhealthy.is_empty() {
        let mut why = vec![format!(
            "KubeadmControlPlane {} has {ready}/{want} ready replicas",
            capi::name(kcp)
        )];
        if !unhealthy.is_empty() {
            why.push(format!(
                "unhealthy control-plane machines: {}",
                unhealthy.join(", ")
            ));
        }
        return check(
            name,
            CheckState::Failed,
            "ControlPlaneNotReady",
            format!(
                "{}; repair the control plane before upgrading (a rollout replaces every control-plane machine)",
                why.join("; ")
            ),
        );
    }
    passed(
        name,
        format!(
            "the workload API server answers and {ready}/{want} control-plane replicas are ready"
        ),
    )
}

fn nodes_ready(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::NodesReady;
    let not_ready: Vec<String> = i
        .machines
        .iter()
        .filter(|m| !gate::condition_true(m, "NodeHealthy"))
        .map(|m| {
            let node = m["status"]["nodeRef"]["name"]
                .as_str()
                .unwrap_or("no node yet");
            format!("{} ({node})", capi::name(m))
        })
        .collect();
    if not_ready.is_empty() {
        passed(
            name,
            format!("all {} machines have a Ready node", i.machines.len()),
        )
    } else {
        check(
            name,
            CheckState::Failed,
            "NodesNotReady",
            format!(
                "machines whose node is not Ready (condition NodeHealthy): {}; repair or remove them before upgrading",
                not_ready.join(", ")
            ),
        )
    }
}

fn no_rollout(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::NoRolloutInProgress;
    let machines_of = |label: &str, owner: &str| -> Vec<Value> {
        i.machines
            .iter()
            .filter(|m| m["metadata"]["labels"][label] == owner)
            .cloned()
            .collect()
    };
    let kcp = i.kcp;
    let mut why = gate::spec_rollout_pending(
        kcp,
        "KubeadmControlPlane",
        &machines_of(capi::CONTROL_PLANE_NAME_LABEL, capi::name(kcp)),
        capi::kcp_version(kcp).unwrap_or(""),
    );
    for md in i.mds {
        why.extend(
            gate::spec_rollout_pending(
                md,
                "MachineDeployment",
                &machines_of(capi::DEPLOYMENT_NAME_LABEL, capi::name(md)),
                capi::md_version(md).unwrap_or(""),
            )
            .into_iter()
            .map(|w| format!("{}: {w}", capi::name(md))),
        );
    }
    if why.is_empty() {
        passed(
            name,
            "the control plane and every pool are rolled out at their declared versions",
        )
    } else {
        check(
            name,
            CheckState::Failed,
            "RolloutInProgress",
            format!(
                "a rollout is under way or incomplete: {}; wait for it to finish",
                why.join("; ")
            ),
        )
    }
}

fn capacity(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::IPPoolCapacity;
    if i.obs.slots.is_empty() {
        return passed(
            name,
            "no machine template of this rollout draws from a slot pool",
        );
    }
    // Per pool: the control plane rolls out alone; pools roll out maxConcurrentPools at a
    // time, so the need is the larger of the control plane's surge and the largest sum of
    // that many pool surges.
    let k = i.spec.workers.max_concurrent_pools.max(1) as usize;
    let mut by_pool: BTreeMap<String, (Vec<&SlotObs>, Option<&SlotObs>)> = BTreeMap::new();
    for s in &i.obs.slots {
        let key = format!("{} {}", s.pool.kind, s.pool.name);
        let e = by_pool.entry(key).or_default();
        if s.control_plane {
            e.1 = Some(s);
        } else {
            e.0.push(s);
        }
    }
    let mut short = Vec::new();
    let mut unknown = Vec::new();
    let mut fine = Vec::new();
    for (pool, (pools, cp)) in by_pool {
        let mut surges: Vec<u32> = pools.iter().map(|s| s.surge).collect();
        surges.sort_unstable_by(|a, b| b.cmp(a));
        let workers_need: u32 = surges.iter().take(k).sum();
        let need = workers_need.max(cp.map(|c| c.surge).unwrap_or(0));
        let any = cp.or(pools.first().copied()).expect("a pool has a user");
        let users: Vec<&str> = cp
            .iter()
            .chain(pools.iter())
            .map(|s| s.user.as_str())
            .collect();
        match &any.count {
            Err(e) => unknown.push(format!("{pool}: {e}")),
            Ok(c) if c.free < need => short.push(format!(
                "{pool} has {} free of {} but the rollout of {} needs {need} at a time ({}); add {} more {} to the pool, or lower maxSurge",
                c.free,
                c.total,
                users.join(", "),
                c.detail,
                need - c.free,
                if need - c.free == 1 { "entry" } else { "entries" }
            )),
            Ok(c) => fine.push(format!("{pool}: {} free, {need} needed", c.free)),
        }
    }
    if !short.is_empty() {
        return check(name, CheckState::Failed, "PoolExhausted", short.join("; "));
    }
    if !unknown.is_empty() {
        return check(
            name,
            CheckState::Unknown,
            "PoolUnreadable",
            unknown.join("; "),
        );
    }
    passed(name, fine.join("; "))
}

fn images(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::OSImagesStaged;
    let acked = |img: &str| {
        i.spec
            .acknowledgements
            .images
            .iter()
            .any(|a| a == "*" || a == img)
    };
    let mut missing = Vec::new();
    let mut unverifiable = Vec::new();
    let mut ok = Vec::new();
    let (mut not_needed, mut why_not_needed) = (Vec::new(), "");
    for im in &i.obs.images {
        match &im.lookup {
            ImageLookup::NotNeeded { reason } => {
                not_needed.push(im.image.as_str());
                why_not_needed = reason.as_str();
            }
            ImageLookup::ConfigMap {
                namespace,
                label_selector,
                ..
            } => {
                if im.confirmed {
                    ok.push(format!("{}: registered", im.image));
                } else {
                    missing.push(format!(
                        "{} (no ConfigMap in {namespace} matches {label_selector})",
                        im.image
                    ));
                }
            }
            ImageLookup::Unverifiable => {
                if acked(&im.image) {
                    ok.push(format!(
                        "{}: confirmed in spec.acknowledgements.images",
                        im.image
                    ));
                } else {
                    unverifiable.push(im.image.clone());
                }
            }
        }
    }
    if !missing.is_empty() {
        return check(
            name,
            CheckState::Failed,
            "ImageNotStaged",
            format!(
                "OS images not staged under their exact names: {}; upload and register each image under exactly that name",
                missing.join(", ")
            ),
        );
    }
    if !unverifiable.is_empty() {
        return check(
            name,
            CheckState::Unknown,
            "ImageUnverifiable",
            format!(
                "the platform's API cannot show whether these images are staged: {}; confirm each exists under exactly that name, then list them in spec.acknowledgements.images",
                unverifiable.join(", ")
            ),
        );
    }
    if !not_needed.is_empty() {
        ok.push(format!("{}: {why_not_needed}", not_needed.join(", ")));
    }
    passed(name, ok.join("; "))
}

fn single_request(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::SingleActiveRequest;
    let me = &i.obs.me;
    let winner = i
        .obs
        .other_requests
        .iter()
        .filter(|o| !o.finished && o.name != me.name)
        .min_by(|a, b| a.rank().cmp(&b.rank()));
    let Some(w) = winner.filter(|w| w.rank() < me.rank()) else {
        return passed(
            name,
            format!(
                "no other unfinished UpgradeRequest for cluster {} goes before this one",
                i.cluster_name
            ),
        );
    };
    let when = |t: Option<Timestamp>| t.map_or("an unknown time".to_string(), |t| t.to_string());
    let why = if w.holds && !me.holds {
        format!(
            "already holds cluster {} (it asked the platform for its target at {})",
            i.cluster_name,
            when(w.holds_since)
        )
    } else if w.created == me.created {
        format!(
            "was created in the same second as this one ({}) and goes first by name",
            when(w.created)
        )
    } else {
        format!(
            "was created at {}, before this request ({})",
            when(w.created),
            when(me.created)
        )
    };
    check(
        name,
        CheckState::Failed,
        "AnotherRequestActive",
        format!(
            "UpgradeRequest {} {why}; only one request per cluster proceeds — this one waits until {} has succeeded (or is deleted), then re-plans from where it left the cluster",
            w.name, w.name
        ),
    )
}

fn platform_preflight(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::PlatformPreflight;
    let Some(cvsh) = i.cvsh else {
        return check(
            name,
            CheckState::Unknown,
            "ClusterVersionShadowNotFound",
            format!("{} does not exist", i.cvsh_where),
        );
    };
    match platform::failed_platform_checks(cvsh) {
        None => check(
            name,
            CheckState::Unknown,
            "NotReported",
            format!(
                "{} reports no status.preflight.checks yet; waiting for the Cluster Version Operator",
                i.cvsh_where
            ),
        ),
        Some(failed) if failed.is_empty() => passed(
            name,
            format!("{} reports every platform check passed", i.cvsh_where),
        ),
        Some(failed) => check(
            name,
            CheckState::Failed,
            "PlatformCheckFailed",
            format!(
                "the platform's preflight in {} failed: {}; fix these in the platform (some can be disabled in ConfigMap cpaas-system/cvo-config, key preflight)",
                i.cvsh_where,
                failed
                    .iter()
                    .map(|(n, r, m)| format!("{n} ({r}): {m}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
    }
}

/// Images of the steps from `from` on that are not finished, deduplicated, in plan order.
pub fn remaining_images(plan: &[PlanStep], from: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in plan.iter().skip(from) {
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
mod tests {
    use super::*;
    use serde_json::json;

    fn row(dv: &str, k8s: &str, from: &[&str]) -> MatrixRow {
        serde_json::from_value(json!({
            "distributionVersion": dv, "kubernetesVersion": k8s, "coreDNSImageTag": "x",
            "etcdImageTag": "y", "osImageVersion": format!("img-{dv}"), "upgradeableFrom": from,
        }))
        .unwrap()
    }

    fn kcp(version: &str) -> Value {
        json!({
            "metadata": {"name": "cp", "generation": 1},
            "spec": {"version": version, "replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                       "availableReplicas": 1, "unavailableReplicas": 0, "version": version},
        })
    }

    fn machine(version: &str, healthy: bool) -> Value {
        json!({
            "metadata": {"name": "m-1", "labels": {"cluster.x-k8s.io/control-plane-name": "cp"}},
            "spec": {"version": version},
            "status": {"nodeRef": {"name": "node-1"}, "nodeInfo": {"kubeletVersion": version},
                       "conditions": [{"type": "NodeHealthy", "status": if healthy {"True"} else {"False"}}]},
        })
    }

    fn cvsh(version: &str) -> Value {
        json!({"status": {"current": {"version": version}, "preflight": {"checks": [
            {"name": "ClusterRunning", "policy": "Block", "state": "Passed"}]}}})
    }

    fn contender(name: &str, created: &str, holds: bool) -> Contender {
        Contender {
            name: name.into(),
            created: Some(created.parse().unwrap()),
            holds,
            holds_since: holds.then(|| "2026-11-21T12:00:00Z".parse().unwrap()),
            finished: false,
        }
    }

    #[test]
    fn one_request_per_cluster_wins_and_the_others_name_it_truthfully() {
        let target = row("4.3.2", "v1.34.5-3", &[]);
        let run = |me: Contender, others: Vec<Contender>| {
            let mut obs = pobs();
            obs.me = me;
            obs.other_requests = others;
            run_all(&spec(&[]), &target, &cvsh("4.2.5"), &[], &obs)
                .remove(&CheckName::SingleActiveRequest)
                .unwrap()
        };
        // Same second: the first by name wins, whoever is asked.
        let a = contender("a", "2026-11-21T10:00:00Z", false);
        let b = contender("b", "2026-11-21T10:00:00Z", false);
        assert_eq!(run(a.clone(), vec![b.clone()]).state, CheckState::Passed);
        let held = run(b.clone(), vec![a.clone()]);
        assert_eq!(held.state, CheckState::Failed);
        assert!(held.message.contains("same second"), "{}", held.message);
        // A request that already holds the cluster keeps it, even against an older one.
        let holder = contender("z-late", "2026-11-21T11:00:00Z", true);
        assert_eq!(
            run(holder.clone(), vec![a.clone()]).state,
            CheckState::Passed
        );
        let held = run(a.clone(), vec![holder.clone()]);
        assert!(
            held.message.contains("already holds") && !held.message.contains("created earlier"),
            "{}",
            held.message
        );
        // An older request is named as older, with both times.
        let older = contender("x", "2026-11-21T09:00:00Z", false);
        let held = run(a.clone(), vec![older]);
        assert!(
            held.message.contains("before this request"),
            "{}",
            held.message
        );
        // Finished requests do not count.
        let mut done = holder;
        done.finished = true;
        assert_eq!(run(a, vec![done]).state, CheckState::Passed);
    }

    fn pobs() -> PreflightObs {
        PreflightObs {
            globals: vec![("global".into(), Ok(Some(cvsh("4.3.2"))))],
            workload: Ok(WorkloadObs::default()),
            me: contender("me", "2026-11-21T10:00:00Z", false),
            other_requests: vec![],
            slots: vec![],
            images: vec![],
        }
    }

    fn spec(skip: &[&str]) -> UpgradeRequestSpec {
        serde_json::from_value(json!({"clusterName": "c", "targetVersion": "4.3",
            "preflight": {"skip": skip}}))
        .unwrap()
    }

    fn run_all(
        spec: &UpgradeRequestSpec,
        target: &MatrixRow,
        cluster: &Value,
        machines: &[Value],
        obs: &PreflightObs,
    ) -> BTreeMap<CheckName, PreflightCheck> {
        let kcp = kcp("v1.31.14-2");
        evaluate(&Input {
            spec,
            scope: Scope::Initial,
            cluster_name: "c",
            kcp: &kcp,
            mds: &[],
            machines,
            plan: &[],
            target,
            cvsh: Some(cluster),
            cvsh_where: "cvsh cpaas-system/c".into(),
            obs,
        })
        .into_iter()
        .map(|c| (c.name, c))
        .collect()
    }

    #[test]
    fn a_healthy_cluster_passes_every_initial_check() {
        let target = row("4.3.2", "v1.34.5-3", &["4.0", "4.1", "4.2"]);
        let checks = run_all(
            &spec(&[]),
            &target,
            &cvsh("4.0.11"),
            &[machine("v1.31.14-2", true)],
            &pobs(),
        );
        assert_eq!(checks.len(), checks_for(Scope::Initial).len());
        for c in checks.values() {
            assert_eq!(c.state, CheckState::Passed, "{c:?}");
        }
    }

    #[test]
    fn each_unmet_prerequisite_fails_its_own_check() {
        let target = row("4.3.2", "v1.34.5-3", &["4.1", "4.2"]);
        let mut obs = pobs();
        obs.globals = vec![
            ("global".into(), Ok(Some(cvsh("4.3.2")))),
            ("standby".into(), Ok(Some(cvsh("4.2.5")))),
        ];
        obs.other_requests = vec![contender("older", "2026-11-21T09:00:00Z", false)];
        let checks = run_all(
            &spec(&[]),
            &target,
            &cvsh("4.0.11"),
            &[machine("v1.31.14-2", false)],
            &obs,
        );
        let failed = |n: CheckName| checks[&n].state == CheckState::Failed;
        assert!(
            failed(CheckName::UpgradePathSupported),
            "4.0 is not in [4.1, 4.2]"
        );
        assert!(
            checks[&CheckName::GlobalTierAtTarget]
                .message
                .contains("standby is at 4.2.5")
        );
        assert!(failed(CheckName::NodesReady));
        assert!(
            checks[&CheckName::NodesReady]
                .message
                .contains("m-1 (node-1)")
        );
        assert!(failed(CheckName::SingleActiveRequest));
        assert!(!failed(CheckName::NotADowngrade));
        // A finished older request no longer holds the cluster; a younger one never does.
        obs.other_requests[0].finished = true;
        obs.other_requests
            .push(contender("younger", "2026-11-21T11:00:00Z", false));
        let checks = run_all(&spec(&[]), &target, &cvsh("4.1.6"), &[], &obs);
        assert_eq!(
            checks[&CheckName::SingleActiveRequest].state,
            CheckState::Passed
        );
    }

    #[test]
    fn skipped_checks_are_recorded_not_run() {
        let target = row("4.3.2", "v1.34.5-3", &["4.0"]);
        let mut obs = pobs();
        obs.workload = Err(WorkloadUnavailable {
            reason: "WorkloadAPIUnreachable",
            message: "connection refused".into(),
        });
        let checks = run_all(
            &spec(&["NodesReady", "ControlPlaneHealthy"]),
            &target,
            &cvsh("4.0.11"),
            &[machine("v1.31.14-2", false)],
            &obs,
        );
        assert_eq!(checks[&CheckName::NodesReady].state, CheckState::Skipped);
        assert_eq!(
            checks[&CheckName::ControlPlaneHealthy].state,
            CheckState::Skipped
        );
        assert!(blocking(&checks.into_values().collect::<Vec<_>>()).is_empty());
    }

    #[test]
    fn safety_checks_run_even_when_skip_lists_them() {
        // An object stored under an older CRD may still list them.
        let target = row("4.3.2", "v1.34.5-3", &["4.1"]);
        let mut obs = pobs();
        obs.globals = vec![("global".into(), Ok(Some(cvsh("4.2.5"))))];
        obs.other_requests = vec![contender("older", "2026-11-21T09:00:00Z", true)];
        let all_safety = [
            "TargetRowExists",
            "UpgradePathSupported",
            "NotADowngrade",
            "KubernetesVersionsCompatible",
            "GlobalTierAtTarget",
            "WorkloadBelowGlobal",
            "SingleActiveRequest",
            "PlatformPreflight",
        ];
        let checks = run_all(
            &spec(&all_safety),
            &target,
            &cvsh("4.0.11"),
            &[machine("v1.31.14-2", true)],
            &obs,
        );
        for name in [
            CheckName::UpgradePathSupported,
            CheckName::GlobalTierAtTarget,
            CheckName::SingleActiveRequest,
        ] {
            assert_eq!(checks[&name].state, CheckState::Failed, "{name:?}");
        }
        assert!(
            checks
                .values()
                .all(|c| c.state != CheckState::Skipped || c.name.skippable())
        );
    }

    #[test]
    fn pool_capacity_counts_the_largest_concurrent_surge() {
        let target = row("4.3.2", "v1.34.5-3", &[]);
        let pool = SlotPoolRef {
            api_version: "infrastructure.cluster.x-k8s.io/v1beta1".into(),
            kind: "DCSIpHostnamePool".into(),
            name: "shared".into(),
            namespace: None,
        };
        let slot = |user: &str, cp: bool, surge: u32, free: u32| SlotObs {
            user: user.into(),
            control_plane: cp,
            surge,
            pool: pool.clone(),
            count: Ok(providers::SlotCount {
                total: 10,
                free,
                detail: String::new(),
            }),
        };
        let mut obs = pobs();
        obs.slots = vec![
            slot("KubeadmControlPlane cp", true, 1, 1),
            slot("MachineDeployment a", false, 1, 1),
        ];
        let checks = run_all(&spec(&[]), &target, &cvsh("4.2.5"), &[], &obs);
        assert_eq!(checks[&CheckName::IPPoolCapacity].state, CheckState::Passed);
        // Two pools rolling at once from the same pool need two free entries.
        obs.slots.push(slot("MachineDeployment b", false, 1, 1));
        let mut two = spec(&[]);
        two.workers.max_concurrent_pools = 2;
        let checks = run_all(&two, &target, &cvsh("4.2.5"), &[], &obs);
        let c = &checks[&CheckName::IPPoolCapacity];
        assert_eq!(c.state, CheckState::Failed);
        assert!(c.message.contains("has 1 free of 10"), "{}", c.message);
        assert!(c.message.contains("add 1 more entry"), "{}", c.message);
    }

    #[test]
    fn unverifiable_images_wait_for_an_acknowledgement() {
        let target = row("4.3.2", "v1.34.5-3", &[]);
        let mut obs = pobs();
        obs.images = vec![ImageObs {
            image: "tpl-4.3.2".into(),
            lookup: ImageLookup::Unverifiable,
            confirmed: false,
        }];
        let checks = run_all(&spec(&[]), &target, &cvsh("4.2.5"), &[], &obs);
        let c = &checks[&CheckName::OSImagesStaged];
        assert_eq!(c.state, CheckState::Unknown);
        assert!(c.message.contains("tpl-4.3.2"));
        let mut acked = spec(&[]);
        acked.acknowledgements.images = vec!["tpl-4.3.2".into()];
        let checks = run_all(&acked, &target, &cvsh("4.2.5"), &[], &obs);
        assert_eq!(checks[&CheckName::OSImagesStaged].state, CheckState::Passed);
    }
}
