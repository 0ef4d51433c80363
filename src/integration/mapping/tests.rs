// Test inputs are literals built here: unwrapping them is fine.
use super::*;
use crate::config::raw::mapping::RawMapping;
use crate::http::parse::{parse_request_head, HeadLimits};
use std::collections::BTreeMap;

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8192,
    max_head: 16384,
    max_headers: 100,
};

fn raw(request: &[(&str, &str)]) -> RawMapping {
    RawMapping {
        request: Some(
            request
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        response: None,
    }
}

fn compile(request: &[(&str, &str)], params: &[&str]) -> Result<Box<Mapping>, Vec<String>> {
    let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
    let mut errors = Vec::new();
    let e = parse(Some(&raw(request)), Some(&params), "m", &mut errors);
    if !errors.is_empty() {
        return Err(errors.iter().map(|e| e.to_string()).collect());
    }
    Ok(build(&Entries::default(), &e).unwrap())
}

fn ctx() -> Context<'static> {
    Context {
        request_id: b"rid-1",
        source_ip: "10.0.0.7".parse().unwrap(),
        method: Method::Get,
        minor_version: 1,
        route_key: "GET /pets/{id}",
        api: "shop",
        principal: Some("alice"),
        api_key_name: None,
        stage: DEFAULT_STAGE,
        claims: &[],
    }
}

/// Applies `request` to a request `client` sent, whose upstream head is
/// `upstream`; returns the new upstream head.
fn run(
    request: &[(&str, &str)],
    client: &str,
    upstream: &str,
    json: Option<&str>,
) -> Result<String, BadValue> {
    let m = compile(request, &["id"]).unwrap();
    let buf = client.as_bytes();
    let head = parse_request_head(buf, &LIMITS).unwrap().unwrap();
    let json: Option<serde_json::Value> = json.map(|j| serde_json::from_str(j).unwrap());
    let c = ctx();
    let params: [(&str, &[u8]); 1] = [("id", b"42")];
    let inp = RequestInputs {
        buf,
        head: &head,
        params: &params,
        json: json.as_ref(),
        ctx: &c,
    };
    let mut xbuf = upstream.as_bytes().to_vec();
    m.request.as_ref().unwrap().apply(&mut xbuf, &inp)?;
    Ok(String::from_utf8(xbuf).unwrap())
}

const CLIENT: &str = "GET /pets/42?a=1&b=2&a=3 HTTP/1.1\r\nhost: gw\r\nx-one: 1\r\nX-Multi: a\r\nx-multi: b\r\nuser-agent: t/1\r\n\r\n";
const UPSTREAM: &str = "GET /pets/42?a=1&b=2&a=3 HTTP/1.1\r\nhost: up\r\nx-one: 1\r\nX-Multi: a\r\nx-multi: b\r\nx-request-id: rid-1\r\n\r\n";

#[test]
fn header_operations() {
    let out = run(
        &[
            ("append:header.x-one", "two"),
            ("overwrite:header.x-multi", "$request.header.x-multi"),
            ("remove:header.x-request-id", "''"),
            (
                "append:header.x-ctx",
                "${context.requestId}/${context.identity.sourceIp}/${request.path.id}",
            ),
        ],
        CLIENT,
        UPSTREAM,
        None,
    )
    .unwrap();
    assert_eq!(
        out,
        "GET /pets/42?a=1&b=2&a=3 HTTP/1.1\r\nhost: up\r\nx-one: 1\r\nx-multi: a,b\r\nx-ctx: rid-1/10.0.0.7/42\r\nx-one: two\r\n\r\n"
    );
}

#[test]
fn query_and_path_operations() {
    let out = run(
        &[
            ("remove:querystring.b", ""),
            ("overwrite:querystring.a", "$request.querystring.a"),
            (
                "append:querystring.who",
                "${context.authorizer.principalId} & co",
            ),
            ("overwrite:path", "/v2/items/${request.path.id}"),
        ],
        CLIENT,
        UPSTREAM,
        None,
    )
    .unwrap();
    assert!(
        out.starts_with("GET /v2/items/42?a=1,3&who=alice%20%26%20co HTTP/1.1\r\n"),
        "{out}"
    );
}

