//! What the platform's own components say about a provider (DOMAIN.md §3 "Kube-OVN",
//! "Provider version"): where a cluster records that its network is Kube-OVN, which chart
//! installs the provider on the management cluster, and from which provider release the
//! provider reconciles the Kube-OVN AppRelease's complete source.

use serde_json::Value;

/// The value of `networkType` (or the vSphere annotation) for a Kube-OVN cluster.
pub const KUBE_OVN: &str = "kube-ovn";
/// vSphere: the CAPI Cluster annotation naming the cluster's network.
pub const NETWORK_TYPE_ANNOTATION: &str = "cpaas.io/network-type";

/// Where a provider's clusters say which network they use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkTypeSource {
    /// `spec.networkType` of the infrastructure cluster (the CAPI Cluster's
    /// `spec.infrastructureRef`), which must be of this kind.
    InfraCluster { kind: &'static str },
    /// Annotation [`NETWORK_TYPE_ANNOTATION`] on the CAPI Cluster.
    ClusterAnnotation,
    /// The provider has no Kube-OVN integration (CAPD, e2e only).
    None,
}

/// The provider's Kube-OVN facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformFacts {
    pub network: NetworkTypeSource,
    /// How the chart of the provider's AppRelease on the management cluster ends
    /// (`chart-cluster-api-provider-dcs`).
    pub provider_chart: &'static str,
    /// The first provider release that reconciles the Kube-OVN AppRelease's complete source
    /// from the Cluster annotation (DCS v1.0.22, HCS v1.0.4, vSphere v1.0.16, bare metal
    /// v0.0.1). A target chart ≥ v4.4 needs the provider at or above it.
    pub full_source_from: &'static str,
    /// Releases below [`Self::full_source_from`] keep the AppRelease's source, so besides the
    /// annotation `/spec/source/charts/0/targetRevision` must be patched (DCS, HCS; vSphere's
    /// legacy releases need only the annotation).
    pub legacy_needs_revision_patch: bool,
}

/// Whether the cluster's network is Kube-OVN, from `source`: `cluster` is the CAPI Cluster
/// and `infra` its infrastructure cluster (when `source` reads one).
pub fn uses_kube_ovn(source: NetworkTypeSource, cluster: &Value, infra: Option<&Value>) -> bool {
    match source {
        NetworkTypeSource::InfraCluster { .. } => {
            infra.and_then(|i| i["spec"]["networkType"].as_str()) == Some(KUBE_OVN)
        }
        NetworkTypeSource::ClusterAnnotation => {
            cluster["metadata"]["annotations"][NETWORK_TYPE_ANNOTATION].as_str() == Some(KUBE_OVN)
        }
        NetworkTypeSource::None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::for_template_kind;
    use serde_json::json;

    #[test]
    fn each_provider_names_where_its_network_type_lives() {
        let facts = |kind: &str| for_template_kind(kind).unwrap().platform_facts();
        assert_eq!(
            facts("DCSMachineTemplate").unwrap().network,
            NetworkTypeSource::InfraCluster { kind: "DCSCluster" }
        );
        assert_eq!(
            facts("HCSMachineTemplate").unwrap().network,
            NetworkTypeSource::InfraCluster { kind: "HCSCluster" }
        );
        assert_eq!(
            facts("BaremetalMachineTemplate").unwrap().network,
            NetworkTypeSource::InfraCluster {
                kind: "BaremetalCluster"
            }
        );
        assert_eq!(
            facts("VSphereMachineTemplate").unwrap().network,
            NetworkTypeSource::ClusterAnnotation
        );
        assert_eq!(facts("DevMachineTemplate"), None);
        let thresholds: Vec<_> = [
            "DCSMachineTemplate",
            "HCSMachineTemplate",
            "VSphereMachineTemplate",
            "BaremetalMachineTemplate",
        ]
        .iter()
        .map(|k| {
            let f = facts(k).unwrap();
            (
                f.provider_chart,
                f.full_source_from,
                f.legacy_needs_revision_patch,
            )
        })
        .collect();
        assert_eq!(
            thresholds,
            vec![
                ("chart-cluster-api-provider-dcs", "v1.0.22", true),
                ("chart-cluster-api-provider-hcs", "v1.0.4", true),
                ("chart-cluster-api-provider-vsphere", "v1.0.16", false),
                ("chart-cluster-api-provider-baremetal", "v0.0.1", false),
            ]
        );
    }

    #[test]
    fn kube_ovn_is_read_where_the_provider_keeps_it() {
        let dcs = NetworkTypeSource::InfraCluster { kind: "DCSCluster" };
        let cluster = json!({"metadata": {"name": "c"}});
        let infra = json!({"kind": "DCSCluster", "spec": {"networkType": "kube-ovn"}});
        assert!(uses_kube_ovn(dcs, &cluster, Some(&infra)));
        let calico = json!({"kind": "DCSCluster", "spec": {"networkType": "calico"}});
        assert!(!uses_kube_ovn(dcs, &cluster, Some(&calico)));
        assert!(!uses_kube_ovn(dcs, &cluster, None));
        let annotated = json!({"metadata": {"annotations": {"cpaas.io/network-type": "kube-ovn"}}});
        assert!(uses_kube_ovn(
            NetworkTypeSource::ClusterAnnotation,
            &annotated,
            None
        ));
        assert!(!uses_kube_ovn(
            NetworkTypeSource::ClusterAnnotation,
            &cluster,
            Some(&infra)
        ));
        assert!(!uses_kube_ovn(
            NetworkTypeSource::None,
            &annotated,
            Some(&infra)
        ));
    }
}
