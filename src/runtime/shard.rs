//! One shard: its gateway, its accept loops, its control inbox, its drain.
//! Everything here is `Rc`/`Cell`/`RefCell`: a shard is one thread, and its
//! state is never touched from another.

use crate::gateway::Gateway;
use crate::http::conn::Service;
use crate::net::Listener;
use crate::plan::Plan;
use crate::runtime::Control;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often idle upstream connections past their idle timeout are closed.
const POOL_SWEEP: Duration = Duration::from_secs(1);
/// Connections accepted in a row before the accept loop yields.
const ACCEPT_BATCH: u32 = 32;
/// How long the accept loop waits after a failed accept (out of
/// descriptors, `EMFILE`, is the likely cause) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// At most one log line about failing accepts this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);
/// How long a listener that stops (a drain, or a reload that removed it)
/// keeps accepting after it refused new connections: a handshake under way
/// whose last packet comes within this completes and is served; one that
/// comes later finds the listener closed and is reset. On loopback and a
/// LAN it takes microseconds to a millisecond.
const HANDSHAKE_LINGER: Duration = Duration::from_millis(100);

/// What a shard's thread does as it ends, however it ends: kept in a
/// thread-local, whose destructor runs as the thread exits, after a panic
/// that unwound through the executor too.
struct AtEnd {
    /// The shard's id, sent to the main thread ([`super::Server::ended`]).
    notice: Option<(usize, Sender<usize>)>,
    /// The listening sockets the shard's accept loops hold ([`Registered`]).
    /// Those still here as the thread ends were left open by a panic (glommio
    /// drops nothing of the tasks of an executor a panic unwound through),
    /// so they are shut down: the kernel then hands their share of new
    /// connections to the other shards' sockets instead of queueing them
    /// where nobody accepts.
    listening: Vec<RawFd>,
}

impl Drop for AtEnd {
    fn drop(&mut self) {
        for &fd in &self.listening {
            // SAFETY: shutdown takes no memory; `fd` is still open, as its
            // Listener was not dropped (that takes it out of the list
            // before the socket closes).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        if let Some((id, tx)) = self.notice.take() {
            let _ = tx.send(id);
        }
    }
}

thread_local! {
    static AT_END: std::cell::RefCell<AtEnd> = const {
        std::cell::RefCell::new(AtEnd { notice: None, listening: Vec::new() })
    };
}

/// Has shard `id`'s thread (the one calling this) send `id` on `tx` when
/// it ends.
pub(super) fn notify_end(id: usize, tx: Sender<usize>) {
    AT_END.with(|a| a.borrow_mut().notice = Some((id, tx)));
}

/// A listener in [`AtEnd`]'s list while it is open.
struct Registered(Listener);

impl Registered {
    fn new(l: Listener) -> Registered {
        AT_END.with(|a| a.borrow_mut().listening.push(l.as_raw_fd()));
        Registered(l)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let fd = self.0.as_raw_fd();
        // Gone only when the thread ends: then the list is gone too.
        let _ = AT_END.try_with(|a| a.borrow_mut().listening.retain(|&f| f != fd));
    }
}

impl std::ops::Deref for Registered {
    type Target = Listener;
    fn deref(&self) -> &Listener {
        &self.0
    }
}

/// A shard's channels to the threads outside it.
pub(super) struct Links {
    pub throttle: crate::policy::throttle::ShardLink,
    pub usage: crate::policy::usage::coordinator::ShardLink,
    /// One per access-log destination, in the plan's order.
    pub access_log: Vec<crate::accesslog::writer::Sink>,
    pub ws: WsLinks,
}

/// How the shard's inbox is reached by the other shards' WebSocket
/// `@connections` requests.
pub(super) struct WsLinks {
    /// Rung by a shard that put a command in this shard's inbox.
    pub bell: crate::gateway::websocket::Bell,
    /// Every shard's inbox and bell, by id.
    pub peers: Vec<crate::gateway::websocket::Peer>,
}

