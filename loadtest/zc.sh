#!/usr/bin/env bash
# Zero-copy sends, measured before any is built (issue 16): the same large
# in-memory body (what a cached response or a large mock body is) sent again
# and again to a reading peer with plain `send`, `send(MSG_ZEROCOPY)`, and
# io_uring `SEND` / `SEND_ZC` (loadtest/zclab), over (a) loopback and (b) a
# veth pair between two network namespaces this script creates: TCP, both
# ends on this machine, as every client of a gateway here is. CPU per byte
# (the sending thread's, and the whole lab's: both threads and io_uring's
# workers), throughput, and how many completions the kernel reported as
# copied after all (SO_EE_CODE_ZEROCOPY_COPIED, IORING_NOTIF_USAGE_ZC_COPIED).
# And (c) `sink`: UDP datagrams of up to 64 KiB into an ifb device in a
# namespace of its own, which drops them. Nothing receives them, so nothing
# forces a copy: the transmit side of a NIC with scatter-gather, without the
# NIC, the one path here where the kernel need not copy. It shows what the
# zero-copy machinery costs against a copy per send size.
# See docs/benchmarks.md ("Zero-copy sends").
#
#   loadtest/zc.sh              (loadtest/run.sh --only zerocopy runs it)
#
# Environment: ZC_REPS (repetitions, 5), ZC_SECS (measured seconds per case,
# 1.5), ZC_WARMUP (unmeasured seconds first, 0.3), ZC_SIZES (bytes,
# "65536,262144,1048576,4194304"), ZC_SINK_SIZES (bytes, at most 65507:
# "4096,8192,16384,32768,49152,65000"), ZC_PATHS ("loopback veth sink"),
# ZC_OUT (the results directory; default loadtest/results/<timestamp>-zc).
#
# Layout: the sending thread on CPU 1 (where a shard would run), the reading
# thread on CPU 0. In each repetition every mode runs once per size, in an
# order that turns with the repetition; ratios are taken against plain `send`
# in the same repetition. The veth and sink paths need root (`ip netns
# add`); without it they are skipped and the report says so. The namespaces,
# the veth pair (10.231.0.1/30 and 10.231.0.2/30) and the ifb device
# (10.231.1.1/24, datagrams to 10.231.1.2) are the only addresses used and
# are deleted on exit; every wait is bounded.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT=$ROOT/loadtest
REPS=${ZC_REPS:-5}
SECS=${ZC_SECS:-1.5}
WARMUP=${ZC_WARMUP:-0.3}
SIZES=${ZC_SIZES:-65536,262144,1048576,4194304}
SINK_SIZES=${ZC_SINK_SIZES:-4096,8192,16384,32768,49152,65000}
PATHS=${ZC_PATHS:-loopback veth sink}
OUT=${ZC_OUT:-$LT/results/$(date +%Y%m%d-%H%M%S)-zc}
SEND_CPU=1
RECV_CPU=0
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/zc.log" >&2; }

NS_A=zclab-a-$$
NS_B=zclab-b-$$
NS_S=zclab-s-$$
VETH_A=zca$$
VETH_B=zcb$$
IFB=zci$$
ADDR_A=10.231.0.1
ADDR_B=10.231.0.2
ADDR_S=10.231.1.1
ADDR_SINK=10.231.1.2
NETNS_MADE=0
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ $NETNS_MADE = 1 ]; then
        # Deleting a namespace deletes the veth end in it (and so the pair).
        ip netns del "$NS_A" 2>/dev/null || true
        ip netns del "$NS_B" 2>/dev/null || true
        ip netns del "$NS_S" 2>/dev/null || true
        # A pair left in this namespace by a set-up that failed half-way.
        ip link del "$VETH_A" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Cases per repetition and mode: every size on every path.
NCASES=0
for path in $PATHS; do
    case $path in
        sink) NCASES=$((NCASES + $(tr ',' '\n' <<<"$SINK_SIZES" | grep -c .))) ;;
        *) NCASES=$((NCASES + $(tr ',' '\n' <<<"$SIZES" | grep -c .))) ;;
    esac
done
# A watchdog: the whole run is bounded (5 modes per case, each the warm-up,
# the measured seconds and up to 2 s more, plus the build and set-up).
BOUND=$(awk -v r="$REPS" -v s="$SECS" -v w="$WARMUP" -v n="$NCASES" \
    'BEGIN { printf "%d", r * n * 5 * (s + w + 2) + 240 }')
MAIN_PID=$$
(
    trap 'kill $s 2>/dev/null; exit 0' TERM
    sleep "$BOUND" &
    s=$!
    wait $s && echo "zc.sh: watchdog: $BOUND s elapsed, stopping" >>"$OUT/zc.log" && kill -TERM $MAIN_PID
) >/dev/null 2>&1 &
PIDS+=($!)

log "building loadtest/zclab"
cargo build --release -q --manifest-path "$LT/zclab/Cargo.toml" --target-dir "$LT/zclab/target" >>"$OUT/build.log" 2>&1 || {
    tail -20 "$OUT/build.log" >&2
    exit 1
}
LAB=$LT/zclab/target/release/zclab

# The lab in the background and waited for, so that a signal (the watchdog,
# Ctrl-C) reaches the trap at once.
lab() {
    "$LAB" run --reps "$REPS" --secs "$SECS" --warmup "$WARMUP" \
        --send-cpu $SEND_CPU --recv-cpu $RECV_CPU "$@" >>"$OUT/raw.tsv" 2>>"$OUT/zc.log" &
    local p=$!
    PIDS+=($p)
    wait $p
}

