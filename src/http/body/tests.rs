//! Byte-level tests for the chunked body decoder.
//!
//! Test code only (`#[cfg(test)]`): every `unwrap()`/`expect()` here is on
//! a byte literal or a run of the decoder the test itself builds, so a
//! failure is a failing test; nothing a client or a config file controls
//! reaches them.

use super::*;

/// What feeding a whole input produced.
#[derive(Debug)]
struct Run {
    /// What the caller sends on: each step's [`Step::out`] (the forwarded
    /// runs, and the framing written in place of dropped ones).
    forwarded: Vec<u8>,
    /// Bytes of the input consumed.
    consumed: usize,
    done: bool,
    /// Every step taken, in order.
    steps: Vec<Step>,
}

/// Feeds `input` in pieces of at most `piece` bytes, calling `step` until
/// each piece is consumed or the body is done.
fn feed(dec: &mut ChunkedDecoder, input: &[u8], piece: usize) -> Result<Run, ChunkError> {
    let mut run = Run {
        forwarded: Vec::new(),
        consumed: 0,
        done: false,
        steps: Vec::new(),
    };
    'outer: for chunk in input.chunks(piece.max(1)) {
        let mut off = 0;
        while off < chunk.len() {
            let s = dec.step(&chunk[off..])?;
            run.steps.push(s);
            assert!(s.consumed > 0 || s.done, "no progress before done: {s:?}");
            assert!(
                !s.forward || s.framing.bytes().is_empty(),
                "framing on a forwarded run: {s:?}"
            );
            run.forwarded.extend_from_slice(s.out(&chunk[off..]));
            off += s.consumed;
            run.consumed += s.consumed;
            if s.done {
                run.done = true;
                break 'outer;
            }
        }
    }
    Ok(run)
}

/// Runs `input` through fresh decoders, whole and byte by byte, and checks
/// both give the same result.
fn decode(input: &[u8], keep_framing: bool) -> Result<Run, ChunkError> {
    decode_with(input, keep_framing, 4096)
}

fn decode_with(input: &[u8], keep_framing: bool, max_trailer: usize) -> Result<Run, ChunkError> {
    let whole = feed(
        &mut ChunkedDecoder::new(keep_framing, max_trailer),
        input,
        input.len(),
    );
    let bytewise = feed(
        &mut ChunkedDecoder::new(keep_framing, max_trailer),
        input,
        1,
    );
    match (&whole, &bytewise) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.forwarded, b.forwarded, "whole vs byte-at-a-time");
            assert_eq!((a.consumed, a.done), (b.consumed, b.done));
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("whole gave {whole:?}, byte-at-a-time gave {bytewise:?}"),
    }
    whole
}

/// The error for `input`, the same with and without `keep_framing`, and
/// the same from [`check_start`].
fn err(input: &[u8]) -> ChunkError {
    let e = decode(input, true).expect_err("should be refused");
    assert_eq!(decode(input, false).expect_err("should be refused"), e);
    assert_eq!(check_start(input, 4096), Err(e), "check_start");
    e
}

/// `line` as a chunk-size line in front of 5 bytes of data and a last
/// chunk.
fn with_line(line: &[u8]) -> Vec<u8> {
    let mut body = line.to_vec();
    body.extend_from_slice(b"hello\r\n0\r\n\r\n");
    body
}

