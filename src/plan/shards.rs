//! `[[server.shard]]` compiled: each shard's own settings, one entry per
//! shard (defaults filled in), checked against `[server]` (the shard count,
//! the CPUs this process may use, the listen addresses). The runtime builds
//! each shard's executor, listeners and connection limit from these.

use super::ServerPlan;
use crate::config::raw::shard::*;
use crate::config::raw::RawServer;
use crate::config::ConfigError;
use std::net::SocketAddr;
use std::time::Duration;

/// One shard's settings, as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// `cpu`, when the entry sets it (then `ServerPlan::cpus` has it too).
    pub cpu: Option<usize>,
    /// The listeners (address as configured, TLS) the shard serves; `None`
    /// for every listener, those a reload adds included.
    pub listeners: Option<Vec<(SocketAddr, bool)>>,
    pub max_connections: usize,
    pub ring_depth: usize,
    /// Bytes.
    pub io_memory: usize,
    pub spin_before_park: Duration,
    pub preempt_timer: Duration,
    /// How long the idle shard sleeps in `epoll_wait` before it parks in
    /// glommio (`net::set_epoll_sleep`).
    pub epoll_sleep: Duration,
    /// The shard thread's timer slack (`net::set_sleep_slack`); `None`:
    /// the kernel's scheduler tick.
    pub timer_slack: Option<Duration>,
    /// Shares of the background task queue; `None`: no queue of its own.
    pub background_shares: Option<usize>,
    /// How the shard's connected sockets move their bytes.
    pub io: crate::net::uring::IoMode,
}

impl ShardPlan {
    /// A shard with no `[[server.shard]]` entry.
    pub fn default_for(max_connections: usize) -> ShardPlan {
        ShardPlan {
            cpu: None,
            listeners: None,
            max_connections,
            ring_depth: DEFAULT_RING_DEPTH,
            io_memory: DEFAULT_IO_MEMORY_KIB * 1024,
            spin_before_park: Duration::from_micros(DEFAULT_SPIN_BEFORE_PARK_US),
            preempt_timer: Duration::from_millis(DEFAULT_PREEMPT_TIMER_MS),
            epoll_sleep: Duration::from_micros(DEFAULT_EPOLL_SLEEP_US),
            timer_slack: None,
            background_shares: None,
            io: crate::net::uring::IoMode::Uring {
                buffers: DEFAULT_URING_BUFFERS,
                entries: crate::net::uring::DEFAULT_ENTRIES,
            },
        }
    }

    /// Whether the shard serves the listener `addr` (as configured).
    pub fn serves(&self, addr: SocketAddr, tls: bool) -> bool {
        self.listeners
            .as_ref()
            .is_none_or(|l| l.contains(&(addr, tls)))
    }
}

