//! The portal's pages, rendered on the server from the running config: the
//! list of APIs and their stages, an API's page (how to authenticate, each
//! route's documentation from its OpenAPI operation, a "try it" form per
//! route), the download of the OpenAPI document, and the API keys page.
//! Every string from the config or a document is escaped
//! ([`super::escape`]); the pages hold no script of their own (the
//! portal's script is a file, and the content security policy allows no
//! other), so a hostile description or API name shows as text.

use super::response::Response;
use super::{escape as e, query_value, url_encode};
use crate::config::raw::lifecycle::RawLifecycle;
use crate::config::raw::{RawApi, RawConfig, RawRoute};
use crate::runtime::Running;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// One version of an API the portal documents: the API itself, or one of
/// its stages (a deployment's routes under `<base path>/<stage>`).
struct Version<'a> {
    api: &'a RawApi,
    stage: Option<&'a str>,
    /// The full base path, without a trailing slash ("" for none).
    base: String,
    routes: &'a [RawRoute],
    api_key_required: Option<bool>,
    authorizer: Option<&'a str>,
}

fn listed<'a>(raw: &'a RawConfig, r: &Running) -> Vec<&'a RawApi> {
    raw.apis
        .iter()
        .filter(|a| a.kind.as_deref() != Some("websocket"))
        .filter(|a| {
            r.plan
                .portal
                .apis
                .as_ref()
                .is_none_or(|l| l.contains(&a.name))
        })
        .collect()
}

fn base_of(api: &RawApi) -> String {
    api.base_path
        .as_deref()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string()
}

/// The API's versions: one per stage, or the API itself.
fn versions(api: &RawApi) -> Vec<Version<'_>> {
    if api.stages.is_empty() {
        return vec![Version {
            api,
            stage: None,
            base: base_of(api),
            routes: &api.routes,
            api_key_required: api.api_key_required,
            authorizer: api.authorizer.as_deref(),
        }];
    }
    api.stages
        .iter()
        .filter_map(|s| {
            let d = api.deployments.iter().find(|d| d.name == s.deployment)?;
            let base = if s.name == "$default" {
                base_of(api)
            } else {
                format!("{}/{}", base_of(api), s.name)
            };
            Some(Version {
                api,
                stage: Some(s.name.as_str()),
                base,
                routes: &d.routes,
                api_key_required: d.api_key_required.or(api.api_key_required),
                authorizer: d.authorizer.as_deref().or(api.authorizer.as_deref()),
            })
        })
        .collect()
}

/// The version a query names (`name=API&stage=S`), with the parsed config.
fn find<'a>(raw: &'a RawConfig, r: &Running, query: &str) -> Result<Version<'a>, Response> {
    let name = query_value(query, "name").unwrap_or_default();
    let stage = query_value(query, "stage");
    let Some(api) = listed(raw, r).into_iter().find(|a| a.name == name) else {
        return Err(Response::html(404, not_found()));
    };
    let mut vs = versions(api);
    let i = match &stage {
        Some(s) => vs.iter().position(|v| v.stage == Some(s.as_str())),
        None => (!vs.is_empty()).then_some(0),
    };
    match i {
        Some(i) => Ok(vs.swap_remove(i)),
        None => Err(Response::html(404, not_found())),
    }
}

/// The gateway's URL as developers reach it.
fn gateway_url(r: &Running) -> String {
    if let Some(u) = &r.plan.portal.gateway_url {
        return u.clone();
    }
    match r.listeners.first() {
        Some((a, tls)) => {
            let host = if a.ip().is_unspecified() {
                "localhost".to_string()
            } else {
                a.ip().to_string()
            };
            let host = if a.is_ipv6() && !a.ip().is_unspecified() {
                format!("[{host}]")
            } else {
                host
            };
            format!(
                "{}://{host}:{}",
                if *tls { "https" } else { "http" },
                a.port()
            )
        }
        None => "http://localhost".to_string(),
    }
}

