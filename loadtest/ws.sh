#!/usr/bin/env bash
# WebSocket load tests (docs/benchmarks.md, "WebSockets"): called by
# `loadtest/run.sh --only websocket`, or on its own:
#
#   loadtest/ws.sh            about 2 minutes after the build
#   loadtest/ws.sh --smoke    every scenario once, tiny
#
# Layout as loadtest/README.md: the load generator (cgload) on CPU 0; the
# gateway (one shard) and the backend (cgload ws-server) on CPU 1.
#
# 1. Messages: WS_CONNS connections, each in a closed loop of a 64-byte text
#    message and its answer, WS_DUR seconds per run, WS_RUNS runs of each:
#    direct to the echo backend, through an http_proxy route relaying to it,
#    and through a WebSocket API whose $default route answers with a mock
#    (no backend). Messages per second, and the CPU each process spent per
#    message (utime + stime from /proc).
# 2. Push: a 2-shard gateway (both shards on CPU 1), each shard with a
#    listener of its own ([[server.shard]] listeners), so where a connection
#    lands is known. Pushes go through the API's own path, POST
#    /push/@connections/{id}, SigV4-signed (cgload signs each connection's
#    request once), from PUSHERS keep-alive connections to shard 0 for
#    PUSH_DUR seconds: to PUSH_CONNS connections on shard 0 (same shard),
#    then on shard 1 (cross shard: through shard 1's inbox and back).
#    Pushes per second and the gateway's CPU per push, and their ratio.
# 3. Idle: IDLE_CONNS WebSocket connections opened on a one-shard gateway
#    (for at most IDLE_OPEN_SECS; the count reached is reported) and held
#    idle; the gateway's RSS growth per connection.
#
# Writes $OUT/ws-report.md and $OUT/ws-raw.tsv. Bounded: a watchdog stops it
# after MAX_SECS, every process it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT=$ROOT/loadtest
SMOKE=${SMOKE:-0}
[ "${1:-}" = --smoke ] && SMOKE=1
if [ "$SMOKE" = 1 ]; then
    WS_RUNS=1 WS_DUR=1 WS_CONNS=4 PUSH_DUR=1 PUSH_CONNS=2 PUSHERS=2 IDLE_CONNS=200 MAX_SECS=120
    IDLE_OPEN_SECS=30
else
    WS_RUNS=${WS_RUNS:-3} WS_DUR=${WS_DUR:-8} WS_CONNS=${WS_CONNS:-16}
    PUSH_DUR=${PUSH_DUR:-5} PUSH_CONNS=${PUSH_CONNS:-4} PUSHERS=${PUSHERS:-8}
    IDLE_CONNS=${IDLE_CONNS:-10000} IDLE_OPEN_SECS=${IDLE_OPEN_SECS:-90} MAX_SECS=${MAX_SECS:-400}
fi
GEN_CPU=0
PROXY_CPU=1
BACKEND_PORT=18190
GW_PORT=18180 GW_ADMIN=18189
PUSH_PORT=18182 PUSH_PORT1=18183 PUSH_ADMIN=18188
# cgload signs pushes with this credential; push.toml accepts it.
PUSH_KEY=AKIDLOADTEST PUSH_SECRET=load-test-secret PUSH_REGION=us-east-1

OUT=${OUT:-$LT/results/$(date +%Y%m%d-%H%M%S)-ws$([ "$SMOKE" = 1 ] && echo -smoke || true)}
WORK=$OUT/work-ws
mkdir -p "$WORK"
RAW=$OUT/ws-raw.tsv
REPORT=$OUT/ws-report.md
: >"$RAW"
log() { echo "[$(date +%T)] ws: $*" | tee -a "$OUT/ws.log" >&2; }

PIDS=()
WATCHDOG=
REPORTED=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$REPORTED" = 0 ] && declare -F report >/dev/null && [ -s "$RAW" ]; then
        report || true
        echo "(stopped before the end: the scenarios not shown did not finish)" >>"$REPORT"
    fi
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
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

# === binaries (run.sh passes its own) ===
if [ -z "${COREGATE:-}" ] || [ -z "${CGLOAD:-}" ]; then
    log "building coregate (release) and cgload"
    (cd "$ROOT" && cargo build --release --bin coregate) >"$OUT/ws-build.log" 2>&1
    cargo build --release --manifest-path "$LT/cgload/Cargo.toml" --target-dir "$LT/cgload/target" \
        >>"$OUT/ws-build.log" 2>&1
    cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/coregate" "$WORK/coregate"
    COREGATE=$WORK/coregate
    CGLOAD=$LT/cgload/target/release/cgload
