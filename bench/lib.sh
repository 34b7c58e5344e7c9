#!/usr/bin/env bash
# lib.sh: what bench/cp.sh, ports.sh and downtime.sh share: the prerequisites, the
# offload binary, two private Docker engines (cloud and edge), the real server on the
# cloud engine, a joined user and its agent on the edge engine, and the cleanup at exit.
#
#   source "$(dirname "$0")/lib.sh"
#   bench_init NAME           # cd to the repo, prerequisites, $work, the cleanup trap
#   bench_offload_bin         # $bin: $OFFLOAD_BIN, else a release build of offload
#   bench_engines IMAGE       # $cloud and $edge (unix:// hosts); busybox IMAGE in the cloud
#   bench_server [ARGS...]    # the server on $cloud (--network none --stop-grace 1); $url
#                             # (with the config file $SERVER_CONFIG, if set)
#   bench_join USER           # $conf (the user's credentials) and o(), offload as USER
#   bench_agent [ARGS...]     # the user's agent on $edge, waiting until it is connected
#   bench_track PID           # PID is ended at exit (before the engines stop)
#   log TEXT                  # progress on stderr, prefixed with [NAME]
#
# A script may define bench_on_exit, which runs at exit before $work is removed.

bench_name=bench
bench_pids=()

log() { echo "[$bench_name] $*" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

bench_cleanup() {
    local rc=$? i
    set +e
    # The last started ends first: forwards and agents before the server.
    for ((i = ${#bench_pids[@]} - 1; i >= 0; i--)); do
        kill "${bench_pids[$i]}" 2>/dev/null
        wait "${bench_pids[$i]}" 2>/dev/null
    done
    declare -F bench_on_exit >/dev/null && bench_on_exit
    stop_engine "$work/edge"
    stop_engine "$work/cloud"
    rm -rf "$work"
    exit "$rc"
}

bench_track() { bench_pids+=("$1"); }

bench_init() {
    bench_name=$1
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cd "$repo"
    scripts/prereqs.sh >&2
    command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
    source scripts/engine.sh
    work=$(mktemp -d "/tmp/offload-bench-$bench_name.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_offload_bin() {
    if [ -n "${OFFLOAD_BIN:-}" ]; then
        bin=$(realpath "$OFFLOAD_BIN")
    else
        log "building offload (release)"
        cargo build --release --quiet -p offload >&2
        bin=$(realpath "${CARGO_TARGET_DIR:-$repo/target}/release/offload")
    fi
}

bench_engines() {
    log "starting two private engines under $work"
    cloud=$(start_engine "$work/cloud")
    edge=$(start_engine "$work/edge")
    import_busybox "$cloud" "$1"
}

bench_server() {
    log "starting the server"
    "$bin" ${SERVER_CONFIG:+--config "$SERVER_CONFIG"} server --listen 127.0.0.1:0 \
        --data-dir "$work/server" --docker-host "$cloud" \
        --network none --stop-grace 1 "$@" >"$work/server.out" 2>"$work/server.log" &
    bench_track $!
    local pid=$! _
    url=""
    for _ in $(seq 1 300); do
        url=$(sed -n 's/^offload server listening on //p' "$work/server.out" | head -n1)
        [ -n "$url" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$url" ] || { echo "the server did not start:" >&2; tail -n 20 "$work/server.log" >&2; exit 1; }
}

bench_join() {
    local token
    token=$("$bin" admin token create --user "$1" --data-dir "$work/server" | tail -n1)
    conf="$work/client.toml"
    "$bin" --config "$conf" join "$url" "$token" >&2
}

o() { "$bin" --config "$conf" "$@"; }

bench_agent() {
    log "starting the agent"
    "$bin" --config "$conf" agent --docker-host "$edge" --data-dir "$work/agent" --network none \
        --stop-grace 1 "$@" >"$work/agent.out" 2>"$work/agent.log" &
    bench_track $!
    local pid=$! _
    for _ in $(seq 1 300); do
        grep -q "offload agent: connected to" "$work/agent.log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "offload agent: connected to" "$work/agent.log" ||
        { echo "the agent did not connect:" >&2; tail -n 20 "$work/agent.log" >&2; exit 1; }
}
