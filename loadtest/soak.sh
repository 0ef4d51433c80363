#!/usr/bin/env bash
# Soak: a long run at 80% of the measured maximum through a 2-shard gateway
# with policies on, while the backends are restarted and one upstream target
# dies and comes back. Counts every outcome by kind, samples the gateway's
# resident memory and descriptors, fits a line to each and judges the slope.
# See loadtest/README.md ("soak") and docs/benchmarks.md.
#
#   loadtest/soak.sh                 10 minutes of load (SOAK_DUR=600) plus set-up
#   SOAK_DUR=60 loadtest/soak.sh     a shorter run (events scale with it)
#   loadtest/run.sh --only soak      the same, from the suite
#
# Environment: SOAK_DUR (seconds of load, 600), SOAK_MAX_DUR (seconds of the
# maximum-rate measurement, 20), SOAK_LOAD (share of the maximum, 0.8),
# SOAK_CONNS (client connections, 32), SOAK_COREGATE (a coregate binary to
# run instead of building the work tree's; SOAK_COMMIT then names the commit
# it was built from, for the report), SOAK_OUT (the results directory;
# default loadtest/results/<timestamp>-soak). Exits 1 when the run finds an
# unexpected error or a slope over its bound.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT=$ROOT/loadtest
DUR=${SOAK_DUR:-600}
MAX_DUR=${SOAK_MAX_DUR:-20}
LOAD=${SOAK_LOAD:-0.8}
CONNS=${SOAK_CONNS:-32}
SAMPLE_EVERY=5
GW_PORT=18100
A_PORT=18101
B_PORT=18102
A_OK_PORT=18103
B_OK_PORT=18104
OUT=${SOAK_OUT:-$LT/results/$(date +%Y%m%d-%H%M%S)-soak}
WORK=$OUT/work
mkdir -p "$WORK/www" "$WORK/tmp"
REPORT=$OUT/report.md
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/soak.log" >&2; }

# Events, in seconds from the start of the soak load: a graceful restart of
# both backends (nginx reload: new worker processes, the old ones finish
# what they serve) every RESTART_EVERY, and target B killed (SIGKILL, master
# and worker) at OUTAGE_AT, started again OUTAGE_LEN later.
RESTART_EVERY=$((DUR / 10 > 5 ? DUR / 10 : 5))
OUTAGE_AT=$((DUR * 4 / 10))
OUTAGE_LEN=$((DUR / 5 < 30 ? DUR / 5 : 30))
# The samples of the first WARM seconds are left out of the fit (pools,
# caches and allocator arenas fill up then).
WARM=$((DUR / 10 < 60 ? DUR / 10 : 60))
# Bounds for "flat": the fitted change over the fitted span.
RSS_BOUND_KIB=${SOAK_RSS_BOUND_KIB:-4096}
FD_BOUND=${SOAK_FD_BOUND:-32}

# Everything started here is stopped on exit, by process id.
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
# A watchdog: set-up, the maximum, the soak and the report, with room.
MAIN_PID=$$
(
    trap 'kill $s 2>/dev/null; exit 0' TERM
    sleep $((DUR + MAX_DUR + 300)) &
    s=$!
    wait $s && echo "soak.sh: watchdog: time bound passed, stopping" >>"$OUT/soak.log" && kill -TERM $MAIN_PID
) >/dev/null 2>&1 &
PIDS+=($!)

for tool in nginx openssl curl python3; do
    command -v $tool >/dev/null || { echo "soak.sh: needs $tool (loadtest/run.sh installs nginx)" >&2; exit 1; }
done

log "building coregate and cgload"
if [ -z "${SOAK_COREGATE:-}" ]; then
    (cd "$ROOT" && cargo build --release --bin coregate) >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log" >&2; exit 1; }
fi
cargo build --release --manifest-path "$LT/cgload/Cargo.toml" --target-dir "$LT/cgload/target" >>"$OUT/build.log" 2>&1 ||
    { tail -20 "$OUT/build.log" >&2; exit 1; }
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cp "${SOAK_COREGATE:-$TARGET_DIR/release/coregate}" "$WORK/coregate"
COREGATE=$WORK/coregate
CGLOAD=$LT/cgload/target/release/cgload
COMMIT=${SOAK_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo "+changes")}

