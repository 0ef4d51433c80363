//! API keys over real sockets, against the real binary: `coregate keys
//! create|list|revoke` make and edit a keys file (the key is printed once,
//! never listed, never stored in clear); a gateway serving that file takes a
//! valid key (200, the backend sees the request without `x-api-key`) and
//! refuses a missing, unknown, malformed, revoked or doubled key with 403
//! `{"message":"Forbidden"}` without reaching the backend; `api_key_required`
//! on an API and its override on a route; inline `[[api_keys]]`; config
//! errors through `coregate check`.

mod support;

use std::path::{Path, PathBuf};
use support::*;

/// Runs `coregate keys ARGS` and returns (exit code, stdout, stderr).
fn keys(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    let out = run_coregate(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates key `name` in `file` and returns the full key from stdout.
fn create(file: &Path, name: &str) -> String {
    let (code, out, err) = keys(&["create", "--file", file.to_str().unwrap(), "--name", name]);
    assert_eq!(code, 0, "keys create {name}: {out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is the key alone: {out:?}");
    let key = lines[0].to_string();
    assert!(
        key.starts_with("cg_") && key.len() == 80,
        "key shape: {key:?}"
    );
    key
}

fn keys_file() -> PathBuf {
    let p = temp_path("keys.toml");
    let _ = std::fs::remove_file(&p);
    p
}

/// A gateway with one proxied and one mock route per API:
/// `/locked` requires a key (API default), `/open` overrides it off,
/// `/free/...` is an API without keys, `/route-only` requires one on the route.
fn config(backend: &Backend, keys_line: &str, extra: &str) -> String {
    fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2
@KEYS@

[[apis]]
name = "locked"
base_path = "/locked"
api_key_required = true

[[apis.routes]]
key = "GET /proxied"
integration = { type = "http_proxy", url = "http://@B@/seen" }

[[apis.routes]]
key = "GET /mock"
integration = { type = "mock", body = 'mock ok' }

[[apis.routes]]
key = "GET /open"
api_key_required = false
integration = { type = "http_proxy", url = "http://@B@/open" }

[[apis]]
name = "free"
base_path = "/free"

[[apis.routes]]
key = "GET /proxied"
integration = { type = "http_proxy", url = "http://@B@/free" }

[[apis.routes]]
key = "GET /route-only"
api_key_required = true
integration = { type = "http_proxy", url = "http://@B@/route-only" }
@EXTRA@
"#,
        &[
            ("B", backend.addr_str()),
            ("KEYS", keys_line.to_string()),
            ("EXTRA", extra.to_string()),
        ],
    )
}

fn get_with_key(gw: &Gateway, path: &str, key: Option<&str>) -> Response {
    let extra = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
    gw.client()
        .request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").as_bytes())
}

fn assert_forbidden(r: &Response, what: &str) {
    let msg = assert_json_error(r, 403);
    assert_eq!(msg, "Forbidden", "{what}: {r:?}");
    assert_eq!(r.text(), r#"{"message":"Forbidden"}"#, "{what}");
}

fn echo_header<'a>(e: &'a Echo, name: &str) -> Option<&'a str> {
    e.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn keys_commands_print_once_list_without_secrets_and_store_only_hashes() {
    let file = keys_file();
    let f = file.to_str().unwrap();
    let alice = create(&file, "alice");
    let (code, out, err) = keys(&[
        "create",
        "--file",
        f,
        "--name",
        "bob",
        "--usage-plan",
        "gold",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let bob = out.trim().to_string();
    assert!(
        err.contains("shown this once"),
        "a note says the key is not shown again: {err}"
    );
    assert_ne!(alice, bob);

    let text = std::fs::read_to_string(&file).unwrap();
    for k in [&alice, &bob] {
        let secret = &k[16..];
        assert!(!text.contains(secret), "the file holds a secret:\n{text}");
        assert!(text.contains(&k[3..15]), "the file holds the id:\n{text}");
    }
    assert_eq!(text.matches("hash = \"sha256$").count(), 2, "{text}");

    let (code, out, err) = keys(&["list", "--file", f]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("alice") && out.contains("bob") && out.contains("gold"));
    assert!(out.contains(&alice[3..15]), "list shows ids: {out}");
    for k in [&alice, &bob] {
        assert!(!out.contains(&k[16..]), "list shows a secret: {out}");
    }
    assert!(!out.contains("sha256"), "list shows a hash: {out}");

    // Duplicate name, unknown name, missing file: exit 1, file unchanged.
    let (code, _, err) = keys(&["create", "--file", f, "--name", "alice"]);
    assert_eq!(code, 1, "duplicate name: {err}");
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = keys(&["revoke", "--file", f, "--name", "nobody"]);
    assert_eq!(code, 1, "unknown name: {err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    let missing = keys_file();
    let (code, _, _) = keys(&["list", "--file", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "missing file");
    // Usage errors: exit 2.
    assert_eq!(keys(&["list"]).0, 2);
    assert_eq!(keys(&["create", "--file", f]).0, 2);
    assert_eq!(keys(&["frobnicate", "--file", f]).0, 2);
    assert_eq!(keys(&[]).0, 2);

    let (code, out, err) = keys(&["revoke", "--file", f, "--name", "bob"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = keys(&["list", "--file", f]);
    let bob_line = out.lines().find(|l| l.starts_with("bob")).unwrap();
    let alice_line = out.lines().find(|l| l.starts_with("alice")).unwrap();
    assert!(bob_line.contains("false"), "{out}");
    assert!(alice_line.contains("true"), "{out}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_gateway_takes_valid_keys_and_refuses_the_rest_before_the_backend() {
    let file = keys_file();
    let alice = create(&file, "alice");
    let bob = create(&file, "bob");
    let (code, _, _) = keys(&["revoke", "--file", file.to_str().unwrap(), "--name", "bob"]);
    assert_eq!(code, 0);
    let b = Backend::start(Reply::Echo);
    let gw = Gateway::start(&config(
        &b,
        &format!("api_keys_file = {:?}", file.to_str().unwrap()),
        "",
    ));

    let r = get_with_key(&gw, "/locked/proxied", Some(&alice));
    let echo = r.echo();
    assert_eq!(echo.target, "/seen");
    assert_eq!(
        echo_header(&echo, "x-api-key"),
        None,
        "the key must not reach the backend: {:?}",
        echo.headers
    );
    assert_eq!(b.hits(), 1);
    let r = get_with_key(&gw, "/locked/mock", Some(&alice));
    assert_eq!((r.status, r.text().as_str()), (200, "mock ok"));

    let mut unknown = alice.clone();
    // Another id: flip one id digit.
    let c = if &unknown[3..4] == "0" { "1" } else { "0" };
    unknown.replace_range(3..4, c);
    let mut wrong_secret = alice.clone();
    let c = if alice.ends_with('0') { "1" } else { "0" };
    wrong_secret.replace_range(79..80, c);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("empty", Some(String::new())),
        ("unknown id", Some(unknown)),
        ("wrong secret", Some(wrong_secret)),
        ("malformed", Some("cg_hello".into())),
        ("upper case", Some(alice.to_uppercase())),
        ("revoked", Some(bob.clone())),
    ];
    for path in ["/locked/proxied", "/locked/mock"] {
        for (what, key) in &cases {
            let r = get_with_key(&gw, path, key.as_deref());
            assert_forbidden(&r, &format!("{what} on {path}"));
        }
    }
    // Two x-api-key headers, even if one is valid.
    let r = gw.client().request(
        format!(
            "GET /locked/proxied HTTP/1.1\r\nHost: test\r\nx-api-key: {alice}\r\nx-api-key: {alice}\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_forbidden(&r, "two headers");
    assert_eq!(b.hits(), 1, "a refused request reached the backend");

    // A keep-alive connection carries on after a 403.
    let mut c = gw.client();
    let r = c.request(b"GET /locked/mock HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_forbidden(&r, "first on the connection");
    let r = c.request(
        format!("GET /locked/mock HTTP/1.1\r\nHost: test\r\nX-Api-Key: {alice}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200, "header names are case-insensitive: {r:?}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn api_default_and_route_override() {
    let file = keys_file();
    let alice = create(&file, "alice");
    let b = Backend::start(Reply::Echo);
    let gw = Gateway::start(&config(
        &b,
        &format!("api_keys_file = {:?}", file.to_str().unwrap()),
        "",
    ));
    // The API requires keys, this route opts out.
    let r = get_with_key(&gw, "/locked/open", None);
    assert_eq!(r.echo().target, "/open");
    // On a route that does not check keys, the header is the backend's
    // business and is forwarded.
    let r = get_with_key(&gw, "/locked/open", Some("whatever"));
    assert_eq!(echo_header(&r.echo(), "x-api-key"), Some("whatever"));
    // An API without keys, and its one route that requires one.
    let r = get_with_key(&gw, "/free/proxied", None);
    assert_eq!(r.echo().target, "/free");
    let hits = b.hits();
    assert_forbidden(&get_with_key(&gw, "/free/route-only", None), "route-only");
    assert_eq!(b.hits(), hits);
    let r = get_with_key(&gw, "/free/route-only", Some(&alice));
    assert_eq!(r.echo().target, "/route-only");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn inline_keys_and_a_relative_keys_file() {
    // Make two keys in a scratch file, then use one inline (copying its
    // entry) and the other through a relative path next to the config.
    let dir = temp_path("dir");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let scratch = dir.join("scratch.toml");
    let inline_key = create(&scratch, "inline-one");
    let text = std::fs::read_to_string(&scratch).unwrap();
    let entry = text.split("[[keys]]").nth(1).expect("an entry").to_string();
    let file_path = dir.join("keys/k.toml");
    let file_key = create(&file_path, "from-file");

    let b = Backend::start(Reply::Echo);
    let toml = config(
        &b,
        "api_keys_file = \"keys/k.toml\"",
        &format!("\n[[api_keys]]\n{entry}"),
    );
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, &toml).unwrap();
    // Started from another working directory: the path is taken from the
    // config file's directory.
    let gw = Gateway::spawn(
        &[
            "serve".into(),
            "--config".into(),
            cfg.clone().into_os_string(),
        ],
        Some(Path::new("/")),
        1,
        cfg,
        &toml,
    );
    for k in [&inline_key, &file_key] {
        let r = get_with_key(&gw, "/locked/proxied", Some(k));
        assert_eq!(r.echo().target, "/seen");
    }
    assert_forbidden(&get_with_key(&gw, "/locked/proxied", None), "none");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `coregate check` on `toml` and returns its stderr, asserting exit 1.
fn check_fails(toml: &str) -> String {
    let path = write_config(toml);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "check should fail:\n{toml}\n{err}"
    );
    err
}

const GOOD_HASH: &str =
    "sha256$00112233445566778899aabbccddeeff$00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn inline_key(name: &str, id: &str, hash: &str) -> String {
    format!("\n[[api_keys]]\nname = {name:?}\nid = {id:?}\nhash = {hash:?}\n")
}

#[test]
fn config_errors_name_the_key() {
    let b = Backend::start(Reply::Echo);
    let good = config(&b, "", &inline_key("a", "0123456789ab", GOOD_HASH));
    let path = write_config(&good);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dup_name = format!(
        "{}{}",
        inline_key("a", "0123456789ab", GOOD_HASH),
        inline_key("a", "0123456789ac", GOOD_HASH)
    );
    let err = check_fails(&config(&b, "", &dup_name));
    assert!(
        err.contains("api_keys[1].name") && err.contains("used twice"),
        "{err}"
    );

    let dup_id = format!(
        "{}{}",
        inline_key("a", "0123456789ab", GOOD_HASH),
        inline_key("b", "0123456789ab", GOOD_HASH)
    );
    let err = check_fails(&config(&b, "", &dup_id));
    assert!(err.contains("api_keys[1].id"), "{err}");

    let bad_hash = inline_key("a", "0123456789ab", "sha256$zz$00");
    let err = check_fails(&config(&b, "", &bad_hash));
    assert!(
        err.contains("api_keys[0].hash") && err.contains("\"a\""),
        "the error names the key: {err}"
    );
    let clear = inline_key("a", "0123456789ab", "cg_0123456789ab_00");
    let err = check_fails(&config(&b, "", &clear));
    assert!(err.contains("api_keys[0].hash"), "{err}");

    let bad_id = inline_key("a", "XYZ", GOOD_HASH);
    let err = check_fails(&config(&b, "", &bad_id));
    assert!(err.contains("api_keys[0].id"), "{err}");

    let missing = temp_path("missing.toml");
    let err = check_fails(&config(
        &b,
        &format!("api_keys_file = {:?}", missing.to_str().unwrap()),
        "",
    ));
    assert!(
        err.contains("server.api_keys_file") && err.contains("cannot read"),
        "{err}"
    );

    // A bad entry in the keys file names the file and the entry.
    let file = keys_file();
    std::fs::write(
        &file,
        "[[keys]]\nname = \"x\"\nid = \"0123456789ab\"\nhash = \"sha256$00$00\"\n",
    )
    .unwrap();
    let err = check_fails(&config(
        &b,
        &format!("api_keys_file = {:?}", file.to_str().unwrap()),
        "",
    ));
    assert!(
        err.contains("keys[0].hash") && err.contains(file.to_str().unwrap()),
        "{err}"
    );
    let _ = std::fs::remove_file(&file);

    // Requiring a key with no keys anywhere.
    let err = check_fails(&config(&b, "", ""));
    assert!(err.contains("api_key_required"), "{err}");

    // Unknown fields in an inline key.
    let err = check_fails(&config(
        &b,
        "",
        &format!(
            "{}secret = \"x\"\n",
            inline_key("a", "0123456789ab", GOOD_HASH)
        ),
    ));
    assert!(err.contains("api_keys[0].secret"), "{err}");
}
