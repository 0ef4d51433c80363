//! Tests for route keys and the route table: precedence, 404 vs 405, base
//! paths, hosts and the build-time conflict checks, and a property test
//! against a plain reference of the precedence rules.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test builds itself, so a failure is a failing test.

use super::*;

/// What a lookup gave, in owned form.
#[derive(Debug, PartialEq, Eq)]
enum Hit {
    Found(RouteId, Vec<(String, String)>),
    NotAllowed(String),
    NotFound,
}

fn hit(table: &RouteTable, host: Option<&str>, method: Method, path: &str) -> Hit {
    match table.lookup(host.map(str::as_bytes), method, path) {
        Lookup::Found { route, params } => Hit::Found(
            route,
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        Lookup::MethodNotAllowed { allow } => {
            assert!(!allow.is_empty());
            let mut out = Vec::new();
            allow.write_to(&mut out);
            Hit::NotAllowed(String::from_utf8(out).unwrap())
        }
        Lookup::NotFound => Hit::NotFound,
    }
}

/// The route id matched, with no parameters.
fn found(id: RouteId) -> Hit {
    Hit::Found(id, Vec::new())
}

fn found_with(id: RouteId, params: &[(&str, &str)]) -> Hit {
    Hit::Found(
        id,
        params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn not_allowed(allow: &str) -> Hit {
    Hit::NotAllowed(allow.to_string())
}

/// An API whose routes get ids `first_id`, `first_id + 1`, ... in order.
fn api<'a>(
    name: &'a str,
    hosts: Option<&[&str]>,
    base_path: &str,
    keys: &[&'a str],
    first_id: RouteId,
) -> ApiSpec<'a> {
    ApiSpec {
        name,
        hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
        base_path: base_path.to_string(),
        routes: keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    RouteKey::parse(k).unwrap_or_else(|e| panic!("{e}")),
                    first_id + i as RouteId,
                    *k,
                )
            })
            .collect(),
    }
}

