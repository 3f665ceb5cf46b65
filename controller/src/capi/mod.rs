//! The parts of Cluster API this controller reads and writes: typed partials of Cluster,
//! KubeadmControlPlane, MachineDeployment and Machine ([`objects`]) in both API shapes —
//! v1beta1 (CAPI v1.10, what the platform runs) and v1beta2 (stored from v1.11; DOMAIN.md §5) —
//! and the server-side-apply bodies of its writes ([`writes`]). Provider objects (machine
//! templates, slot pools) stay JSON behind the provider trait.

mod objects;
mod writes;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

pub use objects::*;
pub use writes::{KcpWrite, MdWrite, kcp_apply, md_apply};

pub const CLUSTER_GROUP: &str = "cluster.x-k8s.io";
pub const CONTROLPLANE_GROUP: &str = "controlplane.cluster.x-k8s.io";
pub const INFRASTRUCTURE_GROUP: &str = "infrastructure.cluster.x-k8s.io";
pub const BOOTSTRAP_GROUP: &str = "bootstrap.cluster.x-k8s.io";
pub const V1BETA1: &str = "v1beta1";
pub const V1BETA2: &str = "v1beta2";
/// Label CAPI puts on Machines and MachineDeployments naming their Cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Label on control-plane Machines naming their KubeadmControlPlane.
pub const CONTROL_PLANE_NAME_LABEL: &str = "cluster.x-k8s.io/control-plane-name";
/// Label on worker Machines naming their MachineDeployment.
pub const DEPLOYMENT_NAME_LABEL: &str = "cluster.x-k8s.io/deployment-name";
/// KCP annotation: KCP neither validates CoreDNS migrations nor updates CoreDNS in the
/// workload cluster. The platform's providers reconcile CoreDNS themselves, and its tags
/// (`1.14.2-v4.3.4`, some older than the previous row's) are outside what KCP's
/// corefile-migration library accepts (DOMAIN.md §5; CAPI v1.10
/// controlplane/kubeadm/internal/webhooks/kubeadm_control_plane.go validateCoreDNSVersion).
pub const SKIP_COREDNS_ANNOTATION: &str = "controlplane.cluster.x-k8s.io/skip-coredns";
/// The kubelet patch file kubeadm applies on nodes of Kubernetes ≥ 1.35 (DOMAIN.md §3).
pub const KUBELET_PATCH_PATH: &str = "/etc/kubernetes/patches/kubeletconfiguration0+strategic.json";

/// Which CAPI API version this controller reads and writes (`--capi-api-version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApiVersion {
    #[default]
    V1beta1,
    V1beta2,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1beta1 => V1BETA1,
            ApiVersion::V1beta2 => V1BETA2,
        }
    }

    fn resource(self, group: &str, kind: &str) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(group, self.as_str(), kind))
    }

    pub fn cluster(self) -> ApiResource {
        self.resource(CLUSTER_GROUP, "Cluster")
    }
    pub fn kubeadm_control_plane(self) -> ApiResource {
        self.resource(CONTROLPLANE_GROUP, "KubeadmControlPlane")
    }
    pub fn machine_deployment(self) -> ApiResource {
        self.resource(CLUSTER_GROUP, "MachineDeployment")
    }
    pub fn machine(self) -> ApiResource {
        self.resource(CLUSTER_GROUP, "Machine")
    }
    pub fn machine_pool(self) -> ApiResource {
        self.resource(CLUSTER_GROUP, "MachinePool")
    }
}

/// The API resource of `kind` at `api_version` (`group/version`, or `v1` for the core group),
/// with the conventional plural.
pub fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(group, version, kind))
}

/// `metadata.name`, or `""`.
pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

/// The value of label `key`, if set.
pub fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// An ownerReference to the Cluster (for cloned templates: owned by the Cluster, as CAPI's
/// own clones are, so deleting the Cluster removes them).
pub fn owner_reference(cluster: &Cluster) -> Value {
    json!({
        "apiVersion": cluster.api_version,
        "kind": cluster.kind,
        "name": cluster.metadata.name,
        "uid": cluster.metadata.uid,
    })
}

