//! The parts of Cluster API this controller reads and writes, as JSON (`DynamicObject`). No
//! generated CAPI types: only the fields used here, in both API shapes — v1beta1 (CAPI v1.10,
//! what the platform runs) and v1beta2 (stored from v1.11; DOMAIN.md §5) — chosen by each
//! object's own apiVersion.

use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

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

/// Whether `obj` is in the v1beta2 shape.
pub fn is_v1beta2(obj: &Value) -> bool {
    obj["apiVersion"]
        .as_str()
        .is_some_and(|v| v.ends_with("/v1beta2"))
}

/// The API resource of `kind` at `api_version` (`group/version`, or `v1` for the core group),
/// with the conventional plural.
pub fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(group, version, kind))
}

/// `(group, version if the reference names one, kind)` of a v1beta1 reference (`apiVersion`)
/// or a v1beta2 one (`apiGroup`, the version being the provider's contract version).
pub fn ref_group_kind(reference: &Value) -> Option<(String, Option<String>, String)> {
    let kind = reference["kind"].as_str()?.to_string();
    if let Some(api_version) = reference["apiVersion"].as_str() {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        return Some((group.to_string(), Some(version.to_string()), kind));
    }
    let group = reference["apiGroup"].as_str()?.to_string();
    Some((group, None, kind))
}

/// KCP `spec.machineTemplate.infrastructureRef` (v1beta2:
/// `spec.machineTemplate.spec.infrastructureRef`).
pub fn kcp_infrastructure_ref(kcp: &Value) -> &Value {
    if is_v1beta2(kcp) {
        &kcp["spec"]["machineTemplate"]["spec"]["infrastructureRef"]
    } else {
        &kcp["spec"]["machineTemplate"]["infrastructureRef"]
    }
}

/// MachineDeployment `spec.template.spec.infrastructureRef`.
pub fn md_infrastructure_ref(md: &Value) -> &Value {
    &md["spec"]["template"]["spec"]["infrastructureRef"]
}

/// MachineDeployment `spec.template.spec.bootstrap.configRef`.
pub fn md_bootstrap_ref(md: &Value) -> &Value {
    &md["spec"]["template"]["spec"]["bootstrap"]["configRef"]
}

pub fn kcp_version(kcp: &Value) -> Option<&str> {
    kcp["spec"]["version"].as_str()
}

pub fn md_version(md: &Value) -> Option<&str> {
    md["spec"]["template"]["spec"]["version"].as_str()
}

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// An ownerReference to `owner` (for cloned templates: owned by the Cluster, as CAPI's own
/// clones are, so deleting the Cluster removes them).
pub fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    })
}

/// A reference to `obj` in the shape of the object that will hold it: v1beta1 references are
/// full (and atomic for server-side apply: every field is written); v1beta2 references are
/// `{apiGroup, kind, name}`.
pub fn reference_to(obj: &Value, v1beta2_holder: bool) -> Value {
    if v1beta2_holder {
        let group = obj["apiVersion"]
            .as_str()
            .and_then(|v| v.rsplit_once('/'))
            .map(|(g, _)| g)
            .unwrap_or("");
        return json!({"apiGroup": group, "kind": obj["kind"], "name": obj["metadata"]["name"]});
    }
    json!({
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "namespace": obj["metadata"]["namespace"],
    })
}

/// KCP `spec.kubeadmConfigSpec.clusterConfiguration.dns.imageTag`.
pub const KCP_DNS_TAG_PATH: &[&str] = &[
    "spec",
    "kubeadmConfigSpec",
    "clusterConfiguration",
    "dns",
    "imageTag",
];
/// KCP `spec.kubeadmConfigSpec.clusterConfiguration.etcd.local.imageTag`.
pub const KCP_ETCD_TAG_PATH: &[&str] = &[
    "spec",
    "kubeadmConfigSpec",
    "clusterConfiguration",
    "etcd",
    "local",
    "imageTag",
];

fn at<'a>(obj: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(obj, |v, k| &v[*k])
}

/// The string at `path`, if there is one.
pub fn str_at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(obj, path).as_str()
}

/// The boolean at `path`; false when absent.
pub fn bool_at(obj: &Value, path: &[&str]) -> bool {
    at(obj, path).as_bool().unwrap_or(false)
}

