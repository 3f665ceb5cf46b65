//! IPPoolCapacity: every slot pool a rollout draws from has room for its surge (DOMAIN.md §4).

use std::collections::BTreeMap;

use super::{Input, SlotObs, check, passed};
use crate::api::{CheckName, CheckState, PreflightCheck};

pub(super) fn capacity(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::IPPoolCapacity;
    if i.obs.slots.is_empty() {
        return passed(
            name,
            "no machine template of this rollout draws from a slot pool",
        );
    }
    // Per pool: the control plane rolls out alone; pools roll out maxConcurrentPools at a
    // time, so the need is the larger of the control plane's surge and the largest sum of
    // that many pool surges.
    let k = i.spec.workers.max_concurrent_pools.max(1) as usize;
    let mut by_pool: BTreeMap<String, (Vec<&SlotObs>, Option<&SlotObs>)> = BTreeMap::new();
    for s in &i.obs.slots {
        let key = format!("{} {}", s.pool.kind, s.pool.name);
        let e = by_pool.entry(key).or_default();
        if s.control_plane {
            e.1 = Some(s);
        } else {
            e.0.push(s);
        }
    }
    let mut short = Vec::new();
    let mut unknown = Vec::new();
    let mut fine = Vec::new();
    for (pool, (pools, cp)) in by_pool {
        let mut surges: Vec<u32> = pools.iter().map(|s| s.surge).collect();
        surges.sort_unstable_by(|a, b| b.cmp(a));
        let workers_need: u32 = surges.iter().take(k).sum();
        let need = workers_need.max(cp.map(|c| c.surge).unwrap_or(0));
        let any = cp.or(pools.first().copied()).expect("a pool has a user");
        let users: Vec<&str> = cp
            .iter()
            .chain(pools.iter())
            .map(|s| s.user.as_str())
            .collect();
        match &any.count {
            Err(e) => unknown.push(format!("{pool}: {e}")),
            Ok(c) if c.free < need => short.push(format!(
                "{pool} has {} free of {} but the rollout of {} needs {need} at a time ({}); add {} more {} to the pool, or lower maxSurge",
                c.free,
                c.total,
                users.join(", "),
                c.detail,
                need - c.free,
                if need - c.free == 1 { "entry" } else { "entries" }
            )),
            Ok(c) => fine.push(format!("{pool}: {} free, {need} needed", c.free)),
        }
    }
    if !short.is_empty() {
        return check(name, CheckState::Failed, "PoolExhausted", short.join("; "));
    }
    if !unknown.is_empty() {
        return check(
            name,
            CheckState::Unknown,
            "PoolUnreadable",
            unknown.join("; "),
        );
    }
    passed(name, fine.join("; "))
}

#[cfg(test)]
mod tests {
    use crate::api::{CheckName, CheckState};
    use crate::preflight::SlotObs;
    use crate::preflight::test_support::*;
    use providers::SlotPoolRef;

    #[test]
    fn pool_capacity_counts_the_largest_concurrent_surge() {
        let target = row("4.3.2", "v1.34.5-3", &[]);
        let pool = SlotPoolRef {
            api_version: "infrastructure.cluster.x-k8s.io/v1beta1".into(),
            kind: "DCSIpHostnamePool".into(),
            name: "shared".into(),
            namespace: None,
        };
        let slot = |user: &str, cp: bool, surge: u32, free: u32| SlotObs {
            user: user.into(),
            control_plane: cp,
            surge,
            pool: pool.clone(),
            count: Ok(providers::SlotCount {
                total: 10,
                free,
                detail: String::new(),
            }),
        };
        let mut obs = pobs();
        obs.slots = vec![
            slot("KubeadmControlPlane cp", true, 1, 1),
            slot("MachineDeployment a", false, 1, 1),
        ];
        let checks = run_all(&spec(&[]), &target, &cvsh("4.2.5"), &[], &obs);
        assert_eq!(checks[&CheckName::IPPoolCapacity].state, CheckState::Passed);
        // Two pools rolling at once from the same pool need two free entries.
        obs.slots.push(slot("MachineDeployment b", false, 1, 1));
        let mut two = spec(&[]);
        two.workers.max_concurrent_pools = 2;
        let checks = run_all(&two, &target, &cvsh("4.2.5"), &[], &obs);
        let c = &checks[&CheckName::IPPoolCapacity];
        assert_eq!(c.state, CheckState::Failed);
        assert!(c.message.contains("has 1 free of 10"), "{}", c.message);
        assert!(c.message.contains("add 1 more entry"), "{}", c.message);
    }
}
