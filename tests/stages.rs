//! Stages, deployments and canaries over real sockets, with the real
//! binary (docs/stages.md): two stages of one API serving two deployments
//! at the same time (read by curl and by ureq, clients we did not write),
//! stage variables in integration URLs and mock bodies, the `$default`
//! stage and unknown stage paths, the canary's share over 10,000 requests,
//! sticky canaries by header, cookie and API key, the deployment in the
//! response header, the metrics and the access log, promotion and rollback
//! through the config file and a reload, and bad stage configs refused with
//! their keys (by `coregate check` and by a reload). Unwraps are
//! on the test's own files and on values the test has just checked.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use support::*;

const HEADER: &str = "x-coregate-deployment";

/// The pets API: v1 proxies to the stage's backend, v2 too, with a path
/// prefix and a query from stage variables; both answer /hello from a mock
/// naming the deployment and a variable.
const TWO_VERSIONS: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[upstreams]]
name = "blue"
targets = [{ address = "@BLUE@" }]

[[upstreams]]
name = "green"
targets = [{ address = "@GREEN@" }]

[[apis]]
name = "pets"
base_path = "/pets"

[[apis.deployments]]
name = "v1"
[[apis.deployments.routes]]
key = "GET /items/{id}"
integration = { type = "http_proxy", url = "http://${stageVariables.backend}/${stageVariables.prefix}/items/{id}?stage=${stageVariables.env}" }
[[apis.deployments.routes]]
key = "GET /hello"
integration = { type = "mock", body = "v1 says hello from ${stageVariables.env}" }

[[apis.deployments]]
name = "v2"
[[apis.deployments.routes]]
key = "GET /items/{id}"
integration = { type = "http_proxy", url = "http://${stageVariables.backend}/v2/items/{id}" }
[[apis.deployments.routes]]
key = "GET /hello"
integration = { type = "mock", body = "v2 says hello from ${stageVariables.env}" }
[[apis.deployments.routes]]
key = "GET /new"
integration = { type = "mock", body = "only in v2" }

[[apis.stages]]
name = "prod"
deployment = "v1"
variables = { backend = "blue", prefix = "api", env = "prod" }

[[apis.stages]]
name = "beta"
deployment = "v2"
variables = { backend = "green", env = "beta" }

[[apis.stages]]
name = "$default"
deployment = "v2"
variables = { backend = "green", env = "root" }

[[apis]]
name = "nodefault"
base_path = "/nd"

[[apis.deployments]]
name = "only"
[[apis.deployments.routes]]
key = "GET /x"
integration = { type = "mock", body = "nd" }

[[apis.stages]]
name = "live"
deployment = "only"
"#;

fn curl(url: &str) -> (u16, BTreeMap<String, String>, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", url])
        .output()
        .expect("curl runs (scripts/test installs it)");
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn two_versions() -> (Gateway, Backend, Backend) {
    let blue = Backend::start(Reply::Echo);
    let green = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(
        TWO_VERSIONS,
        &[("BLUE", blue.addr_str()), ("GREEN", green.addr_str())],
    ));
    (gw, blue, green)
}

