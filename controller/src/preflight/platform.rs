//! PlatformPreflight: the platform's own checks, as the cluster's ClusterVersionShadow
//! reports them (DOMAIN.md §2).

use super::{Input, check, passed};
use crate::api::{CheckName, CheckState, PreflightCheck};
use crate::platform;

pub(super) fn platform_preflight(i: &Input<'_>) -> PreflightCheck {
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
