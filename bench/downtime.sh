#!/usr/bin/env bash
# downtime.sh: the downtime of `offload move ID --to edge` next to a scripted baseline
# (docker stop; rsync the workspace; docker run on the other engine), on two private
# Docker engines on this machine, for a 10 MB and a 200 MB workspace, RUNS times each
# (median). Prints markdown tables to stdout, progress to stderr. Cleans up at exit.
#
#   bench/downtime.sh                      # 10 MB and 200 MB, 3 runs each
#   RUNS=5 SIZES="10 200 1000" bench/downtime.sh
#   OFFLOAD_BIN=path/to/offload bench/downtime.sh   # skip the build, use that binary
#
# Workspaces: SIZE MB of random data in one file; for sizes >= 200 MB, 2,000 files of
# 4 KiB are part of the size (SIZE-8 MB in one file + 8 MB of small files).
# Needs root (for dockerd), rsync, python3 and /bin/busybox (scripts/prereqs.sh).
set -euo pipefail

source "$(dirname "$0")/lib.sh"
bench_init downtime
RUNS=${RUNS:-3}
SIZES=${SIZES:-"10 200"}
SMALL_FILES=2000 # in workspaces of 200 MB and more
image=offload-bench/busybox:latest
command -v rsync >/dev/null || { echo "rsync is needed" >&2; exit 1; }

bench_on_exit() {
    [ -z "${KEEP_LOGS:-}" ] || cp "$work/agent.log" "$KEEP_LOGS" 2>/dev/null
}

bench_offload_bin
bench_engines "$image"
dc() { docker --host "$cloud" "$@"; }
de() { docker --host "$edge" "$@"; }

# Both engines' events, to check each tool's own timings against what the engines saw:
# from the cloud engine's first `kill` (the stop's SIGTERM) to the edge engine's `start`.
# (Not through the dc/de functions: `&` on a function backgrounds a subshell, and killing
# that by PID would leave the docker process running.)
docker --host "$cloud" events --format '{{json .}}' --filter type=container >"$work/cloud-events.jsonl" 2>/dev/null &
bench_track $!
docker --host "$edge" events --format '{{json .}}' --filter type=container >"$work/edge-events.jsonl" 2>/dev/null &
bench_track $!

bench_server
bench_join bench
OFFLOAD_LOG=${OFFLOAD_LOG:-info} bench_agent

# The script that fills /workspace, run inside the container.
fill_script() {
    local mb=$1 small=0
    [ "$mb" -ge 200 ] && small=$SMALL_FILES
    local big=$((mb - small * 4 / 1024))
    cat <<EOF
set -e
cd /workspace
dd if=/dev/urandom of=data bs=1M count=$big 2>/dev/null
if [ $small -gt 0 ]; then
    mkdir -p small
    i=0
    while [ \$i -lt $small ]; do head -c 4096 /dev/urandom > small/f\$i; i=\$((i + 1)); done
fi
sync
EOF
}

results="$work/results.tsv" # kind size run key=value...
pyget() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

# One offload move to the edge of a fresh container with an MB-sized workspace.
offload_run() {
    local mb=$1 run=$2 id shown t0 t1
    id=$(o start "$image" -- sleep 86400 | tail -n1)
    o shell "$id" -- sh -c "$(fill_script "$mb")" </dev/null
    t0=$(now_ms)
    o move "$id" --to edge >"$work/move.out" 2>&1 || { cat "$work/move.out" >&2; exit 1; }
    t1=$(now_ms)
    shown=$(o show "$id" -o json)
    if [ "$(pyget 'd["location"], d["state"], d["last_move"]["outcome"]' <<<"$shown")" != "('edge', 'running', 'done')" ]; then
        echo "the move did not end at the edge: $shown" >&2
        exit 1
    fi
    printf 'offload\t%s\t%s\t%s\t%s\t%s\n' "$mb" "$run" "$id" "$((t1 - t0))" \
        "$(pyget 'json.dumps(d["last_move"]["timings"])' <<<"$shown")" >>"$results"
    log "offload ${mb} MB run $run: $(pyget 'd["last_move"]["timings"]' <<<"$shown")"
    # Back to the cloud (rm works there only), then away.
    o move "$id" --to cloud >"$work/move.out" 2>&1 || { cat "$work/move.out" >&2; exit 1; }
    o rm "$id" >/dev/null
}

# The same by script: stop in the cloud, rsync the workspace, run on the edge.
baseline_run() {
    local mb=$1 run=$2 tag="b-$1-$2" cws ews c t0 t1 t2 t3
    cws="$work/baseline/$tag/cloud" ews="$work/baseline/$tag/edge"
    mkdir -p "$cws" "$ews"
    c=$(dc run -d --init --network none --stop-timeout 1 --label "bench.id=$tag" \
        -v "$cws:/workspace" "$image" sleep 86400)
    dc exec "$c" sh -c "$(fill_script "$mb")"
    t0=$(now_ms)
    dc stop -t 1 "$c" >/dev/null
    t1=$(now_ms)
    rsync -a "$cws/" "$ews/"
    t2=$(now_ms)
    de run -d --init --network none --label "bench.id=$tag" \
        -v "$ews:/workspace" "$image" sleep 86400 >/dev/null
    t3=$(now_ms)
    printf 'baseline\t%s\t%s\t%s\t%s\t{"stop_ms": %s, "final_sync_ms": %s, "start_ms": %s, "downtime_ms": %s}\n' \
        "$mb" "$run" "$tag" "$((t3 - t0))" "$((t1 - t0))" "$((t2 - t1))" "$((t3 - t2))" "$((t3 - t0))" >>"$results"
    log "baseline ${mb} MB run $run: stop $((t1 - t0)) ms, rsync $((t2 - t1)) ms, run $((t3 - t2)) ms"
    dc rm -f "$c" >/dev/null
    de rm -f "$(de ps -aq --filter "label=bench.id=$tag")" >/dev/null
    rm -rf "$work/baseline/$tag"
}