/// A reference to a template (given as JSON: provider objects stay JSON) in the shape of the
/// object that will hold it: v1beta1 references are full (and atomic for server-side apply:
/// every field is written); v1beta2 references are `{apiGroup, kind, name}`.
pub fn reference_to(obj: &Value, v1beta2_holder: bool) -> Reference {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if v1beta2_holder {
        return Reference {
            api_group: Some(
                api_version
                    .rsplit_once('/')
                    .map_or("", |(g, _)| g)
                    .to_string(),
            ),
            kind: s(&obj["kind"]),
            name: s(&obj["metadata"]["name"]),
            ..Reference::default()
        };
    }
    Reference {
        api_version: Some(api_version.to_string()),
        kind: s(&obj["kind"]),
        name: s(&obj["metadata"]["name"]),
        namespace: obj["metadata"]["namespace"].as_str().map(str::to_string),
        ..Reference::default()
    }
}

/// The field managers (other than this controller's) that own the field at `path` of an
/// object with metadata `meta` (`managedFields`; `fieldsV1` keys are `f:<name>`).
pub fn field_managers(meta: &ObjectMeta, path: &[&str]) -> Vec<String> {
    managers_of(meta, path, false)
}

/// [`field_managers`] that own it by server-side apply (operation `Apply`): writers that
/// re-assert their value on their next apply.
pub fn apply_managers(meta: &ObjectMeta, path: &[&str]) -> Vec<String> {
    managers_of(meta, path, true)
}

fn managers_of(meta: &ObjectMeta, path: &[&str], apply_only: bool) -> Vec<String> {
    let mut out: Vec<String> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| !apply_only || entry.operation.as_deref() == Some("Apply"))
        .filter(|entry| {
            let Some(fields) = &entry.fields_v1 else {
                return false;
            };
            let mut node = &fields.0;
            for key in path {
                node = &node[format!("f:{key}").as_str()];
            }
            !node.is_null()
        })
        .filter_map(|entry| entry.manager.as_deref())
        .filter(|m| *m != crate::FIELD_MANAGER)
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Why the KubeadmControlPlane `kcp` is not the control plane of `cluster`, if it is not: it
/// must be in the Cluster's namespace, and neither owned by another Cluster (CAPI's Cluster
/// controller sets the ownerReference when it adopts it) nor labelled with another Cluster's
/// name. A control plane CAPI has not adopted yet (a paused Cluster) is the Cluster's by its
/// `controlPlaneRef` alone.
pub fn not_owned_by(kcp: &KubeadmControlPlane, cluster: &Cluster) -> Option<String> {
    if kcp.metadata.namespace != cluster.metadata.namespace {
        return Some("is in another namespace than its Cluster".into());
    }
    let cluster_name = name(&cluster.metadata);
    if let Some(other) = label(&kcp.metadata, CLUSTER_NAME_LABEL).filter(|l| *l != cluster_name) {
        return Some(format!("carries {CLUSTER_NAME_LABEL}={other}"));
    }
    let owners: Vec<_> = kcp
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == "Cluster")
        .collect();
    let uid = cluster.metadata.uid.as_deref();
    let ours = owners.iter().any(|o| {
        o.name == cluster_name && (uid.is_none() || o.uid.is_empty() || Some(o.uid.as_str()) == uid)
    });
    (!owners.is_empty() && !ours).then(|| {
        let names: Vec<&str> = owners.iter().map(|o| o.name.as_str()).collect();
        format!("is owned by Cluster {}", names.join(", "))
    })
}

/// What a reference must point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    /// A machine template of a provider this controller has a module for.
    InfrastructureTemplate,
    /// A `KubeadmConfigTemplate`.
    BootstrapTemplate,
}