/// `trailers` as the trailer section of a one-chunk body.
fn with_trailers(trailers: &[u8]) -> Vec<u8> {
    let mut body = b"5\r\nhello\r\n0\r\n".to_vec();
    body.extend_from_slice(trailers);
    body
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const BODY: &[u8] = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";

#[test]
fn keep_framing_sends_a_canonical_body_as_it_came() {
    let r = decode(BODY, true).unwrap();
    assert!(r.done);
    assert_eq!(r.consumed, BODY.len());
    assert_eq!(r.forwarded, BODY);
}

#[test]
fn without_framing_only_data_is_forwarded() {
    let r = decode(BODY, false).unwrap();
    assert!(r.done);
    assert_eq!(r.consumed, BODY.len());
    assert_eq!(r.forwarded, b"hello, world");
}

#[test]
fn steps_are_maximal_runs_of_one_fate() {
    // Canonical lines are forwarded in place; the last chunk's line and
    // the end are dropped, and the end is written in their place.
    let mut d = ChunkedDecoder::new(true, 4096);
    let s = d.step(BODY).unwrap();
    assert_eq!(
        s,
        Step {
            consumed: BODY.len() - 5,
            forward: true,
            done: false,
            framing: Framing::NONE,
        }
    );
    let s = d.step(&BODY[s.consumed..]).unwrap();
    assert_eq!((s.consumed, s.forward, s.done), (5, false, true));
    assert_eq!(s.out(b""), b"0\r\n\r\n");

    let body = b"5\r\nhello\r\n0\r\n\r\n";
    let mut d = ChunkedDecoder::new(false, 4096);
    let mut at = 0;
    let mut steps = Vec::new();
    while !d.is_done() {
        let s = d.step(&body[at..]).unwrap();
        at += s.consumed;
        steps.push((s.consumed, s.forward, s.done, s.framing.bytes().to_vec()));
    }
    assert_eq!(
        steps,
        [
            (3, false, false, vec![]),
            (5, true, false, vec![]),
            (7, false, true, vec![]),
        ]
    );
}

#[test]
fn a_dropped_size_line_ends_its_step_with_ours_in_its_place() {
    let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
    let mut d = ChunkedDecoder::new(true, 4096);
    let mut at = 0;
    let mut steps = Vec::new();
    while !d.is_done() {
        let s = d.step(&body[at..]).unwrap();
        steps.push((
            lossy(&body[at..at + s.consumed]),
            s.forward,
            lossy(s.out(&body[at..])),
        ));
        at += s.consumed;
    }
    let want: Vec<(String, bool, String)> = [
        ("5\r\nhello\r\n", true, "5\r\nhello\r\n"),
        ("6;x=y\r\n", false, "6\r\n"),
        (" world\r\n", true, " world\r\n"),
        ("0\r\n\r\n", false, "0\r\n\r\n"),
    ]
    .iter()
    .map(|(a, f, b)| (a.to_string(), *f, b.to_string()))
    .collect();
    assert_eq!(steps, want);
}

#[test]
fn data_bytes_and_done_flag() {
    let mut d = ChunkedDecoder::new(true, 4096);
    assert!(!d.is_done());
    assert_eq!(d.data_bytes, 0);
    let r = feed(&mut d, BODY, 3).unwrap();
    assert!(r.done && d.is_done());
    assert_eq!(d.data_bytes, 12);
    // Partway: the data bytes seen so far.
    let mut d = ChunkedDecoder::new(false, 4096);
    let r = feed(&mut d, &BODY[..6], 6).unwrap();
    assert!(!r.done && !d.is_done());
    assert_eq!(r.forwarded, b"hel");
    assert_eq!(d.data_bytes, 3);
}

#[test]
fn every_split_point_gives_the_same_result() {
    let reframed = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    for body in [
        BODY,
        b"5;a=b\r\nhello\r\n07 ; c\r\n, world\r\n0\r\nT: 1\r\n\r\n",
    ] {
        for keep in [true, false] {
            let want = decode(body, keep).unwrap().forwarded;
            if keep {
                assert_eq!(want, reframed);
            }
            for cut in 0..=body.len() {
                let mut d = ChunkedDecoder::new(keep, 4096);
                let a = feed(&mut d, &body[..cut], usize::MAX).unwrap();
                let b = feed(&mut d, &body[cut..], usize::MAX).unwrap();
                let mut got = a.forwarded;
                got.extend_from_slice(&b.forwarded);
                assert_eq!(got, want, "keep_framing={keep} cut={cut}");
                assert!(d.is_done());
                assert_eq!(a.consumed + b.consumed, body.len());
            }
        }
    }
}

#[test]
fn empty_body() {
    let r = decode(b"0\r\n\r\n", true).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"0\r\n\r\n");
    let r = decode(b"0\r\n\r\n", false).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"");
    // Leading zeros are a zero size too; we write a single one.
    let r = decode(b"000\r\n\r\n", true).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"0\r\n\r\n");
}

#[test]
fn empty_input_and_after_done_are_zero_length_steps() {
    let nothing = Step {
        consumed: 0,
        forward: false,
        done: false,
        framing: Framing::NONE,
    };
    let mut d = ChunkedDecoder::new(true, 4096);
    assert_eq!(d.step(b"").unwrap(), nothing);
    let r = feed(&mut d, b"0\r\n\r\n", usize::MAX).unwrap();
    assert!(r.done);
    let done = Step {
        done: true,
        ..nothing
    };
    assert_eq!(d.step(b"more").unwrap(), done);
    assert_eq!(d.step(b"").unwrap(), done);
}

#[test]
fn bytes_after_the_end_are_not_consumed() {
    let next = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut input = BODY.to_vec();
    input.extend_from_slice(next);
    for keep in [true, false] {
        let r = decode(&input, keep).unwrap();
        assert!(r.done);
        assert_eq!(r.consumed, BODY.len());
        assert_eq!(&input[r.consumed..], next);
    }
    // The step that ends the body stops right there too.
    let mut d = ChunkedDecoder::new(false, 4096);
    let s = d.step(b"0\r\n\r\nGET").unwrap();
    let s2 = d.step(&b"0\r\n\r\nGET"[s.consumed..]).unwrap();
    assert_eq!(s.consumed + s2.consumed, 5);
    assert!(s2.done);
    // And so does check_start, which does not look past it.
    assert_eq!(check_start(&input, 4096), Ok(()));
}

