//! The cluster's health before a rollout replaces its machines: the workload API server
//! answers and the control plane is fully ready (ControlPlaneHealthy), KCP reports etcd
//! healthy (EtcdHealthy), no MachineHealthCheck remediation is under way
//! (NoRemediationInProgress), every node is Ready (NodesReady), and no earlier rollout is
//! unfinished (NoRolloutInProgress).

use super::{Input, check, passed};
use crate::api::{CheckName, CheckState, PreflightCheck};
use crate::capi::{self, Machine};
use crate::decide::gate;

pub(super) fn control_plane_healthy(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::ControlPlaneHealthy;
    if let Err(e) = &i.obs.workload {
        return check(
            name,
            CheckState::Failed,
            e.reason,
            format!(
                "the workload API server of {} cannot be asked: {}",
                i.cluster_name, e.message
            ),
        );
    }
    let kcp = i.kcp;
    let kcp_name = capi::name(&kcp.metadata);
    let want = kcp.replicas();
    let ready = kcp.status.ready_replicas.unwrap_or(0);
    let unhealthy: Vec<&str> = i
        .machines
        .iter()
        .filter(|m| m.label(capi::CONTROL_PLANE_NAME_LABEL) == Some(kcp_name))
        .filter(|m| !m.node_healthy())
        .map(|m| capi::name(&m.metadata))
        .collect();
    if ready < want || !unhealthy.is_empty() {
        let mut why = vec![format!(
            "KubeadmControlPlane {kcp_name} has {ready}/{want} ready replicas"
        )];
        if !unhealthy.is_empty() {
            why.push(format!(
                "unhealthy control-plane machines: {}",
                unhealthy.join(", ")
            ));
        }
        return check(
            name,
            CheckState::Failed,
            "ControlPlaneNotReady",
            format!(
                "{}; repair the control plane before upgrading (a rollout replaces every control-plane machine)",
                why.join("; ")
            ),
        );
    }
    passed(
        name,
        format!(
            "the workload API server answers and {ready}/{want} control-plane replicas are ready"
        ),
    )
}

/// KCP's `EtcdClusterHealthy` condition (v1beta1 and v1beta2 alike; the v1beta1 one also under
/// `status.deprecated.v1beta1`). A rollout replaces etcd members one by one, and KCP blocks a
/// replacement while etcd is unhealthy (DOMAIN.md §7 case 3): start none on a sick etcd.
pub(super) fn etcd_healthy(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::EtcdHealthy;
    let kcp = i.kcp;
    let kcp_name = capi::name(&kcp.metadata);
    if kcp
        .spec
        .kubeadm_config_spec
        .cluster_configuration
        .etcd
        .external
        .is_some()
    {
        return passed(
            name,
            format!(
                "KubeadmControlPlane {kcp_name} uses external etcd, which KCP neither manages nor reports (check its health yourself)"
            ),
        );
    }
    let found = kcp
        .status
        .conditions
        .iter()
        .chain(&kcp.status.deprecated.v1beta1.conditions)
        .find(|c| c.type_ == ETCD_CONDITION);
    let detail = |c: &capi::Condition| {
        [c.reason.as_deref(), c.message.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": ")
    };
    match found {
        Some(c) if c.status == "True" => passed(
            name,
            format!("KubeadmControlPlane {kcp_name} reports {ETCD_CONDITION}=True"),
        ),
        Some(c) => check(
            name,
            if c.status == "False" {
                CheckState::Failed
            } else {
                CheckState::Unknown
            },
            "EtcdNotHealthy",
            format!(
                "KubeadmControlPlane {kcp_name} reports {ETCD_CONDITION}={} ({}); repair etcd first: a rollout replaces its members one by one",
                c.status,
                detail(c)
            ),
        ),
        None => check(
            name,
            CheckState::Unknown,
            "EtcdHealthUnknown",
            format!(
                "KubeadmControlPlane {kcp_name} does not report {ETCD_CONDITION} yet; it does once its controller reached etcd"
            ),
        ),
    }
}

