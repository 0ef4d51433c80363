//! Upstream targets as one shard sees them: which target takes the next
//! request (round robin, smooth weighted round robin, least outstanding),
//! which are cooling down after failures (passive health), and the pool of
//! idle keep-alive connections to each. All counters are per shard; shards
//! never coordinate on the request path. An https:// upstream's connections
//! are TLS ([`UpstreamStream`]); they are pooled and reused like plain ones.
//! A connection goes back to the pool only after a response that ended
//! cleanly with nothing past its end, and leaves it only if nothing has
//! arrived on it since ([`UpstreamState::checkout`]).

use crate::net::Socket;
use crate::tls::stream::{Stream, UpstreamStream};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Weighted,
    LeastOutstanding,
}

#[derive(Debug, Clone)]
pub struct TargetPlan {
    pub addr: SocketAddr,
    /// As written in config; the default Host header.
    pub label: String,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamPlan {
    pub name: String,
    pub targets: Vec<TargetPlan>,
    pub balance: Balance,
    pub host: Option<String>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_response_header_bytes: usize,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    pub health_max_failures: u32,
    pub health_cooldown: Duration,
    /// The roots of `tls_ca`, for https:// (else the system's).
    pub tls_ca: Option<std::sync::Arc<rustls::RootCertStore>>,
    /// Set when routes reach the upstream with https://.
    pub tls: Option<crate::tls::UpstreamTls>,
    /// `congestion_control`: set on each new connection before it
    /// connects; `None` leaves the host's default.
    pub congestion_control: Option<Box<str>>,
    /// Without `congestion_control`: what connections to a loopback
    /// target use instead of a pacing host default
    /// ([`crate::net::loopback_congestion_control`]); `None` keeps it.
    pub loopback_congestion_control: Option<&'static str>,
}

/// Response-side buffer of an upstream connection: heads are parsed from it
/// and body bytes are written to the client straight out of it.
pub const UPSTREAM_BUF: usize = 32 * 1024;

/// The most spare response buffers a shard keeps ([`SPARE`]): 2 MiB.
const SPARE_MAX: usize = 64;

/// This shard's spare response buffers. A connection set aside in a pool
/// gives its buffer here and one taken out of a pool (or newly opened)
/// takes one from here, so an idle pooled connection holds no buffer: a
/// pool of 256 idle connections held up to 8 MiB, touched or not, and how
/// much of it a burst had touched decided the gateway's idle memory. Under
/// load the same few buffers go round without a call to the allocator.
struct Spare {
    bufs: Vec<Vec<u8>>,
    /// A buffer was taken since the last [`release_unused_spares`].
    taken: bool,
}

thread_local! {
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            bufs: Vec::new(),
            taken: false,
        })
    };
}

/// A response buffer of [`UPSTREAM_BUF`] bytes: a spare one, or a new one.
fn take_buffer() -> Vec<u8> {
    SPARE
        .with(|s| {
            let mut s = s.borrow_mut();
            s.taken = true;
            s.bufs.pop()
        })
        .unwrap_or_else(|| vec![0; UPSTREAM_BUF])
}

/// Keeps `buf` as a spare, unless it is not of the usual size (a head
/// grew it) or [`SPARE_MAX`] are kept already; then it is freed.
fn give_buffer(buf: Vec<u8>) {
    if buf.len() == UPSTREAM_BUF {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.bufs.len() < SPARE_MAX {
                s.bufs.push(buf);
            }
        });
    }
}

/// Frees this shard's spare buffers if none was taken since the last call
/// (the pool sweep's, once a second): a shard that stopped proxying gives
/// them back. Returns whether any was freed.
pub fn release_unused_spares() -> bool {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        let unused = !std::mem::replace(&mut s.taken, false);
        if unused && !s.bufs.is_empty() {
            s.bufs = Vec::new();
            true
        } else {
            false
        }
    })
}

/// The spare buffers this shard keeps now.
pub fn spare_buffers() -> usize {
    SPARE.with(|s| s.borrow().bufs.len())
}

/// An open connection to one target.
pub struct UpConn {
    pub stream: UpstreamStream,
    pub buf: Vec<u8>,
    /// Valid bytes in `buf` while a response is read.
    pub filled: usize,
    pub target: usize,
    idle_since: Instant,
    /// The reactor's poll count when it went idle ([`Socket::polls`]).
    idle_mark: u64,
}

impl UpConn {
    pub fn new(stream: UpstreamStream, target: usize) -> UpConn {
        UpConn {
            stream,
            buf: take_buffer(),
            filled: 0,
            target,
            idle_since: Instant::now(),
            idle_mark: 0,
        }
    }

