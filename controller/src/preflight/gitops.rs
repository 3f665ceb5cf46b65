//! Who declares a KubeadmControlPlane or MachineDeployment in Git, from its metadata alone
//! (DOMAIN.md §8): the markers Flux and Argo CD leave on what they apply, and the field
//! managers that own its version field.
//!
//! - Flux kustomize-controller: labels `kustomize.toolkit.fluxcd.io/name` and `/namespace`
//!   (the Kustomization), field manager `kustomize-controller`.
//! - Flux helm-controller: labels `helm.toolkit.fluxcd.io/name` and `/namespace` (the
//!   HelmRelease), field manager `helm-controller`.
//! - Argo CD: annotation `argocd.argoproj.io/tracking-id` (`<app>:<group>/<kind>:<ns>/<name>`,
//!   `<app>` being `<namespace>_<name>` for an Application outside Argo CD's own namespace),
//!   field manager `argocd-controller`, or label `app.kubernetes.io/instance` when no Helm
//!   marker says that label is Helm's.
//! - Anything else that owns the version field by server-side apply (operation `Apply`): an
//!   unknown tool that may re-apply its own value. Writers by `Update` (kubectl edit, create)
//!   do not re-assert a field, so they are not owners here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::{Input, check, passed};
use crate::api::{CheckName, CheckState, GitOpsObject, GitOpsTool, PreflightCheck};

pub const FLUX_KUSTOMIZATION_NAME: &str = "kustomize.toolkit.fluxcd.io/name";
pub const FLUX_KUSTOMIZATION_NAMESPACE: &str = "kustomize.toolkit.fluxcd.io/namespace";
pub const FLUX_HELM_NAME: &str = "helm.toolkit.fluxcd.io/name";
pub const FLUX_HELM_NAMESPACE: &str = "helm.toolkit.fluxcd.io/namespace";
pub const FLUX_MANAGER: &str = "kustomize-controller";
pub const FLUX_HELM_MANAGER: &str = "helm-controller";
/// Per-object opt-outs of kustomize-controller.
pub const FLUX_SSA: &str = "kustomize.toolkit.fluxcd.io/ssa";
pub const FLUX_RECONCILE: &str = "kustomize.toolkit.fluxcd.io/reconcile";
pub const ARGO_TRACKING_ID: &str = "argocd.argoproj.io/tracking-id";
pub const ARGO_INSTANCE: &str = "app.kubernetes.io/instance";
pub const ARGO_MANAGER: &str = "argocd-controller";
const HELM_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const HELM_RELEASE_ANNOTATION: &str = "meta.helm.sh/release-name";

/// The object that makes a tool apply this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Kustomization {
        namespace: String,
        name: String,
    },
    HelmRelease {
        namespace: String,
        name: String,
    },
    /// `namespace` is `None` when the tracking id or label does not say (Argo CD's own
    /// namespace then, `--argocd-namespace`).
    Application {
        namespace: Option<String>,
        name: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Kustomization { namespace, name } => {
                write!(f, "Kustomization {namespace}/{name}")
            }
            Source::HelmRelease { namespace, name } => write!(f, "HelmRelease {namespace}/{name}"),
            Source::Application {
                namespace: Some(ns),
                name,
            } => write!(f, "Application {ns}/{name}"),
            Source::Application {
                namespace: None,
                name,
            } => write!(f, "Application {name}"),
        }
    }
}

/// Who declares an object, and how that was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub tool: GitOpsTool,
    /// The Kustomization, HelmRelease or Application, when the markers name it.
    pub source: Option<Source>,
    /// The markers found, for status and messages (`label kustomize.toolkit.fluxcd.io/name=apps`).
    pub evidence: Vec<String>,
    /// A per-object annotation that keeps Flux from re-applying it
    /// (`kustomize.toolkit.fluxcd.io/ssa: IfNotPresent`), when set.
    pub opted_out: Option<String>,
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Managers with any entry in `managedFields`.
fn managers(meta: &ObjectMeta) -> Vec<&str> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter_map(|e| e.manager.as_deref())
        .collect()
}

/// Parses an Argo CD tracking id `<app>:<group>/<kind>:<namespace>/<name>` into the
/// Application's (namespace, name); `<app>` is `<namespace>_<name>` for an Application in
/// another namespace than Argo CD's.
pub fn parse_tracking_id(id: &str) -> Option<(Option<String>, String)> {
    let (app, rest) = id.split_once(':')?;
    if app.is_empty() || !rest.contains('/') {
        return None;
    }
    Some(match app.split_once('_') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
            (Some(ns.to_string()), name.to_string())
        }
        _ => (None, app.to_string()),
    })
}

