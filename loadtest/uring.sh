#!/usr/bin/env bash
# The socket mechanism alone: an edge-triggered epoll loop (what coregate's
# src/net does) against an io_uring loop (multishot accept, multishot receive
# into a provided-buffer ring, sends batched into one submission per pass,
# SINGLE_ISSUER and DEFER_TASKRUN), both in loadtest/uringlab: one thread
# answering keep-alive GETs with the same fixed response, nothing else in the
# way. It tells whether an io_uring socket path could pay in coregate before
# one is built into a shard. See docs/benchmarks.md ("io_uring sockets").
#
#   loadtest/uring.sh              (loadtest/run.sh --only uring runs it)
#
# Environment: URING_RUNS (closed-loop runs per mechanism, 5), URING_DUR
# (seconds per run, 10), URING_CONNS (wrk connections, 50), URING_OUT (the
# results directory; default loadtest/results/<timestamp>-uring).
#
# Layout: the server on CPU 1, the load generator on CPU 0. Closed loop: wrk
# -t1 -cCONNS, runs alternating epoll, uring, epoll...; CPU per request from
# every thread's schedstat (ns). Then syscalls per request under the same
# load (perf stat), and light load: both at 50% of epoll's median maximum,
# open loop (loadtest/lightload.sh). Loopback only; every process it starts
# is stopped on exit; every wait is bounded.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT=$ROOT/loadtest
RUNS=${URING_RUNS:-5}
DUR=${URING_DUR:-10}
CONNS=${URING_CONNS:-50}
OUT=${URING_OUT:-$LT/results/$(date +%Y%m%d-%H%M%S)-uring}
GEN_CPU=0
SRV_CPU=1
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/uring.log" >&2; }

for t in wrk perf taskset; do
    command -v $t >/dev/null || { echo "uring.sh: $t is missing (loadtest/run.sh installs it)" >&2; exit 1; }
done

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
# A watchdog: the whole run is bounded.
( sleep $((RUNS * 2 * (DUR + 2) + 4 * DUR + 180)); echo "uring.sh: watchdog: out of time" >&2; kill -TERM $$ ) &
PIDS+=($!)

log "building loadtest/uringlab and loadtest/cgload"
cargo build --release -q --manifest-path "$LT/uringlab/Cargo.toml" --target-dir "$LT/uringlab/target" >>"$OUT/build.log" 2>&1
cargo build --release -q --manifest-path "$LT/cgload/Cargo.toml" --target-dir "$LT/cgload/target" >>"$OUT/build.log" 2>&1
LAB=$LT/uringlab/target/release/uringlab
CGLOAD=$LT/cgload/target/release/cgload

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "uring.sh: nothing listens on 127.0.0.1:$1" >&2
    return 1
}
# "%.0f": mawk clamps "%d" at 2^31 - 1 (about 2.1 s of CPU).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ t += $1 } END { printf "%.0f", t }'; }

declare -A PORT PID
for m in epoll uring; do
    PORT[$m]=$(free_port)
    taskset -c $SRV_CPU "$LAB" $m "${PORT[$m]}" 2>>"$OUT/uringlab-$m.err" &
    PID[$m]=$!
    PIDS+=($!)
    wait_port "${PORT[$m]}"
    # Every server answers before anything is measured.
    curl -sf "http://127.0.0.1:${PORT[$m]}/" | grep -q 'hello, world' \
        || { echo "uring.sh: $m did not answer" >&2; exit 1; }
done

