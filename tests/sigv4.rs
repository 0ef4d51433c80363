//! SigV4 over real sockets, against the real binary: every request here is
//! signed by the `aws-sigv4` crate (AWS's own Rust signer, which we did not
//! write), sent byte for byte by the raw client, and proxied to a real echo
//! backend that reports what it received.
//!
//! Covered: GET and POST (body hashed by the gateway before forwarding; a
//! tampered body is refused and the backend sees nothing), a declared
//! `x-amz-content-sha256`, `UNSIGNED-PAYLOAD`, chunked bodies, `Expect:
//! 100-continue`, queries with special characters and repeated keys,
//! session tokens, presigned URLs (good, expired, tampered, with a token),
//! wrong secret, unknown key, wrong region and service, clock skew both
//! ways, headers added after signing (allowed) or changed (refused), the
//! principal passed to the backend in a header a client cannot forge, and
//! config errors through `coregate check`.

mod support;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings,
};
use aws_sigv4::sign::v4;
use std::time::{Duration, SystemTime};
use support::*;

const REGION: &str = "us-east-1";
const SERVICE: &str = "execute-api";
const ALICE_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const ALICE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const ALICE: &str = "arn:aws:iam::123456789012:user/alice";
const TEMP_ID: &str = "ASIAY34FZKBOKMUTVV7A";
const TEMP_SECRET: &str = "temporary/secret+key";
const TEMP_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE//token+with/slashes==";
const TEMP: &str = "arn:aws:sts::123456789012:assumed-role/reader/session";
const FILE_ID: &str = "AKIAFILECREDENTIAL1";
const FILE_SECRET: &str = "file-secret";
const FILE_USER: &str = "arn:aws:iam::123456789012:user/from-file";
const PRINCIPAL_HEADER: &str = "x-coregate-principal";

/// One API behind a SigV4 authorizer (inline and file credentials, a small
/// body limit so the 413 is cheap to reach), one route opted out.
fn start(backend: &Backend) -> Gateway {
    let creds = temp_path("creds.toml");
    std::fs::write(
        &creds,
        format!(
            "[[credentials]]\naccess_key_id = \"{FILE_ID}\"\nsecret_access_key = \"{FILE_SECRET}\"\nprincipal = \"{FILE_USER}\"\n"
        ),
    )
    .expect("write credentials file");
    let file_name = creds
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name")
        .to_string();
    Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[authorizers]]
name = "iam"
[authorizers.sigv4]
region = "us-east-1"
max_body_bytes = 65536
principal_header = "X-Coregate-Principal"
credentials_file = "@FILE@"

[[authorizers.sigv4.credentials]]
access_key_id = "AKIAIOSFODNN7EXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
principal = "arn:aws:iam::123456789012:user/alice"

[[authorizers.sigv4.credentials]]
access_key_id = "ASIAY34FZKBOKMUTVV7A"
secret_access_key = "temporary/secret+key"
principal = "arn:aws:sts::123456789012:assumed-role/reader/session"
session_token = "IQoJb3JpZ2luX2VjEXAMPLE//token+with/slashes=="

[[apis]]
name = "iam"
authorizer = "iam"

[[apis.routes]]
key = "ANY /echo/{proxy+}"
integration = { type = "http_proxy", url = "http://@B@/echo/{proxy}" }

[[apis.routes]]
key = "GET /mock"
integration = { type = "mock", body = 'mock ok' }

[[apis.routes]]
key = "POST /limited"
throttle = { rate = 0.001, burst = 1 }
integration = { type = "mock", body = 'limited ok' }

[[apis.routes]]
key = "GET /open"
authorizer = "none"
integration = { type = "http_proxy", url = "http://@B@/open" }
"#,
        &[("B", backend.addr_str()), ("FILE", file_name)],
    ))
}

// === impl signing with aws-sigv4 ===

#[derive(Clone, Copy)]
enum Payload {
    /// The body is hashed into the signature; no x-amz-content-sha256
    /// (what botocore does for execute-api).
    Signed,
    /// The hash is also sent in x-amz-content-sha256.
    Declared,
    /// `UNSIGNED-PAYLOAD` in x-amz-content-sha256.
    Unsigned,
}

