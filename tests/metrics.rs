//! `/metrics` on the admin listener: exact counts per route and status
//! after known traffic over two shards, histograms consistent with the
//! latencies a client measured, upstream and shard figures, throttling and
//! authorizer denials. The exposition is read by a parser we did not write:
//! Python's `prometheus_client` (tests/prom_parse.py), for the text format
//! and for OpenMetrics. Without python3 or prometheus_client these tests
//! fail; `scripts/test` installs them.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A series' labels, `le` left out.
type Labels = Vec<(String, String)>;

#[derive(Debug)]
struct Parsed {
    families: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

/// Runs tests/prom_parse.py on `text`; panics with its stderr when it fails.
fn parse_with_python(text: &str, mode: &str) -> Parsed {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/prom_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("python3 is needed to check the exposition ({e}); run the tests with scripts/test, which installs it")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition ({mode}): {}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parser's JSON");
    let families = v["families"]
        .as_object()
        .expect("families")
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().unwrap_or_default().to_string()))
        .collect();
    let samples = v["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| Sample {
            name: s[0].as_str().unwrap_or_default().to_string(),
            labels: s[1]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            value: s[2].as_f64().unwrap_or(f64::NAN),
        })
        .collect();
    Parsed { families, samples }
}

impl Parsed {
    /// Samples named `name` whose labels include every pair of `with`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|s| s.value).sum()
    }

    /// The one sample with exactly these labels.
    fn exact(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Checks every histogram: buckets cumulative and in `le` order,
    /// `+Inf` equal to `_count`. Returns how many series were checked.
    fn check_histograms(&self) -> usize {
        let mut checked = 0;
        for (family, kind) in &self.families {
            if kind != "histogram" {
                continue;
            }
            let bucket = format!("{family}_bucket");
            let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for s in self.samples.iter().filter(|s| s.name == bucket) {
                let le: f64 = match s.labels["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("le"),
                };
                let key: Vec<_> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                series.entry(key).or_default().push((le, s.value));
            }
            for (key, buckets) in series {
                let mut last = (f64::NEG_INFINITY, 0.0);
                for &(le, v) in &buckets {
                    assert!(le > last.0, "{family}{key:?}: le out of order: {buckets:?}");
                    assert!(v >= last.1, "{family}{key:?}: not cumulative: {buckets:?}");
                    last = (le, v);
                }
                assert_eq!(last.0, f64::INFINITY, "{family}{key:?}: no +Inf bucket");
                let labels: Vec<(&str, &str)> =
                    key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let count = self
                    .exact(&format!("{family}_count"), &labels)
                    .unwrap_or_else(|| panic!("{family}{key:?}: no _count"));
                assert_eq!(last.1, count, "{family}{key:?}: +Inf bucket != _count");
                assert!(
                    self.exact(&format!("{family}_sum"), &labels).is_some(),
                    "{family}{key:?}: no _sum"
                );
                checked += 1;
            }
        }
        checked
    }
}

