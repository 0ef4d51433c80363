//! Just enough X.509 to name a certificate: the subject distinguished name as
//! an RFC 4514 string (what mTLS hands to later phases and to the upstream)
//! and the DNS names of the subjectAltName extension (the server names a
//! certificate answers to when the config lists none).
//!
//! rustls verifies certificates but does not expose their names, and a full
//! X.509 crate is a large dependency for two fields. This is a bounds-checked
//! DER walker: every function returns `None` (or nothing) on input it does
//! not understand and never panics, whatever the bytes; a unit test feeds it
//! every truncation and many corruptions of real certificates.

use std::fmt::Write;

/// One DER element: tag, contents, and what follows it.
fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    if tag & 0x1f == 0x1f {
        // High tag numbers do not occur in the parts we read.
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        // 0x80 is BER's indefinite length, not DER; more than 4 length bytes
        // is more than any certificate.
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The contents of an element with this tag, and what follows it.
fn expect(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, body, rest) = tlv(buf)?;
    (t == tag).then_some((body, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The subject Name and the extensions of a certificate's TBSCertificate.
struct Tbs<'a> {
    subject: &'a [u8],
    extensions: Option<&'a [u8]>,
}

fn tbs(cert: &[u8]) -> Option<Tbs<'_>> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, optional
    if let Some((0xa0, _, r)) = tlv(rest) {
        rest = r;
    }
    let (_serial, r) = expect(rest, 0x02)?;
    let (_signature, r) = expect(r, SEQUENCE)?;
    let (_issuer, r) = expect(r, SEQUENCE)?;
    let (_validity, r) = expect(r, SEQUENCE)?;
    let (subject, r) = expect(r, SEQUENCE)?;
    let (_spki, mut r) = expect(r, SEQUENCE)?;
    let mut extensions = None;
    while let Some((tag, body, next)) = tlv(r) {
        if tag == 0xa3 {
            extensions = Some(expect(body, SEQUENCE)?.0);
        }
        r = next;
    }
    Some(Tbs {
        subject,
        extensions,
    })
}

/// Short names RFC 4514 (and OpenSSL, for `emailAddress`) give attribute
/// types; others are written as a dotted OID.
const NAMES: &[(&[u8], &str)] = &[
    (&[0x55, 0x04, 0x03], "CN"),
    (&[0x55, 0x04, 0x05], "serialNumber"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x09], "STREET"),
    (&[0x55, 0x04, 0x0a], "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
        "UID",
    ),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
        "DC",
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        "emailAddress",
    ),
];

fn push_oid(out: &mut String, oid: &[u8]) -> Option<()> {
    let (&first, rest) = oid.split_first()?;
    let _ = write!(
        out,
        "{}.{}",
        (first / 40).min(2),
        first - 40 * (first / 40).min(2)
    );
    let mut v: u64 = 0;
    for &b in rest {
        if v > (u64::MAX >> 8) {
            return None;
        }
        v = (v << 7) | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            let _ = write!(out, ".{v}");
            v = 0;
        }
    }
    Some(())
}

