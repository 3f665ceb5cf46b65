//! upgrade-controller: a Cluster API extension that upgrades Kubernetes clusters on immutable
//! infrastructure one minor at a time (see README.md).
//!
//! The folders follow one reconcile: [`observe`] (watch caches; reads only) → [`decide`] (the
//! phase machine, the planner and the rollout gates; pure) with [`preflight`] (pure checks) →
//! [`apply`] (the writes) → [`status`] (pure) → one status write, driven by [`driver`].
//! [`capi`] holds the typed Cluster API partials, [`platform`] the platform's objects,
//! [`error`] the one error type and the stall reasons.

/// Field manager of every write this controller makes: to others' objects (server-side apply
/// of only the fields it owns) and to its own status.
pub const FIELD_MANAGER: &str = "upgrade.cpaas.io/controller";

/// The User-Agent of every request this controller sends (`upgrade-controller/<version>`).
pub fn user_agent() -> http::HeaderValue {
    http::HeaderValue::from_static(concat!("upgrade-controller/", env!("CARGO_PKG_VERSION")))
}

/// The User-Agent of one replica, `upgrade-controller/<version> (<instance>)`: the API server's
/// audit log then tells which replica sent what (a standby must send no write).
pub fn user_agent_of(instance: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!(
        "upgrade-controller/{} ({instance})",
        env!("CARGO_PKG_VERSION")
    ))
    .unwrap_or_else(|_| user_agent())
}

pub mod admission;
pub mod api;
pub mod apply;
pub mod capi;
pub mod crd;
pub mod decide;
pub mod driver;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod platform;
pub mod preflight;
pub mod preview;
pub mod report;
pub mod status;
pub mod version;
