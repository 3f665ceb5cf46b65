//! "Is this rollout done?" by Cluster API's own criteria (DOMAIN.md §5), never by a phase
//! string. Pure functions over the typed objects, answering with the list of reasons the
//! rollout is not done yet (empty = done), so a timeout can say exactly what is missing.
//!
//! Handles both API shapes: v1beta1 (`updatedReplicas`, `readyReplicas`, `availableReplicas`,
//! `unavailableReplicas`) and v1beta2 (`upToDateReplicas`, `availableReplicas`, and
//! `status.deprecated.v1beta1` counters).

use crate::capi::{KubeadmControlPlane, Machine, MachineDeployment, ReplicaStatus};

/// What the gates read of a KubeadmControlPlane or a MachineDeployment.
pub trait Rollable {
    /// `KubeadmControlPlane` or `MachineDeployment`, for messages.
    const KIND: &'static str;
    fn generation(&self) -> i64;
    fn replicas(&self) -> i64;
    fn replica_status(&self) -> &ReplicaStatus;
    fn v1beta2(&self) -> bool;
}

impl Rollable for KubeadmControlPlane {
    const KIND: &'static str = "KubeadmControlPlane";
    fn generation(&self) -> i64 {
        self.metadata.generation.unwrap_or(0)
    }
    fn replicas(&self) -> i64 {
        KubeadmControlPlane::replicas(self)
    }
    fn replica_status(&self) -> &ReplicaStatus {
        &self.status
    }
    fn v1beta2(&self) -> bool {
        self.is_v1beta2()
    }
}

impl Rollable for MachineDeployment {
    const KIND: &'static str = "MachineDeployment";
    fn generation(&self) -> i64 {
        self.metadata.generation.unwrap_or(0)
    }
    fn replicas(&self) -> i64 {
        MachineDeployment::replicas(self)
    }
    fn replica_status(&self) -> &ReplicaStatus {
        &self.status
    }
    fn v1beta2(&self) -> bool {
        self.is_v1beta2()
    }
}

/// The controller has not seen the latest spec yet.
fn generation_pending<T: Rollable>(obj: &T) -> Option<String> {
    let generation = obj.generation();
    let observed = obj.replica_status().observed_generation.unwrap_or(0);
    (observed != generation).then(|| {
        format!(
            "{} status.observedGeneration {observed} is behind metadata.generation {generation}",
            T::KIND
        )
    })
}

/// Replica counters: observedGeneration current, and every counter equal to `spec.replicas`,
/// with no unavailable replicas.
fn counters_pending<T: Rollable>(obj: &T) -> Vec<String> {
    let kind = T::KIND;
    let mut why: Vec<String> = generation_pending(obj).into_iter().collect();
    let want = obj.replicas();
    let status = obj.replica_status();
    let mut counters: Vec<(&str, Option<i64>)> = vec![("replicas", status.replicas)];
    if obj.v1beta2() {
        counters.push(("upToDateReplicas", status.up_to_date_replicas));
        counters.push(("readyReplicas", status.ready_replicas));
        counters.push(("availableReplicas", status.available_replicas));
    } else {
        counters.push(("updatedReplicas", status.updated_replicas));
        counters.push(("readyReplicas", status.ready_replicas));
        if kind == "MachineDeployment" {
            counters.push(("availableReplicas", status.available_replicas));
        }
    }
    for (name, got) in counters {
        let got = got.unwrap_or(0);
        if got != want {
            why.push(format!("{kind} status.{name} is {got}, want {want}"));
        }
    }
    let unavailable = if obj.v1beta2() {
        status.deprecated.v1beta1.unavailable_replicas
    } else {
        status.unavailable_replicas
    };
    if let Some(n) = unavailable.filter(|n| *n != 0) {
        why.push(format!("{kind} has {n} unavailable replicas"));
    }
    why
}

fn name(m: &Machine) -> &str {
    m.metadata.name.as_deref().unwrap_or("?")
}

