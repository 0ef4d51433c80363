//! The developer portal (docs/portal.md) over real sockets and in a real
//! browser: headless Chromium, driven through the DevTools protocol
//! (clicks, form fields), browses to a route's documentation, tries the
//! route through the gateway, signs up for a key; the test then calls the
//! gateway with that key and the browser sees the usage change, and
//! revokes the key. Socket tests cover bad input: the sign-up rate limits
//! (429), a usage plan that is not public (403), the approval flow through
//! the admin API, hostile descriptions and API names (escaped), and config
//! errors. Without Chromium the browser test fails; `scripts/test`
//! installs it.

mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// A description no page may run: it would set `window.pwned`.
const HOSTILE: &str = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";
const HOSTILE_API: &str = "<script>window.pwned=3</script>";

fn documentation() -> String {
    let doc = json!({
        "openapi": "3.0.3",
        "info": { "title": "shop", "version": "1", "description": "The shop's items." },
        "paths": {
            "/items/{id}": {
                "get": {
                    "summary": "Read one item",
                    "description": HOSTILE,
                    "parameters": [
                        { "name": "id", "in": "path", "required": true,
                          "description": "The item's number", "schema": { "type": "integer" }, "example": 42 },
                        { "name": "fields", "in": "query", "description": "Fields to return",
                          "schema": { "type": "string" } }
                    ],
                    "responses": {
                        "200": { "description": "The item",
                                 "content": { "application/json": {
                                     "schema": { "$ref": "#/components/schemas/Item" },
                                     "example": { "id": 42, "name": "teapot" } } } },
                        "404": { "description": "No such item" }
                    }
                }
            },
            "/items": {
                "post": {
                    "summary": "Add an item",
                    "requestBody": { "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/Item" },
                        "example": { "name": "kettle" } } } },
                    "responses": { "201": { "description": "Added" } }
                }
            }
        },
        "components": { "schemas": { "Item": { "type": "object",
            "properties": { "id": { "type": "integer" }, "name": { "type": "string" } } } } }
    });
    let path = temp_path("json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path.display().to_string()
}

struct Setup {
    gw: Gateway,
    portal: SocketAddr,
    _backend: Backend,
}

fn start(signup: &str) -> Setup {
    let backend = Backend::start(Reply::Echo);
    let keys = temp_path("toml");
    std::fs::write(&keys, "").unwrap();
    let data = temp_path("data");
    let registry = temp_path("toml");
    let text = fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2
api_keys_file = "@K@"
data_dir = "@D@"

[[upstreams]]
name = "echo"
targets = [{ address = "@B@" }]

[[usage_plans]]
name = "free"
apis = ["shop"]
quota = { limit = 1000, period = "DAY" }

[[usage_plans]]
name = "partner"
apis = ["shop"]

[[usage_plans]]
name = "internal"
apis = ["shop"]

[[apis]]
name = "shop"
base_path = "/shop"

[[apis.routes]]
key = "GET /items/{id}"
api_key_required = true
integration = { type = "http_proxy", url = "http://echo/items/{id}" }

[[apis.routes]]
key = "POST /items"
api_key_required = true
integration = { type = "http_proxy", url = "http://echo/items" }

[[apis.routes]]
key = "GET /old"
integration = { type = "mock", body = "old" }
[apis.routes.lifecycle]
status = "deprecated"
deprecated_at = "2026-01-01"
sunset = "2027-06-30"

[[apis]]
name = "@H@"
base_path = "/v1"
[apis.lifecycle]
status = "retired"
sunset = "2026-03-01"

[[apis.routes]]
key = "GET /gone"
integration = { type = "mock", body = "gone" }

[portal]
listen = "127.0.0.1:0"
title = "Shop APIs"
documentation = { shop = "@DOC@" }

[portal.signup]
file = "@R@"
@S@
"#,
        &[
            ("K", keys.display().to_string()),
            ("D", data.display().to_string()),
            ("B", backend.addr_str()),
            ("H", HOSTILE_API.replace('"', "\\\"")),
            ("DOC", documentation()),
            ("R", registry.display().to_string()),
            ("S", signup.to_string()),
        ],
    );
    let gw = Gateway::start(&text);
    let out = gw.stdout();
    let portal = out
        .lines()
        .find_map(|l| l.strip_prefix("coregate: portal listening on "))
        .unwrap_or_else(|| panic!("no portal line in:\n{out}"))
        .trim()
        .parse()
        .unwrap();
    Setup {
        gw,
        portal,
        _backend: backend,
    }
}

