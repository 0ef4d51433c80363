//! `@connections` on a WebSocket API's own path, authenticated with SigV4
//! (docs/websocket.md, "`@connections` on the API's path"), over real
//! sockets with clients we did not write: Python's `websockets` library
//! holds the WebSocket connections, botocore signs the requests (its
//! `SigV4Auth`, and its own `apigatewaymanagementapi` client), both
//! installed by scripts/test. The gateway has two shards; each request is
//! sent on a keep-alive connection whose shard is known, to a WebSocket
//! connection on the same shard and on the other one.

mod support;

use std::process::Command;
use support::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
shards = 2

[[authorizers]]
name = "pushers"

[authorizers.sigv4]
region = "us-east-1"

[[authorizers.sigv4.credentials]]
access_key_id = "AKIDPUSHER"
secret_access_key = "pusher-secret-key"
principal = "backend"

# A WebSocket API whose clients need an API key: @connections takes the
# SigV4 authorizer alone.
[[apis]]
name = "chat"
kind = "websocket"
base_path = "/chat"

[apis.websocket]
max_frame_bytes = 4096
max_message_bytes = 4096
send_buffer_bytes = 8192
connections_authorizer = "pushers"

# No $default: a message gets {"message":"Forbidden","connectionId":...},
# which tells the client its connection id.
[[apis.routes]]
key = "nothing"
integration = { type = "mock" }

# The same, without connections_authorizer: no @connections on its path.
[[apis]]
name = "plain"
kind = "websocket"
base_path = "/plain"

[[apis.routes]]
key = "nothing"
integration = { type = "mock" }
"#;

/// The client: prints one line per check, `name value`, which the test
/// compares. argv: host:port.
const SCRIPT: &str = r#"
import http.client, json, socket, sys, warnings
import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from websockets.sync.client import connect

# connect() outside a `with` is what this script wants: many at once.
warnings.simplefilter("ignore", DeprecationWarning)
addr = sys.argv[1]
host, port = addr.rsplit(":", 1)
good = Credentials("AKIDPUSHER", "pusher-secret-key")
bad = Credentials("AKIDPUSHER", "not-the-secret")

def out(*a):
    print(*a, flush=True)

# WebSocket connections until both shards hold one; each one's request id
# prefix (the shard's) is learned from its 101.
shard_of_prefix = {}
ws_on = {}
clients = []
for _ in range(60):
    ws = connect(f"ws://{addr}/chat")
    ws.send("{}")
    cid = json.loads(ws.recv(timeout=10))["connectionId"]
    shard = int(cid[:4], 16)
    shard_of_prefix[ws.response.headers["x-request-id"][:16]] = shard
    clients.append(ws)
    ws_on.setdefault(shard, (ws, cid))
    if len(ws_on) == 2:
        break
out("ws shards", sorted(ws_on))

def signed(method, path, body=b"", creds=good):
    req = AWSRequest(method=method, url=f"http://{addr}{path}", data=body)
    SigV4Auth(creds, "execute-api", "us-east-1").add_auth(req)
    return dict(req.headers.items())

