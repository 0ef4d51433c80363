//! Access logs across a reload, over real sockets with the real binary: a
//! request in flight when a reload changes its API's access-log destination
//! and format is logged to the destination and in the format of the
//! generation it started on; later requests go to the new one; the old
//! file is closed once that request has been logged (no descriptor leak),
//! and a destination the reload keeps keeps its one open file. Unwraps are
//! on the test's own files and threads.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

fn log_path(tag: &str) -> PathBuf {
    let p = temp_path(&format!("{tag}.log"));
    let _ = std::fs::remove_file(&p);
    p
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read(p)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// How many of the gateway's file descriptors are open on `p`.
fn open_fds(pid: u32, p: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target == p)
        .count()
}

fn config(backend: &str, api_log: &Path, format: &str, other_log: &Path) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[apis]]
name = "a"
base_path = "/a"
access_log = {{ format = '{format} $context.path $context.status', destination = "{}" }}

[[apis.routes]]
key = "GET /slow"
integration = {{ type = "http_proxy", url = "http://{backend}/slow" }}

[[apis.routes]]
key = "GET /fast"
integration = {{ type = "mock", body = "ok" }}

[[apis]]
name = "b"
base_path = "/b"
access_log = {{ format = 'B $context.path', destination = "{}" }}

[[apis.routes]]
key = "GET /x"
integration = {{ type = "mock", body = "ok" }}
"#,
        api_log.display(),
        other_log.display()
    )
}

#[test]
fn a_request_in_flight_across_a_reload_is_logged_where_and_as_its_generation_said() {
    let backend = Backend::start(Reply::slow(1000, Reply::fixed(200, &[], "slow")));
    let (old, new, other) = (log_path("old"), log_path("new"), log_path("other"));
    let gw = Gateway::start(&config(&backend.addr_str(), &old, "OLD", &other));
    let pid = gw.pid();
    assert!(
        wait_until(Duration::from_secs(5), || open_fds(pid, &old) == 1
            && open_fds(pid, &other) == 1),
        "each log file open once: {} {}",
        open_fds(pid, &old),
        open_fds(pid, &other)
    );

    // A request that takes a second, in flight during the reload.
    let addr = gw.addr();
    let slow = std::thread::spawn(move || Client::connect(addr).get("/a/slow"));
    assert!(backend.wait_heads(1, Duration::from_secs(5)));
    gw.reload_with(&config(&backend.addr_str(), &new, "NEW", &other));
    assert!(
        !slow.is_finished(),
        "the slow request ended before the reload did: the test proves nothing"
    );
    // While it is in flight, its generation's file stays open.
    assert_eq!(open_fds(pid, &old), 1, "the old file is closed too early");

    let r = Client::connect(gw.addr()).get("/a/fast");
    assert_eq!(r.status, 200);
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
    let r = Client::connect(gw.addr()).get("/b/x");
    assert_eq!(r.status, 200);

    assert!(
        wait_until(Duration::from_secs(10), || {
            read_lines(&old).len() == 1 && read_lines(&new).len() == 1
        }),
        "old: {:?}\nnew: {:?}\n{}",
        read_lines(&old),
        read_lines(&new),
        gw.stderr()
    );
    assert_eq!(read_lines(&old), ["OLD /a/slow 200"]);
    assert_eq!(read_lines(&new), ["NEW /a/fast 200"]);
    // The destination both generations name kept its writer and its file.
    assert!(
        wait_until(Duration::from_secs(10), || read_lines(&other).len() == 1),
        "{:?}",
        read_lines(&other)
    );
    assert_eq!(read_lines(&other), ["B /b/x"]);
    assert_eq!(open_fds(pid, &other), 1, "the kept file is open once");

    // The old file is closed once its last request is logged.
    assert!(
        wait_until(Duration::from_secs(10), || open_fds(pid, &old) == 0),
        "the old access log is still open: {} descriptor(s)",
        open_fds(pid, &old)
    );
    assert_eq!(open_fds(pid, &new), 1);
    for p in [old, new, other] {
        let _ = std::fs::remove_file(p);
    }
}
