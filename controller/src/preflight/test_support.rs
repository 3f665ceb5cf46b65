//! Fixtures of the preflight tests.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::api::{CheckName, MatrixRow, PreflightCheck, UpgradeRequestSpec};
use crate::capi::{KubeadmControlPlane, Machine};

pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

pub(crate) fn row(dv: &str, k8s: &str, from: &[&str]) -> MatrixRow {
    serde_json::from_value(json!({
        "distributionVersion": dv, "kubernetesVersion": k8s, "coreDNSImageTag": "x",
        "etcdImageTag": "y", "osImageVersion": format!("img-{dv}"), "upgradeableFrom": from,
    }))
    .unwrap()
}

pub(crate) fn kcp(version: &str) -> KubeadmControlPlane {
    typed(json!({
        "metadata": {"name": "cp", "generation": 1},
        "spec": {"version": version, "replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                   "availableReplicas": 1, "unavailableReplicas": 0, "version": version,
                   "conditions": [{"type": "EtcdClusterHealthy", "status": "True"}]},
    }))
}

pub(crate) fn machine(version: &str, healthy: bool) -> Machine {
    typed(json!({
        "metadata": {"name": "m-1", "labels": {"cluster.x-k8s.io/control-plane-name": "cp"}},
        "spec": {"version": version},
        "status": {"nodeRef": {"name": "node-1"}, "nodeInfo": {"kubeletVersion": version},
                   "conditions": [{"type": "NodeHealthy", "status": if healthy {"True"} else {"False"}}]},
    }))
}

pub(crate) fn cvsh(version: &str) -> Value {
    json!({"status": {"current": {"version": version}, "preflight": {"checks": [
        {"name": "ClusterRunning", "policy": "Block", "state": "Passed"}]}}})
}

pub(crate) fn contender(name: &str, created: &str, holds: bool) -> Contender {
    Contender {
        name: name.into(),
        created: Some(created.parse().unwrap()),
        holds,
        holds_since: holds.then(|| "2026-11-21T12:00:00Z".parse().unwrap()),
        finished: false,
    }
}

pub(crate) fn pobs() -> PreflightObs {
    PreflightObs {
        scope: Scope::Initial,
        globals: vec![("global".into(), Ok(Some(cvsh("4.3.2"))))],
        workload: Ok(WorkloadObs::default()),
        me: contender("me", "2026-11-21T10:00:00Z", false),
        other_requests: vec![],
        slots: vec![],
        images: vec![],
        gitops: vec![],
        global_self: None,
        provider_releases: Ok(vec![]),
    }
}

pub(crate) fn spec(skip: &[&str]) -> UpgradeRequestSpec {
    serde_json::from_value(json!({"clusterName": "c", "targetVersion": "4.3",
        "preflight": {"skip": skip}}))
    .unwrap()
}

pub(crate) fn run_all(
    spec: &UpgradeRequestSpec,
    target: &MatrixRow,
    cluster: &Value,
    machines: &[Machine],
    obs: &PreflightObs,
) -> BTreeMap<CheckName, PreflightCheck> {
    let kcp = kcp("v1.31.14-2");
    evaluate(&Input {
        spec,
        scope: Scope::Initial,
        cluster_name: "c",
        kcp: &kcp,
        mds: &[],
        machines,
        plan: &[],
        target,
        cvsh: Some(cluster),
        cvsh_where: "cvsh cpaas-system/c".into(),
        obs,
    })
    .into_iter()
    .map(|c| (c.name, c))
    .collect()
}
