//! Huawei DCS: `DCSMachineTemplate`, image in `spec.template.spec.vmTemplateName` (a VM template
//! registered in DCS under the exact name of the matrix row; DOMAIN.md §4).
//!
//! Slots: `spec.template.spec.ipHostPoolRef` (a LocalObjectReference, so always the template's
//! namespace) names a `DCSIpHostnamePool`, whose `spec.pool[]` entries (ip, hostname,
//! persistentDisk, ...) are the slots. The pool's status has no counters: in
//! alauda/immutable-infra-docs docs/shared/crds/providers/huawei-dcs/
//! infrastructure.cluster.x-k8s.io_dcsiphostnamepools.yaml its status only carries
//! `persistentDiskStatus[]`, which records disks (kept across machine replacement), not which
//! entry a machine holds. The holder is recorded on the machine: in
//! infrastructure.cluster.x-k8s.io_dcsmachines.yaml, `DCSMachine.status.networkConfig` is "the
//! Pool IP entry projected onto a DCSMachine" (`ip`, `hostname`, `machineName`, ...), and
//! `DCSMachine.spec.ipHostPoolRef` names the pool it draws from. So an entry is taken when a
//! DCSMachine in the namespace reports its IP in `status.networkConfig.ip`.
//!
//! Image: the platform's ConfigMaps labelled `cpaas.io/dcs-vm-template=<VM template name>` in
//! `cpaas-system` of the global cluster (docs/en/infrastructure/huawei-dcs.mdx, "VM Template and
//! ConfigMap": the label value must equal the VM template name in DCS). Such a ConfigMap says
//! the template was registered with the platform; it cannot prove the VM template exists in DCS.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::capacity::{PLATFORM_NAMESPACE, is_label_value, pool_ref};
use crate::{
    ImageKey, ImageLookup, NetworkTypeSource, PlatformFacts, Provider, ProviderError, SlotCount,
    SlotPoolRef,
};

#[derive(Debug, Default)]
pub struct Dcs;

/// Label on the platform's DCS image ConfigMaps whose value is the VM template name.
pub const DCS_VM_TEMPLATE_LABEL: &str = "cpaas.io/dcs-vm-template";

