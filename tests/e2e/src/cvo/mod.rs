//! A stand-in for the platform's Cluster Version Operator (CVO) — a TEST DOUBLE of an external
//! system, never shipped. The real CVO runs on the global cluster and upgrades a cluster's
//! Distribution Version (Core + Aligned extensions) through its `ClusterVersionShadow` (cvsh,
//! DOMAIN.md §2); it and its CRD are not public. The stand-in behaves as DOMAIN.md §2 describes
//! so upgrade-controller's Phase 1 can be shown end to end on the test control plane.
//!
//! [`behaviour`] holds the stand-in's behaviour as a pure function ([`next_status`]), run by
//! the `stand-in-cvo` binary every 300 ms against every cvsh of one namespace; this module holds
//! the test side: [`StandInCvo`] (the binary as a process), [`create_cvsh`], [`set_control`],
//! [`ensure_namespace`].
//!
//! # Status it maintains (what upgrade-controller reads)
//!
//! ```yaml
//! status:
//!   conditions:            # metav1.Condition; lastTransitionTime moves only when status does
//!   - {type: PreflightReady, status: "True", reason: AsExpected, message: ..., lastTransitionTime, observedGeneration}
//!   - {type: Ready, ...}        # the cluster runs status.current and no upgrade is under way
//!   - {type: Reconciling, ...}  # an upgrade is under way (False with reason PreflightFailed when blocked)
//!   - {type: Stalled, ...}      # needs a person: reason/message from the `stall.<cvsh>` control
//!   preflight:
//!     observedAt: <when the check results last changed>
//!     checks: [{name, policy: Block, state: Passed|Failed, reason, message}]   # the 13 checks
//!   current: {version: 4.2.5}
//!   desired: {version: 4.3.2}
//!   history: [{version, state: Completed|Partial, startedTime, completionTime}]  # newest first
//!   stages: [{name: Core|AlignedExtensions, state: Pending|Running|Completed|Failed,
//!             message, startedTime, completionTime}]
//! ```
//!
//! # Test controls
//!
//! Tests steer it without touching the cvsh (they assert that upgrade-controller writes nothing
//! but `spec.desiredUpdate.version`), through the ConfigMap [`CONTROL_CONFIGMAP`] in the cvsh
//! namespace, re-read on every pass; removing a key recovers:
//!
//! - `fail-preflight.<cvsh>`: lines `CheckName: message`; those checks fail (reason
//!   `CheckFailed`), `PreflightReady=False` with the first failed check's name (in the order of
//!   [`CHECKS`]; names outside it come last) as reason and its message, and a
//!   requested upgrade does not start (`Reconciling=False`, reason `PreflightFailed`).
//! - `stall.<cvsh>`: `Reason: message`; the upgrade stalls at the `AlignedExtensions` stage
//!   (stage `Failed`, `Stalled=True` with that reason and message) until the key is removed.
//! - `stage-seconds`: how long each stage runs at least (overrides `--stage-seconds`; `0` moves a
//!   stage on at the next pass).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

use crate::{harness, project};

pub mod behaviour;
pub use behaviour::*;

/// The cvsh API version the stand-in serves by default (upgrade-controller's default
/// `--cvsh-api-version`).
pub const API_VERSION: &str = "cvo.cpaas.io/v1alpha1";
/// Where cvsh objects live (DOMAIN.md §2).
pub const NAMESPACE: &str = "cpaas-system";
/// The test-control ConfigMap, in the cvsh namespace.
pub const CONTROL_CONFIGMAP: &str = "stand-in-cvo";
/// Annotation giving a new cvsh's installed Distribution Version (the stand-in's only input for
/// `status.current`; a real CVO knows what it installed).
pub const INSTALLED_VERSION_ANNOTATION: &str = "e2e.upgrade.cpaas.io/installed-version";
/// The platform's preflight checks (DOMAIN.md §2), in the order the stand-in reports them.
pub const CHECKS: [&str; 13] = [
    "ResourcePatchUpgradeable",
    "ClusterVersionUpgradeable",
    "AdminAckRequired",
    "VersionUpgradePath",
    "KubernetesVersionSupported",
    "DockerRuntimeUnsupported",
    "ClusterRunning",
    "ClusterModuleStable",
    "ControlPlaneStaticPodsPresent",
    "CustomEtcdBackupCronJobsAbsent",
    "CRIUpgradePodsAbsent",
    "ModuleInfoStable",
    "PlatformLicense",
];
/// The upgrade stages, in order.
pub const STAGES: [&str; 2] = ["Core", "AlignedExtensions"];
/// The stage a `stall.<cvsh>` control stops at.
pub const STALL_STAGE: &str = "AlignedExtensions";