#[test]
fn two_stages_serve_two_deployments_at_once() {
    let (gw, _blue, _green) = two_versions();
    // prod: v1, to the blue backend, with the variables in path and query.
    let (status, h, body) = curl(&gw.url("/pets/prod/items/7"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.get(HEADER).map(String::as_str), Some("v1"));
    let first = body.lines().next().unwrap();
    assert_eq!(first, "GET /api/items/7?stage=prod HTTP/1.1", "{body}");
    // beta: v2, to the green backend.
    let (status, h, body) = curl(&gw.url("/pets/beta/items/7"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.get(HEADER).map(String::as_str), Some("v2"));
    assert_eq!(body.lines().next().unwrap(), "GET /v2/items/7 HTTP/1.1");
    // Mock bodies carry their stage's variables.
    let (_, h, body) = curl(&gw.url("/pets/prod/hello"));
    assert_eq!(body, "v1 says hello from prod");
    assert_eq!(h.get(HEADER).map(String::as_str), Some("v1"));
    let (_, _, body) = curl(&gw.url("/pets/beta/hello"));
    assert_eq!(body, "v2 says hello from beta");
    // A route only v2 has: served by beta, 404 in prod.
    assert_eq!(curl(&gw.url("/pets/beta/new")).2, "only in v2");
    let r = http_get(&gw.url("/pets/prod/new"));
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), r#"{"message":"Not Found"}"#);

    // Both versions at the same time: four clients, interleaved.
    let addr = gw.addr();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                let agent = agent();
                for i in 0..100 {
                    let (stage, version) = if (i + w) % 2 == 0 {
                        ("prod", "v1")
                    } else {
                        ("beta", "v2")
                    };
                    let r = call(
                        agent.get(&format!("http://{addr}/pets/{stage}/hello")),
                        None,
                    );
                    assert_eq!(r.status, 200);
                    assert_eq!(r.header(HEADER), Some(version));
                    assert_eq!(r.text(), format!("{version} says hello from {stage}"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn paths_naming_no_stage_go_to_default_or_are_the_apis_404() {
    let (gw, _blue, _green) = two_versions();
    // $default serves the base path itself.
    let (status, h, body) = curl(&gw.url("/pets/hello"));
    assert_eq!((status, body.as_str()), (200, "v2 says hello from root"));
    assert_eq!(h.get(HEADER).map(String::as_str), Some("v2"));
    // An unknown stage name is a path in $default, which has no such route.
    let r = http_get(&gw.url("/pets/gamma/hello"));
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), r#"{"message":"Not Found"}"#);
    // Without a $default stage: 404 JSON for anything not under a stage.
    let (_, _, body) = curl(&gw.url("/nd/live/x"));
    assert_eq!(body, "nd");
    for path in ["/nd/x", "/nd/other/x", "/nd"] {
        let r = http_get(&gw.url(path));
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.text(), r#"{"message":"Not Found"}"#, "{path}");
        assert_eq!(r.header(HEADER), None, "{path}");
    }
}

const CANARY: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "shop"
base_path = "/shop"

[[apis.deployments]]
name = "stable"
[[apis.deployments.routes]]
key = "GET /v"
integration = { type = "mock", body = "stable ${stageVariables.colour}" }

[[apis.deployments]]
name = "next"
[[apis.deployments.routes]]
key = "GET /v"
integration = { type = "mock", body = "next ${stageVariables.colour}" }

[[apis.stages]]
name = "prod"
deployment = "stable"
variables = { colour = "blue" }

[apis.stages.canary]
deployment = "next"
percent = @PERCENT@
variables = { colour = "green" }

[[apis.stages]]
name = "byheader"
deployment = "stable"
variables = { colour = "blue" }
[apis.stages.canary]
deployment = "next"
percent = 50
sticky = { header = "x-user" }

[[apis.stages]]
name = "bycookie"
deployment = "stable"
variables = { colour = "blue" }
[apis.stages.canary]
deployment = "next"
percent = 50
sticky = { cookie = "session" }

[[apis.stages]]
name = "bykey"
deployment = "stable"
variables = { colour = "blue" }
[apis.stages.canary]
deployment = "next"
percent = 50
sticky = { api_key = true }
"#;

/// The deployment that answered, checked against the body it sent (each
/// deployment's mock body starts with its name).
fn served_by(r: &HttpResponse) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    let d = r.header(HEADER).expect("the deployment header").to_string();
    assert!(
        r.text().starts_with(&format!("{d} ")),
        "header {d}, body {}",
        r.text()
    );
    d
}

#[test]
fn the_canary_share_over_10000_requests_is_within_one_and_a_half_points() {
    let gw = Gateway::start(&CANARY.replace("@PERCENT@", "25"));
    let addr = gw.addr();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let agent = agent();
                let mut canary = 0u32;
                for _ in 0..2500 {
                    let r = call(agent.get(&format!("http://{addr}/shop/prod/v")), None);
                    let d = served_by(&r);
                    if d == "next" {
                        assert_eq!(r.text(), "next green");
                        canary += 1;
                    } else {
                        assert_eq!(r.text(), "stable blue");
                    }
                }
                canary
            })
        })
        .collect();
    let canary: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let share = f64::from(canary) / 100.0;
    assert!(
        (share - 25.0).abs() <= 1.5,
        "canary share {share}% over 10,000 requests, set to 25%"
    );
}

#[test]
fn percent_zero_and_hundred_are_all_or_nothing() {
    for (percent, only) in [("0", "stable"), ("100", "next")] {
        let gw = Gateway::start(&CANARY.replace("@PERCENT@", percent));
        let agent = agent();
        for _ in 0..300 {
            let r = call(agent.get(&gw.url("/shop/prod/v")), None);
            assert_eq!(served_by(&r), only, "percent = {percent}");
        }
    }
}

