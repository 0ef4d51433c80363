//! Byte-literal tests of the WebSocket codec. Unwraps are fine here: the
//! inputs are literals of the test, and a failed unwrap fails the test.

use super::*;
use crate::http::parse::{parse_request_head, HeadLimits};

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8192,
    max_head: 16384,
    max_headers: 100,
};

/// A masked client frame.
fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![b0];
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let mut p = payload.to_vec();
    unmask(&mut p, mask);
    out.extend_from_slice(&p);
    out
}

/// Parses and assembles every frame in `bytes`.
fn run(bytes: &[u8], asm: &mut Assembler, max_frame: usize) -> Result<Vec<Event>, Violation> {
    let mut out = Vec::new();
    let mut buf = bytes.to_vec();
    let mut pos = 0;
    while pos < buf.len() {
        let h = parse_header(&buf[pos..], max_frame)?.expect("a whole frame");
        let start = pos + h.len;
        let end = start + h.payload;
        unmask(&mut buf[start..end], h.mask);
        out.push(asm.push(&h, &buf[start..end])?);
        pos = end;
    }
    Ok(out)
}

#[test]
fn accept_key_matches_rfc_6455_example() {
    // RFC 6455 §1.3.
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

fn handshake(req: &str) -> Result<(Vec<u8>, Vec<String>), HandshakeError> {
    let buf = req.as_bytes();
    let head = parse_request_head(buf, &LIMITS).unwrap().unwrap();
    check_handshake(buf, &head).map(|h| {
        (
            h.key.to_vec(),
            h.protocols
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
        )
    })
}

#[test]
fn handshake_checks() {
    let good = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n";
    let (key, protos) = handshake(good).unwrap();
    assert_eq!(key, b"dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(protos, ["chat", "superchat"]);

    let no_upgrade = good.replace("Upgrade: websocket\r\n", "");
    assert_eq!(handshake(&no_upgrade).unwrap_err().status, 400);
    let no_conn = good.replace("Connection: keep-alive, Upgrade\r\n", "");
    assert_eq!(handshake(&no_conn).unwrap_err().status, 400);
    let v8 = good.replace("Version: 13", "Version: 8");
    let e = handshake(&v8).unwrap_err();
    assert_eq!((e.status, e.version), (426, true));
    let no_v = good.replace("Sec-WebSocket-Version: 13\r\n", "");
    assert_eq!(handshake(&no_v).unwrap_err().status, 426);
    let short_key = good.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
    assert_eq!(handshake(&short_key).unwrap_err().status, 400);
    let no_key = good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    assert_eq!(handshake(&no_key).unwrap_err().status, 400);
    let two_keys = good.replace(
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version",
    );
    assert_eq!(handshake(&two_keys).unwrap_err().status, 400);
    let http10 = good.replace("HTTP/1.1", "HTTP/1.0");
    assert_eq!(handshake(&http10).unwrap_err().status, 400);
    let post = good.replace("GET", "POST");
    assert_eq!(handshake(&post).unwrap_err().status, 400);
    let body = good.replace("\r\n\r\n", "\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(handshake(&body).unwrap_err().status, 400);
}

#[test]
fn text_binary_and_fragments() {
    let mask = [1, 2, 3, 4];
    let mut a = Assembler::new(1000, false);
    let ev = run(&client_frame(0x81, b"hello", mask), &mut a, 100).unwrap();
    assert_eq!(
        ev,
        [Event::Message {
            binary: false,
            data: b"hello".to_vec()
        }]
    );
    // Fragmented, with a ping between the fragments.
    let mut bytes = client_frame(0x01, b"hel", mask);
    bytes.extend(client_frame(0x89, b"p", mask));
    bytes.extend(client_frame(0x80, b"lo", mask));
    let ev = run(&bytes, &mut a, 100).unwrap();
    assert_eq!(
        ev,
        [
            Event::Partial,
            Event::Ping(b"p".to_vec()),
            Event::Message {
                binary: false,
                data: b"hello".to_vec()
            }
        ]
    );
    // Binary refused unless allowed; accepted when allowed.
    let e = run(&client_frame(0x82, b"\x00\x01", mask), &mut a, 100).unwrap_err();
    assert_eq!(e.code, code::UNSUPPORTED_DATA);
    let mut b = Assembler::new(1000, true);
    let ev = run(&client_frame(0x82, b"\x00\xff", mask), &mut b, 100).unwrap();
    assert_eq!(
        ev,
        [Event::Message {
            binary: true,
            data: vec![0, 0xff]
        }]
    );
}

#[test]
fn hostile_frames_name_their_close_code() {
    let mask = [9, 8, 7, 6];
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // unmasked
        (vec![0x81, 0x02, b'h', b'i'], code::PROTOCOL_ERROR),
        // RSV1
        (client_frame(0xC1, b"x", mask), code::PROTOCOL_ERROR),
        // opcode 3 (reserved) and 0xB (reserved control)
        (client_frame(0x83, b"x", mask), code::PROTOCOL_ERROR),
        (client_frame(0x8B, b"x", mask), code::PROTOCOL_ERROR),
        // a 126-byte ping
        (client_frame(0x89, &[0; 126], mask), code::PROTOCOL_ERROR),
        // a fragmented ping
        (client_frame(0x09, b"x", mask), code::PROTOCOL_ERROR),
        // continuation without a message
        (client_frame(0x80, b"x", mask), code::PROTOCOL_ERROR),
        // invalid UTF-8
        (client_frame(0x81, b"\xff\xfe", mask), code::INVALID_PAYLOAD),
        // close with code 1005 (may not be sent), 999, 5000, one byte
        (
            client_frame(0x88, &1005u16.to_be_bytes(), mask),
            code::PROTOCOL_ERROR,
        ),
        (
            client_frame(0x88, &999u16.to_be_bytes(), mask),
            code::PROTOCOL_ERROR,
        ),
        (
            client_frame(0x88, &5000u16.to_be_bytes(), mask),
            code::PROTOCOL_ERROR,
        ),
        (client_frame(0x88, b"\x03", mask), code::PROTOCOL_ERROR),
        // a frame over the frame limit (100 here)
        (
            client_frame(0x81, &[b'a'; 101], mask),
            code::MESSAGE_TOO_BIG,
        ),
    ];
    for (bytes, want) in cases {
        let mut a = Assembler::new(1000, false);
        let got = run(&bytes, &mut a, 100).unwrap_err();
        assert_eq!(got.code, want, "{bytes:02x?}: {}", got.reason);
    }
    // A new message inside a fragmented one.
    let mut a = Assembler::new(1000, false);
    let mut bytes = client_frame(0x01, b"a", mask);
    bytes.extend(client_frame(0x81, b"b", mask));
    assert_eq!(
        run(&bytes, &mut a, 100).unwrap_err().code,
        code::PROTOCOL_ERROR
    );
    // A message over the message limit, in frames under the frame limit.
    let mut a = Assembler::new(150, false);
    let mut bytes = client_frame(0x01, &[b'a'; 100], mask);
    bytes.extend(client_frame(0x80, &[b'a'; 51], mask));
    assert_eq!(
        run(&bytes, &mut a, 100).unwrap_err().code,
        code::MESSAGE_TOO_BIG
    );
}

#[test]
fn text_fragments_are_checked_as_they_come() {
    let mask = [1, 2, 3, 4];
    let frag = |b0: u8, p: &[u8]| client_frame(b0, p, mask);
    // U+1F600 cut 1/2/1 over three fragments: one message.
    let mut a = Assembler::new(1000, false);
    let mut bytes = frag(0x01, b"a\xf0");
    bytes.extend(frag(0x00, b"\x9f\x98"));
    bytes.extend(frag(0x80, b"\x80"));
    // Test input this test wrote: an error here is the assembler refusing
    // valid UTF-8, the failure this assertion exists to catch.
    let got = run(&bytes, &mut a, 100).unwrap();
    assert_eq!(
        got.last(),
        Some(&Event::Message {
            binary: false,
            data: "a\u{1F600}".as_bytes().to_vec()
        })
    );
    // Invalid in the first fragment: refused before the message ends.
    let mut a = Assembler::new(1000, false);
    let e = run(&frag(0x01, b"ok\xff more"), &mut a, 100).unwrap_err();
    assert_eq!(e.code, code::INVALID_PAYLOAD);
    // A surrogate's first two bytes can begin no valid character.
    let mut a = Assembler::new(1000, false);
    let e = run(&frag(0x01, b"\xed\xa0"), &mut a, 100).unwrap_err();
    assert_eq!(e.code, code::INVALID_PAYLOAD);
    // Valid so far, then a fragment that breaks the cut character.
    let mut a = Assembler::new(1000, false);
    let mut bytes = frag(0x01, b"\xe2\x82");
    bytes.extend(frag(0x00, b"("));
    assert_eq!(
        run(&bytes, &mut a, 100).unwrap_err().code,
        code::INVALID_PAYLOAD
    );
    // A character still cut when the message ends.
    let mut a = Assembler::new(1000, false);
    let mut bytes = frag(0x01, b"x");
    bytes.extend(frag(0x80, b"\xe2\x82"));
    assert_eq!(
        run(&bytes, &mut a, 100).unwrap_err().code,
        code::INVALID_PAYLOAD
    );
    // Binary fragments are not text.
    let mut a = Assembler::new(1000, true);
    let mut bytes = frag(0x02, b"\xff");
    bytes.extend(frag(0x80, b"\xfe"));
    assert!(run(&bytes, &mut a, 100).is_ok());
}

#[test]
fn a_2_pow_63_length_is_refused_from_the_header_alone() {
    let mut hdr = vec![0x82, 0x80 | 127];
    hdr.extend_from_slice(&(1u64 << 63).to_be_bytes());
    // No mask, no payload: the length alone decides. The 8-byte form's
    // top bit must be clear (RFC 6455 §5.2).
    let e = parse_header(&hdr, 32 * 1024).unwrap_err();
    assert_eq!(e.code, code::PROTOCOL_ERROR);
    let mut hdr = vec![0x82, 0x80 | 127];
    hdr.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(
        parse_header(&hdr, 32 * 1024).unwrap_err().code,
        code::PROTOCOL_ERROR
    );
    let mut hdr = vec![0x82, 0x80 | 127];
    hdr.extend_from_slice(&(1u64 << 62).to_be_bytes());
    assert_eq!(
        parse_header(&hdr, 32 * 1024).unwrap_err().code,
        code::MESSAGE_TOO_BIG
    );
}

/// A length must be in the fewest bytes: 126 and 127 announce the 2- and
/// 8-byte forms only for lengths that need them.
#[test]
fn lengths_not_in_their_shortest_form_are_refused() {
    let mask = [1, 2, 3, 4];
    let long = |form: u8, n: u64| {
        let mut f = vec![0x82, 0x80 | form];
        if form == 126 {
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.extend_from_slice(&n.to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f
    };
    for (form, n) in [(126, 0), (126, 125), (127, 125), (127, 126), (127, 65535)] {
        let e = parse_header(&long(form, n), usize::MAX).unwrap_err();
        assert_eq!(e.code, code::PROTOCOL_ERROR, "{form}: {n}");
    }
    for (form, n, len) in [(126, 126, 8), (126, 65535, 8), (127, 65536, 14)] {
        let h = parse_header(&long(form, n), usize::MAX).unwrap().unwrap();
        assert_eq!((h.len, h.payload as u64), (len, n), "{form}: {n}");
    }
}

/// After the gateway's close frame, the client's close frame is found
/// behind any other frames, whatever the reads cut them into.
#[test]
fn close_watch_finds_the_client_close_behind_other_frames() {
    let mask = [9, 8, 7, 6];
    let mut bytes = client_frame(0x81, b"late message", mask);
    bytes.extend(client_frame(0x82, &[0x88; 70_000], mask));
    bytes.extend(client_frame(0x89, b"ping", mask));
    let before = bytes.len();
    bytes.extend(client_frame(0x88, &1000u16.to_be_bytes(), mask));
    for cut in [1, 2, 3, 7, 13, 14, 100, 4096, bytes.len()] {
        let mut w = CloseWatch::default();
        let mut found = None;
        for (i, chunk) in bytes.chunks(cut).enumerate() {
            if w.feed(chunk).unwrap() {
                found = Some(i * cut + chunk.len());
                break;
            }
        }
        // Found once the close frame's header (6 bytes) has come.
        let at = found.unwrap_or_else(|| panic!("reads of {cut}: no close"));
        assert!(at >= before + 6 && at < before + 6 + cut, "{cut}: {at}");
    }
    // Data frames alone are not a close; bytes that are not frames are
    // an error.
    let mut w = CloseWatch::default();
    assert_eq!(w.feed(&client_frame(0x81, b"x", mask)), Ok(false));
    assert!(CloseWatch::default().feed(b"\x81\x01x").is_err());
}

#[test]
fn partial_headers_ask_for_more() {
    let f = client_frame(0x81, &[b'a'; 300], [1, 1, 1, 1]);
    for n in 0..8 {
        assert_eq!(parse_header(&f[..n], 1000), Ok(None), "{n} bytes");
    }
    let h = parse_header(&f, 1000).unwrap().unwrap();
    assert_eq!((h.len, h.payload, h.fin, h.opcode), (8, 300, true, OP_TEXT));
}

#[test]
fn close_frames_and_encoding() {
    let mask = [5, 6, 7, 8];
    let mut a = Assembler::new(100, false);
    let mut p = 4000u16.to_be_bytes().to_vec();
    p.extend_from_slice(b"bye");
    assert_eq!(
        run(&client_frame(0x88, &p, mask), &mut a, 100).unwrap(),
        [Event::Close { code: 4000 }]
    );
    assert_eq!(
        run(&client_frame(0x88, b"", mask), &mut a, 100).unwrap(),
        [Event::Close {
            code: code::NO_STATUS
        }]
    );
    let mut out = Vec::new();
    encode_frame(&mut out, OP_TEXT, b"hi");
    assert_eq!(out, b"\x81\x02hi");
    out.clear();
    encode_frame(&mut out, OP_BINARY, &[0; 300]);
    assert_eq!(&out[..4], &[0x82, 126, 0x01, 0x2c]);
    out.clear();
    encode_frame(&mut out, OP_BINARY, &[0u8; 70_000]);
    assert_eq!(&out[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    out.clear();
    encode_close(&mut out, 1009, &"é".repeat(100));
    assert!(out[1] as usize <= 125);
    assert!(std::str::from_utf8(&out[4..]).is_ok());
}
