//! `coregate check`: every shipped config in config/ passes; broken configs
//! exit 1 with one `error:` line per problem naming the key (and the line
//! for TOML syntax errors); bad usage exits 2. Also `serve` refusing a bad
//! config instead of starting.

mod support;

use std::path::Path;
use std::process::Command;
use support::*;

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'ok' }
"#;

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check_text(text: &str) -> Checked {
    let path = write_config(text);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts exit 1 and returns the `error:` lines.
fn expect_errors(text: &str) -> Vec<String> {
    let c = check_text(text);
    assert_eq!(
        c.code,
        Some(1),
        "expected exit 1 for:\n{text}\nstdout: {}\nstderr: {}",
        c.stdout,
        c.stderr
    );
    let errors: Vec<String> = c
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(str::to_string)
        .collect();
    assert!(
        !errors.is_empty(),
        "no `error: ...` lines on stderr: {}",
        c.stderr
    );
    errors
}

fn assert_some_line(errors: &[String], needles: &[&str]) {
    assert!(
        errors.iter().any(|l| needles.iter().all(|n| l.contains(n))),
        "no error line containing all of {needles:?}: {errors:#?}"
    );
}

#[test]
fn every_shipped_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|p| p.ends_with("coregate.toml")),
        "config/coregate.toml (the demo config) is missing"
    );
    for f in files {
        let out = run_coregate(&["check", "--config", f.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} fails check:\n{}{}",
            f.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.trim() == "ok" || l.starts_with("ok")),
            "{}: no `ok` on stdout: {stdout}",
            f.display()
        );
    }
}

#[test]
fn good_config_prints_ok_and_a_summary() {
    let c = check_text(GOOD);
    assert_eq!(c.code, Some(0), "stderr: {}", c.stderr);
    assert!(c.stdout.starts_with("ok"), "stdout: {}", c.stdout);
    assert!(
        c.stdout.trim().len() > 2,
        "expected a summary after `ok`: {}",
        c.stdout
    );
}

#[test]
fn unknown_keys_are_each_reported() {
    let errors = expect_errors(
        r#"
[server]
listen = ["127.0.0.1:0"]
bogus_key = 1

[server.limits]
max_header = 10

[[apis]]
name = "main"

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'ok' }
"#,
    );
    assert_some_line(&errors, &["server.bogus_key"]);
    assert_some_line(&errors, &["server.limits.max_header"]);
    assert_some_line(&errors, &["server.bogus_key", "line 4"]);
}

#[test]
fn unknown_integration_field_is_reported() {
    let errors = expect_errors(
        r#"
[[apis]]
name = "main"

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'ok', colour = "blue" }
"#,
    );
    assert_some_line(&errors, &["colour"]);
}

#[test]
fn bad_values_name_their_key() {
    let errors = expect_errors(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 0

[server.limits]
max_headers = 0

[[upstreams]]
name = "pool"
balance = "random"
targets = [{ address = "127.0.0.1:9000", weight = 0 }]

[[apis]]
name = "main"

[[apis.routes]]
key = "FETCH /x"
integration = { type = "mock", body = 'ok' }

[[apis.routes]]
key = "GET /y"
integration = { type = "mock", status = 99 }

[[apis.routes]]
key = "GET /z"
integration = { type = "http_proxy", url = "ftp://example.com/" }
"#,
    );
    for key in [
        "server.shards",
        "server.limits.max_headers",
        "upstreams[0].balance",
        "upstreams[0].targets[0].weight",
        "apis[0].routes[0].key",
        "apis[0].routes[1].integration.status",
        "apis[0].routes[2].integration.url",
    ] {
        assert_some_line(&errors, &[key]);
    }
    assert!(
        errors.len() >= 7,
        "every problem on its own line: {errors:#?}"
    );
}

#[test]
fn wrong_type_names_key_and_line() {
    let errors = expect_errors(
        r#"
[server]
listen = ["127.0.0.1:0"]

[server.limits]
max_headers = "lots"

[[apis]]
name = "main"
[[apis.routes]]
key = "GET /health"
integration = { type = "mock", body = 'ok' }
"#,
    );
    assert_some_line(&errors, &["max_headers", "line 6"]);
}

#[test]
fn toml_syntax_error_names_the_line() {
    let errors = expect_errors(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = \n\n[[apis]]\nname = \"x\"\n",
    );
    assert_some_line(&errors, &["line 3"]);
    let errors = expect_errors("[server\nlisten = 1\n");
    assert_some_line(&errors, &["line 1"]);
}