#[test]
fn sticky_clients_stay_on_one_deployment() {
    let gw = Gateway::start(&CANARY.replace("@PERCENT@", "25"));
    let mut seen = BTreeMap::new();
    for (stage, name, value_of) in [
        ("byheader", "x-user", None),
        ("bycookie", "cookie", Some("session")),
        ("bykey", "x-api-key", None),
    ] {
        let mut per_deployment: BTreeMap<String, u32> = BTreeMap::new();
        for client in 0..60 {
            let value = format!("client-{client}");
            let header = match value_of {
                Some(cookie) => format!("theme=dark; {cookie}={value}; lang=en"),
                None => value.clone(),
            };
            let mut first = None;
            // Each request on a new connection: the shards must agree.
            for _ in 0..5 {
                let r = call(
                    agent()
                        .get(&gw.url(&format!("/shop/{stage}/v")))
                        .set(name, &header),
                    None,
                );
                let d = served_by(&r);
                match &first {
                    None => first = Some(d),
                    Some(f) => assert_eq!(f, &d, "{stage}: {value} moved between deployments"),
                }
            }
            *per_deployment.entry(first.unwrap()).or_default() += 1;
        }
        // 60 clients at 50%: both deployments get some.
        assert_eq!(per_deployment.len(), 2, "{stage}: {per_deployment:?}");
        seen.insert(stage, per_deployment);
    }
    // The same value hashes the same way whatever carries it.
    assert_eq!(seen["byheader"], seen["bycookie"]);
    assert_eq!(seen["byheader"], seen["bykey"]);
    // Without the sticky value, requests are drawn: both deployments.
    let agent = agent();
    let mut drawn = BTreeMap::new();
    for _ in 0..200 {
        let r = call(agent.get(&gw.url("/shop/byheader/v")), None);
        *drawn.entry(served_by(&r)).or_insert(0) += 1;
    }
    assert_eq!(drawn.len(), 2, "{drawn:?}");
}

