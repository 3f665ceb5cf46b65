//! The kind + CAPD suite's management cluster (`make e2e-kind`, tests/e2e/kind/README.md): a kind
//! cluster from `tests/e2e/kind/management.sh`, Cluster API installed in it as pods the way
//! clusterctl lays a provider out (CRDs with contract labels, a Deployment and a webhook Service
//! per provider, webhook configurations pointing at those Services), and upgrade-controller's
//! image and Helm chart installed on top. CAPD's docker backend runs in its pod against the
//! Docker API socket mounted into the kind node.
//!
//! Differences from a clusterctl install, each because of this machine: the managers are static
//! builds of the test control plane's CAPI pins in images FROM scratch (nothing can be pulled;
//! `management.sh` builds them); the webhook serving certificate is made here (no cert-manager
//! image); the four managers share one namespace and one ServiceAccount bound to
//! `cluster-admin` (test infrastructure, not under test: upgrade-controller's own rights are the
//! chart's, and those are what run here).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, LogParams};
use serde_json::{Value, json};

use crate::{chart, harness, project, testenv};

/// Where the managers run.
pub const CAPI_NAMESPACE: &str = "capi-system";
const CAPI_SERVICE_ACCOUNT: &str = "capi-managers";
const WEBHOOK_SECRET: &str = "capi-webhook-serving-cert";

/// The kind management cluster, up, with the managers' images loaded.
pub struct Management {
    pub kubeconfig: PathBuf,
    /// Manager binary name -> image, as `management.sh up` loaded them.
    pub capi_images: BTreeMap<String, String>,
    /// The Docker API socket's URL inside the kind node (CAPD's `DOCKER_HOST`).
    pub node_docker_host: String,
}

fn script() -> PathBuf {
    project::repo_root().join("tests/e2e/kind/management.sh")
}

impl Management {
    /// `management.sh up` (creates the cluster unless it exists, loads kube-proxy and the
    /// managers' images) and points the harness at it ([`harness::use_management`]). Fails,
    /// never skips, when it cannot be done here.
    pub fn up() -> Self {
        let start = Instant::now();
        // Its progress (a cold build, `kind create cluster`) shows as it happens.
        let out = Command::new(script())
            .arg("up")
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("running tests/e2e/kind/management.sh up");
        assert!(
            out.status.success(),
            "management.sh up failed ({}); its messages are above",
            out.status
        );
        let stdout = String::from_utf8(out.stdout).expect("management.sh prints UTF-8");
        let vars: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| {
            vars.get(k)
                .unwrap_or_else(|| panic!("management.sh up printed no {k}:\n{stdout}"))
                .to_string()
        };
        let capi_images = testenv::MANAGERS
            .iter()
            .map(|(m, _)| (m.to_string(), get(&format!("CAPI_IMAGE_{m}"))))
            .collect();
        let this = Self {
            kubeconfig: PathBuf::from(get("KUBECONFIG")),
            capi_images,
            node_docker_host: get("NODE_DOCKER_HOST"),
        };
        eprintln!(
            "kind management cluster up, images loaded, kube-proxy ready in {:.1?}",
            start.elapsed()
        );
        harness::use_management(this.kubeconfig.clone());
        this
    }

