//! Tests for loading config text: the documented shape compiles into the
//! expected plan, and every kind of mistake is reported with its key.
//!
//! Only IP literals are used for addresses so that no test depends on DNS.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on
//! input the test writes itself (config text, heads, keys, addresses), so a
//! failure is a failed test; nothing a client or a config file controls
//! reaches them.

use super::*;
use crate::config::{parse, raw};
use crate::http::method::Method;
use crate::integration::http_proxy::PathPart;
use crate::integration::upstream::Balance;
use crate::route::Lookup;
use std::time::Duration;

/// A config in the shape docs/configuration.md documents.
const FULL: &str = r#"
[server]
listen = ["127.0.0.1:8080", "[::1]:8081"]
shards = 3
backlog = 512
drain_timeout_ms = 5000
max_connections_per_shard = 1000

[server.limits]
max_request_line_bytes = 4096
max_header_bytes = 8192
max_headers = 50
max_body_bytes = 1048576
header_read_timeout_ms = 5000
body_read_timeout_ms = 6000
idle_timeout_ms = 7000
write_timeout_ms = 8000

[[upstreams]]
name = "petstore"
targets = [
  { address = "127.0.0.1:9001", weight = 3 },
  { address = "127.0.0.1:9002" },
]
balance = "weighted"
host = "pets.internal"
connect_timeout_ms = 1000
timeout_ms = 10000
max_response_header_bytes = 32768

[upstreams.pool]
max_idle = 8
idle_timeout_ms = 20000

[upstreams.health]
max_failures = 5
cooldown_ms = 3000

[[apis]]
name = "pets"
hosts = ["api.example.com", "*.example.org"]
base_path = "/v1/"

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://petstore/pets/{id}" }

[[apis.routes]]
key = "ANY /legacy/{proxy+}"
integration = { type = "http_proxy", url = "http://127.0.0.1:9100/old/{proxy}?src=gw" }

[[apis.routes]]
key = "GET /health"
[apis.routes.integration]
type = "mock"
status = 200
headers = { "Content-Type" = "application/json", "x-b" = "2" }
body = '{"ok":true}'

[[apis.routes]]
key = "DELETE /pets/{id}"
integration = { type = "mock", status = 204 }

[[apis.routes]]
key = "$default"
integration = { type = "http_proxy", url = "http://127.0.0.1:9100" }

[[apis]]
name = "public"

[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "mock", status = 404, body = "nope" }
"#;

/// The smallest valid config: one API with one mock route.
const MINIMAL_API: &str = r#"
[[apis]]
name = "a"

[[apis.routes]]
key = "GET /"
integration = { type = "mock" }
"#;

fn plan(text: &str) -> Plan {
    load_str(text).unwrap_or_else(|e| panic!("config should load: {e:#?}"))
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str(text) {
        Ok(_) => panic!("config should be refused:\n{text}"),
        Err(e) => {
            assert!(!e.is_empty());
            e
        }
    }
}

/// The errors for `MINIMAL_API` with `extra` in front of it.
fn errors_with(extra: &str) -> Vec<ConfigError> {
    errors(&format!("{extra}\n{MINIMAL_API}"))
}

/// The one error whose key is `key`.
fn error_at<'a>(errs: &'a [ConfigError], key: &str) -> &'a ConfigError {
    let found: Vec<_> = errs.iter().filter(|e| e.key == key).collect();
    assert_eq!(
        found.len(),
        1,
        "want exactly one error at {key:?}, got {errs:#?}"
    );
    found[0]
}

/// A config with one API whose single route is `route` (TOML lines).
fn with_route(route: &str) -> String {
    format!("[[apis]]\nname = \"a\"\n\n[[apis.routes]]\n{route}\n")
}

// ---- a full config ---------------------------------------------------------