#[test]
fn metrics_and_access_logs_carry_stage_and_deployment() {
    let log = temp_path("log");
    let _ = std::fs::remove_file(&log);
    let config = CANARY.replace("@PERCENT@", "50").replace(
        "[[apis.deployments]]\nname = \"stable\"",
        &format!(
            "access_log = {{ format = '$context.stage $context.deploymentId $context.status $context.apiId', destination = \"{}\" }}\n\n[[apis.deployments]]\nname = \"stable\"",
            log.display()
        ),
    );
    let gw = Gateway::start(&config);
    let agent = agent();
    let mut by_deployment: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..100 {
        let r = call(agent.get(&gw.url("/shop/prod/v")), None);
        *by_deployment.entry(served_by(&r)).or_default() += 1;
    }
    assert_eq!(http_get(&gw.url("/shop/prod/nothing")).status, 404);
    // The access log: one line per request, naming stage and deployment.
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(wait_until(Duration::from_secs(10), || lines().len() >= 101));
    let lines = lines();
    for (d, n) in &by_deployment {
        let want = format!("prod {d} 200 shop");
        assert_eq!(
            lines.iter().filter(|l| **l == want).count() as u64,
            *n,
            "{lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("prod ") && l.ends_with(" 404 shop")),
        "{lines:#?}"
    );
    // The metrics: one series per stage and deployment.
    let wanted: Vec<String> = by_deployment
        .iter()
        .map(|(d, n)| {
            format!(
                "coregate_requests_total{{api=\"shop\",stage=\"prod\",deployment=\"{d}\",status=\"200\",class=\"2xx\"}} {n}"
            )
        })
        .collect();
    let mut metrics = String::new();
    let all_there = wait_until(Duration::from_secs(10), || {
        metrics = http_get(&gw.admin_url("/metrics")).text();
        wanted.iter().all(|w| metrics.lines().any(|l| l == w))
    });
    assert!(all_there, "not all of {wanted:#?} in:\n{metrics}");
}

/// Every answer of `n` requests to `path` comes from `deployment`, with
/// `body`.
fn all_from(gw: &Gateway, path: &str, n: usize, deployment: &str, body: &str) {
    let agent = agent();
    for _ in 0..n {
        let r = call(agent.get(&gw.url(path)), None);
        assert_eq!(r.header(HEADER), Some(deployment), "{}", r.text());
        assert_eq!(r.text(), body);
    }
}

#[test]
fn promotion_and_rollback_through_the_config_file_and_a_reload() {
    let text = CANARY.replace("@PERCENT@", "25");
    let gw = Gateway::start(&text);
    let agent = agent();
    let mut seen = BTreeMap::new();
    for _ in 0..200 {
        let r = call(agent.get(&gw.url("/shop/prod/v")), None);
        *seen.entry(served_by(&r)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Promote: the canary's deployment and variables serve everything.
    let promoted = coregate::config::canary::promote_canary(&text, "shop", "prod").unwrap();
    gw.reload_with(&promoted);
    all_from(&gw, "/shop/prod/v", 300, "next", "next green");
    // Roll back (from the file as it was): the stage's deployment only.
    let rolled_back = coregate::config::canary::rollback_canary(&text, "shop", "prod").unwrap();
    gw.reload_with(&rolled_back);
    all_from(&gw, "/shop/prod/v", 300, "stable", "stable blue");
    // And all the way up.
    let all = coregate::config::canary::set_canary_percent(&text, "shop", "prod", 100.0).unwrap();
    gw.reload_with(&all);
    all_from(&gw, "/shop/prod/v", 300, "next", "next green");
}

#[test]
fn a_reload_with_a_bad_canary_is_refused_and_traffic_goes_on() {
    let text = CANARY.replace("@PERCENT@", "0");
    let gw = Gateway::start(&text);
    all_from(&gw, "/shop/prod/v", 50, "stable", "stable blue");
    gw.rewrite_config(&text.replacen("percent = 0", "percent = 101", 1));
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("apis[0].stages[0].canary.percent"),
        "{}",
        r.text()
    );
    all_from(&gw, "/shop/prod/v", 50, "stable", "stable blue");
}

#[test]
fn bad_stage_configs_are_refused_with_their_keys() {
    let base = CANARY.replace("@PERCENT@", "25");
    let cases: &[(&str, &str, &str)] = &[
        (
            "percent = 25",
            "percent = 101",
            "apis[0].stages[0].canary.percent",
        ),
        (
            "percent = 25",
            "percent = -1",
            "apis[0].stages[0].canary.percent",
        ),
        (
            "percent = 25",
            "percent = nan",
            "apis[0].stages[0].canary.percent",
        ),
        (
            "deployment = \"next\"\npercent = 25",
            "deployment = \"later\"\npercent = 25",
            "apis[0].stages[0].canary.deployment",
        ),
        (
            "name = \"byheader\"\ndeployment = \"stable\"",
            "name = \"byheader\"\ndeployment = \"gone\"",
            "apis[0].stages[1].deployment",
        ),
        (
            "name = \"bycookie\"",
            "name = \"byheader\"",
            "apis[0].stages[2].name",
        ),
        (
            "variables = { colour = \"green\" }",
            "variables = { \"col-our\" = \"green\" }",
            "apis[0].stages[0].canary.variables.col-our",
        ),
        (
            "variables = { colour = \"green\" }",
            "variables = { colour = \"green light\" }",
            "apis[0].stages[0].canary.variables.colour",
        ),
        (
            "body = \"next ${stageVariables.colour}\"",
            "body = \"next ${stageVariables.shade}\"",
            "apis[0].deployments[1].routes[0].integration.body",
        ),
    ];
    for (from, to, key) in cases {
        assert!(base.contains(from), "{from}");
        let path = write_config(&base.replacen(from, to, 1));
        let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains(&format!("{key}: "))),
            "{to}: no error naming {key}: {stderr}"
        );
    }
}