#[test]
fn hex_sizes_in_either_case() {
    let data = [b'x'; 26];
    for size in ["1a", "1A", "01A", "00000000000001a"] {
        let mut body = format!("{size}\r\n").into_bytes();
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        let r = decode(&body, false).unwrap();
        assert!(r.done, "{size}");
        assert_eq!(r.forwarded, data, "{size}");
        // Re-framed in lower case without leading zeros.
        let mut want = b"1a\r\n".to_vec();
        want.extend_from_slice(&data);
        want.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(decode(&body, true).unwrap().forwarded, want, "{size}");
    }
}

#[test]
fn large_chunk_in_pieces_counts_data_bytes() {
    let n = 100_000usize;
    let mut body = format!("{n:x}\r\n").into_bytes();
    body.extend_from_slice(&vec![b'z'; n]);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut d = ChunkedDecoder::new(false, 4096);
    let r = feed(&mut d, &body, 4093).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded.len(), n);
    assert_eq!(d.data_bytes, n as u64);
    let mut d = ChunkedDecoder::new(true, 4096);
    let r = feed(&mut d, &body, 4093).unwrap();
    assert_eq!(r.forwarded, body);
}

#[test]
fn largest_size_is_accepted() {
    // 15 hex digits; the data itself is not sent here.
    let mut d = ChunkedDecoder::new(false, 4096);
    let s = d.step(b"fffffffffffffff\r\nab").unwrap();
    assert_eq!((s.consumed, s.forward, s.done), (17, false, false));
    let s = d.step(b"ab").unwrap();
    assert_eq!((s.consumed, s.forward, s.done), (2, true, false));
    assert_eq!(d.data_bytes, 2);
    // Re-framed: that line is forwarded in place, and an upper-case one is
    // written anew.
    for (line, fwd) in [
        (&b"fffffffffffffff\r\n"[..], true),
        (b"FFFFFFFFFFFFFFF\r\n", false),
    ] {
        let mut d = ChunkedDecoder::new(true, 4096);
        let s = d.step(line).unwrap();
        assert_eq!(s.forward, fwd);
        assert_eq!(s.out(line), b"fffffffffffffff\r\n");
    }
}

#[test]
fn chunk_extensions_are_accepted_and_dropped() {
    let body = b"5;name=value\r\nhello\r\n6;a;b=\"q s\"\r\n world\r\n0;last\r\n\r\n";
    let r = decode(body, true).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let r = decode(body, false).unwrap();
    assert_eq!(r.forwarded, b"hello world");
    // Whitespace around ';' and '=' (BWS).
    let body = b"5 ;a=b\r\nhello\r\n5\t; x\t=\ty\r\nworld\r\n0 ; z\r\n\r\n";
    let r = decode(body, false).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"helloworld");
    assert_eq!(
        decode(body, true).unwrap().forwarded,
        b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"
    );
}

#[test]
fn valid_chunk_extensions() {
    for line in [
        &b"5;a\r\n"[..],
        b"5;a=b\r\n",
        b"5;a;b;c\r\n",
        b"5;a=b;c=d\r\n",
        b"5 ; a ; b = c\r\n",
        b"5;a=\"\"\r\n",
        b"5;a=\"b c\"\r\n",
        b"5;a=\"b\\\"c\"\r\n",
        b"5;a=\"\\\\\"\r\n",
        b"5;a=\"tab\there\"\r\n",
        b"5;a=\"b\"; c\r\n",
        b"5;a=\"b\" ;c=d\r\n",
        b"5;a=\"\x80\xff\"\r\n",
        b"5;!#$%&'*+-.^_`|~09azAZ=!#$%&'*+-.^_`|~09azAZ\r\n",
    ] {
        let body = with_line(line);
        for keep in [true, false] {
            let r = decode(&body, keep).unwrap_or_else(|e| panic!("{:?}: {e:?}", lossy(line)));
            assert!(r.done, "{:?}", lossy(line));
        }
        assert_eq!(
            decode(&body, true).unwrap().forwarded,
            b"5\r\nhello\r\n0\r\n\r\n",
            "{:?}",
            lossy(line)
        );
    }
}

#[test]
fn junk_after_the_size_is_refused() {
    // Regression (bug fixed in body.rs): "5 x" was read as size 5 with an
    // "extension" " x", and the line forwarded as is. RFC 9112 §7.1.1 allows
    // only whitespace and then ';' after the size; anything else is a size
    // line another parser may read differently.
    for line in [
        &b"5 x\r\n"[..],
        b"5 5\r\n",
        b"5\tabc\r\n",
        b"5 =1\r\n",
        b"5  \"\"\r\n",
    ] {
        assert_eq!(
            err(&with_line(line)),
            ChunkError("Invalid chunk size"),
            "{:?}",
            lossy(line)
        );
    }
}

