//! `spec.maintenanceWindow`: when the steps of an upgrade may start. The API server checks the
//! shapes (CEL and patterns); what it cannot check (an unknown time zone, a date such as
//! `2026-02-30`) stalls the request with the field and the fix (`decide::window`).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Weekly windows in one time zone, with dates on which none opens. A step (and Phase 1)
/// starts only while a window is open; a rollout under way is never interrupted when one
/// closes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// IANA time zone the windows and dates are in (`Europe/Berlin`, `Asia/Shanghai`);
    /// default `UTC`. Daylight-saving changes follow the zone's rules.
    #[serde(default = "utc")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")
    )]
    pub time_zone: String,

    /// The weekly windows; a step may start while any of them is open.
    #[schemars(length(min = 1, max = 32))]
    pub windows: Vec<Window>,

    /// Local dates (`YYYY-MM-DD`) on which no window opens. A window that opened the day
    /// before stays open to its end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 366),
        inner(regex(pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub exclude: Vec<String>,
}

fn utc() -> String {
    "UTC".into()
}

/// One weekly window: opens on `days` at `start` (local time) for `duration`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Days it opens on; empty: every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub days: Vec<Weekday>,

    /// Local opening time, `HH:MM` (24-hour clock). On a day when that time does not exist
    /// (a daylight-saving gap) it opens at the first instant after the gap.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,

    /// How long it stays open, `1m` to `168h` (`4h`, `1h30m`); it may run past midnight.
    #[schemars(
        length(min = 2, max = 16),
        regex(pattern = r"^([0-9]{1,3}h)?([0-9]{1,5}m)?$")
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("must be a duration between 1m and 168h, such as 4h or 1h30m"))]
    pub duration: String,
}

/// A day of the week.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}
