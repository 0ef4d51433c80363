// The checks each fuzz target runs on its input, shared by the targets
// (`include!`d by tests/fuzz/fuzz_targets/*.rs) and by tests/fuzz_corpus.rs,
// which replays the kept corpus in the normal test run. Each returns
// normally on any input; a panic is a bug.

use coregate::http::body::ChunkedDecoder;
use coregate::http::method::Method;
use coregate::http::parse::{parse_request_head, HeadLimits};
use coregate::http::response::parse_response_head;
use coregate::policy::jwt::jwks::{self, Origin};
use coregate::policy::jwt::verify::{verify, AlgSet, Rules};
use coregate::policy::sigv4::canonical::{
    decode_query_into, parse_amz_date, push_canonical_query, push_canonical_uri,
};
use coregate::route::{ApiSpec, RouteKey, RouteTable};

/// The request head parser on any bytes: never a panic; an accepted head's
/// spans lie inside the input.
pub fn request_head(data: &[u8]) {
    let limits = HeadLimits {
        max_request_line: 8192,
        max_head: 16384,
        max_headers: 100,
    };
    if let Ok(Some(head)) = parse_request_head(data, &limits) {
        assert!(head.len <= data.len());
        let _ = head.path(data);
        for h in &head.headers {
            let _ = (h.name.get(data), h.value.get(data));
        }
    }
}

/// The chunked body decoder on any bytes, fed in pieces the first byte
/// chooses: never a panic, and every step makes progress until the body
/// ends or an error stops it.
pub fn chunked(data: &[u8]) {
    let Some((&how, input)) = data.split_first() else {
        return;
    };
    let piece = 1 + (how as usize & 0x3f);
    let mut d = ChunkedDecoder::new(how & 0x80 != 0, 4096);
    for chunk in input.chunks(piece) {
        let mut rest = chunk;
        while !rest.is_empty() {
            match d.step(rest) {
                Ok(step) => {
                    assert!(step.consumed <= rest.len());
                    if step.done {
                        return;
                    }
                    assert!(step.consumed > 0, "no progress on {rest:?}");
                    rest = &rest[step.consumed..];
                }
                Err(_) => return,
            }
        }
    }
}

/// The upstream response head parser on any bytes: never a panic.
pub fn response_head(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    if let Ok(Some(resp)) = parse_response_head(input, flags & 1 == 1, 16384) {
        assert!(resp.len <= input.len());
        for h in &resp.headers {
            let (_, value) = (h.name.get(input), h.value.get(input));
            // The proxy copies values to the client as they are; the parser
            // relies on httparse to refuse these inside one.
            assert!(!value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n'));
        }
    }
}

/// Route keys and lookups: the first line is a request (`METHOD PATH`), the
/// others route keys. Parsing keys, building a table and looking the
/// request up never panic.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let Some(request) = lines.next() else {
        return;
    };
    let keys: Vec<&str> = lines.take(64).collect();
    let mut routes = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if let Ok(key) = RouteKey::parse(k) {
            routes.push((key, i as u32, *k));
        }
    }
    let spec = ApiSpec {
        name: "f",
        hosts: None,
        base_path: "/".to_string(),
        routes,
    };
    let Ok(table) = RouteTable::build(&[spec]) else {
        return;
    };
    let (method, path) = request.split_once(' ').unwrap_or(("GET", request));
    let _ = table.lookup(None, Method::from_bytes(method.as_bytes()), path);
}

/// The config loader on any text: an error list or a plan, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = coregate::plan::load_str(text);
    }
}

/// SigV4 canonicalisation of a path and a query string, and the AMZ date
/// parser, on any bytes: never a panic.
pub fn sigv4_canonical(data: &[u8]) {
    let (path, query) = match data.iter().position(|&b| b == b'?') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    push_canonical_uri(&mut out, path);
    out.clear();
    push_canonical_query(&mut out, query, false, &mut scratch);
    out.clear();
    push_canonical_query(&mut out, query, true, &mut scratch);
    out.clear();
    decode_query_into(data, &mut out);
    let _ = parse_amz_date(data);
}

/// JWT verification and JWKS parsing on any bytes: the token is checked
/// against an empty key set (every path up to the signature check runs),
/// and the same bytes are parsed as a JWKS document. Never a panic.
pub fn jwt(data: &[u8]) {
    let audience = vec!["api".to_string()];
    let rules = Rules {
        issuer: "https://issuer.example",
        audience: &audience,
        algorithms: AlgSet::all(),
        leeway: 60.0,
    };
    if let Ok((keys, _)) = jwks::parse(br#"{"keys":[]}"#, Origin::File) {
        let _ = verify(data, &keys, &rules, 1_800_000_000.0);
    }
    let _ = jwks::parse(data, Origin::Url);
}

/// The WebSocket frame decoder on any bytes, as a client's stream: the
/// first byte picks the limits (frame and message size, binary allowed).
/// Never a panic; a header never claims more bytes than it read; a
/// message handed on is within the limit, and valid UTF-8 when it is text;
/// a close code handed on is one a client may send (or 1005 for none).
pub fn ws_frames(data: &[u8]) {
    use coregate::http::ws::{parse_header, unmask, valid_close_code, Assembler, Event};
    let Some((&how, mut rest)) = data.split_first() else {
        return;
    };
    let max_frame = 1 + (how as usize & 0x0f) * 64;
    let max_message = max_frame * (1 + ((how >> 4) as usize & 0x07));
    let mut a = Assembler::new(max_message, how & 0x80 != 0);
    loop {
        let h = match parse_header(rest, max_frame) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => return,
        };
        assert!(h.len <= rest.len() && h.len <= 14);
        assert!(h.payload <= max_frame);
        let Some(payload) = rest.get(h.len..h.len + h.payload) else {
            return;
        };
        let mut payload = payload.to_vec();
        unmask(&mut payload, h.mask);
        match a.push(&h, &payload) {
            Ok(Event::Message { binary, data }) => {
                assert!(data.len() <= max_message);
                if !binary {
                    assert!(std::str::from_utf8(&data).is_ok());
                }
            }
            Ok(Event::Close { code }) => {
                assert!(code == 1005 || valid_close_code(code), "close code {code}");
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
        rest = &rest[h.len + h.payload..];
    }
}
