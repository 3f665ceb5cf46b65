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

fn replicas(obj: &Value) -> u32 {
    // CAPI defaults spec.replicas to 1 for both KCP and MD.
    obj["spec"]["replicas"]
        .as_i64()
        .map_or(1, |n| n.clamp(0, u32::MAX as i64) as u32)
}

/// An IntOrString surge against `replicas`: a number as is, `"N%"` of replicas rounded up (as
/// CAPI does for maxSurge), a plain numeric string as its number; absent or unreadable means
/// CAPI's default, 1. Capped at `replicas`: the new machines of a rollout never outnumber the
/// desired count, so no more than that many extra slots are ever held at once.
fn scaled_surge(raw: &Value, replicas: u32) -> u32 {
    const DEFAULT: u32 = 1;
    let surge = match raw {
        Value::Number(n) => n
            .as_i64()
            .map_or(DEFAULT, |n| n.clamp(0, u32::MAX as i64) as u32),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_suffix('%') {
                Some(pct) => pct
                    .trim()
                    .parse::<u64>()
                    .map_or(DEFAULT, |p| (p * replicas as u64).div_ceil(100) as u32),
                None => s.parse::<u32>().unwrap_or(DEFAULT),
            }
        }
        _ => DEFAULT,
    };
    surge.min(replicas)
}

/// Slots a KubeadmControlPlane rollout holds beyond its replicas: maxSurge from
/// `spec.rolloutStrategy.rollingUpdate.maxSurge` (v1beta1) or
/// `spec.rollout.strategy.rollingUpdate.maxSurge` (v1beta2, CAPI ≥ v1.11; checked against
/// kubernetes-sigs/cluster-api api/controlplane/kubeadm/v1beta2/kubeadm_control_plane_types.go),
/// default 1; 0 when the control plane has no replicas.
pub fn surge_of_kcp(kcp: &Value) -> u32 {
    let replicas = replicas(kcp);
    let spec = &kcp["spec"];
    let raw = [
        &spec["rollout"]["strategy"]["rollingUpdate"]["maxSurge"],
        &spec["rolloutStrategy"]["rollingUpdate"]["maxSurge"],
    ]
    .into_iter()
    .find(|v| !v.is_null())
    .unwrap_or(&Value::Null);
    scaled_surge(raw, replicas)
}

/// Slots a MachineDeployment rollout holds beyond its replicas: maxSurge from
/// `spec.strategy.rollingUpdate.maxSurge` (v1beta1) or `spec.rollout.strategy.rollingUpdate.maxSurge`
/// (v1beta2; api/core/v1beta2/machinedeployment_types.go), an int or a percentage of
/// `spec.replicas` rounded up, default 1; 0 for the `OnDelete` strategy (machines are only
/// replaced after someone deletes them) and when the deployment has no replicas.
pub fn surge_of_md(md: &Value) -> u32 {
    let replicas = replicas(md);
    let spec = &md["spec"];
    let strategy = if spec["rollout"]["strategy"].is_object() {
        &spec["rollout"]["strategy"]
    } else {
        &spec["strategy"]
    };
    if strategy["type"] == "OnDelete" {
        return 0;
    }
    scaled_surge(&strategy["rollingUpdate"]["maxSurge"], replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn md(api: &str, replicas: Value, strategy: Value) -> Value {
        if api.ends_with("v1beta2") {
            json!({"apiVersion": api, "spec": {"replicas": replicas, "rollout": {"strategy": strategy}}})
        } else {
            json!({"apiVersion": api, "spec": {"replicas": replicas, "strategy": strategy}})
        }
    }

    #[test]
    fn md_surge_int_percent_default_and_on_delete() {
        for api in ["cluster.x-k8s.io/v1beta1", "cluster.x-k8s.io/v1beta2"] {
            let rolling =
                |s: Value| json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": s}});
            assert_eq!(
                surge_of_md(&md(api, json!(5), rolling(json!(2)))),
                2,
                "{api}"
            );
            assert_eq!(
                surge_of_md(&md(api, json!(5), rolling(json!(0)))),
                0,
                "{api}"
            );
            // Percentages of replicas round up: 25% of 5 = 1.25 -> 2; 10% of 3 -> 1.
            assert_eq!(
                surge_of_md(&md(api, json!(5), rolling(json!("25%")))),
                2,
                "{api}"
            );
            assert_eq!(
                surge_of_md(&md(api, json!(3), rolling(json!("10%")))),
                1,
                "{api}"
            );
            assert_eq!(
                surge_of_md(&md(api, json!(4), rolling(json!("0%")))),
                0,
                "{api}"
            );
            assert_eq!(
                surge_of_md(&md(api, json!(4), rolling(json!("50%")))),
                2,
                "{api}"
            );
            // Default 1 when unset, whatever the replicas.
            assert_eq!(surge_of_md(&md(api, json!(4), json!({}))), 1, "{api}");
            // No replicas, no surge; never more than the replicas.
            assert_eq!(
                surge_of_md(&md(api, json!(0), rolling(json!(3)))),
                0,
                "{api}"
            );
            assert_eq!(
                surge_of_md(&md(api, json!(2), rolling(json!(5)))),
                2,
                "{api}"
            );
            assert_eq!(
                surge_of_md(&md(api, json!(2), rolling(json!("200%")))),
                2,
                "{api}"
            );
            // OnDelete never surges.
            assert_eq!(
                surge_of_md(&md(api, json!(3), json!({"type": "OnDelete"}))),
                0,
                "{api}"
            );
        }
        // spec.replicas unset defaults to 1.
        assert_eq!(surge_of_md(&json!({"spec": {}})), 1);
    }

    #[test]
    fn v1beta2_md_reads_only_the_rollout_path() {
        // A v1beta2 object has no spec.strategy; an old path left over must not be read when
        // the v1beta2 one is present.
        let obj = json!({"spec": {"replicas": 3,
            "rollout": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0}}},
            "strategy": {"rollingUpdate": {"maxSurge": 2}}}});
        assert_eq!(surge_of_md(&obj), 0);
    }

    #[test]
    fn kcp_surge_on_both_api_versions() {
        let v1 = |s: Value| {
            json!({"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1",
            "spec": {"replicas": 3, "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": s}}}})
        };
        let v2 = |s: Value| {
            json!({"apiVersion": "controlplane.cluster.x-k8s.io/v1beta2",
            "spec": {"replicas": 3, "rollout": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": s}}}}})
        };
        for kcp in [v1, v2] {
            assert_eq!(surge_of_kcp(&kcp(json!(0))), 0);
            assert_eq!(surge_of_kcp(&kcp(json!(1))), 1);
            assert_eq!(surge_of_kcp(&kcp(Value::Null)), 1, "default 1");
        }
        assert_eq!(
            surge_of_kcp(&json!({"spec": {"replicas": 3}})),
            1,
            "no strategy: default"
        );
        assert_eq!(
            surge_of_kcp(
                &json!({"spec": {"replicas": 0, "rolloutStrategy": {"rollingUpdate": {"maxSurge": 1}}}})
            ),
            0
        );
    }

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
