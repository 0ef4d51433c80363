//! Stages compiled into the plan: one routed set per stage and canary,
//! variables substituted, and every mistake reported once under the key
//! as written.
//!
//! Test code only: the unwraps are on configs written here, so a failure
//! is a failing test; nothing a client or a config file controls.

use super::*;
use crate::http::method::Method;
use crate::http::parse::{parse_request_head, HeadLimits};
use crate::integration::http_proxy::PathPart;
use crate::plan::{load_str, Integration, Plan};
use crate::route::Lookup;

const STAGED: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[[upstreams]]
name = "blue"
targets = [{ address = "127.0.0.1:9001" }]

[[upstreams]]
name = "green"
targets = [{ address = "127.0.0.1:9002" }]

[[apis]]
name = "pets"
base_path = "/pets"

[[apis.deployments]]
name = "v1"
[[apis.deployments.routes]]
key = "GET /items/{id}"
integration = { type = "http_proxy", url = "http://${stageVariables.up}/${stageVariables.prefix}/items/{id}?env=${stageVariables.env}" }
[[apis.deployments.routes]]
key = "GET /hello"
integration = { type = "mock", body = "v1 in ${stageVariables.env}" }

[[apis.deployments]]
name = "v2"
[[apis.deployments.routes]]
key = "GET /hello"
integration = { type = "mock", body = "v2 in ${stageVariables.env}" }

[[apis.stages]]
name = "prod"
deployment = "v1"
variables = { up = "blue", prefix = "api", env = "production" }
throttle = { rate = 10, burst = 5 }

[apis.stages.canary]
deployment = "v2"
percent = 25
variables = { env = "canary" }
sticky = { header = "X-User" }

[[apis.stages]]
name = "$default"
deployment = "v2"
variables = { env = "root" }

[[apis]]
name = "plain"
base_path = "/plain"

[[apis.routes]]
key = "GET /x"
integration = { type = "mock", body = "plain" }
"#;

fn plan(text: &str) -> Plan {
    load_str(text).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn errors(text: &str) -> Vec<(String, String)> {
    match load_str(text) {
        Ok(_) => panic!("compiled:\n{text}"),
        Err(es) => es.into_iter().map(|e| (e.key, e.message)).collect(),
    }
}

fn has(errs: &[(String, String)], key: &str, fragment: &str) {
    assert!(
        errs.iter().any(|(k, m)| k == key && m.contains(fragment)),
        "no error at {key} containing {fragment:?}: {errs:#?}"
    );
}

fn found(table: &crate::route::RouteTable, path: &str) -> Option<usize> {
    match table.lookup(None, Method::Get, path) {
        Lookup::Found { route, .. } => Some(route as usize),
        _ => None,
    }
}

fn mock_body(p: &Plan, route: usize) -> String {
    match &p.routes[route].integration {
        Integration::Mock(m) => String::from_utf8(m.body.clone()).unwrap(),
        other => panic!("route {route} is not a mock: {other:?}"),
    }
}

#[test]
fn each_stage_serves_its_deployment_with_its_variables() {
    let p = plan(STAGED);
    // prod: v1 at /pets/prod.
    let r = found(&p.table, "/pets/prod/hello").unwrap();
    assert_eq!(mock_body(&p, r), "v1 in production");
    let tag = p.routes[r].stage.as_deref().unwrap();
    assert_eq!(
        (tag.stage.as_str(), tag.deployment.as_str()),
        ("prod", "v1")
    );
    assert_eq!(&tag.header[..], b"x-coregate-deployment: v1\r\n");
    // $default: v2 at the base path; a path naming no stage goes there.
    let r = found(&p.table, "/pets/hello").unwrap();
    assert_eq!(mock_body(&p, r), "v2 in root");
    assert_eq!(p.routes[r].stage.as_deref().unwrap().stage, "$default");
    assert!(found(&p.table, "/pets/beta/hello").is_none());
    // The variables went into the URL's host, path and query.
    let r = found(&p.table, "/pets/prod/items/7").unwrap();
    let Integration::Proxy(proxy) = &p.routes[r].integration else {
        panic!("not a proxy")
    };
    assert_eq!(p.upstreams[proxy.upstream].name, "blue");
    assert_eq!(
        proxy.path.as_deref().unwrap(),
        [
            PathPart::Literal("/api/items/".into()),
            PathPart::Param("id".into())
        ]
    );
    assert_eq!(proxy.query.as_deref(), Some("env=production"));
    // The plain API is as it was, untagged.
    let r = found(&p.table, "/plain/x").unwrap();
    assert!(p.routes[r].stage.is_none());
}

#[test]
fn the_canary_has_a_table_of_its_own() {
    let p = plan(STAGED);
    assert_eq!(p.stages.canaries.len(), 1);
    let c = &p.stages.canaries[0];
    assert_eq!(c.threshold, 1 << 30);
    assert_eq!(c.sticky, Sticky::Header(b"x-user"[..].into()));
    let r = found(&c.table, "/pets/prod/hello").unwrap();
    assert_eq!(mock_body(&p, r), "v2 in canary");
    let tag = p.routes[r].stage.as_deref().unwrap();
    assert!(tag.canary);
    assert_eq!(tag.deployment, "v2");
    // v2 has no /items route: the canary does not take it from v1.
    assert!(found(&c.table, "/pets/prod/items/1").is_none());
    // The stage's entry points at its canary.
    let api = p.table.api_for(None, "/pets/prod/hello").unwrap();
    assert_eq!(p.apis[api].canary, Some(0));
    assert_eq!(p.apis[api].stage.as_deref().unwrap().stage, "prod");
    // The canary shares the stage's throttle bucket.
    let primary = found(&p.table, "/pets/prod/hello").unwrap();
    let limits = |route: usize| format!("{:?}", p.routes[route].policies.throttle);
    assert!(!p.routes[r].policies.throttle.is_empty());
    assert_eq!(limits(primary), limits(r));
}

#[test]
fn configs_without_stages_have_no_canaries() {
    let text = STAGED.split("[[apis]]\nname = \"plain\"").nth(1).unwrap();
    let p = plan(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[[apis]]\nname = \"plain\"{text}"
    ));
    assert!(p.stages.canaries.is_empty());
    assert!(p.routes.iter().all(|r| r.stage.is_none()));
    assert!(p
        .apis
        .iter()
        .all(|a| a.stage.is_none() && a.canary.is_none()));
}

