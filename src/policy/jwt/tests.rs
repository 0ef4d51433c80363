//! Byte-level cases for the JWT authorizer's pure parts: JWKS parsing,
//! token verification (segments, base64url, header, key choice, signature,
//! claims), scopes, claim headers, the Authorization header, config errors
//! and the fetcher's URL and response parsing. Tokens here are assembled by
//! hand and signed with ring; tests/jwt.rs mints them with a JWT library.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on a
//! fixture the test itself builds (configs, keys, temp files, vectors), so a
//! failure is a failing test; nothing a client or an operator's config
//! controls reaches them.

use super::fetch::{parse_response, parse_url};
use super::jwks::{self, KeySet, Origin};
use super::verify::{self, Alg, AlgSet, Reject, Rules, MAX_TOKEN_BYTES};
use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

const ISS: &str = "https://issuer.example/pool";
const AUD: &str = "my-api";
const NOW: f64 = 1_700_000_000.0;
const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hs256";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

struct Signers {
    ed: Ed25519KeyPair,
    ec: EcdsaKeyPair,
    ed_other: Ed25519KeyPair,
    rng: SystemRandom,
}

fn signers() -> Signers {
    let rng = SystemRandom::new();
    let ed =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let ed_other =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    Signers {
        ed,
        ec,
        ed_other,
        rng,
    }
}

/// A synthetic 2048-bit RSA modulus: never verifies anything, but is a
/// well-formed key for the key-choice tests.
fn fake_rsa_n() -> Vec<u8> {
    let mut n = vec![0xc5u8; 256];
    n[255] |= 1;
    n
}

fn jwks_doc(s: &Signers) -> serde_json::Value {
    let ec_pub = s.ec.public_key().as_ref();
    json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(s.ed.public_key().as_ref())},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": b64(&ec_pub[1..33]), "y": b64(&ec_pub[33..65])},
        {"kty": "oct", "kid": "hs", "k": b64(HMAC_SECRET)},
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "use": "sig", "n": b64(&fake_rsa_n()), "e": "AQAB"},
    ]})
}

fn keyset(s: &Signers) -> KeySet {
    let (set, report) = jwks::parse(jwks_doc(s).to_string().as_bytes(), Origin::File).unwrap();
    assert_eq!(report, jwks::LoadReport::default());
    set
}

fn rules(audience: &[String]) -> Rules<'_> {
    Rules {
        issuer: ISS,
        audience,
        algorithms: AlgSet::all(),
        leeway: 60.0,
    }
}

fn aud() -> Vec<String> {
    vec![AUD.to_string(), "other-client".to_string()]
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "aud": AUD, "sub": "user-1", "exp": NOW + 300.0, "iat": NOW - 10.0})
}

/// `header.payload.` signed by `sign` over the first two segments.
fn token_raw(header: &str, payload: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = sign(signed.as_bytes());
    format!("{signed}.{}", b64(&sig))
}

fn sign_ed(kp: &Ed25519KeyPair) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    move |m| kp.sign(m).as_ref().to_vec()
}

fn sign_hs(secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    move |m| {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        ring::hmac::sign(&k, m).as_ref().to_vec()
    }
}

fn ed_token(s: &Signers, claims: &serde_json::Value) -> String {
    token_raw(
        r#"{"alg":"EdDSA","kid":"ed","typ":"JWT"}"#,
        &claims.to_string(),
        sign_ed(&s.ed),
    )
}

fn check(token: &str, s: &Signers) -> Result<serde_json::Map<String, serde_json::Value>, Reject> {
    let a = aud();
    verify::verify(token.as_bytes(), &keyset(s), &rules(&a), NOW)
}

// === verify: the good paths ===

#[test]
fn eddsa_es256_and_hs256_tokens_verify_and_return_claims() {
    let s = signers();
    let c = check(&ed_token(&s, &claims()), &s).unwrap();
    assert_eq!(c.get("sub").and_then(|v| v.as_str()), Some("user-1"));

    let es = token_raw(
        r#"{"alg":"ES256","kid":"ec"}"#,
        &claims().to_string(),
        |m| s.ec.sign(&s.rng, m).unwrap().as_ref().to_vec(),
    );
    assert!(check(&es, &s).is_ok());

    let hs = token_raw(
        r#"{"alg":"HS256","kid":"hs"}"#,
        &claims().to_string(),
        sign_hs(HMAC_SECRET),
    );
    assert!(check(&hs, &s).is_ok());
}

