#!/usr/bin/env bash
# Heap allocations per request of the real binary, over real sockets: the
# connection loop, the gateway's driver and the integration included.
#
#   loadtest/allocs.sh [BINARY]    (default: target/release/coregate, built)
#
# A small preloaded library counts calls to malloc, calloc and realloc made
# on the shard's thread (threads named coregate-shard*; the coordinator
# threads tick on time, not on requests) and writes the totals when the
# gateway exits. The gateway (one shard) serves a mock route and a route
# proxied to nginx (installed if missing), as loadtest/counting.sh sets
# them up.
# A Python client sends N requests on one keep-alive connection, once with
# N = 2,000 and once with N = 12,000; the difference of the two totals over
# 10,000 is the allocations per request, free of start-up and shutdown.
# Each gateway lives LIFETIME seconds (default 20) whatever its client
# takes, so allocations glommio makes on its timers cancel out too.
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --bin coregate >/dev/null 2>&1)
    BIN=$ROOT/target/release/coregate
fi
. "$ROOT/loadtest/counting.sh"
need gcc nginx

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

start_backend

# Every gateway lives LIFETIME seconds, however long its client takes:
# the shard's thread also allocates on time (glommio's timers and reactor,
# about 500 times a second on an idle shard), and equal lifetimes make
# those allocations cancel out of the difference.
LIFETIME=${LIFETIME:-20}

run() { # path n -> "malloc calloc realloc"
    local path=$1 n=$2 port start
    port=$(free_port)
    write_gateway_config "$port"
    start=$(date +%s.%N)
    ALLOC_COUNT_FILE=$WORK/count.txt LD_PRELOAD=$WORK/count.so "$BIN" serve --config "$WORK/gw.toml" \
        >"$WORK/gw.out" 2>&1 &
    local gw=$!
    wait_port "$port"
    python3 "$WORK/client.py" "$port" "$path" "$n"
    local left
    left=$(awk -v s="$start" -v now="$(date +%s.%N)" -v l="$LIFETIME" 'BEGIN { printf "%.3f", s + l - now }')
    if awk -v x="$left" 'BEGIN { exit !(x <= 0) }'; then
        echo "the client took longer than LIFETIME=$LIFETIME s: raise it" >&2
        exit 1
    fi
    sleep "$left"
    kill -TERM "$gw"
    wait "$gw" || true
    cat "$WORK/count.txt"
}

echo "binary: $BIN"
printf '%-8s %12s %12s %12s\n' route malloc/req calloc/req realloc/req
for path in /mock /hello; do
    read -r m1 c1 r1 < <(run "$path" 2000)
    read -r m2 c2 r2 < <(run "$path" 12000)
    name=$([ "$path" = /mock ] && echo mock || echo proxy)
    awk -v n=10000 -v a="$m1" -v b="$m2" -v c="$c1" -v d="$c2" -v e="$r1" -v f="$r2" -v name="$name" \
        'BEGIN { printf "%-8s %12.3f %12.3f %12.3f\n", name, (b-a)/n, (d-c)/n, (f-e)/n }'
done