#[test]
fn without_a_default_stage_the_base_path_is_the_apis_404() {
    let text = r#"
[[apis]]
name = "pets"
base_path = "/pets"
[[apis.deployments]]
name = "v1"
[[apis.deployments.routes]]
key = "GET /hello"
integration = { type = "mock", body = "pets" }
[[apis.stages]]
name = "prod"
deployment = "v1"

[[apis]]
name = "root"
[[apis.routes]]
key = "$default"
integration = { type = "mock", body = "root" }
"#;
    let p = plan(text);
    assert!(found(&p.table, "/pets/prod/hello").is_some());
    // The root API's $default does not take the pets API's paths.
    assert!(found(&p.table, "/pets/nope/hello").is_none());
    assert!(found(&p.table, "/pets").is_none());
    let api = p.table.api_for(None, "/pets/nope").unwrap();
    assert_eq!(p.apis[api].name, "pets");
    assert!(found(&p.table, "/other").is_some());
}

#[test]
fn stage_mistakes_are_named_by_their_keys() {
    let text = r#"
[[apis]]
name = "pets"

[[apis.routes]]
key = "GET /"
integration = { type = "mock" }

[[apis.deployments]]
name = "v1"
[[apis.deployments.routes]]
key = "GET /a"
integration = { type = "mock", body = "${stageVariables.missing}" }

[[apis.deployments]]
name = "v1"
routes = []

[[apis.deployments]]
name = "bad name"
[[apis.deployments.routes]]
key = "GET /a"
integration = { type = "mock" }

[[apis.stages]]
name = "prod"
deployment = "v1"
variables = { "bad-name" = "x", ok = "spaces are bad" }

[apis.stages.canary]
deployment = "v3"
percent = 101
sticky = { header = "x-a", cookie = "b" }

[[apis.stages]]
name = "prod"
deployment = "v1"

[[apis.stages]]
name = "beta/1"
deployment = "nope"

[[apis.stages]]
name = "gamma"
deployment = "v1"
[apis.stages.canary]
deployment = "v1"
percent = -1
"#;
    let e = errors(text);
    has(
        &e,
        "apis[0].routes",
        "move these into an [[apis.deployments]]",
    );
    has(&e, "apis[0].deployments[1].name", "defined twice");
    has(&e, "apis[0].deployments[1].routes", "at least one");
    has(&e, "apis[0].deployments[2].name", "not a deployment name");
    has(
        &e,
        "apis[0].stages[0].variables.bad-name",
        "letters, digits and '_'",
    );
    has(
        &e,
        "apis[0].stages[0].variables.ok",
        "not a stage variable value",
    );
    has(&e, "apis[0].stages[0].canary.deployment", "named \"v3\"");
    has(&e, "apis[0].stages[0].canary.percent", "from 0 to 100");
    has(&e, "apis[0].stages[0].canary.sticky", "exactly one");
    has(
        &e,
        "apis[0].stages[1].name",
        "stage \"prod\" is defined twice",
    );
    has(&e, "apis[0].stages[2].name", "not a stage name");
    has(&e, "apis[0].stages[2].deployment", "named \"nope\"");
    has(&e, "apis[0].stages[3].canary.percent", "from 0 to 100");
    has(
        &e,
        "apis[0].deployments[0].routes[0].integration.body",
        "stage \"prod\" has no variable \"missing\"",
    );
    // One error per stage that serves the deployment.
    assert_eq!(
        e.iter()
            .filter(|(k, _)| k == "apis[0].deployments[0].routes[0].integration.body")
            .count(),
        2,
        "once for prod, once for gamma: {e:#?}"
    );
}

