//! Parameter mapping (docs/mapping.md) over real sockets: an echo backend
//! shows what the gateway sent after each request operation (headers,
//! query string, path, from every source, combined), fixed backends return
//! chosen statuses and headers for the response operations, and
//! `coregate check` refuses bad mappings naming their keys.

mod support;

use support::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "shop"

[apis.mapping.request]
"append:header.x-api-level" = "from the api"
"append:header.x-overridden" = "api"

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://@ECHO@/animals/{id}" }
[apis.routes.mapping.request]
"append:header.x-pet" = "$request.path.id"
"overwrite:header.x-version" = "v2"
"remove:header.x-secret" = "''"
"append:header.x-who" = "${request.header.x-name} from ${context.identity.sourceIp}"
"append:header.x-rid" = "$context.requestId"
"append:header.x-route" = "$context.routeKey"
"append:header.x-stage" = "${context.stage}:${stageVariables.color}"
"append:header.x-unset-stage-variable" = "$stageVariables.color"
"append:header.x-tags" = "$request.header.x-tag"
"append:header.x-overridden" = "route"
"overwrite:querystring.limit" = "$request.querystring.max"
"append:querystring.from" = "${request.header.x-name}"
"remove:querystring.debug" = ""
"append:querystring.q" = "$request.querystring.q"

[[apis.routes]]
key = "GET /files/{proxy+}"
integration = { type = "http_proxy", url = "http://@ECHO@" }
[apis.routes.mapping.request]
"overwrite:path" = "/storage/${request.header.x-bucket}/${request.path.proxy}"

[[apis.routes]]
key = "POST /orders"
integration = { type = "http_proxy", url = "http://@ECHO@" }
[apis.routes.mapping.request]
"append:header.x-customer" = "$request.body.customer.id"
"append:header.x-first-item" = "$request.body.items[0].sku"
"append:header.x-total" = "$request.body.total"
"overwrite:querystring.currency" = "$request.body.currency"

[[apis.routes]]
key = "GET /status/{code}"
integration = { type = "http_proxy", url = "http://@FIXED@" }
[apis.routes.mapping.response.404]
"overwrite:statuscode" = "200"
"append:header.x-was" = "${context.integrationStatus} for ${context.requestId}"
"overwrite:header.x-upstream" = "mapped ${response.header.x-upstream}"
"remove:header.x-secret" = ""
[apis.routes.mapping.response.500]
"append:header.x-error" = "$response.header.x-upstream"
"overwrite:header.date" = "Sun, 06 Nov 1994 08:49:37 GMT"

[[apis.routes]]
key = "GET /cached/{code}"
integration = { type = "http_proxy", url = "http://@FIXED@" }
cache = { ttl_seconds = 300 }
[apis.routes.mapping.response.404]
"overwrite:statuscode" = "200"
"overwrite:header.x-upstream" = "cached ${response.header.x-upstream}"
"remove:header.x-secret" = ""

[[apis.routes]]
key = "GET /nocontent"
integration = { type = "http_proxy", url = "http://@EMPTY@" }
[apis.routes.mapping.response.204]
"overwrite:statuscode" = "200"
"append:header.x-mapped" = "yes"

[[apis.routes]]
key = "GET /plain"
integration = { type = "http_proxy", url = "http://@ECHO@" }
[apis.routes.mapping.request]
"append:header.x-overridden" = "plain route"
"#;

struct Setup {
    echo: Backend,
    fixed: Backend,
    gw: Gateway,
    _empty: Backend,
}

fn setup(fixed_status: u16) -> Setup {
    let echo = Backend::start(Reply::Echo);
    let fixed = Backend::start(Reply::fixed(
        fixed_status,
        &[("x-upstream", "up-value"), ("x-secret", "s3cret")],
        "{\"message\":\"from the backend\"}",
    ));
    let empty = Backend::start(Reply::fixed(204, &[("x-upstream", "empty")], ""));
    let gw = Gateway::start(&fill(
        CONFIG,
        &[
            ("ECHO", echo.addr_str()),
            ("FIXED", fixed.addr_str()),
            ("EMPTY", empty.addr_str()),
        ],
    ));
    Setup {
        echo,
        fixed,
        gw,
        _empty: empty,
    }
}

