//! Access logs and the error log over real sockets, with the real binary:
//! a line with the right fields for every way a request ends, values a
//! client controls escaped so that parsers we did not write (serde_json,
//! Python's csv and xml modules) read each line as one record with the
//! client's bytes inside one field, SIGUSR1 reopening a renamed file,
//! dropped and lost lines counted and reported, and the error log's format
//! and levels. Unwraps are on the test's own files and on values the test
//! has just checked.

mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

/// Every variable, as a JSON object with one key per variable.
const ALL_JSON: &str = r#"{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","ua":"$context.identity.userAgent","time":"$context.requestTime","epoch":"$context.requestTimeEpoch","method":"$context.httpMethod","routeKey":"$context.routeKey","path":"$context.path","status":"$context.status","protocol":"$context.protocol","length":"$context.responseLength","latency":"$context.responseLatency","ilatency":"$context.integrationLatency","istatus":"$context.integrationStatus","error":"$context.error.message","principal":"$context.authorizer.principalId","key":"$context.identity.apiKeyName","cache":"$context.cacheStatus","api":"$context.apiId","upstream":"$context.upstream.name","target":"$context.upstream.target"}"#;

fn log_path() -> PathBuf {
    let p = temp_path("log");
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

/// Waits until `p` holds at least `n` lines and returns them.
#[track_caller]
fn wait_lines(p: &Path, n: usize) -> Vec<String> {
    wait_until(Duration::from_secs(10), || read_lines(p).len() >= n);
    let lines = read_lines(p);
    assert!(lines.len() >= n, "expected {n} lines in {p:?}: {lines:#?}");
    lines
}

fn json_lines(lines: &[String]) -> Vec<HashMap<String, String>> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<HashMap<String, String>>(l)
                .unwrap_or_else(|e| panic!("not a JSON object of strings ({e}): {l}"))
        })
        .collect()
}