#[test]
fn full_config_compiles() {
    let p = plan(FULL);

    assert_eq!(
        p.server.listen,
        [
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:8081".parse().unwrap()
        ]
    );
    assert_eq!(p.server.shards, 3);
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // cpus omitted: shard i on CPU i modulo the CPU count.
    assert_eq!(p.server.cpus, (0..3).map(|i| i % ncpu).collect::<Vec<_>>());
    assert_eq!(p.server.backlog, 512);
    assert_eq!(p.server.drain_timeout, Duration::from_millis(5000));
    assert_eq!(p.server.max_connections_per_shard, 1000);

    assert_eq!(p.limits.max_request_line_bytes, 4096);
    assert_eq!(p.limits.max_header_bytes, 8192);
    assert_eq!(p.limits.max_headers, 50);
    assert_eq!(p.limits.max_body_bytes, 1_048_576);
    assert_eq!(p.limits.header_read_timeout, Duration::from_millis(5000));
    assert_eq!(p.limits.body_read_timeout, Duration::from_millis(6000));
    assert_eq!(p.limits.idle_timeout, Duration::from_millis(7000));
    assert_eq!(p.limits.write_timeout, Duration::from_millis(8000));

    // The declared upstream, then the implicit one made for 127.0.0.1:9100
    // (shared by the two routes that name it).
    assert_eq!(p.upstreams.len(), 2);
    let up = &p.upstreams[0];
    assert_eq!(up.name, "petstore");
    assert_eq!(up.balance, Balance::Weighted);
    assert_eq!(up.host.as_deref(), Some("pets.internal"));
    assert_eq!(up.targets.len(), 2);
    assert_eq!(up.targets[0].addr, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(up.targets[0].label, "127.0.0.1:9001");
    assert_eq!((up.targets[0].weight, up.targets[1].weight), (3, 1));
    assert_eq!(up.connect_timeout, Duration::from_millis(1000));
    assert_eq!(up.timeout, Duration::from_millis(10000));
    assert_eq!(up.max_response_header_bytes, 32768);
    assert_eq!(up.pool_max_idle, 8);
    assert_eq!(up.pool_idle_timeout, Duration::from_millis(20000));
    assert_eq!(up.health_max_failures, 5);
    assert_eq!(up.health_cooldown, Duration::from_millis(3000));
    let implicit = &p.upstreams[1];
    assert_eq!(implicit.name, "127.0.0.1:9100");
    assert_eq!(implicit.targets.len(), 1);
    assert_eq!(implicit.targets[0].addr, "127.0.0.1:9100".parse().unwrap());
    assert_eq!(implicit.balance, Balance::RoundRobin);
    assert_eq!(implicit.host, None);

    assert_eq!(p.routes.len(), 6);
    assert_eq!(
        (p.routes[0].api.as_str(), p.routes[0].key.as_str()),
        ("pets", "GET /pets/{id}")
    );
    match &p.routes[0].integration {
        Integration::Proxy(pp) => {
            assert_eq!(
                pp.upstream, 0,
                "http://petstore/... names the declared upstream"
            );
            assert_eq!(
                pp.path.as_deref(),
                Some(
                    &[
                        PathPart::Literal("/pets/".into()),
                        PathPart::Param("id".into())
                    ][..]
                )
            );
            assert_eq!(pp.query, None);
        }
        other => panic!("{other:?}"),
    }
    match &p.routes[1].integration {
        Integration::Proxy(pp) => {
            assert_eq!(pp.upstream, 1);
            assert_eq!(
                pp.path.as_deref(),
                Some(
                    &[
                        PathPart::Literal("/old/".into()),
                        PathPart::Param("proxy".into())
                    ][..]
                )
            );
            assert_eq!(pp.query.as_deref(), Some("src=gw"));
        }
        other => panic!("{other:?}"),
    }
    match &p.routes[2].integration {
        Integration::Mock(m) => {
            assert_eq!(m.status, 200);
            // Names lower-cased, in sorted order of the names as written.
            assert_eq!(
                String::from_utf8_lossy(&m.head),
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-b: 2\r\ncontent-length: 11\r\n"
            );
            assert_eq!(m.body, br#"{"ok":true}"#);
        }
        other => panic!("{other:?}"),
    }
    match &p.routes[3].integration {
        Integration::Mock(m) => {
            assert_eq!(m.status, 204);
            assert_eq!(
                m.head, b"HTTP/1.1 204 No Content\r\n",
                "no content-length on a 204"
            );
            assert!(m.body.is_empty());
        }
        other => panic!("{other:?}"),
    }
    match &p.routes[4].integration {
        Integration::Proxy(pp) => {
            assert_eq!(pp.upstream, 1, "same authority, same implicit upstream");
            assert_eq!(
                pp.path, None,
                "no path in the URL: pass the request path through"
            );
            assert_eq!(pp.query, None);
        }
        other => panic!("{other:?}"),
    }
    match &p.routes[5].integration {
        Integration::Mock(m) => {
            assert_eq!(m.status, 404);
            assert_eq!(m.body, b"nope");
        }
        other => panic!("{other:?}"),
    }

    // The route table: base path "/v1/" is "/v1"; hosts with port and case.
    match p
        .table
        .lookup(Some(b"API.example.com:443"), Method::Get, "/v1/pets/7")
    {
        Lookup::Found { route, params } => {
            assert_eq!(route, 0);
            assert_eq!(params.get("id"), Some("7"));
        }
        other => panic!("{other:?}"),
    }
    match p
        .table
        .lookup(Some(b"x.example.org"), Method::Post, "/v1/legacy/a/b")
    {
        Lookup::Found { route, params } => {
            assert_eq!(route, 1);
            assert_eq!(params.get("proxy"), Some("a/b"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p.table
            .lookup(Some(b"api.example.com"), Method::Delete, "/v1/pets/7"),
        Lookup::Found { route: 3, .. }
    ));
    assert!(matches!(
        p.table
            .lookup(Some(b"api.example.com"), Method::Get, "/v1/nothing"),
        Lookup::Found { route: 4, .. }
    ));
    // Another host falls to the any-host API.
    assert!(matches!(
        p.table
            .lookup(Some(b"other.test"), Method::Get, "/v1/pets/7"),
        Lookup::Found { route: 5, .. }
    ));
}

#[test]
fn defaults_fill_an_almost_empty_config() {
    let p = plan(MINIMAL_API);
    assert_eq!(p.server.listen, [raw::DEFAULT_LISTEN.parse().unwrap()]);
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    assert_eq!(p.server.shards, ncpu);
    assert_eq!(p.server.cpus, (0..ncpu).collect::<Vec<_>>());
    assert_eq!(p.server.backlog, raw::DEFAULT_BACKLOG);
    assert_eq!(
        p.server.drain_timeout,
        Duration::from_millis(raw::DEFAULT_DRAIN_TIMEOUT_MS)
    );
    assert_eq!(
        p.limits.max_request_line_bytes,
        raw::DEFAULT_MAX_REQUEST_LINE_BYTES
    );
    assert_eq!(p.limits.max_header_bytes, raw::DEFAULT_MAX_HEADER_BYTES);
    assert_eq!(p.limits.max_headers, raw::DEFAULT_MAX_HEADERS);
    assert_eq!(p.limits.max_body_bytes, raw::DEFAULT_MAX_BODY_BYTES);
    assert_eq!(
        p.limits.idle_timeout,
        Duration::from_millis(raw::DEFAULT_IDLE_TIMEOUT_MS)
    );
    assert!(p.upstreams.is_empty());
    match &p.routes[0].integration {
        Integration::Mock(m) => {
            assert_eq!(m.status, 200);
            assert_eq!(m.head, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn shards_default_to_the_cpu_list_length() {
    let p = plan(&format!("[server]\ncpus = [0, 0, 0]\n{MINIMAL_API}"));
    assert_eq!(p.server.shards, 3);
    assert_eq!(p.server.cpus, [0, 0, 0]);
}

#[test]
fn the_demo_config_compiles() {
    // config/coregate.toml, the file `cargo run` serves.
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/coregate.toml"))
            .unwrap();
    let p = plan(&text);
    assert_eq!(p.upstreams[0].name, "petstore");
}

#[test]
fn load_reports_an_unreadable_file() {
    let e = load(std::path::Path::new("/nonexistent/coregate.toml")).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key, "(file)");
    assert!(
        e[0].message.contains("/nonexistent/coregate.toml"),
        "{}",
        e[0].message
    );
}

// ---- parse errors ----------------------------------------------------------

#[test]
fn every_unknown_key_is_reported() {
    let text = r#"[server]
listn = ["127.0.0.1:8080"]

[[apis]]
name = "a"
colour = "red"

[[apis.routes]]
key = "GET /"
integration = { type = "mock" }
"#;
    let e = parse(text).unwrap_err();
    assert_eq!(e.len(), 2, "{e:#?}");
    // Paths use serde_ignored's dotted form with numeric indices
    // (documented in docs/configuration.md, Parse errors).
    let listn = error_at(&e, "server.listn");
    assert_eq!(listn.line, Some(2));
    assert!(listn.message.contains("unknown key"), "{}", listn.message);
    let colour = error_at(&e, "apis[0].colour");
    assert_eq!(colour.line, Some(6));
    // load_str stops at parse errors too.
    assert_eq!(errors(text).len(), 2);
}

#[test]
fn unknown_keys_in_every_table() {
    let text = r#"
logging = "debug"

[server.limits]
max_bodyy_bytes = 1

[[upstreams]]
name = "u"
targets = [{ address = "127.0.0.1:9000", wieght = 2 }]
pool = { max_idle = 1, size = 2 }
health = { retries = 1 }

[[apis]]
name = "a"

[[apis.routes]]
key = "GET /"
method = "GET"
integration = { type = "mock" }
"#;
    let e = parse(text).unwrap_err();
    let mut keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "apis[0].routes[0].method",
            "logging",
            "server.limits.max_bodyy_bytes",
            "upstreams[0].health.retries",
            "upstreams[0].pool.size",
            "upstreams[0].targets[0].wieght",
        ],
        "{e:#?}"
    );
    assert!(e.iter().all(|e| e.line.is_some()), "{e:#?}");
    assert_eq!(error_at(&e, "logging").line, Some(2));
    assert_eq!(error_at(&e, "apis[0].routes[0].method").line, Some(18));
}

#[test]
fn unknown_key_inside_an_integration_is_a_hard_error() {
    // The integration enum is internally tagged, so serde_ignored cannot see
    // into it; deny_unknown_fields reports the first unknown field instead.
    let e = parse(&with_route(
        "key = \"GET /\"\nintegration = { type = \"mock\", stauts = 201 }",
    ))
    .unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].key, "apis[0].routes[0].integration.stauts");
    assert!(
        e[0].message.ends_with("did you mean `status`?"),
        "{}",
        e[0].message
    );
    assert!(e[0].message.contains("unknown field"), "{}", e[0].message);
    assert_eq!(e[0].line, Some(6));
    let e = parse(&with_route("key = \"GET /\"\nintegration = { type = \"http_proxy\", url = \"http://127.0.0.1:1\", timeout = 5 }"))
        .unwrap_err();
    assert_eq!(e[0].key, "apis[0].routes[0].integration.timeout");
}

#[test]
fn unknown_keys_before_a_hard_error_are_listed_after_it() {
    let text = "[server]\nlistn = []\nshards = \"two\"\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(e[0].line, Some(3));
    assert!(
        e[0].message.contains("must be a whole number"),
        "{}",
        e[0].message
    );
    assert_eq!(e[1].key, "server.listn");
    assert_eq!(e[1].line, Some(2));
}

#[test]
fn type_errors_carry_a_line_number() {
    let e = parse("# comment\n[server]\nbacklog = 1\nshards = \"two\"\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].line, Some(4));
    assert_eq!(
        e[0].message,
        "must be a whole number, 0 or more, not the string \"two\""
    );
    assert!(e[0].to_string().starts_with("line 4: "), "{}", e[0]);

    let e = parse(&format!("{MINIMAL_API}\n[[apis]]\nname = 5\n")).unwrap_err();
    assert_eq!(e[0].line, Some(10), "{e:#?}");

    let e = parse("[server.limits]\nmax_headers = -1\n").unwrap_err();
    assert_eq!(e[0].line, Some(2), "{e:#?}");

    let e = parse(&with_route(
        "key = \"GET /\"\nintegration = { type = \"mock\", status = 70000 }",
    ))
    .unwrap_err();
    assert_eq!(e[0].line, Some(6), "{e:#?}");
}

#[test]
fn missing_fields_and_bad_variants() {
    let e = parse("[[apis]]\nname = \"a\"\n[[apis.routes]]\nintegration = { type = \"mock\" }\n")
        .unwrap_err();
    assert_eq!(e[0].key, "apis.routes.key", "{e:#?}");
    assert!(e[0].message.contains("missing field"), "{}", e[0].message);
    assert!(e[0].line.is_some());

    let e = parse(&with_route(
        "key = \"GET /\"\nintegration = { type = \"lambda\" }",
    ))
    .unwrap_err();
    // Regression: the key used to be the first back-quoted word ("lambda").
    assert_eq!(e[0].key, "apis[0].routes[0].integration.type", "{e:#?}");
    assert!(e[0].message.contains("unknown variant"), "{}", e[0].message);

    let e = parse(&with_route(
        "key = \"GET /\"\nintegration = { type = \"http_proxy\" }",
    ))
    .unwrap_err();
    assert_eq!(e[0].key, "apis.routes.integration.url", "{e:#?}");
}

#[test]
fn toml_syntax_errors() {
    let e = parse("[server]\nshards = 1\nshards = 2\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].line, Some(3));
    let e = parse("[server\n").unwrap_err();
    assert_eq!(e[0].line, Some(1), "{e:#?}");
}

// ---- semantic errors: [server] ---------------------------------------------

#[test]
fn bad_listen_addresses() {
    let e = errors_with("[server]\nlisten = [\"127.0.0.1:8080\", \"localhost:80\", \"127.0.0.1\", \"127.0.0.1:8080\"]");
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(error_at(&e, "server.listen[1]")
        .message
        .contains("\"localhost:80\" is not an IP:port"));
    error_at(&e, "server.listen[2]");
    assert!(error_at(&e, "server.listen[3]")
        .message
        .contains("listed twice"));
    // Compile errors carry the line of the key they name.
    assert!(e.iter().all(|e| e.line == Some(2)), "{e:#?}");

    let e = errors_with("[server]\nlisten = []");
    error_at(&e, "server.listen");
}

#[test]
fn zero_shards() {
    let e = errors_with("[server]\nshards = 0");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].message, "must be at least 1");
    error_at(&e, "server.shards");
}

#[test]
fn cpus_must_match_shards() {
    let e = errors_with("[server]\nshards = 2\ncpus = [0]");
    assert_eq!(e.len(), 1, "{e:#?}");
    let c = error_at(&e, "server.cpus");
    assert!(
        c.message.contains("lists 1 CPU(s) for 2 shard(s)"),
        "{}",
        c.message
    );

    let e = errors_with("[server]\ncpus = [0, 100000]");
    assert!(error_at(&e, "server.cpus[1]")
        .message
        .contains("CPU 100000 is not one this process may run on"));
}

#[test]
fn zero_values_in_server_and_limits() {
    let e = errors_with(
        "[server]\nbacklog = 0\ndrain_timeout_ms = 0\nmax_connections_per_shard = 0\n\
         [server.limits]\nmax_headers = 0\nheader_read_timeout_ms = 0\nbody_read_timeout_ms = 0\n\
         idle_timeout_ms = 0\nwrite_timeout_ms = 0",
    );
    for key in [
        "server.backlog",
        "server.drain_timeout_ms",
        "server.max_connections_per_shard",
        "server.limits.max_headers",
        "server.limits.header_read_timeout_ms",
        "server.limits.body_read_timeout_ms",
        "server.limits.idle_timeout_ms",
        "server.limits.write_timeout_ms",
    ] {
        error_at(&e, key);
    }
    assert_eq!(e.len(), 8, "{e:#?}");
    assert_eq!(
        error_at(&e, "server.limits.idle_timeout_ms").message,
        "must be at least 1 (milliseconds)"
    );
}

#[test]
fn limit_ranges() {
    let e = errors_with("[server.limits]\nmax_request_line_bytes = 9000\nmax_header_bytes = 8192");
    assert!(error_at(&e, "server.limits.max_request_line_bytes")
        .message
        .contains("larger than max_header_bytes"));
    let e = errors_with("[server.limits]\nmax_header_bytes = 2000000");
    error_at(&e, "server.limits.max_header_bytes");
    let e = errors_with("[server.limits]\nmax_headers = 513");
    assert_eq!(
        error_at(&e, "server.limits.max_headers").message,
        "must be at most 512"
    );
    // The largest allowed values are fine.
    plan(&format!(
        "[server.limits]\nmax_headers = 512\nmax_header_bytes = 1048576\nmax_request_line_bytes = 1048576\n{MINIMAL_API}"
    ));
}

// ---- semantic errors: [[upstreams]] ----------------------------------------

const UPSTREAM_OK: &str =
    "[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1:9000\" }]\n";

#[test]
fn unknown_balance() {
    let e = errors_with(&format!("{UPSTREAM_OK}balance = \"random\""));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(error_at(&e, "upstreams[0].balance")
        .message
        .contains("\"random\""));
    // The three known policies.
    for (b, want) in [
        ("round_robin", Balance::RoundRobin),
        ("weighted", Balance::Weighted),
        ("least_outstanding", Balance::LeastOutstanding),
    ] {
        let p = plan(&format!("{UPSTREAM_OK}balance = \"{b}\"\n{MINIMAL_API}"));
        assert_eq!(p.upstreams[0].balance, want);
    }
}

#[test]
fn zero_timeouts_in_upstreams() {
    let e = errors_with(&format!(
        "{UPSTREAM_OK}timeout_ms = 0\nconnect_timeout_ms = 0\npool = {{ idle_timeout_ms = 0 }}\nhealth = {{ cooldown_ms = 0 }}"
    ));
    for key in [
        "upstreams[0].timeout_ms",
        "upstreams[0].connect_timeout_ms",
        "upstreams[0].pool.idle_timeout_ms",
        "upstreams[0].health.cooldown_ms",
    ] {
        assert_eq!(
            error_at(&e, key).message,
            "must be at least 1 (milliseconds)"
        );
    }
    assert_eq!(e.len(), 4, "{e:#?}");
    // 0 is fine where it means "off".
    let p = plan(&format!(
        "{UPSTREAM_OK}pool = {{ max_idle = 0 }}\nhealth = {{ max_failures = 0 }}\n{MINIMAL_API}"
    ));
    assert_eq!(
        (
            p.upstreams[0].pool_max_idle,
            p.upstreams[0].health_max_failures
        ),
        (0, 0)
    );
}

#[test]
fn empty_targets_and_bad_targets() {
    let e = errors_with("[[upstreams]]\nname = \"u\"\ntargets = []");
    assert_eq!(e.len(), 1, "{e:#?}");
    error_at(&e, "upstreams[0].targets");

    let e = errors_with(
        "[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1\" }, { address = \"127.0.0.1:1\", weight = 0 }, { address = \"127.0.0.1:2\", weight = 1001 }]",
    );
    error_at(&e, "upstreams[0].targets[0].address");
    error_at(&e, "upstreams[0].targets[1].weight");
    error_at(&e, "upstreams[0].targets[2].weight");
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[test]
fn bad_upstream_names_and_hosts() {
    let e = errors_with(
        "[[upstreams]]\nname = \"a b\"\ntargets = [{ address = \"127.0.0.1:1\" }]\nhost = \"x y\"",
    );
    error_at(&e, "upstreams[0].name");
    error_at(&e, "upstreams[0].host");
    let e = errors_with(&format!("{UPSTREAM_OK}{UPSTREAM_OK}"));
    assert!(error_at(&e, "upstreams[1].name")
        .message
        .contains("defined twice"));
}

// ---- semantic errors: routes and integrations ------------------------------

#[test]
fn upstream_named_in_url_resolves_to_the_declared_one() {
    let p = plan(&format!(
        "{UPSTREAM_OK}[[upstreams]]\nname = \"petstore\"\ntargets = [{{ address = \"127.0.0.1:9001\" }}]\n{}",
        with_route("key = \"GET /pets/{id}\"\nintegration = { type = \"http_proxy\", url = \"http://petstore/pets/{id}\" }")
    ));
    assert_eq!(p.upstreams.len(), 2, "no implicit upstream was added");
    match &p.routes[0].integration {
        Integration::Proxy(pp) => {
            assert_eq!(pp.upstream, 1);
            assert_eq!(p.upstreams[pp.upstream].name, "petstore");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn url_must_be_http_or_https() {
    for (url, says) in [
        ("ftp://127.0.0.1/x", "must start with http:// or https://"),
        ("127.0.0.1:9000/x", "must start with http://"),
        ("HTTP://127.0.0.1:9000/x", "must start with http://"),
    ] {
        let e = errors(&with_route(&format!(
            "key = \"GET /x\"\nintegration = {{ type = \"http_proxy\", url = \"{url}\" }}"
        )));
        assert_eq!(e.len(), 1, "{e:#?}");
        let u = error_at(&e, "apis[0].routes[0].integration.url");
        assert!(u.message.contains(says), "{url}: {}", u.message);
    }
    let e = errors(&with_route(
        "key = \"GET /x\"\nintegration = { type = \"http_proxy\", url = \"http:///x\" }",
    ));
    assert!(error_at(&e, "apis[0].routes[0].integration.url")
        .message
        .contains("has no host"));
}

#[test]
fn url_params_must_be_route_params() {
    let e = errors(&with_route(
        "key = \"GET /pets/{id}\"\nintegration = { type = \"http_proxy\", url = \"http://127.0.0.1:9000/pets/{name}\" }",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    let u = error_at(&e, "apis[0].routes[0].integration.url");
    assert!(
        u.message
            .contains("{name} is not a parameter of the route key (it has: id)"),
        "{}",
        u.message
    );

    let e = errors(&with_route(
        "key = \"$default\"\nintegration = { type = \"http_proxy\", url = \"http://127.0.0.1:9000/{proxy}\" }",
    ));
    assert!(error_at(&e, "apis[0].routes[0].integration.url")
        .message
        .contains("(it has: none)"));

    for (url, says) in [
        ("http://127.0.0.1:9000/a/{id", "unclosed '{'"),
        ("http://127.0.0.1:9000/a/id}", "unmatched '}'"),
        ("http://127.0.0.1:9000/a b/{id}", "not allowed in a URL"),
        (
            "http://127.0.0.1:9000/a/{id}?x=#y",
            "the query has characters",
        ),
    ] {
        let e = errors(&with_route(&format!(
            "key = \"GET /a/{{id}}\"\nintegration = {{ type = \"http_proxy\", url = \"{url}\" }}"
        )));
        let u = error_at(&e, "apis[0].routes[0].integration.url");
        assert!(u.message.contains(says), "{url}: {}", u.message);
    }
}

#[test]
fn url_templates() {
    let p = plan(&with_route(
        "key = \"GET /a/{id}/{rest+}\"\nintegration = { type = \"http_proxy\", url = \"http://[::1]/pre{id}.json/{rest+}?\" }",
    ));
    match &p.routes[0].integration {
        Integration::Proxy(pp) => {
            assert_eq!(
                pp.path.as_deref(),
                Some(
                    &[
                        PathPart::Literal("/pre".into()),
                        PathPart::Param("id".into()),
                        PathPart::Literal(".json/".into()),
                        PathPart::Param("rest".into()),
                    ][..]
                )
            );
            assert_eq!(pp.query, None, "an empty URL query counts as none");
        }
        other => panic!("{other:?}"),
    }
    // [::1] without a port gets port 80.
    assert_eq!(p.upstreams[0].targets[0].addr, "[::1]:80".parse().unwrap());
    // Implicit upstreams are named by host:port, so `http://[::1]` and
    // `http://[::1]:80` share one pool.
    assert_eq!(p.upstreams[0].name, "[::1]:80");
}

#[test]
fn mock_status_must_be_final() {
    for status in [99, 100, 199, 600] {
        let e = errors(&with_route(&format!(
            "key = \"GET /\"\nintegration = {{ type = \"mock\", status = {status} }}"
        )));
        assert_eq!(e.len(), 1, "{e:#?}");
        let s = error_at(&e, "apis[0].routes[0].integration.status");
        assert!(
            s.message
                .contains(&format!("{status} is not a final status")),
            "{}",
            s.message
        );
    }
    for status in [200, 599] {
        plan(&with_route(&format!(
            "key = \"GET /\"\nintegration = {{ type = \"mock\", status = {status} }}"
        )));
    }
}

#[test]
fn mock_headers_the_gateway_sets_are_refused() {
    for name in [
        "content-length",
        "Content-Length",
        "transfer-encoding",
        "Connection",
        "date",
        "X-Request-Id",
    ] {
        let e = errors(&with_route(&format!(
            "key = \"GET /\"\nintegration = {{ type = \"mock\", headers = {{ \"{name}\" = \"5\" }} }}"
        )));
        assert_eq!(e.len(), 1, "{e:#?}");
        let h = error_at(&e, &format!("apis[0].routes[0].integration.headers.{name}"));
        assert!(h.message.contains("set by the gateway"), "{}", h.message);
    }
}

#[test]
fn mock_header_names_values_and_bodies() {
    let e = errors(&with_route(
        "key = \"GET /\"\nintegration = { type = \"mock\", headers = { \"bad name\" = \"1\", \"x-ok\" = \"a\\nb\" } }",
    ));
    assert!(
        error_at(&e, "apis[0].routes[0].integration.headers.bad name")
            .message
            .contains("not a valid header name")
    );
    assert!(error_at(&e, "apis[0].routes[0].integration.headers.x-ok")
        .message
        .contains("control characters"));
    assert_eq!(e.len(), 2, "{e:#?}");

    let e = errors(&with_route(
        "key = \"GET /\"\nintegration = { type = \"mock\", status = 304, body = \"x\" }",
    ));
    assert_eq!(
        error_at(&e, "apis[0].routes[0].integration.body").message,
        "a 304 response has no body"
    );
}

#[test]
fn route_key_and_api_errors_name_their_keys() {
    let e = errors(&with_route(
        "key = \"get /x\"\nintegration = { type = \"mock\" }",
    ));
    assert!(error_at(&e, "apis[0].routes[0].key")
        .message
        .contains("\"get /x\""));

    let e = errors("[[apis]]\nname = \"a\"\nbase_path = \"/v1/{x}\"\nhosts = [\"a.com:80\", \"*.\"]\nroutes = []\n");
    assert!(error_at(&e, "apis[0].base_path")
        .message
        .contains("cannot have parameters"));
    error_at(&e, "apis[0].hosts[0]");
    error_at(&e, "apis[0].hosts[1]");
    error_at(&e, "apis[0].routes");

    let e = errors("[[apis]]\nname = \"\"\nhosts = []\n[[apis.routes]]\nkey = \"GET /\"\nintegration = { type = \"mock\" }\n");
    error_at(&e, "apis[0].name");
    error_at(&e, "apis[0].hosts");

    let e = errors("[server]\nshards = 1\n");
    assert!(error_at(&e, "apis").message.contains("no [[apis]]"));
}

#[test]
fn route_table_errors_are_under_apis() {
    let text = format!(
        "{MINIMAL_API}\n[[apis]]\nname = \"a\"\n[[apis.routes]]\nkey = \"GET /{{id}}\"\nintegration = {{ type = \"mock\" }}\n\
         [[apis.routes]]\nkey = \"GET /{{name}}\"\nintegration = {{ type = \"mock\" }}\n"
    );
    let e = errors(&text);
    // The second api repeats the name and the scope of the first, and its routes conflict.
    assert!(error_at(&e, "apis[1].name")
        .message
        .contains("defined twice"));
    let table: Vec<_> = e.iter().filter(|e| e.key == "apis").collect();
    assert_eq!(table.len(), 2, "{e:#?}");
    assert!(table
        .iter()
        .any(|e| e.message.contains("same hosts and base_path")));
    assert!(table.iter().any(|e| e.message.contains("conflicts with")));
}

#[test]
fn several_errors_are_all_returned() {
    let text = r#"
[server]
listen = ["nowhere"]
shards = 0

[server.limits]
idle_timeout_ms = 0

[[upstreams]]
name = "u"
targets = []
balance = "fastest"

[[apis]]
name = "a"

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://127.0.0.1:9000/pets/{petId}" }

[[apis.routes]]
key = "GET /x"
integration = { type = "mock", status = 99, headers = { "Content-Length" = "1" } }

[[apis.routes]]
key = "GET /y"
integration = { type = "http_proxy", url = "ftp://127.0.0.1:9000" }
"#;
    let e = errors(text);
    let mut keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "apis[0].routes[0].integration.url",
            "apis[0].routes[1].integration.headers.Content-Length",
            "apis[0].routes[1].integration.status",
            "apis[0].routes[2].integration.url",
            "server.limits.idle_timeout_ms",
            "server.listen[0]",
            "server.shards",
            "upstreams[0].balance",
            "upstreams[0].targets",
        ],
        "{e:#?}"
    );
    // Display: line N: KEY: MESSAGE, the line of the key named.
    let shards = error_at(&e, "server.shards");
    assert_eq!(
        shards.to_string(),
        "line 4: server.shards: must be at least 1"
    );
}

#[test]
fn routes_naming_a_broken_upstream_are_not_reported_twice() {
    // Regression: a declared upstream with an error was dropped, and every
    // route naming it then failed a DNS lookup of "NAME:80" as well.
    let e = errors(
        r#"
[[upstreams]]
name = "svc"
targets = []

[[apis]]
name = "a"

[[apis.routes]]
key = "GET /x"
integration = { type = "http_proxy", url = "http://svc/x" }
"#,
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    error_at(&e, "upstreams[0].targets");
}

#[test]
fn zero_shards_with_cpus_is_one_error() {
    // Regression: shards = 0 with cpus also said "lists 2 CPUs for 1 shards".
    let e = errors_with("[server]\nshards = 0\ncpus = [0]");
    assert_eq!(e.len(), 1, "{e:#?}");
    error_at(&e, "server.shards");
}

#[test]
fn cpus_are_checked_against_the_affinity_mask() {
    // Regression: cpus were checked against the count of allowed CPUs, so
    // under `taskset -c 1` the only allowed CPU, 1, was refused.
    let allowed = super::compile::allowed_cpus_for_tests();
    let last = *allowed.last().unwrap();
    let p = plan(&format!(
        "[server]\nshards = 1\ncpus = [{last}]\n{MINIMAL_API}"
    ));
    assert_eq!(p.server.cpus, vec![last]);
    // A CPU outside the mask is named in the error.
    let e = errors_with("[server]\nshards = 1\ncpus = [4096]");
    let c = error_at(&e, "server.cpus[0]");
    assert!(
        c.message.contains("not one this process may run on"),
        "{}",
        c.message
    );
    // By default shards are placed on allowed CPUs only.
    let p = plan(&format!("[server]\nshards = 3\n{MINIMAL_API}"));
    assert!(
        p.server.cpus.iter().all(|c| allowed.contains(c)),
        "{:?}",
        p.server.cpus
    );
}

// ---- authorizers (the kinds have tests of their own) -----------------------

#[test]
fn authorizer_names_must_resolve() {
    let errs = errors(
        "[[apis]]\nname = \"a\"\nauthorizer = \"nope\"\n\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = { type = \"mock\" }\n\n[[apis.routes]]\nkey = \"GET /y\"\nauthorizer = \"other\"\nintegration = { type = \"mock\" }\n",
    );
    let e = error_at(&errs, "apis[0].authorizer");
    assert!(e.message.contains("\"nope\""), "{e:?}");
    let e = error_at(&errs, "apis[0].routes[1].authorizer");
    assert!(e.message.contains("\"other\""), "{e:?}");
}

#[test]
fn authorizer_none_turns_the_api_default_off() {
    // "none" never needs an [[authorizers]] entry.
    let p = plan(&with_route(
        "key = \"GET /x\"\nauthorizer = \"none\"\nintegration = { type = \"mock\" }",
    ));
    assert!(p.routes[0].policies.auth.is_none());
}

#[test]
fn scopes_need_an_authorizer() {
    let errs = errors(&with_route(
        "key = \"GET /x\"\nauthorization_scopes = [\"read\"]\nintegration = { type = \"mock\" }",
    ));
    let e = error_at(&errs, "apis[0].routes[0].authorization_scopes");
    assert!(e.message.contains("need an authorizer"), "{e:?}");
}

#[test]
fn an_authorizer_needs_exactly_one_kind_and_a_unique_name() {
    let errs = errors_with("[[authorizers]]\nname = \"a\"\n\n[[authorizers]]\nname = \"none\"\n");
    assert!(error_at(&errs, "authorizers[0]").message.contains("kind"));
    assert!(error_at(&errs, "authorizers[1].name")
        .message
        .contains("other than"));
}
