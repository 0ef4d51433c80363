//! Copies of a shard's counters that can cross threads, and their merge.
//! A shard builds its [`ShardSnapshot`] on its own thread when asked over
//! its control inbox; the admin listener merges one per shard
//! ([`merge`]): counters and histogram buckets add up, so the merged
//! figures are exact, whatever shard served which request.

use super::hist::HistSnapshot;

/// Index of a status's class: 0 for no response (0), 1..=5 for 1xx..5xx,
/// 6 for anything else an upstream sent.
#[inline]
pub fn class_index(status: u16) -> usize {
    match status {
        0 => 0,
        100..=599 => usize::from(status / 100),
        _ => 6,
    }
}

/// A status label: an exact code, or the class of statuses that found no
/// free slot (see [`super::shard::STATUS_SLOTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusLabel {
    Code(u16),
    /// Class index as [`class_index`] gives it.
    Other(u8),
}

impl StatusLabel {
    /// The `status` label value: the code, or `other`.
    pub fn status(&self) -> String {
        match self {
            StatusLabel::Code(c) => c.to_string(),
            StatusLabel::Other(_) => "other".to_string(),
        }
    }

    /// The `class` label value: `none` (no response), `1xx`..`5xx`, `other`.
    pub fn class(&self) -> &'static str {
        let i = match self {
            StatusLabel::Code(c) => class_index(*c),
            StatusLabel::Other(i) => usize::from(*i),
        };
        ["none", "1xx", "2xx", "3xx", "4xx", "5xx", "other"][i.min(6)]
    }
}

/// One request series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesSnapshot {
    /// `None`: requests no route took.
    pub api: Option<String>,
    /// Set for a route of an API with detailed metrics.
    pub route: Option<String>,
    /// The stage and the deployment, for an API with stages.
    pub stage: Option<String>,
    pub deployment: Option<String>,
    /// Sorted by label.
    pub statuses: Vec<(StatusLabel, u64)>,
    pub duration: HistSnapshot,
    pub integration: HistSnapshot,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub throttled: u64,
    pub quota_exceeded: u64,
}

impl SeriesSnapshot {
    pub fn requests(&self) -> u64 {
        self.statuses.iter().map(|(_, n)| n).sum()
    }

    /// Requests whose status class is `class` (`"4xx"`, `"5xx"`, ...).
    pub fn requests_of_class(&self, class: &str) -> u64 {
        self.statuses
            .iter()
            .filter(|(l, _)| l.class() == class)
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds `o`'s counts and histograms; the labels stay `self`'s.
    pub fn add(&mut self, o: &SeriesSnapshot) {
        add_statuses(&mut self.statuses, &o.statuses);
        self.duration.add(&o.duration);
        self.integration.add(&o.integration);
        self.bytes_in = self.bytes_in.wrapping_add(o.bytes_in);
        self.bytes_out = self.bytes_out.wrapping_add(o.bytes_out);
        self.cache_hits = self.cache_hits.wrapping_add(o.cache_hits);
        self.cache_misses = self.cache_misses.wrapping_add(o.cache_misses);
        self.throttled = self.throttled.wrapping_add(o.throttled);
        self.quota_exceeded = self.quota_exceeded.wrapping_add(o.quota_exceeded);
    }
}

fn add_statuses(into: &mut Vec<(StatusLabel, u64)>, from: &[(StatusLabel, u64)]) {
    for &(l, n) in from {
        match into.iter_mut().find(|(k, _)| *k == l) {
            Some((_, m)) => *m = m.wrapping_add(n),
            None => into.push((l, n)),
        }
    }
    into.sort_unstable_by_key(|(l, _)| *l);
}

/// One upstream target as one shard sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetSnapshot {
    pub upstream: String,
    /// The target's address as written in the config.
    pub target: String,
    pub connects: u64,
    pub connect_failures: u64,
    pub reuses: u64,
    pub in_flight: u64,
    pub idle: u64,
    /// Cooling down after failures (passive health) on this shard.
    pub cooling: bool,
    pub response: HistSnapshot,
}

