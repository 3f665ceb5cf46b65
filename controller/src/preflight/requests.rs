//! SingleActiveRequest: one request per cluster proceeds, by a rule the others can state.

use k8s_openapi::jiff::Timestamp;

use super::{Input, check, passed};
use crate::api::{CheckName, CheckState, PreflightCheck};

pub(super) fn single_request(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::SingleActiveRequest;
    let me = &i.obs.me;
    let winner = i
        .obs
        .other_requests
        .iter()
        .filter(|o| !o.finished && o.name != me.name)
        .min_by(|a, b| a.rank().cmp(&b.rank()));
    let Some(w) = winner.filter(|w| w.rank() < me.rank()) else {
        return passed(
            name,
            format!(
                "no other unfinished UpgradeRequest for cluster {} goes before this one",
                i.cluster_name
            ),
        );
    };
    let when = |t: Option<Timestamp>| t.map_or("an unknown time".to_string(), |t| t.to_string());
    let why = if w.holds && !me.holds {
        format!(
            "already holds cluster {} (it asked the platform for its target at {})",
            i.cluster_name,
            when(w.holds_since)
        )
    } else if w.created == me.created {
        format!(
            "was created in the same second as this one ({}) and goes first by name",
            when(w.created)
        )
    } else {
        format!(
            "was created at {}, before this request ({})",
            when(w.created),
            when(me.created)
        )
    };
    check(
        name,
        CheckState::Failed,
        "AnotherRequestActive",
        format!(
            "UpgradeRequest {} {why}; only one request per cluster proceeds — this one waits until {} has succeeded (or is deleted), then re-plans from where it left the cluster",
            w.name, w.name
        ),
    )
}

#[cfg(test)]
mod tests {
    use crate::api::{CheckName, CheckState};
    use crate::preflight::Contender;
    use crate::preflight::test_support::*;

    #[test]
    fn one_request_per_cluster_wins_and_the_others_name_it_truthfully() {
        let target = row("4.3.2", "v1.34.5-3", &[]);
        let run = |me: Contender, others: Vec<Contender>| {
            let mut obs = pobs();
            obs.me = me;
            obs.other_requests = others;
            run_all(&spec(&[]), &target, &cvsh("4.2.5"), &[], &obs)
                .remove(&CheckName::SingleActiveRequest)
                .unwrap()
        };
        // Same second: the first by name wins, whoever is asked.
        let a = contender("a", "2026-11-21T10:00:00Z", false);
        let b = contender("b", "2026-11-21T10:00:00Z", false);
        assert_eq!(run(a.clone(), vec![b.clone()]).state, CheckState::Passed);
        let held = run(b.clone(), vec![a.clone()]);
        assert_eq!(held.state, CheckState::Failed);
        assert!(held.message.contains("same second"), "{}", held.message);
        // A request that already holds the cluster keeps it, even against an older one.
        let holder = contender("z-late", "2026-11-21T11:00:00Z", true);
        assert_eq!(
            run(holder.clone(), vec![a.clone()]).state,
            CheckState::Passed
        );
        let held = run(a.clone(), vec![holder.clone()]);
        assert!(
            held.message.contains("already holds") && !held.message.contains("created earlier"),
            "{}",
            held.message
        );
        // An older request is named as older, with both times.
        let older = contender("x", "2026-11-21T09:00:00Z", false);
        let held = run(a.clone(), vec![older]);
        assert!(
            held.message.contains("before this request"),
            "{}",
            held.message
        );
        // Finished requests do not count.
        let mut done = holder;
        done.finished = true;
        assert_eq!(run(a, vec![done]).state, CheckState::Passed);
    }
}