/// The version's OpenAPI document: the export of what the gateway serves
/// (`crate::openapi::export`), with the operator's documentation merged
/// into its operations.
fn document(r: &Running, v: &Version, extensions: bool) -> Result<Value, String> {
    let mut raw = crate::config::parse(&r.text)
        .map_err(|_| "the running config does not parse".to_string())?;
    let Some(api) = raw.apis.iter_mut().find(|a| a.name == v.api.name) else {
        return Err("no such API".to_string());
    };
    api.routes = v.routes.to_vec();
    api.base_path = Some(v.base.clone()).filter(|b| !b.is_empty());
    api.api_key_required = v.api_key_required;
    api.authorizer = v.authorizer.map(str::to_string);
    api.deployments.clear();
    api.stages.clear();
    // The version's routes already hold those of a served document.
    api.openapi = None;
    let opts = crate::openapi::export::Options { extensions };
    let mut doc = crate::plan::openapi::export(raw, &r.text, &v.api.name, None, opts)
        .map_err(|e| e.to_string())?;
    if let Some(d) = r.plan.portal.documentation_of(&v.api.name) {
        merge(&mut doc, d, &v.base);
    }
    Ok(doc)
}

/// Copies the documentation of `from` (an operator's OpenAPI document) into
/// the matching operations of `doc`: summaries, descriptions, parameters
/// (by name and place), request bodies, responses, tags; and its
/// components besides security schemes, for the references they hold.
fn merge(doc: &mut Value, from: &Value, base: &str) {
    if let Some(desc) = from.pointer("/info/description").cloned() {
        if let Some(info) = doc.get_mut("info").and_then(Value::as_object_mut) {
            info.insert("description".into(), desc);
        }
    }
    if let Some(Value::Object(comps)) = from.get("components") {
        let target = doc
            .as_object_mut()
            .map(|d| d.entry("components").or_insert_with(|| json!({})));
        if let Some(Value::Object(t)) = target {
            for (k, c) in comps {
                if k != "securitySchemes" {
                    t.insert(k.clone(), c.clone());
                }
            }
        }
    }
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    let Some(Value::Object(src)) = from.get("paths") else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let src_item = src.get(path).or_else(|| src.get(&format!("{base}{path}")));
        let (Some(Value::Object(src_item)), Value::Object(item)) = (src_item, item) else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Some(Value::Object(src_op)) = src_item.get(method) else {
                continue;
            };
            let Value::Object(op) = op else { continue };
            for k in [
                "summary",
                "description",
                "requestBody",
                "responses",
                "tags",
                "externalDocs",
            ] {
                if let Some(v) = src_op.get(k) {
                    op.insert(k.into(), v.clone());
                }
            }
            let mut params: Vec<Value> = op
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let documented = src_item
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(
                    src_op
                        .get("parameters")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                );
            for p in documented {
                let p = resolve(from, p);
                let same = |q: &Value| q.get("name") == p.get("name") && q.get("in") == p.get("in");
                match params.iter_mut().find(|q| same(q)) {
                    Some(q) => *q = p.clone(),
                    None => params.push(p.clone()),
                }
            }
            if !params.is_empty() {
                op.insert("parameters".into(), Value::Array(params));
            }
        }
    }
}

/// Follows local `$ref`s (`#/components/...`), at most 16 deep.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return v;
        };
        let Some(ptr) = r.strip_prefix('#') else {
            return v;
        };
        match doc.pointer(ptr) {
            Some(t) => v = t,
            None => return v,
        }
    }
    v
}

// === page frame ===

fn page(r: &Running, title: &str, body: &str) -> String {
    let site = e(&r.plan.portal.title);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · {site}</title><link rel=\"stylesheet\" href=\"/portal.css\">\
<script src=\"/portal.js\" defer></script></head>\n<body><header><a class=\"site\" href=\"/\">{site}</a>\
<nav><a href=\"/\">APIs</a> <a href=\"/keys\">API keys</a></nav></header>\n<main>\n{body}</main></body></html>\n",
        e(title)
    )
}

pub(super) fn not_found() -> String {
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not found</title>\
<link rel=\"stylesheet\" href=\"/portal.css\"></head><body><main><h1>Not found</h1>\
<p><a href=\"/\">The list of APIs</a></p></main></body></html>\n"
        .to_string()
}

