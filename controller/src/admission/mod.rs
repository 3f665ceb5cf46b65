//! The validating webhook (`--webhook-bind-address`): what the version guard's CEL cannot see
//! (DESIGN.md "GitOps"), refused whoever writes it — a GitOps tool applying Git, a person, a
//! script:
//!
//! - a MachineDeployment whose `spec.template.spec.version` is a newer minor than its control
//!   plane runs (kubelets must never be newer than the API server; DOMAIN.md §6);
//! - a KubeadmControlPlane or MachineDeployment whose version's minor has rows in the OS
//!   Support Matrix while its infrastructure template uses none of those rows' images (every
//!   minor lives in its own OS image; DOMAIN.md §1): the machines would boot an image built for
//!   another Kubernetes.
//!
//! Only writes that change the version or the template are looked at (the webhook
//! configuration's `matchConditions` say the same, so nothing else waits on this server).
//! [`review`] decides from [`Facts`]; [`server`] gathers them and serves the AdmissionReviews.

pub mod server;

use serde_json::Value;

use crate::api::MatrixRow;
use crate::version::{KubeVersion, minor_str};

/// The object under review, as far as the checks read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `KubeadmControlPlane ns/name` or `MachineDeployment ns/name`.
    pub what: String,
    pub control_plane: bool,
    pub namespace: String,
    pub version: String,
    /// `(apiVersion, kind, name)` of its infrastructure template.
    pub template: Option<(String, String, String)>,
    /// MachineDeployment: `spec.clusterName`.
    pub cluster_name: Option<String>,
}

fn s(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// The checked fields of a KubeadmControlPlane or MachineDeployment (either API version).
pub fn subject(object: &Value) -> Option<Subject> {
    let kind = object["kind"].as_str()?;
    let meta = &object["metadata"];
    let namespace = s(&meta["namespace"]).unwrap_or_default();
    let name = s(&meta["name"]).unwrap_or_default();
    let spec = &object["spec"];
    let (control_plane, version, tref) = match kind {
        "KubeadmControlPlane" => {
            let t = &spec["machineTemplate"];
            let tref = if t["spec"]["infrastructureRef"].is_object() {
                &t["spec"]["infrastructureRef"]
            } else {
                &t["infrastructureRef"]
            };
            (true, s(&spec["version"])?, tref)
        }
        "MachineDeployment" => {
            let m = &spec["template"]["spec"];
            (false, s(&m["version"])?, &m["infrastructureRef"])
        }
        _ => return None,
    };
    // v1beta2 references carry apiGroup instead of apiVersion.
    let api_version = s(&tref["apiVersion"]).or_else(|| s(&tref["apiGroup"]));
    let template = match (api_version, s(&tref["kind"]), s(&tref["name"])) {
        (Some(a), Some(k), Some(n)) => Some((a, k, n)),
        _ => None,
    };
    Some(Subject {
        what: format!("{kind} {namespace}/{name}"),
        control_plane,
        namespace,
        version,
        template,
        cluster_name: (!control_plane).then(|| s(&spec["clusterName"])).flatten(),
    })
}

/// Whether the write changes what the checks look at (a create always does).
pub fn changes_checked_fields(new: &Subject, old: Option<&Subject>) -> bool {
    old.is_none_or(|o| o.version != new.version || o.template != new.template)
}

/// What the checks need besides the object.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// MachineDeployment: its control plane, and the lowest version its machines run
    /// (`status.version`, else `spec.version`).
    pub control_plane: Option<(String, String)>,
    /// The template's OS image, when its provider records one.
    pub template_image: Option<String>,
    /// Every matrix row of the version's minor, with the image the template's provider uses.
    pub rows: Vec<(String, String)>,
}

/// Admit (with warnings) or refuse (with the reason and the fix).
pub fn review(subject: &Subject, facts: &Facts) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let Ok(version) = KubeVersion::parse(&subject.version) else {
        // CAPI's own validation answers for versions that do not parse.
        return Ok(warnings);
    };
    let minor = version.minor();
    if !subject.control_plane
        && let Some((cp, cp_version)) = &facts.control_plane
        && let Ok(cp_v) = KubeVersion::parse(cp_version)
        && minor > cp_v.minor()
    {
        return Err(format!(
            "{}: spec.template.spec.version {} is a newer minor than its control plane {cp} runs ({cp_version}); kubelets must never be newer than the API server. Move the control plane first: an UpgradeRequest moves workers only after their control plane has rolled out",
            subject.what, subject.version
        ));
    }
    if let Some((_, kind, name)) = &subject.template {
        match &facts.template_image {
            _ if facts.rows.is_empty() => warnings.push(format!(
                "no OSSupportMatrix row is for Kubernetes {}: the image of {kind} {name} is not checked",
                minor_str(minor)
            )),
            None => {}
            Some(image) if facts.rows.iter().any(|(_, i)| i == image) => {}
            Some(image) => {
                let rows: Vec<String> = facts
                    .rows
                    .iter()
                    .map(|(row, i)| format!("{i} (row {row})"))
                    .collect();
                return Err(format!(
                    "{}: version {} but its template {kind} {name} uses image {image}, and the OSSupportMatrix rows for Kubernetes {} use {}; point the template at that image (an UpgradeRequest clones such a template for each hop: see its status.declareInGit)",
                    subject.what,
                    subject.version,
                    minor_str(minor),
                    rows.join(", ")
                ));
            }
        }
    }
    Ok(warnings)
}

