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
. "$ROOT/loadtest/counting.sh"
need valgrind nginx
start_backend

run() { # path n -> instructions on the busiest thread
    local path=$1 n=$2 port
    port=$(free_port)
    write_gateway_config "$port"
    rm -f "$WORK"/cg.out*
    valgrind --tool=callgrind --fair-sched=yes --separate-threads=yes --callgrind-out-file="$WORK/cg.out" \
        --toggle-collect='coregate::http::conn::run*' \
        "$BIN" serve --config "$WORK/gw.toml" >"$WORK/gw.out" 2>&1 &
    local gw=$!
    wait_port "$port"
    python3 "$WORK/client.py" "$port" "$path" 20   # warm-up: pools, caches
    python3 "$WORK/client.py" "$port" "$path" "$n"
    kill -TERM "$gw"
    # Under valgrind a SIGTERM was seen to go unnoticed now and then; a
    # second one ends the process at once (callgrind still writes its
    # counts at exit).
    for _ in $(seq 100); do kill -0 "$gw" 2>/dev/null || break; sleep 0.2; done
    kill -TERM "$gw" 2>/dev/null || true
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
