//! The `upgrade.cpaas.io/v1alpha1` API.

mod duration;
mod matrix;
mod upgrade_request;
mod window;

pub use duration::{DurationError, MAX_TIMEOUT, MIN_TIMEOUT, parse_go_duration};
pub use matrix::*;
/// Which of a row's image names a provider uses.
pub use providers::ImageKey;
pub use upgrade_request::*;
pub use window::*;

/// The API group of this project's custom resources.
pub const API_GROUP: &str = "upgrade.cpaas.io";
