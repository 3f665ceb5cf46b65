//! The controller deployed as it really runs (test tier 5): the image `make image` builds, the
//! chart installed by `helm install` (CRDs, ServiceAccount, ClusterRole and binding, Services),
//! and the pod of the Deployment it created run by podman the way the kubelet runs it
//! ([`e2e::image::PodSpec`]), taking the demo cluster (4.0, Kubernetes 1.31, towards 4.3)
//! through preflight, Phase 1 and its first hop (the whole upgrade is `upgrade_engine.rs`'s;
//! here what matters is that the image, run as the pod, does it). Also: the chart lints, and
//! its values schema refuses what it does not know.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::engine::{self, start_run};
use e2e::image::{self, Image, PodSpec, Usage};
use e2e::{assert, audit, capi, chart, harness, project};
use kube::api::Api;
use serde_json::{Value, json};
use upgrade_controller::api::{StepState, UpgradeRequest};

fn git_head() -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(project::repo_root())
        .output()
        .expect("git rev-parse HEAD");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_runs_as_the_charts_pod_through_preflight_phase_1_and_a_hop() {
    image::require_tools();
    let client = harness::client().await;
    let run = start_run(&client, "incluster", json!({})).await;
    let ns = run.ns.to_string();

    // The image: a static binary and a CA bundle on an empty base, labelled.
    let image = Image::build(&format!("localhost/upgrade-controller:e2e-{ns}"));
    assert_eq!(
        image.label("org.opencontainers.image.version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let revision = image.label("org.opencontainers.image.revision").unwrap();
    assert!(
        revision.starts_with(&git_head()),
        "revision label {revision}"
    );
    assert_eq!(image.inspect["Config"]["User"], "65532:65532");
    let files = image.files();
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        ["/etc/ssl/certs/ca-certificates.crt", "/upgrade-controller"],
        "the image holds the binary and the CA bundle, nothing else (no shell, no libc)"
    );
    let size_mib = image.size() as f64 / (1024.0 * 1024.0);
    eprintln!("image {}: {size_mib:.1} MiB", image.reference);
    assert!(size_mib < 64.0, "image of {size_mib:.1} MiB");

    // helm install, as an operator would, pointed at that image and at this test's platform.
    let (metrics_port, webhook_port) = (image::free_port(), image::free_port());
    let release = chart::Installed::install(
        &ns,
        &ns,
        &[
            format!("image.repository={}", image.repository()),
            format!("image.tag={}", image.tag()),
            format!("watchNamespace={ns}"),
            format!("cvsh.namespace={}", run.platform.namespace),
            "cvsh.mapping=namespaced-name".into(),
            format!("metrics.port={metrics_port}"),
            format!("webhook.port={webhook_port}"),
        ],
    );
    let manifest = release.manifest();
    let kinds: Vec<&str> = manifest.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ValidatingAdmissionPolicy",
        "ValidatingWebhookConfiguration",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(&kind), "helm installed no {kind}: {kinds:?}");
    }
    // The chart's CRDs are on the API server (helm creates those that are missing and keeps
    // those an earlier suite installed from config/crd, the same files).
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for entry in
        std::fs::read_dir(project::repo_root().join("charts/upgrade-controller/crds")).unwrap()
    {
        let name = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".yaml")
            .to_string();
        crds.get(&name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} of the chart: {e}"));
    }
    // The webhook configuration calls the webhook through its Service's cluster IP, which
    // nothing routes on this machine (no kube-proxy; and no traffic may leave loopback): it
    // goes, and the pod still serves the webhook on its mounted certificate.
    chart::webhook_configurations(&client)
        .delete(&release.name, &Default::default())
        .await
        .expect("deleting the release's webhook configuration");

    // The Deployment as the API server holds it is what the kubelet would run.
    let deployment = image::installed_deployment(&client, &release).await;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], image.reference.as_str());
    let spec = PodSpec::from_deployment(&client, &deployment, &format!("{ns}-pod")).await;

    // Name resolution and TLS by name in the static binary: `plan` reaches the API server as
    // `localhost` (getaddrinfo through the /etc/hosts podman mounts, as the kubelet does; the
    // serving certificate names localhost) with the pod's token.
    let plan = spec.run_once(
        &format!("{ns}-plan"),
        &[("KUBERNETES_SERVICE_HOST", "localhost")],
        &[
            "plan",
            "--cluster",
            "demo",
            "--namespace",
            &ns,
            "--target",
            "4.3",
        ],
    );
    let table = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success() && table.contains("v1.32.11-2") && table.contains("v1.34.5-3"),
        "plan in the image ({}):\n{table}{}",
        plan.status,
        String::from_utf8_lossy(&plan.stderr)
    );

    // The pod. Everything below is what the container did with the chart's rights alone.
    let mut pod = spec.start(&format!("{ns}-controller"));
    let started = Instant::now();
    let usage = Usage::start(pod.pid());
    let ready = pod
        .wait_probe(&spec.probes["readinessProbe"], Duration::from_secs(60))
        .await;
    pod.wait_probe(&spec.probes["livenessProbe"], Duration::from_secs(5))
        .await;
    eprintln!("readiness probe passed {ready:.1?} after podman run");
    let metrics = project::http_get(&format!(
        "http://127.0.0.1:{}/metrics",
        spec.ports["metrics"]
    ))
    .await
    .expect("/metrics on the named metrics port");
    assert!(metrics.contains("upgrade_controller_reconciles_total"));

    // Preflight, Phase 1 and the first hop: the KubeadmControlPlane written by the controller's
    // field manager and rolled out, then the pools' step under way.
    run.wait_for_step(&client, 1).await;
    let took = started.elapsed();
    let ur = Api::<UpgradeRequest>::namespaced(client.clone(), &ns)
        .get("to-4-3")
        .await
        .unwrap();
    let status = ur.status.as_ref().unwrap();
    assert_eq!(
        status.plan[0].state,
        StepState::Succeeded,
        "{:?}",
        status.plan[0]
    );
    assert_eq!(status.plan[0].kubernetes_version, "v1.32.11-2");
    engine::assert_phase_one(&client, &run.platform, &ur).await;
    let writes = run.writes.lock().unwrap().clone();
    assert::writes_in_order(
        &writes,
        "KubeadmControlPlane",
        &[engine::START, "v1.32.11-2"],
    );
    let kcp =
        serde_json::to_value(capi::kcp_api(&client, &ns).get(engine::KCP).await.unwrap()).unwrap();
    let ours = kcp["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["manager"] == upgrade_controller::FIELD_MANAGER && m["operation"] == "Apply")
        .unwrap_or_else(|| {
            panic!(
                "no server-side apply of ours on the KCP: {}",
                kcp["metadata"]
            )
        });
    assert!(
        ours["fieldsV1"]["f:spec"]["f:version"].is_object(),
        "the controller's apply owns spec.version: {ours}"
    );
    assert!(
        pod.is_running(),
        "the container exited during the upgrade; log {}",
        pod.log.display()
    );
    let used = usage.summary();
    let stats = image::podman()
        .args([
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}",
            &pod.name,
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!(
        "preflight, Phase 1 and the first hop in the container: {took:.0?}; controller peak RSS {:.1} MiB (last {:.1} MiB), \
         CPU {:.0?} over {:.0?} = {:.0} millicores average, {:.0} in the busiest 10 s; podman stats: {stats}",
        used.peak_rss_mib,
        used.last_rss_mib,
        used.cpu,
        used.wall,
        used.avg_millicores,
        used.peak_millicores
    );
    let limit = spec.memory_limit.expect("the chart sets a memory limit");
    assert!(
        used.peak_rss_mib * 1024.0 * 1024.0 < limit as f64,
        "peak RSS {:.1} MiB reached the chart's memory limit",
        used.peak_rss_mib
    );

    // Who did it, from the API server's side: every request the controller sent was the
    // ServiceAccount's, none was refused, and Phase 1 and the status writes were among them.
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let user = format!("system:serviceaccount:{ns}:{sa}");
    let sent: Vec<audit::Entry> = audit::entries()
        .into_iter()
        .filter(|e| {
            e.by_controller() && (e.namespace == ns || e.namespace == run.platform.namespace)
        })
        .collect();
    for e in &sent {
        assert_eq!(
            e.user, user,
            "a request not sent with the pod's token: {e:?}"
        );
        assert!(
            e.code < 400 || e.code == 404 || e.code == 409,
            "refused: {e:?}"
        );
    }
    let cvsh = run.platform.cvsh_name("demo");
    assert!(
        sent.iter()
            .any(|e| e.resource == "clusterversionshadows" && e.name == cvsh && e.verb == "patch"),
        "no Phase 1 write by {user}"
    );
    assert!(
        sent.iter().any(|e| e.resource == "upgraderequests"
            && e.subresource == "status"
            && e.verb == "patch"),
        "no status write by {user}"
    );
    let log = std::fs::read_to_string(&pod.log).unwrap();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the controller hit an RBAC denial:\n{log}"
    );

    // Deleting the pod: SIGTERM, and the controller stops by itself well within the grace
    // period.
    let (stopped, code) = pod.stop();
    eprintln!("SIGTERM -> exit {code:?} in {stopped:.1?}");
    assert_eq!(
        code,
        Some(0),
        "exit status after SIGTERM; log {}",
        pod.log.display()
    );
    assert!(stopped < spec.grace, "stopping took {stopped:?}");

    drop(pod);
    drop(release);
    run.finish(&client).await;
}

