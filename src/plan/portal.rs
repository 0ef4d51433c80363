//! The developer portal's compiled settings (`[portal]`, docs/portal.md):
//! its listener, the APIs it lists, the documents that describe their
//! routes (read and parsed here, so `coregate check` reports a bad one),
//! and self-service sign-up. Nothing on the request path reads this; the
//! portal's threads (`crate::portal`) do.

use crate::config::raw::portal::{
    RawPortal, DEFAULT_SIGNUPS_PER_ADDRESS_PER_HOUR, DEFAULT_SIGNUPS_PER_HOUR, DEFAULT_SIGNUP_FILE,
};
use crate::config::raw::RawConfig;
use crate::config::ConfigError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The title pages carry when `portal.title` is not set.
pub const DEFAULT_TITLE: &str = "API portal";

#[derive(Debug, Clone, Default)]
pub struct PortalPlan {
    /// Where the portal listens; None: no portal.
    pub listen: Option<SocketAddr>,
    pub title: String,
    /// `portal.gateway_url`, without a trailing slash.
    pub gateway_url: Option<String>,
    /// The APIs listed, by name; None: every HTTP API.
    pub apis: Option<Vec<String>>,
    pub try_it: bool,
    /// (API name, its OpenAPI document) from `portal.documentation`.
    pub documentation: Vec<(String, Arc<serde_json::Value>)>,
    pub signup: Option<SignupPlan>,
}

#[derive(Debug, Clone)]
pub struct SignupPlan {
    /// Public usage plans.
    pub plans: Vec<String>,
    /// The public plans whose keys need an operator's approval.
    pub approval: Vec<String>,
    pub per_address_per_hour: u32,
    pub per_hour: u32,
    /// The sign-up registry.
    pub file: PathBuf,
}

impl PortalPlan {
    /// The document `portal.documentation` gives for `api`.
    pub fn documentation_of(&self, api: &str) -> Option<&serde_json::Value> {
        self.documentation
            .iter()
            .find(|(n, _)| n == api)
            .map(|(_, d)| &**d)
    }
}

