//! The byte-exact parts of Signature Version 4: the canonical request, the
//! string to sign and the signing key, as AWS specifies them for services
//! other than S3 (docs/sigv4.md, "What is signed").
//!
//! Pure functions over byte slices, so the public test-suite vectors can
//! check them byte for byte (`tests.rs`) without a request parser in the
//! way. The request path ([`super::verify`]) writes the canonical request
//! into a reused shard-local buffer and hashes it once.

use ring::{digest, hmac};

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The last element of every credential scope.
pub const TERMINATOR: &str = "aws4_request";
/// The payload hash that says the body is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Hex SHA-256 of the empty string: the payload hash of a request without
/// a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The parts of a request the canonical request is made of. `headers` are
/// the request's header lines in the order received (names in any case).
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    pub method: &'a [u8],
    /// The path as sent (still percent-encoded), without the query.
    pub path: &'a [u8],
    /// The query as sent, without its '?'.
    pub query: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], &'a [u8])],
}

/// Why a canonical request could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonicalError {
    /// A header named in SignedHeaders is not in the request.
    SignedHeaderMissing,
}

// === impl encoding ===

/// RFC 3986 unreserved characters: the only bytes SigV4 leaves unencoded.
#[inline]
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Appends `b` as SigV4 encodes it: unreserved bytes as they are, every
/// other byte as `%XY` with upper-case hex.
#[inline]
fn push_encoded_byte(out: &mut Vec<u8>, b: u8) {
    if is_unreserved(b) {
        out.push(b);
    } else {
        out.extend_from_slice(&[
            b'%',
            HEX_UPPER[(b >> 4) as usize],
            HEX_UPPER[(b & 15) as usize],
        ]);
    }
}

/// Appends `bytes` URI-encoded (every byte but the unreserved ones).
pub fn push_uri_encoded(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        push_encoded_byte(out, b);
    }
}

/// Appends `bytes` as lower-case hex.
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(HEX_LOWER[(b >> 4) as usize]);
        out.push(HEX_LOWER[(b & 15) as usize]);
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly 64 hex digits (either case) into 32 bytes.
pub fn decode_hex32(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

/// Decodes exactly 64 lower-case hex digits (a signature as AWS writes
/// it; AWS compares the hex text, so upper case never matches there
/// either).
pub fn decode_lower_hex32(hex: &[u8]) -> Option<[u8; 32]> {
    if !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    decode_hex32(hex)
}

/// Percent-decodes one query component, calling `f` with each byte: `%XY`
/// is the byte XY, `+` is a space (as every form decoder reads it, and as
/// the `aws-sigv4` and Go signers canonicalize it), and a `%` not followed
/// by two hex digits stands for itself.
#[inline]
fn decode_query_component(raw: &[u8], mut f: impl FnMut(u8)) {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex_val(raw[i + 1]), hex_val(raw[i + 2])) {
                f((h << 4) | l);
                i += 3;
                continue;
            }
        }
        f(if b == b'+' { b' ' } else { b });
        i += 1;
    }
}

/// Percent-decodes one query component into `out` (for the presigned
/// `X-Amz-*` parameters).
pub fn decode_query_into(raw: &[u8], out: &mut Vec<u8>) {
    decode_query_component(raw, |b| out.push(b));
}

// === impl canonical URI ===

/// Appends the canonical URI of `path` (as sent on the wire): empty and `.`
/// segments are removed, `..` removes the segment before it (RFC 3986
/// §5.2.4, and consecutive slashes collapse, as AWS normalizes for every
/// service but S3), then every byte but the unreserved ones and `/` is
/// percent-encoded. The wire path is already percent-encoded once, so its
/// `%` become `%25`: each segment ends up encoded twice, as AWS specifies
/// for non-S3 services. A trailing slash is kept when a segment remains.
pub fn push_canonical_uri(out: &mut Vec<u8>, path: &[u8]) {
    // Segment boundaries as (start, end) into `path`; 16 inline covers any
    // API path seen in practice, deeper ones spill to the heap.
    let mut segs: smallvec::SmallVec<[(usize, usize); 16]> = smallvec::SmallVec::new();
    let mut start = 0;
    for i in 0..=path.len() {
        if i == path.len() || path[i] == b'/' {
            let seg = &path[start..i];
            match seg {
                b"" | b"." => {}
                b".." => {
                    segs.pop();
                }
                _ => segs.push((start, i)),
            }
            start = i + 1;
        }
    }
    out.push(b'/');
    for (n, &(s, e)) in segs.iter().enumerate() {
        if n > 0 {
            out.push(b'/');
        }
        push_uri_encoded(out, &path[s..e]);
    }
    if !segs.is_empty() && path.last() == Some(&b'/') {
        out.push(b'/');
    }
}