fn parsed(r: &Running) -> Result<RawConfig, Response> {
    let mut raw = crate::config::parse(&r.text)
        .map_err(|_| Response::error(500, "the running config does not parse"))?;
    // What `[[policies]]` sets give the APIs and routes (a key, an
    // authorizer), as the gateway applies them; the running config
    // compiled, so the sets have no errors to report.
    crate::plan::policy_sets::apply(&mut raw, &mut Vec::new());
    Ok(raw)
}

/// "deprecated since X, sunset Y" / "retired" badge, or "".
fn lifecycle_badge(l: Option<&RawLifecycle>) -> String {
    let Some(l) = l else { return String::new() };
    let status = l.status.as_deref().unwrap_or("active");
    if status == "active" {
        return String::new();
    }
    let mut s = format!(
        "<span class=\"lifecycle {0}\" data-lifecycle=\"{0}\">{0}",
        e(status)
    );
    if let Some(d) = &l.deprecated_at {
        let _ = write!(s, " since <time>{}</time>", e(d));
    }
    if let Some(d) = &l.sunset {
        let _ = write!(s, ", sunset <time class=\"sunset\">{}</time>", e(d));
    }
    if let Some(u) = &l.documentation {
        if u.starts_with("https://") || u.starts_with("http://") {
            let _ = write!(
                s,
                " (<a href=\"{}\" rel=\"noreferrer\">what changes</a>)",
                e(u)
            );
        }
    }
    s.push_str("</span>");
    s
}

fn api_link(name: &str, stage: Option<&str>) -> String {
    let mut s = format!("/api?name={}", url_encode(name));
    if let Some(st) = stage {
        let _ = write!(s, "&stage={}", url_encode(st));
    }
    s
}

// === the list of APIs ===

pub(super) fn index(r: &Running) -> Response {
    let raw = match parsed(r) {
        Ok(raw) => raw,
        Err(resp) => return resp,
    };
    let mut b = String::from("<h1>APIs</h1>\n<ul class=\"apis\">\n");
    let apis = listed(&raw, r);
    for api in &apis {
        let _ = write!(
            b,
            "<li class=\"api\" data-api=\"{}\"><a class=\"api-link\" href=\"{}\">{}</a> {}",
            e(&api.name),
            e(&api_link(&api.name, None)),
            e(&api.name),
            lifecycle_badge(api.lifecycle.as_ref())
        );
        let vs = versions(api);
        if api.stages.is_empty() {
            let _ = write!(
                b,
                " <code>{}</code>, {} route(s)",
                e(if vs[0].base.is_empty() {
                    "/"
                } else {
                    &vs[0].base
                }),
                api.routes.len()
            );
        } else {
            b.push_str("\n<ul class=\"stages\">");
            for v in &vs {
                let stage = v.stage.unwrap_or("");
                let _ = write!(
                    b,
                    "<li class=\"stage\" data-stage=\"{}\"><a href=\"{}\">stage {}</a> <code>{}</code>, {} route(s)</li>",
                    e(stage),
                    e(&api_link(&api.name, v.stage)),
                    e(stage),
                    e(if v.base.is_empty() { "/" } else { &v.base }),
                    v.routes.len()
                );
            }
            b.push_str("</ul>");
        }
        b.push_str("</li>\n");
    }
    b.push_str("</ul>\n");
    if apis.is_empty() {
        b.push_str("<p>No APIs are published here.</p>\n");
    }
    b.push_str("<p>To call an API that needs a key, get one on the <a href=\"/keys\">API keys</a> page.</p>\n");
    Response::html(200, page(r, "APIs", &b))
}

// === an API's page ===

