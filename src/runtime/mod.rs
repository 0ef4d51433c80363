//! Shards: where a request's journey starts. One glommio executor per shard,
//! pinned to its CPU, each with its own listening socket on every configured
//! address (SO_REUSEPORT), its own copy of the plan, upstream pools and
//! counters, and a crossbeam control inbox. The main thread only starts shards,
//! forwards signals into their inboxes and waits for them to finish.

pub mod requests;
pub mod shard;

use crate::plan::Plan;
use crossbeam_channel::{Receiver, Select, Sender};
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Messages a shard accepts on its control inbox.
pub enum Control {
    /// Stop accepting, close idle connections, let in-flight requests finish
    /// within the drain timeout, then stop.
    Shutdown,
    /// Send what the shard has counted (the admin listener's scrape).
    Snapshot(Sender<crate::observe::snapshot::ShardSnapshot>),
    /// Serve a reloaded plan ([`Server::reload`]).
    Install(Box<shard::Install>),
    /// An `@connections` request for a WebSocket connection this shard
    /// holds (the admin listener's push, describe or close).
    WebSocket(crate::gateway::websocket::Command),
    /// Panic in the shard's control loop, outside any connection task:
    /// the tests' way to stop a shard as a bug would.
    #[cfg(test)]
    Panic(&'static str),
}

/// One shard's control inbox as the threads outside it reach it: a message
/// is put in the channel, then the shard's bell is rung, so that a shard
/// asleep (its control loop waits on the bell, with no timer) takes it at
/// once. Every sender outside the shards goes through [`Inbox::send`]. A
/// dropped one rings too, after its sender is gone, so that the shard also
/// sees the channel disconnect when the last one goes.
#[derive(Clone)]
pub struct Inbox {
    /// Always Some until dropped.
    tx: Option<Sender<Control>>,
    bell: crate::gateway::websocket::Bell,
}

impl Inbox {
    fn new(tx: Sender<Control>, bell: crate::gateway::websocket::Bell) -> Inbox {
        Inbox { tx: Some(tx), bell }
    }