fi
[ -x "$COREGATE" ] && [ -x "$CGLOAD" ]
[ "$(nproc)" -ge 2 ] || { echo "ws.sh: needs 2 CPUs" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 500)) ]; then
    log "open-file limit $(ulimit -n): idle connections reduced"
    IDLE_CONNS=$(($(ulimit -n) - 500))
fi
for port in $BACKEND_PORT $GW_PORT $GW_ADMIN $PUSH_PORT $PUSH_PORT1 $PUSH_ADMIN; do
    if ss -Htln "sport = :$port" | grep -q .; then
        echo "ws.sh: port $port is in use" >&2
        exit 1
    fi
done

MAIN_PID=$$
(
    trap 'kill $s 2>/dev/null; exit 0' TERM
    sleep "$MAX_SECS" &
    s=$!
    wait $s && echo "ws.sh: watchdog: $MAX_SECS s elapsed, stopping" >>"$OUT/ws.log" && kill -TERM $MAIN_PID
) >/dev/null 2>&1 &
WATCHDOG=$!

cpu_ticks() { # pid -> utime+stime of every thread, in clock ticks
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RAW"; }
wait_port() {
    for _ in $(seq 100); do
        ss -Htln "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    echo "ws.sh: nothing listens on port $1" >&2
    return 1
}

# === report (also written when the watchdog stops the run) ===
med() { # section target metric -> median over runs
    awk -F'\t' -v s="$1" -v t="$2" -v m="$3" '$1 == s && $2 == t && $4 == m {print $5}' "$RAW" |
        sort -g | awk '{a[NR] = $1} END { if (NR) print a[int((NR + 1) / 2)]; else print "-" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
report() {
{
    echo "## WebSockets ($([ "$SMOKE" = 1 ] && echo smoke || echo "$WS_RUNS runs"), medians)"
    echo
    echo "Commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%FT%TZ)."
    echo
    echo "| Messages ($WS_CONNS connections, closed loop, 64 bytes) | messages/s | proxy CPU µs/message | backend CPU µs/message |"
    echo "|---|---|---|---|"
    for t in direct relay wsapi; do
        echo "| $t | $(med messages $t rate) | $([ $t = direct ] && echo - || med messages $t cpu_us_per_msg) | $([ $t = wsapi ] && echo - || med messages $t backend_cpu_us_per_msg) |"
    done
    echo
    echo "- relay rate / direct rate: $(ratio "$(med messages relay rate)" "$(med messages direct rate)")"
    echo "- relay: gateway CPU per message / the backend's own CPU per message (direct): $(ratio "$(med messages relay cpu_us_per_msg)" "$(med messages direct backend_cpu_us_per_msg)")"
    echo "- WebSocket API (mock \$default): gateway CPU per message / the backend's (direct): $(ratio "$(med messages wsapi cpu_us_per_msg)" "$(med messages direct backend_cpu_us_per_msg)")"
    echo
    echo "| Push through POST /push/@connections/{id}, SigV4 ($PUSH_CONNS connections, $PUSHERS pushers on shard 0) | pushes/s | gateway CPU µs/push | pushes | not received |"
    echo "|---|---|---|---|---|"
    for t in same cross; do
        echo "| $t shard ($([ $t = same ] && echo 'connections on shard 0' || echo 'connections on shard 1')) | $(med push $t rate) | $(med push $t cpu_us_per_push) | $(med push $t pushes) | $(med push $t lost) |"
    done
    echo
    echo "- cross-shard / same-shard, gateway CPU per push: $(ratio "$(med push cross cpu_us_per_push)" "$(med push same cpu_us_per_push)") (goal: at most 2)"
    echo
    echo "Idle: $(med idle chat bytes_per_conn) bytes of gateway RSS per idle WebSocket connection ($(med idle chat connections) of $IDLE_CONNS open within ${IDLE_OPEN_SECS} s; $(med idle chat rss_kib_before) KiB before, $(med idle chat rss_kib_after) KiB after; goal: at most 2048)."
} >"$REPORT"
}

# === processes ===
BODY=$(printf 'x%.0s' $(seq 64))
cat >"$WORK/gw.toml" <<EOF
[server]
listen = ["127.0.0.1:$GW_PORT"]
shards = 1
cpus = [$PROXY_CPU]
max_connections_per_shard = $((IDLE_CONNS + 1000))

[admin]
listen = "127.0.0.1:$GW_ADMIN"

[[apis]]
name = "relay"

[[apis.routes]]
key = "GET /echo"
integration = { type = "http_proxy", url = "http://127.0.0.1:$BACKEND_PORT/echo" }

[[apis]]
name = "chat"
kind = "websocket"
base_path = "/chat"

[apis.websocket]
new_connections_per_second = 1000000

[[apis.routes]]
key = "\$default"
route_response = true
integration = { type = "mock", body = "$BODY" }
EOF
cat >"$WORK/push.toml" <<EOF
[server]
listen = ["127.0.0.1:$PUSH_PORT", "127.0.0.1:$PUSH_PORT1"]
shards = 2
cpus = [$PROXY_CPU, $PROXY_CPU]

# Each shard its own listener: a connection's shard is its port's.
[[server.shard]]
id = 0
listeners = ["127.0.0.1:$PUSH_PORT"]

[[server.shard]]
id = 1
listeners = ["127.0.0.1:$PUSH_PORT1"]

[admin]
listen = "127.0.0.1:$PUSH_ADMIN"

[[authorizers]]
name = "pushers"

[authorizers.sigv4]
region = "$PUSH_REGION"

[[authorizers.sigv4.credentials]]
access_key_id = "$PUSH_KEY"
secret_access_key = "$PUSH_SECRET"
principal = "load-test"

# No \$default: a message gets {"message":"Forbidden","connectionId":...},
# which is how cgload learns its connection's id.
[[apis]]
name = "push"
kind = "websocket"
base_path = "/push"

[apis.websocket]
new_connections_per_second = 1000000
connections_authorizer = "pushers"

[[apis.routes]]
key = "nothing"
integration = { type = "mock" }
EOF

taskset -c $PROXY_CPU "$CGLOAD" ws-server --addr "127.0.0.1:$BACKEND_PORT" >"$WORK/backend.log" 2>&1 &
BACKEND=$!
PIDS+=("$BACKEND")
"$COREGATE" serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_port $BACKEND_PORT
wait_port $GW_PORT

# === 1. messages ===
echo_run() { # target port path pid-to-measure run
    local target=$1 port=$2 path=$3 pid=$4 run=$5 t0 t1 b0 b1 out
    t0=$(cpu_ticks "$pid")
    b0=$(cpu_ticks "$BACKEND")
    # The CPU time is read at START and END (after the warmup, at the end of
    # the counted seconds).
    out=$(taskset -c $GEN_CPU "$CGLOAD" ws-echo --addr "127.0.0.1:$port" --path "$path" \
        --conns "$WS_CONNS" --size 64 --duration "$WS_DUR" --warmup 1 |
        while IFS= read -r line; do
            case $line in
                START) cpu_ticks "$pid" >"$WORK/t0"; cpu_ticks "$BACKEND" >"$WORK/b0" ;;
                END) cpu_ticks "$pid" >"$WORK/t1"; cpu_ticks "$BACKEND" >"$WORK/b1" ;;
                *) echo "$line" ;;
            esac
        done)
    t0=$(cat "$WORK/t0") t1=$(cat "$WORK/t1") b0=$(cat "$WORK/b0") b1=$(cat "$WORK/b1")
    local n rate
    n=$(echo "$out" | sed -n 's/.*messages=\([0-9]*\).*/\1/p')
    rate=$(echo "$out" | sed -n 's/.*rate=\([0-9]*\).*/\1/p')
    [ -n "$n" ] && [ "$n" -gt 0 ] || { log "$target: no messages: $out"; return 1; }
    record messages "$target" "$run" rate "$rate"
    record messages "$target" "$run" cpu_us_per_msg "$(awk -v t=$((t1 - t0)) -v u=$TICK_US -v n="$n" 'BEGIN { printf "%.2f", t * u / n }')"
    record messages "$target" "$run" backend_cpu_us_per_msg "$(awk -v t=$((b1 - b0)) -v u=$TICK_US -v n="$n" 'BEGIN { printf "%.2f", t * u / n }')"
    log "$target run $run: $rate messages/s"
}
for run in $(seq "$WS_RUNS"); do
    echo_run direct $BACKEND_PORT /echo "$BACKEND" "$run"
    echo_run relay $GW_PORT /echo "$GW" "$run"
    echo_run wsapi $GW_PORT /chat "$GW" "$run"
