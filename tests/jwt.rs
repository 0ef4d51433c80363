//! The JWT authorizer over real sockets, against the real binary. Tokens are
//! minted by the `jsonwebtoken` crate (RustCrypto signers, not the ring
//! verifier under test) with keys made per run by `openssl genpkey`; the
//! JWKS documents are written by the same library from those keys and
//! served from a file or by a small HTTP(S) server here that counts its
//! fetches.
//!
//! Covered: RS256, ES256, EdDSA and HS256 accepted; claims passed to a real
//! backend as headers and client-sent copies dropped; every refusal (no
//! token, expired, not yet valid, wrong issuer, wrong audience, wrong
//! signature, alg none, HS256 signed with the RSA public key, malformed and
//! oversized tokens, unknown kid) is 401 `{"message":"Unauthorized"}` and
//! never reaches the backend; missing scopes are 403; a rotated key is
//! picked up through an unknown-kid refresh without a restart; unknown kids
//! refresh at most once per interval; a JWKS URL that goes down keeps the
//! old keys, and one that is down at start-up gives 401 until it answers;
//! an https:// JWKS URL verified against `jwks_ca_file`; `coregate check`.

// The test's JWKS server shares its answer with the test through a Mutex:
// test code, not the gateway's request path.
#![allow(clippy::disallowed_types)]

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

const ISS: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Test";
const AUD: &str = "pets-api";
const HS_SECRET: &[u8] = b"an HS256 test secret of more than 32 bytes";

// === impl keys and tokens ===

/// A private key made by `openssl genpkey`, as PEM.
fn openssl_key(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .output()
        .expect("these tests need the `openssl` command (Debian package openssl)");
    assert!(out.status.success(), "openssl genpkey {args:?}: {out:?}");
    out.stdout
}

/// A signing key and its public JWK (with `kid`), both from jsonwebtoken.
struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
    /// The PEM of the private key (RSA: its public half is what the
    /// algorithm-confusion attack uses).
    pem: Vec<u8>,
}

impl Signer {
    fn rsa(kid: &str) -> Signer {
        let pem = openssl_key(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
        Self::from_pem(Algorithm::RS256, kid, pem)
    }
    fn ec(kid: &str) -> Signer {
        let pem = openssl_key(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        Self::from_pem(Algorithm::ES256, kid, pem)
    }
    fn ed(kid: &str) -> Signer {
        let pem = openssl_key(&["-algorithm", "ed25519"]);
        Self::from_pem(Algorithm::EdDSA, kid, pem)
    }
    fn hs(kid: &str, secret: &[u8]) -> Signer {
        let key = EncodingKey::from_secret(secret);
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::HS256).expect("HS256 jwk");
        jwk.common.key_id = Some(kid.to_string());
        Signer {
            alg: Algorithm::HS256,
            key,
            jwk,
            pem: Vec::new(),
        }
    }
    fn from_pem(alg: Algorithm, kid: &str, pem: Vec<u8>) -> Signer {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("key from PEM");
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public JWK");
        jwk.common.key_id = Some(kid.to_string());
        Signer { alg, key, jwk, pem }
    }

    fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or("")
    }

    /// A token with these claims, signed by this key, naming `kid`.
    fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, &self.key).expect("encode")
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(self.kid()), claims)
    }
}

/// The JWKS document (as jsonwebtoken writes it) for these keys.
fn jwks(signers: &[&Signer]) -> String {
    let set = JwkSet {
        keys: signers.iter().map(|s| s.jwk.clone()).collect(),
    };
    serde_json::to_string(&set).expect("jwks json")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "user-123",
        "email": "alice@example.com",
        "cognito:groups": ["admins", "users"],
        "scope": "pets/read openid",
        "iat": now() - 10,
        "exp": now() + 600,
    })
}

fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims();
    f(&mut c);
    c
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

// === impl gateway and requests ===

/// A gateway with one JWT authorizer (`jwt_table` is its sub-table body)
/// guarding `/pets` (proxied to `backend`, claims as headers), `/admin`
/// (needs scope pets/write) and `/scp` (needs scopes a and b).
fn gateway(backend: &Backend, jwt_table: &str) -> Gateway {
    Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[authorizers]]
