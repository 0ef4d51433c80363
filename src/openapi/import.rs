//! OpenAPI 3.0/3.1 → coregate config text, with graded findings
//! (docs/openapi.md lists what is imported and every finding).

use super::{pointer, Finding, Grade, MAX_DOCUMENT_BYTES};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What `--base-path` asks for the path of the first server URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasePath {
    /// The server's path is not used.
    Ignore,
    /// The server's path is put before every route path.
    Prepend,
    /// The server's path becomes the API's `base_path`.
    Split,
}

impl BasePath {
    pub fn parse(s: &str) -> Option<BasePath> {
        match s {
            "ignore" => Some(BasePath::Ignore),
            "prepend" => Some(BasePath::Prepend),
            "split" => Some(BasePath::Split),
            _ => None,
        }
    }
}

/// Import settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub base_path: BasePath,
    /// The API's name; default: `info.title`.
    pub name: Option<String>,
    /// Where operations without an `http_proxy` integration are proxied:
    /// `http://host:port[/prefix]` followed by the route's path.
    pub upstream: Option<String>,
    /// `server.api_keys_file` of the config, written when a route requires
    /// an API key.
    pub api_keys_file: String,
}

/// The result: the config text (when no error was found) and the findings.
#[derive(Debug)]
pub struct Imported {
    pub config: Option<String>,
    /// Whether a route requires an API key (the config then names
    /// `Options::api_keys_file`).
    pub needs_api_keys: bool,
    pub findings: Vec<Finding>,
    /// The JSON pointer of each route's operation, in the order of the
    /// config's `[[apis.routes]]`.
    pub route_pointers: Vec<String>,
}

struct Ctx<'a> {
    root: &'a Value,
    needs_api_keys: bool,
    findings: Vec<Finding>,
    route_pointers: Vec<String>,
}

impl Ctx<'_> {
    fn add(&mut self, grade: Grade, pointer: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding {
            grade,
            pointer: pointer.into(),
            message: message.into(),
        });
    }
}

/// Follows a chain of `$ref`s from `v` within `root`.
fn resolve<'v>(root: &'v Value, v: &'v Value) -> Result<&'v Value, String> {
    let mut cur = v;
    let mut seen = BTreeSet::new();
    while let Some(r) = cur.get("$ref") {
        let Some(r) = r.as_str() else {
            return Err("$ref must be a string".into());
        };
        if !seen.insert(r.to_string()) {
            return Err(format!("$ref {r:?} is part of a cycle of references"));
        }
        cur = lookup(root, r)?;
    }
    Ok(cur)
}

/// The value a local `$ref` names.
fn lookup<'v>(root: &'v Value, r: &str) -> Result<&'v Value, String> {
    let Some(ptr) = r.strip_prefix('#') else {
        return Err(format!(
            "$ref {r:?} does not resolve: only references inside the document (\"#/...\") are followed"
        ));
    };
    let decoded = crate::http::percent::percent_decode_str(ptr);
    root.pointer(&decoded)
        .ok_or_else(|| format!("$ref {r:?} does not resolve: nothing is at {decoded:?}"))
}

/// Parses a document: JSON when it starts with `{`, YAML otherwise.
pub fn parse_document(text: &str) -> Result<Value, Finding> {
    let err = |message: String| Finding {
        grade: Grade::Error,
        pointer: String::new(),
        message,
    };
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(err(format!(
            "the document is {} bytes; at most {MAX_DOCUMENT_BYTES} are read",
            text.len()
        )));
    }
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).map_err(|e| err(format!("malformed JSON: {e}")))
    } else {
        // libyaml takes time quadratic in the nesting of flow collections
        // before serde's recursion limit is reached: refuse deep ones first.
        if let Some((line, depth)) = flow_too_deep(trimmed) {
            return Err(err(format!(
                "malformed YAML: flow collections nested deeper than {depth} levels at line {line}"
            )));
        }
        serde_yaml_ng::from_str::<Value>(trimmed).map_err(|e| err(format!("malformed YAML: {e}")))
    }
}

/// The deepest nesting of `[` and `{` allowed in a YAML document.
const MAX_FLOW_DEPTH: usize = 512;

/// Where the `[`/`{` nesting of `text` first passes [`MAX_FLOW_DEPTH`]:
/// brackets in quoted scalars (taken to end at the line's end) and comments
/// are skipped: an estimate that errs on the side of counting.
fn flow_too_deep(text: &str) -> Option<(usize, usize)> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut prev = b'\n';
    for &b in text.as_bytes() {
        if b == b'\n' {
            line += 1;
            comment = false;
            quote = None;
        } else if comment {
        } else if let Some(q) = quote {
            if b == q {
                quote = None;
            }
        } else {
            match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' if prev == b' ' || prev == b'\n' || prev == b'\t' => comment = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some((line, MAX_FLOW_DEPTH));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = b;
    }
    None
}