fn table(specs: &[ApiSpec<'_>]) -> RouteTable {
    RouteTable::build(specs).unwrap_or_else(|e| panic!("build failed: {e:?}"))
}

/// One any-host API at the root with these keys, ids 0, 1, ...
fn single(keys: &[&str]) -> RouteTable {
    table(&[api("t", None, "/", keys, 0)])
}

fn build_errors(specs: &[ApiSpec<'_>]) -> Vec<String> {
    match RouteTable::build(specs) {
        Ok(_) => panic!("build should fail"),
        Err(e) => e,
    }
}

// ---- RouteKey::parse -------------------------------------------------------

#[test]
fn parse_valid_keys() {
    assert_eq!(RouteKey::parse("$default"), Ok(RouteKey::Default));
    assert_eq!(
        RouteKey::parse("GET /pets"),
        Ok(RouteKey::Route {
            method: Some(Method::Get),
            path: "/pets".into(),
            pattern: "/pets".into(),
            params: vec![],
            greedy: false
        })
    );
    assert_eq!(
        RouteKey::parse("ANY /{proxy+}"),
        Ok(RouteKey::Route {
            method: None,
            path: "/{proxy+}".into(),
            pattern: "/{*proxy}".into(),
            params: vec!["proxy".into()],
            greedy: true
        })
    );
    assert_eq!(
        RouteKey::parse("DELETE /pets/{id}/toys/{toy_id}"),
        Ok(RouteKey::Route {
            method: Some(Method::Delete),
            path: "/pets/{id}/toys/{toy_id}".into(),
            pattern: "/pets/{id}/toys/{toy_id}".into(),
            params: vec!["id".into(), "toy_id".into()],
            greedy: false
        })
    );
    assert_eq!(
        RouteKey::parse("GET /"),
        Ok(RouteKey::Route {
            method: Some(Method::Get),
            path: "/".into(),
            pattern: "/".into(),
            params: vec![],
            greedy: false
        })
    );
    for (m, want) in [
        ("HEAD", Method::Head),
        ("POST", Method::Post),
        ("PUT", Method::Put),
        ("PATCH", Method::Patch),
        ("OPTIONS", Method::Options),
    ] {
        match RouteKey::parse(&format!("{m} /x")) {
            Ok(RouteKey::Route { method, .. }) => assert_eq!(method, Some(want)),
            other => panic!("{m}: {other:?}"),
        }
    }
    // Literal segments may hold any visible ASCII but {}?#/\.
    for path in [
        "/a.b/c-d/e_f/~g/h:i/@j/k=l/%20",
        "/v1/{a.b-c_d}",
        "/files/{path+}",
        "/.well-known/x",
        "/...",
    ] {
        assert!(RouteKey::parse(&format!("GET {path}")).is_ok(), "{path}");
    }
}

#[test]
fn parse_invalid_keys() {
    for key in [
        "",
        "GET",
        "$DEFAULT",
        "$default ",
        "get /pets",
        "Get /pets",
        "PURGE /pets",
        "ANY",
        "GET pets",
        "GET  /pets",
        "GET /pets ",
        "GET /a b",
        "GET /a/{a}{b}",
        "GET /a/x{b}",
        "GET /a/{b}x",
        "GET /{proxy+}/x",
        "GET /{a+}/{b+}",
        "GET /a/../b",
        "GET /a/./b",
        "GET /..",
        "GET /a//b",
        "GET //a",
        "GET /a/",
        "GET /{}",
        "GET /{+}",
        "GET /{a b}",
        "GET /{a/b}",
        "GET /{id}/{id}",
        "GET /{id}/x/{id+}",
        "GET /a?x=1",
        "GET /a#x",
        "GET /a\\b",
        "GET /caf\u{e9}",
        "GET /{",
        "GET /}",
    ] {
        let e = RouteKey::parse(key).expect_err(key);
        assert!(
            e.contains(&format!("{key:?}")),
            "error for {key:?} should quote it: {e}"
        );
    }
}

#[test]
fn parse_route_path_directly() {
    assert_eq!(
        parse_route_path("/a/{b}/{c+}"),
        Ok((
            "/a/{b}/{*c}".to_string(),
            vec!["b".to_string(), "c".to_string()],
            true
        ))
    );
    assert!(parse_route_path("a").is_err());
    assert!(parse_route_path("").is_err());
}

// ---- AllowSet --------------------------------------------------------------

#[test]
fn allow_set_renders_in_method_order() {
    let mut a = AllowSet::default();
    assert!(a.is_empty());
    let mut out = Vec::new();
    a.write_to(&mut out);
    assert_eq!(out, b"");
    for m in [
        Method::Options,
        Method::Delete,
        Method::Get,
        Method::Post,
        Method::Delete,
    ] {
        a.insert(m);
    }
    assert!(a.contains(Method::Get) && a.contains(Method::Delete) && !a.contains(Method::Head));
    let mut out = b"Allow: ".to_vec();
    a.write_to(&mut out);
    assert_eq!(out, b"Allow: GET, POST, DELETE, OPTIONS");
}

// ---- precedence --------------------------------------------------------------

#[test]
fn exact_beats_param_beats_greedy() {
    let t = single(&["GET /pets/mine", "GET /pets/{id}", "GET /{rest+}"]);
    assert_eq!(hit(&t, None, Method::Get, "/pets/mine"), found(0));
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/7"),
        found_with(1, &[("id", "7")])
    );
    // Deeper than the param route reaches: back to the greedy one.
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/7/toys"),
        found_with(2, &[("rest", "pets/7/toys")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/mine/toys"),
        found_with(2, &[("rest", "pets/mine/toys")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/pets"),
        found_with(2, &[("rest", "pets")])
    );
    // The order routes are written in makes no difference.
    let t = single(&["GET /{rest+}", "GET /pets/{id}", "GET /pets/mine"]);
    assert_eq!(hit(&t, None, Method::Get, "/pets/mine"), found(2));
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/7"),
        found_with(1, &[("id", "7")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/7/toys"),
        found_with(0, &[("rest", "pets/7/toys")])
    );
    // An exact path beside a greedy one at the same position.
    let t = single(&["GET /pets/mine", "GET /pets/{rest+}"]);
    assert_eq!(hit(&t, None, Method::Get, "/pets/mine"), found(0));
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/yours"),
        found_with(1, &[("rest", "yours")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/mine/x"),
        found_with(1, &[("rest", "mine/x")])
    );
}

#[test]
fn param_and_greedy_at_the_same_position_coexist() {
    // Regression: one matchit router keeps one wildcard child per node, so
    // `GET /pets/{id}` with `ANY /pets/{proxy+}` (a common API Gateway setup)
    // was refused at build time. Greedy routes now live in their own router,
    // consulted after the full-match one, as AWS's precedence says: a full
    // match (including {param}) first, then a greedy match, then $default.
    for keys in [
        ["GET /pets/{id}", "GET /pets/{rest+}"],
        ["GET /pets/{rest+}", "GET /pets/{id}"],
        ["GET /pets/{id}", "ANY /pets/{id+}"],
    ] {
        let t = single(&keys);
        let (param, greedy) = if keys[0].contains('+') {
            (1, 0)
        } else {
            (0, 1)
        };
        let pname = if keys[param].contains("{id}") {
            "id"
        } else {
            "rest"
        };
        let gname = if keys[greedy].contains("{id+}") {
            "id"
        } else {
            "rest"
        };
        assert_eq!(
            hit(&t, None, Method::Get, "/pets/7"),
            found_with(param as RouteId, &[(pname, "7")]),
            "{keys:?}"
        );
        assert_eq!(
            hit(&t, None, Method::Get, "/pets/7/toys"),
            found_with(greedy as RouteId, &[(gname, "7/toys")]),
            "{keys:?}"
        );
    }
    // An ANY greedy route takes the other methods on the same path.
    let t = single(&["GET /pets/{id}", "ANY /pets/{proxy+}"]);
    assert_eq!(
        hit(&t, None, Method::Post, "/pets/7"),
        found_with(1, &[("proxy", "7")])
    );
}

#[test]
fn more_specific_branch_backtracks_when_it_leads_nowhere() {
    // docs/configuration.md, Precedence: `/p/b/x` tries the exact `b` first,
    // finds no `x` under it, and matches `/p/{a}/x`.
    let t = single(&["GET /p/b/y", "GET /p/{a}/x"]);
    assert_eq!(
        hit(&t, None, Method::Get, "/p/b/x"),
        found_with(1, &[("a", "b")])
    );
    assert_eq!(hit(&t, None, Method::Get, "/p/b/y"), found(0));
    assert_eq!(hit(&t, None, Method::Get, "/p/c/y"), Hit::NotFound);
}

#[test]
fn greedy_routes_with_a_parameter_where_another_is_greedy_coexist() {
    // One router refuses a greedy parameter and a `{param}` at the same
    // position; found by the property test below.
    let t = single(&["ANY /{proxy+}", "GET /{id}/{proxy+}", "GET /a/{rest+}"]);
    assert_eq!(
        hit(&t, None, Method::Get, "/x"),
        found_with(0, &[("proxy", "x")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/x/y/z"),
        found_with(1, &[("id", "x"), ("proxy", "y/z")])
    );
    // The literal beats the parameter at the first segment.
    assert_eq!(
        hit(&t, None, Method::Get, "/a/y"),
        found_with(2, &[("rest", "y")])
    );
    assert_eq!(
        hit(&t, None, Method::Post, "/x/y/z"),
        found_with(0, &[("proxy", "x/y/z")])
    );
}

#[test]
fn path_specificity_comes_before_method() {
    // docs/configuration.md: `ANY /pets/{id}` beats `GET /{proxy+}` for GET /pets/7.
    let t = single(&["GET /{proxy+}", "ANY /pets/{id}"]);
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/7"),
        found_with(1, &[("id", "7")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/7/x"),
        found_with(0, &[("proxy", "pets/7/x")])
    );
    assert_eq!(
        hit(&t, None, Method::Post, "/pets/7/x"),
        not_allowed("GET, HEAD")
    );
}

#[test]
fn root_greedy_catches_everything_else() {
    let t = single(&["GET /", "GET /pets", "ANY /{proxy+}"]);
    assert_eq!(hit(&t, None, Method::Get, "/"), found(0));
    assert_eq!(hit(&t, None, Method::Get, "/pets"), found(1));
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/1"),
        found_with(2, &[("proxy", "pets/1")])
    );
    assert_eq!(
        hit(&t, None, Method::Post, "/pets"),
        found_with(2, &[("proxy", "pets")])
    );
    assert_eq!(
        hit(&t, None, Method::Other, "/x/y/z"),
        found_with(2, &[("proxy", "x/y/z")])
    );
}

#[test]
fn params_are_raw_segments() {
    let t = single(&["GET /pets/{id}/toys/{toy}"]);
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/a%2Fb/toys/x%20y"),
        found_with(0, &[("id", "a%2Fb"), ("toy", "x%20y")])
    );
    // An empty segment is not a parameter value.
    assert_eq!(hit(&t, None, Method::Get, "/pets//toys/x"), Hit::NotFound);
    // Paths match exactly: no trailing-slash leniency.
    assert_eq!(hit(&t, None, Method::Get, "/pets/1/toys/x/"), Hit::NotFound);
    let t = single(&["GET /pets"]);
    assert_eq!(hit(&t, None, Method::Get, "/pets/"), Hit::NotFound);
    assert_eq!(hit(&t, None, Method::Get, "/Pets"), Hit::NotFound);
}

#[test]
fn greedy_parameter_values() {
    let t = single(&["GET /files/{proxy+}"]);
    assert_eq!(
        hit(&t, None, Method::Get, "/files/a/b"),
        found_with(0, &[("proxy", "a/b")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/files/a"),
        found_with(0, &[("proxy", "a")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/files/a/b/"),
        found_with(0, &[("proxy", "a/b/")])
    );
    // As in API Gateway, a greedy parameter needs at least one character:
    // `/files/` (empty value) and `/files` do not match `/files/{proxy+}`;
    // add `GET /files` for the bare path.
    assert_eq!(hit(&t, None, Method::Get, "/files/"), Hit::NotFound);
    assert_eq!(hit(&t, None, Method::Get, "/files"), Hit::NotFound);
    assert_eq!(hit(&t, None, Method::Get, "/filesx"), Hit::NotFound);
}

#[test]
fn method_specific_beats_any() {
    let t = single(&["ANY /pets", "GET /pets"]);
    assert_eq!(hit(&t, None, Method::Get, "/pets"), found(1));
    assert_eq!(hit(&t, None, Method::Post, "/pets"), found(0));
    assert_eq!(hit(&t, None, Method::Delete, "/pets"), found(0));
    assert_eq!(hit(&t, None, Method::Other, "/pets"), found(0));
    // HEAD: a GET route comes before ANY.
    assert_eq!(hit(&t, None, Method::Head, "/pets"), found(1));
}

#[test]
fn method_specific_param_beats_any_but_any_exact_beats_param() {
    // Precedence is path first, then method: a more specific path under ANY
    // still wins over a GET param route.
    let t = single(&["GET /pets/{id}", "ANY /pets/mine"]);
    assert_eq!(hit(&t, None, Method::Get, "/pets/mine"), found(1));
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/1"),
        found_with(0, &[("id", "1")])
    );
    assert_eq!(
        hit(&t, None, Method::Post, "/pets/1"),
        not_allowed("GET, HEAD")
    );
}

#[test]
fn head_falls_back_to_get() {
    let t = single(&["GET /pets"]);
    assert_eq!(hit(&t, None, Method::Head, "/pets"), found(0));
    let t = single(&["GET /pets", "HEAD /pets"]);
    assert_eq!(hit(&t, None, Method::Head, "/pets"), found(1));
    assert_eq!(hit(&t, None, Method::Get, "/pets"), found(0));
    // Not the other way round.
    let t = single(&["HEAD /pets"]);
    assert_eq!(hit(&t, None, Method::Get, "/pets"), not_allowed("HEAD"));
}

#[test]
fn any_takes_every_method_including_unknown_ones() {
    let t = single(&["ANY /x"]);
    for m in NAMED_METHODS {
        assert_eq!(hit(&t, None, m, "/x"), found(0), "{m:?}");
    }
    assert_eq!(hit(&t, None, Method::Other, "/x"), found(0));
}

#[test]
fn not_found_vs_method_not_allowed() {
    let t = single(&[
        "GET /pets",
        "POST /pets",
        "DELETE /pets/{id}",
        "OPTIONS /pets",
    ]);
    assert_eq!(
        hit(&t, None, Method::Put, "/pets"),
        not_allowed("GET, HEAD, POST, OPTIONS")
    );
    assert_eq!(
        hit(&t, None, Method::Other, "/pets"),
        not_allowed("GET, HEAD, POST, OPTIONS")
    );
    assert_eq!(hit(&t, None, Method::Get, "/pets/1"), not_allowed("DELETE"));
    assert_eq!(
        hit(&t, None, Method::Delete, "/pets/1"),
        found_with(2, &[("id", "1")])
    );
    assert_eq!(hit(&t, None, Method::Get, "/nothing"), Hit::NotFound);
    assert_eq!(hit(&t, None, Method::Delete, "/pets/1/x"), Hit::NotFound);
    assert_eq!(hit(&t, None, Method::Get, "/"), Hit::NotFound);
}

#[test]
fn default_route_takes_everything_unmatched() {
    let t = single(&["GET /pets", "$default"]);
    assert_eq!(hit(&t, None, Method::Get, "/pets"), found(0));
    // No 405 when there is a $default: it takes the other methods too.
    assert_eq!(hit(&t, None, Method::Post, "/pets"), found(1));
    assert_eq!(hit(&t, None, Method::Get, "/anything/else"), found(1));
    assert_eq!(hit(&t, None, Method::Other, "/"), found(1));
    // $default alone.
    let t = single(&["$default"]);
    assert_eq!(hit(&t, None, Method::Get, "/x"), found(0));
}

#[test]
fn different_param_names_for_different_methods_are_allowed() {
    // Each method slot has its own router, so these never meet.
    let t = single(&["GET /pets/{id}", "POST /pets/{name}"]);
    assert_eq!(
        hit(&t, None, Method::Get, "/pets/1"),
        found_with(0, &[("id", "1")])
    );
    assert_eq!(
        hit(&t, None, Method::Post, "/pets/rex"),
        found_with(1, &[("name", "rex")])
    );
    assert_eq!(
        hit(&t, None, Method::Head, "/pets/1"),
        found_with(0, &[("id", "1")])
    );
    assert_eq!(
        hit(&t, None, Method::Put, "/pets/1"),
        not_allowed("GET, HEAD, POST")
    );
}

// ---- base paths ------------------------------------------------------------

#[test]
fn base_path_is_stripped_on_segment_boundaries() {
    let t = table(&[api(
        "v1",
        None,
        "/v1",
        &["GET /pets", "GET /", "GET /pets/{id}"],
        0,
    )]);
    assert_eq!(hit(&t, None, Method::Get, "/v1/pets"), found(0));
    assert_eq!(
        hit(&t, None, Method::Get, "/v1/pets/3"),
        found_with(2, &[("id", "3")])
    );
    assert_eq!(hit(&t, None, Method::Get, "/v1"), found(1));
    assert_eq!(hit(&t, None, Method::Get, "/v1/"), found(1));
    assert_eq!(hit(&t, None, Method::Get, "/v1x/pets"), Hit::NotFound);
    assert_eq!(hit(&t, None, Method::Get, "/v1x"), Hit::NotFound);
    assert_eq!(hit(&t, None, Method::Get, "/pets"), Hit::NotFound);
    assert_eq!(hit(&t, None, Method::Get, "/"), Hit::NotFound);
    assert_eq!(hit(&t, None, Method::Get, "/V1/pets"), Hit::NotFound);
}

#[test]
fn v1x_falls_through_to_the_root_api() {
    let t = table(&[
        api("root", None, "/", &["ANY /{proxy+}"], 0),
        api("v1", None, "/v1", &["GET /pets"], 1),
    ]);
    assert_eq!(hit(&t, None, Method::Get, "/v1/pets"), found(1));
    assert_eq!(
        hit(&t, None, Method::Get, "/v1x/pets"),
        found_with(0, &[("proxy", "v1x/pets")])
    );
}

#[test]
fn longest_base_path_wins() {
    let t = table(&[
        api("v1", None, "/v1", &["ANY /{proxy+}"], 0),
        api("admin", None, "/v1/admin", &["GET /users"], 1),
        api("root", None, "/", &["ANY /{proxy+}"], 2),
    ]);
    assert_eq!(hit(&t, None, Method::Get, "/v1/admin/users"), found(1));
    assert_eq!(
        hit(&t, None, Method::Get, "/v1/users"),
        found_with(0, &[("proxy", "users")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/v1/administrator"),
        found_with(0, &[("proxy", "administrator")])
    );
    assert_eq!(
        hit(&t, None, Method::Get, "/v2/x"),
        found_with(2, &[("proxy", "v2/x")])
    );
    // The matching API answers alone: no fall-through to a shorter base path.
    assert_eq!(
        hit(&t, None, Method::Post, "/v1/admin/users"),
        not_allowed("GET, HEAD")
    );
    assert_eq!(hit(&t, None, Method::Get, "/v1/admin/other"), Hit::NotFound);
}

#[test]
fn greedy_root_under_a_base_path_needs_a_rest() {
    // docs/configuration.md example: `/v1` and `/v1/` do not match
    // `ANY /{proxy+}`, so `$default` answers them.
    let t = table(&[api("v1", None, "/v1", &["ANY /{proxy+}", "$default"], 0)]);
    assert_eq!(
        hit(&t, None, Method::Delete, "/v1/pets/7"),
        found_with(0, &[("proxy", "pets/7")])
    );
    assert_eq!(hit(&t, None, Method::Get, "/v1"), found(1));
    assert_eq!(hit(&t, None, Method::Get, "/v1/"), found(1));
    assert_eq!(hit(&t, None, Method::Get, "/v2"), Hit::NotFound);
}

// ---- hosts -----------------------------------------------------------------

#[test]
fn host_matching_ignores_ports_and_case() {
    let t = table(&[api(
        "a",
        Some(&["api.example.com", "Other.Example.NET"]),
        "/",
        &["GET /"],
        0,
    )]);
    for host in [
        "api.example.com",
        "API.Example.COM",
        "api.example.com:8080",
        "api.example.com:",
        "other.example.net",
        "OTHER.EXAMPLE.NET:443",
    ] {
        assert_eq!(hit(&t, Some(host), Method::Get, "/"), found(0), "{host}");
    }
    for host in [
        "example.com",
        "x.api.example.com",
        "api.example.com.evil",
        "api.example.comx",
        "api-example.com",
    ] {
        assert_eq!(
            hit(&t, Some(host), Method::Get, "/"),
            Hit::NotFound,
            "{host}"
        );
    }
    // No host at all (HTTP/1.0): only any-host APIs can take it.
    assert_eq!(hit(&t, None, Method::Get, "/"), Hit::NotFound);
}

#[test]
fn ipv6_hosts() {
    let t = table(&[api("a", Some(&["[::1]"]), "/", &["GET /"], 0)]);
    assert_eq!(hit(&t, Some("[::1]:8080"), Method::Get, "/"), found(0));
    assert_eq!(hit(&t, Some("[::1]"), Method::Get, "/"), found(0));
    assert_eq!(hit(&t, Some("[::2]:8080"), Method::Get, "/"), Hit::NotFound);
}

#[test]
fn wildcard_hosts() {
    let t = table(&[api("a", Some(&["*.example.com"]), "/", &["GET /"], 0)]);
    for host in [
        "a.example.com",
        "A.EXAMPLE.COM:80",
        "a.b.example.com",
        "x-y.example.com:8443",
    ] {
        assert_eq!(hit(&t, Some(host), Method::Get, "/"), found(0), "{host}");
    }
    for host in [
        "example.com",
        ".example.com",
        "aexample.com",
        "example.com.evil",
        "a.example.org",
    ] {
        assert_eq!(
            hit(&t, Some(host), Method::Get, "/"),
            Hit::NotFound,
            "{host}"
        );
    }
}

#[test]
fn host_specific_api_is_preferred() {
    // The any-host API comes first in config; the host-specific one still wins.
    let t = table(&[
        api("public", None, "/", &["GET /pets"], 0),
        api(
            "internal",
            Some(&["internal.example.com"]),
            "/",
            &["GET /pets"],
            1,
        ),
    ]);
    assert_eq!(
        hit(&t, Some("internal.example.com"), Method::Get, "/pets"),
        found(1)
    );
    assert_eq!(
        hit(&t, Some("internal.example.com:80"), Method::Get, "/pets"),
        found(1)
    );
    assert_eq!(
        hit(&t, Some("www.example.com"), Method::Get, "/pets"),
        found(0)
    );
    assert_eq!(hit(&t, None, Method::Get, "/pets"), found(0));
}

#[test]
fn host_specific_api_with_shorter_base_path_still_wins() {
    let t = table(&[
        api("any", None, "/v1", &["ANY /{proxy+}"], 0),
        api("host", Some(&["h.example"]), "/", &["ANY /{proxy+}"], 1),
    ]);
    assert_eq!(
        hit(&t, Some("h.example"), Method::Get, "/v1/x"),
        found_with(1, &[("proxy", "v1/x")])
    );
    assert_eq!(
        hit(&t, Some("g.example"), Method::Get, "/v1/x"),
        found_with(0, &[("proxy", "x")])
    );
    assert_eq!(hit(&t, Some("g.example"), Method::Get, "/x"), Hit::NotFound);
}

#[test]
fn exact_host_outranks_wildcard_host() {
    // Regression: an exact host did not outrank a wildcard one; file order
    // decided. Now exact > wildcard > any host, then the longest base path.
    let t = table(&[
        api("wild", Some(&["*.example.com"]), "/", &["GET /"], 0),
        api("exact", Some(&["api.example.com"]), "/", &["GET /"], 1),
    ]);
    assert_eq!(hit(&t, Some("api.example.com"), Method::Get, "/"), found(1));
    assert_eq!(
        hit(&t, Some("API.example.com:8080"), Method::Get, "/"),
        found(1)
    );
    assert_eq!(hit(&t, Some("www.example.com"), Method::Get, "/"), found(0));
    // Host rank comes before base path length.
    let t = table(&[
        api("wild", Some(&["*.example.com"]), "/v1", &["GET /x"], 0),
        api("exact", Some(&["api.example.com"]), "/", &["GET /v1/x"], 1),
        api("any", None, "/v1/x", &["GET /"], 2),
    ]);
    assert_eq!(
        hit(&t, Some("api.example.com"), Method::Get, "/v1/x"),
        found(1)
    );
    assert_eq!(
        hit(&t, Some("www.example.com"), Method::Get, "/v1/x"),
        found(0)
    );
    assert_eq!(hit(&t, Some("other.org"), Method::Get, "/v1/x"), found(2));
}

// ---- build errors ----------------------------------------------------------

#[test]
fn conflicting_param_names_are_refused() {
    let e = build_errors(&[api(
        "pets",
        None,
        "/",
        &["GET /pets/{id}", "GET /pets/{name}"],
        0,
    )]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("\"pets\""), "{}", e[0]);
    assert!(
        e[0].contains("GET /pets/{name}") && e[0].contains("GET /pets/{id}"),
        "{}",
        e[0]
    );
    // An ANY route lives in every slot, so it conflicts with a GET route.
    let e = build_errors(&[api(
        "pets",
        None,
        "/",
        &["GET /pets/{id}", "ANY /pets/{name}"],
        0,
    )]);
    assert_eq!(e.len(), 1, "reported once, not per method slot: {e:?}");
    assert!(
        e[0].contains("ANY /pets/{name}") && e[0].contains("GET /pets/{id}"),
        "{}",
        e[0]
    );
}

#[test]
fn duplicate_routes_are_refused() {
    let e = build_errors(&[api(
        "pets",
        None,
        "/",
        &["GET /pets", "POST /pets", "GET /pets"],
        0,
    )]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("duplicates"), "{}", e[0]);
    let e = build_errors(&[api("pets", None, "/", &["ANY /x", "ANY /x"], 0)]);
    assert_eq!(e.len(), 1, "{e:?}");
    let e = build_errors(&[api(
        "pets",
        None,
        "/",
        &["$default", "GET /", "$default"],
        0,
    )]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("$default"), "{}", e[0]);
}

#[test]
fn duplicate_api_scope_is_refused() {
    let e = build_errors(&[
        api("a", None, "/", &["GET /a"], 0),
        api("b", None, "/", &["GET /b"], 1),
    ]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("\"a\"") && e[0].contains("\"b\""), "{}", e[0]);
    // Host lists compare as sets, case-insensitively.
    let e = build_errors(&[
        api(
            "a",
            Some(&["A.example", "b.example"]),
            "/v1",
            &["GET /a"],
            0,
        ),
        api(
            "b",
            Some(&["b.example", "a.EXAMPLE"]),
            "/v1",
            &["GET /b"],
            1,
        ),
    ]);
    assert_eq!(e.len(), 1, "{e:?}");
    // Same hosts, different base paths: fine. Same base path, different hosts: fine.
    table(&[
        api("a", Some(&["a.example"]), "/v1", &["GET /a"], 0),
        api("b", Some(&["a.example"]), "/v2", &["GET /b"], 1),
        api("c", Some(&["c.example"]), "/v1", &["GET /c"], 2),
        api("d", None, "/v1", &["GET /d"], 3),
    ]);
}

#[test]
fn all_errors_are_returned() {
    let e = build_errors(&[
        api("a", None, "/", &["GET /x", "GET /x"], 0),
        api("b", None, "/b", &["GET /{p}", "GET /{q}"], 2),
        api("c", None, "/", &["GET /c"], 4),
    ]);
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn empty_table_finds_nothing() {
    let t = table(&[]);
    assert_eq!(hit(&t, Some("a"), Method::Get, "/"), Hit::NotFound);
    assert_eq!(
        hit(&RouteTable::default(), None, Method::Get, "/"),
        Hit::NotFound
    );
}

// ---- property test: the table against a plain reference --------------------

/// A segment of a generated route path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    Lit(&'static str),
    /// A `{pN}` parameter (named by its position, so that parameters at one
    /// position always share a name, as the router requires).
    Param,
}

/// A generated route: method (`None` for ANY), segments, and whether a
/// greedy `{rest+}` follows them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GenRoute {
    method: Option<Method>,
    segs: Vec<Seg>,
    greedy: bool,
}

impl GenRoute {
    fn key(&self) -> String {
        let method = match self.method {
            None => "ANY",
            Some(Method::Get) => "GET",
            Some(Method::Post) => "POST",
            Some(m) => panic!("unexpected {m:?}"),
        };
        let mut path = String::new();
        for (i, s) in self.segs.iter().enumerate() {
            match s {
                Seg::Lit(l) => path.push_str(&format!("/{l}")),
                Seg::Param => path.push_str(&format!("/{{p{i}}}")),
            }
        }
        if self.greedy {
            path.push_str("/{rest+}");
        }
        if path.is_empty() {
            path.push('/');
        }
        format!("{method} {path}")
    }

    fn same_path(&self, other: &GenRoute) -> bool {
        self.segs == other.segs && self.greedy == other.greedy
    }

    /// How specific the route is where it matched: per segment, a literal
    /// (2) over a parameter (1) over the greedy rest (0). Compared
    /// lexicographically, the larger is the more specific.
    fn rank(&self) -> Vec<u8> {
        let mut r: Vec<u8> = self
            .segs
            .iter()
            .map(|s| match s {
                Seg::Lit(_) => 2,
                Seg::Param => 1,
            })
            .collect();
        if self.greedy {
            r.push(0);
        }
        r
    }

    /// Whether the route matches a path of these (non-empty) segments.
    fn matches(&self, path: &[&str]) -> bool {
        let fixed = self.segs.len();
        let len_ok = if self.greedy {
            path.len() > fixed
        } else {
            path.len() == fixed
        };
        len_ok
            && self.segs.iter().zip(path).all(|(s, p)| match s {
                Seg::Lit(l) => l == p,
                Seg::Param => true,
            })
    }
}

/// Amazon API Gateway's rules, written plainly: among the routes that take
/// `method` (its own, HEAD also GET's, then ANY where the method has no
/// route of that path), a full match beats a greedy one, then the most
/// specific wins; else `$default`; else 405 with the methods that would
/// match, else 404.
fn reference(routes: &[GenRoute], default: bool, method: Method, path: &[&str]) -> Hit {
    let takes = |m: Method| -> Vec<usize> {
        (0..routes.len())
            .filter(|&i| {
                let r = &routes[i];
                let own = |mm: Method| {
                    routes
                        .iter()
                        .any(|o| o.method == Some(mm) && o.same_path(r))
                };
                match r.method {
                    Some(rm) if rm == m => true,
                    // HEAD falls back to GET.
                    Some(Method::Get) if m == Method::Head => !own(Method::Head),
                    Some(_) => false,
                    None => !(own(m) || (m == Method::Head && own(Method::Get))),
                }
            })
            .collect()
    };
    let best = |m: Method| -> Option<usize> {
        let ids = takes(m);
        let pick = |greedy: bool| {
            ids.iter()
                .copied()
                .filter(|&i| routes[i].greedy == greedy && routes[i].matches(path))
                .max_by(|&a, &b| routes[a].rank().cmp(&routes[b].rank()))
        };
        pick(false).or_else(|| pick(true))
    };
    if let Some(i) = best(method) {
        return Hit::Found(i as RouteId, Vec::new());
    }
    if default {
        return Hit::Found(routes.len() as RouteId, Vec::new());
    }
    let allowed: Vec<&str> = NAMED_METHODS
        .iter()
        .filter(|&&m| best(m).is_some())
        .map(|m| m.as_str())
        .collect();
    if allowed.is_empty() {
        Hit::NotFound
    } else {
        Hit::NotAllowed(allowed.join(", "))
    }
}

/// A small deterministic generator (xorshift64*): the cases are the same on
/// every run, and a failure prints the seed's case.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const LITS: [&str; 3] = ["a", "b", "c"];

fn gen_route(g: &mut Gen) -> GenRoute {
    let method = match g.below(3) {
        0 => None,
        1 => Some(Method::Get),
        _ => Some(Method::Post),
    };
    let n = g.below(4) as usize;
    let segs = (0..n)
        .map(|_| {
            if g.below(3) == 0 {
                Seg::Param
            } else {
                Seg::Lit(LITS[g.below(3) as usize])
            }
        })
        .collect::<Vec<_>>();
    // A route needs a path: no segments and no greedy rest is `/`, which
    // the generated request paths (one segment at least) never hit; keep it.
    GenRoute {
        method,
        segs,
        greedy: g.below(4) == 0,
    }
}

#[test]
fn lookups_agree_with_a_plain_reference_of_the_precedence_rules() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    let mut built = 0;
    for case in 0..3000 {
        let n = 1 + g.below(7) as usize;
        let mut routes: Vec<GenRoute> = Vec::new();
        for _ in 0..n {
            let r = gen_route(&mut g);
            if !routes
                .iter()
                .any(|o| o.method == r.method && o.same_path(&r))
            {
                routes.push(r);
            }
        }
        let default = g.below(4) == 0;
        let mut keys: Vec<String> = routes.iter().map(GenRoute::key).collect();
        if default {
            keys.push("$default".to_string());
        }
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let t = match RouteTable::build(&[api("t", None, "/", &key_refs, 0)]) {
            Ok(t) => t,
            Err(e) => panic!("case {case}: {keys:?} did not build: {e:?}"),
        };
        built += 1;
        for _ in 0..20 {
            let len = 1 + g.below(4) as usize;
            let path: Vec<&str> = (0..len).map(|_| LITS[g.below(3) as usize]).collect();
            let method = match g.below(4) {
                0 => Method::Get,
                1 => Method::Post,
                2 => Method::Head,
                _ => Method::Put,
            };
            let raw = format!("/{}", path.join("/"));
            let got = match hit(&t, None, method, &raw) {
                Hit::Found(id, _) => Hit::Found(id, Vec::new()),
                other => other,
            };
            let want = reference(&routes, default, method, &path);
            assert_eq!(got, want, "case {case}: routes {keys:?}, {method:?} {raw}");
            checked += 1;
        }
    }
    assert_eq!(built, 3000);
    assert_eq!(checked, 60_000);
}
