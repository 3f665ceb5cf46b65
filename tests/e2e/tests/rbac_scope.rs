//! The chart's namespace-scoped RBAC (`rbac.scope=Namespace`): what `helm template` renders
//! (Roles in exactly the namespaces the controller uses, a ClusterRole with nothing
//! namespaced, the same rights as the ClusterRole of `rbac.scope=Cluster` all told), and, on
//! the test control plane, `helm install` of it with the controller run with only the rights
//! it gave the ServiceAccount: a request through preflight, Phase 1 and a KubeadmControlPlane
//! write, and the API server refusing that ServiceAccount anything outside those namespaces.

use std::collections::{BTreeMap, BTreeSet};

use e2e::site::{ROW_4_2_5, Site};
use e2e::{chart, cvo, project, testenv};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use upgrade_controller::api::{CheckName, CheckState};

/// (apiGroup, resource, verb) for every resource rule of a Role or ClusterRole.
type Grants = BTreeSet<(String, String, String)>;

fn grants(role: &Value) -> Grants {
    let mut out = Grants::new();
    for rule in role["rules"].as_array().expect("rules") {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

fn non_resource_urls(role: &Value) -> Vec<Value> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["nonResourceURLs"].is_array())
        .cloned()
        .collect()
}

/// The chart's objects without the leader-election Role and RoleBinding (the Lease rights in
/// the release namespace, the same in both scopes; in_cluster.rs checks them).
fn rbac_of(release: &str, ns: &str, set: &[String]) -> Vec<Value> {
    chart::render(release, ns, set)
        .into_iter()
        .filter(|d| {
            !(matches!(d["kind"].as_str(), Some("Role" | "RoleBinding"))
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-leader-election")))
        })
        .collect()
}

fn cluster_role(docs: &[Value]) -> &Value {
    let roles: Vec<_> = docs.iter().filter(|d| d["kind"] == "ClusterRole").collect();
    assert_eq!(roles.len(), 1, "one ClusterRole");
    roles[0]
}

/// The Roles rendered, by namespace.
fn roles(docs: &[Value]) -> BTreeMap<String, Grants> {
    let mut out = BTreeMap::new();
    for role in docs.iter().filter(|d| d["kind"] == "Role") {
        let ns = role["metadata"]["namespace"].as_str().unwrap().to_string();
        assert!(
            out.insert(ns.clone(), grants(role)).is_none(),
            "two Roles in {ns}"
        );
    }
    out
}

fn namespaces(roles: &BTreeMap<String, Grants>) -> Vec<&str> {
    roles.keys().map(String::as_str).collect()
}

fn resources(g: &Grants) -> BTreeSet<&str> {
    g.iter().map(|(_, r, _)| r.as_str()).collect()
}

/// The resources of the chart's own CRDs (`crds/`) that are cluster-scoped.
fn cluster_scoped_crds() -> BTreeSet<String> {
    let dir = project::repo_root().join("charts/upgrade-controller/crds");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let crd: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
                .unwrap();
        if crd["spec"]["scope"] == "Cluster" {
            out.insert(crd["spec"]["names"]["plural"].as_str().unwrap().to_string());
        }
    }
    out
}

fn gitops_grants() -> Grants {
    [
        ("kustomize.toolkit.fluxcd.io", "kustomizations"),
        ("argoproj.io", "applications"),
    ]
    .into_iter()
    .map(|(g, r)| (g.to_string(), r.to_string(), "get".to_string()))
    .collect()
}