/// Every `$ref` in the document must resolve, and no chain of them may loop.
/// Walked with an explicit stack, so depth costs no native stack.
fn check_refs(ctx: &mut Ctx<'_>) {
    let root = ctx.root;
    let mut stack: Vec<(&Value, String)> = vec![(root, String::new())];
    while let Some((v, at)) = stack.pop() {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    if let Err(e) = resolve(root, v) {
                        ctx.add(Grade::Error, pointer(&at, "$ref"), e);
                    }
                }
                for (k, c) in m {
                    if k != "$ref" {
                        stack.push((c, pointer(&at, k)));
                    }
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    stack.push((c, format!("{at}/{i}")));
                }
            }
            _ => {}
        }
    }
}

const METHODS: &[(&str, &str)] = &[
    ("get", "GET"),
    ("put", "PUT"),
    ("post", "POST"),
    ("delete", "DELETE"),
    ("options", "OPTIONS"),
    ("head", "HEAD"),
    ("patch", "PATCH"),
    ("x-amazon-apigateway-any-method", "ANY"),
];

/// A route as it will be written.
struct Route {
    key: String,
    /// The operation's JSON pointer.
    at: String,
    integration: toml::Table,
    api_key_required: bool,
    authorizer: Option<String>,
    scopes: Vec<String>,
}

/// What a security requirement asks of a route.
#[derive(Default)]
struct Security {
    api_key: bool,
    authorizer: Option<String>,
    scopes: Vec<String>,
}

/// Imports `text`. The config text is produced only when no error was found.
pub fn import(text: &str, opts: &Options) -> Imported {
    let doc = match parse_document(text) {
        Ok(d) => d,
        Err(f) => {
            return Imported {
                config: None,
                needs_api_keys: false,
                findings: vec![f],
                route_pointers: Vec::new(),
            }
        }
    };
    let mut ctx = Ctx {
        root: &doc,
        needs_api_keys: false,
        findings: Vec::new(),
        route_pointers: Vec::new(),
    };
    let config = import_doc(&mut ctx, opts);
    let needs_api_keys = ctx.needs_api_keys;
    let route_pointers = ctx.route_pointers;
    let mut findings = ctx.findings;
    let mut seen = BTreeSet::new();
    findings.retain(|f| seen.insert((f.grade, f.pointer.clone(), f.message.clone())));
    let has_error = findings.iter().any(|f| f.grade == Grade::Error);
    findings.sort_by(|a, b| b.grade.cmp(&a.grade).then(a.pointer.cmp(&b.pointer)));
    Imported {
        config: if has_error { None } else { config },
        needs_api_keys,
        findings,
        route_pointers,
    }
}