/// A target merged over the shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergedTarget {
    pub t: TargetSnapshot,
    /// Shards on which the target is cooling down.
    pub cooling_shards: u64,
}

/// Denials (and errors) of one authorizer, by status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerSnapshot {
    pub name: String,
    pub statuses: Vec<(StatusLabel, u64)>,
}

/// One WebSocket API route's counters (docs/websocket.md, "Metrics").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WsSnapshot {
    pub api: String,
    pub route: String,
    pub connects: u64,
    pub messages: u64,
    pub integration_errors: u64,
    pub client_errors: u64,
    pub execution_errors: u64,
    pub integration: HistSnapshot,
    /// An `http_proxy` route relaying WebSockets: messages from the
    /// backend, bytes each way (its messages from clients are `messages`).
    pub proxy_messages_from_backend: u64,
    pub proxy_bytes_from_client: u64,
    pub proxy_bytes_from_backend: u64,
}

impl WsSnapshot {
    fn add(&mut self, o: &WsSnapshot) {
        self.connects = self.connects.wrapping_add(o.connects);
        self.messages = self.messages.wrapping_add(o.messages);
        self.integration_errors = self.integration_errors.wrapping_add(o.integration_errors);
        self.client_errors = self.client_errors.wrapping_add(o.client_errors);
        self.execution_errors = self.execution_errors.wrapping_add(o.execution_errors);
        self.integration.add(&o.integration);
        self.proxy_messages_from_backend = self
            .proxy_messages_from_backend
            .wrapping_add(o.proxy_messages_from_backend);
        self.proxy_bytes_from_client = self
            .proxy_bytes_from_client
            .wrapping_add(o.proxy_bytes_from_client);
        self.proxy_bytes_from_backend = self
            .proxy_bytes_from_backend
            .wrapping_add(o.proxy_bytes_from_backend);
    }
}

/// A shard's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnSnapshot {
    /// Open client connections (parked ones included).
    pub open: u64,
    /// Of those, waiting for a request.
    pub idle: u64,
    /// Of those, parked without a task.
    pub parked: u64,
    /// Of the open ones, those accepted on a TLS listener.
    pub tls_open: u64,
    /// The reactor's busy passes and their time in nanoseconds
    /// (`net::loop_stats`).
    pub reactor_passes: u64,
    pub reactor_busy_ns: u64,
    pub accepted: u64,
    pub accepted_tls: u64,
    pub tls_failures: u64,
    /// Body bytes spliced to clients and to upstreams
    /// (`net::splice::spliced_bytes`).
    pub spliced_to_client: u64,
    pub spliced_to_upstream: u64,
}

/// Everything one shard counted.
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// The generation new requests start on.
    pub generation: u64,
    pub series: Vec<SeriesSnapshot>,
    pub targets: Vec<TargetSnapshot>,
    pub authorizers: Vec<AuthorizerSnapshot>,
    pub conns: ConnSnapshot,
    /// WebSocket APIs' routes.
    pub websocket: Vec<WsSnapshot>,
}

/// Every shard's figures added up.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    /// Per shard that answered, in shard order.
    pub shards: Vec<(usize, ConnSnapshot)>,
    /// Shards the gateway runs; more than `shards.len()` when some did not
    /// answer in time (draining, or stuck).
    pub shards_expected: usize,
    /// The highest generation a shard serves.
    pub generation: u64,
    /// In the order the first shard lists them.
    pub series: Vec<SeriesSnapshot>,
    pub targets: Vec<MergedTarget>,
    pub authorizers: Vec<AuthorizerSnapshot>,
    pub websocket: Vec<WsSnapshot>,
}