#[test]
fn the_chart_lints_and_its_values_schema_refuses_what_it_does_not_know() {
    let lint = chart::helm()
        .args(["lint", "--strict", "charts/upgrade-controller"])
        .output()
        .expect("running helm lint");
    assert!(
        lint.status.success(),
        "helm lint --strict:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // A misspelt key, a misspelt nested key, a value outside its enum or range: refused, naming
    // the value.
    for (set, named) in [
        ("imagee.tag=v1", "imagee"),
        ("metrics.serviceMonitor.enable=true", "enable"),
        ("webhook.certificate.secretname=x", "secretname"),
        ("logFormat=text", "logFormat"),
        ("metrics.port=0", "port"),
        ("capiApiVersion=v1alpha4", "capiApiVersion"),
        ("rbac.scope=Namespaces", "scope"),
    ] {
        let out = chart::template_output(&[set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(named),
            "--set {set}: {err}"
        );
    }

    // The defaults: probes on the named metrics port, which the Service targets; the image's
    // numeric user; no ServiceMonitor.
    let docs = chart::render("r", "uc-system", &[]);
    let pod = &docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        pod["securityContext"]["runAsUser"], 65532,
        "{}",
        pod["securityContext"]
    );
    assert_eq!(pod["securityContext"]["runAsGroup"], 65532);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--metrics-bind-address=0.0.0.0:8080"))
    );
    assert!(
        c["ports"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "metrics", "containerPort": 8080}))
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(
            c[probe]["httpGet"],
            json!({"path": path, "port": "metrics"}),
            "{probe}"
        );
    }
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "r-metrics")
        .expect("the metrics Service");
    assert_eq!(
        service["spec"]["ports"][0],
        json!({"name": "metrics", "port": 8080, "targetPort": "metrics"})
    );
    assert!(!docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
    let limits = &c["resources"]["limits"];
    assert!(limits["memory"].is_string(), "a memory limit: {limits}");

    // The ServiceMonitor when asked for, selecting only the metrics Service.
    let docs = chart::render(
        "r",
        "uc-system",
        &[
            "metrics.serviceMonitor.enabled=true".into(),
            "metrics.serviceMonitor.labels.release=prom".into(),
        ],
    );
    let monitor = docs
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("a ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "metrics"
    );
    assert_eq!(
        service["metadata"]["labels"]["app.kubernetes.io/component"],
        "metrics"
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0],
        json!({"port": "metrics", "path": "/metrics", "interval": "30s"})
    );

    // The chart's default image tag is what `make image` tags: the workspace's version.
    let chart_yaml: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(project::repo_root().join("charts/upgrade-controller/Chart.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_chart_runs_two_replicas_per_shard_each_shard_with_its_own_lease() {
    let find = |docs: &[Value], kind: &str, name: &str| -> Value {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let args = |d: &Value| -> Vec<String> {
        d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };

    // The defaults: one Deployment of two replicas rolling one at a time behind a PDB, electing
    // a leader on Lease `r` with the pod's name, which a namespaced Role lets it renew.
    let docs = chart::render("r", "uc-system", &[]);
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 1);
    let d = find(&docs, "Deployment", "r");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    let a = args(&d);
    for flag in [
        "--leader-elect",
        "--leader-election-lease=r",
        "--leader-election-lease-duration=15",
        "--leader-election-renew-before=5",
    ] {
        assert!(a.contains(&flag.to_string()), "{flag} in {a:?}");
    }
    assert!(!a.iter().any(|f| f.starts_with("--shard-selector")));
    let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array().unwrap().contains(&json!({"name": "POD_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})),
        "{env}"
    );
    let selector = d["spec"]["selector"]["matchLabels"].clone();
    assert_eq!(
        selector,
        json!({"app.kubernetes.io/name": "upgrade-controller", "app.kubernetes.io/instance": "r"}),
        "the selector of earlier chart versions (it is immutable)"
    );
    let pdb = find(&docs, "PodDisruptionBudget", "r");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], selector);
    let role = find(&docs, "Role", "r-leader-election");
    assert_eq!(role["metadata"]["namespace"], "uc-system");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "verbs": ["get", "create", "patch", "delete"]}])
    );
    let binding = find(&docs, "RoleBinding", "r-leader-election");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "r", "namespace": "uc-system"}])
    );

    // Two shards: a Deployment, a Lease and a PDB each, selecting only their own pods.
    let docs = chart::render(
        "r",
        "uc-system",
        &[
            "shards[0].name=gold".into(),
            "shards[0].selector=upgrade.cpaas.io/shard=gold".into(),
            "shards[1].name=rest".into(),
            "shards[1].selector=!upgrade.cpaas.io/shard".into(),
        ],
    );
    assert_eq!(docs.iter().filter(|d| d["kind"] == "Deployment").count(), 2);
    for (shard, selector) in [
        ("gold", "upgrade.cpaas.io/shard=gold"),
        ("rest", "!upgrade.cpaas.io/shard"),
    ] {
        let name = format!("r-{shard}");
        let d = find(&docs, "Deployment", &name);
        let a = args(&d);
        assert!(
            a.contains(&format!("--leader-election-lease={name}")),
            "{a:?}"
        );
        assert!(a.contains(&format!("--shard-selector={selector}")), "{a:?}");
        assert_eq!(
            d["spec"]["selector"]["matchLabels"]["upgrade.cpaas.io/shard"],
            shard
        );
        assert_eq!(
            d["spec"]["template"]["metadata"]["labels"]["upgrade.cpaas.io/shard"],
            shard
        );
        let pdb = find(&docs, "PodDisruptionBudget", &name);
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"],
            d["spec"]["selector"]["matchLabels"]
        );
    }

    // What cannot work is refused at install, naming the values.
    for (set, says) in [
        (
            vec!["leaderElection.enabled=false"],
            "replicas > 1 needs leaderElection.enabled",
        ),
        (
            vec!["leaderElection.renewBefore=15"],
            "must be less than leaderElection.leaseDuration",
        ),
        (
            vec![
                "shards[0].name=a",
                "shards[0].selector=x=1",
                "shards[1].name=a",
                "shards[1].selector=x=2",
            ],
            "appears twice",
        ),
        (vec!["shards[0].name=A_b", "shards[0].selector=x=1"], "name"),
        (vec!["replicas=0"], "replicas"),
    ] {
        let out = chart::template_output(&set);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set:?} was accepted");
        assert!(err.contains(says), "{set:?}: {err}");
    }
    // One replica without election is fine.
    let out = chart::template_output(&["replicas=1", "leaderElection.enabled=false"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