#[test]
fn body_values_and_missing_ones() {
    let out = run(
        &[
            ("append:header.x-name", "$request.body.pet.name"),
            ("append:header.x-tag", "$request.body.pet.tags[1]"),
            ("append:header.x-obj", "$request.body.pet.size"),
            ("append:header.x-none", "$request.body.nothing"),
            ("overwrite:header.x-one", "$request.header.x-absent"),
        ],
        CLIENT,
        UPSTREAM,
        Some(r#"{"pet":{"name":"Rex","tags":["a","b"],"size":{"h":3}}}"#),
    )
    .unwrap();
    assert!(out.contains("x-name: Rex\r\n"), "{out}");
    assert!(out.contains("x-tag: b\r\n"), "{out}");
    assert!(out.contains("x-obj: {\"h\":3}\r\n"), "{out}");
    assert!(!out.contains("x-none"), "{out}");
    // Overwritten with nothing: removed, not left as the client sent it.
    assert!(!out.contains("x-one"), "{out}");
}

#[test]
fn unsafe_values_are_refused() {
    let r = run(
        &[("append:header.x-name", "$request.body.name")],
        CLIENT,
        UPSTREAM,
        Some(r#"{"name":"a\r\nx-evil: 1"}"#),
    );
    assert!(r.is_err());
    let r = run(
        &[("overwrite:path", "/files/${request.header.x-one}")],
        "GET / HTTP/1.1\r\nhost: gw\r\nx-one: ..\r\n\r\n",
        UPSTREAM,
        None,
    );
    assert!(r.is_err());
    assert!(has_dot_segment(b"/a/%2E%2e/b"));
    assert!(!has_dot_segment(b"/a/.../b"));
    assert!(!has_dot_segment(b"/a/.b/"));
    // The parser's rule: behind `%2F`, `\` (sent as `%5C`) and `;...`.
    for value in ["..%2Fetc", "a%2F..", "..\\etc", "..;x"] {
        let header = format!("GET / HTTP/1.1\r\nhost: gw\r\nx-one: {value}\r\n\r\n");
        let r = run(
            &[("overwrite:path", "/files/${request.header.x-one}")],
            &header,
            UPSTREAM,
            None,
        );
        assert!(r.is_err(), "{value}");
    }
    let r = run(
        &[("overwrite:path", "/files/${request.header.x-one}")],
        "GET / HTTP/1.1\r\nhost: gw\r\nx-one: a%2Fb\r\n\r\n",
        UPSTREAM,
        None,
    );
    assert!(r.is_ok());
}

#[test]
fn cgi_names_take_dash_and_underscore_alike() {
    assert!(same_cgi_name(b"X_User", b"x-user"));
    assert!(same_cgi_name(b"x-USER", b"x_user"));
    assert!(same_cgi_name(b"x-user", b"x-user"));
    assert!(!same_cgi_name(b"x-users", b"x-user"));
    assert!(!same_cgi_name(b"x.user", b"x-user"));
    assert!(!same_cgi_name(b"xuser", b"x-user"));
}

#[test]
fn encoding_keeps_valid_escapes() {
    let mut out = Vec::new();
    push_encoded(&mut out, b"a b%20c%zz&/", QUERY_SAFE);
    assert_eq!(out, b"a%20b%20c%25zz%26/");
}

#[test]
fn bad_entries_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("append:header.authorization", "x", "reserved"),
        ("overwrite:header.X-Amz-Date", "x", "reserved"),
        ("append:header.access-control-allow-origin", "x", "reserved"),
        ("remove:header.host", "", "only be overwritten"),
        ("append:path", "/x", "only be overwritten"),
        ("replace:header.x", "x", "not an action"),
        ("append:cookie.x", "x", "not a request target"),
        ("append:header.x", "$request.nothing", "not a source"),
        (
            "append:header.x",
            "$context.bogus",
            "unknown $context variable",
        ),
        (
            "append:header.x",
            "$request.path.nope",
            "not a parameter of the route key",
        ),
        (
            "append:header.x",
            "${request.header.a",
            "without its closing",
        ),
        (
            "append:header.x",
            "$response.header.a",
            "only available in a response mapping",
        ),
        (
            "append:header.x",
            "$request.body.a[x]",
            "not an array index",
        ),
        ("append:header.bad name", "x", "not a valid header name"),
    ];
    for (k, v, needle) in cases {
        let errors = compile(&[(k, v)], &["id"]).unwrap_err();
        assert_eq!(errors.len(), 1, "{k}: {errors:?}");
        assert!(
            errors[0].contains(&format!("m.request.{k:?}")),
            "{errors:?}"
        );
        assert!(errors[0].contains(needle), "{k}: {errors:?}");
    }
}

#[test]
fn response_entries_are_checked() {
    let mut response = BTreeMap::new();
    let entry = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    response.insert("600".to_string(), entry("overwrite:statuscode", "200"));
    response.insert("404".to_string(), entry("overwrite:statuscode", "204"));
    response.insert(
        "500".to_string(),
        entry("append:header.x", "$response.body.a"),
    );
    response.insert(
        "502".to_string(),
        entry("append:header.x", "$request.header.a"),
    );
    response.insert(
        "503".to_string(),
        entry("append:header.content-length", "1"),
    );
    let raw = RawMapping {
        request: None,
        response: Some(response),
    };
    let mut errors = Vec::new();
    parse(Some(&raw), None, "m", &mut errors);
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(text.len(), 5, "{text:#?}");
    assert!(text[0].contains("m.response.404") && text[0].contains("not 204 or 304"));
    assert!(text[1].contains("m.response.500") && text[1].contains("not supported"));
    assert!(text[2].contains("m.response.502") && text[2].contains("not available in a response"));
    assert!(text[3].contains("m.response.503") && text[3].contains("reserved"));
    assert!(text[4].contains("m.response.600") && text[4].contains("200-599"));
}

#[test]
fn a_route_entry_wins_over_the_api_one() {
    let mut errors = Vec::new();
    let api = parse(
        Some(&raw(&[
            ("append:header.x-a", "api"),
            ("append:header.x-b", "api"),
        ])),
        None,
        "a",
        &mut errors,
    );
    let route = parse(
        Some(&raw(&[("append:header.x-a", "route")])),
        Some(&[]),
        "r",
        &mut errors,
    );
    assert!(errors.is_empty());
    let m = build(&api, &route).unwrap();
    let req = m.request.unwrap();
    let values: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|o| match &o.value.0[..] {
            [Piece::Text(t)] => (o.name.to_string(), t.to_vec()),
            _ => panic!("not text"),
        })
        .collect();
    assert_eq!(
        values,
        vec![
            ("x-a".to_string(), b"route".to_vec()),
            ("x-b".to_string(), b"api".to_vec())
        ]
    );
}

#[test]
fn chunked_bodies_are_read_as_their_data() {
    let v = parse_body(b"5\r\n{\"a\":\r\n4\r\n\"b\"}\r\n0\r\n\r\n", true, 1024).unwrap();
    assert_eq!(v["a"], "b");
    assert!(parse_body(b"not json", false, 1024).is_none());
}