#[test]
fn every_kind_of_exit_gets_a_line_with_its_fields() {
    let log = log_path();
    let keys = temp_path("keys.toml");
    let _ = std::fs::remove_file(&keys);
    let key = create_key(&keys, "alice", None);
    let backend = Backend::start(Reply::fixed(201, &[], "made"));
    let slow = Backend::start(Reply::slow(3000, Reply::Echo));
    let dead = refused_addr();
    let config = fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1
api_keys_file = "@KEYS@"
access_log = { format = '@FORMAT@', destination = "@LOG@" }

[[upstreams]]
name = "b"
targets = [{ address = "@B@" }]

[[upstreams]]
name = "slow"
targets = [{ address = "@SLOW@" }]
timeout_ms = 300

[[apis]]
name = "t"
base_path = "/t"
access_log = { format = '@FORMAT@', destination = "@LOG@" }

[[apis.routes]]
key = "GET /mock"
integration = { type = "mock", body = "ok" }

[[apis.routes]]
key = "POST /mock"
integration = { type = "mock", body = "ok" }

[[apis.routes]]
key = "GET /proxy"
integration = { type = "http_proxy", url = "http://b/made" }

[[apis.routes]]
key = "GET /cached"
integration = { type = "http_proxy", url = "http://b/made" }
cache = { ttl_seconds = 60, cacheable_statuses = [201] }

[[apis.routes]]
key = "GET /keyed"
api_key_required = true
integration = { type = "mock", body = "ok" }

[[apis.routes]]
key = "GET /throttled"
throttle = { rate = 0.001, burst = 1 }
integration = { type = "mock", body = "ok" }

[[apis.routes]]
key = "GET /dead"
integration = { type = "http_proxy", url = "http://@DEAD@/" }

[[apis.routes]]
key = "GET /slow"
integration = { type = "http_proxy", url = "http://slow/" }
"#,
        &[
            ("KEYS", keys.display().to_string()),
            ("FORMAT", ALL_JSON.to_string()),
            ("LOG", log.display().to_string()),
            ("B", backend.addr_str()),
            ("SLOW", slow.addr_str()),
            ("DEAD", dead.to_string()),
        ],
    );
    let gw = Gateway::start(&config);
    let send = |id: &str, req: &str, extra: &str| -> u16 {
        let mut c = gw.client();
        let (line, rest) = req.split_once(' ').unwrap();
        c.request(
            format!(
                "{line} {rest} HTTP/1.1\r\nHost: test\r\nUser-Agent: tester/{id}\r\nx-request-id: {id}\r\n{extra}\r\n"
            )
            .as_bytes(),
        )
        .status
    };
    assert_eq!(send("mock", "GET /t/mock", ""), 200);
    assert_eq!(send("proxy", "GET /t/proxy?q=1", ""), 201);
    assert_eq!(send("miss", "GET /t/cached", ""), 201);
    assert_eq!(send("hit", "GET /t/cached", ""), 201);
    assert_eq!(send("refused", "GET /t/keyed", ""), 403);
    assert_eq!(
        send("keyed", "GET /t/keyed", &format!("x-api-key: {key}\r\n")),
        200
    );
    assert_eq!(send("first", "GET /t/throttled", ""), 200);
    assert_eq!(send("throttled", "GET /t/throttled", ""), 429);
    assert_eq!(send("dead", "GET /t/dead", ""), 502);
    assert_eq!(send("slow", "GET /t/slow", ""), 504);
    assert_eq!(send("noroute", "GET /t/nothing", ""), 404);
    assert_eq!(send("noapi", "GET /elsewhere", ""), 404);
    // A client that goes away in the middle of its body: no response.
    let mut gone = gw.client();
    gone.send(b"POST /t/mock HTTP/1.1\r\nHost: test\r\nx-request-id: gone\r\nContent-Length: 100\r\n\r\nabc");
    drop(gone);
    // A head the connection loop refuses: no request exists.
    let mut bad = gw.client();
    let r = bad.request(b"GET /t/mock HTTP/1.1\r\nHost: test\r\nbad header\r\n\r\n");
    assert_eq!(r.status, 400);

    let lines = json_lines(&wait_lines(&log, 14));
    assert_eq!(lines.len(), 14, "{lines:#?}");
    let by_id: HashMap<&str, &HashMap<String, String>> =
        lines.iter().map(|l| (l["requestId"].as_str(), l)).collect();
    let line = |id: &str| {
        by_id
            .get(id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"))
    };
    let check = |id: &str, want: &[(&str, &str)]| {
        let l = line(id);
        for (k, v) in want {
            assert_eq!(l[*k], *v, "{id}: {k} in {l:#?}");
        }
    };
    // Fields every line of a parsed request has.
    for l in lines.iter().filter(|l| l["method"] != "-") {
        assert_eq!(l["ip"], "127.0.0.1", "{l:?}");
        assert_eq!(l["protocol"], "HTTP/1.1", "{l:?}");
        if l["requestId"] != "gone" {
            assert_eq!(l["ua"], format!("tester/{}", l["requestId"]), "{l:?}");
        }
        assert!(l["latency"].parse::<u64>().is_ok(), "{l:?}");
        let epoch: u64 = l["epoch"].parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(epoch <= now && now - epoch < 120_000, "{l:?}");
        assert!(
            l["time"].ends_with(" +0000") && l["time"].len() == 26,
            "{l:?}"
        );
    }
    let target = backend.addr_str();
    check(
        "mock",
        &[
            ("method", "GET"),
            ("routeKey", "GET /mock"),
            ("path", "/t/mock"),
            ("status", "200"),
            ("api", "t"),
            ("istatus", "-"),
            ("ilatency", "-"),
            ("upstream", "-"),
            ("target", "-"),
            ("cache", "-"),
            ("error", "-"),
            ("key", "-"),
        ],
    );
    check(
        "proxy",
        &[
            ("routeKey", "GET /proxy"),
            ("path", "/t/proxy"),
            ("status", "201"),
            ("istatus", "201"),
            ("upstream", "b"),
            ("target", &target),
            ("cache", "-"),
        ],
    );
    assert!(line("proxy")["ilatency"].parse::<u64>().is_ok());
    assert!(line("proxy")["length"].parse::<u64>().unwrap() > 4);
    check(
        "miss",
        &[("cache", "miss"), ("istatus", "201"), ("upstream", "b")],
    );
    check(
        "hit",
        &[
            ("cache", "hit"),
            ("status", "201"),
            ("istatus", "-"),
            ("upstream", "-"),
        ],
    );
    check(
        "refused",
        &[("status", "403"), ("error", "Forbidden"), ("key", "-")],
    );
    check(
        "keyed",
        &[("status", "200"), ("key", "alice"), ("principal", "alice")],
    );
    check("first", &[("status", "200"), ("error", "-")]);
    check(
        "throttled",
        &[("status", "429"), ("routeKey", "GET /throttled")],
    );
    assert_ne!(line("throttled")["error"], "-");
    check(
        "dead",
        &[
            ("status", "502"),
            ("error", "Bad Gateway"),
            ("istatus", "-"),
            ("target", &dead.to_string()),
        ],
    );
    check(
        "slow",
        &[
            ("status", "504"),
            ("error", "Gateway Timeout"),
            ("upstream", "slow"),
        ],
    );
    check(
        "noroute",
        &[
            ("status", "404"),
            ("routeKey", "-"),
            ("api", "t"),
            ("path", "/t/nothing"),
        ],
    );
    check(
        "noapi",
        &[("status", "404"), ("routeKey", "-"), ("api", "-")],
    );
    check(
        "gone",
        &[
            ("status", "0"),
            ("length", "0"),
            ("method", "POST"),
            ("routeKey", "POST /mock"),
            ("error", "client closed the connection"),
            ("ua", "-"),
        ],
    );
    let refused: Vec<_> = lines.iter().filter(|l| l["method"] == "-").collect();
    assert_eq!(refused.len(), 1, "{lines:#?}");
    let l = refused[0];
    for (k, v) in [
        ("status", "400"),
        ("routeKey", "-"),
        ("path", "-"),
        ("protocol", "-"),
        ("api", "-"),
        ("ip", "127.0.0.1"),
    ] {
        assert_eq!(l[k], v, "parser error: {k} in {l:#?}");
    }
    assert_eq!(l["requestId"].len(), 32, "{l:?}");
    // The error log's line about the failed connect names the request.
    let err = gw.stderr();
    assert!(
        err.lines()
            .any(|l| l.contains(" warn shard=0 request=dead upstream ")
                && l.contains("connect failed")),
        "{err}"
    );
}