/// Adds up the shards' snapshots.
pub fn merge(mut shards: Vec<ShardSnapshot>, expected: usize) -> Merged {
    shards.sort_by_key(|s| s.shard);
    let mut m = Merged {
        shards_expected: expected,
        ..Merged::default()
    };
    for s in shards {
        m.shards.push((s.shard, s.conns));
        m.generation = m.generation.max(s.generation);
        for x in &s.series {
            match m.series.iter_mut().find(|y| {
                y.api == x.api
                    && y.route == x.route
                    && y.stage == x.stage
                    && y.deployment == x.deployment
            }) {
                Some(y) => y.add(x),
                None => m.series.push(x.clone()),
            }
        }
        for t in s.targets {
            let cooling = u64::from(t.cooling);
            match m
                .targets
                .iter_mut()
                .find(|y| y.t.upstream == t.upstream && y.t.target == t.target)
            {
                Some(y) => {
                    let u = &mut y.t;
                    u.connects += t.connects;
                    u.connect_failures += t.connect_failures;
                    u.reuses += t.reuses;
                    u.in_flight += t.in_flight;
                    u.idle += t.idle;
                    u.cooling |= t.cooling;
                    u.response.add(&t.response);
                    y.cooling_shards += cooling;
                }
                None => m.targets.push(MergedTarget {
                    t,
                    cooling_shards: cooling,
                }),
            }
        }
        for a in s.authorizers {
            match m.authorizers.iter_mut().find(|y| y.name == a.name) {
                Some(y) => add_statuses(&mut y.statuses, &a.statuses),
                None => m.authorizers.push(a),
            }
        }
        for w in s.websocket {
            match m
                .websocket
                .iter_mut()
                .find(|y| y.api == w.api && y.route == w.route)
            {
                Some(y) => y.add(&w),
                None => m.websocket.push(w),
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(api: &str, statuses: &[(u16, u64)]) -> SeriesSnapshot {
        let mut duration = HistSnapshot::default();
        duration.counts[3] = statuses.iter().map(|(_, n)| n).sum();
        SeriesSnapshot {
            api: Some(api.into()),
            statuses: statuses
                .iter()
                .map(|&(c, n)| (StatusLabel::Code(c), n))
                .collect(),
            duration,
            bytes_in: 10,
            ..SeriesSnapshot::default()
        }
    }

    #[test]
    fn shards_add_up_exactly() {
        let a = ShardSnapshot {
            shard: 1,
            generation: 1,
            series: vec![series("x", &[(200, 3), (404, 1)])],
            ..ShardSnapshot::default()
        };
        let b = ShardSnapshot {
            shard: 0,
            generation: 1,
            series: vec![series("x", &[(200, 2), (500, 4)]), series("y", &[(200, 1)])],
            ..ShardSnapshot::default()
        };
        let m = merge(vec![a, b], 2);
        assert_eq!(m.shards.len(), 2);
        assert_eq!(m.shards[0].0, 0);
        let x = &m.series[0];
        assert_eq!(x.api.as_deref(), Some("x"));
        assert_eq!(
            x.statuses,
            vec![
                (StatusLabel::Code(200), 5),
                (StatusLabel::Code(404), 1),
                (StatusLabel::Code(500), 4)
            ]
        );
        assert_eq!(x.duration.count(), 10);
        assert_eq!(x.requests(), 10);
        assert_eq!(x.requests_of_class("5xx"), 4);
        assert_eq!(x.bytes_in, 20);
        assert_eq!(m.series[1].requests(), 1);
    }

    #[test]
    fn classes_name_no_response_and_overflow() {
        assert_eq!(StatusLabel::Code(0).class(), "none");
        assert_eq!(StatusLabel::Code(204).class(), "2xx");
        assert_eq!(StatusLabel::Code(999).class(), "other");
        assert_eq!(StatusLabel::Other(4).class(), "4xx");
        assert_eq!(StatusLabel::Other(4).status(), "other");
    }
}
