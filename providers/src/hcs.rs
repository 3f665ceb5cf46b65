//! Huawei Cloud Stack: `HCSMachineTemplate`, image in `spec.template.spec.imageName`
//! (DOMAIN.md §4). A clone also drops `serverId`, which names one ECS instance (§3).
//!
//! Slots: `spec.template.spec.configPoolRef` (an ObjectReference) names an
//! `HCSMachineConfigPool` whose `spec.configs[]` (hostname, networks[].ipAddress, ...) are the
//! slots; its status counts them: `status.totalCount`, `status.availableCount`, and
//! `status.usedConfigs[]` (`hostname`, `machineRef`) — alauda/immutable-infra-docs
//! docs/shared/crds/providers/huawei-cloud-stack/infrastructure.cluster.x-k8s.io_hcsmachineconfigpools.yaml.
//!
//! Image: the platform's ConfigMaps labelled `cpaas.io/os-release`, whose data
//! `osImageVersion` names the image (DOMAIN.md §4). The public docs do not show these
//! ConfigMaps; they are looked for in `cpaas-system`, where the platform keeps every provider
//! object and the DCS image ConfigMaps (docs/en/infrastructure/huawei-dcs.mdx).

use serde_json::Value;

use crate::capacity::{PLATFORM_NAMESPACE, pool_ref};
use crate::{
    ImageKey, ImageLookup, NetworkTypeSource, PlatformFacts, Provider, ProviderError, SlotCount,
    SlotPoolRef,
};

#[derive(Debug, Default)]
pub struct Hcs;

/// Label on the platform's HCS OS image ConfigMaps.
pub const HCS_OS_RELEASE_LABEL: &str = "cpaas.io/os-release";
/// Data key of those ConfigMaps that names the image.
pub const HCS_OS_IMAGE_KEY: &str = "osImageVersion";

impl Provider for Hcs {
    fn name(&self) -> &'static str {
        "hcs"
    }
    fn template_kinds(&self) -> &'static [&'static str] {
        &["HCSMachineTemplate"]
    }
    fn image_key(&self) -> ImageKey {
        ImageKey::Hcs
    }
    /// DOMAIN.md §3 "Kube-OVN", "Provider version".
    fn platform_facts(&self) -> Option<PlatformFacts> {
        Some(PlatformFacts {
            network: NetworkTypeSource::InfraCluster { kind: "HCSCluster" },
            provider_chart: "chart-cluster-api-provider-hcs",
            full_source_from: "v1.0.4",
            legacy_needs_revision_patch: true,
        })
    }
    fn image_field(&self) -> Option<&'static str> {
        Some("imageName")
    }
    fn per_machine_fields(&self) -> &'static [&'static str] {
        &["providerID", "serverId"]
    }

    fn slot_fields(&self) -> &'static [&'static str] {
        &[
            "spec.configs",
            "status.totalCount",
            "status.availableCount",
            "status.usedConfigs",
        ]
    }
    fn slot_pool_kind(&self) -> Option<&'static str> {
        Some("HCSMachineConfigPool")
    }

    fn slot_pool(&self, template: &Value) -> Option<SlotPoolRef> {
        pool_ref(
            template,
            &template["spec"]["template"]["spec"]["configPoolRef"],
            "HCSMachineConfigPool",
        )
    }

    /// The pool controller's own counters. A pool whose status has no counters yet has not
    /// been reconciled, and nothing can be said about it.
    fn free_slots(&self, pool: &Value, _holders: &[Value]) -> Result<SlotCount, ProviderError> {
        let status = &pool["status"];
        let count = |key: &str| {
            status[key]
                .as_i64()
                .map(|n| n.clamp(0, u32::MAX as i64) as u32)
                .ok_or_else(|| {
                    ProviderError::pool_shape(
                        pool,
                        format!("status.{key} is not reported (the pool has not been reconciled)"),
                    )
                })
        };
        let total = count("totalCount")?;
        let free = count("availableCount")?;
        let used: Vec<&str> = status["usedConfigs"]
            .as_array()
            .map(|u| u.iter().filter_map(|c| c["hostname"].as_str()).collect())
            .unwrap_or_default();
        let unused: Vec<&str> = pool["spec"]["configs"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["hostname"].as_str())
                    .filter(|h| !used.contains(h))
                    .collect()
            })
            .unwrap_or_default();
        let detail = if free == 0 {
            format!("all {total} configurations are claimed by HCSMachines")
        } else if unused.is_empty() {
            format!("{free} of {total} configurations available")
        } else {
            format!("not claimed: {}", unused.join(", "))
        };
        Ok(SlotCount {
            total,
            free,
            detail,
        })
    }

    fn image_lookup(&self, image: &str) -> ImageLookup {
        if image.is_empty() {
            return ImageLookup::Unverifiable;
        }
        ImageLookup::ConfigMap {
            namespace: PLATFORM_NAMESPACE.to_string(),
            label_selector: HCS_OS_RELEASE_LABEL.to_string(),
            data_key: Some(HCS_OS_IMAGE_KEY.to_string()),
            data_value: Some(image.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_confirmed;
    use crate::testutil::yaml;
    use serde_json::json;

    #[test]
    fn pool_of_a_template() {
        let tpl = yaml(include_str!("fixtures/hcs-machine-template.yaml"));
        assert_eq!(
            Hcs.slot_pool(&tpl),
            Some(SlotPoolRef {
                api_version: "infrastructure.cluster.x-k8s.io/v1beta1".into(),
                kind: "HCSMachineConfigPool".into(),
                name: "prod-a-cp-pool".into(),
                namespace: None,
            })
        );
        assert_eq!(Hcs.slot_holder_kind(), None);
    }

    #[test]
    fn counts_come_from_the_pool_status() {
        let pool = yaml(include_str!("fixtures/hcs-machineconfigpool.yaml"));
        let count = Hcs.free_slots(&pool, &[]).unwrap();
        assert_eq!((count.total, count.free), (4, 1), "{count:?}");
        assert_eq!(count.detail, "not claimed: prod-a-cp-4");

        let mut unreconciled = pool.clone();
        unreconciled["status"] = json!({});
        let err = Hcs.free_slots(&unreconciled, &[]).unwrap_err();
        assert!(err.to_string().contains("status.totalCount"), "{err}");
    }

    #[test]
    fn image_lookup_by_os_release_configmap() {
        let lookup = Hcs.image_lookup("microos-4.3.2");
        let cm = |v: &str| {
            json!({"metadata": {"namespace": "cpaas-system", "labels": {"cpaas.io/os-release": "v4.3.2"}},
                   "data": {"osImageVersion": v, "supportedACPVersions": "v4.3.2"}})
        };
        assert!(image_confirmed(
            &lookup,
            &[cm("microos-4.3.1"), cm("microos-4.3.2")]
        ));
        assert!(!image_confirmed(&lookup, &[cm("microos-4.3.1")]));
    }
}
