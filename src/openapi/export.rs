//! One API of a config → an OpenAPI 3.0 document, with the
//! `x-amazon-apigateway-*` extensions (docs/openapi.md, "Export").

use crate::config::raw::{RawApi, RawIntegration};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// Export settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Leave out every `x-` extension (a plain description for SDKs and
    /// documentation tools).
    pub extensions: bool,
}

/// Why there is no document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportError {
    /// No API (or no stage of the API) has that name.
    NotFound(String),
    /// The API cannot be exported as asked.
    Refused(String),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::NotFound(m) | ExportError::Refused(m) => f.write_str(m),
        }
    }
}

/// The OpenAPI document of `api`, an API of a config whose tables are
/// `tables` (its upstreams and authorizers are carried over as written);
/// `stage` names the stage and deployment `api` is the view of (its routes
/// the deployment's, its base path the stage's: `crate::plan::openapi`
/// makes that view). A WebSocket API is refused.
pub fn export(
    api: &RawApi,
    tables: &toml::Table,
    stage: Option<(&str, &str)>,
    opts: Options,
) -> Result<Value, ExportError> {
    if api.kind.as_deref() == Some("websocket") {
        return Err(ExportError::Refused(format!(
            "api {:?} is a WebSocket API, which OpenAPI does not describe \
             (docs/websocket.md lists its routes and integrations)",
            api.name
        )));
    }
    let mut doc = Map::new();
    doc.insert("openapi".into(), json!("3.0.1"));
    doc.insert(
        "info".into(),
        json!({ "title": api.name, "version": "1.0" }),
    );
    let base = api
        .base_path
        .as_deref()
        .map(|b| b.trim_end_matches('/'))
        .filter(|b| !b.is_empty())
        .unwrap_or("");
    doc.insert(
        "servers".into(),
        json!([{ "url": if base.is_empty() { "/" } else { base } }]),
    );
    let mut schemes = Map::new();
    let mut paths = Map::new();
    let mut upstreams_used = BTreeSet::new();
    for route in &api.routes {
        let (method, path) = match route.key.split_once(' ') {
            _ if route.key == "$default" => ("ANY", "/$default"),
            Some((m, p)) => (m, p),
            None => continue,
        };
        let op_key = if method == "ANY" {
            "x-amazon-apigateway-any-method".to_string()
        } else {
            method.to_ascii_lowercase()
        };
        let mut op = Map::new();
        op.insert("operationId".into(), json!(operation_id(method, path)));
        // AWS writes a greedy parameter as `{proxy+}`, named `proxy+`; a
        // plain document (for SDK generators, which take path parameters
        // to be identifiers) names it `{proxy}`.
        let plain_path;
        let path = if opts.extensions {
            path
        } else {
            plain_path = path.replace("+}", "}");
            plain_path.as_str()
        };
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        op.insert(
            "responses".into(),
            json!({ "default": { "description": "The integration's response" } }),
        );
        // Security: the route's settings, else the API's.
        let api_key = route.api_key_required.or(api.api_key_required) == Some(true);
        let authorizer = route.authorizer.as_deref().or(api.authorizer.as_deref());
        let mut req = Map::new();
        if api_key {
            schemes.insert(
                "api_key".into(),
                json!({ "type": "apiKey", "name": "x-api-key", "in": "header" }),
            );
            req.insert("api_key".into(), json!([]));
        }
        if let Some(a) = authorizer {
            schemes.insert(a.to_string(), security_scheme(tables, a));
            let scopes = route.authorization_scopes.clone().unwrap_or_default();
            req.insert(a.to_string(), json!(scopes));
        }
        if !req.is_empty() {
            op.insert("security".into(), json!([Value::Object(req)]));
        }
        match &route.integration {
            RawIntegration::HttpProxy { url } => {
                if let Some(host) = url
                    .split_once("://")
                    .map(|(_, r)| r.split(['/', '?']).next().unwrap_or(""))
                {
                    upstreams_used.insert(host.to_string());
                }
                op.insert(
                    "x-amazon-apigateway-integration".into(),
                    json!({
                        "type": "http_proxy",
                        "httpMethod": method,
                        "uri": url,
                        "payloadFormatVersion": "1.0",
                        "connectionType": "INTERNET",
                    }),
                );
            }
            RawIntegration::Mock {
                status,
                headers,
                body,
            } => {
                let mut m = Map::new();
                if let Some(s) = status {
                    m.insert("status".into(), json!(s));
                }
                if !headers.is_empty() {
                    m.insert("headers".into(), json!(headers));
                }
                m.insert("body".into(), json!(body));
                op.insert("x-coregate-mock".into(), Value::Object(m));
            }
            // Only a WebSocket API's routes have these, refused above.
            RawIntegration::Http { .. } => {}
        }
        let item = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(op_key, Value::Object(op));
        }
    }
    doc.insert("paths".into(), Value::Object(paths));
    if !schemes.is_empty() {
        doc.insert("components".into(), json!({ "securitySchemes": schemes }));
    }
    doc.insert(
        "x-amazon-apigateway-importexport-version".into(),
        json!("1.0"),
    );
    if let Some(c) = cors(api) {
        doc.insert("x-amazon-apigateway-cors".into(), c);
    }
    if let Some(h) = &api.hosts {
        doc.insert("x-coregate-hosts".into(), json!(h));
    }
    if let Some((stage, deployment)) = stage {
        doc.insert(
            "x-coregate-stage".into(),
            json!({ "name": stage, "deployment": deployment }),
        );
    }
    // The declared upstreams the routes name, as written.
    if let Some(toml::Value::Array(ups)) = tables.get("upstreams") {
        let used: Vec<Value> = ups
            .iter()
            .filter(|u| {
                u.get("name")
                    .and_then(toml::Value::as_str)
                    .is_some_and(|n| upstreams_used.contains(n))
            })
            .filter_map(|u| serde_json::to_value(u).ok())
            .collect();
        if !used.is_empty() {
            doc.insert("x-coregate-upstreams".into(), Value::Array(used));
        }
    }
    let mut doc = Value::Object(doc);
    if !opts.extensions {
        strip_extensions(&mut doc);
    }
    Ok(doc)
}

