//! Differential test of the request head parser: the same generated heads
//! go to ours and to h11 (Python; a strict HTTP/1.1 parser written by
//! others, run through `tests/differential/h11_verdicts.py`), and every
//! head one accepts and the other rejects must be a known, explained kind
//! of difference (listed in `EXPLAINED`). The heads are valid requests with
//! one or two mutations each (a byte inserted, deleted or replaced from a
//! set chosen to hit the grammar's edges, a header added), from a fixed
//! seed, so a run is repeatable.
//!
//! Test code only: every `unwrap()`/`expect()` here is on the test's own
//! fixtures.

use coregate::http::parse::{parse_request_head, HeadLimits};
use std::io::Write;
use std::process::Command;

const BASES: &[&[u8]] = &[
    b"GET /pets/1?q=a&r=b HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
    b"POST /items HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n",
    b"PUT /u/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
    b"DELETE / HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n",
];

/// Bytes inserted or written over: the grammar's separators and the
/// characters it forbids somewhere.
const BYTES: &[u8] = b" \t\r\n\0:;,\"/?#%\x7f\x80\xff\x0bAa0";

const HEADERS: &[&str] = &[
    "Content-Length: 5\r\n",
    "Content-Length: 6\r\n",
    "Content-Length: +5\r\n",
    "Content-Length: 5, 5\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding: gzip, chunked\r\n",
    "Transfer-Encoding: identity\r\n",
    "Host: other\r\n",
    " folded\r\n",
    "X-Empty:\r\n",
    "X-Sp : v\r\n",
    "X Bad: v\r\n",
    ": novalue\r\n",
    "X-Obs: a\r\n\tb\r\n",
];

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One mutation of `head` (its final CRLF CRLF left alone), and what it was.
fn mutate(g: &mut Gen, head: &mut Vec<u8>) -> String {
    let body_end = head.len() - 2; // before the blank line's CRLF
    match g.below(4) {
        0 => {
            let at = g.below(body_end);
            let b = BYTES[g.below(BYTES.len())];
            head.insert(at, b);
            format!("insert {b:#04x} at {at}")
        }
        1 => {
            let at = g.below(body_end);
            let b = head.remove(at);
            format!("delete {b:#04x} at {at}")
        }
        2 => {
            let at = g.below(body_end);
            let b = BYTES[g.below(BYTES.len())];
            let was = std::mem::replace(&mut head[at], b);
            format!("replace {was:#04x} at {at} with {b:#04x}")
        }
        _ => {
            let h = HEADERS[g.below(HEADERS.len())];
            // After the request line.
            let at = head.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
            head.splice(at..at, h.bytes());
            format!("add header {h:?}")
        }
    }
}

fn ours(head: &[u8]) -> &'static str {
    let limits = HeadLimits {
        max_request_line: 8192,
        max_head: 65536,
        max_headers: 100,
    };
    match parse_request_head(head, &limits) {
        Ok(Some(_)) => "accept",
        Ok(None) => "incomplete",
        Err(_) => "reject",
    }
}

/// Kinds of disagreement that are understood: (what ours says, what h11
/// says, a test on the input, why). Anything else fails the test.
type Explained = (&'static str, &'static str, fn(&[u8]) -> bool, &'static str);

const EXPLAINED: &[Explained] = &[
    // We accept what h11 refuses.
    (
        "accept",
        "reject",
        |h| te_codings(h).is_some_and(|c| c.len() > 1 && c.last().is_some_and(|l| l.eq_ignore_ascii_case("chunked"))),
        "Transfer-Encoding with codings before a final chunked (RFC 9112 6.1 allows it; h11 implements chunked alone); the body is framed by chunked either way and the codings go upstream as sent",
    ),
    // We refuse what h11 takes: each a documented refusal (docs/http.md).
    ("reject", "accept", has_bare_lf, "a bare LF ends a line (we require CRLF)"),
    ("reject", "incomplete", has_bare_cr, "a CR not followed by LF"),
    ("reject", "accept", has_bare_cr, "a CR not followed by LF"),
    ("reject", "accept", has_obs_fold, "obs-fold: a header line continued on the next"),
    ("reject", "accept", has_cl_and_te, "both Content-Length and Transfer-Encoding"),
    ("reject", "accept", has_te_in_http10, "Transfer-Encoding in an HTTP/1.0 request"),
    ("reject", "accept", has_cl_list, "a Content-Length list, even of equal values"),
    ("reject", "accept", bad_host, "a Host value that is not a host[:port] (RFC 3986 reg-name or IP literal)"),
    ("reject", "accept", bad_target, "a request target that is not origin-form (/...) with valid bytes and percent-escapes"),
    ("reject", "accept", has_non_ascii_or_del, "DEL or a byte over 0x7e in a header value"),
    ("reject", "accept", has_empty_header_line, "an empty line inside the head, or a header line without a name"),
    ("reject", "accept", not_http_1, "an HTTP version other than 1.0 and 1.1"),
];

fn not_http_1(h: &[u8]) -> bool {
    let line_end = h.windows(2).position(|w| w == b"\r\n").unwrap_or(h.len());
    let line = &h[..line_end];
    !(line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
}

/// The head's lines between the request line and the blank line, split on
/// CRLF (a bare LF stays inside its line).
fn header_lines(h: &[u8]) -> Vec<&[u8]> {
    let text = &h[..h.len().saturating_sub(4)];
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        lines.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    lines.push(rest);
    lines.into_iter().skip(1).collect()
}

fn header_values<'h>(h: &'h [u8], name: &str) -> Vec<&'h [u8]> {
    header_lines(h)
        .into_iter()
        .filter_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            l[..colon]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| trim(&l[colon + 1..]))
        })
        .collect()
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(s, |i| i + 1);
    &v[s..e.max(s)]
}

