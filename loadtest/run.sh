#!/usr/bin/env bash
# coregate load-test suite: coregate against nginx as a reverse proxy, on one
# Linux box, loopback only. See loadtest/README.md and docs/benchmarks.md.
#
#   loadtest/run.sh            full suite (about 22 minutes on 2 cores)
#   loadtest/run.sh --smoke    every scenario once, tiny (about 1.5 minutes after
#                              the build); exits 0 when all ran, asserts no ratio
#   loadtest/run.sh --only throughput,latency,memory,scaling,bodies,policies,observability,tls,throttle-accuracy,profile
#                              run some sections (latency needs throughput's
#                              nginx maximum; it measures one if throughput is
#                              skipped)
#   loadtest/run.sh --only websocket
#                              WebSocket messages, push and idle memory
#                              (loadtest/ws.sh, about 4 minutes; not in the
#                              default list)
#   COREGATE_BIN=/path/coregate loadtest/run.sh --only throughput
#                              measure another build (before/after pairs)
#   BASE_BIN=/path/coregate loadtest/run.sh --only throughput,lightload
#                              also measure that build as target
#                              "coregate-base", alternating with the others
#                              in the same runs (before/after in one run)
#   BASE_BIN=target/release/coregate BASE_IO=epoll loadtest/run.sh --only throughput
#                              the "coregate-base" target with `io = "epoll"`:
#                              the shards' epoll socket path against the
#                              default io_uring one (target "coregate"), same
#                              build, alternating in the same runs
#   CG_IO=epoll loadtest/run.sh --only bodies
#                              every coregate of the run with that `io`
#                              (default: none set, so `io = "uring"`)
#   THR_DUR=120 loadtest/run.sh --only throttle-accuracy
#                              seconds per throttle-accuracy run (default 60)
#   loadtest/run.sh --only splice
#                              syscalls and CPU of spliced against copied
#                              1 MiB bodies, Content-Length and chunked, and
#                              of nginx (loadtest/splice.sh; not in the
#                              default list). SPLICE_MIN_BYTES=0 makes every
#                              other section copy bodies; SPLICE_PIPE_BYTES
#                              sets coregate's splice_pipe_bytes.
#   UPSTREAM_CC=bbr loadtest/run.sh --only bodies
#                              coregate's connections to the backend use
#                              that TCP congestion control (the upstream's
#                              congestion_control); default: none named, so
#                              the host's, or cubic where the host's paces
#                              (bbr: the backend is on loopback)
#   IDLE_PATH=/mock loadtest/run.sh --only memory
#                              the idle connections' one request goes to the
#                              mock route (both servers answer it themselves)
#                              instead of the proxied /hello (default)
#   loadtest/run.sh --only lightload
#                              CPU and syscalls per request at 50% of nginx's
#                              maximum, and idle CPU (loadtest/lightload.sh)
#   loadtest/run.sh --profile  also record perf profiles of coregate (proxied
#                              and mock) and nginx under wrk load
#   loadtest/run.sh --only soak  10 minutes at 80% of the maximum with policies,
#                              restarts and an outage (loadtest/soak.sh;
#                              SOAK_DUR=60 shortens it)
#   loadtest/run.sh --only uring  the socket mechanism alone: epoll against
#                              io_uring in loadtest/uringlab (loadtest/uring.sh,
#                              about 3 minutes)
#   loadtest/run.sh --only zerocopy
#                              zero-copy sends alone: send, MSG_ZEROCOPY and
#                              io_uring SEND_ZC of large in-memory bodies over
#                              loopback, a veth pair and a dropping device
#                              (loadtest/zc.sh, loadtest/zclab; about 11
#                              minutes; the veth pair and the device need root)
#
# Layout (shared/DESIGN.md, "Measuring on a 2-core machine"): the load
# generator on CPU 0; the proxy under test (one coregate shard, or one nginx
# worker) and the backend (one nginx worker serving fixed responses) together
# on CPU 1. Runs alternate coregate, nginx, coregate, nginx...
#
# Writes loadtest/results/<timestamp>[-smoke]/report.md (and the raw numbers
# and logs beside it). Stops by itself: every wait is bounded and a watchdog
# ends the run after $MAX_SECS. Every process it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT=$ROOT/loadtest

SMOKE=0
ONLY="throughput,latency,memory,scaling,bodies,policies,observability,tls,throttle-accuracy"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --profile) ONLY="$ONLY,profile" ;;
        --only) ONLY=${2:?--only needs a list}; shift ;;
        --only=*) ONLY=${1#--only=} ;;
        -h|--help) sed -n '2,/^# Layout/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }

# === knobs ===
USER_MAX_SECS=${MAX_SECS:-}
if [ $SMOKE = 1 ]; then
    RUNS=1 DUR=1 CONNS=16 LAT_DUR=1 LAT_WARM=0.2 IDLE_CONNS=200 IDLE_HOLD=10 IDLE_PATH=${IDLE_PATH:-/hello}
    SCALE_RUNS=1 BODY_RUNS=1 BODY_DUR=1 MAX_SECS=240 STEADY_WAIT=0.5 THR_DUR=5
else
    RUNS=${RUNS:-5} DUR=${DUR:-10} CONNS=${CONNS:-50} LAT_DUR=${LAT_DUR:-15}
    LAT_WARM=2 IDLE_CONNS=${IDLE_CONNS:-10000} IDLE_HOLD=60 IDLE_PATH=${IDLE_PATH:-/hello}
    SCALE_RUNS=${SCALE_RUNS:-3} BODY_RUNS=${BODY_RUNS:-3} BODY_DUR=${BODY_DUR:-6}
    MAX_SECS=${MAX_SECS:-1500} STEADY_WAIT=4 THR_DUR=${THR_DUR:-60}
fi
# throttle-accuracy: a bucket of THR_RATE requests/s and burst THR_BURST,
# offered THR_LOAD x THR_RATE requests/s per client address over THR_CONNS
# keep-alive connections, THR_DUR seconds per run, 6 runs (2 buckets x 3
# load patterns). The watchdog's bound grows with it unless MAX_SECS is given.
THR_RATE=1000 THR_BURST=100 THR_LOAD=3 THR_CONNS=8
if want throttle-accuracy && [ -z "$USER_MAX_SECS" -o $SMOKE = 1 ]; then
    MAX_SECS=$((MAX_SECS + 6 * (THR_DUR + 5)))
fi
# soak (only with --only soak): SOAK_DUR seconds of load plus its set-up.
SOAK_DUR=${SOAK_DUR:-$([ $SMOKE = 1 ] && echo 20 || echo 600)}
if want soak && [ -z "$USER_MAX_SECS" -o $SMOKE = 1 ]; then
    MAX_SECS=$((MAX_SECS + SOAK_DUR + 360))
fi
# uring (only with --only uring): the socket mechanism alone, epoll against
# io_uring (loadtest/uring.sh).
if want uring && [ -z "$USER_MAX_SECS" -o $SMOKE = 1 ]; then
    MAX_SECS=$((MAX_SECS + 400))
fi
# zerocopy (only with --only zerocopy): zero-copy sends alone (loadtest/zc.sh).
if want zerocopy && [ -z "$USER_MAX_SECS" -o $SMOKE = 1 ]; then
    MAX_SECS=$((MAX_SECS + 900))
fi
if want websocket && [ -z "$USER_MAX_SECS" -o $SMOKE = 1 ]; then
    MAX_SECS=$((MAX_SECS + 400))
fi
PROFILE_DUR=$([ $SMOKE = 1 ] && echo 2 || echo 8)
LAT_CONNS=$CONNS
BODY_CONNS=8
GEN_CPU=0
PROXY_CPU=1
BACKEND_PORT=18090
BACKEND_OK_PORT=18091
COREGATE_PORT=18080
COREGATE2_PORT=18082
NGINX_PORT=18081
COREGATE_TLS_PORT=18083
NGINX_TLS_PORT=18084
COREGATE_THR_PORT=18085
COREGATE_BASE_PORT=18086

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$LT/results/$STAMP$([ $SMOKE = 1 ] && echo -smoke || true)
WORK=$OUT/work
mkdir -p "$WORK/www" "$WORK/tmp"
RAW=$OUT/raw.tsv
REPORT=$OUT/report.md
: >"$RAW"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/run.log" >&2; }

# === processes: everything started here is stopped on exit ===
PIDS=()
WATCHDOG=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null || true
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

