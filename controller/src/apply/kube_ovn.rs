//! A KubeOvn step's writes (DOMAIN.md §3 "Kube-OVN"): the CAPI Cluster annotation
//! `cpaas.io/kube-ovn-version=<row chart>`, by server-side apply, after which the provider
//! moves the workload cluster's `cni-kube-ovn` AppRelease to that chart. A legacy DCS
//! (≤ v1.0.21) or HCS (≤ v1.0.3) provider keeps the AppRelease's source, so for charts below
//! v4.4 the existing `/spec/source/charts/0/targetRevision` is also JSON-patched on the
//! workload cluster (a `test` of the chart name first, so nothing else is ever replaced).

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::info;

use super::Applied;
use crate::api::{UpgradeRequest, UpgradeRequestStatus};
use crate::capi::{self, Cluster};
use crate::decide::kube_ovn::{
    RELEASE_NAME, VERSION_ANNOTATION, installed_provider, needs_revision_patch,
};
use crate::error::{Error, Stall, StallReason};
use crate::observe::Observed;
use crate::observe::inputs::Sources;
use crate::observe::network::app_release_resource;

/// The field manager of the annotation. Not the controller's main one: the note a deleted
/// request leaves on the Cluster ([`super::finalizer::record_left_at`]) is applied under that
/// one with only its own annotation, and server-side apply would drop every other field of
/// the same manager, this annotation included.
pub const FIELD_MANAGER: &str = "upgrade.cpaas.io/kube-ovn";

/// Sets the Cluster's Kube-OVN chart annotation to `chart`.
pub async fn set_chart(client: &Client, cluster: &Cluster, chart: &str) -> Result<(), Error> {
    info!(cluster = %capi::name(&cluster.metadata), chart, "setting the Cluster's Kube-OVN chart");
    super::annotate_cluster(client, FIELD_MANAGER, cluster, VERSION_ANNOTATION, chart).await
}

/// KubeOvn step `index`: the annotation, and for a legacy provider the revision patch.
pub async fn start(
    sources: &Sources,
    ur: &UpgradeRequest,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    index: usize,
) -> Result<Applied, Error> {
    let step = &status.plan[index];
    let chart = step.kube_ovn_chart.as_deref().unwrap_or_default();
    let (Some(cluster), Some(kcp)) = (&obs.cluster, &obs.kcp) else {
        return Err(Stall::new(
            StallReason::ClusterNotFound,
            "the Cluster or its KubeadmControlPlane disappeared while the Kube-OVN step started",
        )
        .into());
    };
    let facts = kcp
        .infrastructure_ref()
        .and_then(|r| providers::for_template_kind(&r.kind).ok())
        .and_then(|p| p.platform_facts());
    // The hop's preflight (ProviderReady) read the provider's AppRelease in this same pass.
    let patch = match &facts {
        Some(f) if f.legacy_needs_revision_patch => {
            let releases = obs
                .preflight
                .as_ref()
                .and_then(|p| p.provider_releases.as_ref().ok());
            let Some(installed) = releases.and_then(|r| installed_provider(r, f)) else {
                return Err(Stall::new(
                    StallReason::Api("ProviderVersionUnknown"),
                    "the provider's AppRelease was not read with this step's preflight, so whether the Kube-OVN AppRelease also needs its revision patched is unknown; the next reconcile reads it",
                )
                .into());
            };
            needs_revision_patch(f, &installed, chart)
        }
        _ => false,
    };
    set_chart(&sources.client, cluster, chart).await?;
    if patch {
        let ns = ur.namespace().unwrap_or_default();
        revision_patch(sources, &ns, &ur.spec.cluster_name, chart).await?;
    }
    Ok(Applied {
        wrote: true,
        handed_off: Vec::new(),
    })
}

/// The legacy flow's JSON patch of `cni-kube-ovn` on the workload cluster: the existing first
/// chart's `targetRevision`, after testing that chart is the legacy one.
async fn revision_patch(
    sources: &Sources,
    ns: &str,
    cluster: &str,
    chart: &str,
) -> Result<(), Error> {
    let workload = super::workload_client(sources, ns, cluster).await?;
    let api = Api::<DynamicObject>::namespaced_with(
        workload,
        &sources.kube_ovn_namespace,
        &app_release_resource(),
    );
    let ops = json!([
        {"op": "test", "path": "/spec/source/charts/0/name", "value": crate::decide::kube_ovn::LEGACY_CHART},
        {"op": "replace", "path": "/spec/source/charts/0/targetRevision", "value": chart},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(ops)?;
    info!(
        cluster,
        chart, "legacy provider: patching the Kube-OVN AppRelease's targetRevision"
    );
    api.patch(
        RELEASE_NAME,
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(())
}