    /// Loads `image` of the local container storage into the kind node.
    pub fn load(&self, image: &str) {
        let out = Command::new(script())
            .args(["load", image])
            .output()
            .expect("running tests/e2e/kind/management.sh load");
        assert!(
            out.status.success(),
            "management.sh load {image} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Installs CAPI core, CABPK, KCP and CAPD (their CRDs, Deployments, Services and webhook
    /// configurations; applied server-side, so a second run on the same cluster converges) and
    /// waits until every manager is Ready and its webhooks answer.
    pub async fn install_capi(&self, client: &kube::Client) {
        let start = Instant::now();
        let manifests = harness::build_dir().join("manifests");
        testenv::install_crds(client, &manifests.join("crd"), true)
            .await
            .expect("installing CAPI's CRDs");

        let services: Vec<String> = testenv::MANAGERS
            .iter()
            .map(|(_, p)| format!("{p}-webhook-service"))
            .collect();
        let sans = services
            .iter()
            .flat_map(|s| {
                [
                    format!("{s}.{CAPI_NAMESPACE}.svc"),
                    format!("{s}.{CAPI_NAMESPACE}.svc.cluster.local"),
                ]
            })
            .collect();
        crate::cvo::ensure_namespace(client, CAPI_NAMESPACE)
            .await
            .expect("creating the managers' namespace");
        // A certificate made once per cluster: a second run keeps the first one's, so the
        // running managers and the webhook configurations' CA still agree.
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), CAPI_NAMESPACE);
        let ca_pem = match secrets.get_opt(WEBHOOK_SECRET).await {
            Ok(Some(s)) => s
                .data
                .unwrap_or_default()
                .get("ca.crt")
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .unwrap_or_else(|| {
                    panic!(
                        "Secret {CAPI_NAMESPACE}/{WEBHOOK_SECRET} has no ca.crt: delete it (or the \
                         cluster: tests/e2e/kind/management.sh down) and retry"
                    )
                }),
            Err(e) => panic!("reading Secret {CAPI_NAMESPACE}/{WEBHOOK_SECRET}: {e}"),
            Ok(None) => {
                let (ca, cert, key) =
                    testenv::serving_pair("capi-webhooks", sans).expect("a serving certificate");
                testenv::apply(client, &[secret(&ca, &cert, &key)])
                    .await
                    .expect("creating the webhook certificate");
                ca
            }
        };

        let mut objects = vec![
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": CAPI_SERVICE_ACCOUNT, "namespace": CAPI_NAMESPACE}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "uc-e2e-capi-managers"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": CAPI_SERVICE_ACCOUNT,
                    "namespace": CAPI_NAMESPACE}]}),
        ];
        for ((manager, provider), service) in testenv::MANAGERS.iter().zip(&services) {
            objects.push(self.deployment(manager, provider));
            objects.push(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": service, "namespace": CAPI_NAMESPACE},
                "spec": {"selector": {"app": provider},
                    "ports": [{"port": 443, "targetPort": 9443}]}}));
        }
        testenv::apply(client, &objects)
            .await
            .expect("applying the managers");
        for (_, provider) in testenv::MANAGERS {
            let selector = format!("app={provider}");
            wait_ready(
                client,
                CAPI_NAMESPACE,
                provider,
                &selector,
                Duration::from_secs(240),
            )
            .await;
        }
        for ((_, provider), service) in testenv::MANAGERS.iter().zip(&services) {
            let docs = testenv::read_yaml_docs(&manifests.join(format!("webhook/{provider}.yaml")))
                .expect("reading a provider's webhook manifest");
            let hooks = testenv::service_webhooks(docs, provider, CAPI_NAMESPACE, service, &ca_pem);
            testenv::apply(client, &hooks)
                .await
                .expect("applying a provider's webhook configurations");
        }
        for (api_version, kind) in WEBHOOK_PROBES {
            wait_webhook_answers(client, api_version, kind, Duration::from_secs(60)).await;
        }
        eprintln!(
            "Cluster API installed in the kind cluster in {:.1?}",
            start.elapsed()
        );
    }

    /// One manager's Deployment: the flags the test control plane runs it with, its webhook on
    /// 9443 with the serving certificate mounted, health on 9440; CAPD with the Docker socket.
    fn deployment(&self, manager: &str, provider: &str) -> Value {
        let mut args = vec![
            "--webhook-port=9443".to_string(),
            "--webhook-cert-dir=/tmp/k8s-webhook-server/serving-certs".into(),
            "--health-addr=:9440".into(),
            "--diagnostics-address=:8080".into(),
            "--insecure-diagnostics".into(),
            "--leader-elect=false".into(),
        ];
        if manager == "capi-manager" {
            args.push("--feature-gates=ClusterTopology=true".into());
        }
        let mut volumes = vec![
            json!({"name": "cert", "secret": {"secretName": WEBHOOK_SECRET}}),
            json!({"name": "tmp", "emptyDir": {}}),
        ];
        let mut mounts = vec![
            json!({"name": "tmp", "mountPath": "/tmp"}),
            json!({"name": "cert", "mountPath": "/tmp/k8s-webhook-server/serving-certs",
                "readOnly": true}),
        ];
        let mut env = vec![];
        if manager == "capd-manager" {
            let socket = self
                .node_docker_host
                .strip_prefix("unix://")
                .expect("a unix socket");
            let dir = socket.rsplit_once('/').expect("a socket path").0;
            volumes.push(json!({"name": "docker", "hostPath": {"path": dir}}));
            mounts.push(json!({"name": "docker", "mountPath": dir}));
            env.push(json!({"name": "DOCKER_HOST", "value": self.node_docker_host}));
        }
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": provider, "namespace": CAPI_NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": provider}},
                "template": {
                    "metadata": {"labels": {"app": provider}},
                    "spec": {
                        "serviceAccountName": CAPI_SERVICE_ACCOUNT,
                        "containers": [{
                            "name": "manager",
                            "image": self.capi_images[manager],
                            "imagePullPolicy": "Never",
                            "args": args,
                            "env": env,
                            "ports": [{"containerPort": 9443, "name": "webhook"}],
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9440}},
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 9440},
                                "failureThreshold": 6},
                            "volumeMounts": mounts,
                        }],
                        "volumes": volumes,
                    },
                },
            },
        })
    }
}

