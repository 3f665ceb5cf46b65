//! Typed partials of the Cluster API objects this controller reads: only the fields it uses,
//! in one place for both API shapes (v1beta1, CAPI ≤ v1.10, what the platform runs; v1beta2,
//! stored from v1.11 — DOMAIN.md §5). A misspelled field is a compile error here, not a Null
//! read somewhere else. Each type is a [`kube::Resource`] whose dynamic type is the
//! [`ApiResource`] of the version being served, so it is read with `Api::namespaced_with` and
//! watched like any typed object (kube's `dynamic_pod` example).
//!
//! Provider objects (machine templates, slot pools) stay `serde_json::Value` behind the
//! provider trait (`providers`), as CAPI's own `internal/contract` does.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, DynamicResourceScope};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A reference to another object: v1beta1 `{apiVersion, kind, name, namespace}` or v1beta2
/// `{apiGroup, kind, name}`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Reference {
    /// The API group (`""` for the core group).
    pub fn group(&self) -> &str {
        match (&self.api_version, &self.api_group) {
            (Some(v), _) => v.rsplit_once('/').map_or("", |(g, _)| g),
            (None, Some(g)) => g,
            (None, None) => "",
        }
    }

    /// The version, when the reference names one (v1beta1 references do).
    pub fn version(&self) -> Option<&str> {
        self.api_version
            .as_deref()
            .map(|v| v.rsplit_once('/').map_or(v, |(_, v)| v))
    }

    /// A reference set at all (CAPI leaves optional ones out).
    pub fn is_set(&self) -> bool {
        !self.kind.is_empty() || !self.name.is_empty()
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let api = self
            .api_version
            .clone()
            .or_else(|| self.api_group.clone())
            .unwrap_or_default();
        write!(f, "{api} {} {}", self.kind, self.name)?;
        if let Some(ns) = &self.namespace {
            write!(f, " (namespace {ns})")?;
        }
        Ok(())
    }
}

/// A CAPI condition (v1beta1 `clusterv1.Condition` and v1beta2 `metav1.Condition` share these).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether condition `type_` is `True`.
pub fn condition_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The replica counters of a KubeadmControlPlane or MachineDeployment, as served in either
/// shape: v1beta1 `updatedReplicas`, `unavailableReplicas`; v1beta2 `upToDateReplicas` with
/// the v1beta1 counters under `status.deprecated.v1beta1`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub observed_generation: Option<i64>,
    pub replicas: Option<i64>,
    pub updated_replicas: Option<i64>,
    pub up_to_date_replicas: Option<i64>,
    pub ready_replicas: Option<i64>,
    pub available_replicas: Option<i64>,
    pub unavailable_replicas: Option<i64>,
    #[serde(default)]
    pub deprecated: Deprecated,
    /// KCP only: the lowest version among its machines (v1beta1).
    pub version: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// v1beta2's `status.deprecated`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Deprecated {
    #[serde(default)]
    pub v1beta1: DeprecatedV1beta1,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeprecatedV1beta1 {
    pub unavailable_replicas: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// `rollingUpdate.maxSurge` (and `maxUnavailable`) of a rollout strategy.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    pub max_surge: Option<IntOrString>,
    pub max_unavailable: Option<IntOrString>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub rolling_update: Option<RollingUpdate>,
}

/// v1beta2 `spec.rollout`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct Rollout {
    pub strategy: Option<Strategy>,
}

macro_rules! capi_resource {
    ($t:ty) => {
        impl kube::Resource for $t {
            type DynamicType = ApiResource;
            type Scope = DynamicResourceScope;

            fn kind(dt: &ApiResource) -> Cow<'_, str> {
                dt.kind.as_str().into()
            }
            fn group(dt: &ApiResource) -> Cow<'_, str> {
                dt.group.as_str().into()
            }
            fn version(dt: &ApiResource) -> Cow<'_, str> {
                dt.version.as_str().into()
            }
            fn api_version(dt: &ApiResource) -> Cow<'_, str> {
                dt.api_version.as_str().into()
            }
            fn plural(dt: &ApiResource) -> Cow<'_, str> {
                dt.plural.as_str().into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Cluster

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClusterSpec,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// CAPI rolls nothing out while true.
    #[serde(default)]
    pub paused: Option<bool>,
    /// Set for ClusterClass clusters (not upgraded by this controller).
    #[serde(default)]
    pub topology: Option<Value>,
    #[serde(default)]
    pub control_plane_ref: Option<Reference>,
    #[serde(default)]
    pub infrastructure_ref: Option<Reference>,
}