/// Who declares the object with metadata `meta` (its version at `version_path`), or `None`
/// when no tool's marker is on it and no other server-side-apply manager owns the version.
pub fn detect(meta: &ObjectMeta, version_path: &[&str]) -> Option<Ownership> {
    let namespace = meta.namespace.clone().unwrap_or_default();
    let all = managers(meta);
    let mut evidence = Vec::new();

    // Flux first: its labels name the Kustomization or HelmRelease exactly.
    let mut source = None;
    let mut flux = false;
    if let Some(name) = label(meta, FLUX_KUSTOMIZATION_NAME) {
        flux = true;
        evidence.push(format!("label {FLUX_KUSTOMIZATION_NAME}={name}"));
        source = Some(Source::Kustomization {
            namespace: label(meta, FLUX_KUSTOMIZATION_NAMESPACE)
                .unwrap_or(&namespace)
                .to_string(),
            name: name.to_string(),
        });
    }
    if let Some(name) = label(meta, FLUX_HELM_NAME) {
        flux = true;
        evidence.push(format!("label {FLUX_HELM_NAME}={name}"));
        source.get_or_insert(Source::HelmRelease {
            namespace: label(meta, FLUX_HELM_NAMESPACE)
                .unwrap_or(&namespace)
                .to_string(),
            name: name.to_string(),
        });
    }
    for m in [FLUX_MANAGER, FLUX_HELM_MANAGER] {
        if all.contains(&m) {
            flux = true;
            evidence.push(format!("field manager {m}"));
        }
    }
    let opted_out = match (annotation(meta, FLUX_SSA), annotation(meta, FLUX_RECONCILE)) {
        (_, Some(v)) if v.eq_ignore_ascii_case("disabled") => {
            Some(format!("{FLUX_RECONCILE}: {v}"))
        }
        (Some(v), _) if v == "IfNotPresent" || v == "Ignore" => Some(format!("{FLUX_SSA}: {v}")),
        _ => None,
    };
    if flux {
        return Some(Ownership {
            tool: GitOpsTool::Flux,
            source,
            evidence,
            opted_out,
        });
    }

    // Argo CD.
    let mut argo = false;
    if let Some(id) = annotation(meta, ARGO_TRACKING_ID) {
        argo = true;
        evidence.push(format!("annotation {ARGO_TRACKING_ID}={id}"));
        source =
            parse_tracking_id(id).map(|(namespace, name)| Source::Application { namespace, name });
    }
    let helm_marked = label(meta, HELM_MANAGED_BY) == Some("Helm")
        || annotation(meta, HELM_RELEASE_ANNOTATION).is_some();
    if let Some(instance) = label(meta, ARGO_INSTANCE).filter(|_| !helm_marked) {
        argo = true;
        evidence.push(format!("label {ARGO_INSTANCE}={instance}"));
        source.get_or_insert(Source::Application {
            namespace: None,
            name: instance.to_string(),
        });
    }
    if all.contains(&ARGO_MANAGER) {
        argo = true;
        evidence.push(format!("field manager {ARGO_MANAGER}"));
    }
    if argo {
        return Some(Ownership {
            tool: GitOpsTool::ArgoCD,
            source,
            evidence,
            opted_out: None,
        });
    }

    // Another server-side-apply manager of the version field.
    let owners = crate::capi::apply_managers(meta, version_path);
    if owners.is_empty() {
        return None;
    }
    Some(Ownership {
        tool: GitOpsTool::Unknown,
        source: None,
        evidence: owners
            .iter()
            .map(|m| format!("field manager {m} applies {}", version_path.join(".")))
            .collect(),
        opted_out: None,
    })
}

/// What a GitOps rule's target is matched against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Target {
    pub fn of(api_version: &str, kind: &str, meta: &ObjectMeta) -> Target {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Target {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
        }
    }
}

/// A Git-managed KubeadmControlPlane or MachineDeployment, as a preflight sees it.
#[derive(Debug, Clone)]
pub struct GitOpsObs {
    /// `KubeadmControlPlane cp`.
    pub object: String,
    pub target: Target,
    pub ownership: Ownership,
    /// JSON pointers of the fields the controller writes there that the tool must leave alone.
    pub paths: Vec<String>,
    /// The Kustomization or Application named by the markers, as read: `Ok(None)` it does not
    /// exist, `Err` why it was not read. `None`: nothing to read (no source, or opted out).
    pub source: Option<Result<Option<Value>, String>>,
}

