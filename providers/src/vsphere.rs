//! VMware vSphere: `VSphereMachineTemplate`, image in `spec.template.spec.template` (the VM
//! template to clone; DOMAIN.md §4). vSphere's webhook rejects edits of a template's spec, so
//! a hop always creates a new template (§3).
//!
//! Slots: `spec.template.spec.machineConfigPoolRef` (an ObjectReference) names a
//! `VSphereMachineConfigPool`; `spec.configs[]` (hostname, network, persistentDisks) are the
//! slots and `status.configStatuses[]` (`hostname`, `state` one of `Available` / `InUse` /
//! `Released`, `machineRef`) track them — alauda/immutable-infra-docs
//! docs/shared/crds/providers/vmware-vsphere/infrastructure.cluster.x-k8s.io_vspheremachineconfigpools.yaml.
//! A Released slot waits `spec.releaseDelayHours` before it is Available to anyone, but the
//! pool's consumer (the KubeadmControlPlane or MachineDeployment bound in
//! `status.consumerRef`, which is the one rolling out) reuses it first (DOMAIN.md §4), so for a
//! rollout it counts as free.
//!
//! Image: the VM template lives only in vCenter; nothing on the management cluster records
//! it, so the operator confirms the name.

use serde_json::Value;

use crate::capacity::pool_ref;
use crate::{
    ImageKey, NetworkTypeSource, PlatformFacts, Provider, ProviderError, SlotCount, SlotPoolRef,
};

#[derive(Debug, Default)]
pub struct Vsphere;

impl Provider for Vsphere {
    fn name(&self) -> &'static str {
        "vsphere"
    }
    fn template_kinds(&self) -> &'static [&'static str] {
        &["VSphereMachineTemplate"]
    }
    fn image_key(&self) -> ImageKey {
        ImageKey::Vsphere
    }
    /// DOMAIN.md §3 "Kube-OVN", "Provider version".
    fn platform_facts(&self) -> Option<PlatformFacts> {
        Some(PlatformFacts {
            network: NetworkTypeSource::ClusterAnnotation,
            provider_chart: "chart-cluster-api-provider-vsphere",
            full_source_from: "v1.0.16",
            legacy_needs_revision_patch: false,
        })
    }
    fn image_field(&self) -> Option<&'static str> {
        Some("template")
    }

    fn slot_fields(&self) -> &'static [&'static str] {
        &["spec.configs", "status.configStatuses"]
    }
    fn slot_pool_kind(&self) -> Option<&'static str> {
        Some("VSphereMachineConfigPool")
    }

    fn slot_pool(&self, template: &Value) -> Option<SlotPoolRef> {
        pool_ref(
            template,
            &template["spec"]["template"]["spec"]["machineConfigPoolRef"],
            "VSphereMachineConfigPool",
        )
    }

    /// Slots of the spec, by the state the pool controller tracks for them. A slot the status
    /// does not track yet is not counted as free (the controller has not taken it into the
    /// pool); a pool with slots but no tracked state at all has not been reconciled.
    fn free_slots(&self, pool: &Value, _holders: &[Value]) -> Result<SlotCount, ProviderError> {
        let hostnames: Vec<&str> = pool["spec"]["configs"]
            .as_array()
            .ok_or_else(|| ProviderError::pool_shape(pool, "spec.configs is not a list"))?
            .iter()
            .filter_map(|c| c["hostname"].as_str())
            .collect();
        let statuses = pool["status"]["configStatuses"].as_array();
        let statuses = match statuses {
            Some(s) => s.as_slice(),
            None if hostnames.is_empty() => &[],
            None => {
                return Err(ProviderError::pool_shape(
                    pool,
                    "status.configStatuses is not reported (the pool has not been reconciled)",
                ));
            }
        };
        let state_of = |host: &str| {
            statuses
                .iter()
                .find(|s| s["hostname"] == host)
                .and_then(|s| s["state"].as_str())
        };
        let mut available = Vec::new();
        let mut released = Vec::new();
        let mut untracked = Vec::new();
        for host in &hostnames {
            match state_of(host) {
                Some("Available") => available.push(*host),
                Some("Released") => released.push(*host),
                Some(_) => {}
                None => untracked.push(*host),
            }
        }
        let total = hostnames.len() as u32;
        let free = (available.len() + released.len()) as u32;
        let mut parts = Vec::new();
        if !available.is_empty() {
            parts.push(format!("Available: {}", available.join(", ")));
        }
        if !released.is_empty() {
            parts.push(format!(
                "Released (reused first by the pool's own consumer): {}",
                released.join(", ")
            ));
        }
        if parts.is_empty() {
            parts.push(format!("all {total} slots are InUse"));
        }
        if !untracked.is_empty() {
            parts.push(format!(
                "not tracked in status yet: {}",
                untracked.join(", ")
            ));
        }
        Ok(SlotCount {
            total,
            free,
            detail: parts.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::yaml;
    use crate::{ImageLookup, image_confirmed};
    use serde_json::json;

    #[test]
    fn pool_of_a_template_keeps_the_given_namespace() {
        let tpl = yaml(include_str!("fixtures/vsphere-machine-template.yaml"));
        assert_eq!(
            Vsphere.slot_pool(&tpl),
            Some(SlotPoolRef {
                api_version: "infrastructure.cluster.x-k8s.io/v1beta1".into(),
                kind: "VSphereMachineConfigPool".into(),
                name: "prod-a-cp-pool".into(),
                namespace: Some("cpaas-system".into()),
            })
        );
    }

    #[test]
    fn available_and_released_slots_are_free() {
        let pool = yaml(include_str!("fixtures/vsphere-machineconfigpool.yaml"));
        let count = Vsphere.free_slots(&pool, &[]).unwrap();
        assert_eq!((count.total, count.free), (5, 2), "{count:?}");
        assert!(
            count.detail.contains("Available: prod-a-cp-4"),
            "{}",
            count.detail
        );
        assert!(
            count
                .detail
                .contains("Released (reused first by the pool's own consumer): prod-a-cp-5"),
            "{}",
            count.detail
        );

        let mut unreconciled = pool.clone();
        unreconciled["status"] = json!({});
        assert!(Vsphere.free_slots(&unreconciled, &[]).is_err());

        // A slot just added to the spec is not free until the controller tracks it.
        let mut grown = pool.clone();
        grown["spec"]["configs"]
            .as_array_mut()
            .unwrap()
            .push(json!({"hostname": "prod-a-cp-6"}));
        let count = Vsphere.free_slots(&grown, &[]).unwrap();
        assert_eq!((count.total, count.free), (6, 2));
        assert!(
            count
                .detail
                .contains("not tracked in status yet: prod-a-cp-6")
        );
    }

    #[test]
    fn images_cannot_be_verified() {
        let lookup = Vsphere.image_lookup("acp-4.3.2-ova");
        assert_eq!(lookup, ImageLookup::Unverifiable);
        assert!(!image_confirmed(&lookup, &[]));
    }
}