/// How a request authenticates for a route, as HTML.
fn auth_html(
    raw: &RawConfig,
    api_key: bool,
    authorizer: Option<&str>,
    scopes: &[String],
) -> String {
    let mut s = String::new();
    if api_key {
        s.push_str(
            "<li class=\"auth api-key\">An API key in the <code>x-api-key</code> header. \
Get one on the <a href=\"/keys\">API keys</a> page.</li>",
        );
    }
    if let Some(name) = authorizer.filter(|a| *a != "none") {
        let a = raw.authorizers.iter().find(|a| a.name == name);
        match a {
            Some(a) if a.jwt.is_some() => {
                let _ = write!(
                    s,
                    "<li class=\"auth jwt\">A JWT: <code>Authorization: Bearer TOKEN</code>"
                );
                if let Some(j) = &a.jwt {
                    if let Some(i) = &j.issuer {
                        let _ = write!(s, ", issued by <code>{}</code>", e(i));
                    }
                    if let Some(aud) = &j.audience {
                        let _ = write!(s, ", for the audience <code>{}</code>", e(&aud.join(", ")));
                    }
                }
                if !scopes.is_empty() {
                    let _ = write!(
                        s,
                        ", with the scope(s) <code>{}</code>",
                        e(&scopes.join(" "))
                    );
                }
                s.push_str(".</li>");
            }
            Some(a) if a.sigv4.is_some() => {
                s.push_str("<li class=\"auth sigv4\">AWS Signature Version 4: sign each request with the access key the operator gave you");
                if let Some(v) = &a.sigv4 {
                    if let Some(reg) = &v.region {
                        let _ = write!(s, ", region <code>{}</code>", e(reg));
                    }
                    if let Some(svc) = &v.service {
                        let _ = write!(s, ", service <code>{}</code>", e(svc));
                    }
                }
                s.push_str(" (any AWS SDK or <code>curl --aws-sigv4</code> signs).</li>");
            }
            Some(a) => {
                s.push_str(
                    "<li class=\"auth request\">A credential the operator's authorizer checks",
                );
                if let Some(srcs) = a.request.as_ref().and_then(|r| r.identity_sources.as_ref()) {
                    let _ = write!(s, ", sent as <code>{}</code>", e(&srcs.join(", ")));
                }
                s.push_str(".</li>");
            }
            None => {}
        }
    }
    if s.is_empty() {
        "<ul class=\"auths\"><li class=\"auth none\">None: the route is open.</li></ul>".to_string()
    } else {
        format!("<ul class=\"auths\">{s}</ul>")
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A schema (references resolved one level) as a `<pre>`.
fn schema_html(doc: &Value, v: &Value) -> String {
    let mut s = String::new();
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let _ = write!(
            s,
            "<p class=\"ref\">{}</p>",
            e(r.rsplit('/').next().unwrap_or(r))
        );
    }
    let _ = write!(
        s,
        "<pre class=\"schema\">{}</pre>",
        e(&pretty(resolve(doc, v)))
    );
    s
}

/// The examples of a media type or parameter object.
fn examples_html(doc: &Value, v: &Value) -> String {
    let mut s = String::new();
    if let Some(x) = v.get("example") {
        let _ = write!(
            s,
            "<div class=\"example\"><h5>Example</h5><pre>{}</pre></div>",
            e(&text_or_json(x))
        );
    }
    if let Some(Value::Object(xs)) = v.get("examples") {
        for (name, x) in xs {
            let x = resolve(doc, x);
            let _ = write!(s, "<div class=\"example\"><h5>Example {}</h5>", e(name));
            if let Some(sm) = x.get("summary").and_then(Value::as_str) {
                let _ = write!(s, "<p>{}</p>", e(sm));
            }
            if let Some(val) = x.get("value") {
                let _ = write!(s, "<pre>{}</pre>", e(&text_or_json(val)));
            }
            s.push_str("</div>");
        }
    }
    s
}

fn text_or_json(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => pretty(v),
    }
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn content_html(doc: &Value, content: Option<&Value>) -> String {
    let mut s = String::new();
    if let Some(Value::Object(types)) = content {
        for (t, media) in types {
            let _ = write!(s, "<div class=\"media\"><h5><code>{}</code></h5>", e(t));
            if let Some(sc) = media.get("schema") {
                s.push_str(&schema_html(doc, sc));
            }
            s.push_str(&examples_html(doc, media));
            s.push_str("</div>");
        }
    }
    s
}

/// The OpenAPI path with the base path: `/v1/pets/{id}`.
fn full_path(base: &str, path: &str) -> String {
    if path == "/" && !base.is_empty() {
        base.to_string()
    } else {
        format!("{base}{path}")
    }
}

fn method_path(key: &str) -> Option<(&str, &str)> {
    if key == "$default" {
        return Some(("ANY", "/{proxy+}"));
    }
    key.split_once(' ')
}

pub(super) fn api_page(r: &Running, query: &str) -> Response {
    let raw = match parsed(r) {
        Ok(raw) => raw,
        Err(resp) => return resp,
    };
    let v = match find(&raw, r, query) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let doc = match document(r, &v, true) {
        Ok(d) => d,
        Err(m) => return Response::error(500, &m),
    };
    let url = gateway_url(r);
    let api = v.api;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1 class=\"api-name\" data-api=\"{}\">{}</h1>\n{}",
        e(&api.name),
        e(&api.name),
        lifecycle_badge(api.lifecycle.as_ref())
    );
    if let Some(d) = doc.pointer("/info/description").and_then(Value::as_str) {
        let _ = writeln!(b, "<p class=\"description\">{}</p>", e(d));
    }
    if !api.stages.is_empty() {
        b.push_str("<p class=\"stages\">Stages: ");
        for other in versions(api) {
            let st = other.stage.unwrap_or("");
            if other.stage == v.stage {
                let _ = write!(b, "<strong class=\"current\">{}</strong> ", e(st));
            } else {
                let _ = write!(
                    b,
                    "<a href=\"{}\">{}</a> ",
                    e(&api_link(&api.name, other.stage)),
                    e(st)
                );
            }
        }
        b.push_str("</p>\n");
    }
    let base_url = format!("{url}{}", v.base);
    let _ = writeln!(
        b,
        "<p>Base URL: <code class=\"base-url\">{}</code></p>",
        e(&base_url)
    );
    if let Some(h) = api.hosts.as_ref().and_then(|h| h.first()) {
        let _ = writeln!(
            b,
            "<p>Host: <code>{}</code> (send it as the <code>Host</code> header)</p>",
            e(h)
        );
    }
    let download = format!(
        "/openapi.json?name={}{}",
        url_encode(&api.name),
        v.stage
            .map(|s| format!("&stage={}", url_encode(s)))
            .unwrap_or_default()
    );
    let file = safe_file_name(&api.name, v.stage);
    let _ = write!(
        b,
        "<section id=\"sdk\"><h2>OpenAPI document and SDKs</h2>\
<p><a class=\"download\" href=\"{0}\" download=\"{1}\">Download the OpenAPI document</a> (OpenAPI 3.0, JSON).</p>\
<p>Generate a client for your language from it with a generator, for example:</p>\
<pre>pip install openapi-python-client\nopenapi-python-client generate --path {1}\n\n\
npx @openapitools/openapi-generator-cli generate -i {1} -g typescript-fetch -o client-ts\n\
npx @openapitools/openapi-generator-cli generate -i {1} -g go -o client-go\n\
npx @openapitools/openapi-generator-cli generate -i {1} -g java -o client-java</pre>\
<p>Point the generated client at <code>{2}</code>; for routes that need a key, have it send the \
<code>x-api-key</code> header.</p></section>\n",
        e(&download),
        e(&file),
        e(&base_url)
    );
    b.push_str("<section id=\"routes\"><h2>Routes</h2>\n<ul class=\"toc\">");
    let mut articles = String::new();
    for route in v.routes {
        let Some((method, path)) = method_path(&route.key) else {
            continue;
        };
        let op_key = if method == "ANY" {
            "x-amazon-apigateway-any-method".to_string()
        } else {
            method.to_ascii_lowercase()
        };
        let doc_path = if route.key == "$default" {
            "/$default"
        } else {
            path
        };
        let empty = json!({});
        let op = doc
            .get("paths")
            .and_then(|p| p.get(doc_path))
            .and_then(|i| i.get(&op_key))
            .unwrap_or(&empty);
        let op_id = op
            .get("operationId")
            .and_then(Value::as_str)
            .unwrap_or("route")
            .to_string();
        let anchor = format!("op-{op_id}");
        let life = route.lifecycle.as_ref().or(api.lifecycle.as_ref());
        let _ = write!(
            b,
            "<li><a href=\"#{}\"><span class=\"method\">{}</span> <code>{}</code></a> {}</li>",
            e(&anchor),
            e(method),
            e(&full_path(&v.base, path)),
            e(str_of(op, "summary"))
        );
        articles.push_str(&route_html(
            &raw, r, &v, route, method, path, op, &doc, &anchor, life, &url,
        ));
    }
    b.push_str("</ul>\n");
    b.push_str(&articles);
    b.push_str("</section>\n");
    let title = match v.stage {
        Some(s) => format!("{} ({s})", api.name),
        None => api.name.clone(),
    };
    Response::html(200, page(r, &title, &b))
}

