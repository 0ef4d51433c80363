//! The dashboard in a real browser: headless Chromium (Debian's
//! `chromium`) loads `/dashboard` while traffic flows, runs its script,
//! and the DOM it renders shows the counts the traffic made: 300 requests
//! sent to one route read 300 in that route's row. Without Chromium this
//! test fails; `scripts/test` installs it.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!("headless Chromium is needed for the dashboard test (Debian package `chromium`); run the tests with scripts/test, which installs it");
}

/// The DOM after the page's script ran for a while (virtual time).
fn dump_dom(url: &str) -> String {
    let profile = temp_path("chromium-profile");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the cell of class `class` in the row whose opening tag
/// contains `row` (attributes as Chromium serialises them).
fn cell(dom: &str, row: &str, class: &str) -> Option<String> {
    let start = dom.find(row)?;
    let end = start + dom[start..].find("</tr>")?;
    let tr = &dom[start..end];
    let open = format!("<td class=\"{class}");
    let at = tr.find(&open)?;
    let text_start = at + tr[at..].find('>')? + 1;
    let text_end = text_start + tr[text_start..].find("</td>")?;
    Some(tr[text_start..text_end].to_string())
}

#[test]
fn the_dashboard_shows_the_traffic_sent_in_a_real_browser() {
    let b = Backend::start(Reply::Echo);
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[upstreams]]
name = "echo"
targets = [{ address = "@B@" }]

[[apis]]
name = "shop"
detailed_metrics = true

[[apis.routes]]
key = "GET /counted"
integration = { type = "mock", body = 'ok' }

[[apis.routes]]
key = "GET /background"
integration = { type = "http_proxy", url = "http://echo/bg" }
"#,
        &[("B", b.addr_str())],
    ));
    // 300 requests to one route, over 30 connections (both shards).
    for _ in 0..30 {
        let mut c = gw.client();
        for _ in 0..10 {
            assert_eq!(c.get("/counted").status, 200);
        }
    }
    // Traffic keeps flowing to another route while the browser loads.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let bg = {
        let (stop, sent, addr) = (stop.clone(), sent.clone(), gw.addr());
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut c = Client::connect(addr);
                for _ in 0..20 {
                    assert_eq!(c.get("/background").status, 200);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    assert!(wait_until(Duration::from_secs(10), || sent
        .load(Ordering::Relaxed)
        > 0));
    let row = "data-api=\"shop\" data-route=\"GET /counted\"";
    let mut dom = String::new();
    let mut shown = None;
    // The exit counts a request just after its response: allow a reload.
    for _ in 0..3 {
        dom = dump_dom(&gw.admin_url("/dashboard"));
        shown = cell(&dom, row, "requests");
        if shown.as_deref() == Some("300") {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    bg.join().expect("background traffic");
    assert_eq!(shown.as_deref(), Some("300"), "the route's row:\n{dom}");
    assert_eq!(cell(&dom, row, "s2xx").as_deref(), Some("300"));
    assert_eq!(cell(&dom, row, "s5xx").as_deref(), Some("0"));
    // The background route is there and moving, the upstream is up, both
    // shards are listed.
    let bg_row = "data-api=\"shop\" data-route=\"GET /background\"";
    let bg_count: u64 = cell(&dom, bg_row, "requests")
        .expect("background row")
        .replace(',', "")
        .parse()
        .expect("a count");
    assert!(bg_count > 0, "{dom}");
    // The API's row adds its routes up, with latency quantiles.
    let api_row = "class=\"api\" data-api=\"shop\"";
    let api_count: u64 = cell(&dom, api_row, "requests")
        .expect("the API's row")
        .replace(',', "")
        .parse()
        .expect("a count");
    assert_eq!(api_count, 300 + bg_count, "{dom}");
    let p50 = cell(&dom, api_row, "p50").expect("p50 cell");
    assert!(p50.ends_with("µs") || p50.ends_with("ms"), "p50 {p50:?}");
    let target = format!("data-upstream=\"echo\" data-target=\"{}\"", b.addr_str());
    let health = cell(&dom, &target, "l health").expect("target row");
    assert!(health.contains(">up<"), "{health}");
    assert!(dom.contains("data-shard=\"0\"") && dom.contains("data-shard=\"1\""));
    assert!(
        dom.contains("live, updated"),
        "the page never got its data:\n{dom}"
    );
}

/// The key table: the keys with the most use, with their quota left, as
/// the usage store has them once the shards' counts are flushed.
#[test]
fn the_dashboard_shows_the_keys_with_the_most_use_and_their_quota_left() {
    let dir = temp_path("dashboard-keys");
    std::fs::create_dir_all(&dir).expect("test dir");
    let keys = dir.join("keys.toml");
    let alice = create_key(&keys, "alice", Some("gold"));
    let bob = create_key(&keys, "bob", Some("gold"));
    let _carol = create_key(&keys, "carol", None);
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2
api_keys_file = "@KEYS@"
data_dir = "@DATA@"
usage_flush_interval_ms = 100

[[usage_plans]]
name = "gold"
apis = ["pets"]
quota = { limit = 1000, period = "DAY" }

[[apis]]
name = "pets"
api_key_required = true

[[apis.routes]]
key = "GET /list"
integration = { type = "mock", body = "pets" }
"#,
        &[
            ("KEYS", keys.display().to_string()),
            ("DATA", dir.join("data").display().to_string()),
        ],
    ));
    // alice 37 requests and bob 12, over several connections (both shards).
    for (key, n) in [(&alice, 37), (&bob, 12)] {
        for chunk in 0..n {
            let mut c = gw.client();
            let r = c.request(
                format!("GET /list HTTP/1.1\r\nHost: t\r\nx-api-key: {key}\r\n\r\n").as_bytes(),
            );
            assert_eq!(r.status, 200, "request {chunk}");
        }
    }
    let row = |name: &str| format!("data-key=\"{name}\"");
    let mut dom = String::new();
    // The shards report every 10 ms and the store is written every 100 ms.
    for _ in 0..10 {
        dom = dump_dom(&gw.admin_url("/dashboard"));
        if cell(&dom, &row("alice"), "used").as_deref() == Some("37")
            && cell(&dom, &row("bob"), "used").as_deref() == Some("12")
        {
            break;
        }
        thread::sleep(Duration::from_millis(300));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        cell(&dom, &row("alice"), "used").as_deref(),
        Some("37"),
        "{dom}"
    );
    assert_eq!(cell(&dom, &row("alice"), "today").as_deref(), Some("37"));
    assert_eq!(cell(&dom, &row("alice"), "limit").as_deref(), Some("1,000"));
    assert_eq!(cell(&dom, &row("alice"), "left").as_deref(), Some("963"));
    assert_eq!(cell(&dom, &row("bob"), "left").as_deref(), Some("988"));
    assert_eq!(cell(&dom, &row("carol"), "today").as_deref(), Some("0"));
    // Most used first.
    let (a, b, c) = (
        dom.find(&row("alice")).expect("alice"),
        dom.find(&row("bob")).expect("bob"),
        dom.find(&row("carol")).expect("carol"),
    );
    assert!(a < b && b < c, "order alice, bob, carol:\n{dom}");
}