#[derive(Clone)]
struct Sign {
    id: &'static str,
    secret: &'static str,
    token: Option<&'static str>,
    region: &'static str,
    service: &'static str,
    time: SystemTime,
    payload: Payload,
    presign: Option<Duration>,
    token_mode: SessionTokenMode,
}

impl Default for Sign {
    fn default() -> Self {
        Sign {
            id: ALICE_ID,
            secret: ALICE_SECRET,
            token: None,
            region: REGION,
            service: SERVICE,
            time: SystemTime::now(),
            payload: Payload::Signed,
            presign: None,
            token_mode: SessionTokenMode::Include,
        }
    }
}

/// A signed request, ready to be written.
struct Signed {
    method: String,
    /// Path and query, as signed (and as sent).
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Signed {
    /// The request bytes, with Content-Length for a body.
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if !self.body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// The same request with a chunked body (3 chunks).
    fn chunked_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for piece in self.body.chunks(self.body.len().div_ceil(3).max(1)) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn header(mut self, name: &str, value: &str) -> Signed {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn set(mut self, name: &str, value: &str) -> Signed {
        for (n, v) in &mut self.headers {
            if n.eq_ignore_ascii_case(name) {
                *v = value.into();
            }
        }
        self
    }

    fn send(&self, gw: &Gateway) -> Response {
        gw.client().request(&self.bytes())
    }
}

/// Signs `method target` (path and query, already encoded) with `headers`
/// (Host is added) and `body`, as `opts` says, with aws-sigv4.
fn sign_request(
    gw: &Gateway,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    opts: &Sign,
) -> Signed {
    let host = gw.addr().to_string();
    let identity = Credentials::new(
        opts.id,
        opts.secret,
        opts.token.map(str::to_string),
        None,
        "coregate-test",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = match opts.payload {
        Payload::Signed => PayloadChecksumKind::NoHeader,
        Payload::Declared | Payload::Unsigned => PayloadChecksumKind::XAmzSha256,
    };
    settings.session_token_mode = opts.token_mode;
    if let Some(exp) = opts.presign {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(exp);
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(opts.region)
        .name(opts.service)
        .time(opts.time)
        .settings(settings)
        .build()
        .expect("signing params")
        .into();
    let mut all: Vec<(&str, &str)> = vec![("host", host.as_str())];
    all.extend_from_slice(headers);
    let uri = format!("http://{host}{target}");
    let signable_body = match opts.payload {
        Payload::Unsigned => SignableBody::UnsignedPayload,
        _ => SignableBody::Bytes(body),
    };
    let signable = SignableRequest::new(method, uri.as_str(), all.iter().copied(), signable_body)
        .expect("signable request");
    let (instructions, _signature) = sign(signable, &params).expect("sign").into_parts();
    let mut req = http::Request::builder().method(method).uri(uri.as_str());
    for (n, v) in &all {
        req = req.header(*n, *v);
    }
    let mut req = req.body(()).expect("http request");
    instructions.apply_to_request_http1x(&mut req);
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Signed {
        method: method.into(),
        target,
        headers,
        body: body.to_vec(),
    }
}

fn get(gw: &Gateway, target: &str, opts: &Sign) -> Signed {
    sign_request(gw, "GET", target, &[], b"", opts)
}

fn post(gw: &Gateway, target: &str, body: &[u8], opts: &Sign) -> Signed {
    sign_request(
        gw,
        "POST",
        target,
        &[("content-type", "application/json")],
        body,
        opts,
    )
}

fn assert_refused(r: &Response, status: u16, message_starts: &str) {
    let msg = assert_json_error(r, status);
    assert!(
        msg.starts_with(message_starts),
        "expected a message starting {message_starts:?}, got {msg:?}"
    );
}

fn mismatch(r: &Response) {
    assert_refused(
        r,
        403,
        "The request signature we calculated does not match the signature you provided.",
    );
}

// === the tests ===

#[test]
fn signed_get_reaches_the_backend_with_the_principal() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let r = get(&gw, "/echo/pets/1?kind=dog", &Sign::default()).send(&gw);
    let e = r.echo();
    assert_eq!(e.target, "/echo/pets/1?kind=dog");
    assert_eq!(e.header(PRINCIPAL_HEADER), Some(ALICE));
    // The signature's headers travel on unchanged.
    assert!(e
        .header("authorization")
        .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 ")));
    assert!(e.has("x-amz-date"));

    // A credential from the credentials file (relative to the config).
    let file = Sign {
        id: FILE_ID,
        secret: FILE_SECRET,
        ..Sign::default()
    };
    let e = get(&gw, "/echo/x", &file).send(&gw).echo();
    assert_eq!(e.header(PRINCIPAL_HEADER), Some(FILE_USER));

    // A mock route behind the authorizer.
    let r = get(&gw, "/mock", &Sign::default()).send(&gw);
    assert_eq!((r.status, r.text().as_str()), (200, "mock ok"));
}

#[test]
fn the_principal_header_cannot_be_forged() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    // Forged after signing (unsigned) ...
    let r = get(&gw, "/echo/a", &Sign::default())
        .header("X-Coregate-Principal", "arn:aws:iam::1:root")
        .send(&gw);
    assert_eq!(r.echo().headers_named(PRINCIPAL_HEADER), vec![ALICE]);
    // ... or even signed by the caller: the gateway's value replaces it.
    let r = sign_request(
        &gw,
        "GET",
        "/echo/a",
        &[("x-coregate-principal", "arn:aws:iam::1:root")],
        b"",
        &Sign::default(),
    )
    .send(&gw);
    assert_eq!(r.echo().headers_named(PRINCIPAL_HEADER), vec![ALICE]);
    // On a route without the authorizer, nobody's principal is claimed.
    let r = gw.client().request(
        b"GET /open HTTP/1.1\r\nHost: t\r\nX-Coregate-Principal: arn:aws:iam::1:root\r\n\r\n",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn unsigned_and_garbled_requests_get_api_gateway_answers() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let r = gw.client().get("/echo/x");
    assert_refused(&r, 403, "Missing Authentication Token");
    assert_eq!(r.text(), r#"{"message":"Missing Authentication Token"}"#);
    let r = gw
        .client()
        .request(b"GET /echo/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer abc\r\n\r\n");
    assert_refused(
        &r,
        403,
        "Authorization header requires 'Credential' parameter.",
    );
    let r = gw.client().request(
        b"GET /echo/x HTTP/1.1\r\nHost: t\r\nAuthorization: AWS4-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=00\r\n\r\n",
    );
    assert_refused(
        &r,
        403,
        "Authorization header requires existence of a 'X-Amz-Date' header.",
    );
    // The opted-out route takes anyone.
    assert_eq!(gw.client().get("/open").status, 200);
    assert_eq!(b.heads(), 1, "only /open reached the backend");
}

#[test]
fn post_bodies_are_hashed_before_anything_is_forwarded() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let body = br#"{"name":"rex","tags":["a","b"]}"#;
    // Signature over the body hash, no x-amz-content-sha256 (botocore's way).
    let s = post(&gw, "/echo/pets", body, &Sign::default());
    assert!(!s.headers.iter().any(|(n, _)| n == "x-amz-content-sha256"));
    let e = s.send(&gw).echo();
    assert_eq!(e.body, body);
    assert_eq!(e.header(PRINCIPAL_HEADER), Some(ALICE));
    let before = b.heads();

    // Same length, one byte changed: refused, the backend sees nothing.
    let mut tampered = post(&gw, "/echo/pets", body, &Sign::default());
    tampered.body = br#"{"name":"rax","tags":["a","b"]}"#.to_vec();
    mismatch(&tampered.send(&gw));
    // Chunked, tampered: the same.
    let mut c = gw.client();
    c.send(&tampered.chunked_bytes());
    mismatch(&c.read_response());
    assert_eq!(b.heads(), before, "the backend saw a tampered request");

    // Declared in x-amz-content-sha256: checked against the body.
    let declared = Sign {
        payload: Payload::Declared,
        ..Sign::default()
    };
    let s = post(&gw, "/echo/pets", body, &declared);
    assert!(s.headers.iter().any(|(n, _)| n == "x-amz-content-sha256"));
    assert_eq!(s.send(&gw).echo().body, body);
    let mut lie = post(&gw, "/echo/pets", body, &declared);
    lie.body = br#"{"name":"rax","tags":["a","b"]}"#.to_vec();
    assert_refused(
        &lie.send(&gw),
        403,
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    );
    assert_eq!(b.heads(), before + 1);

    // A chunked body is hashed over its data and forwarded as it came.
    let s = post(&gw, "/echo/pets", body, &Sign::default());
    let mut c = gw.client();
    c.send(&s.chunked_bytes());
    let r = c.read_response();
    assert_eq!(r.header("x-echo-chunked"), Some("1"));
    assert_eq!(r.echo().body, body);
}

#[test]
fn a_refused_body_keeps_the_connection_and_100_continue_works() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let body = vec![b'x'; 20_000];
    let mut c = gw.client();
    // A refused request whose body was read whole: the connection stays.
    let mut bad = post(&gw, "/echo/up", &body, &Sign::default());
    bad.body[19_999] = b'y';
    c.send(&bad.bytes());
    mismatch(&c.read_response());
    let good = post(&gw, "/echo/up", &body, &Sign::default());
    c.send(&good.bytes());
    assert_eq!(c.read_response().echo().body.len(), 20_000);

    // Expect: 100-continue: the gateway asks for the body (it must hash it).
    let s = post(&gw, "/echo/up", &body, &Sign::default()).header("Expect", "100-continue");
    let bytes = s.bytes();
    let split = bytes.len() - body.len();
    let mut c = gw.client();
    c.send(&bytes[..split]);
    let interim = c.read_interim();
    assert_eq!(interim.status, 100);
    c.send(&bytes[split..]);
    assert_eq!(c.read_response().echo().body, body);
}

#[test]
fn large_signed_bodies_are_413_unsigned_payload_streams() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let big = vec![b'z'; 100_000]; // over max_body_bytes = 65536
    let r = post(&gw, "/echo/big", &big, &Sign::default()).send(&gw);
    assert_refused(&r, 413, "Request Entity Too Large");
    let mut c = gw.client();
    c.send(&post(&gw, "/echo/big", &big, &Sign::default()).chunked_bytes());
    assert_refused(&c.read_response(), 413, "Request Entity Too Large");
    assert_eq!(b.heads(), 0);

    // UNSIGNED-PAYLOAD: the body is not hashed (nor buffered) at all, so
    // even a body changed in transit passes: that is what the client chose.
    let unsigned = Sign {
        payload: Payload::Unsigned,
        ..Sign::default()
    };
    let s = post(&gw, "/echo/big", &big, &unsigned);
    assert!(s
        .headers
        .iter()
        .any(|(n, v)| n == "x-amz-content-sha256" && v == "UNSIGNED-PAYLOAD"));
    assert_eq!(s.send(&gw).echo().body.len(), 100_000);
    let mut changed = post(&gw, "/echo/big", b"original", &unsigned);
    changed.body = b"modified".to_vec();
    assert_eq!(changed.send(&gw).echo().body, b"modified");
}

#[test]
fn queries_with_special_characters_and_repeated_keys() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    for target in [
        "/echo/q?b=2&a=1&a=0&a=10",
        "/echo/q?q=hello%20world&s=%2Fpath%2B1&t=~x._-&e=&u=%C3%A9t%C3%A9",
        "/echo/q?flag&Z=upper&z=lower",
        "/echo/q?q=a+b&eq=a%3Db",
        "/echo/caf%C3%A9/a%2Fb/%40home",
    ] {
        let r = get(&gw, target, &Sign::default()).send(&gw);
        assert_eq!(r.status, 200, "{target}: {r:?}");
        // Forwarded exactly as signed.
        let e = r.echo();
        assert_eq!(&e.target, target);
    }
    // A query parameter changed after signing.
    let mut s = get(&gw, "/echo/q?a=1&b=2", &Sign::default());
    s.target = "/echo/q?a=1&b=3".into();
    mismatch(&s.send(&gw));
}

#[test]
fn session_tokens_must_be_sent_and_signed() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let temp = Sign {
        id: TEMP_ID,
        secret: TEMP_SECRET,
        token: Some(TEMP_TOKEN),
        ..Sign::default()
    };
    let e = get(&gw, "/echo/t", &temp).send(&gw).echo();
    assert_eq!(e.header(PRINCIPAL_HEADER), Some(TEMP));
    let post_ok = post(&gw, "/echo/t", b"{}", &temp).send(&gw);
    assert_eq!(post_ok.status, 200);