    /// Puts `c` in the shard's inbox and wakes the shard; `Err` gives `c`
    /// back when the shard is gone.
    pub fn send(&self, c: Control) -> Result<(), crossbeam_channel::SendError<Control>> {
        let sent = match &self.tx {
            Some(tx) => tx.send(c),
            None => Err(crossbeam_channel::SendError(c)),
        };
        self.bell.ring();
        sent
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.bell.ring();
    }
}

/// A running gateway: its shards and their inboxes.
pub struct Server {
    /// Each shard's executor, with the shard's id.
    handles: Vec<(usize, glommio::ExecutorJoinHandle<()>)>,
    /// The id of each shard whose thread has ended ([`Server::ended`]).
    ended: Receiver<usize>,
    inboxes: Vec<Inbox>,
    /// The bound address for each `listen` entry (port 0 resolved).
    pub local_addrs: Vec<SocketAddr>,
    /// The bound address for each `server.tls.listen` entry.
    pub tls_addrs: Vec<SocketAddr>,
    /// The usage coordinator, joined after the shards for its last flush.
    usage: crate::policy::usage::coordinator::Running,
    /// Where a reload tells the usage coordinator of added keys; dropped
    /// before it is joined (it stops when every sender is gone).
    usage_tx: Option<Sender<crate::policy::usage::coordinator::ToCoordinator>>,
    /// The access-log writers, finished after the shards.
    access_log: Option<crate::accesslog::writer::Writers>,
    /// The plan the shards serve (the last one installed), and its
    /// generation number.
    plan: Option<Plan>,
    generation: u64,
    /// Each listen entry (configured address, TLS) with its bound address.
    bound: Vec<((SocketAddr, bool), SocketAddr)>,
    /// Where a successful reload hands the admin listener its `[admin.tls]`
    /// as compiled again (renewed certificate files); set by
    /// [`Server::send_admin_tls_to`].
    admin_tls: Option<Sender<crate::plan::admin::AdminTls>>,
}

/// A request from the admin listener's threads to the main thread, which
/// owns the [`Server`]; it answers on `reply`.
pub enum MainRequest {
    /// Reload the config file; with `text`, install that config and, once
    /// every shard serves it, write it to the config file (atomically).
    Reload {
        /// Who asks, for the error log (`admin client 127.0.0.1:50312`).
        who: String,
        text: Option<String>,
        reply: Sender<Result<u64, Vec<String>>>,
    },
    /// Edit the running config's text with `edit` and install the result
    /// as `Reload` with a `text` does (and write it to the config file).
    /// The edit is made here, on the text the shards serve at that moment,
    /// so two edits asked at once both take effect, one after the other.
    /// `reply` gets the edit's own refusal (`Err`), or the reload's answer.
    Edit {
        who: String,
        edit: ConfigEdit,
        reply: Sender<Result<Result<u64, Vec<String>>, String>>,
    },
    /// The running config.
    Running { reply: Sender<Running> },
    /// Change the API keys file (`keys` says how) and reload; the file is
    /// put back as it was when the reload is refused.
    Keys {
        who: String,
        change: KeyChange,
        reply: Sender<Result<KeyAnswer, Vec<String>>>,
    },
    /// A signal arrived: the main thread looks at its signal flags.
    Signal,
}

/// An edit of the config's text (a canary's share, promotion or
/// rollback): the new text, or why the edit cannot be made.
pub type ConfigEdit = Box<dyn FnOnce(&str) -> Result<String, String> + Send>;

/// What the admin API may do to the API keys file.
#[derive(Debug, Clone)]
pub enum KeyChange {
    Create {
        name: String,
        usage_plan: Option<String>,
    },
    Enable(String),
    Disable(String),
    /// Remove the key from the file.
    Revoke(String),
}

/// A key change's answer: the generation serving it, and for a created
/// key, the key (shown this once).
#[derive(Debug, Clone)]
pub struct KeyAnswer {
    pub generation: u64,
    /// (key id, the key itself).
    pub created: Option<(String, String)>,
    /// Empty when every shard serves the change. When the reload reached
    /// only some shards: its errors, starting with [`PARTLY`]; the change
    /// is in the keys file and serves on the shards that installed it.
    pub partly: Vec<String>,
}

/// The config the shards serve, as the main thread knows it.
#[derive(Clone)]
pub struct Running {
    pub generation: u64,
    /// The config file.
    pub path: std::path::PathBuf,
    /// The text that compiled into the running plan.
    pub text: String,
    pub plan: Plan,
    /// Each listen address (plain, then TLS) as bound: (address, TLS).
    pub listeners: Vec<(SocketAddr, bool)>,
}

/// The refusal of a reload asked for while the gateway drains.
pub const STOPPING: &str = "coregate is stopping: no reload";

/// The first error of a reload that did not reach every shard, though
/// the shards that answered installed it: the new plan is the server's
/// (its generation, `GET /config`, the file), and the errors after this
/// one say which shards failed.
pub const PARTLY: &str = "the new config serves, but not on every shard";

/// How long a reload waits for every shard to install the new plan. A
/// shard takes a message from its inbox as soon as it is rung; one that
/// does not answer within this is stuck or stopping.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings a reload cannot change, each with why; empty when `new` may
/// be installed over `old`.
pub fn restart_only(old: &Plan, new: &Plan) -> Vec<String> {
    let mut errors = Vec::new();
    let mut check = |key: &str, a: String, b: String| {
        if a != b {
            errors.push(format!(
                "{key}: changed from {a} to {b}, but it takes effect only when coregate \
                 starts; restart coregate to change it (nothing was reloaded)"
            ));
        }
    };
    let (o, n) = (&old.server, &new.server);
    check("server.shards", o.shards.to_string(), n.shards.to_string());
    let per_shard = crate::plan::shards::start_only(o, n);
    // A shard's `cpu` moves server.cpus too: said once, under its name.
    if !per_shard.iter().any(|(k, _, _)| k.ends_with(".cpu")) {
        check(
            "server.cpus",
            format!("{:?}", o.cpus),
            format!("{:?}", n.cpus),
        );
    }
    for (key, a, b) in per_shard {
        check(&key, a, b);
    }
    check(
        "server.pin_shards",
        o.pin_shards.to_string(),
        n.pin_shards.to_string(),
    );
    check(
        "server.max_connections_per_shard",
        o.max_connections_per_shard.to_string(),
        n.max_connections_per_shard.to_string(),
    );
    check(
        "server.drain_timeout_ms",
        o.drain_timeout.as_millis().to_string(),
        n.drain_timeout.as_millis().to_string(),
    );
    check(
        "admin.listen",
        format!("{:?}", old.admin.listen),
        format!("{:?}", new.admin.listen),
    );
    check(
        "portal.listen",
        format!("{:?}", old.portal.listen),
        format!("{:?}", new.portal.listen),
    );
    if old.admin.token != new.admin.token {
        errors.push(
            "admin.token_file: the admin token changed, but the admin listener reads it only \
             when coregate starts; restart coregate to change it (nothing was reloaded)"
                .to_string(),
        );
    }
    if old.admin.tls.as_ref().map(|t| &t.raw) != new.admin.tls.as_ref().map(|t| &t.raw) {
        errors.push(
            "admin.tls: the admin listener's TLS settings changed, but it reads them only \
             when coregate starts; restart coregate to change them (nothing was reloaded)"
                .to_string(),
        );
    }
    let (u, v) = (&old.policies.usage, &new.policies.usage);
    if !u.same_state(v) && !u.extends_to(v) {
        errors.push(
            "usage_plans: an API key was removed or moved, a key's plan, a plan's name or \
             quota, or the usage store changed; usage counters and quota leases carry over \
             only when these are unchanged (keys may be added at the end), so this needs a \
             restart (nothing was reloaded)"
                .to_string(),
        );
    }
    errors
}

/// Every shard as one shard reaches it for WebSocket `@connections`
/// requests: a command into its inbox, and its bell.
fn peers(
    txs: &[Sender<Control>],
    bells: &[crate::gateway::websocket::Bell],
) -> Vec<crate::gateway::websocket::Peer> {
    txs.iter()
        .zip(bells)
        .map(|(tx, bell)| {
            let tx = tx.clone();
            crate::gateway::websocket::Peer {
                send: Box::new(move |cmd| tx.send(Control::WebSocket(cmd)).is_ok()),
                bell: bell.clone(),
            }
        })
        .collect()
}

fn domain_of(addr: SocketAddr) -> Domain {
    if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    }
}

