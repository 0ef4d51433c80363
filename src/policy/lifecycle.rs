//! Lifecycle: a route or API marked deprecated or retired
//! (docs/lifecycle.md). Its phase runs after IP rules and CORS: a
//! deprecated route's responses carry `Deprecation` (RFC 9745), `Sunset`
//! (RFC 8594) and a `Link` to its documentation, header lines rendered once
//! at compile time and appended like CORS headers; a retired one is
//! answered 410 Gone with the same headers, and its backend never hears of
//! the request. A route without a lifecycle has no phase for it.

use super::{Decision, Refusal};
use crate::config::raw::lifecycle::RawLifecycle;
use crate::config::ConfigError;

/// A route's compiled lifecycle (only for deprecated or retired ones).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub retired: bool,
    /// Complete header lines (`name: value\r\n`).
    pub headers: Vec<u8>,
}

impl Lifecycle {
    /// The phase: 410 for a retired route; otherwise the headers for the
    /// response, and on.
    pub fn check(&self, extra: &mut Vec<u8>) -> Decision {
        if self.retired {
            let mut r = Refusal::json(410, "Gone");
            r.headers.extend_from_slice(&self.headers);
            return Decision::Respond(r);
        }
        extra.extend_from_slice(&self.headers);
        Decision::Continue
    }
}

/// Compiles the route's `lifecycle`, or else its API's (a route's table
/// replaces the API's whole). `akey`/`rkey` are their config paths.
pub fn compile(
    api: Option<&RawLifecycle>,
    route: Option<&RawLifecycle>,
    akey: &str,
    rkey: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Lifecycle> {
    let (raw, key) = match (route, api) {
        (Some(r), _) => (r, format!("{rkey}.lifecycle")),
        (None, Some(a)) => (a, format!("{akey}.lifecycle")),
        (None, None) => return None,
    };
    // The API's table is compiled for each of its routes: its errors are
    // reported once.
    let mut found = Vec::new();
    let compiled = compile_table(raw, &key, &mut found);
    for e in found {
        if !errors.contains(&e) {
            errors.push(e);
        }
    }
    compiled
}

fn compile_table(
    raw: &RawLifecycle,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Lifecycle> {
    let before = errors.len();
    let retired = match raw.status.as_deref() {
        None | Some("active") => false,
        Some("deprecated") => false,
        Some("retired") => true,
        Some(other) => {
            errors.push(ConfigError::new(
                format!("{key}.status"),
                format!("{other:?} is not one of \"active\", \"deprecated\", \"retired\""),
            ));
            false
        }
    };
    let deprecated = matches!(raw.status.as_deref(), Some("deprecated"));
    let date = |field: &str, v: &Option<String>, errors: &mut Vec<ConfigError>| {
        let v = v.as_deref()?;
        match parse_date(v) {
            Some(t) => Some(t),
            None => {
                errors.push(ConfigError::new(
                    format!("{key}.{field}"),
                    format!("{v:?} is not a date: write \"YYYY-MM-DD\" or \"YYYY-MM-DDTHH:MM:SSZ\" (UTC)"),
                ));
                None
            }
        }
    };
    let deprecated_at = date("deprecated_at", &raw.deprecated_at, errors);
    let sunset = date("sunset", &raw.sunset, errors);
    if deprecated && raw.deprecated_at.is_none() {
        errors.push(ConfigError::new(
            format!("{key}.deprecated_at"),
            "is required when status is \"deprecated\": the Deprecation header (RFC 9745) carries that date",
        ));
    }
    if let Some(doc) = &raw.documentation {
        let scheme_ok = doc.starts_with("https://") || doc.starts_with("http://");
        if !scheme_ok
            || doc
                .bytes()
                .any(|b| !b.is_ascii_graphic() || matches!(b, b'<' | b'>' | b'"'))
        {
            errors.push(ConfigError::new(
                format!("{key}.documentation"),
                format!("{doc:?} is not an http(s) URL without spaces, quotes or angle brackets"),
            ));
        }
    }
    if errors.len() != before || !(deprecated || retired) {
        return None;
    }
    let mut headers = Vec::new();
    if let Some(t) = deprecated_at {
        headers.extend_from_slice(b"deprecation: @");
        crate::http::encode::push_u64(&mut headers, t);
        headers.extend_from_slice(b"\r\n");
    }
    if let Some(t) = sunset {
        headers.extend_from_slice(b"sunset: ");
        headers.extend_from_slice(&crate::http::encode::format_http_date(t));
        headers.extend_from_slice(b"\r\n");
    }
    if let Some(doc) = &raw.documentation {
        headers.extend_from_slice(b"link: <");
        headers.extend_from_slice(doc.as_bytes());
        headers.extend_from_slice(b">; rel=\"deprecation\"");
        if sunset.is_some() {
            headers.extend_from_slice(b", <");
            headers.extend_from_slice(doc.as_bytes());
            headers.extend_from_slice(b">; rel=\"sunset\"");
        }
        headers.extend_from_slice(b"\r\n");
    }
    Some(Lifecycle { retired, headers })
}

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` (UTC) as Unix seconds, from
/// 1970 on.
pub fn parse_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() != 10 && b.len() != 20 {
        return None;
    }
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if y < 1970 || d == 0 || d > days_in_month {
        return None;
    }
    let mut secs = 0;
    if b.len() == 20 {
        if b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z' {
            return None;
        }
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if h > 23 || mi > 59 || se > 59 {
            return None;
        }
        secs = (h * 3600 + mi * 60 + se) as u64;
    }
    let days = super::usage::clock::days_from_civil(y as i64, m, d);
    Some(days as u64 * 86_400 + secs)
}

#[cfg(test)]
mod tests {
    // Test inputs are literals: unwrapping them is fine.
    use super::*;

    #[test]
    fn dates_parse_to_unix_seconds() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2026-12-31T23:59:59Z"), Some(1_798_761_599));
        assert_eq!(parse_date("2024-02-29"), Some(1_709_164_800));
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-1-01",
            "2026-01-01T24:00:00Z",
            "yesterday",
            "1969-12-31",
            "2026-01-01T00:00:00+01:00",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn deprecated_headers_are_rendered_once() {
        let raw = RawLifecycle {
            status: Some("deprecated".into()),
            deprecated_at: Some("2026-01-01".into()),
            sunset: Some("2026-12-31T23:59:59Z".into()),
            documentation: Some("https://example.com/migrate".into()),
        };
        let mut errors = Vec::new();
        let l = compile(
            Some(&raw),
            None,
            "apis[0]",
            "apis[0].routes[0]",
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty());
        assert!(!l.retired);
        assert_eq!(
            String::from_utf8(l.headers).unwrap(),
            "deprecation: @1767225600\r\nsunset: Thu, 31 Dec 2026 23:59:59 GMT\r\nlink: <https://example.com/migrate>; rel=\"deprecation\", <https://example.com/migrate>; rel=\"sunset\"\r\n"
        );
    }

    #[test]
    fn a_route_that_is_active_overrides_a_deprecated_api() {
        let api = RawLifecycle {
            status: Some("deprecated".into()),
            deprecated_at: Some("2026-01-01".into()),
            ..Default::default()
        };
        let route = RawLifecycle {
            status: Some("active".into()),
            ..Default::default()
        };
        let mut errors = Vec::new();
        assert!(compile(Some(&api), Some(&route), "a", "r", &mut errors).is_none());
        assert!(errors.is_empty());
    }
}