name = "cognito"
[authorizers.jwt]
issuer = "@ISS@"
audience = ["@AUD@", "second-client"]
claims_to_headers = { "x-user-sub" = "sub", "x-user-email" = "email", "x-user-groups" = "cognito:groups" }
@JWT@

[[apis]]
name = "pets"
authorizer = "cognito"

[[apis.routes]]
key = "GET /pets"
integration = { type = "http_proxy", url = "http://@B@/pets" }

[[apis.routes]]
key = "GET /admin"
authorization_scopes = ["pets/read", "pets/write"]
integration = { type = "http_proxy", url = "http://@B@/admin" }

[[apis.routes]]
key = "GET /scp"
authorization_scopes = ["a", "b"]
integration = { type = "mock", body = 'scp ok' }

[[apis.routes]]
key = "GET /health"
authorizer = "none"
integration = { type = "mock", body = 'ok' }
"#,
        &[
            ("ISS", ISS.to_string()),
            ("AUD", AUD.to_string()),
            ("B", backend.addr_str()),
            ("JWT", jwt_table.to_string()),
        ],
    ))
}

/// A gateway whose keys come from `server`, fetched again every
/// `refresh_s` and on an unknown kid at most every `min_interval_s`;
/// `extra` adds lines to the `[authorizers.jwt]` table.
fn jwks_gateway(
    backend: &Backend,
    server: &JwksServer,
    refresh_s: u64,
    min_interval_s: u64,
    extra: &str,
) -> Gateway {
    gateway(
        backend,
        &format!(
            "jwks_url = \"{}\"\nrefresh_interval_s = {refresh_s}\nunknown_kid_refresh_min_interval_s = {min_interval_s}\n{extra}",
            server.url()
        ),
    )
}

/// Writes a JWKS next to the configs (the temp dir) and returns its file
/// name, relative to a config there.
fn jwks_file(doc: &str) -> (PathBuf, String) {
    let p = temp_path("jwks.json");
    std::fs::write(&p, doc).unwrap();
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    (p, name)
}

fn get(gw: &Gateway, path: &str, extra_headers: &str) -> Response {
    gw.client()
        .request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra_headers}\r\n").as_bytes())
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Response {
    get(gw, path, &format!("Authorization: Bearer {token}\r\n"))
}

fn assert_unauthorized(r: &Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    assert_eq!(assert_json_error(r, 401), "Unauthorized", "{what}");
    assert_eq!(r.text(), r#"{"message":"Unauthorized"}"#, "{what}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
}

fn assert_forbidden(r: &Response, what: &str) {
    assert_eq!(assert_json_error(r, 403), "Forbidden", "{what}: {r:?}");
    assert_eq!(r.text(), r#"{"message":"Forbidden"}"#, "{what}");
}

fn echo_header<'a>(e: &'a Echo, name: &str) -> Vec<&'a str> {
    e.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

// === impl JWKS server ===

/// What the JWKS server answers.
#[derive(Clone)]
enum Serve {
    Jwks(String),
    Status(u16),
    /// Read the request, close without answering.
    HangUp,
}

/// An HTTP (or HTTPS) server on 127.0.0.1 that serves a JWKS document the
/// test can change, and counts the requests it answered.
struct JwksServer {
    addr: SocketAddr,
    state: Arc<Mutex<Serve>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(serve: Serve) -> JwksServer {
        Self::start_with(serve, None)
    }

    fn start_with(serve: Serve, tls: Option<Arc<rustls::ServerConfig>>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(serve));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (st, f) = (state.clone(), fetches.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (st, f, tls) = (st.clone(), f.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    match tls {
                        None => Self::serve(conn, &st, &f),
                        Some(cfg) => {
                            let Ok(sc) = rustls::ServerConnection::new(cfg) else {
                                return;
                            };
                            let mut s = rustls::StreamOwned::new(sc, conn);
                            Self::serve(&mut s, &st, &f);
                            s.conn.send_close_notify();
                            let _ = s.flush();
                        }
                    }
                });
            }
        });
        JwksServer {
            addr,
            state,
            fetches,
        }
    }

    fn serve<S: Read + Write>(mut s: S, state: &Mutex<Serve>, fetches: &AtomicUsize) {
        let mut head = Vec::new();
        {
            let mut r = BufReader::new(&mut s);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                head.extend_from_slice(&line);
                if line == b"\r\n" {
                    break;
                }
            }
        }
        let serve = state.lock().unwrap().clone();
        fetches.fetch_add(1, Ordering::SeqCst);
        let resp = match serve {
            Serve::Jwks(body) => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
            Serve::Status(code) => format!(
                "HTTP/1.1 {code} Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            Serve::HangUp => return,
        };
        let _ = s.write_all(resp.as_bytes());
        let _ = s.flush();
    }

    fn set(&self, serve: Serve) {
        *self.state.lock().unwrap() = serve;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }
}