stop_pid() {
    local pid=$1 keep=() p
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# === tools ===
APT_UPDATED=0
apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "run.sh: please install: $*" >&2
        exit 1
    fi
    [ $APT_UPDATED = 1 ] || { apt-get update -qq; APT_UPDATED=1; }
    # Debian starts nginx on port 80 when it is installed; a policy-rc.d that
    # says no (only if there is none) keeps the package from starting it.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$OUT/apt.log" 2>&1 || {
        [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
        echo "run.sh: apt-get install $* failed, see $OUT/apt.log" >&2
        exit 1
    }
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
[ ${#need[@]} -eq 0 ] || { log "installing ${need[*]}"; apt_install "${need[@]}"; }

NCPU=$(nproc)
if [ "$NCPU" -lt 2 ]; then
    echo "run.sh: needs at least 2 CPUs (load generator on CPU 0, proxy on CPU 1)" >&2
    exit 1
fi
# 10,000 client sockets in the load generator and as many in the proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 500)) ]; then
    log "open-file limit $(ulimit -n) is below $((IDLE_CONNS + 500)); idle connections reduced"
    IDLE_CONNS=$(($(ulimit -n) - 500))
fi
for port in $BACKEND_PORT $BACKEND_OK_PORT $COREGATE_PORT $COREGATE2_PORT $NGINX_PORT \
    $COREGATE_TLS_PORT $NGINX_TLS_PORT $COREGATE_THR_PORT $COREGATE_BASE_PORT; do
    if ss -Htln "sport = :$port" | grep -q .; then
        echo "run.sh: port $port is in use" >&2
        exit 1
    fi
done

# === build ===
log "building coregate (release) and cgload"
(cd "$ROOT" && cargo build --release --bin coregate) >"$OUT/build.log" 2>&1 || {
    tail -20 "$OUT/build.log" >&2
    exit 1
}
# cgload always in its own target/ (even under CARGO_TARGET_DIR), where
# $CGLOAD below looks for it.
cargo build --release --manifest-path "$LT/cgload/Cargo.toml" --target-dir "$LT/cgload/target" \
    >>"$OUT/build.log" 2>&1 || {
    tail -20 "$OUT/build.log" >&2
    exit 1
}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CGLOAD=$LT/cgload/target/release/cgload
# A private copy: a rebuild in the work tree during the run must not swap the
# binary under the running gateway (nor hide its symbols from perf).
# COREGATE_BIN: measure that binary instead (a commit built earlier, for a
# before/after pair in one session; the report names the work tree's commit).
cp "${COREGATE_BIN:-$TARGET_DIR/release/coregate}" "$WORK/coregate"
COREGATE=$WORK/coregate
if [ -n "${BASE_BIN:-}" ]; then
    cp "$BASE_BIN" "$WORK/coregate-base-bin"
fi
[ -x "$COREGATE" ] && [ -x "$CGLOAD" ]

# The watchdog starts after the build, which has its own pace.
# Its own output goes nowhere, so that it never holds a pipe open.
MAIN_PID=$$
(
    trap 'kill $s 2>/dev/null; exit 0' TERM
    sleep "$MAX_SECS" &
    s=$!
    wait $s && echo "run.sh: watchdog: $MAX_SECS s elapsed, stopping" >>"$OUT/run.log" && kill -TERM $MAIN_PID
) >/dev/null 2>&1 &
WATCHDOG=$!

# === configs ===
head -c 1048576 /dev/zero | tr '\0' 'x' >"$WORK/www/big"
# One certificate for both proxies' TLS listeners: ECDSA P-256, self-signed
# for localhost (the clients do not verify it; the cost measured is the
# server's).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$WORK/openssl.log" 2>&1
cat >"$WORK/upload.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

nginx_common() {
    cat <<EOF
user root;
worker_processes 1;
worker_cpu_affinity $(printf '1%0*d' $PROXY_CPU 0);
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections 16384; }
EOF
}
{
    nginx_common backend
    cat <<EOF
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path $WORK/tmp/backend-body;
    proxy_temp_path $WORK/tmp/backend-proxy;
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        location = /hello { default_type text/plain; return 200 "hello, world\n"; }
        location = /big { root $WORK/www; default_type application/octet-stream; }
        # The whole body is read before the answer (request buffering, in
        # memory), as an application would; a bare "return" would answer
        # early and discard the rest, which makes a streaming proxy close the
        # client connection.
        location = /upload {
            client_max_body_size 16m;
            client_body_buffer_size 2m;
            proxy_pass http://backend_ok/ok;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
    }
    upstream backend_ok { server 127.0.0.1:$BACKEND_OK_PORT; keepalive 16; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$BACKEND_OK_PORT;
        location = /ok { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
} >"$WORK/backend.conf"
{
    nginx_common nginx-proxy
    cat <<EOF
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_max_body_size 16m;
    client_body_temp_path $WORK/tmp/proxy-body;
    proxy_temp_path $WORK/tmp/proxy-proxy;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location = /mock { default_type text/plain; return 200 "hello, world\n"; }
        # observability: the same proxying with nginx's access log on (its
        # default combined format, to a file).
        location /logged/ {
            access_log $WORK/nginx-access.log;
            proxy_pass http://backend/;
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
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # What coregate adds upstream and to the response, for equal work.
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;
            # Stream bodies as coregate does, instead of spooling to disk.
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
        }
    }
    # TLS: the same locations behind the same certificate coregate serves;
    # TLS 1.2 and 1.3, session tickets (nginx's default) and a session cache,
    # as coregate resumes both ways.
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl backlog=4096;
        ssl_certificate $WORK/tls.crt;
        ssl_certificate_key $WORK/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        location = /mock { default_type text/plain; return 200 "hello, world\n"; }
        location / {
            proxy_pass http://backend;
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
EOF
} >"$WORK/nginx-proxy.conf"

coregate_conf() { # port shards cpus [tls-port]
    cat <<EOF
[server]
listen = ["127.0.0.1:$1"]
shards = $2
cpus = [$3]
drain_timeout_ms = 2000
${CG_IO:+io = \"$CG_IO\"}
${SPLICE_MIN_BYTES:+splice_min_bytes = $SPLICE_MIN_BYTES}
${SPLICE_PIPE_BYTES:+splice_pipe_bytes = $SPLICE_PIPE_BYTES}

[server.limits]
max_body_bytes = 16777216
EOF
    if [ -n "${4:-}" ]; then
        cat <<EOF

[server.tls]
listen = ["127.0.0.1:$4"]

[[server.tls.certificates]]
cert = "$WORK/tls.crt"
key = "$WORK/tls.key"
EOF
    fi
    cat <<EOF

[[upstreams]]
name = "backend"
targets = [{ address = "127.0.0.1:$BACKEND_PORT" }]
pool = { max_idle = 256 }
${UPSTREAM_CC:+congestion_control = \"$UPSTREAM_CC\"}

[[apis]]
name = "bench"

[[apis.routes]]
key = "GET /mock"
integration = { type = "mock", status = 200, headers = { "content-type" = "text/plain" }, body = "hello, world\n" }

[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }

# Policy scenarios (issue 4): the same proxied request with the response
# cache on (every request after the first is a hit), and with a token bucket
# set so high it never refuses (the cost of checking and reconciling).
[[apis.routes]]
key = "GET /cached/{proxy+}"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }
cache = { ttl_seconds = 3600 }

[[apis.routes]]
key = "GET /throttled/{proxy+}"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }
throttle = { rate = 10000000, burst = 100000000 }

# Both on one route: the throttle is checked, then the cache answers.
[[apis.routes]]
key = "GET /both/{proxy+}"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }
throttle = { rate = 10000000, burst = 100000000 }
cache = { ttl_seconds = 3600 }

# observability: the same proxying with a JSON access log to a file.
[[apis]]
name = "logged"
base_path = "/logged"
access_log = { preset = "json", destination = "$WORK/coregate-access-$1.log" }

[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }
EOF
}
coregate_conf $COREGATE_PORT 1 $PROXY_CPU $COREGATE_TLS_PORT >"$WORK/coregate-1.toml"
coregate_conf $COREGATE2_PORT 2 "0, 1" >"$WORK/coregate-2.toml"
# throttle-accuracy: 2 shards, mock answers (the throttle is what is measured,
# not the proxy), a route bucket and a per-client-IP bucket on their own
# routes. Connections of the "move" pattern wait idle for half a run before
# their turn, so the idle timeout is raised above any THR_DUR.
cat >"$WORK/coregate-throttle.toml" <<EOF
[server]
listen = ["127.0.0.1:$COREGATE_THR_PORT"]
shards = 2
cpus = [0, 1]
drain_timeout_ms = 2000

[server.limits]
idle_timeout_ms = 3600000

[[apis]]
name = "throttle-accuracy"

[[apis.routes]]
key = "GET /probe"
integration = { type = "mock", status = 200, body = "probe" }

[[apis.routes]]
key = "GET /limited"
integration = { type = "mock", status = 200, body = "ok" }
throttle = { rate = $THR_RATE, burst = $THR_BURST }

[[apis.routes]]
key = "GET /limited-ip"
integration = { type = "mock", status = 200, body = "ok" }
throttle = { per_client_ip = { rate = $THR_RATE, burst = $THR_BURST } }
EOF
"$COREGATE" check --config "$WORK/coregate-1.toml" >/dev/null
if [ -n "${BASE_BIN:-}" ]; then
    # The same plan without TLS, on its own port, for the older build.
    coregate_conf $COREGATE_BASE_PORT 1 $PROXY_CPU |
        sed "s/^\[server\]\$/[server]${BASE_IO:+\\nio = \"$BASE_IO\"}/" >"$WORK/coregate-base.toml"
    "$WORK/coregate-base-bin" check --config "$WORK/coregate-base.toml" >/dev/null
fi
"$COREGATE" check --config "$WORK/coregate-2.toml" >/dev/null
"$COREGATE" check --config "$WORK/coregate-throttle.toml" >/dev/null
nginx -t -q -e "$WORK/nginx-t.log" -c "$WORK/backend.conf"
nginx -t -q -e "$WORK/nginx-t.log" -c "$WORK/nginx-proxy.conf"

# === helpers ===
wait_port() { # port
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    echo "run.sh: nothing answers on port $1" >&2
    return 1
}
start_nginx() { # name -> sets LAST_PID (master)
    nginx -e "$WORK/$1-error.log" -c "$WORK/$1.conf" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
start_coregate() { # config-name
    # Not under taskset: each shard pins itself to its `cpus` entry, and
    # coregate checks `cpus` against the CPUs it may run on (under taskset -c 1
    # it sees one CPU and calls it CPU 0). Only the idle main thread is unpinned.
    "$COREGATE" serve --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
# Processes whose CPU time is the proxy's: nginx's master and worker(s), or
# coregate's one process (all its threads).
proc_set() { # pid
    echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"
}
cpu_ticks() { # pids... -> utime+stime in clock ticks
    local t=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo $t
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
rss_kib() { # pids... -> summed VmRSS
    local t=0 p
    for p in "$@"; do
        t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo $t
}
record() { # section target run metric value
    printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RAW"
}
# wrk closed-loop run; prints "rps requests errors non2xx"
run_wrk() { # url duration conns [extra wrk args...]
    local url=$1 dur=$2 conns=$3 out
    shift 3
    out=$(taskset -c $GEN_CPU wrk -t1 -c"$conns" -d"${dur}s" "$@" "$url" 2>&1) || true
    echo "$out" >>"$OUT/wrk.log"
    local rps reqs errs non2xx
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    errs=$(awk '/Socket errors:/ {gsub(",",""); print $4+$6+$8+$10}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "${rps:-0} ${reqs:-0} ${errs:-0} ${non2xx:-0}"
}
# One measured wrk run against a target; records rps, cpu us/request, errors.
measure() { # section target run url dur conns pids-var [wrk args...]
    local section=$1 target=$2 run=$3 url=$4 dur=$5 conns=$6 pids=$7
    shift 7
    local t0 t1 res rps reqs errs non2xx cpu
    t0=$(cpu_ticks $pids)
    res=$(run_wrk "$url" "$dur" "$conns" "$@")
    t1=$(cpu_ticks $pids)
    read -r rps reqs errs non2xx <<<"$res"
    cpu=$(awk -v d=$((t1 - t0)) -v r="$reqs" -v u=$TICK_US 'BEGIN { if (r > 0) printf "%.2f", d * u / r; else print "nan" }')
    record "$section" "$target" "$run" rps "$rps"
    record "$section" "$target" "$run" cpu_us "$cpu"
    record "$section" "$target" "$run" errors $((errs + non2xx))
    log "  $section $target run $run: $rps req/s, $cpu us CPU/request, errors $((errs + non2xx))"
    if [ $((errs + non2xx)) -gt 0 ]; then
        ERRORS_SEEN=$((ERRORS_SEEN + errs + non2xx))
    fi
}
ERRORS_SEEN=0
stat_of() { # section target metric -> "median min max n"
    awk -F'\t' -v s="$1" -v t="$2" -v m="$3" '$1 == s && $2 == t && $4 == m && $5 != "nan" {print $5}' "$RAW" |
        sort -g | awk '{a[NR] = $1} END {
            if (NR == 0) { print "nan nan nan 0"; exit }
            med = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
            print med, a[1], a[NR], NR }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a == a + 0) printf "%.2f", a / b; else print "n/a" }'; }
per_run_ratios() { # section target-a target-b metric -> "a1/b1 a2/b2 ..." over RUNS
    local r a b
    for r in $(seq "$RUNS"); do
        a=$(awk -F'\t' -v s="$1" -v t="$2" -v r="$r" -v m="$4" '$1==s&&$2==t&&$3==r&&$4==m{print $5}' "$RAW")
        b=$(awk -F'\t' -v s="$1" -v t="$3" -v r="$r" -v m="$4" '$1==s&&$2==t&&$3==r&&$4==m{print $5}' "$RAW")
        printf '%s ' "$(ratio "$a" "$b")"
    done
}
fmt() { awk -v v="$1" -v d="${2:-0}" 'BEGIN { if (v == v + 0) printf "%.*f", d, v; else print v }'; }

# === start ===
log "results in $OUT"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_nginx backend
BACKEND_PID=$LAST_PID
wait_port $BACKEND_PORT
start_coregate coregate-1
COREGATE_PID=$LAST_PID
wait_port $COREGATE_PORT
start_nginx nginx-proxy
NGINX_PID=$LAST_PID
wait_port $NGINX_PORT
THR_TARGETS="coregate nginx direct"
if [ -n "${BASE_BIN:-}" ]; then
    "$WORK/coregate-base-bin" serve --config "$WORK/coregate-base.toml" >"$WORK/coregate-base.log" 2>&1 &
    BASE_PID=$!
    PIDS+=("$BASE_PID")
    wait_port $COREGATE_BASE_PORT
    THR_TARGETS="coregate coregate-base nginx direct"
fi
sleep 0.3
COREGATE_PIDS=$(proc_set $COREGATE_PID)
NGINX_PIDS=$(proc_set $NGINX_PID)
BACKEND_PIDS=$(proc_set $BACKEND_PID)

declare -A URL=(
    [direct]=http://127.0.0.1:$BACKEND_PORT
    [coregate]=http://127.0.0.1:$COREGATE_PORT
    [nginx]=http://127.0.0.1:$NGINX_PORT
)
declare -A PROCS=([direct]=$BACKEND_PIDS [coregate]=$COREGATE_PIDS [nginx]=$NGINX_PIDS)
declare -A PORT=([direct]=$BACKEND_PORT [coregate]=$COREGATE_PORT [nginx]=$NGINX_PORT)
if [ -n "${BASE_BIN:-}" ]; then
    URL[coregate-base]=http://127.0.0.1:$COREGATE_BASE_PORT
    PROCS[coregate-base]=$BASE_PID
    PORT[coregate-base]=$COREGATE_BASE_PORT
fi

# Every target answers every path with 200 before anything is measured.
for t in direct coregate nginx; do
    for p in /hello /big; do
        code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$t]}$p")
        [ "$code" = 200 ] || { echo "run.sh: $t $p answered $code" >&2; exit 1; }
    done
    code=$(curl -s -o /dev/null -w '%{http_code}' --data-binary "@$WORK/www/big" "${URL[$t]}/upload")
    [ "$code" = 200 ] || { echo "run.sh: $t POST /upload answered $code" >&2; exit 1; }
done
declare -A TLS_PORT=([coregate]=$COREGATE_TLS_PORT [nginx]=$NGINX_TLS_PORT)
for t in coregate nginx; do
    curl -s -D - -o /dev/null "${URL[$t]}/hello" >"$WORK/$t-response-head.txt"
    for p in /hello /mock; do
        code=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:${TLS_PORT[$t]}$p")
        [ "$code" = 200 ] || { echo "run.sh: $t https $p answered $code" >&2; exit 1; }
    done
done
log "all targets answer; warming up"
for t in direct coregate nginx; do run_wrk "${URL[$t]}/hello" 1 "$CONNS" >/dev/null; done

# === (a)(b)(c) throughput, small responses, keep-alive ===
if want throughput; then
    log "throughput: $RUNS runs of ${DUR}s each, wrk -t1 -c$CONNS on CPU $GEN_CPU"
    [ -n "${BASE_BIN:-}" ] && run_wrk "${URL[coregate-base]}/hello" 1 "$CONNS" >/dev/null
    for run in $(seq "$RUNS"); do
        for t in $THR_TARGETS; do
            measure throughput "$t" "$run" "${URL[$t]}/hello" "$DUR" "$CONNS" "${PROCS[$t]}"
        done
    done
fi

# === latency at fixed rates (open loop) ===
if want latency; then
    read -r NGINX_MAX _ <<<"$(stat_of throughput nginx rps)"
    read -r CG_MAX _ <<<"$(stat_of throughput coregate rps)"
    if [ "$NGINX_MAX" = nan ]; then
        log "latency: measuring both maxima first"
        measure throughput coregate 1 "${URL[coregate]}/hello" "$DUR" "$CONNS" "${PROCS[coregate]}"
        measure throughput nginx 1 "${URL[nginx]}/hello" "$DUR" "$CONNS" "${PROCS[nginx]}"
        read -r NGINX_MAX _ <<<"$(stat_of throughput nginx rps)"
        read -r CG_MAX _ <<<"$(stat_of throughput coregate rps)"
    fi
    # The issue's rates: 50% and 80% of nginx's maximum. When coregate is the
    # slower one, also 50% and 80% of its maximum (DESIGN.md: "of the slower
    # system's maximum"), so that neither proxy is measured past saturation.
    LAT_SETS="n50 n80"
    if [ $SMOKE = 0 ] && awk -v c="$CG_MAX" -v n="$NGINX_MAX" 'BEGIN { exit !(c < n) }'; then
        LAT_SETS="$LAT_SETS s50 s80"
    fi
    for set in $LAT_SETS; do
        pct=${set#?}
        case $set in n*) base=$NGINX_MAX base_name=nginx ;; s*) base=$CG_MAX base_name=coregate ;; esac
        rate=$(awk -v m="$base" -v p="$pct" 'BEGIN { printf "%d", m * p / 100 }')
        [ $SMOKE = 1 ] && rate=$((pct * 20))
        record "latency-$set" basis 1 label "$pct% of $base_name's max"
        log "latency: $rate req/s ($pct% of $base_name's $base), ${LAT_DUR}s after ${LAT_WARM}s warm-up, $LAT_CONNS connections"
        for t in coregate nginx direct; do
            t0=$(cpu_ticks ${PROCS[$t]})
            line=$(taskset -c $GEN_CPU "$CGLOAD" open --addr "127.0.0.1:${PORT[$t]}" --path /hello \
                --rate "$rate" --duration "$LAT_DUR" --warmup "$LAT_WARM" --conns "$LAT_CONNS")
            t1=$(cpu_ticks ${PROCS[$t]})
            echo "$t $set $line" >>"$OUT/cgload.log"
            log "  $t: $line"
            for kv in $line; do
                record "latency-$set" "$t" 1 "${kv%%=*}" "${kv#*=}"
            done
            rec=$(sed -n 's/.*recorded=\([0-9]*\).*/\1/p' <<<"$line")
            record "latency-$set" "$t" 1 cpu_us "$(awk -v d=$((t1 - t0)) -v r="$rec" -v u=$TICK_US -v w="$LAT_WARM" -v D="$LAT_DUR" \
                'BEGIN { if (r > 0) printf "%.2f", d * u / (r * (D + w) / D); else print "nan" }')"
        done
    done
fi

# === memory per idle keep-alive connection ===
if want memory; then
    log "memory: $IDLE_CONNS idle keep-alive connections (one request each, GET $IDLE_PATH)"
    for t in coregate nginx; do
        case $t in
            coregate) mem_pids=$COREGATE_PID ;;
            nginx) mem_pids=$(pgrep -P "$NGINX_PID" | tr '\n' ' ') ;;
        esac
        # Warm-up: what a server allocates once, whatever its connection
        # count (coregate's io_uring receive buffers, touched as a shard
        # receives; tables that grow to their working size), belongs in
        # "before", as it is after the other sections of a full run.
        for _ in 1 2; do
            "$CGLOAD" idle --addr "127.0.0.1:${PORT[$t]}" --path "$IDLE_PATH" \
                --conns $(( IDLE_CONNS < 2000 ? IDLE_CONNS : 2000 )) --hold 1 >/dev/null 2>&1 || true
        done
        # coregate gives freed memory back within a second (its shards'
        # once-a-second trim); RSS settles before "before" is read.
        sleep 2
        before=$(rss_kib $mem_pids)
        "$CGLOAD" idle --addr "127.0.0.1:${PORT[$t]}" --path "$IDLE_PATH" --conns "$IDLE_CONNS" \
            --hold "$IDLE_HOLD" >"$WORK/idle-$t.out" 2>&1 &
        idle_pid=$!
        PIDS+=("$idle_pid")
        for _ in $(seq 600); do
            grep -q READY "$WORK/idle-$t.out" && break
            kill -0 $idle_pid 2>/dev/null || break
            sleep 0.1
        done
        sleep 1
        after1=$(rss_kib $mem_pids)
        # Steady state: a server may trim idle connections' buffers after a while.
        sleep "$STEADY_WAIT"
        after=$(rss_kib $mem_pids)
        ready=$(grep READY "$WORK/idle-$t.out" || echo "READY conns=0 failed=?")
        open=$(sed -n 's/.*conns=\([0-9]*\).*/\1/p' <<<"$ready")
        live=$(ss -Htn state established "sport = :${PORT[$t]}" | wc -l)
        stop_pid $idle_pid
        per=$(awk -v a="$after" -v b="$before" -v n="$open" 'BEGIN { if (n > 0) printf "%.0f", (a - b) * 1024 / n; else print "nan" }')
        record memory "$t" 1 rss_before_kib "$before"
        record memory "$t" 1 rss_after1s_kib "$after1"
        record memory "$t" 1 rss_after_kib "$after"
        record memory "$t" 1 conns "$open"
        record memory "$t" 1 server_side_established "$live"
        record memory "$t" 1 bytes_per_conn "$per"
        log "  $t: RSS $before KiB -> $after1 KiB 1 s after the last connection -> $after KiB $STEADY_WAIT s later, with $open idle connections ($live established at the server): $per bytes each; $ready"
        sleep "$STEADY_WAIT"
    done