#[test]
fn request_headers_and_query_are_mapped_from_every_source() {
    let s = setup(200);
    let mut c = s.gw.client();
    let r = c.request(
        b"GET /pets/42?max=10&debug=1&limit=99&q=a%20b&debug=2 HTTP/1.1\r\n\
          Host: test\r\n\
          X-Name: Ann\r\n\
          X-Version: v1\r\n\
          X-Secret: hunter2\r\n\
          X_Version: v0\r\n\
          x_secret: hunter3\r\n\
          X_Secret_: kept\r\n\
          X-Tag: red\r\n\
          x-tag: blue\r\n\
          X-Request-Id: req-map-1\r\n\r\n",
    );
    let e = r.echo();
    // The integration URL's path template, then the query operations.
    assert_eq!(
        e.target, "/animals/42?max=10&q=a%20b&limit=10&from=Ann&q=a%20b",
        "{e:?}"
    );
    assert_eq!(e.header("x-pet"), Some("42"));
    assert_eq!(e.headers_named("x-version"), vec!["v2"]);
    assert!(!e.has("x-secret"), "{e:?}");
    // Their underscore spellings go too: a CGI-style backend reads
    // `X_Version` as `HTTP_X_VERSION`, the same as `X-Version`.
    assert!(!e.has("x_version") && !e.has("x_secret"), "{e:?}");
    assert_eq!(e.header("x_secret_"), Some("kept"), "{e:?}");
    assert_eq!(e.header("x-who"), Some("Ann from 127.0.0.1"));
    assert_eq!(e.header("x-rid"), Some("req-map-1"));
    assert_eq!(e.header("x-route"), Some("GET /pets/{id}"));
    // No stages here: $default, and every stage variable is empty; a
    // value that is empty as a whole is not sent.
    assert_eq!(e.header("x-stage"), Some("$default:"));
    assert!(!e.has("x-unset-stage-variable"));
    // Several values of one header, joined with commas.
    assert_eq!(e.header("x-tags"), Some("red,blue"));
    // The route's entry wins over the API's; the API's others apply.
    assert_eq!(e.headers_named("x-overridden"), vec!["route"]);
    assert_eq!(e.header("x-api-level"), Some("from the api"));
    // The client's own headers are still there.
    assert_eq!(e.headers_named("x-tag"), vec!["red", "blue"]);

    // Without the sources: the operations that read them do nothing, and
    // an overwritten parameter is gone rather than left as sent.
    let e = c
        .request(b"GET /pets/7?limit=5 HTTP/1.1\r\nHost: test\r\n\r\n")
        .echo();
    assert_eq!(e.target, "/animals/7", "{e:?}");
    // Spaces at either end are not part of a header value (RFC 9110).
    assert_eq!(e.header("x-who"), Some("from 127.0.0.1"));
    assert!(!e.has("x-tags"));
}

#[test]
fn an_overwritten_or_removed_parameter_cannot_pass_percent_encoded() {
    // A backend decodes parameter names (`%6cimit` is `limit` to it): the
    // client's own `limit` and `debug` must not reach it that way beside
    // or instead of the mapping's.
    let s = setup(200);
    let mut c = s.gw.client();
    let e = c
        .request(
            b"GET /pets/7?%6cimit=5&max=10&%64%65bug=1&li%6Dit=6 HTTP/1.1\r\nHost: test\r\n\r\n",
        )
        .echo();
    assert_eq!(e.target, "/animals/7?max=10&limit=10", "{e:?}");
    // A name that only looks like one after decoding stays: `%` without
    // two hex digits is not an escape.
    let e = c
        .request(b"GET /pets/7?%6limit=5 HTTP/1.1\r\nHost: test\r\n\r\n")
        .echo();
    assert_eq!(e.target, "/animals/7?%6limit=5", "{e:?}");
}