/// Decodes a directory string to text; `None` for types that are not
/// strings (written as `#hex` instead).
fn decode_string(tag: u8, body: &[u8]) -> Option<String> {
    match tag {
        // UTF8String
        0x0c => std::str::from_utf8(body).ok().map(str::to_string),
        // NumericString, PrintableString, IA5String, VisibleString
        0x12 | 0x13 | 0x16 | 0x1a => body.is_ascii().then(|| {
            // ASCII is UTF-8.
            String::from_utf8_lossy(body).into_owned()
        }),
        // TeletexString: in practice Latin-1.
        0x14 => Some(body.iter().map(|&b| b as char).collect()),
        // BMPString: UTF-16BE.
        0x1e => {
            if !body.len().is_multiple_of(2) {
                return None;
            }
            let units = body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        // UniversalString: UTF-32BE.
        0x1c => {
            if !body.len().is_multiple_of(4) {
                return None;
            }
            body.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// Appends `value` escaped as RFC 4514 asks, and further so the result is
/// printable ASCII (safe as an HTTP header value): every other character
/// is written as `\XX` per UTF-8 byte, which RFC 4514 also allows.
fn push_escaped(out: &mut String, value: &str) {
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            let mut b = [0u8; 4];
            for byte in c.encode_utf8(&mut b).bytes() {
                let _ = write!(out, "\\{byte:02X}");
            }
        }
    }
}

/// Formats a DER Name (the contents of its SEQUENCE) as RFC 4514: RDNs in
/// reverse order, separated by `,`; attributes of one RDN joined by `+`.
fn format_name(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (set, r) = expect(rest, SET)?;
        rest = r;
        let mut parts = Vec::new();
        let mut attrs = set;
        while !attrs.is_empty() {
            let (atv, r) = expect(attrs, SEQUENCE)?;
            attrs = r;
            let (oid, value_der) = expect(atv, OID)?;
            let (tag, body, _) = tlv(value_der)?;
            let mut part = String::new();
            let known = NAMES.iter().find(|(o, _)| *o == oid);
            match known {
                Some((_, short)) => part.push_str(short),
                None => push_oid(&mut part, oid)?,
            }
            part.push('=');
            // RFC 4514 §2.4: a type written as a dotted OID has its value
            // as `#hex` whatever the value's string type.
            match decode_string(tag, body).filter(|_| known.is_some()) {
                Some(s) => push_escaped(&mut part, &s),
                None => {
                    // RFC 4514 §2.4: '#' and the hex of the whole BER value.
                    part.push('#');
                    let whole = &value_der[..value_der.len() - tlv(value_der)?.2.len()];
                    for b in whole {
                        let _ = write!(part, "{b:02x}");
                    }
                }
            }
            parts.push(part);
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// The certificate's subject as an RFC 4514 string (`CN=alice,O=Example`),
/// the form nginx's `$ssl_client_s_dn` uses. `None` if the DER cannot be
/// read; `Some("")` for an empty subject.
pub fn subject_dn(cert_der: &[u8]) -> Option<String> {
    format_name(tbs(cert_der)?.subject)
}

/// The dNSName entries of the certificate's subjectAltName extension, as
/// written (lower-cased).
pub fn dns_names(cert_der: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(mut exts) = tbs(cert_der).and_then(|t| t.extensions) else {
        return out;
    };
    const SAN: &[u8] = &[0x55, 0x1d, 0x11];
    while let Some((ext, rest)) = expect(exts, SEQUENCE) {
        exts = rest;
        let Some((oid, mut r)) = expect(ext, OID) else {
            continue;
        };
        if oid != SAN {
            continue;
        }
        // critical BOOLEAN, optional
        if let Some((0x01, _, next)) = tlv(r) {
            r = next;
        }
        let Some((value, _)) = expect(r, 0x04) else {
            continue;
        };
        let Some((mut names, _)) = expect(value, SEQUENCE) else {
            continue;
        };
        while let Some((tag, body, next)) = tlv(names) {
            names = next;
            // dNSName is [2] IMPLICIT IA5String.
            if tag == 0x82 && body.is_ascii() {
                out.push(String::from_utf8_lossy(body).to_ascii_lowercase());
            }
        }
    }
    out
}

/// What mTLS reports as the client's identity: the subject DN, or when the
/// subject is empty (certificates that name their holder only in the
/// subjectAltName) the first DNS name there.
pub fn client_identity(cert_der: &[u8]) -> Option<String> {
    match subject_dn(cert_der) {
        Some(dn) if !dn.is_empty() => Some(dn),
        _ => dns_names(cert_der).into_iter().next(),
    }
}

#[cfg(test)]
mod tests {
    // Test code: `unwrap()` here is on certificates the tests generate, so a
    // failure is a failing test, never client or config input.
    use super::*;

    fn cert_with(dn: rcgen::DistinguishedName, sans: &[&str]) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_is_rfc4514_in_reverse_order() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        dn.push(rcgen::DnType::CommonName, "alice");
        let der = cert_with(dn, &["a.example"]);
        assert_eq!(
            subject_dn(&der).as_deref(),
            Some("CN=alice,O=Example\\, Inc.,C=DE")
        );
    }

    #[test]
    fn non_ascii_and_specials_are_escaped_to_printable_ascii() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, " Jürgen #1\r\n");
        let der = cert_with(dn, &[]);
        let s = subject_dn(&der).unwrap();
        assert_eq!(s, "CN=\\ J\\C3\\BCrgen #1\\0D\\0A");
        assert!(s.bytes().all(|b| (0x20..0x7f).contains(&b)));
    }

    #[test]
    fn dns_names_come_from_the_san_extension() {
        let der = cert_with(
            rcgen::DistinguishedName::new(),
            &["API.example.com", "*.example.net"],
        );
        assert_eq!(dns_names(&der), vec!["api.example.com", "*.example.net"]);
        assert_eq!(subject_dn(&der).as_deref(), Some(""));
        assert_eq!(client_identity(&der).as_deref(), Some("api.example.com"));
    }

    #[test]
    fn unknown_attribute_types_are_dotted_oids_with_hex_values() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CustomDnType(vec![1, 2, 3, 4]),
            rcgen::DnValue::Utf8String("x".into()),
        );
        let der = cert_with(dn, &[]);
        // RFC 4514 §2.4: the dotted form's value is '#' and the hex of its
        // BER encoding (UTF8String, length 1, "x").
        assert_eq!(subject_dn(&der).as_deref(), Some("1.2.3.4=#0c0178"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "client");
        dn.push(rcgen::DnType::OrganizationalUnitName, "ops");
        let der = cert_with(dn, &["x.example"]);
        for n in 0..der.len() {
            let _ = subject_dn(&der[..n]);
            let _ = dns_names(&der[..n]);
        }
        let mut seed = 0x2545_f491_u32;
        for _ in 0..20_000 {
            let mut d = der.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let i = seed as usize % d.len();
                d[i] = (seed >> 8) as u8;
            }
            let _ = client_identity(&d);
            let _ = dns_names(&d);
        }
        assert_eq!(subject_dn(&[]), None);
        assert_eq!(subject_dn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
