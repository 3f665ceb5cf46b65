//! A KubeOvn step's write (DOMAIN.md §3 "Kube-OVN"): the CAPI Cluster annotation
//! `cpaas.io/kube-ovn-version=<row chart>`, by server-side apply. The provider then moves the
//! workload cluster's `cni-kube-ovn` AppRelease to that chart. Legacy providers that would
//! also need the AppRelease's `targetRevision` patched are refused before this (preflight
//! `ProviderReady`), so the AppRelease is never written here.

use kube::Client;
use tracing::info;

use crate::capi::{self, Cluster};
use crate::decide::kube_ovn::VERSION_ANNOTATION;
use crate::error::Error;

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
