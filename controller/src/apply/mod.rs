//! Apply: every write this controller makes to objects other than its own status — the hop's
//! template clones ([`templates`]) and the server-side-apply writes to KubeadmControlPlane and
//! MachineDeployments (DOMAIN.md §3), the one write to the cluster's ClusterVersionShadow
//! (DOMAIN.md §2), the request's finalizer and the note left on the Cluster when a request is
//! deleted ([`finalizer`]). A problem only a person can fix comes back as [`Error::Stall`].

pub mod finalizer;
pub mod kube_ovn;
pub mod kubelet_access;
mod templates;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use tracing::info;

use crate::FIELD_MANAGER;
use crate::api::{GitDeclaration, PlanStepKind, UpgradeRequest, UpgradeRequestStatus};
use crate::capi;
use crate::decide::{Write, handoff};
use crate::error::{Error, Stall, StallReason};
use crate::observe::Observed;
use crate::observe::inputs::Sources;
use crate::platform::CvshConfig;
use crate::version::KubeVersion;

/// Server-side applies a partial object (`api_version`/`kind` name its resource) under this
/// controller's field manager.
pub(crate) async fn apply<T: Serialize + std::fmt::Debug>(
    client: &Client,
    ns: &str,
    api_version: &str,
    kind: &str,
    name: &str,
    obj: &T,
) -> Result<(), Error> {
    apply_as(client, FIELD_MANAGER, ns, api_version, kind, name, obj).await
}

/// [`apply`] under field manager `manager`.
pub(crate) async fn apply_as<T: Serialize + std::fmt::Debug>(
    client: &Client,
    manager: &str,
    ns: &str,
    api_version: &str,
    kind: &str,
    name: &str,
    obj: &T,
) -> Result<(), Error> {
    let ar = capi::api_resource(api_version, kind);
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Sets annotation `key` of `cluster` to `value` by server-side apply under `manager`.
pub(crate) async fn annotate_cluster(
    client: &Client,
    manager: &str,
    cluster: &capi::Cluster,
    key: &str,
    value: &str,
) -> Result<(), Error> {
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    let name = capi::name(&cluster.metadata).to_string();
    let obj = serde_json::json!({
        "apiVersion": cluster.api_version, "kind": cluster.kind,
        "metadata": {"name": name, "namespace": ns, "annotations": {key: value}},
    });
    apply_as(
        client,
        manager,
        &ns,
        &cluster.api_version,
        &cluster.kind,
        &name,
        &obj,
    )
    .await
}

/// What [`execute`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Whether an object other than a template clone was written.
    pub wrote: bool,
    /// `Handoff` mode: the fields Git must declare instead, for `status.declareInGit`.
    pub handed_off: Vec<GitDeclaration>,
}

/// What a step start needs in the workload cluster before [`execute`]: for a control-plane
/// step below 1.38, the kube-apiserver's kubelet-client binding ([`kubelet_access`]), also
/// in `Handoff` mode, where Git writes the KubeadmControlPlane. Returns the note of an Event
/// to publish at once when the binding was created (the binding exists from then on, whatever
/// happens to the rest of the step start, and a retry finds it present).
pub async fn prepare(
    sources: &Sources,
    ur: &UpgradeRequest,
    status: &UpgradeRequestStatus,
    write: &Write,
) -> Result<Option<String>, Error> {
    let Write::Start { index, .. } = write else {
        return Ok(None);
    };
    let Some(step) = status.plan.get(*index) else {
        return Ok(None);
    };
    let version = step.kubernetes_version.as_str();
    let Ok(target) = KubeVersion::parse(version) else {
        return Ok(None);
    };
    if step.kind != PlanStepKind::ControlPlane || !kubelet_access::needed_for(target.minor()) {
        return Ok(None);
    }
    let ns = ur.namespace().unwrap_or_default();
    let cluster = &ur.spec.cluster_name;
    let workload = workload_client(sources, &ns, cluster).await?;
    Ok(
        (kubelet_access::ensure(&workload, cluster).await? == kubelet_access::Ensured::Created)
            .then(|| {
                format!(
                    "created ClusterRoleBinding {} ({} → ClusterRole {}) in workload cluster {cluster}: kubeadm {version} joins control-plane nodes whose kube-apiserver relies on it to reach kubelets, and this Cluster API version does not create it",
                    kubelet_access::BINDING,
                    kubelet_access::USER,
                    kubelet_access::CLUSTER_ROLE,
                )
            }),
    )
}

/// The client of `cluster`'s workload cluster, for a write there; a kubeconfig that cannot be
/// read or is refused stalls the request.
pub(crate) async fn workload_client(
    sources: &Sources,
    ns: &str,
    cluster: &str,
) -> Result<Client, Error> {
    sources
        .workloads
        .client(&sources.client, ns, cluster)
        .await
        .map_err(|u| Stall::new(StallReason::Api(u.reason), u.message).into())
}