capi_resource!(Cluster);

impl Cluster {
    pub fn paused(&self) -> bool {
        self.spec.paused == Some(true)
    }
}

// ---------------------------------------------------------------------------------------------
// KubeadmControlPlane

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeadmControlPlane {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: KcpSpec,
    #[serde(default)]
    pub status: ReplicaStatus,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KcpSpec {
    pub replicas: Option<i64>,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub machine_template: KcpMachineTemplate,
    #[serde(default)]
    pub kubeadm_config_spec: KubeadmConfigSpec,
    /// v1beta1.
    pub rollout_strategy: Option<Strategy>,
    /// v1beta2.
    pub rollout: Option<Rollout>,
}

/// v1beta1 `spec.machineTemplate.infrastructureRef`, v1beta2
/// `spec.machineTemplate.spec.infrastructureRef`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KcpMachineTemplate {
    pub infrastructure_ref: Option<Reference>,
    pub spec: Option<KcpMachineTemplateSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KcpMachineTemplateSpec {
    pub infrastructure_ref: Option<Reference>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeadmConfigSpec {
    #[serde(default)]
    pub cluster_configuration: ClusterConfiguration,
    /// Kept as served: the kubelet patch write replaces the whole (atomic) list.
    #[serde(default)]
    pub files: Vec<Value>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfiguration {
    #[serde(default)]
    pub dns: ImageTagged,
    #[serde(default)]
    pub etcd: Etcd,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageTagged {
    pub image_tag: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Etcd {
    #[serde(default)]
    pub local: ImageTagged,
    /// Set when etcd is external: KCP then neither manages nor reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<Value>,
}

capi_resource!(KubeadmControlPlane);

impl KubeadmControlPlane {
    pub fn is_v1beta2(&self) -> bool {
        self.api_version.ends_with("/v1beta2")
    }

    /// The machine template in use, from whichever shape this object has.
    pub fn infrastructure_ref(&self) -> Option<&Reference> {
        let t = &self.spec.machine_template;
        if self.is_v1beta2() {
            t.spec.as_ref().and_then(|s| s.infrastructure_ref.as_ref())
        } else {
            t.infrastructure_ref.as_ref()
        }
    }

    pub fn dns_tag(&self) -> &str {
        self.spec
            .kubeadm_config_spec
            .cluster_configuration
            .dns
            .image_tag
            .as_deref()
            .unwrap_or("")
    }

    pub fn etcd_tag(&self) -> &str {
        self.spec
            .kubeadm_config_spec
            .cluster_configuration
            .etcd
            .local
            .image_tag
            .as_deref()
            .unwrap_or("")
    }

    /// `spec.replicas` (CAPI defaults it to 1).
    pub fn replicas(&self) -> i64 {
        self.spec.replicas.unwrap_or(1)
    }

    /// The rolling-update strategy, from whichever shape this object has.
    pub fn strategy(&self) -> Option<&Strategy> {
        if self.is_v1beta2() {
            self.spec.rollout.as_ref().and_then(|r| r.strategy.as_ref())
        } else {
            self.spec.rollout_strategy.as_ref()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MachineDeployment

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeployment {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: MdSpec,
    #[serde(default)]
    pub status: ReplicaStatus,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MdSpec {
    #[serde(default)]
    pub cluster_name: String,
    pub replicas: Option<i64>,
    #[serde(default)]
    pub template: MachineTemplate,
    /// v1beta1.
    pub strategy: Option<Strategy>,
    /// v1beta2.
    pub rollout: Option<Rollout>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineTemplate {
    #[serde(default)]
    pub spec: MachineSpec,
}

/// What a Machine (or a MachineDeployment's template) declares.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    #[serde(default)]
    pub cluster_name: String,
    pub version: Option<String>,
    #[serde(default)]
    pub bootstrap: Bootstrap,
    #[serde(default)]
    pub infrastructure_ref: Reference,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    pub config_ref: Option<Reference>,
    pub data_secret_name: Option<String>,
}

capi_resource!(MachineDeployment);

impl MachineDeployment {
    pub fn is_v1beta2(&self) -> bool {
        self.api_version.ends_with("/v1beta2")
    }

    pub fn version(&self) -> &str {
        self.spec.template.spec.version.as_deref().unwrap_or("")
    }

    /// `spec.replicas` (CAPI defaults it to 1).
    pub fn replicas(&self) -> i64 {
        self.spec.replicas.unwrap_or(1)
    }

    /// The rollout strategy, from whichever shape this object has.
    pub fn strategy(&self) -> Option<&Strategy> {
        if self.is_v1beta2() {
            self.spec.rollout.as_ref().and_then(|r| r.strategy.as_ref())
        } else {
            self.spec.strategy.as_ref()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Machine

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: MachineSpec,
    #[serde(default)]
    pub status: MachineStatus,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    pub node_ref: Option<NodeRef>,
    pub node_info: Option<NodeInfo>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// v1beta2: the v1beta1 conditions.
    #[serde(default)]
    pub deprecated: Deprecated,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRef {
    #[serde(default)]
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub kubelet_version: Option<String>,
}

capi_resource!(Machine);

impl Machine {
    pub fn version(&self) -> &str {
        self.spec.version.as_deref().unwrap_or("")
    }

    pub fn kubelet(&self) -> &str {
        self.status
            .node_info
            .as_ref()
            .and_then(|n| n.kubelet_version.as_deref())
            .unwrap_or("")
    }

    pub fn node_healthy(&self) -> bool {
        condition_true(&self.status.conditions, "NodeHealthy")
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    }
}

// ---------------------------------------------------------------------------------------------
// MachinePool (only its existence matters)

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct MachinePool {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: MachinePoolSpec,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachinePoolSpec {
    #[serde(default)]
    pub cluster_name: String,
}

capi_resource!(MachinePool);

/// `metadata.name` or `""`.
pub fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_shapes_of_a_control_plane_read_the_same() {
        let v1 = json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
            "metadata": {"name": "cp", "generation": 2},
            "spec": {"version": "v1.33.7-4", "replicas": 3,
                     "machineTemplate": {"infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DCSMachineTemplate", "name": "t"}},
                     "kubeadmConfigSpec": {"clusterConfiguration": {"dns": {"imageTag": "1.14.3"}, "etcd": {"local": {"imageTag": "v3.5.28"}}}},
                     "rolloutStrategy": {"rollingUpdate": {"maxSurge": 0}}},
            "status": {"observedGeneration": 2, "updatedReplicas": 3, "unavailableReplicas": 0},
        });
        let v2 = json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta2", "kind": "KubeadmControlPlane",
            "metadata": {"name": "cp", "generation": 2},
            "spec": {"version": "v1.33.7-4", "replicas": 3,
                     "machineTemplate": {"spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DCSMachineTemplate", "name": "t"}}},
                     "kubeadmConfigSpec": {"clusterConfiguration": {"dns": {"imageTag": "1.14.3"}, "etcd": {"local": {"imageTag": "v3.5.28"}}}},
                     "rollout": {"strategy": {"rollingUpdate": {"maxSurge": 0}}}},
            "status": {"observedGeneration": 2, "upToDateReplicas": 3, "deprecated": {"v1beta1": {"unavailableReplicas": 0}}},
        });
        for obj in [v1, v2] {
            let kcp: KubeadmControlPlane = serde_json::from_value(obj).unwrap();
            let r = kcp.infrastructure_ref().unwrap();
            assert_eq!(
                (r.group(), r.kind.as_str(), r.name.as_str()),
                ("infrastructure.cluster.x-k8s.io", "DCSMachineTemplate", "t")
            );
            assert_eq!((kcp.dns_tag(), kcp.etcd_tag()), ("1.14.3", "v3.5.28"));
            assert_eq!(
                kcp.strategy()
                    .and_then(|s| s.rolling_update.clone())
                    .and_then(|r| r.max_surge),
                Some(IntOrString::Int(0))
            );
        }
    }

    #[test]
    fn unknown_and_missing_fields_are_tolerated() {
        let m: Machine =
            serde_json::from_value(json!({"metadata": {"name": "m"}, "extra": 1})).unwrap();
        assert_eq!(
            (m.version(), m.kubelet(), m.node_healthy()),
            ("", "", false)
        );
        let md: MachineDeployment =
            serde_json::from_value(json!({"spec": {"template": {}}})).unwrap();
        assert_eq!((md.version(), md.replicas()), ("", 1));
    }
}