def send(c, method, path, body=b"", headers=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r.status, data, r.getheader("x-request-id") or ""

# Keep-alive connections until both shards serve one.
http_on = {}
for _ in range(60):
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    ws, cid = ws_on[0]
    path = f"/chat/@connections/{cid}"
    status, data, rid = send(c, "GET", path, headers=signed("GET", path))
    assert status == 200, (status, data)
    shard = shard_of_prefix.get(rid[:16])
    if shard is None:
        continue
    http_on.setdefault(shard, c)
    if len(http_on) == 2:
        break
out("http shards", sorted(http_on))

# Push, describe: from each shard to each shard.
for src in (0, 1):
    for dst in (0, 1):
        c = http_on[src]
        ws, cid = ws_on[dst]
        path = f"/chat/@connections/{cid}"
        body = f"push {src}->{dst}".encode()
        status, data, _ = send(c, "POST", path, body, signed("POST", path, body))
        got = ws.recv(timeout=10)
        out(f"post {src}->{dst}", status, data.decode(), got)
        status, data, _ = send(c, "GET", path, headers=signed("GET", path))
        info = json.loads(data)
        out(f"get {src}->{dst}", status, info["identity"]["sourceIp"],
            info["connectedAt"].endswith("Z"), "lastActiveAt" in info)
        # Over max_message_bytes.
        big = b"x" * 5000
        status, data, _ = send(c, "POST", path, big, signed("POST", path, big))
        out(f"big {src}->{dst}", status)

# Refused: unsigned, wrongly signed, a changed body.
c = http_on[0]
ws, cid = ws_on[1]
path = f"/chat/@connections/{cid}"
status, data, _ = send(c, "POST", path, b"unsigned")
out("unsigned", status, json.loads(data)["message"])
status, data, _ = send(c, "POST", path, b"x", signed("POST", path, b"x", bad))
out("bad secret", status, json.loads(data)["message"][:40])
h = signed("POST", path, b"signed body")
status, data, _ = send(c, "POST", path, b"forged body", h)
out("forged body", status)
status, data, _ = send(c, "GET", "/chat/@connections/0001000000630000abcd",
                       headers=signed("GET", "/chat/@connections/0001000000630000abcd"))
out("unknown", status, data.decode())
# Another method: the route table's 405.
status, data, _ = send(c, "PUT", path, b"", signed("PUT", path))
out("put", status)
# The API without connections_authorizer has no such path.
status, data, _ = send(c, "GET", f"/plain/@connections/{cid}",
                       headers=signed("GET", f"/plain/@connections/{cid}"))
out("plain", status)
# A connection of this API is not the other API's.
plain = connect(f"ws://{addr}/plain")
plain.send("{}")
pid = json.loads(plain.recv(timeout=10))["connectionId"]
ppath = f"/chat/@connections/{pid}"
status, data, _ = send(c, "GET", ppath, headers=signed("GET", ppath))
out("other api", status)

# botocore's own client for the API's endpoint, on any shard.
client = botocore.session.get_session().create_client(
    "apigatewaymanagementapi", endpoint_url=f"http://{addr}/chat",
    region_name="us-east-1", aws_access_key_id="AKIDPUSHER",
    aws_secret_access_key="pusher-secret-key")
for shard in (0, 1):
    ws, cid = ws_on[shard]
    client.post_to_connection(ConnectionId=cid, Data=b"from the sdk")
    got = ws.recv(timeout=10)
    info = client.get_connection(ConnectionId=cid)
    out(f"sdk {shard}", got, info["Identity"]["SourceIp"])

# A client that reads nothing: pushes get 429 once its send buffer is full.
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect((host, int(port)))
s.sendall(b"GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
          b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(1)
s.sendall(bytes([0x81, 0x82, 1, 2, 3, 4, ord("{") ^ 1, ord("}") ^ 2]))
frame = s.recv(2)
n = frame[1] & 0x7f
msg = b""
while len(msg) < n:
    msg += s.recv(n - len(msg))
slow = json.loads(msg)["connectionId"]
spath = f"/chat/@connections/{slow}"
statuses = {}
chunk = b"y" * 4000
for _ in range(3000):
    status, _, _ = send(c, "POST", spath, chunk, signed("POST", spath, chunk))
    statuses[status] = statuses.get(status, 0) + 1
    if statuses.get(429, 0) >= 3:
        break
out("slow reader", sorted(statuses), statuses.get(429, 0) >= 3)

# DELETE closes the connection with 1000, on both shards; then it is gone.
for shard in (0, 1):
    ws, cid = ws_on[shard]
    path = f"/chat/@connections/{cid}"
    c = http_on[1 - shard]
    status, _, _ = send(c, "DELETE", path, headers=signed("DELETE", path))
    try:
        ws.recv(timeout=10)
        code = "no close"
    except Exception as e:
        code = getattr(getattr(e, "rcvd", None), "code", repr(e))
    status2, _, _ = send(c, "GET", path, headers=signed("GET", path))
    out(f"delete {shard}", status, code, status2)
"#;

#[test]
fn connections_on_the_api_path_with_sigv4_from_any_shard_to_any_shard() {
    let gw = Gateway::start(CONFIG);
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &gw.addr().to_string()])
        .output()
        .expect("python3 (scripts/test installs it, with botocore and websockets)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the python client failed (scripts/test installs botocore and websockets):\n{}\n{}\ngateway:\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr),
        gw.stderr()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let mut want = vec![
        "ws shards [0, 1]".to_string(),
        "http shards [0, 1]".to_string(),
    ];
    for src in 0..2 {
        for dst in 0..2 {
            want.push(format!("post {src}->{dst} 200  push {src}->{dst}"));
            want.push(format!("get {src}->{dst} 200 127.0.0.1 True True"));
            want.push(format!("big {src}->{dst} 413"));
        }
    }
    want.extend(
        [
            "unsigned 403 Missing Authentication Token",
            "bad secret 403 The request signature we calculated does",
            "forged body 403",
            r#"unknown 410 {"message":"Gone"}"#,
            "put 405",
            "plain 404",
            "other api 410",
            "sdk 0 from the sdk 127.0.0.1",
            "sdk 1 from the sdk 127.0.0.1",
            "slow reader [200, 429] True",
            "delete 0 204 1000 410",
            "delete 1 204 1000 410",
        ]
        .map(String::from),
    );
    assert_eq!(
        lines,
        want,
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn connections_authorizer_errors_name_their_key() {
    let bad = r#"
[server]
listen = ["127.0.0.1:0"]

[[authorizers]]
name = "jwt"

[authorizers.jwt]
issuer = "https://issuer.example"
audience = ["a"]
jwks_url = "https://issuer.example/jwks"

[[apis]]
name = "ws1"
kind = "websocket"
base_path = "/ws1"

[apis.websocket]
connections_authorizer = "nobody"

[[apis.routes]]
key = "$default"
integration = { type = "mock" }

[[apis]]
name = "ws2"
kind = "websocket"
base_path = "/ws2"

[apis.websocket]
connections_authorizer = "jwt"

[[apis.routes]]
key = "$default"
integration = { type = "mock" }

[[apis]]
name = "http"

[apis.websocket]
connections_authorizer = "jwt"

[[apis.routes]]
key = "GET /"
integration = { type = "mock" }
"#;
    let path = write_config(bad);
    let out = run_coregate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for (key, message) in [
        (
            "apis[0].websocket.connections_authorizer",
            "no [[authorizers]] entry is named \"nobody\"",
        ),
        (
            "apis[1].websocket.connections_authorizer",
            "authorizer \"jwt\" is not a SigV4 one",
        ),
        (
            "apis[2].websocket.connections_authorizer",
            "is for WebSocket APIs",
        ),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("error: ") && l.contains(key) && l.contains(message)),
            "no error naming {key} with {message:?}:\n{err}"
        );
    }
}
