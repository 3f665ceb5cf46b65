//! What a rollout needs from the platform besides the API objects CAPI manages (DOMAIN.md §4):
//! free per-machine slots (fixed IP/hostname/disk entries) in the pool each machine template
//! draws from, and the hop's OS image staged on the platform.
//!
//! Everything here is pure: the controller reads the pool, its holders and the ConfigMaps, and
//! these functions interpret them.

use serde_json::Value;

/// Where a machine template draws per-machine slots (IP, hostname, persistent disk) from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPoolRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `None`: the template's own namespace.
    pub namespace: Option<String>,
}

/// Free and total slots of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCount {
    pub total: u32,
    pub free: u32,
    /// For people: which slots are free (or why none are), e.g. `free: 10.0.0.14 (prod-w-4)`.
    pub detail: String,
}

/// How to confirm that an OS image is staged on the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLookup {
    /// The provider boots no OS image (CAPD's in-memory backend): nothing to stage.
    NotNeeded { reason: String },
    /// Staged when a ConfigMap in `namespace` matches `label_selector` and, when `data_key` is
    /// set, carries `data_value` under that key.
    ConfigMap {
        namespace: String,
        label_selector: String,
        data_key: Option<String>,
        data_value: Option<String>,
    },
    /// Staged when ConfigMap `namespace/name` has the data key `key` (bare metal's image
    /// catalog, keyed by Kubernetes version).
    ConfigMapKey {
        namespace: String,
        name: String,
        key: String,
    },
    /// Nothing in the platform API can confirm it; the operator must confirm the exact name.
    Unverifiable,
}

/// Namespace of the platform's image ConfigMaps on the global cluster. alauda/immutable-infra-docs
/// docs/en/infrastructure/huawei-dcs.mdx ("VM Template and ConfigMap") shows the DCS ConfigMap
/// in `cpaas-system`, the namespace every platform and provider object lives in.
pub const PLATFORM_NAMESPACE: &str = "cpaas-system";

/// Does one of `configmaps` confirm the image? `NotNeeded` is trivially confirmed and
/// `Unverifiable` never is. For `ConfigMap`, the label selector and data are checked here again
/// (not only trusted to the server-side list), and ConfigMaps of another namespace never count.
pub fn image_confirmed(lookup: &ImageLookup, configmaps: &[Value]) -> bool {
    match lookup {
        ImageLookup::NotNeeded { .. } => true,
        ImageLookup::Unverifiable => false,
        ImageLookup::ConfigMapKey {
            namespace,
            name,
            key,
        } => configmaps.iter().any(|cm| {
            cm["metadata"]["namespace"] == namespace.as_str()
                && cm["metadata"]["name"] == name.as_str()
                && cm["data"][key.as_str()]
                    .as_str()
                    .is_some_and(|v| !v.trim().is_empty())
        }),
        ImageLookup::ConfigMap {
            namespace,
            label_selector,
            data_key,
            data_value,
        } => configmaps.iter().any(|cm| {
            let in_namespace = cm["metadata"]["namespace"]
                .as_str()
                .is_none_or(|ns| ns == namespace);
            let data_ok = match data_key {
                None => true,
                Some(key) => match (cm["data"][key.as_str()].as_str(), data_value) {
                    (Some(got), Some(want)) => got.trim() == want,
                    (Some(_), None) => true,
                    (None, _) => false,
                },
            };
            in_namespace && data_ok && selector_matches(label_selector, &cm["metadata"]["labels"])
        }),
    }
}

/// Matches the equality-based label selectors this crate builds (`k=v`, `k==v`, `k!=v`, `k`,
/// `!k`, comma-separated). Anything else (set-based syntax) matches nothing.
fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .all(|req| {
            let label = |k: &str| labels[k.trim()].as_str();
            if let Some((k, v)) = req.split_once("!=") {
                label(k) != Some(v.trim())
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                label(k) == Some(v.trim())
            } else if let Some(k) = req.strip_prefix('!') {
                label(k).is_none()
            } else if req.contains(' ') || req.contains('(') {
                false
            } else {
                label(req).is_some()
            }
        })
}

