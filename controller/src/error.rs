//! Why a reconcile cannot go on. [`Error`]: what the API server said (or that it could not be
//! reached), a panic caught before it could take the process down, or a [`Stall`]: a problem
//! only a person can fix, which is status (`Stalled=True` with [`StallReason`] and the fix),
//! never a retry loop. The others are retried with backoff, and when retries do not cure them
//! the request's status says so with the API server's own message.

use std::fmt;
use std::time::Duration;

/// One reconcile's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", describe_kube(.0))]
    Kube(#[from] kube::Error),
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// A bug: the reconcile of this one request panicked. Caught, so every other request goes
    /// on; retried with backoff like any failure.
    #[error("internal error (a bug in the controller, please report it): {0}")]
    Panicked(String),
    /// Needs a person: reported as status, not retried blindly.
    #[error("{}: {}", .0.reason, .0.message)]
    Stall(Stall),
    /// A watch the decision needs has not completed its first list (the API server refuses or
    /// is unreachable): nothing is decided from an incomplete cache.
    #[error("{message}")]
    Watch {
        reason: &'static str,
        message: String,
    },
}

impl From<Stall> for Error {
    fn from(s: Stall) -> Self {
        Error::Stall(s)
    }
}

fn describe_kube(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!(
            "the API server answered {} {}: {}",
            s.code, s.reason, s.message
        ),
        other => format!("the API server could not be reached: {other}"),
    }
}

fn refused_by_admission(message: &str) -> bool {
    message.contains("admission webhook")
        || message.contains("denied the request")
        || message.contains("ValidatingAdmissionPolicy")
}

fn api_reason(code: u16, message: &str) -> &'static str {
    match code {
        400 | 403 | 422 if refused_by_admission(message) => "AdmissionRefused",
        403 => "Forbidden",
        401 => "Unauthorized",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        400 => "BadRequest",
        429 => "TooManyRequests",
        500..=599 => "APIServerError",
        _ => "APIError",
    }
}

/// The reason and message of a failed watch (see [`Error::reason`]).
pub fn watch_failure(e: &kube::runtime::watcher::Error) -> (&'static str, String) {
    use kube::runtime::watcher::Error as W;
    match e {
        W::InitialListFailed(k) | W::WatchStartFailed(k) | W::WatchFailed(k) => {
            let reason = match k {
                kube::Error::Api(s) => api_reason(s.code, &s.message),
                _ => "APIUnavailable",
            };
            (reason, describe_kube(k))
        }
        W::WatchError(s) => (
            api_reason(s.code, &s.message),
            format!(
                "the API server answered {} {}: {}",
                s.code, s.reason, s.message
            ),
        ),
        other => ("APIError", other.to_string()),
    }
}

impl Error {
    /// A static label for conditions, metrics and logs (never a Debug string).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) => api_reason(s.code, &s.message),
            Error::Kube(_) => "APIUnavailable",
            Error::Json(_) => "Serialization",
            Error::Panicked(_) => "InternalError",
            Error::Stall(_) => "Stalled",
            Error::Watch { reason, .. } => reason,
        }
    }

    /// Whether the failure is likely to pass by itself (a busy or restarting API server).
    /// The others need a person: a missing RBAC rule, an admission refusal, an invalid object.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.reason(),
            "APIUnavailable" | "APIServerError" | "Conflict" | "TooManyRequests"
        )
    }

    /// What to tell the operator, with the fix where the reason implies one.
    pub fn advice(&self) -> &'static str {
        match self.reason() {
            "Forbidden" | "Unauthorized" => {
                "the controller's ServiceAccount lacks this right: add the rule to its ClusterRole (charts/upgrade-controller/templates/clusterrole.yaml)"
            }
            "AdmissionRefused" => {
                "an admission webhook or policy refused the write: see its message"
            }
            "Invalid" | "BadRequest" => {
                "the API server refused the object the controller built: check the template or matrix row it came from"
            }
            "InternalError" => {
                "the controller hit a bug on this request; other requests are unaffected"
            }
            _ => "the controller keeps retrying",
        }
    }
}