done

# === 2. push ===
"$COREGATE" serve --config "$WORK/push.toml" >"$WORK/push.log" 2>&1 &
PGW=$!
PIDS+=("$PGW")
wait_port $PUSH_PORT
wait_port $PUSH_PORT1
for run in $(seq "$WS_RUNS"); do
    for t in same cross; do
        shard=$([ $t = same ] && echo 0 || echo 1)
        port=$([ $t = same ] && echo $PUSH_PORT || echo $PUSH_PORT1)
        # Bounded: the pushing, then at most 10 s for what was pushed to
        # arrive (cgload's own bound), and a margin.
        out=$(timeout $((PUSH_DUR + 40)) taskset -c $GEN_CPU "$CGLOAD" ws-push --addr "127.0.0.1:$port" --path /push \
            --push-addr "127.0.0.1:$PUSH_PORT" --push-prefix /push/@connections/ \
            --sigv4 "$PUSH_KEY:$PUSH_SECRET:$PUSH_REGION" --conns "$PUSH_CONNS" --shard $shard \
            --pushers "$PUSHERS" --duration "$PUSH_DUR" |
            while IFS= read -r line; do
                case $line in
                    START) cpu_ticks "$PGW" >"$WORK/p0" ;;
                    END) cpu_ticks "$PGW" >"$WORK/p1" ;;
                    *) echo "$line" ;;
                esac
            done) || true
        n=$(echo "$out" | sed -n 's/.*pushes=\([0-9]*\).*/\1/p')
        got=$(echo "$out" | sed -n 's/.*received=\([0-9]*\).*/\1/p')
        rate=$(echo "$out" | sed -n 's/.*rate=\([0-9]*\).*/\1/p')
        [ -n "$n" ] && [ "$n" -gt 0 ] && [ -s "$WORK/p1" ] || { log "push $t: $out"; exit 1; }
        p0=$(cat "$WORK/p0") p1=$(cat "$WORK/p1")
        rm -f "$WORK/p0" "$WORK/p1"
        record push "$t" "$run" rate "$rate"
        record push "$t" "$run" pushes "$n"
        record push "$t" "$run" lost "$((n - got))"
        record push "$t" "$run" cpu_us_per_push "$(awk -v t=$((p1 - p0)) -v u=$TICK_US -v n="$n" 'BEGIN { printf "%.2f", t * u / n }')"
        log "push $t shard run $run: $rate pushes/s, $n pushes, $((n - got)) not received"
    done
