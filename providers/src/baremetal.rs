//! Bare metal (the platform's elemental-based provider, ≥ v0.0.1): `BaremetalMachineTemplate`
//! carries only `spec.template.spec.machineInventoryPoolRef`; the OS image of a machine is
//! resolved from its `Machine.spec.version` through the ConfigMap `elemental-image-catalog` in
//! `cpaas-system`, one key per Kubernetes version with the leading `v` (DOMAIN.md §4;
//! alauda/immutable-infra-docs docs/en/upgrade-cluster/bare-metal.mdx). So:
//!
//! - a Kubernetes-only hop needs no new template: the write keeps today's reference, and the
//!   hop's "image" is the version itself, the catalog key OSImagesStaged looks for;
//! - rollouts replace hosts delete-then-add (`maxSurge` 0 is mandatory on the control plane
//!   and every MachineDeployment), so the inventory pool needs no spare host: no slot count.

use serde_json::Value;

use crate::capacity::PLATFORM_NAMESPACE;
use crate::{ImageKey, ImageLookup, NetworkTypeSource, PlatformFacts, Provider};

#[derive(Debug, Default)]
pub struct Baremetal;

/// The ConfigMap that maps a Kubernetes version to the elemental base image.
pub const IMAGE_CATALOG: &str = "elemental-image-catalog";

impl Provider for Baremetal {
    fn name(&self) -> &'static str {
        "baremetal"
    }
    fn template_kinds(&self) -> &'static [&'static str] {
        &["BaremetalMachineTemplate"]
    }
    fn image_key(&self) -> ImageKey {
        ImageKey::KubernetesVersion
    }
    /// DOMAIN.md §3 "Kube-OVN", "Provider version".
    fn platform_facts(&self) -> Option<PlatformFacts> {
        Some(PlatformFacts {
            network: NetworkTypeSource::InfraCluster {
                kind: "BaremetalCluster",
            },
            provider_chart: "chart-cluster-api-provider-baremetal",
            full_source_from: "v0.0.1",
            legacy_needs_revision_patch: false,
        })
    }
    fn new_template_per_hop(&self) -> bool {
        false
    }
    fn surge_allowed(&self) -> bool {
        false
    }
    /// The template records no image; the version it runs is the Machine's.
    fn image_of(&self, _template: &Value) -> Option<String> {
        None
    }
    fn image_lookup(&self, image: &str) -> ImageLookup {
        ImageLookup::ConfigMapKey {
            namespace: PLATFORM_NAMESPACE.into(),
            name: IMAGE_CATALOG.into(),
            key: image.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::yaml;
    use crate::{for_template_kind, image_confirmed};

    #[test]
    fn a_kubernetes_only_hop_keeps_the_template_and_looks_the_version_up_in_the_catalog() {
        let template = yaml(include_str!("fixtures/baremetal-machine-template.yaml"));
        let p = for_template_kind("BaremetalMachineTemplate").unwrap();
        assert_eq!(p.name(), "baremetal");
        assert!(!p.new_template_per_hop());
        assert!(!p.surge_allowed());
        assert_eq!(p.image_key(), ImageKey::KubernetesVersion);
        assert_eq!(p.image_of(&template), None);
        assert!(
            p.slot_pool(&template).is_none(),
            "delete-then-add needs no spare host"
        );

        let catalog = yaml(include_str!("fixtures/elemental-image-catalog.yaml"));
        let staged = p.image_lookup("v1.34.5-3");
        assert!(image_confirmed(&staged, std::slice::from_ref(&catalog)));
        // A version without its key: not staged (the BaremetalMachine would fail with
        // ImageResolved=False, ImageCatalogMiss).
        assert!(!image_confirmed(
            &p.image_lookup("v1.35.1-1"),
            std::slice::from_ref(&catalog)
        ));
        // The key in a ConfigMap of another name or namespace does not count.
        let mut elsewhere = catalog.clone();
        elsewhere["metadata"]["namespace"] = "team-a".into();
        assert!(!image_confirmed(&staged, &[elsewhere]));
        let mut renamed = catalog;
        renamed["metadata"]["name"] = "my-catalog".into();
        assert!(!image_confirmed(&staged, &[renamed]));
    }
}