fn import_doc(ctx: &mut Ctx<'_>, opts: &Options) -> Option<String> {
    let root = ctx.root;
    let Some(obj) = root.as_object() else {
        ctx.add(Grade::Error, "", "the document is not a JSON/YAML object");
        return None;
    };
    if obj.contains_key("swagger") {
        ctx.add(
            Grade::Error,
            "/swagger",
            "Swagger 2.0 is not imported: convert the document to OpenAPI 3.0 first",
        );
        return None;
    }
    match obj.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0") || v.starts_with("3.1") => {}
        Some(v) => {
            ctx.add(
                Grade::Error,
                "/openapi",
                format!("OpenAPI {v:?} is not imported: 3.0.x or 3.1.x"),
            );
            return None;
        }
        None => {
            ctx.add(
                Grade::Error,
                "/openapi",
                "missing or not a string: an OpenAPI document names its version (\"3.0.3\", \"3.1.0\")",
            );
            return None;
        }
    }
    check_refs(ctx);
    if ctx.findings.iter().any(|f| f.grade == Grade::Error) {
        return None;
    }
    if let Some(v) = obj.get("x-amazon-apigateway-importexport-version") {
        if v.as_str() != Some("1.0") {
            ctx.add(
                Grade::Warning,
                "/x-amazon-apigateway-importexport-version",
                format!("{v} is not \"1.0\"; read as 1.0"),
            );
        }
    }
    for k in obj.keys() {
        let known = [
            "openapi",
            "info",
            "servers",
            "paths",
            "components",
            "security",
            "tags",
            "externalDocs",
            "x-amazon-apigateway-importexport-version",
            "x-amazon-apigateway-cors",
            "x-coregate-upstreams",
            "x-coregate-hosts",
        ];
        if !known.contains(&k.as_str()) && (k.starts_with("x-amazon-apigateway") || k == "webhooks")
        {
            ctx.add(
                Grade::Info,
                pointer("", k),
                "not supported by coregate; ignored",
            );
        }
    }

    let name = opts.name.clone().unwrap_or_else(|| {
        root.pointer("/info/title")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .unwrap_or("imported")
            .to_string()
    });

    let server_path = server_base_path(ctx);
    let (base_path, prefix) = match (opts.base_path, server_path) {
        (_, None) => (None, String::new()),
        (BasePath::Ignore, Some(p)) => {
            ctx.add(
                Grade::Info,
                "/servers/0/url",
                format!("base path {p:?} ignored (--base-path ignore)"),
            );
            (None, String::new())
        }
        (BasePath::Prepend, Some(p)) => (None, p),
        (BasePath::Split, Some(p)) => (Some(p), String::new()),
    };

    let mut authorizers: BTreeMap<String, toml::Table> = BTreeMap::new();
    let mut routes: Vec<Route> = Vec::new();
    let root_security = obj.get("security");
    match obj.get("paths").map(|p| resolve(root, p)) {
        None => ctx.add(Grade::Warning, "/paths", "no paths: the API has no routes"),
        Some(Err(e)) => ctx.add(Grade::Error, "/paths", e),
        Some(Ok(Value::Object(paths))) => {
            for (path, item) in paths {
                let at = pointer("/paths", path);
                if path.starts_with("x-") {
                    continue;
                }
                let item = match resolve(root, item) {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => {
                        ctx.add(Grade::Error, at, "a path item must be an object");
                        continue;
                    }
                    Err(e) => {
                        ctx.add(Grade::Error, at, e);
                        continue;
                    }
                };
                import_path(
                    ctx,
                    opts,
                    &prefix,
                    path,
                    item,
                    &at,
                    root_security,
                    &mut authorizers,
                    &mut routes,
                );
            }
        }
        Some(Ok(_)) => ctx.add(Grade::Error, "/paths", "must be an object"),
    }

    let cors = obj
        .get("x-amazon-apigateway-cors")
        .and_then(|c| import_cors(ctx, c));

    // Upstreams an export carried along.
    let mut upstreams: Vec<toml::Value> = Vec::new();
    if let Some(u) = obj.get("x-coregate-upstreams") {
        match u {
            Value::Array(list) => {
                for (i, up) in list.iter().enumerate() {
                    match json_to_toml(up) {
                        Some(t @ toml::Value::Table(_)) => upstreams.push(t),
                        _ => ctx.add(
                            Grade::Warning,
                            format!("/x-coregate-upstreams/{i}"),
                            "not an upstream table; ignored",
                        ),
                    }
                }
            }
            _ => ctx.add(
                Grade::Warning,
                "/x-coregate-upstreams",
                "must be an array; ignored",
            ),
        }
    }
    let hosts: Option<Vec<toml::Value>> = match obj.get("x-coregate-hosts") {
        None => None,
        Some(Value::Array(h)) if h.iter().all(Value::is_string) => Some(
            h.iter()
                .filter_map(Value::as_str)
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        Some(_) => {
            ctx.add(
                Grade::Warning,
                "/x-coregate-hosts",
                "must be an array of strings; ignored",
            );
            None
        }
    };

    if ctx.findings.iter().any(|f| f.grade == Grade::Error) {
        return None;
    }
    if routes.is_empty() {
        ctx.add(
            Grade::Error,
            "/paths",
            "no operation could be imported: an API needs at least one route",
        );
        return None;
    }

    let mut api = toml::Table::new();
    api.insert("name".into(), toml::Value::String(name));
    if let Some(h) = hosts {
        api.insert("hosts".into(), toml::Value::Array(h));
    }
    if let Some(b) = base_path {
        api.insert("base_path".into(), toml::Value::String(b));
    }
    if let Some(c) = cors {
        api.insert("cors".into(), toml::Value::Table(c));
    }
    let mut route_list = Vec::new();
    for r in routes {
        ctx.route_pointers.push(r.at);
        let mut t = toml::Table::new();
        t.insert("key".into(), toml::Value::String(r.key));
        if r.api_key_required {
            ctx.needs_api_keys = true;
            t.insert("api_key_required".into(), toml::Value::Boolean(true));
        }
        if let Some(a) = r.authorizer {
            t.insert("authorizer".into(), toml::Value::String(a));
        }
        if !r.scopes.is_empty() {
            t.insert(
                "authorization_scopes".into(),
                toml::Value::Array(r.scopes.into_iter().map(toml::Value::String).collect()),
            );
        }
        t.insert("integration".into(), toml::Value::Table(r.integration));
        route_list.push(toml::Value::Table(t));
    }
    api.insert("routes".into(), toml::Value::Array(route_list));

    let mut top = toml::Table::new();
    if ctx.needs_api_keys {
        let mut server = toml::Table::new();
        server.insert(
            "api_keys_file".into(),
            toml::Value::String(opts.api_keys_file.clone()),
        );
        top.insert("server".into(), toml::Value::Table(server));
    }
    if !upstreams.is_empty() {
        top.insert("upstreams".into(), toml::Value::Array(upstreams));
    }
    if !authorizers.is_empty() {
        top.insert(
            "authorizers".into(),
            toml::Value::Array(authorizers.into_values().map(toml::Value::Table).collect()),
        );
    }
    top.insert(
        "apis".into(),
        toml::Value::Array(vec![toml::Value::Table(api)]),
    );
    match toml::to_string(&top) {
        Ok(body) => Some(format!(
            "# Imported from an OpenAPI document by `coregate openapi import`.\n{body}"
        )),
        Err(e) => {
            ctx.add(
                Grade::Error,
                "",
                format!("the config could not be written as TOML: {e}"),
            );
            None
        }
    }
}

