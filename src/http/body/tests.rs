//! Byte-level tests for the chunked body decoder.

use super::*;

/// What feeding a whole input produced.
#[derive(Debug)]
struct Run {
    /// Concatenation of the runs with `forward = true`.
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
            if s.forward {
                run.forwarded
                    .extend_from_slice(&chunk[off..off + s.consumed]);
            }
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

fn err(input: &[u8]) -> ChunkError {
    let e = decode(input, true).expect_err("should be refused");
    assert_eq!(decode(input, false).expect_err("should be refused"), e);
    e
}

const BODY: &[u8] = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";

#[test]
fn keep_framing_forwards_everything_but_the_final_crlf() {
    let r = decode(BODY, true).unwrap();
    assert!(r.done);
    assert_eq!(r.consumed, BODY.len());
    // The caller appends the final "\r\n" itself.
    assert_eq!(r.forwarded, b"5\r\nhello\r\n7\r\n, world\r\n0\r\n");
    let mut rebuilt = r.forwarded.clone();
    rebuilt.extend_from_slice(b"\r\n");
    assert_eq!(rebuilt, BODY);
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
    let mut d = ChunkedDecoder::new(true, 4096);
    let s = d.step(BODY).unwrap();
    assert_eq!(
        s,
        Step {
            consumed: BODY.len() - 2,
            forward: true,
            done: false
        }
    );
    assert_eq!(
        d.step(&BODY[s.consumed..]).unwrap(),
        Step {
            consumed: 2,
            forward: false,
            done: true
        }
    );

    let body = b"5\r\nhello\r\n0\r\n\r\n";
    let mut d = ChunkedDecoder::new(false, 4096);
    let mut at = 0;
    let mut steps = Vec::new();
    while !d.is_done() {
        let s = d.step(&body[at..]).unwrap();
        at += s.consumed;
        steps.push(s);
    }
    assert_eq!(
        steps,
        [
            Step {
                consumed: 3,
                forward: false,
                done: false
            },
            Step {
                consumed: 5,
                forward: true,
                done: false
            },
            Step {
                consumed: 7,
                forward: false,
                done: true
            },
        ]
    );
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
    for keep in [true, false] {
        let want = decode(BODY, keep).unwrap().forwarded;
        for cut in 0..=BODY.len() {
            let mut d = ChunkedDecoder::new(keep, 4096);
            let a = feed(&mut d, &BODY[..cut], usize::MAX).unwrap();
            let b = feed(&mut d, &BODY[cut..], usize::MAX).unwrap();
            let mut got = a.forwarded;
            got.extend_from_slice(&b.forwarded);
            assert_eq!(got, want, "keep_framing={keep} cut={cut}");
            assert!(d.is_done());
            assert_eq!(a.consumed + b.consumed, BODY.len());
        }
    }
}

#[test]
fn empty_body() {
    let r = decode(b"0\r\n\r\n", true).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"0\r\n");
    let r = decode(b"0\r\n\r\n", false).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"");
    // Leading zeros are a zero size too.
    let r = decode(b"000\r\n\r\n", true).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"000\r\n");
}

#[test]
fn empty_input_and_after_done_are_zero_length_steps() {
    let mut d = ChunkedDecoder::new(true, 4096);
    assert_eq!(
        d.step(b"").unwrap(),
        Step {
            consumed: 0,
            forward: true,
            done: false
        }
    );
    let r = feed(&mut d, b"0\r\n\r\n", usize::MAX).unwrap();
    assert!(r.done);
    assert_eq!(
        d.step(b"more").unwrap(),
        Step {
            consumed: 0,
            forward: false,
            done: true
        }
    );
    assert_eq!(
        d.step(b"").unwrap(),
        Step {
            consumed: 0,
            forward: false,
            done: true
        }
    );
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
}

#[test]
fn largest_size_is_accepted() {
    // 15 hex digits; the data itself is not sent here.
    let mut d = ChunkedDecoder::new(false, 4096);
    let s = d.step(b"fffffffffffffff\r\nab").unwrap();
    assert_eq!(
        s,
        Step {
            consumed: 17,
            forward: false,
            done: false
        }
    );
    let s = d.step(b"ab").unwrap();
    assert_eq!(
        s,
        Step {
            consumed: 2,
            forward: true,
            done: false
        }
    );
    assert_eq!(d.data_bytes, 2);
}

#[test]
fn chunk_extensions_are_accepted() {
    let body = b"5;name=value\r\nhello\r\n6;a;b=\"q s\"\r\n world\r\n0;last\r\n\r\n";
    let r = decode(body, true).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, &body[..body.len() - 2]);
    let r = decode(body, false).unwrap();
    assert_eq!(r.forwarded, b"hello world");
    // Whitespace before ';' (BWS) and a tab inside the extension.
    let body = b"5 ;a=b\r\nhello\r\n5\t; x\t=\ty\r\nworld\r\n0 ; z\r\n\r\n";
    let r = decode(body, false).unwrap();
    assert!(r.done);
    assert_eq!(r.forwarded, b"helloworld");
    // Whitespace alone after the size.
    let r = decode(b"5 \r\nhello\r\n0\t\r\n\r\n", false).unwrap();
    assert_eq!(r.forwarded, b"hello");
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
        let mut body = line.to_vec();
        body.extend_from_slice(b"hello\r\n0\r\n\r\n");
        assert_eq!(
            err(&body),
            ChunkError("Invalid chunk size"),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn trailers_are_dropped() {
    let body = b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n";
    let r = decode(body, true).unwrap();
    assert!(r.done);
    assert_eq!(r.consumed, body.len());
    assert_eq!(r.forwarded, b"5\r\nhello\r\n0\r\n");
    let r = decode(body, false).unwrap();
    assert_eq!(r.forwarded, b"hello");
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
            String::from_utf8_lossy(body)
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
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn chunk_extension_length_limit() {
    // The limit counts the extension bytes after the first ';' plus the CR.
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
