//! The cluster's network (reads only): whether it is Kube-OVN, from where the provider keeps
//! it (DOMAIN.md §3: the infrastructure cluster's `spec.networkType`, or vSphere's Cluster
//! annotation), and, while a KubeOvn step is next, the workload cluster's `cni-kube-ovn`
//! AppRelease. The provider's AppRelease on the management cluster is read for the
//! `ProviderReady` preflight.

use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::Observed;
use super::inputs::{Sources, describe_error, get_opt, resolve_ref};
use crate::api::{PlanStepKind, StepState, UpgradeRequestStatus};
use crate::capi::{self, INFRASTRUCTURE_GROUP};
use crate::decide::kube_ovn::{Network, RELEASE_NAME};
use crate::error::Error;
use providers::NetworkTypeSource;

/// The platform's AppRelease (`operator.alauda.io/v1alpha1`, namespaced).
pub fn app_release_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("operator.alauda.io", "v1alpha1", "AppRelease"),
        "appreleases",
    )
}

/// Whether the cluster's network is Kube-OVN. Only the provider's own infrastructure-cluster
/// kind, in the Cluster's namespace, is read (DESIGN.md "Security model"); anything else, or
/// an infrastructure cluster that does not exist, is [`Network::Unknown`] with the reason.
pub async fn network(client: &Client, obs: &Observed) -> Result<Network, Error> {
    let (Some(cluster), Some(kcp)) = (&obs.cluster, &obs.kcp) else {
        return Ok(Network::Other);
    };
    let Some(facts) = kcp
        .infrastructure_ref()
        .and_then(|r| providers::for_template_kind(&r.kind).ok())
        .and_then(|p| p.platform_facts())
    else {
        return Ok(Network::Other);
    };
    let cluster_json = serde_json::to_value(cluster)?;
    let kind = match facts.network {
        NetworkTypeSource::None => return Ok(Network::Other),
        NetworkTypeSource::ClusterAnnotation => {
            return Ok(
                if providers::uses_kube_ovn(facts.network, &cluster_json, None) {
                    Network::KubeOvn
                } else {
                    Network::Other
                },
            );
        }
        NetworkTypeSource::InfraCluster { kind } => kind,
    };
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    let name = capi::name(&cluster.metadata);
    let Some(reference) = cluster
        .spec
        .infrastructure_ref
        .as_ref()
        .filter(|r| r.is_set())
    else {
        return Ok(Network::Unknown(format!(
            "Cluster {name} has no spec.infrastructureRef, so whether its network is Kube-OVN ({kind} spec.networkType) cannot be told"
        )));
    };
    let other_ns = reference
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty() && *n != ns);
    if reference.kind != kind
        || reference.group() != INFRASTRUCTURE_GROUP
        || reference.name.is_empty()
        || other_ns.is_some()
    {
        return Ok(Network::Unknown(format!(
            "Cluster {name} spec.infrastructureRef {reference} is refused: this controller reads only a {kind} of group {INFRASTRUCTURE_GROUP} in the Cluster's own namespace, to tell whether the network is Kube-OVN"
        )));
    }
    let Some(ar) = resolve_ref(client, reference).await? else {
        return Ok(Network::Unknown(format!(
            "the API server serves no {kind} (Cluster {name} spec.infrastructureRef)"
        )));
    };
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar);
    let Some(infra) = get_opt(&api, &reference.name).await? else {
        return Ok(Network::Unknown(format!(
            "{kind} {ns}/{} (Cluster {name} spec.infrastructureRef) does not exist",
            reference.name
        )));
    };
    Ok(
        if providers::uses_kube_ovn(facts.network, &cluster_json, Some(&infra)) {
            Network::KubeOvn
        } else {
            Network::Other
        },
    )
}

/// [`network`] from objects given as files (the `plan` preview): the Cluster, and its
/// infrastructure cluster when among `docs`. Without a Cluster the network is not known to be
/// Kube-OVN.
pub fn from_objects(obs: &Observed, docs: &[Value]) -> Network {
    let (Some(cluster), Some(kcp)) = (&obs.cluster, &obs.kcp) else {
        return Network::Other;
    };
    let Some(facts) = kcp
        .infrastructure_ref()
        .and_then(|r| providers::for_template_kind(&r.kind).ok())
        .and_then(|p| p.platform_facts())
    else {
        return Network::Other;
    };
    let cluster_json = serde_json::to_value(cluster).unwrap_or_default();
    let infra = match facts.network {
        NetworkTypeSource::InfraCluster { kind } => {
            let name = cluster
                .spec
                .infrastructure_ref
                .as_ref()
                .map(|r| r.name.as_str());
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"].as_str() == name)
        }
        _ => None,
    };
    if providers::uses_kube_ovn(facts.network, &cluster_json, infra) {
        Network::KubeOvn
    } else {
        Network::Other
    }
}

/// Whether the next unfinished step is a KubeOvn step (then its AppRelease is read).
pub fn kube_ovn_step_next(status: &UpgradeRequestStatus) -> bool {
    status
        .plan
        .iter()
        .find(|s| s.state != StepState::Succeeded)
        .is_some_and(|s| s.kind == PlanStepKind::KubeOvn)
}

impl Sources {
    /// The workload cluster's `cni-kube-ovn` AppRelease, through its kubeconfig Secret.
    pub async fn kube_ovn_release(&self, ns: &str, cluster: &str) -> Result<Option<Value>, String> {
        let workload = self
            .workloads
            .client(&self.client, ns, cluster)
            .await
            .map_err(|u| format!("{}: {}", u.reason, u.message))?;
        let api = Api::<DynamicObject>::namespaced_with(
            workload,
            &self.kube_ovn_namespace,
            &app_release_resource(),
        );
        get_opt(&api, RELEASE_NAME).await.map_err(|e| match e {
            Error::Kube(k) => describe_error(&k),
            other => other.to_string(),
        })
    }

    /// The management cluster's AppReleases in the platform namespace (the cvsh namespace),
    /// among which the provider's is found by its chart name.
    pub async fn provider_releases(&self) -> Result<Vec<Value>, String> {
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &self.cvsh.namespace,
            &app_release_resource(),
        );
        match api.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .map(|o| serde_json::to_value(o).map_err(|e| e.to_string()))
                .collect(),
            Err(e) => Err(format!(
                "listing AppReleases in {}: {}",
                self.cvsh.namespace,
                describe_error(&e)
            )),
        }
    }
}