/// Carries out `write`.
pub async fn execute(
    sources: &Sources,
    ur: &UpgradeRequest,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    write: &Write,
) -> Result<Applied, Error> {
    let (client, cvsh) = (&sources.client, &sources.cvsh);
    match write {
        Write::RequestExtensions { version, write } => {
            if *write {
                let ns = ur.namespace().unwrap_or_default();
                let name = cvsh
                    .name_for(&ns, &ur.spec.cluster_name)
                    .map_err(|u| Stall::new(StallReason::from_unmapped(&u), u.message))?;
                info!(cvsh = %obs.cvsh_where, version, "requesting the Distribution Version");
                request_extensions(client, cvsh, &name, version).await?;
            }
            Ok(Applied {
                wrote: *write,
                handed_off: Vec::new(),
            })
        }
        Write::Start { index, pools } => {
            if status.plan.get(*index).map(|s| s.kind) == Some(PlanStepKind::KubeOvn) {
                return kube_ovn::start(sources, ur, status, obs, *index).await;
            }
            start_step(client, ur, status, obs, *index, pools).await
        }
    }
}

/// Phase 1's one write: `spec.desiredUpdate.version` of the cluster's cvsh `name`, by
/// server-side apply so only that field is ours.
async fn request_extensions(
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

/// Step `index`'s writes for `pools` (or the control plane). A Git-managed object in
/// `Handoff` mode is not written: its clones are made, and the write's fields are returned
/// for Git to declare.
async fn start_step(
    client: &Client,
    ur: &UpgradeRequest,
    status: &UpgradeRequestStatus,
    obs: &Observed,
    index: usize,
    pools: &[String],
) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    let ns = ur.namespace().unwrap_or_default();
    let step = &status.plan[index];
    let (Some(cluster), Some(kcp), Some(matrix)) = (&obs.cluster, &obs.kcp, &obs.matrix) else {
        return Err(Stall::new(
            StallReason::ClusterNotFound,
            "the Cluster, its KubeadmControlPlane or the matrix disappeared while the step started",
        )
        .into());
    };
    let Some(row) = matrix
        .spec
        .rows
        .iter()
        .find(|r| r.distribution_version == step.distribution_version)
    else {
        return Err(Stall::new(
            StallReason::MissingMatrixRow,
            format!(
                "row {} left the matrix during the upgrade",
                step.distribution_version
            ),
        )
        .into());
    };
    let version = step.kubernetes_version.as_str();
    let minor = KubeVersion::parse(version)
        .map(|v| v.minor())
        .unwrap_or((1, 0));
    let owner = capi::owner_reference(cluster);
    match step.kind {
        // [`execute`] hands KubeOvn steps to [`kube_ovn::start`]; nothing is written here.
        PlanStepKind::KubeOvn => Ok(applied),
        PlanStepKind::ControlPlane => {
            let Some(source) = kcp.infrastructure_ref() else {
                return Err(Stall::new(
                    StallReason::TemplateNotFound,
                    "the KubeadmControlPlane names no infrastructure template",
                )
                .into());
            };
            let tref = templates::ensure_clone(
                client,
                &ns,
                source,
                version,
                &step.os_image,
                &owner,
                kcp.is_v1beta2(),
            )
            .await?;
            let write = capi::kcp_apply(
                kcp,
                version,
                minor,
                &row.core_dns_image_tag,
                &row.etcd_image_tag,
                tref,
            );
            let object = handoff::kcp_object(kcp);
            if handoff::handed_off(&ur.spec, status, &object) {
                info!(
                    kcp = capi::name(&kcp.metadata),
                    version, "handing the KubeadmControlPlane's fields to Git"
                );
                applied.handed_off = handoff::declarations(&object, &write);
                return Ok(applied);
            }
            info!(
                kcp = capi::name(&kcp.metadata),
                version, "patching KubeadmControlPlane"
            );
            apply(
                client,
                &ns,
                &write.api_version,
                &write.kind,
                &write.metadata.name,
                &write,
            )
            .await?;
            applied.wrote = true;
            Ok(applied)
        }
        PlanStepKind::Workers => {
            for pool in pools {
                let Some(md) = obs.mds.iter().find(|m| capi::name(&m.metadata) == pool) else {
                    return Err(Stall::new(
                        StallReason::PoolNotFound,
                        format!("MachineDeployment {pool} no longer exists"),
                    )
                    .into());
                };
                let template = &md.spec.template.spec;
                let tref = templates::ensure_clone(
                    client,
                    &ns,
                    &template.infrastructure_ref,
                    version,
                    &step.os_image,
                    &owner,
                    md.is_v1beta2(),
                )
                .await?;
                let bootstrap = match (
                    &template.bootstrap.config_ref,
                    capi::needs_kubelet_patch(minor),
                ) {
                    (Some(source), true) => Some(
                        templates::ensure_bootstrap_clone(
                            client,
                            &ns,
                            source,
                            version,
                            &owner,
                            md.is_v1beta2(),
                        )
                        .await?,
                    ),
                    _ => None,
                };
                let write = capi::md_apply(md, version, tref, bootstrap);
                let object = handoff::md_object(md);
                if handoff::handed_off(&ur.spec, status, &object) {
                    info!(
                        pool,
                        version, "handing the MachineDeployment's fields to Git"
                    );
                    applied
                        .handed_off
                        .extend(handoff::declarations(&object, &write));
                    continue;
                }
                info!(pool, version, "patching MachineDeployment");
                apply(
                    client,
                    &ns,
                    &write.api_version,
                    &write.kind,
                    &write.metadata.name,
                    &write,
                )
                .await?;
                applied.wrote = true;
            }
            Ok(applied)
        }
    }
}