    /// Drops a response head of `len` bytes (a 1xx interim response) from
    /// the front of `buf`, keeping what followed it.
    pub fn drop_head(&mut self, len: usize) {
        let len = len.min(self.filled);
        self.buf.copy_within(len..self.filled, 0);
        self.filled -= len;
    }
}

struct TargetState {
    idle: RefCell<Vec<UpConn>>,
    outstanding: Cell<u32>,
    failures: Cell<u32>,
    down_until: Cell<Option<Instant>>,
    /// Smooth weighted round robin's running weight.
    current: Cell<i64>,
    /// For the metrics: new connections, failed attempts, pooled reuses.
    connects: Cell<u64>,
    connect_failures: Cell<u64>,
    reuses: Cell<u64>,
}

/// A target's figures for the metrics, as one shard sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetStats {
    pub connects: u64,
    pub connect_failures: u64,
    pub reuses: u64,
    pub in_flight: u64,
    pub idle: u64,
    /// Cooling down after failures.
    pub cooling: bool,
}

pub struct UpstreamState {
    targets: Vec<TargetState>,
    next: Cell<usize>,
    /// This shard's TLS connector (its own resumption store) and the name
    /// each target is verified against, for an https:// upstream.
    tls: Option<(
        futures_rustls::TlsConnector,
        Vec<rustls::pki_types::ServerName<'static>>,
    )>,
}

impl UpstreamState {
    pub fn new(plan: &UpstreamPlan) -> UpstreamState {
        UpstreamState {
            targets: plan
                .targets
                .iter()
                .map(|_| TargetState {
                    idle: RefCell::new(Vec::new()),
                    outstanding: Cell::new(0),
                    failures: Cell::new(0),
                    down_until: Cell::new(None),
                    current: Cell::new(0),
                    connects: Cell::new(0),
                    connect_failures: Cell::new(0),
                    reuses: Cell::new(0),
                })
                .collect(),
            next: Cell::new(0),
            tls: plan
                .tls
                .as_ref()
                .map(|t| (t.shard_connector(), t.server_names.clone())),
        }
    }

    fn healthy(&self, i: usize, now: Instant) -> bool {
        match self.targets[i].down_until.get() {
            Some(until) => now >= until,
            None => true,
        }
    }

