//! Condition `InMaintenanceWindow` and `status.nextWindow` (pure): whether a window of
//! `spec.maintenanceWindow` is open now, and when the next opens while all are closed. Only
//! while the request has something left to start; none without a window, or once finished.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{UpgradeRequestSpec, UpgradeRequestStatus};
use crate::decide::Outcome;
use crate::decide::window::{Now, Schedule};

use super::set_condition;

pub const CONDITION: &str = "InMaintenanceWindow";

pub fn record(
    status: &mut UpgradeRequestStatus,
    spec: &UpgradeRequestSpec,
    outcome: &Outcome,
    generation: i64,
    now: Timestamp,
) {
    let schedule = spec
        .maintenance_window
        .as_ref()
        .and_then(|w| Schedule::parse(w).ok());
    let Some(schedule) = schedule.filter(|_| *outcome != Outcome::Succeeded) else {
        status.conditions.retain(|c| c.type_ != CONDITION);
        status.next_window = None;
        return;
    };
    match schedule.at(now) {
        Now::Open { closes } => {
            status.next_window = None;
            let message = format!(
                "open until {}; a step started before then runs to its end",
                schedule.local(closes)
            );
            set_condition(
                &mut status.conditions,
                CONDITION,
                true,
                "WindowOpen",
                &message,
                generation,
                now,
            );
        }
        Now::Closed { opens } => {
            status.next_window = opens.map(Time);
            let message = match opens {
                Some(o) => format!("closed; the next window opens at {}", schedule.local(o)),
                None => "closed, and no window opens within the next year (every opening falls on an excluded date)".into(),
            };
            set_condition(
                &mut status.conditions,
                CONDITION,
                false,
                "WindowClosed",
                &message,
                generation,
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Closed;
    use std::time::Duration;

    fn spec(window: bool) -> UpgradeRequestSpec {
        let mut v = serde_json::json!({"clusterName": "c", "targetVersion": "4.2"});
        if window {
            v["maintenanceWindow"] = serde_json::json!({"timeZone": "Europe/Berlin",
                "windows": [{"days": ["Sat"], "start": "22:00", "duration": "4h"}]});
        }
        serde_json::from_value(v).unwrap()
    }

    fn condition(s: &UpgradeRequestStatus) -> Option<(String, String)> {
        s.conditions
            .iter()
            .find(|c| c.type_ == CONDITION)
            .map(|c| (c.status.clone(), c.message.clone()))
    }

    #[test]
    fn closed_says_when_it_opens_open_until_when_and_nothing_once_finished() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let waiting = Outcome::OutsideWindow(Closed {
            what: "Phase 1".into(),
            opens: None,
            when: String::new(),
            recheck: Duration::from_secs(1),
        });
        let mut s = UpgradeRequestStatus::default();
        record(&mut s, &spec(true), &waiting, 1, at("2026-12-02T12:00:00Z"));
        assert_eq!(s.next_window, Some(Time(at("2026-12-05T21:00:00Z"))));
        let (value, message) = condition(&s).unwrap();
        assert_eq!(value, "False");
        assert_eq!(
            message,
            "closed; the next window opens at 2026-12-05T22:00:00+01:00[Europe/Berlin]"
        );
        // Deterministic: the same instant class gives the same status.
        let before = s.clone();
        record(&mut s, &spec(true), &waiting, 1, at("2026-12-02T13:00:00Z"));
        assert_eq!(s, before);

        let running = Outcome::Upgrading {
            recheck: Duration::from_secs(1),
        };
        record(&mut s, &spec(true), &running, 1, at("2026-12-05T23:00:00Z"));
        assert_eq!(s.next_window, None);
        let (value, message) = condition(&s).unwrap();
        assert_eq!(value, "True");
        assert!(message.starts_with("open until 2026-12-06T02:00:00+01:00[Europe/Berlin]"));

        record(
            &mut s,
            &spec(true),
            &Outcome::Succeeded,
            1,
            at("2026-12-06T03:00:00Z"),
        );
        assert_eq!((condition(&s), s.next_window.clone()), (None, None));
        record(
            &mut s,
            &spec(false),
            &running,
            1,
            at("2026-12-02T12:00:00Z"),
        );
        assert_eq!(condition(&s), None);
    }
}
