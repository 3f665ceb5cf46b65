//! The mocked-API tier (STYLE.md; the `ApiServerVerifier` pattern of kube-rs/controller-rs):
//! one real reconcile against a scripted API server, asserting the exact sequence of requests
//! where order matters. The watch caches are filled by hand, so every request the mock sees
//! is one the reconcile itself sent.
//!
//! What is proven against a real control plane lives in `tests/e2e`; this tier covers the
//! orderings and failure points a real API server will not produce on demand.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use upgrade_controller::api::{
    ExtensionsStatus, OSSupportMatrix, StepState, UpgradeRequest, UpgradeRequestStatus,
};
use upgrade_controller::decide::{self, Decision};
use upgrade_controller::driver::{self, Context};
use upgrade_controller::observe::inputs::{Claims, Sources};
use upgrade_controller::observe::workload::WorkloadClients;
use upgrade_controller::observe::{Caches, Observed};
use upgrade_controller::platform::{CvshConfig, CvshMapping};

const NS: &str = "ns";
const REQUEST: &str = "up";
const TEMPLATES: &str =
    "/apis/infrastructure.cluster.x-k8s.io/v1beta1/namespaces/ns/devmachinetemplates";
const KCP: &str =
    "/apis/controlplane.cluster.x-k8s.io/v1beta1/namespaces/ns/kubeadmcontrolplanes/c-cp";
const REQUESTS: &str = "/apis/upgrade.cpaas.io/v1alpha1/namespaces/ns/upgraderequests/up";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

/// One request the mock answered.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

impl Seen {
    fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

type Answer = (StatusCode, Value);
type Script = Box<dyn FnMut(&Seen) -> Option<Answer> + Send>;

/// A scripted API server: each request is recorded, then answered by the script (or 404).
#[derive(Clone)]
struct MockApi {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<Script>>,
}

impl MockApi {
    fn new(script: impl FnMut(&Seen) -> Option<Answer> + Send + 'static) -> Self {
        Self {
            seen: Arc::default(),
            script: Arc::new(Mutex::new(Box::new(script))),
        }
    }

    fn client(&self) -> Client {
        let mock = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let mock = mock.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let seen = Seen {
                    method: parts.method,
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                mock.seen.lock().unwrap().push(seen.clone());
                let (code, body) = (mock.script.lock().unwrap())(&seen).unwrap_or_else(|| {
                    (
                        StatusCode::NOT_FOUND,
                        status_body(404, "NotFound", &format!("{} not found", seen.path)),
                    )
                });
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                )
            }
        });
        Client::new(service, NS)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests that are not Events (which come last and are checked on their own).
    fn calls(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|s| s.path != EVENTS)
            .map(Seen::line)
            .collect()
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "code": code, "reason": reason, "message": message})
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("fixture")
}

fn matrix() -> OSSupportMatrix {
    let row = |dv: &str, k8s: &str| {
        json!({"distributionVersion": dv, "kubernetesVersion": k8s, "coreDNSImageTag": "1.12.4",
               "etcdImageTag": "v3.5.21", "osImageVersion": format!("img-{dv}")})
    };
    typed(json!({
        "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "OSSupportMatrix",
        "metadata": {"name": "default"},
        "spec": {"rows": [row("4.1.0", "v1.32.7"), row("4.2.0", "v1.33.7")]},
    }))
}

fn cluster() -> Value {
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": "c", "namespace": NS, "uid": "cluster-uid"},
        "spec": {"controlPlaneRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1",
                                     "kind": "KubeadmControlPlane", "name": "c-cp"}},
    })
}

fn kcp(version: &str, template: &str) -> Value {
    json!({
        "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
        "metadata": {"name": "c-cp", "namespace": NS, "generation": 1,
                     "labels": {"cluster.x-k8s.io/cluster-name": "c"},
                     "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
                                          "name": "c", "uid": "cluster-uid"}]},
        "spec": {"version": version, "replicas": 1,
                 "machineTemplate": {"infrastructureRef": {
                     "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
                     "kind": "DevMachineTemplate", "name": template, "namespace": NS}},
                 "kubeadmConfigSpec": {"clusterConfiguration": {
                     "dns": {"imageTag": "1.12.4"}, "etcd": {"local": {"imageTag": "v3.5.21"}}}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                   "readyReplicas": 1, "unavailableReplicas": 0, "version": version,
                   "conditions": [{"type": "Ready", "status": "True"},
                                  {"type": "Available", "status": "True"},
                                  {"type": "EtcdClusterHealthy", "status": "True"}]},
    })
}

