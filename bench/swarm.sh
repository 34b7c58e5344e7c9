#!/usr/bin/env bash
# swarm.sh: relief of a busy swarm node by offload, next to the same move done by hand
# with Swarm's own tools, on a three-node swarm of private engines in network namespaces
# on this machine (offload-testkit's, held by the swarm-up helper). RUNS times each
# (median). Prints a markdown table to stdout, progress to stderr. Cleans up at exit.
#
#   bench/swarm.sh                 # 3 runs
#   RUNS=5 bench/swarm.sh
#   OFFLOAD_BIN=path/to/offload SWARM_UP_BIN=path/to/swarm-up bench/swarm.sh  # no build
#   KEEP_LOGS=/tmp/server.log bench/swarm.sh      # keep the server's log
#
# offload: the operator sizes each node at 40 MiB of memory (`memory = "40m"` under
# [[swarm.nodes]]); the monitor ticks every second and acts on 2 s of sustained pressure.
# A container holding 28 MiB (in its /dev/shm) and two light ones of another user run on
# node 0. The measured time starts when those two write 5 MiB each, which puts node 0
# over its 90% high watermark, and ends when `offload show` reports the 28 MiB container
# running on another node: the monitor's detection (sustain window plus a tick), the
# stop on node 0 and the start on the target. Downtime is from the engine's `die` of
# the old task's container on node 0 to the `start` of the new one on the target
# (both engines' event streams), and as offload recorded it.
#
# By hand: a service with the same options (init, memory limit, bind-mounted workspace,
# restart policy none, dnsrr, pinned by `node.id==`) holding the same 28 MiB, moved with
# `docker service update --constraint-rm node.id==N0 --constraint-add node.id==N1`,
# measured from that command to the new task running on N1; downtime likewise from the
# engines' events. Nobody watches the nodes there: the person typing is the detection.
#
# Needs root (dockerd, network namespaces), python3, iproute2 and /bin/busybox
# (scripts/prereqs.sh).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
RUNS=${RUNS:-3}
image=offload-bench/busybox:latest

log() { echo "[swarm] $*" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

scripts/prereqs.sh >&2
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-$repo/target}"
if [ -z "${OFFLOAD_BIN:-}" ] || [ -z "${SWARM_UP_BIN:-}" ]; then
    log "building offload and swarm-up (release)"
    cargo build --release --quiet -p offload -p offload-bench --bin offload --bin swarm-up >&2
fi
bin=$(realpath "${OFFLOAD_BIN:-$target/release/offload}")
swarm_up=$(realpath "${SWARM_UP_BIN:-$target/release/swarm-up}")

