//! Apply: every write this controller makes to objects other than its own status — the hop's
//! template clones and the server-side-apply writes to KubeadmControlPlane and
//! MachineDeployments (DOMAIN.md §3), the one write to the cluster's ClusterVersionShadow
//! (DOMAIN.md §2), the request's finalizer, and the note left on the Cluster when a request is
//! deleted.

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::info;

use crate::FIELD_MANAGER;
use crate::api::{PlanStepKind, UpgradeRequest, UpgradeRequestStatus};
use crate::capi;
use crate::decide::{Observed, Stall};
use crate::error::Error;
use crate::observe::{get_opt, resolve_ref};
use crate::platform::CvshConfig;

/// The finalizer that keeps a deleted request until its running rollout has finished and the
/// state it leaves the cluster in is recorded (README "Deleting a request").
pub const FINALIZER: &str = "upgrade.cpaas.io/rollout-guard";

/// Annotation on the CAPI Cluster: where the last UpgradeRequest left it, when that request
/// was deleted before it finished.
pub const LEFT_AT_ANNOTATION: &str = "upgrade.cpaas.io/left-by-deleted-request";

/// The template `source_ref` (an `infrastructure` or `bootstrap` template reference) points at:
/// its API resource, an API for its namespace, and the object; a person must fix a reference
/// that resolves to nothing.
async fn template_source(
    client: &Client,
    ns: &str,
    source_ref: &Value,
    what: &str,
) -> Result<Result<(ApiResource, Api<DynamicObject>, Value), Stall>, Error> {
    let Some(ar) = resolve_ref(client, source_ref).await? else {
        return Ok(Err(Stall {
            reason: "TemplateNotFound".into(),
            message: format!("invalid {what} template reference {source_ref}"),
        }));
    };
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    let source_name = source_ref["name"].as_str().unwrap_or("");
    let Some(source) = get_opt(&api, source_name).await? else {
        return Ok(Err(Stall {
            reason: "TemplateNotFound".into(),
            message: format!("{} {ns}/{source_name} does not exist", ar.kind),
        }));
    };
    Ok(Ok((ar, api, source)))
}

