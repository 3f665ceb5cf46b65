//! The two-step review (pure; DOMAIN.md §2, the seeds' Step 1 and Step 2). Step 1: the
//! cluster's ResourcePatches that are not exempted for the target may be overwritten by the
//! upgrade and must be acknowledged by name. Step 2: Aligned extensions whose version changes
//! between the cluster's row and the target row; Medium and High impacts must be acknowledged.

use serde_json::Value;

use crate::api::{
    Acknowledgements, ExtensionImpact, Impact, MatrixRow, Modification, ReviewStatus,
};
use crate::platform::{self, EXEMPT_ANNOTATION};

fn listed(list: &[String], name: &str) -> bool {
    list.iter().any(|a| a == "*" || a == name)
}

/// What needs acknowledging, and whether `acks` covers it.
pub fn review(
    resource_patches: &[Value],
    current_row: Option<&MatrixRow>,
    target: &MatrixRow,
    acks: &Acknowledgements,
) -> ReviewStatus {
    let mut modifications: Vec<Modification> = resource_patches
        .iter()
        .filter(|rp| {
            !rp["metadata"]["annotations"][EXEMPT_ANNOTATION]
                .as_str()
                .is_some_and(|v| platform::same_version(v, &target.distribution_version))
        })
        .filter_map(|rp| rp["metadata"]["name"].as_str())
        .map(|name| Modification {
            name: name.to_string(),
            acknowledged: listed(&acks.modifications, name),
        })
        .collect();
    modifications.sort_by(|a, b| a.name.cmp(&b.name));

    let mut impacts: Vec<ExtensionImpact> = target
        .aligned_extensions
        .iter()
        .filter_map(|ext| {
            let from = current_row.and_then(|r| {
                r.aligned_extensions
                    .iter()
                    .find(|e| e.name == ext.name)
                    .map(|e| e.version.clone())
            });
            if from.as_deref() == Some(ext.version.as_str()) {
                return None;
            }
            let required = ext.impact >= Impact::Medium;
            Some(ExtensionImpact {
                name: ext.name.clone(),
                from,
                to: ext.version.clone(),
                impact: ext.impact,
                acknowledgement_required: required,
                acknowledged: required && listed(&acks.impacts, &ext.name),
            })
        })
        .collect();
    impacts.sort_by(|a, b| a.name.cmp(&b.name));
    ReviewStatus {
        modifications,
        impacts,
    }
}

/// The names still waiting for acknowledgement: (modifications, impacts).
pub fn pending(r: &ReviewStatus) -> (Vec<&str>, Vec<&str>) {
    (
        r.modifications
            .iter()
            .filter(|m| !m.acknowledged)
            .map(|m| m.name.as_str())
            .collect(),
        r.impacts
            .iter()
            .filter(|i| i.acknowledgement_required && !i.acknowledged)
            .map(|i| i.name.as_str())
            .collect(),
    )
}

/// The message of `AcknowledgementRequired=True`, with the exact spec fields to set.
pub fn pending_message(r: &ReviewStatus) -> Option<String> {
    let (mods, imps) = pending(r);
    let mut parts = Vec::new();
    if !mods.is_empty() {
        parts.push(format!(
            "Step 1: ResourcePatches {} modify platform components and may be overwritten; review them, then list them in spec.acknowledgements.modifications (or annotate each {EXEMPT_ANNOTATION}=<target>)",
            mods.join(", ")
        ));
    }
    if !imps.is_empty() {
        let detail: Vec<String> = r
            .impacts
            .iter()
            .filter(|i| imps.contains(&i.name.as_str()))
            .map(|i| {
                format!(
                    "{} {} → {} ({:?})",
                    i.name,
                    i.from.as_deref().unwrap_or("new"),
                    i.to,
                    i.impact
                )
            })
            .collect();
        parts.push(format!(
            "Step 2: Aligned extensions {} have Medium/High impact; review them, then list them in spec.acknowledgements.impacts",
            detail.join(", ")
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(dv: &str, exts: Value) -> MatrixRow {
        serde_json::from_value(json!({
            "distributionVersion": dv, "kubernetesVersion": "v1.34.5", "coreDNSImageTag": "x",
            "etcdImageTag": "y", "osImageVersion": "img", "alignedExtensions": exts,
        }))
        .unwrap()
    }

    fn rp(name: &str, exempt: Option<&str>) -> Value {
        let mut v = json!({"metadata": {"name": name, "annotations": {}}});
        if let Some(e) = exempt {
            v["metadata"]["annotations"][EXEMPT_ANNOTATION] = json!(e);
        }
        v
    }

    #[test]
    fn exempted_patches_need_no_acknowledgement() {
        let target = row("4.3.2", json!([]));
        let r = review(
            &[
                rp("rp-b", None),
                rp("rp-a", Some("4.3.2")),
                rp("rp-c", Some("4.2.5")),
            ],
            None,
            &target,
            &Acknowledgements::default(),
        );
        let names: Vec<&str> = r.modifications.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["rp-b", "rp-c"], "exempt only for the exact target");
        assert_eq!(pending(&r).0, ["rp-b", "rp-c"]);
        let acks = Acknowledgements {
            modifications: vec!["rp-b".into()],
            ..Default::default()
        };
        let r = review(&[rp("rp-b", None), rp("rp-c", None)], None, &target, &acks);
        assert_eq!(pending(&r).0, ["rp-c"]);
        let all = Acknowledgements {
            modifications: vec!["*".into()],
            ..Default::default()
        };
        let r = review(&[rp("rp-b", None)], None, &target, &all);
        assert!(pending(&r).0.is_empty());
    }

    #[test]
    fn only_changed_medium_and_high_impacts_need_acknowledgement() {
        let current = row(
            "4.2.5",
            json!([
                {"name": "logging", "version": "4.2.1", "impact": "High"},
                {"name": "monitoring", "version": "4.2.0", "impact": "Low"},
                {"name": "gitops", "version": "4.2.0", "impact": "Low"},
            ]),
        );
        let target = row(
            "4.3.2",
            json!([
                {"name": "logging", "version": "4.2.1", "impact": "High"},
                {"name": "monitoring", "version": "4.3.0", "impact": "Medium"},
                {"name": "gitops", "version": "4.3.0", "impact": "Low"},
                {"name": "mesh", "version": "4.3.0", "impact": "High"},
            ]),
        );
        let r = review(&[], Some(&current), &target, &Acknowledgements::default());
        let names: Vec<&str> = r.impacts.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["gitops", "mesh", "monitoring"],
            "unchanged logging is not listed"
        );
        assert_eq!(pending(&r).1, ["mesh", "monitoring"]);
        assert!(
            pending_message(&r)
                .unwrap()
                .contains("mesh new → 4.3.0 (High)")
        );
        let acks = Acknowledgements {
            impacts: vec!["mesh".into(), "monitoring".into()],
            ..Default::default()
        };
        let r = review(&[], Some(&current), &target, &acks);
        assert!(pending_message(&r).is_none());
    }
}