#[test]
fn whitespace_after_the_size_without_an_extension_is_refused() {
    // Regression: "2a \r\n" was accepted (and forwarded as is). BWS is
    // only allowed before ';'; a parser that reads the size up to the
    // first non-digit and one that reads to the end of the line may
    // disagree about what it means.
    for line in [&b"5 \r\n"[..], b"5\t\r\n", b"5 \t \r\n"] {
        assert_eq!(
            err(&with_line(line)),
            ChunkError("Invalid chunk size"),
            "{:?}",
            lossy(line)
        );
    }
    for end in [&b"0 \r\n\r\n"[..], b"0\t\r\n\r\n"] {
        let mut body = b"5\r\nhello\r\n".to_vec();
        body.extend_from_slice(end);
        assert_eq!(err(&body), ChunkError("Invalid chunk size"));
    }
}

#[test]
fn extension_without_a_name_is_refused() {
    // Regression: "2a;" and "2a ;" were accepted: ';' must be followed by
    // a token.
    for line in [
        &b"5;\r\n"[..],
        b"5 ;\r\n",
        b"5; \r\n",
        b"5;;a\r\n",
        b"5;a;\r\n",
        b"5;=b\r\n",
        b"5; =b\r\n",
        b"5;\"a\"\r\n",
        b"5;a=b;\r\n",
    ] {
        assert_eq!(
            err(&with_line(line)),
            ChunkError("Invalid chunk extension"),
            "{:?}",
            lossy(line)
        );
    }
}

#[test]
fn extension_with_an_empty_value_is_refused() {
    // Regression: "2a;a=" was accepted: '=' must be followed by a token or
    // a quoted string.
    for line in [
        &b"5;a=\r\n"[..],
        b"5;a= \r\n",
        b"5;a =\r\n",
        b"5;a=;b\r\n",
        b"5;a==b\r\n",
    ] {
        assert_eq!(
            err(&with_line(line)),
            ChunkError("Invalid chunk extension"),
            "{:?}",
            lossy(line)
        );
    }
}

#[test]
fn unterminated_quoted_string_is_refused() {
    // Regression: "2a;a=\"b" was accepted, the CR LF taken as the line end
    // by us and possibly as part of the string by someone else.
    for line in [
        &b"5;a=\"b\r\n"[..],
        b"5;a=\"\r\n",
        b"5;a=\"b\\\"\r\n",
        b"5;a=\"b\\\r\n",
    ] {
        assert_eq!(
            err(&with_line(line)),
            ChunkError("Invalid chunk extension"),
            "{:?}",
            lossy(line)
        );
    }
}

#[test]
fn other_malformed_extensions_are_refused() {
    for line in [
        // Whitespace after an extension that no ';' follows.
        &b"5;a \r\n"[..],
        b"5;a=b \r\n",
        b"5;a=\"b\" \r\n",
        // Two names, or a value, separated by whitespace only.
        b"5;a b\r\n",
        b"5;a=b c\r\n",
        // Not a token, or junk after a quoted string.
        b"5;a/b\r\n",
        b"5;a=b/c\r\n",
        b"5;a=b=c\r\n",
        b"5;a@b\r\n",
        b"5;a=\"b\"c\r\n",
        b"5;a=\"b\"\"c\"\r\n",
        b"5;a=\xff\r\n",
        b"5;\xff\r\n",
        // Control bytes in a quoted string, escaped or not.
        b"5;a=\"b\x01\"\r\n",
        b"5;a=\"b\x7f\"\r\n",
        b"5;a=\"\\\x01\"\r\n",
        b"5;a=\"\\\n\"\r\n",
    ] {
        assert_eq!(
            err(&with_line(line)),
            ChunkError("Invalid chunk extension"),
            "{:?}",
            lossy(line)
        );
    }
}

#[test]
fn trailers_are_dropped() {
    let body = b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n";
    let r = decode(body, true).unwrap();
    assert!(r.done);
    assert_eq!(r.consumed, body.len());
    assert_eq!(r.forwarded, b"5\r\nhello\r\n0\r\n\r\n");
    let r = decode(body, false).unwrap();
    assert_eq!(r.forwarded, b"hello");
}

#[test]
fn valid_trailer_lines() {
    for trailers in [
        &b"\r\n"[..],
        b"X-Checksum: abc\r\n\r\n",
        b"x:\r\n\r\n",
        b"x:v\r\n\r\n",
        b"x: \t v \t\r\n\r\n",
        b"x: a:b \"c\" (d)\r\n\r\n",
        b"x: \x80\xff\r\n\r\n",
        b"!#$%&'*+-.^_`|~09azAZ: 1\r\nY: 2\r\n\r\n",
    ] {
        let body = with_trailers(trailers);
        let r = decode(&body, true).unwrap_or_else(|e| panic!("{:?}: {e:?}", lossy(trailers)));
        assert!(r.done, "{:?}", lossy(trailers));
        assert_eq!(r.consumed, body.len());
        assert_eq!(r.forwarded, b"5\r\nhello\r\n0\r\n\r\n");
    }
}

