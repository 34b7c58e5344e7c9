#!/usr/bin/env bash
# engine.sh: start and stop private Docker engines for the demo, each with its own data
# root, exec root, socket and trust key, no bridge and no iptables rules.
#
#   source scripts/engine.sh
#   start_engine DIR      # starts dockerd under DIR, prints its unix:// host
#   stop_engine DIR       # removes its containers and stops it
#   import_busybox HOST TAG
set -euo pipefail

start_engine() {
    local dir=$1
    mkdir -p "$dir"
    printf '{"deprecated-key-path": "%s/key.json"}\n' "$dir" >"$dir/daemon.json"
    dockerd --config-file "$dir/daemon.json" --data-root "$dir/data" --exec-root "$dir/exec" \
        --pidfile "$dir/dockerd.pid" --host "unix://$dir/docker.sock" \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
        --userland-proxy=false --shutdown-timeout=5 >"$dir/dockerd.log" 2>&1 &
    local i
    for i in $(seq 1 600); do
        if docker --host "unix://$dir/docker.sock" version >/dev/null 2>&1; then
            echo "unix://$dir/docker.sock"
            return 0
        fi
        sleep 0.1
    done
    echo "dockerd did not start; its log:" >&2
    tail -n 20 "$dir/dockerd.log" >&2
    return 1
}

stop_engine() {
    local dir=$1 pid ids
    [ -f "$dir/dockerd.pid" ] || return 0
    ids=$(docker --host "unix://$dir/docker.sock" ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || docker --host "unix://$dir/docker.sock" rm -f $ids >/dev/null 2>&1 || true
    pid=$(cat "$dir/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    umount -R "$dir/exec" "$dir/data" 2>/dev/null || true
    rm -rf "$dir" 2>/dev/null || true
}

import_busybox() {
    local host=$1 tag=$2 root
    if docker --host "$host" image inspect "$tag" >/dev/null 2>&1; then
        return 0
    fi
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/workspace" "$root/root"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    chmod 1777 "$root/tmp"
    tar -C "$root" -c . | docker --host "$host" import \
        --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - "$tag" >/dev/null
    rm -rf "$root"
}