printf 'mechanism\trun\trps\tcpu_ns_per_req\n' >"$OUT/raw.tsv"
log "closed loop: wrk -t1 -c$CONNS, $RUNS runs of ${DUR}s per mechanism, alternating"
for m in epoll uring; do taskset -c $GEN_CPU wrk -t1 -c"$CONNS" -d1 "http://127.0.0.1:${PORT[$m]}/" >/dev/null; done
for run in $(seq "$RUNS"); do
    for m in epoll uring; do
        t0=$(cpu_ns "${PID[$m]}")
        w=$(taskset -c $GEN_CPU wrk -t1 -c"$CONNS" -d"$DUR" "http://127.0.0.1:${PORT[$m]}/")
        t1=$(cpu_ns "${PID[$m]}")
        n=$(awk '/requests in/ { print $1 }' <<<"$w")
        errs=$(awk '/Socket errors|Non-2xx/ { print }' <<<"$w")
        [ -z "$errs" ] || log "  $m run $run: $errs"
        rps=$(awk -v n="$n" -v d="$DUR" 'BEGIN { printf "%.0f", n / d }')
        cpu=$(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f", (b - a) / n; else print "nan" }')
        printf '%s\t%s\t%s\t%s\n' "$m" "$run" "$rps" "$cpu" >>"$OUT/raw.tsv"
        log "  $m run $run: $rps req/s, $cpu ns CPU/request"
    done
done
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v m="$1" -v c="$2" '$1 == m { print $c }' "$OUT/raw.tsv" | median; }

log "syscalls per request under the same load (perf stat, one ${DUR}s run each)"
for m in epoll uring; do
    perf stat -x, -o "$OUT/perf-$m.csv" -p "${PID[$m]}" -e raw_syscalls:sys_enter,context-switches >/dev/null 2>&1 &
    pp=$!
    sleep 1
    w=$(taskset -c $GEN_CPU wrk -t1 -c"$CONNS" -d"$DUR" "http://127.0.0.1:${PORT[$m]}/")
    kill -INT $pp 2>/dev/null || true
    wait $pp 2>/dev/null || true
    n=$(awk '/requests in/ { print $1 }' <<<"$w")
    awk -F, -v n="${n:-0}" -v m="$m" 'n > 0 && $3 == "raw_syscalls:sys_enter" { printf "%s syscalls_per_req %.3f\n", m, $1 / n }
        n > 0 && $3 == "context-switches" { printf "%s switches_per_req %.4f\n", m, $1 / n }' "$OUT/perf-$m.csv" >>"$OUT/perf.txt"
done

EMAX=$(col epoll 3)
RATE=$(awk -v m="$EMAX" 'BEGIN { printf "%d", m / 2 }')
log "light load: both at $RATE req/s (50% of epoll's median maximum), open loop, ${DUR}s (loadtest/lightload.sh)"
"$LT/lightload.sh" "$OUT" "$CGLOAD" $GEN_CPU "$RATE" "$DUR" "$CONNS" 5 \
    "epoll:${PORT[epoll]}:${PID[epoll]}" "uring:${PORT[uring]}:${PID[uring]}" >"$OUT/light.txt" 2>>"$OUT/uring.log" \
    || log "lightload.sh failed (see uring.log)"

{
    echo "# io_uring against epoll, the socket mechanism alone ($(date -u +%F), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo
    echo "loadtest/uringlab on CPU $SRV_CPU, wrk -t1 -c$CONNS on CPU $GEN_CPU, $RUNS alternating runs of ${DUR}s; medians."
    echo
    echo "| mechanism | req/s | CPU ns/request | syscalls/request | context switches/request |"
    echo "|---|---|---|---|---|"
    for m in epoll uring; do
        sc=$(awk -v m="$m" '$1 == m && $2 == "syscalls_per_req" { print $3 }' "$OUT/perf.txt")
        cs=$(awk -v m="$m" '$1 == m && $2 == "switches_per_req" { print $3 }' "$OUT/perf.txt")
        echo "| $m | $(col $m 3) | $(col $m 4) | ${sc:-?} | ${cs:-?} |"
    done
    echo
    echo "uring/epoll: req/s $(awk -v a="$(col uring 3)" -v b="$(col epoll 3)" 'BEGIN { printf "%.2f", a / b }')×, CPU per request $(awk -v a="$(col uring 4)" -v b="$(col epoll 4)" 'BEGIN { printf "%.2f", a / b }')×"
    echo
    echo "Light load ($RATE req/s, open loop): \`NAME METRIC VALUE\` from loadtest/lightload.sh"
    echo
    echo '```'
    cat "$OUT/light.txt" 2>/dev/null || true
    echo '```'
} >"$OUT/report.md"
cat "$OUT/report.md"
