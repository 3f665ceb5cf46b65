//! The hop planner: a pure function from the cluster's current versions, the OS Support Matrix
//! and the request to the ordered list of steps that moves the cluster to the target.
//!
//! Rules (DESIGN.md "Flow", DOMAIN.md §1, §5, §6):
//! - the control plane moves one Kubernetes minor per hop and never skips one; each hop uses
//!   the row of that minor with the highest Distribution Version not above the target (the
//!   target row itself for the target minor);
//! - nothing is ever downgraded;
//! - in every hop the control plane goes first, then the node pools;
//! - a pool is never newer than the control plane, and never more than 3 minors behind it;
//! - `EveryHop` moves every pool in every hop; `SkipLevel` leaves pools where they are until
//!   the final hop, except when the next control-plane hop would put them 4 minors behind;
//! - pools land on the control plane's exact version (CAPI's MachineSet preflight
//!   `KubeadmVersionSkew` refuses worker machines of another minor);
//! - the plan from any state an earlier plan passes through is the rest of that plan, so a
//!   restarted controller re-plans and continues exactly where it stopped.

use std::collections::BTreeMap;

use crate::api::{ImageKey, MatrixRow, WorkerStrategy};
use crate::version::{DistributionVersion, KubeVersion, Target, VersionError, minor_str};

/// A node pool (MachineDeployment) and the Kubernetes version it declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolVersion {
    pub name: String,
    pub version: String,
}

/// The versions the cluster declares today: KubeadmControlPlane `spec.version` and each
/// MachineDeployment's `spec.template.spec.version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentVersions {
    pub control_plane: String,
    pub pools: Vec<PoolVersion>,
}

/// What to plan for.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub rows: &'a [MatrixRow],
    /// `spec.targetVersion`: `4.3` (latest patch row of 4.3) or `4.3.1`.
    pub target: &'a str,
    pub strategy: WorkerStrategy,
    /// Which provider's image name to take from each row.
    pub image_key: ImageKey,
}

/// Whether a step moves the control plane or node pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Kube-OVN to the row's chart, before the hop's control plane (inserted by
    /// [`super::kube_ovn::with_kube_ovn`] for Kube-OVN clusters only).
    KubeOvn,
    ControlPlane,
    Workers,
}

/// One step: the control plane, or a set of pools, to one matrix row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    pub row: MatrixRow,
    /// The image name this provider must use for the row.
    pub os_image: String,
    /// Pools (MachineDeployment names, sorted) moved by a Workers step; empty for ControlPlane.
    pub pools: Vec<String>,
    /// A KubeOvn step's chart (the row's `kubeOvnChart`).
    pub kube_ovn_chart: Option<String>,
}

/// The ordered steps and the row they lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub target_row: MatrixRow,
    pub steps: Vec<Step>,
}

/// Why no plan exists. Every variant is a problem with the spec, the matrix or the cluster
/// that a person must fix; the message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("spec.targetVersion: {0}")]
    InvalidTarget(VersionError),
    #[error("matrix row {row:?} is invalid: {error}")]
    InvalidRow { row: String, error: VersionError },
    #[error("no row of the OS Support Matrix matches target {target:?}; rows: {available}")]
    UnknownTarget { target: String, available: String },
    #[error("{object} has an unparseable Kubernetes version: {error}")]
    InvalidCurrent { object: String, error: VersionError },
    #[error(
        "downgrade refused: the control plane runs {current} but target {target} is Kubernetes {target_kubernetes}"
    )]
    Downgrade {
        current: String,
        target: String,
        target_kubernetes: String,
    },
    #[error(
        "the control plane runs Kubernetes {current}, another major than the target's {target}"
    )]
    MajorChange { current: String, target: String },
    #[error(
        "the OS Support Matrix has no row for Kubernetes {minor} at or below Distribution Version {target}; every intermediate minor needs one"
    )]
    MissingRow { minor: String, target: String },
    #[error(
        "pool {pool} runs Kubernetes {pool_version}, newer than the control plane's {control_plane}; fix the pool by hand first"
    )]
    PoolNewerThanControlPlane {
        pool: String,
        pool_version: String,
        control_plane: String,
    },
    #[error(
        "pool {pool} runs Kubernetes {pool_version}, more than 3 minors behind the control plane's {control_plane} (version-skew policy); fix the pool by hand first"
    )]
    PoolTooFarBehind {
        pool: String,
        pool_version: String,
        control_plane: String,
    },
    #[error(
        "pools {pools} must reach the control plane's version {control_plane} before its next hop, but no matrix row has that exact Kubernetes version"
    )]
    NoRowForControlPlaneVersion {
        pools: String,
        control_plane: String,
    },
    #[error(
        "the cluster's network is Kube-OVN, which moves to each hop's chart before its control plane, but matrix row {row} has no kubeOvnChart; add the row's Kube-OVN chart version from the OS Support Matrix"
    )]
    MissingKubeOvnChart { row: String },
}

