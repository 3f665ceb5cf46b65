//! upgrade-controller: a Cluster API extension that upgrades Kubernetes clusters on immutable
//! infrastructure one minor at a time (see README.md).
//!
//! Layout follows a functional core and an imperative shell: [`version`] and [`plan`] are pure;
//! the reconciler observes, plans, applies and writes status.

pub mod api;
pub mod capi;
pub mod crd;
pub mod decide;
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
