//! HTTP methods as the router sees them.

/// The methods a route key can name. Any other valid token is `Other` and only
/// `ANY` routes (and `$default`) can take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Method {
    Get = 0,
    Head = 1,
    Post = 2,
    Put = 3,
    Patch = 4,
    Delete = 5,
    Options = 6,
    Other = 7,
}

/// How many per-method tables the router keeps.
pub const METHOD_SLOTS: usize = 8;

/// The named methods, in the order an `Allow` header lists them.
pub const NAMED_METHODS: [Method; 7] = [
    Method::Get,
    Method::Head,
    Method::Post,
    Method::Put,
    Method::Patch,
    Method::Delete,
    Method::Options,
];

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is `Other`.
    pub fn from_bytes(b: &[u8]) -> Method {
        match b {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"PATCH" => Method::Patch,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }

    /// Safe to send again after a pooled connection turned out dead
    /// (RFC 9110 §9.2.2).
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options
        )
    }

    pub fn slot(self) -> usize {
        self as usize
    }
}

/// A set of named methods, rendered as an `Allow` header value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllowSet(u8);

impl AllowSet {
    pub fn insert(&mut self, m: Method) {
        self.0 |= 1 << m.slot();
    }
    pub fn contains(self, m: Method) -> bool {
        self.0 & (1 << m.slot()) != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Writes `GET, HEAD, ...` into `out`.
    pub fn write_to(self, out: &mut Vec<u8>) {
        let mut first = true;
        for m in NAMED_METHODS {
            if self.contains(m) {
                if !first {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(m.as_str().as_bytes());
                first = false;
            }
        }
    }
}
