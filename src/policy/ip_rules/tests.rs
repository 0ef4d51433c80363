//! Byte-level tests for the address and CIDR parsers and the matcher.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on
//! input the test writes itself (config text, heads, keys, addresses), so a
//! failure is a failed test; nothing a client or a config file controls
//! reaches them.

use super::*;
use std::str::FromStr;

fn v4(s: &str) -> u32 {
    u32::from(Ipv4Addr::from_str(s).expect("valid test address"))
}

fn v6(s: &str) -> u128 {
    u128::from(Ipv6Addr::from_str(s).expect("valid test address"))
}

fn ip(s: &str) -> IpAddr {
    IpAddr::from_str(s).expect("valid test address")
}

fn rules(api: Option<RawIpRules>, route: Option<RawIpRules>) -> IpRules {
    let mut errors = Vec::new();
    let r = compile(
        api.as_ref(),
        route.as_ref(),
        "apis[0].routes[0]",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    r.expect("rules")
}

fn raw(allow: Option<&[&str]>, deny: Option<&[&str]>) -> RawIpRules {
    let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    RawIpRules {
        allow: allow.map(own),
        deny: deny.map(own),
    }
}

// === parse_ipv4 ===

#[test]
fn ipv4_accepts_dotted_quads() {
    assert_eq!(parse_ipv4(b"0.0.0.0"), Some(0));
    assert_eq!(parse_ipv4(b"127.0.0.1"), Some(0x7f00_0001));
    assert_eq!(parse_ipv4(b"255.255.255.255"), Some(u32::MAX));
    assert_eq!(parse_ipv4(b"10.20.30.40"), Some(0x0a14_1e28));
}

#[test]
fn ipv4_refuses_everything_else() {
    for bad in [
        &b""[..],
        b"1.2.3",
        b"1.2.3.4.5",
        b"256.0.0.1",
        b"1.2.3.999",
        b"01.2.3.4",
        b"1.2.3.04",
        b"1..3.4",
        b".1.2.3",
        b"1.2.3.4.",
        b"1.2.3.-4",
        b"1.2.3.+4",
        b"1.2.3.4 ",
        b" 1.2.3.4",
        b"0x1.2.3.4",
        b"1.2.3.a",
        b"1000.2.3.4",
        b"1.2.3.4/8",
    ] {
        assert_eq!(parse_ipv4(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

// === parse_ipv6 ===

#[test]
fn ipv6_accepts_rfc4291_forms() {
    for s in [
        "::",
        "::1",
        "1::",
        "1:2:3:4:5:6:7:8",
        "2001:db8::1",
        "2001:DB8:0:0:8:800:200C:417A",
        "fe80::1:2",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1::8",
        "::ffff:10.0.0.1",
        "::ffff:0a00:0001",
        "64:ff9b::192.0.2.33",
        "1:2:3:4:5:6:1.2.3.4",
        "::1.2.3.4",
        "0000:0000:0000:0000:0000:0000:0000:0001",
    ] {
        assert_eq!(parse_ipv6(s.as_bytes()), Some(v6(s)), "{s}");
    }
}

#[test]
fn ipv6_refuses_everything_else() {
    for bad in [
        "",
        ":",
        ":::",
        "1:::2",
        ":1::",
        "::1:",
        "1::2::3",
        "1:2:3:4:5:6:7",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7:8::",
        "::1:2:3:4:5:6:7:8",
        "12345::",
        "g::",
        "fe80::1%eth0",
        "1.2.3.4::",
        "::1.2.3.4:5",
        "1:2:3:4:5:6:7:1.2.3.4",
        "::256.1.1.1",
        "::01.1.1.1",
        "[::1]",
        " ::1",
    ] {
        assert_eq!(parse_ipv6(bad.as_bytes()), None, "{bad:?}");
    }
}

/// Our parsers agree with the standard library's on every address a small
/// generator makes, valid or not (std is stricter about nothing we accept).
#[test]
fn parsers_agree_with_std() {
    let atoms = [
        "",
        "0",
        "1",
        "ff",
        "FFFF",
        "12345",
        "1.2.3.4",
        "256.1.1.1",
        "::",
        ":",
        "a",
        "00",
    ];
    let mut checked = 0;
    for a in atoms {
        for b in atoms {
            for sep in [":", "::", "."] {
                let s = format!("{a}{sep}{b}");
                let ours6 = parse_ipv6(s.as_bytes());
                let std6 = Ipv6Addr::from_str(&s).ok().map(u128::from);
                assert_eq!(ours6, std6, "IPv6 {s:?}");
                let ours4 = parse_ipv4(s.as_bytes());
                let std4 = Ipv4Addr::from_str(&s).ok().map(u32::from);
                assert_eq!(ours4, std4, "IPv4 {s:?}");
                checked += 1;
            }
        }
    }
    for i in 0..=8 {
        for j in 0..=(8 - i) {
            let head = vec!["1"; i].join(":");
            let tail = vec!["2"; j].join(":");
            let s = format!("{head}::{tail}");
            assert_eq!(
                parse_ipv6(s.as_bytes()),
                Ipv6Addr::from_str(&s).ok().map(u128::from),
                "{s:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 400);
}

// === parse_cidr ===

#[test]
fn cidr_parses_both_families_and_bare_addresses() {
    assert_eq!(
        parse_cidr("10.0.0.0/8"),
        Ok(Cidr::V4 {
            net: v4("10.0.0.0"),
            len: 8
        })
    );
    assert_eq!(parse_cidr("0.0.0.0/0"), Ok(Cidr::V4 { net: 0, len: 0 }));
    assert_eq!(
        parse_cidr("192.0.2.7"),
        Ok(Cidr::V4 {
            net: v4("192.0.2.7"),
            len: 32
        })
    );
    assert_eq!(parse_cidr("::1/128"), Ok(Cidr::V6 { net: 1, len: 128 }));
    assert_eq!(parse_cidr("::1"), Ok(Cidr::V6 { net: 1, len: 128 }));
    assert_eq!(parse_cidr("::/0"), Ok(Cidr::V6 { net: 0, len: 0 }));
    assert_eq!(
        parse_cidr("2001:db8::/32"),
        Ok(Cidr::V6 {
            net: v6("2001:db8::"),
            len: 32
        })
    );
}

#[test]
fn cidr_mapped_ipv6_becomes_ipv4() {
    assert_eq!(
        parse_cidr("::ffff:10.0.0.0/104"),
        Ok(Cidr::V4 {
            net: v4("10.0.0.0"),
            len: 8
        })
    );
    assert_eq!(
        parse_cidr("::ffff:127.0.0.1"),
        Ok(Cidr::V4 {
            net: v4("127.0.0.1"),
            len: 32
        })
    );
    assert_eq!(parse_cidr("::ffff:0:0/96"), Ok(Cidr::V4 { net: 0, len: 0 }));
    // Shorter than /96 it covers more than the mapped range: stays IPv6.
    assert_eq!(
        parse_cidr("::ffff:0:0/95"),
        Err("\"::ffff:0:0/95\" has host bits set past the /95 prefix: write ::fffe:0:0/95 (the network address)".into())
    );
}

#[test]
fn cidr_errors_say_what_to_write() {
    let e = parse_cidr("10.0.0.1/8").unwrap_err();
    assert!(e.contains("write 10.0.0.0/8"), "{e}");
    let e = parse_cidr("2001:db8::1/32").unwrap_err();
    assert!(e.contains("write 2001:db8::/32"), "{e}");
    for (bad, want) in [
        ("10.0.0.0/33", "must be 0 to 32"),
        ("::/129", "must be 0 to 128"),
        ("10.0.0.0/", "invalid prefix length"),
        ("10.0.0.0/08", "invalid prefix length"),
        ("10.0.0.0/+8", "invalid prefix length"),
        ("10.0.0.0/8/8", "invalid prefix length"),
        ("10.0.0/8", "not a valid IPv4"),
        ("localhost", "not a valid IPv4"),
        ("", "not a valid IPv4"),
        ("fe80::/10%eth0", "invalid prefix length"),
        ("fe80::%eth0/10", "not a valid IPv6"),
        ("1:2:3/64", "not a valid IPv6"),
    ] {
        let e = parse_cidr(bad).expect_err(bad);
        assert!(e.contains(want), "{bad:?}: {e}");
    }
}

// === matching ===

#[test]
fn cidr_set_matches_by_prefix() {
    let mut set = CidrSet::default();
    for c in [
        "10.0.0.0/8",
        "192.168.1.0/24",
        "203.0.113.9",
        "2001:db8::/32",
    ] {
        set.push(parse_cidr(c).unwrap());
    }
    for yes in [
        "10.0.0.0",
        "10.255.255.255",
        "192.168.1.77",
        "203.0.113.9",
        "2001:db8:ffff::1",
    ] {
        assert!(set.contains(Ip::from(ip(yes))), "{yes}");
    }
    for no in [
        "11.0.0.0",
        "9.255.255.255",
        "192.168.2.1",
        "203.0.113.10",
        "2001:db9::1",
        "::1",
        "::a00:1",
    ] {
        assert!(!set.contains(Ip::from(ip(no))), "{no}");
    }
}

#[test]
fn zero_prefix_matches_its_family_only() {
    let mut set = CidrSet::default();
    set.push(parse_cidr("0.0.0.0/0").unwrap());
    assert!(set.contains(Ip::from(ip("1.2.3.4"))));
    assert!(set.contains(Ip::from(ip("::ffff:1.2.3.4"))));
    assert!(!set.contains(Ip::from(ip("::1"))));
    let mut set = CidrSet::default();
    set.push(parse_cidr("::/0").unwrap());
    assert!(set.contains(Ip::from(ip("2001:db8::1"))));
    assert!(!set.contains(Ip::from(ip("1.2.3.4"))));
}

#[test]
fn mapped_peer_is_checked_as_ipv4() {
    assert_eq!(Ip::from(ip("::ffff:127.0.0.1")), Ip::V4(v4("127.0.0.1")));
    assert_eq!(Ip::from(ip("::1")), Ip::V6(1));
    let r = rules(Some(raw(Some(&["127.0.0.0/8"]), None)), None);
    assert!(r.allows(ip("::ffff:127.0.0.1")));
    assert!(r.allows(ip("127.0.0.1")));
    assert!(!r.allows(ip("::1")));
}

#[test]
fn deny_wins_over_allow() {
    let r = rules(
        Some(raw(Some(&["10.0.0.0/8"]), Some(&["10.1.0.0/16"]))),
        None,
    );
    assert!(r.allows(ip("10.2.3.4")));
    assert!(!r.allows(ip("10.1.3.4")));
    assert!(!r.allows(ip("11.0.0.1")));
    // Deny alone: everyone else passes.
    let r = rules(Some(raw(None, Some(&["10.1.0.0/16"]))), None);
    assert!(r.allows(ip("11.0.0.1")));
    assert!(!r.allows(ip("10.1.0.1")));
}

#[test]
fn route_rules_narrow_the_apis() {
    // API allows 10/8; the route allows 10.1/16 only.
    let r = rules(
        Some(raw(Some(&["10.0.0.0/8"]), None)),
        Some(raw(Some(&["10.1.0.0/16"]), None)),
    );
    assert!(r.allows(ip("10.1.2.3")));
    assert!(!r.allows(ip("10.2.2.3")));
    // A route's allow list cannot let in what the API leaves out...
    let r = rules(
        Some(raw(Some(&["10.0.0.0/8"]), None)),
        Some(raw(Some(&["192.168.0.0/16"]), None)),
    );
    assert!(!r.allows(ip("192.168.1.1")));
    // ...nor what the API denies.
    let r = rules(
        Some(raw(None, Some(&["10.1.0.0/16"]))),
        Some(raw(Some(&["10.0.0.0/8"]), None)),
    );
    assert!(!r.allows(ip("10.1.0.1")));
    assert!(r.allows(ip("10.2.0.1")));
    // A route's deny list adds to the API's.
    let r = rules(
        Some(raw(Some(&["10.0.0.0/8"]), None)),
        Some(raw(None, Some(&["10.9.0.0/16"]))),
    );
    assert!(!r.allows(ip("10.9.0.1")));
    assert!(r.allows(ip("10.8.0.1")));
}

// === compile errors ===

#[test]
fn compile_errors_name_their_keys() {
    let mut errors = Vec::new();
    let api = raw(Some(&["10.0.0.1/8", "10.0.0.0/8"]), Some(&["nope"]));
    let route = raw(Some(&[]), None);
    assert!(compile(Some(&api), Some(&route), "apis[2].routes[5]", &mut errors).is_none());
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "apis[2].ip_rules.allow[0]",
            "apis[2].ip_rules.deny[0]",
            "apis[2].routes[5].ip_rules.allow"
        ],
        "{errors:?}"
    );
    // The API's rules compile again for its next route: no duplicate errors.
    compile(Some(&api), None, "apis[2].routes[6]", &mut errors);
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn empty_table_is_an_error() {
    let mut errors = Vec::new();
    assert!(compile(
        None,
        Some(&RawIpRules::default()),
        "apis[0].routes[1]",
        &mut errors
    )
    .is_none());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "apis[0].routes[1].ip_rules");
    assert!(errors[0].message.contains("neither allow nor deny"));
}

#[test]
fn no_rules_compile_to_none() {
    let mut errors = Vec::new();
    assert!(compile(None, None, "apis[0].routes[0]", &mut errors).is_none());
    assert!(errors.is_empty());
}

#[test]
fn compile_api_keys_errors_under_the_api() {
    let mut errors = Vec::new();
    let r = compile_api(Some(&raw(Some(&["::1/128"]), None)), "apis[3]", &mut errors);
    assert!(r.is_some_and(|r| r.allows(ip("::1")) && !r.allows(ip("::2"))));
    assert!(compile_api(Some(&raw(None, Some(&["x"]))), "apis[3]", &mut errors).is_none());
    assert_eq!(errors[0].key, "apis[3].ip_rules.deny[0]");
}