const ETCD_CONDITION: &str = "EtcdClusterHealthy";
/// Set by KCP on itself while it remediates a control-plane Machine.
const KCP_REMEDIATING: &str = "controlplane.cluster.x-k8s.io/remediation-in-progress";
/// Set `False` by a MachineHealthCheck on a Machine it wants remediated, until its owner
/// (KCP, a MachineSet) has replaced it.
const OWNER_REMEDIATED: &str = "OwnerRemediated";

/// No MachineHealthCheck remediation of the cluster is under way: no Machine waits for its
/// owner to remediate it, and KCP is not remediating a control-plane Machine. A rollout
/// started during one would race the replacement.
pub(super) fn no_remediation(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::NoRemediationInProgress;
    let mut under_way: Vec<String> = i
        .machines
        .iter()
        .filter_map(|m| {
            let c = m
                .status
                .conditions
                .iter()
                .chain(&m.status.deprecated.v1beta1.conditions)
                .find(|c| c.type_ == OWNER_REMEDIATED && c.status == "False")?;
            Some(format!(
                "Machine {} ({OWNER_REMEDIATED}=False{})",
                capi::name(&m.metadata),
                c.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ))
        })
        .collect();
    let kcp_meta = &i.kcp.metadata;
    if kcp_meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(KCP_REMEDIATING))
    {
        under_way.insert(
            0,
            format!(
                "KubeadmControlPlane {} is remediating a control-plane machine ({KCP_REMEDIATING})",
                capi::name(kcp_meta)
            ),
        );
    }
    if under_way.is_empty() {
        return passed(name, "no MachineHealthCheck remediation is under way");
    }
    check(
        name,
        CheckState::Failed,
        "RemediationInProgress",
        format!(
            "waiting for the remediation under way to finish: {}",
            under_way.join("; ")
        ),
    )
}

pub(super) fn nodes_ready(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::NodesReady;
    let not_ready: Vec<String> = i
        .machines
        .iter()
        .filter(|m| !m.node_healthy())
        .map(|m| {
            let node = m
                .status
                .node_ref
                .as_ref()
                .map_or("no node yet", |n| n.name.as_str());
            format!("{} ({node})", capi::name(&m.metadata))
        })
        .collect();
    if not_ready.is_empty() {
        passed(
            name,
            format!("all {} machines have a Ready node", i.machines.len()),
        )
    } else {
        check(
            name,
            CheckState::Failed,
            "NodesNotReady",
            format!(
                "machines whose node is not Ready (condition NodeHealthy): {}; repair or remove them before upgrading",
                not_ready.join(", ")
            ),
        )
    }
}

pub(super) fn no_rollout(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::NoRolloutInProgress;
    let machines_of = |label: &str, owner: &str| -> Vec<&Machine> {
        i.machines
            .iter()
            .filter(|m| m.label(label) == Some(owner))
            .collect()
    };
    let kcp = i.kcp;
    let mut why = gate::spec_rollout_pending(
        kcp,
        &machines_of(capi::CONTROL_PLANE_NAME_LABEL, capi::name(&kcp.metadata)),
        &kcp.spec.version,
    );
    for md in i.mds {
        let name = capi::name(&md.metadata);
        why.extend(
            gate::spec_rollout_pending(
                md,
                &machines_of(capi::DEPLOYMENT_NAME_LABEL, name),
                md.version(),
            )
            .into_iter()
            .map(|w| format!("{name}: {w}")),
        );
    }
    if why.is_empty() {
        passed(
            name,
            "the control plane and every pool are rolled out at their declared versions",
        )
    } else {
        check(
            name,
            CheckState::Failed,
            "RolloutInProgress",
            format!(
                "a rollout is under way or incomplete: {}; wait for it to finish",
                why.join("; ")
            ),
        )
    }
}