/// A response: status, lower-cased head, body.
struct Got {
    status: u16,
    head: String,
    body: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request over a new connection from source address `from`.
fn http(
    to: SocketAddr,
    from: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Got {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: portal\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Got {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn post_json(to: SocketAddr, from: &str, path: &str, v: &Value) -> Got {
    http(
        to,
        from,
        "POST",
        path,
        &[("content-type", "application/json")],
        &v.to_string(),
    )
}

fn gateway_get(gw: &Gateway, path: &str, key: Option<&str>) -> u16 {
    let mut headers = vec![];
    if let Some(k) = key {
        headers.push(("x-api-key", k));
    }
    http(gw.addr(), "127.0.0.1", "GET", path, &headers, "").status
}

// === the browser ===

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
    panic!("headless Chromium is needed for the portal test (Debian package `chromium`); run the tests with scripts/test, which installs it");
}

/// Headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    child: Child,
    profile: std::path::PathBuf,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = temp_path("chromium-profile");
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromium");
        let port_file = profile.join("DevToolsActivePort");
        assert!(
            wait_until(Duration::from_secs(30), || std::fs::read_to_string(
                &port_file
            )
            .is_ok_and(|t| t.lines().count() >= 2)),
            "chromium wrote no DevToolsActivePort"
        );
        let port: u16 = std::fs::read_to_string(&port_file)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut ws_url = None;
        wait_until(Duration::from_secs(20), || {
            let list = ureq::get(&format!("http://127.0.0.1:{port}/json/list")).call();
            let Ok(list) = list else { return false };
            let v: Value = serde_json::from_str(&list.into_string().unwrap_or_default())
                .unwrap_or(Value::Null);
            ws_url = v
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string));
            ws_url.is_some()
        });
        let ws_url = ws_url.expect("a page target");
        let (ws, _) =
            tungstenite::connect(ws_url.as_str()).expect("connect to the page's DevTools socket");
        Browser {
            child,
            profile,
            ws,
            next: 1,
        }
    }

    /// Runs a DevTools command and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params) {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// Runs a DevTools command: its result, or the error DevTools answered.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next;
        self.next += 1;
        self.ws
            .send(tungstenite::Message::text(
                json!({ "id": id, "method": method, "params": params }).to_string(),
            ))
            .unwrap();
        loop {
            let m = self.ws.read().expect("DevTools message");
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == json!(id) {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// The value of a JavaScript expression (promises awaited).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Loads `url` in the page, as following a link does.
    fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url }));
        assert!(r.get("errorText").is_none(), "{url}: {r}");
    }

    /// Waits until `expr` is truthy; panics with the page's text if not.
    /// An evaluation cut short because the page was navigating (DevTools
    /// answers "Inspected target navigated or closed", or the context was
    /// destroyed) counts as "not yet": the next try runs in the new page.
    fn wait(&mut self, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let r = self.try_call(
                "Runtime.evaluate",
                json!({ "expression": format!("!!({expr})"), "returnByValue": true }),
            );
            match r {
                Ok(r) if r["result"]["value"] == json!(true) => return,
                Ok(_) => {}
                Err(e) => {
                    let m = e["message"].as_str().unwrap_or("");
                    assert!(
                        m.contains("navigated") || m.contains("context"),
                        "{expr}: {e}"
                    );
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        let text = self.eval("document.body ? document.body.innerText : ''");
        panic!(
            "never true: {expr}\n--- page ---\n{}",
            text.as_str().unwrap_or("")
        );
    }

    fn text(&mut self, selector: &str) -> String {
        let v = self.eval(&format!(
            "(document.querySelector({0}) || {{textContent: ''}}).textContent",
            json!(selector)
        ));
        v.as_str().unwrap_or("").to_string()
    }

    fn set(&mut self, selector: &str, value: &str) {
        self.eval(&format!(
            "document.querySelector({}).value = {}",
            json!(selector),
            json!(value)
        ));
    }

    fn click(&mut self, selector: &str) {
        let found = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
            json!(selector)
        ));
        assert_eq!(found, json!(true), "nothing to click at {selector}");
    }
}