fn machine(version: &str) -> Value {
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine",
        "metadata": {"name": "cp-0", "namespace": NS,
                     "labels": {"cluster.x-k8s.io/cluster-name": "c",
                                "cluster.x-k8s.io/control-plane-name": "c-cp",
                                "cluster.x-k8s.io/control-plane": ""}},
        "spec": {"clusterName": "c", "version": version},
        "status": {"nodeRef": {"name": "cp-0"}, "nodeInfo": {"kubeletVersion": version},
                   "conditions": [{"type": "NodeHealthy", "status": "True"},
                                  {"type": "Ready", "status": "True"}]},
    })
}

fn template(name: &str) -> Value {
    json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DevMachineTemplate",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "7"},
        "spec": {"template": {"spec": {"backend": {"docker": {"customImage": "img-4.1.0"}}}}},
    })
}

fn cvsh(name: &str, version: &str) -> Value {
    json!({
        "apiVersion": "cvo.cpaas.io/v1alpha1", "kind": "ClusterVersionShadow",
        "metadata": {"name": name, "namespace": "cpaas-system"},
        "spec": {"desiredUpdate": {"version": version}},
        "status": {"current": {"version": version},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "AsExpected", "message": ""}]},
    })
}

fn cvsh_config() -> CvshConfig {
    CvshConfig::new(
        "cvo.cpaas.io/v1alpha1",
        "cpaas-system",
        "global",
        CvshMapping::NamespacedName,
    )
    .unwrap()
}

/// A request planned to 4.2 with Phase 1 done: the next thing is the control-plane step.
fn request(cluster_name: &str, caches_obs: &Observed) -> UpgradeRequest {
    let spec = json!({"clusterName": cluster_name, "targetVersion": "4.2"});
    let mut ur: UpgradeRequest = typed(json!({
        "apiVersion": "upgrade.cpaas.io/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": REQUEST, "namespace": NS, "uid": "request-uid", "generation": 1,
                     "resourceVersion": "1", "creationTimestamp": "2026-12-01T00:00:00Z",
                     "finalizers": ["upgrade.cpaas.io/rollout-guard"]},
        "spec": spec,
    }));
    let mut status = UpgradeRequestStatus::default();
    if let Decision::SetPlan { steps, target, .. } = decide::decide(
        &ur.spec,
        &status,
        caches_obs,
        k8s_openapi::jiff::Timestamp::now(),
    ) {
        status.plan = steps;
        status.target = Some(target);
        status.aligned_extensions = Some(ExtensionsStatus {
            version: Some("4.2.0".into()),
            state: Some(StepState::Succeeded),
            requested_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            )),
            finished_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            )),
            ..Default::default()
        });
    }
    ur.status = Some(status);
    ur
}

/// The caches of a consistent cluster `c` at v1.32.7 (KCP on template `t`).
fn caches(kcp_version: &str, kcp_template: &str) -> Caches {
    let c = Caches::new();
    c.clusters.apply(&Event::Apply(typed(cluster())));
    c.kcps
        .apply(&Event::Apply(typed(kcp(kcp_version, kcp_template))));
    c.machines.apply(&Event::Apply(typed(machine("v1.32.7"))));
    c.matrices.apply(&Event::Apply(matrix()));
    c.cvsh.apply(&Event::Apply(typed(cvsh("ns.c", "4.2.0"))));
    c.cvsh.apply(&Event::Apply(typed(cvsh("global", "4.2.0"))));
    c.requests.mark_synced();
    c.clusters.mark_synced();
    c.kcps.mark_synced();
    c.mds.mark_synced();
    c.machines.mark_synced();
    c.machine_pools.mark_synced();
    c.matrices.mark_synced();
    c.cvsh.mark_synced();
    c
}

const BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings";
const BINDING: &str =
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kubeadm:apiserver-kubelet-client";

/// What the workload cluster's API holds and allows.
#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// No `kubeadm:apiserver-kubelet-client` binding yet; its create succeeds.
    WithoutBinding,
    /// The binding exists (kubeadm or a person made it).
    WithBinding,
    /// Its kubeconfig may not touch ClusterRoleBindings.
    Forbidden,
    /// No binding yet, and its create is answered with this code.
    CreateAnswers(u16),
}

