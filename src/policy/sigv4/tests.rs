//! SigV4 unit tests: the public test-suite vectors byte for byte
//! (canonical request, string to sign, signature) and through the whole
//! verifier, then each refusal, the key cache and the config compile.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds (configs, keys, temp files, vectors), so a
//! failure is a failing test; nothing a client or an operator's config
//! controls reaches them.

use super::canonical::{self, Parts};
use super::*;
use std::path::PathBuf;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// 2015-08-30T12:36:00Z, the vectors' time.
const T0: i64 = 1_440_938_160;

// === impl vector files ===

fn suite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/policy/sigv4/test-suite/v4")
}

fn read(dir: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(suite_dir().join(dir).join(file)).ok()
}

/// A string field of the flat context.json (no JSON parser needed for it).
fn json_str(text: &str, key: &str) -> Option<String> {
    let at = text.find(&format!("\"{key}\""))?;
    let rest = &text[at + key.len() + 2..];
    let rest = rest[rest.find(':')? + 1..].trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

fn json_bool(text: &str, key: &str) -> Option<bool> {
    let at = text.find(&format!("\"{key}\""))?;
    let rest = &text[at + key.len() + 2..];
    let rest = rest[rest.find(':')? + 1..].trim_start();
    Some(rest.starts_with("true"))
}

/// A request as the vector files write it: a request line whose target may
/// hold spaces, header lines (`Name:value`; a line starting with whitespace
/// continues the one before, read as RFC 9112 says: the fold becomes a
/// space), a blank line, the body.
struct FileRequest {
    method: String,
    path: Vec<u8>,
    query: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
}

fn parse_file_request(text: &str) -> FileRequest {
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], text[i + 2..].trim_end_matches('\n')),
        None => (text.trim_end_matches('\n'), ""),
    };
    let mut lines = head.split('\n');
    let line = lines.next().expect("request line");
    let method_end = line.find(' ').expect("method");
    // One signed-request file leaves the version out.
    let target = match line.rfind(' ') {
        Some(v) if v > method_end && line[v + 1..].starts_with("HTTP/") => &line[method_end + 1..v],
        _ => &line[method_end + 1..],
    };
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], Some(target.as_bytes()[i + 1..].to_vec())),
        None => (target, None),
    };
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for l in lines {
        if l.starts_with(' ') || l.starts_with('\t') {
            let last = headers.last_mut().expect("continuation after a header");
            last.1.push(b' ');
            last.1.extend_from_slice(l.as_bytes());
            continue;
        }
        let colon = l.find(':').expect("header colon");
        headers.push((
            l.as_bytes()[..colon].to_vec(),
            l.as_bytes()[colon + 1..].to_vec(),
        ));
    }
    FileRequest {
        method: line[..method_end].to_string(),
        path: path.as_bytes().to_vec(),
        query,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

impl FileRequest {
    fn header_refs(&self) -> Vec<(&[u8], &[u8])> {
        self.headers.iter().map(|(n, v)| (&n[..], &v[..])).collect()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| trim(v))
    }
    fn query_param(&self, name: &str) -> Option<Vec<u8>> {
        let q = self.query.as_ref()?;
        q.split(|&b| b == b'&').find_map(|p| {
            let eq = p.iter().position(|&b| b == b'=')?;
            (&p[..eq] == name.as_bytes()).then(|| {
                let mut out = Vec::new();
                canonical::decode_query_into(&p[eq + 1..], &mut out);
                out
            })
        })
    }
}

/// Pulls `Key=value` out of an Authorization header value.
fn auth_part<'a>(auth: &'a [u8], key: &str) -> &'a [u8] {
    let s = std::str::from_utf8(auth).expect("ascii authorization");
    let at = s.find(&format!("{key}=")).expect("part present") + key.len() + 1;
    let rest = &s[at..];
    let end = rest.find(',').unwrap_or(rest.len());
    rest[..end].trim().as_bytes()
}

fn sha_hex(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    canonical::push_hex(
        &mut out,
        ring::digest::digest(&ring::digest::SHA256, b).as_ref(),
    );
    out
}

struct Context {
    region: String,
    service: String,
    time: i64,
    token: Option<String>,
    normalize: bool,
}