#[test]
fn nan_percent_and_a_canarys_unknown_variable_are_errors() {
    let text = r#"
[[apis]]
name = "pets"
[[apis.deployments]]
name = "v1"
[[apis.deployments.routes]]
key = "GET /a"
integration = { type = "mock", body = "${stageVariables.x}" }
[[apis.deployments]]
name = "v2"
[[apis.deployments.routes]]
key = "GET /a"
integration = { type = "mock", body = "${stageVariables.y}" }
[[apis.stages]]
name = "prod"
deployment = "v1"
variables = { x = "1" }
[apis.stages.canary]
deployment = "v2"
percent = nan
[[apis.stages]]
name = "beta"
deployment = "v1"
variables = { x = "1" }
[apis.stages.canary]
deployment = "v2"
percent = 1.5
"#;
    let e = errors(text);
    has(&e, "apis[0].stages[0].canary.percent", "NaN");
    has(
        &e,
        "apis[0].deployments[1].routes[0].integration.body",
        "the canary of stage \"beta\" has no variable \"y\" (it has: x)",
    );
}

#[test]
fn compile_errors_inside_stages_name_the_keys_as_written() {
    let text = r#"
[[apis]]
name = "plain"
base_path = "/plain"
[[apis.routes]]
key = "GET /x"
integration = { type = "mock", status = 99 }

[[apis]]
name = "pets"
[[apis.deployments]]
name = "v1"
[[apis.deployments.routes]]
key = "GET pets"
integration = { type = "mock" }
[[apis.stages]]
name = "a"
deployment = "v1"
throttle = { rate = -1, burst = 1 }
[[apis.stages]]
name = "b"
deployment = "v1"

[[apis]]
name = "after"
base_path = "/after"
[[apis.routes]]
key = "GET /x"
integration = { type = "http_proxy", url = "ftp://x" }
"#;
    let e = errors(text);
    has(&e, "apis[0].routes[0].integration.status", "200-599");
    // The bad key of a deployment two stages serve: once.
    assert_eq!(
        e.iter()
            .filter(|(k, _)| k == "apis[1].deployments[0].routes[0].key")
            .count(),
        1,
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|(k, _)| k.starts_with("apis[1].stages[0].throttle")),
        "{e:#?}"
    );
    has(&e, "apis[2].routes[0].integration.url", "http://");
    assert!(
        e.iter()
            .all(|(k, _)| !k.starts_with("apis[3]") && !k.starts_with("apis[4]")),
        "{e:#?}"
    );
}

#[test]
fn a_shared_base_path_is_refused() {
    let text = r#"
[[apis]]
name = "pets"
base_path = "/pets"
[[apis.deployments]]
name = "v1"
[[apis.deployments.routes]]
key = "GET /a"
integration = { type = "mock" }
[[apis.stages]]
name = "prod"
deployment = "v1"

[[apis]]
name = "other"
base_path = "/pets/prod"
[[apis.routes]]
key = "GET /a"
integration = { type = "mock" }
"#;
    let e = errors(text);
    has(&e, "apis", "same hosts and base_path");
}