    /// Chooses the target for the next request. Targets in cool-down are
    /// skipped; if all are cooling down, all are used (Envoy's panic mode),
    /// so a blip never black-holes an upstream.
    pub fn pick(&self, plan: &UpstreamPlan, now: Instant) -> usize {
        let n = self.targets.len();
        if n == 1 {
            return 0;
        }
        let any_healthy = (0..n).any(|i| self.healthy(i, now));
        let eligible = |i: usize| !any_healthy || self.healthy(i, now);
        match plan.balance {
            Balance::RoundRobin => {
                let start = self.next.get();
                for k in 0..n {
                    let i = (start + k) % n;
                    if eligible(i) {
                        self.next.set(i + 1);
                        return i;
                    }
                }
                0
            }
            Balance::Weighted => {
                // nginx's smooth weighted round robin.
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in (0..n).filter(|&i| eligible(i)) {
                    let t = &self.targets[i];
                    let w = plan.targets[i].weight as i64;
                    t.current.set(t.current.get() + w);
                    total += w;
                    if best.is_none_or(|b| t.current.get() > self.targets[b].current.get()) {
                        best = Some(i);
                    }
                }
                let b = best.unwrap_or(0);
                self.targets[b]
                    .current
                    .set(self.targets[b].current.get() - total);
                b
            }
            Balance::LeastOutstanding => {
                let start = self.next.get();
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !eligible(i) {
                        continue;
                    }
                    if best.is_none_or(|b| {
                        self.targets[i].outstanding.get() < self.targets[b].outstanding.get()
                    }) {
                        best = Some(i);
                    }
                }
                let b = best.unwrap_or(0);
                self.next.set(b + 1);
                b
            }
        }
    }

    /// Marks a request as in flight on `target` until the guard drops.
    pub fn begin(&self, target: usize) -> Outstanding<'_> {
        let t = &self.targets[target];
        t.outstanding.set(t.outstanding.get() + 1);
        Outstanding {
            state: self,
            target,
        }
    }

    /// An idle pooled connection to `target`, if one is fresh enough and
    /// quiet. An idle connection has nothing to say: one with a byte
    /// waiting (a body sent after a HEAD response, or anything else past
    /// the last response), an end of stream or an error is closed, as
    /// nginx's keepalive module does, and the next one tried. That check
    /// needs no syscall when the shard's reactor has polled since the
    /// connection went idle and heard nothing from it, else one
    /// non-blocking peek ([`Stream::is_quiet`]).
    ///
    /// Not `strict`, the newest connection the reactor has polled since it
    /// went idle is taken first, so that no peek is needed while there is
    /// one; the others are tried newest first.
    ///
    /// `strict` always peeks ([`Stream::is_quiet_now`]): for a request that
    /// is not sent again when the connection turns out closed (not
    /// idempotent, or with a body), so an upstream's close that arrived
    /// after the reactor's last poll (a backend reloading closes its idle
    /// keep-alive connections) is seen before the request goes out on it.
    pub fn checkout(
        &self,
        plan: &UpstreamPlan,
        target: usize,
        now: Instant,
        strict: bool,
    ) -> Option<UpConn> {
        let mut c = self.take_idle(plan, target, now, strict)?;
        c.buf = take_buffer();
        Some(c)
    }

    /// The idle connection [`UpstreamState::checkout`] hands out, still
    /// without its buffer.
    fn take_idle(
        &self,
        plan: &UpstreamPlan,
        target: usize,
        now: Instant,
        strict: bool,
    ) -> Option<UpConn> {
        let t = &self.targets[target];
        let mut idle = t.idle.borrow_mut();
        if !strict {
            // The newest idle connection was often set aside in this same
            // pass of the reactor (a response finished, another request
            // came): whether it is still quiet would take a `recv(MSG_PEEK)`
            // (0.2 per request at saturation). One set aside before the
            // reactor's last poll is known quiet without a syscall: take the
            // newest such one, if any.
            // One reactor per shard: every connection reads the same count.
            let polls = idle.last().map(|c| c.stream.tcp().polls());
            let polled = idle.iter().rposition(|c| Some(c.idle_mark) != polls);
            if let Some(i) = polled {
                // The newest itself needs no peek: the loop below takes it.
                if i + 1 < idle.len() {
                    let c = idle.remove(i);
                    if now.duration_since(c.idle_since) < plan.pool_idle_timeout
                        && c.stream.is_quiet(c.idle_mark)
                    {
                        t.reuses.set(t.reuses.get() + 1);
                        return Some(c);
                    }
                }
            }
        }
        while let Some(c) = idle.pop() {
            let fresh = now.duration_since(c.idle_since) < plan.pool_idle_timeout;
            if fresh
                && if strict {
                    c.stream.is_quiet_now()
                } else {
                    c.stream.is_quiet(c.idle_mark)
                }
            {
                t.reuses.set(t.reuses.get() + 1);
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection that finished a response cleanly to the pool.
    pub fn checkin(&self, plan: &UpstreamPlan, mut conn: UpConn) {
        conn.stream.tcp().forget_wakers();
        let mut idle = self.targets[conn.target].idle.borrow_mut();
        if idle.len() < plan.pool_max_idle {
            conn.idle_since = Instant::now();
            conn.idle_mark = conn.stream.tcp().polls();
            conn.filled = 0;
            give_buffer(std::mem::take(&mut conn.buf));
            idle.push(conn);
        }
    }

    /// Counts a connection attempt to `target` for the metrics. Called by
    /// the callers of [`UpstreamState::connect`] with its result, rather
    /// than inside it, so that the connect future (kept in every proxied
    /// request's state) does not grow.
    #[inline]
    pub fn note_connect(&self, target: usize, ok: bool) {
        if let Some(t) = self.targets.get(target) {
            let c = if ok { &t.connects } else { &t.connect_failures };
            c.set(c.get() + 1);
        }
    }

    /// Opens a new connection to `target`: TCP, and for an https://
    /// upstream the TLS handshake, both within the connect timeout. The
    /// caller counts the attempt ([`UpstreamState::note_connect`]).
    pub async fn connect(&self, plan: &UpstreamPlan, target: usize) -> std::io::Result<UpConn> {
        let addr = plan.targets[target].addr;
        let started = Instant::now();
        let congestion_control = match &plan.congestion_control {
            Some(name) => Some(&**name),
            None if crate::net::is_loopback(&addr) => plan.loopback_congestion_control,
            None => None,
        };
        let stream = Socket::connect_with(addr, plan.connect_timeout, congestion_control).await?;
        let _ = stream.set_nodelay(true);
        stream.set_write_timeout(Some(plan.timeout));
        let Some((connector, names)) = &self.tls else {
            return Ok(UpConn::new(Stream::Plain(stream), target));
        };
        let left = plan
            .connect_timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left));
        let name = names[target].clone();
        let shown = name.to_str().into_owned();
        let handshake = async { Some(connector.connect(name, stream).await) };
        let timeout = async {
            glommio::timer::sleep(left).await;
            None
        };
        match futures_lite::future::or(handshake, timeout).await {
            Some(Ok(tls)) => Ok(UpConn::new(Stream::Tls(Box::new(tls)), target)),
            Some(Err(e)) => Err(std::io::Error::new(
                e.kind(),
                format!("TLS handshake (server name {shown:?}) failed: {e}"),
            )),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "TLS handshake (server name {shown:?}) not done within connect_timeout_ms ({} ms)",
                    plan.connect_timeout.as_millis()
                ),
            )),
        }
    }

    pub fn record_success(&self, target: usize) {
        let t = &self.targets[target];
        t.failures.set(0);
        t.down_until.set(None);
    }

    /// Counts a failure; at `max_failures` in a row the target cools down.
    /// Returns true when this failure started a cool-down.
    pub fn record_failure(&self, plan: &UpstreamPlan, target: usize, now: Instant) -> bool {
        let t = &self.targets[target];
        let f = t.failures.get() + 1;
        t.failures.set(f);
        if plan.health_max_failures > 0
            && f >= plan.health_max_failures
            && self.healthy(target, now)
        {
            t.down_until.set(Some(now + plan.health_cooldown));
            t.failures.set(0);
            return true;
        }
        false
    }

    /// Closes idle connections past the pool's idle timeout.
    pub fn sweep(&self, plan: &UpstreamPlan, now: Instant) {
        for t in &self.targets {
            t.idle
                .borrow_mut()
                .retain(|c| now.duration_since(c.idle_since) < plan.pool_idle_timeout);
        }
    }

    /// The target's figures for the metrics.
    pub fn target_stats(&self, target: usize, now: Instant) -> TargetStats {
        let Some(t) = self.targets.get(target) else {
            return TargetStats::default();
        };
        TargetStats {
            connects: t.connects.get(),
            connect_failures: t.connect_failures.get(),
            reuses: t.reuses.get(),
            in_flight: u64::from(t.outstanding.get()),
            idle: t.idle.borrow().len() as u64,
            cooling: !self.healthy(target, now),
        }
    }

    pub fn cooldown_left(&self, target: usize, now: Instant) -> Option<Duration> {
        self.targets[target]
            .down_until
            .get()
            .and_then(|u| u.checked_duration_since(now))
    }
}

