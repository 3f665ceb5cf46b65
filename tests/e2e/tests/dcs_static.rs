//! The static DCS cluster (`e2e::dcs`) on the real control plane: CAPI's webhooks accept and
//! default every object, the result is completely rolled out by CAPI's own criteria, the paused
//! Cluster keeps CAPI's controllers from touching it, and the helpers change exactly what a
//! preflight looks at.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use e2e::capi::{self, CLUSTER_V1BETA1, CONTROLPLANE_V1BETA1, INFRA_V1BETA1};
use e2e::dcs::{self, StaticDcsCluster};
use e2e::harness;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

async fn list(client: &kube::Client, ns: &str, api_version: &str, kind: &str) -> Vec<Value> {
    capi::api(client, ns, api_version, kind)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("listing {kind}: {e}"))
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).expect("JSON"))
        .collect()
}

async fn get(client: &kube::Client, ns: &str, api_version: &str, kind: &str, name: &str) -> Value {
    let obj = capi::api(client, ns, api_version, kind)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("reading {kind} {name}: {e}"));
    serde_json::to_value(obj).expect("JSON")
}

async fn rollout_pending(client: &kube::Client, c: &StaticDcsCluster) -> Vec<String> {
    let mut why = capi::kcp_rollout_pending(client, &c.namespace, &c.kcp_name(), &c.cp_version)
        .await
        .expect("reading the control plane");
    for (pool, _) in &c.pools {
        let md = c.md_name(pool);
        let pending = capi::md_rollout_pending(client, &c.namespace, &md, c.worker_version())
            .await
            .expect("reading a MachineDeployment");
        why.extend(pending.into_iter().map(|w| format!("{md}: {w}")));
    }
    why
}

