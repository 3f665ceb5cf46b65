//! The hop's machine-template and bootstrap-template clones (DOMAIN.md §3): the template
//! referenced today copied under a deterministic name with the row's image (and, for ≥ 1.35
//! workers, a KubeadmConfigTemplate with the kubelet patch file). Templates are never edited
//! in place; a retried step finds the clone it made.

use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use tracing::info;

use crate::capi::{self, Reference};
use crate::error::{Error, Stall, StallReason};
use crate::observe::inputs::{get_opt, resolve_ref};

/// The template `source` (an infrastructure or bootstrap template reference) points at: its
/// API resource, an API for its namespace, and the object; a person must fix a reference that
/// resolves to nothing.
async fn source_of(
    client: &Client,
    ns: &str,
    source: &Reference,
    what: &str,
) -> Result<(ApiResource, Api<DynamicObject>, Value), Error> {
    let Some(ar) = resolve_ref(client, source).await? else {
        return Err(Stall::new(
            StallReason::TemplateNotFound,
            format!("invalid {what} template reference {source}"),
        )
        .into());
    };
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    let Some(object) = get_opt(&api, &source.name).await? else {
        return Err(Stall::new(
            StallReason::TemplateNotFound,
            format!("{} {ns}/{} does not exist", ar.kind, source.name),
        )
        .into());
    };
    Ok((ar, api, object))
}

/// Gets or creates the hop's clone of the machine template `source` points at. A clone that
/// exists with another image is a conflict a person must resolve.
pub(super) async fn ensure_clone(
    client: &Client,
    ns: &str,
    source: &Reference,
    version: &str,
    image: &str,
    owner: &Value,
    v1beta2_holder: bool,
) -> Result<Reference, Error> {
    let (ar, api, template) = source_of(client, ns, source, "infrastructure").await?;
    let provider = providers::for_template_kind(&ar.kind)
        .map_err(|e| Stall::new(StallReason::UnsupportedProvider, e.to_string()))?;
    // The template carries no image (bare metal resolves it from the Machine's version): the
    // hop keeps today's template.
    if !provider.new_template_per_hop() {
        return Ok(capi::reference_to(&template, v1beta2_holder));
    }
    // A source that already is this hop's clone (a retried step) is reused as is.
    if template["metadata"]["annotations"][providers::KUBERNETES_VERSION_ANNOTATION] == version
        && provider.image_of(&template).as_deref() == Some(image)
    {
        return Ok(capi::reference_to(&template, v1beta2_holder));
    }
    let clone = providers::clone_template(provider, &template, version, image, owner.clone())
        .map_err(|e| Stall::new(StallReason::TemplateInvalid, e.to_string()))?;
    let name = clone["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
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
        return Err(Stall::new(
            StallReason::TemplateConflict,
            format!(
                "{} {ns}/{name} exists but uses image {:?}, not {image}; delete it or fix the matrix",
                ar.kind,
                provider.image_of(&existing)
            ),
        )
        .into());
    }
    Ok(capi::reference_to(&existing, v1beta2_holder))
}

/// For hops to ≥ 1.35: a KubeadmConfigTemplate clone whose nodes get the kubelet patch file
/// (DOMAIN.md §3).
pub(super) async fn ensure_bootstrap_clone(
    client: &Client,
    ns: &str,
    source: &Reference,
    version: &str,
    owner: &Value,
    v1beta2_holder: bool,
) -> Result<Reference, Error> {
    let (_, api, template) = source_of(client, ns, source, "bootstrap").await?;
    let base = providers::template_base(&template).unwrap_or_else(|_| source.name.clone());
    let name = capi::bootstrap_clone_name(&base, version);
    if get_opt(&api, &name).await?.is_none() {
        let mut spec = template["spec"].clone();
        let files: Vec<Value> = spec["template"]["spec"]["files"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        spec["template"]["spec"]["files"] = Value::Array(capi::with_kubelet_patch(&files));
        let clone = json!({
            "apiVersion": template["apiVersion"], "kind": template["kind"],
            "metadata": {
                "name": name, "namespace": ns,
                "ownerReferences": [owner],
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
    let clone = json!({"apiVersion": template["apiVersion"], "kind": template["kind"],
                       "metadata": {"name": name, "namespace": ns}});
    Ok(capi::reference_to(&clone, v1beta2_holder))
}