fi

# === scaling: 1 and 2 shards ===
if want scaling; then
    log "scaling: mock route, 1 shard (CPU $PROXY_CPU) and 2 shards (CPUs 0,1), wrk on CPU $GEN_CPU"
    start_coregate coregate-2
    C2_PID=$LAST_PID
    wait_port $COREGATE2_PORT
    run_wrk "http://127.0.0.1:$COREGATE2_PORT/mock" 1 "$CONNS" >/dev/null
    for run in $(seq "$SCALE_RUNS"); do
        measure scaling shards1 "$run" "${URL[coregate]}/mock" "$DUR" "$CONNS" "$COREGATE_PIDS"
        measure scaling shards2 "$run" "http://127.0.0.1:$COREGATE2_PORT/mock" "$DUR" "$CONNS" "$C2_PID"
        measure scaling nginx_return "$run" "${URL[nginx]}/mock" "$DUR" "$CONNS" "${PROCS[nginx]}"
    done
    stop_pid "$C2_PID"
fi

# === policies: the proxy with throttling or caching on, beside the plain proxy ===
if want policies; then
    log "policies: plain proxy, throttled (never refusing), cached (hits), both; $SCALE_RUNS runs"
    run_wrk "${URL[coregate]}/cached/hello" 1 "$CONNS" >/dev/null
    run_wrk "${URL[coregate]}/both/hello" 1 "$CONNS" >/dev/null
    for run in $(seq "$SCALE_RUNS"); do
        measure policies plain "$run" "${URL[coregate]}/hello" "$DUR" "$CONNS" "$COREGATE_PIDS"
        measure policies throttled "$run" "${URL[coregate]}/throttled/hello" "$DUR" "$CONNS" "$COREGATE_PIDS"
        measure policies cached "$run" "${URL[coregate]}/cached/hello" "$DUR" "$CONNS" "$COREGATE_PIDS"
        measure policies both "$run" "${URL[coregate]}/both/hello" "$DUR" "$CONNS" "$COREGATE_PIDS"
    done
    curl -s -D - -o /dev/null "${URL[coregate]}/cached/hello" >"$WORK/cached-response-head.txt" || true
    curl -s -D - -o /dev/null "${URL[coregate]}/both/hello" >"$WORK/both-response-head.txt" || true