/// The workload cluster's API: discovery (it is reachable) and the kubelet-client binding.
fn workload(kind: Workload) -> MockApi {
    let mut binding = (kind == Workload::WithBinding).then(|| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "kubeadm:apiserver-kubelet-client", "resourceVersion": "3"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:kubelet-api-admin"},
        })
    });
    MockApi::new(move |s| {
        let forbidden = || {
            Some((
                StatusCode::FORBIDDEN,
                status_body(403, "Forbidden", "clusterrolebindings is forbidden"),
            ))
        };
        match (s.method.clone(), s.path.as_str()) {
            (Method::GET, "/apis") => Some((
                StatusCode::OK,
                json!({"kind": "APIGroupList", "groups": []}),
            )),
            (_, BINDING | BINDINGS) if kind == Workload::Forbidden => forbidden(),
            (Method::POST, BINDINGS) if let Workload::CreateAnswers(code) = kind => Some((
                StatusCode::from_u16(code).unwrap(),
                status_body(code, "Failure", "the workload cluster said no"),
            )),
            (Method::GET, BINDING) => binding.clone().map(|b| (StatusCode::OK, b)),
            // The body is protobuf (controller/src/apply/kubelet_access.rs); what it decodes
            // to is shown against a real API server (tests/e2e/tests/upgrade_scenario.rs).
            (Method::POST, BINDINGS) => {
                binding = Some(json!({"metadata": {"name": "kubeadm:apiserver-kubelet-client"}}));
                Some((StatusCode::CREATED, binding.clone().unwrap()))
            }
            _ => None,
        }
    })
}

/// The workload cluster requests about ClusterRoleBindings (the preflight's discovery aside).
fn binding_calls(workload: &MockApi) -> Vec<String> {
    workload
        .calls()
        .into_iter()
        .filter(|c| c.contains(BINDINGS))
        .collect()
}

fn context(api: &MockApi, caches: Caches) -> Arc<Context> {
    context_with(api, caches, &workload(Workload::WithoutBinding))
}

fn context_with(api: &MockApi, caches: Caches, workload: &MockApi) -> Arc<Context> {
    let workloads = WorkloadClients::default();
    workloads.insert(NS, "c", "1", workload.client());
    Arc::new(Context::new(Sources {
        client: api.client(),
        caches,
        cvsh: cvsh_config(),
        standby: None,
        workloads,
        claims: Claims::default(),
        gitops: Default::default(),
        watch_namespace: None,
        kube_ovn_namespace: "cpaas-system".into(),
        shard: None,
    }))
}

/// Answers the reads and writes of a step start; `create` answers the clone's POST and
/// `status` the status write.
fn step_start_script(
    create: StatusCode,
    status: StatusCode,
) -> impl FnMut(&Seen) -> Option<Answer> + Send + 'static {
    let mut objects: HashMap<String, Value> = HashMap::new();
    objects.insert(format!("{TEMPLATES}/t"), template("t"));
    move |s| {
        let ok = |v: Value| Some((StatusCode::OK, v));
        match (s.method.clone(), s.path.as_str()) {
            (Method::GET, "/api/v1/namespaces/ns/secrets/c-kubeconfig") => ok(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "c-kubeconfig", "namespace": NS, "resourceVersion": "1"},
                "data": {"value": ""},
            })),
            (Method::GET, p) => objects.get(p).cloned().map(|o| (StatusCode::OK, o)),
            (Method::POST, TEMPLATES) => {
                let name = s.body["metadata"]["name"].as_str().unwrap_or_default();
                let path = format!("{TEMPLATES}/{name}");
                // A 409 means someone created it in between: it exists from now on.
                objects.insert(path, s.body.clone());
                if create == StatusCode::CONFLICT {
                    return Some((create, status_body(409, "AlreadyExists", "exists")));
                }
                Some((create, s.body.clone()))
            }
            (Method::PATCH, KCP) => ok(s.body.clone()),
            (Method::PATCH, p) if p == format!("{REQUESTS}/status") => {
                if status != StatusCode::OK {
                    return Some((
                        status,
                        status_body(status.as_u16(), "InternalError", "etcd timeout"),
                    ));
                }
                let mut ur = s.body.clone();
                ur["metadata"] = json!({"name": REQUEST, "namespace": NS, "resourceVersion": "2"});
                ur["spec"] = json!({"clusterName": "c", "targetVersion": "4.2"});
                ok(ur)
            }
            (Method::POST, EVENTS) => Some((StatusCode::CREATED, s.body.clone())),
            _ => None,
        }
    }
}

