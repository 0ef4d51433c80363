//! The HTTP/1.1 wire, for both roles and without gateway words: parsing
//! request heads ([`parse`]), body framing ([`body`]), upstream response
//! heads ([`response`]), the header names both act on ([`names`]), the one writer of gateway-made responses
//! ([`respond`]) and its encoders ([`encode`]), and the server connection
//! loop ([`conn`]), generic over the service that answers its requests; and
//! the WebSocket wire ([`ws`]): handshake checks and the frame codec; and
//! percent-decoding ([`percent`]).

pub mod body;
pub mod conn;
pub mod encode;
pub mod method;
pub mod names;
pub mod parse;
pub mod percent;
pub mod respond;
pub mod response;
pub mod ws;

/// A request the gateway refuses before routing: answered with `status` and a
/// JSON `{"message": ...}` body, then the connection is closed because the
/// stream position can no longer be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub message: &'static str,
}

impl Reject {
    pub const fn new(status: u16, message: &'static str) -> Self {
        Reject { status, message }
    }
    pub const fn bad_request(message: &'static str) -> Self {
        Reject {
            status: 400,
            message,
        }
    }
}

/// The canonical reason phrase for the statuses the gateway itself produces
/// (and any others a mock integration names).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        102 => "Processing",
        203 => "Non-Authoritative Information",
        205 => "Reset Content",
        207 => "Multi-Status",
        300 => "Multiple Choices",
        402 => "Payment Required",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        411 => "Length Required",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        451 => "Unavailable For Legal Reasons",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        511 => "Network Authentication Required",
        // The reason phrase may be empty (RFC 9112 §4); better than a wrong one.
        _ => "",
    }
}

/// `[server.limits]` compiled: what a client may send, and how slowly.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_line_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: std::time::Duration,
    pub body_read_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub write_timeout: std::time::Duration,
    /// `server.splice_min_bytes`: plain-TCP Content-Length bodies, and the
    /// data of chunks of chunked bodies, of at least this many bytes are
    /// spliced (0: never).
    pub splice_min_bytes: u64,
    /// `server.splice_pipe_bytes`.
    pub splice_pipe_bytes: usize,
}