/// Compiles `[portal]`; `taken` are the traffic and admin addresses, which
/// the portal may not share.
pub fn compile(raw: &RawConfig, taken: &[SocketAddr], errors: &mut Vec<ConfigError>) -> PortalPlan {
    let Some(p) = raw.portal.as_ref() else {
        return PortalPlan::default();
    };
    if p.enabled == Some(false) {
        return PortalPlan::default();
    }
    let listen = compile_listen(p, taken, errors);
    let http_api = |name: &str| {
        raw.apis
            .iter()
            .any(|a| a.name == name && a.kind.as_deref() != Some("websocket"))
    };
    let api_names = || {
        raw.apis
            .iter()
            .filter(|a| a.kind.as_deref() != Some("websocket"))
            .map(|a| format!("{:?}", a.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(list) = &p.apis {
        for (i, name) in list.iter().enumerate() {
            if !http_api(name) {
                errors.push(ConfigError::new(
                    format!("portal.apis[{i}]"),
                    format!("no HTTP API named {name:?} (the config's: {})", api_names()),
                ));
            }
        }
    }
    let mut documentation = Vec::new();
    for (name, file) in p.documentation.iter().flatten() {
        let key = format!("portal.documentation.{name}");
        if !http_api(name) {
            errors.push(ConfigError::new(
                key.clone(),
                format!("no HTTP API named {name:?} (the config's: {})", api_names()),
            ));
        }
        if let Some(doc) = read_document(file, raw, &key, errors) {
            documentation.push((name.clone(), Arc::new(doc)));
        }
    }
    let signup = p.signup.as_ref().and_then(|s| {
        let before = errors.len();
        let plans = s.plans.clone().unwrap_or_default();
        if plans.is_empty() {
            errors.push(ConfigError::new(
                "portal.signup.plans",
                "name at least one usage plan developers may sign up for \
                 (or leave [portal.signup] out: no self-service keys)",
            ));
        }
        let known = |n: &str| raw.usage_plans.iter().any(|u| u.name == n);
        let plan_names = || {
            raw.usage_plans
                .iter()
                .map(|u| format!("{:?}", u.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, n) in plans.iter().enumerate() {
            if !known(n) {
                errors.push(ConfigError::new(
                    format!("portal.signup.plans[{i}]"),
                    format!("no usage plan named {n:?} (the config's: {})", plan_names()),
                ));
            }
        }
        let approval = s.approval.clone().unwrap_or_default();
        for (i, n) in approval.iter().enumerate() {
            if !plans.contains(n) {
                errors.push(ConfigError::new(
                    format!("portal.signup.approval[{i}]"),
                    format!("{n:?} is not one of portal.signup.plans"),
                ));
            }
        }
        let rate = |v: Option<u32>, default: u32, key: &str, errors: &mut Vec<ConfigError>| {
            let v = v.unwrap_or(default);
            if v == 0 {
                errors.push(ConfigError::new(
                    format!("portal.signup.{key}"),
                    "must be at least 1 (to turn sign-up off, leave [portal.signup] out)",
                ));
            }
            v
        };
        let per_address_per_hour = rate(
            s.per_address_per_hour,
            DEFAULT_SIGNUPS_PER_ADDRESS_PER_HOUR,
            "per_address_per_hour",
            errors,
        );
        let per_hour = rate(s.per_hour, DEFAULT_SIGNUPS_PER_HOUR, "per_hour", errors);
        if raw.server.api_keys_file.is_none() {
            errors.push(ConfigError::new(
                "portal.signup",
                "needs server.api_keys_file: the keys developers sign up for are kept there",
            ));
        }
        let file = crate::config::resolve_path(
            s.file.as_deref().unwrap_or(DEFAULT_SIGNUP_FILE),
            raw.base_dir.as_deref(),
        );
        (errors.len() == before).then_some(SignupPlan {
            plans,
            approval,
            per_address_per_hour,
            per_hour,
            file,
        })
    });
    let gateway_url = p.gateway_url.as_deref().and_then(|u| {
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && u.len() > "https://".len()
            && !u.bytes().any(|b| b <= b' ' || matches!(b, b'"' | b'\'' | b'<' | b'>' | b'`'));
        if ok {
            Some(u.trim_end_matches('/').to_string())
        } else {
            errors.push(ConfigError::new(
                "portal.gateway_url",
                format!("{u:?} is not an http:// or https:// URL without spaces, quotes or angle brackets"),
            ));
            None
        }
    });
    PortalPlan {
        listen,
        gateway_url,
        title: p.title.clone().unwrap_or_else(|| DEFAULT_TITLE.to_string()),
        apis: p.apis.clone(),
        try_it: p.try_it.unwrap_or(true),
        documentation,
        signup,
    }
}

fn compile_listen(
    p: &RawPortal,
    taken: &[SocketAddr],
    errors: &mut Vec<ConfigError>,
) -> Option<SocketAddr> {
    let Some(text) = p.listen.as_deref() else {
        errors.push(ConfigError::new(
            "portal.listen",
            "is required: the portal's own IP:port (e.g. \"127.0.0.1:9902\"); \
             to serve no portal, leave [portal] out or set portal.enabled = false",
        ));
        return None;
    };
    match text.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 && taken.contains(&a) => {
            errors.push(ConfigError::new(
                "portal.listen",
                format!(
                    "{text:?} is also a traffic or admin listen address; give the portal its own"
                ),
            ));
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(ConfigError::new(
                "portal.listen",
                format!("{text:?} is not an IP:port address (e.g. \"127.0.0.1:9902\")"),
            ));
            None
        }
    }
}

/// Reads and parses an OpenAPI 3 document (JSON or YAML).
fn read_document(
    file: &str,
    raw: &RawConfig,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<serde_json::Value> {
    let path = crate::config::resolve_path(file, raw.base_dir.as_deref());
    let text = match crate::config::read_text(&path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::new(
                key,
                format!("cannot read {}: {e}", path.display()),
            ));
            return None;
        }
    };
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let doc: Result<serde_json::Value, String> = if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).map_err(|e| e.to_string())
    } else {
        serde_yaml_ng::from_str(trimmed).map_err(|e| e.to_string())
    };
    let doc = match doc {
        Ok(d) => d,
        Err(e) => {
            errors.push(ConfigError::new(
                key,
                format!("{} is not JSON or YAML: {e}", path.display()),
            ));
            return None;
        }
    };
    let version = doc.get("openapi").and_then(|v| v.as_str()).unwrap_or("");
    if !version.starts_with("3.") || doc.get("paths").is_some_and(|p| !p.is_object()) {
        errors.push(ConfigError::new(
            key,
            format!(
                "{} is not an OpenAPI 3 document (it needs `openapi: 3.x` and a `paths` object)",
                path.display()
            ),
        ));
        return None;
    }
    Some(doc)
}
