//! IP allow and deny lists over real sockets. The only client addresses a
//! test has are 127.0.0.1 and ::1, so each case is a config that includes or
//! excludes them: allow lists with and without 127.0.0.0/8 and ::1, deny
//! lists, deny over allow, route rules narrowing the API's, an IPv6
//! listener. Refusals are 403 `{"message":"Forbidden"}` and never reach the
//! backend. Config errors through `coregate check`.

mod support;

use std::net::{SocketAddr, TcpListener};
use support::*;

/// One API per rule set under its own base path, each with a proxied route
/// (so a refusal can be seen not to reach the backend) and a mock route.
/// `@RULES@` is replaced by the API-level `ip_rules` line.
const API: &str = r#"
[[apis]]
name = "@NAME@"
base_path = "/@NAME@"
@RULES@

[[apis.routes]]
key = "GET /proxied"
integration = { type = "http_proxy", url = "http://@B@/seen" }

[[apis.routes]]
key = "GET /mock"
integration = { type = "mock", body = 'mock ok' }
"#;

fn config(listen: &[&str], apis: &[(&str, &str)], extra: &str, backend: &Backend) -> String {
    let listen = listen
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!("[server]\nlisten = [{listen}]\nshards = 2\n");
    for (name, rules) in apis {
        text.push_str(
            &API.replace("@NAME@", name)
                .replace("@RULES@", rules)
                .replace("@B@", &backend.addr_str()),
        );
    }
    text.push_str(&extra.replace("@B@", &backend.addr_str()));
    text
}

fn echo_backend() -> Backend {
    Backend::start(Reply::Echo)
}

fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).get(path)
}

fn assert_forbidden(r: &Response, what: &str) {
    let msg = assert_json_error(r, 403);
    assert_eq!(msg, "Forbidden", "{what}: {r:?}");
}

/// True when this machine can listen on ::1.
/// `::1` can be bound, turning IPv6 on for the loopback interface first
/// if it is off (the tests run as root on their CI machine).
fn have_ipv6_loopback() -> bool {
    if TcpListener::bind("[::1]:0").is_ok() {
        return true;
    }
    let _ = std::process::Command::new("sysctl")
        .args(["-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"])
        .status();
    wait_until(std::time::Duration::from_secs(3), || {
        TcpListener::bind("[::1]:0").is_ok()
    })
}