fn observed(caches: &Caches, ur: &UpgradeRequest) -> Observed {
    caches.observe(ur, &cvsh_config())
}

/// Request `REQUEST` for cluster `c`, planned against what `caches` hold.
fn planned_request(caches: &Caches) -> UpgradeRequest {
    request(
        "c",
        &observed(
            caches,
            &typed(json!({
                "metadata": {"name": REQUEST, "namespace": NS},
                "spec": {"clusterName": "c", "targetVersion": "4.2"},
            })),
        ),
    )
}

fn setup(create: StatusCode, status: StatusCode) -> (MockApi, Caches, UpgradeRequest) {
    let caches = caches("v1.32.7", "t");
    let ur = planned_request(&caches);
    caches.requests.apply(&Event::Apply(ur.clone()));
    (MockApi::new(step_start_script(create, status)), caches, ur)
}

/// The requests of a step start, in order; `conflict`: the clone's create answered 409.
fn step_start_calls(clone: &str, conflict: bool) -> Vec<String> {
    let mut calls = vec![
        // The hop's preflight: the workload kubeconfig, the template it would clone.
        "GET /api/v1/namespaces/ns/secrets/c-kubeconfig".to_string(),
        format!("GET {TEMPLATES}/t"),
        // The step start: the workload kubeconfig again (for the kubelet-client binding), the
        // source template, the clone (absent), its create.
        "GET /api/v1/namespaces/ns/secrets/c-kubeconfig".to_string(),
        format!("GET {TEMPLATES}/t"),
        format!("GET {TEMPLATES}/{clone}"),
        format!("POST {TEMPLATES}"),
    ];
    if conflict {
        // 409: read what exists, check its image, go on.
        calls.push(format!("GET {TEMPLATES}/{clone}"));
    }
    calls.push(format!("PATCH {KCP}"));
    calls.push(format!("PATCH {REQUESTS}/status"));
    calls
}

fn clone_name(seen: &[Seen]) -> String {
    seen.iter()
        .find(|s| s.method == Method::POST && s.path == TEMPLATES)
        .and_then(|s| s.body["metadata"]["name"].as_str())
        .unwrap_or_else(|| panic!("no clone was created: {seen:#?}"))
        .to_string()
}

/// One reconcile that starts the control-plane step (`create` answers the clone's create);
/// checks the request order and returns what the mock saw and the clone's name.
async fn start_step(create: StatusCode) -> (Vec<Seen>, String) {
    let (api, caches, ur) = setup(create, StatusCode::OK);
    let workload = workload(Workload::WithoutBinding);
    driver::reconcile(Arc::new(ur), context_with(&api, caches, &workload))
        .await
        .expect("reconcile");
    // Before the KCP write, the binding the new nodes' kube-apiserver needs, created once.
    assert_eq!(
        binding_calls(&workload),
        vec![format!("GET {BINDING}"), format!("POST {BINDINGS}")],
        "{:#?}",
        workload.seen()
    );
    let seen = api.seen();
    let clone = clone_name(&seen);
    let conflict = create == StatusCode::CONFLICT;
    assert_eq!(api.calls(), step_start_calls(&clone, conflict), "{seen:#?}");
    (seen, clone)
}

#[tokio::test]
async fn a_step_start_reads_the_template_creates_the_clone_applies_the_kcp_then_writes_status() {
    let (seen, clone) = start_step(StatusCode::CREATED).await;
    let kcp_write = seen.iter().find(|s| s.path == KCP).unwrap();
    assert!(
        kcp_write
            .query
            .contains("fieldManager=upgrade.cpaas.io%2Fcontroller")
            && kcp_write.query.contains("force=true"),
        "server-side apply with our field manager: {}",
        kcp_write.query
    );
    assert_eq!(kcp_write.body["spec"]["version"], "v1.33.7");
    assert_eq!(
        kcp_write.body["spec"]["machineTemplate"]["infrastructureRef"]["name"],
        clone.as_str()
    );
    let status = &seen
        .iter()
        .find(|s| s.path.ends_with("/status"))
        .unwrap()
        .body;
    assert_eq!(status["status"]["plan"][0]["state"], "InProgress");
    // Events only after the status write.
    let last_call = seen.iter().rposition(|s| s.path != EVENTS).unwrap();
    assert!(seen[last_call].path.ends_with("/status"));
    assert!(
        seen.iter().any(|s| s.path == EVENTS),
        "step start is an Event"
    );
    assert!(
        seen.iter()
            .any(|s| s.path == EVENTS && s.body["reason"] == "KubeletClientAccessGranted"),
        "the binding's creation is an Event: {seen:#?}"
    );
}

