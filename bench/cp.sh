#!/usr/bin/env bash
# cp.sh: a SIZE MB file copied into and out of a container by `offload cp` and by
# `docker cp` on the same engine, for the container in the cloud and again after a move
# to the edge, RUNS times each (median), side by side with ratios, and the same file by
# `scp` through offload's ssh alias (`offload ssh-config`; OpenSSH's scp in its default
# SFTP mode over `offload ssh --stdio`). Two private Docker engines on this machine
# (bench/lib.sh); markdown to stdout, progress to stderr; cleans up at exit.
#
#   bench/cp.sh                          # 200 MB, 3 runs
#   RUNS=5 SIZE=1000 bench/cp.sh
#   OFFLOAD_BIN=path/to/offload bench/cp.sh   # skip the build, use that binary
#
# The copies go to /tmp in the container (its own filesystem), so the workspace sync at
# the edge does not run beside them. Every copy is checked to be byte-identical (sha256).
# Needs root (for dockerd), python3, /bin/busybox and OpenSSH's client (scripts/prereqs.sh).
set -euo pipefail

source "$(dirname "$0")/lib.sh"
bench_init cp
RUNS=${RUNS:-3}
SIZE=${SIZE:-200}
image=offload-bench/busybox:latest

bench_offload_bin
bench_engines "$image"
bench_server
bench_join bench
bench_agent

log "making a $SIZE MB file of random bytes"
head -c "$((SIZE * 1000 * 1000))" /dev/urandom >"$work/src.bin"
want=$(sha256sum "$work/src.bin" | cut -d' ' -f1)
check() { # FILE WHAT
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$2: the copy differs from the source" >&2; exit 1; }
}
check_in() { # ENGINE-HOST CONTAINER PATH WHAT
    local got
    got=$(docker --host "$1" exec "$2" sha256sum "$3" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$4: the copy in the container differs" >&2; exit 1; }
}

results="$work/results.tsv" # where tool direction run ms
: >"$results"
timed() { # WHERE TOOL DIRECTION RUN COMMAND...
    local where=$1 tool=$2 dir=$3 run=$4 t0 t1
    shift 4
    t0=$(now_ms)
    "$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; exit 1; }
    t1=$(now_ms)
    printf '%s\t%s\t%s\t%s\t%s\n' "$where" "$tool" "$dir" "$run" "$((t1 - t0))" >>"$results"
    log "$where $tool $dir run $run: $((t1 - t0)) ms"
}

# `scp` through offload's ssh alias, where the binary has it (`offload ssh-config`).
has_ssh=""
if "$bin" ssh-config --help >/dev/null 2>&1; then
    has_ssh=yes
fi
scp_through_offload() { # WHERE RUN ENGINE-HOST CONTAINER
    local where=$1 run=$2 host=$3 rid=$4 cfg="$work/ssh_config"
    [ -n "$has_ssh" ] || return 0
    o ssh-config >"$cfg"
    timed "$where" scp in "$run" scp -F "$cfg" -o BatchMode=yes "$work/src.bin" box.offload:/tmp/scp.bin
    check_in "$host" "$rid" /tmp/scp.bin "scp in"
    rm -f "$work/scp-back.bin"
    timed "$where" scp out "$run" scp -F "$cfg" -o BatchMode=yes box.offload:/tmp/scp.bin "$work/scp-back.bin"
    check "$work/scp-back.bin" "scp out"
}

measure() { # WHERE ENGINE-HOST
    local where=$1 host=$2 run rid
    rid=$(o show box -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["runtime_id"])')
    for run in $(seq 0 "$RUNS"); do # run 0 warms up and is not counted
        rm -f "$work/back.bin" "$work/docker-back.bin"
        timed "$where" offload in "$run" o cp "$work/src.bin" box:/tmp/offload.bin
        check_in "$host" "$rid" /tmp/offload.bin "offload cp in"
        timed "$where" offload out "$run" o cp box:/tmp/offload.bin "$work/back.bin"
        check "$work/back.bin" "offload cp out"
        timed "$where" docker in "$run" docker --host "$host" cp "$work/src.bin" "$rid:/tmp/docker.bin"
        check_in "$host" "$rid" /tmp/docker.bin "docker cp in"
        timed "$where" docker out "$run" docker --host "$host" cp "$rid:/tmp/docker.bin" "$work/docker-back.bin"
        check "$work/docker-back.bin" "docker cp out"
        scp_through_offload "$where" "$run" "$host" "$rid"
        o shell box -- rm -f /tmp/offload.bin /tmp/docker.bin /tmp/scp.bin </dev/null
    done
}

o start --name box "$image" -- sleep 86400 >/dev/null
log "the container in the cloud"
measure cloud "$cloud"
log "moving it to the edge"
o move box --to edge >"$work/move.out" 2>&1 || { cat "$work/move.out" >&2; exit 1; }
log "the container at the edge"
measure edge "$edge"

echo "## Machine"
echo
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores available"
echo "- kernel: $(uname -r); $(docker --host "$cloud" version --format 'Docker {{.Server.Version}}')"
echo "- $work on $(findmnt -no FSTYPE -T "$work" 2>/dev/null || stat -f -c %T "$work")"
echo
python3 - "$results" "$RUNS" "$SIZE" "$has_ssh" <<'EOF'
import statistics, sys

results, runs, size, has_ssh = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
times = {}
for line in open(results):
    where, tool, direction, run, ms = line.split()
    if int(run) == 0:
        continue
    times.setdefault((where, tool, direction), []).append(int(ms))

def med(key):
    vals = times.get(key)
    return statistics.median(vals) if vals else None

def cell(ms):
    if ms is None:
        return "-"
    return f"{ms / 1000:.2f} s ({size / (ms / 1000):.0f} MB/s)"

def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}×"

print(f"## A {size} MB file, median of {runs} runs")
print()
print("| container | direction | offload cp | docker cp | offload ÷ docker | scp through offload | scp ÷ docker |")
print("|---|---|---|---|---|---|---|")
for where in ("cloud", "edge"):
    for direction, label in (("in", "into the container"), ("out", "out of the container")):
        o = med((where, "offload", direction))
        d = med((where, "docker", direction))
        s = med((where, "scp", direction))
        scp = cell(s) if has_ssh else "n/a: no `offload ssh` in this build"
        print(f"| {where} | {label} | {cell(o)} | {cell(d)} | {ratio(o, d)} | {scp} | {ratio(s, d)} |")
print()
print("A ratio below 1 means offload is faster. `docker cp` talks to the engine that runs the")
print("container over its local socket; `offload cp` goes through the server's TLS WebSocket")
print("(and, at the edge, the agent's dial-back link) as a user's copy does.")
EOF
