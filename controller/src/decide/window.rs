//! `spec.maintenanceWindow` as a schedule (pure: the time is passed in). A step, and Phase 1,
//! starts only while a window is open; a step under way always runs to its end.

use std::collections::BTreeSet;

use jiff::civil::{Date, Time, Weekday as CivilWeekday};
use jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{MaintenanceWindow, Weekday, parse_go_duration};

/// How far ahead the next opening is looked for: past a year of excluded dates.
const HORIZON_DAYS: i64 = 400;
/// The longest window (the CRD's bound), so how far back an open one may have opened.
const LONGEST_DAYS: i64 = 7;

/// One weekly window, parsed.
#[derive(Debug, Clone)]
struct Weekly {
    days: Vec<CivilWeekday>,
    start: Time,
    length: SignedDuration,
}

/// A parsed `spec.maintenanceWindow`.
#[derive(Debug, Clone)]
pub struct Schedule {
    tz: TimeZone,
    tz_name: String,
    windows: Vec<Weekly>,
    exclude: BTreeSet<Date>,
}

/// Where `now` stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Now {
    /// A window is open; it closes at this instant.
    Open { closes: Timestamp },
    /// All are closed; the next opens then (`None`: none opens within [`HORIZON_DAYS`]).
    Closed { opens: Option<Timestamp> },
}

fn weekday(d: Weekday) -> CivilWeekday {
    match d {
        Weekday::Mon => CivilWeekday::Monday,
        Weekday::Tue => CivilWeekday::Tuesday,
        Weekday::Wed => CivilWeekday::Wednesday,
        Weekday::Thu => CivilWeekday::Thursday,
        Weekday::Fri => CivilWeekday::Friday,
        Weekday::Sat => CivilWeekday::Saturday,
        Weekday::Sun => CivilWeekday::Sunday,
    }
}

impl Schedule {
    /// Parses the spec; the error names the field and the fix (the API server checks the
    /// shapes, not the time zone database or the calendar).
    pub fn parse(w: &MaintenanceWindow) -> Result<Schedule, String> {
        let tz = TimeZone::get(&w.time_zone).map_err(|_| {
            format!(
                "spec.maintenanceWindow.timeZone: {:?} is not a time zone of the IANA database; use a name such as UTC, Europe/Berlin or Asia/Shanghai",
                w.time_zone
            )
        })?;
        let mut windows = Vec::new();
        for (i, win) in w.windows.iter().enumerate() {
            let field = format!("spec.maintenanceWindow.windows[{i}]");
            let start = win
                .start
                .split_once(':')
                .and_then(|(h, m)| Some((h.parse::<i8>().ok()?, m.parse::<i8>().ok()?)))
                .and_then(|(h, m)| Time::new(h, m, 0, 0).ok())
                .ok_or_else(|| {
                    format!("{field}.start: {:?} is not HH:MM such as 22:00", win.start)
                })?;
            let length = parse_go_duration(&win.duration)
                .ok()
                .and_then(|d| SignedDuration::try_from(d).ok())
                .filter(|d| {
                    *d >= SignedDuration::from_mins(1)
                        && *d <= SignedDuration::from_hours(24 * LONGEST_DAYS)
                })
                .ok_or_else(|| {
                    format!(
                        "{field}.duration: {:?} is not a duration between 1m and 168h such as 4h",
                        win.duration
                    )
                })?;
            windows.push(Weekly {
                days: win.days.iter().copied().map(weekday).collect(),
                start,
                length,
            });
        }
        if windows.is_empty() {
            return Err(
                "spec.maintenanceWindow.windows: list at least one window, such as {days: [Sat], start: \"22:00\", duration: 4h}".into(),
            );
        }
        let mut exclude = BTreeSet::new();
        for (i, d) in w.exclude.iter().enumerate() {
            let date: Date = d.parse().map_err(|_| {
                format!(
                    "spec.maintenanceWindow.exclude[{i}]: {d:?} is not a calendar date (YYYY-MM-DD)"
                )
            })?;
            exclude.insert(date);
        }
        Ok(Schedule {
            tz,
            tz_name: w.time_zone.clone(),
            windows,
            exclude,
        })
    }

