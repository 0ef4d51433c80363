//! OpenAPI documents in the plan (docs/openapi.md): an API with
//! `openapi = "FILE"` serves the routes the document gives, translated as
//! `coregate openapi import` translates them, when the config is compiled
//! ([`apply`], before the policy sets and the compiler see the config);
//! and the export of one API, or of one stage of it ([`export`]), which
//! needs the same view of the config the compiler has.
//!
//! This sits in the plan layer because the export of a stage is the view
//! `super::stages` makes of it; the translation itself is
//! `crate::openapi`'s, below.

use crate::config::raw::{RawApi, RawConfig};
use crate::config::ConfigError;
use crate::openapi::export::{ExportError, Options as ExportOptions};
use crate::openapi::import::{self, BasePath};
use crate::openapi::Grade;
use serde_json::Value;

/// Where the routes a document gave came from: (the route's key in the
/// config after [`apply`], `apis[N].openapi`, the operation's pointer).
#[derive(Debug, Default)]
pub struct Sources {
    origins: Vec<(String, String, String)>,
    /// Upstream and authorizer tables documents added (`upstreams` or
    /// `authorizers`, the table): the export carries them as written.
    added: Vec<(&'static str, toml::Value)>,
}

impl Sources {
    /// Errors about a route a document gave are told at `apis[N].openapi`,
    /// with the operation's pointer and the route's key; those about the
    /// API's own routes at their keys as written.
    pub fn blame(&self, errors: Vec<ConfigError>) -> Vec<ConfigError> {
        let mut out: Vec<ConfigError> = Vec::with_capacity(errors.len());
        for mut e in errors {
            let origin = self.origins.iter().find(|(at, _, _)| {
                e.key
                    .strip_prefix(at.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with('.') || r.starts_with('['))
            });
            if let Some((at, key, _)) = origin.filter(|o| o.2.is_empty()) {
                // One of the API's own routes, moved after the document's.
                e.key = format!("{key}{}", &e.key[at.len()..]);
            } else if let Some((at, key, pointer)) = origin {
                let inner = &e.key[at.len()..];
                let inner = inner.strip_prefix('.').unwrap_or(inner);
                e.message = if inner.is_empty() {
                    format!("{pointer}: {}", e.message)
                } else {
                    format!("{pointer}: {inner}: {}", e.message)
                };
                e.key = key.clone();
            }
            if !out.contains(&e) {
                out.push(e);
            }
        }
        out
    }
}

/// Replaces each `apis[N].openapi` with what its document gives: the
/// document's routes first, then the API's own `routes`; the document's
/// `base_path`, `hosts` and `cors` where the API sets none; its JWT
/// authorizers and `x-coregate-upstreams` where the config has none of
/// that name. Errors (and warnings under `fail_on_warnings`) go to
/// `errors`, other warnings to `warnings`, all at `apis[N].openapi`.
pub fn apply(
    raw: &mut RawConfig,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Sources {
    let mut sources = Sources::default();
    for ai in 0..raw.apis.len() {
        let Some(src) = raw.apis[ai].openapi.clone() else {
            continue;
        };
        let key = format!("apis[{ai}].openapi");
        let before = errors.len();
        let api = &raw.apis[ai];
        if !api.deployments.is_empty() || !api.stages.is_empty() {
            errors.push(ConfigError::new(
                &key,
                "an api with deployments or stages serves its deployments' routes; \
                 a document gives an api's own routes: serve it from an api without stages",
            ));
        }
        if api.kind.as_deref() == Some("websocket") {
            errors.push(ConfigError::new(
                &key,
                "a WebSocket API (kind = \"websocket\") is not described by OpenAPI",
            ));
        }
        let base_path = match src.base_path.as_deref() {
            None => BasePath::Ignore,
            Some(b) => match BasePath::parse(b) {
                Some(b) => b,
                None => {
                    errors.push(ConfigError::new(
                        format!("{key}.base_path"),
                        format!("{b:?} is not one of \"ignore\", \"prepend\", \"split\""),
                    ));
                    BasePath::Ignore
                }
            },
        };
        if let Some(u) = &src.upstream {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                errors.push(ConfigError::new(
                    format!("{key}.upstream"),
                    format!("{u:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if src.file.is_empty() {
            errors.push(ConfigError::new(
                &key,
                "the document's path must not be empty",
            ));
        }
        if errors.len() > before {
            continue;
        }
        let path = crate::config::resolve_path(&src.file, raw.base_dir.as_deref());
        let text = match crate::config::read_file(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                errors.push(ConfigError::new(
                    &key,
                    format!("cannot read the OpenAPI document {}: {e}", path.display()),
                ));
                continue;
            }
        };
        let opts = import::Options {
            base_path,
            name: Some(api.name.clone()),
            upstream: src.upstream.clone(),
            api_keys_file: String::new(),
        };
        let imported = import::import(&text, &opts);
        let fail_on_warnings = src.fail_on_warnings == Some(true);
        for f in &imported.findings {
            let at = if f.pointer.is_empty() {
                "(document)"
            } else {
                &f.pointer
            };
            let e = ConfigError::new(&key, format!("{}: {at}: {}", src.file, f.message));
            match f.grade {
                Grade::Error => errors.push(e),
                Grade::Warning if fail_on_warnings => {
                    let mut e = e;
                    e.message.push_str(" (fail_on_warnings)");
                    errors.push(e);
                }
                Grade::Warning => warnings.push(e),
                Grade::Info => {}
            }
        }
        let Some(config) = imported.config else {
            continue;
        };
        if fail_on_warnings && errors.len() > before {
            continue;
        }
        let top: toml::Table = match toml::from_str(&config) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError::new(&key, format!("internal: {e}")));
                continue;
            }
        };
        let doc_api = top
            .get("apis")
            .and_then(toml::Value::as_array)
            .and_then(|a| a.first())
            .cloned()
            .map(toml::Value::try_into::<RawApi>);
        let doc_api = match doc_api {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                errors.push(ConfigError::new(&key, format!("internal: {e}")));
                continue;
            }
            None => continue,
        };
        // Tables the config does not have by name are added.
        for (list, field) in [("upstreams", 0), ("authorizers", 1)] {
            let Some(items) = top.get(list).and_then(toml::Value::as_array) else {
                continue;
            };
            for item in items {
                let name = item.get("name").and_then(toml::Value::as_str);
                let added = if field == 0 {
                    if raw.upstreams.iter().any(|u| Some(u.name.as_str()) == name) {
                        continue;
                    }
                    item.clone().try_into().map(|u| raw.upstreams.push(u))
                } else {
                    if raw
                        .authorizers
                        .iter()
                        .any(|a| Some(a.name.as_str()) == name)
                    {
                        continue;
                    }
                    item.clone().try_into().map(|a| raw.authorizers.push(a))
                };
                match added {
                    Ok(()) => sources.added.push((list, item.clone())),
                    Err(e) => errors.push(ConfigError::new(&key, format!("internal: {e}"))),
                }
            }
        }
        let api = &mut raw.apis[ai];
        if api.base_path.is_none() {
            api.base_path = doc_api.base_path;
        }
        if api.hosts.is_none() {
            api.hosts = doc_api.hosts;
        }
        if api.cors.is_none() {
            api.cors = doc_api.cors;
        }
        // The API's own routes come after the document's; one with a key
        // the document has is an error (and left out).
        let own = std::mem::take(&mut api.routes);
        let n = doc_api.routes.len();
        for (j, r) in doc_api.routes.iter().enumerate() {
            let pointer = imported.route_pointers.get(j).cloned().unwrap_or_default();
            sources.origins.push((
                format!("apis[{ai}].routes[{j}]"),
                key.clone(),
                format!("{}: {pointer} (route {:?})", src.file, r.key),
            ));
        }
        api.routes = doc_api.routes;
        for (j, r) in own.into_iter().enumerate() {
            if api.routes[..n].iter().any(|d| d.key == r.key) {
                errors.push(ConfigError::new(
                    format!("apis[{ai}].routes[{j}].key"),
                    format!(
                        "route {:?} is also in the OpenAPI document ({key}): a route comes from one or the other",
                        r.key
                    ),
                ));
                continue;
            }
            // The own routes' errors are told at their keys as written.
            let at = api.routes.len();
            if at != j {
                sources.origins.push((
                    format!("apis[{ai}].routes[{at}]"),
                    format!("apis[{ai}].routes[{j}]"),
                    String::new(),
                ));
            }
            api.routes.push(r);
        }
    }
    sources
}

