//! The exposition: merged figures as Prometheus text format 0.0.4, or as
//! OpenMetrics 1.0 when the scraper asks for it (its `Accept` header names
//! `application/openmetrics-text`). The two differ in three places: an
//! OpenMetrics counter family is named without its `_total` suffix, the
//! text ends with `# EOF`, and the content type.
//!
//! Every metric is documented in docs/observability.md; the tests parse
//! this output with Python's `prometheus_client` parsers.

use super::hist::{HistSnapshot, BOUND_LABELS, BUCKETS};
use super::process::ProcessInfo;
use super::snapshot::{Merged, SeriesSnapshot};
use std::fmt::Write;

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header value asks for OpenMetrics.
pub fn wants_openmetrics(accept: &[u8]) -> bool {
    accept
        .windows(b"application/openmetrics-text".len())
        .any(|w| w.eq_ignore_ascii_case(b"application/openmetrics-text"))
}

/// What the exposition says about the process besides the shards' counts.
#[derive(Debug, Clone)]
pub struct Info<'a> {
    pub version: &'a str,
    pub process: ProcessInfo,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Out {
    s: String,
    om: bool,
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl Out {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let family = match (self.om, kind) {
            (true, Kind::Counter) => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        // HELP texts here hold no backslash or line feed to escape.
        let _ = writeln!(self.s, "# HELP {family} {help}");
        let _ = writeln!(self.s, "# TYPE {family} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.s.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.s.push(',');
            }
            self.s.push_str(k);
            self.s.push_str("=\"");
            escape_label(v, &mut self.s);
            self.s.push('"');
        }
        self.s.push('}');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.s.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.s, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistSnapshot) {
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", ""));
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for i in 0..BUCKETS {
            cumulative = cumulative.wrapping_add(h.counts[i]);
            let le = BOUND_LABELS.get(i).copied().unwrap_or("+Inf");
            if let Some(last) = with_le.last_mut() {
                last.1 = le;
            }
            self.sample(&bucket, &with_le, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

fn series_labels(s: &SeriesSnapshot) -> Vec<(&str, &str)> {
    let mut l = Vec::with_capacity(4);
    if let Some(a) = &s.api {
        l.push(("api", a.as_str()));
    }
    if let Some(r) = &s.route {
        l.push(("route", r.as_str()));
    }
    if let Some(st) = &s.stage {
        l.push(("stage", st.as_str()));
    }
    if let Some(d) = &s.deployment {
        l.push(("deployment", d.as_str()));
    }
    l
}

/// Renders the merged figures; `om` selects OpenMetrics.
pub fn render(m: &Merged, info: &Info<'_>, om: bool) -> String {
    let mut o = Out {
        s: String::with_capacity(16 * 1024),
        om,
    };

    // === requests ===
    o.family(
        "coregate_requests_total",
        Kind::Counter,
        "Requests finished, by API (and route, where the API has detailed_metrics), exact status and status class; no api label: requests no route took.",
    );
    for s in &m.series {
        let base = series_labels(s);
        for (label, n) in &s.statuses {
            let status = label.status();
            let mut l = base.clone();
            l.push(("status", &status));
            l.push(("class", label.class()));
            o.sample("coregate_requests_total", &l, n);
        }
    }
    o.family(
        "coregate_request_duration_seconds",
        Kind::Histogram,
        "Time from a request's parsed head to the last byte of its response.",
    );
    for s in &m.series {
        o.histogram(
            "coregate_request_duration_seconds",
            &series_labels(s),
            &s.duration,
        );
    }
    o.family(
        "coregate_integration_duration_seconds",
        Kind::Histogram,
        "Time from the upstream connection being ready to the upstream's response head (proxied requests that got one).",
    );
    for s in m.series.iter().filter(|s| s.integration.count() > 0) {
        o.histogram(
            "coregate_integration_duration_seconds",
            &series_labels(s),
            &s.integration,
        );
    }
    type Field = fn(&SeriesSnapshot) -> u64;
    let counters: [(&str, &str, Field); 6] = [
        (
            "coregate_request_bytes_total",
            "Bytes received from clients: request heads and bodies.",
            |s| s.bytes_in,
        ),
        (
            "coregate_response_bytes_total",
            "Bytes written to clients: response heads and bodies.",
            |s| s.bytes_out,
        ),
        (
            "coregate_cache_hits_total",
            "Requests answered from the response cache.",
            |s| s.cache_hits,
        ),
        (
            "coregate_cache_misses_total",
            "Cacheable requests the cache could not answer.",
            |s| s.cache_misses,
        ),
        (
            "coregate_throttled_requests_total",
            "Requests refused with 429 by a throttle (token bucket).",
            |s| s.throttled,
        ),
        (
            "coregate_quota_exceeded_requests_total",
            "Requests refused with 429 because the API key's usage-plan quota was used up.",
            |s| s.quota_exceeded,
        ),
    ];
    for (name, help, field) in counters {
        o.family(name, Kind::Counter, help);
        for s in &m.series {
            o.sample(name, &series_labels(s), field(s));
        }
    }
    o.family(
        "coregate_authorizer_denials_total",
        Kind::Counter,
        "Requests an authorizer refused, by authorizer and status (401, 403; 500 when the authorizer failed).",
    );
    for a in &m.authorizers {
        for (label, n) in &a.statuses {
            let status = label.status();
            o.sample(
                "coregate_authorizer_denials_total",
                &[("authorizer", &a.name), ("status", &status)],
                n,
            );
        }
    }

    // === upstream targets ===
    type TField = fn(&super::snapshot::MergedTarget) -> u64;
    let targets: [(&str, Kind, &str, TField); 7] = [
        (
            "coregate_upstream_connects_total",
            Kind::Counter,
            "New connections opened to the target (TCP, and TLS for https://).",
            |t| t.t.connects,
        ),
        (
            "coregate_upstream_connect_failures_total",
            Kind::Counter,
            "Connection attempts to the target that failed or timed out.",
            |t| t.t.connect_failures,
        ),
        (
            "coregate_upstream_pool_reuses_total",
            Kind::Counter,
            "Requests sent on a pooled keep-alive connection.",
            |t| t.t.reuses,
        ),
        (
            "coregate_upstream_in_flight",
            Kind::Gauge,
            "Requests in flight to the target.",
            |t| t.t.in_flight,
        ),
        (
            "coregate_upstream_idle_connections",
            Kind::Gauge,
            "Idle connections in the target's pools.",
            |t| t.t.idle,
        ),
        (
            "coregate_upstream_target_up",
            Kind::Gauge,
            "1 when no shard has the target cooling down after failures (passive health), else 0.",
            |t| u64::from(t.cooling_shards == 0),
        ),
        (
            "coregate_upstream_cooling_down_shards",
            Kind::Gauge,
            "Shards on which the target is cooling down after failures.",
            |t| t.cooling_shards,
        ),
    ];
    for (name, kind, help, field) in targets {
        o.family(name, kind, help);
        for t in &m.targets {
            o.sample(
                name,
                &[("upstream", &t.t.upstream), ("target", &t.t.target)],
                field(t),
            );
        }
    }
    o.family(
        "coregate_upstream_response_duration_seconds",
        Kind::Histogram,
        "Time from the connection being ready to the target's response head.",
    );
    for t in &m.targets {
        o.histogram(
            "coregate_upstream_response_duration_seconds",
            &[("upstream", &t.t.upstream), ("target", &t.t.target)],
            &t.t.response,
        );
    }

    // === WebSocket APIs ===
    type WField = fn(&super::snapshot::WsSnapshot) -> u64;
    let ws: [(&str, &str, WField); 5] = [
        (
            "coregate_websocket_connects_total",
            "WebSocket connections opened (101 sent), on the API's $connect route (AWS: ConnectCount).",
            |w| w.connects,
        ),
        (
            "coregate_websocket_messages_total",
            "Messages from clients, by the route they took; route \"@connections\": messages pushed (AWS: MessageCount).",
            |w| w.messages,
        ),
        (
            "coregate_websocket_integration_errors_total",
            "Integration answers that were not 2xx (AWS: IntegrationError).",
            |w| w.integration_errors,
        ),
        (
            "coregate_websocket_client_errors_total",
            "Refused by the gateway before the integration: handshakes refused with 4xx, messages no route takes, frames that broke the protocol or a limit (route \"(frames)\") (AWS: ClientError).",
            |w| w.client_errors,
        ),
        (
            "coregate_websocket_execution_errors_total",
            "Integration calls that got no answer: connect failure, reset, invalid response, timeout (AWS: ExecutionError).",
            |w| w.execution_errors,
        ),
    ];
    for (name, help, field) in ws {
        o.family(name, Kind::Counter, help);
        for w in &m.websocket {
            o.sample(name, &[("api", &w.api), ("route", &w.route)], field(w));
        }
    }
    // Relayed by http_proxy routes: only the routes that relayed one.
    let relayed = |w: &&super::snapshot::WsSnapshot| {
        w.proxy_bytes_from_client > 0 || w.proxy_bytes_from_backend > 0
    };
    type PField = fn(&super::snapshot::WsSnapshot) -> (u64, u64);
    let proxy: [(&str, &str, PField); 2] = [
        (
            "coregate_websocket_proxy_messages_total",
            "Messages relayed through http_proxy routes, by the side that sent them.",
            |w| (w.messages, w.proxy_messages_from_backend),
        ),
        (
            "coregate_websocket_proxy_bytes_total",
            "Bytes (frames, headers included) relayed through http_proxy routes, by the side that sent them.",
            |w| (w.proxy_bytes_from_client, w.proxy_bytes_from_backend),
        ),
    ];
    for (name, help, field) in proxy {
        o.family(name, Kind::Counter, help);
        for w in m.websocket.iter().filter(relayed) {
            let (client, backend) = field(w);
            for (from, v) in [("client", client), ("backend", backend)] {
                o.sample(
                    name,
                    &[("api", &w.api), ("route", &w.route), ("from", from)],
                    v,
                );
            }
        }
    }
    o.family(
        "coregate_websocket_integration_duration_seconds",
        Kind::Histogram,
        "Time of a WebSocket route's http integration call that got an answer (AWS: IntegrationLatency).",
    );
    for w in m.websocket.iter().filter(|w| w.integration.count() > 0) {
        o.histogram(
            "coregate_websocket_integration_duration_seconds",
            &[("api", &w.api), ("route", &w.route)],
            &w.integration,
        );
    }

    // === shards ===
    type CField = fn(&super::snapshot::ConnSnapshot) -> u64;
    let shard_gauges: [(&str, Kind, &str, CField); 5] = [
        (
            "coregate_connections_open",
            Kind::Gauge,
            "Open client connections on the shard (idle and parked ones included).",
            |c| c.open,
        ),
        (
            "coregate_connections_idle",
            Kind::Gauge,
            "Client connections waiting for a request.",
            |c| c.idle,
        ),
        (
            "coregate_connections_parked",
            Kind::Gauge,
            "Idle client connections parked without a task.",
            |c| c.parked,
        ),
        (
            "coregate_connections_tls",
            Kind::Gauge,
            "Open client connections accepted on a TLS listener.",
            |c| c.tls_open,
        ),
        (
            "coregate_tls_handshake_failures_total",
            Kind::Counter,
            "TLS handshakes with clients that failed or timed out.",
            |c| c.tls_failures,
        ),
    ];
    for (name, kind, help, field) in shard_gauges {
        o.family(name, kind, help);
        for (id, c) in &m.shards {
            let id = id.to_string();
            o.sample(name, &[("shard", &id)], field(c));
        }
    }
    o.family(
        "coregate_reactor_passes_total",
        Kind::Counter,
        "Passes of the shard's socket reactor that found events and ran the tasks they woke.",
    );
    for (id, c) in &m.shards {
        o.sample(
            "coregate_reactor_passes_total",
            &[("shard", &id.to_string())],
            c.reactor_passes,
        );
    }
    o.family(
        "coregate_reactor_busy_seconds_total",
        Kind::Counter,
        "Time those passes took; divided by the passes, the shard's mean loop time under load.",
    );
    for (id, c) in &m.shards {
        o.sample(
            "coregate_reactor_busy_seconds_total",
            &[("shard", &id.to_string())],
            c.reactor_busy_ns as f64 / 1e9,
        );
    }
    o.family(
        "coregate_spliced_bytes_total",
        Kind::Counter,
        "Body bytes moved from socket to socket with splice, without a copy through user space, by shard and direction (to the client: response bodies; to the upstream: request bodies).",
    );
    for (id, c) in &m.shards {
        let id = id.to_string();
        o.sample(
            "coregate_spliced_bytes_total",
            &[("shard", &id), ("direction", "to_client")],
            c.spliced_to_client,
        );
        o.sample(
            "coregate_spliced_bytes_total",
            &[("shard", &id), ("direction", "to_upstream")],
            c.spliced_to_upstream,
        );
    }
    o.family(
        "coregate_connections_accepted_total",
        Kind::Counter,
        "Client connections accepted, by shard and listener kind (plain or tls).",
    );
    for (id, c) in &m.shards {
        let id = id.to_string();
        o.sample(
            "coregate_connections_accepted_total",
            &[("shard", &id), ("listener", "plain")],
            c.accepted,
        );
        o.sample(
            "coregate_connections_accepted_total",
            &[("shard", &id), ("listener", "tls")],
            c.accepted_tls,
        );
    }

    // === the gateway and the process ===
    o.family("coregate_shards", Kind::Gauge, "Shards the gateway runs.");
    o.sample("coregate_shards", &[], m.shards_expected);
    o.family(
        "coregate_shards_scraped",
        Kind::Gauge,
        "Shards whose figures are in this scrape (fewer than coregate_shards while draining).",
    );
    o.sample("coregate_shards_scraped", &[], m.shards.len());
    o.family(
        "coregate_config_generation",
        Kind::Gauge,
        "The plan generation new requests start on (1 for the config read at start).",
    );
    o.sample("coregate_config_generation", &[], m.generation);
    o.family(
        "coregate_build_info",
        Kind::Gauge,
        "Always 1; the labels say which build runs.",
    );
    o.sample("coregate_build_info", &[("version", info.version)], 1);
    let p = &info.process;
    o.family(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the process since the Unix epoch, in seconds.",
    );
    o.sample("process_start_time_seconds", &[], p.start_time);
    if let Some(v) = p.cpu_seconds {
        o.family(
            "process_cpu_seconds_total",
            Kind::Counter,
            "User and system CPU time spent, in seconds.",
        );
        o.sample("process_cpu_seconds_total", &[], v);
    }
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size, in bytes.",
            p.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size, in bytes.",
            p.virtual_bytes,
        ),
        ("process_open_fds", "Open file descriptors.", p.open_fds),
        (
            "process_max_fds",
            "The most file descriptors the process may open.",
            p.max_fds,
        ),
        ("process_threads", "Threads of the process.", p.threads),
    ];
    for (name, help, v) in gauges {
        if let Some(v) = v {
            o.family(name, Kind::Gauge, help);
            o.sample(name, &[], v);
        }
    }
    if om {
        o.s.push_str("# EOF\n");
    }
    o.s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::snapshot::StatusLabel;

    fn merged() -> Merged {
        let mut duration = HistSnapshot::default();
        duration.counts[0] = 2;
        duration.counts[20] = 1;
        duration.sum_us = 61_000_050;
        Merged {
            shards: vec![(0, Default::default())],
            shards_expected: 1,
            generation: 1,
            series: vec![SeriesSnapshot {
                api: Some("we\"ird\\api\nname".into()),
                route: Some("GET /a".into()),
                statuses: vec![(StatusLabel::Code(200), 2), (StatusLabel::Code(0), 1)],
                duration,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn label_values_are_escaped_and_buckets_cumulative() {
        let info = Info {
            version: "0.1.0",
            process: ProcessInfo::default(),
        };
        let text = render(&merged(), &info, false);
        assert!(text.contains(
            "coregate_requests_total{api=\"we\\\"ird\\\\api\\nname\",route=\"GET /a\",status=\"200\",class=\"2xx\"} 2\n"
        ), "{text}");
        assert!(text.contains("status=\"0\",class=\"none\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.000025\"} 2\n"));
        assert!(text.contains("le=\"60.0\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 3\n"));
        assert!(text.contains("coregate_request_duration_seconds_count{api=\"we\\\"ird\\\\api\\nname\",route=\"GET /a\"} 3\n"));
        assert!(text.contains("# TYPE coregate_requests_total counter\n"));
        assert!(!text.contains("# EOF"));
        let om = render(&merged(), &info, true);
        assert!(om.contains("# TYPE coregate_requests counter\n"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn openmetrics_is_asked_for_by_accept() {
        assert!(wants_openmetrics(
            b"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        ));
        assert!(!wants_openmetrics(b"text/plain"));
    }
}
