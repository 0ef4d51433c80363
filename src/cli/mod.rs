//! Subcommands of the binary that are not `serve`: reading the usage store,
//! asking a running gateway to reload.
//! API keys files are managed by [`crate::policy::api_key::cli`], which
//! needs nothing above the policy layer.

pub mod reload;
/// `coregate usage` prints the observe layer's usage report.
pub use crate::observe::usage_report as usage;