    let invalid = "The security token included in the request is invalid.";
    // The token added after signing (not signed).
    let unsigned = Sign {
        token_mode: SessionTokenMode::Exclude,
        ..temp.clone()
    };
    let s = get(&gw, "/echo/t", &unsigned);
    assert!(s.headers.iter().any(|(n, _)| n == "x-amz-security-token"));
    assert_refused(&s.send(&gw), 403, invalid);
    // A different token (signed).
    let wrong = Sign {
        token: Some("IQoJb3JpZ2luX2VjEXAMPLE//token+with/slashes=X"),
        ..temp.clone()
    };
    assert_refused(&get(&gw, "/echo/t", &wrong).send(&gw), 403, invalid);
    // No token at all.
    let none = Sign {
        token: None,
        ..temp.clone()
    };
    assert_refused(&get(&gw, "/echo/t", &none).send(&gw), 403, invalid);
    // A token with a long-term key.
    let extra = Sign {
        token: Some(TEMP_TOKEN),
        ..Sign::default()
    };
    assert_refused(&get(&gw, "/echo/t", &extra).send(&gw), 403, invalid);
    assert_eq!(b.heads(), 2);
}

#[test]
fn presigned_urls_good_expired_tampered() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let pre = Sign {
        presign: Some(Duration::from_secs(900)),
        ..Sign::default()
    };
    let s = get(&gw, "/echo/file?version=2&name=a%20b", &pre);
    assert!(s.target.contains("X-Amz-Signature="), "{}", s.target);
    assert!(!s.headers.iter().any(|(n, _)| n == "authorization"));
    let e = s.send(&gw).echo();
    assert_eq!(e.header(PRINCIPAL_HEADER), Some(ALICE));
    assert!(e
        .target
        .starts_with("/echo/file?version=2&name=a%20b&X-Amz-Algorithm="));

    // Signed two hours ago for one hour: expired (replay past expiry).
    let old = Sign {
        presign: Some(Duration::from_secs(3600)),
        time: SystemTime::now() - Duration::from_secs(7200),
        ..Sign::default()
    };
    assert_refused(
        &get(&gw, "/echo/file", &old).send(&gw),
        403,
        "Request has expired",
    );
    // Signed ten minutes ago for an hour: still good (no 5-minute rule).
    let recent = Sign {
        presign: Some(Duration::from_secs(3600)),
        time: SystemTime::now() - Duration::from_secs(600),
        ..Sign::default()
    };
    assert_eq!(get(&gw, "/echo/file", &recent).send(&gw).status, 200);
    // Tampered: a parameter changed, or the lifetime stretched.
    let mut t = get(&gw, "/echo/file?version=2", &pre);
    t.target = t.target.replace("version=2", "version=3");
    mismatch(&t.send(&gw));
    let mut t = get(&gw, "/echo/file", &pre);
    t.target = t.target.replace("X-Amz-Expires=900", "X-Amz-Expires=9000");
    mismatch(&t.send(&gw));
    let mut t = get(&gw, "/echo/file", &pre);
    t.target = t
        .target
        .replace("X-Amz-Expires=900", "X-Amz-Expires=700000");
    assert_refused(&t.send(&gw), 403, "X-Amz-Expires must be");
    // With a session token in the query.
    let temp = Sign {
        id: TEMP_ID,
        secret: TEMP_SECRET,
        token: Some(TEMP_TOKEN),
        ..pre.clone()
    };
    let s = get(&gw, "/echo/file", &temp);
    assert!(s.target.contains("X-Amz-Security-Token="));
    assert_eq!(s.send(&gw).echo().header(PRINCIPAL_HEADER), Some(TEMP));
    // Both an Authorization header and a presigned query.
    let both = get(&gw, "/echo/file", &pre).header(
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=00",
    );
    assert_refused(&both.send(&gw), 403, "Only one auth mechanism allowed");
}

