//! The admin listener: `GET /metrics` (Prometheus text or OpenMetrics),
//! `GET /dashboard` (a page inside the binary), `GET /dashboard/data`
//! (the JSON it polls), `POST /reload` (the same reload as SIGHUP; it
//! answers when every shard serves the new config), the JSON admin
//! API of [`api`] (config, status, keys, usage), and `/@connections/{id}`
//! (push to, describe or close a WebSocket connection: [`connections`]).
//! It runs on plain threads of its own, never on a shard: a scrape costs a
//! shard one message on its control inbox and the
//! copy of its counters ([`crate::gateway::Gateway::snapshot`]), made
//! between two of its tasks.
//!
//! Threads: one accepts; each admin connection gets its own (at most
//! [`MAX_CONNECTIONS`] at once, further ones get a 503); one, the
//! sampler, takes a snapshot every second for the dashboard's history and
//! answers the dashboard's data requests, so the history has one owner
//! and needs no lock.
//!
//! When `admin.token_file` is set, every request must carry the token, as
//! `Authorization: Bearer TOKEN` (Prometheus' `authorization` setting) or
//! as the password of HTTP Basic authentication (what a browser asks for
//! on the dashboard); it is compared in constant time. With `[admin.tls]`
//! the listener speaks TLS (rustls' blocking stream, on the connection's
//! thread), and with its `client_ca`, a client without a certificate signed
//! by that CA fails the handshake; the certificate's subject names the
//! client in the log of the changes it makes.

pub mod api;
mod connections;
pub mod dashboard;
mod serve;

use crate::observe::snapshot::{merge, Merged};
use crate::plan::admin::{AdminPlan, AdminTls, AdminToken};
use crate::runtime::{Control, Inbox};
use crossbeam_channel::Sender;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a scrape waits for the shards' snapshots. A shard answers as
/// soon as its inbox is rung; one that does not answer within this is
/// draining or stuck, and the scrape goes on without it.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `POST /reload` waits for the main thread's answer: reading and
/// compiling the config, binding added listeners, and every shard's
/// install (at most 10 s).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The admin listener, bound and not yet serving.
pub struct Bound {
    listener: TcpListener,
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    token: Option<AdminToken>,
    tls: Option<AdminTls>,
}

/// What the admin threads need from the running gateway.
pub struct Context {
    /// Each shard's control inbox, in shard order.
    pub inboxes: Vec<Inbox>,
    /// When the gateway started.
    pub started: SystemTime,
    pub version: &'static str,
    /// Where the admin API asks the main thread, which owns the running
    /// server (reload, the running config, key changes).
    pub main: Sender<crate::runtime::MainRequest>,
    /// `[admin.tls]` as each successful reload compiled it (its
    /// certificate, key and CA files read again): the accept loop takes the
    /// newest before each connection, so a renewed certificate is served
    /// without a restart.
    pub tls_updates: crossbeam_channel::Receiver<AdminTls>,
}

/// State every admin thread shares; read-only.
struct Shared {
    ctx: Context,
    token: Option<AdminToken>,
    /// `[admin.tls]`: connections are TLS, and with client certificates
    /// when it has a `client_ca`.
    tls: Option<AdminTls>,
    /// The sampler's request channel (dashboard data).
    data: Sender<dashboard::DataRequest>,
}

/// Binds the admin listener, unless `[admin]` disables it. Like the
/// traffic listeners, the socket has `SO_REUSEPORT` ([`crate::net::bind_blocking`]), so that a gateway
/// started later with `share` (`server.share_listen_addresses`, a
/// zero-downtime upgrade) can bind the same address; without `share`, an
/// address someone already listens on is refused first by a probe bind
/// without `SO_REUSEPORT` (as `runtime::bind_all` does).
pub fn bind(plan: &AdminPlan, share: bool) -> io::Result<Option<Bound>> {
    let Some(addr) = plan.listen else {
        return Ok(None);
    };
    let named = |e: io::Error| {
        let why = if e.kind() == io::ErrorKind::AddrInUse {
            "address in use: another process (often another coregate) already listens on it; \
             choose another admin.listen, or set admin.enabled = false"
                .to_string()
        } else {
            e.to_string()
        };
        io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {why}"))
    };
    let listener = crate::net::bind_blocking(addr, share, 64).map_err(named)?;
    let addr = listener.local_addr()?;
    Ok(Some(Bound {
        listener,
        addr,
        token: plan.token.clone(),
        tls: plan.tls.clone(),
    }))
}

impl Bound {
    /// Starts the admin threads; they run until the process exits.
    pub fn serve(self, ctx: Context) -> io::Result<()> {
        let (data_tx, data_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            ctx,
            token: self.token,
            tls: self.tls,
            data: data_tx,
        });
        let sampler = shared.clone();
        std::thread::Builder::new()
            .name("coregate-admin-sampler".into())
            .spawn(move || dashboard::sampler(&sampler.ctx, data_rx))?;
        let listener = self.listener;
        std::thread::Builder::new()
            .name("coregate-admin".into())
            .spawn(move || serve::accept_loop(listener, shared))?;
        Ok(())
    }
}

/// Asks every shard for its snapshot and merges those that answer within
/// [`SCRAPE_TIMEOUT`].
pub fn scrape(inboxes: &[Inbox]) -> Merged {
    let (tx, rx) = crossbeam_channel::unbounded();
    let asked = inboxes
        .iter()
        .filter(|i| i.send(Control::Snapshot(tx.clone())).is_ok())
        .count();
    drop(tx);
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let mut got = Vec::with_capacity(asked);
    while got.len() < asked {
        match rx.recv_deadline(deadline) {
            Ok(s) => got.push(s),
            Err(_) => break,
        }
    }
    merge(got, inboxes.len())
}
