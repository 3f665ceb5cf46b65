//! The kind + CAPD suite (`make e2e-kind`, tests/e2e/kind/README.md): the scenario of
//! `tests/upgrade_scenario.rs` on CAPD's docker backend, with real kubeadm nodes in containers
//! of one locally built node image per Kubernetes minor. Built only with `--features kind`:
//! it needs root, podman and about 5 GB of images, and does not fit `make test`'s budget.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::scenario::{self, Backend, KindImages};

/// CAPD's containers of the scenario's cluster (label `io.x-k8s.kind.cluster`).
fn cluster_containers() -> Vec<String> {
    let out = Command::new("podman")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .args([
            "--filter",
            &format!("label=io.x-k8s.kind.cluster={}", scenario::CLUSTER),
        ])
        .output()
        .expect("running podman ps");
    assert!(
        out.status.success(),
        "podman ps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_backed_cluster_upgrades_1_31_to_1_34_on_real_kubeadm_nodes() {
    let prepared = Instant::now();
    let images = KindImages::prepare();
    eprintln!(
        "images and Docker API ready in {:?}: {images:?}",
        prepared.elapsed()
    );
    let stale = cluster_containers();
    assert!(
        stale.is_empty(),
        "containers of an earlier run's cluster {} are still there: {stale:?}; remove them with `podman --runtime runc --cgroup-manager cgroupfs rm -f {}` (plain `podman rm` uses crun, which fails here)",
        scenario::CLUSTER,
        stale.join(" ")
    );
    let report = scenario::upgrade_one_minor_at_a_time(&Backend::Docker(images), "kind").await;
    eprintln!("report: {report:#?}");
    // Deleting the namespace deletes the Cluster; CAPD removes its containers.
    let start = Instant::now();
    while !cluster_containers().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "CAPD left containers behind: {:?}",
            cluster_containers()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