can_netns() {
    [ "$(id -u)" = 0 ] || { log "$1: skipped (not root: ip netns add needs it)"; return 1; }
    command -v ip >/dev/null || { log "$1: skipped (no ip command)"; return 1; }
    NETNS_MADE=1
}

make_veth() {
    can_netns veth || return 1
    ip netns add "$NS_A" && ip netns add "$NS_B" &&
        ip link add "$VETH_A" type veth peer name "$VETH_B" &&
        ip link set "$VETH_A" netns "$NS_A" && ip link set "$VETH_B" netns "$NS_B" &&
        ip -n "$NS_A" addr add $ADDR_A/30 dev "$VETH_A" &&
        ip -n "$NS_B" addr add $ADDR_B/30 dev "$VETH_B" &&
        ip -n "$NS_A" link set lo up && ip -n "$NS_B" link set lo up &&
        ip -n "$NS_A" link set "$VETH_A" up && ip -n "$NS_B" link set "$VETH_B" up || {
        log "veth: skipped (could not set up the namespaces)"
        return 1
    }
    # Both ends up (carrier) before the first connection.
    for _ in $(seq 50); do
        ip -n "$NS_A" -o link show dev "$VETH_A" | grep -q 'state UP' &&
            ip -n "$NS_B" -o link show dev "$VETH_B" | grep -q 'state UP' && break
        sleep 0.1
    done
    log "veth: $NS_A/$VETH_A $ADDR_A <-> $NS_B/$VETH_B $ADDR_B, $(ip -n "$NS_A" -o link show dev "$VETH_A" | grep -o 'mtu [0-9]*')"
    return 0
}

# An ifb device that is not the target of a tc redirect frees every packet
# it is given (counted as dropped); NOARP, scatter-gather and checksum
# offload, like a NIC. MTU 65535, so that a datagram of up to 64 KiB is one
# packet of page fragments, as a TSO segment of a TCP stream is.
make_sink() {
    can_netns sink || return 1
    ip netns add "$NS_S" && ip -n "$NS_S" link add "$IFB" type ifb &&
        ip -n "$NS_S" link set "$IFB" mtu 65535 &&
        ip -n "$NS_S" addr add $ADDR_S/24 dev "$IFB" &&
        ip -n "$NS_S" link set "$IFB" up || {
        log "sink: skipped (could not set up an ifb device in a namespace)"
        return 1
    }
    log "sink: $NS_S/$IFB $ADDR_S, datagrams to $ADDR_SINK:9, $(ip -n "$NS_S" -o link show dev "$IFB" | grep -o 'mtu [0-9]*')"
    return 0
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
SKIPPED=
for path in $PATHS; do
    case $path in
        loopback)
            log "loopback: $REPS repetitions, sizes $SIZES, ${SECS}s per case"
            lab --path loopback --addr 127.0.0.1 --sizes "$SIZES" || log "loopback: the lab failed (zc.log)"
            ;;
        veth)
            if make_veth; then
                log "veth: $REPS repetitions, sizes $SIZES, ${SECS}s per case"
                lab --path veth --addr $ADDR_B --send-ns "$NS_A" --recv-ns "$NS_B" --sizes "$SIZES" ||
                    log "veth: the lab failed (zc.log)"
            else
                SKIPPED="$SKIPPED veth"
            fi
            ;;
        sink)
            if make_sink; then
                log "sink: $REPS repetitions, sizes $SINK_SIZES, ${SECS}s per case"
                lab --path sink --udp --addr $ADDR_SINK --port 9 --send-ns "$NS_S" --sizes "$SINK_SIZES" ||
                    log "sink: the lab failed (zc.log)"
                # The datagrams reached the device (which counts what it frees as dropped).
                log "sink: the device took and dropped $(ip netns exec "$NS_S" cat /sys/class/net/"$IFB"/statistics/rx_dropped) datagrams"
            else
                SKIPPED="$SKIPPED sink"
            fi
            ;;
        *) log "unknown path $path (loopback, veth or sink)"; exit 2 ;;
    esac
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

errors=$(awk -F'\t' '$5 ~ /^error/' "$OUT/raw.tsv" | wc -l)
{
    echo "# Zero-copy sends, the mechanism alone ($(date -u +%F), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo
    echo "loadtest/zclab: sender on CPU $SEND_CPU, reader on CPU $RECV_CPU; $REPS repetitions of ${SECS}s per case after ${WARMUP}s of warm-up; Linux $(uname -r), $(nproc) CPUs; load average $LOAD0 before, $LOAD1 after (other sessions' work included)."
    [ -z "$SKIPPED" ] || echo "Skipped:$SKIPPED (see zc.log)."
    [ "$errors" = 0 ] || echo "**$errors case(s) failed** (raw.tsv, status column)."
    echo
    "$LAB" summarize "$OUT/raw.tsv"
    echo "Sender CPU: the sending thread (schedstat). Total CPU: the whole lab process (getrusage: both threads and any io_uring worker). \`sink\`: UDP datagrams into an ifb device that drops them, no reader, so total = sender. Raw rows: raw.tsv."
} >"$OUT/report.md"
cat "$OUT/report.md"
[ "$errors" = 0 ]
