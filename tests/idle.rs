//! An idle gateway does not wake for nothing. With no traffic, a shard's
//! control loop waits for its bell (every sender of a control message rings
//! it), its access-log flush task sleeps until the next line, the
//! access-log writer blocks until it is handed a buffer, and the main
//! thread waits for a signal or an admin request. Counted over real
//! seconds with the real binary, as voluntary context switches per thread
//! (/proc/PID/task/TID/status): before, a shard woke about 50 times a
//! second (the control inbox's 25 ms look, the flush task's 100 ms tick),
//! the main thread 50 times (a 20 ms look at the signal flags) and each
//! writer 10 times. And what those timers served still works at once after
//! the idle time: a scrape reaches every shard, a line is logged with the
//! right time, SIGUSR1 reopens the file, SIGTERM stops the gateway.
//! Unwraps are on the test's own files and on values it has just checked.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

const SHARDS: usize = 2;

fn config(log: &Path) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = {SHARDS}\n\n[[apis]]\nname = \"a\"\n\
         access_log = {{ format = '$context.requestId $context.requestTimeEpoch', destination = \"{}\" }}\n\n\
         [[apis.routes]]\nkey = \"GET /x\"\nintegration = {{ type = \"mock\", body = \"ok\" }}\n",
        log.display()
    )
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How many requests `/metrics` counts for API `a`, over all shards.
fn requests_counted(gw: &Gateway) -> u64 {
    let r = http_get(&gw.admin_url("/metrics"));
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with("coregate_requests_total{") && l.contains("api=\"a\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn an_idle_gateway_sleeps_and_still_answers_at_once() {
    let log = temp_path("log");
    let _ = std::fs::remove_file(&log);
    let mut gw = Gateway::start(&config(&log));
    // One request per shard's listener on average: enough that the flush
    // task and the writer have run before the idle time starts.
    for _ in 0..4 {
        assert_eq!(Client::connect(gw.addr()).get("/x").status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(5), || lines(&log).len() == 4),
        "the first lines were not logged: {:?}",
        lines(&log)
    );
    // Let every periodic task that had work go back to sleep.
    std::thread::sleep(Duration::from_millis(1500));

    let idle = Duration::from_secs(3);
    let before = voluntary_switches(gw.pid());
    std::thread::sleep(idle);
    let after = voluntary_switches(gw.pid());
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    let shards = delta("coregate-shard-");
    let main = delta("main");
    let writer = delta("coregate-access");
    eprintln!("voluntary context switches in {idle:?} idle: shards {shards}, main {main}, writer {writer}; all: {after:?}");
    assert!(
        after.contains_key("coregate-shard-") && after.contains_key("coregate-access"),
        "{after:?}"
    );
    // What is left: each shard's upstream-pool sweep and the admin
    // listener's dashboard sample, once a second each, a few switches per
    // wake. Before, 50 wakes a second per shard.
    assert!(
        shards <= 20 * SHARDS as u64,
        "shards woke {shards} times in {idle:?}"
    );
    // The main thread looks at its flags once a second when nothing wakes it.
    assert!(main <= 10, "the main thread woke {main} times in {idle:?}");
    assert!(
        writer <= 3,
        "the access-log writer woke {writer} times in {idle:?}"
    );

    // A scrape reaches every shard (each answers on its inbox's ring).
    assert_eq!(requests_counted(&gw), 4);

    // A line after the idle time is written, with the time of its request
    // (the shard's wall-clock base is read again after the flush task slept).
    let sent = now_ms();
    assert_eq!(Client::connect(gw.addr()).get("/x").status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || lines(&log).len() == 5),
        "the line after the idle time was not logged: {:?}",
        lines(&log)
    );
    let last = lines(&log).pop().unwrap();
    let epoch: u64 = last.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        epoch + 1000 >= sent && epoch <= now_ms() + 1000,
        "logged time {epoch} for a request sent at {sent}: {last}"
    );

    // SIGUSR1 after the idle time: the writer, blocked on its queue, is
    // woken and reopens the renamed file.
    let moved = log.with_extension("log.1");
    std::fs::rename(&log, &moved).unwrap();
    gw.signal(libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || log.exists()),
        "SIGUSR1 did not reopen the access log; stderr: {}",
        gw.stderr()
    );
    assert_eq!(Client::connect(gw.addr()).get("/x").status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || lines(&log).len() == 1),
        "no line in the reopened file"
    );
    assert_eq!(lines(&moved).len(), 5);

    // SIGTERM is taken at once (no line is in flight; the drain is quick).
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(5));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "stderr: {}",
        gw.stderr()
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&moved);
}
