//! Upstream response heads: parsed when a backend answers, then rewritten for
//! the client by the proxy integration.

use super::names::{classify, Name};
use super::parse::{list_elements, mark_connection_listed, trim_ows, HeaderSpan, Span};
use smallvec::SmallVec;

/// How an upstream response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RespFraming {
    #[default]
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub minor_version: u8,
    /// Everything after the status code on the status line.
    pub reason: Span,
    pub headers: SmallVec<[HeaderSpan; 24]>,
    pub framing: RespFraming,
    /// The upstream will keep the connection open after this response.
    pub keep_alive: bool,
    pub has_request_id: bool,
    /// A `Date` header goes on to the client (none listed in `Connection`).
    pub has_date: bool,
    /// The Content-Length the upstream declared (kept for HEAD responses).
    pub content_length: Option<u64>,
    /// The Transfer-Encoding value, forwarded as is when chunked passes through.
    pub transfer_encoding: Option<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Parses an upstream response head. `head_request` says the request was
/// HEAD, which has no response body whatever the headers say.
pub fn parse_response_head(
    buf: &[u8],
    head_request: bool,
    max_head: usize,
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut head = ResponseHead::default();
    Ok(parse_response_head_into(buf, head_request, max_head, &mut head)?.then_some(head))
}