/// Fills `server.shard` (one entry per shard) from `raw.shard`, and a
/// shard's `cpu` into `server.cpus`. Called once `server.tls` is compiled:
/// `listeners` may name its addresses. `allowed` is the CPUs this process
/// may run on.
pub(super) fn compile(
    raw: &RawServer,
    server: &mut ServerPlan,
    allowed: &[usize],
    errors: &mut Vec<ConfigError>,
) {
    let n = server.shards;
    let mut shards = vec![ShardPlan::default_for(server.max_connections_per_shard); n];
    match raw.io.as_deref() {
        None | Some("uring") => {}
        Some("epoll") => shards
            .iter_mut()
            .for_each(|s| s.io = crate::net::uring::IoMode::Epoll),
        Some(other) => errors.push(ConfigError::new(
            "server.io",
            format!("must be \"epoll\" or \"uring\", not {other:?}"),
        )),
    }
    // Which entry set each shard, for duplicates.
    let mut seen: Vec<Option<usize>> = vec![None; n];
    let all: Vec<(SocketAddr, bool)> = server
        .listen
        .iter()
        .map(|&a| (a, false))
        .chain(
            server
                .tls
                .iter()
                .flat_map(|t| &t.listen)
                .map(|&a| (a, true)),
        )
        .collect();
    for (i, e) in raw.shard.iter().enumerate() {
        let key = |k: &str| format!("server.shard[{i}].{k}");
        let id = match e.id {
            None => {
                errors.push(ConfigError::new(
                    key("id"),
                    format!("is required: the shard this entry tunes, 0 to {}", n - 1),
                ));
                continue;
            }
            Some(id) if id >= n => {
                errors.push(ConfigError::new(
                    key("id"),
                    format!(
                        "shard {id} does not exist: server.shards is {n}, so ids go from 0 to {}",
                        n - 1
                    ),
                ));
                continue;
            }
            Some(id) => id,
        };
        if let Some(first) = seen[id] {
            errors.push(ConfigError::new(
                key("id"),
                format!(
                    "shard {id} already has an entry (server.shard[{first}]): one entry per shard"
                ),
            ));
            continue;
        }
        seen[id] = Some(i);
        let s = &mut shards[id];
        if let Some(cpu) = e.cpu {
            if raw.cpus.is_some() {
                errors.push(ConfigError::new(
                    key("cpu"),
                    "server.cpus places every shard already: set a shard's CPU in one place",
                ));
            } else if !server.pin_shards {
                errors.push(ConfigError::new(
                    key("cpu"),
                    "pins the shard to a CPU, but server.pin_shards = false: remove one of the two",
                ));
            } else if !allowed.contains(&cpu) {
                errors.push(ConfigError::new(
                    key("cpu"),
                    format!(
                        "CPU {cpu} is not one this process may run on (allowed: {})",
                        allowed
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            } else {
                s.cpu = Some(cpu);
                if let Some(c) = server.cpus.get_mut(id) {
                    *c = cpu;
                }
            }
        }
        if let Some(list) = &e.listeners {
            if list.is_empty() {
                errors.push(ConfigError::new(
                    key("listeners"),
                    "is empty: name at least one listen address, or leave listeners out to \
                     serve them all",
                ));
            }
            let mut chosen = Vec::new();
            for (j, a) in list.iter().enumerate() {
                let k = format!("server.shard[{i}].listeners[{j}]");
                let Ok(addr) = a.parse::<SocketAddr>() else {
                    errors.push(ConfigError::new(
                        k,
                        format!("{a:?} is not an IP:port address (e.g. \"127.0.0.1:8443\")"),
                    ));
                    continue;
                };
                let Some(&entry) = all.iter().find(|(l, _)| *l == addr) else {
                    errors.push(ConfigError::new(
                        k,
                        format!(
                            "{a:?} is not a listen address: name one of server.listen or \
                             server.tls.listen ({})",
                            all.iter()
                                .map(|(l, _)| l.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                    continue;
                };
                if chosen.contains(&entry) {
                    errors.push(ConfigError::new(k, format!("{a:?} is listed twice")));
                    continue;
                }
                chosen.push(entry);
            }
            s.listeners = Some(chosen);
        }
        if let Some(m) = e.max_connections {
            if m == 0 {
                errors.push(ConfigError::new(
                    key("max_connections"),
                    "must be at least 1",
                ));
            } else {
                s.max_connections = m;
            }
        }
        if let Some(d) = e.ring_depth {
            if d == 0 || d > MAX_RING_DEPTH {
                errors.push(ConfigError::new(
                    key("ring_depth"),
                    format!("must be from 1 to {MAX_RING_DEPTH} (io_uring's largest ring)"),
                ));
            } else {
                s.ring_depth = d;
            }
        }
        if let Some(m) = e.io_memory_kib {
            if !(MIN_IO_MEMORY_KIB..=MAX_IO_MEMORY_KIB).contains(&m) {
                errors.push(ConfigError::new(
                    key("io_memory_kib"),
                    format!(
                        "must be from {MIN_IO_MEMORY_KIB} to {MAX_IO_MEMORY_KIB} (KiB of locked \
                         memory)"
                    ),
                ));
            } else {
                s.io_memory = m * 1024;
            }
        }
        if let Some(us) = e.spin_before_park_us {
            if us > MAX_SPIN_BEFORE_PARK_US {
                errors.push(ConfigError::new(
                    key("spin_before_park_us"),
                    format!(
                        "must be at most {MAX_SPIN_BEFORE_PARK_US} (microseconds; a longer spin \
                         keeps the core busy)"
                    ),
                ));
            } else if us > 0 && !server.pin_shards {
                errors.push(ConfigError::new(
                    key("spin_before_park_us"),
                    "glommio spins only on a pinned shard, and server.pin_shards = false: \
                     remove one of the two",
                ));
            } else {
                s.spin_before_park = Duration::from_micros(us);
            }
        }
        if let Some(ms) = e.preempt_timer_ms {
            if ms == 0 || ms > MAX_PREEMPT_TIMER_MS {
                errors.push(ConfigError::new(
                    key("preempt_timer_ms"),
                    format!("must be from 1 to {MAX_PREEMPT_TIMER_MS} (milliseconds)"),
                ));
            } else {
                s.preempt_timer = Duration::from_millis(ms);
            }
        }
        if let Some(us) = e.epoll_sleep_us {
            if us > MAX_EPOLL_SLEEP_US {
                errors.push(ConfigError::new(
                    key("epoll_sleep_us"),
                    format!(
                        "must be at most {MAX_EPOLL_SLEEP_US} (microseconds; glommio's timers \
                         and background work wait up to this long)"
                    ),
                ));
            } else {
                s.epoll_sleep = Duration::from_micros(us);
            }
        }
        if let Some(us) = e.timer_slack_us {
            if us > MAX_TIMER_SLACK_US {
                errors.push(ConfigError::new(
                    key("timer_slack_us"),
                    format!(
                        "must be at most {MAX_TIMER_SLACK_US} (microseconds; the shard's \
                         epoll sleep may last this much longer)"
                    ),
                ));
            } else {
                s.timer_slack = Some(Duration::from_micros(us));
            }
        }
        let buffers = match e.uring_buffers {
            None => DEFAULT_URING_BUFFERS,
            Some(b)
                if b.is_power_of_two() && (MIN_URING_BUFFERS..=MAX_URING_BUFFERS).contains(&b) =>
            {
                b
            }
            Some(_) => {
                errors.push(ConfigError::new(
                    key("uring_buffers"),
                    format!(
                        "must be a power of two from {MIN_URING_BUFFERS} to {MAX_URING_BUFFERS} \
                         (4 KiB receive buffers in the shard's io_uring)"
                    ),
                ));
                DEFAULT_URING_BUFFERS
            }
        };
        // An invalid server.io is reported once, under its own name.
        let io = e.io.as_deref().or(raw
            .io
            .as_deref()
            .filter(|v| matches!(*v, "epoll" | "uring")));
        match io {
            Some("epoll") => {
                s.io = crate::net::uring::IoMode::Epoll;
                if e.uring_buffers.is_some() {
                    errors.push(ConfigError::new(
                        key("uring_buffers"),
                        "applies only to a shard with io = \"uring\" (the default), and this \
                         shard's io is \"epoll\" (here or in [server])",
                    ));
                }
            }
            None | Some("uring") => {
                s.io = crate::net::uring::IoMode::Uring {
                    buffers,
                    entries: crate::net::uring::DEFAULT_ENTRIES,
                }
            }
            Some(other) => errors.push(ConfigError::new(
                key("io"),
                format!("must be \"epoll\" or \"uring\", not {other:?}"),
            )),
        }
        if let Some(sh) = e.background_shares {
            if sh == 0 || sh > MAX_BACKGROUND_SHARES {
                errors.push(ConfigError::new(
                    key("background_shares"),
                    format!(
                        "must be from 1 to {MAX_BACKGROUND_SHARES} (the request path has 1000)"
                    ),
                ));
            } else {
                s.background_shares = Some(sh);
            }
        }
    }
    // Every listener needs a shard; with none, its connections would wait
    // in a backlog nobody accepts from.
    for &(addr, tls) in &all {
        if !shards.iter().any(|s| s.serves(addr, tls)) {
            errors.push(ConfigError::new(
                "server.shard",
                format!(
                    "no shard serves the {}listener {addr}: add it to a shard's listeners, or \
                     leave listeners out of one shard's entry",
                    if tls { "TLS " } else { "" }
                ),
            ));
        }
    }
    server.shard = shards;
}

/// The settings a reload cannot change, by name (`server.shard[id = 1].x`),
/// each with its old and new value as text.
pub fn start_only(old: &ServerPlan, new: &ServerPlan) -> Vec<(String, String, String)> {
    let mut changed = Vec::new();
    for (id, (a, b)) in old.shard.iter().zip(&new.shard).enumerate() {
        let mut check = |k: &str, x: String, y: String| {
            if x != y {
                changed.push((format!("server.shard[id = {id}].{k}"), x, y));
            }
        };
        check("cpu", format!("{:?}", a.cpu), format!("{:?}", b.cpu));
        let show = |l: &Option<Vec<(SocketAddr, bool)>>| match l {
            None => "every listener".to_string(),
            Some(l) => format!(
                "[{}]",
                l.iter()
                    .map(|(a, t)| if *t {
                        format!("{a} (tls)")
                    } else {
                        a.to_string()
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        check("listeners", show(&a.listeners), show(&b.listeners));
        // A change of server.max_connections_per_shard alone is reported
        // under that name.
        let follows_server = a.max_connections == old.max_connections_per_shard
            && b.max_connections == new.max_connections_per_shard;
        if !follows_server {
            check(
                "max_connections",
                a.max_connections.to_string(),
                b.max_connections.to_string(),
            );
        }
        check(
            "ring_depth",
            a.ring_depth.to_string(),
            b.ring_depth.to_string(),
        );
        check(
            "io_memory_kib",
            (a.io_memory / 1024).to_string(),
            (b.io_memory / 1024).to_string(),
        );
        check(
            "spin_before_park_us",
            a.spin_before_park.as_micros().to_string(),
            b.spin_before_park.as_micros().to_string(),
        );
        check(
            "preempt_timer_ms",
            a.preempt_timer.as_millis().to_string(),
            b.preempt_timer.as_millis().to_string(),
        );
        check(
            "epoll_sleep_us",
            a.epoll_sleep.as_micros().to_string(),
            b.epoll_sleep.as_micros().to_string(),
        );
        let slack = |d: Option<Duration>| {
            d.map_or("the kernel's tick".to_string(), |d| {
                d.as_micros().to_string()
            })
        };
        check("timer_slack_us", slack(a.timer_slack), slack(b.timer_slack));
        let io = |m: crate::net::uring::IoMode| match m {
            crate::net::uring::IoMode::Epoll => "\"epoll\"".to_string(),
            crate::net::uring::IoMode::Uring { buffers, .. } => {
                format!("\"uring\" ({buffers} buffers)")
            }
        };
        check("io", io(a.io), io(b.io));
        check(
            "background_shares",
            format!("{:?}", a.background_shares),
            format!("{:?}", b.background_shares),
        );
    }
    changed
}

#[cfg(test)]
mod tests {
    // Unwraps on configs written in the test itself: a failure is the test's.
    use super::*;
    use std::time::Duration;

    const TWO: &str = "[[apis]]\nname = \"a\"\n[[apis.routes]]\nkey = \"GET /\"\n\
                       integration = { type = \"mock\" }\n\
                       [server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nshards = 2\n\
                       pin_shards = false\n";

    #[test]
    fn without_entries_every_shard_keeps_todays_settings() {
        let p = crate::plan::load_str(TWO).unwrap();
        assert_eq!(p.server.shard.len(), 2);
        for s in &p.server.shard {
            assert_eq!(
                s,
                &ShardPlan::default_for(p.server.max_connections_per_shard)
            );
            assert_eq!(s.listeners, None);
            // glommio 0.9's own defaults, and the I/O memory coregate set
            // before these keys existed.
            assert_eq!(s.ring_depth, 128);
            assert_eq!(s.preempt_timer, Duration::from_millis(100));
            assert_eq!(s.io_memory, 512 * 1024);
            assert_eq!(s.background_shares, None);
            // The kernel's tick, read when the shard starts.
            assert_eq!(s.timer_slack, None);
        }
    }

    #[test]
    fn timer_slack_us_sets_its_shard_only_zero_included_and_a_change_is_start_only() {
        // Unwraps on configs written here: a failure is the test's.
        let text = format!("{TWO}[[server.shard]]\nid = 1\ntimer_slack_us = 0\n");
        let p = crate::plan::load_str(&text).unwrap();
        assert_eq!(p.server.shard[0].timer_slack, None);
        assert_eq!(p.server.shard[1].timer_slack, Some(Duration::ZERO));
        let q = crate::plan::load_str(&text.replace("= 0\n", "= 250\n")).unwrap();
        assert_eq!(
            q.server.shard[1].timer_slack,
            Some(Duration::from_micros(250))
        );
        assert_eq!(
            start_only(&p.server, &q.server),
            vec![(
                "server.shard[id = 1].timer_slack_us".to_string(),
                "0".to_string(),
                "250".to_string()
            )]
        );
        let r = crate::plan::load_str(TWO).unwrap();
        assert_eq!(
            start_only(&r.server, &q.server)[0].1,
            "the kernel's tick".to_string()
        );
    }

    #[test]
    fn io_is_set_for_every_shard_or_one_and_its_errors_are_named() {
        use crate::net::uring::IoMode;
        let uring = |buffers| IoMode::Uring {
            buffers,
            entries: crate::net::uring::DEFAULT_ENTRIES,
        };
        // The default is the ring, for every shard.
        let p = crate::plan::load_str(TWO).unwrap();
        assert!(p.server.shard.iter().all(|s| s.io == uring(1024)));
        let every = TWO.replace("[server]\n", "[server]\nio = \"uring\"\n");
        let q = crate::plan::load_str(&every).unwrap();
        assert!(q.server.shard.iter().all(|s| s.io == uring(1024)));
        let epoll = TWO.replace("[server]\n", "[server]\nio = \"epoll\"\n");
        let o = crate::plan::load_str(&epoll).unwrap();
        assert!(o.server.shard.iter().all(|s| s.io == IoMode::Epoll));
        assert_eq!(
            start_only(&o.server, &q.server)[0],
            (
                "server.shard[id = 0].io".to_string(),
                "\"epoll\"".to_string(),
                "\"uring\" (1024 buffers)".to_string()
            )
        );
        // A shard's entry overrides server.io, and sets its buffers.
        let text =
            format!("{epoll}[[server.shard]]\nid = 0\nio = \"uring\"\nuring_buffers = 256\n");
        let r = crate::plan::load_str(&text).unwrap();
        assert_eq!(r.server.shard[0].io, uring(256));
        assert_eq!(r.server.shard[1].io, IoMode::Epoll);
        let text = format!(
            "{every}[[server.shard]]\nid = 0\nio = \"epoll\"\n\
             [[server.shard]]\nid = 1\nuring_buffers = 256\n"
        );
        let r = crate::plan::load_str(&text).unwrap();
        assert_eq!(r.server.shard[0].io, IoMode::Epoll);
        assert_eq!(r.server.shard[1].io, uring(256));
        let errors = |text: &str| {
            crate::plan::load_str(text)
                .err()
                .unwrap()
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        };
        let e = errors(&TWO.replace("[server]\n", "[server]\nio = \"poll\"\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("server.io") && e[0].contains("\"poll\""),
            "{e:?}"
        );
        let e = errors(&format!(
            "{every}[[server.shard]]\nid = 1\nuring_buffers = 100\n"
        ));
        assert!(
            e[0].contains("uring_buffers") && e[0].contains("power of two"),
            "{e:?}"
        );
        let e = errors(&format!(
            "{epoll}[[server.shard]]\nid = 1\nuring_buffers = 256\n"
        ));
        assert!(e[0].contains("applies only to a shard with io"), "{e:?}");
    }

    #[test]
    fn an_entry_sets_its_shard_only_and_start_only_names_each_change() {
        let text = format!(
            "{TWO}[[server.shard]]\nid = 1\nlisteners = [\"127.0.0.1:2\"]\nring_depth = 64\n\
             max_connections = 9\n[[server.shard]]\nid = 0\nlisteners = [\"127.0.0.1:1\"]\n"
        );
        let p = crate::plan::load_str(&text).unwrap();
        let one = &p.server.shard[1];
        assert_eq!(one.ring_depth, 64);
        assert_eq!(one.max_connections, 9);
        assert!(one.serves("127.0.0.1:2".parse().unwrap(), false));
        assert!(!one.serves("127.0.0.1:1".parse().unwrap(), false));
        assert_eq!(p.server.shard[0].ring_depth, 128);
        let q = crate::plan::load_str(&text.replace("ring_depth = 64", "ring_depth = 32")).unwrap();
        let changed = start_only(&p.server, &q.server);
        assert_eq!(
            changed,
            vec![(
                "server.shard[id = 1].ring_depth".to_string(),
                "64".to_string(),
                "32".to_string()
            )]
        );
        assert!(start_only(&p.server, &p.server).is_empty());
    }
}