/// The fields the controller writes on a KubeadmControlPlane (`control_plane`) or a
/// MachineDeployment, as JSON pointers, that a tool declaring the object must leave alone:
/// the version and the infrastructure template always (Git declares both on every such
/// object), and the CoreDNS and etcd image tags where `manager` (the tool's field manager)
/// owns them now.
pub fn written_paths(
    control_plane: bool,
    v1beta2: bool,
    meta: &ObjectMeta,
    manager: Option<&str>,
) -> Vec<String> {
    if !control_plane {
        return vec![
            "/spec/template/spec/version".into(),
            "/spec/template/spec/infrastructureRef/name".into(),
        ];
    }
    let mut paths = vec![
        "/spec/version".to_string(),
        if v1beta2 {
            "/spec/machineTemplate/spec/infrastructureRef/name".into()
        } else {
            "/spec/machineTemplate/infrastructureRef/name".into()
        },
    ];
    let config = ["spec", "kubeadmConfigSpec", "clusterConfiguration"];
    for tail in [&["dns", "imageTag"][..], &["etcd", "local", "imageTag"][..]] {
        let path: Vec<&str> = config.iter().chain(tail).copied().collect();
        let owned = manager.is_some_and(|m| {
            crate::capi::field_managers(meta, &path)
                .iter()
                .any(|owner| owner == m)
        });
        if owned {
            paths.push(format!("/{}", path.join("/")));
        }
    }
    paths
}

/// The field manager a tool applies with.
pub fn tool_manager(o: &Ownership) -> Option<&'static str> {
    match (o.tool, &o.source) {
        (GitOpsTool::Flux, Some(Source::HelmRelease { .. })) => Some(FLUX_HELM_MANAGER),
        (GitOpsTool::Flux, _) => Some(FLUX_MANAGER),
        (GitOpsTool::ArgoCD, _) => Some(ARGO_MANAGER),
        (GitOpsTool::Unknown, _) => None,
    }
}

/// `^(?:re)$`, as Flux anchors its selector regexes.
fn full_match(re: &str, value: &str) -> Result<bool, String> {
    regex::Regex::new(&format!("^(?:{re})$"))
        .map(|r| r.is_match(value))
        .map_err(|e| format!("invalid regex {re:?}: {e}"))
}

