//! coregate: a thread-per-core API gateway engine.
//!
//! A request's journey, in module order:
//! 1. [`runtime`] — one shard per core accepts the connection (SO_REUSEPORT).
//! 2. [`http`] — the connection loop reads and parses the request head.
//! 3. [`route`] — host, base path, method and path pick a route.
//! 4. [`pipeline`] — the route's [`policy`] phases run, then its integration.
//! 5. [`integration`] — a mock answer, or a proxied call to an upstream.
//!
//! [`config`] is read before any of this: TOML in, an immutable plan out.
//! [`tls`] wraps steps 2 and 5 when a listener or an upstream speaks TLS.
//! [`net`] is where every socket of steps 1, 2 and 5 waits for readiness.

pub mod config;
pub mod http;
pub mod integration;
pub mod log;
pub mod net;
pub mod pipeline;
pub mod plan;
pub mod policy;
pub mod route;
pub mod runtime;
pub mod tls;