// === impl canonical query ===

/// Appends the canonical query string: every `name=value` pair (a pair
/// without `=` has an empty value; empty pairs between `&&` are skipped)
/// decoded and re-encoded as SigV4 encodes, sorted by encoded name and then
/// encoded value, joined with `&`. With `presigned`, the `X-Amz-Signature`
/// parameter (named exactly so, as sent) is left out (it cannot sign
/// itself). `scratch` is reused
/// working space.
pub fn push_canonical_query(
    out: &mut Vec<u8>,
    query: Option<&[u8]>,
    presigned: bool,
    scratch: &mut Vec<u8>,
) {
    let Some(query) = query else {
        return;
    };
    scratch.clear();
    // (name start, name end, value end) into `scratch`: the value runs
    // from name end to value end.
    let mut pairs: smallvec::SmallVec<[(usize, usize, usize); 16]> = smallvec::SmallVec::new();
    for pair in query.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        // Only the parameter named exactly so, as the verifier reads it
        // (`X-Amz%2DSignature` is another parameter, and signed).
        if presigned && name == b"X-Amz-Signature" {
            continue;
        }
        let ns = scratch.len();
        decode_query_component(name, |b| push_encoded_byte(scratch, b));
        let ne = scratch.len();
        decode_query_component(value, |b| push_encoded_byte(scratch, b));
        pairs.push((ns, ne, scratch.len()));
    }
    let s = &scratch[..];
    pairs.sort_unstable_by(|a, b| {
        s[a.0..a.1]
            .cmp(&s[b.0..b.1])
            .then_with(|| s[a.1..a.2].cmp(&s[b.1..b.2]))
    });
    for (n, &(ns, ne, ve)) in pairs.iter().enumerate() {
        if n > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(&s[ns..ne]);
        out.push(b'=');
        out.extend_from_slice(&s[ne..ve]);
    }
}

// === impl canonical headers ===

/// Appends a header value with leading and trailing spaces and tabs
/// removed and every run of spaces inside collapsed to one space (AWS's
/// "trimall"; tabs inside a value are kept, as the `aws-sigv4` signer keeps
/// them).
fn push_trimmed(out: &mut Vec<u8>, value: &[u8]) {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let Some(first) = value.iter().position(|b| !is_ows(b)) else {
        return;
    };
    let last = value.iter().rposition(|b| !is_ows(b)).unwrap_or(first);
    let mut prev_space = false;
    for &b in &value[first..=last] {
        if b == b' ' {
            if !prev_space {
                out.push(b' ');
            }
            prev_space = true;
        } else {
            out.push(b);
            prev_space = false;
        }
    }
}

/// Appends the canonical headers for the signed header names (lower case,
/// in the order given: SignedHeaders is sorted), one `name:value\n` line
/// each. Every header of a name contributes, in the order received, its
/// trimmed value joined with commas.
pub fn push_canonical_headers<'n>(
    out: &mut Vec<u8>,
    signed: impl Iterator<Item = &'n [u8]>,
    headers: &[(&[u8], &[u8])],
) -> Result<(), CanonicalError> {
    for name in signed {
        out.extend_from_slice(name);
        out.push(b':');
        let mut found = false;
        for (n, v) in headers {
            if n.eq_ignore_ascii_case(name) {
                if found {
                    out.push(b',');
                }
                found = true;
                push_trimmed(out, v);
            }
        }
        if !found {
            return Err(CanonicalError::SignedHeaderMissing);
        }
        out.push(b'\n');
    }
    Ok(())
}

/// Writes the whole canonical request into `out` (cleared first):
///
/// ```text
/// METHOD \n CanonicalURI \n CanonicalQuery \n CanonicalHeaders \n SignedHeaders \n PayloadHash
/// ```
///
/// `signed_headers` is the SignedHeaders text as the client sent it (names
/// separated by `;`), `payload_hash` the hex hash or `UNSIGNED-PAYLOAD`.
pub fn canonical_request(
    out: &mut Vec<u8>,
    parts: &Parts<'_>,
    signed_headers: &[u8],
    payload_hash: &[u8],
    presigned: bool,
    scratch: &mut Vec<u8>,
) -> Result<(), CanonicalError> {
    out.clear();
    canonical_request_prefix(out, parts, signed_headers, presigned, scratch)?;
    out.extend_from_slice(payload_hash);
    Ok(())
}