#[test]
fn trailer_line_without_a_colon_is_refused() {
    // Regression: a trailer line without a colon was accepted and dropped.
    for trailers in [
        &b"X\r\n\r\n"[..],
        b"X-Checksum abc\r\n\r\n",
        b"A: 1\r\nB\r\n\r\n",
    ] {
        assert_eq!(
            err(&with_trailers(trailers)),
            ChunkError("Invalid trailer line"),
            "{:?}",
            lossy(trailers)
        );
    }
}

#[test]
fn whitespace_before_a_trailer_colon_is_refused() {
    // Regression: "X : y" was accepted; RFC 9112 §5.1 makes it a 400 in a
    // header section, and a trailer section is the same grammar.
    for trailers in [
        &b"X : y\r\n\r\n"[..],
        b"X\t: y\r\n\r\n",
        b"A: 1\r\nB : 2\r\n\r\n",
    ] {
        assert_eq!(
            err(&with_trailers(trailers)),
            ChunkError("Invalid trailer line"),
            "{:?}",
            lossy(trailers)
        );
    }
}

#[test]
fn trailer_names_must_be_tokens() {
    for trailers in [
        &b": y\r\n\r\n"[..],
        b"X(y): z\r\n\r\n",
        b"X@y: z\r\n\r\n",
        b"\"X\": z\r\n\r\n",
        b"X/Y: z\r\n\r\n",
        b"\xffX: z\r\n\r\n",
        b"X\x00: z\r\n\r\n",
    ] {
        assert_eq!(
            err(&with_trailers(trailers)),
            ChunkError("Invalid trailer line"),
            "{:?}",
            lossy(trailers)
        );
    }
}

#[test]
fn control_bytes_in_trailer_values_are_refused() {
    for b in [0u8, 1, 0x0b, 0x0c, 0x1f, 0x7f, b'\n'] {
        let mut trailers = b"X: a".to_vec();
        trailers.push(b);
        trailers.extend_from_slice(b"b\r\n\r\n");
        assert_eq!(
            err(&with_trailers(&trailers)),
            ChunkError("Invalid trailer line"),
            "byte {b:#x}"
        );
    }
}

#[test]
fn missing_final_crlf_does_not_swallow_the_next_request() {
    // Regression: after "0\r\n" with no blank line, the next request's
    // request line and headers were read as trailer lines and dropped: a
    // front end that ends the body at "0\r\n" and we then disagreed about
    // where the next request starts.
    for next in [
        &b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            err(&with_trailers(next)),
            ChunkError("Invalid trailer line"),
            "{:?}",
            lossy(next)
        );
    }
}

#[test]
fn the_last_chunk_is_held_back_until_the_trailers_are_valid() {
    // Nothing of the end is sent before the whole trailer section has been
    // read: an upstream never sees a finished body we then refuse.
    let mut d = ChunkedDecoder::new(true, 4096);
    let r = feed(&mut d, b"5\r\nhello\r\n0\r\nX: 1\r\n", usize::MAX).unwrap();
    assert!(!r.done);
    assert_eq!(r.forwarded, b"5\r\nhello\r\n");
    assert_eq!(
        d.step(b"X : 2\r\n"),
        Err(ChunkError("Invalid trailer line"))
    );
    let mut d = ChunkedDecoder::new(true, 4096);
    let r = feed(&mut d, b"5\r\nhello\r\n0\r\nX: 1\r\n\r", usize::MAX).unwrap();
    assert_eq!(r.forwarded, b"5\r\nhello\r\n");
    let r = feed(&mut d, b"\n", usize::MAX).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"0\r\n\r\n");
}

#[test]
fn reframed_output_is_canonical() {
    // What keep_framing sends decodes to the same data, and is sent on
    // unchanged by a second decoder: every line in it is one we write.
    for body in [
        BODY,
        b"5;a=b\r\nhello\r\n0\r\n\r\n",
        b"00005 ; a = \"b\"\r\nhello\r\nA\r\n0123456789\r\n000;z\r\nT: 1\r\n\r\n",
        b"0 ; a\r\nX: y\r\n\r\n",
    ] {
        let out = decode(body, true).unwrap().forwarded;
        assert_eq!(
            decode(&out, false).unwrap().forwarded,
            decode(body, false).unwrap().forwarded
        );
        assert_eq!(
            decode(&out, true).unwrap().forwarded,
            out,
            "{:?}",
            lossy(&out)
        );
        let mut d = ChunkedDecoder::new(true, 4096);
        let steps = feed(&mut d, &out, usize::MAX).unwrap().steps;
        assert!(
            steps.len() <= 2 && steps[0].forward == (out.len() > 5),
            "{:?}: {steps:?}",
            lossy(&out)
        );
    }
}