/// Whether `reference` stays in namespace `ns` and names the expected group and kind. An
/// absent reference is fine here (CAPI's webhooks require the ones that must exist).
pub fn check_reference(
    reference: Option<&Reference>,
    kind: RefKind,
    ns: &str,
) -> Result<(), String> {
    let Some(reference) = reference.filter(|r| r.is_set()) else {
        return Ok(());
    };
    if reference.kind.is_empty()
        || (reference.api_version.is_none() && reference.api_group.is_none())
    {
        return Err("has no kind or API group".into());
    }
    if reference.name.is_empty() {
        return Err("has no name".into());
    }
    if let Some(other) = reference.namespace.as_deref().filter(|n| !n.is_empty())
        && other != ns
    {
        return Err(format!("points into namespace {other:?}"));
    }
    let group = reference.group();
    let ok = match kind {
        RefKind::InfrastructureTemplate => {
            group == INFRASTRUCTURE_GROUP && providers::for_template_kind(&reference.kind).is_ok()
        }
        RefKind::BootstrapTemplate => {
            group == BOOTSTRAP_GROUP && reference.kind == "KubeadmConfigTemplate"
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "names {} of group {group:?}, not {}",
            reference.kind,
            match kind {
                RefKind::InfrastructureTemplate =>
                    "a machine template of group infrastructure.cluster.x-k8s.io that a provider module handles",
                RefKind::BootstrapTemplate =>
                    "a KubeadmConfigTemplate of group bootstrap.cluster.x-k8s.io",
            }
        ))
    }
}

/// What makes a bootstrap template clone distinct besides its line and version: the kubelet
/// image-pull patch it adds (part of the clone's name hash; changing it renames every clone).
pub const KUBELET_PATCH_VARIANT: &str = "kubelet-image-pull-never-verify";

/// The name of the KubeadmConfigTemplate clone of line `base` for a hop to `version` (≥ 1.35).
pub fn bootstrap_clone_name(base: &str, version: &str) -> String {
    providers::clone_name(base, version, KUBELET_PATCH_VARIANT)
}

/// Whether Kubernetes `(major, minor)` needs the kubelet image-pull patch (≥ 1.35).
pub fn needs_kubelet_patch(minor: (u64, u64)) -> bool {
    minor >= (1, 35)
}

/// The kubelet patch file entry for `spec.kubeadmConfigSpec.files` / KubeadmConfig `files`.
pub fn kubelet_patch_file() -> Value {
    json!({
        "path": KUBELET_PATCH_PATH,
        "owner": "root:root",
        "permissions": "0644",
        "content": "{\n  \"imagePullCredentialsVerificationPolicy\": \"NeverVerify\"\n}\n",
    })
}

/// `files` with the kubelet patch entry replacing any entry at its path. `files` is an atomic
/// list for server-side apply, so the whole list is written.
pub fn with_kubelet_patch(files: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = files
        .iter()
        .filter(|f| f["path"] != KUBELET_PATCH_PATH)
        .cloned()
        .collect();
    out.push(kubelet_patch_file());
    out
}

