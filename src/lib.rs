//! coregate: a thread-per-core API gateway engine.
//!
//! The source tree is layered: each module imports only from the ones
//! listed before it (tests/layers.rs checks this; docs/architecture.md
//! draws it).
//!
//! - [`log`]: the log line macro.
//! - [`config`]: the TOML file as written, and the errors every layer
//!   reports problems with.
//! - [`accesslog`]: access-log formats, per-shard buffers, writer threads.
//! - [`net`]: sockets, waiting on the shard's epoll reactor.
//! - [`tls`]: rustls configs and the plain-or-TLS stream.
//! - [`http`]: the HTTP/1.1 wire for both roles, the one response writer,
//!   and the connection loop, generic over the service that answers.
//! - [`route`]: host, base path, method and path pick a route.
//! - [`policy`]: each policy's compiled rule and check, and the phase list.
//! - [`integration`]: mock and proxy answers, upstream pools, the client.
//! - [`plan`]: the compiled, immutable plan, composed of the above.
//! - [`openapi`]: OpenAPI import (document → config) and export (config →
//!   document).
//! - [`observe`]: per-shard counters and histograms, their merge, the
//!   Prometheus exposition.
//! - [`gateway`]: the exchange record, the phase driver, the one exit,
//!   WebSocket sessions.
//! - [`runtime`]: shards on their CPUs, listeners, control inbox, drain.
//! - [`portal`]: the developer portal: documentation, "try it" and
//!   self-service API keys, on a listener of its own.
//! - [`admin`]: the admin listener: `/metrics`, the dashboard and
//!   WebSocket `@connections`.
//! - [`cli`]: subcommands of the binary besides `serve`.

pub mod accesslog;
pub mod admin;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod http;
pub mod integration;
pub mod log;
pub mod net;
pub mod observe;
pub mod openapi;
pub mod plan;
pub mod policy;
pub mod portal;
pub mod route;
pub mod runtime;
pub mod tls;