/// A request id, a User-Agent and a path with every character that could
/// end a field or a record in one of the formats.
const HOSTILE_ID: &str = r#"id"},{"status":"999",<x>&amp;,\"#;
const HOSTILE_AGENT: &[u8] =
    b"ua\", \"status\":\"999\" </ua><status>999</status>&amp;,\\ \t\xff\xc3\xa9";
const HOSTILE_PATH: &str = r#"/p"q,r<s>&t\u"#;

fn python(script: &str, input: &Path) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(input)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn hostile_values_stay_inside_their_field_in_every_format() {
    let files: Vec<(String, PathBuf)> = [
        "json", "xml", "csv", "clf", "c-json", "c-xml", "c-csv", "c-text",
    ]
    .iter()
    .map(|n| (n.to_string(), log_path()))
    .collect();
    let custom = |e: &str| {
        match e {
        "json" => r#"{"id":"$context.requestId","ua":"$context.identity.userAgent","path":"$context.path","status":"$context.status"}"#.to_string(),
        "xml" => r#"<r id="$context.requestId"><ua>$context.identity.userAgent</ua><path>$context.path</path><status>$context.status</status></r>"#.to_string(),
        "csv" => "$context.requestId,$context.identity.userAgent,$context.path,$context.status".to_string(),
        _ => "$context.requestId $context.identity.userAgent $context.path $context.status".to_string(),
    }
    };
    let mut config = String::from("[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\n");
    for (name, path) in &files {
        let table = match name.strip_prefix("c-") {
            Some(e) => format!(
                "{{ format = '{}', escape = \"{e}\", destination = \"{}\" }}",
                custom(e),
                path.display()
            ),
            None => format!(
                "{{ preset = \"{name}\", destination = \"{}\" }}",
                path.display()
            ),
        };
        config.push_str(&format!(
            "\n[[apis]]\nname = \"{name}\"\nbase_path = \"/{name}\"\naccess_log = {table}\n\n[[apis.routes]]\nkey = \"ANY /{{proxy+}}\"\nintegration = {{ type = \"mock\", body = \"ok\" }}\n"
        ));
    }
    let gw = Gateway::start(&config);
    for (name, _) in &files {
        let mut req = format!("GET /{name}{HOSTILE_PATH} HTTP/1.1\r\nHost: test\r\nx-request-id: {HOSTILE_ID}\r\nUser-Agent: ").into_bytes();
        req.extend_from_slice(HOSTILE_AGENT);
        req.extend_from_slice(b"\r\n\r\n");
        let r = gw.client().request(&req);
        assert_eq!(r.status, 200, "{name}: {r:?}");
        assert_eq!(r.header("x-request-id"), Some(HOSTILE_ID));
    }
    let agent = String::from_utf8_lossy(HOSTILE_AGENT).into_owned();
    let file = |n: &str| files.iter().find(|(f, _)| f == n).unwrap().1.clone();
    for (name, path) in &files {
        let lines = wait_lines(path, 1);
        assert_eq!(lines.len(), 1, "{name}: one request, one line: {lines:#?}");
    }

    // JSON: serde_json reads one object whose fields hold the values.
    let l: Value = serde_json::from_str(&read_lines(&file("json"))[0]).unwrap();
    let keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "requestId",
        "ip",
        "requestTime",
        "httpMethod",
        "routeKey",
        "status",
        "protocol",
        "responseLength",
    ];
    want.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, want);
    assert_eq!(l["requestId"], HOSTILE_ID);
    assert_eq!(l["status"], "200");
    assert_eq!(l["routeKey"], "ANY /{proxy+}");
    let l: Value = serde_json::from_str(&read_lines(&file("c-json"))[0]).unwrap();
    assert_eq!(l.as_object().unwrap().len(), 4, "{l}");
    assert_eq!(l["id"], HOSTILE_ID);
    assert_eq!(l["ua"], agent);
    assert_eq!(l["path"], format!("/c-json{HOSTILE_PATH}"));
    assert_eq!(l["status"], "200");

    // XML: Python's ElementTree parses the record; the values come back.
    let xml = r#"
