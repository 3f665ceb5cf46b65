//! upgrade-controller: a Cluster API extension that upgrades Kubernetes clusters on immutable
//! infrastructure one minor at a time (see README.md).
//!
//! Layout follows a functional core and an imperative shell: [`version`] and [`plan`] are pure;
//! the reconciler observes, plans, applies and writes status.

/// Field manager of every write this controller makes: to others' objects (server-side apply
/// of only the fields it owns) and to its own status.
pub const FIELD_MANAGER: &str = "upgrade.cpaas.io/controller";

/// The User-Agent of every request this controller sends (`upgrade-controller/<version>`).
pub fn user_agent() -> http::HeaderValue {
    http::HeaderValue::from_static(concat!("upgrade-controller/", env!("CARGO_PKG_VERSION")))
}

pub mod api;
pub mod apply;
pub mod capi;
pub mod crd;
pub mod decide;
pub mod error;
pub mod gate;
pub mod observe;
pub mod plan;
pub mod platform;
pub mod preflight;
pub mod preview;
pub mod reconcile;
pub mod review;
pub mod status;
pub mod version;
pub mod workload;
