//! One shard: its gateway, its accept loops, its control inbox, its drain.
//! Everything here is `Rc`/`Cell`/`RefCell`: a shard is one thread, and its
//! state is never touched from another.

use crate::gateway::Gateway;
use crate::http::conn::Service;
use crate::net::Listener;
use crate::plan::Plan;
use crate::runtime::Control;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often the control inbox is looked at. Control messages are rare
/// (shutdown, a metrics scrape or the dashboard's sample once a second);
/// 25 ms bounds their latency at no measurable cost.
const INBOX_POLL: Duration = Duration::from_millis(25);
/// How often the inbox is looked at for [`INBOX_BUSY_FOR`] after a
/// WebSocket `@connections` request: pushes come in runs.
const INBOX_POLL_BUSY: Duration = Duration::from_millis(1);
const INBOX_BUSY_FOR: Duration = Duration::from_millis(200);
/// How often idle upstream connections past their idle timeout are closed.
const POOL_SWEEP: Duration = Duration::from_secs(1);
/// Connections accepted in a row before the accept loop yields.
const ACCEPT_BATCH: u32 = 32;

/// A shard's channels to the threads outside it.
pub(super) struct Links {
    pub throttle: crate::policy::throttle::ShardLink,
    pub usage: crate::policy::usage::coordinator::ShardLink,
    /// One per access-log destination, in the plan's order.
    pub access_log: Vec<crate::accesslog::writer::Sink>,
}

/// The shard's main task: start accepting, then serve the control inbox
/// until told to stop, then drain.
pub(super) async fn run(
    id: usize,
    plan: Plan,
    fds: Vec<(RawFd, bool)>,
    inbox: Receiver<Control>,
    ready: Sender<Result<(), String>>,
    links: Links,
) {
    let drain_timeout = plan.server.drain_timeout;
    let max_connections = plan.server.max_connections_per_shard;
    let shard = Rc::new(Gateway::new(id, plan, links.throttle, links.usage));
    let logs_access = !links.access_log.is_empty();
    shard.access.log.attach(links.access_log);
    let mut accept_tasks = Vec::new();
    for (fd, tls) in fds {
        // SAFETY: `fd` is a bound, listening socket created for this shard by
        // `bind_all` and owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = match Listener::from_fd(owned) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: cannot watch listener: {e}")));
                return;
            }
        };
        let acceptor = if tls { shard.tls.clone() } else { None };
        accept_tasks.push(glommio::spawn_local(accept_loop(
            shard.clone(),
            listener,
            acceptor,
            max_connections,
        )));
    }
    let sweeper = glommio::spawn_local(sweep_pools(shard.clone())).detach();
    let throttle = glommio::spawn_local(shard.policies.throttle.reconciler()).detach();
    let usage = glommio::spawn_local(shard.policies.usage.reconciler()).detach();
    let auth_keys = glommio::spawn_local(shard.policies.auth.updater()).detach();
    let flusher =
        logs_access.then(|| glommio::spawn_local(flush_access_log(shard.clone())).detach());
    let _ = ready.send(Ok(()));

    // After an @connections request, the inbox is looked at every
    // INBOX_POLL_BUSY for a while: a backend pushing to many connections
    // sends one request after the other.
    let mut busy_until: Option<Instant> = None;
    loop {
        match inbox.try_recv() {
            Ok(Control::Shutdown) | Err(TryRecvError::Disconnected) => break,
            Ok(Control::Snapshot(reply)) => {
                let _ = reply.send(shard.snapshot());
            }
            Ok(Control::WebSocket(cmd)) => {
                crate::gateway::websocket::command(cmd);
                busy_until = Some(Instant::now() + INBOX_BUSY_FOR);
            }
            Err(TryRecvError::Empty) => {
                let poll = match busy_until {
                    Some(t) if Instant::now() < t => INBOX_POLL_BUSY,
                    _ => {
                        busy_until = None;
                        INBOX_POLL
                    }
                };
                glommio::timer::sleep(poll).await
            }
        }
    }

    let deadline = Instant::now() + drain_timeout;
    shard.connections.begin_drain(deadline);
    for t in accept_tasks {
        t.await;
    }
    while shard.connections.live() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let left = shard.connections.live();
    if left > 0 {
        crate::log!(
            "warn",
            "shard {id}: drain timeout passed with {left} connection(s) still open; closing them"
        );
    }
    sweeper.cancel();
    throttle.cancel();
    usage.cancel();
    // Usage admitted since the last tick reaches the store too.
    shard.policies.usage.final_report();
    auth_keys.cancel();
    if let Some(f) = flusher {
        f.cancel();
    }
    // The lines of the last requests reach the writers too.
    shard.access.log.close();
}

