//! The WebSocket wire (RFC 6455), without gateway words: the opening
//! handshake's checks and `Sec-WebSocket-Accept` ([`check_handshake`],
//! [`accept_key`]), the frame decoder for what a client sends
//! ([`parse_header`], [`Assembler`]) and the encoder of the frames the
//! gateway sends ([`encode_frame`]). Pure functions over bytes: the session
//! that drives them over a socket is `gateway::websocket`.
//!
//! What a client may send is bounded before anything is allocated: a frame
//! header declaring more than the frame limit (a 2^63 length included) is
//! refused from its first 10 bytes, and a message is reassembled only up
//! to the message limit. Every violation names the close code the
//! connection ends with (RFC 6455 §7.4.1).

use super::parse::{list_elements, trim_ows, RequestHead};
use base64::Engine;

/// Close codes the gateway sends (RFC 6455 §7.4.1).
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Never sent: "no status code was present" in a close frame.
    pub const NO_STATUS: u16 = 1005;
    /// Never sent: the connection closed without a close frame.
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The GUID RFC 6455 §1.3 appends to the client's key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Why an opening handshake is refused: the HTTP status and JSON message;
/// `version` asks for `Sec-WebSocket-Version: 13` on the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeError {
    pub status: u16,
    pub message: &'static str,
    pub version: bool,
}

impl HandshakeError {
    const fn bad(message: &'static str) -> HandshakeError {
        HandshakeError {
            status: 400,
            message,
            version: false,
        }
    }
}

/// A valid opening handshake's parts, borrowed from the request's bytes.
#[derive(Debug)]
pub struct Handshake<'a> {
    pub key: &'a [u8],
    /// The `Sec-WebSocket-Protocol` values the client offered, in order.
    pub protocols: Vec<&'a [u8]>,
}

fn headers<'a>(
    buf: &'a [u8],
    head: &'a RequestHead,
    name: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    head.headers
        .iter()
        .filter(move |h| h.name.get(buf).eq_ignore_ascii_case(name))
        .map(move |h| h.value.get(buf))
}