/// `getPetsId` from `GET /pets/{id}`: letters and digits of the path,
/// camel-cased after the method.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for part in path.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = part.chars();
        if let Some(c) = chars.next() {
            id.push(c.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    if path == "/" {
        id.push_str("Root");
    }
    id
}

/// The security scheme for authorizer `name`: a JWT authorizer as AWS
/// exports one (`oauth2` with `x-amazon-apigateway-authorizer`) and its
/// table as configured; SigV4 and request authorizers without their
/// settings (they may hold secrets).
fn security_scheme(tables: &toml::Table, name: &str) -> Value {
    let table = match tables.get("authorizers") {
        Some(toml::Value::Array(list)) => list
            .iter()
            .find(|a| a.get("name").and_then(toml::Value::as_str) == Some(name)),
        _ => None,
    };
    let Some(table) = table else {
        return json!({ "type": "apiKey", "name": "Authorization", "in": "header" });
    };
    if let Some(jwt) = table.get("jwt") {
        let mut config = Map::new();
        if let Some(i) = jwt.get("issuer").and_then(toml::Value::as_str) {
            config.insert("issuer".into(), json!(i));
        }
        if let Some(a) = jwt
            .get("audience")
            .and_then(|a| serde_json::to_value(a).ok())
        {
            config.insert("audience".into(), a);
        }
        let mut raw = serde_json::to_value(table).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut raw {
            m.remove("name");
        }
        return json!({
            "type": "oauth2",
            "flows": {},
            "x-amazon-apigateway-authorizer": {
                "type": "jwt",
                "jwtConfiguration": config,
                "identitySource": "$request.header.Authorization",
            },
            "x-coregate-authorizer": raw,
        });
    }
    if table.get("sigv4").is_some() {
        return json!({
            "type": "apiKey",
            "name": "Authorization",
            "in": "header",
            "x-amazon-apigateway-authtype": "awsSigv4",
        });
    }
    json!({
        "type": "apiKey",
        "name": "Authorization",
        "in": "header",
        "x-amazon-apigateway-authtype": "custom",
    })
}

fn cors(api: &RawApi) -> Option<Value> {
    let c = api.cors.as_ref()?;
    let mut m = Map::new();
    if let Some(v) = &c.allow_origins {
        m.insert("allowOrigins".into(), json!(v));
    }
    if let Some(v) = &c.allow_methods {
        m.insert("allowMethods".into(), json!(v));
    }
    if let Some(v) = &c.allow_headers {
        m.insert("allowHeaders".into(), json!(v));
    }
    if let Some(v) = &c.expose_headers {
        m.insert("exposeHeaders".into(), json!(v));
    }
    if let Some(v) = c.max_age {
        m.insert("maxAge".into(), json!(v));
    }
    if let Some(v) = c.allow_credentials {
        m.insert("allowCredentials".into(), json!(v));
    }
    Some(Value::Object(m))
}

/// Removes every `x-` key, at any depth.
fn strip_extensions(v: &mut Value) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| !k.starts_with("x-"));
                stack.extend(m.values_mut());
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
}

/// The document as text: pretty JSON, or YAML.
pub fn render(doc: &Value, yaml: bool) -> Result<String, String> {
    if yaml {
        serde_yaml_ng::to_string(doc).map_err(|e| e.to_string())
    } else {
        serde_json::to_string_pretty(doc)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string())
    }
}