#[allow(clippy::too_many_arguments)]
fn route_html(
    raw: &RawConfig,
    r: &Running,
    v: &Version,
    route: &RawRoute,
    method: &str,
    path: &str,
    op: &Value,
    doc: &Value,
    anchor: &str,
    life: Option<&RawLifecycle>,
    url: &str,
) -> String {
    let full = full_path(&v.base, path);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<article class=\"route\" id=\"{}\" data-route=\"{}\">\n<h3><span class=\"method\">{}</span> <code class=\"path\">{}</code> {}</h3>",
        e(anchor),
        e(&route.key),
        e(method),
        e(&full),
        lifecycle_badge(life)
    );
    if let Some(sm) = op.get("summary").and_then(Value::as_str) {
        let _ = writeln!(s, "<p class=\"summary\">{}</p>", e(sm));
    }
    if let Some(d) = op.get("description").and_then(Value::as_str) {
        let _ = writeln!(s, "<p class=\"description\">{}</p>", e(d));
    }
    let api_key = route.api_key_required.or(v.api_key_required) == Some(true);
    let authorizer = route.authorizer.as_deref().or(v.authorizer);
    let scopes = route.authorization_scopes.clone().unwrap_or_default();
    let _ = writeln!(
        s,
        "<h4>Authentication</h4>{}",
        auth_html(raw, api_key, authorizer, &scopes)
    );
    // Parameters.
    let params: Vec<&Value> = op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| resolve(doc, p))
        .collect();
    if !params.is_empty() {
        s.push_str("<h4>Parameters</h4><table class=\"params\"><tr><th>Name</th><th>In</th><th>Required</th><th>Schema</th><th>Description</th></tr>");
        for p in &params {
            let schema = p.get("schema").map(|sc| {
                let sc = resolve(doc, sc);
                sc.get("type")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| pretty(sc))
            });
            let _ = write!(
                s,
                "<tr class=\"param\" data-param=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                e(str_of(p, "name")),
                e(str_of(p, "name")),
                e(str_of(p, "in")),
                if p.get("required").and_then(Value::as_bool) == Some(true) { "yes" } else { "no" },
                e(&schema.unwrap_or_default()),
                e(str_of(p, "description")),
                examples_html(doc, p)
            );
        }
        s.push_str("</table>\n");
    }
    if let Some(body) = op.get("requestBody") {
        let body = resolve(doc, body);
        s.push_str("<h4>Request body</h4>");
        if let Some(d) = body.get("description").and_then(Value::as_str) {
            let _ = write!(s, "<p>{}</p>", e(d));
        }
        s.push_str(&content_html(doc, body.get("content")));
        s.push('\n');
    }
    if let Some(Value::Object(responses)) = op.get("responses") {
        s.push_str("<h4>Responses</h4><dl class=\"responses\">");
        for (status, resp) in responses {
            let resp = resolve(doc, resp);
            let _ = write!(
                s,
                "<dt class=\"status\">{}</dt><dd>{}{}</dd>",
                e(status),
                e(str_of(resp, "description")),
                content_html(doc, resp.get("content"))
            );
        }
        s.push_str("</dl>\n");
    }
    // curl.
    let mut curl = format!(
        "curl -i -X {} '{}{}'",
        if method == "ANY" { "GET" } else { method },
        url,
        full
    );
    if api_key {
        curl.push_str(" -H 'x-api-key: YOUR_KEY'");
    }
    if authorizer.is_some_and(|a| a != "none") {
        curl.push_str(" -H 'Authorization: Bearer TOKEN'");
    }
    let _ = writeln!(s, "<h4>Example</h4><pre class=\"curl\">{}</pre>", e(&curl));
    if r.plan.portal.try_it {
        s.push_str(&try_form(
            v,
            method,
            &full,
            &params,
            api_key,
            authorizer,
            op.get("requestBody").map(|b| resolve(doc, b)),
        ));
    }
    s.push_str("</article>\n");
    s
}