/// The admin API's canary endpoint: set the share, promote, roll back, each
/// applied at once and written to the config file; bad requests refused.
#[test]
fn the_admin_api_moves_promotes_and_rolls_back_a_canary() {
    let text = CANARY.replace("@PERCENT@", "0");
    let gw = Gateway::start(&text);
    let post =
        |path: &str, body: &str| call(agent().post(&gw.admin_url(path)), Some(body.as_bytes()));
    all_from(&gw, "/shop/prod/v", 50, "stable", "stable blue");
    let r = post("/stages/shop/prod/canary", r#"{"percent": 100}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    all_from(&gw, "/shop/prod/v", 100, "next", "next green");
    let file = std::fs::read_to_string(gw.config_path()).unwrap();
    assert!(file.contains("percent = 100"), "{file}");
    let r = post("/stages/shop/prod/canary", r#"{"action": "rollback"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    all_from(&gw, "/shop/prod/v", 100, "stable", "stable blue");
    let r = post("/stages/shop/prod/canary", r#"{"action": "promote"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    all_from(&gw, "/shop/prod/v", 100, "next", "next green");
    // The change is in the file: a restart keeps it.
    let file = std::fs::read_to_string(gw.config_path()).unwrap();
    assert!(coregate::plan::load(gw.config_path()).is_ok(), "{file}");
    // Bad requests change nothing.
    for (path, body) in [
        ("/stages/shop/prod/canary", r#"{"percent": 101}"#),
        ("/stages/shop/prod/canary", r#"{"action": "jump"}"#),
        ("/stages/shop/nowhere/canary", r#"{"action": "promote"}"#),
        ("/stages/nothing/prod/canary", r#"{"percent": 5}"#),
        ("/stages/shop/prod/canary", "not json"),
    ] {
        let r = post(path, body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
    }
    assert_eq!(
        call(agent().get(&gw.admin_url("/stages/shop/prod/canary")), None).status,
        405
    );
    all_from(&gw, "/shop/prod/v", 50, "next", "next green");
    assert!(gw
        .stderr()
        .lines()
        .any(|l| l.contains("canary of stage \"prod\" of api \"shop\"")));
}

/// The canary endpoint's API and stage names are percent-decoded, as
/// `/openapi?api=` decodes them: an API whose name has a space is
/// reachable (it was 400 "no API" for `the%20shop`).
#[test]
fn the_canary_endpoint_decodes_its_names() {
    let text = CANARY
        .replace("@PERCENT@", "0")
        .replace("name = \"shop\"", "name = \"the shop\"");
    let gw = Gateway::start(&text);
    let r = call(
        agent().post(&gw.admin_url("/stages/the%20shop/prod/canary")),
        Some(br#"{"percent": 100}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    all_from(&gw, "/shop/prod/v", 50, "next", "next green");
}

/// Canary changes asked at once, each for another stage, all take effect:
/// the edit is made on the running text by the main thread. It was made
/// by each admin thread on the text it had read, so the second install
/// put back what the first had changed (both answered 200).
#[test]
fn canary_changes_asked_at_once_all_take_effect() {
    let text = CANARY.replace("@PERCENT@", "0");
    let gw = Gateway::start(&text);
    let stages = ["prod", "byheader", "bycookie"];
    for round in 1..=15u32 {
        let barrier = std::sync::Barrier::new(stages.len());
        std::thread::scope(|s| {
            for (k, stage) in stages.iter().enumerate() {
                let (gw, barrier) = (&gw, &barrier);
                s.spawn(move || {
                    let body = format!("{{\"percent\": {}}}", round * 5 + k as u32);
                    barrier.wait();
                    let path = format!("/stages/shop/{stage}/canary");
                    let r = call(agent().post(&gw.admin_url(&path)), Some(body.as_bytes()));
                    assert_eq!(r.status, 200, "{stage}: {}", r.text());
                });
            }
        });
        let shown = call(agent().get(&gw.admin_url("/config")), None);
        let shown: serde_json::Value = serde_json::from_slice(&shown.body).unwrap();
        let running = coregate::config::parse(shown["config"].as_str().unwrap()).unwrap();
        let file = std::fs::read_to_string(gw.config_path()).unwrap();
        let file = coregate::config::parse(&file).unwrap();
        for (k, stage) in stages.iter().enumerate() {
            let want = f64::from(round * 5 + k as u32);
            for (what, raw) in [("running", &running), ("file", &file)] {
                let s = raw.apis[0]
                    .stages
                    .iter()
                    .find(|s| s.name == *stage)
                    .unwrap();
                let got = s.canary.as_ref().unwrap().percent;
                assert_eq!(got, want, "round {round}: {what} config, stage {stage}");
            }
        }
    }
}

/// Parameter mapping reads the stage a request was routed to:
/// `$context.stage` and `$stageVariables.NAME`, a canary's overrides
/// included.
#[test]
fn mappings_read_the_stage_and_its_variables() {
    let echo = Backend::start(Reply::Echo);
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[apis]]
name = "m"

[[apis.deployments]]
name = "d"
[[apis.deployments.routes]]
key = "GET /x"
integration = {{ type = "http_proxy", url = "http://{echo}/x" }}
[apis.deployments.routes.mapping.request]
"append:header.x-seen" = "${{context.stage}}:${{stageVariables.color}}"

[[apis.stages]]
name = "prod"
deployment = "d"
variables = {{ color = "blue" }}

[[apis.stages]]
name = "beta"
deployment = "d"
variables = {{ color = "green" }}
[apis.stages.canary]
deployment = "d"
percent = 100
variables = {{ color = "red" }}
"#,
        echo = echo.addr_str()
    ));
    let seen = |path: &str| {
        let body = call(agent().get(&gw.url(path)), None).text();
        body.lines()
            .find_map(|l| l.strip_prefix("x-seen: ").map(str::to_string))
            .unwrap_or_else(|| panic!("no x-seen in {body}"))
    };
    assert_eq!(seen("/prod/x"), "prod:blue");
    assert_eq!(seen("/beta/x"), "beta:red");
}