#[test]
fn wrong_secret_unknown_key_wrong_scope() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let wrong_secret = Sign {
        secret: "not-alices-secret",
        ..Sign::default()
    };
    let r = get(&gw, "/echo/x", &wrong_secret).send(&gw);
    mismatch(&r);
    // Nothing computed is echoed.
    assert!(!r.text().contains("GET\n") && !r.text().contains("AWS4-HMAC-SHA256\n"));
    let unknown = Sign {
        id: "AKIAUNKNOWNKEY000000",
        ..Sign::default()
    };
    assert_refused(
        &get(&gw, "/echo/x", &unknown).send(&gw),
        403,
        "The security token included in the request is invalid.",
    );
    let region = Sign {
        region: "eu-west-1",
        ..Sign::default()
    };
    assert_refused(
        &get(&gw, "/echo/x", &region).send(&gw),
        403,
        "Credential should be scoped to a valid region, not 'eu-west-1'.",
    );
    let service = Sign {
        service: "s3",
        ..Sign::default()
    };
    assert_refused(
        &get(&gw, "/echo/x", &service).send(&gw),
        403,
        "Credential should be scoped to correct service: 'execute-api'.",
    );
    assert_eq!(b.heads(), 0);
}

#[test]
fn clock_skew_over_five_minutes_either_way_is_refused() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let at = |offset: i64| Sign {
        time: if offset >= 0 {
            SystemTime::now() + Duration::from_secs(offset as u64)
        } else {
            SystemTime::now() - Duration::from_secs((-offset) as u64)
        },
        ..Sign::default()
    };
    assert_refused(
        &get(&gw, "/echo/x", &at(-360)).send(&gw),
        403,
        "Signature expired: ",
    );
    assert_refused(
        &get(&gw, "/echo/x", &at(360)).send(&gw),
        403,
        "Signature not yet current: ",
    );
    assert_eq!(get(&gw, "/echo/x", &at(-240)).send(&gw).status, 200);
    assert_eq!(get(&gw, "/echo/x", &at(240)).send(&gw).status, 200);
    let r = get(&gw, "/echo/x", &at(-360)).send(&gw);
    let msg = r.json_message().unwrap_or_default();
    assert!(msg.ends_with(" - 5 min.)"), "{msg}");
}