#[test]
fn a_token_without_kid_uses_the_only_key_of_its_algorithm() {
    let s = signers();
    let t = token_raw(r#"{"alg":"EdDSA"}"#, &claims().to_string(), sign_ed(&s.ed));
    assert!(check(&t, &s).is_ok());
    // Two Ed25519 keys and no kid: ambiguous, refused.
    let mut doc = jwks_doc(&s);
    doc["keys"].as_array_mut().unwrap().push(
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed2", "x": b64(s.ed_other.public_key().as_ref())}),
    );
    let (set, _) = jwks::parse(doc.to_string().as_bytes(), Origin::File).unwrap();
    let a = aud();
    assert_eq!(
        verify::verify(t.as_bytes(), &set, &rules(&a), NOW).err(),
        Some(Reject::NoKey)
    );
}

// === verify: segments and encoding ===

#[test]
fn malformed_segments_are_refused() {
    let s = signers();
    let good = ed_token(&s, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        (format!("{}.{}", parts[0], parts[1]), "two segments"),
        (format!("{good}.{}", parts[2]), "four segments"),
        (format!(".{}.{}", parts[1], parts[2]), "empty header"),
        (format!("{}..{}", parts[0], parts[2]), "empty payload"),
        (format!("{}.{}.", parts[0], parts[1]), "empty signature"),
        (
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            "padding",
        ),
        (
            format!("{}.{}.{}", parts[0], parts[1], "a+b/"),
            "standard base64 alphabet",
        ),
        (
            format!("{}.{}.{}", "!!!!", parts[1], parts[2]),
            "not base64",
        ),
        (String::new(), "empty"),
        ("..".to_string(), "only dots"),
    ];
    for (t, what) in cases {
        let r = check(&t, &s);
        assert!(
            matches!(r, Err(Reject::Malformed)),
            "{what}: {t:?} gave {r:?}"
        );
    }
}

#[test]
fn non_canonical_base64_is_refused() {
    // "eyJ" decodes; a final character with trailing bits set is not the
    // canonical encoding of any byte string.
    let s = signers();
    let good = ed_token(&s, &claims());
    let (signed, sig) = good.rsplit_once('.').unwrap();
    let mut sig = sig.to_string();
    // 64-byte signature: 86 chars, the last carries 4 bits of padding.
    let last = sig.pop().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let tweaked = alphabet.as_bytes()[idx | 1] as char;
    if tweaked != last {
        sig.push(tweaked);
        let t = format!("{signed}.{sig}");
        assert_eq!(check(&t, &s).err(), Some(Reject::Malformed));
    }
}

#[test]
fn header_and_payload_must_be_json_objects_without_duplicates() {
    let s = signers();
    let c = claims().to_string();
    for (header, payload, what) in [
        ("not json", c.as_str(), "header not JSON"),
        (r#"["alg"]"#, c.as_str(), "header an array"),
        (
            r#"{"alg":"EdDSA","kid":"ed"} x"#,
            c.as_str(),
            "trailing bytes",
        ),
        (
            r#"{"alg":"EdDSA","kid":"ed","kid":"ec"}"#,
            c.as_str(),
            "duplicate kid",
        ),
        (r#"{"alg":"EdDSA","kid":7}"#, c.as_str(), "kid not a string"),
        (r#"{"alg":"EdDSA","kid":"ed"}"#, "[1,2]", "payload an array"),
        (
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            "\"str\"",
            "payload a string",
        ),
    ] {
        let t = token_raw(header, payload, sign_ed(&s.ed));
        assert_eq!(check(&t, &s).err(), Some(Reject::Malformed), "{what}");
    }
    // Two `sub` claims: which one would the backend see? Refused.
    let dup = format!(
        r#"{{"iss":"{ISS}","aud":"{AUD}","exp":{},"sub":"admin","sub":"user"}}"#,
        NOW + 100.0
    );
    let t = token_raw(r#"{"alg":"EdDSA","kid":"ed"}"#, &dup, sign_ed(&s.ed));
    assert_eq!(check(&t, &s).err(), Some(Reject::Malformed));
}

#[test]
fn an_oversized_token_is_refused_before_decoding() {
    let s = signers();
    let big = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(check(&big, &s).err(), Some(Reject::TooLarge));
    let mut c = claims();
    c["pad"] = json!("x".repeat(MAX_TOKEN_BYTES));
    assert_eq!(check(&ed_token(&s, &c), &s).err(), Some(Reject::TooLarge));
}

// === verify: algorithm and key choice ===

#[test]
fn alg_none_and_unknown_algs_are_refused() {
    let s = signers();
    let c = claims().to_string();
    for header in [
        r#"{"alg":"none","kid":"ed"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
        r#"{"alg":"HS512","kid":"hs"}"#,
        r#"{"alg":"RS384","kid":"rsa"}"#,
        r#"{"alg":"eddsa","kid":"ed"}"#,
        r#"{"kid":"ed"}"#,
        r#"{"alg":null,"kid":"ed"}"#,
    ] {
        let t = token_raw(header, &c, sign_ed(&s.ed));
        assert_eq!(check(&t, &s).err(), Some(Reject::AlgNotAllowed), "{header}");
    }
    // The classic unsigned token: `alg: none` with an empty signature.
    let unsigned = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(c.as_bytes()));
    assert!(check(&unsigned, &s).is_err());
}

#[test]
fn hs256_with_the_rsa_public_key_as_secret_is_refused() {
    // The algorithm-confusion attack: the attacker knows the RSA public key
    // and signs an HS256 token with it, naming the RSA key's kid.
    let s = signers();
    let n = fake_rsa_n();
    for secret in [n.clone(), b64(&n).into_bytes()] {
        let t = token_raw(
            r#"{"alg":"HS256","kid":"rsa"}"#,
            &claims().to_string(),
            sign_hs(&secret),
        );
        assert_eq!(check(&t, &s).err(), Some(Reject::AlgMismatch));
    }
    // Same with an EC or Ed25519 key's kid.
    let t = token_raw(
        r#"{"alg":"HS256","kid":"ed"}"#,
        &claims().to_string(),
        sign_hs(s.ed.public_key().as_ref()),
    );
    assert_eq!(check(&t, &s).err(), Some(Reject::AlgMismatch));
    let t = token_raw(
        r#"{"alg":"ES256","kid":"ed"}"#,
        &claims().to_string(),
        |m| s.ec.sign(&s.rng, m).unwrap().as_ref().to_vec(),
    );
    assert_eq!(check(&t, &s).err(), Some(Reject::AlgMismatch));
}

#[test]
fn algorithms_not_configured_are_refused() {
    let s = signers();
    let a = aud();
    let mut only_rs = AlgSet::default();
    only_rs.insert(Alg::Rs256);
    let r = Rules {
        algorithms: only_rs,
        ..rules(&a)
    };
    let t = ed_token(&s, &claims());
    assert_eq!(
        verify::verify(t.as_bytes(), &keyset(&s), &r, NOW).err(),
        Some(Reject::AlgNotAllowed)
    );
}

#[test]
fn an_unknown_kid_is_reported_as_such() {
    let s = signers();
    let t = token_raw(
        r#"{"alg":"EdDSA","kid":"rotated"}"#,
        &claims().to_string(),
        sign_ed(&s.ed),
    );
    assert_eq!(check(&t, &s).err(), Some(Reject::UnknownKid));
    assert_eq!(
        verify::verify(t.as_bytes(), &KeySet::default(), &rules(&aud()), NOW).err(),
        Some(Reject::UnknownKid)
    );
}

#[test]
fn crit_headers_are_refused() {
    let s = signers();
    let t = token_raw(
        r#"{"alg":"EdDSA","kid":"ed","crit":["exp"],"exp":1}"#,
        &claims().to_string(),
        sign_ed(&s.ed),
    );
    assert_eq!(check(&t, &s).err(), Some(Reject::Critical));
}

// === verify: signatures ===

#[test]
fn wrong_signatures_are_refused() {
    let s = signers();
    // Another key, same kid.
    let t = token_raw(
        r#"{"alg":"EdDSA","kid":"ed"}"#,
        &claims().to_string(),
        sign_ed(&s.ed_other),
    );
    assert_eq!(check(&t, &s).err(), Some(Reject::BadSignature));
    // A payload changed after signing.
    let good = ed_token(&s, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims();
    c["sub"] = json!("admin");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(check(&forged, &s).err(), Some(Reject::BadSignature));
    // A truncated signature.
    let short = &good[..good.len() - 4];
    assert!(matches!(
        check(short, &s),
        Err(Reject::BadSignature | Reject::Malformed)
    ));
    // HS256 with another secret.
    let t = token_raw(
        r#"{"alg":"HS256","kid":"hs"}"#,
        &claims().to_string(),
        sign_hs(b"another secret of at least 32 bytes!!"),
    );
    assert_eq!(check(&t, &s).err(), Some(Reject::BadSignature));
    // RS256 against the synthetic modulus: never verifies.
    let t = token_raw(
        r#"{"alg":"RS256","kid":"rsa"}"#,
        &claims().to_string(),
        |_| vec![1u8; 256],
    );
    assert_eq!(check(&t, &s).err(), Some(Reject::BadSignature));
}

// === verify: claims ===

fn with(f: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut c = claims();
    f(&mut c);
    c
}

#[test]
fn time_claims_with_leeway() {
    let s = signers();
    let cases: Vec<(serde_json::Value, Option<Reject>, &str)> = vec![
        (
            with(|c| c["exp"] = json!(NOW - 61.0)),
            Some(Reject::Expired),
            "expired past leeway",
        ),
        (
            with(|c| c["exp"] = json!(NOW - 59.0)),
            None,
            "expired within leeway",
        ),
        (
            with(|c| c["exp"] = json!(NOW + 0.5)),
            None,
            "fractional exp",
        ),
        (
            with(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            Some(Reject::MissingExp),
            "no exp",
        ),
        (
            with(|c| c["exp"] = json!("soon")),
            Some(Reject::BadClaim),
            "exp a string",
        ),
        (
            with(|c| c["nbf"] = json!(NOW + 61.0)),
            Some(Reject::NotYetValid),
            "nbf past leeway",
        ),
        (
            with(|c| c["nbf"] = json!(NOW + 59.0)),
            None,
            "nbf within leeway",
        ),
        (
            with(|c| c["nbf"] = json!(true)),
            Some(Reject::BadClaim),
            "nbf a bool",
        ),
        (
            with(|c| c["iat"] = json!(NOW + 61.0)),
            Some(Reject::IssuedInFuture),
            "iat in the future",
        ),
        (
            with(|c| c["iat"] = json!(NOW + 59.0)),
            None,
            "iat within leeway",
        ),
    ];
    for (c, want, what) in cases {
        assert_eq!(check(&ed_token(&s, &c), &s).err(), want, "{what}");
    }
}

#[test]
fn issuer_must_match_exactly() {
    let s = signers();
    for iss in [
        json!(format!("{ISS}/")),
        json!("https://evil.example/pool"),
        json!(null),
        json!([ISS]),
    ] {
        let c = with(|c| c["iss"] = iss.clone());
        assert_eq!(
            check(&ed_token(&s, &c), &s).err(),
            Some(Reject::WrongIssuer),
            "{iss}"
        );
    }
    let c = with(|c| {
        c.as_object_mut().unwrap().remove("iss");
    });
    assert_eq!(
        check(&ed_token(&s, &c), &s).err(),
        Some(Reject::WrongIssuer)
    );
}

#[test]
fn audience_aud_string_or_array_else_client_id() {
    let s = signers();
    let ok = |c: serde_json::Value| check(&ed_token(&s, &c), &s).err();
    assert_eq!(ok(with(|c| c["aud"] = json!(["x", "other-client"]))), None);
    assert_eq!(
        ok(with(|c| c["aud"] = json!("nope"))),
        Some(Reject::WrongAudience)
    );
    assert_eq!(
        ok(with(|c| c["aud"] = json!([]))),
        Some(Reject::WrongAudience)
    );
    assert_eq!(
        ok(with(|c| c["aud"] = json!(7))),
        Some(Reject::WrongAudience)
    );
    // Cognito access tokens: no aud, client_id instead.
    let cognito = |cid: serde_json::Value| {
        with(|c| {
            c.as_object_mut().unwrap().remove("aud");
            c["client_id"] = cid;
        })
    };
    assert_eq!(ok(cognito(json!(AUD))), None);
    assert_eq!(ok(cognito(json!("nope"))), Some(Reject::WrongAudience));
    // aud present and wrong: client_id is not consulted.
    assert_eq!(
        ok(with(|c| {
            c["aud"] = json!("nope");
            c["client_id"] = json!(AUD);
        })),
        Some(Reject::WrongAudience)
    );
    // Neither.
    assert_eq!(
        ok(with(|c| {
            c.as_object_mut().unwrap().remove("aud");
        })),
        Some(Reject::WrongAudience)
    );
}

// === scopes and claim headers ===

#[test]
fn scopes_from_scope_or_scp() {
    let req = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let m = |v: serde_json::Value| v.as_object().unwrap().clone();
    let c = m(json!({"scope": "pets/read pets/write openid"}));
    assert!(verify::grants_scopes(&c, &req(&["pets/read"])));
    assert!(verify::grants_scopes(
        &c,
        &req(&["pets/read", "pets/write"])
    ));
    assert!(!verify::grants_scopes(&c, &req(&["pets/read", "admin"])));
    assert!(
        !verify::grants_scopes(&c, &req(&["pets"])),
        "no prefix match"
    );
    assert!(verify::grants_scopes(&c, &[]));
    let c = m(json!({"scp": ["a", "b"]}));
    assert!(verify::grants_scopes(&c, &req(&["a", "b"])));
    assert!(!verify::grants_scopes(&c, &req(&["c"])));
    let c = m(json!({"scp": "a b"}));
    assert!(verify::grants_scopes(&c, &req(&["b"])));
    let c = m(json!({"scope": ["a"]}));
    assert!(
        verify::grants_scopes(&c, &req(&["a"])),
        "either form in either claim"
    );
    let c = m(json!({"scope": 7, "scp": [7]}));
    assert!(!verify::grants_scopes(&c, &req(&["7"])));
    assert!(!verify::grants_scopes(&m(json!({})), &req(&["a"])));
}

#[test]
fn claim_values_as_headers() {
    let v = |x: serde_json::Value| verify::claim_header_value(Some(&x));
    assert_eq!(
        v(json!("alice@example.com")),
        Ok(Some("alice@example.com".into()))
    );
    assert_eq!(v(json!("José")), Ok(Some("José".into())));
    assert_eq!(v(json!(42)), Ok(Some("42".into())));
    assert_eq!(v(json!(1.5)), Ok(Some("1.5".into())));
    assert_eq!(v(json!(true)), Ok(Some("true".into())));
    assert_eq!(v(json!(["a", "b"])), Ok(Some(r#"["a","b"]"#.into())));
    assert_eq!(v(json!({"k": 1})), Ok(Some(r#"{"k":1}"#.into())));
    // Control characters inside JSON strings are escaped, so safe.
    assert_eq!(v(json!(["a\r\nb"])), Ok(Some(r#"["a\r\nb"]"#.into())));
    assert_eq!(v(json!(null)), Ok(None));
    assert_eq!(verify::claim_header_value(None), Ok(None));
    for bad in [
        "a\r\nx-admin: 1",
        "a\nb",
        "a\rb",
        "nul\0",
        "tab\there",
        "del\x7f",
    ] {
        assert_eq!(v(json!(bad)), Err(Reject::UnsafeClaim), "{bad:?}");
    }
}

#[test]
fn authorization_header_forms() {
    let tok = |vals: &[&[u8]]| {
        let mut it = vals.iter().copied();
        token_from_header(&mut it).map(|t| String::from_utf8_lossy(t).into_owned())
    };
    assert_eq!(tok(&[b"Bearer a.b.c"]), Some("a.b.c".into()));
    assert_eq!(tok(&[b"bearer a.b.c"]), Some("a.b.c".into()));
    assert_eq!(tok(&[b"BEARER   a.b.c  "]), Some("a.b.c".into()));
    assert_eq!(tok(&[b"a.b.c"]), Some("a.b.c".into()), "bare token");
    assert_eq!(tok(&[b"Basic dXNlcjpwYXNz"]), None);
    assert_eq!(tok(&[b"Bearer"]), None);
    assert_eq!(tok(&[b"Bearer "]), None);
    assert_eq!(tok(&[b""]), None);
    assert_eq!(
        tok(&[b"Bearer a.b.c", b"Bearer d.e.f"]),
        None,
        "two headers"
    );
    assert_eq!(tok(&[]), None);
}

// === authorize: principal, headers, 403 ===

fn file_authorizer(extra: &str) -> (JwtAuthorizer, Signers, std::path::PathBuf) {
    let s = signers();
    let path = std::env::temp_dir().join(format!(
        "coregate-jwt-unit-{}-{}.json",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::write(&path, jwks_doc(&s).to_string()).unwrap();
    let raw: RawJwt = toml::from_str(&format!(
        "issuer = \"{ISS}\"\naudience = [\"{AUD}\"]\njwks_file = \"{}\"\n{extra}",
        path.display()
    ))
    .unwrap();
    let mut errors = Vec::new();
    let a = compile(&raw, "t", "authorizers[0].jwt", None, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    (a.unwrap(), s, path)
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn authorize_sets_principal_and_claim_headers_or_forbids() {
    let (a, s, path) = file_authorizer(
        r#"claims_to_headers = { "X-User-Sub" = "sub", "x-groups" = "cognito:groups", "x-missing" = "nope" }"#,
    );
    assert_eq!(
        a.header_names(),
        vec!["x-groups", "x-missing", "x-user-sub"]
    );
    let shard = ShardJwt::new(&a);
    assert_eq!(shard.key_count(), 4);
    let c = with(|c| {
        c["cognito:groups"] = json!(["admins", "users"]);
        c["scope"] = json!("pets/read");
    });
    let t = ed_token(&s, &c);
    let mut req = RequestState::default();
    authorize(&a, &shard, &[], &[], Some(t.as_bytes()), NOW, &mut req).unwrap();
    assert_eq!(req.principal.as_deref(), Some("user-1"));
    assert_eq!(
        String::from_utf8(req.upstream_headers.clone()).unwrap(),
        "x-groups: [\"admins\",\"users\"]\r\nx-user-sub: user-1\r\n"
    );
    let mut req = RequestState::default();
    assert_eq!(
        authorize(
            &a,
            &shard,
            &["pets/write".into()],
            &[],
            Some(t.as_bytes()),
            NOW,
            &mut req
        ),
        Err(Denied::Forbidden)
    );
    assert_eq!(req, RequestState::default(), "nothing recorded on refusal");
    // A header-injection attempt in a passed-on claim: refused.
    let c = with(|c| c["sub"] = json!("u\r\nx-admin: true"));
    let mut req = RequestState::default();
    assert_eq!(
        authorize(
            &a,
            &shard,
            &[],
            &[],
            Some(ed_token(&s, &c).as_bytes()),
            NOW,
            &mut req
        ),
        Err(Denied::Unauthorized(Reject::UnsafeClaim))
    );
    assert_eq!(
        authorize(&a, &shard, &[], &[], None, NOW, &mut req),
        Err(Denied::Unauthorized(Reject::Missing))
    );
    let _ = std::fs::remove_file(path);
}

// === JWKS parsing ===

fn parse_one(key: serde_json::Value, origin: Origin) -> (usize, jwks::LoadReport) {
    let doc = json!({"keys": [key]}).to_string();
    let (set, report) = jwks::parse(doc.as_bytes(), origin).unwrap();
    (set.len(), report)
}

#[test]
fn jwks_keys_that_are_skipped_or_malformed() {
    let s = signers();
    let ed_x = b64(s.ed.public_key().as_ref());
    let n = b64(&fake_rsa_n());
    let unsupported = [
        json!({"kty": "RSA", "alg": "RS512", "n": n, "e": "AQAB"}),
        json!({"kty": "RSA", "alg": "PS256", "n": n, "e": "AQAB"}),
        json!({"kty": "RSA", "use": "enc", "n": n, "e": "AQAB"}),
        json!({"kty": "RSA", "key_ops": ["encrypt"], "n": n, "e": "AQAB"}),
        json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}),
        json!({"kty": "OKP", "crv": "X25519", "x": ed_x}),
        json!({"kty": "OKP", "crv": "Ed448", "x": ed_x}),
        json!({"kty": "OKP", "crv": "Ed25519", "alg": "ES256", "x": ed_x}),
    ];
    for k in unsupported {
        let (n, r) = parse_one(k.clone(), Origin::File);
        assert_eq!((n, r.unsupported, r.malformed.len()), (0, 1, 0), "{k}");
    }
    let mut small = vec![0xffu8; 128];
    small[127] |= 1;
    let malformed = [
        json!({"kty": "RSA", "n": b64(&small), "e": "AQAB"}),
        json!({"kty": "RSA", "n": n, "e": "Ag"}),
        json!({"kty": "RSA", "n": n, "e": "AQ"}),
        json!({"kty": "RSA", "n": n}),
        json!({"kty": "RSA", "n": "not base64!", "e": "AQAB"}),
        json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[1; 32])}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 33])}),
        json!({"kty": "oct", "k": b64(b"short secret")}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": 5}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": "k".repeat(300)}),
        json!({"crv": "Ed25519", "x": ed_x}),
        json!("a string"),
    ];
    for k in malformed {
        let (n, r) = parse_one(k.clone(), Origin::File);
        assert_eq!((n, r.malformed.len()), (0, 1), "{k}: {r:?}");
    }
    // A shared secret from a URL is never used.
    let (n, r) = parse_one(json!({"kty": "oct", "k": b64(HMAC_SECRET)}), Origin::Url);
    assert_eq!((n, r.malformed.len()), (0, 1));
    let (n, _) = parse_one(json!({"kty": "oct", "k": b64(HMAC_SECRET)}), Origin::File);
    assert_eq!(n, 1);
    // Leading zero bytes of n are not bits.
    let mut padded = vec![0u8; 2];
    padded.extend_from_slice(&fake_rsa_n());
    let (n, _) = parse_one(
        json!({"kty": "RSA", "n": b64(&padded), "e": "AQAB"}),
        Origin::Url,
    );
    assert_eq!(n, 1);
}

#[test]
fn jwks_documents_that_are_refused_whole() {
    for (doc, what) in [
        ("not json", "not JSON"),
        ("[]", "an array"),
        ("{}", "no keys"),
        (r#"{"keys": {}}"#, "keys not an array"),
    ] {
        assert!(jwks::parse(doc.as_bytes(), Origin::File).is_err(), "{what}");
    }
    let many =
        json!({"keys": vec![json!({"kty": "oct", "k": b64(HMAC_SECRET)}); jwks::MAX_KEYS + 1]});
    assert!(jwks::parse(many.to_string().as_bytes(), Origin::File).is_err());
    let big = vec![b' '; jwks::MAX_JWKS_BYTES + 1];
    assert!(jwks::parse(&big, Origin::File).is_err());
    let (set, _) = jwks::parse(br#"{"keys": []}"#, Origin::Url).unwrap();
    assert!(set.is_empty());
}

// === config ===

fn config_errors(jwt: &str) -> Vec<(String, String)> {
    let text = format!(
        r#"
[[authorizers]]
name = "cognito"
[authorizers.jwt]
{jwt}

[[apis]]
name = "a"
authorizer = "cognito"
[[apis.routes]]
key = "GET /x"
authorization_scopes = ["s"]
integration = {{ type = "mock" }}
"#
    );
    match crate::plan::load_str(&text) {
        Ok(_) => Vec::new(),
        Err(es) => es.into_iter().map(|e| (e.key, e.message)).collect(),
    }
}

fn has_error(errors: &[(String, String)], key: &str, needle: &str) -> bool {
    errors.iter().any(|(k, m)| k == key && m.contains(needle))
}

#[test]
fn config_errors_name_their_keys() {
    let url = r#"jwks_url = "http://127.0.0.1:9/jwks""#;
    let e = config_errors(url);
    assert!(
        has_error(&e, "authorizers[0].jwt.issuer", "is required"),
        "{e:?}"
    );
    assert!(
        has_error(&e, "authorizers[0].jwt.audience", "is required"),
        "{e:?}"
    );

    let base = r#"issuer = "https://i"
audience = ["a"]"#;
    let e = config_errors(base);
    assert!(
        has_error(&e, "authorizers[0].jwt", "exactly one of jwks_file"),
        "{e:?}"
    );
    let e = config_errors(&format!("{base}\n{url}\njwks_file = \"/x\""));
    assert!(
        has_error(&e, "authorizers[0].jwt", "exactly one of jwks_file"),
        "{e:?}"
    );

    let cases = [
        (
            format!("{base}\njwks_url = \"ftp://x/\""),
            "authorizers[0].jwt.jwks_url",
            "http://",
        ),
        (
            format!("{base}\njwks_url = \"http://a b/\""),
            "authorizers[0].jwt.jwks_url",
            "space",
        ),
        (
            format!("{base}\njwks_url = \"http://u:p@h/\""),
            "authorizers[0].jwt.jwks_url",
            "user info",
        ),
        (
            format!("{base}\n{url}\nalgorithms = [\"none\"]"),
            "authorizers[0].jwt.algorithms[0]",
            "not supported",
        ),
        (
            format!("{base}\n{url}\nalgorithms = []"),
            "authorizers[0].jwt.algorithms",
            "at least one",
        ),
        (
            format!("{base}\n{url}\nleeway_s = 7200"),
            "authorizers[0].jwt.leeway_s",
            "out of range",
        ),
        (
            format!("{base}\n{url}\nrefresh_interval_s = 0"),
            "authorizers[0].jwt.refresh_interval_s",
            "out of range",
        ),
        (
            format!("{base}\n{url}\nunknown_kid_refresh_min_interval_s = 0"),
            "authorizers[0].jwt.unknown_kid_refresh_min_interval_s",
            "out of range",
        ),
        (
            format!("{base}\n{url}\nfetch_timeout_ms = 60000"),
            "authorizers[0].jwt.fetch_timeout_ms",
            "out of range",
        ),
        (
            format!("{base}\n{url}\njwks_ca_file = \"/x.pem\""),
            "authorizers[0].jwt.jwks_ca_file",
            "only to an https://",
        ),
        (
            format!(
                "{base}\njwks_url = \"https://127.0.0.1/j\"\njwks_ca_file = \"/nonexistent.pem\""
            ),
            "authorizers[0].jwt.jwks_ca_file",
            "cannot read",
        ),
        (
            format!("{base}\n{url}\nclaims_to_headers = {{ \"Host\" = \"sub\" }}"),
            "authorizers[0].jwt.claims_to_headers.Host",
            "the gateway or HTTP itself",
        ),
        (
            format!("{base}\n{url}\nclaims_to_headers = {{ \"x user\" = \"sub\" }}"),
            "authorizers[0].jwt.claims_to_headers.x user",
            "not a valid header name",
        ),
        (
            format!(
                "{base}\n{url}\nclaims_to_headers = {{ \"x-a\" = \"sub\", \"X-A\" = \"email\" }}"
            ),
            "authorizers[0].jwt.claims_to_headers.x-a",
            "twice",
        ),
        (
            format!("{base}\njwks_file = \"/nonexistent.json\""),
            "authorizers[0].jwt.jwks_file",
            "cannot read",
        ),
        (
            format!("{base}\njwks_file = \"/x.json\"\nrefresh_interval_s = 5"),
            "authorizers[0].jwt.refresh_interval_s",
            "only to jwks_url",
        ),
        (
            format!("{base}\n{url}\nbogus = 1"),
            "authorizers[0].jwt.bogus",
            "unknown key",
        ),
    ];
    for (text, key, needle) in cases {
        let e = config_errors(&text);
        assert!(has_error(&e, key, needle), "{text}\n→ {e:?}");
    }
    // A good URL config compiles without touching the network.
    assert_eq!(config_errors(&format!("{base}\n{url}")), Vec::new());
}

#[test]
fn a_jwks_file_that_is_not_usable_is_a_config_error() {
    let s = signers();
    let dir = std::env::temp_dir();
    let write = |name: &str, text: &str| {
        let p = dir.join(format!("coregate-jwt-cfg-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    };
    let base = "issuer = \"https://i\"\naudience = [\"a\"]";
    let bad = write("bad.json", "{\"keys\": 3}");
    let e = config_errors(&format!("{base}\njwks_file = \"{}\"", bad.display()));
    assert!(
        has_error(&e, "authorizers[0].jwt.jwks_file", "no \"keys\" array"),
        "{e:?}"
    );
    let empty = write(
        "empty.json",
        r#"{"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}"#,
    );
    let e = config_errors(&format!("{base}\njwks_file = \"{}\"", empty.display()));
    assert!(
        has_error(&e, "authorizers[0].jwt.jwks_file", "no usable key"),
        "{e:?}"
    );
    let short = write(
        "short.json",
        r#"{"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}"#,
    );
    let e = config_errors(&format!("{base}\njwks_file = \"{}\"", short.display()));
    assert!(
        has_error(&e, "authorizers[0].jwt.jwks_file", "at least 32"),
        "{e:?}"
    );
    let good = write("good.json", &jwks_doc(&s).to_string());
    assert_eq!(
        config_errors(&format!("{base}\njwks_file = \"{}\"", good.display())),
        Vec::new()
    );
    for p in [bad, empty, short, good] {
        let _ = std::fs::remove_file(p);
    }
}

// === fetcher: URLs and responses ===

#[test]
fn jwks_urls() {
    let u = parse_url("http://127.0.0.1:8080/.well-known/jwks.json").unwrap();
    assert_eq!(
        (u.https, u.host.as_str(), u.port, u.path.as_str()),
        (false, "127.0.0.1", 8080, "/.well-known/jwks.json")
    );
    assert_eq!(u.authority, "127.0.0.1:8080");
    let u = parse_url("https://Cognito-IDP.us-east-1.amazonaws.com/pool/.well-known/jwks.json")
        .unwrap();
    assert_eq!(
        (u.https, u.port, u.host.as_str()),
        (true, 443, "cognito-idp.us-east-1.amazonaws.com")
    );
    let u = parse_url("http://[::1]:9000?x=1").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("::1", 9000, "/?x=1")
    );
    let u = parse_url("http://h").unwrap();
    assert_eq!((u.port, u.path.as_str()), (80, "/"));
    for bad in [
        "ftp://h/",
        "http://",
        "http://h:0/",
        "http://h:99999/",
        "http://[::1/",
        "http://[zz]/",
        "http://h/#f",
        "http://h/\r\n",
    ] {
        assert!(parse_url(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn jwks_responses() {
    let ok = |raw: &str, eof: bool| parse_response(raw.as_bytes(), eof, true);
    assert_eq!(
        ok("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", false),
        Ok(Some(b"{}".to_vec()))
    );
    assert_eq!(
        ok("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}", false),
        Ok(None)
    );
    assert_eq!(ok("HTTP/1.1 200 OK\r\nContent-Le", false), Ok(None));
    assert_eq!(
        ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1;ext=1\r\n}\r\n0\r\n\r\n", false),
        Ok(Some(b"{}".to_vec()))
    );
    assert_eq!(
        ok(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
            false
        ),
        Ok(None)
    );
    assert!(ok(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        false
    )
    .is_err());
    assert_eq!(
        ok("HTTP/1.1 200 OK\r\n\r\n{\"keys\":[]}", true),
        Ok(Some(b"{\"keys\":[]}".to_vec()))
    );
    assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n{\"ke", false), Ok(None));
    assert!(
        parse_response(b"HTTP/1.1 200 OK\r\n\r\n{}", true, false).is_err(),
        "TLS truncation"
    );
    assert!(ok(
        "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n",
        false
    )
    .is_err());
    assert!(ok("HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", false).is_err());
    assert!(ok(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        false
    )
    .is_err());
    assert!(ok("HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", false).is_err());
    assert!(ok("garbage\r\n\r\n", false).is_err());
}