/// The field managers (other than this controller's) that own the field at `path` of `obj`,
/// from `metadata.managedFields` (`fieldsV1` keys are `f:<name>`).
pub fn field_managers(obj: &Value, path: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| {
            let mut node = &entry["fieldsV1"];
            for key in path {
                node = &node[format!("f:{key}").as_str()];
            }
            !node.is_null()
        })
        .filter_map(|entry| entry["manager"].as_str())
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
pub fn not_owned_by(kcp: &Value, cluster: &Value) -> Option<String> {
    let ns = cluster["metadata"]["namespace"].as_str();
    if kcp["metadata"]["namespace"].as_str() != ns {
        return Some("is in another namespace than its Cluster".into());
    }
    let cluster_name = name(cluster);
    if let Some(other) = kcp["metadata"]["labels"][CLUSTER_NAME_LABEL]
        .as_str()
        .filter(|l| *l != cluster_name)
    {
        return Some(format!("carries {CLUSTER_NAME_LABEL}={other}"));
    }
    let owners: Vec<&Value> = kcp["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["kind"] == "Cluster")
        .collect();
    let uid = cluster["metadata"]["uid"].as_str();
    let ours = owners.iter().any(|o| {
        o["name"].as_str() == Some(cluster_name)
            && (uid.is_none() || o["uid"].as_str().is_none() || o["uid"].as_str() == uid)
    });
    (!owners.is_empty() && !ours).then(|| {
        let names: Vec<&str> = owners.iter().filter_map(|o| o["name"].as_str()).collect();
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

/// Whether `reference` (v1beta1 `{apiVersion, kind, name, namespace}` or v1beta2
/// `{apiGroup, kind, name}`) stays in namespace `ns` and names the expected group and kind.
/// An absent reference is fine here (CAPI's webhooks require the ones that must exist).
pub fn check_reference(reference: &Value, kind: RefKind, ns: &str) -> Result<(), String> {
    if reference.is_null() {
        return Ok(());
    }
    let Some((group, _, ref_kind)) = ref_group_kind(reference) else {
        return Err("has no kind or API group".into());
    };
    if reference["name"].as_str().is_none_or(str::is_empty) {
        return Err("has no name".into());
    }
    if let Some(other) = reference["namespace"].as_str().filter(|n| !n.is_empty())
        && other != ns
    {
        return Err(format!("points into namespace {other:?}"));
    }
    let ok = match kind {
        RefKind::InfrastructureTemplate => {
            group == INFRASTRUCTURE_GROUP && providers::for_template_kind(&ref_kind).is_ok()
        }
        RefKind::BootstrapTemplate => {
            group == BOOTSTRAP_GROUP && ref_kind == "KubeadmConfigTemplate"
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "names {ref_kind} of group {group:?}, not {}",
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
pub fn with_kubelet_patch(files: &Value) -> Value {
    let mut out: Vec<Value> = files
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter(|f| f["path"] != KUBELET_PATCH_PATH)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    out.push(kubelet_patch_file());
    Value::Array(out)
}

/// The partial KubeadmControlPlane for the hop's single server-side-apply write
/// (DOMAIN.md §3): version, CoreDNS and etcd tags, the new infrastructure template, the
/// skip-coredns annotation, and for ≥ 1.35 the kubelet patch file.
pub fn kcp_apply(
    kcp: &Value,
    version: &str,
    minor: (u64, u64),
    core_dns_tag: &str,
    etcd_tag: &str,
    template_ref: Value,
) -> Value {
    let machine_template = if is_v1beta2(kcp) {
        json!({"spec": {"infrastructureRef": template_ref}})
    } else {
        json!({"infrastructureRef": template_ref})
    };
    let mut spec = json!({
        "version": version,
        "machineTemplate": machine_template,
        "kubeadmConfigSpec": {"clusterConfiguration": {
            "dns": {"imageTag": core_dns_tag},
            "etcd": {"local": {"imageTag": etcd_tag}},
        }},
    });
    if needs_kubelet_patch(minor) {
        spec["kubeadmConfigSpec"]["files"] =
            with_kubelet_patch(&kcp["spec"]["kubeadmConfigSpec"]["files"]);
    }
    json!({
        "apiVersion": kcp["apiVersion"],
        "kind": kcp["kind"],
        "metadata": {
            "name": kcp["metadata"]["name"],
            "namespace": kcp["metadata"]["namespace"],
            "annotations": {SKIP_COREDNS_ANNOTATION: ""},
        },
        "spec": spec,
    })
}

/// The partial MachineDeployment for a hop's write: version and infrastructure template, and
/// (≥ 1.35) the cloned bootstrap config template.
pub fn md_apply(
    md: &Value,
    version: &str,
    template_ref: Value,
    bootstrap_ref: Option<Value>,
) -> Value {
    let mut template_spec = json!({
        "version": version,
        "infrastructureRef": template_ref,
    });
    if let Some(bootstrap) = bootstrap_ref {
        template_spec["bootstrap"] = json!({"configRef": bootstrap});
    }
    json!({
        "apiVersion": md["apiVersion"],
        "kind": md["kind"],
        "metadata": {"name": md["metadata"]["name"], "namespace": md["metadata"]["namespace"]},
        "spec": {"template": {"spec": template_spec}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_plane_must_be_the_clusters_own() {
        let cluster = json!({"metadata": {"name": "a", "namespace": "ns", "uid": "u-a"}});
        let kcp = |meta: Value| {
            let mut m = json!({"name": "a-cp", "namespace": "ns"});
            m.as_object_mut()
                .unwrap()
                .extend(meta.as_object().unwrap().clone());
            json!({"metadata": m})
        };
        let owner = |name: &str, uid: &str| json!({"ownerReferences": [{"kind": "Cluster", "name": name, "uid": uid}]});
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
        let elsewhere = json!({"metadata": {"name": "a-cp", "namespace": "other"}});
        assert!(not_owned_by(&elsewhere, &cluster).is_some());
    }

    #[test]
    fn references_stay_in_the_namespace_and_name_expected_kinds() {
        let infra = |kind: &str, ns: Option<&str>| {
            let mut r = json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": kind, "name": "t"});
            if let Some(ns) = ns {
                r["namespace"] = json!(ns);
            }
            r
        };
        let t = RefKind::InfrastructureTemplate;
        assert!(check_reference(&infra("DCSMachineTemplate", Some("ns")), t, "ns").is_ok());
        assert!(check_reference(&infra("DCSMachineTemplate", None), t, "ns").is_ok());
        assert!(check_reference(&Value::Null, t, "ns").is_ok());
        assert!(
            check_reference(&infra("DCSMachineTemplate", Some("kube-system")), t, "ns")
                .unwrap_err()
                .contains("kube-system")
        );
        assert!(check_reference(&infra("AWSMachineTemplate", None), t, "ns").is_err());
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "name": "s"});
        assert!(check_reference(&secret, t, "ns").is_err());
        assert!(check_reference(&secret, RefKind::BootstrapTemplate, "ns").is_err());
        let v1beta2 = json!({"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfigTemplate", "name": "b"});
        assert!(check_reference(&v1beta2, RefKind::BootstrapTemplate, "ns").is_ok());
    }

    #[test]
    fn field_managers_name_who_owns_a_field_but_this_controller() {
        let obj = json!({"metadata": {"managedFields": [
            {"manager": crate::FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {"f:version": {}}}},
            {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {"f:version": {}, "f:replicas": {}}}},
            {"manager": "capi", "operation": "Update", "fieldsV1": {"f:status": {}}},
        ]}});
        assert_eq!(
            field_managers(&obj, &["spec", "version"]),
            vec!["kubectl-edit"]
        );
        assert!(field_managers(&obj, &["spec", "paused"]).is_empty());
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

    #[test]
    fn kcp_write_carries_exactly_the_hop_fields() {
        let tref = json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DCSMachineTemplate", "name": "t2", "namespace": "ns"});
        let w = kcp_apply(
            &kcp(),
            "v1.34.5-3",
            (1, 34),
            "1.14.2-v4.3.11",
            "v3.5.28-260625",
            tref.clone(),
        );
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
        assert_eq!(kcp_infrastructure_ref(&k)["name"], "t1");
        assert_eq!(
            ref_group_kind(kcp_infrastructure_ref(&k)),
            Some((
                "infrastructure.cluster.x-k8s.io".into(),
                None,
                "DCSMachineTemplate".into()
            ))
        );
        let template = json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DCSMachineTemplate",
                              "metadata": {"name": "t2", "namespace": "ns"}});
        let tref = reference_to(&template, true);
        assert_eq!(
            tref,
            json!({"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DCSMachineTemplate", "name": "t2"})
        );
        let w = kcp_apply(
            &k,
            "v1.34.5-3",
            (1, 34),
            "1.14.2-v4.3.11",
            "v3.5.28-260625",
            tref.clone(),
        );
        assert_eq!(
            w["spec"]["machineTemplate"]["spec"]["infrastructureRef"],
            tref
        );
        assert!(
            w["spec"]["machineTemplate"]
                .get("infrastructureRef")
                .is_none()
        );
        // v1beta1 keeps the full, atomic reference.
        assert_eq!(
            reference_to(&template, false)["apiVersion"],
            "infrastructure.cluster.x-k8s.io/v1beta1"
        );
        assert_eq!(
            ref_group_kind(&reference_to(&template, false)),
            Some((
                "infrastructure.cluster.x-k8s.io".into(),
                Some("v1beta1".into()),
                "DCSMachineTemplate".into()
            ))
        );
    }

    #[test]
    fn from_1_35_the_kubelet_patch_file_is_added_once_and_other_files_kept() {
        let w = kcp_apply(
            &kcp(),
            "v1.35.6-acp.1",
            (1, 35),
            "1.14.3-v4.4.6",
            "v3.6.13-acp.0",
            json!({}),
        );
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
}