#[test]
fn check_start_sees_errors_in_what_has_arrived() {
    assert_eq!(check_start(b"", 4096), Ok(()));
    assert_eq!(check_start(b"5;a=", 4096), Ok(()));
    assert_eq!(check_start(b"5\r\nhel", 4096), Ok(()));
    assert_eq!(
        check_start(b"5\r\nhello\r\n2a \r\n", 4096),
        Err(ChunkError("Invalid chunk size"))
    );
    assert_eq!(
        check_start(b"0\r\nGET / HTTP/1.1\r\n", 4096),
        Err(ChunkError("Invalid trailer line"))
    );
    assert_eq!(
        check_start(b"0\r\nA: 1\r\nB: 2\r\n\r\n", 9),
        Err(ChunkError("Trailer section too large"))
    );
}

#[test]
fn trailer_section_limit() {
    // 10 bytes of trailer lines counted (their CRs included, not the LFs
    // nor the final blank line).
    let body = b"0\r\nA: 1\r\nB: 2\r\n\r\n";
    assert!(decode_with(body, true, 10).unwrap().done);
    assert_eq!(
        decode_with(body, true, 9).unwrap_err(),
        ChunkError("Trailer section too large")
    );
    let big = format!("0\r\nX-Long: {}\r\n\r\n", "a".repeat(5000)).into_bytes();
    assert_eq!(
        decode(&big, false).unwrap_err(),
        ChunkError("Trailer section too large")
    );
    // An endless trailer line is cut off, not buffered.
    let endless = format!("0\r\nX: {}", "a".repeat(10_000)).into_bytes();
    assert_eq!(err(&endless), ChunkError("Trailer section too large"));
}

#[test]
fn invalid_chunk_sizes() {
    for body in [
        &b"g\r\n"[..],
        b"5x\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-1\r\n",
        b"+1\r\n",
        b" 5\r\nhello\r\n",
        b"\r\n",
        b";ext\r\n",
        b"\xff\r\n",
        // Bare LF where the size line should end.
        b"5\nhello\r\n0\r\n\r\n",
        b"0\n\r\n",
    ] {
        assert_eq!(
            err(body),
            ChunkError("Invalid chunk size"),
            "{:?}",
            lossy(body)
        );
    }
}

#[test]
fn size_with_too_many_digits() {
    assert_eq!(
        err(b"1000000000000000\r\n"),
        ChunkError("Chunk size too large")
    );
    assert_eq!(
        err(b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
        ChunkError("Chunk size too large")
    );
    assert_eq!(
        err(b"ffffffffffffffffffff\r\n"),
        ChunkError("Chunk size too large")
    );
    // Fifteen digits are fine.
    let r = decode(b"000000000000005\r\nhello\r\n0\r\n\r\n", false).unwrap();
    assert_eq!(r.forwarded, b"hello");
}

#[test]
fn size_line_must_end_in_crlf() {
    assert_eq!(err(b"5\r\rhello"), ChunkError("Invalid chunk size line"));
    assert_eq!(err(b"5\rhello"), ChunkError("Invalid chunk size line"));
    assert_eq!(err(b"5;a=b\rx"), ChunkError("Invalid chunk size line"));
    // A bare LF ending an extension is a control byte in it.
    assert_eq!(
        err(b"5;a=b\nhello\r\n"),
        ChunkError("Invalid chunk extension")
    );
}

#[test]
fn data_must_be_followed_by_crlf() {
    for body in [
        &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
        b"5\r\nhello\rX",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello0\r\n\r\n",
        b"3\r\nhello\r\n0\r\n\r\n",
    ] {
        assert_eq!(
            err(body),
            ChunkError("Chunk data longer than its size"),
            "{:?}",
            lossy(body)
        );
    }
}

#[test]
fn chunk_extension_length_limit() {
    // The limit counts the bytes between the size and the CR.
    let ok_line = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_EXT - 1));
    let r = decode(ok_line.as_bytes(), false).unwrap();
    assert_eq!(r.forwarded, b"hello");
    let too_long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_EXT));
    assert_eq!(
        err(too_long.as_bytes()),
        ChunkError("Chunk extension too long")
    );
    // An endless extension is cut off, not buffered.
    let endless = format!("5;{}", "a".repeat(10 * MAX_CHUNK_EXT));
    assert_eq!(
        err(endless.as_bytes()),
        ChunkError("Chunk extension too long")
    );
    let endless = format!("5;a=\"{}", "a".repeat(10 * MAX_CHUNK_EXT));
    assert_eq!(
        err(endless.as_bytes()),
        ChunkError("Chunk extension too long")
    );
    // So is endless whitespace after the size.
    let spaces = format!("5{}", " ".repeat(10 * MAX_CHUNK_EXT));
    assert_eq!(
        err(spaces.as_bytes()),
        ChunkError("Chunk extension too long")
    );
    // Each chunk has its own allowance.
    let ext = "e".repeat(MAX_CHUNK_EXT - 1);
    let two = format!("1;{ext}\r\na\r\n1;{ext}\r\nb\r\n0;{ext}\r\n\r\n");
    assert_eq!(decode(two.as_bytes(), false).unwrap().forwarded, b"ab");
}

