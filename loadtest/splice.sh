#!/usr/bin/env bash
# Spliced bodies against copied ones, and both against nginx, counted and
# timed: the same coregate binary with `server.splice_min_bytes` at 1
# (every body, and every chunk, spliced) and at 0 (copied), and nginx as a
# reverse proxy in front of the same backend; the same fixed number of
# downloads and uploads (1 MiB bodies by default) on one keep-alive
# connection, each with a Content-Length and chunked. For each: the
# proxy's syscalls by name (`strace -c -f`, in a second pass) and its CPU
# time (utime + stime from /proc, in a first pass without strace; timed,
# so noisy on a busy machine, hence the ratios within one run). Syscall
# counts do not depend on how busy the machine is beyond how often a
# socket is found empty or full.
#
#   loadtest/splice.sh [BINARY]     (default: target/release/coregate, built)
#   SPLICE_N=200 SPLICE_PIPE_BYTES=65536 SPLICE_BODY_BYTES=131072 loadtest/splice.sh
#   SPLICE_CHUNK_BYTES=65536 SPLICE_WHAT="chunked-download chunked-upload" \
#       SPLICE_TARGETS="copy splice" loadtest/splice.sh
#                                   chunks of 64 KiB, coregate only
#   SPLICE_STRACE=0 loadtest/splice.sh
#                                   CPU only (no strace pass): quicker, for
#                                   repeated runs
#
# Bodies: `download` and `upload` carry a Content-Length; `chunked-download`
# and `chunked-upload` are chunked, in chunks of SPLICE_CHUNK_BYTES (default
# the body size: one chunk per body). The backend is nginx: /big is a file
# of the body size, /chunked the same file sent chunked (the addition
# module drops its length; one output buffer of the chunk size makes each
# chunk), /upload reads the body whole. nginx the proxy runs one worker
# configured as in loadtest/run.sh (HTTP/1.1 and keep-alive upstream,
# request bodies streamed, the same headers added). Loopback only, one
# shard; every process it starts is stopped on exit. A few minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --bin coregate >/dev/null 2>&1)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/coregate
fi
N=${SPLICE_N:-500}
SIZE=${SPLICE_BODY_BYTES:-1048576}
CHUNK=${SPLICE_CHUNK_BYTES:-$SIZE}
PIPE=${SPLICE_PIPE_BYTES:-}
WHAT=${SPLICE_WHAT:-download upload chunked-download chunked-upload}
TARGETS=${SPLICE_TARGETS:-copy splice nginx}
STRACE=${SPLICE_STRACE:-1}
. "$ROOT/loadtest/counting.sh"
need strace nginx

# A backend of its own: /big is SIZE bytes, /chunked the same in chunks of
# CHUNK, /upload reads the body whole.
head -c "$SIZE" /dev/zero | tr '\0' 'x' >"$WORK/big"
: >"$WORK/empty"
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
        location = /chunked {
            alias $WORK/big;
            default_type application/octet-stream;
            add_after_body /empty;
            addition_types *;
            sendfile off;
            output_buffers 1 $CHUNK;
        }
        location = /empty { root $WORK; }
        location = /upload {
            client_max_body_size 16m;
            client_body_buffer_size 2m;
            proxy_pass http://127.0.0.1:$BACKEND_PORT/ok;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Transfer-Encoding "";
        }
    }
}
NGINX
# nginx the proxy, as loadtest/run.sh configures it.
NGX_PORT=$(free_port)
mkdir -p "$WORK/nginx/proxy"
cat >"$WORK/nginx/proxy.conf" <<NGINX
user root;
daemon off;
worker_processes 1;
pid $WORK/nginx/proxy.pid;
error_log $WORK/nginx/proxy-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_max_body_size 16m;
    client_body_temp_path $WORK/nginx/proxy;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/proxy;
    uwsgi_temp_path $WORK/nginx/proxy;
    scgi_temp_path $WORK/nginx/proxy;
    upstream big { server 127.0.0.1:$BIG_PORT; keepalive 16; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://big;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
        }
    }
}
NGINX
start_backend
nginx -c "$WORK/nginx/big.conf" -p "$WORK/nginx" &
PIDS+=($!)

# N downloads or N uploads of SIZE bytes on one keep-alive connection;
# chunked ones in chunks of CHUNK bytes.
cat >"$WORK/bodies.py" <<'PY'
import socket, sys
port, what, n, size, chunk = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                              int(sys.argv[4]), int(sys.argv[5]))
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
body = b"x" * size
if what == "download":
    req = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n"
elif what == "chunked-download":
    req = b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n"
elif what == "upload":
    req = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size + body