/// As [`parse_response_head`], into `out` (`Ok(true)`: a head is there;
/// `Ok(false)`: more bytes are needed; on `Ok(false)` and `Err` `out` holds
/// nothing of use), so the proxy's one head per exchange is filled where
/// it lives rather than copied there.
pub fn parse_response_head_into(
    buf: &[u8],
    head_request: bool,
    max_head: usize,
    out: &mut ResponseHead,
) -> Result<bool, BadResponse> {
    // Uninitialised, as for requests: initialising 256 headers per response
    // cost more than parsing a small one.
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 256];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_head {
                return Err(BadResponse("response head too large"));
            }
            return Ok(false);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(BadResponse("too many response headers"))
        }
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    if len > max_head {
        return Err(BadResponse("response head too large"));
    }
    let status = resp.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err(BadResponse("invalid status code"));
    }
    let minor_version = resp.version.unwrap_or(1);
    let reason = resp.reason.unwrap_or("");
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        Span {
            start: start as u32,
            end: (start + s.len()) as u32,
        }
    };
    // Field by field: building a whole head and assigning it would copy it.
    out.len = len;
    out.status = status;
    out.minor_version = minor_version;
    out.reason = if reason.is_empty() {
        Span::default()
    } else {
        span(reason.as_bytes())
    };
    if out.headers.spilled() {
        out.headers = SmallVec::new();
    } else {
        out.headers.clear();
    }
    out.framing = RespFraming::Close;
    out.keep_alive = minor_version == 1;
    out.has_request_id = false;
    out.has_date = false;
    out.content_length = None;
    out.transfer_encoding = None;
    let mut content_length: Option<u64> = None;
    // Transfer-Encoding: seen at all; how many codings over all its lines;
    // whether one of them is not `chunked`.
    let (mut te_seen, mut te_codings, mut te_other) = (false, 0u32, false);
    let mut connection_names: SmallVec<[&[u8]; 4]> = SmallVec::new();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        // No NUL, CR or LF can be in `value`: httparse's value grammar
        // (HTAB, SP, VCHAR, obs-text) refuses them, with obs-fold off.
        let kind = classify(name);
        match kind {
            Name::ContentLength => {
                for elem in value.split(|&b| b == b',').map(trim_ows) {
                    let ok =
                        !elem.is_empty() && elem.len() <= 19 && elem.iter().all(u8::is_ascii_digit);
                    let n: u64 = if ok {
                        std::str::from_utf8(elem)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or(BadResponse("invalid Content-Length"))?
                    } else {
                        return Err(BadResponse("invalid Content-Length"));
                    };
                    if content_length.is_some_and(|p| p != n) {
                        return Err(BadResponse("conflicting Content-Length"));
                    }
                    content_length = Some(n);
                }
            }
            Name::TransferEncoding => {
                te_seen = true;
                for coding in list_elements(value) {
                    te_codings += 1;
                    if !coding.eq_ignore_ascii_case(b"chunked") {
                        te_other = true;
                    }
                }
                out.transfer_encoding = Some(span(value));
            }
            Name::Connection => {
                for token in list_elements(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        out.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if minor_version == 0 {
                            out.keep_alive = true;
                        }
                    } else {
                        connection_names.push(token);
                    }
                }
            }
            Name::XRequestId => out.has_request_id = true,
            Name::Date => out.has_date = true,
            _ => {}
        }
        out.headers.push(HeaderSpan {
            name: span(name),
            value: span(value),
            // Not forwarded to the client: hop-by-hop, plus the framing
            // headers the gateway writes itself for the client's side.
            hop: kind.is_hop_by_hop() || kind.is_framing(),
        });
    }
    // A framing header listed in Connection is already hop-by-hop here.
    mark_connection_listed(&mut out.headers, buf, &connection_names);
    if out.has_date && !connection_names.is_empty() {
        out.has_date = out
            .headers
            .iter()
            .any(|h| !h.hop && h.name.get(buf).eq_ignore_ascii_case(b"date"));
    }
    out.framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        RespFraming::None
    } else if te_seen {
        if te_other || te_codings != 1 {
            // Any coding but one `chunked`: the gateway sends no `TE`
            // upstream, and without one a server may apply no coding but
            // chunked (RFC 9110 §10.1.4, RFC 9112 §6.1). Forwarded, the
            // coding would be lost: without chunked last the body would be
            // read until close, still coded, and Transfer-Encoding (a
            // hop-by-hop header) not passed on; with `gzip, chunked` an
            // HTTP/1.0 client gets the body de-chunked with nothing saying
            // it is gzip, and over two header lines the gateway would pass
            // on the last one only. Either way the client would take the
            // coded bytes for the content.
            return Err(BadResponse("Transfer-Encoding other than a single chunked"));
        }
        RespFraming::Chunked
    } else if let Some(n) = content_length {
        RespFraming::Length(n)
    } else {
        RespFraming::Close
    };
    out.content_length = content_length;
    if te_seen && content_length.is_some() {
        // Transfer-Encoding overrides Content-Length, and the body is
        // read that way; but a sender that wrote both may frame its next
        // bytes by the other, so the connection carries nothing more
        // (RFC 9112 §6.3: such a message ought to be handled as an error).
        out.keep_alive = false;
    }
    if out.framing == RespFraming::Close {
        out.keep_alive = false;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No NUL, CR or LF reaches a header value: the parser leaves that to
    /// httparse's value grammar, and the proxy copies values to the client.
    #[test]
    fn nul_cr_and_lf_inside_a_value_are_refused() {
        for value in [&b"a\0b"[..], b"a\rb", b"\0", b"a\r", b"a\r\rb"] {
            let mut head = b"HTTP/1.1 200 OK\r\nx-a: ".to_vec();
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
            assert!(
                parse_response_head(&head, false, 16384).is_err(),
                "{:?}",
                String::from_utf8_lossy(&head)
            );
        }
        // A bare LF ends the line: two headers, neither holding the LF.
        let head = b"HTTP/1.1 200 OK\r\nx-a: b\nx-c: d\r\ncontent-length: 0\r\n\r\n";
        let parsed = parse_response_head(head, false, 16384);
        let Ok(Some(resp)) = parsed else {
            panic!("{parsed:?}");
        };
        let values: Vec<&[u8]> = resp.headers.iter().map(|h| h.value.get(head)).collect();
        assert_eq!(values, [&b"b"[..], b"d", b"0"]);
    }

    #[test]
    fn a_transfer_coding_other_than_one_chunked_is_refused() {
        for te in [
            "transfer-encoding: gzip",
            "transfer-encoding: chunked, gzip",
            "transfer-encoding: identity",
            "transfer-encoding: gzip, chunked",
            "transfer-encoding: chunked, chunked",
            "transfer-encoding: ",
            "transfer-encoding: gzip\r\ntransfer-encoding: chunked",
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
        ] {
            let head = format!("HTTP/1.1 200 OK\r\n{te}\r\n\r\n");
            assert!(
                parse_response_head(head.as_bytes(), false, 16384).is_err(),
                "{te}"
            );
        }
        // One chunked, in any case: chunked framing. No body at all:
        // nothing to refuse.
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n";
        let parsed = parse_response_head(head, false, 16384);
        assert!(matches!(parsed, Ok(Some(ref r)) if r.framing == RespFraming::Chunked));
        let head = b"HTTP/1.1 204 No Content\r\ntransfer-encoding: gzip\r\n\r\n";
        let parsed = parse_response_head(head, false, 16384);
        assert!(matches!(parsed, Ok(Some(ref r)) if r.framing == RespFraming::None));
    }

    #[test]
    fn framing_and_hop_by_hop_headers_in_any_case() {
        let head = b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 5\r\nKeep-Alive: timeout=5\r\n\
Proxy-Thing: x\r\nX-Request-ID: abc\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n";
        let parsed = parse_response_head(head, false, 16384);
        let Ok(Some(resp)) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(resp.framing, RespFraming::Length(5));
        assert!(resp.has_request_id);
        assert!(!resp.keep_alive);
        let hop: Vec<bool> = resp.headers.iter().map(|h| h.hop).collect();
        assert_eq!(hop, [true, true, true, false, false, true]);
    }
}