done
stop_pid "$PGW"

# === 3. idle (on the same one-shard gateway, its relayed connections closed) ===
sleep 1
rss0=$(rss_kib "$GW")
taskset -c $GEN_CPU "$CGLOAD" ws-idle --addr "127.0.0.1:$GW_PORT" --path /chat \
    --conns "$IDLE_CONNS" --within "$IDLE_OPEN_SECS" --hold 600 >"$WORK/idle.out" 2>&1 &
IDLE=$!
PIDS+=("$IDLE")
for _ in $(seq $((IDLE_OPEN_SECS * 10 + 300))); do
    grep -q READY "$WORK/idle.out" && break
    kill -0 "$IDLE" 2>/dev/null || { log "ws-idle failed: $(cat "$WORK/idle.out")"; exit 1; }
    sleep 0.1
done
grep -q READY "$WORK/idle.out" || { log "ws-idle never ready"; exit 1; }
sleep 2
rss1=$(rss_kib "$GW")
opened=$(sed -n 's/^READY \([0-9]*\).*/\1/p' "$WORK/idle.out")
stop_pid "$IDLE"
[ -n "$opened" ] && [ "$opened" -gt 0 ] || { log "ws-idle opened nothing: $(cat "$WORK/idle.out")"; exit 1; }
IDLE_OPENED=$opened
record idle chat 1 connections "$opened"
record idle chat 1 rss_kib_before "$rss0"
record idle chat 1 rss_kib_after "$rss1"
record idle chat 1 bytes_per_conn "$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_OPENED" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')"
log "idle: $rss0 KiB -> $rss1 KiB with $IDLE_OPENED connections"
stop_pid "$GW"

REPORTED=1
report
log "report: $REPORT"
cat "$REPORT"