/// Sends the token until it is answered `want` (shards take in new keys
/// as soon as the fetcher sends them), or gives up after `timeout`.
fn wait_status(gw: &Gateway, path: &str, token: &str, want: u16, timeout: Duration) -> bool {
    wait_until(timeout, || bearer(gw, path, token).status == want)
}

// === tests: keys from a file ===

#[test]
fn every_algorithm_is_accepted_and_claims_reach_the_backend_as_headers() {
    let backend = Backend::start(Reply::Echo);
    let (rsa, ec, ed, hs) = (
        Signer::rsa("rsa-1"),
        Signer::ec("ec-1"),
        Signer::ed("ed-1"),
        Signer::hs("hs-1", HS_SECRET),
    );
    let (path, name) = jwks_file(&jwks(&[&rsa, &ec, &ed, &hs]));
    let gw = gateway(&backend, &format!("jwks_file = \"{name}\""));

    for s in [&rsa, &ec, &ed, &hs] {
        let token = s.sign(&claims());
        let r = get(
            &gw,
            "/pets",
            &format!(
                "Authorization: Bearer {token}\r\nX-User-Sub: forged-admin\r\nx-user-email: evil@example.com\r\nX-USER-GROUPS: admins\r\n"
            ),
        );
        assert_eq!(r.status, 200, "{:?}: {r:?}", s.alg);
        let e = r.echo();
        assert_eq!(
            echo_header(&e, "x-user-sub"),
            vec!["user-123"],
            "{:?}",
            s.alg
        );
        assert_eq!(echo_header(&e, "x-user-email"), vec!["alice@example.com"]);
        assert_eq!(
            echo_header(&e, "x-user-groups"),
            vec![r#"["admins","users"]"#]
        );
        // The token itself still reaches the backend (API Gateway passes it).
        assert_eq!(echo_header(&e, "authorization").len(), 1);
    }

    // Lowercase scheme and the bare token (API Gateway takes both).
    let token = ed.sign(&claims());
    assert_eq!(
        get(&gw, "/pets", &format!("authorization: bearer {token}\r\n")).status,
        200
    );
    assert_eq!(
        get(&gw, "/pets", &format!("Authorization: {token}\r\n")).status,
        200
    );

    // A claim the token lacks: no header, and the client's copy is dropped.
    let token = rsa.sign(&with(|c| {
        c.as_object_mut().unwrap().remove("email");
    }));
    let r = get(
        &gw,
        "/pets",
        &format!("Authorization: Bearer {token}\r\nx-user-email: evil@example.com\r\n"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(echo_header(&r.echo(), "x-user-email").is_empty(), "{r:?}");

    // Routes without the authorizer are untouched.
    assert_eq!(get(&gw, "/health", "").status, 200);
    let _ = std::fs::remove_file(path);
}

#[test]
fn bad_tokens_are_401_and_never_reach_the_backend() {
    let backend = Backend::start(Reply::Echo);
    let rsa = Signer::rsa("rsa-1");
    let ed = Signer::ed("ed-1");
    let (path, name) = jwks_file(&jwks(&[&rsa, &ed]));
    let gw = gateway(&backend, &format!("jwks_file = \"{name}\"\nleeway_s = 30"));

    let good = ed.sign(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    // The algorithm-confusion attack: HS256 "signed" with the RSA public
    // key (PEM and DER forms), naming the RSA key.
    let rsa_pub_pem = {
        let mut child = Command::new("openssl")
            .args(["pkey", "-pubout"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&rsa.pem).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    let hs_confused = Signer::hs("rsa-1", &rsa_pub_pem).sign(&claims());
    let other_rsa = Signer::rsa("rsa-1");
    let claims_json = claims().to_string();
    let cases: Vec<(String, &str)> = vec![
        (
            ed.sign(&with(|c| c["exp"] = json!(now() - 31))),
            "expired past the leeway",
        ),
        (
            ed.sign(&with(|c| c["nbf"] = json!(now() + 120))),
            "not yet valid",
        ),
        (
            ed.sign(&with(|c| c["iat"] = json!(now() + 120))),
            "issued in the future",
        ),
        (
            ed.sign(&with(|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            "no exp",
        ),
        (
            ed.sign(&with(|c| c["iss"] = json!("https://evil.example"))),
            "wrong issuer",
        ),
        (
            ed.sign(&with(|c| c["aud"] = json!("another-api"))),
            "wrong audience",
        ),
        (
            ed.sign(&with(|c| c["aud"] = json!(["x", "y"]))),
            "wrong audience list",
        ),
        (
            other_rsa.sign(&claims()),
            "signed by another key with the same kid",
        ),
        (hs_confused, "HS256 signed with the RSA public key"),
        (
            Signer::hs("hs-x", HS_SECRET).sign(&claims()),
            "HS256 with a kid not in the JWKS",
        ),
        (
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims_json.as_bytes())
            ),
            "alg none, empty signature",
        ),
        (
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"none","kid":"ed-1"}"#),
                b64(claims_json.as_bytes()),
                parts[2]
            ),
            "alg none with a signature",
        ),
        (format!("{}.{}", parts[0], parts[1]), "two segments"),
        (
            format!("{}.{}.{}x", parts[0], parts[1], parts[2]),
            "bad signature base64",
        ),
        (
            format!("{}.{}*.{}", parts[0], parts[1], parts[2]),
            "bad payload base64",
        ),
        (
            format!("{}.{}.{}", parts[0], b64(b"not json"), parts[2]),
            "payload not JSON",
        ),
        (
            format!("{}.{}.{}", parts[0], "A".repeat(9000), parts[2]),
            "oversized token",
        ),
        ("Bearer".to_string(), "just a word"),
    ];
    for (token, what) in &cases {
        assert_unauthorized(&bearer(&gw, "/pets", token), what);
    }
    for (extra, what) in [
        ("", "no Authorization header"),
        ("Authorization: Basic dXNlcjpwYXNz\r\n", "Basic scheme"),
        ("Authorization: Bearer \r\n", "empty bearer"),
        (
            &*format!("Authorization: Bearer {good}\r\nAuthorization: Bearer {good}\r\n"),
            "two Authorization headers",
        ),
    ] {
        assert_unauthorized(&get(&gw, "/pets", extra), what);
    }
    assert_eq!(backend.hits(), 0, "a refused request reached the backend");
    // The same token, valid, passes (the refusals were for their reasons).
    assert_eq!(bearer(&gw, "/pets", &good).status, 200);
    assert_eq!(backend.hits(), 1);
    // Within the leeway: accepted.
    let late = ed.sign(&with(|c| c["exp"] = json!(now() - 20)));
    assert_eq!(bearer(&gw, "/pets", &late).status, 200);
    let _ = std::fs::remove_file(path);
}

#[test]
fn scopes_are_403_when_missing_and_cognito_client_id_is_an_audience() {
    let backend = Backend::start(Reply::Echo);
    let ec = Signer::ec("ec-1");
    let (path, name) = jwks_file(&jwks(&[&ec]));
    let gw = gateway(&backend, &format!("jwks_file = \"{name}\""));

    let read_only = ec.sign(&claims());
    assert_eq!(bearer(&gw, "/pets", &read_only).status, 200);
    let r = bearer(&gw, "/admin", &read_only);
    assert_forbidden(&r, "scope pets/write missing");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope""#)
    );
    let both = ec.sign(&with(|c| c["scope"] = json!("pets/write pets/read")));
    assert_eq!(bearer(&gw, "/admin", &both).status, 200);
    // `scp` as an array (Okta) or string (Entra ID).
    let scp = ec.sign(&with(|c| c["scp"] = json!(["b", "a"])));
    assert_eq!(bearer(&gw, "/scp", &scp).status, 200);
    let scp = ec.sign(&with(|c| c["scp"] = json!("a b")));
    assert_eq!(bearer(&gw, "/scp", &scp).status, 200);
    let scp = ec.sign(&with(|c| c["scp"] = json!(["a"])));
    assert_forbidden(&bearer(&gw, "/scp", &scp), "scp lacks b");
    // An invalid token on a scoped route is 401, not 403.
    let expired = ec.sign(&with(|c| c["exp"] = json!(now() - 3600)));
    assert_unauthorized(
        &bearer(&gw, "/admin", &expired),
        "expired on a scoped route",
    );

    // A Cognito access token: no aud, client_id instead.
    let access = ec.sign(&with(|c| {
        c.as_object_mut().unwrap().remove("aud");
        c["client_id"] = json!("second-client");
    }));
    assert_eq!(bearer(&gw, "/pets", &access).status, 200);
    let access = ec.sign(&with(|c| {
        c.as_object_mut().unwrap().remove("aud");
        c["client_id"] = json!("some-other-app");
    }));
    assert_unauthorized(&bearer(&gw, "/pets", &access), "unknown client_id");
    assert_eq!(backend.hits(), 3);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_claim_with_a_line_break_is_refused_not_passed_on() {
    let backend = Backend::start(Reply::Echo);
    let ed = Signer::ed("ed-1");
    let (path, name) = jwks_file(&jwks(&[&ed]));
    let gw = gateway(&backend, &format!("jwks_file = \"{name}\""));
    let token = ed.sign(&with(|c| c["email"] = json!("a@b.c\r\nx-admin: true")));
    assert_unauthorized(&bearer(&gw, "/pets", &token), "CRLF in a passed-on claim");
    // The same claim not passed on as a header is harmless.
    let token = ed.sign(&with(|c| c["nickname"] = json!("a\r\nb")));
    assert_eq!(bearer(&gw, "/pets", &token).status, 200);
    assert_eq!(backend.hits(), 1);
    let _ = std::fs::remove_file(path);
}

// === tests: keys from a URL ===

/// A gateway whose keys come from a JWKS URL that publishes `old`, with
/// `new` ready for a rotation: refreshed hourly, or on an unknown kid at
/// most once a second.
struct Rotation {
    backend: Backend,
    old: Signer,
    new: Signer,
    server: JwksServer,
    gw: Gateway,
}

impl Rotation {
    fn start() -> Rotation {
        let backend = Backend::start(Reply::Echo);
        let old = Signer::rsa("key-2024");
        let new = Signer::ed("key-2025");
        let server = JwksServer::start(Serve::Jwks(jwks(&[&old])));
        let gw = jwks_gateway(&backend, &server, 3600, 1, "");
        Rotation {
            backend,
            old,
            new,
            server,
            gw,
        }
    }
}

#[test]
fn a_rotated_key_is_fetched_on_its_unknown_kid_without_restart() {
    let Rotation {
        backend: _backend,
        old,
        new,
        server,
        gw,
    } = Rotation::start();
    // The first fetch happened before the gateway said it was listening.
    assert_eq!(server.fetches(), 1);
    assert_eq!(bearer(&gw, "/pets", &old.sign(&claims())).status, 200);

    // The identity provider rotates: the new key's tokens are unknown (401
    // at once, no waiting on a fetch) until the refresh they ask for.
    let token = new.sign(&claims());
    server.set(Serve::Jwks(jwks(&[&old, &new])));
    assert_unauthorized(
        &bearer(&gw, "/pets", &token),
        "unknown kid before the refresh",
    );
    assert!(
        wait_status(&gw, "/pets", &token, 200, Duration::from_secs(10)),
        "the new key was never picked up; fetches: {}; stderr:\n{}",
        server.fetches(),
        gw.stderr()
    );
    assert!(server.fetches() >= 2);
    // Old keys still work while the provider still publishes them.
    assert_eq!(bearer(&gw, "/pets", &old.sign(&claims())).status, 200);
    // ... and are dropped when it stops (after the next refresh).
    server.set(Serve::Jwks(jwks(&[&new])));
    let unknown = Signer::ed("key-2026").sign(&claims());
    let old_token = old.sign(&claims());
    assert!(
        wait_until(Duration::from_secs(10), || {
            // Unknown kids keep asking for refreshes (rate-limited).
            let _ = bearer(&gw, "/pets", &unknown);
            bearer(&gw, "/pets", &old_token).status == 401
        }),
        "the removed key was still accepted"
    );
    assert_eq!(bearer(&gw, "/pets", &token).status, 200);
}

#[test]
fn unknown_kid_refreshes_are_rate_limited() {
    let backend = Backend::start(Reply::Echo);
    let key = Signer::ed("only");
    let server = JwksServer::start(Serve::Jwks(jwks(&[&key])));
    let interval = 2u64;
    let gw = jwks_gateway(&backend, &server, 3600, interval, "");
    assert_eq!(server.fetches(), 1);
    let start = Instant::now();
    // 120 requests with fresh unknown kids over about 3 seconds, on new
    // connections (so both shards see them).
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let token = Signer::hs(&format!("bogus-{n}"), HS_SECRET).sign(&claims());
        assert_unauthorized(&bearer(&gw, "/pets", &token), "unknown kid");
        n += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let a pending refresh happen, then count.
    std::thread::sleep(Duration::from_millis(interval * 1000 + 500));
    let total = start.elapsed().as_secs_f64();
    let fetches = server.fetches();
    // Start-up fetch, then one per interval at most (the first unknown kid
    // waits out the interval since the start-up fetch).
    let bound = 1 + (total / interval as f64).ceil() as usize;
    assert!(
        fetches >= 2,
        "unknown kids never triggered a refresh ({n} requests in {elapsed:.1} s)"
    );
    assert!(
        fetches <= bound,
        "{fetches} fetches for {n} unknown-kid requests in {total:.1} s; at most {bound} allowed"
    );
    assert!(n > 50, "only {n} requests sent");
    assert_eq!(backend.hits(), 0);
}

#[test]
fn a_jwks_url_that_goes_down_keeps_the_old_keys() {
    let backend = Backend::start(Reply::Echo);
    let key = Signer::ec("ec-live");
    let server = JwksServer::start(Serve::Jwks(jwks(&[&key])));
    let gw = jwks_gateway(&backend, &server, 1, 1, "fetch_timeout_ms = 500");
    let token = key.sign(&claims());
    assert_eq!(bearer(&gw, "/pets", &token).status, 200);
    server.set(Serve::Status(503));
    let base = server.fetches();
    assert!(
        wait_until(Duration::from_secs(10), || server.fetches() >= base + 2),
        "no refresh attempts"
    );
    assert_eq!(
        bearer(&gw, "/pets", &token).status,
        200,
        "keys lost on a 503"
    );
    server.set(Serve::HangUp);
    let base = server.fetches();
    assert!(wait_until(Duration::from_secs(10), || server.fetches() >= base + 2));
    assert_eq!(
        bearer(&gw, "/pets", &token).status,
        200,
        "keys lost on a hang-up"
    );
    server.set(Serve::Jwks("{\"not\": \"a jwks\"}".into()));
    let base = server.fetches();
    assert!(wait_until(Duration::from_secs(10), || server.fetches() >= base + 2));
    assert_eq!(
        bearer(&gw, "/pets", &token).status,
        200,
        "keys lost on a bad document"
    );
    assert!(
        gw.wait_stderr_line(Duration::from_secs(5), |l| l.contains("JWKS fetch")
            && l.contains("failed")
            && l.contains("keeping 1 key"))
            .is_some(),
        "no log of the failed refresh:\n{}",
        gw.stderr()
    );
}

#[test]
fn a_jwks_url_down_at_start_up_gives_401_until_it_answers() {
    let backend = Backend::start(Reply::Echo);
    let key = Signer::rsa("r1");
    let server = JwksServer::start(Serve::Status(500));
    let gw = jwks_gateway(&backend, &server, 3600, 1, "");
    let token = key.sign(&claims());
    assert_unauthorized(&bearer(&gw, "/pets", &token), "no keys yet");
    server.set(Serve::Jwks(jwks(&[&key])));
    assert!(
        wait_status(&gw, "/pets", &token, 200, Duration::from_secs(10)),
        "keys never arrived: {}",
        gw.stderr()
    );
}

#[test]
fn an_https_jwks_url_is_verified_against_the_ca_file() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let key = Signer::ed("tls-key");
    let server = JwksServer::start_with(Serve::Jwks(jwks(&[&key])), Some(Arc::new(server_cfg)));
    let ca_path = temp_path("pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let backend = Backend::start(Reply::Echo);
    let url = format!("https://localhost:{}/jwks", server.addr.port());
    let gw = gateway(
        &backend,
        &format!(
            "jwks_url = \"{url}\"\njwks_ca_file = \"{}\"",
            ca_path.file_name().unwrap().to_string_lossy()
        ),
    );
    assert_eq!(server.fetches(), 1, "{}", gw.stderr());
    assert_eq!(bearer(&gw, "/pets", &key.sign(&claims())).status, 200);
    drop(gw);

    // Without the CA (the system roots do not know it): the handshake
    // fails, nothing is fetched, tokens are refused.
    let gw = gateway(&backend, &format!("jwks_url = \"{url}\""));
    assert_unauthorized(
        &bearer(&gw, "/pets", &key.sign(&claims())),
        "untrusted JWKS server",
    );
    assert!(
        gw.wait_stderr_line(Duration::from_secs(5), |l| l.contains("JWKS fetch")
            && l.contains("failed"))
            .is_some(),
        "{}",
        gw.stderr()
    );
    assert_eq!(
        server.fetches(),
        1,
        "a response was read from an untrusted server"
    );
    let _ = std::fs::remove_file(ca_path);
}

// === tests: coregate check ===

#[test]
fn check_reports_a_bad_jwks_file_and_passes_a_good_one() {
    let ed = Signer::ed("k");
    let (good, good_name) = jwks_file(&jwks(&[&ed]));
    let (bad, bad_name) =
        jwks_file("{\"keys\": [{\"kty\": \"RSA\", \"n\": \"AQAB\", \"e\": \"AQAB\"}]}");
    let config = |file: &str| {
        format!(
            r#"
[[authorizers]]
name = "a"
[authorizers.jwt]
issuer = "https://i"
audience = ["x"]
jwks_file = "{file}"

[[apis]]
name = "p"
authorizer = "a"
[[apis.routes]]
key = "GET /x"
integration = {{ type = "mock" }}
"#
        )
    };
    let run = |text: String| {
        let p = write_config(&text);
        let out = run_coregate(&["check", "--config", p.to_str().unwrap()]);
        let _ = std::fs::remove_file(p);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(config(&good_name));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(config(&bad_name));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("error: ")
            && l.contains("authorizers[0].jwt.jwks_file")
            && l.contains("RSA modulus")),
        "{err}"
    );
    let (code, err) = run(config("missing.json"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("authorizers[0].jwt.jwks_file") && err.contains("cannot read"),
        "{err}"
    );
    for p in [good, bad] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn an_idle_gateway_with_a_jwks_url_sleeps_and_new_keys_reach_every_shard_at_once() {
    // Before, each shard looked for new key sets every 25 ms: 40 wakes a
    // second per shard on an idle gateway. Now the updater sleeps until
    // the fetcher sends a set and wakes it (or 10 s pass).
    const SHARDS: usize = 2;
    let Rotation {
        backend: _backend,
        old,
        new,
        server,
        gw,
    } = Rotation::start();
    // A keep-alive connection on each shard (the request id's first 16
    // hex digits are the shard's).
    let mut by_shard: std::collections::BTreeMap<String, Client> = Default::default();
    for _ in 0..200 {
        if by_shard.len() == SHARDS {
            break;
        }
        let mut c = gw.client();
        let r = c.get("/health");
        assert_eq!(r.status, 200, "{r:?}");
        // The gateway sends a request id on every answer; none is a failure.
        let id = r.header("x-request-id").expect("a request id").to_string();
        by_shard.entry(id[..16].to_string()).or_insert(c);
    }
    assert_eq!(by_shard.len(), SHARDS, "no connection on one of the shards");
    let send = |c: &mut Client, token: &str| {
        c.request(
            format!("GET /pets HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        )
        .status
    };
    for c in by_shard.values_mut() {
        assert_eq!(send(c, &old.sign(&claims())), 200);
    }

    let idle = Duration::from_secs(3);
    let shards = idle_shard_switches(gw.pid(), Duration::from_millis(1000), idle);
    // Before: 240 or more.
    assert!(
        shards <= 25 * SHARDS as u64,
        "shards woke {shards} times in {idle:?}"
    );

    // The provider rotates; one shard sees the new kid and asks for a
    // refresh. Once the fetch is done, both shards take the new set in
    // at once, woken by the fetcher (without the wake they would look
    // only after 10 s).
    server.set(Serve::Jwks(jwks(&[&old, &new])));
    let token = new.sign(&claims());
    let mut conns: Vec<&mut Client> = by_shard.values_mut().collect();
    assert_eq!(
        send(conns[0], &token),
        401,
        "unknown kid before the refresh"
    );
    assert!(
        wait_until(Duration::from_secs(5), || server.fetches() >= 2),
        "no refresh fetch; stderr:\n{}",
        gw.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(
            send(c, &token),
            200,
            "shard {i}: the new key did not arrive"
        );
    }
}

/// With `token_query`, the query's token is read only when the request has
/// no `Authorization` header: a request with two of them, or one of
/// another scheme, is 401 whatever the query holds (regression: the query's
/// valid token let it through, and the backend got the unverified
/// `Authorization` lines, forged `sub` and all).
#[test]
fn a_query_token_does_not_stand_in_for_an_unusable_authorization_header() {
    let backend = Backend::start(Reply::Echo);
    let rsa = Signer::rsa("rsa-1");
    let (path, name) = jwks_file(&jwks(&[&rsa]));
    let gw = gateway(
        &backend,
        &format!("jwks_file = \"{name}\"\ntoken_query = \"token\""),
    );
    let good = rsa.sign(&claims());
    // Signed by no configured key: what a backend reading the header
    // without verifying it would take for the caller.
    let forged = Signer::rsa("rsa-1").sign(&with(|c| c["sub"] = json!("admin")));
    let q = format!("/pets?token={good}");
    // The query alone, and a header token with it, still work.
    assert_eq!(get(&gw, &q, "").status, 200);
    assert_eq!(bearer(&gw, &q, &good).status, 200);
    for (what, headers) in [
        (
            "two Authorization headers",
            format!("Authorization: Bearer {forged}\r\nAuthorization: Bearer {forged}\r\n"),
        ),
        (
            "another scheme",
            "Authorization: Basic YWRtaW46YWRtaW4=\r\n".to_string(),
        ),
        ("an empty header", "Authorization: \r\n".to_string()),
        ("a scheme alone", "Authorization: Bearer\r\n".to_string()),
    ] {
        assert_unauthorized(&get(&gw, &q, &headers), what);
    }
    assert_unauthorized(&bearer(&gw, &q, &forged), "a forged header token");
    assert_eq!(backend.hits(), 2, "only the two good requests got through");
    let _ = std::fs::remove_file(path);
}