struct Row<'a> {
    dv: DistributionVersion,
    kube: KubeVersion,
    row: &'a MatrixRow,
}

/// Plans the steps from `current` to the target of `input`. Pure and deterministic: the same
/// inputs (in any pool order) give the same plan.
pub fn plan(input: PlanInput<'_>, current: &CurrentVersions) -> Result<Plan, PlanError> {
    let target = Target::parse(input.target).map_err(PlanError::InvalidTarget)?;
    let mut rows = input
        .rows
        .iter()
        .map(|row| {
            let invalid = |error| PlanError::InvalidRow {
                row: row.distribution_version.clone(),
                error,
            };
            Ok(Row {
                dv: DistributionVersion::parse(&row.distribution_version).map_err(invalid)?,
                kube: KubeVersion::parse(&row.kubernetes_version).map_err(invalid)?,
                row,
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    rows.sort_by(|a, b| a.dv.cmp(&b.dv));

    let target_row = rows
        .iter()
        .rev()
        .find(|r| target.matches(&r.dv))
        .ok_or_else(|| PlanError::UnknownTarget {
            target: input.target.to_string(),
            available: rows
                .iter()
                .map(|r| r.dv.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    // Only rows up to the target take part.
    let rows: Vec<&Row> = rows.iter().filter(|r| r.dv <= target_row.dv).collect();

    let cp =
        KubeVersion::parse(&current.control_plane).map_err(|error| PlanError::InvalidCurrent {
            object: "KubeadmControlPlane spec.version".into(),
            error,
        })?;
    let (t_major, t_minor) = target_row.kube.minor();
    let (c_major, c_minor) = cp.minor();
    if c_major != t_major {
        return Err(PlanError::MajorChange {
            current: cp.to_string(),
            target: target_row.kube.to_string(),
        });
    }
    let downgrade = || PlanError::Downgrade {
        current: cp.to_string(),
        target: target_row.dv.to_string(),
        target_kubernetes: target_row.kube.to_string(),
    };
    if c_minor > t_minor {
        return Err(downgrade());
    }
    // Same minor, other string: a downgrade when every row with the control plane's exact
    // version is a later release than the target (there is no order between suffixes).
    if c_minor == t_minor && cp != target_row.kube {
        let exact: Vec<_> = input
            .rows
            .iter()
            .filter(|r| r.kubernetes_version == cp.as_str())
            .filter_map(|r| DistributionVersion::parse(&r.distribution_version).ok())
            .collect();
        if !exact.is_empty() && exact.iter().all(|dv| *dv > target_row.dv) {
            return Err(downgrade());
        }
    }

    // Pools: name → (minor, version), checked against the control plane.
    let mut pools: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for p in &current.pools {
        let v = KubeVersion::parse(&p.version).map_err(|error| PlanError::InvalidCurrent {
            object: format!("MachineDeployment {} spec.template.spec.version", p.name),
            error,
        })?;
        let (p_major, p_minor) = v.minor();
        if (p_major, p_minor) > (c_major, c_minor) {
            return Err(PlanError::PoolNewerThanControlPlane {
                pool: p.name.clone(),
                pool_version: p.version.clone(),
                control_plane: cp.to_string(),
            });
        }
        if p_major != c_major || c_minor - p_minor > 3 {
            return Err(PlanError::PoolTooFarBehind {
                pool: p.name.clone(),
                pool_version: p.version.clone(),
                control_plane: cp.to_string(),
            });
        }
        pools.insert(p.name.clone(), (p_minor, p.version.clone()));
    }

    let row_of_minor = |m: u64| -> Result<&Row, PlanError> {
        if m == t_minor {
            return Ok(target_row);
        }
        rows.iter()
            .rev()
            .find(|r| r.kube.minor() == (t_major, m))
            .copied()
            .ok_or_else(|| PlanError::MissingRow {
                minor: minor_str((t_major, m)),
                target: target_row.dv.to_string(),
            })
    };
    // The newest row whose Kubernetes version is exactly the control plane's: where pools
    // that lag behind the control plane go when the control plane itself does not move.
    let row_of_current = rows.iter().rev().find(|r| r.kube == cp).copied();

    let mut steps = Vec::new();
    for m in c_minor..=t_minor {
        let final_hop = m == t_minor;
        let cp_moves = m > c_minor || (final_hop && cp != target_row.kube);
        let row = if cp_moves {
            row_of_minor(m)?
        } else if let Some(row) = row_of_current {
            row
        } else {
            // No image is known for the control plane's exact version, so lagging pools
            // cannot join it now; they move with the next hop, unless that hop would put
            // them 4 minors behind the control plane.
            if m < t_minor {
                let stuck: Vec<&str> = pools
                    .iter()
                    .filter(|(_, (p_minor, _))| m + 1 - p_minor > 3)
                    .map(|(name, _)| name.as_str())
                    .collect();
                if !stuck.is_empty() {
                    return Err(PlanError::NoRowForControlPlaneVersion {
                        pools: stuck.join(", "),
                        control_plane: cp.to_string(),
                    });
                }
            }
            continue;
        };
        let os_image = row.row.image_for(input.image_key).to_string();
        if cp_moves {
            steps.push(Step {
                kind: StepKind::ControlPlane,
                row: row.row.clone(),
                os_image: os_image.clone(),
                pools: Vec::new(),
                kube_ovn_chart: None,
            });
        }
        let movers: Vec<String> = pools
            .iter()
            .filter(|(_, (p_minor, p_version))| {
                let eligible = p_version != row.kube.as_str()
                    && (cp_moves || *p_minor < m || (final_hop && *p_minor == m));
                let due = match input.strategy {
                    WorkerStrategy::EveryHop => true,
                    WorkerStrategy::SkipLevel => final_hop || m + 1 - p_minor > 3,
                };
                eligible && due
            })
            .map(|(name, _)| name.clone())
            .collect();
        if !movers.is_empty() {
            for name in &movers {
                pools.insert(name.clone(), (m, row.kube.as_str().to_string()));
            }
            steps.push(Step {
                kind: StepKind::Workers,
                row: row.row.clone(),
                os_image,
                pools: movers,
                kube_ovn_chart: None,
            });
        }
    }
    Ok(Plan {
        target_row: target_row.row.clone(),
        steps,
    })
}

/// The versions after `step` has been carried out: what a finished step leaves behind. Used
/// by the reconciler's bookkeeping and by the tests that check plans resume as suffixes.
pub fn apply_step(current: &CurrentVersions, step: &Step) -> CurrentVersions {
    let mut next = current.clone();
    match step.kind {
        StepKind::KubeOvn => {}
        StepKind::ControlPlane => next.control_plane = step.row.kubernetes_version.clone(),
        StepKind::Workers => {
            for p in &mut next.pools {
                if step.pools.contains(&p.name) {
                    p.version = step.row.kubernetes_version.clone();
                }
            }
        }
    }
    next
}
