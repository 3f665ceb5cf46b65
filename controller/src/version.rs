//! Version handling (DOMAIN.md §1).
//!
//! Distribution Versions are clean semver. Kubernetes versions carry platform suffixes
//! (`v1.31.14-2`, `v1.35.6-acp.1`) that semver would read as pre-releases and sort *below* the
//! plain version, so they are never ordered with semver: only major.minor is compared
//! numerically, and "at target" means the exact same string.

use std::fmt;

/// Errors parsing versions from specs, matrices or CAPI objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("{0:?} is not a Kubernetes version (expected v1.MINOR.PATCH with an optional suffix)")]
    Kubernetes(String),
    #[error("{0:?} is not a Distribution Version (expected MAJOR.MINOR.PATCH, e.g. 4.3.1)")]
    Distribution(String),
    #[error(
        "{0:?} is not a target version (expected MAJOR.MINOR such as 4.3, or MAJOR.MINOR.PATCH)"
    )]
    Target(String),
    #[error("{0:?} is not a chart or provider release (expected vMAJOR.MINOR.PATCH, e.g. v4.3.11)")]
    Release(String),
}

/// A Kubernetes version as written in `spec.version`, with its numeric major.minor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KubeVersion {
    raw: String,
    major: u64,
    minor: u64,
}

impl KubeVersion {
    /// Parses `v1.33.7`, `v1.33.7-3`, `v1.35.6-acp.1` (the leading `v` is optional).
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        let err = || VersionError::Kubernetes(s.to_string());
        let body = s.strip_prefix('v').unwrap_or(s);
        let core = body.split(['-', '+']).next().ok_or_else(err)?;
        let mut parts = core.split('.');
        let mut num = || -> Result<u64, VersionError> {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            p.parse().map_err(|_| err())
        };
        let (major, minor, _patch) = (num()?, num()?, num()?);
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self {
            raw: s.to_string(),
            major,
            minor,
        })
    }

    /// The string exactly as written (what goes into `spec.version`).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// `(major, minor)`, the only part ever ordered.
    pub fn minor(&self) -> (u64, u64) {
        (self.major, self.minor)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Formats a `(major, minor)` pair as `1.33`.
pub fn minor_str((major, minor): (u64, u64)) -> String {
    format!("{major}.{minor}")
}

/// A Distribution Version (ACP release), ordered as semver.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DistributionVersion(semver::Version);

impl DistributionVersion {
    /// Parses `4.3.1` or `v4.3.1`; pre-release and build suffixes are refused.
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        let body = s.strip_prefix('v').unwrap_or(s);
        match semver::Version::parse(body) {
            Ok(v) if v.pre.is_empty() && v.build.is_empty() => Ok(Self(v)),
            _ => Err(VersionError::Distribution(s.to_string())),
        }
    }

    pub fn major_minor(&self) -> (u64, u64) {
        (self.0.major, self.0.minor)
    }
}

impl fmt::Display for DistributionVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Helm chart or provider release (`v4.3.11`, `v1.0.22`): semver with an optional `v`
/// (DOMAIN.md §3: the Kube-OVN chart boundary v4.4, the providers' full-source releases).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReleaseVersion(semver::Version);