fn s(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

impl Provider for Dcs {
    fn name(&self) -> &'static str {
        "dcs"
    }
    fn template_kinds(&self) -> &'static [&'static str] {
        &["DCSMachineTemplate"]
    }
    fn image_key(&self) -> ImageKey {
        ImageKey::Dcs
    }
    /// DOMAIN.md §3 "Kube-OVN", "Provider version".
    fn platform_facts(&self) -> Option<PlatformFacts> {
        Some(PlatformFacts {
            network: NetworkTypeSource::InfraCluster { kind: "DCSCluster" },
            provider_chart: "chart-cluster-api-provider-dcs",
            full_source_from: "v1.0.22",
            legacy_needs_revision_patch: true,
        })
    }
    fn image_field(&self) -> Option<&'static str> {
        Some("vmTemplateName")
    }

    fn slot_pool_kind(&self) -> Option<&'static str> {
        Some("DCSIpHostnamePool")
    }

    fn slot_pool(&self, template: &Value) -> Option<SlotPoolRef> {
        let mut pool = pool_ref(
            template,
            &template["spec"]["template"]["spec"]["ipHostPoolRef"],
            "DCSIpHostnamePool",
        )?;
        // A LocalObjectReference: the pool is always in the template's namespace.
        pool.namespace = None;
        Some(pool)
    }

    fn slot_fields(&self) -> &'static [&'static str] {
        &["spec.pool", "spec.ipHostPoolRef", "status.networkConfig"]
    }
    fn slot_holder_kind(&self) -> Option<&'static str> {
        Some("DCSMachine")
    }

    /// An entry is held when any DCSMachine in the namespace reports its IP (or, for an entry
    /// without an IP, its hostname) in `status.networkConfig`: an address cannot serve two
    /// machines, whichever pool they name. A DCSMachine that names this pool but reports no
    /// address yet is about to take one of the free entries, so it is subtracted from them.
    fn free_slots(&self, pool: &Value, holders: &[Value]) -> Result<SlotCount, ProviderError> {
        let entries = pool["spec"]["pool"]
            .as_array()
            .ok_or_else(|| ProviderError::pool_shape(pool, "spec.pool is not a list"))?;
        let pool_name = pool["metadata"]["name"].as_str().unwrap_or("");
        let mut held_ips = BTreeSet::new();
        let mut held_hostnames = BTreeSet::new();
        let mut pending = Vec::new();
        for h in holders {
            let net = &h["status"]["networkConfig"];
            match (s(&net["ip"]), s(&net["hostname"])) {
                (None, None) => {
                    if h["spec"]["ipHostPoolRef"]["name"] == pool_name {
                        pending.push(h["metadata"]["name"].as_str().unwrap_or("?"));
                    }
                }
                (ip, hostname) => {
                    held_ips.extend(ip);
                    held_hostnames.extend(hostname);
                }
            }
        }
        let mut free = Vec::new();
        for entry in entries {
            let taken = match (s(&entry["ip"]), s(&entry["hostname"])) {
                (Some(ip), _) => held_ips.contains(ip),
                (None, Some(hostname)) => held_hostnames.contains(hostname),
                (None, None) => true, // an entry with neither cannot give a machine an address
            };
            if !taken {
                let label = match (s(&entry["ip"]), s(&entry["hostname"])) {
                    (Some(ip), Some(host)) => format!("{ip} ({host})"),
                    (Some(ip), None) => ip.to_string(),
                    (None, Some(host)) => host.to_string(),
                    (None, None) => unreachable!("such entries count as taken"),
                };
                free.push(label);
            }
        }
        let total = entries.len() as u32;
        let unclaimed = free.len() as u32;
        let free_count = unclaimed.saturating_sub(pending.len() as u32);
        let mut detail = if free.is_empty() {
            format!("all {total} entries are held by DCSMachines")
        } else {
            format!("not held by any DCSMachine: {}", free.join(", "))
        };
        if !pending.is_empty() {
            detail.push_str(&format!(
                "; {} being provisioned without an address yet ({}) will take {}",
                pending.len(),
                pending.join(", "),
                if pending.len() == 1 { "one" } else { "some" }
            ));
        }
        Ok(SlotCount {
            total,
            free: free_count,
            detail,
        })
    }

    /// The platform ConfigMap labelled with the VM template name. A name that cannot be a label
    /// value (longer than 63 characters, or with characters such as spaces or `/`) cannot have
    /// been registered that way, so no ConfigMap can confirm it: the operator has to.
    fn image_lookup(&self, image: &str) -> ImageLookup {
        if image.is_empty() || !is_label_value(image) {
            return ImageLookup::Unverifiable;
        }
        ImageLookup::ConfigMap {
            namespace: PLATFORM_NAMESPACE.to_string(),
            label_selector: format!("{DCS_VM_TEMPLATE_LABEL}={image}"),
            data_key: None,
            data_value: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_confirmed;
    use crate::testutil::yaml;
    use serde_json::json;

    fn holders() -> Vec<Value> {
        serde_yaml_ng::Deserializer::from_str(include_str!("fixtures/dcs-machines.yaml"))
            .map(|d| serde::Deserialize::deserialize(d).expect("fixture YAML"))
            .collect()
    }

    #[test]
    fn pool_of_a_template() {
        let tpl = yaml(include_str!("fixtures/dcs-machine-template.yaml"));
        assert_eq!(
            Dcs.slot_pool(&tpl),
            Some(SlotPoolRef {
                api_version: "infrastructure.cluster.x-k8s.io/v1beta1".into(),
                kind: "DCSIpHostnamePool".into(),
                name: "prod-a-cp-iphostpool".into(),
                namespace: None,
            })
        );
        let mut no_pool = tpl.clone();
        no_pool["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("ipHostPoolRef");
        assert_eq!(Dcs.slot_pool(&no_pool), None);
    }

    #[test]
    fn four_entries_three_held_one_free() {
        let pool = yaml(include_str!("fixtures/dcs-iphostnamepool.yaml"));
        let count = Dcs.free_slots(&pool, &holders()).unwrap();
        assert_eq!((count.total, count.free), (4, 1), "{count:?}");
        assert!(count.detail.contains("10.20.1.14"), "{}", count.detail);
        assert!(!count.detail.contains("10.20.1.11"), "{}", count.detail);
    }

    #[test]
    fn a_machine_still_provisioning_takes_a_free_entry() {
        let pool = yaml(include_str!("fixtures/dcs-iphostnamepool.yaml"));
        let mut hs = holders();
        hs.push(json!({
            "metadata": {"name": "prod-a-cp-new"},
            "spec": {"ipHostPoolRef": {"name": "prod-a-cp-iphostpool"}},
            "status": {},
        }));
        let count = Dcs.free_slots(&pool, &hs).unwrap();
        assert_eq!((count.total, count.free), (4, 0), "{count:?}");
        assert!(count.detail.contains("prod-a-cp-new"), "{}", count.detail);

        // One provisioning for another pool does not.
        hs.last_mut().unwrap()["spec"]["ipHostPoolRef"]["name"] = json!("other-pool");
        assert_eq!(Dcs.free_slots(&pool, &hs).unwrap().free, 1);
    }

    #[test]
    fn no_holders_all_free_and_a_bad_pool_is_an_error() {
        let pool = yaml(include_str!("fixtures/dcs-iphostnamepool.yaml"));
        let count = Dcs.free_slots(&pool, &[]).unwrap();
        assert_eq!((count.total, count.free), (4, 4));
        let err = Dcs
            .free_slots(
                &json!({"kind": "DCSIpHostnamePool", "metadata": {"name": "p"}, "spec": {}}),
                &[],
            )
            .unwrap_err();
        assert!(matches!(err, ProviderError::PoolShape { .. }), "{err}");
    }

    #[test]
    fn image_lookup_by_template_label() {
        let lookup = Dcs.image_lookup("MicroOS-5.5-v4.3.2");
        assert_eq!(
            lookup,
            ImageLookup::ConfigMap {
                namespace: "cpaas-system".into(),
                label_selector: "cpaas.io/dcs-vm-template=MicroOS-5.5-v4.3.2".into(),
                data_key: None,
                data_value: None,
            }
        );
        let cm = json!({"metadata": {"namespace": "cpaas-system", "name": "432-dcs-vm-template",
            "labels": {"cpaas.io/dcs-vm-template": "MicroOS-5.5-v4.3.2"}},
            "data": {"kubernetesVersion": "v1.34.5-3"}});
        assert!(image_confirmed(&lookup, &[cm]));
        // Names that cannot be label values cannot be looked up by label.
        assert_eq!(
            Dcs.image_lookup("ACP 4.3 template"),
            ImageLookup::Unverifiable
        );
        assert_eq!(Dcs.image_lookup(&"a".repeat(64)), ImageLookup::Unverifiable);
    }
}