/// The path of the first server URL, server variables replaced by their
/// defaults; `None` when there is none or it is `/`.
fn server_base_path(ctx: &mut Ctx<'_>) -> Option<String> {
    let servers = ctx.root.get("servers")?;
    let Some(list) = servers.as_array() else {
        ctx.add(Grade::Warning, "/servers", "must be an array; ignored");
        return None;
    };
    if list.len() > 1 {
        ctx.add(
            Grade::Info,
            "/servers",
            "only the first server's URL gives the base path; the others are ignored",
        );
    }
    let first = list.first()?;
    let Some(url) = first.get("url").and_then(Value::as_str) else {
        ctx.add(
            Grade::Warning,
            "/servers/0/url",
            "missing or not a string; ignored",
        );
        return None;
    };
    let mut url = url.to_string();
    if let Some(vars) = first.get("variables").and_then(Value::as_object) {
        for (k, v) in vars {
            if let Some(d) = v.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{k}}}"), d);
            }
        }
    }
    let path = match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            match rest.find('/') {
                Some(j) => rest[j..].to_string(),
                None => String::new(),
            }
        }
        None => url.clone(),
    };
    let path = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    if path.is_empty() {
        return None;
    }
    if !path.starts_with('/') || path.contains('{') || crate::route::parse_route_path(path).is_err()
    {
        ctx.add(
            Grade::Warning,
            "/servers/0/url",
            format!("{url:?} has no usable base path (literal segments only); ignored"),
        );
        return None;
    }
    Some(path.to_string())
}

#[allow(clippy::too_many_arguments)]
fn import_path(
    ctx: &mut Ctx<'_>,
    opts: &Options,
    prefix: &str,
    path: &str,
    item: &Map<String, Value>,
    at: &str,
    root_security: Option<&Value>,
    authorizers: &mut BTreeMap<String, toml::Table>,
    routes: &mut Vec<Route>,
) {
    let root = ctx.root;
    for (k, _) in item.iter() {
        let known = METHODS.iter().any(|(m, _)| m == k)
            || matches!(
                k.as_str(),
                "summary" | "description" | "parameters" | "$ref"
            )
            || (k.starts_with("x-") && !k.starts_with("x-amazon-apigateway"));
        if !known {
            let msg = if k == "trace" {
                "TRACE operations are not imported (coregate routes TRACE only through ANY); ignored"
            } else {
                "not supported by coregate; ignored"
            };
            ctx.add(Grade::Info, pointer(at, k), msg);
        }
    }
    for (m, method) in METHODS {
        let Some(op) = item.get(*m) else { continue };
        let op_at = pointer(at, m);
        let op = match resolve(root, op) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                ctx.add(Grade::Error, op_at, "an operation must be an object");
                continue;
            }
            Err(e) => {
                ctx.add(Grade::Error, op_at, e);
                continue;
            }
        };
        let key = if path == "/$default" {
            if *method != "ANY" {
                ctx.add(
                    Grade::Warning,
                    op_at,
                    "\"/$default\" is imported only as x-amazon-apigateway-any-method; left out",
                );
                continue;
            }
            "$default".to_string()
        } else {
            let full = if prefix.is_empty() {
                path.to_string()
            } else if path == "/" {
                prefix.to_string()
            } else {
                format!("{prefix}{path}")
            };
            let key = format!("{method} {full}");
            if let Err(e) = crate::route::RouteKey::parse(&key) {
                ctx.add(
                    Grade::Warning,
                    op_at,
                    format!("cannot be a coregate route: {e}; left out"),
                );
                continue;
            }
            key
        };
        if routes.iter().any(|r| r.key == key) {
            ctx.add(
                Grade::Warning,
                op_at,
                format!("route {key:?} is already imported (from another path); left out"),
            );
            continue;
        }
        if op.contains_key("callbacks") {
            ctx.add(
                Grade::Info,
                pointer(&op_at, "callbacks"),
                "callbacks are not supported; ignored",
            );
        }
        // Security: the operation's, else the document's.
        let (sec, sec_at) = match op.get("security") {
            Some(s) => (Some(s), pointer(&op_at, "security")),
            None => (root_security, "/security".to_string()),
        };
        let security = match sec {
            None => Security::default(),
            Some(s) => match import_security(ctx, s, &sec_at, authorizers) {
                Some(s) => s,
                None => {
                    ctx.add(
                        Grade::Warning,
                        op_at.clone(),
                        format!("route {key:?} left out: its security cannot be enforced"),
                    );
                    continue;
                }
            },
        };
        if let Err(e) = fits(routes, &key) {
            ctx.add(
                Grade::Warning,
                op_at.clone(),
                format!("{e}; route {key:?} left out"),
            );
            continue;
        }
        let integration = match import_integration(ctx, op, &op_at, &key, method, opts) {
            Some(i) => i,
            None => continue,
        };
        routes.push(Route {
            key,
            at: op_at,
            integration,
            api_key_required: security.api_key,
            authorizer: security.authorizer,
            scopes: security.scopes,
        });
    }
}

