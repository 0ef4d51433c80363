//! Named policy sets (`[[policies]]`, docs/policy-sets.md) over real
//! sockets: sets attached to an API and to routes apply as if written
//! there, a later set wins over an earlier one, the API's or route's own
//! setting wins over every set, and `coregate check` names the set's key
//! for errors in a set and the attaching key for unknown names. A changed
//! set applies after a reload; a reload naming an unknown set is refused
//! while the running config goes on.

mod support;

use support::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[policies]]
name = "internal-only"
ip_rules = { allow = ["10.0.0.0/8"] }

[[policies]]
name = "tagged"
[policies.mapping.request]
"append:header.x-set" = "tagged"
"append:header.x-which" = "first"

[[policies]]
name = "retagged"
[policies.mapping.request]
"append:header.x-which" = "second"

[[policies]]
name = "one-request"
throttle = { rate = 0.01, burst = 1 }

[[apis]]
name = "a"
policies = ["tagged"]

[[apis.routes]]
key = "GET /later-set"
integration = { type = "http_proxy", url = "http://@ECHO@" }
policies = ["retagged"]

[[apis.routes]]
key = "GET /own"
integration = { type = "http_proxy", url = "http://@ECHO@" }
policies = ["tagged", "retagged"]
[apis.routes.mapping.request]
"append:header.x-which" = "own"

[[apis.routes]]
key = "GET /internal"
integration = { type = "http_proxy", url = "http://@ECHO@" }
policies = ["internal-only"]

[[apis.routes]]
key = "GET /internal-but-own-rules"
integration = { type = "http_proxy", url = "http://@ECHO@" }
policies = ["internal-only"]
ip_rules = { allow = ["127.0.0.0/8"] }

[[apis.routes]]
key = "GET /once"
integration = { type = "http_proxy", url = "http://@ECHO@" }
policies = ["one-request"]
"#;

#[test]
fn sets_apply_in_order_and_own_settings_win() {
    let echo = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(CONFIG, &[("ECHO", echo.addr_str())]));
    let mut c = gw.client();

    // The API's set and the route's: the route's wins on the same key.
    let e = c.get("/later-set").echo();
    assert_eq!(e.header("x-set"), Some("tagged"));
    assert_eq!(e.headers_named("x-which"), vec!["second"]);

    // The route's own entry wins over both of its sets.
    let e = c.get("/own").echo();
    assert_eq!(e.headers_named("x-which"), vec!["own"]);
    assert_eq!(e.header("x-set"), Some("tagged"));

    // IP rules from a set: 127.0.0.1 is not in 10.0.0.0/8.
    let r = c.get("/internal");
    assert_eq!(r.status, 403, "{r:?}");
    // The route's own ip_rules replace the set's.
    assert_eq!(c.get("/internal-but-own-rules").status, 200);

    // A throttle from a set: one request, then 429.
    assert_eq!(c.get("/once").status, 200);
    let r = c.get("/once");
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(echo.hits(), 4);
}

#[test]
fn set_errors_name_the_set_and_unknown_names_the_attachment() {
    let config = r#"
[server]
listen = ["127.0.0.1:0"]

[[policies]]
name = "cors"
cors = { allow_origins = ["https://example.com"] }

[[policies]]
name = "broken"
throttle = { rate = -1, burst = 1 }
[policies.mapping.request]
"append:header.authorization" = "x"

[[policies]]
name = "cors"

[[apis]]
name = "a"
policies = ["broken"]

[[apis.routes]]
key = "GET /a"
integration = { type = "http_proxy", url = "http://127.0.0.1:9" }
policies = ["brokn"]

[[apis.routes]]
key = "GET /b"
integration = { type = "http_proxy", url = "http://127.0.0.1:9" }
policies = ["cors", "broken"]
"#;
    let path = write_config(config);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    for (key, needle) in [
        ("policies[2].name", "defined twice"),
        ("apis[0].routes[0].policies[0]", "did you mean \"broken\""),
        ("apis[0].routes[1].policies[0]", "attach it to the API"),
        ("policies[1].throttle", ""),
        (
            r#"policies[1].mapping.request."append:header.authorization""#,
            "reserved",
        ),
    ] {
        assert!(
            errors.iter().any(|l| l.contains(key) && l.contains(needle)),
            "no error naming {key} with {needle:?}: {errors:#?}"
        );
    }
    // A set attached to the API and to a route: each of its errors once.
    let throttle_errors = errors
        .iter()
        .filter(|l| l.contains("policies[1].throttle"))
        .count();
    let mapping_errors = errors
        .iter()
        .filter(|l| l.contains("policies[1].mapping"))
        .count();
    assert_eq!((throttle_errors, mapping_errors), (1, 1), "{errors:#?}");
}

#[test]
fn a_changed_set_applies_after_a_reload_and_a_bad_name_is_refused() {
    let echo = Backend::start(Reply::Echo);
    let config = |value: &str, lifecycle: &str, set: &str| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[policies]]