/// Decrements a target's in-flight count when a request is done with it.
pub struct Outstanding<'a> {
    state: &'a UpstreamState,
    target: usize,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let t = &self.state.targets[self.target];
        t.outstanding.set(t.outstanding.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    //! Test code only: every `unwrap()` here is on a fixture the test builds
    //! (loopback listeners, connections, the executor).

    use super::*;
    use std::os::fd::AsRawFd;

    fn plan(addr: SocketAddr) -> UpstreamPlan {
        UpstreamPlan {
            name: "t".into(),
            targets: vec![TargetPlan {
                addr,
                label: addr.to_string(),
                weight: 1,
            }],
            balance: Balance::RoundRobin,
            host: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            max_response_header_bytes: 8192,
            pool_max_idle: 8,
            pool_idle_timeout: Duration::from_secs(60),
            health_max_failures: 0,
            health_cooldown: Duration::from_secs(1),
            tls_ca: None,
            tls: None,
            congestion_control: None,
            loopback_congestion_control: None,
        }
    }

    /// Runs `test` on a glommio executor with a loopback listener standing
    /// for the target, and an upstream plan with that one target.
    fn on_a_target<F, Fut>(test: F)
    where
        F: FnOnce(std::net::TcpListener, UpstreamPlan) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        // The executor and the listener are the test's own fixtures.
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .unwrap()
            .run(async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let plan = plan(l.local_addr().unwrap());
                test(l, plan).await
            });
    }

    /// Until the shard's reactor has polled since `mark` (asked through the
    /// first idle connection of `state`'s target 0).
    async fn polled_since(state: &UpstreamState, mark: u64) {
        for _ in 0..1000 {
            let polls = state.targets[0].idle.borrow()[0].stream.tcp().polls();
            if polls != mark {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        panic!("the reactor never polled");
    }

    /// Two idle connections, one set aside before the reactor's last poll
    /// and one after: a request that may be sent again takes the first
    /// (known quiet, no peek) although it is older; one that may not takes
    /// the newest and peeks. An older one that was closed meanwhile is
    /// skipped, never handed out.
    #[test]
    fn a_connection_polled_since_it_went_idle_is_preferred() {
        on_a_target(|l, plan| async move {
            let state = UpstreamState::new(&plan);
            let older = state.connect(&plan, 0).await.unwrap();
            let (older_peer, _) = l.accept().unwrap();
            let newer = state.connect(&plan, 0).await.unwrap();
            let (_newer_peer, _) = l.accept().unwrap();
            let (older_fd, newer_fd) = (
                older.stream.tcp().as_raw_fd(),
                newer.stream.tcp().as_raw_fd(),
            );

            let mark = older.stream.tcp().polls();
            state.checkin(&plan, older);
            polled_since(&state, mark).await;
            state.checkin(&plan, newer);
            let now = Instant::now();
            let c = state.checkout(&plan, 0, now, false).unwrap();
            assert_eq!(c.stream.tcp().as_raw_fd(), older_fd, "the polled one");
            state.checkin(&plan, c);
            // Now the newest was set aside in this pass: strict takes it.
            let c = state.checkout(&plan, 0, now, true).unwrap();
            assert_eq!(c.stream.tcp().as_raw_fd(), older_fd, "strict: the newest");
            state.checkin(&plan, c);

            // The older one closed by its peer once the reactor has
            // heard of it: skipped, and closed.
            let (a, b) = (
                state.checkout(&plan, 0, now, true).unwrap(),
                state.checkout(&plan, 0, now, true).unwrap(),
            );
            assert_eq!(b.stream.tcp().as_raw_fd(), newer_fd);
            let mark = a.stream.tcp().polls();
            state.checkin(&plan, b);
            state.checkin(&plan, a);
            drop(older_peer);
            std::thread::sleep(Duration::from_millis(20));
            polled_since(&state, mark).await;
            let c = state.checkout(&plan, 0, now, false).unwrap();
            assert_eq!(
                c.stream.tcp().as_raw_fd(),
                newer_fd,
                "the closed one skipped"
            );
            assert!(state.checkout(&plan, 0, now, false).is_none());
        });
    }

    /// A pooled connection holds no response buffer: it gives it to the
    /// shard's spares when set aside and takes one back when handed out,
    /// so the same buffer goes round; spares no request took for a sweep
    /// interval are freed, and at most SPARE_MAX are kept.
    #[test]
    fn a_pooled_connection_holds_no_buffer() {
        // Its unwraps are on the test's own loopback listener and the
        // connections to it: a failure there fails the test.
        on_a_target(|l, plan| async move {
            let state = UpstreamState::new(&plan);
            release_unused_spares();
            release_unused_spares();
            assert_eq!(spare_buffers(), 0);

            let c = state.connect(&plan, 0).await.unwrap();
            let _peer = l.accept().unwrap();
            assert_eq!(c.buf.len(), UPSTREAM_BUF);
            let ptr = c.buf.as_ptr();
            state.checkin(&plan, c);
            assert_eq!(
                state.targets[0].idle.borrow()[0].buf.capacity(),
                0,
                "the pooled one holds none"
            );
            assert_eq!(spare_buffers(), 1);

            let c = state.checkout(&plan, 0, Instant::now(), true).unwrap();
            assert_eq!(c.buf.len(), UPSTREAM_BUF);
            assert_eq!(c.buf.as_ptr(), ptr, "the same buffer went round");
            assert_eq!(spare_buffers(), 0);
            state.checkin(&plan, c);

            // Taken since the last sweep: kept; untouched for one: freed.
            assert!(!release_unused_spares());
            assert_eq!(spare_buffers(), 1);
            assert!(release_unused_spares());
            assert_eq!(spare_buffers(), 0);

            // A buffer a long head grew is not kept; nor are more than
            // SPARE_MAX.
            let mut c = state.checkout(&plan, 0, Instant::now(), true).unwrap();
            c.buf.resize(2 * UPSTREAM_BUF, 0);
            state.checkin(&plan, c);
            assert_eq!(spare_buffers(), 0);
            for _ in 0..SPARE_MAX + 3 {
                give_buffer(vec![0; UPSTREAM_BUF]);
            }
            assert_eq!(spare_buffers(), SPARE_MAX);
            assert!(!release_unused_spares(), "one was taken since");
            assert!(release_unused_spares());
        });
    }
}
