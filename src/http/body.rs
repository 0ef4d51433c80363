//! Body framing: where a chunked body ends, and which of its bytes travel on.
//!
//! Bodies are never copied: the connection loop reads into a buffer, asks
//! [`ChunkedDecoder::step`] how far the next run of bytes of one kind goes,
//! and writes that run straight from the same buffer to the other socket.
//! With `keep_framing` (proxying to an HTTP/1.1 peer) the chunk-size lines and
//! data are forwarded as they came and only the trailer section is dropped;
//! without it (an HTTP/1.0 client) only chunk data is forwarded.

/// Longest chunk extension we accept on one chunk-size line.
pub const MAX_CHUNK_EXT: usize = 1024;
/// Most hex digits in a chunk size (2^60 bytes is plenty).
const MAX_SIZE_DIGITS: u8 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    SizeStart,
    Size,
    /// Whitespace after the size: only more of it, ';' or CR may follow.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

/// One run of bytes of the same fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input this run covers.
    pub consumed: usize,
    /// Forward them, or drop them.
    pub forward: bool,
    /// The body ended with this run.
    pub done: bool,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    st: St,
    remaining: u64,
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

impl ChunkedDecoder {
    pub fn new(keep_framing: bool, max_trailer: usize) -> Self {
        ChunkedDecoder {
            st: St::SizeStart,
            remaining: 0,
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

    fn forwards(&self, st: St) -> bool {
        match st {
            St::Data => true,
            St::TrailerStart | St::Trailer | St::TrailerLf | St::EndLf | St::Done => false,
            _ => self.keep_framing,
        }
    }

    /// Consumes the longest prefix of `input` whose bytes share one fate.
    /// With empty input, or once done, returns a zero-length step.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        let forward = self.forwards(self.st);
        while i < input.len() && self.st != St::Done {
            if self.forwards(self.st) != forward {
                break;
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
            let b = input[i];
            i += 1;
            self.st = match self.st {
                St::SizeStart => {
                    let v = hex_val(b).ok_or(ChunkError("Invalid chunk size"))?;
                    self.remaining = v;
                    self.digits = 1;
                    self.ext_len = 0;
                    St::Size
                }
                St::Size => match b {
                    b'\r' => St::SizeLf,
                    b';' => St::Ext,
                    b' ' | b'\t' => self.size_ws()?,
                    _ => {
                        let v = hex_val(b).ok_or(ChunkError("Invalid chunk size"))?;
                        self.digits += 1;
                        if self.digits > MAX_SIZE_DIGITS {
                            return Err(ChunkError("Chunk size too large"));
                        }
                        self.remaining = self.remaining * 16 + v;
                        St::Size
                    }
                },
                St::SizeWs => match b {
                    b'\r' => St::SizeLf,
                    b';' => St::Ext,
                    b' ' | b'\t' => self.size_ws()?,
                    _ => return Err(ChunkError("Invalid chunk size")),
                },
                St::Ext => {
                    self.ext_len += 1;
                    if self.ext_len > MAX_CHUNK_EXT {
                        return Err(ChunkError("Chunk extension too long"));
                    }
                    match b {
                        b'\r' => St::SizeLf,
                        b'\t' => St::Ext,
                        0..=0x1f | 0x7f => return Err(ChunkError("Invalid chunk extension")),
                        _ => St::Ext,
                    }
                }
                St::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("Invalid chunk size line"));
                    }
                    if self.remaining == 0 {
                        St::TrailerStart
                    } else {
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
                St::TrailerStart => match b {
                    b'\r' => St::EndLf,
                    b' ' | b'\t' => return Err(ChunkError("Folded trailer line")),
                    _ => self.trailer_byte(b)?,
                },
                St::Trailer => self.trailer_byte(b)?,
                St::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("Invalid trailer line"));
                    }
                    St::TrailerStart
                }
                St::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("Invalid end of chunked body"));
                    }
                    St::Done
                }
                St::Data | St::Done => unreachable!("handled above"),
            };
        }
        Ok(Step {
            consumed: i,
            forward,
            done: self.st == St::Done,
        })
    }

    /// BWS between the size and ';' counts towards the extension limit.
    fn size_ws(&mut self) -> Result<St, ChunkError> {
        self.ext_len += 1;
        if self.ext_len > MAX_CHUNK_EXT {
            return Err(ChunkError("Chunk extension too long"));
        }
        Ok(St::SizeWs)
    }

    fn trailer_byte(&mut self, b: u8) -> Result<St, ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > self.max_trailer {
            return Err(ChunkError("Trailer section too large"));
        }
        match b {
            b'\r' => Ok(St::TrailerLf),
            b'\t' => Ok(St::Trailer),
            0..=0x1f | 0x7f => Err(ChunkError("Invalid trailer line")),
            _ => Ok(St::Trailer),
        }
    }
}

#[cfg(test)]
mod tests;