#[test]
fn headers_added_after_signing_pass_signed_ones_changed_do_not() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let s = sign_request(
        &gw,
        "GET",
        "/echo/h",
        &[("x-custom", "signed value"), ("accept", "application/json")],
        b"",
        &Sign::default(),
    );
    let auth = s
        .headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(auth.contains("x-custom"), "{auth}");
    // Added after signing: not part of the signature, allowed.
    let e = s
        .clone_with(|s| s.header("X-Trace", "proxy-added"))
        .send(&gw)
        .echo();
    assert_eq!(e.header("x-trace"), Some("proxy-added"));
    // A signed header changed: refused.
    mismatch(&s.clone_with(|s| s.set("x-custom", "other value")).send(&gw));
    // A signed header's whitespace changed: canonically the same.
    let r = s
        .clone_with(|s| s.set("x-custom", "  signed   value "))
        .send(&gw);
    assert_eq!(r.status, 200);
    // The Host changed.
    mismatch(&s.clone_with(|s| s.set("host", "other.example")).send(&gw));
}

impl Signed {
    fn clone_with(&self, f: impl FnOnce(Signed) -> Signed) -> Signed {
        f(Signed {
            method: self.method.clone(),
            target: self.target.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        })
    }
}

#[test]
fn config_errors_are_reported_by_check() {
    let text = r#"
[[authorizers]]
name = "iam"
[authorizers.sigv4]
service = "Bad Service"
max_skew_s = 0
credentials_file = "does-not-exist.toml"

[[authorizers.sigv4.credentials]]
access_key_id = "AKID"
principal = "p"

[[apis]]
name = "a"
authorizer = "iam"

[[apis.routes]]
key = "GET /x"
integration = { type = "mock" }
"#;
    let path = write_config(text);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap_or("")]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "authorizers[0].sigv4.region",
        "authorizers[0].sigv4.service",
        "authorizers[0].sigv4.max_skew_s",
        "authorizers[0].sigv4.credentials_file",
        "authorizers[0].sigv4.credentials[0].secret_access_key",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains(key)),
            "no error line for {key}:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("needs a sub-table"),
        "a broken sigv4 table is still a sigv4 table:\n{stderr}"
    );
}