#[test]
fn a_developer_reads_tries_signs_up_and_sees_usage_in_a_real_browser() {
    let s = start("plans = [\"free\"]");
    let base = format!("http://{}", s.portal);
    let mut b = Browser::open(&format!("{base}/"));

    // The list of APIs: shop, and the hostile name shown as text, retired.
    b.wait("document.querySelector('li.api[data-api=\"shop\"]')");
    let hostile_row =
        b.eval("[...document.querySelectorAll('li.api')].map(l => l.textContent).join('|')");
    assert!(
        hostile_row.as_str().unwrap().contains(HOSTILE_API),
        "{hostile_row}"
    );
    assert!(
        hostile_row.as_str().unwrap().contains("retired"),
        "{hostile_row}"
    );
    assert!(
        hostile_row.as_str().unwrap().contains("2026-03-01"),
        "{hostile_row}"
    );

    // To the route's documentation, by a click.
    b.click("li.api[data-api=\"shop\"] a.api-link");
    b.wait("document.querySelector('article[data-route=\"GET /items/{id}\"]')");
    let route = "article[data-route=\"GET /items/{id}\"]";
    assert_eq!(b.text(&format!("{route} .summary")), "Read one item");
    assert_eq!(
        b.text(&format!("{route} .description")),
        HOSTILE,
        "the description is shown as text"
    );
    assert!(b
        .text(&format!("{route} tr[data-param=\"id\"]"))
        .contains("The item's number"));
    assert!(b
        .text(&format!("{route} tr[data-param=\"fields\"]"))
        .contains("Fields to return"));
    assert!(b.text(&format!("{route} .responses")).contains("teapot"));
    assert!(b.text(&format!("{route} .auths")).contains("x-api-key"));
    assert!(
        b.text("article[data-route=\"POST /items\"]")
            .contains("kettle"),
        "the request body's example"
    );
    assert!(b
        .text("article[data-route=\"GET /old\"] .lifecycle")
        .contains("2027-06-30"));
    assert_eq!(
        b.eval("window.pwned === undefined"),
        json!(true),
        "a description ran as script"
    );
    assert!(b.text("a.download").contains("OpenAPI"));

    // Try it without a key: the gateway's 403, through the portal.
    b.set(&format!("{route} input[name=\"path:id\"]"), "42");
    b.click(&format!("{route} form.try button"));
    b.wait(&format!(
        "document.querySelector({}).textContent === '403'",
        json!(format!("{route} .result .status"))
    ));

    // Sign up.
    b.navigate(&format!("{base}/keys"));
    b.wait("document.getElementById('signup-form')");
    b.set("#signup-form input[name=label]", "test suite <b>app</b>");
    b.set("#signup-form select[name=plan]", "free");
    b.click("#signup-form button");
    b.wait("!document.getElementById('new-key').hidden");
    let key = b.text("#new-key .key");
    assert!(key.starts_with("cg_"), "{key:?}");
    assert_eq!(
        b.eval("document.getElementById('new-key').dataset.state"),
        json!("active")
    );

    // The key works through the gateway, and only with it.
    assert_eq!(gateway_get(&s.gw, "/shop/items/7", None), 403);
    for _ in 0..5 {
        assert_eq!(gateway_get(&s.gw, "/shop/items/7", Some(&key)), 200);
    }

    // The usage shows in the portal: 5 requests, 995 of the quota left
    // (usage reaches the store within a second or two).
    let mut shown = String::new();
    let seen = wait_until(Duration::from_secs(20), || {
        b.click("#key-form button");
        thread::sleep(Duration::from_millis(300));
        shown = b.text("#key-info .total");
        shown == "5"
    });
    assert!(seen, "usage shown: {shown:?}");
    assert_eq!(b.text("#key-info .state"), "active");
    assert_eq!(b.text("#key-info .used"), "5");
    assert_eq!(b.text("#key-info .left"), "995");

    // Try it with the key, from the route's page: the backend answers.
    b.navigate(&format!("{base}/api?name=shop"));
    b.wait(&format!("document.querySelector({})", json!(route)));
    b.set(&format!("{route} input[name=\"path:id\"]"), "42");
    b.set(&format!("{route} input[name=\"header:x-api-key\"]"), &key);
    b.set(&format!("{route} input[name=\"query:fields\"]"), "name");
    b.click(&format!("{route} form.try button"));
    b.wait(&format!(
        "document.querySelector({}).textContent === '200'",
        json!(format!("{route} .result .status"))
    ));
    let echoed = b.text(&format!("{route} .result .body"));
    assert!(
        echoed.starts_with("GET /items/42?fields=name HTTP/1.1"),
        "{echoed}"
    );

    // Revoke it: the gateway refuses it from then on.
    b.navigate(&format!("{base}/keys"));
    b.wait("document.getElementById('key-form')");
    b.set("#key-form input[name=key]", &key);
    b.click("#key-form button");
    b.wait("!document.getElementById('key-info').hidden");
    b.click("#revoke");
    b.wait("document.querySelector('#key-info .state').textContent === 'revoked'");
    assert_eq!(gateway_get(&s.gw, "/shop/items/7", Some(&key)), 403);
    // Revoked for good, as `DELETE /keys/{name}` does: a tombstone.
    let file = std::fs::read_to_string(keys_file_of(&s.gw)).unwrap();
    assert!(file.contains("revoked = "), "no tombstone:\n{file}");
    assert_eq!(b.eval("window.pwned === undefined"), json!(true));
}