# === backends: two nginx targets, one worker each ===
head -c 1048576 /dev/zero | tr '\0' 'x' >"$WORK/www/big"
backend_conf() { # name port ok-port
    # As root, workers run as root too (as in run.sh), so they can read the
    # files of the run's directory.
    [ "$(id -u)" = 0 ] && echo "user root;"
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    sendfile on;
    client_body_temp_path $WORK/tmp/$1-body;
    proxy_temp_path $WORK/tmp/$1-proxy;
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location = /hello { default_type text/plain; return 200 "hello, world\n"; }
        location = /big { root $WORK/www; default_type application/octet-stream; }
        # The whole body is read before the answer, as an application would.
        location = /upload {
            client_max_body_size 16m;
            client_body_buffer_size 2m;
            proxy_pass http://127.0.0.1:$3/ok;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
    }
    server {
        listen 127.0.0.1:$3;
        location = /ok { default_type text/plain; return 200 "ok"; }
    }
}
EOF
}
backend_conf backend-a $A_PORT $A_OK_PORT >"$WORK/backend-a.conf"
backend_conf backend-b $B_PORT $B_OK_PORT >"$WORK/backend-b.conf"
declare -A BACKEND_PID
start_backend() { # a|b
    nginx -e "$WORK/backend-$1-error.log" -c "$WORK/backend-$1.conf" &
    BACKEND_PID[$1]=$!
    PIDS+=($!)
}
wait_http() { # url
    for _ in $(seq 100); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "soak.sh: nothing answers at $1" >&2
    return 1
}

# === policies: an API key, a JWT (HS256, made with openssl) ===
"$COREGATE" keys create --file "$WORK/keys.toml" --name soak >"$WORK/key.txt" 2>&1
API_KEY=$(grep -o 'cg_[0-9a-f]*_[0-9a-f]*' "$WORK/key.txt" | head -1)
[ -n "$API_KEY" ] || { echo "soak.sh: no key in: $(cat "$WORK/key.txt")" >&2; exit 1; }
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
SECRET=$(openssl rand -hex 32)
cat >"$WORK/jwks.json" <<EOF
{"keys":[{"kty":"oct","kid":"soak","alg":"HS256","k":"$(printf '%s' "$SECRET" | b64url)"}]}
EOF
EXP=$(($(date +%s) + DUR + 3600))
JWT_HEAD=$(printf '{"alg":"HS256","typ":"JWT","kid":"soak"}' | b64url)
JWT_BODY=$(printf '{"iss":"https://soak.example","aud":"soak","sub":"soak","exp":%d}' $EXP | b64url)
JWT_SIG=$(printf '%s.%s' "$JWT_HEAD" "$JWT_BODY" | openssl dgst -sha256 -hmac "$SECRET" -binary | b64url)
TOKEN=$JWT_HEAD.$JWT_BODY.$JWT_SIG

# === the gateway: 2 shards, every route proxied to targets A and B ===
cat >"$WORK/gateway.toml" <<EOF
[server]
listen = ["127.0.0.1:$GW_PORT"]
shards = 2
drain_timeout_ms = 2000
api_keys_file = "$WORK/keys.toml"

[server.limits]
max_body_bytes = 16777216

# No admin listener: its default port may be another gateway's.
[admin]
enabled = false

[[upstreams]]
name = "backend"
targets = [{ address = "127.0.0.1:$A_PORT" }, { address = "127.0.0.1:$B_PORT" }]
connect_timeout_ms = 1000
timeout_ms = 10000
pool = { max_idle = 64 }
health = { max_failures = 3, cooldown_ms = 2000 }

[[authorizers]]
name = "soak"
[authorizers.jwt]
issuer = "https://soak.example"
audience = ["soak"]
jwks_file = "$WORK/jwks.json"
algorithms = ["HS256"]

[[apis]]
name = "soak"

[[apis.routes]]
key = "ANY /plain/{proxy+}"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }

[[apis.routes]]
key = "GET /keyed/{proxy+}"
api_key_required = true
integration = { type = "http_proxy", url = "http://backend/{proxy}" }

[[apis.routes]]
key = "GET /throttled/{proxy+}"
throttle = { rate = 200, burst = 50 }
integration = { type = "http_proxy", url = "http://backend/{proxy}" }

[[apis.routes]]
key = "GET /cached/{proxy+}"
cache = { ttl_seconds = 2 }
integration = { type = "http_proxy", url = "http://backend/{proxy}" }

[[apis.routes]]
key = "ANY /jwt/{proxy+}"
authorizer = "soak"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }
EOF
"$COREGATE" check --config "$WORK/gateway.toml" >"$WORK/check.log" 2>&1 || { cat "$WORK/check.log" >&2; exit 1; }