/// Runs `fut`, turning a panic inside it into [`Error::Panicked`]: one request's bug fails that
/// request's reconcile only, never the controller's other requests or the process.
pub async fn contain<T>(
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(Error::Panicked(what))
        })
}

/// The reason of a stall. Every variant but [`StallReason::Platform`] and
/// [`StallReason::Api`] is this controller's own; their names are the condition reasons users
/// see and alert on, so they never change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StallReason {
    // The spec, the matrix or the cluster (DESIGN.md "Flow" 1–2).
    ClusterNotFound,
    ControlPlaneNotFound,
    MatrixNotFound,
    InvalidSpec,
    UnsupportedProvider,
    ClusterClassManaged,
    MachinePoolsUnsupported,
    ControlPlaneNotOwned,
    ReferenceRefused,
    ClusterVersionShadowUnmapped,
    ReservedCluster,
    // Planning (the planner's errors).
    InvalidTarget,
    InvalidMatrix,
    UnknownTarget,
    InvalidClusterVersion,
    Downgrade,
    UnsupportedPath,
    MissingMatrixRow,
    VersionSkew,
    // Phase 1.
    ClusterVersionShadowNotFound,
    ExtensionsTargetChanged,
    ExtensionsStalled,
    // Hops.
    ClusterChangedOutside,
    /// `Handoff` mode: Git declares other values than the step asks for.
    GitDeclaresOtherwise,
    RolloutTimeout,
    PoolNotFound,
    TemplateNotFound,
    TemplateInvalid,
    TemplateConflict,
    /// The provider replaces machines delete-then-add (bare metal) but a rollout has a surge.
    SurgeNotAllowed,
    /// The cluster uses Kube-OVN but its network type, or the infrastructure cluster that
    /// records it, could not be read or is refused.
    NetworkUnknown,
    /// The cluster's Kube-OVN AppRelease reports `DownloadFailed`, `DeployFailed` or
    /// `NotReady` (DOMAIN.md §3).
    KubeOvnFailed,
    /// The platform's own reason, verbatim (the Cluster Version Operator's `Stalled`).
    Platform(String),
    /// An API failure that persisted through retries ([`crate::error::Error::reason`]).
    Api(&'static str),
}

impl StallReason {
    pub fn as_str(&self) -> &str {
        use StallReason::*;
        match self {
            ClusterNotFound => "ClusterNotFound",
            ControlPlaneNotFound => "ControlPlaneNotFound",
            MatrixNotFound => "MatrixNotFound",
            InvalidSpec => "InvalidSpec",
            UnsupportedProvider => "UnsupportedProvider",
            ClusterClassManaged => "ClusterClassManaged",
            MachinePoolsUnsupported => "MachinePoolsUnsupported",
            ControlPlaneNotOwned => "ControlPlaneNotOwned",
            ReferenceRefused => "ReferenceRefused",
            ClusterVersionShadowUnmapped => "ClusterVersionShadowUnmapped",
            ReservedCluster => "ReservedCluster",
            InvalidTarget => "InvalidTarget",
            InvalidMatrix => "InvalidMatrix",
            UnknownTarget => "UnknownTarget",
            InvalidClusterVersion => "InvalidClusterVersion",
            Downgrade => "Downgrade",
            UnsupportedPath => "UnsupportedPath",
            MissingMatrixRow => "MissingMatrixRow",
            VersionSkew => "VersionSkew",
            ClusterVersionShadowNotFound => "ClusterVersionShadowNotFound",
            ExtensionsTargetChanged => "ExtensionsTargetChanged",
            ExtensionsStalled => "ExtensionsStalled",
            ClusterChangedOutside => "ClusterChangedOutside",
            GitDeclaresOtherwise => "GitDeclaresOtherwise",
            RolloutTimeout => "RolloutTimeout",
            PoolNotFound => "PoolNotFound",
            TemplateNotFound => "TemplateNotFound",
            TemplateInvalid => "TemplateInvalid",
            TemplateConflict => "TemplateConflict",
            SurgeNotAllowed => "SurgeNotAllowed",
            NetworkUnknown => "NetworkUnknown",
            KubeOvnFailed => "KubeOvnFailed",
            Platform(r) => r,
            Api(r) => r,
        }
    }
}