/// Status of every CAPI object CAPI's controllers could write, without `status.v1beta2`, where
/// CAPI v1.10 records the `Paused` condition it keeps on paused objects.
async fn capi_statuses(client: &kube::Client, ns: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (api_version, kind) in [
        (CLUSTER_V1BETA1, "Cluster"),
        (CONTROLPLANE_V1BETA1, "KubeadmControlPlane"),
        (CLUSTER_V1BETA1, "MachineDeployment"),
        (CLUSTER_V1BETA1, "MachineSet"),
        (CLUSTER_V1BETA1, "Machine"),
    ] {
        for mut obj in list(client, ns, api_version, kind).await {
            if let Some(status) = obj["status"].as_object_mut() {
                status.remove("v1beta2");
            }
            let name = obj["metadata"]["name"].as_str().unwrap_or("?").to_string();
            out.insert(format!("{kind}/{name}"), obj["status"].take());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn static_dcs_cluster_is_rolled_out_by_capi_criteria_and_left_alone() {
    let client = harness::client().await;
    let ns = harness::namespace(&client, "dcs-static").await;
    let c = StaticDcsCluster {
        pools: vec![("md-a".into(), 2), ("md-b".into(), 1)],
        ip_pool_spare: 1,
        ..StaticDcsCluster::new("dcs-a", &ns)
    };
    c.create(&client)
        .await
        .expect("creating the static DCS cluster");

    let why = rollout_pending(&client, &c).await;
    assert!(why.is_empty(), "not rolled out by CAPI's criteria: {why:?}");
    assert_eq!(
        list(&client, &ns, CLUSTER_V1BETA1, "Machine").await.len(),
        3 + 2 + 1
    );

    // Everything went through CAPI's admission webhooks, which defaulted what CAPI defaults.
    let cluster = get(&client, &ns, CLUSTER_V1BETA1, "Cluster", "dcs-a").await;
    assert_eq!(
        cluster["metadata"]["annotations"][e2e::dcs::PAUSED_ANNOTATION],
        "",
        "paused for CAPI by annotation"
    );
    assert_ne!(cluster["spec"]["paused"], true, "not paused for operators");
    assert_eq!(
        cluster["spec"]["controlPlaneRef"]["namespace"],
        ns.name(),
        "Cluster defaulting webhook"
    );
    let kcp = get(
        &client,
        &ns,
        CONTROLPLANE_V1BETA1,
        "KubeadmControlPlane",
        &c.kcp_name(),
    )
    .await;
    assert_eq!(
        kcp["spec"]["machineTemplate"]["infrastructureRef"]["namespace"],
        ns.name(),
        "KubeadmControlPlane defaulting webhook"
    );
    for m in c.machine_names() {
        let machine = get(&client, &ns, CLUSTER_V1BETA1, "Machine", &m).await;
        assert!(
            !machine["spec"]["nodeDeletionTimeout"].is_null(),
            "Machine defaulting webhook did not run on {m}: {machine}"
        );
    }
    // ... and they still judge: an even number of stacked-etcd control-plane replicas is
    // refused, as on a platform cluster.
    let mut kcp_obj = kcp.clone();
    kcp_obj["metadata"] = json!({"name": "dcs-even-cp"});
    kcp_obj["spec"]["replicas"] = json!(2);
    kcp_obj.as_object_mut().unwrap().remove("status");
    let rejected = capi::kcp_api(&client, &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value::<DynamicObject>(kcp_obj).unwrap(),
        )
        .await;
    match rejected {
        Err(kube::Error::Api(e)) => assert!(
            e.message.contains("admission webhook") && e.message.contains("replicas"),
            "rejected, but not by CAPI's webhook: {e:?}"
        ),
        other => panic!("CAPI's KubeadmControlPlane webhook accepted 2 replicas: {other:?}"),
    }

    // Every template draws from its own pool; each DCSMachine holds a distinct entry of it and
    // exactly `ip_pool_spare` entries are held by nobody.
    let dcs_machines = list(&client, &ns, INFRA_V1BETA1, "DCSMachine").await;
    assert_eq!(dcs_machines.len(), c.machine_names().len());
    let held: BTreeSet<&str> = dcs_machines
        .iter()
        .filter_map(|m| m["status"]["networkConfig"]["ip"].as_str())
        .collect();
    assert_eq!(
        held.len(),
        dcs_machines.len(),
        "two machines share an address"
    );
    let mut templates = vec![(c.cp_template_name(), c.cp_replicas)];
    templates.extend(c.pools.iter().map(|(p, r)| (c.md_template_name(p), *r)));
    for (template, replicas) in templates {
        let t = get(&client, &ns, INFRA_V1BETA1, "DCSMachineTemplate", &template).await;
        assert_eq!(
            t["spec"]["template"]["spec"]["vmTemplateName"],
            c.vm_template
        );
        let pool_name = t["spec"]["template"]["spec"]["ipHostPoolRef"]["name"]
            .as_str()
            .expect("ipHostPoolRef");
        let pool = get(&client, &ns, INFRA_V1BETA1, "DCSIpHostnamePool", pool_name).await;
        let entries = pool["spec"]["pool"].as_array().expect("spec.pool");
        assert_eq!(
            entries.len() as u32,
            replicas + c.ip_pool_spare,
            "{pool_name}"
        );
        let free = entries
            .iter()
            .filter(|e| !held.contains(e["ip"].as_str().unwrap_or("")))
            .count() as u32;
        assert_eq!(free, c.ip_pool_spare, "{pool_name}");
        let holders = dcs_machines
            .iter()
            .filter(|m| m["spec"]["ipHostPoolRef"]["name"] == pool_name)
            .count() as u32;
        assert_eq!(holders, replicas, "{pool_name}");
    }

    // Paused: CAPI's controllers leave the status we wrote alone.
    let before = capi_statuses(&client, &ns).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = capi_statuses(&client, &ns).await;
    for (key, status) in &before {
        assert_eq!(
            Some(status),
            after.get(key),
            "CAPI changed the status of {key}"
        );
    }
    assert!(rollout_pending(&client, &c).await.is_empty());

    dcs::delete_namespace(&client, &ns)
        .await
        .expect("deleting the test namespace");
    ns.finish(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn helpers_change_what_a_preflight_sees() {
    let client = harness::client().await;
    let ns = harness::namespace(&client, "dcs-helpers").await;
    let c = StaticDcsCluster {
        ip_pool_spare: 0,
        ..StaticDcsCluster::new("dcs-b", &ns)
    };
    c.create(&client)
        .await
        .expect("creating the static DCS cluster");
    assert!(rollout_pending(&client, &c).await.is_empty());

    // A worker's node goes NotReady: the pool is no longer healthy, and its counters say so.
    let worker = c.md_machine_names("md-a")[1].clone();
    dcs::set_node_ready(&client, &ns, &worker, false)
        .await
        .unwrap();
    let why = rollout_pending(&client, &c).await;
    assert!(
        why.iter()
            .any(|w| w.contains(&format!("machine {worker} node is not healthy"))),
        "{why:?}"
    );
    let md = get(
        &client,
        &ns,
        CLUSTER_V1BETA1,
        "MachineDeployment",
        &c.md_name("md-a"),
    )
    .await;
    assert_eq!(md["status"]["readyReplicas"], 1);
    assert_eq!(md["status"]["unavailableReplicas"], 1);
    dcs::set_node_ready(&client, &ns, &worker, true)
        .await
        .unwrap();
    assert!(rollout_pending(&client, &c).await.is_empty());

    // Same for a control-plane node.
    let cp = c.cp_machine_names()[0].clone();
    dcs::set_node_ready(&client, &ns, &cp, false).await.unwrap();
    let kcp = get(
        &client,
        &ns,
        CONTROLPLANE_V1BETA1,
        "KubeadmControlPlane",
        &c.kcp_name(),
    )
    .await;
    assert_eq!(kcp["status"]["readyReplicas"], 2);
    assert!(!rollout_pending(&client, &c).await.is_empty());
    dcs::set_node_ready(&client, &ns, &cp, true).await.unwrap();
    assert!(rollout_pending(&client, &c).await.is_empty());

    // The control-plane pool starts full; one more entry is one free slot.
    let pool = c.cp_pool_name();
    let entries = |p: Value| p["spec"]["pool"].as_array().cloned().unwrap_or_default();
    let before = entries(get(&client, &ns, INFRA_V1BETA1, "DCSIpHostnamePool", &pool).await);
    assert_eq!(before.len(), 3);
    let ip = dcs::add_pool_entry(&client, &ns, &pool).await.unwrap();
    let after = entries(get(&client, &ns, INFRA_V1BETA1, "DCSIpHostnamePool", &pool).await);
    assert_eq!(after.len(), 4);
    assert_eq!(after[3]["ip"], ip);
    assert!(before.iter().all(|e| e["ip"] != ip.as_str()), "{ip} reused");

    // Staging an image is a ConfigMap the platform's label finds; unstaging removes it.
    let image = format!("MicroOS-5.5-e2e-{ns}");
    dcs::stage_images(&client, &[&image]).await.unwrap();
    dcs::stage_images(&client, &[&image])
        .await
        .expect("staging is idempotent");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), dcs::IMAGE_CONFIGMAP_NAMESPACE);
    let selector = format!("{}={image}", dcs::VM_TEMPLATE_LABEL);
    let found = cms
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    dcs::unstage_images(&client, &[&image]).await.unwrap();
    let found = cms
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert!(found.items.is_empty());
    assert!(
        dcs::stage_images(&client, &["not a label value"])
            .await
            .is_err(),
        "a name the label cannot carry must not be staged"
    );

    dcs::delete_namespace(&client, &ns)
        .await
        .expect("deleting the test namespace");
    ns.finish(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeconfig_secret_reaches_the_test_control_plane() {
    let client = harness::client().await;
    let ns = harness::namespace(&client, "dcs-kubeconfig").await;
    let c = StaticDcsCluster::new("dcs-c", &ns);
    c.create(&client)
        .await
        .expect("creating the static DCS cluster");

    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("dcs-c-kubeconfig")
        .await
        .expect("CAPI's kubeconfig Secret");
    assert_eq!(secret.type_.as_deref(), Some("cluster.x-k8s.io/secret"));
    assert_eq!(
        secret.metadata.labels.unwrap_or_default()["cluster.x-k8s.io/cluster-name"],
        "dcs-c"
    );
    let value = secret.data.unwrap_or_default()["value"].0.clone();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(std::str::from_utf8(&value).unwrap())
        .expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let workload = kube::Client::try_from(config).unwrap();
    Api::<Namespace>::all(workload)
        .get(&ns)
        .await
        .expect("the kubeconfig reaches the control plane the cluster lives on");

    dcs::delete_namespace(&client, &ns)
        .await
        .expect("deleting the test namespace");
    ns.finish(&client).await;
}