/// Slots a rollout holds beyond its replicas, from its strategy: `maxSurge` as an int, or a
/// percentage of the replicas rounded up (as CAPI does), default 1; 0 for `OnDelete` (machines
/// are replaced only after someone deletes them) and without replicas; never more than the
/// replicas (DOMAIN.md §4).
pub fn surge(replicas: i64, strategy: Option<&Strategy>) -> u32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    const DEFAULT: u32 = 1;
    let replicas = replicas.clamp(0, u32::MAX as i64) as u32;
    if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        return 0;
    }
    let raw = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_surge.as_ref());
    let surge = match raw {
        Some(IntOrString::Int(n)) => (*n).clamp(0, i32::MAX) as u32,
        Some(IntOrString::String(s)) => {
            let s = s.trim();
            match s.strip_suffix('%') {
                Some(pct) => pct
                    .trim()
                    .parse::<u64>()
                    .map_or(DEFAULT, |p| (p * replicas as u64).div_ceil(100) as u32),
                None => s.parse::<u32>().unwrap_or(DEFAULT),
            }
        }
        None => DEFAULT,
    };
    surge.min(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kcp_of(v: Value) -> KubeadmControlPlane {
        serde_json::from_value(v).unwrap()
    }

    fn cluster_of(v: Value) -> Cluster {
        serde_json::from_value(v).unwrap()
    }

    fn reference(v: Value) -> Reference {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_control_plane_must_be_the_clusters_own() {
        let cluster =
            cluster_of(json!({"metadata": {"name": "a", "namespace": "ns", "uid": "u-a"}}));
        let kcp = |meta: Value| {
            let mut m = json!({"name": "a-cp", "namespace": "ns"});
            m.as_object_mut()
                .unwrap()
                .extend(meta.as_object().unwrap().clone());
            kcp_of(json!({"metadata": m}))
        };
        let owner = |name: &str, uid: &str| json!({"ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "name": name, "uid": uid}]});
        assert_eq!(not_owned_by(&kcp(owner("a", "u-a")), &cluster), None);
        // Not adopted yet (a paused Cluster): its controlPlaneRef decides.
        assert_eq!(not_owned_by(&kcp(json!({})), &cluster), None);
        assert!(
            not_owned_by(&kcp(owner("b", "u-b")), &cluster)
                .unwrap()
                .contains("Cluster b")
        );
        assert!(
            not_owned_by(&kcp(owner("a", "u-other")), &cluster).is_some(),
            "same name, another Cluster"
        );
        let labelled = kcp(json!({"labels": {CLUSTER_NAME_LABEL: "b"}}));
        assert!(not_owned_by(&labelled, &cluster).unwrap().contains("=b"));
        let elsewhere = kcp_of(json!({"metadata": {"name": "a-cp", "namespace": "other"}}));
        assert!(not_owned_by(&elsewhere, &cluster).is_some());
    }

    #[test]
    fn references_stay_in_the_namespace_and_name_expected_kinds() {
        let infra = |kind: &str, ns: Option<&str>| {
            let mut r = json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": kind, "name": "t"});
            if let Some(ns) = ns {
                r["namespace"] = json!(ns);
            }
            reference(r)
        };
        let t = RefKind::InfrastructureTemplate;
        assert!(check_reference(Some(&infra("DCSMachineTemplate", Some("ns"))), t, "ns").is_ok());
        assert!(check_reference(Some(&infra("DCSMachineTemplate", None)), t, "ns").is_ok());
        assert!(check_reference(None, t, "ns").is_ok());
        assert!(
            check_reference(
                Some(&infra("DCSMachineTemplate", Some("kube-system"))),
                t,
                "ns"
            )
            .unwrap_err()
            .contains("kube-system")
        );
        assert!(check_reference(Some(&infra("AWSMachineTemplate", None)), t, "ns").is_err());
        let secret = reference(json!({"apiVersion": "v1", "kind": "Secret", "name": "s"}));
        assert!(check_reference(Some(&secret), t, "ns").is_err());
        assert!(check_reference(Some(&secret), RefKind::BootstrapTemplate, "ns").is_err());
        let v1beta2 = reference(
            json!({"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfigTemplate", "name": "b"}),
        );
        assert!(check_reference(Some(&v1beta2), RefKind::BootstrapTemplate, "ns").is_ok());
    }

    #[test]
    fn field_managers_name_who_owns_a_field_but_this_controller() {
        let meta: ObjectMeta = serde_json::from_value(json!({"managedFields": [
            {"manager": crate::FIELD_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:version": {}}}},
            {"manager": "kubectl-edit", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:version": {}, "f:replicas": {}}}},
            {"manager": "capi", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}},
        ]}))
        .unwrap();
        assert_eq!(
            field_managers(&meta, &["spec", "version"]),
            vec!["kubectl-edit"]
        );
        assert!(field_managers(&meta, &["spec", "paused"]).is_empty());
    }

    #[test]
    fn bootstrap_clone_names_are_stable_and_not_the_image_path() {
        // Golden: FNV-1a of (base, version, KUBELET_PATCH_VARIANT), computed independently.
        assert_eq!(
            bootstrap_clone_name("prod-a-md-a-cfg", "v1.35.6-acp.1"),
            "prod-a-md-a-cfg-v1-35-6-acp-1-663e66a5"
        );
        assert_ne!(
            bootstrap_clone_name("prod-a-md-a-cfg", "v1.35.6-acp.1"),
            providers::clone_name("prod-a-md-a-cfg", "v1.35.6-acp.1", KUBELET_PATCH_PATH),
            "the variant is the patch, not the file path"
        );
    }

    fn kcp() -> Value {
        json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
            "metadata": {"name": "prod-a-cp", "namespace": "ns", "resourceVersion": "7"},
            "spec": {"version": "v1.34.5-3", "replicas": 3, "kubeadmConfigSpec": {"files": [
                {"path": "/etc/hosts.extra", "content": "x"},
                {"path": KUBELET_PATCH_PATH, "content": "old"},
            ]}},
        })
    }

    fn write(kcp: Value, version: &str, minor: (u64, u64), template: Reference) -> Value {
        serde_json::to_value(kcp_apply(
            &kcp_of(kcp),
            version,
            minor,
            "1.14.2-v4.3.11",
            "v3.5.28-260625",
            template,
        ))
        .unwrap()
    }

    #[test]
    fn kcp_write_carries_exactly_the_hop_fields() {
        let tref = json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DCSMachineTemplate", "name": "t2", "namespace": "ns"});
        let w = write(kcp(), "v1.34.5-3", (1, 34), reference(tref.clone()));
        assert_eq!(w["spec"]["version"], "v1.34.5-3");
        assert_eq!(w["spec"]["machineTemplate"]["infrastructureRef"], tref);
        assert_eq!(
            w["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]["dns"]["imageTag"],
            "1.14.2-v4.3.11"
        );
        assert_eq!(
            w["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]["etcd"]["local"]["imageTag"],
            "v3.5.28-260625"
        );
        assert_eq!(w["metadata"]["annotations"][SKIP_COREDNS_ANNOTATION], "");
        assert!(
            w["spec"].get("replicas").is_none(),
            "fields we do not own are not sent"
        );
        assert!(w["metadata"].get("resourceVersion").is_none());
        assert!(
            w["spec"]["kubeadmConfigSpec"].get("files").is_none(),
            "no kubelet patch below 1.35"
        );
    }

    #[test]
    fn v1beta2_shapes_use_their_own_paths_and_references() {
        let mut k = kcp();
        k["apiVersion"] = json!("controlplane.cluster.x-k8s.io/v1beta2");
        k["spec"]["machineTemplate"] = json!({"spec": {"infrastructureRef": {
            "apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DCSMachineTemplate", "name": "t1"}}});
        let typed = kcp_of(k.clone());
        let r = typed.infrastructure_ref().unwrap();
        assert_eq!(r.name, "t1");
        assert_eq!(
            (r.group(), r.version(), r.kind.as_str()),
            (
                "infrastructure.cluster.x-k8s.io",
                None,
                "DCSMachineTemplate"
            )
        );
        let template = json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DCSMachineTemplate",
                              "metadata": {"name": "t2", "namespace": "ns"}});
        let tref = reference_to(&template, true);
        assert_eq!(
            serde_json::to_value(&tref).unwrap(),
            json!({"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DCSMachineTemplate", "name": "t2"})
        );
        let w = write(k, "v1.34.5-3", (1, 34), tref.clone());
        assert_eq!(
            w["spec"]["machineTemplate"]["spec"]["infrastructureRef"],
            serde_json::to_value(&tref).unwrap()
        );
        assert!(
            w["spec"]["machineTemplate"]
                .get("infrastructureRef")
                .is_none()
        );
        // v1beta1 keeps the full, atomic reference.
        let full = reference_to(&template, false);
        assert_eq!(
            full.api_version.as_deref(),
            Some("infrastructure.cluster.x-k8s.io/v1beta1")
        );
        assert_eq!(
            (full.group(), full.version(), full.kind.as_str()),
            (
                "infrastructure.cluster.x-k8s.io",
                Some("v1beta1"),
                "DCSMachineTemplate"
            )
        );
    }

    #[test]
    fn from_1_35_the_kubelet_patch_file_is_added_once_and_other_files_kept() {
        let w = write(kcp(), "v1.35.6-acp.1", (1, 35), Reference::default());
        let files = w["spec"]["kubeadmConfigSpec"]["files"].as_array().unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0]["path"], "/etc/hosts.extra");
        assert_eq!(files[1]["path"], KUBELET_PATCH_PATH);
        assert!(
            files[1]["content"]
                .as_str()
                .unwrap()
                .contains("\"imagePullCredentialsVerificationPolicy\": \"NeverVerify\"")
        );
    }

    fn md(api: &str, replicas: Value, strategy: Value) -> MachineDeployment {
        let v = if api.ends_with("v1beta2") {
            json!({"apiVersion": api, "spec": {"replicas": replicas, "rollout": {"strategy": strategy}}})
        } else {
            json!({"apiVersion": api, "spec": {"replicas": replicas, "strategy": strategy}})
        };
        serde_json::from_value(v).unwrap()
    }

    fn md_surge(md: &MachineDeployment) -> u32 {
        surge(md.replicas(), md.strategy())
    }

    #[test]
    fn md_surge_int_percent_default_and_on_delete() {
        for api in ["cluster.x-k8s.io/v1beta1", "cluster.x-k8s.io/v1beta2"] {
            let rolling =
                |s: Value| json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": s}});
            assert_eq!(md_surge(&md(api, json!(5), rolling(json!(2)))), 2, "{api}");
            assert_eq!(md_surge(&md(api, json!(5), rolling(json!(0)))), 0, "{api}");
            // Percentages of replicas round up: 25% of 5 = 1.25 -> 2; 10% of 3 -> 1.
            assert_eq!(
                md_surge(&md(api, json!(5), rolling(json!("25%")))),
                2,
                "{api}"
            );
            assert_eq!(
                md_surge(&md(api, json!(3), rolling(json!("10%")))),
                1,
                "{api}"
            );
            assert_eq!(
                md_surge(&md(api, json!(4), rolling(json!("0%")))),
                0,
                "{api}"
            );
            assert_eq!(
                md_surge(&md(api, json!(4), rolling(json!("50%")))),
                2,
                "{api}"
            );
            // Default 1 when unset, whatever the replicas.
            assert_eq!(md_surge(&md(api, json!(4), json!({}))), 1, "{api}");
            // No replicas, no surge; never more than the replicas.
            assert_eq!(md_surge(&md(api, json!(0), rolling(json!(3)))), 0, "{api}");
            assert_eq!(md_surge(&md(api, json!(2), rolling(json!(5)))), 2, "{api}");
            assert_eq!(
                md_surge(&md(api, json!(2), rolling(json!("200%")))),
                2,
                "{api}"
            );
            // OnDelete never surges.
            assert_eq!(
                md_surge(&md(api, json!(3), json!({"type": "OnDelete"}))),
                0,
                "{api}"
            );
        }
        // spec.replicas unset defaults to 1.
        let bare: MachineDeployment = serde_json::from_value(json!({"spec": {}})).unwrap();
        assert_eq!(md_surge(&bare), 1);
    }

    #[test]
    fn v1beta2_md_reads_only_the_rollout_path() {
        // A v1beta2 object has no spec.strategy; an old path left over must not be read when
        // the v1beta2 one is present.
        let obj: MachineDeployment = serde_json::from_value(
            json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "spec": {"replicas": 3,
            "rollout": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0}}},
            "strategy": {"rollingUpdate": {"maxSurge": 2}}}}),
        )
        .unwrap();
        assert_eq!(md_surge(&obj), 0);
    }

    fn kcp_surge(k: &KubeadmControlPlane) -> u32 {
        surge(k.replicas(), k.strategy())
    }

    #[test]
    fn kcp_surge_on_both_api_versions() {
        let v1 = |s: Value| {
            kcp_of(
                json!({"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1",
            "spec": {"replicas": 3, "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": s}}}}),
            )
        };
        let v2 = |s: Value| {
            kcp_of(
                json!({"apiVersion": "controlplane.cluster.x-k8s.io/v1beta2",
            "spec": {"replicas": 3, "rollout": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": s}}}}}),
            )
        };
        for kcp in [v1, v2] {
            assert_eq!(kcp_surge(&kcp(json!(0))), 0);
            assert_eq!(kcp_surge(&kcp(json!(1))), 1);
            assert_eq!(kcp_surge(&kcp(Value::Null)), 1, "default 1");
        }
        assert_eq!(
            kcp_surge(&kcp_of(json!({"spec": {"replicas": 3}}))),
            1,
            "no strategy: default"
        );
        assert_eq!(
            kcp_surge(&kcp_of(
                json!({"spec": {"replicas": 0, "rolloutStrategy": {"rollingUpdate": {"maxSurge": 1}}}})
            )),
            0
        );
    }
}