# The mix: name, weight, method, path, upload bytes, body bytes, OK statuses,
# headers (tab-separated; cgload soak). 1 MiB bodies both ways, small GETs
# on every policy.
T=$'\t'
cat >"$WORK/mix.tsv" <<EOF
plain${T}30${T}GET${T}/plain/hello${T}0${T}13${T}200
keyed${T}15${T}GET${T}/keyed/hello${T}0${T}13${T}200${T}x-api-key: $API_KEY
throttled${T}15${T}GET${T}/throttled/hello${T}0${T}13${T}200,429
cached${T}15${T}GET${T}/cached/hello${T}0${T}13${T}200
jwt${T}15${T}GET${T}/jwt/hello${T}0${T}13${T}200${T}authorization: Bearer $TOKEN
download${T}2${T}GET${T}/plain/big${T}0${T}1048576${T}200
upload${T}2${T}POST${T}/jwt/upload${T}1048576${T}2${T}200${T}authorization: Bearer $TOKEN
EOF

start_backend a
start_backend b
wait_http "http://127.0.0.1:$A_PORT/hello"
wait_http "http://127.0.0.1:$B_PORT/hello"
"$COREGATE" serve --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
wait_http "http://127.0.0.1:$GW_PORT/plain/hello"

# Every route answers as the mix expects, and refuses without credentials.
check() { # expected-code curl-args...
    local want=$1 got
    shift
    got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
    [ "$got" = "$want" ] || { echo "soak.sh: curl $* answered $got, not $want" >&2; exit 1; }
}
G=http://127.0.0.1:$GW_PORT
check 200 "$G/plain/hello"
check 200 "$G/plain/big"
check 200 -H "x-api-key: $API_KEY" "$G/keyed/hello"
check 403 "$G/keyed/hello"
check 200 "$G/throttled/hello"
check 200 "$G/cached/hello"
check 200 -H "authorization: Bearer $TOKEN" "$G/jwt/hello"
check 401 "$G/jwt/hello"
check 200 -H "authorization: Bearer $TOKEN" --data-binary "@$WORK/www/big" "$G/jwt/upload"
log "gateway pid $GW_PID, commit $COMMIT; every route answers"

# === the maximum: closed loop, the same mix ===
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "maximum: closed loop, $CONNS connections, ${MAX_DUR}s"
MAX_LINE=$("$CGLOAD" soak --addr "127.0.0.1:$GW_PORT" --mix "$WORK/mix.tsv" --conns "$CONNS" \
    --duration "$MAX_DUR" --rate 0 --timeout-ms 15000)
echo "max $MAX_LINE" >>"$OUT/cgload.log"
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
MAX_RATE=$(kv rate "$MAX_LINE")
RATE=$(awk -v m="$MAX_RATE" -v l="$LOAD" 'BEGIN { printf "%.0f", m * l }')
log "maximum $MAX_RATE req/s; soak at $RATE req/s ($LOAD) for ${DUR}s"
sleep 3

# === the soak ===
SAMPLES=$OUT/samples.tsv
EVENTS=$OUT/events.tsv
printf 'sec\trss_kib\tfds\tthreads\n' >"$SAMPLES"
: >"$EVENTS"
"$CGLOAD" soak --addr "127.0.0.1:$GW_PORT" --mix "$WORK/mix.tsv" --conns "$CONNS" \
    --duration "$DUR" --rate "$RATE" --timeout-ms 15000 --series "$OUT/series.tsv" \
    >"$OUT/soak-line.txt" 2>>"$OUT/cgload.log" &