#[test]
fn allow_lists_over_ipv4() {
    let b = echo_backend();
    let apis = [
        ("loopback", r#"ip_rules = { allow = ["127.0.0.0/8"] }"#),
        (
            "exact",
            r#"ip_rules = { allow = ["10.0.0.0/8", "127.0.0.1"] }"#,
        ),
        (
            "mapped",
            r#"ip_rules = { allow = ["::ffff:127.0.0.0/104"] }"#,
        ),
        (
            "other",
            r#"ip_rules = { allow = ["10.0.0.0/8", "192.168.0.0/16"] }"#,
        ),
        ("v6only", r#"ip_rules = { allow = ["::1/128"] }"#),
        ("neighbour", r#"ip_rules = { allow = ["127.0.0.2/32"] }"#),
        ("none", ""),
    ];
    let gw = Gateway::start(&config(&["127.0.0.1:0"], &apis, "", &b));
    for name in ["loopback", "exact", "mapped", "none"] {
        let r = get(gw.addr(), &format!("/{name}/proxied"));
        assert_eq!(r.status, 200, "{name}: {r:?}");
        assert_eq!(r.echo().target, "/seen");
        let r = get(gw.addr(), &format!("/{name}/mock"));
        assert_eq!(r.text(), "mock ok", "{name}");
    }
    let before = b.heads();
    for name in ["other", "v6only", "neighbour"] {
        for route in ["proxied", "mock"] {
            let r = get(gw.addr(), &format!("/{name}/{route}"));
            assert_forbidden(&r, name);
        }
    }
    assert_eq!(b.heads(), before, "a refused request reached the backend");
}

#[test]
fn deny_lists_and_deny_over_allow() {
    let b = echo_backend();
    let apis = [
        ("denyall", r#"ip_rules = { deny = ["0.0.0.0/0"] }"#),
        ("denyhost", r#"ip_rules = { deny = ["127.0.0.1"] }"#),
        (
            "denyother",
            r#"ip_rules = { deny = ["10.0.0.0/8", "::1"] }"#,
        ),
        (
            "both",
            r#"ip_rules = { allow = ["127.0.0.0/8"], deny = ["127.0.0.1/32"] }"#,
        ),
        (
            "bothother",
            r#"ip_rules = { allow = ["127.0.0.0/8"], deny = ["127.0.0.2/32"] }"#,
        ),
    ];
    let gw = Gateway::start(&config(&["127.0.0.1:0"], &apis, "", &b));
    for name in ["denyall", "denyhost", "both"] {
        assert_forbidden(&get(gw.addr(), &format!("/{name}/proxied")), name);
    }
    assert_eq!(b.heads(), 0);
    for name in ["denyother", "bothother"] {
        let r = get(gw.addr(), &format!("/{name}/proxied"));
        assert_eq!(r.status, 200, "{name}: {r:?}");
    }
}

#[test]
fn forbidden_keeps_the_connection_alive() {
    let b = echo_backend();
    let apis = [
        ("no", r#"ip_rules = { deny = ["127.0.0.0/8"] }"#),
        ("yes", ""),
    ];
    let gw = Gateway::start(&config(&["127.0.0.1:0"], &apis, "", &b));
    let mut c = gw.client();
    let r = c.get("/no/mock");
    assert_forbidden(&r, "deny");
    assert!(!r.says_close(), "{r:?}");
    assert_eq!(c.get("/yes/mock").text(), "mock ok");
    // A refused request with a body already sent: answered, and the
    // connection stays in step.
    c.send(b"GET /no/mock HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabcGET /yes/mock HTTP/1.1\r\nHost: test\r\n\r\n");
    let r = c.read_response();
    assert_forbidden(&r, "deny, with a body");
    assert!(!r.says_close(), "{r:?}");
    assert_eq!(c.read_response().text(), "mock ok");
}

/// Route-level rules combine with the API's: the request must pass both.
const ROUTES: &str = r#"
[[apis]]
name = "layered"
base_path = "/layered"
ip_rules = { allow = ["127.0.0.0/8"] }

[[apis.routes]]
key = "GET /open"
integration = { type = "mock", body = 'open' }

[[apis.routes]]
key = "GET /route-deny"
integration = { type = "http_proxy", url = "http://@B@/x" }
ip_rules = { deny = ["127.0.0.1"] }

[[apis.routes]]
key = "GET /route-allow-other"
integration = { type = "mock", body = 'other' }
ip_rules = { allow = ["10.0.0.0/8"] }

[[apis.routes]]
key = "GET /route-allow-same"
integration = { type = "mock", body = 'same' }
ip_rules = { allow = ["127.0.0.1/32", "::1"] }

[[apis]]
name = "apideny"
base_path = "/apideny"
ip_rules = { deny = ["127.0.0.0/8"] }

[[apis.routes]]
key = "GET /route-allow"
integration = { type = "mock", body = 'never' }
ip_rules = { allow = ["127.0.0.0/8"] }

[[apis]]
name = "routeonly"
base_path = "/routeonly"

[[apis.routes]]
key = "GET /free"
integration = { type = "mock", body = 'free' }

[[apis.routes]]
key = "GET /locked"
integration = { type = "mock", body = 'locked' }
ip_rules = { allow = ["192.0.2.0/24"] }
"#;

#[test]
fn route_rules_combine_with_the_apis() {
    let b = echo_backend();
    let gw = Gateway::start(&config(&["127.0.0.1:0"], &[], ROUTES, &b));
    let ok = |path: &str, body: &str| {
        let r = get(gw.addr(), path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.text(), body, "{path}");
    };
    ok("/layered/open", "open");
    ok("/layered/route-allow-same", "same");
    ok("/routeonly/free", "free");
    // The route's deny adds to the API's allow.
    assert_forbidden(&get(gw.addr(), "/layered/route-deny"), "route deny");
    // A route's allow list narrows the API's...
    assert_forbidden(&get(gw.addr(), "/layered/route-allow-other"), "narrowed");
    // ...and cannot reopen what the API denies.
    assert_forbidden(&get(gw.addr(), "/apideny/route-allow"), "api deny wins");
    // Rules on one route leave its siblings alone.
    assert_forbidden(&get(gw.addr(), "/routeonly/locked"), "route only");
    assert_eq!(b.heads(), 0);
}

#[test]
fn ipv6_listener_sees_ipv6_clients() {
    // Not skipped: a machine without ::1 fails here, saying why.
    assert!(
        have_ipv6_loopback(),
        "this test needs an IPv6 loopback (::1), and turning it on with \
         `sysctl net.ipv6.conf.lo.disable_ipv6=0` did not give one"
    );
    let b = echo_backend();
    let apis = [
        ("v6", r#"ip_rules = { allow = ["::1/128"] }"#),
        ("v6net", r#"ip_rules = { allow = ["::/0"] }"#),
        ("v4", r#"ip_rules = { allow = ["127.0.0.0/8"] }"#),
        ("v4all", r#"ip_rules = { allow = ["0.0.0.0/0"] }"#),
        (
            "deny6",
            r#"ip_rules = { allow = ["127.0.0.0/8", "::/0"], deny = ["::1"] }"#,
        ),
        ("docnet", r#"ip_rules = { allow = ["2001:db8::/32"] }"#),
    ];
    let gw = Gateway::start(&config(&["127.0.0.1:0", "[::1]:0"], &apis, "", &b));
    let v4 = gw.addrs()[0];
    let v6 = gw.addrs()[1];
    assert!(v4.is_ipv4() && v6.is_ipv6(), "{:?}", gw.addrs());
    let status = |addr: SocketAddr, name: &str| get(addr, &format!("/{name}/mock")).status;
    // (api, from 127.0.0.1, from ::1)
    for (name, s4, s6) in [
        ("v6", 403, 200),
        ("v6net", 403, 200),
        ("v4", 200, 403),
        ("v4all", 200, 403),
        ("deny6", 200, 403),
        ("docnet", 403, 403),
    ] {
        assert_eq!(status(v4, name), s4, "{name} over IPv4");
        assert_eq!(status(v6, name), s6, "{name} over IPv6");
    }
    assert_forbidden(&get(v6, "/v4/proxied"), "v4 rules, v6 client");
    assert_eq!(b.heads(), 0);
}

// === config errors ===

fn check(text: &str) -> (Option<i32>, Vec<String>) {
    let path = write_config(text);
    let out = run_coregate(&["check", "--config", path.to_str().expect("utf-8 temp path")]);
    let _ = std::fs::remove_file(&path);
    let errors = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(without_line)
        .collect();
    (out.status.code(), errors)
}

/// `error: line N: KEY: MESSAGE` as `error: KEY: MESSAGE`: these tests check
/// keys and messages (tests/config_check.rs checks the lines).
fn without_line(l: &str) -> String {
    match l
        .strip_prefix("error: line ")
        .and_then(|r| r.split_once(": "))
    {
        Some((n, rest)) if n.bytes().all(|b| b.is_ascii_digit()) => format!("error: {rest}"),
        _ => l.to_string(),
    }
}

#[test]
fn check_names_each_bad_cidr() {
    let (code, errors) = check(
        r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "a"
ip_rules = { allow = ["10.0.0.1/8", "127.0.0.0/8"], deny = ["::1/129"] }

[[apis.routes]]
key = "GET /x"
integration = { type = "mock" }
ip_rules = { allow = [] }

[[apis.routes]]
key = "GET /y"
integration = { type = "mock" }
ip_rules = { deny = ["fe80::1%lo"] }

[[apis.routes]]
key = "GET /z"
integration = { type = "mock" }
ip_rules = {}
"#,
    );
    assert_eq!(code, Some(1), "{errors:?}");
    let want = [
        "error: apis[0].ip_rules.allow[0]: \"10.0.0.1/8\" has host bits set past the /8 prefix: write 10.0.0.0/8",
        "error: apis[0].ip_rules.deny[0]: \"::1/129\" has an invalid prefix length",
        "error: apis[0].routes[0].ip_rules.allow: an empty allow list lets no client in",
        "error: apis[0].routes[1].ip_rules.deny[0]: \"fe80::1%lo\" is not a valid IPv6 address",
        "error: apis[0].routes[2].ip_rules: names neither allow nor deny",
    ];
    for w in want {
        assert!(
            errors.iter().any(|e| e.starts_with(w)),
            "no error {w:?} in {errors:#?}"
        );
    }
    // The API's errors are reported once, not once per route.
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
}

#[test]
fn check_reports_unknown_ip_rules_keys() {
    let (code, errors) = check(
        r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "a"

[[apis.routes]]
key = "GET /x"
integration = { type = "mock" }
ip_rules = { allowed = ["127.0.0.1"] }
"#,
    );
    assert_eq!(code, Some(1), "{errors:?}");
    // Regression: serde_ignored's `?` segment for an Option field used to
    // show (`...ip_rules.?.allowed`).
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains(": apis[0].routes[0].ip_rules.allowed: unknown key"),
        "{errors:#?}"
    );
}

#[test]
fn api_rules_also_refuse_requests_no_route_takes() {
    // Regression: a 404, a 405 or a CORS preflight to a path without a route
    // skipped the API's ip_rules, so a refused client could map which paths
    // exist. They now get 403 like routed requests.
    let backend = echo_backend();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\n[[apis]]\nname = \"a\"\nip_rules = {{ deny = [\"127.0.0.0/8\"] }}\ncors = {{ allow_origins = [\"https://app.example.com\"] }}\n[[apis.routes]]\nkey = \"GET /known\"\nintegration = {{ type = \"http_proxy\", url = \"http://{}/x\" }}\n",
        backend.addr_str()
    );
    let gw = Gateway::start(&text);
    assert_forbidden(&get(gw.addr(), "/known"), "routed");
    assert_forbidden(&get(gw.addr(), "/unknown"), "404 path");
    let r = Client::connect(gw.addr())
        .request(b"POST /known HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_forbidden(&r, "405 path");
    let r = Client::connect(gw.addr()).request(
        b"OPTIONS /known HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: GET\r\n\r\n",
    );
    assert_forbidden(&r, "preflight");
    assert_eq!(backend.hits(), 0);
}

#[test]
fn a_declared_body_over_the_limit_does_not_reveal_a_route_to_a_refused_client() {
    // Regression: a Content-Length over max_body_bytes was answered 413
    // before the route's phases, IP rules included, while a path without a
    // route got the API's 403; a refused client could tell the paths that
    // exist from those that do not by declaring a large body.
    let backend = echo_backend();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\n[server.limits]\nmax_body_bytes = 100\n[[apis]]\nname = \"a\"\nip_rules = {{ deny = [\"127.0.0.0/8\"] }}\n[[apis.routes]]\nkey = \"POST /known\"\nintegration = {{ type = \"http_proxy\", url = \"http://{}/x\" }}\n",
        backend.addr_str()
    );
    let gw = Gateway::start(&text);
    for path in ["/known", "/unknown"] {
        let r = Client::connect(gw.addr()).request(
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n").as_bytes(),
        );
        assert_forbidden(&r, path);
        assert!(r.says_close(), "the body was not read: {r:?}");
    }
    assert_eq!(backend.hits(), 0);
    // An allowed client still gets the 413 before its body is read.
    let text = text.replace("deny = [\"127.0.0.0/8\"]", "allow = [\"127.0.0.0/8\"]");
    let gw = Gateway::start(&text);
    let r = Client::connect(gw.addr())
        .request(b"POST /known HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
    assert_eq!(assert_json_error(&r, 413), "Request Entity Too Large");
    assert_eq!(backend.hits(), 0);
}
