#!/usr/bin/env bash
# Heap allocations per request of the real binary, over real sockets: the
# connection loop, the gateway's driver and the integration included.
#
#   loadtest/allocs.sh [BINARY]    (default: target/release/coregate, built)
#
# A small preloaded library counts calls to malloc, calloc and realloc made
# on the shard's thread (threads named coregate-shard*; the coordinator
# threads tick on time, not on requests) and writes the totals when the
# gateway exits. The gateway
# (one shard) serves a mock route and a route proxied to a backend (nginx
# when installed, else Python's http.server with HTTP/1.1 keep-alive).
# A Python client sends N requests on one keep-alive connection, once with
# N = 2,000 and once with N = 12,000; the difference of the two totals over
# 10,000 is the allocations per request, free of start-up and shutdown.
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --bin coregate >/dev/null 2>&1)
    BIN=$ROOT/target/release/coregate
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/count.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <unistd.h>
#include <string.h>
#include <sys/prctl.h>
static atomic_ulong n_malloc, n_calloc, n_realloc;
/* Whether this thread counts: its name is looked at on its first calls
   (a thread is named right after it starts), then the answer is kept. */
static __thread int looks, counts;
static int counted(void) {
    if (looks < 64) {
        char name[17] = {0};
        looks++;
        prctl(PR_GET_NAME, name, 0, 0, 0);
        counts = strncmp(name, "coregate-shard", 14) == 0;
    }
    return counts;
}
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
/* dlsym may call calloc before real_calloc is known: serve it from here. */
static char early[4096];
static size_t early_used;
void *malloc(size_t n) {
    if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc");
    if (counted()) atomic_fetch_add(&n_malloc, 1);
    return real_malloc(n);
}
void *calloc(size_t a, size_t b) {
    if (!real_calloc) {
        size_t n = (a * b + 15) & ~(size_t)15;
        if (early_used + n <= sizeof early) { void *p = early + early_used; early_used += n; return p; }
        real_calloc = dlsym(RTLD_NEXT, "calloc");
    }
    if (counted()) atomic_fetch_add(&n_calloc, 1);
    return real_calloc(a, b);
}
void *realloc(void *p, size_t n) {
    if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc");
    if (counted()) atomic_fetch_add(&n_realloc, 1);
    return real_realloc(p, n);
}
void free(void *p);
__attribute__((destructor)) static void report(void) {
    const char *out = getenv("ALLOC_COUNT_FILE");
    FILE *f = out ? fopen(out, "w") : NULL;
    if (!f) return;
    fprintf(f, "%lu %lu %lu\n", atomic_load(&n_malloc), atomic_load(&n_calloc),
            atomic_load(&n_realloc));
    fclose(f);
}
C
# free() of an `early` block must not reach the real free.
cat >>"$WORK/count.c" <<'C'
static void (*real_free)(void *);
void free(void *p) {
    if ((char *)p >= early && (char *)p < early + sizeof early) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(p);
}
C
gcc -O2 -shared -fPIC -o "$WORK/count.so" "$WORK/count.c" -ldl

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
BACKEND_PORT=$(free_port)
if command -v nginx >/dev/null; then
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
        location / { default_type application/json; return 200 '{"id":1}'; }
    }
}
NGINX
    nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
    PIDS+=($!)
else
    mkdir -p "$WORK/www/pets"
    printf '{"id":1}' >"$WORK/www/pets/1"
    cat >"$WORK/backend.py" <<PY
import http.server, functools
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", $BACKEND_PORT),
    functools.partial(H, directory="$WORK/www")).serve_forever()
PY
    python3 "$WORK/backend.py" &
    PIDS+=($!)
fi

cat >"$WORK/client.py" <<'PY'
# One keep-alive connection, one request at a time, raw bytes: no client
# library between the numbers and the socket.
import socket, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
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

run() { # path n -> "malloc calloc realloc"
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
name = "demo"

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", status = 200, body = '{"ok":true}' }

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://backend/pets/{id}" }
TOML
    ALLOC_COUNT_FILE=$WORK/count.txt LD_PRELOAD=$WORK/count.so "$BIN" serve --config "$WORK/gw.toml" \
        >"$WORK/gw.out" 2>&1 &
    local gw=$!
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2).close()" 2>/dev/null && break
        sleep 0.1
    done
    python3 "$WORK/client.py" "$port" "$path" "$n"
    kill -TERM "$gw"
    wait "$gw" || true
    cat "$WORK/count.txt"
}

echo "binary: $BIN"
printf '%-8s %12s %12s %12s\n' route malloc/req calloc/req realloc/req
for path in /health /pets/1; do
    read -r m1 c1 r1 < <(run "$path" 2000)
    read -r m2 c2 r2 < <(run "$path" 12000)
    name=$([ "$path" = /health ] && echo mock || echo proxy)
    awk -v n=10000 -v a="$m1" -v b="$m2" -v c="$c1" -v d="$c2" -v e="$r1" -v f="$r2" -v name="$name" \
        'BEGIN { printf "%-8s %12.3f %12.3f %12.3f\n", name, (b-a)/n, (d-c)/n, (f-e)/n }'
done