    /// The windows opening on local dates `from..=to`, as (opens, closes), by opening time.
    fn occurrences(&self, from: Date, to: Date) -> Vec<(Timestamp, Timestamp)> {
        let mut out = Vec::new();
        let mut day = from;
        while day <= to {
            if !self.exclude.contains(&day) {
                for w in &self.windows {
                    if !w.days.is_empty() && !w.days.contains(&day.weekday()) {
                        continue;
                    }
                    // A start inside a daylight-saving gap opens just after it ("compatible").
                    let Ok(opens) = day.to_datetime(w.start).to_zoned(self.tz.clone()) else {
                        continue;
                    };
                    let opens = opens.timestamp();
                    if let Ok(closes) = opens.checked_add(w.length) {
                        out.push((opens, closes));
                    }
                }
            }
            match day.tomorrow() {
                Ok(next) => day = next,
                Err(_) => break,
            }
        }
        out.sort();
        out
    }

    fn local_date(&self, t: Timestamp, days: i64) -> Date {
        let d = t.to_zoned(self.tz.clone()).date();
        d.checked_add(jiff::Span::new().days(days)).unwrap_or(d)
    }

    /// Whether a window is open at `now`, and until when; else when the next one opens.
    pub fn at(&self, now: Timestamp) -> Now {
        let from = self.local_date(now, -(LONGEST_DAYS + 1));
        let to = self.local_date(now, HORIZON_DAYS);
        let occurrences = self.occurrences(from, to);
        let closes = occurrences
            .iter()
            .filter(|(o, c)| *o <= now && now < *c)
            .map(|(_, c)| *c)
            .max();
        match closes {
            Some(closes) => Now::Open { closes },
            None => Now::Closed {
                opens: occurrences.iter().map(|(o, _)| *o).find(|o| *o > now),
            },
        }
    }

    /// The earliest instant at or after `t` when a window is open, with its closing time.
    pub fn earliest(&self, t: Timestamp) -> Option<(Timestamp, Timestamp)> {
        match self.at(t) {
            Now::Open { closes } => Some((t, closes)),
            Now::Closed { opens: Some(o) } => match self.at(o) {
                Now::Open { closes } => Some((o, closes)),
                Now::Closed { .. } => None,
            },
            Now::Closed { opens: None } => None,
        }
    }

    /// `t` in the schedule's zone, for messages (`2026-12-05T22:00:00+01:00[Europe/Berlin]`).
    pub fn local(&self, t: Timestamp) -> String {
        format!("{}", t.to_zoned(self.tz.clone()))
    }

