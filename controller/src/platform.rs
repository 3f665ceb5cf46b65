//! The platform's side of an upgrade (DOMAIN.md §2): the Cluster Version Operator's
//! `ClusterVersionShadow` (cvsh) objects on the global cluster, and the ResourcePatches that
//! record modifications of platform components. Readers here are pure; the API calls live in
//! `observe` and `reconcile`.

use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::version::DistributionVersion;

/// Where the ClusterVersionShadows live. The CVO's API group/version is not published, so it is
/// configuration (`--cvsh-api-version`, Helm value `cvsh.apiVersion`).
#[derive(Debug, Clone)]
pub struct CvshConfig {
    pub resource: ApiResource,
    /// Namespace holding one cvsh per cluster, named after the cluster (`cpaas-system`).
    pub namespace: String,
    /// Name of the global cluster's own cvsh (`global`).
    pub global_name: String,
}

/// Default `--cvsh-api-version`.
pub const DEFAULT_CVSH_API_VERSION: &str = "cvo.cpaas.io/v1alpha1";
/// Default `--cvsh-namespace` (DOMAIN.md §2).
pub const DEFAULT_CVSH_NAMESPACE: &str = "cpaas-system";

impl CvshConfig {
    /// `api_version` is `group/version`.
    pub fn new(api_version: &str, namespace: &str, global_name: &str) -> Result<Self, String> {
        let (group, version) = api_version
            .split_once('/')
            .filter(|(g, v)| !g.is_empty() && !v.is_empty() && !v.contains('/'))
            .ok_or_else(|| {
                format!(
                    "cvsh API version {api_version:?} must be GROUP/VERSION, e.g. {DEFAULT_CVSH_API_VERSION}"
                )
            })?;
        let gvk = GroupVersionKind::gvk(group, version, "ClusterVersionShadow");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "clusterversionshadows");
        Ok(Self {
            resource,
            namespace: namespace.to_string(),
            global_name: global_name.to_string(),
        })
    }

    /// The one write this controller makes to a cvsh: its desired version (server-side apply,
    /// so only `spec.desiredUpdate.version` is ours).
    pub fn desired_update(&self, name: &str, version: &str) -> Value {
        json!({
            "apiVersion": self.resource.api_version,
            "kind": self.resource.kind,
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"desiredUpdate": {"version": version}},
        })
    }
}

/// The platform's ResourcePatch (`operator.alauda.io/v1alpha1`, cluster-scoped, in the
/// cluster it modifies).
pub fn resource_patch_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("operator.alauda.io", "v1alpha1", "ResourcePatch"),
        "resourcepatches",
    )
}

/// Annotation that exempts a ResourcePatch from review for one target version (DOMAIN.md §2).
pub const EXEMPT_ANNOTATION: &str = "config.cpaas.io/exempt-for-ver";

/// `status.current.version` of a cvsh.
pub fn current_version(cvsh: &Value) -> Option<&str> {
    cvsh["status"]["current"]["version"]
        .as_str()
        .filter(|s| !s.is_empty())
}

/// `spec.desiredUpdate.version` of a cvsh.
pub fn desired_version(cvsh: &Value) -> Option<&str> {
    cvsh["spec"]["desiredUpdate"]["version"]
        .as_str()
        .filter(|s| !s.is_empty())
}

/// A cvsh condition: (status is "True", reason, message).
pub fn condition<'a>(cvsh: &'a Value, type_: &str) -> Option<(bool, &'a str, &'a str)> {
    cvsh["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"] == "True",
                c["reason"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or(""),
            )
        })
}

/// Same Distribution Version, ignoring a leading `v`.
pub fn same_version(a: &str, b: &str) -> bool {
    match (DistributionVersion::parse(a), DistributionVersion::parse(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.trim_start_matches('v') == b.trim_start_matches('v'),
    }
}

/// The cvsh says the cluster runs `version` and is Ready.
pub fn at_version(cvsh: &Value, version: &str) -> bool {
    current_version(cvsh).is_some_and(|c| same_version(c, version))
        && condition(cvsh, "Ready").is_some_and(|(ready, _, _)| ready)
}

/// A platform preflight check that blocks: `(name, reason, message)`. A check blocks when its
/// state is `Failed` and its policy does not say it only warns.
pub fn failed_platform_checks(cvsh: &Value) -> Option<Vec<(String, String, String)>> {
    let checks = cvsh["status"]["preflight"]["checks"].as_array()?;
    Some(
        checks
            .iter()
            .filter(|c| {
                c["state"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("failed"))
            })
            .filter(|c| {
                !c["policy"].as_str().is_some_and(|p| {
                    p.eq_ignore_ascii_case("warn") || p.eq_ignore_ascii_case("ignore")
                })
            })
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or("?").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                    c["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cvsh(current: &str, ready: &str, checks: Value) -> Value {
        json!({
            "spec": {"desiredUpdate": {"version": "4.3.2"}},
            "status": {
                "current": {"version": current},
                "conditions": [{"type": "Ready", "status": ready, "reason": "AsExpected", "message": ""}],
                "preflight": {"checks": checks},
            }
        })
    }

    #[test]
    fn config_rejects_a_bare_group() {
        assert!(CvshConfig::new("cvo.cpaas.io", "cpaas-system", "global").is_err());
        let c = CvshConfig::new("cvo.cpaas.io/v1alpha1", "cpaas-system", "global").unwrap();
        assert_eq!(c.resource.plural, "clusterversionshadows");
        assert_eq!(
            c.desired_update("prod-a", "4.3.2")["spec"]["desiredUpdate"]["version"],
            "4.3.2"
        );
    }

    #[test]
    fn at_version_needs_ready_and_ignores_a_leading_v() {
        assert!(at_version(&cvsh("v4.3.2", "True", json!([])), "4.3.2"));
        assert!(!at_version(&cvsh("4.3.2", "False", json!([])), "4.3.2"));
        assert!(!at_version(&cvsh("4.2.5", "True", json!([])), "4.3.2"));
        assert_eq!(
            desired_version(&cvsh("4.2.5", "True", json!([]))),
            Some("4.3.2")
        );
    }

    #[test]
    fn only_blocking_failed_platform_checks_count() {
        let c = cvsh(
            "4.2.5",
            "True",
            json!([
                {"name": "ClusterRunning", "policy": "Block", "state": "Passed"},
                {"name": "PlatformLicense", "policy": "Block", "state": "Failed", "reason": "Expired", "message": "license expired"},
                {"name": "ModuleInfoStable", "policy": "Warn", "state": "Failed"},
            ]),
        );
        let failed = failed_platform_checks(&c).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "PlatformLicense");
        assert!(failed_platform_checks(&json!({"status": {}})).is_none());
    }
}
