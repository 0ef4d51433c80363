//! The JWT authorizer's check with a cached key, as the request path runs
//! it (`jwt::authorize`): split the token, base64url-decode its header,
//! parse it, pick the pre-parsed key by `kid`, verify the signature with
//! ring, decode and parse the claims, check time, issuer and audience, and
//! render two claims as header lines.
//!
//! Compares:
//! - RS256 (2048-bit key), ES256 (P-256), EdDSA (Ed25519) and HS256: the
//!   signature check should dominate the asymmetric ones, JSON the HMAC one;
//! - `verify_*`: the same without the claim headers (what they add);
//! - the refusals an attacker can cause for free: an unknown `kid` (no
//!   signature check), a forged RS256 signature (a full verify), a
//!   malformed token (refused before any crypto).
//!
//! Keys are made by `openssl genpkey` and tokens minted by `jsonwebtoken`,
//! as in tests/jwt.rs. Needs `[[bench]] name = "jwt" harness = false`.

use coregate::policy::jwt::{self, verify, JwtAuthorizer, RawJwt, ShardJwt};
use coregate::policy::RequestState;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const ISS: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Bench";
const HS_SECRET: &[u8] = b"a bench HS256 secret of more than 32 bytes";

fn openssl_key(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .output()
        .expect("the bench needs the `openssl` command");
    assert!(out.status.success(), "openssl genpkey {args:?}");
    out.stdout
}

fn signer(alg: Algorithm, kid: &str) -> (EncodingKey, Jwk) {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&openssl_key(&[
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&openssl_key(&[
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&openssl_key(&["-algorithm", "ed25519"])),
        _ => Ok(EncodingKey::from_secret(HS_SECRET)),
    }
    .expect("key");
    let mut jwk = Jwk::from_encoding_key(&key, alg).expect("jwk");
    jwk.common.key_id = Some(kid.to_string());
    (key, jwk)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let algs = [
        (Algorithm::RS256, "rs256"),
        (Algorithm::ES256, "es256"),
        (Algorithm::EdDSA, "eddsa"),
        (Algorithm::HS256, "hs256"),
    ];
    let keys: Vec<_> = algs.iter().map(|(a, kid)| signer(*a, kid)).collect();
    // A realistic Cognito ID token's claims.
    let claims = json!({
        "sub": "6f1c2b9e-52d4-4c4b-9a7e-1d2f3a4b5c6d",
        "iss": ISS,
        "aud": "4v7bf2mqk1rj0l5c9u3n8s6d2e",
        "token_use": "id",
        "auth_time": now() - 60,
        "iat": now() - 60,
        "exp": now() + 3600,
        "email": "alice@example.com",
        "email_verified": true,
        "cognito:username": "alice",
        "cognito:groups": ["admins", "users"],
        "scope": "openid email pets/read",
    });
    let set = JwkSet {
        keys: keys.iter().map(|(_, j)| j.clone()).collect(),
    };
    let path =
        std::env::temp_dir().join(format!("coregate-bench-jwks-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(&set).expect("jwks")).expect("write jwks");
    let raw: RawJwt = toml::from_str(&format!(
        r#"issuer = "{ISS}"
audience = ["4v7bf2mqk1rj0l5c9u3n8s6d2e"]
jwks_file = "{}"
claims_to_headers = {{ "x-user-sub" = "sub", "x-user-groups" = "cognito:groups" }}"#,
        path.display()
    ))
    .expect("bench config");
    let mut errors = Vec::new();
    let auth: JwtAuthorizer =
        jwt::compile(&raw, "bench", "authorizers[0].jwt", None, &mut errors).expect("compiles");
    assert!(errors.is_empty(), "{errors:?}");
    let _ = std::fs::remove_file(&path);
    let shard = ShardJwt::new(&auth);
    let t = now() as f64;

    let mut g = c.benchmark_group("jwt");
    let mut rs256_token = String::new();
    for ((alg, kid), (key, _)) in algs.iter().zip(&keys) {
        let mut h = Header::new(*alg);
        h.kid = Some(kid.to_string());
        let token = jsonwebtoken::encode(&h, &claims, key).expect("encode");
        let mut req = RequestState::default();
        jwt::authorize(&auth, &shard, &[], &[], Some(token.as_bytes()), t, &mut req)
            .expect("bench token verifies");
        g.bench_function(format!("authorize_{kid}"), |b| {
            b.iter(|| {
                let mut req = RequestState::default();
                let r = jwt::authorize(
                    &auth,
                    &shard,
                    &[],
                    &[],
                    Some(black_box(token.as_bytes())),
                    t,
                    &mut req,
                );
                black_box((r, req))
            })
        });
        g.bench_function(format!("verify_{kid}"), |b| {
            b.iter(|| {
                black_box(jwt::verify_with(
                    &auth,
                    &shard,
                    black_box(token.as_bytes()),
                    t,
                ))
            })
        });
        if *alg == Algorithm::RS256 {
            rs256_token = token;
        }
    }

    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("not-in-the-jwks".into());
    let unknown =
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(HS_SECRET)).expect("encode");
    assert_eq!(
        jwt::verify_with(&auth, &shard, unknown.as_bytes(), t).err(),
        Some(verify::Reject::UnknownKid)
    );
    g.bench_function("refuse_unknown_kid", |b| {
        b.iter(|| {
            black_box(jwt::verify_with(
                &auth,
                &shard,
                black_box(unknown.as_bytes()),
                t,
            ))
        })
    });
    // The RS256 token with another token's signature bytes: a full verify.
    let (signed, sig) = rs256_token.rsplit_once('.').expect("three segments");
    let mut forged_sig: Vec<u8> = sig.bytes().collect();
    forged_sig[10] = if forged_sig[10] == b'A' { b'B' } else { b'A' };
    let forged = format!("{signed}.{}", String::from_utf8_lossy(&forged_sig));
    assert_eq!(
        jwt::verify_with(&auth, &shard, forged.as_bytes(), t).err(),
        Some(verify::Reject::BadSignature)
    );
    g.bench_function("refuse_forged_rs256", |b| {
        b.iter(|| {
            black_box(jwt::verify_with(
                &auth,
                &shard,
                black_box(forged.as_bytes()),
                t,
            ))
        })
    });
    let malformed = "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24";
    g.bench_function("refuse_malformed", |b| {
        b.iter(|| {
            black_box(jwt::verify_with(
                &auth,
                &shard,
                black_box(malformed.as_bytes()),
                t,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
