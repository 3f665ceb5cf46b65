//! The Helm chart on the test control plane: rendered by the helm the control plane's build
//! script pins, and the ServiceAccount it creates turned into a kubeconfig, so tests run the
//! controller with exactly the rights the chart grants.

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::{Value, json};

use crate::harness;
use crate::project::{self, Controller};
use crate::site::Site;

/// The chart rendered for one site (its namespace, its platform), as the API objects it
/// creates.
pub struct Release {
    pub name: String,
    /// The kinds rendered, in the order helm printed them.
    pub kinds: Vec<String>,
    /// ClusterRole and ClusterRoleBinding.
    pub cluster_scoped: Vec<Value>,
    /// ServiceAccount, Deployment, the metrics Service, and the webhook's Secret and Service.
    pub namespaced: Vec<Value>,
    /// The version guard (ValidatingAdmissionPolicy and binding) and the webhook
    /// configuration: rendered, not applied here, since they would guard every suite's
    /// namespaces; `version_guard.rs` and `admission_webhook.rs` apply them bound to their own
    /// namespace.
    pub admission: Vec<Value>,
}

impl Release {
    /// `helm template` for `site`: watching its namespace, pointed at its platform.
    pub fn for_site(site: &Site) -> Self {
        let docs = render(&site.ns, &site.ns, &site_values(site));
        let kinds = docs
            .iter()
            .filter_map(|d| d["kind"].as_str().map(str::to_string))
            .collect();
        let (admission, docs): (Vec<Value>, Vec<Value>) = docs
            .into_iter()
            .partition(|d| d["kind"].as_str().unwrap_or("").starts_with("Validating"));
        let (cluster_scoped, namespaced) = docs
            .into_iter()
            .partition(|d| d["kind"].as_str().unwrap_or("").starts_with("Cluster"));
        Self {
            name: site.ns.to_string(),
            kinds,
            cluster_scoped,
            namespaced,
            admission,
        }
    }

    /// The Deployment's container args.
    pub fn args(&self) -> Vec<String> {
        container_args(deployment_of(&self.namespaced))
    }

    /// Applies `cluster_scoped` (the rendered ones, or a variant of them) and the namespaced
    /// objects, then runs the controller as the Deployment would: its args, its
    /// ServiceAccount's token.
    pub async fn run(&self, site: &Site, cluster_scoped: &[Value]) -> Controller {
        crate::testenv::apply(&site.client, cluster_scoped)
            .await
            .expect("applying the chart's cluster-scoped objects");
        if crate::capi::create_all(&site.client, &site.ns, &self.namespaced)
            .await
            .is_err()
        {
            // Already created by an earlier run of this release.
        }
        start_as_pod(
            &site.client,
            &site.ns,
            &self.namespaced,
            &format!("{}-chart", site.ns),
        )
        .await
    }

    /// Deletes the cluster-scoped objects (the namespaced ones go with the namespace).
    pub async fn delete(&self, client: &kube::Client) {
        for (kind, plural) in [
            ("ClusterRole", "clusterroles"),
            ("ClusterRoleBinding", "clusterrolebindings"),
        ] {
            let api: Api<DynamicObject> = Api::all_with(
                client.clone(),
                &kube::core::ApiResource::from_gvk_with_plural(
                    &kube::core::GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
                    plural,
                ),
            );
            let _ = api.delete(&self.name, &DeleteParams::default()).await;
        }
    }
}

/// The values that point the chart at `site`: watching its namespace, its platform namespace
/// for ClusterVersionShadows (mapped by namespace) and for the Kube-OVN AppRelease.
pub fn site_values(site: &Site) -> Vec<String> {
    vec![
        format!("watchNamespace={}", site.ns),
        format!("cvsh.namespace={}", site.platform.namespace),
        "cvsh.mapping=namespaced-name".to_string(),
        format!("kubeOvn.namespace={}", site.platform.namespace),
    ]
}

fn deployment_of(objects: &[Value]) -> &Value {
    objects
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the chart renders a Deployment")
}

