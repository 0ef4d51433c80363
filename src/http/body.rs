//! Body framing: where a chunked body ends, and what of it travels on.
//!
//! Bodies are never copied: the connection loop reads into a buffer, asks
//! [`ChunkedDecoder::step`] how far the next run of bytes of one kind goes,
//! and writes that run straight from the same buffer to the other socket.
//!
//! Every byte of framing is validated (RFC 9112 §7.1): the chunk-size line
//! with its extensions, the CRLF after each chunk's data, and the trailer
//! section as field lines. None of it is forwarded unless it is exactly
//! what we would write ourselves. With `keep_framing` (proxying to an
//! HTTP/1.1 peer) the body is re-framed: each chunk goes on as
//! `size-in-hex CRLF data CRLF` and the body ends with `0 CRLF CRLF`, so
//! chunk extensions and trailers are dropped and a peer never parses
//! framing we did not write. A chunk-size line that is
//! already exactly what we would write (lower-case hex digits, no leading
//! zero, no extension) is forwarded in place, as part of the run around
//! it; any other is dropped and the step that ends it carries our own line
//! in its place ([`Step::out`]). The last chunk's line is always held back:
//! the end of the body is written only once the trailer section has been
//! read and found valid. Without `keep_framing` (an HTTP/1.0 client, or a
//! body being hashed) only chunk data is forwarded.
//!
//! Spliced chunk data: a caller that moves the rest of a chunk's data from
//! socket to socket without reading it ([`crate::net::splice`]) asks
//! [`ChunkedDecoder::in_data`] how many data bytes of the current chunk are
//! still due, moves exactly those, and tells the decoder with
//! [`ChunkedDecoder::skip_data`]; everything else (every size line, the
//! CRLF after the data, the last chunk and the trailers) still goes
//! through [`ChunkedDecoder::step`]. Data bytes are opaque to the decoder,
//! so skipping them keeps every check it makes.

use super::parse::is_token_byte;

/// Longest run of bytes between a chunk size and the CR ending its line
/// (whitespace and extensions).
pub const MAX_CHUNK_EXT: usize = 1024;
/// Most hex digits in a chunk size (2^60 bytes is plenty).
const MAX_SIZE_DIGITS: u8 = 15;
/// The longest chunk-size line we write: 15 hex digits and CRLF.
const MAX_LINE: usize = MAX_SIZE_DIGITS as usize + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// The first digit of a chunk size.
    SizeStart,
    /// More digits, or what may follow them: BWS, ';' or CR.
    Size,
    /// Whitespace after the size: only more of it or ';' may follow.
    SizeWs,
    /// After ';' and any whitespace: the first byte of an extension name.
    ExtNameStart,
    ExtName,
    /// Whitespace after a name: '=' or ';' must follow.
    ExtNameWs,
    /// After '=' and any whitespace: a token or a quoted string.
    ExtValStart,
    ExtToken,
    ExtQuoted,
    /// After a backslash in a quoted string.
    ExtQuotedPair,
    /// Just after a quoted string's closing quote.
    ExtQuoteEnd,
    /// Whitespace after an extension: only more of it or ';' may follow.
    ExtWs,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line, or the CR of the blank line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

const BAD_SIZE: ChunkError = ChunkError("Invalid chunk size");
const BAD_EXT: ChunkError = ChunkError("Invalid chunk extension");
const BAD_TRAILER: ChunkError = ChunkError("Invalid trailer line");

/// Framing the decoder writes in place of framing it dropped: a chunk-size
/// line, or the end of the body.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Framing {
    buf: [u8; MAX_LINE],
    len: u8,
}

impl Framing {
    const NONE: Framing = Framing {
        buf: [0; MAX_LINE],
        len: 0,
    };

    fn end() -> Framing {
        let mut f = Framing::NONE;
        f.buf[..5].copy_from_slice(b"0\r\n\r\n");
        f.len = 5;
        f
    }

    /// `size` in lower-case hex without leading zeros, then CRLF. `size`
    /// has at most MAX_SIZE_DIGITS hex digits (the decoder refuses more).
    fn chunk(size: u64) -> Framing {
        let mut f = Framing::NONE;
        let digits = ((64 - size.leading_zeros()).div_ceil(4)).max(1) as usize;
        for k in 0..digits {
            let nibble = (size >> (4 * (digits - 1 - k))) & 0xf;
            f.buf[k] = b"0123456789abcdef"[nibble as usize];
        }
        f.buf[digits] = b'\r';
        f.buf[digits + 1] = b'\n';
        f.len = (digits + 2) as u8;
        f
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl std::fmt::Debug for Framing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.bytes()))
    }
}