fi

# === observability: access logs on against off, coregate and nginx ===
if want observability; then
    log "observability: proxied /hello with and without an access log, coregate and nginx; $SCALE_RUNS runs"
    for run in $(seq "$SCALE_RUNS"); do
        for t in coregate nginx; do
            measure observability "$t-off" "$run" "${URL[$t]}/hello" "$DUR" "$CONNS" "${PROCS[$t]}"
            measure observability "$t-log" "$run" "${URL[$t]}/logged/hello" "$DUR" "$CONNS" "${PROCS[$t]}"
        done
    done
    # The logs were written: lines in each file, for the report.
    wc -l "$WORK"/coregate-access-*.log "$WORK/nginx-access.log" >"$WORK/access-log-lines.txt" 2>&1 || true
fi

# === bodies: 1 MiB response, 1 MiB upload ===
if want bodies; then
    log "bodies: 1 MiB download and upload, wrk -c$BODY_CONNS, $BODY_RUNS runs of ${BODY_DUR}s"
    for run in $(seq "$BODY_RUNS"); do
        for t in coregate nginx direct; do
            measure download "$t" "$run" "${URL[$t]}/big" "$BODY_DUR" $BODY_CONNS "${PROCS[$t]}"
        done
    done
    for run in $(seq "$BODY_RUNS"); do
        for t in coregate nginx direct; do
            measure upload "$t" "$run" "${URL[$t]}/upload" "$BODY_DUR" $BODY_CONNS "${PROCS[$t]}" -s "$WORK/upload.lua"
        done
    done
fi

# === TLS: requests on established connections, new and resumed handshakes ===
# One cgload tls run: closed-loop handshakes; records the rate, the proxy's CPU
# per handshake (each carries one request) and how many resumed.
measure_handshakes() { # section target run resume version
    local section=$1 t=$2 run=$3 resume=$4 version=$5 t0 t1 line rate n resumed errs cpu
    t0=$(cpu_ticks ${PROCS[$t]})
    line=$(taskset -c $GEN_CPU "$CGLOAD" tls --addr "127.0.0.1:${TLS_PORT[$t]}" --path /mock \
        --duration "$TLS_HS_DUR" --conns "$TLS_HS_CONNS" --resume "$resume" --tls "$version")
    t1=$(cpu_ticks ${PROCS[$t]})
    echo "$t $section $run $line" >>"$OUT/cgload.log"
    rate=$(sed -n 's/.*rate=\([0-9.]*\).*/\1/p' <<<"$line")
    n=$(sed -n 's/.*handshakes=\([0-9]*\).*/\1/p' <<<"$line")
    resumed=$(sed -n 's/.*resumed=\([0-9]*\).*/\1/p' <<<"$line")
    errs=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$line")
    cpu=$(awk -v d=$((t1 - t0)) -v r="$n" -v u=$TICK_US 'BEGIN { if (r > 0) printf "%.2f", d * u / r; else print "nan" }')
    record "$section" "$t" "$run" rps "${rate:-0}"
    record "$section" "$t" "$run" cpu_us "$cpu"
    record "$section" "$t" "$run" resumed_pct "$(awk -v a="${resumed:-0}" -v b="${n:-0}" 'BEGIN { if (b > 0) printf "%.1f", 100 * a / b; else print "nan" }')"
    record "$section" "$t" "$run" errors "${errs:-0}"
    log "  $section $t run $run: ${rate:-0} handshakes/s, $cpu us CPU/handshake, resumed ${resumed:-0}/${n:-0}, errors ${errs:-0}"
    ERRORS_SEEN=$((ERRORS_SEEN + ${errs:-0}))
}
if want tls; then
    TLS_HS_DUR=$([ $SMOKE = 1 ] && echo 1 || echo $((DUR / 2)))
    TLS_HS_CONNS=8
    log "tls: https keep-alive (wrk -c$CONNS) and new/resumed handshakes (cgload tls, $TLS_HS_CONNS threads, ${TLS_HS_DUR}s); $SCALE_RUNS runs"
    for t in coregate nginx; do
        run_wrk "https://127.0.0.1:${TLS_PORT[$t]}/hello" 1 "$CONNS" >/dev/null
    done
    for run in $(seq "$SCALE_RUNS"); do
        for t in coregate nginx; do
            measure tls-established "$t" "$run" "https://127.0.0.1:${TLS_PORT[$t]}/hello" "$DUR" "$CONNS" "${PROCS[$t]}"
        done
        for spec in "tls13-new 0 1.3" "tls13-resumed 1 1.3" "tls12-new 0 1.2" "tls12-resumed 1 1.2"; do
            read -r section resume version <<<"$spec"
            for t in coregate nginx; do
                measure_handshakes "$section" "$t" "$run" "$resume" "$version"
            done
        done
    done