/// One kind per provider whose create its webhooks see: a Ready manager is not yet a reachable
/// webhook (kube-proxy programs the Service once its EndpointSlice lists the pod, and until then
/// rejects connections), and a configuration just applied reaches the API server's webhook
/// dispatcher a moment later.
const WEBHOOK_PROBES: [(&str, &str); 4] = [
    (crate::capi::CLUSTER_V1BETA1, "Cluster"),
    (crate::capi::BOOTSTRAP_V1BETA1, "KubeadmConfig"),
    (crate::capi::CONTROLPLANE_V1BETA1, "KubeadmControlPlane"),
    (crate::capi::INFRA_V1BETA1, "DockerCluster"),
];

/// Waits until a dry-run create of an empty `kind` is answered three times in a row by the
/// admission chain itself: admitted, or refused with a 4xx that is not "failed calling webhook"
/// (the empty objects are refused by a webhook or, after the defaulting webhook, by the schema).
/// Anything else (no connection, 5xx, 429) starts the count again.
async fn wait_webhook_answers(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    timeout: Duration,
) {
    let api = crate::capi::api(client, "default", api_version, kind);
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": "uc-e2e-webhook-probe", "namespace": "default"}, "spec": {},
    }))
    .expect("a probe object");
    let params = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let start = Instant::now();
    let mut answered = 0;
    loop {
        let last = match api.create(&params, &obj).await {
            Ok(_) => None,
            Err(kube::Error::Api(e))
                if (400..500).contains(&e.code)
                    && e.code != 429
                    && !e.message.contains("failed calling webhook") =>
            {
                None
            }
            Err(e) => Some(e),
        };
        match last {
            None => {
                answered += 1;
                if answered == 3 {
                    return;
                }
            }
            Some(e) => {
                answered = 0;
                if start.elapsed() > timeout {
                    panic!(
                        "the webhooks of {kind} did not answer within {timeout:?}: {e}\n{}",
                        pods_report(client, CAPI_NAMESPACE, "app").await
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes the namespaces named `<prefix>*` (an earlier run's, and its platform namespace),
/// their Clusters first ([`harness::teardown`]), and waits until they are gone
/// ([`wait_namespaces_gone`]). One already Terminating is only waited for.
pub async fn delete_leftover_namespaces(client: &kube::Client, prefix: &str, timeout: Duration) {
    for ns in &namespaces_named(client, prefix).await {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if ns.metadata.deletion_timestamp.is_some() {
            eprintln!("namespace {name}, left by an earlier run, is being deleted");
            continue;
        }
        eprintln!("deleting namespace {name}, left by an earlier run");
        // Its requests' finalizer belongs to a controller that is gone: released, as a failed
        // test's teardown does.
        harness::teardown(client, &name, &[], &[]).await;
    }
    wait_namespaces_gone(client, prefix, timeout).await;
}

/// Waits until no namespace named `<prefix>*` is left. One still there at `timeout` fails the
/// test with its status (what it still holds) and, for a control-plane DockerMachine CAPD can
/// no longer delete, the command that releases it.
pub async fn wait_namespaces_gone(client: &kube::Client, prefix: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let left = namespaces_named(client, prefix).await;
        if left.is_empty() {
            return;
        }
        if start.elapsed() > timeout {
            let mut report = String::new();
            for ns in &left {
                let name = ns.metadata.name.clone().unwrap_or_default();
                let conditions = ns
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .map(|cs| {
                        cs.iter()
                            .filter(|c| c.status == "True")
                            .map(|c| format!("{}: {}", c.type_, c.message.as_deref().unwrap_or("")))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                report.push_str(&format!("\n  {name}: {conditions:?}"));
                report.push_str(&stuck_docker_machines(client, &name).await);
            }
            panic!("namespaces not gone within {timeout:?}:{report}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn namespaces_named(client: &kube::Client, prefix: &str) -> Vec<Namespace> {
    Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("listing namespaces")
        .items
        .into_iter()
        .filter(|n| {
            n.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

/// The DockerMachines of `ns` being deleted, with the fix for the case
/// [`harness::delete_clusters`] describes (the namespace was deleted before its Cluster).
async fn stuck_docker_machines(client: &kube::Client, ns: &str) -> String {
    let machines = crate::capi::api(client, ns, crate::capi::INFRA_V1BETA1, "DockerMachine");
    let Ok(list) = machines.list(&ListParams::default()).await else {
        return String::new();
    };
    let mut out = String::new();
    for m in list
        .items
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_some())
    {
        let name = m.metadata.name.clone().unwrap_or_default();
        out.push_str(&format!(
            "\n    DockerMachine {name} is being deleted; if its DockerCluster is gone (CAPD's log: \"DockerCluster is not available yet\") and so is its container, the namespace was deleted before its Cluster and nothing is left to clean up; release it with `kubectl -n {ns} patch dockermachine {name} --type merge -p '{{\"metadata\":{{\"finalizers\":null}}}}'`"
        ));
    }
    out
}

fn secret(ca: &str, cert: &str, key: &str) -> Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": WEBHOOK_SECRET, "namespace": CAPI_NAMESPACE},
        "data": {"ca.crt": b64(ca), "tls.crt": b64(cert), "tls.key": b64(key)}})
}

/// Waits until Deployment `ns/name` has rolled out ([`rolled_out`]) and returns it; on timeout
/// fails with the states and logs of its pods (those matching `selector`).
async fn wait_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    selector: &str,
    timeout: Duration,
) -> Deployment {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        let d = deployments.get(name).await.expect("reading a Deployment");
        if rolled_out(&d) {
            return d;
        }
        if start.elapsed() > timeout {
            panic!(
                "{ns}/{name} not Ready within {timeout:?}:\n{}",
                pods_report(client, ns, selector).await
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether Deployment `d` has rolled out: its controller saw the current spec, and every one of
/// its replicas is updated and Ready (no old pod left).
pub fn rolled_out(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    status.observed_generation == d.metadata.generation
        && status.updated_replicas == Some(want)
        && status.ready_replicas == Some(want)
        && status.replicas == Some(want)
}

/// The phase, container states and last log lines of the pods matching `selector`.
pub async fn pods_report(client: &kube::Client, ns: &str, selector: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut report = String::new();
    let list = match pods.list(&ListParams::default().labels(selector)).await {
        Ok(l) => l,
        Err(e) => return format!("listing pods {selector}: {e}"),
    };
    for pod in list {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = serde_json::to_string(&pod.status).unwrap_or_default();
        let logs = pods
            .logs(
                &name,
                &LogParams {
                    tail_lines: Some(30),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| format!("(no logs: {e})"));
        report.push_str(&format!("pod {name}: {status}\n{logs}\n"));
    }
    report
}

/// upgrade-controller as an operator installs it: `helm install` of `charts/upgrade-controller`
/// with `image` (already loaded into the node), watching `ns` and pointed at `platform`'s
/// ClusterVersionShadows, everything else at the chart's defaults (two replicas, leader
/// election, the webhook, the version guard). Waits until both replicas are Ready.
pub async fn install_controller(
    client: &kube::Client,
    ns: &str,
    image: &str,
    platform: &crate::platform::Platform,
) -> chart::Installed {
    let (repository, tag) = image.rsplit_once(':').expect("an image with a tag");
    let start = Instant::now();
    let release = chart::Installed::install(
        ns,
        ns,
        &[
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            "image.pullPolicy=Never".into(),
            format!("watchNamespace={ns}"),
            format!("cvsh.namespace={}", platform.namespace),
            "cvsh.mapping=namespaced-name".into(),
        ],
    );
    // The chart's Deployment is named after the release.
    let selector = format!("app.kubernetes.io/instance={ns}");
    let d = wait_ready(client, ns, ns, &selector, Duration::from_secs(180)).await;
    let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(1);
    eprintln!(
        "helm install {ns}: {replicas} replicas of {image} Ready in {:.1?}",
        start.elapsed()
    );
    release
}
