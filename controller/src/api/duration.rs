//! Go-style durations in specs (`45m`, `1h30m`, `90s`), bounded in the CRD and parsed with
//! checked arithmetic, so no value a user can write reaches an overflowing multiplication.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A rollout timeout as written in the spec. It keeps the text as written, so an object stored
/// under an older, looser CRD still deserializes; [`Timeout::get`] parses and bounds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Timeout(String);

/// The shortest timeout accepted: a rollout replaces machines, which takes minutes.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest timeout accepted (30 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a timeout string is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration such as 45m, 1h30m or 90s (hours, minutes, seconds)")]
    Syntax(String),
    #[error("{value:?} is outside the accepted range 1m–720h")]
    OutOfRange { value: String },
}

impl Timeout {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The duration, within [`MIN_TIMEOUT`]..=[`MAX_TIMEOUT`].
    pub fn get(&self) -> Result<Duration, DurationError> {
        let d = parse_go_duration(&self.0)?;
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&d) {
            return Err(DurationError::OutOfRange {
                value: self.0.clone(),
            });
        }
        Ok(d)
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `[Nh][Nm][Ns]` (at least one part, each unit at most once, in that order) with
/// checked arithmetic: a value too large for a `Duration` is an error, never a panic.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError::Syntax(s.to_string());
    let mut secs: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = 0u8;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let (rank, per) = match c {
            'h' => (1, 3600u64),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return Err(err()),
        };
        if digits.is_empty() || rank <= last_unit {
            return Err(err());
        }
        last_unit = rank;
        let n: u64 = digits.parse().map_err(|_| err())?;
        digits.clear();
        secs = n
            .checked_mul(per)
            .and_then(|v| secs.checked_add(v))
            .ok_or_else(|| DurationError::OutOfRange {
                value: s.to_string(),
            })?;
    }
    if !digits.is_empty() || last_unit == 0 {
        return Err(err());
    }
    Ok(Duration::from_secs(secs))
}

impl JsonSchema for Timeout {
    fn schema_name() -> Cow<'static, str> {
        "Timeout".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // The pattern bounds the digits; CEL's duration() bounds the value (and rejects what
        // the pattern lets through but is not a duration, such as "").
        schemars::json_schema!({
            "type": "string",
            "minLength": 2,
            "maxLength": 16,
            "pattern": "^([0-9]{1,4}h)?([0-9]{1,6}m)?([0-9]{1,8}s)?$",
            "x-kubernetes-validations": [{
                "rule": "duration(self) >= duration('1m') && duration(self) <= duration('720h')",
                "message": "must be a duration between 1m and 720h, such as 45m or 1h30m",
            }],
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go_within_bounds() {
        assert_eq!(Timeout::new("45m").get(), Ok(Duration::from_secs(2700)));
        assert_eq!(Timeout::new("1h30m").get(), Ok(Duration::from_secs(5400)));
        assert_eq!(Timeout::new("90s").get(), Ok(Duration::from_secs(90)));
        for bad in ["", "5", "5d", "m", "30m1h", "1h1h", "-5m", "1.5h"] {
            assert!(
                matches!(Timeout::new(bad).get(), Err(DurationError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Timeout::new("30s").get(),
            Err(DurationError::OutOfRange { .. })
        ));
        assert!(matches!(
            Timeout::new("721h").get(),
            Err(DurationError::OutOfRange { .. })
        ));
    }

    #[test]
    fn huge_values_are_errors_not_panics() {
        // The value that once panicked in a duration multiplication.
        for huge in [
            "4611686018427387904s",
            "99999999999999999999h",
            "18446744073709551615h",
        ] {
            assert!(Timeout::new(huge).get().is_err(), "{huge}");
        }
    }
}