name = "tagged"
[policies.mapping.request]
"append:header.x-set" = "{value}"

[[apis]]
name = "a"
policies = ["{set}"]
{lifecycle}

[[apis.routes]]
key = "GET /r"
integration = {{ type = "http_proxy", url = "http://{}" }}
"#,
            echo.addr_str()
        )
    };
    let gw = Gateway::start(&config("one", "", "tagged"));
    let mut c = gw.client();
    let r = c.get("/r");
    assert_eq!(r.echo().header("x-set"), Some("one"));
    assert!(r.header("deprecation").is_none());

    let deprecated = "[apis.lifecycle]\nstatus = \"deprecated\"\ndeprecated_at = \"2026-01-01\"";
    gw.reload_with(&config("two", deprecated, "tagged"));
    let mut c = gw.client();
    let r = c.get("/r");
    assert_eq!(r.echo().header("x-set"), Some("two"));
    assert_eq!(r.header("deprecation"), Some("@1767225600"));

    // An unknown set name: the reload is refused with the key, and the
    // running config goes on.
    gw.rewrite_config(&config("three", "", "tagd"));
    let refused = gw.reload();
    assert_ne!(refused.status, 200, "{refused:?}");
    assert!(
        refused.text().contains("apis[0].policies[0]"),
        "{}",
        refused.text()
    );
    let r = gw.client().get("/r");
    assert_eq!(r.echo().header("x-set"), Some("two"));
}

/// An API with two stages: sets attached to a stage apply to that stage
/// only, over the API's sets (a route's sets over both), and move with a
/// reload; unknown names on a stage are refused with its key, together
/// with the other errors.
#[test]
fn sets_attached_to_a_stage_apply_to_it_and_move_with_a_reload() {
    let echo = Backend::start(Reply::Echo);
    let config = |prod: &str, beta: &str, api: &str| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[policies]]
name = "internal-only"
ip_rules = {{ allow = ["10.0.0.0/8"] }}

[[policies]]
name = "api-tag"
[policies.mapping.request]
"overwrite:header.x-level" = "api"

[[policies]]
name = "stage-tag"
[policies.mapping.request]
"overwrite:header.x-level" = "stage"

[[policies]]
name = "route-tag"
[policies.mapping.request]
"overwrite:header.x-level" = "route"

[[apis]]
name = "pets"
base_path = "/pets"
policies = [{api}]

[[apis.deployments]]
name = "v1"

[[apis.deployments.routes]]
key = "GET /items"
integration = {{ type = "http_proxy", url = "http://{b}" }}

[[apis.deployments.routes]]
key = "GET /routed"
integration = {{ type = "http_proxy", url = "http://{b}" }}
policies = ["route-tag"]

[[apis.stages]]
name = "prod"
deployment = "v1"
policies = [{prod}]

[[apis.stages]]
name = "beta"
deployment = "v1"
policies = [{beta}]
"#,
            b = echo.addr_str()
        )
    };
    let gw = Gateway::start(&config("\"internal-only\"", "\"stage-tag\"", "\"api-tag\""));
    let level = |path: &str| {
        let r = gw.client().get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.echo().header("x-level").map(str::to_string)
    };
    let r = gw.client().get("/pets/prod/items");
    assert_eq!(r.status, 403, "prod takes internal-only: {}", r.text());
    assert_eq!(level("/pets/beta/items").as_deref(), Some("stage"));
    assert_eq!(level("/pets/beta/routed").as_deref(), Some("route"));

    // The sets move to the other stage.
    gw.reload_with(&config("\"stage-tag\"", "\"internal-only\"", "\"api-tag\""));
    assert_eq!(level("/pets/prod/items").as_deref(), Some("stage"));
    assert_eq!(level("/pets/prod/routed").as_deref(), Some("route"));
    let r = gw.client().get("/pets/beta/items");
    assert_eq!(r.status, 403, "beta takes internal-only: {}", r.text());

    // Without stage sets, the API's set applies to both.
    gw.reload_with(&config("", "", "\"api-tag\""));
    assert_eq!(level("/pets/prod/items").as_deref(), Some("api"));
    assert_eq!(level("/pets/beta/items").as_deref(), Some("api"));

    // Unknown names: every one is reported with its key, and the running
    // config goes on.
    gw.rewrite_config(&config("", "\"api-tag\", \"stage-tagg\"", "\"api-tg\""));
    let refused = gw.reload();
    assert_eq!(refused.status, 400, "{refused:?}");
    let text = refused.text();
    assert!(
        text.contains("apis[0].stages[1].policies[1]: no [[policies]] set is named \\\"stage-tagg\\\": did you mean \\\"stage-tag\\\"?"),
        "{text}"
    );
    assert!(text.contains("apis[0].policies[0]"), "{text}");
    assert_eq!(level("/pets/beta/items").as_deref(), Some("api"));
}