/// One run of bytes of the same fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input this run covers.
    pub consumed: usize,
    /// Forward them, or drop them.
    pub forward: bool,
    /// The body ended with this run.
    pub done: bool,
    /// With `forward == false` and `keep_framing`: what to send in place of
    /// the dropped bytes (a chunk-size line of ours, or the end of the
    /// body). Empty otherwise.
    framing: Framing,
}

impl Step {
    /// What to send for this step, given the input it was made from: the
    /// run itself when it is forwarded, else the framing written in its
    /// place (often nothing).
    pub fn out<'a>(&'a self, input: &'a [u8]) -> &'a [u8] {
        if self.forward {
            &input[..self.consumed]
        } else {
            self.framing.bytes()
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    st: St,
    /// Data bytes of the current chunk still to come (in St::Data).
    remaining: u64,
    /// The current chunk's size, from its size line (in St::Data).
    size: u64,
    digits: u8,
    ext_len: usize,
    trailer_len: usize,
    max_trailer: usize,
    keep_framing: bool,
    /// Chunk data bytes seen so far (for the body size limit).
    pub data_bytes: u64,
}

fn hex_val(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'a'..=b'f' => Some((b - b'a' + 10) as u64),
        b'A'..=b'F' => Some((b - b'A' + 10) as u64),
        _ => None,
    }
}

/// A chunk-size line at the start of `input`, whole, in the form we write
/// ourselves: 1 to 15 lower-case hex digits without a leading zero (so not
/// the last chunk), then CRLF. Returns its length and the size.
fn canonical_size_line(input: &[u8]) -> Option<(usize, u64)> {
    let mut size = 0u64;
    for (k, &b) in input.iter().enumerate().take(MAX_LINE - 1) {
        let v = match b {
            b'1'..=b'9' | b'a'..=b'f' => hex_val(b)?,
            b'0' if k > 0 => 0,
            b'\r' if k > 0 => {
                return (input.get(k + 1) == Some(&b'\n')).then_some((k + 2, size));
            }
            _ => return None,
        };
        if k == MAX_SIZE_DIGITS as usize {
            return None;
        }
        size = size * 16 + v;
    }
    None
}

/// Checks the framing of the start of a chunked body (`bytes`: as much of
/// it as has arrived, possibly more than the body) without keeping any
/// state: the error a decoder would meet in these bytes, if any.
pub fn check_start(bytes: &[u8], max_trailer: usize) -> Result<(), ChunkError> {
    let mut dec = ChunkedDecoder::new(false, max_trailer);
    let mut pos = 0;
    while pos < bytes.len() && !dec.is_done() {
        pos += dec.step(&bytes[pos..])?.consumed;
    }
    Ok(())
}

impl ChunkedDecoder {
    pub fn new(keep_framing: bool, max_trailer: usize) -> Self {
        ChunkedDecoder {
            st: St::SizeStart,
            remaining: 0,
            size: 0,
            digits: 0,
            ext_len: 0,
            trailer_len: 0,
            max_trailer,
            keep_framing,
            data_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// Inside a chunk's data (its size line read whole and valid): the
    /// chunk's size and how many of its data bytes are still to come,
    /// which is more than 0. None anywhere else in the body.
    pub fn in_data(&self) -> Option<(u64, u64)> {
        (self.st == St::Data).then_some((self.size, self.remaining))
    }

    /// Counts `n` data bytes of the current chunk that went on without
    /// passing through [`ChunkedDecoder::step`] (spliced), exactly as
    /// `step` would have: they count toward [`ChunkedDecoder::data_bytes`],
    /// and once the chunk's data is all there the CRLF after it is due.
    /// Refused (the state unchanged) unless inside a chunk's data with at
    /// least `n` bytes of it still to come: a skip never crosses the end
    /// of a chunk.
    pub fn skip_data(&mut self, n: u64) -> Result<(), ChunkError> {
        if self.st != St::Data || n > self.remaining {
            return Err(ChunkError("Chunk data skipped past its end"));
        }
        self.remaining -= n;
        self.data_bytes += n;
        if self.remaining == 0 {
            self.st = St::DataCr;
        }
        Ok(())
    }

    /// Consumes the longest prefix of `input` whose bytes share one fate,
    /// up to the end of a dropped chunk-size line with `keep_framing` (its
    /// replacement travels with that step). With empty input, or once
    /// done, returns a zero-length step.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut step = Step {
            consumed: 0,
            forward: false,
            done: self.st == St::Done,
            framing: Framing::NONE,
        };
        let mut fate = None;
        let mut i = 0;
        while i < input.len() && self.st != St::Done {
            let line = if self.st == St::SizeStart {
                canonical_size_line(&input[i..])
            } else {
                None
            };
            let forward = match self.st {
                St::Data => true,
                St::DataCr | St::DataLf => self.keep_framing,
                St::SizeStart => self.keep_framing && line.is_some(),
                _ => false,
            };
            if *fate.get_or_insert(forward) != forward {
                break;
            }
            if let Some((len, size)) = line {
                // Already as we would write it: forwarded in place with
                // keep_framing, else dropped; either way taken whole.
                i += len;
                self.remaining = size;
                self.size = size;
                self.st = St::Data;
                continue;
            }
            if self.st == St::DataCr && input[i..].starts_with(b"\r\n") {
                i += 2;
                self.st = St::SizeStart;
                continue;
            }
            if self.st == St::Data {
                let n = (input.len() - i).min(self.remaining.min(usize::MAX as u64) as usize);
                i += n;
                self.remaining -= n as u64;
                self.data_bytes += n as u64;
                if self.remaining == 0 {
                    self.st = St::DataCr;
                }
                continue;
            }
            let was = self.st;
            self.st = self.next(input[i])?;
            i += 1;
            if self.keep_framing {
                if was == St::SizeLf && self.st == St::Data {
                    // A dropped chunk-size line: ours goes in its place.
                    step.framing = Framing::chunk(self.remaining);
                    break;
                }
                if self.st == St::Done {
                    step.framing = Framing::end();
                }
            }
        }
        step.consumed = i;
        step.forward = fate == Some(true);
        step.done = self.st == St::Done;
        Ok(step)
    }

