//! GitOps `Handoff` mode (DESIGN.md "GitOps"): for a Git-managed KubeadmControlPlane or
//! MachineDeployment the controller publishes, instead of writing it, exactly the fields its
//! server-side-apply write would set ([`declarations`]), and a step goes on only once the live
//! object declares all of them ([`compare`]). The same fields, read back from the live objects,
//! tell Git what to declare once an upgrade has finished, in either mode ([`final_values`]).

use serde::Serialize;
use serde_json::Value;

use crate::api::{GitDeclaration, GitOpsMode, UpgradeRequestSpec, UpgradeRequestStatus};
use crate::capi::{self, KubeadmControlPlane, MachineDeployment};
use crate::version::KubeVersion;

/// `KubeadmControlPlane <name>`, as `status.gitops` and `status.declareInGit` name it.
pub fn kcp_object(kcp: &KubeadmControlPlane) -> String {
    format!("KubeadmControlPlane {}", capi::name(&kcp.metadata))
}

/// `MachineDeployment <name>`.
pub fn md_object(md: &MachineDeployment) -> String {
    format!("MachineDeployment {}", capi::name(&md.metadata))
}

/// The version field of each kind, as [`declarations`] names it.
pub const KCP_VERSION_FIELD: &str = "spec.version";
pub const MD_VERSION_FIELD: &str = "spec.template.spec.version";

/// Whether `object` is one the controller must not write: `Handoff` mode and a GitOps tool
/// applies it (as the last preflight found, `status.gitops`).
pub fn handed_off(spec: &UpgradeRequestSpec, status: &UpgradeRequestStatus, object: &str) -> bool {
    spec.gitops.mode == GitOpsMode::Handoff && status.gitops.iter().any(|o| o.object == object)
}

/// Every field `body` (a server-side-apply write) sets, as declarations for `object`: its
/// leaves, except the object's identity; lists are one value (JSON), as server-side apply
/// treats the atomic lists this controller writes.
pub fn declarations(object: &str, body: &impl Serialize) -> Vec<GitDeclaration> {
    let mut out = Vec::new();
    let Ok(Value::Object(map)) = serde_json::to_value(body) else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                if let Some(annotations) = value.get("annotations") {
                    leaves(object, "metadata.annotations", annotations, &mut out);
                }
            }
            _ => leaves(object, &key, &value, &mut out),
        }
    }
    out
}

fn leaves(object: &str, path: &str, value: &Value, out: &mut Vec<GitDeclaration>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                // Annotation keys hold dots: they are quoted, as kubectl's JSONPath does.
                let key = if k.contains('.') || k.contains('/') {
                    format!("{path}['{k}']")
                } else {
                    format!("{path}.{k}")
                };
                leaves(object, &key, v, out);
            }
        }
        Value::String(s) => out.push(decl(object, path, s.clone())),
        other => out.push(decl(object, path, other.to_string())),
    }
}

fn decl(object: &str, field: &str, value: String) -> GitDeclaration {
    GitDeclaration {
        object: object.to_string(),
        field: field.to_string(),
        value,
    }
}

/// The value at a declaration's `field` of `live` (the object as JSON).
fn value_at<'a>(live: &'a Value, field: &str) -> Option<&'a Value> {
    let mut cur = live;
    let mut rest = field;
    while !rest.is_empty() {
        let (key, tail) = if let Some(quoted) = rest.strip_prefix("['") {
            let end = quoted.find("']")?;
            (&quoted[..end], &quoted[end + 2..])
        } else {
            let rest_trim = rest.strip_prefix('.').unwrap_or(rest);
            let end = rest_trim.find(['.', '[']).unwrap_or(rest_trim.len());
            (&rest_trim[..end], &rest_trim[end..])
        };
        cur = cur.get(key)?;
        rest = tail;
    }
    Some(cur)
}

/// Whether `live` holds `d.value` at `d.field`.
fn holds(live: &Value, d: &GitDeclaration) -> bool {
    match value_at(live, &d.field) {
        Some(Value::String(s)) => *s == d.value,
        Some(Value::Null) | None => false,
        Some(other) => serde_json::from_str::<Value>(&d.value).is_ok_and(|want| want == *other),
    }
}

/// How a Git-managed object stands against what a step asked Git to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// It declares every field.
    Yes,
    /// It still declares the version from before the step: Git has not caught up.
    NotYet(Vec<String>),
    /// It declares something else: the differences, `field is X, the step needs Y`.
    Otherwise(Vec<String>),
}