fn scrape(gw: &Gateway) -> String {
    let r = http_get(&gw.admin_url("/metrics"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text()
}

/// Scrapes until `done` holds (the exit records a request just after its
/// last byte is written, so a scrape right after the responses may miss
/// the last ones), then returns that scrape parsed.
fn scrape_until(gw: &Gateway, what: &str, done: impl Fn(&Parsed) -> bool) -> Parsed {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = parse_with_python(&scrape(gw), "text");
        if done(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within 10 s; last scrape:\n{}",
            scrape(gw)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `n` GETs of `path`, `per_conn` per keep-alive connection (so many
/// connections, which SO_REUSEPORT spreads over the shards); returns the
/// statuses and the number of connections opened.
fn send(gw: &Gateway, method: &str, path: &str, n: usize, per_conn: usize) -> (Vec<u16>, usize) {
    let mut statuses = Vec::new();
    let mut conns = 0;
    let mut left = n;
    while left > 0 {
        let k = left.min(per_conn);
        let mut c = gw.client();
        conns += 1;
        for _ in 0..k {
            let r = c.request(
                format!("{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
                    .as_bytes(),
            );
            let close = r.says_close();
            statuses.push(r.status);
            if close {
                c = gw.client();
                conns += 1;
            }
        }
        left -= k;
    }
    (statuses, conns)
}

const TWO_SHARDS: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[upstreams]]
name = "echo"
targets = [{ address = "@BACKEND@" }]

[[upstreams]]
name = "slow"
targets = [{ address = "@SLOW@" }]

[[upstreams]]
name = "dead"
targets = [{ address = "@DEAD@" }]

[[apis]]
name = "shop"
detailed_metrics = true

[[apis.routes]]
key = "GET /ok"
integration = { type = "mock", body = 'ok' }

[[apis.routes]]
key = "POST /items"
integration = { type = "mock", status = 201, body = 'made' }

[[apis.routes]]
key = "GET /items/{id}"
integration = { type = "http_proxy", url = "http://echo/items/{id}" }

[[apis.routes]]
key = "GET /slow"
integration = { type = "http_proxy", url = "http://slow/slow" }

[[apis.routes]]
key = "GET /dead"
integration = { type = "http_proxy", url = "http://dead/" }

[[apis]]
name = "plain"
base_path = "/plain"

[[apis.routes]]
key = "GET /a"
integration = { type = "mock", body = 'a' }

[[apis.routes]]
key = "GET /b"
integration = { type = "mock", status = 503, body = 'b' }
"#;

const SLOW_MS: u64 = 120;

#[test]
fn counts_are_exact_per_route_and_status_across_both_shards() {
    let echo = Backend::start(Reply::Echo);
    let slow = Backend::start(Reply::slow(SLOW_MS, Reply::fixed(200, &[], "slow")));
    let dead = refused_addr();
    let gw = Gateway::start(&fill(
        TWO_SHARDS,
        &[
            ("BACKEND", echo.addr_str()),
            ("SLOW", slow.addr_str()),
            ("DEAD", dead.to_string()),
        ],
    ));
    let mut conns = 0;
    let mut expect = |method: &str, path: &str, n: usize, per: usize, status: u16| {
        let (got, c) = send(&gw, method, path, n, per);
        assert!(got.iter().all(|&s| s == status), "{method} {path}: {got:?}");
        conns += c;
    };
    expect("GET", "/ok", 200, 4, 200);
    expect("POST", "/items", 30, 3, 201);
    expect("GET", "/items/7", 50, 5, 200);
    expect("GET", "/plain/a", 20, 2, 200);
    expect("GET", "/plain/b", 10, 2, 503);
    expect("GET", "/nowhere", 10, 2, 404);
    expect("DELETE", "/ok", 5, 1, 405);
    expect("GET", "/dead", 3, 1, 502);
    let started = Instant::now();
    let mut client_ms = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        assert_eq!(gw.client().get("/slow").status, 200);
        client_ms.push(t.elapsed());
        conns += 1;
    }
    let slow_wall = started.elapsed();
    let total = 200 + 30 + 50 + 20 + 10 + 10 + 5 + 3 + 6;

    let p = scrape_until(&gw, "every request counted", |p| {
        p.sum("coregate_requests_total", &[]) >= total as f64
    });
    let req = |labels: &[(&str, &str)]| p.exact("coregate_requests_total", labels);
    assert_eq!(p.sum("coregate_requests_total", &[]), total as f64);
    let route = |r: &str, status: &str, class: &str| {
        req(&[
            ("api", "shop"),
            ("route", r),
            ("status", status),
            ("class", class),
        ])
    };
    assert_eq!(route("GET /ok", "200", "2xx"), Some(200.0));
    assert_eq!(route("POST /items", "201", "2xx"), Some(30.0));
    assert_eq!(route("GET /items/{id}", "200", "2xx"), Some(50.0));
    assert_eq!(route("GET /slow", "200", "2xx"), Some(6.0));
    assert_eq!(route("GET /dead", "502", "5xx"), Some(3.0));
    // An API without detailed metrics has no route label.
    assert_eq!(
        req(&[("api", "plain"), ("status", "200"), ("class", "2xx")]),
        Some(20.0)
    );
    assert_eq!(
        req(&[("api", "plain"), ("status", "503"), ("class", "5xx")]),
        Some(10.0)
    );
    assert_eq!(
        p.sum(
            "coregate_requests_total",
            &[("api", "plain"), ("route", "GET /a")]
        ),
        0.0
    );
    // Requests no route took (404, and 405: a method no route of the path
    // takes) have no api label.
    assert_eq!(req(&[("status", "404"), ("class", "4xx")]), Some(10.0));
    assert_eq!(req(&[("status", "405"), ("class", "4xx")]), Some(5.0));
    assert_eq!(p.sum("coregate_requests_total", &[("class", "5xx")]), 13.0);

    // Both shards took connections, and every connection was counted.
    let accepted = |shard: &str| p.sum("coregate_connections_accepted_total", &[("shard", shard)]);
    assert!(
        accepted("0") > 0.0 && accepted("1") > 0.0,
        "one shard got everything"
    );
    assert_eq!(accepted("0") + accepted("1"), conns as f64);
    // Both shards' reactors took events, and a pass took on average well
    // under a second.
    for shard in ["0", "1"] {
        let passes = p.exact("coregate_reactor_passes_total", &[("shard", shard)]);
        let busy = p.exact("coregate_reactor_busy_seconds_total", &[("shard", shard)]);
        let (Some(passes), Some(busy)) = (passes, busy) else {
            panic!("no reactor figures for shard {shard}");
        };
        assert!(
            passes > 0.0 && busy > 0.0,
            "shard {shard}: {passes} passes, {busy} s"
        );
        assert!(
            busy / passes < 1.0,
            "shard {shard}: {passes} passes, {busy} s"
        );
    }
    assert_eq!(p.exact("coregate_shards", &[]), Some(2.0));
    assert_eq!(p.exact("coregate_shards_scraped", &[]), Some(2.0));
    assert_eq!(p.exact("coregate_config_generation", &[]), Some(1.0));

    // Histograms: consistent, one observation per request.
    assert!(p.check_histograms() >= 8);
    assert_eq!(
        p.sum("coregate_request_duration_seconds_count", &[]),
        total as f64
    );
    let dur = |labels: &[(&str, &str)], le: &str| {
        let mut l = labels.to_vec();
        l.push(("le", le));
        p.exact("coregate_request_duration_seconds_bucket", &l)
    };
    let slow_route = [("api", "shop"), ("route", "GET /slow")];
    // Every slow request took at least SLOW_MS (120 ms): none is at or
    // below 0.1 s, all are within 2.5 s.
    assert_eq!(dur(&slow_route, "0.1"), Some(0.0));
    assert_eq!(dur(&slow_route, "2.5"), Some(6.0));
    let sum = p
        .exact("coregate_request_duration_seconds_sum", &slow_route)
        .expect("sum");
    let floor = 6.0 * SLOW_MS as f64 / 1000.0;
    // The gateway reads its clock after its last write returns, and the
    // client may have the bytes (and read its own clock) before that: on a
    // busy machine the gateway's figure can pass the client's by the time
    // its thread waits to run again. 5 ms per request covers that, and is
    // far from what a clock counting the wrong span would add.
    let ceiling = slow_wall.as_secs_f64() + 6.0 * 0.005;
    assert!(
        sum >= floor && sum <= ceiling,
        "sum {sum} s outside [{floor}, {ceiling}] (client saw {client_ms:?})"
    );
    // The integration latency is the backend's part: the same bounds.
    let mut l = slow_route.to_vec();
    l.push(("le", "0.1"));
    assert_eq!(
        p.exact("coregate_integration_duration_seconds_bucket", &l),
        Some(0.0)
    );
    assert_eq!(
        p.exact("coregate_integration_duration_seconds_count", &slow_route),
        Some(6.0)
    );
    let up = [("upstream", "slow"), ("target", &*slow.addr_str())];
    assert_eq!(
        p.exact("coregate_upstream_response_duration_seconds_count", &up),
        Some(6.0)
    );

    // Upstream targets: each proxied request connected or reused a
    // connection; the dead target refused every attempt.
    let echo_t = [("upstream", "echo"), ("target", &*echo.addr_str())];
    let connects = p
        .exact("coregate_upstream_connects_total", &echo_t)
        .unwrap();
    let reuses = p
        .exact("coregate_upstream_pool_reuses_total", &echo_t)
        .unwrap();
    assert_eq!(
        connects + reuses,
        50.0,
        "connects {connects} reuses {reuses}"
    );
    assert!(reuses >= 30.0, "keep-alive reuse expected: {reuses}");
    let dead_t = [("upstream", "dead"), ("target", &*dead.to_string())];
    assert_eq!(
        p.exact("coregate_upstream_connect_failures_total", &dead_t),
        Some(3.0)
    );
    assert_eq!(
        p.exact("coregate_upstream_connects_total", &dead_t),
        Some(0.0)
    );
    assert_eq!(p.exact("coregate_upstream_in_flight", &echo_t), Some(0.0));
    assert_eq!(p.exact("coregate_upstream_target_up", &echo_t), Some(1.0));

    // Bytes: the mock's response is a fixed size per request.
    let bytes_out = p
        .exact(
            "coregate_response_bytes_total",
            &[("api", "shop"), ("route", "GET /ok")],
        )
        .unwrap();
    assert!(
        bytes_out >= 200.0 * 2.0 && (bytes_out as u64).is_multiple_of(200),
        "{bytes_out}"
    );
    assert!(p.exact("process_resident_memory_bytes", &[]).unwrap() > 0.0);
    assert!(p.exact("process_open_fds", &[]).unwrap() > 0.0);
    assert_eq!(
        p.exact(
            "coregate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
}

#[test]
fn openmetrics_is_served_when_asked_for_and_parses_strictly() {
    let gw = Gateway::start(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "a \"quoted\" \\ api"
detailed_metrics = true

[[apis.routes]]
key = "GET /x"
integration = { type = "mock", body = 'x' }
"#,
    );
    for _ in 0..7 {
        assert_eq!(gw.client().get("/x").status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(
            agent().get(&gw.admin_url("/metrics")).set(
                "accept",
                "application/openmetrics-text; version=1.0.0,text/plain;q=0.5",
            ),
            None,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        let text = r.text();
        assert!(text.ends_with("# EOF\n"));
        let p = parse_with_python(&text, "openmetrics");
        assert_eq!(
            p.families.get("coregate_requests").map(String::as_str),
            Some("counter")
        );
        let n = p
            .matching(
                "coregate_requests_total",
                &[("api", "a \"quoted\" \\ api"), ("route", "GET /x")],
            )
            .map(|s| s.value)
            .sum::<f64>();
        if n == 7.0 {
            p.check_histograms();
            break;
        }
        assert!(Instant::now() < deadline, "7 requests not counted: {text}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn throttled_requests_and_authorizer_denials_are_counted() {
    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/config/keys/example-jwks.json");
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[authorizers]]
name = "partners"
[authorizers.jwt]
issuer = "https://idp.example"
audience = ["coregate"]
jwks_file = "{jwks}"
algorithms = ["RS256"]

[[apis]]
name = "main"
detailed_metrics = true

[[apis.routes]]
key = "GET /limited"
throttle = {{ rate = 0.001, burst = 2 }}
integration = {{ type = "mock", body = 'ok' }}

[[apis.routes]]
key = "GET /secret"
authorizer = "partners"
integration = {{ type = "mock", body = 'ok' }}
"#
    ));
    let (statuses, _) = send(&gw, "GET", "/limited", 7, 7);
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        5,
        "{statuses:?}"
    );
    let (statuses, _) = send(&gw, "GET", "/secret", 4, 4);
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    let p = scrape_until(&gw, "11 requests", |p| {
        p.sum("coregate_requests_total", &[]) >= 11.0
    });
    let limited = [("api", "main"), ("route", "GET /limited")];
    assert_eq!(
        p.exact("coregate_throttled_requests_total", &limited),
        Some(5.0)
    );
    assert_eq!(
        p.exact("coregate_quota_exceeded_requests_total", &limited),
        Some(0.0)
    );
    assert_eq!(
        p.exact(
            "coregate_authorizer_denials_total",
            &[("authorizer", "partners"), ("status", "401")]
        ),
        Some(4.0)
    );
    assert_eq!(
        p.exact(
            "coregate_throttled_requests_total",
            &[("api", "main"), ("route", "GET /secret")]
        ),
        Some(0.0)
    );
}

/// Open connections accepted on a TLS listener are a gauge of their own,
/// counted among the open ones, and go back down when they close.
#[test]
fn open_tls_connections_are_counted_per_shard() {
    use tls_support::*;
    let pki = Pki::new();
    let ca = pki.ca("metrics ca");
    let leaf = pki.server(&ca, "metrics", &["localhost"]);
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[server.tls]
listen = ["127.0.0.1:0"]

[[server.tls.certificates]]
cert = {:?}
key = {:?}

[[apis]]
name = "m"

[[apis.routes]]
key = "GET /h"
integration = {{ type = "mock", body = "ok" }}
"#,
        leaf.cert_path, leaf.key_path
    ));
    let cfg = client_config(&ClientOpts {
        roots: vec![&ca],
        ..ClientOpts::default()
    });
    let mut tls: Vec<TlsClient> = (0..3)
        .map(|_| TlsClient::connect(gw.tls_addr(), "localhost", cfg.clone()).unwrap())
        .collect();
    for c in &mut tls {
        assert_eq!(c.get("/h").status, 200);
    }
    let mut plain = gw.client();
    assert_eq!(plain.get("/h").status, 200);
    let p = scrape_until(&gw, "4 open, 3 of them TLS", |p| {
        p.exact("coregate_connections_tls", &[("shard", "0")]) == Some(3.0)
            && p.exact("coregate_connections_open", &[("shard", "0")]) == Some(4.0)
    });
    assert_eq!(
        p.exact(
            "coregate_connections_accepted_total",
            &[("shard", "0"), ("listener", "tls")]
        ),
        Some(3.0)
    );
    drop(tls);
    scrape_until(&gw, "no TLS connection left", |p| {
        p.exact("coregate_connections_tls", &[("shard", "0")]) == Some(0.0)
            && p.exact("coregate_connections_open", &[("shard", "0")]) == Some(1.0)
    });
}