#[test]
fn pipelined_requests_after_a_buffered_body_are_answered_in_order() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let one = post(&gw, "/echo/one", b"first body", &Sign::default());
    let two = get(&gw, "/echo/two", &Sign::default());
    let three = post(&gw, "/echo/three", &[b'3'; 3000], &Sign::default());
    let mut all = one.bytes();
    all.extend_from_slice(&two.bytes());
    all.extend_from_slice(&three.bytes());
    let mut c = gw.client();
    c.send(&all);
    let r1 = c.read_response().echo();
    let r2 = c.read_response().echo();
    let r3 = c.read_response().echo();
    assert_eq!(
        (r1.target.as_str(), r1.body.as_slice()),
        ("/echo/one", &b"first body"[..])
    );
    assert_eq!(r2.target, "/echo/two");
    assert_eq!((r3.target.as_str(), r3.body.len()), ("/echo/three", 3000));
}

#[test]
fn a_stalled_signed_body_times_out_and_reaches_nobody() {
    let b = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1
[server.limits]
body_read_timeout_ms = 300

[[authorizers]]
name = "iam"
[authorizers.sigv4]
region = "us-east-1"
[[authorizers.sigv4.credentials]]
access_key_id = "AKIAIOSFODNN7EXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
principal = "arn:aws:iam::123456789012:user/alice"

[[apis]]
name = "iam"
authorizer = "iam"
[[apis.routes]]
key = "ANY /echo/{proxy+}"
integration = { type = "http_proxy", url = "http://@B@/echo/{proxy}" }
"#,
        &[("B", b.addr_str())],
    ));
    let body = vec![b'q'; 5000];
    let s = post(&gw, "/echo/slow", &body, &Sign::default());
    let bytes = s.bytes();
    let mut c = gw.client();
    c.send(&bytes[..bytes.len() - 1000]);
    assert_refused(&c.read_response(), 408, "Request Timeout");
    // A client that gives up mid-body.
    let mut c = gw.client();
    c.send(&bytes[..bytes.len() - 1000]);
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(b.heads(), 0);
}