/// The cvsh resource for `api_version` (`group/version`).
pub fn cvsh_resource(api_version: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, "ClusterVersionShadow"),
        "clusterversionshadows",
    )
}

// ---------------------------------------------------------------------------------------------
// Test side
// ---------------------------------------------------------------------------------------------

/// The `stand-in-cvo` binary running against the test control plane for one namespace; killed
/// on drop.
pub struct StandInCvo {
    child: Child,
    pub log: PathBuf,
}

impl StandInCvo {
    /// Builds (when stale) and starts the stand-in CVO for `namespace`, logging to
    /// `<testenv>/logs/stand-in-cvo-<namespace>.log`.
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &[])
    }

    /// [`StandInCvo::start`] with extra flags (`--poll-ms`, `--stage-seconds`).
    pub fn start_with(namespace: &str, extra: &[&str]) -> Self {
        let bin = project::binary("e2e", "stand-in-cvo");
        let log = harness::log_dir().join(format!("stand-in-cvo-{namespace}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("stand-in CVO log file");
        let child = Command::new(bin)
            .args(["--namespace", namespace])
            .args(extra)
            .env("KUBECONFIG", harness::kubeconfig())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("starting the stand-in CVO");
        Self { child, log }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StandInCvo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The cvsh API in `namespace` at the default API version.
pub fn cvsh_api(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &cvsh_resource(API_VERSION))
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &kube::Client, name: &str) -> kube::Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("a namespace object");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates cvsh `name` in [`NAMESPACE`] for a cluster installed at `installed_version` (the
/// stand-in fills its status on its next pass).
pub async fn create_cvsh(
    client: &kube::Client,
    name: &str,
    installed_version: &str,
) -> kube::Result<DynamicObject> {
    create_cvsh_in(client, NAMESPACE, name, installed_version).await
}

/// [`create_cvsh`] in another namespace (a test with its own stand-in there).
pub async fn create_cvsh_in(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    installed_version: &str,
) -> kube::Result<DynamicObject> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterVersionShadow",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {INSTALLED_VERSION_ANNOTATION: installed_version},
        },
        "spec": {},
    }))
    .expect("a cvsh object");
    cvsh_api(client, namespace)
        .create(&PostParams::default(), &obj)
        .await
}

/// Sets (`Some`) or removes (`None`) one key of the control ConfigMap in [`NAMESPACE`],
/// creating the ConfigMap when needed.
pub async fn set_control(
    client: &kube::Client,
    key: &str,
    value: Option<&str>,
) -> kube::Result<()> {
    set_control_in(client, NAMESPACE, key, value).await
}

/// [`set_control`] in another namespace.
pub async fn set_control_in(
    client: &kube::Client,
    namespace: &str,
    key: &str,
    value: Option<&str>,
) -> kube::Result<()> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let patch = Patch::Merge(json!({"data": {key: value}}));
    let params = PatchParams::default();
    match api.patch(CONTROL_CONFIGMAP, &params, &patch).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let data: BTreeMap<&str, &str> = value.map(|v| (key, v)).into_iter().collect();
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": CONTROL_CONFIGMAP, "namespace": namespace},
                "data": data,
            }))
            .expect("a ConfigMap object");
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(()),
                // Created meanwhile by another test: patch that one.
                Err(kube::Error::Api(e)) if e.code == 409 => api
                    .patch(CONTROL_CONFIGMAP, &params, &patch)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
