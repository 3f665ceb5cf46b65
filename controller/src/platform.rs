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
    /// Namespace holding one cvsh per cluster (`cpaas-system`), which is also the platform's
    /// own namespace: the one its CAPI Clusters live in.
    pub namespace: String,
    /// Name of the global cluster's own cvsh (`global`).
    pub global_name: String,
    /// How a CAPI Cluster's namespace and name map to its cvsh's name.
    pub mapping: CvshMapping,
}

/// How a CAPI Cluster (namespace, name) maps to the name of its ClusterVersionShadow
/// (`--cvsh-mapping`). A cvsh is cluster-wide platform state, while a Cluster's namespace may
/// belong to a tenant, so the mapping must never let two Clusters reach one cvsh, nor a
/// tenant's Cluster reach the global cluster's (DESIGN.md "Security model").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CvshMapping {
    /// The platform's convention (DOMAIN.md §2): Clusters in the cvsh namespace map to the
    /// cvsh of the same name; Clusters in any other namespace map to none and are refused.
    #[default]
    Name,
    /// As `Name` for Clusters in the cvsh namespace; a Cluster in another namespace maps to
    /// `<namespace>.<name>` (a namespace is a DNS label, so the first `.` splits the two, and
    /// such a name never equals a platform Cluster's).
    NamespacedName,
}

/// A Cluster that maps to no cvsh, or to one it must not move.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unmapped {
    pub reason: &'static str,
    pub message: String,
}

/// Default `--cvsh-api-version`.
pub const DEFAULT_CVSH_API_VERSION: &str = "cvo.cpaas.io/v1alpha1";
/// Default `--cvsh-namespace` (DOMAIN.md §2).
pub const DEFAULT_CVSH_NAMESPACE: &str = "cpaas-system";

impl CvshConfig {
    /// `api_version` is `group/version`.
    pub fn new(
        api_version: &str,
        namespace: &str,
        global_name: &str,
        mapping: CvshMapping,
    ) -> Result<Self, String> {
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
            mapping,
        })
    }

    /// Whether Cluster `namespace/cluster` is the global cluster itself (self-hosted: the
    /// controller runs on the cluster it upgrades): the global name in the platform namespace.
    pub fn is_global(&self, namespace: &str, cluster: &str) -> bool {
        namespace == self.namespace && cluster == self.global_name
    }

    /// The name of the cvsh of Cluster `namespace/cluster`, or why it has none it may move.
    pub fn name_for(&self, namespace: &str, cluster: &str) -> Result<String, Unmapped> {
        if namespace == self.namespace {
            return Ok(cluster.to_string());
        }
        let name = match self.mapping {
            CvshMapping::Name => {
                return Err(Unmapped {
                    reason: "ClusterVersionShadowUnmapped",
                    message: format!(
                        "Cluster {namespace}/{cluster} is outside namespace {}, where the platform's Clusters and their ClusterVersionShadows live; with --cvsh-mapping=Name only those are upgraded. Create the request beside the platform's Cluster, or run the controller with --cvsh-mapping=NamespacedName if the platform names this cluster's shadow {namespace}.{cluster}",
                        self.namespace
                    ),
                });
            }
            CvshMapping::NamespacedName => format!("{namespace}.{cluster}"),
        };
        if name == self.global_name {
            return Err(Unmapped {
                reason: "ReservedCluster",
                message: format!(
                    "Cluster {namespace}/{cluster} maps to {}/{name}, the global cluster's own ClusterVersionShadow, which only a request in namespace {} may move",
                    self.namespace, self.namespace
                ),
            });
        }
        Ok(name)
    }

    /// The Cluster whose cvsh is `name` (the reverse of [`CvshConfig::name_for`]); `None` for
    /// the global cluster's and for names no Cluster maps to.
    pub fn cluster_for(&self, name: &str) -> Option<(String, String)> {
        if name == self.global_name {
            return None;
        }
        match (self.mapping, name.split_once('.')) {
            (CvshMapping::NamespacedName, Some((ns, cluster))) => {
                Some((ns.to_string(), cluster.to_string()))
            }
            (_, Some(_)) => None,
            (_, None) => Some((self.namespace.clone(), name.to_string())),
        }
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
        assert!(
            CvshConfig::new("cvo.cpaas.io", "cpaas-system", "global", CvshMapping::Name).is_err()
        );
        let c = CvshConfig::new(
            "cvo.cpaas.io/v1alpha1",
            "cpaas-system",
            "global",
            CvshMapping::Name,
        )
        .unwrap();
        assert_eq!(c.resource.plural, "clusterversionshadows");
        assert_eq!(
            c.desired_update("prod-a", "4.3.2")["spec"]["desiredUpdate"]["version"],
            "4.3.2"
        );
    }

    #[test]
    fn a_cluster_maps_to_one_shadow_and_tenants_never_reach_the_global_one() {
        let name = CvshConfig::new(
            DEFAULT_CVSH_API_VERSION,
            "cpaas-system",
            "global",
            CvshMapping::Name,
        )
        .unwrap();
        assert_eq!(name.name_for("cpaas-system", "prod").unwrap(), "prod");
        assert_eq!(name.name_for("cpaas-system", "global").unwrap(), "global");
        for (ns, cluster) in [("tenant-a", "prod"), ("tenant-a", "global")] {
            let e = name.name_for(ns, cluster).unwrap_err();
            assert_eq!(e.reason, "ClusterVersionShadowUnmapped");
            assert!(
                e.message.contains("--cvsh-mapping=NamespacedName"),
                "{}",
                e.message
            );
        }
        let nn = CvshConfig {
            mapping: CvshMapping::NamespacedName,
            ..name.clone()
        };
        // Two namespaces with a Cluster `prod` reach two shadows; neither is the platform's.
        assert_eq!(nn.name_for("tenant-a", "prod").unwrap(), "tenant-a.prod");
        assert_eq!(nn.name_for("tenant-b", "prod").unwrap(), "tenant-b.prod");
        assert_eq!(nn.name_for("cpaas-system", "prod").unwrap(), "prod");
        assert_eq!(
            nn.name_for("tenant-a", "global").unwrap(),
            "tenant-a.global"
        );
        // A global cluster name that a tenant mapping could produce is reserved.
        let odd = CvshConfig {
            global_name: "tenant-a.global".into(),
            ..nn
        };
        assert_eq!(
            odd.name_for("tenant-a", "global").unwrap_err().reason,
            "ReservedCluster"
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