#[test]
fn the_path_is_overwritten_and_escaped() {
    let s = setup(200);
    let mut c = s.gw.client();
    let e = c
        .request(b"GET /files/a/b%20c.txt HTTP/1.1\r\nHost: test\r\nX-Bucket: my bucket\r\n\r\n")
        .echo();
    assert_eq!(e.target, "/storage/my%20bucket/a/b%20c.txt");
    // A value that would make a dot segment is refused, not sent.
    let r = c.request(b"GET /files/x HTTP/1.1\r\nHost: test\r\nX-Bucket: ..\r\n\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json_message().as_deref(), Some("Bad Request"));
    assert_eq!(s.echo.hits(), 1);
    // So is one behind a separator or a parameter some backends read as
    // such: an encoded `/` (kept as sent), a `\` (sent as `%5C`), `;...`.
    for bucket in ["..%2F..", "a%2F..", "..\\x", "..;x"] {
        let r = c.request(
            format!("GET /files/x HTTP/1.1\r\nHost: test\r\nX-Bucket: {bucket}\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 400, "{bucket}: {r:?}");
    }
    assert_eq!(s.echo.hits(), 1);
    let e = c
        .request(b"GET /files/x HTTP/1.1\r\nHost: test\r\nX-Bucket: a%2Fb;v=1\r\n\r\n")
        .echo();
    assert_eq!(e.target, "/storage/a%2Fb;v=1/x");
}

#[test]
fn body_values_are_read_and_the_body_still_forwarded() {
    let s = setup(200);
    let mut c = s.gw.client();
    let body = r#"{"customer":{"id":"c-17"},"items":[{"sku":"A1"},{"sku":"B2"}],"total":12.5,"currency":"EUR"}"#;
    let r = c.request(
        format!(
            "POST /orders?currency=USD HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let e = r.echo();
    assert_eq!(e.header("x-customer"), Some("c-17"));
    assert_eq!(e.header("x-first-item"), Some("A1"));
    assert_eq!(e.header("x-total"), Some("12.5"));
    assert_eq!(e.target, "/orders?currency=EUR");
    assert_eq!(e.body, body.as_bytes());

    // Chunked: the same values, the body re-framed to the backend.
    let (a, b) = body.split_at(30);
    let r = c.request(
        format!(
            "POST /orders HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .as_bytes(),
    );
    let e = r.echo();
    assert_eq!(e.header("x-customer"), Some("c-17"));
    assert_eq!(e.body, body.as_bytes());

    // Not JSON: the values are empty, the body goes through unchanged.
    let e = c
        .request(b"POST /orders HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
        .echo();
    assert!(!e.has("x-customer"));
    assert_eq!(e.body, b"hello");

    // Over 100 KB: not buffered for mapping, streamed as usual.
    let big = format!(
        "{{\"customer\":{{\"id\":\"big\"}},\"pad\":\"{}\"}}",
        "x".repeat(150 * 1024)
    );
    let e = c
        .request(
            format!(
                "POST /orders HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{big}",
                big.len()
            )
            .as_bytes(),
        )
        .echo();
    assert!(!e.has("x-customer"));
    assert_eq!(e.body.len(), big.len());

    // A body value that cannot be a header value: refused, never sent.
    let bad = r#"{"customer":{"id":"a\r\nx-injected: 1"}}"#;
    let hits = s.echo.hits();
    let r = c.request(
        format!(
            "POST /orders HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{bad}",
            bad.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(s.echo.hits(), hits);
}

#[test]
fn response_status_and_headers_are_mapped_by_integration_status() {
    let s = setup(404);
    let mut c = s.gw.client();
    let r = c.request(b"GET /status/404 HTTP/1.1\r\nHost: test\r\nX-Request-Id: rm-1\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.reason, "OK");
    assert_eq!(r.header("x-was"), Some("404 for rm-1"));
    assert_eq!(r.headers_named("x-upstream"), vec!["mapped up-value"]);
    assert!(r.header("x-secret").is_none(), "{r:?}");
    assert_eq!(r.text(), "{\"message\":\"from the backend\"}");
    assert_eq!(s.fixed.hits(), 1);
    // The backend sent no Date: the gateway adds one (RFC 9110 §6.6.1).
    assert_eq!(r.headers_named("date").len(), 1, "{r:?}");

    // A status with no mapping passes as it came.
    let s = setup(503);
    let mut c = s.gw.client();
    let r = c.get("/status/503");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-secret"), Some("s3cret"));
    assert!(r.header("x-error").is_none());

    let s = setup(500);
    let mut c = s.gw.client();
    let r = c.get("/status/500");
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-error"), Some("up-value"));
    // A Date the mapping writes is the one the client gets.
    assert_eq!(
        r.headers_named("date"),
        vec!["Sun, 06 Nov 1994 08:49:37 GMT"],
        "{r:?}"
    );
}

#[test]
fn the_cache_stores_and_serves_the_mapped_response() {
    let s = setup(404);
    let mut c = s.gw.client();
    for expect_cache in ["Miss", "Hit", "Hit"] {
        let r = c.get("/cached/1");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-cache"), Some(expect_cache), "{r:?}");
        assert_eq!(r.headers_named("x-upstream"), vec!["cached up-value"]);
        assert_eq!(r.headers_named("date").len(), 1, "{r:?}");
        assert!(r.header("x-secret").is_none(), "{r:?}");
        assert_eq!(r.text(), "{\"message\":\"from the backend\"}");
    }
    assert_eq!(s.fixed.hits(), 1);
}

#[test]
fn a_204_mapped_to_200_gets_an_empty_body() {
    let s = setup(200);
    let mut c = s.gw.client();
    let r = c.get("/nocontent");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-length"), Some("0"));
    assert_eq!(r.header("x-mapped"), Some("yes"));
    // The connection is still usable: the framing was right.
    let e = c.get("/plain").echo();
    assert_eq!(e.headers_named("x-overridden"), vec!["plain route"]);
    assert_eq!(e.header("x-api-level"), Some("from the api"));
}

#[test]
fn response_mapping_through_curl() {
    let s = setup(404);
    let out = std::process::Command::new("curl")
        .args(["-s", "-i", &s.gw.url("/status/404")])
        .output()
        .expect("curl is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("x-upstream: mapped up-value\r\n"), "{text}");
}

#[test]
fn bad_mappings_are_refused_by_check_each_named() {
    let config = r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "bad"

[[apis.routes]]
key = "GET /a/{id}"
integration = { type = "http_proxy", url = "http://127.0.0.1:9" }
[apis.routes.mapping.request]
"append:header.Authorization" = "x"
"overwrite:header.x-forwarded-for" = "x"
"append:header.x-a" = "$request.nothing"
"append:header.x-b" = "${request.header.x"
"append:header.x-c" = "$request.path.nope"
"append:header.x-d" = "$context.bogus"
"copy:header.x-e" = "x"
[apis.routes.mapping.response.600]
"overwrite:statuscode" = "200"
[apis.routes.mapping.response.200]
"append:header.x-f" = "$response.body.id"

[[apis.routes]]
key = "GET /mock"
integration = { type = "mock", body = "ok" }
[apis.routes.mapping.request]
"append:header.x-g" = "x"
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
    let expect: &[(&str, &str)] = &[
        (
            r#"apis[0].routes[0].mapping.request."append:header.Authorization""#,
            "reserved",
        ),
        (
            r#"apis[0].routes[0].mapping.request."overwrite:header.x-forwarded-for""#,
            "reserved",
        ),
        (
            r#"apis[0].routes[0].mapping.request."append:header.x-a""#,
            "not a source",
        ),
        (
            r#"apis[0].routes[0].mapping.request."append:header.x-b""#,
            "closing",
        ),
        (
            r#"apis[0].routes[0].mapping.request."append:header.x-c""#,
            "not a parameter",
        ),
        (
            r#"apis[0].routes[0].mapping.request."append:header.x-d""#,
            "unknown $context",
        ),
        (
            r#"apis[0].routes[0].mapping.request."copy:header.x-e""#,
            "not an action",
        ),
        ("apis[0].routes[0].mapping.response.600", "200-599"),
        (
            r#"apis[0].routes[0].mapping.response.200."append:header.x-f""#,
            "not supported",
        ),
        ("apis[0].routes[1].mapping", "http_proxy"),
    ];
    for (key, needle) in expect {
        assert!(
            errors.iter().any(|l| l.contains(key) && l.contains(needle)),
            "no error naming {key} with {needle:?}: {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
}

/// A token signed with PyJWT (HS256, kid "k1"), for the claims test.
fn pyjwt_token(claims: &str, secret: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import jwt, json, sys; print(jwt.encode(json.loads(sys.argv[1]), sys.argv[2], algorithm='HS256', headers={'kid': 'k1'}))",
            claims,
            secret,
        ])
        .output()
        .expect("python3 with PyJWT is installed by scripts/test");
    assert!(out.status.success(), "PyJWT: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `curl -s -i` with the token; the status and the body.
fn curl_bearer(url: &str, token: &str, extra: &[&str]) -> (u16, Vec<u8>) {
    let mut args = vec![
        "-s".to_string(),
        "-i".to_string(),
        "-H".to_string(),
        format!("Authorization: Bearer {token}"),
    ];
    for h in extra {
        args.extend(["-H".to_string(), h.to_string()]);
    }
    args.push(url.to_string());
    let out = std::process::Command::new("curl")
        .args(&args)
        .output()
        .expect("curl is installed by scripts/test");
    let text = out.stdout;
    let status = std::str::from_utf8(&text[..text.len().min(12)])
        .ok()
        .and_then(|s| s.get(9..12))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(text.len(), |i| i + 4);
    (status, text[split..].to_vec())
}

#[test]
fn jwt_claims_map_into_headers_and_query_and_cannot_inject_a_header() {
    let secret = "a-secret-for-the-claims-test-0123456789";
    let jwks = temp_path("claims-jwks.json");
    let k = {
        // base64url without padding, by hand (no crate for one value).
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = secret.as_bytes();
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        s
    };
    std::fs::write(
        &jwks,
        format!(r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{k}"}}]}}"#),
    )
    .unwrap();
    let echo = Backend::start(Reply::Echo);
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[authorizers]]
name = "jwt"
[authorizers.jwt]
issuer = "https://issuer.example"
audience = ["claims-test"]
jwks_file = "{}"

[[apis]]
name = "a"
authorizer = "jwt"

[[apis.routes]]
key = "GET /mapped"
integration = {{ type = "http_proxy", url = "http://{e}/m" }}
[apis.routes.mapping.request]
"overwrite:header.x-user" = "$context.authorizer.claims.email"
"append:header.x-groups" = "$context.authorizer.claims.groups"
"append:header.x-level" = "level ${{context.authorizer.claims.level}}"
"append:header.x-missing" = "$context.authorizer.claims.nope"
"append:querystring.sub" = "$context.authorizer.jwt.claims.sub"

[[apis.routes]]
key = "GET /plain"
integration = {{ type = "http_proxy", url = "http://{e}/p" }}
"#,
        jwks.display(),
        e = echo.addr_str()
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |extra: &str| {
        format!(
            r#"{{"iss":"https://issuer.example","aud":"claims-test","sub":"user-1","exp":{},"groups":["a","b"],"level":3{extra}}}"#,
            now + 600
        )
    };
    let token = pyjwt_token(&claims(r#","email":"alice@example.com""#), secret);
    let forged = ["x-user: forged", "X_User: forged", "x_USER: forged"];
    let (status, body) = curl_bearer(&gw.url("/mapped"), &token, &forged);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let e = Echo::parse(&body).expect("echo");
    assert_eq!(e.headers_named("x-user"), ["alice@example.com"]);
    assert!(!e.has("x_user"), "{e:?}");
    assert_eq!(e.header("x-groups"), Some(r#"["a","b"]"#));
    assert_eq!(e.header("x-level"), Some("level 3"));
    assert!(!e.has("x-missing"), "an absent claim adds nothing: {e:?}");
    assert_eq!(e.target, "/m?sub=user-1");

    // Without the claim, the overwrite still removes the client's header.
    let token = pyjwt_token(&claims(""), secret);
    let (status, body) = curl_bearer(&gw.url("/mapped"), &token, &forged);
    assert_eq!(status, 200);
    let e = Echo::parse(&body).expect("echo");
    assert!(!e.has("x-user") && !e.has("x_user"), "{e:?}");

    // A route without a mapping is untouched.
    let (status, body) = curl_bearer(&gw.url("/plain"), &token, &["x-user: own"]);
    assert_eq!(status, 200);
    assert_eq!(Echo::parse(&body).unwrap().header("x-user"), Some("own"));

    // A claim that would end the header line (CR, LF, NUL) is refused
    // with 400 before anything reaches the backend.
    let before = echo.heads();
    for bad in [
        r#","email":"a@b.c\r\nx-admin: yes""#,
        r#","email":"a@b.c\nx-admin: yes""#,
        r#","email":"a\u0000b""#,
    ] {
        let token = pyjwt_token(&claims(bad), secret);
        let (status, body) = curl_bearer(&gw.url("/mapped"), &token, &[]);
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
        assert_eq!(body, br#"{"message":"Bad Request"}"#);
    }
    assert_eq!(echo.heads(), before, "nothing reached the backend");

    // A claim in a response mapping is refused by check, with its key.
    let config = write_config(&format!(
        r#"
[[authorizers]]
name = "jwt"
[authorizers.jwt]
issuer = "https://issuer.example"
jwks_file = "{}"

[[apis]]
name = "a"
authorizer = "jwt"

[[apis.routes]]
key = "GET /r"
integration = {{ type = "http_proxy", url = "http://127.0.0.1:9" }}
[apis.routes.mapping.response.200]
"append:header.x-user" = "$context.authorizer.claims.email"
[apis.routes.mapping.request]
"append:header.x-empty" = "$context.authorizer.claims."
"#,
        jwks.display()
    ));
    let out = run_coregate(&["check", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(r#"apis[0].routes[0].mapping.response.200."append:header.x-user""#)
            && err.contains("not available in a response mapping"),
        "{err}"
    );
    assert!(
        err.contains(r#"apis[0].routes[0].mapping.request."append:header.x-empty""#)
            && err.contains("the claim's name is missing"),
        "{err}"
    );
    let _ = std::fs::remove_file(jwks);
}