/// The "try it" form: the portal's script sends it to `/try`, which makes
/// the request to the gateway's own listener (same origin, no CORS).
fn try_form(
    v: &Version,
    method: &str,
    full: &str,
    params: &[&Value],
    api_key: bool,
    authorizer: Option<&str>,
    body: Option<&Value>,
) -> String {
    let mut s = format!(
        "<form class=\"try\" data-api=\"{}\" data-stage=\"{}\" data-method=\"{}\" data-path=\"{}\"><h4>Try it</h4>",
        e(&v.api.name),
        e(v.stage.unwrap_or("")),
        e(method),
        e(full)
    );
    if method == "ANY" {
        s.push_str("<label>Method <select name=\"method\">");
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
            let _ = write!(s, "<option>{m}</option>");
        }
        s.push_str("</select></label>");
    }
    // Path parameters come from the route's key, documented or not.
    for seg in full.split('/') {
        if let Some(name) = seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            let _ = write!(
                s,
                "<label>{0} <input name=\"path:{0}\" required></label>",
                e(name)
            );
        }
    }
    for p in params {
        let place = str_of(p, "in");
        if place == "query" || place == "header" {
            let name = str_of(p, "name");
            let _ = write!(
                s,
                "<label>{0} ({1}) <input name=\"{1}:{0}\"></label>",
                e(name),
                e(place)
            );
        }
    }
    if api_key {
        s.push_str("<label>API key <input name=\"header:x-api-key\" class=\"api-key\" autocomplete=\"off\"></label>");
    }
    if authorizer.is_some_and(|a| a != "none") {
        s.push_str("<label>Authorization <input name=\"header:authorization\" placeholder=\"Bearer TOKEN\" autocomplete=\"off\"></label>");
    }
    s.push_str(
        "<label>More query string <input name=\"rawquery\" placeholder=\"a=1&amp;b=2\"></label>",
    );
    if body.is_some() || matches!(method, "POST" | "PUT" | "PATCH" | "ANY") {
        let example = body
            .and_then(|b| b.get("content"))
            .and_then(|c| c.get("application/json"))
            .and_then(|m| m.get("example"))
            .map(text_or_json)
            .unwrap_or_default();
        let _ = write!(
            s,
            "<label>Content-Type <input name=\"content-type\" value=\"application/json\"></label>\
<label>Body <textarea name=\"body\" rows=\"5\">{}</textarea></label>",
            e(&example)
        );
    }
    s.push_str(
        "<button type=\"submit\">Send</button>\
<div class=\"result\" hidden><p>Status <strong class=\"status\"></strong></p>\
<pre class=\"headers\"></pre><pre class=\"body\"></pre></div></form>\n",
    );
    s
}