LOAD_PID=$!
PIDS+=($LOAD_PID)
START=$(date +%s.%N)
now() { awk -v s="$START" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }'; }
event() { printf '%s\t%s\n' "$(now)" "$*" >>"$EVENTS"; log "  event at $(now)s: $*"; }
sample() {
    local rss fds thr
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo nan)
    thr=$(awk '/^Threads/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo nan)
    fds=$(ls "/proc/$GW_PID/fd" 2>/dev/null | wc -l)
    printf '%s\t%s\t%s\t%s\n' "$(now)" "$rss" "$fds" "$thr" >>"$SAMPLES"
}
next_sample=0
next_restart=$RESTART_EVERY
outage_done=0
back_done=0
while kill -0 $LOAD_PID 2>/dev/null; do
    t=$(now)
    if awk -v t="$t" -v n="$next_sample" 'BEGIN { exit !(t >= n) }'; then
        sample
        next_sample=$((next_sample + SAMPLE_EVERY))
    fi
    if awk -v t="$t" -v n="$next_restart" 'BEGIN { exit !(t >= n) }' && [ $next_restart -lt "$DUR" ]; then
        # A graceful restart of every backend that runs: new workers, the
        # old ones finish their requests and close their idle connections.
        for b in a b; do
            if [ -n "${BACKEND_PID[$b]:-}" ] && kill -0 "${BACKEND_PID[$b]}" 2>/dev/null; then
                kill -HUP "${BACKEND_PID[$b]}"
                event "restart backend-$b (nginx reload)"
            fi
        done
        next_restart=$((next_restart + RESTART_EVERY))
    fi
    if [ $outage_done = 0 ] && awk -v t="$t" -v n="$OUTAGE_AT" 'BEGIN { exit !(t >= n) }'; then
        pid=${BACKEND_PID[b]}
        workers=$(pgrep -P "$pid" | tr '\n' ' ')
        kill -KILL "$pid" $workers 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        BACKEND_PID[b]=
        event "outage: backend-b killed (SIGKILL, master $pid and workers $workers)"
        outage_done=1
    fi
    if [ $outage_done = 1 ] && [ $back_done = 0 ] &&
        awk -v t="$t" -v n="$((OUTAGE_AT + OUTAGE_LEN))" 'BEGIN { exit !(t >= n) }'; then
        start_backend b
        wait_http "http://127.0.0.1:$B_PORT/hello"
        event "back: backend-b started again (pid ${BACKEND_PID[b]})"
        back_done=1
    fi
    sleep 0.5
done
wait $LOAD_PID || { echo "soak.sh: cgload failed" >&2; exit 1; }
sample
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
SOAK_LINE=$(cat "$OUT/soak-line.txt")
echo "soak $SOAK_LINE" >>"$OUT/cgload.log"
kill -0 $GW_PID || { echo "soak.sh: the gateway died" >&2; exit 1; }
# The gateway still answers, and stops cleanly.
check 200 "$G/plain/hello"
kill -TERM $GW_PID
gw_rc=0
wait $GW_PID || gw_rc=$?

# === judging ===
KILL_T=$(awk -F'\t' '$2 ~ /^outage/ {print $1; exit}' "$EVENTS")
BACK_T=$(awk -F'\t' '$2 ~ /^back/ {print $1; exit}' "$EVENTS")
# Outcomes by kind. Expected: 200 everywhere; the mix's other OK statuses
# on their route (429 on the throttled route);
# during the outage (from the kill to 2 s after the target is back, the
# health cooldown), 502 (a request sent to the dead target before its shard
# took it out of rotation, or when its cooldown ended), and, in the second of
# the kill or the next, a response cut short (err:eof/err:reset) of a
# request that target was serving when it died. Anything else is an error.
awk -F'\t' -v k="${KILL_T:-1e9}" -v b="${BACK_T:-1e9}" '
    FNR == NR { m = split($7, st, ","); for (i = 1; i <= m; i++) expect[$1, st[i]] = 1; next }
    {
        sec = $1; route = $2; what = $3; n = $4
        in_outage = (sec >= int(k) && sec <= b + 2)
        at_kill = (sec >= int(k) && sec <= int(k) + 1)
        if (what == "200") cls = "ok"
        else if ((route, what) in expect) cls = "expected: " what " on " route
        else if (what == "502" && in_outage) cls = "expected: 502 during the outage"
        else if ((what == "err:eof" || what == "err:reset") && at_kill) cls = "expected: cut short by the kill"
        else cls = "ERROR: " what (in_outage ? " (during the outage)" : "")
        c[cls] += n; r[cls, route] += n; routes[route] = 1
    }
    END {
        for (x in c) {
            line = ""
            for (rt in routes) if (r[x, rt] > 0) line = line (line == "" ? "" : ", ") rt " " r[x, rt]
            printf "%s\t%d\t%s\n", x, c[x], line
        }
    }' "$WORK/mix.tsv" "$OUT/series.tsv" | sort >"$OUT/outcomes.tsv"
