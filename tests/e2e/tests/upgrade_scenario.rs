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