/// The rows of `minor`, each with its image for a provider (`image_of`).
pub fn rows_of_minor<'a>(
    rows: impl IntoIterator<Item = &'a MatrixRow>,
    minor: (u64, u64),
    image_key: providers::ImageKey,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = rows
        .into_iter()
        .filter(|r| KubeVersion::parse(&r.kubernetes_version).is_ok_and(|v| v.minor() == minor))
        .map(|r| {
            (
                r.distribution_version.clone(),
                r.image_for(image_key).to_string(),
            )
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn md(version: &str, template: &str) -> Value {
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineDeployment",
            "metadata": {"name": "pool", "namespace": "t"},
            "spec": {"clusterName": "c", "template": {"spec": {
                "clusterName": "c", "version": version,
                "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
                    "kind": "DCSMachineTemplate", "name": template}}}},
        })
    }

    fn kcp_v1beta2(version: &str, template: &str) -> Value {
        json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta2", "kind": "KubeadmControlPlane",
            "metadata": {"name": "cp", "namespace": "t"},
            "spec": {"version": version, "machineTemplate": {"spec": {"infrastructureRef": {
                "apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DCSMachineTemplate",
                "name": template}}}},
        })
    }

    #[test]
    fn subjects_of_both_kinds_and_shapes() {
        let m = subject(&md("v1.33.7", "pool-133")).unwrap();
        assert_eq!(m.what, "MachineDeployment t/pool");
        assert_eq!(m.cluster_name.as_deref(), Some("c"));
        assert_eq!(m.template.as_ref().unwrap().2, "pool-133");
        let k = subject(&kcp_v1beta2("v1.33.7", "cp-133")).unwrap();
        assert!(k.control_plane);
        assert_eq!(
            k.template,
            Some((
                "infrastructure.cluster.x-k8s.io".into(),
                "DCSMachineTemplate".into(),
                "cp-133".into()
            ))
        );
        assert!(subject(&json!({"kind": "ConfigMap"})).is_none());
        // Only version or template changes are reviewed.
        let old = subject(&md("v1.32.7", "pool-132")).unwrap();
        assert!(changes_checked_fields(&m, Some(&old)));
        assert!(changes_checked_fields(&m, None));
        assert!(!changes_checked_fields(&m, Some(&m.clone())));
    }

    #[test]
    fn a_pool_above_its_control_plane_is_refused() {
        let m = subject(&md("v1.33.7", "pool-133")).unwrap();
        let facts = |cp: &str| Facts {
            control_plane: Some(("KubeadmControlPlane t/cp".into(), cp.into())),
            template_image: Some("img-133".into()),
            rows: vec![("4.2.0".into(), "img-133".into())],
        };
        let err = review(&m, &facts("v1.32.7")).unwrap_err();
        assert!(err.contains("newer minor than its control plane"), "{err}");
        assert!(err.contains("v1.32.7"), "{err}");
        assert_eq!(review(&m, &facts("v1.33.2")), Ok(vec![]));
        assert_eq!(review(&m, &facts("v1.34.1")), Ok(vec![]));
    }

    #[test]
    fn a_template_without_the_rows_image_is_refused() {
        let k = subject(&kcp_v1beta2("v1.33.7", "cp-132")).unwrap();
        let facts = |image: &str| Facts {
            control_plane: None,
            template_image: Some(image.into()),
            rows: vec![
                ("4.2.0".into(), "img-4.2.0".into()),
                ("4.2.5".into(), "img-4.2.5".into()),
            ],
        };
        let err = review(&k, &facts("img-4.1.6")).unwrap_err();
        for part in [
            "uses image img-4.1.6",
            "img-4.2.5 (row 4.2.5)",
            "Kubernetes 1.33",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
        assert_eq!(review(&k, &facts("img-4.2.0")), Ok(vec![]));
        // No row for the minor: admitted, with a warning.
        let none = Facts {
            template_image: Some("x".into()),
            ..Facts::default()
        };
        assert_eq!(review(&k, &none).unwrap().len(), 1);
    }
}