/// Whether `key` can join the routes imported so far in one coregate route
/// table (no duplicate, no parameters of different names at one position).
fn fits(routes: &[Route], key: &str) -> Result<(), String> {
    use crate::route::{ApiSpec, RouteKey, RouteTable};
    let mut parsed = Vec::with_capacity(routes.len() + 1);
    for (i, k) in routes
        .iter()
        .map(|r| r.key.as_str())
        .chain(std::iter::once(key))
        .enumerate()
    {
        parsed.push((RouteKey::parse(k)?, i as u32, k));
    }
    let spec = ApiSpec {
        name: "imported",
        hosts: None,
        base_path: "/".to_string(),
        routes: parsed,
    };
    RouteTable::build(&[spec])
        .map(|_| ())
        .map_err(|e| e.join("; "))
}

fn import_integration(
    ctx: &mut Ctx<'_>,
    op: &Map<String, Value>,
    op_at: &str,
    key: &str,
    method: &str,
    opts: &Options,
) -> Option<toml::Table> {
    let mut t = toml::Table::new();
    if let Some(mock) = op.get("x-coregate-mock") {
        let mat = pointer(op_at, "x-coregate-mock");
        t.insert("type".into(), toml::Value::String("mock".into()));
        if let Some(s) = mock.get("status").and_then(Value::as_i64) {
            t.insert("status".into(), toml::Value::Integer(s));
        }
        if let Some(h) = mock.get("headers").and_then(Value::as_object) {
            let mut ht = toml::Table::new();
            for (k, v) in h {
                if let Some(v) = v.as_str() {
                    ht.insert(k.clone(), toml::Value::String(v.to_string()));
                }
            }
            t.insert("headers".into(), toml::Value::Table(ht));
        }
        match mock.get("body") {
            None => {}
            Some(Value::String(b)) => {
                t.insert("body".into(), toml::Value::String(b.clone()));
            }
            Some(_) => ctx.add(
                Grade::Warning,
                pointer(&mat, "body"),
                "must be a string; ignored",
            ),
        }
        return Some(t);
    }
    let ext_at = pointer(op_at, "x-amazon-apigateway-integration");
    if let Some(ext) = op.get("x-amazon-apigateway-integration") {
        let ext = match resolve(ctx.root, ext) {
            Ok(Value::Object(e)) => e,
            Ok(_) => {
                ctx.add(Grade::Error, ext_at, "must be an object");
                return None;
            }
            Err(e) => {
                ctx.add(Grade::Error, ext_at, e);
                return None;
            }
        };
        let ty = ext
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        if ty == "http_proxy" {
            let Some(uri) = ext.get("uri").and_then(Value::as_str) else {
                ctx.add(
                    Grade::Warning,
                    pointer(&ext_at, "uri"),
                    format!("missing or not a string: route {key:?} left out"),
                );
                return None;
            };
            if let Some(m) = ext.get("httpMethod").and_then(Value::as_str) {
                if !m.eq_ignore_ascii_case("ANY") && !m.eq_ignore_ascii_case(method) {
                    ctx.add(
                        Grade::Warning,
                        pointer(&ext_at, "httpMethod"),
                        format!("{m:?}: coregate sends the client's method ({method}) upstream"),
                    );
                }
            }
            match ext.get("payloadFormatVersion") {
                None => {}
                Some(v) if v.as_str() == Some("1.0") || v.as_f64() == Some(1.0) => {}
                Some(v) => ctx.add(
                    Grade::Info,
                    pointer(&ext_at, "payloadFormatVersion"),
                    format!("{v}: an http_proxy integration forwards requests as they are (1.0); ignored"),
                ),
            }
            match ext.get("timeoutInMillis") {
                None => {}
                Some(v) => match v.as_u64() {
                    Some(ms) if (50..=29_000).contains(&ms) => ctx.add(
                        Grade::Info,
                        pointer(&ext_at, "timeoutInMillis"),
                        format!("{ms}: coregate's timeout is the upstream's timeout_ms, not per route; ignored"),
                    ),
                    _ => ctx.add(
                        Grade::Warning,
                        pointer(&ext_at, "timeoutInMillis"),
                        format!("{v} is not from 50 to 29000 milliseconds; ignored"),
                    ),
                },
            }
            match ext.get("connectionType").and_then(Value::as_str) {
                None | Some("INTERNET") => {}
                Some(c) => ctx.add(
                    Grade::Warning,
                    pointer(&ext_at, "connectionType"),
                    format!("{c:?}: coregate connects to the uri directly, as for INTERNET"),
                ),
            }
            for k in ext.keys() {
                if !matches!(
                    k.as_str(),
                    "type"
                        | "uri"
                        | "httpMethod"
                        | "payloadFormatVersion"
                        | "timeoutInMillis"
                        | "connectionType"
                ) {
                    ctx.add(Grade::Info, pointer(&ext_at, k), "not supported; ignored");
                }
            }
            t.insert("type".into(), toml::Value::String("http_proxy".into()));
            t.insert("url".into(), toml::Value::String(uri.to_string()));
            return Some(t);
        }
        ctx.add(
            Grade::Warning,
            pointer(&ext_at, "type"),
            format!("integration type {ty:?} is not supported (http_proxy is); the route gets the default integration"),
        );
    }
    match &opts.upstream {
        Some(up) => {
            // The route key's path, with a greedy {name+} written {name}.
            let path = key.split_once(' ').map(|(_, p)| p).unwrap_or("");
            let path = path.replace("+}", "}");
            t.insert("type".into(), toml::Value::String("http_proxy".into()));
            let url = if key == "$default" {
                up.trim_end_matches('/').to_string()
            } else {
                format!("{}{path}", up.trim_end_matches('/'))
            };
            t.insert("url".into(), toml::Value::String(url));
        }
        None => {
            ctx.add(
                Grade::Warning,
                op_at,
                format!("no http_proxy integration and no --upstream: route {key:?} answers 501 (a mock)"),
            );
            t.insert("type".into(), toml::Value::String("mock".into()));
            t.insert("status".into(), toml::Value::Integer(501));
            let mut h = toml::Table::new();
            h.insert(
                "content-type".into(),
                toml::Value::String("application/json".into()),
            );
            t.insert("headers".into(), toml::Value::Table(h));
            t.insert(
                "body".into(),
                toml::Value::String("{\"message\":\"Not Implemented\"}".into()),
            );
        }
    }
    Some(t)
}