#[test]
fn a_forged_body_costs_no_throttle_token() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let body = b"order=1";
    let good = post(&gw, "/limited", body, &Sign::default());
    let mut forged = good.clone_with(|s| s);
    forged.body = b"order=9".to_vec();
    // One connection: one shard, so the route's one token is that shard's.
    let mut c = gw.client();
    c.send(&forged.bytes());
    mismatch(&c.read_response());
    c.send(&forged.bytes());
    mismatch(&c.read_response());
    // The forged requests spent nothing: the one token is still there.
    c.send(&good.bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"limited ok");
    c.send(&good.bytes());
    let r = c.read_response();
    assert_eq!(r.status, 429, "{r:?}");
}

/// A presigned URL covers every query parameter but its own signature:
/// nothing can be added to it that the signature leaves out (regression:
/// a parameter whose name *decoded* to X-Amz-Signature, such as
/// `X-Amz%2DSignature=...`, or a bare `X-Amz-Signature` without `=`, was
/// left out of the canonical query but not seen as a second signature,
/// so it reached the backend unsigned).
#[test]
fn nothing_unsigned_can_be_added_to_a_presigned_url() {
    let b = Backend::start(Reply::Echo);
    let gw = start(&b);
    let pre = Sign {
        presign: Some(Duration::from_secs(900)),
        ..Sign::default()
    };
    let s = get(&gw, "/echo/file?version=2", &pre);
    assert_eq!(s.send(&gw).status, 200);
    let mut t = get(&gw, "/echo/file?version=2", &pre);
    t.target.push_str("&X-Amz%2DSignature=injected");
    mismatch(&t.send(&gw));
    let mut t = get(&gw, "/echo/file?version=2", &pre);
    t.target.push_str("&X-Amz-Signature");
    assert_refused(
        &t.send(&gw),
        403,
        "a presigned X-Amz-* query parameter appears more than once",
    );
    assert_eq!(b.hits(), 1, "only the untouched URL reached the backend");
}