fn context(dir: &str) -> Context {
    match read(dir, "context.json") {
        Some(c) => Context {
            region: json_str(&c, "region").expect("region"),
            service: json_str(&c, "service").expect("service"),
            time: {
                let ts = json_str(&c, "timestamp").expect("timestamp");
                let compact: String = ts.chars().filter(|c| *c != '-' && *c != ':').collect();
                canonical::parse_amz_date(compact.as_bytes()).expect("timestamp parses")
            },
            token: json_str(&c, "token"),
            normalize: json_bool(&c, "normalize").unwrap_or(true),
        },
        // The two double-encoding vectors ship without a context.
        None => Context {
            region: "us-east-2".into(),
            service: "lambda".into(),
            time: canonical::parse_amz_date(b"20210511T154045Z").unwrap_or(0),
            token: None,
            normalize: true,
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Form {
    Header,
    Query,
}

impl Form {
    fn prefix(self) -> &'static str {
        match self {
            Form::Header => "header",
            Form::Query => "query",
        }
    }
}

/// Unnormalized vectors (S3's mode, which coregate does not offer) whose
/// path normalizes differently; their canonical URI is not ours to match.
/// Our parser also refuses dot segments before any authorizer runs.
const UNNORMALIZED_DIFFERENT: &[&str] = &[
    "get-relative-unnormalized",
    "get-relative-relative-unnormalized",
    "get-slash-dot-slash-unnormalized",
    "get-slash-pointless-dot-unnormalized",
    "get-slash-unnormalized",
    "get-slashes-unnormalized",
];

/// Checks one vector in one form; false when the vector has no such form.
fn run_vector(dir: &str, form: Form) -> Result<bool, String> {
    let ctx = context(dir);
    let p = form.prefix();
    let Some(signed_text) = read(dir, &format!("{p}-signed-request.txt")) else {
        return Ok(false);
    };
    let req = parse_file_request(&signed_text);
    let headers = req.header_refs();
    let parts = Parts {
        method: req.method.as_bytes(),
        path: &req.path,
        query: req.query.as_deref(),
        headers: &headers,
    };
    let (signed_headers, signature, amz_date, scope) = match form {
        Form::Header => {
            let auth = req.header("authorization").ok_or("no authorization")?;
            let cred = auth_part(auth, "Credential");
            let slash = cred.iter().position(|&b| b == b'/').ok_or("credential")?;
            (
                auth_part(auth, "SignedHeaders").to_vec(),
                auth_part(auth, "Signature").to_vec(),
                req.header("x-amz-date").ok_or("no x-amz-date")?.to_vec(),
                cred[slash + 1..].to_vec(),
            )
        }
        Form::Query => {
            let cred = req.query_param("X-Amz-Credential").ok_or("credential")?;
            let slash = cred.iter().position(|&b| b == b'/').ok_or("credential")?;
            (
                req.query_param("X-Amz-SignedHeaders")
                    .ok_or("signed headers")?,
                req.query_param("X-Amz-Signature").ok_or("signature")?,
                req.query_param("X-Amz-Date").ok_or("date")?,
                cred[slash + 1..].to_vec(),
            )
        }
    };
    let payload = match req.header("x-amz-content-sha256") {
        Some(h) => h.to_vec(),
        None => sha_hex(&req.body),
    };

    // 1. The canonical request, byte for byte.
    let mut creq = Vec::new();
    let mut scratch = Vec::new();
    canonical::canonical_request(
        &mut creq,
        &parts,
        &signed_headers,
        &payload,
        form == Form::Query,
        &mut scratch,
    )
    .map_err(|e| format!("canonical request: {e:?}"))?;
    // Some files end with a newline, which is not part of the text.
    let expected_creq = read(dir, &format!("{p}-canonical-request.txt")).ok_or("no creq")?;
    let expected_creq = expected_creq.trim_end_matches('\n');
    let compare_creq = ctx.normalize || !UNNORMALIZED_DIFFERENT.contains(&dir);
    // post-sts-header-after signs first and adds the token after: in the
    // query form the token then sits in the query but not in the canonical
    // request. We refuse that request (below) and skip the comparison.
    let token_added_after = dir == "post-sts-header-after" && form == Form::Query;
    if compare_creq && !token_added_after {
        if creq != expected_creq.as_bytes() {
            return Err(format!(
                "canonical request differs:\n--- ours ---\n{}\n--- expected ---\n{expected_creq}",
                String::from_utf8_lossy(&creq)
            ));
        }
        // 2. The string to sign.
        let mut sts = Vec::new();
        canonical::string_to_sign(&mut sts, &amz_date, &scope, &creq);
        if let Some(expected) = read(dir, &format!("{p}-string-to-sign.txt")) {
            if sts != expected.trim_end_matches('\n').as_bytes() {
                return Err(format!(
                    "string to sign differs:\n{}\n--- expected ---\n{expected}",
                    String::from_utf8_lossy(&sts)
                ));
            }
        }
        // 3. The signature, from the derived key.
        let date = &amz_date[..8];
        let key = canonical::signing_key(
            &canonical::secret_key(SECRET),
            date,
            ctx.region.as_bytes(),
            ctx.service.as_bytes(),
        );
        let sig = canonical::signature_hex(&key, &sts);
        if sig.as_bytes() != &signature[..] {
            return Err(format!(
                "signature {sig} != {}",
                String::from_utf8_lossy(&signature)
            ));
        }
        if let Some(expected) = read(dir, &format!("{p}-signature.txt")) {
            if sig != expected.trim() {
                return Err(format!("signature {sig} != file {expected}"));
            }
        }
    }

    // 4. The whole verifier on the signed request, a minute after signing.
    let plan = Sigv4Plan::new(
        &ctx.region,
        &ctx.service,
        &[(
            AKID,
            SECRET,
            "arn:aws:iam::123456789012:user/vector",
            ctx.token.as_deref(),
        )],
    );
    let state = ShardState::for_plan(&plan);
    let request = Request {
        parts,
        has_body: !req.body.is_empty(),
    };
    let result = verify(&plan, &state, 0, &request, ctx.time + 60).and_then(|v| match v.body {
        Some(b) => {
            let sha = ring::digest::digest(&ring::digest::SHA256, &req.body);
            let mut s = [0u8; 32];
            s.copy_from_slice(sha.as_ref());
            b.finish(&s).map(|()| v.credential)
        }
        None => Ok(v.credential),
    });
    if dir == "post-sts-header-after" {
        // The token was not signed: coregate requires it to be.
        let expected = match form {
            Form::Header => Failure::InvalidToken,
            Form::Query => Failure::SignatureMismatch,
        };
        return match result {
            Err(f) if f == expected => Ok(true),
            other => Err(format!(
                "unsigned token: expected {expected:?}, got {other:?}"
            )),
        };
    }
    if !compare_creq {
        return Ok(true);
    }
    match result {
        Ok(0) => {}
        other => return Err(format!("verify: {other:?}")),
    }

    // 5. One character of the signature changed: refused.
    let mut tampered = signed_text.clone();
    let sig_text = String::from_utf8_lossy(&signature).into_owned();
    let flipped: String = sig_text
        .char_indices()
        .map(|(i, c)| {
            if i == 10 {
                if c == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                c
            }
        })
        .collect();
    tampered = tampered.replace(&sig_text, &flipped);
    let treq = parse_file_request(&tampered);
    let theaders = treq.header_refs();
    let trequest = Request {
        parts: Parts {
            method: treq.method.as_bytes(),
            path: &treq.path,
            query: treq.query.as_deref(),
            headers: &theaders,
        },
        has_body: !treq.body.is_empty(),
    };
    let tresult = verify(&plan, &state, 0, &trequest, ctx.time + 60).and_then(|v| match v.body {
        Some(b) => {
            let sha = ring::digest::digest(&ring::digest::SHA256, &treq.body);
            let mut s = [0u8; 32];
            s.copy_from_slice(sha.as_ref());
            b.finish(&s)
        }
        None => Ok(()),
    });
    if tresult != Err(Failure::SignatureMismatch) {
        return Err(format!("tampered signature: {tresult:?}"));
    }
    Ok(true)
}

#[test]
fn every_suite_vector_matches_byte_for_byte_and_verifies() {
    let mut dirs: Vec<String> = std::fs::read_dir(suite_dir())
        .expect("test-suite directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 40, "the suite has 40 vectors: {dirs:?}");
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in &dirs {
        // See the two tests below.
        if dir == "get-space-normalized" || dir == "double-encode-path" {
            continue;
        }
        for form in [Form::Header, Form::Query] {
            match run_vector(dir, form) {
                Ok(true) => checked += 1,
                Ok(false) => {}
                Err(e) => failures.push(format!("{dir} ({form:?}): {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked >= 70, "checked {checked}");
}

/// `get-space-normalized` sends `/example%20space/` and expects
/// `/example%20space/`: a single encoding, which contradicts the suite's
/// own `double-url-encode` vector (`%3A` → `%253A`), AWS's specification
/// (non-S3 paths are encoded twice) and the real signers (`aws-sigv4`
/// ignores this vector for that reason). We follow the spec: the signer
/// encodes the path as it sends it, once more.
#[test]
fn space_vector_is_encoded_twice_as_the_spec_says() {
    let mut out = Vec::new();
    canonical::push_canonical_uri(&mut out, b"/example%20space/");
    assert_eq!(out, b"/example%2520space/");
    // The unnormalized twin sends a raw space: encoded once, as expected.
    out.clear();
    canonical::push_canonical_uri(&mut out, b"/example space/");
    assert_eq!(out, b"/example%20space/");
}

/// `double-encode-path` has no context and a canonical request whose date
/// does not match its request; its canonical URI is still a useful check.
#[test]
fn double_encode_path_vector_uri() {
    let creq = read("double-encode-path", "header-canonical-request.txt").expect("file");
    let expected = creq.lines().nth(1).expect("uri line");
    let mut out = Vec::new();
    canonical::push_canonical_uri(&mut out, b"/test/@connections/JBDvjfGEIAMCERw%3D");
    assert_eq!(String::from_utf8_lossy(&out), expected);
}

// === impl canonical pieces ===

fn uri(path: &str) -> String {
    let mut out = Vec::new();
    canonical::push_canonical_uri(&mut out, path.as_bytes());
    String::from_utf8(out).expect("ascii")
}

#[test]
fn canonical_uri_normalizes_and_encodes() {
    assert_eq!(uri(""), "/");
    assert_eq!(uri("/"), "/");
    assert_eq!(uri("//"), "/");
    assert_eq!(uri("/a//b/"), "/a/b/");
    assert_eq!(uri("/a/./b/../c"), "/a/c");
    assert_eq!(uri("/a/.."), "/");
    assert_eq!(uri("/../../a"), "/a");
    assert_eq!(uri("/a/b/."), "/a/b");
    assert_eq!(uri("/-._~AZaz09"), "/-._~AZaz09");
    assert_eq!(uri("/a%2Fb"), "/a%252Fb");
    assert_eq!(uri("/a+b:c@d"), "/a%2Bb%3Ac%40d");
    assert_eq!(uri("/\u{1234}"), "/%E1%88%B4");
}

fn query(q: &str, presigned: bool) -> String {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    canonical::push_canonical_query(&mut out, Some(q.as_bytes()), presigned, &mut scratch);
    String::from_utf8(out).expect("ascii")
}

#[test]
fn canonical_query_sorts_and_reencodes() {
    assert_eq!(query("b=2&a=1", false), "a=1&b=2");
    // repeated names sort by value
    assert_eq!(query("k=z&k=a&k=m", false), "k=a&k=m&k=z");
    // upper case sorts before lower case (byte order of the encoded names)
    assert_eq!(query("a=1&B=2", false), "B=2&a=1");
    // empty values and names without '='
    assert_eq!(query("flag&x=", false), "flag=&x=");
    assert_eq!(query("a=1&&b=2&", false), "a=1&b=2");
    // decode then encode: the same text whatever the client's encoding
    assert_eq!(query("q=a%20b", false), "q=a%20b");
    assert_eq!(query("q=a+b", false), "q=a%20b");
    assert_eq!(query("q=%2b", false), "q=%2B");
    assert_eq!(query("q=%7e%41", false), "q=~A");
    assert_eq!(query("q=a,b/c", false), "q=a%2Cb%2Fc");
    assert_eq!(query("q=a=b", false), "q=a%3Db");
    // a '%' without two hex digits stands for itself
    assert_eq!(query("q=100%&r=%zz&s=%4", false), "q=100%25&r=%25zz&s=%254");
    // sorting happens on the encoded forms
    assert_eq!(query("%E1%88%B4=1&Z=2", false), "%E1%88%B4=1&Z=2");
    // the signature is left out only in the presigned form
    assert_eq!(query("X-Amz-Signature=ab&a=1", true), "a=1");
    assert_eq!(
        query("X-Amz-Signature=ab&a=1", false),
        "X-Amz-Signature=ab&a=1"
    );
}

#[test]
fn canonical_headers_trim_collapse_join() {
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b"Host", b"example.com"),
        (b"X-A", b"  a   b  c  "),
        (b"x-a", b"\tsecond\t"),
        (b"X-Tab", b"a\t\tb"),
    ];
    let mut out = Vec::new();
    canonical::push_canonical_headers(
        &mut out,
        [&b"host"[..], b"x-a", b"x-tab"].into_iter(),
        &headers,
    )
    .expect("all present");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "host:example.com\nx-a:a b c,second\nx-tab:a\t\tb\n"
    );
    let missing = canonical::push_canonical_headers(&mut out, [&b"x-b"[..]].into_iter(), &headers);
    assert_eq!(missing, Err(canonical::CanonicalError::SignedHeaderMissing));
}

#[test]
fn amz_dates_parse_and_format() {
    assert_eq!(canonical::parse_amz_date(b"20150830T123600Z"), Some(T0));
    assert_eq!(canonical::parse_amz_date(b"19700101T000000Z"), Some(0));
    assert_eq!(
        canonical::parse_amz_date(b"20240229T235959Z"),
        Some(1_709_251_199)
    );
    for bad in [
        &b"20230229T000000Z"[..],
        b"20150830T240000Z",
        b"20150830T126000Z",
        b"20150830T123660Z",
        b"20151330T123600Z",
        b"20150800T123600Z",
        b"20150830 123600Z",
        b"20150830T123600",
        b"2015-08-30T12:36:00Z",
        b"2015083aT123600Z",
        b"",
    ] {
        assert_eq!(
            canonical::parse_amz_date(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    for t in [0, T0, 1_709_251_199, 4_102_444_800] {
        let s = canonical::format_amz_date(t);
        assert_eq!(canonical::parse_amz_date(s.as_bytes()), Some(t), "{s}");
    }
}

// === impl verifier ===

const REGION: &str = "us-east-1";
const SERVICE: &str = "execute-api";
const PRINCIPAL: &str = "arn:aws:iam::123456789012:user/alice";
const TOKEN: &str = "FQoGZXIvYXdzEXAMPLETOKEN";

fn plan() -> Sigv4Plan {
    Sigv4Plan::new(
        REGION,
        SERVICE,
        &[
            (AKID, SECRET, PRINCIPAL, None),
            (
                "ASIATEMP",
                "temp-secret",
                "arn:aws:sts::1:assumed-role/r/s",
                Some(TOKEN),
            ),
        ],
    )
}

/// A request to sign and verify in the tests below.
#[derive(Clone)]
struct TestReq {
    method: &'static str,
    path: &'static str,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl TestReq {
    fn get(path: &'static str) -> TestReq {
        TestReq {
            method: "GET",
            path,
            query: None,
            headers: vec![("Host".into(), "api.example.com".into())],
            body: Vec::new(),
        }
    }
    fn header(mut self, n: &str, v: &str) -> TestReq {
        self.headers.push((n.into(), v.into()));
        self
    }
    fn query(mut self, q: &str) -> TestReq {
        self.query = Some(q.into());
        self
    }
    fn refs(&self) -> Vec<(&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }
    fn set_header(&mut self, n: &str, v: &str) {
        self.headers.retain(|(h, _)| !h.eq_ignore_ascii_case(n));
        self.headers.push((n.into(), v.into()));
    }

    /// Signs with the header form: `signed` names (sorted), the payload
    /// hash given or the body's.
    fn sign(
        mut self,
        akid: &str,
        secret: &str,
        at: i64,
        signed: &str,
        payload: Option<&str>,
    ) -> TestReq {
        let date = canonical::format_amz_date(at);
        self.set_header("X-Amz-Date", &date);
        let payload = payload.map_or_else(|| sha_hex(&self.body), |p| p.as_bytes().to_vec());
        let sig = self.signature(secret, &date, signed, &payload, false);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={akid}/{}/{REGION}/{SERVICE}/aws4_request, SignedHeaders={signed}, Signature={sig}",
            &date[..8]
        );
        self.headers.push(("Authorization".into(), auth));
        self
    }

    /// Signs with the presigned query form.
    fn presign(
        mut self,
        akid: &str,
        secret: &str,
        at: i64,
        expires: u64,
        token: Option<&str>,
    ) -> TestReq {
        let date = canonical::format_amz_date(at);
        let mut q = self.query.clone().map(|q| q + "&").unwrap_or_default();
        q.push_str(&format!(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={akid}%2F{}%2F{REGION}%2F{SERVICE}%2Faws4_request&X-Amz-Date={date}&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host",
            &date[..8]
        ));
        if let Some(t) = token {
            q.push_str(&format!("&X-Amz-Security-Token={t}"));
        }
        self.query = Some(q);
        let payload = sha_hex(&self.body);
        let sig = self.signature(secret, &date, "host", &payload, true);
        let q = self.query.take().unwrap_or_default();
        self.query = Some(format!("{q}&X-Amz-Signature={sig}"));
        self
    }

    fn signature(
        &self,
        secret: &str,
        date: &str,
        signed: &str,
        payload: &[u8],
        presigned: bool,
    ) -> String {
        let headers = self.refs();
        let parts = Parts {
            method: self.method.as_bytes(),
            path: self.path.as_bytes(),
            query: self.query.as_deref().map(str::as_bytes),
            headers: &headers,
        };
        let mut creq = Vec::new();
        let mut scratch = Vec::new();
        canonical::canonical_request(
            &mut creq,
            &parts,
            signed.as_bytes(),
            payload,
            presigned,
            &mut scratch,
        )
        .expect("signed headers present");
        let scope = format!("{}/{REGION}/{SERVICE}/aws4_request", &date[..8]);
        let mut sts = Vec::new();
        canonical::string_to_sign(&mut sts, date.as_bytes(), scope.as_bytes(), &creq);
        let key = canonical::signing_key(
            &canonical::secret_key(secret),
            &date.as_bytes()[..8],
            REGION.as_bytes(),
            SERVICE.as_bytes(),
        );
        canonical::signature_hex(&key, &sts)
    }

    /// Verifies at `now`, finishing a body check with the body.
    fn verify_at(&self, plan: &Sigv4Plan, now: i64) -> Result<Verified, Failure> {
        let state = ShardState::for_plan(plan);
        let headers = self.refs();
        let req = Request {
            parts: Parts {
                method: self.method.as_bytes(),
                path: self.path.as_bytes(),
                query: self.query.as_deref().map(str::as_bytes),
                headers: &headers,
            },
            has_body: !self.body.is_empty(),
        };
        let v = verify(plan, &state, 0, &req, now)?;
        if let Some(b) = &v.body {
            let sha = ring::digest::digest(&ring::digest::SHA256, &self.body);
            let mut s = [0u8; 32];
            s.copy_from_slice(sha.as_ref());
            b.finish(&s)?;
        }
        Ok(v)
    }
}

fn signed_get() -> TestReq {
    TestReq::get("/pets").sign(AKID, SECRET, T0, "host;x-amz-date", None)
}

#[test]
fn a_signed_get_verifies_as_its_credential() {
    let v = signed_get().verify_at(&plan(), T0).expect("verifies");
    assert_eq!(v.credential, 0);
    assert_eq!(v.body, None);
}

#[test]
fn clock_skew_is_five_minutes_either_way() {
    let p = plan();
    let r = signed_get();
    assert!(r.verify_at(&p, T0 + 300).is_ok());
    assert!(r.verify_at(&p, T0 - 300).is_ok());
    let late = r.verify_at(&p, T0 + 301).expect_err("expired");
    assert_eq!(
        late,
        Failure::Expired {
            date: T0,
            now: T0 + 301,
            skew: 300
        }
    );
    assert_eq!(
        late.message(),
        "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z (20150830T124101Z - 5 min.)"
    );
    let early = r.verify_at(&p, T0 - 301).expect_err("not yet");
    assert_eq!(
        early.message(),
        "Signature not yet current: 20150830T123600Z is still later than 20150830T123559Z (20150830T123059Z + 5 min.)"
    );
    let mut narrow = plan();
    narrow.max_skew_s = 30;
    assert!(matches!(
        r.verify_at(&narrow, T0 + 31),
        Err(Failure::Expired { .. })
    ));
    assert!(r.verify_at(&narrow, T0 + 30).is_ok());
}

#[test]
fn missing_both_and_malformed_forms_are_refused() {
    let p = plan();
    assert_eq!(TestReq::get("/x").verify_at(&p, T0), Err(Failure::Missing));
    assert_eq!(Failure::Missing.message(), "Missing Authentication Token");
    // an Authorization header of another scheme
    let bearer = TestReq::get("/x").header("Authorization", "Bearer abc");
    assert!(matches!(
        bearer.verify_at(&p, T0),
        Err(Failure::IncompleteHeader {
            credential: true,
            signed_headers: true,
            signature: true,
            date: true
        })
    ));
    // SigV4a is not supported
    let v4a = TestReq::get("/x").header("Authorization", "AWS4-ECDSA-P256-SHA256 Credential=x");
    assert_eq!(v4a.verify_at(&p, T0), Err(Failure::UnsupportedAlgorithm));
    // parts missing
    let partial = TestReq::get("/x")
        .header("X-Amz-Date", "20150830T123600Z")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/execute-api/aws4_request",
        );
    let f = partial.verify_at(&p, T0).expect_err("incomplete");
    assert_eq!(
        f.message(),
        "Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter."
    );
    // no X-Amz-Date
    let mut no_date = signed_get();
    no_date.headers.retain(|(n, _)| n != "X-Amz-Date");
    assert!(matches!(
        no_date.verify_at(&p, T0),
        Err(Failure::IncompleteHeader { date: true, .. })
    ));
    // an unknown part, a repeated part, a part without '='
    for auth in [
        "AWS4-HMAC-SHA256 Credential=a, SignedHeaders=host, Signature=00, Extra=1",
        "AWS4-HMAC-SHA256 Credential=a, Credential=a, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=a, SignedHeaders, Signature=00",
    ] {
        let r = TestReq::get("/x")
            .header("X-Amz-Date", "20150830T123600Z")
            .header("Authorization", auth);
        assert!(
            matches!(r.verify_at(&p, T0), Err(Failure::Malformed(_))),
            "{auth}"
        );
    }
    // two Authorization headers
    let twice = signed_get().header("Authorization", "AWS4-HMAC-SHA256 x");
    assert!(matches!(
        twice.verify_at(&p, T0),
        Err(Failure::Malformed(_))
    ));
    // both forms
    let both = signed_get().query("X-Amz-Algorithm=AWS4-HMAC-SHA256");
    assert_eq!(both.verify_at(&p, T0), Err(Failure::BothForms));
    // a garbled date
    let mut bad_date = signed_get();
    bad_date.set_header("X-Amz-Date", "2015-08-30T12:36:00Z");
    assert_eq!(bad_date.verify_at(&p, T0), Err(Failure::BadDate));
}

#[test]
fn the_credential_scope_must_match_config_and_date() {
    let p = plan();
    let with_cred = |cred: &str| {
        let r = signed_get();
        let mut r2 = r.clone();
        r2.headers.retain(|(n, _)| n != "Authorization");
        let auth = r
            .headers
            .iter()
            .find(|(n, _)| n == "Authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let cut = auth.find(", SignedHeaders").unwrap_or(auth.len());
        r2.headers.push((
            "Authorization".into(),
            format!("AWS4-HMAC-SHA256 Credential={cred}{}", &auth[cut..]),
        ));
        r2.verify_at(&p, T0)
    };
    assert_eq!(
        with_cred("AKIDEXAMPLE/20150830/us-west-2/execute-api/aws4_request"),
        Err(Failure::WrongRegion("us-west-2".into()))
    );
    let f = with_cred("AKIDEXAMPLE/20150830/us-east-1/s3/aws4_request").expect_err("service");
    assert_eq!(
        f.message(),
        "Credential should be scoped to correct service: 'execute-api'."
    );
    assert_eq!(
        with_cred("AKIDEXAMPLE/20150830/us-east-1/execute-api/aws5_request"),
        Err(Failure::WrongTerminator("aws5_request".into()))
    );
    let f = with_cred("AKIDEXAMPLE/20150831/us-east-1/execute-api/aws4_request").expect_err("date");
    assert_eq!(
        f.message(),
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20150831' != '20150830', from '20150830T123600Z'."
    );
    for bad in [
        "AKIDEXAMPLE/20150830/us-east-1/execute-api",
        "AKIDEXAMPLE/20150830/us-east-1/execute-api/aws4_request/x",
        "",
    ] {
        assert!(
            matches!(with_cred(bad), Err(Failure::Malformed(_))),
            "{bad}"
        );
    }
    // control characters from the client are not echoed
    let f =
        with_cred("AKIDEXAMPLE/20150830/us\u{1}east/execute-api/aws4_request").expect_err("region");
    assert_eq!(f, Failure::WrongRegion("us?east".into()));
}

#[test]
fn wrong_secret_and_unknown_key_are_refused() {
    let p = plan();
    let wrong = TestReq::get("/pets").sign(AKID, "not-the-secret", T0, "host;x-amz-date", None);
    let f = wrong.verify_at(&p, T0).expect_err("wrong secret");
    assert_eq!(f, Failure::SignatureMismatch);
    // The message never carries what we computed.
    let expected = TestReq::get("/pets").sign(AKID, SECRET, T0, "host;x-amz-date", None);
    let real_sig = expected
        .headers
        .iter()
        .find(|(n, _)| n == "Authorization")
        .map(|(_, v)| v[v.len() - 64..].to_string());
    assert!(!f.message().contains(real_sig.as_deref().unwrap_or("-")));
    assert!(!f.message().contains("GET\n"));
    let unknown = TestReq::get("/pets").sign("AKIDUNKNOWN", SECRET, T0, "host;x-amz-date", None);
    let f = unknown.verify_at(&p, T0).expect_err("unknown key");
    assert_eq!(
        f.message(),
        "The security token included in the request is invalid."
    );
    // a malformed signature is a mismatch
    let mut short = signed_get();
    let auth = short
        .headers
        .iter()
        .find(|(n, _)| n == "Authorization")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    short.set_header(
        "Authorization",
        &auth
            .to_uppercase()
            .replace("AWS4-HMAC-SHA256 CREDENTIAL", "AWS4-HMAC-SHA256 Credential"),
    );
    assert!(short.verify_at(&p, T0).is_err());
}

#[test]
fn signed_headers_rules() {
    let p = plan();
    let r = TestReq::get("/x").sign(AKID, SECRET, T0, "x-amz-date", None);
    assert_eq!(r.verify_at(&p, T0), Err(Failure::HostNotSigned));
    let r =
        TestReq::get("/x")
            .header("X-B", "1")
            .sign(AKID, SECRET, T0, "x-b;host;x-amz-date", None);
    assert_eq!(r.verify_at(&p, T0), Err(Failure::BadSignedHeaders));
    let r = TestReq::get("/x").sign(AKID, SECRET, T0, "host;host;x-amz-date", None);
    assert_eq!(r.verify_at(&p, T0), Err(Failure::BadSignedHeaders));
    let r = TestReq::get("/x")
        .header("X-B", "1")
        .sign(AKID, SECRET, T0, "Host;x-amz-date", None);
    assert_eq!(r.verify_at(&p, T0), Err(Failure::BadSignedHeaders));
    // a signed header the request does not carry
    let mut r =
        TestReq::get("/x")
            .header("X-B", "1")
            .sign(AKID, SECRET, T0, "host;x-amz-date;x-b", None);
    assert!(r.verify_at(&p, T0).is_ok());
    r.headers.retain(|(n, _)| n != "X-B");
    assert_eq!(r.verify_at(&p, T0), Err(Failure::SignatureMismatch));
}

#[test]
fn unsigned_headers_may_change_signed_ones_may_not() {
    let p = plan();
    let r = TestReq::get("/x").header("X-Signed", "a").sign(
        AKID,
        SECRET,
        T0,
        "host;x-amz-date;x-signed",
        None,
    );
    assert!(r
        .clone()
        .header("X-Added", "later")
        .verify_at(&p, T0)
        .is_ok());
    let mut changed = r.clone();
    changed.set_header("X-Signed", "b");
    assert_eq!(changed.verify_at(&p, T0), Err(Failure::SignatureMismatch));
    // Whitespace the canonical form removes is not a change.
    let mut spaced = r.clone();
    spaced.set_header("X-Signed", "  a ");
    assert!(spaced.verify_at(&p, T0).is_ok());
    let mut path = r.clone();
    path.path = "/y";
    assert_eq!(path.verify_at(&p, T0), Err(Failure::SignatureMismatch));
    let mut method = r;
    method.method = "DELETE";
    assert_eq!(method.verify_at(&p, T0), Err(Failure::SignatureMismatch));
}

#[test]
fn payload_hash_rules() {
    let p = plan();
    let mut post = TestReq::get("/items");
    post.method = "POST";
    post.body = b"{\"a\":1}".to_vec();
    // No x-amz-content-sha256: the signature waits for the body.
    let signed = post.clone().sign(AKID, SECRET, T0, "host;x-amz-date", None);
    let state = ShardState::for_plan(&p);
    let headers = signed.refs();
    let req = Request {
        parts: Parts {
            method: b"POST",
            path: b"/items",
            query: None,
            headers: &headers,
        },
        has_body: true,
    };
    let v = verify(&p, &state, 0, &req, T0).expect("provisionally verified");
    let check = v.body.expect("a body check");
    assert!(matches!(check.expect, Expect::Signature(_)));
    assert_eq!(&*check.principal, PRINCIPAL);
    assert!(!format!("{check:?}").contains(&format!("{:?}", &SECRET[..8])));
    let mut tampered = [0u8; 32];
    tampered.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b"{\"a\":2}").as_ref());
    assert_eq!(check.finish(&tampered), Err(Failure::SignatureMismatch));
    assert!(signed.verify_at(&p, T0).is_ok());

    // Declared: checked at once, and the body must match.
    let body_hash = String::from_utf8(sha_hex(&post.body)).unwrap_or_default();
    let declared = post
        .clone()
        .header("X-Amz-Content-Sha256", &body_hash)
        .sign(
            AKID,
            SECRET,
            T0,
            "host;x-amz-content-sha256;x-amz-date",
            Some(&body_hash),
        );
    assert!(declared.verify_at(&p, T0).is_ok());
    let mut lie = declared.clone();
    lie.body = b"{\"a\":2}".to_vec();
    assert_eq!(lie.verify_at(&p, T0), Err(Failure::BodyHashMismatch));
    // A declared hash of a body that is not there.
    let mut gone = declared.clone();
    gone.body.clear();
    assert_eq!(gone.verify_at(&p, T0), Err(Failure::BodyHashMismatch));

    // UNSIGNED-PAYLOAD: no body check at all.
    let unsigned = post
        .clone()
        .header("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
        .sign(
            AKID,
            SECRET,
            T0,
            "host;x-amz-content-sha256;x-amz-date",
            Some("UNSIGNED-PAYLOAD"),
        );
    let v = unsigned.verify_at(&p, T0).expect("unsigned payload");
    assert_eq!(v.body, None);

    // Garbage in x-amz-content-sha256.
    let bad = post
        .clone()
        .header("X-Amz-Content-Sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
        .sign(
            AKID,
            SECRET,
            T0,
            "host;x-amz-content-sha256;x-amz-date",
            Some("STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        );
    assert_eq!(bad.verify_at(&p, T0), Err(Failure::BadContentSha256));
}

#[test]
fn session_tokens_must_be_present_right_and_signed() {
    let p = plan();
    let ok = TestReq::get("/x")
        .header("X-Amz-Security-Token", TOKEN)
        .sign(
            "ASIATEMP",
            "temp-secret",
            T0,
            "host;x-amz-date;x-amz-security-token",
            None,
        );
    assert_eq!(ok.verify_at(&p, T0).map(|v| v.credential), Ok(1));
    let unsigned = TestReq::get("/x")
        .header("X-Amz-Security-Token", TOKEN)
        .sign("ASIATEMP", "temp-secret", T0, "host;x-amz-date", None);
    assert_eq!(unsigned.verify_at(&p, T0), Err(Failure::InvalidToken));
    let missing = TestReq::get("/x").sign("ASIATEMP", "temp-secret", T0, "host;x-amz-date", None);
    assert_eq!(missing.verify_at(&p, T0), Err(Failure::InvalidToken));
    let wrong = TestReq::get("/x")
        .header("X-Amz-Security-Token", "FQoGZXIvYXdzEXAMPLETOKEX")
        .sign(
            "ASIATEMP",
            "temp-secret",
            T0,
            "host;x-amz-date;x-amz-security-token",
            None,
        );
    assert_eq!(wrong.verify_at(&p, T0), Err(Failure::InvalidToken));
    // a token with a long-term key that has none
    let unexpected = TestReq::get("/x")
        .header("X-Amz-Security-Token", TOKEN)
        .sign(
            AKID,
            SECRET,
            T0,
            "host;x-amz-date;x-amz-security-token",
            None,
        );
    assert_eq!(unexpected.verify_at(&p, T0), Err(Failure::InvalidToken));
    // presigned: the token is a query parameter (signed with the query)
    let pre = TestReq::get("/x").presign("ASIATEMP", "temp-secret", T0, 60, Some(TOKEN));
    assert!(pre.verify_at(&p, T0).is_ok());
    let pre = TestReq::get("/x").presign("ASIATEMP", "temp-secret", T0, 60, None);
    assert_eq!(pre.verify_at(&p, T0), Err(Failure::InvalidToken));
}

#[test]
fn presigned_urls_expire_and_cannot_be_altered() {
    let p = plan();
    let r = TestReq::get("/file")
        .query("v=1&a=b%20c")
        .presign(AKID, SECRET, T0, 600, None);
    assert!(r.verify_at(&p, T0).is_ok());
    assert!(r.verify_at(&p, T0 + 600).is_ok());
    let f = r.verify_at(&p, T0 + 601).expect_err("expired");
    assert_eq!(
        f,
        Failure::PresignExpired {
            date: T0,
            expires: 600,
            now: T0 + 601
        }
    );
    assert_eq!(
        f.message(),
        "Request has expired: X-Amz-Date 20150830T123600Z plus X-Amz-Expires 600 s is earlier than 20150830T124601Z"
    );
    // signed in the future beyond the skew
    assert!(matches!(
        r.verify_at(&p, T0 - 301),
        Err(Failure::NotYetCurrent { .. })
    ));
    // a query parameter changed or added
    let mut changed = r.clone();
    changed.query = changed.query.map(|q| q.replace("v=1", "v=2"));
    assert_eq!(changed.verify_at(&p, T0), Err(Failure::SignatureMismatch));
    let mut added = r.clone();
    added.query = added.query.map(|q| q + "&extra=1");
    assert_eq!(added.verify_at(&p, T0), Err(Failure::SignatureMismatch));
    // the lifetime
    for e in ["0", "604801", "-1", "1e3", ""] {
        let mut bad = r.clone();
        bad.query = bad
            .query
            .map(|q| q.replace("X-Amz-Expires=600", &format!("X-Amz-Expires={e}")));
        assert_eq!(bad.verify_at(&p, T0), Err(Failure::BadExpires), "{e}");
    }
    let week = TestReq::get("/file").presign(AKID, SECRET, T0, 604_800, None);
    assert!(week.verify_at(&p, T0 + 604_800).is_ok());
    // a parameter missing, or twice
    let mut missing = r.clone();
    missing.query = missing
        .query
        .map(|q| q.replace("X-Amz-SignedHeaders=host&", ""));
    assert_eq!(missing.verify_at(&p, T0), Err(Failure::IncompleteQuery));
    let mut twice = r.clone();
    twice.query = twice.query.map(|q| q + "&X-Amz-Date=20150830T123600Z");
    assert!(matches!(
        twice.verify_at(&p, T0),
        Err(Failure::Malformed(_))
    ));
    let mut alg = r;
    alg.query = alg
        .query
        .map(|q| q.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"));
    assert_eq!(alg.verify_at(&p, T0), Err(Failure::UnsupportedAlgorithm));
}

#[test]
fn signing_keys_are_cached_per_credential_and_day() {
    let p = plan();
    let state = ShardState::for_plan(&p);
    let d1 = *b"20150830";
    let d2 = *b"20150831";
    let (_, a) = state.signing_key(0, &p, 0, &d1).expect("key");
    let (_, b) = state.signing_key(0, &p, 0, &d1).expect("key");
    let (_, c) = state.signing_key(0, &p, 0, &d2).expect("key");
    assert_eq!(a, b);
    assert_ne!(a, c);
    let (_, d) = state.signing_key(0, &p, 1, &d1).expect("key");
    assert_ne!(a, d);
    // both days stay cached, and match a fresh derivation
    let fresh = canonical::signing_key_bytes(
        &canonical::secret_key(SECRET),
        &d1,
        REGION.as_bytes(),
        SERVICE.as_bytes(),
    );
    assert_eq!(a, fresh);
    let keys = state.keys.borrow();
    let slots = &keys[0][0];
    assert!(slots.iter().flatten().any(|k| k.date == d1));
    assert!(slots.iter().flatten().any(|k| k.date == d2));
    // An out-of-range index derives without caching, never panics.
    drop(keys);
    assert!(state.signing_key(5, &p, 0, &d1).is_some());
    assert!(state.signing_key(0, &p, 9, &d1).is_none());
}

#[test]
fn every_failure_is_403_but_a_body_too_large() {
    for f in [
        Failure::Missing,
        Failure::SignatureMismatch,
        Failure::InvalidToken,
        Failure::BodyHashMismatch,
    ] {
        assert_eq!(f.status(), 403);
    }
    assert_eq!(Failure::BodyTooLarge.status(), 413);
}

// === impl config ===

fn compile_text(text: &str, base: Option<&Path>) -> (Option<Sigv4Plan>, Vec<ConfigError>) {
    let raw: RawSigv4 = toml::from_str(text).expect("toml");
    let mut errors = Vec::new();
    let plan = compile(&raw, "authorizers[0].sigv4", base, &mut errors);
    (plan, errors)
}

fn error_keys(errors: &[ConfigError]) -> Vec<String> {
    errors.iter().map(|e| format!("{e}")).collect()
}

#[test]
fn config_defaults_and_inline_credentials() {
    let (plan, errors) = compile_text(
        r#"
region = "eu-west-1"
[[credentials]]
access_key_id = "AKIAIOSFODNN7EXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
principal = "arn:aws:iam::123456789012:user/alice"
"#,
        None,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let plan = plan.expect("plan");
    assert_eq!(plan.service, DEFAULT_SERVICE);
    assert_eq!(plan.max_skew_s, DEFAULT_MAX_SKEW_S);
    assert_eq!(plan.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(plan.principal_header, None);
    assert_eq!(plan.credentials.len(), 1);
    assert!(upstream_header_names(&plan).is_empty());
    // The Debug form never shows the secret.
    assert!(!format!("{plan:?}").contains("EXAMPLEKEY"));
}

#[test]
fn config_errors_name_their_key() {
    let (plan, errors) = compile_text(
        r#"
service = "Execute API"
max_skew_s = 0
max_body_bytes = 1000000000
principal_header = "x-amz-principal"
[[credentials]]
access_key_id = "AKID/1"
secret_access_key = "has space"
principal = ""
session_token = ""
[[credentials]]
principal = "p"
"#,
        None,
    );
    assert!(plan.is_none());
    let all = error_keys(&errors).join("\n");
    for needle in [
        "authorizers[0].sigv4.region",
        "authorizers[0].sigv4.service",
        "authorizers[0].sigv4.max_skew_s",
        "authorizers[0].sigv4.max_body_bytes",
        "authorizers[0].sigv4.principal_header",
        "authorizers[0].sigv4.credentials[0].access_key_id",
        "authorizers[0].sigv4.credentials[0].secret_access_key",
        "authorizers[0].sigv4.credentials[0].principal",
        "authorizers[0].sigv4.credentials[0].session_token",
        "authorizers[0].sigv4.credentials[1].access_key_id",
        "authorizers[0].sigv4.credentials[1].secret_access_key",
    ] {
        assert!(all.contains(needle), "no error for {needle}:\n{all}");
    }
    // A secret is never echoed, even a malformed one.
    assert!(!all.contains("has space"), "{all}");
}

#[test]
fn config_needs_credentials_and_unique_ids() {
    let (_, errors) = compile_text("region = \"us-east-1\"\n", None);
    assert!(error_keys(&errors)
        .join("\n")
        .contains("authorizers[0].sigv4.credentials"));
    let (_, errors) = compile_text(
        r#"
region = "us-east-1"
[[credentials]]
access_key_id = "AKID1"
secret_access_key = "s1"
principal = "p1"
[[credentials]]
access_key_id = "AKID1"
secret_access_key = "s2"
principal = "p2"
"#,
        None,
    );
    let all = error_keys(&errors).join("\n");
    assert!(
        all.contains("credentials[1].access_key_id") && all.contains("twice"),
        "{all}"
    );
}

#[test]
fn credentials_file_is_read_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("coregate-sigv4-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("creds.toml"),
        "[[credentials]]\naccess_key_id = \"AKIDFILE\"\nsecret_access_key = \"s\"\nprincipal = \"file-user\"\n",
    )
    .expect("write");
    let (plan, errors) = compile_text(
        "region = \"us-east-1\"\ncredentials_file = \"creds.toml\"\nprincipal_header = \"X-Principal\"\n",
        Some(&dir),
    );
    assert!(errors.is_empty(), "{errors:?}");
    let plan = plan.expect("plan");
    assert_eq!(plan.lookup(b"AKIDFILE"), Some(0));
    assert_eq!(plan.principal_header.as_deref(), Some("x-principal"));
    assert_eq!(
        upstream_header_names(&plan),
        vec!["x-principal".to_string()]
    );
    assert_eq!(
        plan.credentials[0].upstream_line,
        b"x-principal: file-user\r\n"
    );
    // unreadable, and unknown keys in the file
    let (_, errors) = compile_text(
        "region = \"us-east-1\"\ncredentials_file = \"nope.toml\"\n",
        Some(&dir),
    );
    assert!(error_keys(&errors)
        .join("\n")
        .contains("authorizers[0].sigv4.credentials_file"));
    std::fs::write(
        dir.join("bad.toml"),
        "[[credentials]]\naccess_key = \"x\"\n",
    )
    .expect("write");
    let (_, errors) = compile_text(
        "region = \"us-east-1\"\ncredentials_file = \"bad.toml\"\n",
        Some(&dir),
    );
    let all = error_keys(&errors).join("\n");
    assert!(
        all.contains("unknown key") && all.contains("access_key"),
        "{all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
