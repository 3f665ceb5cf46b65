//! upgrade-controller: a Cluster API extension that upgrades Kubernetes clusters on immutable
//! infrastructure one minor at a time (see DESIGN.md).
//!
//! The API types, planner, reconciler and binaries land with the upgrade engine (issue 3). This
//! crate pins the dependency set of STYLE.md so every later change builds on the same versions.

/// The API group of this project's custom resources.
pub const API_GROUP: &str = "upgrade.cpaas.io";