fn safe_file_name(api: &str, stage: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    match stage {
        Some(st) => format!("{}-{}.openapi.json", clean(api), clean(st)),
        None => format!("{}.openapi.json", clean(api)),
    }
}

/// `GET /openapi.json?name=API[&stage=S]`: the document without `x-`
/// extensions (no backend addresses), with the gateway's URL as server.
pub(super) fn download(r: &Running, query: &str) -> Response {
    let raw = match parsed(r) {
        Ok(raw) => raw,
        Err(resp) => return resp,
    };
    let v = match find(&raw, r, query) {
        Ok(v) => v,
        Err(_) => return Response::error(404, "no such API or stage"),
    };
    let mut doc = match document(r, &v, false) {
        Ok(d) => d,
        Err(m) => return Response::error(500, &m),
    };
    if let Value::Object(d) = &mut doc {
        d.insert(
            "servers".into(),
            json!([{ "url": format!("{}{}", gateway_url(r), v.base) }]),
        );
    }
    let mut resp = Response::json(200, &doc);
    resp.body = match crate::openapi::export::render(&doc, false) {
        Ok(t) => t.into_bytes(),
        Err(m) => return Response::error(500, &m),
    };
    let _ = write!(
        resp.headers,
        "content-disposition: attachment; filename=\"{}\"\r\n",
        safe_file_name(&v.api.name, v.stage)
    );
    resp
}