#[test]
fn control_bytes_in_chunk_extensions() {
    for b in [0u8, 1, 0x0b, 0x1f, 0x7f, b'\n'] {
        let mut body = b"5;a=".to_vec();
        body.push(b);
        body.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(
            err(&body),
            ChunkError("Invalid chunk extension"),
            "byte {b:#x}"
        );
    }
}

#[test]
fn folded_trailer_is_refused() {
    assert_eq!(
        err(b"0\r\nA: b\r\n c\r\n\r\n"),
        ChunkError("Folded trailer line")
    );
    assert_eq!(
        err(b"0\r\nA: b\r\n\tc\r\n\r\n"),
        ChunkError("Folded trailer line")
    );
    assert_eq!(
        err(b"0\r\n folded\r\n\r\n"),
        ChunkError("Folded trailer line")
    );
}

#[test]
fn malformed_trailers_and_end() {
    assert_eq!(
        err(b"0\r\nA: b\nC: d\r\n\r\n"),
        ChunkError("Invalid trailer line")
    );
    assert_eq!(
        err(b"0\r\nA: b\rC\r\n\r\n"),
        ChunkError("Invalid trailer line")
    );
    assert_eq!(
        err(b"0\r\nA: \x00\r\n\r\n"),
        ChunkError("Invalid trailer line")
    );
    assert_eq!(err(b"0\r\n\n"), ChunkError("Invalid trailer line"));
    assert_eq!(err(b"0\r\n\rX"), ChunkError("Invalid end of chunked body"));
    assert_eq!(
        err(b"0\r\nA: b\r\n\r\r"),
        ChunkError("Invalid end of chunked body")
    );
}

#[test]
fn incomplete_body_is_not_done() {
    for keep in [true, false] {
        for n in 0..BODY.len() {
            let r = decode(&BODY[..n], keep).unwrap();
            assert!(!r.done, "prefix of {n} bytes");
            assert_eq!(r.consumed, n);
        }
    }
}

// === spliced chunk data (in_data / skip_data) ===

/// Feeds `input` as a splicing caller does: steps through what is
/// "buffered" (pieces of at most `piece` bytes), and whenever the buffer is
/// used up inside a chunk's data, moves the rest of that chunk straight
/// from the input to the output without `step` ([`ChunkedDecoder::skip_data`]),
/// as a splice would. Returns the output and the decoder.
fn feed_skipping(
    input: &[u8],
    keep_framing: bool,
    piece: usize,
) -> Result<(Vec<u8>, ChunkedDecoder, usize), ChunkError> {
    let mut dec = ChunkedDecoder::new(keep_framing, 4096);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() && !dec.is_done() {
        let end = (pos + piece).min(input.len());
        while pos < end && !dec.is_done() {
            let s = dec.step(&input[pos..end])?;
            out.extend_from_slice(s.out(&input[pos..end]));
            pos += s.consumed;
        }
        if let Some((size, rest)) = dec.in_data() {
            assert!(rest > 0 && rest <= size, "{size} {rest}");
            let n = (rest as usize).min(input.len() - pos);
            dec.skip_data(n as u64)?;
            out.extend_from_slice(&input[pos..pos + n]);
            pos += n;
        }
    }
    Ok((out, dec, pos))
}