/// Whether `value` can be a Kubernetes label value: at most 63 characters, empty or starting
/// and ending with an alphanumeric, with only alphanumerics, `-`, `_` and `.` in between.
pub fn is_label_value(value: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    value.is_empty()
        || (value.len() <= 63
            && value.chars().all(ok_char)
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// The slot pool named by a reference object at `reference` inside a machine template: an
/// ObjectReference (`apiVersion`, `kind`, `name`, `namespace`, all but `name` optional) or a
/// LocalObjectReference (`name` only). Missing parts default to the template's API version and
/// `default_kind`; `None` when there is no reference or it has no name.
pub(crate) fn pool_ref(
    template: &Value,
    reference: &Value,
    default_kind: &str,
) -> Option<SlotPoolRef> {
    let name = reference["name"].as_str().filter(|n| !n.is_empty())?;
    let non_empty = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let api_version = non_empty(&reference["apiVersion"])
        .or_else(|| non_empty(&template["apiVersion"]))
        .unwrap_or_else(|| "infrastructure.cluster.x-k8s.io/v1beta1".to_string());
    Some(SlotPoolRef {
        api_version,
        kind: non_empty(&reference["kind"]).unwrap_or_else(|| default_kind.to_string()),
        name: name.to_string(),
        namespace: non_empty(&reference["namespace"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_values() {
        assert!(is_label_value("MicroOS-5.5-v4.2.0"));
        assert!(is_label_value("microos5.5-4.2.0"));
        assert!(is_label_value(""));
        assert!(!is_label_value("acp 4.3 template"), "space");
        assert!(!is_label_value("-leading-dash"));
        assert!(!is_label_value("trailing."));
        assert!(!is_label_value("dir/name"));
        assert!(!is_label_value(&"x".repeat(64)));
        assert!(is_label_value(&"x".repeat(63)));
    }

    #[test]
    fn configmap_lookup_checks_namespace_labels_and_data() {
        let lookup = ImageLookup::ConfigMap {
            namespace: "cpaas-system".into(),
            label_selector: "cpaas.io/os-release".into(),
            data_key: Some("osImageVersion".into()),
            data_value: Some("microos-4.3.2".into()),
        };
        let cm = |ns: &str, labels: Value, data: Value| json!({"metadata": {"namespace": ns, "labels": labels}, "data": data});
        let labelled = json!({"cpaas.io/os-release": "4.3.2"});
        let good = cm(
            "cpaas-system",
            labelled.clone(),
            json!({"osImageVersion": "microos-4.3.2"}),
        );
        assert!(image_confirmed(&lookup, std::slice::from_ref(&good)));
        assert!(!image_confirmed(&lookup, &[]));
        assert!(!image_confirmed(
            &lookup,
            &[cm(
                "cpaas-system",
                labelled.clone(),
                json!({"osImageVersion": "microos-4.3.1"})
            )]
        ));
        assert!(!image_confirmed(
            &lookup,
            &[cm(
                "default",
                labelled,
                json!({"osImageVersion": "microos-4.3.2"})
            )]
        ));
        assert!(!image_confirmed(
            &lookup,
            &[cm(
                "cpaas-system",
                json!({"other": "x"}),
                json!({"osImageVersion": "microos-4.3.2"})
            )]
        ));

        let dcs = ImageLookup::ConfigMap {
            namespace: "cpaas-system".into(),
            label_selector: "cpaas.io/dcs-vm-template=tpl-a".into(),
            data_key: None,
            data_value: None,
        };
        let dcs_cm = |v: &str| {
            cm(
                "cpaas-system",
                json!({"cpaas.io/dcs-vm-template": v}),
                json!({}),
            )
        };
        assert!(image_confirmed(&dcs, &[dcs_cm("tpl-b"), dcs_cm("tpl-a")]));
        assert!(!image_confirmed(&dcs, &[dcs_cm("tpl-b")]));

        assert!(image_confirmed(
            &ImageLookup::NotNeeded { reason: "x".into() },
            &[]
        ));
        assert!(!image_confirmed(&ImageLookup::Unverifiable, &[good]));
    }

    #[test]
    fn selectors() {
        let labels = json!({"a": "1", "b": "2"});
        assert!(selector_matches("a=1", &labels));
        assert!(selector_matches("a==1,b", &labels));
        assert!(selector_matches("a!=2, !c", &labels));
        assert!(!selector_matches("a=2", &labels));
        assert!(!selector_matches("c", &labels));
        assert!(
            !selector_matches("a in (1)", &labels),
            "set-based syntax is not understood"
        );
    }
}