/// `live` (the object as JSON) against `asked` (its declarations), with `version_field` and
/// the version it held before the step (`before`).
pub fn compare(
    live: &Value,
    asked: &[&GitDeclaration],
    version_field: &str,
    before: Option<&str>,
) -> Declared {
    let missing: Vec<&&GitDeclaration> = asked.iter().filter(|d| !holds(live, d)).collect();
    if missing.is_empty() {
        return Declared::Yes;
    }
    let describe = |d: &GitDeclaration| {
        let found = match value_at(live, &d.field) {
            Some(Value::String(s)) => format!("{s:?}"),
            Some(v) => v.to_string(),
            None => "not set".to_string(),
        };
        format!(
            "{} {} is {found}, the step needs {:?}",
            d.object, d.field, d.value
        )
    };
    let version = value_at(live, version_field).and_then(Value::as_str);
    let version_unchanged = before.is_some() && version == before;
    if version_unchanged && missing.iter().any(|d| d.field == version_field) {
        // Nothing of the step has arrived yet, or only fields that roll nothing out without
        // the version (the webhook refuses a template without the version's image).
        return Declared::NotYet(missing.iter().map(|d| describe(d)).collect());
    }
    Declared::Otherwise(missing.iter().map(|d| describe(d)).collect())
}

/// Replaces what `status.declareInGit` holds for the objects of `new` with `new`.
pub fn publish(status: &mut UpgradeRequestStatus, new: &[GitDeclaration]) {
    status
        .declare_in_git
        .retain(|d| !new.iter().any(|n| n.object == d.object));
    status.declare_in_git.extend(new.iter().cloned());
}

/// What `status.declareInGit` asks of `object` for the step moving it to `version`; empty when
/// nothing was published for that step.
pub fn asked_for<'a>(
    status: &'a UpgradeRequestStatus,
    object: &str,
    version_field: &str,
    version: &str,
) -> Vec<&'a GitDeclaration> {
    let of: Vec<&GitDeclaration> = status
        .declare_in_git
        .iter()
        .filter(|d| d.object == object)
        .collect();
    let for_step = of
        .iter()
        .any(|d| d.field == version_field && d.value == version);
    if for_step { of } else { Vec::new() }
}