fn te_codings(h: &[u8]) -> Option<Vec<String>> {
    let values = header_values(h, "transfer-encoding");
    if values.is_empty() {
        return None;
    }
    Some(
        values
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|c| String::from_utf8_lossy(trim(c)).into_owned())
            .collect(),
    )
}

fn has_bare_lf(h: &[u8]) -> bool {
    h.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || h[i - 1] != b'\r'))
}

fn has_bare_cr(h: &[u8]) -> bool {
    h.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && h.get(i + 1) != Some(&b'\n'))
}

fn has_obs_fold(h: &[u8]) -> bool {
    header_lines(h)
        .iter()
        .any(|l| l.first().is_some_and(|&b| b == b' ' || b == b'\t'))
}

fn has_cl_and_te(h: &[u8]) -> bool {
    !header_values(h, "content-length").is_empty() && te_codings(h).is_some()
}

fn has_te_in_http10(h: &[u8]) -> bool {
    let line_end = h.windows(2).position(|w| w == b"\r\n").unwrap_or(h.len());
    h[..line_end].ends_with(b"HTTP/1.0") && te_codings(h).is_some()
}

fn has_cl_list(h: &[u8]) -> bool {
    header_values(h, "content-length")
        .iter()
        .any(|v| v.contains(&b','))
}

/// Not `host[:port]`: a name of letters, digits, `-`, `.`, `_` or a
/// bracketed IPv6 literal, then nothing or `:` and up to 5 digits.
fn bad_host(h: &[u8]) -> bool {
    header_values(h, "host").iter().any(|v| {
        let (host, port) = if v.starts_with(b"[") {
            match v.iter().position(|&b| b == b']') {
                Some(end) => (&v[..=end], &v[end + 1..]),
                None => return true,
            }
        } else {
            let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
            (&v[..end], &v[end..])
        };
        let host_ok = match host.strip_prefix(b"[") {
            Some(lit) => {
                let lit = &lit[..lit.len() - 1];
                !lit.is_empty()
                    && lit
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
            }
            None => {
                !host.is_empty()
                    && host
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            }
        };
        let port_ok = port.is_empty()
            || (port[0] == b':' && port.len() <= 6 && port[1..].iter().all(u8::is_ascii_digit));
        !(host_ok && port_ok)
    })
}

fn bad_target(h: &[u8]) -> bool {
    let line_end = h.windows(2).position(|w| w == b"\r\n").unwrap_or(h.len());
    let line = &h[..line_end];
    let mut parts = line.split(|&b| b == b' ');
    let (_, Some(target)) = (parts.next(), parts.next()) else {
        return false;
    };
    !target.starts_with(b"/")
        || target
            .iter()
            .any(|&b| b == b'#' || b == b'"' || b <= b' ' || b >= 0x7f)
        || target.windows(3).enumerate().any(|(i, w)| {
            w[0] == b'%'
                && !(w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
                && i + 3 <= target.len()
        })
        || target.ends_with(b"%")
        || target.len() >= 2 && target[target.len() - 2] == b'%'
}

fn has_non_ascii_or_del(h: &[u8]) -> bool {
    h.iter().any(|&b| b >= 0x7f)
}

fn has_empty_header_line(h: &[u8]) -> bool {
    header_lines(h)
        .iter()
        .any(|l| l.is_empty() || l.first() == Some(&b':'))
}

#[test]
fn our_head_parser_agrees_with_h11_or_the_difference_is_explained() {
    let have_h11 = Command::new("python3")
        .args(["-c", "import h11"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        have_h11,
        "this test needs python3 with h11 (pip install h11); scripts/test installs it"
    );
    let mut g = Gen(0x5eed_1234_abcd_9876);
    let mut cases: Vec<(Vec<u8>, String)> = Vec::new();
    for _ in 0..4000 {
        let mut head = BASES[g.below(BASES.len())].to_vec();
        let mut what = mutate(&mut g, &mut head);
        if g.below(3) == 0 {
            what = format!("{what}; {}", mutate(&mut g, &mut head));
        }
        cases.push((head, what));
    }
    let file = std::env::temp_dir().join(format!("coregate-diff-{}.bin", std::process::id()));
    {
        let mut f = std::fs::File::create(&file).unwrap();
        for (head, _) in &cases {
            f.write_all(&(head.len() as u32).to_be_bytes()).unwrap();
            f.write_all(head).unwrap();
        }
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/differential/h11_verdicts.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(theirs.len(), cases.len());
    let mut unexplained = Vec::new();
    let mut agree = 0;
    let mut by_reason = std::collections::BTreeMap::new();
    for ((head, what), theirs) in cases.iter().zip(&theirs) {
        let ours = ours(head);
        if ours == theirs {
            agree += 1;
            continue;
        }
        match EXPLAINED
            .iter()
            .find(|(o, t, test, _)| *o == ours && t == theirs && test(head))
        {
            Some((_, _, _, why)) => *by_reason.entry(*why).or_insert(0) += 1,
            None => unexplained.push(format!(
                "ours {ours}, h11 {theirs}: {what}: {:?}",
                String::from_utf8_lossy(head)
            )),
        }
    }
    eprintln!(
        "{agree} of {} agree; explained: {by_reason:#?}",
        cases.len()
    );
    assert!(
        unexplained.is_empty(),
        "{} unexplained disagreement(s):\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
}