#[test]
fn missing_config_file_is_an_error() {
    let out = run_coregate(&["check", "--config", "/nonexistent/coregate-test.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("error: ")),
        "stderr: {stderr}"
    );
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["frobnicate"][..],
        &["check", "--config"][..],
        &["serve", "--no-such-flag"][..],
    ] {
        let out = run_coregate(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "coregate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn serve_refuses_an_invalid_config() {
    let path = write_config("[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 0\n\n[[apis]]\nname = \"main\"\n[[apis.routes]]\nkey = \"GET /h\"\nintegration = { type = \"mock\" }\n");
    let out = run_coregate(&["serve", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.shards"), "stderr: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}

fn demo_config_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/coregate.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn nothing_listens_on(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(
        &addr.parse().unwrap(),
        std::time::Duration::from_millis(200),
    )
    .is_err()
}

#[test]
fn demo_config_answers_at_once_without_a_backend() {
    // The demo config as shipped, moved to an ephemeral port.
    let text = demo_config_text();
    let listen = text
        .lines()
        .find(|l| l.trim_start().starts_with("listen"))
        .expect("the demo config sets server.listen")
        .to_string();
    let gw = Gateway::start(&text.replacen(&listen, "listen = [\"127.0.0.1:0\"]", 1));
    let mut c = gw.client();
    let r = c.get("/health");
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.get("/demo/hello");
    assert_eq!(r.status, 200, "{r:?}");
    if nothing_listens_on("127.0.0.1:9000") {
        // The proxied demo routes answer 502 until the user starts a backend.
        assert_json_error(&c.get("/pets/1"), 502);
    }
}

#[test]
fn serve_without_config_uses_the_demo_config() {
    // The demo's own address is what this test checks, so it needs it:
    // wait a while for whoever holds it, then fail saying so (never skip).
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            nothing_listens_on("127.0.0.1:8080")
                && std::net::TcpListener::bind("127.0.0.1:8080").is_ok()
        }),
        "127.0.0.1:8080 is in use: this test starts the demo config, which listens there"
    );
    let expected = toml::from_str::<toml::Value>(&demo_config_text())
        .ok()
        .and_then(|v| v.get("server")?.get("listen")?.as_array().map(|a| a.len()))
        .unwrap_or(1);
    let gw = Gateway::spawn(
        &["serve".into()],
        Some(Path::new(env!("CARGO_MANIFEST_DIR"))),
        expected,
        temp_path("unused"),
        "(no --config: config/coregate.toml)",
    );
    assert_eq!(gw.addr().to_string(), "127.0.0.1:8080");
    assert_eq!(gw.client().get("/health").status, 200);
}

// ---- every problem in one run, in words a user can act on ------------------

/// No Rust type name in any message.
fn assert_no_rust_types(errors: &[String]) {
    for l in errors {
        for t in [
            "u8",
            "u16",
            "u32",
            "u64",
            "usize",
            "i64",
            "f64",
            "a sequence",
            "a map",
            "struct ",
            "enum ",
        ] {
            assert!(
                !l.split(|c: char| !c.is_ascii_alphanumeric() && c != ' ')
                    .any(|w| w == t || w.starts_with(t) && t.ends_with(' ')),
                "Rust type {t:?} in: {l}"
            );
        }
    }
}

#[test]
fn every_bad_value_is_reported_in_one_run_in_plain_words() {
    let errors = expect_errors(
        r#"
[server]
listen = ["127.0.0.1:0"]
drain_timeout_ms = -5
backlog = "x"
shards = 0

[server.limits]
idle_timeout_ms = -1
max_headers = 1.5

[[upstreams]]
name = "pets"
targets = "127.0.0.1:9000"

[[apis]]
name = "main"
hosts = "example.com"

[[apis.routes]]
key = "GET /x"
integration = { type = "mock", status = "200", body = 'ok' }
"#,
    );
    assert_some_line(
        &errors,
        &[
            "line 4: server.drain_timeout_ms:",
            "must be a whole number of milliseconds, at least 1, not -5",
        ],
    );
    assert_some_line(
        &errors,
        &[
            "line 9: server.limits.idle_timeout_ms:",
            "a whole number of milliseconds, at least 1, not -1",
        ],
    );
    assert_some_line(
        &errors,
        &[
            "line 5: server.backlog:",
            "whole number",
            "not the string \"x\"",
        ],
    );
    assert_some_line(&errors, &["line 10: server.limits.max_headers:", "not 1.5"]);
    assert_some_line(
        &errors,
        &["line 14: upstreams[0].targets:", "must be an array"],
    );
    assert_some_line(&errors, &["line 18: apis[0].hosts:", "must be an array"]);
    assert_some_line(
        &errors,
        &[
            "line 22: apis[0].routes[0].integration.status:",
            "an HTTP status code from 200 to 599",
        ],
    );
    // The values that parsed are still checked.
    assert_some_line(&errors, &["line 6: server.shards: must be at least 1"]);
    assert_no_rust_types(&errors);
}

/// A shard count past MAX_SHARDS is an error, not an allocation: `shards =
/// 9223372036854775807` made `check` panic with "capacity overflow" (and
/// a count such as 100000 passed, for `serve` to start that many
/// executors). A `cpus` list that long is refused too.
#[test]
fn an_absurd_shard_count_is_an_error_not_a_crash() {
    for (server, needles) in [
        (
            "shards = 9223372036854775807".to_string(),
            ["line 4: server.shards: must be at most 1024"],
        ),
        (
            "shards = 1025".to_string(),
            ["line 4: server.shards: must be at most 1024"],
        ),
        (
            format!("cpus = [{}]", vec!["0"; 1025].join(", ")),
            ["line 4: server.cpus: lists 1025 CPUs"],
        ),
    ] {
        let text = format!(
            "\n[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n\n[[apis]]\nname = \"main\"\n[[apis.routes]]\nkey = \"GET /h\"\nintegration = {{ type = \"mock\" }}\n"
        );
        let c = check_text(&text);
        assert!(!c.stderr.contains("panicked"), "{}", c.stderr);
        let errors = expect_errors(&text);
        assert_some_line(&errors, &needles);
        assert_eq!(errors.len(), 1, "{errors:#?}");
    }
}

#[test]
fn a_bad_integration_url_does_not_hide_the_routes_other_errors() {
    let errors = expect_errors(
        r#"
[[apis]]
name = "main"

[[apis.routes]]
key = "GET /pets"
integration = { type = "http_proxy", url = "ftp://127.0.0.1:9000" }
throttle = { rate = 0, burst = 5 }
ip_rules = { allow = ["not-an-ip"] }

[[apis.routes]]
key = "GET  /cats/{id}"
integration = { type = "http_proxy", url = "htp://127.0.0.1:9000/{id}" }
throttle = { rate = 5, burst = 0 }
"#,
    );
    assert_some_line(
        &errors,
        &[
            "line 7: apis[0].routes[0].integration.url:",
            "must start with http://",
        ],
    );
    assert_some_line(&errors, &["line 8: apis[0].routes[0].throttle.rate:"]);
    assert_some_line(
        &errors,
        &["apis[0].routes[0].ip_rules.allow[0]:", "not-an-ip"],
    );
    // A bad key hides neither the URL nor the policies.
    assert_some_line(&errors, &["line 12: apis[0].routes[1].key:"]);
    assert_some_line(
        &errors,
        &[
            "line 13: apis[0].routes[1].integration.url:",
            "must start with http://",
        ],
    );
    assert_some_line(&errors, &["line 14: apis[0].routes[1].throttle.burst:"]);
    assert_eq!(errors.len(), 6, "{errors:#?}");
}

#[test]
fn a_route_key_with_two_spaces_is_told_about_the_space() {
    let errors = expect_errors(
        r#"
[[apis]]
name = "main"

[[apis.routes]]
key = "GET  /pets"
integration = { type = "mock" }
"#,
    );
    assert_eq!(
        errors,
        [
            "error: line 6: apis[0].routes[0].key: route key \"GET  /pets\" has extra spaces or a tab: \
             write the method, one space, and the path, as \"GET /pets\""
        ]
    );
}

#[test]
fn did_you_mean_for_unknown_keys_and_upstream_names() {
    let errors = expect_errors(
        r#"
[server]
listen = ["127.0.0.1:0"]
shardss = 2

[server.limits]
idle_timeout = 100

[[upstreams]]
name = "pets-backend"
targets = [{ address = "127.0.0.1:9000" }]

[[apis]]
name = "main"
base_pth = "/v1"

[[apis.routes]]
key = "GET /pets"
integration = { type = "http_proxy", url = "http://pets-bakend/pets" }

[[apis.routes]]
key = "GET /cats"
integration = { type = "mock", stauts = 200 }
"#,
    );
    assert_some_line(
        &errors,
        &["line 4: server.shardss:", "did you mean `shards`?"],
    );
    assert_some_line(
        &errors,
        &[
            "line 7: server.limits.idle_timeout:",
            "did you mean `idle_timeout_ms`?",
        ],
    );
    assert_some_line(
        &errors,
        &["line 15: apis[0].base_pth:", "did you mean `base_path`?"],
    );
    assert_some_line(
        &errors,
        &[
            "line 19: apis[0].routes[0].integration.url:",
            "did you mean upstream \"pets-backend\"?",
        ],
    );
    assert_some_line(
        &errors,
        &[
            "line 23: apis[0].routes[1].integration.stauts:",
            "did you mean `status`?",
        ],
    );
    // Nothing close: no guess.
    let errors = expect_errors(
        r#"
[server]
listen = ["127.0.0.1:0"]
colour = "blue"
[[apis]]
name = "main"
[[apis.routes]]
key = "GET /x"
integration = { type = "mock" }
"#,
    );
    assert_some_line(&errors, &["server.colour:", "unknown key"]);
    assert!(
        !errors.iter().any(|l| l.contains("did you mean")),
        "{errors:#?}"
    );
}

#[test]
fn compile_errors_carry_the_line_of_their_key() {
    let errors = expect_errors(
        r#"
[server]
listen = ["127.0.0.1:0", "nowhere"]

[[upstreams]]
name = "u"
targets = [{ address = "127.0.0.1:9000", weight = 0 }]

[[apis]]
name = "main"
base_path = "v1"

[[apis.routes]]
key = "GET /x"
integration = { type = "mock", status = 99 }
"#,
    );
    assert_some_line(&errors, &["line 3: server.listen[1]:", "not an IP:port"]);
    assert_some_line(&errors, &["line 7: upstreams[0].targets[0].weight:"]);
    assert_some_line(&errors, &["line 11: apis[0].base_path:"]);
    assert_some_line(&errors, &["line 15: apis[0].routes[0].integration.status:"]);

    // Route table errors are about the whole `apis` array: no one line.
    let errors = expect_errors(
        r#"
[[apis]]
name = "a"
[[apis.routes]]
key = "GET /x"
integration = { type = "mock" }
[[apis]]
name = "b"
[[apis.routes]]
key = "GET /y"
integration = { type = "mock" }
"#,
    );
    assert_some_line(
        &errors,
        &["error: apis: api \"b\" has the same hosts and base_path"],
    );
}

#[test]
fn a_congestion_control_the_kernel_lacks_or_a_malformed_name_is_an_error() {
    let upstream = |name: &str| {
        format!(
            r#"{GOOD}
[[upstreams]]
name = "be"
targets = [{{ address = "127.0.0.1:9" }}]
congestion_control = "{name}"
"#
        )
    };
    let errors = expect_errors(&upstream("nosuchcc"));
    assert_some_line(
        &errors,
        &[
            "upstreams[0].congestion_control",
            "the kernel has no TCP congestion control \"nosuchcc\"",
            "this host offers: ",
        ],
    );
    for bad in ["", "CUBIC", "bbr!", "a_name_far_too_long"] {
        let errors = expect_errors(&upstream(bad));
        assert_some_line(
            &errors,
            &[
                "upstreams[0].congestion_control",
                "is not a congestion control name",
            ],
        );
    }
    // reno is in every kernel and every process may choose it.
    let c = check_text(&upstream("reno"));
    assert_eq!(c.code, Some(0), "reno: {}", c.stderr);
}

/// Only regular files are read as configuration: a FIFO would hold the
/// open (and a reload, and every admin change behind it) until a writer
/// came, and `/dev/zero` would be read until memory ran out. Each is an
/// error naming what the path is.
#[test]
fn a_config_path_that_is_not_a_regular_file_is_an_error_not_a_hang() {
    // A FIFO as the config: before, `check` waited in open() for a writer
    // (run_coregate fails the test after 20 s).
    let fifo = temp_path("fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let out = run_coregate(&["check", "--config", fifo.to_str().expect("utf-8 temp path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("a FIFO, not a regular file"),
        "stderr: {stderr}"
    );

    // A FIFO named by the config (its keys file): the same error, with the key.
    let text = GOOD.replace(
        "[server]\n",
        &format!(
            "[server]\napi_keys_file = {:?}\n",
            fifo.to_str().expect("utf-8 temp path")
        ),
    );
    let errors = expect_errors(&text);
    assert_some_line(
        &errors,
        &["server.api_keys_file", "a FIFO, not a regular file"],
    );
    let _ = std::fs::remove_file(&fifo);

    // /dev/zero never ends: before, it was read until the allocation failed
    // (here under a 1 GiB address-space limit: an abort, not exit 1).
    let cmd = format!("ulimit -v 1048576; exec {BIN} check --config /dev/zero");
    let out = Command::new("bash")
        .args(["-c", &cmd])
        .output()
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("a character device, not a regular file"),
        "stderr: {stderr}"
    );

    // A directory.
    let dir = std::env::temp_dir();
    let out = run_coregate(&["check", "--config", dir.to_str().expect("utf-8 temp dir")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("a directory, not a regular file"),
        "stderr: {stderr}"
    );
}