/// Hands the shard's access-log buffers to their writers every
/// FLUSH_EVERY, and reports dropped lines.
async fn flush_access_log(shard: Rc<Gateway>) {
    loop {
        glommio::timer::sleep(crate::accesslog::shard::FLUSH_EVERY).await;
        shard.access.log.flush(Instant::now());
    }
}

/// Accepts on one listener; `tls` is set on a TLS listener. When draining
/// starts, takes the connections already in the listener's backlog (which
/// closing it would reset), then ends, closing the listener.
async fn accept_loop(
    shard: Rc<Gateway>,
    listener: Listener,
    tls: Option<futures_rustls::TlsAcceptor>,
    max_connections: usize,
) {
    let mut in_a_row = 0u32;
    loop {
        // A burst of new connections must not hold up the shard's other
        // work: accepts do not wait while the backlog has entries, so give
        // the task queue a turn every ACCEPT_BATCH of them.
        in_a_row += 1;
        if in_a_row >= ACCEPT_BATCH {
            in_a_row = 0;
            futures_lite::future::yield_now().await;
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.connections().drained().await;
            None
        })
        .await;
        let (stream, peer) = match accepted {
            None => {
                take_backlog(&shard, &listener, &tls, max_connections);
                return;
            }
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                crate::log!("warn", "shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        serve(&shard, stream, peer, &tls, max_connections);
    }
}

/// Draining: accepts what is in the backlog without waiting, and serves it
/// like any connection accepted while draining (see
/// [`crate::http::conn::Connections::begin_drain`]).
fn take_backlog(
    shard: &Rc<Gateway>,
    listener: &Listener,
    tls: &Option<futures_rustls::TlsAcceptor>,
    max_connections: usize,
) {
    loop {
        match listener.try_accept() {
            Ok(Some((stream, peer))) => serve(shard, stream, peer, tls, max_connections),
            Ok(None) => return,
            Err(e) => {
                crate::log!(
                    "warn",
                    "shard {}: accept failed while draining: {e}",
                    shard.id
                );
                return;
            }
        }
    }
}

/// Starts serving an accepted connection on its own task.
fn serve(
    shard: &Rc<Gateway>,
    stream: crate::net::Socket,
    peer: std::net::SocketAddr,
    tls: &Option<futures_rustls::TlsAcceptor>,
    max_connections: usize,
) {
    shard.metrics.note_accepted(tls.is_some());
    let over_limit = shard.connections.live() >= max_connections;
    match tls {
        None => glommio::spawn_local(crate::http::conn::serve(
            shard.clone(),
            stream,
            peer,
            over_limit,
        ))
        .detach(),
        Some(acceptor) => glommio::spawn_local(crate::http::conn::serve_tls(
            shard.clone(),
            stream,
            peer,
            over_limit,
            acceptor.clone(),
        ))
        .detach(),
    };
}

async fn sweep_pools(shard: Rc<Gateway>) {
    loop {
        glommio::timer::sleep(POOL_SWEEP).await;
        shard.sweep_pools(Instant::now());
    }
}
