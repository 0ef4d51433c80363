//! `[portal]` as written in the config file: the developer portal's
//! listener, what it shows, and self-service API keys. Shape and serde
//! defaults only; `plan::portal` checks it (docs/portal.md).

use serde::Deserialize;
use std::collections::BTreeMap;

/// Sign-ups one source address may make per hour when `[portal.signup]`
/// does not say.
pub const DEFAULT_SIGNUPS_PER_ADDRESS_PER_HOUR: u32 = 5;
/// Sign-ups per hour from all addresses together.
pub const DEFAULT_SIGNUPS_PER_HOUR: u32 = 100;
/// The sign-up registry, beside the config file.
pub const DEFAULT_SIGNUP_FILE: &str = "portal-signups.toml";

/// `[portal]`. Without it (or with `enabled = false`) no portal runs.
#[derive(Debug, Default, Deserialize)]
pub struct RawPortal {
    /// Default: true (a `[portal]` table turns the portal on).
    pub enabled: Option<bool>,
    /// `IP:port` of the portal's listener. Required.
    pub listen: Option<String>,
    /// The gateway's URL as developers reach it (`https://api.example.com`),
    /// shown in the documentation and the curl examples. Default: `http://`
    /// and the first traffic listen address.
    pub gateway_url: Option<String>,
    /// The pages' title. Default: "API portal".
    pub title: Option<String>,
    /// The APIs listed, by name. Default: every HTTP API.
    pub apis: Option<Vec<String>>,
    /// Show the "try it" form on route pages. Default: true.
    pub try_it: Option<bool>,
    /// API name -> an OpenAPI document (YAML or JSON) whose operations'
    /// summaries, descriptions, parameters, request bodies, responses and
    /// examples document the API's routes.
    pub documentation: Option<BTreeMap<String, String>>,
    /// `[portal.signup]`: self-service API keys.
    pub signup: Option<RawSignup>,
}

/// `[portal.signup]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawSignup {
    /// The public usage plans: the ones developers may sign up for.
    pub plans: Option<Vec<String>>,
    /// Of `plans`, those whose keys wait for an operator's approval.
    pub approval: Option<Vec<String>>,
    /// Sign-ups one source address may make in an hour.
    pub per_address_per_hour: Option<u32>,
    /// Sign-ups from all addresses together in an hour.
    pub per_hour: Option<u32>,
    /// The sign-up registry (who signed up for which key, and its state).
    pub file: Option<String>,
}
