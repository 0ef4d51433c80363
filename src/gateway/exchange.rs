//! The exchange: everything one request is, from its head to its last
//! byte. The driver opens one per request, every phase and the
//! integration write what they learn into it, and every way a request can
//! end (mock, proxy, cache hit, refusal, parser error, upstream error,
//! timeout) fills in its [`Outcome`] before [`super::exit::finish`]
//! receives it.

use super::Generation;
use crate::http::method::Method;
use crate::policy::RequestState;
use smallvec::SmallVec;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// One request.
pub struct Exchange {
    /// The generation the request started on; it keeps it to the end.
    pub generation: Rc<Generation>,
    /// The client's `x-request-id` if it sent a valid one, else ours.
    pub request_id: SmallVec<[u8; 64]>,
    pub peer: SocketAddr,
    pub method: Method,
    /// The client's HTTP minor version.
    pub minor_version: u8,
    /// The route's index in the generation's plan, once routed.
    pub route: Option<usize>,
    /// What the phases learned: the API key, the principal, headers for
    /// the upstream.
    pub state: RequestState,
    pub outcome: Outcome,
    /// What the access log keeps of the head.
    pub access: Captured,
}

/// How the request ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The status the client was sent; 0 when nothing was sent (the client
    /// went away first).
    pub status: u16,
    /// Bytes received: the head, and the body as far as it was read.
    pub bytes_in: u64,
    /// Bytes written to the client: head and body.
    pub bytes_out: u64,
    pub cache: CacheStatus,
    /// The upstream and target the request was sent to.
    pub upstream: Option<(usize, usize)>,
    /// The upstream's status, when one answered.
    pub upstream_status: Option<u16>,
    /// Why the gateway answered instead of the integration (a refusal's or
    /// an error's message).
    pub error: Option<std::borrow::Cow<'static, str>>,
    /// The phase that answered instead of the integration (a refusal, or
    /// a CORS preflight), for the metrics of throttling, quotas and
    /// authorizers.
    pub refused_by: Option<crate::policy::Phase>,
    pub timings: Timings,
}

/// Whether the cache took part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheStatus {
    /// The route has no cache rule, or it does not cache this request.
    #[default]
    None,
    Hit,
    Miss,
}

/// When each step happened.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// The head was parsed.
    pub received: Instant,
    /// The connection to the upstream target was ready.
    pub upstream_connected: Option<Instant>,
    /// The upstream's response head was complete.
    pub upstream_first_byte: Option<Instant>,
    /// The last byte of the response was handed to the kernel.
    pub last_byte_sent: Option<Instant>,
}

impl Exchange {
    pub fn new(
        generation: Rc<Generation>,
        peer: SocketAddr,
        method: Method,
        minor_version: u8,
        received: Instant,
    ) -> Exchange {
        Exchange {
            generation,
            request_id: SmallVec::new(),
            peer,
            method,
            minor_version,
            route: None,
            state: RequestState::default(),
            outcome: Outcome {
                status: 0,
                bytes_in: 0,
                bytes_out: 0,
                cache: CacheStatus::None,
                upstream: None,
                upstream_status: None,
                error: None,
                refused_by: None,
                timings: Timings {
                    received,
                    upstream_connected: None,
                    upstream_first_byte: None,
                    last_byte_sent: None,
                },
            },
            access: Default::default(),
        }
    }
}

/// What the access log keeps of a request's head (filled by
/// `super::access::capture` when the plan has an access log).
#[derive(Debug, Default)]
pub struct Captured {
    /// The API a request no route took belongs to (by host and base path).
    pub api: Option<usize>,
    /// The method, the path and the User-Agent, one after the other.
    pub(super) text: Vec<u8>,
    pub(super) method_len: u16,
    pub(super) path_len: u32,
    pub(super) has_agent: bool,
    /// A head was read (false for the connection loop's refusals).
    pub(super) has_head: bool,
}
