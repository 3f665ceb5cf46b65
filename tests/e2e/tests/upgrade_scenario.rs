//! The upgrade scenario that the kind + CAPD suite (`tests/kind_capd.rs`, `make e2e-kind`)
//! runs on real kubeadm nodes, here on CAPD's in-memory machines: one control-plane machine
//! and one worker from Kubernetes 1.31 to 1.34, every node replaced at every hop, read from
//! the workload cluster's own API.

use e2e::scenario::{self, Backend};

#[tokio::test(flavor = "multi_thread")]
async fn in_memory_cluster_upgrades_1_31_to_1_34_replacing_every_node_at_every_hop() {
    let report = scenario::upgrade_one_minor_at_a_time(&Backend::InMemory, "scenario").await;
    assert_eq!(report.hops.len(), 3);
    assert_eq!(report.nodes.len(), 4);
}

/// The controller's protobuf create of the kubelet-client binding, decoded by a real
/// kube-apiserver (the test control plane's, standing in for a workload cluster's): read back
/// as JSON it is kubeadm's binding; a second call finds it and leaves it alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_kubelet_client_binding_reaches_a_real_api_server_as_kubeadm_makes_it() {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    use kube::api::{Api, DeleteParams};
    use upgrade_controller::apply::kubelet_access::{self, Ensured};

    let client = e2e::harness::client().await;
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    let _ = api
        .delete(kubelet_access::BINDING, &DeleteParams::default())
        .await;
    assert_eq!(
        kubelet_access::ensure(&client, "testenv").await.unwrap(),
        Ensured::Created
    );
    let created = api.get(kubelet_access::BINDING).await.unwrap();
    let want = kubelet_access::binding();
    assert_eq!(created.role_ref, want.role_ref);
    assert_eq!(created.subjects, want.subjects);
    assert_eq!(
        kubelet_access::ensure(&client, "testenv").await.unwrap(),
        Ensured::Present
    );
    assert_eq!(
        api.get(kubelet_access::BINDING)
            .await
            .unwrap()
            .metadata
            .resource_version,
        created.metadata.resource_version,
        "the second call wrote nothing"
    );
    api.delete(kubelet_access::BINDING, &DeleteParams::default())
        .await
        .unwrap();
}