/// Everything of the canonical request but the payload hash, ending with
/// the newline before it: what the request path keeps while it waits for a
/// body to hash.
pub fn canonical_request_prefix(
    out: &mut Vec<u8>,
    parts: &Parts<'_>,
    signed_headers: &[u8],
    presigned: bool,
    scratch: &mut Vec<u8>,
) -> Result<(), CanonicalError> {
    out.extend_from_slice(parts.method);
    out.push(b'\n');
    push_canonical_uri(out, parts.path);
    out.push(b'\n');
    push_canonical_query(out, parts.query, presigned, scratch);
    out.push(b'\n');
    push_canonical_headers(out, signed_headers.split(|&b| b == b';'), parts.headers)?;
    out.push(b'\n');
    out.extend_from_slice(signed_headers);
    out.push(b'\n');
    Ok(())
}

// === impl string to sign and key ===

/// Writes the string to sign into `out` (cleared first): the algorithm,
/// the request time, the credential scope (`date/region/service/aws4_request`)
/// and the hex SHA-256 of the canonical request, one per line.
pub fn string_to_sign(out: &mut Vec<u8>, amz_date: &[u8], scope: &[u8], canonical: &[u8]) {
    out.clear();
    out.extend_from_slice(ALGORITHM.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(amz_date);
    out.push(b'\n');
    out.extend_from_slice(scope);
    out.push(b'\n');
    push_hex(out, digest::digest(&digest::SHA256, canonical).as_ref());
}

/// The HMAC key `"AWS4" + secret`: the first link of the signing-key chain,
/// built once per credential when the config compiles.
pub fn secret_key(secret: &str) -> hmac::Key {
    let mut k = Vec::with_capacity(4 + secret.len());
    k.extend_from_slice(b"AWS4");
    k.extend_from_slice(secret.as_bytes());
    hmac::Key::new(hmac::HMAC_SHA256, &k)
}

/// The signing key's bytes for a day, region and service:
/// HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request").
pub fn signing_key_bytes(
    secret: &hmac::Key,
    date: &[u8],
    region: &[u8],
    service: &[u8],
) -> [u8; 32] {
    let k_date = hmac::sign(secret, date);
    let k_region = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k_date.as_ref()), region);
    let k_service = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, k_region.as_ref()),
        service,
    );
    let k_signing = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, k_service.as_ref()),
        TERMINATOR.as_bytes(),
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(k_signing.as_ref());
    out
}

/// The signing key for a day, region and service, as an HMAC key.
pub fn signing_key(secret: &hmac::Key, date: &[u8], region: &[u8], service: &[u8]) -> hmac::Key {
    hmac::Key::new(
        hmac::HMAC_SHA256,
        &signing_key_bytes(secret, date, region, service),
    )
}

/// The hex signature of a string to sign (for tests and error-free
/// comparisons with the vectors; the request path compares with
/// [`hmac::verify`], in constant time).
pub fn signature_hex(key: &hmac::Key, string_to_sign: &[u8]) -> String {
    let mut out = Vec::with_capacity(64);
    push_hex(&mut out, hmac::sign(key, string_to_sign).as_ref());
    String::from_utf8_lossy(&out).into_owned()
}

// === impl time ===

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |a, &d| a * 10 + i64::from(d - b'0')))
}

/// Parses an ISO 8601 basic-format UTC time, `YYYYMMDDTHHMMSSZ` (the
/// `X-Amz-Date` form), into seconds since the Unix epoch. Leap seconds are
/// refused (AWS's own signers never produce them).
pub fn parse_amz_date(s: &[u8]) -> Option<i64> {
    if s.len() != 16 || s[8] != b'T' || s[15] != b'Z' {
        return None;
    }
    let (y, mo, d) = (digits(&s[0..4])?, digits(&s[4..6])?, digits(&s[6..8])?);
    let (h, mi, se) = (digits(&s[9..11])?, digits(&s[11..13])?, digits(&s[13..15])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || d < 1 || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    if d > month_days[(mo - 1) as usize] {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Formats Unix seconds as `YYYYMMDDTHHMMSSZ` (for error messages).
pub fn format_amz_date(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}