/// One of a shard's listening sockets, as the main thread bound it.
#[derive(Debug)]
pub struct ListenerFd {
    pub fd: OwnedFd,
    /// A `server.tls.listen` address.
    pub tls: bool,
    /// The address as configured (port 0 unresolved): what a reload
    /// compares to keep, add or remove the listener.
    pub configured: SocketAddr,
}

/// A new plan for a shard ([`super::Control::Install`]).
pub struct Install {
    pub plan: Plan,
    /// Listeners the plan adds.
    pub add: Vec<ListenerFd>,
    /// Listeners (configured address, TLS) the plan no longer has: they
    /// stop accepting, take what is in their backlog and close.
    pub remove: Vec<(SocketAddr, bool)>,
    /// A new throttle coordinator's link, when the runtime started one.
    pub throttle: Option<crate::policy::throttle::ShardLink>,
    /// New access-log writers' sinks, when the destinations changed.
    pub access_log: Option<Vec<crate::accesslog::writer::Sink>>,
    /// The installed generation's number, or why not.
    pub reply: Sender<Result<u64, String>>,
}

/// A running accept loop and the signal that stops it.
struct Accepting {
    configured: SocketAddr,
    tls: bool,
    stop: Rc<glommio::sync::Semaphore>,
    task: glommio::task::JoinHandle<()>,
}

/// Starts an accept loop on `l`.
fn start_accepting(
    shard: &Rc<Gateway>,
    l: ListenerFd,
    max_connections: usize,
) -> Result<Accepting, String> {
    let listener = Listener::from_fd(l.fd).map_err(|e| {
        format!(
            "shard {}: cannot watch listener {}: {e}",
            shard.id, l.configured
        )
    })?;
    let stop = Rc::new(glommio::sync::Semaphore::new(0));
    let task = glommio::spawn_local(accept_loop(
        shard.clone(),
        Registered::new(listener),
        l.tls,
        max_connections,
        stop.clone(),
    ))
    .detach();
    Ok(Accepting {
        configured: l.configured,
        tls: l.tls,
        stop,
        task,
    })
}

/// Where the shard's background work runs: with `background_shares`
/// (`[[server.shard]]`), a glommio task queue of its own with those
/// shares against the request path's 1000; without, the one queue
/// everything runs in. The control inbox stays on the request path's
/// queue: shutdown and installs must not wait behind background work.
struct Queues {
    background: Option<glommio::TaskQueueHandle>,
}

impl Queues {
    fn new(shares: Option<usize>) -> Queues {
        Queues {
            background: shares.map(|s| {
                glommio::executor().create_task_queue(
                    glommio::Shares::Static(s),
                    glommio::Latency::NotImportant,
                    "background",
                )
            }),
        }
    }

    /// Runs `f` as background work.
    fn background<T: 'static>(
        &self,
        f: impl std::future::Future<Output = T> + 'static,
    ) -> glommio::task::JoinHandle<T> {
        if let Some(q) = self.background {
            // Fails only for a queue that does not exist; this one lives
            // as long as the executor.
            match glommio::spawn_local_into(f, q) {
                Ok(t) => return t.detach(),
                Err(e) => {
                    // `f` is gone with the error: say so loudly.
                    crate::log!("error", "background task queue refused a task: {e}");
                    return glommio::spawn_local(futures_lite::future::pending::<T>()).detach();
                }
            }
        }
        glommio::spawn_local(f).detach()
    }
}

/// The shard's background tasks on a generation's policy state: replaced
/// when an install brings new state.
struct PolicyTasks {
    throttle: glommio::task::JoinHandle<()>,
    usage: glommio::task::JoinHandle<()>,
    auth_keys: glommio::task::JoinHandle<()>,
    policies: crate::policy::ShardPolicies,
}

impl PolicyTasks {
    fn start(queues: &Queues, policies: &crate::policy::ShardPolicies) -> PolicyTasks {
        PolicyTasks {
            throttle: queues.background(policies.throttle.reconciler()),
            usage: queues.background(policies.usage.reconciler()),
            auth_keys: queues.background(policies.auth.updater()),
            policies: policies.clone(),
        }
    }