work=$(mktemp -d /tmp/offload-bench-swarm.XXXXXX)
server_pid="" swarm_pid="" events_pids=()
cleanup() {
    local rc=$?
    set +e
    for pid in "$server_pid" "${events_pids[@]}"; do
        [ -n "$pid" ] || continue
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    # Closing its standard input makes swarm-up remove the swarm.
    exec 7>&-
    [ -n "$swarm_pid" ] && wait "$swarm_pid" 2>/dev/null
    [ -n "${KEEP_LOGS:-}" ] && cp "$work/server.log" "$KEEP_LOGS" 2>/dev/null
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting a three-node swarm (about 30 s)"
mkfifo "$work/hold"
"$swarm_up" 3 "$image" <"$work/hold" >"$work/swarm.txt" 2>"$work/swarm.log" &
swarm_pid=$!
exec 7>"$work/hold"
for _ in $(seq 1 1800); do
    grep -q '^ready$' "$work/swarm.txt" && break
    kill -0 "$swarm_pid" 2>/dev/null || break
    sleep 0.1
done
grep -q '^ready$' "$work/swarm.txt" || { echo "the swarm did not start:" >&2; tail -n 20 "$work/swarm.log" >&2; exit 1; }
manager=$(sed -n 's/^manager //p' "$work/swarm.txt")
mapfile -t names < <(awk '$1 == "node" { print $2 }' "$work/swarm.txt")
mapfile -t ids < <(awk '$1 == "node" { print $3 }' "$work/swarm.txt")
mapfile -t hosts < <(awk '$1 == "node" { print $4 }' "$work/swarm.txt")
dm() { docker --host "$manager" "$@"; }

for i in 0 1 2; do
    docker --host "${hosts[$i]}" events --format '{{json .}}' --filter type=container \
        >"$work/events-$i.jsonl" 2>/dev/null &
    events_pids+=($!)
done

mkdir -p "$work/shared/workspaces" "$work/shared/manual"
{
    printf 'engine = "swarm"\nnetwork = "default"\nstop_grace_secs = 1\n'
    printf 'workspace_root = "%s"\n[swarm]\nmanager = "%s"\n' "$work/shared/workspaces" "$manager"
    for i in 0 1 2; do
        printf '[[swarm.nodes]]\nname = "%s"\ndocker_host = "%s"\nmemory = "40m"\n' "${names[$i]}" "${hosts[$i]}"
    done
    printf '[monitor]\ninterval_secs = 1\nsustain_secs = 2\nhorizon_secs = 0\nnode_move_cooldown_secs = 0\n'
} >"$work/server.toml"

log "starting the server"
OFFLOAD_LOG=${OFFLOAD_LOG:-info} "$bin" --config "$work/server.toml" server --listen 127.0.0.1:0 --data-dir "$work/server" \
    >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
url=""
for _ in $(seq 1 600); do
    url=$(sed -n 's/^offload server listening on //p' "$work/server.out" | head -n1)
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$url" ] || { echo "the server did not start:" >&2; tail -n 20 "$work/server.log" >&2; exit 1; }
for user in alice bob; do
    token=$("$bin" admin token create --user "$user" --data-dir "$work/server" | tail -n1)
    "$bin" --config "$work/$user.toml" join "$url" "$token" >&2
done
alice() { "$bin" --config "$work/alice.toml" "$@"; }
bob() { "$bin" --config "$work/bob.toml" "$@"; }
pyget() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
availability() { dm node update --availability "$2" "$1" >/dev/null; }

results="$work/results.tsv" # tool run since_ms total_ms recorded_downtime_ms recorded_move_ms from_node to_node match
: >"$results"

# One relief by offload's monitor.
offload_run() {
    local run=$1 a b1 b2 shown t0 t1 node
    availability "${ids[1]}" pause
    availability "${ids[2]}" pause
    b1=$(bob start --name "b1-$run" --memory 64m "$image" -- sleep 86400 | tail -n1)
    b2=$(bob start --name "b2-$run" --memory 64m "$image" -- sleep 86400 | tail -n1)
    a=$(alice start --name "a-$run" --memory 64m "$image" -- sh -c \
        'head -c 28m /dev/zero > /dev/shm/fill && exec sleep 86400' | tail -n1)
    availability "${ids[1]}" active
    availability "${ids[2]}" active
    sleep 3 # node 0 at about 72%: below the high watermark
    [ "$(alice show "$a" -o json | pyget 'd["node"]')" = "${ids[0]}" ] || { echo "a did not start on node 0" >&2; exit 1; }
    bob shell "$b1" -- sh -c 'head -c 5m /dev/zero > /dev/shm/more' </dev/null
    bob shell "$b2" -- sh -c 'head -c 5m /dev/zero > /dev/shm/more' </dev/null
    t0=$(now_ms)
    for _ in $(seq 1 1200); do
        shown=$(alice show "$a" -o json)
        node=$(pyget 'd.get("node") or ""' <<<"$shown")
        if [ "$node" != "${ids[0]}" ] && [ "$(pyget 'd["state"]' <<<"$shown")" = running ]; then
            break
        fi
        sleep 0.05
    done
    t1=$(now_ms)
    [ "$node" != "${ids[0]}" ] || { echo "offload did not move a off node 0:" >&2; tail -n 30 "$work/server.log" >&2; exit 1; }
    printf 'offload\t%s\t%s\t%s\t%s\t%s\t%s\t%s\toffload.id=%s\n' "$run" "$t0" "$((t1 - t0))" \
        "$(pyget 'd["last_move"]["timings"]["downtime_ms"]' <<<"$shown")" \
        "$(pyget 'd["last_move"]["timings"]["total_ms"]' <<<"$shown")" \
        "${ids[0]}" "$node" "$a" >>"$results"
    log "offload run $run: $((t1 - t0)) ms from pressure to running on another node"
    for id in "$b1" "$b2"; do bob rm "$id" >/dev/null; done
    alice rm "$a" >/dev/null
}

# The same move by hand: a service like offload's, its constraint changed.
manual_run() {
    local run=$1 svc="manual-$run" t0 t1 task state node
    mkdir -p "$work/shared/manual/$run"
    dm service create --detach --quiet --name "$svc" --constraint "node.id==${ids[0]}" \
        --restart-condition none --endpoint-mode dnsrr --init --limit-memory 64m \
        --stop-grace-period 1s --container-label "bench.manual=$run" \
        --mount "type=bind,src=$work/shared/manual/$run,dst=/workspace" \
        "$image" sh -c 'head -c 28m /dev/zero > /dev/shm/fill && exec sleep 86400' >/dev/null
    running_on() {
        task=$(dm service ps -q --filter desired-state=running "$svc" | head -n1)
        [ -n "$task" ] || return 1
        read -r node state < <(dm inspect --format '{{.NodeID}} {{.Status.State}}' "$task")
        [ "$node" = "$1" ] && [ "$state" = running ]
    }
    for _ in $(seq 1 600); do running_on "${ids[0]}" && break; sleep 0.1; done
    running_on "${ids[0]}" || { echo "the manual service did not run on node 0" >&2; exit 1; }
    sleep 1
    t0=$(now_ms)
    dm service update --detach --quiet --constraint-rm "node.id==${ids[0]}" \
        --constraint-add "node.id==${ids[1]}" "$svc" >/dev/null
    for _ in $(seq 1 1200); do running_on "${ids[1]}" && break; sleep 0.05; done
    t1=$(now_ms)
    running_on "${ids[1]}" || { echo "the manual service did not move to node 1" >&2; exit 1; }
    printf 'swarm\t%s\t%s\t%s\t-\t-\t%s\t%s\tbench.manual=%s\n' "$run" "$t0" "$((t1 - t0))" \
        "${ids[0]}" "${ids[1]}" "$run" >>"$results"
    log "swarm by hand run $run: $((t1 - t0)) ms from the update to running on node 1"
    dm service rm "$svc" >/dev/null
}

for run in $(seq 1 "$RUNS"); do
    offload_run "$run"
    manual_run "$run"
done
sleep 1 # let the event streams catch up

python3 - "$results" "$work" "${ids[@]}" <<'EOF'
import json, statistics, sys

results, work, *ids = sys.argv[1:]
events = {}
for i, node in enumerate(ids):
    evs = []
    for line in open(f"{work}/events-{i}.jsonl"):
        try:
            evs.append(json.loads(line))
        except ValueError:
            pass
    events[node] = evs

def when(node, action, label, since_ns):
    key, value = label.split("=", 1)
    for ev in events[node]:
        attrs = ev.get("Actor", {}).get("Attributes", {})
        if ev.get("Action", ev.get("status")) == action and attrs.get(key) == value \
                and ev["timeNano"] >= since_ns:
            return ev["timeNano"]
    return None

rows = {"offload": [], "swarm": []}
for line in open(results):
    tool, run, since, total, recorded, moved, src, dst, label = line.rstrip("\n").split("\t")
    since_ns = (int(since) - 60_000) * 1_000_000
    died = when(src, "die", label, since_ns)
    started = when(dst, "start", label, died or since_ns)
    downtime = (started - died) / 1e6 if died and started else None
    rows[tool].append((int(run), int(total), downtime,
                       None if recorded == "-" else int(recorded),
                       None if moved == "-" else int(moved)))

def fmt(x):
    return "-" if x is None else f"{x:.0f}"

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

print("| run | offload: pressure → running on another node (ms) | of which the move, recorded (ms) | offload downtime, engines (ms) | offload downtime, recorded (ms) | Swarm by hand: update → running on another node (ms) | Swarm by hand downtime, engines (ms) |")
print("|---|---|---|---|---|---|---|")
for (run, total, down, rec, moved), (_, mtotal, mdown, _, _) in zip(rows["offload"], rows["swarm"]):
    print(f"| {run} | {total} | {fmt(moved)} | {fmt(down)} | {fmt(rec)} | {mtotal} | {fmt(mdown)} |")
o_total = median([r[1] for r in rows["offload"]])
o_down = median([r[2] for r in rows["offload"]])
o_rec = median([r[3] for r in rows["offload"]])
o_moved = median([r[4] for r in rows["offload"]])
s_total = median([r[1] for r in rows["swarm"]])
s_down = median([r[2] for r in rows["swarm"]])
print(f"| median | {fmt(o_total)} | {fmt(o_moved)} | {fmt(o_down)} | {fmt(o_rec)} | {fmt(s_total)} | {fmt(s_down)} |")
if o_down and s_down:
    print(f"\ndowntime, offload / Swarm by hand: {o_down / s_down:.2f}×; "
          f"time to running elsewhere, offload (from the pressure) / Swarm (from the command): "
          f"{o_total / s_total:.2f}×")
EOF