impl ReleaseVersion {
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        semver::Version::parse(s.strip_prefix('v').unwrap_or(s))
            .map(Self)
            .map_err(|_| VersionError::Release(s.to_string()))
    }

    /// At or above `major.minor.0` (a pre-release of it is below).
    pub fn at_least(&self, major: u64, minor: u64) -> bool {
        self.0 >= semver::Version::new(major, minor, 0)
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// What `spec.targetVersion` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `4.3`: the latest patch row of that minor.
    LatestOf(u64, u64),
    /// `4.3.1`: exactly that row.
    Exact(DistributionVersion),
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        let body = s.strip_prefix('v').unwrap_or(s);
        let parts: Vec<&str> = body.split('.').collect();
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        match parts.as_slice() {
            [ma, mi] if digits(ma) && digits(mi) => Ok(Self::LatestOf(
                ma.parse().map_err(|_| VersionError::Target(s.into()))?,
                mi.parse().map_err(|_| VersionError::Target(s.into()))?,
            )),
            [_, _, _] => DistributionVersion::parse(s)
                .map(Self::Exact)
                .map_err(|_| VersionError::Target(s.into())),
            _ => Err(VersionError::Target(s.into())),
        }
    }

    /// Whether a row's Distribution Version is what this target selects among (same minor, or
    /// the exact version).
    pub fn matches(&self, v: &DistributionVersion) -> bool {
        match self {
            Self::LatestOf(ma, mi) => v.major_minor() == (*ma, *mi),
            Self::Exact(t) => t == v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_suffixes_do_not_change_the_minor() {
        for (s, minor) in [
            ("v1.31.14-2", (1, 31)),
            ("v1.33.7-3", (1, 33)),
            ("v1.35.6-acp.1", (1, 35)),
            ("v1.34.5", (1, 34)),
            ("1.32.7", (1, 32)),
            ("v1.34.5+build.1", (1, 34)),
        ] {
            let v = KubeVersion::parse(s).unwrap();
            assert_eq!(v.minor(), minor, "{s}");
            assert_eq!(v.as_str(), s, "the string is kept unchanged");
        }
    }

    #[test]
    fn semver_would_misorder_suffixed_versions_but_minors_do_not() {
        // The reason for KubeVersion: semver reads "-2" as a pre-release.
        let plain = semver::Version::parse("1.31.14").unwrap();
        let suffixed = semver::Version::parse("1.31.14-2").unwrap();
        assert!(suffixed < plain);
        let a = KubeVersion::parse("v1.31.14-2").unwrap();
        let b = KubeVersion::parse("v1.31.14").unwrap();
        assert_eq!(a.minor(), b.minor());
        assert_ne!(a, b, "at-target is exact string equality");
    }

    #[test]
    fn malformed_kubernetes_versions_are_rejected() {
        for s in ["", "v1", "v1.33", "v1.x.3", "v1.33.7.1", "latest", "v1..3"] {
            assert!(KubeVersion::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn distribution_versions_are_clean_semver() {
        assert!(
            DistributionVersion::parse("4.1.10").unwrap()
                > DistributionVersion::parse("4.1.9").unwrap()
        );
        assert_eq!(
            DistributionVersion::parse("v4.3.0").unwrap().to_string(),
            "4.3.0"
        );
        for s in ["4.3", "4.3.0-rc.1", "four"] {
            assert!(DistributionVersion::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn releases_order_as_semver_with_or_without_v() {
        let v = |s| ReleaseVersion::parse(s).unwrap();
        assert!(v("v1.0.22") > v("v1.0.21"));
        assert!(v("v1.0.4") < v("1.0.16"));
        assert!(v("v4.4.1").at_least(4, 4));
        assert!(!v("v4.3.11").at_least(4, 4));
        assert!(!v("v4.4.0-beta.1").at_least(4, 4));
        assert_eq!(v("4.3.11").to_string(), "v4.3.11");
        for s in ["", "v4.3", "latest", "v4.x.1"] {
            assert!(ReleaseVersion::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn targets_are_a_minor_or_an_exact_release() {
        assert_eq!(Target::parse("4.3").unwrap(), Target::LatestOf(4, 3));
        assert_eq!(Target::parse("v4.3").unwrap(), Target::LatestOf(4, 3));
        assert_eq!(
            Target::parse("4.3.1").unwrap(),
            Target::Exact(DistributionVersion::parse("4.3.1").unwrap())
        );
        for s in ["4", "4.x", "4.3.1.2", "", "4.3.1-rc.1"] {
            assert!(Target::parse(s).is_err(), "{s:?}");
        }
    }
}