/// Machines: exactly `want` of them, none being deleted, each declaring `version`, with a
/// healthy node whose kubelet (where the node reports one) runs `version`.
fn machines_pending(machines: &[&Machine], version: &str, want: i64) -> Vec<String> {
    let mut why = Vec::new();
    if machines.len() as i64 != want {
        why.push(format!("{} machines exist, want {want}", machines.len()));
    }
    for m in machines {
        let name = name(m);
        if m.metadata.deletion_timestamp.is_some() {
            why.push(format!("machine {name} is being deleted"));
            continue;
        }
        let declared = m.version();
        if declared != version {
            why.push(format!("machine {name} is at {declared}"));
            continue;
        }
        let kubelet = m.kubelet();
        if !kubelet.is_empty() && kubelet != version {
            why.push(format!("machine {name} node runs kubelet {kubelet}"));
        }
        if !m.node_healthy() {
            why.push(format!("machine {name} node is not healthy yet"));
        }
    }
    why
}

/// Why the KubeadmControlPlane or MachineDeployment `obj` (with its `machines`) is still
/// rolling out a spec change: observedGeneration behind, fewer up-to-date than desired
/// replicas, surplus replicas, or machines at another version than `version`. Readiness is not
/// part of it (a machine whose node is down is a health problem, not a rollout).
pub fn spec_rollout_pending<T: Rollable>(
    obj: &T,
    machines: &[&Machine],
    version: &str,
) -> Vec<String> {
    let kind = T::KIND;
    let mut why: Vec<String> = generation_pending(obj).into_iter().collect();
    let want = obj.replicas();
    let status = obj.replica_status();
    let up_to_date = status
        .up_to_date_replicas
        .or(status.updated_replicas)
        .unwrap_or(0);
    if up_to_date != want {
        why.push(format!(
            "{kind} has {up_to_date} of {want} replicas up to date"
        ));
    }
    let replicas = status.replicas.unwrap_or(0);
    if replicas > want {
        why.push(format!("{kind} has {replicas} replicas, {want} wanted"));
    }
    let stale: Vec<&str> = machines
        .iter()
        .filter(|m| m.spec.version.as_deref() != Some(version))
        .filter_map(|m| m.metadata.name.as_deref())
        .collect();
    if !stale.is_empty() {
        why.push(format!("machines not at {version}: {}", stale.join(", ")));
    }
    why
}

/// Why the KubeadmControlPlane `kcp` (with its `machines`) is not completely rolled out at
/// `version`; empty when it is.
pub fn control_plane_pending(
    kcp: &KubeadmControlPlane,
    machines: &[&Machine],
    version: &str,
) -> Vec<String> {
    let mut why = counters_pending(kcp);
    // v1beta1 status.version is the lowest version among the control-plane machines.
    let status_version = kcp.status.version.as_deref().unwrap_or("");
    if status_version != version {
        why.push(format!(
            "KubeadmControlPlane status.version is {status_version:?}, want {version}"
        ));
    }
    why.extend(machines_pending(machines, version, kcp.replicas()));
    why
}

