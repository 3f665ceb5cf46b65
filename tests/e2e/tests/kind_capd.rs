//! The kind + CAPD suite (`make e2e-kind`, tests/e2e/kind/README.md): the scenario of
//! `tests/upgrade_scenario.rs` on CAPD's docker backend, with real kubeadm nodes in containers
//! of one locally built node image per Kubernetes minor, managed from a kind cluster: Cluster
//! API's managers in pods there, upgrade-controller's image installed by its Helm chart. Built
//! only with `--features kind`: it needs root, podman and about 5 GB of images, and does not
//! fit `make test`'s budget.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::harness;
use e2e::image::Image;
use e2e::kind::Management;
use e2e::scenario::{self, Backend, KindImages};

/// The container engine CAPD's Docker API belongs to, as `management.sh` picks it: Docker when
/// its daemon answers, podman otherwise.
fn engine() -> Command {
    let docker = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if docker {
        Command::new("docker")
    } else {
        e2e::image::podman()
    }
}

/// CAPD's containers of the scenario's cluster (label `io.x-k8s.kind.cluster`).
fn cluster_containers() -> Vec<String> {
    let out = engine()
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .args([
            "--filter",
            &format!("label=io.x-k8s.kind.cluster={}", scenario::CLUSTER),
        ])
        .output()
        .expect("running ps on the container engine");
    assert!(
        out.status.success(),
        "ps on the container engine: {}",
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
    let management = Management::up();
    let client = harness::client().await;
    management.install_capi(&client).await;
    // The image `make image` builds, under a tag of this suite's (dropped from the local
    // storage at the end; the kind node keeps its copy).
    let controller = Image::build("localhost/upgrade-controller:e2e-kind");
    management.load(&controller.reference);
    let images = KindImages::prepare(&controller.reference);
    eprintln!(
        "management cluster, Cluster API, the controller's image and the node images ready in {:?}: {images:?}",
        prepared.elapsed()
    );
    // The management cluster outlives a run: a run that was killed left its namespaces (their
    // Cluster, which CAPD would go on reconciling). Deleting them lets CAPD remove its machines.
    e2e::kind::delete_leftover_namespaces(&client, "kind-", Duration::from_secs(300)).await;
    let stale = cluster_containers();
    let names = stale.join(" ");
    assert!(
        stale.is_empty(),
        "containers of an earlier run's cluster {} are still there: {stale:?}; remove them with `docker rm -f {names}`, or on podman `podman --runtime runc --cgroup-manager cgroupfs rm -f {names}` (plain `podman rm` uses crun, which fails here)",
        scenario::CLUSTER,
    );
    let report = scenario::upgrade_one_minor_at_a_time(&Backend::Docker(images), "kind").await;
    eprintln!("report: {report:#?}");
    // The scenario's teardown deleted the Cluster, then the namespaces: both must go, or the
    // next run starts with a stuck namespace.
    e2e::kind::wait_namespaces_gone(&client, "kind-", Duration::from_secs(300)).await;
    // CAPD removed the cluster's containers with it.
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