/// Reads a security requirement list. `None` when it asks for what coregate
/// cannot enforce (the route is then left out, never served open).
fn import_security(
    ctx: &mut Ctx<'_>,
    sec: &Value,
    at: &str,
    authorizers: &mut BTreeMap<String, toml::Table>,
) -> Option<Security> {
    let Some(list) = sec.as_array() else {
        ctx.add(
            Grade::Error,
            at,
            "must be an array of security requirements",
        );
        return None;
    };
    let Some(first) = list.first() else {
        return Some(Security::default());
    };
    if list.len() > 1 {
        ctx.add(
            Grade::Warning,
            at,
            "alternative security requirements: only the first is enforced",
        );
    }
    let req_at = format!("{at}/0");
    let Some(req) = first.as_object() else {
        ctx.add(
            Grade::Error,
            req_at,
            "a security requirement must be an object",
        );
        return None;
    };
    let mut out = Security::default();
    for (name, scopes) in req {
        let s_at = pointer(&req_at, name);
        let scheme_ptr = pointer("/components/securitySchemes", name);
        let scheme = match ctx.root.pointer(&scheme_ptr).map(|s| resolve(ctx.root, s)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                ctx.add(Grade::Error, scheme_ptr, e);
                return None;
            }
            None => {
                ctx.add(
                    Grade::Error,
                    s_at,
                    format!(
                        "security scheme {name:?} is not defined in /components/securitySchemes"
                    ),
                );
                return None;
            }
        };
        let ty = scheme.get("type").and_then(Value::as_str).unwrap_or("");
        let authtype = scheme
            .get("x-amazon-apigateway-authtype")
            .and_then(Value::as_str)
            .unwrap_or("");
        let scopes: Vec<String> = scopes
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if ty == "apiKey" && authtype.is_empty() {
            let header = scheme.get("in").and_then(Value::as_str) == Some("header")
                && scheme
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.eq_ignore_ascii_case("x-api-key"));
            if header {
                out.api_key = true;
                continue;
            }
            ctx.add(
                Grade::Warning,
                scheme_ptr,
                "an apiKey scheme is enforced only in the x-api-key header",
            );
            return None;
        }
        let auth_name = authorizer_name(name);
        if let Some(prev) = &out.authorizer {
            if *prev != auth_name {
                ctx.add(
                    Grade::Warning,
                    s_at,
                    "a coregate route has one authorizer; this requirement asks for two",
                );
                return None;
            }
        }
        if !authorizers.contains_key(&auth_name) {
            let table = authorizer_table(ctx, scheme, &scheme_ptr, &auth_name, ty, authtype)?;
            authorizers.insert(auth_name.clone(), table);
        }
        out.authorizer = Some(auth_name);
        out.scopes.extend(scopes);
    }
    Some(out)
}

