//! The request's finalizer, and the note a deleted request leaves on its Cluster (README
//! "Deleting a request").

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::UpgradeRequest;
use crate::capi::Cluster;
use crate::error::Error;

/// The finalizer that keeps a deleted request until its running rollout has finished and the
/// state it leaves the cluster in is recorded.
pub const FINALIZER: &str = "upgrade.cpaas.io/rollout-guard";

/// Annotation on the CAPI Cluster: where the last UpgradeRequest left it, when that request
/// was deleted before it finished.
pub const LEFT_AT_ANNOTATION: &str = "upgrade.cpaas.io/left-by-deleted-request";

/// Adds [`FINALIZER`] (a JSON patch that fails if the object changed since it was read, so no
/// other finalizer is lost).
pub async fn add_finalizer(api: &Api<UpgradeRequest>, ur: &UpgradeRequest) -> Result<(), Error> {
    if ur.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let rv = ur.resource_version().unwrap_or_default();
    let ops = if ur.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    let patch: json_patch::Patch = serde_json::from_value(ops)?;
    api.patch(
        &ur.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(())
}

/// Removes [`FINALIZER`] (tested against the position it was read at).
pub async fn remove_finalizer(api: &Api<UpgradeRequest>, ur: &UpgradeRequest) -> Result<(), Error> {
    let Some(i) = ur.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let ops = json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(ops)?;
    match api
        .patch(
            &ur.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Records on the Cluster (annotation [`LEFT_AT_ANNOTATION`], server-side apply) where a
/// deleted request left it.
pub async fn record_left_at(client: &Client, cluster: &Cluster, note: &str) -> Result<(), Error> {
    super::annotate_cluster(
        client,
        crate::FIELD_MANAGER,
        cluster,
        LEFT_AT_ANNOTATION,
        note,
    )
    .await
}