fi

# === throttle accuracy: admitted requests against an exact token bucket ===
# Issue 4's bound: with a limit of R requests/s and burst B, the requests a
# multi-shard gateway admits over T seconds are within 5% of what one exact
# token bucket admits, B + R*T (it starts full), whether the load is spread
# over the shards, all on one, or moves from one to the other mid-run. Counted
# from the client side: 200 admitted, 429 refused. Two shards on CPUs 0 and 1;
# cgload on CPU 0 beside one of them (a few thousand requests/s of mock
# answers, light next to a shard's capacity). A route bucket from one client
# address, and a per-client-IP bucket from two (each its own bucket, each
# offered THR_LOAD x R).
if want throttle-accuracy; then
    start_coregate coregate-throttle
    THR_PID=$LAST_PID
    wait_port $COREGATE_THR_PORT
    log "throttle-accuracy: 2 shards, R = $THR_RATE/s, B = $THR_BURST, offered $THR_LOAD x R per client address over $THR_CONNS connections, ${THR_DUR}s per run"
    kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
    for spec in "route /limited 127.0.0.1" "per-client-ip /limited-ip 127.0.0.2,127.0.0.3"; do
        read -r bucket path from <<<"$spec"
        for pattern in spread one move; do
            # A quiet second first: the bucket refills to B in B/R seconds, and
            # the shards drop back to their idle tick.
            sleep 1
            line=$(taskset -c $GEN_CPU "$CGLOAD" throttle --addr "127.0.0.1:$COREGATE_THR_PORT" \
                --path "$path" --probe /probe --duration "$THR_DUR" --rate $((THR_LOAD * THR_RATE)) \
                --pattern "$pattern" --conns "$THR_CONNS" --from "$from" 2>>"$OUT/cgload.log")
            echo "throttle-accuracy $bucket $line" >>"$OUT/cgload.log"
            secs=$(kv secs "$line")
            section=throttle-$bucket-$pattern
            for m in offered_rate other errors moved conns_per_shard; do
                record "$section" all 1 "$m" "$(kv "$m" "$line")"
            done
            ERRORS_SEEN=$((ERRORS_SEEN + $(kv other "$line") + $(kv errors "$line") + $(kv moved "$line")))
            for entry in $(kv per_address "$line" | tr , ' '); do
                IFS=: read -r ip admitted refused <<<"$entry"
                exact=$(awk -v b=$THR_BURST -v r=$THR_RATE -v t="$secs" 'BEGIN { printf "%.0f", b + r * t }')
                ratio=$(awk -v a="$admitted" -v e="$exact" 'BEGIN { printf "%.4f", a / e }')
                record "$section" "$ip" 1 secs "$secs"
                record "$section" "$ip" 1 admitted "$admitted"
                record "$section" "$ip" 1 refused "$refused"
                record "$section" "$ip" 1 exact "$exact"
                record "$section" "$ip" 1 ratio "$ratio"
                log "  $bucket $pattern from $ip: admitted $admitted, refused $refused in ${secs}s; exact bucket $exact; ratio $ratio"
            done
        done
    done
    stop_pid "$THR_PID"
fi

# === soak: a long run with policies, restarts and an outage (loadtest/soak.sh) ===
# Its own gateway (2 shards, ports 18100-18104) and backends; its report is
# soak/report.md beside this one. A failed judgement counts as an error.
if want soak; then
    log "soak: ${SOAK_DUR}s at 80% of the maximum (loadtest/soak.sh)"
    SOAK_OUT=$OUT/soak SOAK_DUR=$SOAK_DUR "$LT/soak.sh" >>"$OUT/soak.log" 2>&1 || {
        log "  soak: failed or found errors (soak/report.md, soak.log)"
        ERRORS_SEEN=$((ERRORS_SEEN + 1))
    }
fi

# === uring: epoll against io_uring, the socket mechanism alone (loadtest/uring.sh) ===
# Its own servers (loadtest/uringlab) on free ports; its report is
# uring/report.md beside this one.
if want uring; then
    log "uring: epoll against io_uring in loadtest/uringlab (loadtest/uring.sh)"
    if [ $SMOKE = 1 ]; then ur_runs=1 ur_dur=1; else ur_runs=5 ur_dur=10; fi
    URING_OUT=$OUT/uring URING_RUNS=$ur_runs URING_DUR=$ur_dur "$LT/uring.sh" >>"$OUT/uring.log" 2>&1 || {
        log "  uring: failed (uring/uring.log)"
        ERRORS_SEEN=$((ERRORS_SEEN + 1))
    }
fi

# === zerocopy: send against MSG_ZEROCOPY and io_uring SEND_ZC (loadtest/zc.sh) ===
# Its own lab (loadtest/zclab), its own veth pair between two namespaces it
# creates and deletes; its report is zc/report.md beside this one.
if want zerocopy; then
    log "zerocopy: send, MSG_ZEROCOPY and io_uring SEND_ZC in loadtest/zclab (loadtest/zc.sh)"
    if [ $SMOKE = 1 ]; then zc_env=(ZC_REPS=1 ZC_SECS=0.2 ZC_WARMUP=0.05 ZC_SIZES=65536,1048576 ZC_SINK_SIZES=4096,65000); else zc_env=(); fi
    env "${zc_env[@]}" ZC_OUT="$OUT/zc" "$LT/zc.sh" >>"$OUT/zc.log" 2>&1 || {
        log "  zerocopy: failed (zc/zc.log)"
        ERRORS_SEEN=$((ERRORS_SEEN + 1))
    }
fi

