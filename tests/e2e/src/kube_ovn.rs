//! A stand-in for the platform's side of Kube-OVN — a TEST DOUBLE of external systems, never
//! shipped. On a real platform the infrastructure provider reads the CAPI Cluster annotation
//! `cpaas.io/kube-ovn-version` and reconciles the workload cluster's `AppRelease cni-kube-ovn`
//! (a full-source provider sets the chart name and `targetRevision`; a legacy DCS/HCS one
//! keeps the source, which upgrade-controller then patches itself), and the platform's
//! AppRelease operator installs the chart: phase `Upgrading → HealthChecking → Success`, with
//! `installedRevision` moving at `HealthChecking` and `Health` True only at `Success`
//! (DOMAIN.md §3). This task plays both, every 200 ms, for one Cluster, writing the AppRelease
//! (CRD test copy: tests/e2e/manifests/platform/appreleases.operator.alauda.io.yaml) in the
//! namespace given. [`StandInKubeOvn::fail_with`] makes the next install end in `DeployFailed`
//! with a message, until cleared.
//!
//! Also here: the provider's own AppRelease on the management cluster ([`provider_release`]),
//! which the `ProviderReady` preflight reads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use upgrade_controller::decide::kube_ovn::{RELEASE_NAME, VERSION_ANNOTATION, chart_name};
use upgrade_controller::observe::network::app_release_resource;

use crate::capi;

/// How long each phase lasts at least.
const PHASE: Duration = Duration::from_millis(800);

pub fn api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &app_release_resource())
}

/// An AppRelease of one chart, `installed` at `revision` in `phase` (the status the platform's
/// operator reports).
pub fn release(
    name: &str,
    ns: &str,
    chart: &str,
    revision: &str,
    installed: &str,
    phase: &str,
) -> Value {
    let ok = if phase == "Success" { "True" } else { "False" };
    json!({
        "apiVersion": "operator.alauda.io/v1alpha1", "kind": "AppRelease",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"destination": {"cluster": "", "namespace": ""},
            "source": {"charts": [{"name": chart, "releaseName": name, "targetRevision": revision}],
                "repoURL": "registry.e2e.invalid"},
            "timeout": 120},
        "status": status(chart, installed, phase, ok, ok, None),
    })
}

fn status(
    chart: &str,
    installed: &str,
    phase: &str,
    sync: &str,
    health: &str,
    message: Option<&str>,
) -> Value {
    let mut chart_status = json!({"installedRevision": installed, "phase": phase});
    if let Some(m) = message {
        chart_status["message"] = json!(m);
    }
    json!({
        "charts": {chart: chart_status},
        "conditions": [
            {"type": "Sync", "status": sync, "reason": if sync == "True" {"Synced"} else {"OutOfSync"}},
            {"type": "Health", "status": health, "reason": if health == "True" {"Healthy"} else {"Progressing"},
             "message": message.unwrap_or(if health == "True" {""} else {"kube-ovn pods are not all ready"})},
        ],
    })
}

/// Creates `obj` and writes its status through the status subresource.
pub async fn create_with_status(client: &kube::Client, ns: &str, obj: Value) {
    let api = api(client, ns);
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let status = obj["status"].clone();
    let o: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &o)
        .await
        .unwrap_or_else(|e| panic!("creating AppRelease {ns}/{name}: {e}"));
    set_status(client, ns, &name, status).await;
}