/// The OpenAPI document of API `name` of the config (`raw` parsed from
/// `text`, its documents read from `raw.base_dir`), or of its stage
/// `stage`: the stage's deployment, with the stage's variables substituted
/// where the gateway substitutes them (integration URLs, mock bodies), at
/// the stage's path.
pub fn export(
    mut raw: RawConfig,
    text: &str,
    name: &str,
    stage: Option<&str>,
    opts: ExportOptions,
) -> Result<Value, ExportError> {
    let Some(index) = raw.apis.iter().position(|a| a.name == name) else {
        let names: Vec<&str> = raw.apis.iter().map(|a| a.name.as_str()).collect();
        return Err(ExportError::NotFound(format!(
            "no api named {name:?} in the config (it has: {})",
            names.join(", ")
        )));
    };
    let mut tables: toml::Table =
        toml::from_str(text).map_err(|e| ExportError::Refused(e.to_string()))?;
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let sources = apply(&mut raw, &mut errors, &mut warnings);
    // The settings `[[policies]]` sets give (an API key, an authorizer,
    // CORS) are exported where the gateway applies them, as it compiles
    // the config.
    super::policy_sets::apply(&mut raw, &mut errors);
    if let Some(e) = errors.first() {
        return Err(ExportError::Refused(format!(
            "the config does not compile: {e}"
        )));
    }
    for (list, t) in sources.added {
        if let toml::Value::Array(a) = tables
            .entry(list)
            .or_insert_with(|| toml::Value::Array(Vec::new()))
        {
            a.push(t);
        }
    }
    let api = &raw.apis[index];
    let has_stages = !api.stages.is_empty() || !api.deployments.is_empty();
    let names = || {
        let n: Vec<&str> = api.stages.iter().map(|s| s.name.as_str()).collect();
        n.join(", ")
    };
    let stage = match stage {
        None if has_stages && api.kind.as_deref() != Some("websocket") => {
            return Err(ExportError::Refused(format!(
                "api {name:?} is served by stages ({}): name one with --stage NAME \
                 (&stage=NAME on the admin API)",
                names()
            )))
        }
        None => return crate::openapi::export::export(api, &tables, None, opts),
        Some(s) if !has_stages => {
            return Err(ExportError::NotFound(format!(
                "api {name:?} has no stages, so no stage {s:?} (docs/stages.md): \
                 export it without a stage"
            )))
        }
        Some(s) => s,
    };
    if !api.stages.iter().any(|s| s.name == stage) {
        return Err(ExportError::NotFound(format!(
            "api {name:?} has no stage {stage:?} (it has: {})",
            names()
        )));
    }
    let x = super::stages::expand(&raw);
    let view = x
        .variants
        .iter()
        .zip(&x.apis)
        .find_map(|(v, a)| match (&v.kind, &v.tag) {
            (super::stages::Kind::Stage(_), Some(tag)) if v.api == index && tag.stage == stage => {
                Some((a, tag))
            }
            _ => None,
        });
    match view {
        Some((a, tag)) => crate::openapi::export::export(
            a,
            &tables,
            Some((tag.stage.as_str(), tag.deployment.as_str())),
            opts,
        ),
        None => Err(ExportError::Refused(format!(
            "stage {stage:?} of api {name:?} does not compile: run `coregate check`"
        ))),
    }
}
