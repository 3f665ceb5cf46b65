//! The versions: the target is a row of the matrix, reachable from where the cluster is
//! (UpgradePathSupported), no downgrade, the cluster's Kubernetes within the row's range, and
//! the ordering against the global tier (DOMAIN.md §1, §2).

use super::{Input, check, passed};
use crate::api::{CheckName, CheckState, PreflightCheck};
use crate::capi;
use crate::platform;
use crate::version::{DistributionVersion, KubeVersion, minor_str};

/// The cluster's Distribution Version from its cvsh, or the check that explains why not.
pub(super) fn cluster_version(i: &Input<'_>, name: CheckName) -> Result<String, PreflightCheck> {
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

pub(super) fn parse_dv(v: &str) -> Option<DistributionVersion> {
    DistributionVersion::parse(v).ok()
}

pub(super) fn upgrade_path(i: &Input<'_>) -> PreflightCheck {
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

pub(super) fn not_a_downgrade(i: &Input<'_>) -> PreflightCheck {
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

/// A Kubernetes (major, minor).
type Minor = (u64, u64);

/// The target row's compatible Kubernetes minors (`compatibleKubernetes`, default: its minor
/// and the three below), or the check saying the row is malformed.
fn compatible_range(
    i: &Input<'_>,
    name: CheckName,
    target: &KubeVersion,
) -> Result<(Minor, Minor), PreflightCheck> {
    let (major, tminor) = target.minor();
    let parse_minor = |s: &str| -> Option<(u64, u64)> {
        let (ma, mi) = s.trim_start_matches('v').split_once('.')?;
        Some((ma.parse().ok()?, mi.parse().ok()?))
    };
    match &i.target.compatible_kubernetes {
        Some(r) => match (parse_minor(&r.min), parse_minor(&r.max)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(check(
                name,
                CheckState::Failed,
                "InvalidMatrix",
                format!(
                    "row {} compatibleKubernetes {{min: {}, max: {}}} is not MAJOR.MINOR",
                    i.target.distribution_version, r.min, r.max
                ),
            )),
        },
        None => Ok(((major, tminor.saturating_sub(3)), (major, tminor))),
    }
}

/// [`CheckName::WorkloadsCompatible`]: for the global cluster's own request, every workload
/// cluster already runs Kubernetes inside the target row's compatible range (before the global
/// tier moves to 4.3, every workload cluster must be on 1.31–1.34): the global tier must never
/// leave a workload cluster it can no longer manage. Any other request passes.
pub(super) fn workloads_compatible(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::WorkloadsCompatible;
    let Some(w) = &i.obs.global_self else {
        return passed(name, "applies only to the global cluster's own upgrade");
    };
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
    let (min, max) = match compatible_range(i, name, &target) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let range = format!("{}–{}", minor_str(min), minor_str(max));
    if let Some(ns) = &w.only_namespace {
        return check(
            name,
            CheckState::Unknown,
            "WorkloadsNotWatched",
            format!(
                "the controller watches only namespace {ns} (--namespace), so it cannot see every workload cluster; upgrading the global cluster needs a controller that watches all namespaces (chart watchNamespace: \"\")"
            ),
        );
    }
    if let Some(selector) = &w.only_shard {
        return check(
            name,
            CheckState::Unknown,
            "WorkloadsNotWatched",
            format!(
                "the controller handles only the Clusters of shard {selector:?} (--shard-selector), so it cannot see every workload cluster; upgrading the global cluster needs a controller without a shard selector"
            ),
        );
    }
    let mut outside = Vec::new();
    for (cluster, versions) in &w.clusters {
        let bad: Vec<String> = versions
            .iter()
            .filter(|(_, v)| {
                !KubeVersion::parse(v).is_ok_and(|k| k.minor() >= min && k.minor() <= max)
            })
            .map(|(what, v)| format!("{what} at {v}"))
            .collect();
        if !bad.is_empty() {
            outside.push(format!("{cluster} ({})", bad.join(", ")));
        }
    }
    if outside.is_empty() {
        return passed(
            name,
            format!(
                "all {} workload clusters run Kubernetes within {range}, the range row {} supports",
                w.clusters.len(),
                i.target.distribution_version
            ),
        );
    }
    check(
        name,
        CheckState::Failed,
        "WorkloadClusterOutOfRange",
        format!(
            "row {} manages workload clusters at Kubernetes {range} only, and {} of them are outside: {}; upgrade them into that range before the global cluster",
            i.target.distribution_version,
            outside.len(),
            outside.join("; ")
        ),
    )
}

pub(super) fn kubernetes_compatible(i: &Input<'_>) -> PreflightCheck {
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
    let (min, max) = match compatible_range(i, name, &target) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let mut outside = Vec::new();
    let mut seen = vec![(
        format!("KubeadmControlPlane {}", capi::name(&i.kcp.metadata)),
        i.kcp.spec.version.as_str(),
    )];
    for md in i.mds {
        seen.push((
            format!("MachineDeployment {}", capi::name(&md.metadata)),
            md.version(),
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

pub(super) fn global_at_target(i: &Input<'_>) -> PreflightCheck {
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
    // The global cluster's own request: it is the primary; only the DR standby must be
    // there first.
    let skip = usize::from(i.obs.global_self.is_some());
    if skip == 1 && i.obs.globals.len() <= 1 {
        return passed(
            name,
            "this is the global cluster itself, and no DR standby is configured (--global-standby-kubeconfig)",
        );
    }
    for (label, cvsh) in i.obs.globals.iter().skip(skip) {
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
                .skip(skip)
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    )
}

pub(super) fn below_global(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::WorkloadBelowGlobal;
    if i.obs.global_self.is_some() {
        return passed(
            name,
            "does not apply: this is the global cluster itself (WorkloadsCompatible checks the workload clusters)",
        );
    }
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
