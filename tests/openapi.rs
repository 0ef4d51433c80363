//! `coregate openapi import|export` over the real binary: public OpenAPI
//! documents we did not write (tests/fixtures/openapi/, each with its
//! licence) are imported, checked with `coregate check`, served, and sent
//! requests through to a real backend; bad documents get an error with its
//! JSON pointer, never a crash; an exported document is validated by
//! `openapi-spec-validator` (PyPI; scripts/test installs it) and imported
//! again to give back the same routes and integrations.
//!
//! Unwraps and expects: a failed step fails the test, with its message.

mod support;

use coregate::config::raw::{RawConfig, RawIntegration};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openapi");

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

fn scratch(tag: &str) -> PathBuf {
    let dir = temp_path(tag);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Imports `args` (the document first) into `out`, expecting exit 0.
fn import_ok(args: &[&str], out: &Path) -> String {
    let mut all = vec!["openapi", "import"];
    all.extend_from_slice(args);
    let out_s = out.display().to_string();
    all.extend_from_slice(&["--out", &out_s]);
    let o = run_coregate(&all);
    assert_eq!(o.status.code(), Some(0), "import {args:?}: {}", stderr(&o));
    stderr(&o)
}

fn check_ok(path: &Path) {
    let o = run_coregate(&["check", "--config", &path.display().to_string()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "check {}: {}{}",
        path.display(),
        stdout(&o),
        stderr(&o)
    );
}

/// The imported file as the test gateway serves it: unpinned shards need a
/// `[server]` table to be added to, and the test listens on a port of its
/// own (an imported config has no `listen`: its default, 127.0.0.1:8080,
/// would be shared by the tests that run at the same time).
fn servable(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = if text.contains("[server]\n") {
        text
    } else {
        format!("[server]\n{text}")
    };
    if text.contains("\nlisten = ") {
        text
    } else {
        text.replacen("[server]\n", "[server]\nlisten = [\"127.0.0.1:0\"]\n", 1)
    }
}

fn send(gw: &Gateway, raw: &str) -> Response {
    Client::connect(gw.addr()).request(raw.as_bytes())
}

#[test]
fn the_oai_petstore_is_imported_checked_and_served_through_a_real_backend() {
    let dir = scratch("openapi-petstore");
    let backend = Backend::start(Reply::fixed(200, &[], "from the backend"));
    let out = dir.join("petstore.toml");
    let up = format!("http://{}", backend.addr_str());
    let log = import_ok(
        &[
            &fixture("petstore.yaml"),
            "--upstream",
            &up,
            "--base-path",
            "split",
        ],
        &out,
    );
    assert!(log.contains("0 error(s), 0 warning(s)"), "{log}");
    check_ok(&out);
    let gw = Gateway::start(&servable(&out));
    let r = send(
        &gw,
        "GET /v1/pets/7 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "from the backend");
    let r = send(
        &gw,
        "GET /v1/pets?limit=2 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let r = send(
        &gw,
        "POST /v1/pets HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    );
    assert_eq!(r.status, 200);
    // Only GET and POST are described for /pets.
    let r = send(
        &gw,
        "PUT /v1/pets HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(
        backend.requests(),
        ["GET /pets/7", "GET /pets?limit=2", "POST /pets"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_oai_example_imports_in_every_base_path_mode_and_passes_check() {
    let dir = scratch("openapi-examples");
    for doc in [
        "petstore.yaml",
        "petstore-expanded.yaml",
        "uspto.yaml",
        "api-with-examples.yaml",
    ] {
        for mode in ["ignore", "prepend", "split"] {
            let out = dir.join(format!("{doc}-{mode}.toml"));
            import_ok(
                &[
                    &fixture(doc),
                    "--upstream",
                    "http://127.0.0.1:9",
                    "--base-path",
                    mode,
                ],
                &out,
            );
            check_ok(&out);
            let text = std::fs::read_to_string(&out).unwrap();
            match (doc, mode) {
                ("uspto.yaml", "split") => assert!(text.contains("base_path = \"/ds-api\"")),
                ("uspto.yaml", "prepend") => {
                    assert!(text.contains("key = \"GET /ds-api/{dataset}/{version}/fields\""))
                }
                ("petstore.yaml", "ignore") => {
                    assert!(text.contains("key = \"GET /pets/{petId}\""));
                    assert!(!text.contains("base_path"));
                }
                _ => {}
            }
        }
        // Without --upstream each operation answers 501 and says so.
        let out = dir.join(format!("{doc}-mock.toml"));
        let log = import_ok(&[&fixture(doc)], &out);
        assert!(log.contains("answers 501"), "{log}");
        check_ok(&out);
        // ... which --fail-on-warnings refuses, writing nothing.
        let refused = dir.join(format!("{doc}-refused.toml"));
        let o = run_coregate(&[
            "openapi",
            "import",
            &fixture(doc),
            "--fail-on-warnings",
            "--out",
            &refused.display().to_string(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(!refused.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn twilio_basic_auth_operations_are_left_out_never_served_open() {
    // Every operation of this public description asks for HTTP basic
    // authentication, which coregate cannot enforce.
    let o = run_coregate(&[
        "openapi",
        "import",
        &fixture("twilio_studio_v2.yaml"),
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(stdout(&o).is_empty());
    assert!(
        err.contains("warning: /components/securitySchemes/accountSid_authToken: security scheme type \"http\""),
        "{err}"
    );
    assert!(
        err.contains("warning: /paths/~1v2~1Flows/get: route \"GET /v2/Flows\" left out"),
        "{err}"
    );
    assert!(
        err.contains("info: /paths/~1v2~1Flows/servers: not supported"),
        "{err}"
    );
    assert!(
        err.contains("error: /paths: no operation could be imported"),
        "{err}"
    );
}

#[test]
fn bad_documents_get_an_error_with_its_pointer_and_no_config() {
    let dir = scratch("openapi-bad");
    let head = "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n";
    let huge = format!(
        "{head}x-pad: \"{}\"\npaths: {{}}\n",
        "a".repeat(17 * 1024 * 1024)
    );
    let deep = format!(
        "{{\"openapi\":\"3.0.3\",\"x\":{}{}}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "swagger",
            "swagger: '2.0'\ninfo: {title: t, version: '1'}\npaths: {}\n".into(),
            "error: /swagger: Swagger 2.0 is not imported",
        ),
        ("yaml", "openapi: [3.0\n".into(), "error: (document): malformed YAML"),
        ("json", "{\"openapi\": \"3.0.0\",".into(), "error: (document): malformed JSON"),
        ("version", "openapi: 4.0.0\n".into(), "error: /openapi: OpenAPI \"4.0.0\""),
        ("scalar", "just a string\n".into(), "error: (document): the document is not"),
        (
            "dangling",
            format!("{head}paths:\n  /a:\n    get:\n      responses:\n        '200': {{$ref: '#/components/responses/Nope'}}\n"),
            "error: /paths/~1a/get/responses/200/$ref: $ref \"#/components/responses/Nope\" does not resolve",
        ),
        (
            "external",
            format!("{head}paths:\n  /a: {{$ref: 'other.yaml#/paths/a'}}\n"),
            "error: /paths/~1a/$ref: $ref \"other.yaml#/paths/a\" does not resolve",
        ),
        (
            "cycle",
            format!("{head}paths:\n  /a: {{$ref: '#/components/pathItems/b'}}\ncomponents:\n  pathItems:\n    b: {{$ref: '#/components/pathItems/c'}}\n    c: {{$ref: '#/components/pathItems/b'}}\n"),
            "cycle of references",
        ),
        ("huge", huge, "at most 16777216 are read"),
        ("deep", deep, "error: (document): malformed JSON"),
    ];
    for (tag, text, expect) in cases {
        let file = dir.join(format!("{tag}.yaml"));
        std::fs::write(&file, text).unwrap();
        let o = run_coregate(&["openapi", "import", &file.display().to_string()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{tag}: {err}");
        assert!(err.contains(expect), "{tag}: wanted {expect:?} in:\n{err}");
        assert!(stdout(&o).is_empty(), "{tag}: a config was written");
    }
    // Usage errors exit 2; --help exits 0.
    for args in [
        &["openapi", "import"][..],
        &["openapi", "import", "x.yaml", "--base-path", "sideways"],
        &["openapi", "import", "x.yaml", "--bogus"],
        &["openapi", "frobnicate"],
        &["openapi", "export", "--config", "c.toml"],
        &["openapi", "export", "--api", "a", "--format", "xml"],
    ] {
        let o = run_coregate(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let o = run_coregate(&["openapi", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("coregate openapi import FILE"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A document with AWS's extensions, as API Gateway users write them.
const AWS_DOC: &str = r##"
openapi: "3.0.1"
info: { title: shop, version: "2024-01-01" }
x-amazon-apigateway-importexport-version: "1.0"
x-amazon-apigateway-cors:
  allowOrigins: ["https://app.example.com"]
  allowMethods: ["GET", "POST"]
  allowHeaders: ["content-type", "x-api-key"]
  maxAge: 300
x-amazon-apigateway-binary-media-types: ["image/png"]
servers:
  - url: "https://{host}/{basePath}"
    variables:
      host: { default: shop.example.com }
      basePath: { default: prod }
components:
  securitySchemes:
    key: { type: apiKey, name: x-api-key, in: header }
    users:
      type: openIdConnect
      openIdConnectUrl: https://login.example.com/.well-known/openid-configuration
paths:
  /items/{id}:
    get:
      x-amazon-apigateway-integration:
        type: HTTP_PROXY
        httpMethod: GET
        uri: http://@BACKEND@/v2/items/{id}
        payloadFormatVersion: "1.0"
        connectionType: INTERNET
        timeoutInMillis: 5000
      responses: { "200": { description: ok } }
    post:
      security: [ { key: [] } ]
      x-amazon-apigateway-integration: { type: http_proxy, httpMethod: ANY, uri: "http://@BACKEND@/v2/items/{id}" }
      responses: { "200": { description: ok } }
    delete:
      security: [ { users: [ "items/write" ] } ]
      x-amazon-apigateway-integration: { type: http_proxy, uri: "http://@BACKEND@/v2/items/{id}" }
      responses: { "200": { description: ok } }
  /files/{proxy+}:
    x-amazon-apigateway-any-method:
      x-amazon-apigateway-integration: { type: http_proxy, uri: "http://@BACKEND@/static/{proxy}" }
      responses: { default: { description: ok } }
  /legacy:
    get:
      x-amazon-apigateway-integration: { type: AWS_PROXY, uri: "arn:aws:lambda:..." }
      responses: { default: { description: ok } }
  /report.{format}:
    get:
      responses: { default: { description: ok } }
"##;

#[test]
fn aws_extensions_are_imported_and_served() {
    let dir = scratch("openapi-aws");
    let backend = Backend::start(Reply::fixed(200, &[], "b"));
    let doc = dir.join("shop.yaml");
    std::fs::write(&doc, fill(AWS_DOC, &[("BACKEND", backend.addr_str())])).unwrap();
    let out = dir.join("shop.toml");
    let log = import_ok(
        &[
            &doc.display().to_string(),
            "--base-path",
            "split",
            "--upstream",
            &format!("http://{}", backend.addr_str()),
        ],
        &out,
    );
    for want in [
        "info: /x-amazon-apigateway-binary-media-types: not supported",
        "info: /paths/~1items~1{id}/get/x-amazon-apigateway-integration/timeoutInMillis: 5000",
        "warning: /components/securitySchemes/users: JWT authorizer \"users\" is a skeleton",
        "warning: /paths/~1legacy/get/x-amazon-apigateway-integration/type: integration type \"aws_proxy\" is not supported",
        "warning: /paths/~1report.{format}/get: cannot be a coregate route",
        "created ",
    ] {
        assert!(log.contains(want), "wanted {want:?} in:\n{log}");
    }
    check_ok(&out);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("base_path = \"/prod\""), "{text}");
    assert!(text.contains("key = \"ANY /files/{proxy+}\""), "{text}");
    assert!(
        text.contains("issuer = \"https://login.example.com\""),
        "{text}"
    );

    // A key for the API-key route, in the keys file the import made.
    let keys = dir.join("api-keys.toml");
    let key = create_key(&keys, "tester", None);
    let served = servable(&out).replace(
        "api_keys_file = \"api-keys.toml\"",
        &format!("api_keys_file = {:?}", keys.display().to_string()),
    );
    let gw = Gateway::start(&served);
    let get = |path: &str, extra: &str| {
        send(
            &gw,
            &format!("GET {path} HTTP/1.1\r\nhost: t\r\n{extra}connection: close\r\n\r\n"),
        )
    };
    assert_eq!(get("/prod/items/5", "").status, 200);
    assert_eq!(get("/prod/files/a/b.txt", "").status, 200);
    let post = |extra: &str| {
        send(
            &gw,
            &format!("POST /prod/items/5 HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n{extra}connection: close\r\n\r\n"),
        )
    };
    assert_eq!(post("").status, 403, "the key scheme is enforced");
    assert_eq!(post(&format!("x-api-key: {key}\r\n")).status, 200);
    // The skeleton JWT authorizer refuses until the operator completes it.
    let r = send(
        &gw,
        "DELETE /prod/items/5 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // CORS from x-amazon-apigateway-cors.
    let r = send(
        &gw,
        "OPTIONS /prod/items/5 HTTP/1.1\r\nhost: t\r\norigin: https://app.example.com\r\naccess-control-request-method: POST\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        backend.requests(),
        ["GET /v2/items/5", "GET /static/a/b.txt", "POST /v2/items/5"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs openapi-spec-validator on `file`; panics with its report when the
/// document is invalid or the validator is missing (scripts/test installs
/// it).
fn validate(file: &Path) {
    let o = Command::new("python3")
        .args([
            "-c",
            "import sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.readers import read_from_filename\n\
             spec, _ = read_from_filename(sys.argv[1])\n\
             validate(spec)\n\
             print('valid')",
        ])
        .arg(file)
        .output()
        .expect("python3 (scripts/test installs it)");
    assert!(
        o.status.success() && stdout(&o).contains("valid"),
        "openapi-spec-validator refused {} (or is not installed: run scripts/test):\n{}{}",
        file.display(),
        stdout(&o),
        stderr(&o)
    );
}

const EXPORT_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
api_keys_file = "@KEYS@"

[[upstreams]]
name = "pets"
targets = [{ address = "@BACKEND@" }]
timeout_ms = 5000

[[authorizers]]
name = "cognito"
[authorizers.jwt]
issuer = "https://issuer.example.com"
audience = ["my-api"]
jwks_url = "https://issuer.example.com/.well-known/jwks.json"

[[apis]]
name = "pets-api"
base_path = "/v1"
cors = { allow_origins = ["https://app.example.com"], allow_methods = ["GET", "POST"], max_age = 600, allow_credentials = true }

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://pets/internal/pets/{id}?view=public" }

[[apis.routes]]
key = "POST /pets"
api_key_required = true
integration = { type = "http_proxy", url = "http://pets/pets" }

[[apis.routes]]
key = "DELETE /pets/{id}"
authorizer = "cognito"
authorization_scopes = ["pets/write"]
integration = { type = "http_proxy", url = "http://@BACKEND@/pets/{id}" }

[[apis.routes]]
key = "ANY /files/{proxy+}"
integration = { type = "http_proxy", url = "http://pets/static/{proxy}" }

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", status = 200, headers = { "content-type" = "application/json" }, body = '{"ok":true}' }

[[apis.routes]]
key = "$default"
integration = { type = "mock", status = 404, body = "nope" }

[[apis]]
name = "other"
base_path = "/other"

[[apis.routes]]
key = "GET /x"
integration = { type = "mock", body = "x" }
"#;

/// What import(export(x)) must give back of one API: each route's key,
/// integration and security, the base path, the CORS settings, and the
/// upstreams the routes name.
fn shape(raw: &RawConfig, api: &str) -> Vec<String> {
    let a = raw.apis.iter().find(|a| a.name == api).unwrap();
    let mut out: Vec<String> = a
        .routes
        .iter()
        .map(|r| {
            let integration = match &r.integration {
                RawIntegration::HttpProxy { url } => format!("proxy {url}"),
                RawIntegration::Mock {
                    status,
                    headers,
                    body,
                } => format!("mock {status:?} {headers:?} {body}"),
                RawIntegration::Http { url, timeout_ms } => format!("http {url} {timeout_ms:?}"),
            };
            format!(
                "{} | {integration} | key {:?} | auth {:?} {:?}",
                r.key,
                r.api_key_required.unwrap_or(false),
                r.authorizer,
                r.authorization_scopes
            )
        })
        .collect();
    out.sort();
    out.push(format!("base_path {:?}", a.base_path));
    out.push(format!("cors {:?}", a.cors));
    for u in &raw.upstreams {
        let targets: Vec<_> = u.targets.iter().map(|t| &t.address).collect();
        out.push(format!(
            "upstream {} {targets:?} {:?}",
            u.name, u.timeout_ms
        ));
    }
    out
}

#[test]
fn an_export_is_valid_openapi_and_imports_back_to_the_same_routes() {
    let dir = scratch("openapi-export");
    let backend = Backend::start(Reply::fixed(200, &[], "b"));
    let keys = dir.join("keys.toml");
    let key = create_key(&keys, "tester", None);
    let config_text = fill(
        EXPORT_CONFIG,
        &[
            ("BACKEND", backend.addr_str()),
            ("KEYS", keys.display().to_string()),
        ],
    );
    let config = dir.join("gw.toml");
    std::fs::write(&config, &config_text).unwrap();
    let c = config.display().to_string();
    let export = |extra: &[&str]| {
        let mut args = vec!["openapi", "export", "--config", &c, "--api", "pets-api"];
        args.extend_from_slice(extra);
        let o = run_coregate(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let json = dir.join("pets.json");
    std::fs::write(&json, export(&[])).unwrap();
    let yaml = dir.join("pets.yaml");
    std::fs::write(&yaml, export(&["--format", "yaml"])).unwrap();
    let plain = dir.join("plain.json");
    std::fs::write(&plain, export(&["--no-extensions"])).unwrap();
    for f in [&json, &yaml, &plain] {
        validate(f);
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["openapi"], "3.0.1");
    assert_eq!(doc["servers"][0]["url"], "/v1");
    assert_eq!(
        doc["paths"]["/pets/{id}"]["get"]["x-amazon-apigateway-integration"]["uri"],
        "http://pets/internal/pets/{id}?view=public"
    );
    assert_eq!(
        doc["paths"]["/pets"]["post"]["security"][0]["api_key"],
        serde_json::json!([])
    );
    let plain_text = std::fs::read_to_string(&plain).unwrap();
    assert!(!plain_text.contains("x-amazon"), "{plain_text}");
    assert!(!plain_text.contains("x-coregate"), "{plain_text}");

    // import(export(x)): the same routes, integrations, security, CORS.
    let original = coregate::config::parse(&config_text).unwrap();
    for (n, exported) in [&json, &yaml].into_iter().enumerate() {
        let out = dir.join(format!("back-{n}.toml"));
        let log = import_ok(
            &[
                &exported.display().to_string(),
                "--base-path",
                "split",
                "--api-keys-file",
                &keys.display().to_string(),
            ],
            &out,
        );
        assert!(log.contains("0 error(s), 0 warning(s)"), "{log}");
        check_ok(&out);
        let back_text = std::fs::read_to_string(&out).unwrap();
        let back = coregate::config::parse(&back_text).unwrap();
        assert_eq!(shape(&back, "pets-api"), shape(&original, "pets-api"));
        // And it serves: through the upstream, with the key.
        if n == 0 {
            let gw = Gateway::start(&servable(&out));
            let r = send(
                &gw,
                "GET /v1/pets/3 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
            );
            assert_eq!(r.status, 200);
            let r = send(
                &gw,
                &format!("POST /v1/pets HTTP/1.1\r\nhost: t\r\nx-api-key: {key}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
            );
            assert_eq!(r.status, 200);
            let r = send(
                &gw,
                "GET /v1/health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
            );
            assert_eq!(r.text(), "{\"ok\":true}");
            assert_eq!(
                backend.requests(),
                ["GET /internal/pets/3?view=public", "POST /pets"]
            );
        }
    }

    // The admin listener serves the same document for the running config.
    let gw = Gateway::start(&config_text);
    let r = call(agent().get(&gw.admin_url("/openapi?api=pets-api")), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let served: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(served, doc);
    let r = call(
        agent().get(&gw.admin_url("/openapi?api=pets%2Dapi&extensions=false")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("x-amazon"), "{}", r.text());
    let r = call(agent().get(&gw.admin_url("/openapi?api=nope")), None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = call(agent().get(&gw.admin_url("/openapi")), None);
    assert_eq!(r.status, 400, "{}", r.text());
    drop(gw);

    // An API that is not in the config, and a config that fails its check.
    let o = run_coregate(&["openapi", "export", "--config", &c, "--api", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no api named \"nope\""),
        "{}",
        stderr(&o)
    );
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[[apis]]\nname = \"a\"\n").unwrap();
    let o = run_coregate(&[
        "openapi",
        "export",
        "--config",
        &broken.display().to_string(),
        "--api",
        "a",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// OpenAPI describes HTTP APIs: exporting a WebSocket API is refused with
/// the reason, not written as an empty or wrong document.
#[test]
fn a_websocket_api_is_not_exported() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("config/websocket-example.toml");
    let out = run_coregate(&[
        "openapi",
        "export",
        "--config",
        config.to_str().unwrap(),
        "--api",
        "chat",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("WebSocket API"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

const SDK_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
api_keys_file = "@KEYS@"

[[apis]]
name = "pets"
base_path = "/v1"
api_key_required = true

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://@BACKEND@/pets/{id}" }

[[apis.routes]]
key = "POST /pets"
integration = { type = "http_proxy", url = "http://@BACKEND@/pets" }

[[apis.routes]]
key = "GET /files/{proxy+}"
integration = { type = "http_proxy", url = "http://@BACKEND@/static/{proxy}" }

[[apis.routes]]
key = "GET /health"
api_key_required = false
integration = { type = "mock", status = 200, headers = { "content-type" = "application/json" }, body = '{"ok":true}' }
"#;

/// The client SDK: `openapi-python-client` (PyPI; scripts/test installs
/// it), a generator we did not write, makes a Python client from the
/// document the admin listener exports (`--no-extensions`, the form for SDK
/// generators), without a warning; the test then calls the running gateway
/// through that client, with the API key and without it.
#[test]
fn a_python_client_generated_from_the_export_calls_the_gateway_with_its_api_key() {
    let dir = scratch("openapi-sdk");
    let backend = Backend::start(Reply::fixed(
        200,
        &[("content-type", "application/json")],
        "{\"name\":\"rex\"}",
    ));
    let keys = dir.join("keys.toml");
    let key = create_key(&keys, "sdk", None);
    let config = fill(
        SDK_CONFIG,
        &[
            ("BACKEND", backend.addr_str()),
            ("KEYS", keys.display().to_string()),
        ],
    );
    let gw = Gateway::start(&config);
    let r = call(
        agent().get(&gw.admin_url("/openapi?api=pets&extensions=false")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = dir.join("pets.json");
    std::fs::write(&doc, &r.body).unwrap();
    validate(&doc);
    // The CLI writes the same document.
    let file = dir.join("gw.toml");
    std::fs::write(&file, &config).unwrap();
    let o = run_coregate(&[
        "openapi",
        "export",
        "--config",
        &file.display().to_string(),
        "--api",
        "pets",
        "--no-extensions",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let cli: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let served: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(cli, served);
    // A greedy parameter is a plain one in this form.
    assert!(
        served["paths"]["/files/{proxy}"]["get"].is_object(),
        "{served}"
    );

    let sdk = dir.join("sdk");
    let o = Command::new("python3")
        .args(["-m", "openapi_python_client", "generate", "--path"])
        .arg(&doc)
        .arg("--output-path")
        .arg(&sdk)
        .output()
        .expect("python3 (scripts/test installs it)");
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        o.status.success(),
        "openapi-python-client failed (or is not installed: run scripts/test):\n{said}"
    );
    assert!(!said.to_lowercase().contains("warning"), "{said}");
    for op in ["get_pets_id", "post_pets", "get_files_proxy", "get_health"] {
        assert!(
            sdk.join(format!("pets_client/api/default/{op}.py"))
                .exists(),
            "{op} not generated:\n{said}"
        );
    }

    // Calls through the generated client: a line per call, status and body.
    let script = r#"
import sys
sys.path.insert(0, sys.argv[1])
from pets_client import AuthenticatedClient, Client
from pets_client.api.default import get_pets_id, post_pets, get_files_proxy, get_health
base, key = sys.argv[2], sys.argv[3]
keyed = AuthenticatedClient(base_url=base, token=key, prefix="", auth_header_name="x-api-key")
keyless = Client(base_url=base)
wrong = AuthenticatedClient(base_url=base, token="not-a-key", prefix="", auth_header_name="x-api-key")
for name, r in [
    ("pet", get_pets_id.sync_detailed(id="7", client=keyed)),
    ("post", post_pets.sync_detailed(client=keyed)),
    ("file", get_files_proxy.sync_detailed(proxy="a.txt", client=keyed)),
    ("health", get_health.sync_detailed(client=keyless)),
    ("nokey", get_pets_id.sync_detailed(id="7", client=keyless)),
    ("wrongkey", get_pets_id.sync_detailed(id="7", client=wrong)),
]:
    print(name, int(r.status_code), r.content.decode())
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(&sdk)
        .arg(format!("http://{}/v1", gw.addr()))
        .arg(&key)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "pet 200 {\"name\":\"rex\"}",
            "post 200 {\"name\":\"rex\"}",
            "file 200 {\"name\":\"rex\"}",
            "health 200 {\"ok\":true}",
            "nokey 403 {\"message\":\"Forbidden\"}",
            "wrongkey 403 {\"message\":\"Forbidden\"}",
        ],
        "{}",
        stderr(&o)
    );
    assert_eq!(
        backend.requests(),
        ["GET /pets/7", "POST /pets", "GET /static/a.txt"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `export --stage S` (and `&stage=S` on the admin API): the stage's
/// deployment at the stage's path, its stage variables substituted where
/// the gateway substitutes them; a stage that does not exist, a stage of
/// an API without stages, and an API with stages exported without one are
/// refused with the reason.
#[test]
fn a_stage_is_exported_with_its_path_deployment_and_variables() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("config/stages-example.toml");
    let c = config.display().to_string();
    let export = |extra: &[&str]| {
        let mut args = vec!["openapi", "export", "--config", &c, "--api", "pets"];
        args.extend_from_slice(extra);
        run_coregate(&args)
    };
    let o = export(&["--stage", "prod"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["servers"][0]["url"], "/pets/prod");
    assert_eq!(
        doc["paths"]["/items/{id}"]["get"]["x-amazon-apigateway-integration"]["uri"],
        "http://pets-v1/items/{id}?env=production"
    );
    assert_eq!(
        doc["paths"]["/hello"]["get"]["x-coregate-mock"]["body"],
        "hello from v1 (production)"
    );
    assert_eq!(doc["x-coregate-stage"]["deployment"], "v1");
    assert_eq!(doc["x-coregate-upstreams"][0]["name"], "pets-v1");
    let dir = scratch("openapi-stage");
    let file = dir.join("prod.json");
    std::fs::write(&file, stdout(&o)).unwrap();
    validate(&file);

    let o = export(&["--stage", "beta", "--format", "yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let beta: serde_json::Value = serde_yaml_ng::from_str(&stdout(&o)).unwrap();
    assert_eq!(beta["servers"][0]["url"], "/pets/beta");
    assert_eq!(
        beta["paths"]["/items/{id}"]["get"]["x-amazon-apigateway-integration"]["uri"],
        "http://pets-v2/v2/items/{id}"
    );
    let o = export(&["--stage", "$default"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let d: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(d["servers"][0]["url"], "/pets");

    for (extra, says) in [
        (
            &["--stage", "gamma"][..],
            "has no stage \"gamma\" (it has: prod, beta, $default)",
        ),
        (
            &[][..],
            "is served by stages (prod, beta, $default): name one with --stage",
        ),
    ] {
        let o = export(extra);
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        assert!(stderr(&o).contains(says), "{extra:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
    let demo = root.join("config/coregate.toml");
    let o = run_coregate(&[
        "openapi",
        "export",
        "--config",
        &demo.display().to_string(),
        "--api",
        "demo",
        "--stage",
        "prod",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("has no stages"), "{}", stderr(&o));

    // The admin API: the running config's stage.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:8085", "127.0.0.1:0");
    let gw = Gateway::start(&text);
    let r = call(
        agent().get(&gw.admin_url("/openapi?api=pets&stage=prod")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let served: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(served, doc);
    let r = call(
        agent().get(&gw.admin_url("/openapi?api=pets&stage=%24default")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        agent().get(&gw.admin_url("/openapi?api=pets&stage=gamma")),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("has no stage"), "{}", r.text());
    let r = call(agent().get(&gw.admin_url("/openapi?api=pets")), None);
    assert_eq!(r.status, 400, "{}", r.text());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A document with one operation to proxy, one mock, and one that requires
/// an API key.
const SERVED_DOC: &str = r#"openapi: 3.0.3
info: { title: served, version: "1" }
servers: [{ url: "https://api.example.com/v1" }]
components:
  securitySchemes:
    key: { type: apiKey, in: header, name: x-api-key }
paths:
  /pets/{id}:
    get:
      responses: { "200": { description: ok } }
  /pets:
    post:
      security: [{ key: [] }]
      responses: { "200": { description: ok } }
"#;

const SERVED_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
api_keys_file = "@KEYS@"

[[apis]]
name = "served"
openapi = { file = "@DOC@", base_path = "split", upstream = "http://@BACKEND@" }
throttle = { rate = 1000, burst = 1000 }

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = "own route" }
"#;

/// `[[apis]] openapi = ...`: the document's routes are served as the import
/// would write them, beside the API's own routes and keys; a reload reads
/// the document again; a broken or missing document is a config error at
/// `apis[N].openapi` with its JSON pointer, and the running config keeps
/// serving.
#[test]
fn an_api_serves_an_openapi_document_and_a_reload_reads_it_again() {
    let dir = scratch("openapi-served");
    let backend = Backend::start(Reply::fixed(200, &[], "backend"));
    let keys = dir.join("keys.toml");
    let key = create_key(&keys, "k", None);
    let doc = dir.join("served.yaml");
    std::fs::write(&doc, SERVED_DOC).unwrap();
    let config = fill(
        SERVED_CONFIG,
        &[
            ("BACKEND", backend.addr_str()),
            ("KEYS", keys.display().to_string()),
            ("DOC", doc.display().to_string()),
        ],
    );
    let gw = Gateway::start(&config);
    let get = |path: &str, extra: &str| {
        send(
            &gw,
            &format!("GET {path} HTTP/1.1\r\nhost: t\r\n{extra}connection: close\r\n\r\n"),
        )
    };
    let r = get("/v1/pets/4", "");
    assert_eq!((r.status, r.text()), (200, "backend".to_string()));
    let r = get("/v1/health", "");
    assert_eq!((r.status, r.text()), (200, "own route".to_string()));
    let post = |extra: &str| {
        send(
            &gw,
            &format!("POST /v1/pets HTTP/1.1\r\nhost: t\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"),
        )
    };
    assert_eq!(post("").status, 403);
    assert_eq!(post(&format!("x-api-key: {key}\r\n")).status, 200);
    assert_eq!(backend.requests(), ["GET /pets/4", "POST /pets"]);

    // The document changes: a reload serves the new one.
    std::fs::write(&doc, SERVED_DOC.replace("/pets/{id}:", "/cats/{id}:")).unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get("/v1/pets/4", "").status, 404);
    assert_eq!(get("/v1/cats/4", "").status, 200);

    // A broken document: the reload is refused, with the pointer, and the
    // running config keeps serving.
    std::fs::write(
        &doc,
        SERVED_DOC.replace("security: [{ key: [] }]", "security: [{ nope: [] }]"),
    )
    .unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("apis[0].openapi")
            && r.text().contains("/paths/~1pets/post/security/0/nope"),
        "{}",
        r.text()
    );
    std::fs::write(&doc, "openapi: 3.0.3\npaths: [").unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("malformed YAML"), "{}", r.text());
    std::fs::remove_file(&doc).unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("cannot read the OpenAPI document"),
        "{}",
        r.text()
    );
    assert_eq!(get("/v1/cats/4", "").status, 200);
    drop(gw);

    // On disk, the path is taken from the config file's directory; a
    // warning is printed and the config passes; the export describes
    // the routes served.
    std::fs::write(&doc, SERVED_DOC).unwrap();
    let file = dir.join("gw.toml");
    let relative = config.replace(&doc.display().to_string(), "served.yaml");
    std::fs::write(&file, &relative).unwrap();
    check_ok(&file);
    let f = file.display().to_string();
    let o = run_coregate(&["openapi", "export", "--config", &f, "--api", "served"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let exported: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(exported["servers"][0]["url"], "/v1");
    for p in ["/pets/{id}", "/pets", "/health"] {
        assert!(exported["paths"][p].is_object(), "{p}: {exported}");
    }
    let no_upstream = relative.replace(", upstream = \"http://", " }\n# upstream was ");
    std::fs::write(&file, &no_upstream).unwrap();
    let o = run_coregate(&["check", "--config", &f]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warn")
            && stderr(&o).contains(
                "apis[0].openapi: served.yaml: /paths/~1pets~1{id}/get: no http_proxy integration"
            ),
        "{}",
        stderr(&o)
    );
    let strict = no_upstream.replace(
        "base_path = \"split\" }",
        "base_path = \"split\", fail_on_warnings = true }",
    );
    std::fs::write(&file, &strict).unwrap();
    let o = run_coregate(&["check", "--config", &f]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("(fail_on_warnings)"), "{}", stderr(&o));

    // Errors, all in one run: a missing document, a route in both places,
    // a bad base_path mode, and an API with stages.
    let bad = format!(
        r#"
[[apis]]
name = "a"
openapi = "missing.yaml"

[[apis]]
name = "b"
base_path = "/b"
openapi = "served.yaml"
[[apis.routes]]
key = "POST /pets"
integration = {{ type = "mock" }}

[[apis]]
name = "c"
base_path = "/c"
openapi = {{ file = "served.yaml", base_path = "sideways" }}

[[apis]]
name = "d"
base_path = "/d"
openapi = "served.yaml"
[[apis.deployments]]
name = "v1"
[[apis.deployments.routes]]
key = "GET /x"
integration = {{ type = "mock" }}
[[apis.stages]]
name = "$default"
deployment = "v1"

[server]
api_keys_file = "{}"
"#,
        keys.display()
    );
    std::fs::write(&file, &bad).unwrap();
    let o = run_coregate(&["check", "--config", &f]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    for says in [
        "apis[0].openapi: cannot read the OpenAPI document",
        "apis[1].routes[0].key: route \"POST /pets\" is also in the OpenAPI document",
        "apis[2].openapi.base_path: \"sideways\" is not one of",
        "apis[3].openapi: an api with deployments or stages",
    ] {
        assert!(e.contains(says), "{says}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `import --into CONFIG`: the API is added to (or replaces the one of the
/// same name in) an existing file, whose other tables and comments are
/// kept; the result must pass its check before the file is written; a
/// broken or missing config is left as it was.
#[test]
fn an_import_is_merged_into_an_existing_config_file() {
    let dir = scratch("openapi-into");
    let config = dir.join("gw.toml");
    let original = "# my gateway\n[server]\nlisten = [\"127.0.0.1:0\"] # the port\n\n\
                    [[apis]]\nname = \"served\"\nbase_path = \"/old\"\n\
                    throttle = { rate = 5, burst = 5 } # mine\n\
                    [[apis.routes]]\nkey = \"GET /old\"\nintegration = { type = \"mock\" }\n\n\
                    [[apis]]\nname = \"other\"\nbase_path = \"/other\"\n\
                    [[apis.routes]]\nkey = \"GET /x\"\nintegration = { type = \"mock\" }\n";
    std::fs::write(&config, original).unwrap();
    let doc = dir.join("served.yaml");
    std::fs::write(&doc, SERVED_DOC).unwrap();
    let d = doc.display().to_string();
    let c = config.display().to_string();
    let o = run_coregate(&[
        "openapi",
        "import",
        &d,
        "--into",
        &c,
        "--base-path",
        "split",
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("(api replaced)"), "{}", stderr(&o));
    let merged = std::fs::read_to_string(&config).unwrap();
    for kept in ["# my gateway", "# the port", "# mine", "name = \"other\""] {
        assert!(merged.contains(kept), "{kept}: {merged}");
    }
    assert!(!merged.contains("GET /old"), "{merged}");
    check_ok(&config);
    let raw = coregate::config::parse(&merged).unwrap();
    let served = &raw.apis[0];
    assert_eq!(served.base_path.as_deref(), Some("/v1"));
    assert!(served.throttle.is_some());
    let keys: Vec<&str> = served.routes.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["POST /pets", "GET /pets/{id}"]);
    // The keys file the config now names was made beside it.
    assert!(dir.join("api-keys.toml").exists());

    // Under another name it is added.
    let o = run_coregate(&["openapi", "import", &d, "--into", &c, "--name", "second"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("(api added)"), "{}", stderr(&o));
    let raw = coregate::config::parse(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let names: Vec<&str> = raw.apis.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["served", "other", "second"]);

    // A config with an error, one that is not TOML, and one that is not
    // there: exit 1, nothing written.
    for (text, says) in [
        (
            "[[apis]]\nname = \"x\"\nbase_path = \"no-slash\"\n[[apis.routes]]\nkey = \"GET /\"\nintegration = { type = \"mock\" }\n",
            "the merged config fails its check",
        ),
        ("[[apis]\n", "not valid TOML"),
    ] {
        std::fs::write(&config, text).unwrap();
        let o = run_coregate(&["openapi", "import", &d, "--into", &c, "--name", "y"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{says}: {}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    }
    let missing = dir.join("missing.toml").display().to_string();
    let o = run_coregate(&["openapi", "import", &d, "--into", &missing]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
    assert!(!dir.join("missing.toml").exists());
    let o = run_coregate(&["openapi", "import", &d, "--into", &c, "--out", &missing]);
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A route that requires a key through a `[[policies]]` set is exported
/// with the key's security requirement, as the gateway enforces it: an
/// export without it would import back as an open route, and SDKs made
/// from it would not send the key.
#[test]
fn settings_from_policy_sets_are_exported() {
    // Every unwrap here is a test failure, not an input.
    let dir = scratch("openapi-policy-sets");
    std::fs::write(dir.join("keys.toml"), "").unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        r#"
[server]
listen = ["127.0.0.1:0"]
api_keys_file = "keys.toml"

[[policies]]
name = "keyed"
api_key_required = true

[[policies]]
name = "browser"
cors = { allow_origins = ["https://app.example"] }

[[apis]]
name = "orders"
policies = ["keyed", "browser"]

[[apis.routes]]
key = "GET /orders/{id}"
integration = { type = "mock", body = "o" }

[[apis.routes]]
key = "GET /open"
api_key_required = false
integration = { type = "mock", body = "open" }
"#,
    )
    .unwrap();
    let c = config.display().to_string();
    let o = run_coregate(&["openapi", "export", "--config", &c, "--api", "orders"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        doc["paths"]["/orders/{id}"]["get"]["security"],
        serde_json::json!([{ "api_key": [] }]),
        "{doc}"
    );
    assert!(doc["paths"]["/open"]["get"]["security"].is_null(), "{doc}");
    assert_eq!(
        doc["x-amazon-apigateway-cors"]["allowOrigins"],
        serde_json::json!(["https://app.example"]),
        "{doc}"
    );
    // Imported back: the route requires its key again.
    let exported = dir.join("orders.json");
    std::fs::write(&exported, &o.stdout).unwrap();
    let back = dir.join("back.toml");
    import_ok(
        &[
            &exported.display().to_string(),
            "--api-keys-file",
            "keys.toml",
        ],
        &back,
    );
    let text = std::fs::read_to_string(&back).unwrap();
    let raw: toml::Value = toml::from_str(&text).unwrap();
    let routes = raw["apis"][0]["routes"].as_array().unwrap();
    let keyed = routes
        .iter()
        .find(|r| r["key"].as_str() == Some("GET /orders/{id}"))
        .unwrap();
    assert_eq!(
        keyed.get("api_key_required"),
        Some(&toml::Value::Boolean(true)),
        "{text}"
    );
}
