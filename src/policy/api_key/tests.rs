//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on
//! input the test writes itself (config text, heads, keys, addresses), so a
//! failure is a failed test; nothing a client or a config file controls
//! reaches them.

use super::cli::{make_key, rfc3339};
use super::*;

fn random(seed: u8) -> [u8; ID_LEN / 2 + SECRET_BYTES + SALT_BYTES] {
    let mut r = [0u8; ID_LEN / 2 + SECRET_BYTES + SALT_BYTES];
    for (i, b) in r.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    r
}

fn key(name: &str, seed: u8, enabled: bool) -> (ApiKey, String) {
    let k = make_key(&random(seed));
    (
        ApiKey {
            name: name.into(),
            id: k.id,
            hash: k.hash,
            enabled,
            usage_plan: None,
            created: None,
            revoked: None,
        },
        k.full,
    )
}

#[test]
fn a_made_key_parses_and_has_the_documented_shape() {
    let k = make_key(&random(1));
    assert_eq!(k.full.len(), KEY_LEN);
    assert!(k.full.starts_with("cg_"));
    assert_eq!(&k.full[3..15], k.id);
    assert_eq!(&k.full[15..16], "_");
    let p = parse_key(k.full.as_bytes()).expect("parses");
    assert_eq!(&p.id, k.id.as_bytes());
    assert!(k.hash.verify(&p.secret));
}

#[test]
fn malformed_keys_do_not_parse() {
    let good = make_key(&random(2)).full;
    assert!(parse_key(good.as_bytes()).is_some());
    let mut cases: Vec<String> = vec![
        String::new(),
        "cg_".into(),
        good[..good.len() - 1].into(),
        format!("{good}0"),
        good.replacen("cg_", "CG_", 1),
        good.replacen("cg_", "cx_", 1),
        good.to_uppercase(),
    ];
    // The separator, an id digit, a secret digit.
    for (pos, ch) in [(15, "-"), (5, "g"), (40, "z"), (79, " ")] {
        let mut s = good.clone();
        s.replace_range(pos..pos + 1, ch);
        cases.push(s);
    }
    for c in cases {
        assert!(parse_key(c.as_bytes()).is_none(), "{c:?} parsed");
    }
}

#[test]
fn stored_hash_round_trips_and_rejects_bad_forms() {
    let k = make_key(&random(3));
    let text = k.hash.to_string();
    assert!(text.starts_with("sha256$"));
    assert_eq!(text.len(), 7 + 32 + 1 + 64);
    assert!(StoredHash::parse(&text).expect("parses") == k.hash);
    for bad in [
        "",
        "sha256",
        "sha256$$",
        "md5$00112233445566778899aabbccddeeff$00",
        &text.replacen("sha256", "sha512", 1),
        &text[..text.len() - 2],
        &format!("{text}$00"),
        &text.to_uppercase().replacen("SHA256", "sha256", 1),
    ] {
        assert!(StoredHash::parse(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn hash_is_sha256_of_salt_then_secret() {
    // Independent reference: SHA-256 of 48 zero bytes (salt 16 ‖ secret 32).
    let h = hash_secret(&[0; SALT_BYTES], &[0; SECRET_BYTES]);
    let mut hex = String::new();
    push_hex(&mut hex, &h);
    assert_eq!(
        hex,
        "17b0761f87b081d5cf10757ccc89f12be355c70e2e29df288b65b30710dcbcd1"
    );
    // The salt matters.
    assert_ne!(h, hash_secret(&[1; SALT_BYTES], &[0; SECRET_BYTES]));
}

#[test]
fn verification_takes_the_right_secret_only() {
    let k = make_key(&random(4));
    let p = parse_key(k.full.as_bytes()).expect("parses");
    assert!(k.hash.verify(&p.secret));
    let mut wrong = p.secret;
    wrong[31] ^= 1;
    assert!(!k.hash.verify(&wrong));
}

#[test]
fn constant_time_eq_compares_bytes() {
    assert!(ct_eq(b"", b""));
    assert!(ct_eq(&[7; 32], &[7; 32]));
    for i in 0..32 {
        let mut b = [7u8; 32];
        b[i] = 8;
        assert!(!ct_eq(&[7; 32], &b), "difference at {i} missed");
    }
    assert!(!ct_eq(&[7; 32], &[7; 31]));
}

#[test]
fn store_accepts_enabled_keys_and_refuses_the_rest() {
    let (a, a_full) = key("alice", 10, true);
    let (b, b_full) = key("bob", 11, false);
    let store = KeyStore::new(vec![a, b]);
    assert_eq!(store.verify(a_full.as_bytes()), Some(0));
    assert_eq!(store.name(0), Some("alice"));
    assert_eq!(store.principal(0).as_deref(), Some("alice"));
    assert_eq!(store.principal(7), None);
    assert_eq!(store.verify(b_full.as_bytes()), None, "disabled key");
    let (_, unknown) = key("carol", 12, true);
    assert_eq!(store.verify(unknown.as_bytes()), None, "unknown id");
    // alice's id with bob's secret.
    let forged = format!("{}{}", &a_full[..16], &b_full[16..]);
    assert_eq!(store.verify(forged.as_bytes()), None, "wrong secret");
    assert_eq!(store.verify(b"nonsense"), None);
}

#[test]
fn rfc3339_dates() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_795_991_696), "2026-11-29T22:34:56Z");
    assert!(valid_created(&rfc3339(1_795_991_696)));
    assert!(!valid_created("yesterday"));
}

#[test]
fn compile_rule_merges_api_and_route() {
    let mut errors = Vec::new();
    assert!(compile_rule(None, None, true, "r", &mut errors).is_none());
    assert!(compile_rule(Some(true), None, true, "r", &mut errors).is_some());
    assert!(compile_rule(Some(true), Some(false), true, "r", &mut errors).is_none());
    assert!(compile_rule(Some(false), Some(true), true, "r", &mut errors).is_some());
    assert!(errors.is_empty());
    compile_rule(None, Some(true), false, "r", &mut errors);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "r.api_key_required");
}