ERRORS=$(awk -F'\t' '$1 ~ /^ERROR/ {n += $2} END {print n + 0}' "$OUT/outcomes.tsv")
# Least-squares lines through the samples after the warm-up: slope per
# minute and the fitted change over the fitted span.
fit() { # column
    awk -F'\t' -v c="$1" -v w="$WARM" 'NR > 1 && $1 >= w && $c == $c + 0 {
            n++; x = $1; y = $c; sx += x; sy += y; sxx += x * x; sxy += x * y
            if (n == 1 || x < x0) x0 = x; if (x > x1) x1 = x
            if (n == 1 || y < lo) lo = y; if (y > hi) hi = y }
        END {
            if (n < 3) { print "nan nan nan nan nan nan"; exit }
            s = (n * sxy - sx * sy) / (n * sxx - sx * sx)
            printf "%.3f %.1f %.1f %d %d %d\n", s * 60, s * (x1 - x0), sy / n, lo, hi, n }' "$SAMPLES"
}
read -r RSS_SLOPE RSS_CHANGE RSS_MEAN RSS_LO RSS_HI NS <<<"$(fit 2)"
read -r FD_SLOPE FD_CHANGE FD_MEAN FD_LO FD_HI _ <<<"$(fit 3)"
within() { awk -v v="$1" -v b="$2" 'BEGIN { if (v < 0) v = -v; print (v == v + 0 && v <= b) ? "yes" : "**no**" }'; }
RSS_OK=$(within "$RSS_CHANGE" "$RSS_BOUND_KIB")
FD_OK=$(within "$FD_CHANGE" "$FD_BOUND")
FIRST=$(awk -F'\t' 'NR == 2 {print $2 " KiB, " $3 " fds"}' "$SAMPLES")
LAST=$(tail -1 "$SAMPLES" | awk -F'\t' '{print $2 " KiB, " $3 " fds"}')

{
    echo "# coregate soak, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT"
    echo
    echo "- machine: $(nproc) CPUs; load average before $LOAD_BEFORE, after $LOAD_AFTER (other work on the machine shows here)"
    echo "- gateway: 2 shards, routes with an API key, a throttle (rate 200, burst 50), a cache (TTL 2 s), a JWT authorizer (HS256), and a plain proxied route; upstream \`backend\` with targets A and B (round robin, health 3 failures / 2 s cooldown)"
    echo "- mix (cgload soak, $CONNS keep-alive connections): $(awk -F'\t' '{printf "%s%s %s%%", (NR > 1 ? ", " : ""), $1, $2}' "$WORK/mix.tsv"); download = GET 1 MiB, upload = POST 1 MiB (JWT route)"
    echo "- maximum (closed loop, ${MAX_DUR}s): **$MAX_RATE req/s**; soak at $LOAD of it: **$RATE req/s** offered for ${DUR}s"
    echo "- soak: $(kv requests "$SOAK_LINE") requests in $(kv secs "$SOAK_LINE") s ($(kv rate "$SOAK_LINE") req/s achieved)"
    echo "- events: backends restarted gracefully (nginx reload) every ${RESTART_EVERY}s; target B killed at ${KILL_T:-?}s and started again at ${BACK_T:-?}s"
    echo "- the gateway exited with status $gw_rc after SIGTERM"
    echo
    echo "## Outcomes"
    echo
    echo "| outcome | count | by route |"
    echo "|---|---|---|"
    awk -F'\t' '{printf "| %s | %d | %s |\n", $1, $2, $3}' "$OUT/outcomes.tsv"
    echo
    echo "Unexpected errors: **$ERRORS** (should be 0)."
    echo
    echo "## Resident memory and descriptors of the gateway"
    echo
    echo "Sampled every ${SAMPLE_EVERY}s ($NS samples after the first ${WARM}s, which are left out of the fit). First sample $FIRST; last $LAST."
    echo
    echo "| quantity | mean | min | max | slope (least squares) | fitted change over the run | bound | flat |"
    echo "|---|---|---|---|---|---|---|---|"
    echo "| RSS (KiB) | $RSS_MEAN | $RSS_LO | $RSS_HI | $RSS_SLOPE KiB/min | $RSS_CHANGE KiB | ±$RSS_BOUND_KIB KiB | $RSS_OK |"
    echo "| descriptors | $FD_MEAN | $FD_LO | $FD_HI | $FD_SLOPE /min | $FD_CHANGE | ±$FD_BOUND | $FD_OK |"
    echo
    echo "## Events"
    echo
    awk -F'\t' '{printf "- %s s: %s\n", $1, $2}' "$EVENTS"
    echo
    echo "Samples: samples.tsv; outcomes per second: series.tsv (second, route, outcome, count); gateway log: work/gateway.log."
} >"$REPORT"
log "report: $REPORT"
cat "$REPORT"
[ "$ERRORS" = 0 ] && [ "$RSS_OK" = yes ] && [ "$FD_OK" = yes ] && [ $gw_rc = 0 ]