import sys, xml.etree.ElementTree as ET
for line in open(sys.argv[1], encoding="utf-8"):
    r = ET.fromstring(line)
    print(r.tag, r.get("id"), sep="\t")
    for c in r:
        print(c.tag, c.text, sep="\t")
"#;
    let out = python(xml, &file("xml"));
    let got: Vec<(&str, &str)> = out.lines().map(|l| l.split_once('\t').unwrap()).collect();
    assert_eq!(got[0], ("request", HOSTILE_ID));
    let tags: Vec<&str> = got[1..].iter().map(|(t, _)| *t).collect();
    assert_eq!(
        tags,
        [
            "ip",
            "requestTime",
            "httpMethod",
            "routeKey",
            "status",
            "protocol",
            "responseLength"
        ]
    );
    assert!(got.contains(&("status", "200")), "{got:?}");
    let out = python(xml, &file("c-xml"));
    let got: Vec<(&str, &str)> = out.lines().map(|l| l.split_once('\t').unwrap()).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0], ("r", HOSTILE_ID));
    // The tab is kept (as &#9;); the invalid byte is U+FFFD.
    assert_eq!(got[1], ("ua", agent.as_str()));
    assert_eq!(got[2], ("path", format!("/c-xml{HOSTILE_PATH}").as_str()));
    assert_eq!(got[3], ("status", "200"));

    // CSV: Python's csv module reads one record of the preset's 8 fields.
    let csv = r#"