fn listener_socket(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let sock = Socket::new(domain_of(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(sock)
}

/// Fails with `AddrInUse` when some socket already listens on `addr` (or
/// on a wildcard address with its port). With SO_REUSEPORT on every shard
/// socket, our own bind would succeed beside another coregate's listeners
/// (same user) and the kernel would split new connections between the two
/// processes. A probe without SO_REUSEPORT conflicts with any listener there;
/// SO_REUSEADDR keeps TIME_WAIT and closing connections of an earlier run
/// from counting. The probe is closed again before our sockets bind, so two
/// gateways started in the same instant could both pass.
fn probe_free(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(domain_of(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into())
}

/// The error for a listen address `addr` that cannot be bound; `shared`
/// is `server.share_listen_addresses`.
fn listen_error(addr: SocketAddr, shared: bool, e: io::Error) -> io::Error {
    let why = match e.kind() {
        io::ErrorKind::AddrInUse if shared => "address in use: another process listens on it \
             and does not share it (sharing needs SO_REUSEPORT on both sockets and the same \
             user)"
            .to_string(),
        io::ErrorKind::AddrInUse => "address in use: another process already listens on it \
             (or on a wildcard address with the same port). Stop it or choose another address; \
             to share the address with another coregate on purpose (a zero-downtime upgrade), \
             set server.share_listen_addresses = true"
            .to_string(),
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {why}"))
}

/// Every listen address of `plan`, plain then TLS: (address, is TLS).
fn listen_addresses(plan: &Plan) -> Vec<(SocketAddr, bool)> {
    let tls_listen = plan.server.tls.iter().flat_map(|t| &t.listen);
    plan.server
        .listen
        .iter()
        .map(|&a| (a, false))
        .chain(tls_listen.map(|&a| (a, true)))
        .collect()
}

/// Binds one socket per shard for each of `all` (address, is TLS), for
/// the shards that serve it (`[[server.shard]]` `listeners`). Port 0 is
/// resolved by the first bind and reused by the others so every shard
/// serves the same port. Returns each shard's sockets and the bound
/// address of each entry of `all`. Unless `server.share_listen_addresses`
/// is set, every address with a fixed port is first checked to be free
/// ([`probe_free`]), all of them before any of ours is bound, except those
/// in `held`: addresses this gateway listens on itself (a reload that
/// moves an address from plain HTTP to TLS, or back, binds the new socket
/// beside its own old one, which the shards then close).
#[allow(clippy::type_complexity)]
fn bind_all(
    plan: &Plan,
    all: &[(SocketAddr, bool)],
    held: &[SocketAddr],
) -> io::Result<(Vec<Vec<shard::ListenerFd>>, Vec<SocketAddr>)> {
    let mut per_shard: Vec<Vec<shard::ListenerFd>> =
        (0..plan.server.shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    if !plan.server.share_listen_addresses {
        // Port 0 needs no probe: the kernel picks a port nobody listens on.
        for &(addr, _) in all
            .iter()
            .filter(|(a, _)| a.port() != 0 && !held.contains(a))
        {
            probe_free(addr).map_err(|e| listen_error(addr, false, e))?;
        }
    }
    for &(want, tls) in all {
        let mut addr = want;
        let mut first = true;
        for (i, shard_socks) in per_shard.iter_mut().enumerate() {
            // A shard whose `listeners` leaves this one out gets no socket:
            // the kernel spreads its connections over the shards that do.
            if plan
                .server
                .shard
                .get(i)
                .is_some_and(|s| !s.serves(want, tls))
            {
                continue;
            }
            let sock = listener_socket(addr, plan.server.backlog)
                .map_err(|e| listen_error(addr, plan.server.share_listen_addresses, e))?;
            if std::mem::take(&mut first) {
                addr = sock
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("listener has no IP address"))?;
                bound.push(addr);
            }
            shard_socks.push(shard::ListenerFd {
                fd: std::os::fd::OwnedFd::from(sock),
                tls,
                configured: want,
            });
        }
        if first {
            // The plan's compile refuses this; a listener bound by no
            // shard would take connections nobody accepts.
            return Err(io::Error::other(format!(
                "no shard serves the listener {want}"
            )));
        }
    }
    Ok((per_shard, bound))
}

impl Server {
    /// Binds every listener and starts every shard. Returns once all shards
    /// are accepting, or with the first shard's reason for not starting.
    pub fn start(plan: Plan) -> io::Result<Server> {
        let all = listen_addresses(&plan);
        let (fds, bound) = bind_all(&plan, &all, &[])?;
        let (mut local_addrs, mut tls_addrs) = (Vec::new(), Vec::new());
        let bound_all = bound.clone();
        for (&(_, tls), addr) in all.iter().zip(bound) {
            if tls {
                tls_addrs.push(addr);
            } else {
                local_addrs.push(addr);
            }
        }
        let mut handles = Vec::new();
        let mut inboxes = Vec::new();
        // One per shard: a disconnected one says which shard ended unready.
        let mut readies = Vec::new();
        let mut fds_iter = fds.into_iter();
        // Access-log files open before any shard runs: one that cannot be
        // opened stops the start.
        let writers = crate::accesslog::writer::Writers::start(&plan.access_log.destinations)?;
        // The usage store opens first: an unreadable one stops the start.
        let (usage_links, usage) =
            crate::policy::usage::coordinator::start(&plan.policies.usage, plan.server.shards)
                .map_err(io::Error::other)?;
        let usage_tx = usage_links.first().and_then(|l| l.to_coordinator.clone());
        let mut usage_links = usage_links.into_iter();
        let mut links =
            crate::policy::throttle::links(&plan.policies.throttle, plan.server.shards).into_iter();
        // Every inbox exists before any shard runs: a shard reaches the
        // others' for WebSocket `@connections` requests.
        let (txs, rxs): (Vec<Sender<Control>>, Vec<Receiver<Control>>) = (0..plan.server.shards)
            .map(|_| crossbeam_channel::unbounded())
            .unzip();
        let bells: Vec<crate::gateway::websocket::Bell> = (0..plan.server.shards)
            .map(|_| Default::default())
            .collect();
        let mut rxs = rxs.into_iter();
        let (ended_tx, ended) = crossbeam_channel::unbounded();
        for id in 0..plan.server.shards {
            let shard_fds = fds_iter.next().unwrap_or_default();
            let (Some(link), Some(usage_link), Some(rx)) =
                (links.next(), usage_links.next(), rxs.next())
            else {
                return Err(io::Error::other("throttle links: one per shard expected"));
            };
            let tx = txs[id].clone();
            let ws = shard::WsLinks {
                bell: bells[id].clone(),
                peers: peers(&txs, &bells),
            };
            let shard_plan = plan.clone();
            let sinks = writers.sinks.clone();
            let (ready, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
            let cpu = plan.server.cpus[id];
            let placement = if plan.server.pin_shards {
                Placement::Fixed(cpu)
            } else {
                Placement::Unbound
            };
            let tuning = plan.server.shard.get(id).cloned().unwrap_or_else(|| {
                crate::plan::shards::ShardPlan::default_for(plan.server.max_connections_per_shard)
            });
            let mut builder = LocalExecutorBuilder::new(placement)
                .name(&format!("coregate-shard-{id}"))
                .io_memory(tuning.io_memory)
                .ring_depth(tuning.ring_depth.max(1))
                .preempt_timer(tuning.preempt_timer);
            if !tuning.spin_before_park.is_zero() {
                builder = builder.spin_before_park(tuning.spin_before_park);
            }
            let epoll_sleep = tuning.epoll_sleep;
            let timer_slack = tuning.timer_slack;
            let io_mode = tuning.io;
            let ended_tx = ended_tx.clone();
            let spawned = builder.spawn(move || async move {
                shard::notify_end(id, ended_tx);
                crate::log::set_shard(id);
                crate::net::set_epoll_sleep(epoll_sleep);
                crate::net::uring::set_io_mode(io_mode);
                if let Err(e) = crate::net::set_sleep_slack(timer_slack) {
                    // The shard still works; its epoll sleeps then program
                    // the timer hardware (more CPU under light load).
                    crate::log!(
                        "warn",
                        "shard {id}: cannot set the timer slack of its epoll sleep: {e}"
                    );
                }
                let links = shard::Links {
                    throttle: link,
                    usage: usage_link,
                    access_log: sinks,
                    ws,
                };
                shard::run(id, shard_plan, shard_fds, rx, ready, links).await;
            });
            match spawned {
                Ok(h) => {
                    handles.push((id, h));
                    inboxes.push(Inbox::new(tx, bells[id].clone()));
                    readies.push(ready_rx);
                }
                Err(e) => {
                    drop(usage_links);
                    let server = Server {
                        handles,
                        ended,
                        inboxes,
                        local_addrs,
                        tls_addrs,
                        usage,
                        usage_tx: None,
                        access_log: Some(writers),
                        plan: None,
                        generation: 0,
                        bound: Vec::new(),
                        admin_tls: None,
                    };
                    server.shutdown();
                    server.join();
                    return Err(io::Error::other(format!(
                        "cannot start shard {id} on CPU {cpu}: {e}"
                    )));
                }
            }
        }
        let cpus = plan.server.cpus.clone();
        let server = Server {
            handles,
            ended,
            inboxes,
            local_addrs,
            tls_addrs,
            usage,
            usage_tx,
            access_log: Some(writers),
            plan: Some(plan),
            generation: 1,
            bound: all.into_iter().zip(bound_all).collect(),
            admin_tls: None,
        };
        wait_ready(server, &readies, &cpus)
    }

    /// The generation the shards serve: 1 for the plan they started with,
    /// then one more per reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Installs `plan` in every shard and returns its generation number,
    /// once every shard serves it; requests in flight finish on the plan
    /// they started with. Listeners whose address is unchanged keep their
    /// sockets; added ones are bound here first (a failure refuses the
    /// reload) and removed ones stop accepting and close. Refused, with
    /// every reason and nothing changed, when `plan` changes a setting that
    /// applies only at start ([`restart_only`]). When a shard is not
    /// running, or does not answer in time, the others serve `plan`
    /// anyway: it becomes the server's plan and generation, and the
    /// errors start with [`PARTLY`].
    pub fn reload(&mut self, plan: Plan) -> Result<u64, Vec<String>> {
        let Some(old) = &self.plan else {
            return Err(vec!["the gateway is not serving".to_string()]);
        };
        let errors = restart_only(old, &plan);
        if !errors.is_empty() {
            return Err(errors);
        }
        let old_all = listen_addresses(old);
        let new_all = listen_addresses(&plan);
        let added: Vec<(SocketAddr, bool)> = new_all
            .iter()
            .filter(|a| !old_all.contains(a))
            .copied()
            .collect();
        let removed: Vec<(SocketAddr, bool)> = old_all
            .iter()
            .filter(|a| !new_all.contains(a))
            .copied()
            .collect();
        // An address that only changes between plain HTTP and TLS is held
        // by this gateway: no other process is there to be found.
        let held: Vec<SocketAddr> = old_all.iter().map(|&(a, _)| a).collect();
        let (fds, bound) = bind_all(&plan, &added, &held).map_err(|e| vec![e.to_string()])?;
        let writers = if plan.access_log.destinations != old.access_log.destinations {
            Some(
                crate::accesslog::writer::Writers::start_reusing(
                    &plan.access_log.destinations,
                    self.access_log.as_ref(),
                )
                .map_err(|e| vec![e.to_string()])?,
            )
        } else {
            None
        };
        let mut throttle = if old.policies.same_throttle_state(&plan.policies) {
            None
        } else {
            Some(
                crate::policy::throttle::links(&plan.policies.throttle, plan.server.shards)
                    .into_iter(),
            )
        };
        let (u, v) = (&old.policies.usage, &plan.policies.usage);
        if !u.same_state(v) {
            // Keys added at the end (restart_only refused anything else):
            // the coordinator takes them in before any shard can report
            // on them.
            if let Some(tx) = &self.usage_tx {
                let adopt =
                    crate::policy::usage::coordinator::ToCoordinator::Adopt(Box::new(v.clone()));
                if tx.send(adopt).is_err() {
                    return Err(vec!["the usage coordinator has stopped".to_string()]);
                }
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut errors = Vec::new();
        let mut sent = 0;
        for (i, (inbox, add)) in self.inboxes.iter().zip(fds).enumerate() {
            let install = shard::Install {
                plan: plan.clone(),
                add,
                remove: removed.clone(),
                throttle: throttle.as_mut().and_then(Iterator::next),
                access_log: writers.as_ref().map(|w| w.sinks.clone()),
                reply: tx.clone(),
            };
            if inbox.send(Control::Install(Box::new(install))).is_ok() {
                sent += 1;
            } else {
                errors.push(format!("shard {i} is not running"));
            }
        }
        drop(tx);
        let number = self.generation + 1;
        let deadline = Instant::now() + INSTALL_TIMEOUT;
        for _ in 0..sent {
            match rx.recv_deadline(deadline) {
                Ok(Ok(n)) if n == number => {}
                Ok(Ok(n)) => errors.push(format!(
                    "a shard installed generation {n} where {number} was expected"
                )),
                Ok(Err(why)) => errors.push(why),
                Err(_) => {
                    errors.push(format!(
                        "not every shard installed the new plan within {} s",
                        INSTALL_TIMEOUT.as_secs()
                    ));
                    break;
                }
            }
        }
        // Whatever the shards said, those that installed serve `plan` now.
        let mut bound_now = Vec::with_capacity(new_all.len());
        let mut fresh = added.iter().zip(bound);
        for entry in &new_all {
            let addr = match self.bound.iter().find(|(e, _)| e == entry) {
                Some((_, a)) => *a,
                None => match fresh.next() {
                    Some((_, a)) => a,
                    None => continue,
                },
            };
            bound_now.push((*entry, addr));
        }
        self.bound = bound_now;
        self.local_addrs = self
            .bound
            .iter()
            .filter(|((_, t), _)| !t)
            .map(|(_, a)| *a)
            .collect();
        self.tls_addrs = self
            .bound
            .iter()
            .filter(|((_, t), _)| *t)
            .map(|(_, a)| *a)
            .collect();
        if let Some(mut w) = writers {
            // Writers of destinations the new plan still names carry on;
            // the others end, and close their files, once the shards have
            // logged the last request of the generations that use them.
            if let Some(old_writers) = self.access_log.take() {
                w.replacing(old_writers);
            }
            self.access_log = Some(w);
        }
        if let (Some(tx), Some(tls)) = (&self.admin_tls, &plan.admin.tls) {
            // The files were read again when the plan compiled; the admin
            // listener's next connection uses them.
            let _ = tx.send(tls.clone());
        }
        self.plan = Some(plan);
        self.generation = number;
        if errors.is_empty() {
            Ok(number)
        } else {
            errors.insert(0, PARTLY.to_string());
            Err(errors)
        }
    }

    /// After each successful reload, `tx` gets the new plan's
    /// `[admin.tls]` (the admin listener's [`crate::admin::Context`]
    /// `tls_updates`).
    pub fn send_admin_tls_to(&mut self, tx: Sender<crate::plan::admin::AdminTls>) {
        self.admin_tls = Some(tx);
    }

    /// Each listen entry's bound address (port 0 resolved) and whether it
    /// is TLS, plain ones first, in the plan's order.
    pub fn listeners(&self) -> Vec<(SocketAddr, bool)> {
        self.bound.iter().map(|((_, tls), a)| (*a, *tls)).collect()
    }

    /// The plan the shards serve.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// Each shard's control inbox, in shard order.
    pub fn inboxes(&self) -> Vec<Inbox> {
        self.inboxes.clone()
    }

    /// Where the id of each shard whose thread ends arrives, as it ends:
    /// after [`Server::shutdown`]'s drain, or at once when the shard stopped
    /// for another reason (a panic outside a connection task unwinds
    /// through its executor, and its connections and listeners go with
    /// it). While the gateway serves, any id here is a shard lost.
    pub fn ended(&self) -> Receiver<usize> {
        self.ended.clone()
    }

    /// The error for shard `id` stopping while the gateway serves
    /// ([`Server::ended`]), naming the shard and its CPU.
    pub fn lost_shard(&self, id: usize) -> String {
        let cpu = self
            .plan
            .as_ref()
            .and_then(|p| p.server.cpus.get(id))
            .map(|c| format!(" (CPU {c})"))
            .unwrap_or_default();
        format!(
            "shard {id}{cpu} stopped while serving: the connections it held get no answer, \
             and the other shards take its share of new connections"
        )
    }

    /// Asks every shard to drain and stop.
    pub fn shutdown(&self) {
        for inbox in &self.inboxes {
            let _ = inbox.send(Control::Shutdown);
        }
    }

    /// Has every access-log file reopened (SIGUSR1, after logrotate
    /// renamed it).
    pub fn reopen_logs(&self) {
        if let Some(w) = &self.access_log {
            w.reopen();
        }
    }

    /// Waits for every shard to stop.
    pub fn join(self) {
        self.join_reporting(None);
    }

    /// As [`Server::join`]; a shard error worded exactly as `reported` (the
    /// error a failed start already returns) is not logged again: when the
    /// process's limits are the cause, every shard fails alike.
    fn join_reporting(mut self, reported: Option<&str>) {
        let access_log = self.access_log.take();
        let cpus = self.plan.as_ref().map(|p| p.server.cpus.clone());
        for (id, h) in self.handles {
            if let Err(e) = h.join() {
                let e = describe(&e);
                if reported != Some(e.as_str()) {
                    let cpu = cpus.as_ref().and_then(|c| c.get(id)).copied();
                    let cpu = cpu.map(|c| format!(" (CPU {c})")).unwrap_or_default();
                    crate::log!("error", "shard {id}{cpu} stopped with an error: {e}");
                }
            }
        }
        // Every shard has stopped: the coordinator writes what they
        // reported and stops. Told so, as a shard a panic stopped never
        // dropped its link.
        if let Some(tx) = self.usage_tx.take() {
            let _ = tx.send(crate::policy::usage::coordinator::ToCoordinator::Finish);
        }
        if let Some(t) = self.usage.thread {
            if t.join().is_err() {
                crate::log!("error", "the usage thread panicked");
            }
        }
        // The shards have handed over their last lines.
        if let Some(w) = access_log {
            w.finish();
        }
    }
}

/// Reads and compiles the config (`given`, or else the file at `path`) and
/// installs it in every shard; `who` asked for it (logged with the
/// outcome). `running` is the text of the plan the server serves: it
/// becomes the new text once the new plan serves. With `write`, that text
/// is then written to `path`. On an error before the install the shards
/// keep the generation they serve. When only some shards installed it
/// (the errors start with [`PARTLY`]), the new plan serves on those, and
/// `running` and the file follow it too, so that `GET /config` and a
/// restart show what serves.
pub fn reload_config(
    server: &mut Server,
    path: &std::path::Path,
    running: &mut String,
    who: &str,
    given: Option<String>,
    write: bool,
) -> Result<u64, Vec<String>> {
    let loaded = match given {
        Some(t) => crate::plan::load_text_in(&t, path.parent()).map(|p| (t, p)),
        None => crate::plan::load_file(path),
    };
    let outcome = loaded
        .map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .and_then(|(t, plan)| {
            let installed = server.reload(plan);
            let serves = match &installed {
                Ok(_) => true,
                Err(errors) => errors.first().is_some_and(|e| e == PARTLY),
            };
            if !serves {
                return installed;
            }
            *running = t;
            let n = server.generation();
            if write {
                if let Err(e) = crate::config::write_atomic(path, running) {
                    let e = format!(
                        "generation {n} serves the new config, but the config file was not \
                         updated ({e}): a restart would start from the file as it is"
                    );
                    return Err(match installed {
                        Ok(_) => vec![e],
                        Err(mut errors) => {
                            errors.push(e);
                            errors
                        }
                    });
                }
            }
            installed
        });
    match &outcome {
        Ok(n) => crate::log!(
            "info",
            "reload asked by {who}: generation {n} of {} serving on every shard",
            path.display()
        ),
        Err(errors) if errors.first().is_some_and(|e| e == PARTLY) => crate::log!(
            "error",
            "reload asked by {who}: generation {} of {} serving, but not on every shard: {} error(s)",
            server.generation(),
            path.display(),
            errors.len() - 1
        ),
        Err(errors) => crate::log!(
            "error",
            "reload asked by {who} refused: {} error(s); generation {} keeps serving",
            errors.len(),
            server.generation()
        ),
    }
    if let Err(errors) = &outcome {
        for e in errors.iter().filter(|e| *e != PARTLY) {
            crate::log!("error", "reload: {e}");
        }
    }
    outcome
}

/// How long a shard may take from its spawn to accepting.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until every shard has reported that it accepts (`readies[i]` is
/// shard i's channel). A shard that reports an error, or whose executor ends
/// without reporting (glommio could not build it, or it panicked), stops the
/// start at once with that shard's reason; the other shards are stopped.
fn wait_ready(
    mut server: Server,
    readies: &[Receiver<Result<(), String>>],
    cpus: &[usize],
) -> io::Result<Server> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut pending: Vec<usize> = (0..readies.len()).collect();
    while !pending.is_empty() {
        let mut select = Select::new();
        for &id in &pending {
            select.recv(&readies[id]);
        }
        let Ok(op) = select.select_deadline(deadline) else {
            let ids: Vec<String> = pending.iter().map(|id| id.to_string()).collect();
            // Not joined: a shard stuck in its start would never return.
            server.shutdown();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "shard(s) {} did not start within {} s",
                    ids.join(", "),
                    START_TIMEOUT.as_secs()
                ),
            ));
        };
        let id = pending.swap_remove(op.index());
        let failure = match op.recv(&readies[id]) {
            Ok(Ok(())) => continue,
            // shard::run's own reason (it names the shard).
            Ok(Err(why)) => (why, None),
            // The sender went with the executor: its join handle has why.
            Err(_) => {
                let cpu = cpus.get(id).copied().unwrap_or_default();
                let at = server.handles.iter().position(|(i, _)| *i == id);
                let handle = at.map(|at| server.handles.remove(at).1);
                server.inboxes.remove(id);
                match handle.map(|h| h.join()).unwrap_or(Ok(())) {
                    Err(e) => {
                        let what = describe(&e);
                        let why = match start_hint(&e) {
                            Some(hint) => {
                                format!("shard {id} (CPU {cpu}) could not start: {what}. {hint}")
                            }
                            None => format!("shard {id} (CPU {cpu}) could not start: {what}"),
                        };
                        (why, Some(what))
                    }
                    Ok(()) => (
                        format!("shard {id} (CPU {cpu}) stopped before it started accepting"),
                        None,
                    ),
                }
            }
        };
        let (why, glommio_error) = failure;
        server.shutdown();
        server.join_reporting(glommio_error.as_deref());
        return Err(io::Error::other(why));
    }
    Ok(server)
}

/// A shard's error from glommio, with a panic's message when it panicked.
fn describe(e: &glommio::GlommioError<()>) -> String {
    if let glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(p)) = e {
        if let Some(msg) = crate::log::panic_message(&**p) {
            return format!("it panicked: {msg}");
        }
    }
    e.to_string()
}

/// glommio 0.9 builds no executor while the soft RLIMIT_MEMLOCK is below
/// this (`MIN_MEMLOCK_LIMIT` in its sys/uring.rs).
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// This process's soft RLIMIT_MEMLOCK in bytes; `None` when unlimited or
/// unknown.
fn memlock_limit() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    (rc == 0 && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
}

/// What to change when an executor could not be built for a reason outside
/// coregate: the process's locked-memory limit, or io_uring being refused.
fn start_hint(e: &glommio::GlommioError<()>) -> Option<String> {
    use glommio::{GlommioError, ReactorErrorKind};
    let raise = |kib: u64| {
        format!(
            "raise it with `ulimit -l {kib}` (or more) in the shell that starts coregate, \
             LimitMEMLOCK={kib}K in its systemd unit, or a memlock line in \
             /etc/security/limits.conf"
        )
    };
    // glommio 0.9 hands its MemLockLimit error back as an io::Error that
    // only has the variant's name in its text.
    let memlock = match e {
        GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(have, need)) => {
            Some((Some(*have), *need))
        }
        _ if e.to_string().contains("MemLockLimit") => Some((memlock_limit(), GLOMMIO_MIN_MEMLOCK)),
        _ => None,
    };
    if let Some((have, need)) = memlock {
        let have = match have {
            Some(b) => format!("{} KiB", b / 1024),
            None => "an unknown limit".to_string(),
        };
        return Some(format!(
            "glommio needs a locked-memory limit (RLIMIT_MEMLOCK) of at least {} KiB and this \
             process has {have}: {}",
            need / 1024,
            raise(need / 1024)
        ));
    }
    match e.raw_os_error() {
        Some(libc::ENOMEM) => Some(format!(
            "before Linux 5.12, io_uring rings count against the locked-memory limit \
             (RLIMIT_MEMLOCK): {}",
            raise(8192)
        )),
        Some(libc::EPERM) => Some(
            "io_uring was refused: it may be disabled (sysctl kernel.io_uring_disabled) or \
             blocked by a seccomp profile (as in containers)"
                .to_string(),
        ),
        _ => None,
    }
}

// Test code: every unwrap is on a fixture the test builds (its config,
// files, sockets and the server it starts), so a failure is a failed test.
#[cfg(test)]
mod tests {
    use super::{describe, reload_config, start_hint, Control, Server, PARTLY};
    use glommio::{BuilderErrorKind, GlommioError, ReactorErrorKind};
    use std::io;

    #[test]
    fn memlock_errors_get_the_limit_and_how_to_raise_it() {
        let typed = GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(65536, 524288));
        // The shape glommio 0.9 returns from a failed executor build.
        let as_io = GlommioError::IoError(io::Error::other("MemLockLimit(65536/524288)"));
        for e in [typed, as_io] {
            let hint = start_hint(&e).unwrap_or_default();
            assert!(hint.contains("at least 512 KiB"), "{hint}");
            assert!(hint.contains("ulimit -l 512"), "{hint}");
            assert!(hint.contains("LimitMEMLOCK=512K"), "{hint}");
        }
    }

    #[test]
    fn io_uring_refusals_get_a_hint_and_other_errors_none() {
        let eperm = GlommioError::IoError(io::Error::from_raw_os_error(libc::EPERM));
        assert!(start_hint(&eperm).is_some_and(|h| h.contains("io_uring_disabled")));
        let enomem = GlommioError::IoError(io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(start_hint(&enomem).is_some_and(|h| h.contains("RLIMIT_MEMLOCK")));
        let other = GlommioError::IoError(io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(start_hint(&other), None);
    }

    #[test]
    fn a_panic_is_described_by_its_message() {
        let e: GlommioError<()> =
            GlommioError::BuilderError(BuilderErrorKind::ThreadPanic(Box::new("boom")));
        assert_eq!(describe(&e), "it panicked: boom");
        let e: GlommioError<()> = GlommioError::BuilderError(BuilderErrorKind::ThreadPanic(
            Box::new(String::from("boom")),
        ));
        assert_eq!(describe(&e), "it panicked: boom");
    }

    fn config(version: u32) -> String {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\n\n[[apis]]\nname = \"main\"\n\n\
             [[apis.routes]]\nkey = \"GET /v\"\nintegration = {{ type = \"mock\", body = \"v{version}\" }}\n"
        )
    }

    fn get_v(server: &Server) -> String {
        exchange(
            server.local_addrs[0],
            "GET /v HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
        .1
    }

    /// Sends `request` to `addr` and reads the response to the close:
    /// its status line and its body.
    fn exchange(addr: std::net::SocketAddr, request: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.lines().next().unwrap_or_default().to_string();
        let body = out.split_once("\r\n\r\n").unwrap_or_default().1;
        (status, body.to_string())
    }

    /// Stops shard `id` as a bug would leave it, and waits until its inbox
    /// refuses messages.
    fn stop_shard(server: &Server, id: usize) {
        let _ = server.inboxes[id].send(Control::Shutdown);
        let started = std::time::Instant::now();
        loop {
            let (tx, _rx) = crossbeam_channel::bounded(1);
            if server.inboxes[id].send(Control::Snapshot(tx)).is_err() {
                break;
            }
            assert!(started.elapsed().as_secs() < 10, "shard {id} did not stop");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// A shard that stops while the gateway serves (here: a panic in its
    /// control loop, outside any connection task, as a bug in a listener
    /// loop or a timer task would) is reported on `Server::ended` at once,
    /// named with its CPU; it used to go unnoticed until the next reload or
    /// the shutdown. The other shard serves on meanwhile.
    ///
    /// Then the gateway stops as a whole, though the lost shard's link to
    /// the usage coordinator and its access-log sink were never dropped (a
    /// panic leaves its tasks as they are): the coordinator used to wait
    /// for that link to go, and the join, so the exit, waited forever; the
    /// access-log writer waited for the sink until its 5 s limit.
    #[test]
    fn a_shard_that_stops_is_noticed_at_once() {
        let dir = std::env::temp_dir().join(format!("coregate-lost-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let usage = format!(
            "data_dir = {:?}\n\n[[usage_plans]]\nname = \"free\"\napis = [\"main\"]\n\
             quota = {{ limit = 1000, period = \"DAY\" }}\n\n",
            dir.join("data")
        );
        let log = dir.join("access.log");
        let text = config(1).replacen("shards = 2\n", &format!("shards = 2\n{usage}"), 1)
            + &format!("\n[apis.access_log]\npreset = \"clf\"\ndestination = {log:?}\n");
        let plan = crate::plan::load_text_in(&text, None).unwrap();
        let server = Server::start(plan).unwrap();
        let ended = server.ended();
        assert_eq!(get_v(&server), "v1");
        assert!(ended.try_recv().is_err(), "no shard has stopped yet");
        let _ = server.inboxes[1].send(Control::Panic("a bug outside a connection"));
        let started = std::time::Instant::now();
        let id = ended
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(id, 1);
        assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
        let why = server.lost_shard(id);
        assert!(why.starts_with("shard 1 (CPU "), "{why}");
        // Its listeners went with it: every new connection reaches shard 0.
        for _ in 0..8 {
            assert_eq!(get_v(&server), "v1");
        }
        server.shutdown();
        let joined = std::thread::spawn(move || server.join());
        let started = std::time::Instant::now();
        while !joined.is_finished() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(3),
                "the join waits for the lost shard"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Shard 0's requests (the 8 since the panic) were logged before
        // the end; shard 1's unflushed lines went with it.
        let lines = std::fs::read_to_string(&log).unwrap();
        assert!(lines.lines().count() >= 8, "{lines}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A reload that reaches only some shards (here: one has stopped)
    /// still makes the new config the server's: its generation, the text
    /// `GET /config` shows and, when asked, the file. The text and file
    /// used to keep the old config while the other shards served the new
    /// one, and the log said the old generation kept serving.
    #[test]
    fn a_reload_that_reaches_only_some_shards_is_what_serves() {
        let dir = std::env::temp_dir().join(format!("coregate-partly-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("coregate.toml");
        std::fs::write(&path, config(1)).unwrap();
        let (text, plan) = crate::plan::load_file(&path).unwrap();
        let mut running = text;
        let mut server = Server::start(plan).unwrap();
        assert_eq!(get_v(&server), "v1");
        // Shard 1 stops; its inbox refuses messages once it is gone.
        stop_shard(&server, 1);
        let got = reload_config(
            &mut server,
            &path,
            &mut running,
            "test",
            Some(config(2)),
            true,
        );
        let errors = got.unwrap_err();
        assert_eq!(errors[0], PARTLY, "{errors:?}");
        assert!(errors[1].contains("shard 1"), "{errors:?}");
        assert_eq!(server.generation(), 2);
        assert_eq!(running, config(2));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), config(2));
        // Shard 0 alone accepts now, and serves the new config.
        assert_eq!(get_v(&server), "v2");
        // A refused reload (a broken config) changes none of it.
        let got = reload_config(
            &mut server,
            &path,
            &mut running,
            "test",
            Some("x".into()),
            true,
        );
        assert_ne!(got.unwrap_err()[0], PARTLY);
        assert_eq!((server.generation(), &running), (2, &config(2)));
        server.shutdown();
        server.join();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `POST /keys` when the reload reaches only some shards: the key is
    /// in the keys file and serves on the shards that installed it, so the
    /// 500 that names the shards that did not carries the key too. It used
    /// to carry only the errors, and the key's secret was lost for good.
    /// A portal sign-up then gets its key as usual (it used to get a 500,
    /// its key live in the file but known to nobody).
    #[test]
    fn a_key_created_on_only_some_shards_is_still_handed_over() {
        let dir = std::env::temp_dir().join(format!("coregate-partkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("keys.toml");
        crate::policy::api_key::cli::create(&keys, "alice", None).unwrap();
        let path = dir.join("coregate.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\napi_keys_file = {keys:?}\n\
                 data_dir = {data:?}\n\n[[usage_plans]]\nname = \"free\"\napis = [\"main\"]\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\n[portal]\nlisten = \"127.0.0.1:0\"\n\n\
                 [portal.signup]\nfile = {signups:?}\nplans = [\"free\"]\n\n\
                 [[apis]]\nname = \"main\"\n\n\
                 [[apis.routes]]\nkey = \"GET /k\"\napi_key_required = true\n\
                 integration = {{ type = \"mock\", body = \"keyed\" }}\n",
                data = dir.join("data"),
                signups = dir.join("signups.toml"),
            ),
        )
        .unwrap();
        let (mut running, plan) = crate::plan::load_file(&path).unwrap();
        let admin = crate::admin::bind(&plan.admin, false).unwrap().unwrap();
        let portal = crate::portal::bind(&plan.portal, false).unwrap().unwrap();
        let mut server = Server::start(plan).unwrap();
        stop_shard(&server, 1);
        let (main, requests) = crossbeam_channel::unbounded();
        let (admin_addr, portal_addr) = (admin.addr, portal.addr);
        portal.serve(main.clone()).unwrap();
        admin
            .serve(crate::admin::Context {
                inboxes: server.inboxes(),
                started: std::time::SystemTime::now(),
                version: "test",
                main,
                tls_updates: crossbeam_channel::unbounded().1,
            })
            .unwrap();
        // This thread is the gateway's main thread while `to` is asked
        // `target` with a JSON `body`.
        let mut post = |to: std::net::SocketAddr, target: &str, body: &str| {
            let request = format!(
                "POST {target} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let client = std::thread::spawn(move || exchange(to, &request));
            while !client.is_finished() {
                if let Ok(asked) = requests.recv_timeout(std::time::Duration::from_millis(10)) {
                    super::requests::answer(&mut server, &path, &mut running, asked);
                }
            }
            client.join().unwrap()
        };
        let (status, body) = post(admin_addr, "/keys", r#"{"name":"bob"}"#);
        let (signup_status, signup) =
            post(portal_addr, "/signup", r#"{"plan":"free","label":"me"}"#);
        assert!(status.contains(" 500 "), "{status} {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["message"], PARTLY, "{body}");
        assert!(
            v["errors"][0].as_str().unwrap().contains("shard 1"),
            "{body}"
        );
        assert_eq!(v["generation"], 2, "{body}");
        let key = v["key"].as_str().unwrap();
        assert!(key.starts_with("cg_"), "{body}");
        assert!(
            v["id"].as_str().is_some_and(|id| key.contains(id)),
            "{body}"
        );
        // Shard 0 installed it: the key works there.
        let (status, body) = exchange(
            server.local_addrs[0],
            &format!("GET /k HTTP/1.1\r\nhost: t\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n"),
        );
        assert!(status.contains(" 200 "), "{status} {body}");
        assert_eq!(body, "keyed");
        assert!(signup_status.contains(" 201 "), "{signup_status} {signup}");
        let v: serde_json::Value = serde_json::from_str(&signup).unwrap();
        let key = v["key"].as_str().unwrap();
        let (status, body) = exchange(
            server.local_addrs[0],
            &format!("GET /k HTTP/1.1\r\nhost: t\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n"),
        );
        assert!(status.contains(" 200 "), "{status} {body}");
        server.shutdown();
        server.join();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