#[test]
fn namespace_scope_renders_roles_only_where_used_and_no_namespaced_right_in_the_cluster_role() {
    // Cluster scope (the default): one ClusterRole holding everything, no Role.
    let cluster = rbac_of("r", "uc-system", &["watchNamespace=tenant-a".into()]);
    assert!(!cluster.iter().any(|d| d["kind"] == "Role"));
    let everything = grants(cluster_role(&cluster));
    assert!(everything.contains(&("".into(), "secrets".into(), "get".into())));

    let docs = rbac_of(
        "r",
        "uc-system",
        &[
            "watchNamespace=tenant-a".into(),
            "rbac.scope=Namespace".into(),
        ],
    );
    // The ClusterRole: only cluster-scoped resources (the chart's cluster-scoped CRDs) and
    // discovery.
    let cr = cluster_role(&docs);
    let cluster_wide = grants(cr);
    let scoped = cluster_scoped_crds();
    assert!(scoped.contains("ossupportmatrices"), "{scoped:?}");
    for (group, resource, verb) in &cluster_wide {
        assert!(
            scoped.contains(resource),
            "the Namespace-scope ClusterRole grants {verb} on {group}/{resource}, which is not cluster-scoped"
        );
    }
    assert_eq!(
        resources(&cluster_wide),
        BTreeSet::from(["ossupportmatrices"])
    );
    assert_eq!(
        non_resource_urls(cr),
        non_resource_urls(cluster_role(&cluster))
    );

    // The Roles: the requests' namespace, the cvsh namespace (the default, cpaas-system, which
    // is also the platform's image ConfigMaps'), and the GitOps namespaces.
    let by_ns = roles(&docs);
    assert_eq!(
        namespaces(&by_ns),
        ["argocd", "cpaas-system", "flux-system", "tenant-a"]
    );
    // Secrets: `get` only, only in the requests' namespace.
    for (ns, g) in &by_ns {
        let secrets: Vec<_> = g.iter().filter(|(_, r, _)| r == "secrets").collect();
        if ns == "tenant-a" {
            assert_eq!(
                secrets,
                [&("".to_string(), "secrets".to_string(), "get".to_string())]
            );
        } else {
            assert!(secrets.is_empty(), "Secrets in {ns}: {secrets:?}");
        }
    }
    assert_eq!(by_ns["flux-system"], gitops_grants());
    assert_eq!(by_ns["argocd"], gitops_grants());
    assert_eq!(
        resources(&by_ns["cpaas-system"]),
        BTreeSet::from(["appreleases", "clusterversionshadows", "configmaps"])
    );
    let tenant = resources(&by_ns["tenant-a"]);
    for r in [
        "upgraderequests",
        "kubeadmcontrolplanes",
        "machinedeployments",
        "dcsmachinetemplates",
        "events",
        "kustomizations",
    ] {
        assert!(tenant.contains(r), "tenant-a's Role lacks {r}: {tenant:?}");
    }
    for r in ["configmaps", "clusterversionshadows", "ossupportmatrices"] {
        assert!(!tenant.contains(r), "tenant-a's Role grants {r}");
    }
    // Nothing lost: the Roles and the ClusterRole together grant what Cluster scope does.
    let mut union = cluster_wide.clone();
    for g in by_ns.values() {
        union.extend(g.iter().cloned());
    }
    assert_eq!(union, everything);
    // Each Role bound to the release's ServiceAccount, in its own namespace.
    let bindings: Vec<_> = docs.iter().filter(|d| d["kind"] == "RoleBinding").collect();
    assert_eq!(bindings.len(), by_ns.len());
    for b in bindings {
        assert!(by_ns.contains_key(b["metadata"]["namespace"].as_str().unwrap()));
        assert_eq!(
            b["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"})
        );
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": "r", "namespace": "uc-system"}])
        );
    }

    // The image ConfigMaps' namespace is the controller's (providers::PLATFORM_NAMESPACE),
    // not the cvsh namespace; a GitOps namespace that is the requests' adds no Role.
    let docs = rbac_of(
        "r",
        "uc-system",
        &[
            "watchNamespace=tenant-a".into(),
            "rbac.scope=Namespace".into(),
            "cvsh.namespace=platform".into(),
            "gitops.namespaces={tenant-a}".into(),
        ],
    );
    let by_ns = roles(&docs);
    let mut expected = vec!["platform", "tenant-a", providers::PLATFORM_NAMESPACE];
    expected.sort();
    assert_eq!(namespaces(&by_ns), expected);
    assert_eq!(
        resources(&by_ns[providers::PLATFORM_NAMESPACE]),
        BTreeSet::from(["configmaps"])
    );
    assert_eq!(
        resources(&by_ns["platform"]),
        BTreeSet::from(["appreleases", "clusterversionshadows"])
    );

    // The platform's convention (Clusters in the cvsh namespace, which is also the image
    // ConfigMaps' and here the GitOps rule sets'): one Role there with every namespaced rule.
    let docs = rbac_of(
        "r",
        "uc-system",
        &[
            "watchNamespace=cpaas-system".into(),
            "rbac.scope=Namespace".into(),
            "gitops.namespaces={cpaas-system}".into(),
        ],
    );
    let by_ns = roles(&docs);
    assert_eq!(namespaces(&by_ns), ["cpaas-system"]);
    let namespaced: Grants = everything.difference(&cluster_wide).cloned().collect();
    assert_eq!(by_ns["cpaas-system"], namespaced);

    // Namespace scope without watchNamespace: refused, saying why.
    let out = chart::template_output(&["rbac.scope=Namespace"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted without watchNamespace");
    assert!(
        err.contains("rbac.scope=Namespace needs watchNamespace"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_namespace_scoped_roles_the_controller_upgrades_its_cluster_and_reads_nothing_else() {
    let mut site = Site::new("rbac-ns", &ROW_4_2_5, "4.3.2", |_| {}).await;
    // Staging the image also makes sure the image ConfigMaps' namespace exists.
    site.stage("4.3.2").await;
    let client = site.client.clone();
    let ns = site.ns.to_string();
    let platform = site.platform.namespace.clone();
    let gitops = format!("{ns}-gitops");
    cvo::ensure_namespace(&client, &gitops).await.unwrap();
    site.ns.delete_with(&gitops);

    // helm install with namespace-scoped Roles, as an operator would. No webhook: its
    // configuration would call a Service IP nothing routes here (in_cluster.rs says more).
    let mut values = chart::site_values(&site);
    values.extend([
        "rbac.scope=Namespace".to_string(),
        format!("gitops.namespaces={{{gitops}}}"),
        "webhook.enabled=false".to_string(),
    ]);
    let release = chart::Installed::install(&ns, &ns, &values);
    let manifest = release.manifest();
    let mut role_namespaces: Vec<&str> = manifest
        .iter()
        .filter(|d| d["kind"] == "Role")
        // The leader-election Role (the Lease, in the release namespace) is not a scope's.
        .filter(|d| {
            !d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .ends_with("-leader-election")
        })
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    role_namespaces.sort();
    let mut expected = vec![
        ns.as_str(),
        platform.as_str(),
        gitops.as_str(),
        providers::PLATFORM_NAMESPACE,
    ];
    expected.sort();
    assert_eq!(role_namespaces, expected);

    // The controller with the ServiceAccount's rights only: preflight, Phase 1 through the
    // stand-in CVO, the KubeadmControlPlane written with a template cloned from the row's
    // image.
    site.controller = Some(release.run_as_its_pod(&client).await);
    site.request("up", json!({})).await;
    site.assert_proceeds("up", "v1.34.5-3", "4.3.2").await;
    let ur = site.requests().get("up").await.unwrap();
    let checks = ur.status.unwrap().preflight.unwrap().checks;
    // Each of these (in the initial preflight and the hop's) needed a Role: the kubeconfig
    // Secret and the slot pool (request namespace), the image ConfigMaps (the platform's image
    // namespace), the provider's AppRelease (cvsh namespace); Phase 1 needed the cvsh.
    for name in [
        CheckName::ControlPlaneHealthy,
        CheckName::IPPoolCapacity,
        CheckName::OSImagesStaged,
        CheckName::ProviderReady,
    ] {
        let check = checks.iter().find(|c| c.name == name);
        assert!(
            check.is_some_and(|c| c.state == CheckState::Passed),
            "{name:?}: {check:?}"
        );
    }
    let log_path = site.controller.as_ref().unwrap().log.clone();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the controller hit an RBAC denial ({}):\n{log}",
        log_path.display()
    );

    // What the ServiceAccount may not do, as the API server's authorizer answers it.
    let kubeconfig = chart::service_account_kubeconfig(&client, &ns, &ns).await;
    let sa = testenv::client_from(&kubeconfig).await.unwrap();
    let capi = "cluster.x-k8s.io";
    let kcp = "controlplane.cluster.x-k8s.io";
    let cvsh = "cvo.cpaas.io";
    let flux = "kustomize.toolkit.fluxcd.io";
    let pns = providers::PLATFORM_NAMESPACE;
    let mut wrong = Vec::new();
    for (verb, group, resource, namespace, allowed) in [
        ("get", "", "secrets", ns.as_str(), true),
        ("list", "", "secrets", ns.as_str(), false),
        ("get", "", "secrets", platform.as_str(), false),
        ("get", "", "secrets", pns, false),
        ("get", "", "secrets", gitops.as_str(), false),
        ("get", "", "secrets", "kube-system", false),
        ("get", "", "secrets", "", false),
        ("list", capi, "clusters", ns.as_str(), true),
        ("list", capi, "clusters", "", false),
        ("patch", kcp, "kubeadmcontrolplanes", ns.as_str(), true),
        (
            "patch",
            kcp,
            "kubeadmcontrolplanes",
            platform.as_str(),
            false,
        ),
        ("patch", kcp, "kubeadmcontrolplanes", "default", false),
        (
            "patch",
            cvsh,
            "clusterversionshadows",
            platform.as_str(),
            true,
        ),
        ("patch", cvsh, "clusterversionshadows", ns.as_str(), false),
        ("patch", cvsh, "clusterversionshadows", "", false),
        ("list", "", "configmaps", pns, true),
        ("list", "", "configmaps", ns.as_str(), false),
        ("list", "", "configmaps", "", false),
        ("get", flux, "kustomizations", gitops.as_str(), true),
        ("get", flux, "kustomizations", ns.as_str(), true),
        ("get", flux, "kustomizations", "flux-system", false),
        ("create", "events.k8s.io", "events", ns.as_str(), true),
        (
            "create",
            "events.k8s.io",
            "events",
            platform.as_str(),
            false,
        ),
        ("list", "upgrade.cpaas.io", "upgraderequests", "", false),
        ("list", "upgrade.cpaas.io", "ossupportmatrices", "", true),
    ] {
        if chart::can_i(&sa, verb, group, resource, namespace).await != allowed {
            wrong.push(format!(
                "{verb} {group}/{resource} in {namespace:?}: expected allowed={allowed}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // And a real read outside: refused (403), not merely empty.
    for (what, result) in [
        (
            format!("Secrets in {platform}"),
            Api::<Secret>::namespaced(sa.clone(), &platform)
                .list(&ListParams::default())
                .await,
        ),
        (
            "Secrets in every namespace".to_string(),
            Api::<Secret>::all(sa.clone())
                .list(&ListParams::default())
                .await,
        ),
    ] {
        match result {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            other => panic!(
                "{what} as the ServiceAccount: {:?}",
                other.map(|l| l.items.len())
            ),
        }
    }
    Api::<Secret>::namespaced(sa.clone(), &ns)
        .get(&format!("{}-kubeconfig", site.cluster.name))
        .await
        .expect("the workload kubeconfig Secret in the request namespace");

    // helm uninstall removes the Roles everywhere, the shared platform namespace included.
    if let Some(mut c) = site.controller.take() {
        c.kill();
    }
    drop(release);
    let roles = |n: &str| Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), n);
    for n in [pns, platform.as_str(), gitops.as_str(), ns.as_str()] {
        assert!(
            roles(n).get_opt(&ns).await.unwrap().is_none(),
            "helm uninstall left the Role {n}/{ns}"
        );
    }
    site.finish().await;
}