impl fmt::Display for StallReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for StallReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a request cannot go on, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub reason: StallReason,
    pub message: String,
}

impl Stall {
    pub fn new(reason: StallReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl StallReason {
    /// The reason of a Cluster that maps to no ClusterVersionShadow it may move.
    pub fn from_unmapped(u: &crate::platform::Unmapped) -> Self {
        match u.reason {
            "ReservedCluster" => StallReason::ReservedCluster,
            _ => StallReason::ClusterVersionShadowUnmapped,
        }
    }
}

/// Consecutive failures before a request's status reports them (earlier ones are usually a
/// restarting API server).
pub const FAILURES_BEFORE_REPORT: u32 = 3;

/// Exponential backoff for the `n`th consecutive failure (n ≥ 1): 5 s, 10 s, 20 s, ... up to
/// 5 minutes, each with ±20 % jitter so requests that failed together do not retry together.
pub fn backoff(n: u32, jitter: f64) -> Duration {
    let base = 5.0 * 2f64.powi(n.saturating_sub(1).min(16) as i32);
    let capped = base.min(300.0);
    Duration::from_secs_f64(capped * (0.8 + 0.4 * jitter.clamp(0.0, 1.0)))
}

/// A jitter fraction in [0, 1) from the standard library's randomly keyed hasher.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    (h.finish() % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> Error {
        Error::Kube(kube::Error::Api(
            kube::core::Status::failure(message, "x")
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn reasons_are_static_and_say_who_must_act() {
        let forbidden = api(
            403,
            r#"kubeadmcontrolplanes.controlplane.cluster.x-k8s.io "c" is forbidden: User "system:serviceaccount:x:y" cannot patch resource "kubeadmcontrolplanes""#,
        );
        assert_eq!(forbidden.reason(), "Forbidden");
        assert!(!forbidden.is_transient());
        assert!(forbidden.to_string().contains("cannot patch resource"));
        let webhook = api(
            403,
            "admission webhook \"validation.kcp\" denied the request: spec.version: Forbidden",
        );
        assert_eq!(webhook.reason(), "AdmissionRefused");
        assert_eq!(api(422, "spec.template: Invalid value").reason(), "Invalid");
        assert!(api(503, "unavailable").is_transient());
        assert!(api(409, "conflict").is_transient());
        assert_eq!(Error::Panicked("x".into()).reason(), "InternalError");
    }

    #[tokio::test]
    async fn a_panic_in_one_reconcile_is_an_error_of_that_reconcile() {
        let crashed = contain(async {
            let v: Vec<u8> = Vec::new();
            #[allow(clippy::useless_vec)]
            let _ = v[3];
            Ok::<_, Error>(())
        })
        .await;
        let e = crashed.unwrap_err();
        assert_eq!(e.reason(), "InternalError");
        assert!(e.to_string().contains("index out of bounds"), "{e}");
        // The runtime (and whatever else runs on it) is unaffected.
        assert_eq!(contain(async { Ok::<_, Error>(7) }).await.unwrap(), 7);
    }

    #[test]
    fn backoff_grows_to_five_minutes_with_jitter() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(5));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(10));
        assert_eq!(backoff(4, 0.5), Duration::from_secs(40));
        assert_eq!(backoff(40, 0.5), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX, 0.5), Duration::from_secs(300));
        assert!(backoff(1, 0.0) >= Duration::from_secs(4));
        assert!(backoff(1, 1.0) <= Duration::from_secs(6));
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }
}