#[tokio::test]
async fn an_existing_kubelet_client_binding_is_left_alone() {
    let (api, caches, ur) = setup(StatusCode::CREATED, StatusCode::OK);
    let workload = workload(Workload::WithBinding);
    driver::reconcile(Arc::new(ur), context_with(&api, caches, &workload))
        .await
        .expect("reconcile");
    assert_eq!(binding_calls(&workload), vec![format!("GET {BINDING}")]);
    assert!(api.calls().contains(&format!("PATCH {KCP}")));
    assert!(
        !api.seen()
            .iter()
            .any(|s| s.path == EVENTS && s.body["reason"] == "KubeletClientAccessGranted"),
        "nothing was created, nothing is announced"
    );
}

#[tokio::test]
async fn a_refused_kubelet_client_binding_stalls_before_any_write_with_the_command() {
    let (api, caches, ur) = setup(StatusCode::CREATED, StatusCode::OK);
    let workload = workload(Workload::Forbidden);
    driver::reconcile(Arc::new(ur), context_with(&api, caches, &workload))
        .await
        .expect("a stall is recorded, not an error");
    // No clone, no KCP write.
    let (status, stalled) = stalled_writing_only_status(&api);
    assert_eq!(
        stalled["reason"], "KubeletClientAccessRefused",
        "{status:#}"
    );
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("kubectl create clusterrolebinding kubeadm:apiserver-kubelet-client --clusterrole=system:kubelet-api-admin --user=kube-apiserver-kubelet-client"),
        "{message}"
    );
    assert_eq!(
        status["status"]["plan"][0]["state"], "Pending",
        "{status:#}"
    );
}