    pub fn time_zone(&self) -> &str {
        &self.tz_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Window;

    fn schedule(tz: &str, windows: &[(&[Weekday], &str, &str)], exclude: &[&str]) -> Schedule {
        Schedule::parse(&MaintenanceWindow {
            time_zone: tz.into(),
            windows: windows
                .iter()
                .map(|(days, start, duration)| Window {
                    days: days.to_vec(),
                    start: start.to_string(),
                    duration: duration.to_string(),
                })
                .collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_weekly_window_in_a_zone_is_open_inside_and_says_when_it_opens_outside() {
        // Saturdays 22:00 Berlin (UTC+1 in December) for 4 h, so it runs past midnight.
        let s = schedule("Europe/Berlin", &[(&[Weekday::Sat], "22:00", "4h")], &[]);
        // Wednesday 2026-12-02 12:00 UTC: closed, opens Saturday 21:00 UTC.
        assert_eq!(
            s.at(ts("2026-12-02T12:00:00Z")),
            Now::Closed {
                opens: Some(ts("2026-12-05T21:00:00Z"))
            }
        );
        assert_eq!(
            s.at(ts("2026-12-05T21:00:00Z")),
            Now::Open {
                closes: ts("2026-12-06T01:00:00Z")
            }
        );
        // Sunday 00:30 local: still the Saturday window.
        assert_eq!(
            s.at(ts("2026-12-05T23:30:00Z")),
            Now::Open {
                closes: ts("2026-12-06T01:00:00Z")
            }
        );
        // Closed at its end, next one a week later.
        assert_eq!(
            s.at(ts("2026-12-06T01:00:00Z")),
            Now::Closed {
                opens: Some(ts("2026-12-12T21:00:00Z"))
            }
        );
        assert_eq!(
            s.local(ts("2026-12-05T21:00:00Z")),
            "2026-12-05T22:00:00+01:00[Europe/Berlin]"
        );
    }

    #[test]
    fn every_day_when_no_days_and_excluded_dates_skip_openings_not_open_windows() {
        let s = schedule("UTC", &[(&[], "02:00", "1h")], &["2026-12-03"]);
        assert_eq!(
            s.at(ts("2026-12-02T12:00:00Z")),
            Now::Closed {
                opens: Some(ts("2026-12-04T02:00:00Z"))
            }
        );
        // A window that opened the day before an excluded date runs to its end.
        let s = schedule("UTC", &[(&[], "23:00", "3h")], &["2026-12-03"]);
        assert_eq!(
            s.at(ts("2026-12-03T01:00:00Z")),
            Now::Open {
                closes: ts("2026-12-03T02:00:00Z")
            }
        );
    }

    #[test]
    fn daylight_saving_shifts_follow_the_zone_and_a_gap_opens_after_it() {
        // Berlin springs forward on 2027-03-28 at 02:00 → 03:00: 02:30 does not exist.
        let s = schedule("Europe/Berlin", &[(&[Weekday::Sun], "02:30", "1h")], &[]);
        assert_eq!(
            s.at(ts("2027-03-27T12:00:00Z")),
            Now::Closed {
                opens: Some(ts("2027-03-28T01:30:00Z"))
            }
        );
        // Summer time: 22:00 local is 20:00 UTC.
        let s = schedule("Europe/Berlin", &[(&[], "22:00", "1h")], &[]);
        assert_eq!(
            s.at(ts("2027-06-01T12:00:00Z")),
            Now::Closed {
                opens: Some(ts("2027-06-01T20:00:00Z"))
            }
        );
    }

    #[test]
    fn the_earliest_open_instant_and_overlapping_windows() {
        let s = schedule("UTC", &[(&[], "01:00", "2h"), (&[], "02:00", "3h")], &[]);
        assert_eq!(
            s.at(ts("2026-12-02T02:30:00Z")),
            Now::Open {
                closes: ts("2026-12-02T05:00:00Z")
            }
        );
        assert_eq!(
            s.earliest(ts("2026-12-02T06:00:00Z")),
            Some((ts("2026-12-03T01:00:00Z"), ts("2026-12-03T03:00:00Z")))
        );
        assert_eq!(
            s.earliest(ts("2026-12-02T01:30:00Z")),
            Some((ts("2026-12-02T01:30:00Z"), ts("2026-12-02T03:00:00Z")))
        );
    }

    #[test]
    fn a_window_that_never_opens_within_the_horizon_says_so() {
        // Every Monday of the next 400 days excluded... a single weekday with dates cut: use a
        // window whose only day is excluded for more than a year.
        let mondays: Vec<String> = (0..60)
            .map(|w| {
                let d: Date = "2026-12-07".parse().unwrap();
                d.checked_add(jiff::Span::new().weeks(w))
                    .unwrap()
                    .to_string()
            })
            .collect();
        let refs: Vec<&str> = mondays.iter().map(String::as_str).collect();
        let s = schedule("UTC", &[(&[Weekday::Mon], "10:00", "1h")], &refs);
        assert_eq!(
            s.at(ts("2026-12-02T00:00:00Z")),
            Now::Closed { opens: None }
        );
        assert_eq!(s.earliest(ts("2026-12-02T00:00:00Z")), None);
    }

    #[test]
    fn what_the_api_server_cannot_check_is_an_exact_error() {
        let w = |tz: &str, start: &str, duration: &str, exclude: &[&str]| MaintenanceWindow {
            time_zone: tz.into(),
            windows: vec![Window {
                days: vec![],
                start: start.into(),
                duration: duration.into(),
            }],
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        };
        let err = |m: MaintenanceWindow| Schedule::parse(&m).unwrap_err();
        assert!(
            err(w("Mars/Olympus", "22:00", "4h", &[]))
                .contains("spec.maintenanceWindow.timeZone: \"Mars/Olympus\" is not a time zone")
        );
        assert!(
            err(w("UTC", "22:00", "4h", &["2026-02-30"])).contains(
                "spec.maintenanceWindow.exclude[0]: \"2026-02-30\" is not a calendar date"
            )
        );
        assert!(err(w("UTC", "25:00", "4h", &[])).contains("windows[0].start"));
        assert!(err(w("UTC", "22:00", "200h", &[])).contains("windows[0].duration"));
        let mut none = w("UTC", "22:00", "4h", &[]);
        none.windows.clear();
        assert!(err(none).contains("list at least one window"));
        assert!(Schedule::parse(&w("Asia/Shanghai", "00:00", "168h", &[])).is_ok());
    }
}