else:
    parts = [b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for i in range(0, size, chunk):
        piece = body[i:i + chunk]
        parts += [b"%x\r\n" % len(piece), piece, b"\r\n"]
    parts.append(b"0\r\n\r\n")
    req = b"".join(parts)
buf = b""
def more():
    global buf
    d = s.recv(1 << 20)
    if not d:
        sys.exit("connection closed")
    buf += d
for _ in range(n):
    s.sendall(req)
    while b"\r\n\r\n" not in buf:
        more()
    head, _, buf = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        sys.exit(f"{head[:60]!r}")
    lines = [l.lower() for l in head.split(b"\r\n")]
    length = next((int(l.split(b":")[1]) for l in lines
                   if l.startswith(b"content-length:")), None)
    if length is not None:
        while len(buf) < length:
            more()
        buf = buf[length:]
        continue
    # Chunked: skip each chunk's data, then the last chunk and the CRLF.
    got = 0
    while True:
        while b"\r\n" not in buf:
            more()
        line, _, buf = buf.partition(b"\r\n")
        k = int(line.split(b";")[0], 16)
        if k == 0:
            while b"\r\n" not in buf:
                more()
            buf = buf[buf.index(b"\r\n") + 2:]
            break
        while len(buf) < k + 2:
            more()
        buf = buf[k + 2:]
        got += k
    if what.endswith("download") and got != size:
        sys.exit(f"chunked body of {got} bytes")
s.close()
PY

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

measure() { # label what: label is copy or splice (coregate) or nginx
    local label=$1 what=$2 port pid t0 t1 st min
    if [ "$label" = nginx ]; then
        nginx -c "$WORK/nginx/proxy.conf" -p "$WORK/nginx" &
        local master=$!
        PIDS+=($master)
        port=$NGX_PORT
        wait_port "$port"
        pid=$(pgrep -P "$master" | head -1)
    else
        case $label in copy) min=0 ;; *) min=1 ;; esac
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
        pid=$!
        PIDS+=($pid)
        wait_port "$port"
    fi
    python3 "$WORK/bodies.py" "$port" "$what" 5 "$SIZE" "$CHUNK"   # warm-up: pool, pipes
    # CPU first, without strace (which slows every syscall), then counts.
    t0=$(ticks "$pid")
    python3 "$WORK/bodies.py" "$port" "$what" "$N" "$SIZE" "$CHUNK"
    t1=$(ticks "$pid")
    : >"$WORK/strace-$label-$what.txt"
    if [ "$STRACE" = 1 ]; then
        strace -c -f -q -o "$WORK/strace-$label-$what.txt" -p "$pid" &
        st=$!
        sleep 1
        python3 "$WORK/bodies.py" "$port" "$what" "$N" "$SIZE" "$CHUNK"
        kill -INT "$st" 2>/dev/null || true
        wait "$st" 2>/dev/null || true
    fi
    if [ "$label" = nginx ]; then
        kill -QUIT "$master" 2>/dev/null || true
        wait "$master" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    local calls us
    calls=$(awk '$NF == "total" { print $4 }' "$WORK/strace-$label-$what.txt")
    us=$(awk -v d=$((t1 - t0)) -v u=$TICK_US -v n="$N" 'BEGIN { printf "%.1f", d * u / n }')
    CPU["$label $what"]=$us
    printf '%-16s %-6s %10s %12s   %s\n' "$what" "$label" \
        "$(awk -v c="${calls:-0}" -v n="$N" 'BEGIN { printf "%.1f", c / n }')" "$us" \
        "$(awk -v n="$N" '$NF != "total" && $4 ~ /^[0-9]+$/ && $4 / n >= 0.05 { print $4, $NF }' "$WORK/strace-$label-$what.txt" |
            sort -rn | awk -v n="$N" '{ printf "%s %.2f  ", $2, $1 / n }')"
}

declare -A CPU
echo "binary: $BIN; $N requests with a $SIZE-byte body each (chunked: chunks of $CHUNK bytes); pipe ${PIPE:-default}"
printf '%-16s %-6s %10s %12s   %s\n' body path syscalls/req 'CPU us/req' 'by name, per request'
for what in $WHAT; do
    # splice: every body and every chunk spliced, whatever its size (the
    # bytes that come with a head or a size line are still copied).
    for label in $TARGETS; do
        measure "$label" "$what"
    done
done
# CPU per byte as ratios within this run (every body is SIZE bytes).
echo
printf '%-16s %14s %14s %14s\n' body splice/copy splice/nginx copy/nginx
for what in $WHAT; do
    ratio() { awk -v a="${CPU[$1 $what]:-}" -v b="${CPU[$2 $what]:-}" \
        'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2fx", a / b }'; }
    printf '%-16s %14s %14s %14s\n' "$what" "$(ratio splice copy)" "$(ratio splice nginx)" "$(ratio copy nginx)"
done