    /// Restarts the tasks whose state `now` replaced.
    fn follow(&mut self, queues: &Queues, now: &crate::policy::ShardPolicies) {
        if !Rc::ptr_eq(&self.policies.throttle, &now.throttle) {
            self.throttle.cancel();
            self.throttle = queues.background(now.throttle.reconciler());
        }
        if !Rc::ptr_eq(&self.policies.usage, &now.usage) {
            self.usage.cancel();
            self.usage = queues.background(now.usage.reconciler());
        }
        if !Rc::ptr_eq(&self.policies.auth, &now.auth) {
            self.auth_keys.cancel();
            self.auth_keys = queues.background(now.auth.updater());
        }
        self.policies = now.clone();
    }

    fn cancel(self) {
        self.throttle.cancel();
        self.usage.cancel();
        self.auth_keys.cancel();
    }
}

/// The shard's main task: start accepting, then serve the control inbox
/// until told to stop, then drain.
pub(super) async fn run(
    id: usize,
    plan: Plan,
    fds: Vec<ListenerFd>,
    inbox: Receiver<Control>,
    ready: Sender<Result<(), String>>,
    links: Links,
) {
    let drain_timeout = plan.server.drain_timeout;
    let tuning = plan.server.shard.get(id);
    let max_connections =
        tuning.map_or(plan.server.max_connections_per_shard, |t| t.max_connections);
    let queues = Queues::new(tuning.and_then(|t| t.background_shares));
    let mut logs_access = !links.access_log.is_empty();
    let shard = Rc::new(Gateway::new(
        id,
        plan,
        links.throttle,
        links.usage,
        links.access_log,
    ));
    crate::gateway::websocket::set_peers(links.ws.peers);
    let bell = links.ws.bell;
    let mut accepting = Vec::new();
    for l in fds {
        match start_accepting(&shard, l, max_connections) {
            Ok(a) => accepting.push(a),
            Err(why) => {
                let _ = ready.send(Err(why));
                return;
            }
        }
    }
    let sweeper = queues.background(sweep_pools(shard.clone()));
    let mut tasks = PolicyTasks::start(&queues, &shard.generation().policies);
    let mut flusher = logs_access.then(|| queues.background(flush_access_log(shard.clone())));
    let _ = ready.send(Ok(()));

    // The control loop wakes only when rung: every sender rings the bell
    // after it put its message in (`runtime::Inbox::send`, and the other
    // shards' `@connections` requests), so an idle shard is not woken by a
    // timer to look at an empty inbox.
    loop {
        let next = match inbox.try_recv() {
            // The waker is left first, then the inbox looked at again, so
            // that a message sent in between (whose ring found no waker) is
            // not left waiting for the next ring.
            Err(TryRecvError::Empty) => {
                std::future::poll_fn(|cx| {
                    bell.arm(cx.waker());
                    match inbox.try_recv() {
                        Err(TryRecvError::Empty) => std::task::Poll::Pending,
                        got => std::task::Poll::Ready(got),
                    }
                })
                .await
            }
            got => got,
        };
        match next {
            Ok(Control::Shutdown) | Err(_) => break,
            Ok(Control::Snapshot(reply)) => {
                let _ = reply.send(shard.snapshot());
            }
            Ok(Control::Install(install)) => {
                let Install {
                    plan,
                    add,
                    remove,
                    throttle,
                    access_log,
                    reply,
                } = *install;
                accepting.retain(|a| {
                    let removed = remove.contains(&(a.configured, a.tls));
                    if removed {
                        a.stop.close();
                    }
                    !removed
                });
                let mut failed = None;
                for l in add {
                    match start_accepting(&shard, l, max_connections) {
                        Ok(a) => accepting.push(a),
                        Err(why) => failed = Some(why),
                    }
                }
                if let Some(sinks) = access_log {
                    // What the old buffers hold goes to the old writers
                    // now; the old generation's requests in flight write
                    // to its buffers still (accesslog::shard::Outs).
                    shard.access.log.flush(Instant::now());
                    logs_access = !sinks.is_empty();
                    shard.access.log.attach(sinks);
                    if logs_access && flusher.is_none() {
                        flusher = Some(queues.background(flush_access_log(shard.clone())));
                    }
                }
                let number = shard.install(plan, throttle);
                tasks.follow(&queues, &shard.generation().policies);
                let _ = reply.send(match failed {
                    None => Ok(number),
                    Some(why) => Err(why),
                });
            }
            Ok(Control::WebSocket(cmd)) => crate::gateway::websocket::command(cmd),
            #[cfg(test)]
            Ok(Control::Panic(why)) => panic!("{why}"),
        }
    }

    let deadline = Instant::now() + drain_timeout;
    shard.connections.begin_drain(deadline);
    for a in accepting {
        a.task.await;
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
    let usage = tasks.policies.usage.clone();
    tasks.cancel();
    // Usage admitted since the last tick reaches the store too.
    usage.final_report();
    if let Some(f) = flusher {
        f.cancel();
    }
    // The lines of the last requests reach the writers too.
    shard.access.log.close();
}

/// Hands the shard's access-log buffers to their writers every
/// FLUSH_EVERY, and reports dropped lines.
/// Hands the shard's access-log buffers to their writers every
/// `FLUSH_EVERY` while lines come; after a look that found nothing, sleeps
/// until the next line.
async fn flush_access_log(shard: Rc<Gateway>) {
    loop {
        glommio::timer::sleep(crate::accesslog::shard::FLUSH_EVERY).await;
        if !shard.access.log.flush(Instant::now()) {
            shard.access.log.idle().await;
        }
    }
}

/// Accepts on one listener; `tls` is set on a TLS listener. When draining
/// starts, or `stop` is closed (a reload removed the listener), refuses new
/// connections and takes the ones in the listener's backlog and those the
/// handshakes under way complete (which closing it would reset) for a
/// short linger ([`close_listener`]), then ends, closing the listener.
async fn accept_loop(
    shard: Rc<Gateway>,
    listener: Registered,
    tls: bool,
    max_connections: usize,
    stop: Rc<glommio::sync::Semaphore>,
) {
    let mut in_a_row = 0u32;
    let mut failures = AcceptFailures::default();
    loop {
        // A burst of new connections must not hold up the shard's other
        // work: accepts do not wait while the backlog has entries, so give
        // the task queue a turn every ACCEPT_BATCH of them.
        in_a_row += 1;
        if in_a_row >= ACCEPT_BATCH {
            in_a_row = 0;
            futures_lite::future::yield_now().await;
        }
        let accepted = futures_lite::future::or(
            async { Some(listener.accept().await) },
            futures_lite::future::or(
                async {
                    shard.connections().drained().await;
                    None
                },
                async {
                    let _ = stop.acquire(1).await;
                    None
                },
            ),
        )
        .await;
        let (stream, peer) = match accepted {
            None => {
                close_listener(&shard, &listener, tls, max_connections).await;
                return;
            }
            Some(Ok(s)) => {
                if failures.count > 0 {
                    failures.recovered(shard.id);
                }
                s
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning, and
                // log once a second, not once a try.
                failures.failed(shard.id, &e);
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        serve(&shard, stream, peer, tls, max_connections);
    }
}

/// Failed accepts in a row. Their lines, and the line saying accepts work
/// again, share one limit: at most one per ACCEPT_LOG_EVERY, however often
/// a listener at the descriptor limit flips between the two.
#[derive(Default)]
struct AcceptFailures {
    count: u64,
    logged: Option<Instant>,
}

impl AcceptFailures {
    /// Whether a line may be written now (and then it counts as written).
    fn may_log(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .logged
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY);
        if due {
            self.logged = Some(now);
        }
        due
    }

    fn failed(&mut self, shard: usize, e: &std::io::Error) {
        self.count += 1;
        if self.may_log() {
            crate::log!(
                "warn",
                "shard {shard}: accept failed: {e} ({} in a row; new connections wait in the listen backlog; retrying every {} ms, logged at most once a second)",
                self.count,
                ACCEPT_BACKOFF.as_millis()
            );
        }
    }

    fn recovered(&mut self, shard: usize) {
        if self.may_log() {
            crate::log!(
                "info",
                "shard {shard}: accepting again after {} failed accept(s)",
                self.count
            );
        }
        self.count = 0;
    }
}

/// Before a listener closes (a drain, or a reload that removed it): stops
/// new connections from starting ([`Listener::refuse_new`]), then for
/// [`HANDSHAKE_LINGER`] (no later than the drain's deadline) accepts what
/// is in the backlog and what the handshakes under way complete into it,
/// and serves each like any connection accepted while draining (see
/// [`crate::http::conn::Connections::begin_drain`]); the caller then drops
/// the listener. Only a handshake slower than the linger is reset by the
/// close.
async fn close_listener(
    shard: &Rc<Gateway>,
    listener: &Listener,
    tls: bool,
    max_connections: usize,
) {
    if let Err(e) = listener.refuse_new() {
        // Without the filter new connections keep joining the backlog
        // while it lingers; the ones after the last accept are reset.
        crate::log!(
            "warn",
            "shard {}: cannot stop new connections before closing a listener: {e}",
            shard.id
        );
    }
    let mut until = Instant::now() + HANDSHAKE_LINGER;
    if let Some(deadline) = shard.connections().drain_deadline() {
        until = until.min(deadline);
    }
    loop {
        take_backlog(shard, listener, tls, max_connections);
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        match accepted {
            Some(Ok((stream, peer))) => serve(shard, stream, peer, tls, max_connections),
            Some(Err(e)) => {
                crate::log!(
                    "warn",
                    "shard {}: accept failed while closing a listener: {e}",
                    shard.id
                );
                return;
            }
            None => {
                take_backlog(shard, listener, tls, max_connections);
                return;
            }
        }
    }
}

/// Accepts what is in the backlog without waiting, and serves it.
fn take_backlog(shard: &Rc<Gateway>, listener: &Listener, tls: bool, max_connections: usize) {
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

/// Starts serving an accepted connection on its own task; on a TLS
/// listener with the shard's current acceptor.
fn serve(
    shard: &Rc<Gateway>,
    stream: crate::net::Socket,
    peer: std::net::SocketAddr,
    tls: bool,
    max_connections: usize,
) {
    shard.metrics.note_accepted(tls);
    let over_limit = shard.connections.live() >= max_connections;
    let acceptor = if tls { shard.tls_acceptor() } else { None };
    match acceptor {
        // A TLS listener without TLS settings cannot happen (the plan that
        // has the listener has the settings); the connection is closed.
        None if tls => drop(stream),
        None => {
            glommio::spawn_local(crate::http::conn::serve(
                shard.clone(),
                stream,
                peer,
                over_limit,
            ))
            .detach();
        }
        Some(acceptor) => {
            // Its handshake is guarded too; the request loop after it is
            // guarded as every connection's is.
            glommio::spawn_local(crate::http::conn::guarded(
                "a TLS connection",
                crate::http::conn::serve_tls(shard.clone(), stream, peer, over_limit, acceptor),
            ))
            .detach();
        }
    }
}

async fn sweep_pools(shard: Rc<Gateway>) {
    loop {
        glommio::timer::sleep(POOL_SWEEP).await;
        shard.sweep_pools(Instant::now());
        // Spare upstream buffers no request took for a second are freed;
        // they and the memory the connections that ended since gave back
        // go back to the kernel.
        let spares = crate::integration::upstream::release_unused_spares();
        crate::http::conn::trim_if_freed(spares);
    }
}