/// Checks a request that opens a WebSocket (RFC 6455 §4.2.1): HTTP/1.1
/// `GET`, `Upgrade: websocket`, `Connection: upgrade`, one
/// `Sec-WebSocket-Key` of 16 bytes in base64, no body, and
/// `Sec-WebSocket-Version: 13` (else 426, naming the version we speak).
pub fn check_handshake<'a>(
    buf: &'a [u8],
    head: &'a RequestHead,
) -> Result<Handshake<'a>, HandshakeError> {
    use super::parse::Framing;
    if head.minor_version != 1 {
        return Err(HandshakeError::bad("A WebSocket handshake needs HTTP/1.1"));
    }
    if head.method != super::method::Method::Get {
        return Err(HandshakeError::bad("A WebSocket handshake is a GET"));
    }
    let upgrade = headers(buf, head, b"upgrade")
        .flat_map(list_elements)
        .any(|t| t.eq_ignore_ascii_case(b"websocket"));
    if !upgrade || !head.upgrade {
        return Err(HandshakeError::bad(
            "Not a WebSocket handshake: Upgrade: websocket and Connection: Upgrade are required",
        ));
    }
    match head.framing {
        Framing::None | Framing::Length(0) => {}
        _ => {
            return Err(HandshakeError::bad(
                "A WebSocket handshake has no request body",
            ))
        }
    }
    let version_ok = {
        let mut v = headers(buf, head, b"sec-websocket-version");
        matches!((v.next(), v.next()), (Some(x), None) if trim_ows(x) == b"13")
    };
    if !version_ok {
        return Err(HandshakeError {
            status: 426,
            message: "Unsupported Sec-WebSocket-Version: this server speaks 13",
            version: true,
        });
    }
    let mut keys = headers(buf, head, b"sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => trim_ows(k),
        _ => {
            return Err(HandshakeError::bad(
                "A WebSocket handshake needs one Sec-WebSocket-Key",
            ))
        }
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !decoded.is_ok_and(|k| k.len() == 16) {
        return Err(HandshakeError::bad(
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    let protocols = headers(buf, head, b"sec-websocket-protocol")
        .flat_map(list_elements)
        .collect();
    Ok(Handshake { key, protocols })
}

/// Writes the `101 Switching Protocols` head (without its blank line):
/// the caller adds its own header lines, then `\r\n`.
pub fn push_switching_head(out: &mut Vec<u8>, key: &[u8], protocol: Option<&[u8]>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ",
    );
    out.extend_from_slice(accept_key(key).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        out.extend_from_slice(b"sec-websocket-protocol: ");
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
}

/// A client frame's header, checked against the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    /// Bytes of the header (2 to 14).
    pub len: usize,
    pub payload: usize,
}

/// How the connection ends after a violation: the close code and the
/// reason sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Parses the header of the next client frame at the start of `buf`.
/// `Ok(None)`: more bytes are needed. A frame over `max_frame` is refused
/// as soon as its length is known, whatever length it declares.
pub fn parse_header(buf: &[u8], max_frame: usize) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(violation(
            code::PROTOCOL_ERROR,
            "reserved bits set without an extension",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let control = match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
        OP_CLOSE | OP_PING | OP_PONG => true,
        _ => return Err(violation(code::PROTOCOL_ERROR, "unknown opcode")),
    };
    if b1 & 0x80 == 0 {
        return Err(violation(
            code::PROTOCOL_ERROR,
            "client frames must be masked",
        ));
    }
    let short = (b1 & 0x7F) as u64;
    if control && (!fin || short > 125) {
        return Err(violation(
            code::PROTOCOL_ERROR,
            "control frames are at most 125 bytes and not fragmented",
        ));
    }
    let (payload, at) = match short {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut n = [0u8; 8];
            n.copy_from_slice(b);
            (u64::from_be_bytes(n), 10)
        }
        n => (n, 2),
    };
    // RFC 6455 §5.2: the length in the fewest bytes, and the 8-byte
    // form's top bit clear.
    let shortest = match at {
        4 => payload >= 126,
        10 => payload > u16::MAX as u64 && payload >> 63 == 0,
        _ => true,
    };
    if !shortest {
        return Err(violation(
            code::PROTOCOL_ERROR,
            "frame length not in its shortest form",
        ));
    }
    if payload > max_frame as u64 {
        return Err(violation(
            code::MESSAGE_TOO_BIG,
            "frame over the size limit",
        ));
    }
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        len: at + 4,
        payload: payload as usize,
    }))
}

/// Looks through what a client sends after the gateway's close frame,
/// dropping it, for the client's own close frame: the closing handshake
/// is then done and the connection can end without waiting longer.
#[derive(Debug, Default)]
pub struct CloseWatch {
    /// The start of a frame header cut by the end of the last read.
    head: [u8; 14],
    held: usize,
    /// Payload bytes of the last frame still to come.
    skip: u64,
}

impl CloseWatch {
    /// Takes the next bytes the client sent. `Ok(true)`: they hold its
    /// close frame's header. `Err`: they are not frames, and nothing
    /// better is coming.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<bool, Violation> {
        loop {
            let n = self.skip.min(data.len() as u64) as usize;
            self.skip -= n as u64;
            data = &data[n..];
            if data.is_empty() {
                return Ok(false);
            }
            let take = (self.head.len() - self.held).min(data.len());
            self.head[self.held..self.held + take].copy_from_slice(&data[..take]);
            match parse_header(&self.head[..self.held + take], usize::MAX)? {
                None => {
                    self.held += take;
                    return Ok(false);
                }
                Some(h) if h.opcode == OP_CLOSE => return Ok(true),
                Some(h) => {
                    // The bytes `held` before did not make a header, so
                    // this one ends in `data`.
                    data = &data[h.len - self.held..];
                    self.held = 0;
                    self.skip = h.payload as u64;
                }
            }
        }
    }
}

