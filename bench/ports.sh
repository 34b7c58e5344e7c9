#!/usr/bin/env bash
# ports.sh: a port forward's throughput and added latency next to a direct connection to
# the same server, with the container in the cloud and at the edge, in one run. Two
# private Docker engines on this machine, the real server and agent, a busybox container
# with no network that serves files with busybox httpd on 127.0.0.1:8080 of its own
# loopback. "direct" is port-probe run on the host inside the container's network
# namespace (nsenter --net); "forward" is the same port-probe through
# `offload port-forward` on 127.0.0.1 of the host. Prints a markdown table to stdout,
# progress to stderr. Cleans up at exit.
#
#   bench/ports.sh                         # 200 MB, 3 throughput runs, 1000 GETs
#   MB=500 RUNS=5 GETS=2000 bench/ports.sh
#   OFFLOAD_BIN=path/to/offload PROBE_BIN=path/to/port-probe bench/ports.sh  # skip the build
#
# Needs root (dockerd, nsenter), python3 and /bin/busybox (scripts/prereqs.sh).
set -euo pipefail

source "$(dirname "$0")/lib.sh"
bench_init ports
MB=${MB:-200}
RUNS=${RUNS:-3}
GETS=${GETS:-1000}
image=offload-bench/busybox:latest

command -v nsenter >/dev/null || { echo "nsenter (util-linux) is needed" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-$repo/target}"
if [ -z "${OFFLOAD_BIN:-}" ] || [ -z "${PROBE_BIN:-}" ]; then
    log "building offload and port-probe (release)"
    cargo build --release --quiet -p offload -p offload-bench --bin offload --bin port-probe >&2
fi
bin=$(realpath "${OFFLOAD_BIN:-$target/release/offload}")
probe=$(realpath "${PROBE_BIN:-$target/release/port-probe}")

bench_engines "$image"
bench_server
bench_join bench
bench_agent

# The files live in the container's /tmp, outside the workspace, so a move does not copy
# them; the container makes them again when it starts at the other side.
serve="mkdir -p /tmp/www && head -c 100 /dev/zero > /tmp/www/small && dd if=/dev/urandom of=/tmp/www/big bs=1M count=$MB 2>/dev/null && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"
id=$(o start --name web "$image" -- sh -c "$serve" | tail -n1)

o port-forward web 0:8080 >"$work/forward.out" 2>"$work/forward.log" &
forward_pid=$!
bench_track "$forward_pid"
port=""
for _ in $(seq 1 300); do
    port=$(sed -n 's/^forwarding 127.0.0.1:\([0-9]*\) .*/\1/p' "$work/forward.out" | head -n1)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "the forward did not start:" >&2; cat "$work/forward.log" >&2; exit 1; }

# The container's init PID on the engine that runs it, for nsenter.
pid_on() { docker --host "$1" inspect -f '{{.State.Pid}}' "$(o show "$id" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["runtime_id"])')"; }
ready() { # waits until the big file is complete and served, through the forward
    local i
    for i in $(seq 1 600); do
        "$probe" throughput "127.0.0.1:$port" /big 1 >/dev/null 2>&1 &&
            [ "$("$probe" throughput "127.0.0.1:$port" /big 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')" -ge $((MB << 20)) ] && return 0
        sleep 0.2
    done
    echo "the container did not serve its files" >&2
    exit 1
}

results="$work/results.tsv"
: >"$results"
measure() { # where engine
    local where=$1 engine=$2 pid direct forward
    ready
    pid=$(pid_on "$engine")
    log "$where: throughput of ${MB} MB, $RUNS runs each (direct, then forward)"
    direct=$(nsenter --target "$pid" --net "$probe" throughput 127.0.0.1:8080 /big "$RUNS")
    forward=$("$probe" throughput "127.0.0.1:$port" /big "$RUNS")
    printf '%s\tthroughput\t%s\t%s\n' "$where" "$direct" "$forward" >>"$results"
    log "$where: latency of $GETS GETs of 100 bytes, each on a new connection"
    direct=$(nsenter --target "$pid" --net "$probe" latency 127.0.0.1:8080 /small "$GETS")
    forward=$("$probe" latency "127.0.0.1:$port" /small "$GETS")
    printf '%s\tlatency\t%s\t%s\n' "$where" "$direct" "$forward" >>"$results"
}

measure cloud "$cloud"
log "moving the container to the edge"
o move web --to edge >&2
measure edge "$edge"
grep -q "forwarding" "$work/forward.out" && kill -0 "$forward_pid" ||
    { echo "the forward died:" >&2; cat "$work/forward.log" >&2; exit 1; }

python3 - "$results" "$MB" "$RUNS" "$GETS" <<'PY'
import json, sys
results, mb, runs, gets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = {}
for line in open(results):
    where, kind, direct, forward = line.rstrip("\n").split("\t")
    rows.setdefault(where, {})[kind] = (json.loads(direct), json.loads(forward))
print(f"Throughput: GET of a {mb} MB file, median of {runs} runs. Latency: {gets} GETs of a "
      "100-byte file, each on a new connection, after 10 untimed ones.")
print()
print("| container | direct MB/s | forward MB/s | forward ÷ direct | direct p50 | forward p50 | added p50 | direct p99 | forward p99 | added p99 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for where in ("cloud", "edge"):
    (td, tf), (ld, lf) = rows[where]["throughput"], rows[where]["latency"]
    ms = lambda us: f"{us / 1000:.2f} ms"
    print(f"| {where} | {td['mb_per_s']:.0f} | {tf['mb_per_s']:.0f} | {tf['mb_per_s'] / td['mb_per_s']:.2f}× "
          f"| {ms(ld['p50_us'])} | {ms(lf['p50_us'])} | {ms(lf['p50_us'] - ld['p50_us'])} "
          f"| {ms(ld['p99_us'])} | {ms(lf['p99_us'])} | {ms(lf['p99_us'] - ld['p99_us'])} |")
PY