fn head(raw: &[u8]) -> crate::http::parse::RequestHead {
    let limits = HeadLimits {
        max_request_line: 8192,
        max_head: 16384,
        max_headers: 100,
    };
    parse_request_head(raw, &limits).unwrap().unwrap()
}

fn canary(percent: f64, sticky: Sticky) -> CanaryPlan {
    CanaryPlan {
        table: RouteTable::default(),
        threshold: threshold(percent),
        sticky,
    }
}

#[test]
fn the_split_follows_the_threshold() {
    let raw = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let h = head(raw);
    let none = canary(0.0, Sticky::None);
    let all = canary(100.0, Sticky::None);
    for draw in [0, 1, u64::MAX / 2, u64::MAX] {
        assert!(!none.takes(raw, &h, || draw));
        assert!(all.takes(raw, &h, || draw));
    }
    let quarter = canary(25.0, Sticky::None);
    assert!(quarter.takes(raw, &h, || (1u64 << 62) - 1));
    assert!(!quarter.takes(raw, &h, || 1u64 << 62));
}

#[test]
fn sticky_values_decide_by_their_hash_and_missing_ones_draw() {
    let half = |s| canary(50.0, s);
    let by_header = half(Sticky::Header(b"x-user"[..].into()));
    let by_cookie = half(Sticky::Cookie(b"sid"[..].into()));
    let by_key = half(Sticky::ApiKey);
    let mut canaried = 0;
    for i in 0..1000 {
        let user = format!("user-{i}");
        let expect = stable_hash(user.as_bytes()) >> 32 < threshold(50.0);
        canaried += usize::from(expect);
        let raw = format!(
            "GET / HTTP/1.1\r\nhost: a\r\nX-User: {user}\r\ncookie: a=b; sid={user}; c=d\r\nx-api-key: {user}\r\n\r\n"
        );
        let h = head(raw.as_bytes());
        // The draw is not used when the value is there.
        for draw in [0, u64::MAX] {
            assert_eq!(by_header.takes(raw.as_bytes(), &h, || draw), expect);
            assert_eq!(by_cookie.takes(raw.as_bytes(), &h, || draw), expect);
            assert_eq!(by_key.takes(raw.as_bytes(), &h, || draw), expect);
        }
    }
    assert!((400..600).contains(&canaried), "{canaried}");
    // Without the value: the draw decides.
    let raw = b"GET / HTTP/1.1\r\nhost: a\r\ncookie: other=1\r\n\r\n";
    let h = head(raw);
    for s in [&by_header, &by_cookie, &by_key] {
        assert!(s.takes(raw, &h, || 0));
        assert!(!s.takes(raw, &h, || u64::MAX));
    }
}

#[test]
fn percent_as_an_integer_or_a_fraction() {
    assert_eq!(threshold(0.0), 0);
    assert_eq!(threshold(100.0), 1 << 32);
    assert_eq!(threshold(12.5), 1 << 29);
    let p = plan(&STAGED.replace("percent = 25", "percent = 0.5"));
    assert_eq!(p.stages.canaries[0].threshold, threshold(0.5));
}

#[test]
fn a_canary_of_the_same_routes_caches_apart() {
    let text = r#"
[[apis]]
name = "pets"
[[apis.deployments]]
name = "a"
[[apis.deployments.routes]]
key = "GET /x"
integration = { type = "http_proxy", url = "http://127.0.0.1:9001/x" }
[[apis.deployments]]
name = "b"
[[apis.deployments.routes]]
key = "GET /x"
integration = { type = "http_proxy", url = "http://127.0.0.1:9001/x" }
[[apis.stages]]
name = "prod"
deployment = "a"
cache = { ttl_seconds = 60 }
[apis.stages.canary]
deployment = "b"
percent = 50
"#;
    let p = plan(text);
    let stage = found(&p.table, "/prod/x").unwrap();
    let canary = found(&p.stages.canaries[0].table, "/prod/x").unwrap();
    let scope = |r: usize| p.routes[r].policies.cache.as_ref().unwrap().scope;
    assert_ne!(scope(stage), scope(canary));
}