#[tokio::test]
async fn a_clone_created_by_someone_else_in_between_is_used_not_recreated() {
    start_step(StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn a_failed_status_write_after_the_kcp_write_resumes_without_a_second_clone() {
    let (api, caches, ur) = setup(StatusCode::CREATED, StatusCode::INTERNAL_SERVER_ERROR);
    let ctx = context(&api, caches.clone());
    let err = driver::reconcile(Arc::new(ur.clone()), ctx.clone())
        .await
        .expect_err("the status write failed");
    assert_eq!(err.reason(), "APIServerError");
    let seen = api.seen();
    let clone = clone_name(&seen);
    // Nothing is announced that was not recorded; the binding made in the workload cluster
    // exists whatever happened after, and is announced once (a retry finds it present).
    let events: Vec<&Value> = seen
        .iter()
        .filter(|s| s.path == EVENTS)
        .map(|s| &s.body["reason"])
        .collect();
    assert_eq!(events, vec!["KubeletClientAccessGranted"], "{seen:#?}");
    // The KCP write landed (the watch brings it into the cache); status still says Pending.
    let kcp_write = seen.iter().find(|s| s.path == KCP).unwrap().body.clone();
    let mut landed = kcp("v1.33.7", &clone);
    landed["metadata"]["generation"] = json!(2);
    landed["status"]["observedGeneration"] = json!(1);
    assert_eq!(kcp_write["spec"]["version"], landed["spec"]["version"]);
    caches.kcps.apply(&Event::Apply(typed(landed)));

    let api2 = MockApi::new({
        let mut script = step_start_script(StatusCode::CREATED, StatusCode::OK);
        let clone_path = format!("{TEMPLATES}/{clone}");
        let created = seen
            .iter()
            .find(|s| s.method == Method::POST && s.path == TEMPLATES)
            .unwrap()
            .body
            .clone();
        move |s: &Seen| {
            if s.method == Method::GET && s.path == clone_path {
                return Some((StatusCode::OK, created.clone()));
            }
            script(s)
        }
    });
    let ctx2 = Arc::new(Context::new(Sources {
        client: api2.client(),
        caches: caches.clone(),
        cvsh: cvsh_config(),
        standby: None,
        workloads: {
            let w = WorkloadClients::default();
            w.insert(NS, "c", "1", workload(Workload::WithBinding).client());
            w
        },
        claims: Claims::default(),
        gitops: Default::default(),
        watch_namespace: None,
        kube_ovn_namespace: "cpaas-system".into(),
        shard: None,
    }));
    driver::reconcile(Arc::new(ur), ctx2)
        .await
        .expect("the retry");
    let calls = api2.calls();
    assert!(
        !calls.iter().any(|c| c.starts_with("POST")),
        "no second clone: {calls:#?}"
    );
    assert_eq!(
        calls.last().map(String::as_str),
        Some(format!("PATCH {REQUESTS}/status").as_str()),
        "{calls:#?}"
    );
    let status = &api2
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("/status"))
        .unwrap()
        .body;
    assert_eq!(
        status["status"]["plan"][0]["state"], "InProgress",
        "the landed write is this step's: {status:#}"
    );
}

/// Asserts the reconcile wrote nothing but the request's status, in phase `Stalled`; returns
/// that status and its `Stalled` condition.
fn stalled_writing_only_status(api: &MockApi) -> (Value, Value) {
    let seen = api.seen();
    let writes: Vec<String> = seen
        .iter()
        .filter(|s| s.is_write() && s.path != EVENTS)
        .map(Seen::line)
        .collect();
    assert_eq!(
        writes,
        vec![format!("PATCH {REQUESTS}/status")],
        "{seen:#?}"
    );
    let status = seen
        .iter()
        .find(|s| s.path.ends_with("/status"))
        .unwrap()
        .body
        .clone();
    assert_eq!(status["status"]["phase"], "Stalled", "{status:#}");
    let stalled = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap()
        .clone();
    (status, stalled)
}

#[tokio::test]
async fn a_kubelet_client_binding_create_that_a_retry_cannot_fix_stalls_and_one_that_may_retries() {
    for (code, reason) in [
        (401, Some("WorkloadCredentialsRejected")),
        (422, Some("KubeletClientBindingFailed")),
        (503, None),
    ] {
        let (api, caches, ur) = setup(StatusCode::CREATED, StatusCode::OK);
        let workload = workload(Workload::CreateAnswers(code));
        let result = driver::reconcile(Arc::new(ur), context_with(&api, caches, &workload)).await;
        match reason {
            Some(reason) => {
                result.unwrap_or_else(|e| panic!("{code}: a stall, not an error: {e}"));
                let (_, stalled) = stalled_writing_only_status(&api);
                assert_eq!(stalled["reason"], reason, "{code}: {stalled:#}");
                assert!(
                    stalled["message"]
                        .as_str()
                        .unwrap()
                        .contains("the workload cluster said no"),
                    "{code}: the server's own words: {stalled:#}"
                );
            }
            None => {
                let err = result.expect_err("a 503 is retried");
                assert!(err.is_transient(), "{code}: {err}");
                assert!(
                    !api.calls().contains(&format!("PATCH {KCP}")),
                    "{code}: no KCP write before the binding"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_stall_writes_only_status() {
    let caches = caches("v1.32.7", "t");
    let mut ur = planned_request(&caches);
    // The request names a Cluster that does not exist.
    ur.spec.cluster_name = "missing".into();
    ur.status = None;
    caches.requests.apply(&Event::Apply(ur.clone()));
    let api = MockApi::new(step_start_script(StatusCode::CREATED, StatusCode::OK));
    driver::reconcile(Arc::new(ur), context(&api, caches))
        .await
        .expect("reconcile");
    let (_, stalled) = stalled_writing_only_status(&api);
    assert_eq!(stalled["reason"], "ClusterNotFound");
}

#[tokio::test]
async fn a_request_deleted_mid_reconcile_ends_it_quietly() {
    let (api, caches, ur) = setup(StatusCode::CREATED, StatusCode::NOT_FOUND);
    driver::reconcile(Arc::new(ur), context(&api, caches))
        .await
        .expect("a 404 on the status write is not a failure");
    let seen = api.seen();
    assert_eq!(
        seen.last().map(Seen::line),
        Some(format!("PATCH {REQUESTS}/status")),
        "nothing after the 404, no Event about a request that is gone: {seen:#?}"
    );
}
