//! Shards: where a request's journey starts. One glommio executor per shard,
//! pinned to its CPU, each with its own listening socket on every configured
//! address (SO_REUSEPORT), its own copy of the plan, upstream pools and
//! counters, and a crossbeam control inbox. The main thread only starts shards,
//! forwards signals into their inboxes and waits for them to finish.

pub mod shard;

pub use shard::{Shard, ShardHandle};

use crate::config::Plan;
use crossbeam_channel::{Receiver, Sender};
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::time::Duration;

/// Locked memory glommio registers per executor for io_uring buffers. We do
/// no file I/O, so the minimum is plenty (see shared/DESIGN.md).
const IO_MEMORY: usize = 512 * 1024;

/// Messages a shard accepts on its control inbox.
#[derive(Debug, Clone)]
pub enum Control {
    /// Stop accepting, close idle connections, let in-flight requests finish
    /// within the drain timeout, then stop.
    Shutdown,
}

/// A running gateway: its shards and their inboxes.
pub struct Server {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    inboxes: Vec<Sender<Control>>,
    /// The bound address for each `listen` entry (port 0 resolved).
    pub local_addrs: Vec<SocketAddr>,
    /// The bound address for each `server.tls.listen` entry.
    pub tls_addrs: Vec<SocketAddr>,
    /// The usage coordinator, joined after the shards for its last flush.
    usage: crate::policy::usage::coordinator::Running,
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

/// Binds one socket per shard per address (plain, then TLS). Port 0 is
/// resolved by the first bind and reused by the others so every shard
/// serves the same port. Each shard gets `(fd, is_tls)` per address.
/// Unless `server.share_listen_addresses` is set, every address with a
/// fixed port is first checked to be free ([`probe_free`]), all of them
/// before any of ours is bound.
#[allow(clippy::type_complexity)]
fn bind_all(
    plan: &Plan,
) -> io::Result<(Vec<Vec<(RawFd, bool)>>, Vec<SocketAddr>, Vec<SocketAddr>)> {
    let mut per_shard: Vec<Vec<(Socket, bool)>> =
        (0..plan.server.shards).map(|_| Vec::new()).collect();
    let mut local_addrs = Vec::new();
    let mut tls_addrs = Vec::new();
    let tls_listen = plan.server.tls.iter().flat_map(|t| &t.listen);
    let all: Vec<(SocketAddr, bool)> = plan
        .server
        .listen
        .iter()
        .map(|&a| (a, false))
        .chain(tls_listen.map(|&a| (a, true)))
        .collect();
    if !plan.server.share_listen_addresses {
        // Port 0 needs no probe: the kernel picks a port nobody listens on.
        for &(addr, _) in all.iter().filter(|(a, _)| a.port() != 0) {
            probe_free(addr).map_err(|e| listen_error(addr, false, e))?;
        }
    }
    for (want, tls) in all {
        let mut addr = want;
        for (i, shard_socks) in per_shard.iter_mut().enumerate() {
            let sock = listener_socket(addr, plan.server.backlog)
                .map_err(|e| listen_error(addr, plan.server.share_listen_addresses, e))?;
            if i == 0 {
                addr = sock
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("listener has no IP address"))?;
                if tls {
                    tls_addrs.push(addr);
                } else {
                    local_addrs.push(addr);
                }
            }
            shard_socks.push((sock, tls));
        }
    }
    let fds = per_shard
        .into_iter()
        .map(|socks| {
            socks
                .into_iter()
                .map(|(s, tls)| (s.into_raw_fd(), tls))
                .collect()
        })
        .collect();
    Ok((fds, local_addrs, tls_addrs))
}

impl Server {
    /// Binds every listener and starts every shard. Returns once all shards
    /// are accepting.
    pub fn start(plan: Plan) -> io::Result<Server> {
        let (fds, local_addrs, tls_addrs) = bind_all(&plan)?;
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<(), String>>();
        let mut handles = Vec::new();
        let mut inboxes = Vec::new();
        let mut fds_iter = fds.into_iter();
        // The usage store opens first: an unreadable one stops the start.
        let (usage_links, usage) =
            crate::policy::usage::coordinator::start(&plan.policies.usage, plan.server.shards)
                .map_err(io::Error::other)?;
        let mut usage_links = usage_links.into_iter();
        let mut links =
            crate::policy::throttle::links(&plan.policies.throttle, plan.server.shards).into_iter();
        for id in 0..plan.server.shards {
            let shard_fds = fds_iter.next().unwrap_or_default();
            let (Some(link), Some(usage_link)) = (links.next(), usage_links.next()) else {
                return Err(io::Error::other("throttle links: one per shard expected"));
            };
            let (tx, rx): (Sender<Control>, Receiver<Control>) = crossbeam_channel::unbounded();
            let shard_plan = plan.clone();
            let ready = ready_tx.clone();
            let cpu = plan.server.cpus[id];
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("coregate-shard-{id}"))
                .io_memory(IO_MEMORY)
                .spawn(move || async move {
                    shard::run(id, shard_plan, shard_fds, rx, ready, link, usage_link).await;
                });
            match spawned {
                Ok(h) => {
                    handles.push(h);
                    inboxes.push(tx);
                }
                Err(e) => {
                    drop(usage_links);
                    let server = Server {
                        handles,
                        inboxes,
                        local_addrs,
                        tls_addrs,
                        usage,
                    };
                    server.shutdown();
                    server.join();
                    return Err(io::Error::other(format!(
                        "cannot start shard {id} on CPU {cpu}: {e}"
                    )));
                }
            }
        }
        drop(ready_tx);
        for _ in 0..handles.len() {
            match ready_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let server = Server {
                        handles,
                        inboxes,
                        local_addrs,
                        tls_addrs,
                        usage,
                    };
                    server.shutdown();
                    server.join();
                    return Err(io::Error::other(e));
                }
                Err(_) => return Err(io::Error::other("a shard did not start within 30 s")),
            }
        }
        Ok(Server {
            handles,
            inboxes,
            local_addrs,
            tls_addrs,
            usage,
        })
    }

    /// Asks every shard to drain and stop.
    pub fn shutdown(&self) {
        for inbox in &self.inboxes {
            let _ = inbox.send(Control::Shutdown);
        }
    }

    /// Waits for every shard to stop.
    pub fn join(self) {
        for h in self.handles {
            if let Err(e) = h.join() {
                crate::log!("error", "shard stopped with an error: {e}");
            }
        }
        // Every shard's link is gone with its executor: the coordinator
        // writes what they reported and stops.
        if let Some(t) = self.usage.thread {
            if t.join().is_err() {
                crate::log!("error", "the usage thread panicked");
            }
        }
    }
}