pub async fn set_status(client: &kube::Client, ns: &str, name: &str, status: Value) {
    api(client, ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap_or_else(|e| panic!("writing the status of AppRelease {ns}/{name}: {e}"));
}

/// The DCS provider's AppRelease (as the platform's install guide applies it) at `version`.
pub fn provider_release(ns: &str, version: &str) -> Value {
    release(
        "cluster-api-provider-dcs",
        ns,
        "ait/chart-cluster-api-provider-dcs",
        version,
        version,
        "Success",
    )
}

/// The stand-in provider + AppRelease operator for one Cluster; stopped on drop.
pub struct StandInKubeOvn {
    task: tokio::task::JoinHandle<()>,
    fail: Arc<Mutex<Option<String>>>,
    /// Every phase it wrote, as `<revision> <phase>`, in order.
    pub history: Arc<Mutex<Vec<String>>>,
}

impl StandInKubeOvn {
    /// Creates `cni-kube-ovn` in `release_ns` installed at `chart` and starts reconciling it
    /// for Cluster `cluster_ns/cluster`. `legacy`: the provider keeps the AppRelease's source
    /// (DCS ≤ v1.0.21), so only upgrade-controller's own patch moves `targetRevision`.
    pub async fn start(
        client: &kube::Client,
        cluster_ns: &str,
        cluster: &str,
        release_ns: &str,
        chart: &str,
        legacy: bool,
    ) -> Self {
        create_with_status(
            client,
            release_ns,
            release(
                RELEASE_NAME,
                release_ns,
                chart_name(chart),
                chart,
                chart,
                "Success",
            ),
        )
        .await;
        let fail = Arc::new(Mutex::new(None));
        let history = Arc::new(Mutex::new(Vec::new()));
        let (client, cluster_ns, cluster, release_ns) = (
            client.clone(),
            cluster_ns.to_string(),
            cluster.to_string(),
            release_ns.to_string(),
        );
        let (f, h) = (fail.clone(), history.clone());
        let task = tokio::spawn(async move {
            let mut since = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Err(e) = tick(
                    &client,
                    &cluster_ns,
                    &cluster,
                    &release_ns,
                    legacy,
                    &f,
                    &h,
                    &mut since,
                )
                .await
                {
                    eprintln!("stand-in kube-ovn: {e}");
                }
            }
        });
        Self {
            task,
            fail,
            history,
        }
    }

    /// From now on an install ends in `DeployFailed` with `message` (`None`: installs succeed).
    pub fn fail_with(&self, message: Option<&str>) {
        *self.fail.lock().unwrap() = message.map(str::to_string);
    }
}

impl Drop for StandInKubeOvn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn tick(
    client: &kube::Client,
    cluster_ns: &str,
    cluster: &str,
    release_ns: &str,
    legacy: bool,
    fail: &Mutex<Option<String>>,
    history: &Mutex<Vec<String>>,
    since: &mut Instant,
) -> Result<(), kube::Error> {
    let clusters = capi::api(client, cluster_ns, capi::CLUSTER_V1BETA1, "Cluster");
    let Some(c) = clusters.get_opt(cluster).await? else {
        return Ok(());
    };
    let want = c
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VERSION_ANNOTATION))
        .cloned();
    let releases = api(client, release_ns);
    let r = serde_json::to_value(releases.get(RELEASE_NAME).await?).unwrap();
    let source = &r["spec"]["source"]["charts"][0];
    let target = source["targetRevision"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = source["name"].as_str().unwrap_or_default().to_string();
    // The provider: a full-source one reconciles the whole source from the annotation.
    if !legacy && let Some(want) = want.filter(|w| *w != target) {
        let charts =
            json!([{"name": chart_name(&want), "releaseName": "kube-ovn", "targetRevision": want}]);
        releases
            .patch(
                RELEASE_NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"source": {"charts": charts}}})),
            )
            .await?;
        return Ok(());
    }
    // The operator: walk the requested chart through its phases.
    let entry = r["status"]["charts"]
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .unwrap_or_default();
    let installed = entry["installedRevision"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let phase = entry["phase"].as_str().unwrap_or_default().to_string();
    let failing = fail.lock().unwrap().clone();
    let next = match phase.as_str() {
        // A new request, or a failure cleared: the install starts (again).
        "Success" | "DeployFailed"
            if (phase == "Success" && installed != target)
                || (phase == "DeployFailed" && failing.is_none()) =>
        {
            Some(status(
                &name,
                &installed,
                "Upgrading",
                "False",
                "True",
                None,
            ))
        }
        "Upgrading" if since.elapsed() >= PHASE => Some(match &failing {
            Some(m) => status(&name, &installed, "DeployFailed", "False", "False", Some(m)),
            None => status(&name, &target, "HealthChecking", "True", "False", None),
        }),
        "HealthChecking" if since.elapsed() >= PHASE => {
            Some(status(&name, &target, "Success", "True", "True", None))
        }
        _ => None,
    };
    if let Some(mut st) = next {
        let phase = st["charts"][&name]["phase"].as_str().unwrap().to_string();
        // Replace the chart map wholesale: a merge patch would keep a stale chart's entry.
        st["charts"] = json!({&name: st["charts"][&name].clone()});
        releases
            .patch_status(
                RELEASE_NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"charts": null}})),
            )
            .await?;
        releases
            .patch_status(
                RELEASE_NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": st})),
            )
            .await?;
        history.lock().unwrap().push(format!("{target} {phase}"));
        *since = Instant::now();
    }
    Ok(())
}