fn authorizer_name(scheme: &str) -> String {
    scheme
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The `[[authorizers]]` table for a security scheme, or `None` (a warning
/// given) when coregate has no authorizer for it.
fn authorizer_table(
    ctx: &mut Ctx<'_>,
    scheme: &Value,
    at: &str,
    name: &str,
    ty: &str,
    authtype: &str,
) -> Option<toml::Table> {
    // A scheme an export wrote carries the authorizer as configured.
    if let Some(raw) = scheme.get("x-coregate-authorizer") {
        if let Some(toml::Value::Table(mut t)) = json_to_toml(raw) {
            t.insert("name".into(), toml::Value::String(name.to_string()));
            return Some(t);
        }
        ctx.add(
            Grade::Warning,
            pointer(at, "x-coregate-authorizer"),
            "not an authorizer table; ignored",
        );
    }
    let jwt_like = matches!(ty, "openIdConnect" | "oauth2")
        || (ty == "http"
            && scheme
                .get("scheme")
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case("bearer")));
    if !jwt_like {
        let what = if authtype.eq_ignore_ascii_case("awsSigv4") {
            "SigV4 (x-amazon-apigateway-authtype: awsSigv4) needs credentials coregate cannot import; configure a [[authorizers]] sigv4 by hand".to_string()
        } else {
            format!("security scheme type {ty:?} has no coregate authorizer (apiKey in x-api-key, http bearer, openIdConnect and oauth2 do)")
        };
        ctx.add(Grade::Warning, at, what);
        return None;
    }
    let aws = scheme.get("x-amazon-apigateway-authorizer");
    let issuer = aws
        .and_then(|a| a.pointer("/jwtConfiguration/issuer"))
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| {
            scheme
                .get("openIdConnectUrl")
                .and_then(Value::as_str)
                .map(|u| {
                    u.trim_end_matches("/.well-known/openid-configuration")
                        .to_string()
                })
        })
        .filter(|i| i.starts_with("https://") || i.starts_with("http://"));
    let audience: Vec<toml::Value> = aws
        .and_then(|a| a.pointer("/jwtConfiguration/audience"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| toml::Value::String(s.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let complete = issuer.is_some() && !audience.is_empty();
    let issuer = issuer.unwrap_or_else(|| "https://issuer.invalid".to_string());
    let mut jwt = toml::Table::new();
    jwt.insert(
        "jwks_url".into(),
        toml::Value::String(format!(
            "{}/.well-known/jwks.json",
            issuer.trim_end_matches('/')
        )),
    );
    jwt.insert("issuer".into(), toml::Value::String(issuer));
    jwt.insert(
        "audience".into(),
        toml::Value::Array(if audience.is_empty() {
            vec![toml::Value::String("CHANGE-ME".into())]
        } else {
            audience
        }),
    );
    ctx.add(
        Grade::Warning,
        at,
        if complete {
            format!("JWT authorizer {name:?} imported; check its jwks_url (taken as the issuer's /.well-known/jwks.json)")
        } else {
            format!("JWT authorizer {name:?} is a skeleton: set its issuer, audience and jwks_url before serving (until then every token is refused)")
        },
    );
    let mut t = toml::Table::new();
    t.insert("name".into(), toml::Value::String(name.to_string()));
    t.insert("jwt".into(), toml::Value::Table(jwt));
    Some(t)
}

fn import_cors(ctx: &mut Ctx<'_>, c: &Value) -> Option<toml::Table> {
    let at = "/x-amazon-apigateway-cors";
    let Some(obj) = c.as_object() else {
        ctx.add(Grade::Warning, at, "must be an object; ignored");
        return None;
    };
    let mut t = toml::Table::new();
    for (k, v) in obj {
        let kat = pointer(at, k);
        let list = |v: &Value| -> Option<toml::Value> {
            let a = v.as_array()?;
            a.iter()
                .map(|s| s.as_str().map(|s| toml::Value::String(s.to_string())))
                .collect::<Option<Vec<_>>>()
                .map(toml::Value::Array)
        };
        let (key, val) = match k.as_str() {
            "allowOrigins" => ("allow_origins", list(v)),
            "allowMethods" => ("allow_methods", list(v)),
            "allowHeaders" => ("allow_headers", list(v)),
            "exposeHeaders" => ("expose_headers", list(v)),
            "maxAge" => ("max_age", v.as_i64().map(toml::Value::Integer)),
            "allowCredentials" => ("allow_credentials", v.as_bool().map(toml::Value::Boolean)),
            _ => {
                ctx.add(Grade::Info, kat, "not a CORS setting; ignored");
                continue;
            }
        };
        match val {
            Some(val) => {
                t.insert(key.into(), val);
            }
            None => ctx.add(Grade::Warning, kat, "has the wrong type; ignored"),
        }
    }
    Some(t)
}

/// A JSON value as TOML; `None` for `null` (TOML has none).
pub fn json_to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(a.iter().filter_map(json_to_toml).collect()),
        Value::Object(m) => {
            let mut t = toml::Table::new();
            for (k, v) in m {
                if let Some(v) = json_to_toml(v) {
                    t.insert(k.clone(), v);
                }
            }
            toml::Value::Table(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            base_path: BasePath::Ignore,
            name: None,
            upstream: Some("http://127.0.0.1:9".into()),
            api_keys_file: "keys.toml".into(),
        }
    }

    #[test]
    fn swagger_2_is_an_error() {
        let r = import("swagger: \"2.0\"\ninfo: {title: x}\n", &opts());
        assert!(r.config.is_none());
        assert_eq!(r.findings[0].grade, Grade::Error);
        assert_eq!(r.findings[0].pointer, "/swagger");
    }

    #[test]
    fn ref_cycle_and_dangling_ref_are_errors() {
        let doc = r##"{"openapi":"3.0.3","info":{"title":"t","version":"1"},
            "paths":{"/a":{"$ref":"#/x/b"}},"x":{"b":{"$ref":"#/x/c"},"c":{"$ref":"#/x/b"}},
            "components":{"schemas":{"d":{"$ref":"#/nowhere"}}}}"##;
        let r = import(doc, &opts());
        assert!(r.config.is_none());
        assert!(r
            .findings
            .iter()
            .any(|f| f.pointer == "/components/schemas/d/$ref"
                && f.message.contains("does not resolve")));
        assert!(r.findings.iter().any(|f| f.message.contains("cycle")));
    }

    #[test]
    fn malformed_yaml_is_an_error_not_a_panic() {
        let r = import("openapi: [\n", &opts());
        assert!(r.config.is_none());
        assert!(r.findings[0].message.contains("malformed YAML"));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let r = import(&format!("{{\"openapi\":\"3.0.0\",\"x\":{deep}}}"), &opts());
        assert!(r.config.is_none());
        let deep = format!(
            "openapi: 3.0.0\nx: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let r = import(&deep, &opts());
        assert!(r.config.is_none());
        assert!(r.findings[0].message.contains("nested deeper than 512"));
        // Quoted and commented brackets do not count.
        let fine = format!(
            "openapi: 3.0.0\na: '{0}'\nb: \"{0}\"\n# {0}\n",
            "[".repeat(600)
        );
        assert!(flow_too_deep(&fine).is_none());
    }

    #[test]
    fn yaml_alias_bombs_are_refused() {
        // Each level doubles the size of the one before: a billion laughs.
        let mut doc = String::from("openapi: 3.0.0\na0: &a0 [x, x]\n");
        for i in 1..40 {
            doc.push_str(&format!("a{i}: &a{i} [*a{0}, *a{0}]\n", i - 1));
        }
        let r = import(&doc, &opts());
        assert!(r.config.is_none());
        assert!(
            r.findings[0].message.contains("malformed YAML"),
            "{:?}",
            r.findings
        );
    }

    #[test]
    fn percent_decoding_of_refs() {
        assert_eq!(crate::http::percent::percent_decode_str("/a%20b"), "/a b");
        assert_eq!(crate::http::percent::percent_decode_str("/a%2"), "/a%2");
        assert_eq!(crate::http::percent::percent_decode_str("%"), "%");
    }
}
