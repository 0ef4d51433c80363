#!/usr/bin/env bash
# Light load: CPU and syscalls per request of each target at one fixed,
# open-loop request rate (run.sh's `--only lightload` runs it at 50% of
# nginx's maximum), and each target's CPU and syscalls while idle.
#
#   loadtest/lightload.sh OUT CGLOAD GEN_CPU RATE DUR CONNS IDLE_SECS NAME:PORT:PID[,PID...]...
#
# For each target, in the order given: `cgload open` sends RATE requests/s
# for DUR seconds over CONNS keep-alive connections from CPU GEN_CPU, and the
# target's CPU time (every thread's schedstat, in ns) is taken around it;
# then the same load again while `perf stat` counts the syscalls of its
# processes (all threads). Then the same with no load for IDLE_SECS.
# Prints one `NAME METRIC VALUE` line per figure on stdout (cpu_us per
# request, syscalls per request, idle CPU % and syscalls/s) and writes each target's syscalls per request, by name, to
# OUT/lightload-syscalls-NAME.txt. Needs perf with the syscalls tracepoints
# (root). Every process it starts is waited for; it stops by itself.
set -euo pipefail

if [ $# -lt 8 ]; then
    sed -n '2,17p' "$0" >&2
    exit 2
fi
OUT=$1 CGLOAD=$2 GEN_CPU=$3 RATE=$4 DUR=$5 CONNS=$6 IDLE_SECS=$7
shift 7
command -v perf >/dev/null || { echo "lightload.sh: perf is missing" >&2; exit 1; }

# CPU time of every thread of the processes, in ns, from schedstat: exact,
# where utime+stime in clock ticks is sampled (a shard that wakes 50 times a
# second for a few µs can be charged whole ticks, or none). Printed with
# "%.0f": mawk (Debian's awk) clamps "%d" at 2^31 - 1, about 2.1 s of CPU,
# and every difference after that read 0.
cpu_ns() { # pid,pid... -> ns
    local p
    for p in ${1//,/ }; do
        cat /proc/"$p"/task/*/schedstat 2>/dev/null || true
    done | awk '{ t += $1 } END { printf "%.0f", t }'
}

# The syscalls counted by name (all of them are counted too, as
# all_syscalls): what either proxy makes per request or per sleep. A short
# list attaches in a moment where all ~360 tracepoints take seconds.
NAMES="recvfrom sendto sendmsg recvmsg read write readv writev io_uring_enter epoll_wait
epoll_pwait epoll_pwait2 epoll_ctl membarrier close fcntl dup getsockopt setsockopt getpid accept4
sched_yield futex clock_nanosleep"
EVENTS=raw_syscalls:sys_enter,context-switches$(for n in $NAMES; do printf ',syscalls:sys_enter_%s' "$n"; done)
# MSR writes (x86), counted as msr:write_msr: nearly all of them program the
# timer hardware (the TSC deadline) for the earliest timer, and in a VM each
# one traps to the hypervisor. Left out where the kernel has no such
# tracepoint.
if perf list msr:write_msr 2>/dev/null | grep -q 'msr:write_msr'; then
    EVENTS="$EVENTS,msr:write_msr"
fi

# Counts syscalls of `pids` while "$@" runs; the counts go to `csv`. The
# tracepoints slow every syscall a little, so CPU is measured in runs
# without them.
count_syscalls() { # csv pids command...
    local csv=$1 pids=$2 perf_pid rc=0
    shift 2
    perf stat -x, -o "$csv" -p "$pids" -e "$EVENTS" >/dev/null 2>&1 &
    perf_pid=$!
    # perf attaches before the load starts.
    sleep 1
    "$@" || rc=$?
    kill -INT $perf_pid 2>/dev/null || true
    wait $perf_pid 2>/dev/null || true
    return $rc
}

# Per-`n` figures from a perf csv: "name value" lines, largest first.
per() { # csv n
    awk -F, -v n="$2" '$1 ~ /^[0-9]+$/ && $1 > 0 && n > 0 {
        name = $3; sub(/^syscalls:sys_enter_/, "", name); sub(/^raw_syscalls:sys_enter$/, "all_syscalls", name)
        printf "%s %.3f\n", name, $1 / n }' "$1" | sort -k2 -g -r
}

load() { # port
    taskset -c "$GEN_CPU" "$CGLOAD" open --addr "127.0.0.1:$1" --path /hello \
        --rate "$RATE" --duration "$DUR" --warmup 0 --conns "$CONNS"
}
recorded() { sed -n 's/.*recorded=\([0-9]*\).*/\1/p' <<<"$1"; }

for spec in "$@"; do
    IFS=: read -r name port pids <<<"$spec"
    # CPU: a run with nothing attached.
    t0=$(cpu_ns "$pids")
    line=$(load "$port")
    t1=$(cpu_ns "$pids")
    echo "$name $line" >>"$OUT/lightload-cgload.log"
    reqs=$(recorded "$line")
    echo "$name requests ${reqs:-0}"
    echo "$name cpu_us $(awk -v d=$((t1 - t0)) -v r="${reqs:-0}" 'BEGIN { if (r > 0) printf "%.2f", d / 1000 / r; else print "nan" }')"
    for kv in $line; do
        case ${kv%%=*} in p50_us | p99_us | achieved_rate | errors) echo "$name ${kv%%=*} ${kv#*=}" ;; esac
    done
    # Syscalls: the same load again, counted (with about a second idle
    # on each side in the window).
    line=$(count_syscalls "$OUT/lightload-$name.csv" "$pids" load "$port")
    echo "$name (counted) $line" >>"$OUT/lightload-cgload.log"
    reqs=$(recorded "$line")
    {
        echo "syscalls (and context switches, MSR writes) per request, $name at $RATE req/s for ${DUR}s (${reqs:-0} requests):"
        per "$OUT/lightload-$name.csv" "${reqs:-0}" | awk '{ printf "  %-28s %8.3f\n", $1, $2 }'
    } >"$OUT/lightload-syscalls-$name.txt"
    per "$OUT/lightload-$name.csv" "${reqs:-0}" | awk -v t="$name" '{ print t, "per_request_" $1, $2 }'

    # Idle: nothing sent for IDLE_SECS, CPU then syscalls.
    sleep 1
    t0=$(cpu_ns "$pids")
    sleep "$IDLE_SECS"
    t1=$(cpu_ns "$pids")
    echo "$name idle_cpu_pct $(awk -v d=$((t1 - t0)) -v s="$IDLE_SECS" 'BEGIN { printf "%.3f", 100 * d / (s * 1000000000) }')"
    count_syscalls "$OUT/lightload-idle-$name.csv" "$pids" sleep "$IDLE_SECS"
    per "$OUT/lightload-idle-$name.csv" "$IDLE_SECS" | awk -v t="$name" '
        $1 == "all_syscalls" || $1 == "context-switches" { print t, "idle_per_s_" $1, $2; seen[$1] = 1 }
        END { if (!seen["all_syscalls"]) print t, "idle_per_s_all_syscalls", 0 }'
done
