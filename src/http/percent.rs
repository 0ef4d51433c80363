//! Percent-decoding (RFC 3986 §2.1) of URL parts and of query values
//! (`+` as a space, as HTML forms send them): one implementation for the
//! request authorizer's identity sources, OpenAPI references, and the admin
//! API's and the portal's query strings.

use std::borrow::Cow;

/// `%XX` decoded; a `%` not followed by two hex digits stays as it is, and
/// `+` stays `+` (form encoding is not assumed). Borrows when there is
/// nothing to decode.
pub fn percent_decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'%') {
        return Cow::Borrowed(raw);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// [`percent_decode`] as text, invalid UTF-8 replaced by U+FFFD.
pub fn percent_decode_str(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode(s.as_bytes())).into_owned()
}

/// A query value as forms send it: `+` is a space, then `%XX` decoded
/// (a `%2B` stays a `+`); invalid UTF-8 replaced by U+FFFD.
pub fn query_value_decode(s: &str) -> String {
    let spaced = s
        .as_bytes()
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect::<Vec<u8>>();
    String::from_utf8_lossy(&percent_decode(&spaced)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(&*percent_decode(b"plain"), b"plain");
        assert!(matches!(percent_decode(b"plain"), Cow::Borrowed(_)));
        assert_eq!(&*percent_decode(b"a%20b%2fc"), b"a b/c");
        assert_eq!(&*percent_decode(b"100%"), b"100%");
        assert_eq!(&*percent_decode(b"%4"), b"%4");
        assert_eq!(&*percent_decode(b"%zz%41"), b"%zzA");
        assert_eq!(&*percent_decode(b"%%41"), b"%A");
        assert_eq!(&*percent_decode(b"a+b"), b"a+b");
        assert_eq!(percent_decode_str("/a%20b"), "/a b");
        assert_eq!(percent_decode_str("/a%2"), "/a%2");
        assert_eq!(percent_decode_str("%ff"), "\u{fffd}");
    }

    #[test]
    fn query_values_take_plus_as_a_space() {
        assert_eq!(query_value_decode("a+b%41"), "a bA");
        assert_eq!(query_value_decode("%2B"), "+");
        assert_eq!(query_value_decode("%zz%4"), "%zz%4");
        assert_eq!(query_value_decode("caf%C3%A9"), "café");
    }
}