# === lightload: CPU and syscalls per request at 50% of nginx's maximum ===
# Only with --only lightload. loadtest/lightload.sh counts every syscall of
# the proxy's processes at a fixed open-loop rate, then with no load.
if want lightload; then
    command -v perf >/dev/null || apt_install linux-perf
    read -r NGINX_MAX _ <<<"$(stat_of throughput nginx rps)"
    if [ "$NGINX_MAX" = nan ]; then
        log "lightload: measuring nginx's maximum first"
        measure throughput nginx 1 "${URL[nginx]}/hello" "$DUR" "$CONNS" "${PROCS[nginx]}"
        read -r NGINX_MAX _ <<<"$(stat_of throughput nginx rps)"
    fi
    LL_RATE=$(awk -v m="$NGINX_MAX" 'BEGIN { printf "%d", m / 2 }')
    [ $SMOKE = 1 ] && LL_RATE=1000
    LL_DUR=$([ $SMOKE = 1 ] && echo 1 || echo "$LAT_DUR")
    LL_IDLE=$([ $SMOKE = 1 ] && echo 1 || echo 10)
    # A coregate of its own (port $COREGATE2_PORT) with one shard setting.
    ll_variant() { # name key value
        { coregate_conf $COREGATE2_PORT 1 $PROXY_CPU; printf '\n[[server.shard]]\nid = 0\n%s = %s\n' "$2" "$3"; } \
            >"$WORK/coregate-$1.toml"
        "$COREGATE" check --config "$WORK/coregate-$1.toml" >/dev/null
        LL_TARGETS="$LL_TARGETS coregate-$1"
    }
    # LL_SPIN_US="20 50": also coregate with `spin_before_park_us` set to
    # each value. LL_EPOLL_SLEEP_US="0 200": with `epoll_sleep_us` set to
    # each value (0: park in glommio at every idle moment, as before the
    # epoll sleep existed). LL_TIMER_SLACK_US="0": with `timer_slack_us`
    # set to each value (0: the epoll sleep ends exactly when due, as
    # before the slack was set).
    LL_TARGETS="coregate nginx direct"
    # BASE_BIN (and BASE_IO): its coregate-base too, in the same runs.
    [ -n "${BASE_BIN:-}" ] && LL_TARGETS="coregate coregate-base nginx direct"
    for us in ${LL_SPIN_US:-}; do ll_variant "spin$us" spin_before_park_us "$us"; done
    for us in ${LL_EPOLL_SLEEP_US:-}; do ll_variant "es$us" epoll_sleep_us "$us"; done
    for us in ${LL_TIMER_SLACK_US:-}; do ll_variant "slack$us" timer_slack_us "$us"; done
    # LL_IO=uring: also a coregate with `io` set to it.
    for io in ${LL_IO:-}; do ll_variant "io-$io" io "\"$io\""; done
    log "lightload: $LL_RATE req/s (50% of nginx's $NGINX_MAX) for ${LL_DUR}s, $LAT_CONNS connections, then ${LL_IDLE}s idle; $SCALE_RUNS runs; $LL_TARGETS"
    for run in $(seq "$SCALE_RUNS"); do
        for t in $LL_TARGETS; do
            spin_pid=
            if [[ $t == coregate-spin* || $t == coregate-es* || $t == coregate-slack* || $t == coregate-io-* ]]; then
                start_coregate "$t"
                spin_pid=$LAST_PID
                wait_port $COREGATE2_PORT
                PORT[$t]=$COREGATE2_PORT
                PROCS[$t]=$spin_pid
                run_wrk "http://127.0.0.1:$COREGATE2_PORT/hello" 1 "$CONNS" >/dev/null
            fi
            "$LT/lightload.sh" "$WORK" "$CGLOAD" $GEN_CPU "$LL_RATE" "$LL_DUR" "$LAT_CONNS" "$LL_IDLE" \
                "$t:${PORT[$t]}:$(tr ' ' ',' <<<"${PROCS[$t]}" | sed 's/,*$//')" >"$WORK/lightload-$t-$run.out"
            [ -z "$spin_pid" ] || stop_pid "$spin_pid"
            while read -r _ metric value; do
                record lightload "$t" "$run" "$metric" "$value"
            done <"$WORK/lightload-$t-$run.out"
            cp "$WORK/lightload-syscalls-$t.txt" "$OUT/lightload-syscalls-$t-$run.txt"
            read -r c _ <<<"$(stat_of lightload "$t" cpu_us)"
            log "  lightload $t run $run: $(awk '$2 == "cpu_us" || $2 == "achieved_rate" || $2 == "per_request_all_syscalls" || $2 == "idle_cpu_pct" {printf "%s=%s ", $2, $3}' "$WORK/lightload-$t-$run.out")"
        done
    done
fi

# === profile (only with --profile): where the proxies spend their CPU ===
if want profile; then
    command -v perf >/dev/null || apt_install linux-perf
    for spec in "coregate /hello $COREGATE_PID" "coregate /mock $COREGATE_PID" \
        "nginx /hello $(pgrep -P "$NGINX_PID" | head -1)"; do
        read -r t path pid <<<"$spec"
        name=$t-$(tr -d / <<<"$path")
        # Syscalls, io_uring operations and context switches per request.
        perf stat -x, -o "$WORK/perfstat-$name.csv" -p "$(proc_set "$pid" | tr ' ' ',' | sed 's/,*$//')" \
            -e 'raw_syscalls:sys_enter,context-switches,io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm,io_uring:io_uring_task_work_run' \
            -e 'syscalls:sys_enter_*' -- sleep "$PROFILE_DUR" >/dev/null 2>&1 &
        perf_pid=$!
        sleep 0.2
        read -r _ reqs _ <<<"$(run_wrk "${URL[$t]}$path" "$PROFILE_DUR" "$CONNS")"
        wait $perf_pid || true
        # Only the part of the window wrk was running counts; the counters cover
        # the whole window, so this slightly overstates the per-request count.
        {
            echo "events per request, $t $path ($reqs requests):"
            awk -F, -v r="$reqs" '$1 ~ /^[0-9]+$/ && $1 > 0 && r > 0 {
                sub(/^syscalls:sys_enter_/, "", $3); printf "  %-40s %8.3f\n", $3, $1 / r }' \
                "$WORK/perfstat-$name.csv" | sort -k2 -g -r
        } >"$OUT/syscalls-$name.txt"
        head -14 "$OUT/syscalls-$name.txt" | tee -a "$OUT/run.log" >&2
        if [ "$t" = coregate ]; then
            # Which io_uring operations glommio submits, per request.
            perf record -e io_uring:io_uring_submit_req -o "$WORK/uring-$name.data" -p "$pid" \
                -- sleep "$PROFILE_DUR" >/dev/null 2>&1 &
            perf_pid=$!
            sleep 0.3
            read -r _ reqs _ <<<"$(run_wrk "${URL[$t]}$path" "$PROFILE_DUR" "$CONNS")"
            wait $perf_pid || true
            {
                echo "io_uring submissions per request by opcode, $t $path ($reqs requests):"
                perf script -i "$WORK/uring-$name.data" 2>/dev/null | grep -o 'opcode [A-Z_]*' |
                    sort | uniq -c | sort -rn | awk -v r="$reqs" '{ printf "  %-20s %8.3f\n", $3, $1 / r }'
            } >"$OUT/uring-$name.txt"
            cat "$OUT/uring-$name.txt" | tee -a "$OUT/run.log" >&2
        fi
        log "profile: perf record on $t ($pid) under wrk $path, ${PROFILE_DUR}s"
        perf record -F 1999 -g -o "$WORK/perf-$name.data" -p "$pid" -- sleep "$PROFILE_DUR" \
            >"$WORK/perf-$name.log" 2>&1 &
        perf_pid=$!
        run_wrk "${URL[$t]}$path" "$PROFILE_DUR" "$CONNS" >/dev/null
        wait $perf_pid || true
        perf report -i "$WORK/perf-$name.data" --no-children --sort dso,symbol --percent-limit 0.7 \
            --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | sed 's/[ -]*$//' >"$OUT/profile-$name.txt" || true
        perf report -i "$WORK/perf-$name.data" --no-children --sort dso --stdio -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' >"$OUT/profile-$name-dso.txt" || true
        perf report -i "$WORK/perf-$name.data" --children --sort symbol --percent-limit 3 \
            --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | sed 's/[ -]*$//' >"$OUT/profile-$name-children.txt" || true
        log "  top of $OUT/profile-$name.txt:"
        head -15 "$OUT/profile-$name.txt" | tee -a "$OUT/run.log" >&2
    done
fi

# === websocket (loadtest/ws.sh, its own processes and watchdog) ===
if want websocket; then
    log "websocket: loadtest/ws.sh"
    SMOKE=$SMOKE COREGATE=$COREGATE CGLOAD=$CGLOAD OUT=$OUT "$LT/ws.sh" >>"$OUT/run.log" 2>&1 ||
        log "websocket: ws.sh failed (see run.log)"
fi

# === splice: syscalls and CPU of spliced against copied 1 MiB bodies (and nginx) ===
# Only with --only splice (loadtest/splice.sh, its own gateway and backend).
# The bodies section compares the two paths timed, against nginx:
# SPLICE_MIN_BYTES=0 loadtest/run.sh --only bodies copies every body.
if want splice; then
    log "splice: loadtest/splice.sh"
    "$LT/splice.sh" "$COREGATE" >"$OUT/splice.txt" 2>>"$OUT/run.log" ||
        log "splice: splice.sh failed (see run.log)"
    cat "$OUT/splice.txt" >>"$OUT/run.log"
fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# === report ===
{
    echo "# coregate load test, $STAMP$([ $SMOKE = 1 ] && echo ' (smoke: tiny runs, numbers are not meaningful)' || true)"
    echo
    echo "- machine: $NCPU CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r), TCP congestion control $(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo unknown); coregate's connections to the backend: ${UPSTREAM_CC:-none named, so cubic where the host default is bbr}"
    echo "- coregate: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit'), $(git -C "$ROOT" status --short 2>/dev/null | wc -l) changed files in the work tree"
    echo "- $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
    echo "- load average at start $LOAD_START, at end $LOAD_END (the suite itself keeps about 2 busy); run at nice $(nice)"
    echo "- layout: load generator on CPU $GEN_CPU; proxy (1 shard / 1 worker) and backend (nginx, 1 worker) on CPU $PROXY_CPU"
    echo "- errors (socket errors + non-2xx) over all wrk runs: $ERRORS_SEEN"
    echo
    if want throughput; then
        echo "## Throughput, small response (13 bytes), keep-alive, wrk -t1 -c$CONNS, $RUNS x ${DUR}s"
        echo
        echo "| target | req/s median | min | max | proxy CPU µs/request median | min | max |"
        echo "|---|---|---|---|---|---|---|"
        for t in direct ${THR_TARGETS% direct}; do
            read -r m lo hi _ <<<"$(stat_of throughput $t rps)"
            read -r cm clo chi _ <<<"$(stat_of throughput $t cpu_us)"
            echo "| $t | $(fmt "$m") | $(fmt "$lo") | $(fmt "$hi") | $cm | $clo | $chi |"
        done
        read -r cg _ <<<"$(stat_of throughput coregate rps)"
        read -r ng _ <<<"$(stat_of throughput nginx rps)"
        read -r cgc _ <<<"$(stat_of throughput coregate cpu_us)"
        read -r ngc _ <<<"$(stat_of throughput nginx cpu_us)"
        echo
        read -r dc _ <<<"$(stat_of throughput direct cpu_us)"
        echo "- coregate/nginx req/s: **$(ratio "$cg" "$ng")** (target ≥ 1.5)"
        echo "- coregate/nginx CPU per request: **$(ratio "$cgc" "$ngc")** (target ≤ 0.6)"
        echo "- coregate/bare backend CPU per request: **$(ratio "$cgc" "$dc")** (target ≤ 1.6; nginx/bare backend $(ratio "$ngc" "$dc"))"
        if [ -n "${BASE_BIN:-}" ]; then
            read -r bc _ <<<"$(stat_of throughput coregate-base cpu_us)"
            read -r bg _ <<<"$(stat_of throughput coregate-base rps)"
            echo "- coregate/coregate-base ($BASE_BIN): CPU per request **$(ratio "$cgc" "$bc")**, req/s $(ratio "$cg" "$bg"); coregate-base/nginx CPU $(ratio "$bc" "$ngc"), req/s $(ratio "$bg" "$ng")"
            echo "- per-run CPU ratios coregate/coregate-base: $(per_run_ratios throughput coregate coregate-base cpu_us)"
        fi
        echo "- per-run ratios (coregate run i / nginx run i): $(per_run_ratios throughput coregate nginx rps)"
        echo "- CPU µs/request is the proxy process's utime+stime (/proc/PID/stat, ${TICK_US} µs ticks) over the run divided by the requests wrk completed; for direct it is the backend's."
        echo
    fi
    if want latency; then
        echo "## Latency at fixed rates (open loop, cgload, coordinated omission corrected)"
        echo
        echo "Each of $LAT_CONNS connections sends on a fixed schedule; latency is measured from each request's scheduled send time. ${LAT_DUR}s measured after ${LAT_WARM}s warm-up. A request still unanswered 5 s after the last one was due counts with the latency it had then (a proxy past saturation shows seconds)."
        echo
        echo "| load | target | rate req/s | achieved | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | errors | unanswered at the end | proxy CPU µs/req |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
        for set in $LAT_SETS; do
            label=$(awk -F'\t' -v s="latency-$set" '$1 == s && $2 == "basis" {print $5}' "$RAW")
            for t in coregate nginx direct; do
                g() { read -r v _ <<<"$(stat_of "latency-$set" "$t" "$1")"; echo "$v"; }
                echo "| $label | $t | $(g target_rate) | $(g achieved_rate) | $(g p50_us) | $(g p90_us) | $(g p99_us) | $(g p999_us) | $(g max_us) | $(awk -v a="$(g errors)" -v b="$(g non2xx)" 'BEGIN { print a + b }') | $(g unfinished) | $(g cpu_us) |"
            done
        done
        echo
    fi
    if want memory; then
        echo "## Memory with $IDLE_CONNS idle keep-alive connections (one GET $IDLE_PATH each)"
        echo
        echo "| proxy | RSS before KiB | RSS 1 s after the last connection KiB | RSS $STEADY_WAIT s later KiB | conns held | bytes per connection (the later RSS) |"
        echo "|---|---|---|---|---|---|"
        for t in coregate nginx; do
            g() { read -r v _ <<<"$(stat_of memory "$t" "$1")"; echo "$v"; }
            echo "| $t | $(g rss_before_kib) | $(g rss_after1s_kib) | $(g rss_after_kib) | $(g conns) | $(g bytes_per_conn) |"
        done
        echo
        echo "RSS is VmRSS of the coregate process, or of the nginx worker. nginx preallocates its connection array (worker_connections 16384) at start, so that part is in both columns."
        echo
    fi
    if want scaling; then
        echo "## Scaling: mock route, 1 vs 2 shards, wrk -t1 -c$CONNS on CPU $GEN_CPU, $SCALE_RUNS x ${DUR}s"
        echo
        echo "| config | req/s median | min | max | CPU µs/req |"
        echo "|---|---|---|---|---|"
        for t in shards1 shards2 nginx_return; do
            read -r m lo hi _ <<<"$(stat_of scaling $t rps)"
            read -r c _ <<<"$(stat_of scaling $t cpu_us)"
            echo "| $t | $(fmt "$m") | $(fmt "$lo") | $(fmt "$hi") | $c |"
        done
        echo
        echo "shards1: one shard on CPU $PROXY_CPU. shards2: shards on CPUs 0 and 1, the load generator sharing CPU 0 with one of them (2 cores cannot give the generator its own core). nginx_return: nginx answering /mock itself (return 200), for scale."
        echo
    fi
    if want observability; then
        echo "## Observability: access logs on against off, wrk -t1 -c$CONNS, $SCALE_RUNS x ${DUR}s"
        echo
        echo "| target | log | req/s median | CPU µs/req median | CPU vs off |"
        echo "|---|---|---|---|---|"
        for t in coregate nginx; do
            read -r off_c _ <<<"$(stat_of observability $t-off cpu_us)"
            for l in off log; do
                read -r m _ <<<"$(stat_of observability $t-$l rps)"
                read -r c _ <<<"$(stat_of observability $t-$l cpu_us)"
                echo "| $t | $l | $(fmt "$m") | $c | $(ratio "$c" "$off_c") |"
            done
        done
        read -r cl _ <<<"$(stat_of observability coregate-log cpu_us)"
        read -r nl _ <<<"$(stat_of observability nginx-log cpu_us)"
        echo
        echo "- coregate with its access log / nginx with its access log, CPU per request: **$(ratio "$cl" "$nl")**"
        echo '- coregate: an API with `access_log = { preset = "json", destination = FILE }` proxying `ANY /{proxy+}`; nginx: `access_log FILE` (combined format) on the same proxying. Both write every line to a file on the same disk.'
        echo "- lines written: $(tr '\n' ';' <"$WORK/access-log-lines.txt" 2>/dev/null)"
        echo
    fi
    if want policies; then
        echo "## Policies: coregate with throttling or caching on, wrk -t1 -c$CONNS, $SCALE_RUNS x ${DUR}s"
        echo
        echo "| route | req/s median | min | max | CPU µs/req | req/s vs plain | CPU vs plain |"
        echo "|---|---|---|---|---|---|---|"
        read -r pm _ <<<"$(stat_of policies plain rps)"
        read -r pc _ <<<"$(stat_of policies plain cpu_us)"
        for t in plain throttled cached both; do
            read -r m lo hi _ <<<"$(stat_of policies $t rps)"
            read -r c _ <<<"$(stat_of policies $t cpu_us)"
            echo "| $t | $(fmt "$m") | $(fmt "$lo") | $(fmt "$hi") | $c | $(ratio "$m" "$pm") | $(ratio "$c" "$pc") |"
        done
        echo
        echo 'plain: `ANY /{proxy+}` to the backend. throttled: the same with `throttle = { rate = 10000000, burst = 100000000 }`, which never refuses, so this is the cost of the check and of reconciliation. cached: `cache = { ttl_seconds = 3600 }`; every request after the first is answered from the shard cache (`X-Cache: Hit`), without the backend. both: the throttle and the cache on one route (checked, then a hit).'
        echo
        # One request on each cached route after the runs: a Hit shows the
        # runs measured the cache, not the proxy.
        xc() { tr -d '\r' <"$WORK/$1-response-head.txt" 2>/dev/null | awk -F': *' 'tolower($1) == "x-cache" {print $2}'; }
        echo "X-Cache of one more request after the runs: cached \`$(xc cached)\`, both \`$(xc both)\`."
        echo
    fi
    if want bodies; then
        echo "## Bodies: 1 MiB, wrk -t1 -c$BODY_CONNS, $BODY_RUNS x ${BODY_DUR}s"
        echo
        echo "| direction | target | req/s (= MiB/s) median | min | max | proxy CPU µs/request |"
        echo "|---|---|---|---|---|---|"
        for s in download upload; do
            for t in direct coregate nginx; do
                read -r m lo hi _ <<<"$(stat_of $s $t rps)"
                read -r c _ <<<"$(stat_of $s $t cpu_us)"
                echo "| $s | $t | $(fmt "$m" 1) | $(fmt "$lo" 1) | $(fmt "$hi" 1) | $c |"
            done
        done
        for s in download upload; do
            read -r a _ <<<"$(stat_of $s coregate rps)"
            read -r b _ <<<"$(stat_of $s nginx rps)"
            read -r ac _ <<<"$(stat_of $s coregate cpu_us)"
            read -r bc _ <<<"$(stat_of $s nginx cpu_us)"
            echo
            echo "- $s coregate/nginx: req/s $(ratio "$a" "$b"), CPU per request $(ratio "$ac" "$bc")"
        done
        echo
    fi
    if want tls; then
        echo "## TLS: same ECDSA P-256 certificate, $SCALE_RUNS runs"
        echo
        echo "| scenario | target | rate median | min | max | proxy CPU µs median | resumed % | rate coregate/nginx | CPU coregate/nginx |"
        echo "|---|---|---|---|---|---|---|---|---|"
        for s in tls-established tls13-new tls13-resumed tls12-new tls12-resumed; do
            read -r a _ <<<"$(stat_of $s coregate rps)"
            read -r b _ <<<"$(stat_of $s nginx rps)"
            read -r ac _ <<<"$(stat_of $s coregate cpu_us)"
            read -r bc _ <<<"$(stat_of $s nginx cpu_us)"
            for t in coregate nginx; do
                read -r m lo hi _ <<<"$(stat_of $s $t rps)"
                read -r c _ <<<"$(stat_of $s $t cpu_us)"
                read -r rp _ <<<"$(stat_of $s $t resumed_pct)"
                [ $s = tls-established ] && rp=-
                if [ $t = coregate ]; then
                    echo "| $s | $t | $(fmt "$m") | $(fmt "$lo") | $(fmt "$hi") | $c | $rp | $(ratio "$a" "$b") | $(ratio "$ac" "$bc") |"
                else
                    echo "| $s | $t | $(fmt "$m") | $(fmt "$lo") | $(fmt "$hi") | $c | $rp | | |"
                fi
            done
        done
        echo
        echo "tls-established: wrk -t1 -c$CONNS over HTTPS keep-alive, proxied /hello: requests/s and CPU µs per request (each connection's handshake happens once, at the start). tlsNN-new / tlsNN-resumed: cgload tls, $TLS_HS_CONNS threads on CPU $GEN_CPU, each looping connect, handshake, one GET /mock (answered by the proxy itself) with Connection: close, close; the rate is handshakes/s and the CPU is the proxy's per handshake. resumed: the threads share one rustls session store (TLS 1.3 tickets; TLS 1.2 tickets or session ids, whichever the server offers); new: resumption off. The client does the other half of every handshake on CPU $GEN_CPU, so a rate may be the client's limit: the CPU columns are the proxy's own cost."
        echo
    fi
    if want throttle-accuracy; then
        echo "## Throttle accuracy: 2 shards against one exact token bucket, R = $THR_RATE/s, B = $THR_BURST, T = ${THR_DUR}s per run"
        echo
        echo "| bucket | load | client address | T s | offered req/s | admitted | refused | exact B + R·T | admitted − exact | admitted / exact | within ±5% |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        worst=0
        for bucket in route per-client-ip; do
            for pattern in spread one move; do
                section=throttle-$bucket-$pattern
                for ip in $(awk -F'\t' -v s="$section" '$1 == s && $4 == "ratio" {print $2}' "$RAW"); do
                    g() { awk -F'\t' -v s="$section" -v t="$ip" -v m="$1" '$1 == s && $2 == t && $4 == m {print $5}' "$RAW"; }
                    r=$(g ratio)
                    ok=$(awk -v r="$r" 'BEGIN { print (r >= 0.95 && r <= 1.05) ? "yes" : "**no**" }')
                    worst=$(awk -v r="$r" -v w="$worst" 'BEGIN { e = r - 1; if (e < 0) e = -e; print (e > w) ? e : w }')
                    offered=$(awk -v a="$(g admitted)" -v b="$(g refused)" -v t="$(g secs)" 'BEGIN { printf "%.0f", (a + b) / t }')
                    echo "| $bucket | $pattern | $ip | $(g secs) | $offered | $(g admitted) | $(g refused) | $(g exact) | $(($(g admitted) - $(g exact))) | **$r** | $ok |"
                done
            done
        done
        echo
        echo "- largest deviation from the exact bucket: $(awk -v w="$worst" 'BEGIN { printf "%.2f%%", 100 * w }') (target ±5%)"
        echo "- answers other than 200/429, connection errors, and answers from another shard than the connection's probe: $(awk -F'\t' '$1 ~ /^throttle-/ && ($4 == "other" || $4 == "errors" || $4 == "moved") {n += $5} END {print n + 0}' "$RAW") (should be 0)"
        echo
        echo "cgload throttle on CPU $GEN_CPU; coregate with 2 shards on CPUs 0 and 1, mock answers. Each run opens keep-alive connections, probes each with an unthrottled GET and groups them by the shard that answered (the per-shard prefix of x-request-id), then sends $THR_LOAD × R requests/s per client address, paced, over $THR_CONNS connections. spread: the connections alternate between the shards. one: all on one shard. move: all on one shard for T/2, then all on the other. route: \`throttle = { rate = $THR_RATE, burst = $THR_BURST }\`, one client address. per-client-ip: \`throttle = { per_client_ip = { rate = $THR_RATE, burst = $THR_BURST } }\`, two client addresses, each its own bucket. T runs from the first scheduled send to the last answer. One gateway serves all six runs, with a quiet second before each (the bucket is full again B/R = $(awk -v b=$THR_BURST -v r=$THR_RATE 'BEGIN { print b / r }') s after the load stops)."
        echo
    fi
    if want lightload; then
        echo "## Light load: $LL_RATE req/s (50% of nginx's maximum, $NGINX_MAX), open loop, $LAT_CONNS connections, $SCALE_RUNS x ${LL_DUR}s"
        echo
        echo "| target | CPU µs/request median | min | max | syscalls/request | context switches/request | MSR writes/request | p99 µs | idle CPU % | idle syscalls/s |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
        for t in $LL_TARGETS; do
            g() { read -r v _ <<<"$(stat_of lightload "$t" "$1")"; echo "$v"; }
            read -r m lo hi _ <<<"$(stat_of lightload "$t" cpu_us)"
            echo "| $t | $m | $lo | $hi | $(g per_request_all_syscalls) | $(g per_request_context-switches) | $(g per_request_msr:write_msr) | $(g p99_us) | $(g idle_cpu_pct) | $(g idle_per_s_all_syscalls) |"
        done
        read -r cgc _ <<<"$(stat_of lightload coregate cpu_us)"
        read -r ngc _ <<<"$(stat_of lightload nginx cpu_us)"
        echo
        echo "- coregate/nginx CPU per request at 50% load: **$(ratio "$cgc" "$ngc")** (target ≤ 1.0)"
        for t in $LL_TARGETS; do
            [[ $t == coregate-spin* ]] || continue
            read -r c _ <<<"$(stat_of lightload "$t" cpu_us)"
            echo "- $t (\`spin_before_park_us = ${t#coregate-spin}\`)/nginx: $(ratio "$c" "$ngc")"
        done
        for t in $LL_TARGETS; do
            [[ $t == coregate-es* ]] || continue
            read -r c _ <<<"$(stat_of lightload "$t" cpu_us)"
            echo "- $t (\`epoll_sleep_us = ${t#coregate-es}\`)/nginx: $(ratio "$c" "$ngc"); coregate (default) / $t: $(ratio "$cgc" "$c")"
        done
        for t in $LL_TARGETS; do
            [[ $t == coregate-base || $t == coregate-io-* ]] || continue
            read -r c _ <<<"$(stat_of lightload "$t" cpu_us)"
            echo "- $t/nginx: $(ratio "$c" "$ngc"); coregate / $t: $(ratio "$cgc" "$c")"
        done
        for t in $LL_TARGETS; do
            [[ $t == coregate-slack* ]] || continue
            read -r c _ <<<"$(stat_of lightload "$t" cpu_us)"
            echo "- $t (\`timer_slack_us = ${t#coregate-slack}\`)/nginx: $(ratio "$c" "$ngc"); coregate (default) / $t: $(ratio "$cgc" "$c")"
        done
        echo "- CPU is the proxy's CPU time (every thread's schedstat, ns) over the load, divided by the requests answered; syscalls are every syscall of the proxy's processes over a second pass of the same load (perf stat, syscalls tracepoints, with about a second idle on each side), per request. For direct, both are the backend's. Idle: ${LL_IDLE}s with no load, CPU then syscalls."
        echo "- syscalls per request by name, last run: lightload-syscalls-*.txt"
        echo
        for t in $LL_TARGETS; do
            [ "$t" = direct ] && continue
            f=$(ls "$OUT"/lightload-syscalls-$t-[0-9]*.txt 2>/dev/null | tail -1)
            [ -n "$f" ] || continue
            echo '```'
            head -14 "$f"
            echo '```'
        done
        echo
    fi
    if want profile; then
        echo "## Profile (perf, ${PROFILE_DUR}s under wrk -c$CONNS)"
        echo
        for f in "$OUT"/syscalls-*.txt "$OUT"/uring-*.txt; do
            [ -f "$f" ] || continue
            echo '```'
            cat "$f"
            echo '```'
        done
        for f in "$OUT"/profile-*[a-z].txt; do
            [ -f "$f" ] || continue
            case $f in *-dso.txt|*-children.txt) continue ;; esac
            echo "Top of $(basename "$f") (self time; cpu-clock sampling in a VM skews kernel samples toward where interrupts are re-enabled):"
            echo '```'
            head -25 "$f" | cut -c1-110
            echo '```'
        done
        echo
    fi
    if want soak; then
        echo "## Soak (loadtest/soak.sh)"
        echo
        sed -n '3,$p' "$OUT/soak/report.md" 2>/dev/null | sed 's/^## /### /' || echo "no soak report (see soak.log)"
        echo
    fi
    if want uring; then
        echo "## io_uring against epoll (loadtest/uring.sh)"
        echo
        sed -n '3,$p' "$OUT/uring/report.md" 2>/dev/null || echo "no uring report (see uring.log)"
        echo
    fi
    if want zerocopy; then
        echo "## Zero-copy sends (loadtest/zc.sh)"
        echo
        sed -n '3,$p' "$OUT/zc/report.md" 2>/dev/null || echo "no zerocopy report (see zc.log)"
        echo
    fi
    if want websocket && [ -f "$OUT/ws-report.md" ]; then
        cat "$OUT/ws-report.md"
        echo
    fi
    echo "Raw numbers: raw.tsv (section, target, run, metric, value); tool output: wrk.log, cgload.log, work/."
} >"$REPORT"

log "report: $REPORT"
cat "$REPORT"
