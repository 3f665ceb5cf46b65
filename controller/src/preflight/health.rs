//! The cluster's health before a rollout replaces its machines: the workload API server
//! answers and the control plane is fully ready (ControlPlaneHealthy), every node is Ready
//! (NodesReady), and no earlier rollout is unfinished (NoRolloutInProgress).

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
