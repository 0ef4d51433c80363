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
/// `[server]` table to be added to.
fn servable(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    if text.contains("[server]\n") {
        text
    } else {
        format!("[server]\n{text}")
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
