#!/usr/bin/env bash
# idle.sh: what the server and an agent cost while nothing happens, with COUNT containers
# each: the server with COUNT running in the cloud, the agent with COUNT running at the
# edge (moved there by offload). CPU over IDLE_SECS from /proc (utime + stime), as a share
# of one core and as CPU seconds per hour, and the resident memory (RSS) at the end.
#
#   bench/idle.sh                       # 100 containers, 120 s
#   COUNT=20 IDLE_SECS=30 bench/idle.sh
#
# Prints a markdown table to stdout, progress to stderr.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
bench_init idle
COUNT=${COUNT:-100}
IDLE_SECS=${IDLE_SECS:-120}
image=offload-bench/busybox:latest

bench_offload_bin
bench_engines "$image"
SERVER_CONFIG="$work/server.toml"
printf 'max_containers_per_user = %s\nmax_cpus_per_user = %s.0\nmax_memory_per_user = "64g"\n' \
    "$((COUNT + 1))" "$((COUNT > 4 ? COUNT : 4))" >"$SERVER_CONFIG"
bench_server
server_pid=${bench_pids[-1]}
bench_join bench
bench_agent
agent_pid=${bench_pids[-1]}

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# Seconds of CPU over IDLE_SECS of nothing happening, for both processes at once.
measure() {
    local s0 a0 s1 a1
    sleep 10 # what the last action started settles
    s0=$(cpu_ticks "$server_pid"); a0=$(cpu_ticks "$agent_pid")
    sleep "$IDLE_SECS"
    s1=$(cpu_ticks "$server_pid"); a1=$(cpu_ticks "$agent_pid")
    echo "$((s1 - s0)) $((a1 - a0)) $(rss_kib "$server_pid") $(rss_kib "$agent_pid")"
}

log "idle with no containers"
read -r s_none a_none s_rss_none a_rss_none < <(measure)

log "starting $COUNT containers in the cloud"
ids=()
for i in $(seq 1 "$COUNT"); do
    ids+=("$(o start --name "c$i" --cpus 0.1 --memory 64m "$image" -- sleep 86400 | tail -n1)")
done
log "idle with $COUNT in the cloud"
read -r s_cloud a_cloud s_rss_cloud a_rss_cloud < <(measure)

log "moving them to the edge"
for id in "${ids[@]}"; do
    o move "$id" --to edge >/dev/null 2>&1 || { echo "the move of $id failed" >&2; exit 1; }
done
log "idle with $COUNT at the edge"
read -r s_edge a_edge s_rss_edge a_rss_edge < <(measure)

python3 - "$ticks" "$IDLE_SECS" "$COUNT" "$s_none $a_none $s_rss_none $a_rss_none" \
    "$s_cloud $a_cloud $s_rss_cloud $a_rss_cloud" "$s_edge $a_edge $s_rss_edge $a_rss_edge" <<'EOF'
import sys
ticks, secs, count = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
rows = [("no containers", sys.argv[4]), (f"{count} running in the cloud", sys.argv[5]),
        (f"{count} running at the edge", sys.argv[6])]
print(f"## Idle cost, {secs:.0f} s of nothing happening")
print()
print("| containers | server: share of a core | CPU s per hour | RSS | agent: share of a core | CPU s per hour | RSS |")
print("|---|---|---|---|---|---|---|")
for label, values in rows:
    s, a, srss, arss = (float(v) for v in values.split())
    share = lambda t: t / ticks / secs
    print(f"| {label} | {share(s) * 100:.2f}% | {share(s) * 3600:.1f} | {srss / 1024:.1f} MB "
          f"| {share(a) * 100:.2f}% | {share(a) * 3600:.1f} | {arss / 1024:.1f} MB |")
EOF