/// Why the MachineDeployment `md` (with its `machines`) is not completely rolled out at
/// `version`; empty when it is.
pub fn machine_deployment_pending(
    md: &MachineDeployment,
    machines: &[&Machine],
    version: &str,
) -> Vec<String> {
    let mut why = counters_pending(md);
    why.extend(machines_pending(machines, version, md.replicas()));
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn refs(ms: &[Value]) -> Vec<Machine> {
        ms.iter().cloned().map(typed).collect()
    }

    fn cp_pending(kcp: &Value, ms: &[Value], v: &str) -> Vec<String> {
        let ms = refs(ms);
        let ms: Vec<&Machine> = ms.iter().collect();
        control_plane_pending(&typed(kcp.clone()), &ms, v)
    }

    fn md_pending(md: &Value, ms: &[Value], v: &str) -> Vec<String> {
        let ms = refs(ms);
        let ms: Vec<&Machine> = ms.iter().collect();
        machine_deployment_pending(&typed(md.clone()), &ms, v)
    }

    fn machine(name: &str, version: &str, healthy: bool) -> Value {
        json!({
            "metadata": {"name": name},
            "spec": {"version": version},
            "status": {"conditions": [{"type": "NodeHealthy", "status": if healthy {"True"} else {"False"}}]},
        })
    }

    fn kcp(generation: i64, observed: i64, counters: i64, version: &str) -> Value {
        json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1",
            "metadata": {"generation": generation},
            "spec": {"replicas": 3},
            "status": {
                "observedGeneration": observed, "replicas": counters, "updatedReplicas": counters,
                "readyReplicas": counters, "unavailableReplicas": 3 - counters, "version": version,
            },
        })
    }

    #[test]
    fn control_plane_done_only_when_every_criterion_holds() {
        let v = "v1.32.11-2";
        let ms = vec![
            machine("a", v, true),
            machine("b", v, true),
            machine("c", v, true),
        ];
        assert!(cp_pending(&kcp(2, 2, 3, v), &ms, v).is_empty());

        // Each criterion on its own keeps the gate closed.
        assert!(
            !cp_pending(&kcp(3, 2, 3, v), &ms, v).is_empty(),
            "stale observedGeneration"
        );
        assert!(
            !cp_pending(&kcp(2, 2, 2, v), &ms, v).is_empty(),
            "a replica short"
        );
        assert!(
            !cp_pending(&kcp(2, 2, 3, "v1.31.14-2"), &ms, v).is_empty(),
            "status.version"
        );
        let mut unhealthy = ms.clone();
        unhealthy[1] = machine("b", v, false);
        assert!(!cp_pending(&kcp(2, 2, 3, v), &unhealthy, v).is_empty());
        let mut old = ms.clone();
        old[2] = machine("c", "v1.31.14-2", true);
        let why = cp_pending(&kcp(2, 2, 3, v), &old, v);
        assert_eq!(why, vec!["machine c is at v1.31.14-2".to_string()]);
        let mut extra = ms.clone();
        extra.push(machine("d", v, true));
        assert!(
            !cp_pending(&kcp(2, 2, 3, v), &extra, v).is_empty(),
            "surge machine still there"
        );
        let mut deleting = ms.clone();
        deleting[0]["metadata"]["deletionTimestamp"] = json!("2026-11-21T10:00:00Z");
        assert!(!cp_pending(&kcp(2, 2, 3, v), &deleting, v).is_empty());
    }

    #[test]
    fn a_running_phase_is_not_enough_for_a_machine_deployment() {
        let v = "v1.32.11-2";
        let md = json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1",
            "metadata": {"generation": 4},
            "spec": {"replicas": 2},
            "status": {"phase": "Running", "observedGeneration": 4, "replicas": 2,
                       "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2},
        });
        let ms = vec![machine("a", v, true), machine("b", "v1.31.14-2", true)];
        let why = md_pending(&md, &ms, v);
        assert!(
            why.iter().any(|w| w.contains("updatedReplicas is 1")),
            "{why:?}"
        );
        assert!(why.iter().any(|w| w.contains("machine b is at")), "{why:?}");
    }

    #[test]
    fn kubelet_version_is_checked_where_reported() {
        let v = "v1.33.7-4";
        let md = json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1",
            "metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                       "readyReplicas": 1, "availableReplicas": 1},
        });
        let mut m = machine("a", v, true);
        m["status"]["nodeInfo"] = json!({"kubeletVersion": "v1.32.11-2"});
        assert!(!md_pending(&md, &[m.clone()], v).is_empty());
        m["status"]["nodeInfo"] = json!({"kubeletVersion": v});
        assert!(md_pending(&md, &[m], v).is_empty());
    }

    #[test]
    fn v1beta2_counters_are_read_from_their_v1beta2_names() {
        let v = "v1.33.7-4";
        let md = json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "upToDateReplicas": 1,
                       "readyReplicas": 1, "availableReplicas": 1,
                       "deprecated": {"v1beta1": {"unavailableReplicas": 0}}},
        });
        assert!(md_pending(&md, &[machine("a", v, true)], v).is_empty());
    }
}
