//! `mapping` as written in the config file (on an API, a route or a
//! `[[policies]]` set): parameter mapping with Amazon API Gateway's HTTP API
//! syntax. Keys and values stay text here; `integration::mapping` compiles
//! and checks them (docs/mapping.md).

use serde::Deserialize;
use std::collections::BTreeMap;

/// `[apis.routes.mapping]` (or `[apis.mapping]`, `[policies.mapping]`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawMapping {
    /// `"append|overwrite|remove:header.NAME"`,
    /// `"append|overwrite|remove:querystring.NAME"` or `"overwrite:path"`
    /// → value (static text, `$request...`, `$context...`,
    /// `$stageVariables...`, or text with `${...}` in it).
    pub request: Option<BTreeMap<String, String>>,
    /// Integration status code (200-599) → `"append|overwrite|remove:header.NAME"`
    /// or `"overwrite:statuscode"` → value.
    pub response: Option<BTreeMap<String, BTreeMap<String, String>>>,
}