#[test]
fn sign_up_is_rate_limited_public_plans_only_and_approved_by_the_operator() {
    let s = start(
        "plans = [\"free\", \"partner\"]\napproval = [\"partner\"]\nper_address_per_hour = 2\nper_hour = 6",
    );
    let p = s.portal;
    let signup = |from: &str, plan: &str| {
        post_json(p, from, "/signup", &json!({ "plan": plan, "label": "me" }))
    };
    // Two from one address, then 429 with Retry-After.
    assert_eq!(signup("127.0.0.1", "free").status, 201);
    assert_eq!(signup("127.0.0.1", "free").status, 201);
    let limited = signup("127.0.0.1", "free");
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.head.contains("retry-after: "), "{}", limited.head);
    // A plan that is not public, and one that does not exist: refused.
    let internal = signup("127.0.0.2", "internal");
    assert_eq!(internal.status, 403, "{}", internal.body);
    assert!(
        internal.body.contains("not open for sign-up"),
        "{}",
        internal.body
    );
    assert_eq!(signup("127.0.0.2", "nope").status, 403);
    // Two pending keys on the plan that needs approval.
    let a = signup("127.0.0.3", "partner");
    assert_eq!(a.status, 201, "{}", a.body);
    let a = a.json();
    assert_eq!(a["state"], "pending");
    let b = signup("127.0.0.3", "partner").json();
    // Six sign-ups in the hour: the overall limit.
    assert_eq!(signup("127.0.0.4", "free").status, 429);
    // Bad bodies.
    assert_eq!(
        http(
            p,
            "127.0.0.5",
            "POST",
            "/signup",
            &[("content-type", "text/plain")],
            "{}"
        )
        .status,
        415
    );
    assert_eq!(
        post_json(p, "127.0.0.5", "/key", &json!({ "key": "cg_nope" })).status,
        404
    );
    assert_eq!(
        http(
            p,
            "127.0.0.5",
            "POST",
            "/key",
            &[("content-type", "application/json")],
            "{"
        )
        .status,
        400
    );

    // A pending key does not work, and says so.
    let key_a = a["key"].as_str().unwrap();
    let key_b = b["key"].as_str().unwrap();
    assert_eq!(gateway_get(&s.gw, "/shop/items/1", Some(key_a)), 403);
    let shown = post_json(p, "127.0.0.5", "/key", &json!({ "key": key_a })).json();
    assert_eq!(shown["state"], "pending");
    // The operator lists the sign-ups, approves one, refuses the other.
    let admin = s.gw.admin_addr();
    let list = http(admin, "127.0.0.1", "GET", "/portal/signups", &[], "").json();
    let states: Vec<(String, String)> = list["signups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states.len(), 4, "{list}");
    assert_eq!(
        states.iter().filter(|(_, st)| st == "pending").count(),
        2,
        "{list}"
    );
    let name_a = a["name"].as_str().unwrap();
    let name_b = b["name"].as_str().unwrap();
    let approved = http(
        admin,
        "127.0.0.1",
        "POST",
        &format!("/portal/signups/{name_a}/approve"),
        &[],
        "",
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(gateway_get(&s.gw, "/shop/items/1", Some(key_a)), 200);
    let refused = http(
        admin,
        "127.0.0.1",
        "POST",
        &format!("/portal/signups/{name_b}/refuse"),
        &[],
        "",
    );
    assert_eq!(refused.status, 200, "{}", refused.body);
    assert_eq!(gateway_get(&s.gw, "/shop/items/1", Some(key_b)), 403);
    // Decided is decided; an unknown name is 404.
    assert_eq!(
        http(
            admin,
            "127.0.0.1",
            "POST",
            &format!("/portal/signups/{name_b}/approve"),
            &[],
            ""
        )
        .status,
        409
    );
    assert_eq!(
        http(
            admin,
            "127.0.0.1",
            "POST",
            "/portal/signups/nobody/approve",
            &[],
            ""
        )
        .status,
        404
    );
    let shown = post_json(p, "127.0.0.5", "/key", &json!({ "key": key_b })).json();
    assert_eq!(shown["state"], "refused");
    // The keys are in the one keys file, hashed: the admin API lists them.
    let keys = http(admin, "127.0.0.1", "GET", "/keys", &[], "").json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 4, "{keys}");
    let file = std::fs::read_to_string(keys_file_of(&s.gw)).unwrap();
    assert!(
        !file.contains(key_a) && !file.contains(&key_a[16..]),
        "a key in clear in the keys file"
    );
}