/// Gets or creates the hop's clone of the template `source_ref` points at. A clone that exists
/// with another image is a conflict a person must resolve.
async fn ensure_template_clone(
    client: &Client,
    ns: &str,
    source_ref: &Value,
    version: &str,
    image: &str,
    owner: &Value,
    v1beta2_holder: bool,
) -> Result<Result<Value, Stall>, Error> {
    let (ar, api, source) = match template_source(client, ns, source_ref, "infrastructure").await? {
        Ok(found) => found,
        Err(s) => return Ok(Err(s)),
    };
    let provider = match providers::for_template_kind(&ar.kind) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Err(Stall {
                reason: "UnsupportedProvider".into(),
                message: e.to_string(),
            }));
        }
    };
    // A source that already is this hop's clone (a retried step) is reused as is.
    if source["metadata"]["annotations"][providers::KUBERNETES_VERSION_ANNOTATION] == version
        && provider.image_of(&source).as_deref() == Some(image)
    {
        return Ok(Ok(capi::reference_to(&source, v1beta2_holder)));
    }
    let clone = match providers::clone_template(
        provider,
        &source,
        version,
        image,
        capi::owner_reference(owner),
    ) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Err(Stall {
                reason: "TemplateInvalid".into(),
                message: e.to_string(),
            }));
        }
    };
    let name = capi::name(&clone).to_string();
    let existing = match get_opt(&api, &name).await? {
        Some(existing) => existing,
        None => {
            let obj: DynamicObject = serde_json::from_value(clone)?;
            info!(template = %name, kind = %ar.kind, "creating machine template for hop");
            match api.create(&PostParams::default(), &obj).await {
                Ok(o) => serde_json::to_value(o)?,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    get_opt(&api, &name).await?.unwrap_or_default()
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if provider.image_of(&existing).as_deref() != Some(image) {
        return Ok(Err(Stall {
            reason: "TemplateConflict".into(),
            message: format!(
                "{} {ns}/{name} exists but uses image {:?}, not {image}; delete it or fix the matrix",
                ar.kind,
                provider.image_of(&existing)
            ),
        }));
    }
    Ok(Ok(capi::reference_to(&existing, v1beta2_holder)))
}

/// Server-side applies a partial CAPI object under this controller's field manager.
pub(crate) async fn apply(client: &Client, ns: &str, obj: &Value) -> Result<(), Error> {
    let ar = capi::api_resource(
        obj["apiVersion"].as_str().unwrap_or_default(),
        obj["kind"].as_str().unwrap_or_default(),
    );
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    api.patch(
        capi::name(obj),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Carries out step `index`'s writes for `pools` (or the control plane).
pub async fn execute(
    client: &Client,
    ur: &UpgradeRequest,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    index: usize,
    pools: &[String],
) -> Result<Result<(), Stall>, Error> {
    let ns = ur.namespace().unwrap_or_default();
    let step = &status.plan[index];
    let (Some(cluster), Some(kcp), Some(matrix)) = (&obs.cluster, &obs.kcp, &obs.matrix) else {
        return Ok(Err(Stall {
            reason: "ClusterNotFound".into(),
            message: "the Cluster, its KubeadmControlPlane or the matrix disappeared while the step started".into(),
        }));
    };
    let Some(row) = matrix
        .spec
        .rows
        .iter()
        .find(|r| r.distribution_version == step.distribution_version)
    else {
        return Ok(Err(Stall {
            reason: "MissingMatrixRow".into(),
            message: format!(
                "row {} left the matrix during the upgrade",
                step.distribution_version
            ),
        }));
    };
    let version = step.kubernetes_version.as_str();
    let minor = crate::version::KubeVersion::parse(version)
        .map(|v| v.minor())
        .unwrap_or((1, 0));
    match step.kind {
        PlanStepKind::ControlPlane => {
            let tref = match ensure_template_clone(
                client,
                &ns,
                capi::kcp_infrastructure_ref(kcp),
                version,
                &step.os_image,
                cluster,
                capi::is_v1beta2(kcp),
            )
            .await?
            {
                Ok(r) => r,
                Err(s) => return Ok(Err(s)),
            };
            let write = capi::kcp_apply(
                kcp,
                version,
                minor,
                &row.core_dns_image_tag,
                &row.etcd_image_tag,
                tref,
            );
            info!(
                kcp = capi::name(kcp),
                version, "patching KubeadmControlPlane"
            );
            apply(client, &ns, &write).await?;
        }
        PlanStepKind::Workers => {
            for pool in pools {
                let Some(md) = obs.mds.iter().find(|m| capi::name(m) == pool) else {
                    return Ok(Err(Stall {
                        reason: "PoolNotFound".into(),
                        message: format!("MachineDeployment {pool} no longer exists"),
                    }));
                };
                let tref = match ensure_template_clone(
                    client,
                    &ns,
                    capi::md_infrastructure_ref(md),
                    version,
                    &step.os_image,
                    cluster,
                    capi::is_v1beta2(md),
                )
                .await?
                {
                    Ok(r) => r,
                    Err(s) => return Ok(Err(s)),
                };
                let bootstrap = if capi::needs_kubelet_patch(minor) {
                    match ensure_bootstrap_clone(
                        client,
                        &ns,
                        capi::md_bootstrap_ref(md),
                        version,
                        cluster,
                        capi::is_v1beta2(md),
                    )
                    .await?
                    {
                        Ok(r) => Some(r),
                        Err(s) => return Ok(Err(s)),
                    }
                } else {
                    None
                };
                let write = capi::md_apply(md, version, tref, bootstrap);
                info!(pool, version, "patching MachineDeployment");
                apply(client, &ns, &write).await?;
            }
        }
    }
    Ok(Ok(()))
}

/// For hops to ≥ 1.35: a KubeadmConfigTemplate clone whose nodes get the kubelet patch file
/// (DOMAIN.md §3).
async fn ensure_bootstrap_clone(
    client: &Client,
    ns: &str,
    source_ref: &Value,
    version: &str,
    owner: &Value,
    v1beta2_holder: bool,
) -> Result<Result<Value, Stall>, Error> {
    let (_, api, source) = match template_source(client, ns, source_ref, "bootstrap").await? {
        Ok(found) => found,
        Err(s) => return Ok(Err(s)),
    };
    let base =
        providers::template_base(&source).unwrap_or_else(|_| capi::name(&source).to_string());
    let name = capi::bootstrap_clone_name(&base, version);
    if get_opt(&api, &name).await?.is_none() {
        let mut spec = source["spec"].clone();
        spec["template"]["spec"]["files"] =
            capi::with_kubelet_patch(&spec["template"]["spec"]["files"]);
        let clone = json!({
            "apiVersion": source["apiVersion"], "kind": source["kind"],
            "metadata": {
                "name": name, "namespace": ns,
                "ownerReferences": [capi::owner_reference(owner)],
                "annotations": {providers::TEMPLATE_BASE_ANNOTATION: base, providers::KUBERNETES_VERSION_ANNOTATION: version},
            },
            "spec": spec,
        });
        let obj: DynamicObject = serde_json::from_value(clone)?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let clone = json!({"apiVersion": source["apiVersion"], "kind": source["kind"],
                       "metadata": {"name": name, "namespace": ns}});
    Ok(Ok(capi::reference_to(&clone, v1beta2_holder)))
}

/// Phase 1's one write: `spec.desiredUpdate.version` of the cluster's cvsh `name`, by
/// server-side apply so only that field is ours.
pub async fn request_extensions(
    client: &Client,
    cvsh: &CvshConfig,
    name: &str,
    version: &str,
) -> Result<(), Error> {
    let obj = cvsh.desired_update(name, version);
    let api =
        Api::<DynamicObject>::namespaced_with(client.clone(), &cvsh.namespace, &cvsh.resource);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await?;
    Ok(())
}

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
pub async fn record_left_at(client: &Client, cluster: &Value, note: &str) -> Result<(), Error> {
    let ns = cluster["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let obj = json!({
        "apiVersion": cluster["apiVersion"], "kind": cluster["kind"],
        "metadata": {"name": cluster["metadata"]["name"], "namespace": ns,
                     "annotations": {LEFT_AT_ANNOTATION: note}},
    });
    apply(client, ns, &obj).await
}