// === the API keys page ===

pub(super) fn keys_page(r: &Running) -> Response {
    let raw = match parsed(r) {
        Ok(raw) => raw,
        Err(resp) => return resp,
    };
    let mut b = String::from("<h1>API keys</h1>\n");
    match &r.plan.portal.signup {
        Some(su) => {
            b.push_str("<section id=\"signup\"><h2>Get a key</h2>\
<p>A key is shown once, when it is made: keep it. The gateway stores only a hash of it.</p>\
<table class=\"plans\"><tr><th>Usage plan</th><th>APIs</th><th>Rate</th><th>Quota</th><th>Approval</th></tr>");
            for name in &su.plans {
                let Some(p) = raw.usage_plans.iter().find(|u| &u.name == name) else {
                    continue;
                };
                let apis = p.apis.as_ref().map(|a| a.join(", ")).unwrap_or_else(|| "all".to_string());
                let rate = p
                    .throttle
                    .as_ref()
                    .map(|t| {
                        format!(
                            "{} req/s, burst {}",
                            t.rate.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                            t.burst.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
                        )
                    })
                    .unwrap_or_else(|| "no limit".into());
                let quota = p
                    .quota
                    .as_ref()
                    .map(|q| {
                        format!(
                            "{} per {}",
                            q.limit.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                            q.period.as_deref().unwrap_or("-").to_ascii_lowercase()
                        )
                    })
                    .unwrap_or_else(|| "none".into());
                let approval = if su.approval.contains(name) {
                    "an operator approves each key"
                } else {
                    "the key works at once"
                };
                let _ = write!(
                    b,
                    "<tr class=\"plan\" data-plan=\"{0}\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td></tr>",
                    e(name),
                    e(&apis),
                    e(&rate),
                    e(&quota),
                    approval
                );
            }
            b.push_str("</table>\n<form id=\"signup-form\"><label>Your name or your application's \
<input name=\"label\" required maxlength=\"100\"></label> <label>Usage plan <select name=\"plan\">");
            for name in &su.plans {
                let _ = write!(b, "<option value=\"{0}\">{0}</option>", e(name));
            }
            b.push_str("</select></label> <button type=\"submit\">Sign up</button></form>\n\
<div id=\"new-key\" hidden><p>Your key, shown this once:</p><pre class=\"key\"></pre>\
<p class=\"state\"></p></div><p id=\"signup-error\" class=\"error\" hidden></p></section>\n");
        }
        None => b.push_str(
            "<section id=\"signup\"><p>Keys are not handed out here: ask the API's operator for one.</p></section>\n",
        ),
    }
    b.push_str("<section id=\"mine\"><h2>Your key</h2><p>Enter your key to see its state, its usage and the quota left, or to revoke it.</p>\
<form id=\"key-form\"><label>Key <input name=\"key\" autocomplete=\"off\" size=\"80\"></label> \
<button type=\"submit\">Show</button></form><p id=\"key-error\" class=\"error\" hidden></p>\
<div id=\"key-info\" hidden><dl><dt>Name</dt><dd class=\"name\"></dd><dt>Usage plan</dt><dd class=\"plan\"></dd>\
<dt>State</dt><dd class=\"state\"></dd><dt>Created</dt><dd class=\"created\"></dd>\
<dt>Quota</dt><dd class=\"quota\"></dd><dt>Used this period</dt><dd class=\"used\"></dd><dt>Left</dt><dd class=\"left\"></dd>\
<dt>Requests (last 30 days)</dt><dd class=\"total\"></dd></dl>\
<table class=\"days\"><thead><tr><th>Day</th><th>Requests</th></tr></thead><tbody></tbody></table>\
<button type=\"button\" id=\"revoke\">Revoke this key</button></div></section>\n");
    Response::html(200, page(r, "API keys", &b))
}