fn keys_file_of(gw: &Gateway) -> String {
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["server"]["api_keys_file"].as_str().unwrap().to_string()
}

#[test]
fn pages_escape_what_the_config_and_documents_say_and_admin_is_not_reachable() {
    let s = start("plans = [\"free\"]");
    let p = s.portal;
    let index = http(p, "127.0.0.1", "GET", "/", &[], "");
    assert_eq!(index.status, 200);
    assert!(
        index
            .head
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{}",
        index.head
    );
    assert!(
        index
            .body
            .contains("&lt;script&gt;window.pwned=3&lt;/script&gt;"),
        "{}",
        index.body
    );
    assert!(!index.body.contains("<script>window"), "{}", index.body);
    // The hostile API's own page, found by its (encoded) name.
    let name = "%3Cscript%3Ewindow.pwned%3D3%3C%2Fscript%3E";
    let page = http(p, "127.0.0.1", "GET", &format!("/api?name={name}"), &[], "");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("<script>window"), "{}", page.body);
    assert!(
        page.body
            .contains("data-api=\"&lt;script&gt;window.pwned=3&lt;/script&gt;\""),
        "{}",
        page.body
    );
    let shop = http(p, "127.0.0.1", "GET", "/api?name=shop", &[], "");
    assert!(
        shop.body
            .contains("&lt;img src=x onerror=&quot;window.pwned=1&quot;&gt;"),
        "{}",
        shop.body
    );
    assert!(!shop.body.contains("<img src=x"), "{}", shop.body);
    // The only scripts are the portal's file.
    assert_eq!(shop.body.matches("<script").count(), 1, "{}", shop.body);
    // The download: the document without backend addresses.
    let doc = http(p, "127.0.0.1", "GET", "/openapi.json?name=shop", &[], "");
    assert_eq!(doc.status, 200);
    assert!(
        doc.head
            .contains("content-disposition: attachment; filename=\"shop.openapi.json\""),
        "{}",
        doc.head
    );
    let v = doc.json();
    assert!(
        v["paths"]["/items/{id}"]["get"]["responses"]["200"].is_object(),
        "{v}"
    );
    assert!(
        !doc.body.contains("x-amazon-apigateway-integration") && !doc.body.contains("echo"),
        "{}",
        doc.body
    );
    assert_eq!(
        v["servers"][0]["url"],
        format!("http://{}/shop", s.gw.addr())
    );
    // Unknown APIs and paths; the admin's endpoints are not here.
    assert_eq!(
        http(p, "127.0.0.1", "GET", "/api?name=nope", &[], "").status,
        404
    );
    for path in [
        "/metrics",
        "/config",
        "/reload",
        "/portal/signups",
        "/dashboard",
    ] {
        assert_eq!(
            http(p, "127.0.0.1", "GET", path, &[], "").status,
            404,
            "{path}"
        );
    }
    assert_eq!(http(p, "127.0.0.1", "GET", "/signup", &[], "").status, 405);
    // "Try it" reaches only the gateway, with checked input.
    let tried = post_json(
        p,
        "127.0.0.1",
        "/try",
        &json!({ "api": "shop", "method": "GET", "path": "/shop/old" }),
    );
    assert_eq!(tried.status, 200, "{}", tried.body);
    let t = tried.json();
    assert_eq!(t["status"], 200);
    assert_eq!(t["body"], "old");
    assert!(t["headers"].to_string().contains("deprecation"), "{t}");
    for bad in [
        json!({ "api": "shop", "method": "GET", "path": "http://evil/" }),
        json!({ "api": "shop", "method": "GET", "path": "/a b" }),
        json!({ "api": "shop", "method": "TRACE", "path": "/" }),
        json!({ "api": "shop", "method": "GET", "path": "/", "headers": [["host", "evil"]] }),
        json!({ "api": "shop", "method": "GET", "path": "/", "headers": [["x", "a\r\nb: c"]] }),
        json!({ "api": "nope", "method": "GET", "path": "/" }),
    ] {
        let r = post_json(p, "127.0.0.1", "/try", &bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
}

#[test]
fn portal_config_errors_name_their_keys() {
    let path = write_config(
        r#"
[server]
listen = ["127.0.0.1:0"]

[[usage_plans]]
name = "free"

[[apis]]
name = "a"
[[apis.routes]]
key = "GET /"
integration = { type = "mock" }

[portal]
apis = ["b"]
gateway_url = "ftp://x"
documentation = { c = "/nonexistent/doc.yaml" }

[portal.signup]
plans = ["free", "gold"]
approval = ["silver"]
per_hour = 0
"#,
    );
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "portal.listen",
        "portal.apis[0]",
        "portal.gateway_url",
        "portal.documentation.c",
        "portal.signup.plans[1]",
        "portal.signup.approval[0]",
        "portal.signup.per_hour",
        "needs server.api_keys_file",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

#[test]
fn try_it_reaches_only_the_api_it_names() {
    // The portal lists `public` only; "try it" naming `public` must not
    // carry a path under another API's base path to the gateway (from the
    // portal's own address, which IP rules may trust).
    let gw = Gateway::start(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1

[[apis]]
name = "public"
base_path = "/pub"
[[apis.routes]]
key = "GET /hello"
integration = { type = "mock", body = "public" }

[[apis]]
name = "internal"
base_path = "/internal"
[[apis.routes]]
key = "GET /secret"
integration = { type = "mock", body = "secret" }

[portal]
listen = "127.0.0.1:0"
apis = ["public"]
"#,
    );
    let out = gw.stdout();
    let p: SocketAddr = out
        .lines()
        .find_map(|l| l.strip_prefix("coregate: portal listening on "))
        .and_then(|a| a.trim().parse().ok())
        // A test failure, not an input: the gateway prints this line.
        .unwrap_or_else(|| panic!("no portal line in:\n{out}"));
    let tried = post_json(
        p,
        "127.0.0.1",
        "/try",
        &json!({ "api": "public", "method": "GET", "path": "/pub/hello" }),
    );
    assert_eq!(tried.status, 200, "{}", tried.body);
    assert_eq!(tried.json()["body"], "public");
    for path in ["/internal/secret", "/internal", "/", "/publicity"] {
        let r = post_json(
            p,
            "127.0.0.1",
            "/try",
            &json!({ "api": "public", "method": "GET", "path": path }),
        );
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(!r.body.contains("secret"), "{path}: {}", r.body);
    }
    let r = post_json(
        p,
        "127.0.0.1",
        "/try",
        &json!({ "api": "internal", "method": "GET", "path": "/internal/secret" }),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn a_route_keyed_by_a_policy_set_says_it_needs_a_key() {
    // `[[policies]]` sets give routes their keys and authorizers as the
    // gateway enforces them; the page must say so, not "the route is open".
    let keys = temp_path("toml");
    // A test failure, not an input: a fresh temporary path.
    std::fs::write(&keys, "").unwrap();
    let gw = Gateway::start(&fill(
        r#"
[server]
listen = ["127.0.0.1:0"]
shards = 1
api_keys_file = "@K@"

[[policies]]
name = "keyed"
api_key_required = true

[[apis]]
name = "orders"
policies = ["keyed"]
[[apis.routes]]
key = "GET /orders/{id}"
integration = { type = "mock", body = "o" }
[[apis.routes]]
key = "GET /open"
api_key_required = false
integration = { type = "mock", body = "open" }

[portal]
listen = "127.0.0.1:0"
"#,
        &[("K", keys.display().to_string())],
    ));
    let out = gw.stdout();
    let p: SocketAddr = out
        .lines()
        .find_map(|l| l.strip_prefix("coregate: portal listening on "))
        .and_then(|a| a.trim().parse().ok())
        // A test failure, not an input: the gateway prints this line.
        .unwrap_or_else(|| panic!("no portal line in:\n{out}"));
    assert_eq!(gateway_get(&gw, "/orders/1", None), 403);
    let page = http(p, "127.0.0.1", "GET", "/api?name=orders", &[], "");
    assert_eq!(page.status, 200, "{}", page.body);
    let route = |key: &str| {
        let at = format!("data-route=\"{key}\"");
        let start = page
            .body
            .find(&at)
            .unwrap_or_else(|| panic!("{key}: {}", page.body));
        let rest = &page.body[start..];
        rest[..rest.find("</article>").unwrap_or(rest.len())].to_string()
    };
    let keyed = route("GET /orders/{id}");
    assert!(keyed.contains("auth api-key"), "{keyed}");
    assert!(!keyed.contains("the route is open"), "{keyed}");
    let open = route("GET /open");
    assert!(open.contains("the route is open"), "{open}");
}
