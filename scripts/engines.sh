#!/bin/sh
#! engines.sh: list or clean up the private dockerd engines that offload-testkit starts.
#
# Usage: scripts/engines.sh list
#        scripts/engines.sh clean [--force]
#        scripts/engines.sh logs DIR
#
# Engines live in ${OFFLOAD_TESTKIT_TMP:-/tmp}/offload-eng-*. A test's engine is in use while
# its watchdog runs; `clean` leaves those alone unless --force is given, and stops only the
# dockerd, containerd and shims whose command lines name the engine's own directory.
set -eu

base=${OFFLOAD_TESTKIT_TMP:-/tmp}

alive() {
    s=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
    [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]
}

# PIDs of live processes whose command line contains $1.
pids_naming() {
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [ "$pid" = "$$" ] && continue
        alive "$pid" || continue
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$1" && echo "$pid"
    done
    return 0
}

dockerd_pid() {
    pid=$(cat "$1/dockerd.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$1/"; then
        echo "$pid"
    fi
}

in_use() {
    for pid in $(pids_naming "$1"); do
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q offload-testkit-watchdog && return 0
    done
    return 1
}

stop_engine() {
    dir=$1
    pid=$(dockerd_pid "$dir")
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        i=0
        while alive "$pid" && [ "$i" -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # containerd (its --config names the dir) and shims (their -address does).
    for pid in $(pids_naming "$dir/exec/containerd/"); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    cut -d' ' -f2 /proc/mounts | grep "^$dir/" | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    umount -l "$dir" 2>/dev/null || true
    rm -rf "$dir"
}

cmd=${1:-list}
case $cmd in
list)
    for dir in "$base"/offload-eng-*; do
        [ -d "$dir" ] || continue
        pid=$(dockerd_pid "$dir")
        state=stopped
        [ -n "$pid" ] && state="dockerd $pid"
        in_use "$dir" && state="$state, in use" || state="$state, orphaned"
        echo "$dir: $state"
    done
    ;;
clean)
    force=${2:-}
    for dir in "$base"/offload-eng-*; do
        [ -d "$dir" ] || continue
        if [ "$force" != --force ] && in_use "$dir"; then
            echo "skipping $dir: a test still uses it (--force to stop it anyway)"
            continue
        fi
        echo "cleaning $dir"
        stop_engine "$dir"
    done
    ;;
logs)
    dir=${2:?usage: engines.sh logs DIR}
    exec tail -n 100 "$dir/dockerd.log"
    ;;
*)
    echo "usage: $0 list | clean [--force] | logs DIR" >&2
    exit 2
    ;;
esac