# Warm-up, not measured: offload's first move streams the image to the edge engine; both
# tools then find the image there (loaded by hand if the warm-up did not leave it).
log "warm-up (not measured): first move, which streams the image to the edge"
: >"$results"
offload_run 1 0
baseline_run 1 0
if ! de image inspect "$image" >/dev/null 2>&1; then
    dc save "$image" | de load >/dev/null
fi
: >"$results"

for mb in $SIZES; do
    for run in $(seq 1 "$RUNS"); do
        offload_run "$mb" "$run"
        baseline_run "$mb" "$run"
    done
done
sleep 1 # let the event streams catch up

python3 - "$results" "$work/cloud-events.jsonl" "$work/edge-events.jsonl" "$RUNS" <<'EOF'
import json, statistics, sys

results, cloud_events, edge_events, runs = sys.argv[1:5]

def events(path):
    out = []
    for line in open(path):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out

def key(ev):
    attrs = ev.get("Actor", {}).get("Attributes", {})
    return attrs.get("offload.id") or attrs.get("bench.id")

def first(evs, k, action):
    for ev in evs:
        if key(ev) == k and ev.get("Action", ev.get("status")) == action:
            return ev["timeNano"] / 1e6
    return None

cloud, edge = events(cloud_events), events(edge_events)
rows = []
for line in open(results):
    kind, size, run, k, wall, timings = line.rstrip("\n").split("\t")
    t = json.loads(timings)
    kill, start = first(cloud, k, "kill"), first(edge, k, "start")
    t["engines_ms"] = round(start - kill) if kill and start else None
    die = first(cloud, k, "die")
    t["exit_ms"] = round(die - kill) if kill and die else None
    t["wall_ms"] = int(wall)
    rows.append((kind, int(size), int(run), k, t))

def med(kind, size, field):
    vals = [t.get(field) for kd, s, _, _, t in rows if kd == kind and s == size]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def s(ms):
    return "-" if ms is None else f"{ms / 1000:.2f}"

def mb(b):
    return f"{b / 1e6:.1f}"

sizes = sorted({s_ for _, s_, _, _, _ in rows})
def label(size):
    return f"{size} MB" + (" (incl. 2,000 × 4 KiB files)" if size >= 200 else "")

print(f"## Move downtime, median of {runs} runs (seconds)")
print()
print("| workspace | offload downtime (stop / final sync / start) | baseline downtime (stop / rsync / run) | offload ÷ baseline |")
print("|---|---|---|---|")
for size in sizes:
    o = [med("offload", size, f) for f in ("downtime_ms", "stop_ms", "final_sync_ms", "start_ms")]
    b = [med("baseline", size, f) for f in ("downtime_ms", "stop_ms", "final_sync_ms", "start_ms")]
    ratio = o[0] / b[0] if o[0] and b[0] else None
    print(f"| {label(size)} | **{s(o[0])}** ({s(o[1])} / {s(o[2])} / {s(o[3])}) "
          f"| **{s(b[0])}** ({s(b[1])} / {s(b[2])} / {s(b[3])}) "
          f"| {'-' if ratio is None else f'{ratio:.2f}'} |")
print()
print("Each phase is its own median, so the phases need not add up to the downtime's median.")
print()
print("| workspace | offload move total | of which image / pre-copy / downtime / other | MB copied | outage seen by the engines: offload / baseline |")
print("|---|---|---|---|---|")
for size in sizes:
    total, image, pre, down = (med("offload", size, f) for f in ("total_ms", "image_ms", "precopy_ms", "downtime_ms"))
    others = [t["total_ms"] - (t.get("image_ms") or 0) - (t.get("precopy_ms") or 0) - (t.get("downtime_ms") or 0)
              for kd, s_, _, _, t in rows if kd == "offload" and s_ == size and t.get("total_ms") is not None]
    other = statistics.median(others) if others else None
    print(f"| {label(size)} | {s(total)} | {s(image)} / {s(pre)} / {s(down)} / {s(other)} "
          f"| {mb(med('offload', size, 'bytes') or 0)} "
          f"| {s(med('offload', size, 'engines_ms'))} / {s(med('baseline', size, 'engines_ms'))} |")
print()
print("- offload move total: `total_ms` as the server records it; the `offload move` command "
      "itself took (median) " + ", ".join(f"{s(med('offload', z, 'wall_ms'))} s for {z} MB" for z in sizes) + ".")
print("- other: total − image − pre-copy − downtime (state writes and round trips between the phases).")
print("- outage seen by the engines: from the cloud engine's `kill` event (the stop's SIGTERM) to the "
      "edge engine's `start` event of the new container, both engines on this machine's clock.")
print()
print("### Every run (ms)")
print()
print("| tool | MB | run | stop | (of which SIGTERM→exit) | sync | start | downtime | engines | pre-copy | total | bytes |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for kind, size, run, _, t in rows:
    g = lambda f: "-" if t.get(f) is None else str(t[f])
    print(f"| {kind} | {size} | {run} | {g('stop_ms')} | {g('exit_ms')} | {g('final_sync_ms')} | {g('start_ms')} "
          f"| {g('downtime_ms')} | {g('engines_ms')} | {g('precopy_ms')} | {g('total_ms')} | {g('bytes')} |")
EOF