/// What Git should declare now that the cluster is where the upgrade left it: the fields this
/// controller writes, read from the live Git-managed objects (`status.gitops`).
pub fn final_values(
    status: &UpgradeRequestStatus,
    kcp: &KubeadmControlPlane,
    mds: &[MachineDeployment],
) -> Vec<GitDeclaration> {
    let managed = |object: &str| status.gitops.iter().any(|o| o.object == object);
    let mut out = Vec::new();
    let object = kcp_object(kcp);
    if managed(&object)
        && let Some(tref) = kcp.infrastructure_ref()
    {
        let minor = KubeVersion::parse(&kcp.spec.version)
            .map(|v| v.minor())
            .unwrap_or((1, 0));
        let write = capi::kcp_apply(
            kcp,
            &kcp.spec.version,
            minor,
            kcp.dns_tag(),
            kcp.etcd_tag(),
            capi::Reference {
                namespace: None,
                ..tref.clone()
            },
        );
        out.extend(declarations(&object, &write));
    }
    for md in mds {
        let object = md_object(md);
        if !managed(&object) {
            continue;
        }
        let template = &md.spec.template.spec;
        // CAPI defaults a reference's namespace; the controller never writes one.
        let own = |r: &capi::Reference| capi::Reference {
            namespace: None,
            ..r.clone()
        };
        let write = capi::md_apply(
            md,
            md.version(),
            own(&template.infrastructure_ref),
            template.bootstrap.config_ref.as_ref().map(own),
        );
        out.extend(declarations(&object, &write));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kcp(v: Value) -> KubeadmControlPlane {
        serde_json::from_value(v).unwrap()
    }

    fn cp_v1beta1(version: &str, template: &str) -> Value {
        json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1",
            "kind": "KubeadmControlPlane",
            "metadata": {"name": "cp", "namespace": "t"},
            "spec": {
                "version": version,
                "machineTemplate": {"infrastructureRef": {
                    "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
                    "kind": "DCSMachineTemplate", "name": template}},
                "kubeadmConfigSpec": {"clusterConfiguration": {
                    "dns": {"imageTag": "1.11.3"}, "etcd": {"local": {"imageTag": "3.5.21"}}}},
            },
        })
    }

    fn asked(version: &str, template: &str) -> Vec<GitDeclaration> {
        let k = kcp(cp_v1beta1("v1.31.14", "cp-old"));
        let write = capi::kcp_apply(
            &k,
            version,
            (1, 32),
            "1.12.0",
            "3.5.24",
            capi::Reference {
                api_version: Some("infrastructure.cluster.x-k8s.io/v1beta1".into()),
                api_group: None,
                kind: "DCSMachineTemplate".into(),
                name: template.into(),
                namespace: None,
            },
        );
        declarations("KubeadmControlPlane cp", &write)
    }

    #[test]
    fn the_declarations_are_every_field_the_write_sets() {
        let d = asked("v1.32.11", "cp-new");
        let fields: Vec<(&str, &str)> = d
            .iter()
            .map(|d| (d.field.as_str(), d.value.as_str()))
            .collect();
        for want in [
            ("spec.version", "v1.32.11"),
            ("spec.machineTemplate.infrastructureRef.name", "cp-new"),
            (
                "spec.machineTemplate.infrastructureRef.kind",
                "DCSMachineTemplate",
            ),
            (
                "spec.kubeadmConfigSpec.clusterConfiguration.dns.imageTag",
                "1.12.0",
            ),
            (
                "spec.kubeadmConfigSpec.clusterConfiguration.etcd.local.imageTag",
                "3.5.24",
            ),
            (
                "metadata.annotations['controlplane.cluster.x-k8s.io/skip-coredns']",
                "",
            ),
        ] {
            assert!(fields.contains(&want), "{want:?} not in {fields:?}");
        }
        assert!(!fields.iter().any(|(f, _)| f.starts_with("metadata.name")));
    }

    #[test]
    fn git_not_caught_up_exactly_declared_and_declared_otherwise() {
        let asked = asked("v1.32.11", "cp-new");
        let refs: Vec<&GitDeclaration> = asked.iter().collect();
        let field = KCP_VERSION_FIELD;

        let before = cp_v1beta1("v1.31.14", "cp-old");
        assert!(matches!(
            compare(&before, &refs, field, Some("v1.31.14")),
            Declared::NotYet(_)
        ));

        let mut exact = cp_v1beta1("v1.32.11", "cp-new");
        exact["metadata"]["annotations"] =
            json!({"controlplane.cluster.x-k8s.io/skip-coredns": ""});
        exact["spec"]["kubeadmConfigSpec"]["clusterConfiguration"] =
            json!({"dns": {"imageTag": "1.12.0"}, "etcd": {"local": {"imageTag": "3.5.24"}}});
        assert_eq!(
            compare(&exact, &refs, field, Some("v1.31.14")),
            Declared::Yes
        );

        // A skipped minor, and the right version with the old template.
        let mut skipped = exact.clone();
        skipped["spec"]["version"] = json!("v1.33.7");
        let Declared::Otherwise(diff) = compare(&skipped, &refs, field, Some("v1.31.14")) else {
            panic!("a skipped minor is not declared otherwise");
        };
        assert_eq!(
            diff,
            vec![r#"KubeadmControlPlane cp spec.version is "v1.33.7", the step needs "v1.32.11""#]
        );
        let mut old_template = exact.clone();
        old_template["spec"]["machineTemplate"]["infrastructureRef"]["name"] = json!("cp-old");
        let Declared::Otherwise(diff) = compare(&old_template, &refs, field, Some("v1.31.14"))
        else {
            panic!("the old template is not declared otherwise");
        };
        assert!(
            diff[0].contains("infrastructureRef.name is \"cp-old\""),
            "{diff:?}"
        );
    }

    #[test]
    fn published_declarations_replace_the_objects_earlier_ones() {
        let mut status = UpgradeRequestStatus::default();
        publish(&mut status, &asked("v1.32.11", "a"));
        let n = status.declare_in_git.len();
        publish(&mut status, &asked("v1.33.7", "b"));
        assert_eq!(status.declare_in_git.len(), n);
        assert_eq!(
            asked_for(
                &status,
                "KubeadmControlPlane cp",
                KCP_VERSION_FIELD,
                "v1.33.7"
            )
            .len(),
            n
        );
        assert!(
            asked_for(
                &status,
                "KubeadmControlPlane cp",
                KCP_VERSION_FIELD,
                "v1.32.11"
            )
            .is_empty()
        );
    }
}