import sys, csv, json
rows = list(csv.reader(open(sys.argv[1], encoding="utf-8", newline="")))
print(json.dumps(rows))
"#;
    let rows: Vec<Vec<String>> = serde_json::from_str(&python(csv, &file("csv"))).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].len(), 8, "{rows:?}");
    assert_eq!(rows[0][0], "127.0.0.1");
    assert_eq!(rows[0][2], "GET");
    assert_eq!(rows[0][3], "ANY /{proxy+}");
    assert_eq!(rows[0][5], "200");
    assert_eq!(rows[0][7], HOSTILE_ID);
    let rows: Vec<Vec<String>> = serde_json::from_str(&python(csv, &file("c-csv"))).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].len(), 4, "{rows:?}");
    assert_eq!(rows[0][0], HOSTILE_ID);
    assert_eq!(
        rows[0][1],
        r#"ua", "status":"999" </ua><status>999</status>&amp;,\ \x09\xff\xc3\xa9"#
    );
    assert_eq!(rows[0][2], format!("/c-csv{HOSTILE_PATH}"));
    assert_eq!(rows[0][3], "200");

    // CLF and text: no quote or backslash but the format's own.
    let l = &read_lines(&file("clf"))[0];
    let (head, rest) = l.split_once(" - - [").unwrap();
    assert_eq!(head, "127.0.0.1");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert_eq!(time.len(), 26);
    assert!(
        rest.starts_with(r#""GET ANY /{proxy+} HTTP/1.1" 200 "#),
        "{l}"
    );
    assert!(
        rest.ends_with(r#" id\x22},{\x22status\x22:\x22999\x22,<x>&amp;,\x5c"#),
        "{l}"
    );
    assert_eq!(rest.matches('"').count(), 2, "{l}");
    let l = &read_lines(&file("c-text"))[0];
    assert_eq!(
        l.split(' ').next().unwrap(),
        r#"id\x22},{\x22status\x22:\x22999\x22,<x>&amp;,\x5c"#
    );
    assert!(!l.contains('"') && !l.contains('\t'), "{l}");
    assert!(l.ends_with(" 200"), "{l}");
}

#[test]
fn sigusr1_reopens_the_file_after_a_rename() {
    let log = log_path();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\n\n[[apis]]\nname = \"a\"\naccess_log = {{ preset = \"clf\", destination = \"{}\" }}\n\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = {{ type = \"mock\", body = \"ok\" }}\n",
        log.display()
    );
    let gw = Gateway::start(&config);
    let mut c = gw.client();
    for i in 0..5 {
        let r = c.request(
            format!("GET /x HTTP/1.1\r\nHost: t\r\nx-request-id: before-{i}\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200);
    }
    wait_lines(&log, 5);
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal(libc::SIGUSR1);
    gw.wait_stderr_line(Duration::from_secs(5), |l| l.contains("reopened"))
        .unwrap_or_else(|| panic!("no reopen line: {}", gw.stderr()));
    for i in 0..7 {
        let r = c.request(
            format!("GET /x HTTP/1.1\r\nHost: t\r\nx-request-id: after-{i}\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200);
    }
    let new = wait_lines(&log, 7);
    assert_eq!(new.len(), 7, "{new:#?}");
    assert!(new.iter().all(|l| l.contains(" after-")), "{new:#?}");
    let old = read_lines(&rotated);
    assert_eq!(old.len(), 5, "{old:#?}");
    assert!(old.iter().all(|l| l.contains(" before-")), "{old:#?}");
    let _ = std::fs::remove_file(&rotated);
}

/// The sum of the counts in the lines matching `what`, at `word`'s
/// position: "dropped N line(s)" or "N line(s) lost".
fn reported(stderr: &str, what: &str, before: bool) -> u64 {
    stderr
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            let i = words.iter().position(|w| *w == "line(s)")?;
            let n = if before { words[i - 1] } else { words[i + 1] };
            n.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn a_stalled_writer_drops_lines_and_counts_every_one() {
    // The destination is a pipe nobody reads until the end: the writer
    // blocks once the pipe is full, its queue fills, and shards drop.
    let fifo = log_path();
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string and a mode.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    use std::os::unix::fs::OpenOptionsExt;
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\n\n[[apis]]\nname = \"a\"\naccess_log = {{ format = '$context.requestId $context.identity.userAgent', destination = \"{}\" }}\n\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = {{ type = \"mock\", body = \"ok\" }}\n",
        fifo.display()
    );
    let mut gw = Gateway::start(&config);
    // 4 KiB lines: 1 MiB of queue and 64 KiB of pipe hold about 270.
    let agent = "a".repeat(4000);
    let sent = 1500;
    let mut conns: Vec<Client> = (0..4).map(|_| gw.client()).collect();
    for i in 0..sent {
        let c = &mut conns[i % 4];
        let r = c.request(
            format!(
                "GET /x HTTP/1.1\r\nHost: t\r\nx-request-id: r{i}\r\nUser-Agent: {agent}\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 200);
    }
    gw.wait_stderr_line(Duration::from_secs(5), |l| l.contains("dropped"))
        .unwrap_or_else(|| panic!("no line about dropped lines: {}", gw.stderr()));
    // Now read everything; the gateway stops and the writer closes the pipe.
    let read = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        all
    });
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let all = read.join().unwrap();
    let written = all.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() as u64;
    let dropped = reported(&gw.stderr(), "its writer is behind", true);
    assert!(dropped > 0, "{}", gw.stderr());
    assert_eq!(
        written + dropped,
        sent as u64,
        "every line written or counted as dropped; stderr:\n{}",
        gw.stderr()
    );
    let _ = std::fs::remove_file(&fifo);
}

#[test]
fn a_full_disk_loses_lines_with_a_report_and_requests_go_on() {
    let config = "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\n\n[[apis]]\nname = \"a\"\naccess_log = { preset = \"json\", destination = \"/dev/full\" }\n\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = { type = \"mock\", body = \"ok\" }\n";
    let gw = Gateway::start(config);
    let mut c = gw.client();
    for _ in 0..20 {
        assert_eq!(c.get("/x").status, 200);
    }
    let line = gw
        .wait_stderr_line(Duration::from_secs(5), |l| l.contains("write failed"))
        .unwrap_or_else(|| panic!("no report: {}", gw.stderr()));
    assert!(
        line.contains("/dev/full") && line.contains(" error "),
        "{line}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || reported(
            &gw.stderr(),
            "write failed",
            true
        ) == 20),
        "every line counted: {}",
        gw.stderr()
    );
    assert_eq!(c.get("/x").status, 200);
}

#[test]
fn config_errors_name_the_key_and_the_variable() {
    let bad = |table: &str| {
        let p = write_config(&format!(
            "[[apis]]\nname = \"a\"\naccess_log = {table}\n\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = {{ type = \"mock\" }}\n"
        ));
        let out = run_coregate(&["check", "--config", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{table}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = bad("{ format = '$context.status $context.requestIdd', destination = \"stdout\" }");
    assert!(
        e.contains("apis[0].access_log.format")
            && e.contains("unknown variable $context.requestIdd"),
        "{e}"
    );
    let e = bad("{ preset = \"yaml\", destination = \"stdout\" }");
    assert!(e.contains("apis[0].access_log.preset"), "{e}");
    let e = bad("{ preset = \"clf\" }");
    assert!(e.contains("apis[0].access_log.destination"), "{e}");
    let e = bad("{ preset = \"clf\", format = \"x\", destination = \"stdout\" }");
    assert!(e.contains("not both"), "{e}");
    let e = bad("{ preset = \"clf\", destination = \"/no/such/dir/a.log\" }");
    assert!(e.contains("does not exist"), "{e}");
    let e = bad("{ format = 'x', escape = \"yaml\", destination = \"stdout\" }");
    assert!(e.contains("apis[0].access_log.escape"), "{e}");
}

#[test]
fn stdout_gets_lines_from_every_shard() {
    let config = "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\n\n[[apis]]\nname = \"a\"\naccess_log = { preset = \"json\", destination = \"stdout\" }\n\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = { type = \"mock\", body = \"ok\" }\n";
    let gw = Gateway::start(config);
    let n = 200;
    for i in 0..n {
        let r = gw.client().request(
            format!("GET /x HTTP/1.1\r\nHost: t\r\nx-request-id: s{i}\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200);
    }
    let count = || gw.stdout().lines().filter(|l| l.starts_with('{')).count();
    assert!(wait_until(Duration::from_secs(10), || count() >= n));
    let lines: Vec<String> = gw
        .stdout()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_string)
        .collect();
    let mut ids: Vec<String> = json_lines(&lines)
        .into_iter()
        .map(|l| l["requestId"].clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "each request once");
}

/// `time level shard=N|- [request=ID] message`.
fn well_formed(line: &str) -> bool {
    let mut w = line.split(' ');
    let (Some(time), Some(level), Some(shard)) = (w.next(), w.next(), w.next()) else {
        return false;
    };
    let b = time.as_bytes();
    time.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && time.ends_with('Z')
        && ["error", "warn", "info", "debug"].contains(&level)
        && shard
            .strip_prefix("shard=")
            .is_some_and(|s| s == "-" || s.parse::<usize>().is_ok())
}

fn start_with_args(config: &str, extra: &[&str]) -> Gateway {
    let path = write_config(config);
    let mut args: Vec<std::ffi::OsString> =
        vec!["serve".into(), "--config".into(), path.clone().into()];
    args.extend(extra.iter().map(|a| a.into()));
    Gateway::spawn(&args, None, 1, path, config)
}

#[test]
fn debug_lines_come_for_the_debug_api_only_and_levels_filter() {
    let config = "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\n\n[[apis]]\nname = \"loud\"\nbase_path = \"/loud\"\ndebug = true\n\n[[apis.routes]]\nkey = \"GET /x\"\nthrottle = { rate = 100, burst = 100 }\nintegration = { type = \"mock\", body = \"ok\" }\n\n[[apis]]\nname = \"quiet\"\nbase_path = \"/quiet\"\n\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = { type = \"mock\", body = \"ok\" }\n";
    let gw = start_with_args(config, &["--log-level", "debug"]);
    let mut c = gw.client();
    let r = c.request(b"GET /loud/x HTTP/1.1\r\nHost: t\r\nx-request-id: loud-1\r\n\r\n");
    assert_eq!(r.status, 200);
    let r = c.request(b"GET /quiet/x HTTP/1.1\r\nHost: t\r\nx-request-id: quiet-1\r\n\r\n");
    assert_eq!(r.status, 200);
    gw.wait_stderr_line(Duration::from_secs(5), |l| {
        l.contains("finished: status 200")
    })
    .unwrap_or_else(|| panic!("no debug line: {}", gw.stderr()));
    let err = gw.stderr();
    let debug: Vec<&str> = err.lines().filter(|l| l.contains(" debug ")).collect();
    assert!(
        debug.iter().all(|l| l.contains(" shard=0 request=loud-1 ")),
        "{err}"
    );
    assert!(
        debug.iter().any(|l| l.contains("phase Throttle: continue")),
        "{err}"
    );
    assert!(
        debug.iter().any(|l| l.contains("routed to \"GET /x\"")),
        "{err}"
    );
    assert!(!err.contains("quiet-1"), "{err}");
    assert!(err.lines().all(well_formed), "{err}");
    assert!(err.contains(" info shard=- "), "{err}");

    // At warn, the start-up's info line is not written.
    let mut gw = start_with_args(config, &["--log-level=warn"]);
    let r = gw
        .client()
        .request(b"GET /loud/x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    let err = gw.stderr();
    assert!(!err.contains(" info ") && !err.contains(" debug "), "{err}");

    let out = run_coregate(&["serve", "--log-level", "loud"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