/// Unmasks a payload in place (RFC 6455 §5.3).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        c[0] ^= mask[0];
        c[1] ^= mask[1];
        c[2] ^= mask[2];
        c[3] ^= mask[3];
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// What a frame, with the ones before it, amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A part of a message; nothing to do yet.
    Partial,
    /// A whole message (text is valid UTF-8).
    Message {
        binary: bool,
        data: Vec<u8>,
    },
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame: its code (1005 when it carried none).
    Close {
        code: u16,
    },
}

/// Reassembles messages from frames and checks what the frames carry.
pub struct Assembler {
    max_message: usize,
    allow_binary: bool,
    /// The message being reassembled: text or binary, its bytes, and
    /// how many of them (a text's) are checked UTF-8.
    partial: Option<(bool, Vec<u8>, usize)>,
}

impl Assembler {
    pub fn new(max_message: usize, allow_binary: bool) -> Assembler {
        Assembler {
            max_message,
            allow_binary,
            partial: None,
        }
    }

    /// Takes one frame (its header and unmasked payload).
    pub fn push(&mut self, h: &Header, payload: &[u8]) -> Result<Event, Violation> {
        match h.opcode {
            OP_PING => Ok(Event::Ping(payload.to_vec())),
            OP_PONG => Ok(Event::Pong),
            OP_CLOSE => close_code(payload).map(|code| Event::Close { code }),
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        "a new message began before the last one ended",
                    ));
                }
                let binary = h.opcode == OP_BINARY;
                if binary && !self.allow_binary {
                    return Err(violation(
                        code::UNSUPPORTED_DATA,
                        "binary messages are not accepted",
                    ));
                }
                self.take(binary, Vec::new(), 0, h.fin, payload)
            }
            _ => {
                let Some((binary, data, checked)) = self.partial.take() else {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        "a continuation frame without a message",
                    ));
                };
                self.take(binary, data, checked, h.fin, payload)
            }
        }
    }

    /// Adds a frame's payload to the message. A text's bytes are checked
    /// as they come (`checked` of them already are): invalid UTF-8 in a
    /// fragment fails the connection at once, and only a character cut
    /// by the fragment's end waits for the next one.
    fn take(
        &mut self,
        binary: bool,
        mut data: Vec<u8>,
        mut checked: usize,
        fin: bool,
        payload: &[u8],
    ) -> Result<Event, Violation> {
        if data.len() + payload.len() > self.max_message {
            return Err(violation(
                code::MESSAGE_TOO_BIG,
                "message over the size limit",
            ));
        }
        data.extend_from_slice(payload);
        if !binary {
            match std::str::from_utf8(data.get(checked..).unwrap_or_default()) {
                Ok(_) => checked = data.len(),
                Err(e) if e.error_len().is_none() && !fin => checked += e.valid_up_to(),
                Err(_) => {
                    return Err(violation(
                        code::INVALID_PAYLOAD,
                        "text message is not valid UTF-8",
                    ))
                }
            }
        }
        if !fin {
            self.partial = Some((binary, data, checked));
            return Ok(Event::Partial);
        }
        Ok(Event::Message { binary, data })
    }
}

/// Whether a peer may send `c` in a close frame (RFC 6455 §7.4).
pub fn valid_close_code(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn close_code(payload: &[u8]) -> Result<u16, Violation> {
    match payload {
        [] => Ok(code::NO_STATUS),
        [_] => Err(violation(code::PROTOCOL_ERROR, "close frame of one byte")),
        [a, b, reason @ ..] => {
            let c = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(c) {
                return Err(violation(code::PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(
                    code::INVALID_PAYLOAD,
                    "close reason is not valid UTF-8",
                ));
            }
            Ok(c)
        }
    }
}

/// Appends a server frame (final, unmasked) carrying `payload`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (cut to fit 125 bytes).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut p = Vec::with_capacity(2 + reason.len().min(123));
    p.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(out, OP_CLOSE, &p);
}

#[cfg(test)]
mod tests;
