//! The header names the gateway acts on, recognised in one pass per header.
//!
//! Every request and response head is walked header by header. Comparing
//! each name with a dozen known names one `eq_ignore_ascii_case` at a time
//! cost about a quarter of the gateway's own instructions for a small
//! proxied request (callgrind); [`classify`] dispatches on the length and
//! compares at most two candidates, eight bytes at a time.

/// A header name the gateway acts on, or [`Name::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    ContentLength,
    TransferEncoding,
    Host,
    Connection,
    Expect,
    XRequestId,
    Upgrade,
    KeepAlive,
    Te,
    Trailer,
    /// `Proxy-` and at least one byte more (`Proxy-Connection`,
    /// `Proxy-Authorization`, ...).
    Proxy,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    /// Acted on in responses only: one without it gets the gateway's.
    Date,
    Other,
}

impl Name {
    /// Hop-by-hop by RFC 9110 §7.6.1, plus the obsolete `Proxy-Connection`
    /// and every `Proxy-*`: never forwarded in either direction.
    #[inline]
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection
                | Name::KeepAlive
                | Name::Te
                | Name::Trailer
                | Name::Upgrade
                | Name::Proxy
        )
    }

    /// Request headers the gateway sets or handles itself, so the client's
    /// are not forwarded as they came.
    #[inline]
    pub fn is_set_by_gateway(self) -> bool {
        matches!(
            self,
            Name::Host
                | Name::Expect
                | Name::XForwardedFor
                | Name::XForwardedProto
                | Name::XForwardedHost
                | Name::XRequestId
        )
    }

    /// The two headers that say where a message body ends.
    #[inline]
    pub fn is_framing(self) -> bool {
        matches!(self, Name::ContentLength | Name::TransferEncoding)
    }
}

/// Which known header `name` is, ignoring ASCII case. Exact for any bytes:
/// a name matches only if `eq_ignore_ascii_case` with the known name would.
#[inline]
pub fn classify(name: &[u8]) -> Name {
    match name.len() {
        2 if eq_lower(name, b"te") => Name::Te,
        4 if eq_lower(name, b"host") => Name::Host,
        4 if eq_lower(name, b"date") => Name::Date,
        6 if eq_lower(name, b"expect") => Name::Expect,
        7 if eq_lower(name, b"upgrade") => Name::Upgrade,
        7 if eq_lower(name, b"trailer") => Name::Trailer,
        10 if eq_lower(name, b"connection") => Name::Connection,
        10 if eq_lower(name, b"keep-alive") => Name::KeepAlive,
        12 if eq_lower(name, b"x-request-id") => Name::XRequestId,
        14 if eq_lower(name, b"content-length") => Name::ContentLength,
        15 if eq_lower(name, b"x-forwarded-for") => Name::XForwardedFor,
        16 if eq_lower(name, b"x-forwarded-host") => Name::XForwardedHost,
        17 if eq_lower(name, b"transfer-encoding") => Name::TransferEncoding,
        17 if eq_lower(name, b"x-forwarded-proto") => Name::XForwardedProto,
        n if n > 6 && eq_lower(&name[..6], b"proxy-") => Name::Proxy,
        _ => Name::Other,
    }
}

/// `name.eq_ignore_ascii_case(lower)` for a `lower` of lowercase letters and
/// other bytes that have no case ('-'), compared eight bytes at a time.
/// A letter's case is its 0x20 bit, so OR-ing that bit in where `lower` has
/// a letter, and nowhere else, folds exactly what ASCII case folding does.
#[inline(always)]
pub fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    let (mut a, mut b) = (name, lower);
    while let (Some((x, ra)), Some((y, rb))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        let y = u64::from_le_bytes(*y);
        if u64::from_le_bytes(*x) | case_bits(y) != y {
            return false;
        }
        a = ra;
        b = rb;
    }
    a.iter()
        .zip(b)
        .all(|(&x, &y)| x | if y.is_ascii_lowercase() { 0x20 } else { 0 } == y)
}

/// 0x20 in every byte of `w` that is a lowercase ASCII letter.
#[inline(always)]
fn case_bits(w: u64) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < 8 {
        let b = (w >> (8 * i)) as u8;
        if b.is_ascii_lowercase() {
            m |= 0x20 << (8 * i);
        }
        i += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: [(&[u8], Name); 15] = [
        (b"te", Name::Te),
        (b"host", Name::Host),
        (b"date", Name::Date),
        (b"expect", Name::Expect),
        (b"upgrade", Name::Upgrade),
        (b"trailer", Name::Trailer),
        (b"connection", Name::Connection),
        (b"keep-alive", Name::KeepAlive),
        (b"x-request-id", Name::XRequestId),
        (b"content-length", Name::ContentLength),
        (b"x-forwarded-for", Name::XForwardedFor),
        (b"x-forwarded-host", Name::XForwardedHost),
        (b"transfer-encoding", Name::TransferEncoding),
        (b"x-forwarded-proto", Name::XForwardedProto),
        (b"proxy-authorization", Name::Proxy),
    ];

    #[test]
    fn every_known_name_in_any_case() {
        for (name, want) in KNOWN {
            assert_eq!(classify(name), want, "{}", String::from_utf8_lossy(name));
            let upper = name.to_ascii_uppercase();
            assert_eq!(classify(&upper), want);
            // Alternate case, starting with either.
            for start in 0..2 {
                let mixed: Vec<u8> = name
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        if i % 2 == start {
                            b.to_ascii_uppercase()
                        } else {
                            *b
                        }
                    })
                    .collect();
                assert_eq!(classify(&mixed), want);
            }
        }
    }

    /// Every single-byte change of every known name: the classifier agrees
    /// with `eq_ignore_ascii_case` on each, whatever the byte (0x0D and
    /// 0x0D | 0x20 = '-' included, which a plain OR of 0x20 would confuse).
    #[test]
    fn agrees_with_eq_ignore_ascii_case_on_every_one_byte_change() {
        for (name, want) in KNOWN {
            for i in 0..name.len() {
                for b in 0..=255u8 {
                    let mut m = name.to_vec();
                    m[i] = b;
                    let same = m.eq_ignore_ascii_case(name);
                    let got = classify(&m);
                    if want == Name::Proxy && i >= 6 {
                        assert_eq!(got, Name::Proxy);
                    } else if same {
                        assert_eq!(got, want, "{m:?}");
                    } else {
                        assert_ne!(got, want, "{m:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn proxy_prefix_needs_a_byte_after_it() {
        assert_eq!(classify(b"Proxy-"), Name::Other);
        assert_eq!(classify(b"Proxy-Connection"), Name::Proxy);
        assert_eq!(classify(b"proxyauthorization"), Name::Other);
        assert_eq!(classify(b"Proxy_Connection"), Name::Other);
    }

    #[test]
    fn other_names_are_other() {
        for n in [
            &b""[..],
            b"t",
            b"tf",
            b"hosts",
            b"content-type",
            b"content-lengthx",
            b"x-request-ie",
            b"dat",
            b"datex",
            b"server",
        ] {
            assert_eq!(classify(n), Name::Other, "{}", String::from_utf8_lossy(n));
        }
    }

    #[test]
    fn eq_lower_matches_std_on_lengths_around_eight() {
        let lower = b"abcdefgh-ijklmnop-q";
        for len in 0..=lower.len() {
            let l = &lower[..len];
            let mut u = l.to_ascii_uppercase();
            assert!(eq_lower(&u, l));
            if let Some(last) = u.last_mut() {
                *last ^= 0x01;
                assert_eq!(eq_lower(&u, l), u.eq_ignore_ascii_case(l));
            }
        }
    }
}