/// A Kubernetes label selector string (`a=b,c!=d,e,!f,g in (h,i),j notin (k)`) against `set`.
pub fn selector_matches(selector: &str, set: &BTreeMap<String, String>) -> Result<bool, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    for term in terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let ok = if let Some((k, v)) = term.split_once("!=") {
            set.get(k.trim()).map(String::as_str) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            set.get(k.trim()).map(String::as_str) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            !set.contains_key(k.trim())
        } else if let Some((k, rest)) = term
            .split_once(" notin ")
            .map(|(k, r)| (k, (r, false)))
            .or_else(|| term.split_once(" in ").map(|(k, r)| (k, (r, true))))
        {
            let (values, inside) = rest;
            let values = values
                .trim()
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| {
                    format!("label selector term {term:?}: values must be in parentheses")
                })?;
            let found = set
                .get(k.trim())
                .is_some_and(|v| values.split(',').any(|x| x.trim() == v));
            if inside { found } else { !found }
        } else if term
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            set.contains_key(term)
        } else {
            return Err(format!("label selector term {term:?} is not understood"));
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a Flux ignore rule's `target` (a kustomize selector; absent = every object)
/// selects `t`.
fn flux_target_matches(sel: &Value, t: &Target) -> Result<bool, String> {
    if sel.is_null() {
        return Ok(true);
    }
    for (field, value) in [
        ("group", &t.group),
        ("version", &t.version),
        ("kind", &t.kind),
        ("name", &t.name),
        ("namespace", &t.namespace),
    ] {
        if let Some(re) = sel[field].as_str().filter(|r| !r.is_empty())
            && !full_match(re, value)?
        {
            return Ok(false);
        }
    }
    for (field, set) in [
        ("labelSelector", &t.labels),
        ("annotationSelector", &t.annotations),
    ] {
        if let Some(s) = sel[field].as_str().filter(|s| !s.is_empty())
            && !selector_matches(s, set)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The paths of `paths` that no `spec.ignore` rule of Kustomization `k` covers for `t`
/// (exactly: Flux compares and strips the value at each rule path).
pub fn flux_uncovered(k: &Value, t: &Target, paths: &[String]) -> Result<Vec<String>, String> {
    let mut covered: Vec<&str> = Vec::new();
    for rule in k["spec"]["ignore"].as_array().into_iter().flatten() {
        if flux_target_matches(&rule["target"], t)? {
            covered.extend(
                rule["paths"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            );
        }
    }
    Ok(paths
        .iter()
        .filter(|p| !covered.contains(&p.as_str()))
        .cloned()
        .collect())
}

/// For Application `app`: whether it respects its ignore rules on sync
/// (`RespectIgnoreDifferences=true`), and the paths of `paths` its `ignoreDifferences` do
/// not cover for `t` (`jsonPointers` exactly, or this controller in `managedFieldsManagers`).
pub fn argo_uncovered(app: &Value, t: &Target, paths: &[String]) -> (bool, Vec<String>) {
    let respects = app["spec"]["syncPolicy"]["syncOptions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o.as_str() == Some("RespectIgnoreDifferences=true"));
    let mut covered: Vec<&str> = Vec::new();
    for d in app["spec"]["ignoreDifferences"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let s = |f: &str| d[f].as_str().unwrap_or("");
        if s("group") != t.group
            || s("kind") != t.kind
            || (!s("name").is_empty() && s("name") != t.name)
            || (!s("namespace").is_empty() && s("namespace") != t.namespace)
        {
            continue;
        }
        let ours = d["managedFieldsManagers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m.as_str() == Some(crate::FIELD_MANAGER));
        if ours {
            return (respects, Vec::new());
        }
        covered.extend(
            d["jsonPointers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        );
    }
    (
        respects,
        paths
            .iter()
            .filter(|p| !covered.contains(&p.as_str()))
            .cloned()
            .collect(),
    )
}

fn quoted(paths: &[String]) -> String {
    paths
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the tool leaves `o`'s written fields alone: `Ok(why)` or `Err(what to do)`.
/// `Err` of a source that could not be read is `Unknown` rather than `Failed`.
pub fn protection(o: &GitOpsObs) -> Result<String, (CheckState, String)> {
    let failed = |m: String| Err((CheckState::Failed, m));
    let t = &o.target;
    if let Some(opt) = &o.ownership.opted_out {
        return Ok(format!("annotation {opt}: Flux does not re-apply it"));
    }
    let source = o.ownership.source.as_ref();
    let read = match (&o.source, source) {
        (Some(Err(why)), Some(src)) => {
            return Err((
                CheckState::Unknown,
                format!("{src} could not be read: {why}"),
            ));
        }
        (Some(Ok(None)), Some(src)) => {
            return failed(format!("{src}, named by its markers, does not exist"));
        }
        (Some(Ok(Some(v))), Some(_)) => Some(v),
        _ => None,
    };
    let paths = &o.paths;
    match (o.ownership.tool, source, read) {
        (GitOpsTool::Flux, Some(src @ Source::Kustomization { .. }), Some(k)) => {
            let uncovered = flux_uncovered(k, t, paths).map_err(|e| {
                (
                    CheckState::Failed,
                    format!("{src} has an ignore rule Flux would refuse too: {e}"),
                )
            })?;
            if uncovered.is_empty() {
                return Ok(format!(
                    "{src} spec.ignore covers {}; Flux still dry-runs Git's whole object, so with the version guard installed the Kustomization stops applying until Git declares the new version (`{FLUX_SSA}: IfNotPresent` on the object avoids that)",
                    quoted(paths)
                ));
            }
            failed(format!(
                "{src} would put back {}: annotate the object in Git with `{FLUX_SSA}: IfNotPresent` (preferred), or add to its spec `ignore: [{{paths: [{}], target: {{group: {}, kind: {}, name: {}, namespace: {}}}}}]` (Flux still dry-runs Git's whole object, ignored paths included, so with the version guard installed that Kustomization then stops applying anything until Git declares the new version), or set spec.gitops.mode: Handoff",
                quoted(&uncovered),
                quoted(&uncovered),
                t.group,
                t.kind,
                t.name,
                t.namespace
            ))
        }
        (GitOpsTool::Flux, Some(src @ Source::HelmRelease { .. }), _) => failed(format!(
            "{src} re-renders it on every upgrade and would put back {}: declare the versions in the release's values instead (or list GitOpsSafe in spec.preflight.skip to accept the revert, which the version guard refuses)",
            quoted(paths)
        )),
        (GitOpsTool::Flux, _, _) => failed(format!(
            "Flux applies it ({}) but no Kustomization label names the rule set: annotate the object in Git with `{FLUX_SSA}: IfNotPresent`",
            o.ownership.evidence.join(", ")
        )),
        (GitOpsTool::ArgoCD, Some(src), Some(app)) => {
            let (respects, uncovered) = argo_uncovered(app, t, paths);
            if respects && uncovered.is_empty() {
                return Ok(format!(
                    "{src} ignoreDifferences cover {} and it syncs with RespectIgnoreDifferences=true",
                    quoted(paths)
                ));
            }
            let mut fix = Vec::new();
            if !uncovered.is_empty() {
                fix.push(format!(
                    "add to its spec `ignoreDifferences: [{{group: {}, kind: {}, name: {}, namespace: {}, jsonPointers: [{}]}}]` (or managedFieldsManagers: [{}])",
                    t.group,
                    t.kind,
                    t.name,
                    t.namespace,
                    quoted(&uncovered),
                    crate::FIELD_MANAGER
                ));
            }
            if !respects {
                fix.push(
                    "add `RespectIgnoreDifferences=true` (with `ServerSideApply=true`) to its spec.syncPolicy.syncOptions: without it a sync still applies the ignored fields".into(),
                );
            }
            failed(format!(
                "{src} would put back {}: {}",
                quoted(if uncovered.is_empty() {
                    paths
                } else {
                    &uncovered
                }),
                fix.join("; and ")
            ))
        }
        (GitOpsTool::ArgoCD, _, _) => failed(format!(
            "Argo CD applies it ({}) but its Application is not known: give the object its tracking annotation {ARGO_TRACKING_ID}",
            o.ownership.evidence.join(", ")
        )),
        (GitOpsTool::Unknown, _, _) => failed(format!(
            "{} by server-side apply and would put its value back: stop it declaring {}, or list GitOpsSafe in spec.preflight.skip to accept that",
            o.ownership.evidence.join("; "),
            quoted(paths)
        )),
    }
}

/// The status entries for the observed Git-managed objects.
pub fn objects(obs: &[GitOpsObs]) -> Vec<GitOpsObject> {
    obs.iter()
        .map(|o| {
            let (protected, message) = match protection(o) {
                Ok(m) => (true, m),
                Err((_, m)) => (false, m),
            };
            GitOpsObject {
                object: o.object.clone(),
                tool: o.ownership.tool,
                source: o.ownership.source.as_ref().map(ToString::to_string),
                evidence: o.ownership.evidence.join(", "),
                protected,
                message,
            }
        })
        .collect()
}

/// [`CheckName::GitOpsSafe`]: every Git-managed object is protected.
pub fn gitops_safe(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::GitOpsSafe;
    let obs = &i.obs.gitops;
    if obs.is_empty() {
        return passed(
            name,
            "no GitOps tool declares the control plane or the pools",
        );
    }
    if i.spec.gitops.mode == crate::api::GitOpsMode::Handoff {
        let objects: Vec<&str> = obs.iter().map(|o| o.object.as_str()).collect();
        return passed(
            name,
            format!(
                "spec.gitops.mode is Handoff: {} are not written; each step lists in status.declareInGit what Git must declare",
                objects.join(", ")
            ),
        );
    }
    let mut failed = Vec::new();
    let mut unknown = Vec::new();
    let mut fine = Vec::new();
    for o in obs {
        match protection(o) {
            Ok(m) => fine.push(format!("{}: {m}", o.object)),
            Err((CheckState::Unknown, m)) => unknown.push(format!("{}: {m}", o.object)),
            Err((_, m)) => failed.push(format!("{}: {m}", o.object)),
        }
    }
    if !failed.is_empty() {
        return check(
            name,
            CheckState::Failed,
            "GitOpsWouldRevert",
            failed.join("; "),
        );
    }
    if !unknown.is_empty() {
        return check(
            name,
            CheckState::Unknown,
            "GitOpsRulesUnreadable",
            unknown.join("; "),
        );
    }
    passed(name, fine.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(v).unwrap()
    }

    const VERSION: &[&str] = &["spec", "version"];

    #[test]
    fn no_marker_and_no_other_applier_is_no_owner() {
        let m = meta(json!({"name": "cp", "namespace": "t", "managedFields": [
            {"manager": "kubectl-create", "operation": "Update", "fieldsV1": {"f:spec": {"f:version": {}}}},
            {"manager": crate::FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {"f:version": {}}}},
            {"manager": "manager", "operation": "Update", "fieldsV1": {"f:status": {}}},
        ]}));
        assert_eq!(detect(&m, VERSION), None);
    }

    #[test]
    fn flux_is_known_by_its_labels_and_names_the_kustomization() {
        let m = meta(json!({"name": "cp", "namespace": "t", "labels": {
            "kustomize.toolkit.fluxcd.io/name": "clusters",
            "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
        }}));
        let o = detect(&m, VERSION).unwrap();
        assert_eq!(o.tool, GitOpsTool::Flux);
        assert_eq!(
            o.source,
            Some(Source::Kustomization {
                namespace: "flux-system".into(),
                name: "clusters".into()
            })
        );
        assert_eq!(o.opted_out, None);
        assert_eq!(
            o.source.unwrap().to_string(),
            "Kustomization flux-system/clusters"
        );
    }

    #[test]
    fn flux_by_field_manager_alone_and_its_opt_outs() {
        let m = meta(json!({"name": "cp", "namespace": "t",
            "annotations": {"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"},
            "managedFields": [{"manager": "kustomize-controller", "operation": "Apply", "fieldsV1": {}}]}));
        let o = detect(&m, VERSION).unwrap();
        assert_eq!(o.tool, GitOpsTool::Flux);
        assert_eq!(o.source, None);
        assert_eq!(o.evidence, vec!["field manager kustomize-controller"]);
        assert_eq!(
            o.opted_out.as_deref(),
            Some("kustomize.toolkit.fluxcd.io/ssa: IfNotPresent")
        );
        // `Merge` does not protect a field Git declares.
        let m = meta(json!({"name": "cp", "namespace": "t",
            "labels": {"kustomize.toolkit.fluxcd.io/name": "c"},
            "annotations": {"kustomize.toolkit.fluxcd.io/ssa": "Merge"}}));
        assert_eq!(detect(&m, VERSION).unwrap().opted_out, None);
        let m = meta(json!({"name": "cp", "namespace": "t",
            "labels": {"kustomize.toolkit.fluxcd.io/name": "c"},
            "annotations": {"kustomize.toolkit.fluxcd.io/reconcile": "disabled"}}));
        assert!(detect(&m, VERSION).unwrap().opted_out.is_some());
    }

    #[test]
    fn a_helm_release_defaults_to_the_objects_namespace() {
        let m = meta(json!({"name": "md", "namespace": "t",
            "labels": {"helm.toolkit.fluxcd.io/name": "cluster"}}));
        let o = detect(&m, VERSION).unwrap();
        assert_eq!(
            o.source,
            Some(Source::HelmRelease {
                namespace: "t".into(),
                name: "cluster".into()
            })
        );
    }

    #[test]
    fn argo_cd_by_tracking_id_in_both_forms() {
        assert_eq!(
            parse_tracking_id("prod:controlplane.cluster.x-k8s.io/KubeadmControlPlane:t/cp"),
            Some((None, "prod".into()))
        );
        assert_eq!(
            parse_tracking_id("team-a_prod:cluster.x-k8s.io/MachineDeployment:t/md"),
            Some((Some("team-a".into()), "prod".into()))
        );
        assert_eq!(parse_tracking_id("garbage"), None);
        let m = meta(json!({"name": "cp", "namespace": "t", "annotations": {
            "argocd.argoproj.io/tracking-id": "team-a_prod:controlplane.cluster.x-k8s.io/KubeadmControlPlane:t/cp"}}));
        let o = detect(&m, VERSION).unwrap();
        assert_eq!(o.tool, GitOpsTool::ArgoCD);
        assert_eq!(
            o.source,
            Some(Source::Application {
                namespace: Some("team-a".into()),
                name: "prod".into()
            })
        );
    }

    #[test]
    fn the_instance_label_is_argo_cds_only_without_helm_markers() {
        let m = meta(json!({"name": "cp", "namespace": "t",
            "labels": {"app.kubernetes.io/instance": "prod"}}));
        assert_eq!(detect(&m, VERSION).unwrap().tool, GitOpsTool::ArgoCD);
        let m = meta(json!({"name": "cp", "namespace": "t",
            "labels": {"app.kubernetes.io/instance": "prod", "app.kubernetes.io/managed-by": "Helm"}}));
        assert_eq!(detect(&m, VERSION), None);
        let m = meta(json!({"name": "cp", "namespace": "t",
            "managedFields": [{"manager": "argocd-controller", "operation": "Apply", "fieldsV1": {}}]}));
        assert_eq!(detect(&m, VERSION).unwrap().tool, GitOpsTool::ArgoCD);
    }

    #[test]
    fn another_server_side_applier_of_the_version_is_an_unknown_owner() {
        let m = meta(json!({"name": "md", "namespace": "t", "managedFields": [
            {"manager": "terraform", "operation": "Apply",
             "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:version": {}}}}}},
            {"manager": "pulumi", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        ]}));
        let o = detect(&m, &["spec", "template", "spec", "version"]).unwrap();
        assert_eq!(o.tool, GitOpsTool::Unknown);
        assert_eq!(
            o.evidence,
            vec!["field manager terraform applies spec.template.spec.version"]
        );
    }

    fn kcp_target() -> Target {
        Target {
            group: "controlplane.cluster.x-k8s.io".into(),
            version: "v1beta1".into(),
            kind: "KubeadmControlPlane".into(),
            name: "prod-cp".into(),
            namespace: "team-a".into(),
            labels: [("tier".to_string(), "cp".to_string())].into(),
            ..Target::default()
        }
    }

    fn kcp_paths() -> Vec<String> {
        vec![
            "/spec/version".into(),
            "/spec/machineTemplate/infrastructureRef/name".into(),
        ]
    }

    fn flux_obs(k: Option<serde_json::Value>, opted_out: Option<&str>) -> GitOpsObs {
        GitOpsObs {
            object: "KubeadmControlPlane prod-cp".into(),
            target: kcp_target(),
            ownership: Ownership {
                tool: GitOpsTool::Flux,
                source: Some(Source::Kustomization {
                    namespace: "flux-system".into(),
                    name: "clusters".into(),
                }),
                evidence: vec!["label kustomize.toolkit.fluxcd.io/name=clusters".into()],
                opted_out: opted_out.map(str::to_string),
            },
            paths: kcp_paths(),
            source: k.map(|k| Ok(Some(k))),
        }
    }

    #[test]
    fn label_selectors_of_every_form() {
        let set: BTreeMap<String, String> = [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "x".to_string()),
        ]
        .into();
        for (sel, want) in [
            ("a=1", true),
            ("a==1", true),
            ("a!=1", false),
            ("a=1,b=x", true),
            ("a=1,b=y", false),
            ("a", true),
            ("!a", false),
            ("!c", true),
            ("b in (x, y)", true),
            ("b notin (x,y)", false),
            ("c notin (x)", true),
            ("a=1, b in (y,z)", false),
            ("", true),
        ] {
            assert_eq!(selector_matches(sel, &set), Ok(want), "{sel:?}");
        }
        assert!(selector_matches("b in x", &set).is_err());
        assert!(selector_matches("a > 1", &set).is_err());
    }

    #[test]
    fn a_kustomization_without_rules_would_revert_and_the_fix_is_exact_yaml() {
        let k = json!({"spec": {"interval": "5m"}});
        let Err((state, msg)) = protection(&flux_obs(Some(k), None)) else {
            panic!("must not be protected")
        };
        assert_eq!(state, CheckState::Failed);
        assert!(msg.contains("Kustomization flux-system/clusters would put back \"/spec/version\", \"/spec/machineTemplate/infrastructureRef/name\""), "{msg}");
        assert!(msg.contains("ignore: [{paths: [\"/spec/version\", \"/spec/machineTemplate/infrastructureRef/name\"], target: {group: controlplane.cluster.x-k8s.io, kind: KubeadmControlPlane, name: prod-cp, namespace: team-a}}]"), "{msg}");
        assert!(
            msg.contains("kustomize.toolkit.fluxcd.io/ssa: IfNotPresent"),
            "{msg}"
        );
    }

    #[test]
    fn kustomization_ignore_rules_count_only_where_their_target_selects_the_object() {
        let rule = |target: serde_json::Value, paths: serde_json::Value| json!({"spec": {"ignore": [{"paths": paths, "target": target}]}});
        let both = json!([
            "/spec/version",
            "/spec/machineTemplate/infrastructureRef/name"
        ]);
        let t = kcp_target();
        let p = kcp_paths();
        // Selected by kind and a name regex (anchored), by labels, or with no target at all.
        for target in [
            json!({"kind": "KubeadmControlPlane", "name": "prod-.*"}),
            json!({"group": "controlplane.cluster.x-k8s.io", "namespace": "team-a"}),
            json!({"labelSelector": "tier=cp"}),
            serde_json::Value::Null,
        ] {
            assert_eq!(
                flux_uncovered(&rule(target.clone(), both.clone()), &t, &p),
                Ok(vec![]),
                "{target}"
            );
        }
        // Not selected: another kind, a regex that only matches part of the name, labels.
        for target in [
            json!({"kind": "MachineDeployment"}),
            json!({"name": "prod"}),
            json!({"labelSelector": "tier=workers"}),
        ] {
            assert_eq!(
                flux_uncovered(&rule(target.clone(), both.clone()), &t, &p),
                Ok(p.clone()),
                "{target}"
            );
        }
        // A parent path is not the field itself: Flux compares and strips exactly the path.
        assert_eq!(
            flux_uncovered(
                &rule(json!({"kind": "KubeadmControlPlane"}), json!(["/spec"])),
                &t,
                &p
            ),
            Ok(p.clone())
        );
        // One path covered: the other is named.
        assert_eq!(
            flux_uncovered(
                &rule(serde_json::Value::Null, json!(["/spec/version"])),
                &t,
                &p
            ),
            Ok(vec![
                "/spec/machineTemplate/infrastructureRef/name".to_string()
            ])
        );
        assert!(flux_uncovered(&rule(json!({"name": "("}), both), &t, &p).is_err());
        let covered = rule(
            json!({"kind": "KubeadmControlPlane"}),
            json!([
                "/spec/version",
                "/spec/machineTemplate/infrastructureRef/name"
            ]),
        );
        assert!(protection(&flux_obs(Some(covered), None)).is_ok());
    }

    #[test]
    fn the_ssa_annotation_protects_without_reading_the_kustomization() {
        let o = flux_obs(None, Some("kustomize.toolkit.fluxcd.io/ssa: IfNotPresent"));
        assert!(protection(&o).unwrap().contains("IfNotPresent"));
    }

    #[test]
    fn an_unreadable_rule_set_is_unknown_and_a_missing_one_failed() {
        let mut o = flux_obs(None, None);
        o.source = Some(Err("namespace flux-system is neither ...".into()));
        assert_eq!(protection(&o).unwrap_err().0, CheckState::Unknown);
        o.source = Some(Ok(None));
        let (state, msg) = protection(&o).unwrap_err();
        assert_eq!(state, CheckState::Failed);
        assert!(msg.contains("does not exist"), "{msg}");
    }

    #[test]
    fn argo_cd_needs_ignore_differences_and_respect_ignore_differences() {
        let t = kcp_target();
        let p = kcp_paths();
        let app = |ignore: serde_json::Value, options: serde_json::Value| json!({"spec": {"ignoreDifferences": ignore, "syncPolicy": {"syncOptions": options}}});
        let pointers = json!([{"group": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane",
            "jsonPointers": ["/spec/version", "/spec/machineTemplate/infrastructureRef/name"]}]);
        let respect = json!(["ServerSideApply=true", "RespectIgnoreDifferences=true"]);
        assert_eq!(
            argo_uncovered(&app(pointers.clone(), respect.clone()), &t, &p),
            (true, vec![])
        );
        // Hidden from the diff only: a sync still applies Git.
        assert_eq!(
            argo_uncovered(&app(pointers.clone(), json!([])), &t, &p),
            (false, vec![])
        );
        // By our field manager.
        let by_manager = json!([{"group": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane",
            "managedFieldsManagers": [crate::FIELD_MANAGER]}]);
        assert_eq!(
            argo_uncovered(&app(by_manager, respect.clone()), &t, &p),
            (true, vec![])
        );
        // Another object's rule.
        let other = json!([{"group": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane", "name": "other",
            "jsonPointers": ["/spec/version"]}]);
        assert_eq!(
            argo_uncovered(&app(other, respect), &t, &p),
            (true, p.clone())
        );

        let o = GitOpsObs {
            object: "KubeadmControlPlane prod-cp".into(),
            target: t,
            ownership: Ownership {
                tool: GitOpsTool::ArgoCD,
                source: Some(Source::Application {
                    namespace: None,
                    name: "prod".into(),
                }),
                evidence: vec![],
                opted_out: None,
            },
            paths: p,
            source: Some(Ok(Some(app(pointers, json!([]))))),
        };
        let (_, msg) = protection(&o).unwrap_err();
        assert!(msg.contains("RespectIgnoreDifferences=true"), "{msg}");
    }

    #[test]
    fn the_tools_own_tags_join_the_protected_paths() {
        let m = meta(json!({"name": "cp", "namespace": "t", "managedFields": [
            {"manager": "kustomize-controller", "operation": "Apply", "fieldsV1": {"f:spec": {
                "f:version": {},
                "f:kubeadmConfigSpec": {"f:clusterConfiguration": {"f:dns": {"f:imageTag": {}}}}}}},
            {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {
                "f:kubeadmConfigSpec": {"f:clusterConfiguration": {"f:etcd": {"f:local": {"f:imageTag": {}}}}}}}},
        ]}));
        assert_eq!(
            written_paths(true, false, &m, Some("kustomize-controller")),
            vec![
                "/spec/version",
                "/spec/machineTemplate/infrastructureRef/name",
                "/spec/kubeadmConfigSpec/clusterConfiguration/dns/imageTag",
            ]
        );
        assert_eq!(
            written_paths(true, true, &m, None)[1],
            "/spec/machineTemplate/spec/infrastructureRef/name"
        );
        assert_eq!(
            written_paths(false, false, &m, Some("kustomize-controller")),
            vec![
                "/spec/template/spec/version",
                "/spec/template/spec/infrastructureRef/name"
            ]
        );
    }
}