fn container_args(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Runs the controller on this machine as the chart's pod (the Deployment among `objects`,
/// release namespace `ns`) would run: its args and its ServiceAccount's token, so it has
/// exactly the rights the chart grants.
async fn start_as_pod(
    client: &kube::Client,
    ns: &str,
    objects: &[Value],
    label: &str,
) -> Controller {
    let sa = deployment_of(objects)["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let kubeconfig = service_account_kubeconfig(client, ns, sa).await;
    Controller::start_as(label, &kubeconfig, &local_args(objects, ns, label))
}

/// The Deployment's args for a process on this machine: the webhook on a free loopback port,
/// with the certificate the chart generated written where the Secret would be mounted, and the
/// Lease namespace the pod's `POD_NAMESPACE` (downward API) would give.
fn local_args(objects: &[Value], ns: &str, label: &str) -> Vec<String> {
    let secret = objects
        .iter()
        .find(|d| d["kind"] == "Secret" && d["type"] == "kubernetes.io/tls");
    container_args(deployment_of(objects))
        .into_iter()
        .map(|a| {
            if a.starts_with("--webhook-bind-address=") {
                "--webhook-bind-address=127.0.0.1:0".to_string()
            } else if a.starts_with("--webhook-cert-dir=") {
                let secret = secret.expect("the chart renders the webhook's certificate");
                let dir = harness::env()
                    .kubeconfig
                    .with_file_name(format!("webhook-{label}"));
                std::fs::create_dir_all(&dir).unwrap();
                for key in ["tls.crt", "tls.key"] {
                    use base64::Engine;
                    let pem = base64::engine::general_purpose::STANDARD
                        .decode(secret["data"][key].as_str().unwrap())
                        .unwrap();
                    std::fs::write(dir.join(key), pem).unwrap();
                }
                format!("--webhook-cert-dir={}", dir.display())
            } else {
                a
            }
        })
        .flat_map(|a| {
            if a == "--leader-elect" {
                vec![a, format!("--leader-election-namespace={ns}")]
            } else {
                vec![a]
            }
        })
        .collect()
}

/// The helm of the test control plane's build, run in the repository root.
pub fn helm() -> std::process::Command {
    let helm = harness::build_dir().join("bin/helm");
    assert!(
        helm.exists(),
        "{} is missing: the test control plane's build predates helm in tests/e2e/testenv/build.sh; run `make testenv-down testenv-build` and retry",
        helm.display()
    );
    let mut cmd = std::process::Command::new(&helm);
    cmd.current_dir(project::repo_root());
    cmd
}

/// Renders the Helm chart with `helm template` for release `release` in `ns`.
pub fn render(release: &str, ns: &str, set: &[String]) -> Vec<Value> {
    let mut cmd = helm();
    cmd.args([
        "template",
        release,
        "charts/upgrade-controller",
        "--namespace",
        ns,
    ]);
    for s in set {
        cmd.args(["--set", s]);
    }
    objects(&mut cmd, "helm template")
}

/// `helm template` of release `r` with `set`, as helm ran it (for the refusals: a value the
/// schema or a template's `fail` refuses).
pub fn template_output(set: &[&str]) -> std::process::Output {
    let mut cmd = helm();
    cmd.args(["template", "r", "charts/upgrade-controller"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    cmd.output().expect("running helm template")
}

/// Runs `cmd` (a helm command printing manifests) and returns the objects it printed.
fn objects(cmd: &mut std::process::Command, what: &str) -> Vec<Value> {
    use serde::Deserialize;
    let out = project::run_ok(cmd, what);
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// ValidatingWebhookConfigurations (cluster-scoped).
pub fn webhook_configurations(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingWebhookConfiguration",
            ),
            "validatingwebhookconfigurations",
        ),
    )
}

/// A token for ServiceAccount `ns/name` (TokenRequest: one hour, the API server's audience),
/// what the kubelet projects into a pod.
pub async fn service_account_token(client: &kube::Client, ns: &str, name: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let tr = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(
            name,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("a token for ServiceAccount {ns}/{name}: {e}"));
    tr.status.expect("token status").token
}

/// A kubeconfig for the test control plane that authenticates as ServiceAccount `ns/name`.
pub async fn service_account_kubeconfig(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> std::path::PathBuf {
    let token = service_account_token(client, ns, name).await;
    let admin = std::fs::read_to_string(&harness::env().kubeconfig).unwrap();
    let mut kc: Value = serde_yaml_ng::from_str(&admin).unwrap();
    for user in kc["users"].as_array_mut().unwrap() {
        user["user"] = json!({"token": token});
    }
    let path = harness::env()
        .kubeconfig
        .with_file_name(format!("kubeconfig-{ns}-{name}"));
    std::fs::write(&path, serde_yaml_ng::to_string(&kc).unwrap()).unwrap();
    path
}

/// A release made by `helm install` of the chart on the test control plane; `helm uninstall`ed
/// on drop (its ClusterRole and binding are cluster-scoped, so they would outlive the test's
/// namespace).
pub struct Installed {
    pub name: String,
    pub namespace: String,
}

impl Installed {
    /// `helm install <name> charts/upgrade-controller -n <ns> --set ...` (the chart's CRDs from
    /// `crds/` included), as an operator would run it. Fails the test with helm's output when
    /// helm refuses the values or the API server refuses an object.
    pub fn install(name: &str, ns: &str, set: &[String]) -> Self {
        let mut cmd = helm();
        cmd.args([
            "install",
            name,
            "charts/upgrade-controller",
            "--namespace",
            ns,
        ])
        .arg("--kubeconfig")
        .arg(harness::kubeconfig());
        for s in set {
            cmd.args(["--set", s]);
        }
        project::run_ok(&mut cmd, "helm install");
        Self {
            name: name.to_string(),
            namespace: ns.to_string(),
        }
    }

    /// What `helm get manifest` says the release created, as API objects.
    pub fn manifest(&self) -> Vec<Value> {
        let mut cmd = helm();
        cmd.args([
            "get",
            "manifest",
            &self.name,
            "--namespace",
            &self.namespace,
        ])
        .arg("--kubeconfig")
        .arg(harness::kubeconfig());
        objects(&mut cmd, "helm get manifest")
    }

    /// Runs the controller on this machine as the installed Deployment's pod would: the args
    /// and ServiceAccount of the Deployment helm created, with that ServiceAccount's token.
    pub async fn run_as_its_pod(&self, client: &kube::Client) -> Controller {
        start_as_pod(
            client,
            &self.namespace,
            &self.manifest(),
            &format!("{}-installed", self.name),
        )
        .await
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let out = helm()
            .args(["uninstall", &self.name, "--namespace", &self.namespace])
            .arg("--kubeconfig")
            .arg(harness::kubeconfig())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "helm uninstall {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("running helm uninstall {}: {e}", self.name),
        }
    }
}

/// Whether `client`'s user may `verb` `resource` of `group` in `namespace` ("" = in every
/// namespace, or a cluster-scoped resource), as the API server's authorizer answers it
/// (SelfSubjectAccessReview, `kubectl auth can-i`).
pub async fn can_i(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap_or_else(|e| panic!("SelfSubjectAccessReview {verb} {resource}: {e}"));
    answer.status.expect("a review's status").allowed
}