/// Bodies with big and small chunks, canonical and other size lines,
/// extensions and trailers.
fn splice_bodies() -> Vec<Vec<u8>> {
    let data = |n: usize| (0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>();
    let mut bodies = Vec::new();
    for lines in [
        ["400", "5", "0400", "1", "C8"],
        ["400;a=b", "5 ; x", "400", "1;q=\"a\\\"b\"", "c8"],
    ] {
        let mut b = Vec::new();
        for line in lines {
            let size_text = line.split([';', ' ']).next().unwrap();
            let n = usize::from_str_radix(size_text, 16).unwrap();
            b.extend_from_slice(line.as_bytes());
            b.extend_from_slice(b"\r\n");
            b.extend_from_slice(&data(n));
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        bodies.push(b.clone());
        b.truncate(b.len() - 2);
        b.extend_from_slice(b"X-T: 1\r\n\r\n");
        bodies.push(b);
    }
    bodies
}

#[test]
fn skipped_chunk_data_gives_what_stepping_gives() {
    for body in splice_bodies() {
        for keep in [true, false] {
            let stepped = decode(&body, keep).unwrap();
            assert!(stepped.done);
            for piece in [1, 2, 3, 7, 64, 1000, body.len()] {
                let (out, dec, pos) = feed_skipping(&body, keep, piece).unwrap();
                assert!(dec.is_done(), "piece {piece}");
                assert_eq!(pos, stepped.consumed, "piece {piece}");
                assert_eq!(
                    lossy(&out),
                    lossy(&stepped.forwarded),
                    "piece {piece}, keep_framing {keep}"
                );
                let data: u64 = 0x400 + 5 + 0x400 + 1 + 0xc8;
                assert_eq!(dec.data_bytes, data);
            }
        }
    }
}

#[test]
fn in_data_reports_the_chunk_size_and_what_is_left() {
    for (body, size) in [
        (&b"400\r\nab"[..], 0x400u64),
        (b"0400\r\nab", 0x400),
        (b"4Ff;x=\"y\"\r\nab", 0x4ff),
    ] {
        let mut dec = ChunkedDecoder::new(true, 4096);
        let mut pos = 0;
        while pos < body.len() {
            pos += dec.step(&body[pos..]).unwrap().consumed;
        }
        assert_eq!(dec.in_data(), Some((size, size - 2)), "{}", lossy(body));
        dec.skip_data(size - 3).unwrap();
        assert_eq!(dec.in_data(), Some((size, 1)));
        dec.skip_data(1).unwrap();
        assert_eq!(dec.in_data(), None, "the CRLF is due");
        assert_eq!(dec.data_bytes, size);
    }
    // Framing, the trailers and the end are never data.
    let mut dec = ChunkedDecoder::new(true, 4096);
    for b in b"5\r\nhello\r\n0\r\nA: b\r\n\r\n".chunks(1) {
        dec.step(b).unwrap();
        if !dec.is_done() {
            let in_hello = dec.data_bytes < 5 && dec.in_data().is_some();
            assert!(dec.in_data().is_none() || in_hello);
        }
    }
    assert!(dec.is_done());
    assert_eq!(dec.in_data(), None);
}

#[test]
fn a_skip_never_crosses_the_end_of_a_chunk() {
    let mut dec = ChunkedDecoder::new(true, 4096);
    // Before any size line, or in the middle of one: nothing to skip.
    assert!(dec.skip_data(1).is_err());
    dec.step(b"1").unwrap();
    assert!(dec.skip_data(1).is_err());
    dec.step(b"0\r\n").unwrap();
    assert_eq!(dec.in_data(), Some((16, 16)));
    // One byte past the chunk: refused, nothing counted.
    assert_eq!(
        dec.skip_data(17),
        Err(ChunkError("Chunk data skipped past its end"))
    );
    assert_eq!((dec.in_data(), dec.data_bytes), (Some((16, 16)), 0));
    dec.skip_data(16).unwrap();
    // At the CRLF: nothing more to skip.
    assert!(dec.skip_data(1).is_err());
    assert!(dec.skip_data(0).is_err());
    let end = b"\r\n0\r\n\r\n";
    let mut pos = 0;
    while !dec.is_done() {
        pos += dec.step(&end[pos..]).unwrap().consumed;
    }
    assert_eq!(pos, end.len());
    assert!(dec.skip_data(0).is_err());
}

#[test]
fn bad_framing_after_skipped_data_is_refused_as_after_stepped_data() {
    for (after, why) in [
        (&b"\r\nzz\r\n"[..], "Invalid chunk size"),
        (b"\r\n5 \r\nhello\r\n0\r\n\r\n", "Invalid chunk size"),
        (b"X\r\n0\r\n\r\n", "Chunk data longer than its size"),
        (b"\rX0\r\n\r\n", "Chunk data longer than its size"),
        (b"\r\n0\r\nA b\r\n\r\n", "Invalid trailer line"),
        (b"\r\n5;=\r\nhello\r\n0\r\n\r\n", "Invalid chunk extension"),
    ] {
        let mut body = b"400\r\n".to_vec();
        body.extend_from_slice(&[b'x'; 0x400]);
        body.extend_from_slice(after);
        assert_eq!(err(&body), ChunkError(why), "stepped: {}", lossy(after));
        for keep in [true, false] {
            for piece in [1, 5, 100] {
                assert_eq!(
                    feed_skipping(&body, keep, piece).err(),
                    Some(ChunkError(why)),
                    "skipped, piece {piece}: {}",
                    lossy(after)
                );
            }
        }
    }
}
