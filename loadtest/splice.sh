#!/usr/bin/env bash
# Spliced bodies against copied ones, counted rather than timed: the same
# binary with `server.splice_min_bytes` at its default (splice) and at 0
# (copy), the same fixed number of downloads and uploads (1 MiB bodies by
# default) on one
# keep-alive connection, and for each the gateway's syscalls by name
# (`strace -c -f`, in a second pass) and its CPU time (utime + stime from
# /proc, in a first pass without strace; timed, so noisy on a busy
# machine). Syscall counts do not depend on how
# busy the machine is beyond how often a socket is found empty or full.
#
#   loadtest/splice.sh [BINARY]     (default: target/release/coregate, built)
#   SPLICE_N=200 SPLICE_PIPE_BYTES=65536 SPLICE_BODY_BYTES=131072 loadtest/splice.sh
#
# Loopback only, one shard; an nginx backend serves a file of that size and reads
# uploads whole. Every process it starts is stopped on exit. About a minute.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --bin coregate >/dev/null 2>&1)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/coregate
fi
N=${SPLICE_N:-500}
SIZE=${SPLICE_BODY_BYTES:-1048576}
PIPE=${SPLICE_PIPE_BYTES:-}
. "$ROOT/loadtest/counting.sh"
need strace nginx

# A backend of its own: /big is SIZE bytes, /upload reads the body whole.
head -c "$SIZE" /dev/zero | tr '\0' 'x' >"$WORK/big"
BIG_PORT=$(free_port)
cat >"$WORK/nginx/big.conf" <<NGINX
user root;
daemon off;
worker_processes 1;
pid $WORK/nginx/big.pid;
error_log $WORK/nginx/big-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx;
    scgi_temp_path $WORK/nginx;
    keepalive_requests 1000000;
    sendfile on;
    server {
        listen 127.0.0.1:$BIG_PORT;
        location = /big { root $WORK; default_type application/octet-stream; }
        location = /upload {
            client_max_body_size 16m;
            client_body_buffer_size 2m;
            proxy_pass http://127.0.0.1:$BACKEND_PORT/ok;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
    }
}
NGINX
start_backend
nginx -c "$WORK/nginx/big.conf" -p "$WORK/nginx" &
PIDS+=($!)

# N downloads or N uploads of SIZE bytes on one keep-alive connection.
cat >"$WORK/bodies.py" <<'PY'
import socket, sys
port, what, n, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
body = b"x" * size
if what == "download":
    req = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n"
else:
    req = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size + body
for _ in range(n):
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = s.recv(1 << 20)
        if not more:
            sys.exit("connection closed")
        buf += more
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        sys.exit(f"{head[:60]!r}")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                  if l.lower().startswith(b"content-length:"))
    got = len(rest)
    while got < length:
        more = s.recv(1 << 20)
        if not more:
            sys.exit("body cut short")
        got += len(more)
s.close()
PY

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

measure() { # label splice_min_bytes what
    local label=$1 min=$2 what=$3 port gw t0 t1 st
    port=$(free_port)
    cat >"$WORK/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
shards = 1
splice_min_bytes = $min
${PIPE:+splice_pipe_bytes = $PIPE}

[server.limits]
max_body_bytes = 16777216

[[upstreams]]
name = "backend"
targets = [{ address = "127.0.0.1:$BIG_PORT" }]

[[apis]]
name = "bench"

[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }
TOML
    "$BIN" serve --config "$WORK/gw.toml" >"$WORK/gw.out" 2>&1 &
    gw=$!
    PIDS+=($gw)
    wait_port "$port"
    python3 "$WORK/bodies.py" "$port" "$what" 5 "$SIZE"   # warm-up: pool, pipes
    # CPU first, without strace (which slows every syscall), then counts.
    t0=$(ticks "$gw")
    python3 "$WORK/bodies.py" "$port" "$what" "$N" "$SIZE"
    t1=$(ticks "$gw")
    strace -c -f -q -o "$WORK/strace-$label-$what.txt" -p "$gw" &
    st=$!
    sleep 1
    python3 "$WORK/bodies.py" "$port" "$what" "$N" "$SIZE"
    kill -INT "$st" 2>/dev/null || true
    wait "$st" 2>/dev/null || true
    kill -TERM "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    local calls
    calls=$(awk '$NF == "total" { print $4 }' "$WORK/strace-$label-$what.txt")
    printf '%-8s %-6s %10s %12s   %s\n' "$what" "$label" \
        "$(awk -v c="${calls:-0}" -v n="$N" 'BEGIN { printf "%.1f", c / n }')" \
        "$(awk -v d=$((t1 - t0)) -v u=$TICK_US -v n="$N" 'BEGIN { printf "%.0f", d * u / n }')" \
        "$(awk -v n="$N" '$NF != "total" && $4 ~ /^[0-9]+$/ && $4 / n >= 0.05 { print $4, $NF }' "$WORK/strace-$label-$what.txt" |
            sort -rn | awk -v n="$N" '{ printf "%s %.2f  ", $2, $1 / n }')"
}

echo "binary: $BIN; $N requests with a $SIZE-byte body each; pipe ${PIPE:-default}"
printf '%-8s %-6s %10s %12s   %s\n' body path syscalls/req 'CPU us/req' 'by name, per request'
for what in download upload; do
    measure copy 0 "$what"
    # Every body spliced, whatever its size (the bytes that come with
    # the head are still copied).
    measure splice 1 "$what"
done
