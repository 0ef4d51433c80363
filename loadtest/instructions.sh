#!/usr/bin/env bash
# Instructions per request of the real binary on its shard's thread, counted
# by valgrind's callgrind: the same count for the same binary and inputs
# however busy the machine is, so two commits compare exactly where a
# timed run on a shared VM cannot.
#
#   loadtest/instructions.sh [BINARY]   (default: target/release/coregate, built)
#
# One shard serves a mock route and a route proxied to nginx (installed if
# missing, as loadtest/run.sh does). A raw-socket client sends N requests on
# one keep-alive connection, with N = 1,000 and N = 6,000. Callgrind counts
# only inside the connection task (`http::conn::run`: reading and
# parsing heads, the gateway, the proxy, the writes; the reactor's own
# polling and the shard's timers are outside it, and they tick with time,
# which valgrind stretches), and the difference over 5,000 is the
# instructions per request, free of start-up and shutdown.
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --bin coregate >/dev/null 2>&1)
    BIN=$ROOT/target/release/coregate
fi
for tool in valgrind nginx; do
    command -v "$tool" >/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    }
done
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
BACKEND_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx;
    scgi_temp_path $WORK/nginx;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { default_type text/plain; return 200 "hello, world\n"; }
    }
}
NGINX
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)

cat >"$WORK/client.py" <<'PY'
import socket, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
for _ in range(n):
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = s.recv(65536)
        if not more:
            sys.exit(f"{path}: connection closed")
        buf += more
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        sys.exit(f"{path}: {head[:40]!r}")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                  if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
s.close()
PY

run() { # path n -> instructions on the busiest thread
    local path=$1 n=$2 port
    port=$(free_port)
    cat >"$WORK/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
shards = 1

[[upstreams]]
name = "backend"
targets = [{ address = "127.0.0.1:$BACKEND_PORT" }]

[[apis]]
name = "bench"

[[apis.routes]]
key = "GET /mock"
integration = { type = "mock", status = 200, headers = { "content-type" = "text/plain" }, body = "hello, world\n" }

[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }
TOML
    rm -f "$WORK"/cg.out*
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$WORK/cg.out" \
        --toggle-collect='coregate::http::conn::run*' \
        "$BIN" serve --config "$WORK/gw.toml" >"$WORK/gw.out" 2>&1 &
    local gw=$!
    for _ in $(seq 300); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2).close()" 2>/dev/null && break
        sleep 0.1
    done
    python3 "$WORK/client.py" "$port" "$path" 20   # warm-up: pools, caches
    python3 "$WORK/client.py" "$port" "$path" "$n"
    kill -TERM "$gw"
    wait "$gw" || true
    # Only the shard's thread runs the request loop.
    for f in "$WORK"/cg.out-*; do
        awk '/^summary:/ { print $2 }' "$f"
    done | awk '{ s += $1 } END { print s }'
}

echo "binary: $BIN"
printf '%-8s %18s\n' route instructions/req
for path in /mock /hello; do
    a=$(run "$path" 1000)
    b=$(run "$path" 6000)
    name=$([ "$path" = /mock ] && echo mock || echo proxy)
    awk -v a="$a" -v b="$b" -v name="$name" 'BEGIN { printf "%-8s %18.0f\n", name, (b-a)/5000 }'
done