    /// The state after byte `b` of the framing.
    fn next(&mut self, b: u8) -> Result<St, ChunkError> {
        Ok(match self.st {
            St::SizeStart => {
                self.remaining = hex_val(b).ok_or(BAD_SIZE)?;
                self.digits = 1;
                self.ext_len = 0;
                St::Size
            }
            St::Size => match b {
                b'\r' => St::SizeLf,
                b';' => self.ext_byte(St::ExtNameStart)?,
                b' ' | b'\t' => self.ext_byte(St::SizeWs)?,
                _ => {
                    let v = hex_val(b).ok_or(BAD_SIZE)?;
                    self.digits += 1;
                    if self.digits > MAX_SIZE_DIGITS {
                        return Err(ChunkError("Chunk size too large"));
                    }
                    self.remaining = self.remaining * 16 + v;
                    St::Size
                }
            },
            // BWS after the size must lead to an extension: "5 \r\n" is
            // whitespace another parser may take for part of the size.
            St::SizeWs => match b {
                b';' => self.ext_byte(St::ExtNameStart)?,
                b' ' | b'\t' => self.ext_byte(St::SizeWs)?,
                _ => return Err(BAD_SIZE),
            },
            St::ExtNameStart => match b {
                b' ' | b'\t' => self.ext_byte(St::ExtNameStart)?,
                _ if is_token_byte(b) => self.ext_byte(St::ExtName)?,
                _ => return Err(BAD_EXT),
            },
            St::ExtName => match b {
                b'\r' => St::SizeLf,
                b'=' => self.ext_byte(St::ExtValStart)?,
                b';' => self.ext_byte(St::ExtNameStart)?,
                b' ' | b'\t' => self.ext_byte(St::ExtNameWs)?,
                _ if is_token_byte(b) => self.ext_byte(St::ExtName)?,
                _ => return Err(BAD_EXT),
            },
            St::ExtNameWs => match b {
                b'=' => self.ext_byte(St::ExtValStart)?,
                b';' => self.ext_byte(St::ExtNameStart)?,
                b' ' | b'\t' => self.ext_byte(St::ExtNameWs)?,
                _ => return Err(BAD_EXT),
            },
            St::ExtValStart => match b {
                b'"' => self.ext_byte(St::ExtQuoted)?,
                b' ' | b'\t' => self.ext_byte(St::ExtValStart)?,
                _ if is_token_byte(b) => self.ext_byte(St::ExtToken)?,
                _ => return Err(BAD_EXT),
            },
            St::ExtToken => match b {
                _ if is_token_byte(b) => self.ext_byte(St::ExtToken)?,
                _ => self.ext_end(b)?,
            },
            // qdtext (RFC 9110 §5.6.4): HTAB, SP, VCHAR but '"' and '\',
            // obs-text.
            St::ExtQuoted => match b {
                b'"' => self.ext_byte(St::ExtQuoteEnd)?,
                b'\\' => self.ext_byte(St::ExtQuotedPair)?,
                b'\t' | b' '..=b'~' | 0x80..=0xff => self.ext_byte(St::ExtQuoted)?,
                _ => return Err(BAD_EXT),
            },
            St::ExtQuotedPair => match b {
                b'\t' | b' '..=b'~' | 0x80..=0xff => self.ext_byte(St::ExtQuoted)?,
                _ => return Err(BAD_EXT),
            },
            St::ExtQuoteEnd => self.ext_end(b)?,
            St::ExtWs => match b {
                b';' => self.ext_byte(St::ExtNameStart)?,
                b' ' | b'\t' => self.ext_byte(St::ExtWs)?,
                _ => return Err(BAD_EXT),
            },
            St::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError("Invalid chunk size line"));
                }
                if self.remaining == 0 {
                    St::TrailerStart
                } else {
                    self.size = self.remaining;
                    St::Data
                }
            }
            St::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError("Chunk data longer than its size"));
                }
                St::DataLf
            }
            St::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError("Chunk data longer than its size"));
                }
                St::SizeStart
            }
            // A trailer line is a field line: a token name, ':' right after
            // it, a value without control bytes other than HTAB.
            St::TrailerStart => match b {
                b'\r' => St::EndLf,
                b' ' | b'\t' => return Err(ChunkError("Folded trailer line")),
                _ if is_token_byte(b) => self.trailer_byte(St::TrailerName)?,
                _ => return Err(BAD_TRAILER),
            },
            St::TrailerName => match b {
                b':' => self.trailer_byte(St::TrailerValue)?,
                _ if is_token_byte(b) => self.trailer_byte(St::TrailerName)?,
                _ => return Err(BAD_TRAILER),
            },
            St::TrailerValue => match b {
                b'\r' => self.trailer_byte(St::TrailerLf)?,
                b'\t' | b' '..=b'~' | 0x80..=0xff => self.trailer_byte(St::TrailerValue)?,
                _ => return Err(BAD_TRAILER),
            },
            St::TrailerLf => {
                if b != b'\n' {
                    return Err(BAD_TRAILER);
                }
                St::TrailerStart
            }
            St::EndLf => {
                if b != b'\n' {
                    return Err(ChunkError("Invalid end of chunked body"));
                }
                St::Done
            }
            // step() moves through data itself and stops at Done.
            St::Data | St::Done => self.st,
        })
    }

    /// What may follow an extension value: whitespace then ';', ';', or
    /// the end of the line.
    fn ext_end(&mut self, b: u8) -> Result<St, ChunkError> {
        match b {
            b'\r' => Ok(St::SizeLf),
            b';' => self.ext_byte(St::ExtNameStart),
            b' ' | b'\t' => self.ext_byte(St::ExtWs),
            _ => Err(BAD_EXT),
        }
    }

    /// Counts one byte between the size and the CR against MAX_CHUNK_EXT.
    fn ext_byte(&mut self, next: St) -> Result<St, ChunkError> {
        self.ext_len += 1;
        if self.ext_len > MAX_CHUNK_EXT {
            return Err(ChunkError("Chunk extension too long"));
        }
        Ok(next)
    }

    /// Counts one byte of a trailer line (its CR included) against the
    /// trailer section's limit.
    fn trailer_byte(&mut self, next: St) -> Result<St, ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > self.max_trailer {
            return Err(ChunkError("Trailer section too large"));
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests;
