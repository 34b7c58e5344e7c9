#!/usr/bin/env bash
# links.sh: offload over slow and lossy links, next to rsync over ssh, in one run.
#
# The cloud side (the server, sshd) runs in one network namespace and the edge side (the
# agent, rsync's client) in another. bench/link.py joins them with a shaped link: rate,
# one-way delay and loss each way (this kernel has no netem). Both engines stay on the
# host; containers have no network. Only offload's and ssh's own traffic crosses.
#
# For each link, side by side:
#   - a move of a SIZE_MB workspace (2,000 files of 4 KiB plus large files) to the edge,
#     with its pre-copy throughput and downtime, next to a scripted
#     `docker stop; rsync -a over ssh; docker run`;
#   - a 1-byte edit, then a 1% change of the small files, at the edge, until the cloud has
#     them, next to rsync over ssh of the same change; wire bytes are the link's;
#   - edit to durable: a file written at the edge every 200 ms for LATENCY_SECS, each
#     timed until it is in the cloud's copy (p50, p99).
#
#   bench/links.sh                               # the three links, 1 GB
#   LINKS="100:20:0" SIZE_MB=200 LATENCY_SECS=20 bench/links.sh
#   OFFLOAD_BIN=target/release/offload bench/links.sh
#
# LINKS: RATE_MBIT:DELAY_MS:LOSS_PERCENT, space-separated. Prints markdown to stdout.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
bench_init links
LINKS=${LINKS:-"100:20:0 20:50:0.5 1000:1:0"}
SIZE_MB=${SIZE_MB:-1000}
LATENCY_SECS=${LATENCY_SECS:-60}
image=offload-bench/busybox:latest
command -v rsync >/dev/null || { echo "rsync is needed" >&2; exit 1; }
if ! command -v sshd >/dev/null; then
    log "installing openssh-server for the rsync baseline"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
fi

cns="oflc$$" ens="ofle$$" cip=192.168.243.1 eip=192.168.243.2
ip netns add "$cns"
ip netns add "$ens"
ip -n "$cns" link set lo up
ip -n "$ens" link set lo up
bench_on_exit() {
    [ -z "${KEEP_LOGS:-}" ] || cp "$work"/*.log "$KEEP_LOGS" 2>/dev/null
    ip netns del "$cns" 2>/dev/null
    ip netns del "$ens" 2>/dev/null
}

bench_offload_bin
bench_engines "$image"
dc() { docker --host "$cloud" "$@"; }
de() { docker --host "$edge" "$@"; }
inc() { nsenter --net="/run/netns/$cns" -- "$@"; }
ine() { nsenter --net="/run/netns/$ens" -- "$@"; }
# What runs in the background is started by nsenter itself, not through inc/ine: `&` on
# a function backgrounds a subshell, and ending that by PID would leave the process.
ncloud=(nsenter --net="/run/netns/$cns" --)
nedge=(nsenter --net="/run/netns/$ens" --)

# ssh into the cloud namespace for rsync: its own host key and client key, root only.
mkdir -p "$work/ssh"
ssh-keygen -q -t ed25519 -N "" -f "$work/ssh/host"
ssh-keygen -q -t ed25519 -N "" -f "$work/ssh/client"
cp "$work/ssh/client.pub" "$work/ssh/authorized_keys"
chmod 600 "$work/ssh/authorized_keys"
mkdir -p /run/sshd
"${ncloud[@]}" /usr/sbin/sshd -D -e -p 2222 -h "$work/ssh/host" -o "AuthorizedKeysFile=$work/ssh/authorized_keys" \
    -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no -o UsePAM=no -o StrictModes=no \
    -o "PidFile=$work/ssh/sshd.pid" 2>"$work/sshd.log" &
bench_track $!
rsh="ssh -p 2222 -i $work/ssh/client -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"

link_pid=""
start_link() {
    local rate=$1 delay=$2 loss=$3
    [ -z "$link_pid" ] || { kill "$link_pid"; wait "$link_pid" 2>/dev/null || true; }
    python3 "$repo/bench/link.py" --ns-a "$cns" --addr-a "$cip/24" --ns-b "$ens" --addr-b "$eip/24" \
        --rate "$rate" --delay "$delay" --loss "$loss" >"$work/link.out" 2>"$work/link.log" &
    link_pid=$!
    bench_track "$link_pid"
    for _ in $(seq 1 100); do grep -q ready "$work/link.out" 2>/dev/null && return 0; sleep 0.1; done
    echo "the link did not come up:" >&2; cat "$work/link.log" >&2; exit 1
}
# Bytes that crossed the link both ways so far (the edge end's counters).
link_bytes() {
    ip -j -s -n "$ens" link show | python3 -c '
import json, sys
print(sum(l["stats64"]["rx"]["bytes"] + l["stats64"]["tx"]["bytes"]
          for l in json.load(sys.stdin) if l["ifname"].startswith("lk")))'
}
# One TCP stream's throughput on the link (Mbit/s), the reference for pre-copy.
tcp_mbit() {
    local mb=$1
    python3 - "$cns" "$ens" "$cip" "$mb" <<'EOF'
import socket, subprocess, sys, time
cns, ens, cip, mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
server = subprocess.Popen(["nsenter", f"--net=/run/netns/{cns}", "python3", "-c", f"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{cip}", 5001)); s.listen(1); print("up", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    d = c.recv(1 << 20)
    if not d: break
    if t0 is None: t0 = time.time()
    n += len(d)
print(n * 8 / 1e6 / (time.time() - t0))
"""], stdout=subprocess.PIPE, text=True)
server.stdout.readline()
subprocess.run(["nsenter", f"--net=/run/netns/{ens}", "python3", "-c", f"""
import socket
c = socket.create_connection(("{cip}", 5001)); b = b"x" * (1 << 20)
for _ in range({mb}): c.sendall(b)
c.close()
"""], check=True)
print(f"{float(server.stdout.readline()):.1f}")
EOF
}

# The server in the cloud namespace, the agent in the edge namespace.
printf 'tls_sans = ["%s"]\n' "$cip" >"$work/server.toml"
start_link 1000 1 0
"${ncloud[@]}" "$bin" --config "$work/server.toml" server --listen "$cip:7443" --data-dir "$work/server" \
    --docker-host "$cloud" --network none --stop-grace 1 >"$work/server.out" 2>"$work/server.log" &
bench_track $!
for _ in $(seq 1 300); do grep -q "listening on" "$work/server.out" && break; sleep 0.1; done
grep -q "listening on" "$work/server.out" || { tail "$work/server.log" >&2; exit 1; }
url="https://$cip:7443"
token=$("$bin" admin token create --user bench --data-dir "$work/server" | tail -n1)
conf="$work/client.toml"
ine "$bin" --config "$conf" join "$url" "$token" >&2
"${nedge[@]}" "$bin" --config "$conf" agent --docker-host "$edge" --data-dir "$work/agent" --network none \
    --stop-grace 1 >"$work/agent.out" 2>"$work/agent.log" &
bench_track $!
for _ in $(seq 1 300); do grep -q "offload agent: connected to" "$work/agent.log" && break; sleep 0.1; done
grep -q "offload agent: connected to" "$work/agent.log" || { tail "$work/agent.log" >&2; exit 1; }
o() { ine "$bin" --config "$conf" "$@"; }
pyget() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

# SIZE_MB in /workspace: 2,000 files of 4 KiB and the rest in 4 large files.
fill_script() {
    local big=$(((SIZE_MB - 8) / 4))
    cat <<EOF
set -e
cd /workspace
for n in 1 2 3 4; do dd if=/dev/urandom of=large\$n bs=1M count=$big 2>/dev/null; done
mkdir -p small
i=0
while [ \$i -lt 2000 ]; do head -c 4096 /dev/urandom > small/f\$i; i=\$((i + 1)); done
sync
EOF
}

# Warm-up: the first move streams the image to the edge; rsync's side gets it too.
log "warm-up: the image to the edge"
id=$(o start "$image" -- sleep 86400 | tail -n1)
o move "$id" --to edge >/dev/null 2>&1
o move "$id" --to cloud >/dev/null 2>&1
o rm "$id" >/dev/null
de image inspect "$image" >/dev/null 2>&1 || dc save "$image" | de load >/dev/null

results="$work/results.txt"
: >"$results"
row() { echo "$*" >>"$results"; }

for spec in $LINKS; do
    IFS=: read -r rate delay loss <<<"$spec"
    name="${rate} Mbit/s, ${delay} ms each way, ${loss}% loss"
    log "link: $name"
    start_link "$rate" "$delay" "$loss"
    tcp=$(tcp_mbit $((rate < 100 ? 20 : 100)))
    log "one TCP stream: $tcp Mbit/s"

    # offload: a fresh container filled in the cloud, moved to the edge.
    id=$(o start "$image" -- sleep 86400 | tail -n1)
    o shell "$id" -- sh -c "$(fill_script)" </dev/null
    b0=$(link_bytes); t0=$(now_ms)
    o move "$id" --to edge >"$work/move.out" 2>&1 || { cat "$work/move.out" >&2; exit 1; }
    t1=$(now_ms); b1=$(link_bytes)
    shown=$(o show "$id" -o json)
    timings=$(pyget 'json.dumps(d["last_move"]["timings"])' <<<"$shown")
    cws="$work/server/workspaces/$id" ews="$work/agent/workspaces/$id"
    log "offload move: $timings"

    # The baseline: the same files in a container of its own, stopped, rsynced, run.
    bws="$work/base-cloud" bews="$work/base-edge"
    rm -rf "$bws" "$bews"; mkdir -p "$bews"; cp -a "$cws" "$bws"
    c=$(dc run -d --init --network none --stop-timeout 1 -v "$bws:/workspace" "$image" sleep 86400)
    r0=$(link_bytes); s0=$(now_ms)
    dc stop -t 1 "$c" >/dev/null
    s1=$(now_ms)
    ine rsync -a -e "$rsh" "root@$cip:$bws/" "$bews/"
    s2=$(now_ms)
    e=$(de run -d --init --network none -v "$bews:/workspace" "$image" sleep 86400)
    s3=$(now_ms); r1=$(link_bytes)
    dc rm -f "$c" >/dev/null; de rm -f "$e" >/dev/null
    row "move|$name|$tcp|$((t1 - t0))|$((b1 - b0))|$timings|$((s1 - s0))|$((s2 - s1))|$((s3 - s2))|$((r1 - r0))"

    # A 1-byte edit, then 1% of the small files, at the edge until the cloud has them.
    for change in edit1 small1pct; do
        case $change in
            edit1) script='printf x >> small/f7'; check() { cmp -s "$ews/small/f7" "$cws/small/f7"; } ;;
            small1pct) script='i=0; while [ $i -lt 2000 ]; do head -c 4096 /dev/urandom > small/f$i; i=$((i + 100)); done'
                check() { local i; for i in $(seq 0 100 1999); do cmp -s "$ews/small/f$i" "$cws/small/f$i" || return 1; done; } ;;
        esac
        sleep 3 # the link is quiet
        b0=$(link_bytes); t0=$(now_ms)
        (cd "$ews" && sh -c "$script")
        until check; do sleep 0.02; done
        t1=$(now_ms)
        sleep 2 # the acknowledgements and the tree's report finish
        b1=$(link_bytes)
        (cd "$bews" && sh -c "$script")
        r0=$(link_bytes); s0=$(now_ms)
        ine rsync -a -e "$rsh" "$bews/" "root@$cip:$bws/"
        s1=$(now_ms); r1=$(link_bytes)
        row "$change|$name|$((t1 - t0))|$((b1 - b0 ))|$((s1 - s0))|$((r1 - r0))"
    done

    # Edit to durable: a file every 200 ms at the edge, each timed until the cloud has it.
    log "edit to durable for ${LATENCY_SECS} s"
    lat=$(python3 - "$ews" "$cws" "$LATENCY_SECS" <<'EOF'
import os, statistics, sys, threading, time
ews, cws, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
os.makedirs(os.path.join(ews, "ticks"), exist_ok=True)
written, seen = {}, {}
def watch():
    while len(seen) < count or time.time() < end + 30:
        for name in list(written):
            if name not in seen and os.path.exists(os.path.join(cws, "ticks", name)):
                seen[name] = time.time()
        if len(seen) == len(written) and time.time() > end:
            return
        time.sleep(0.01)
count = int(secs / 0.2)
end = time.time() + secs
t = threading.Thread(target=watch); t.start()
for i in range(count):
    name = f"t{i}"
    with open(os.path.join(ews, "ticks", name + ".tmp"), "w") as f:
        f.write(str(time.time()))
    os.rename(os.path.join(ews, "ticks", name + ".tmp"), os.path.join(ews, "ticks", name))
    written[name] = time.time()
    time.sleep(0.2)
t.join()
lat = sorted(seen[n] - written[n] for n in seen)
missing = len(written) - len(seen)
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
print(f"{p(0.5):.3f}|{p(0.99):.3f}|{max(lat) if lat else float('nan'):.3f}|{missing}|{len(written)}")
EOF
)
    row "latency|$name|$lat"

    o move "$id" --to cloud >/dev/null 2>&1 || true
    o rm "$id" >/dev/null 2>&1 || true
    rm -rf "$bws" "$bews"
done

python3 - "$results" "$SIZE_MB" <<'EOF'
import json, sys
rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1])]
size = sys.argv[2]
s = lambda ms: f"{int(ms) / 1000:.2f}"
mb = lambda b: f"{int(b) / 1e6:.1f}"
print(f"## Links: a {size} MB workspace (2,000 × 4 KiB files and 4 large files)")
print()
print("| link | one TCP stream | offload pre-copy (MB/s, × TCP) | offload downtime | offload move total | offload MB on the link | stop; rsync -a; run: downtime | rsync MB on the link |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    if r[0] != "move":
        continue
    _, link, tcp, wall, bytes_, timings, bstop, bsync, brun, bbytes = r
    t = json.loads(timings)
    pre_ms = t.get("precopy_ms") or 0
    pre_rate = t.get("bytes", 0) / 1e6 / (pre_ms / 1000) if pre_ms else 0
    ratio = pre_rate * 8 / float(tcp) if float(tcp) else 0
    down = t.get("downtime_ms")
    base = int(bstop) + int(bsync) + int(brun)
    print(f"| {link} | {tcp} Mbit/s | {pre_rate:.1f} MB/s ({ratio:.2f}×) | {s(down or 0)} s | {s(t.get('total_ms') or wall)} s "
          f"| {mb(bytes_)} | {s(base)} s ({s(bstop)} + {s(bsync)} + {s(brun)}) | {mb(bbytes)} |")
print()
print("| link | change at the edge | offload: until the cloud has it | offload KB on the link | rsync over ssh | rsync KB on the link | offload ÷ rsync bytes |")
print("|---|---|---|---|---|---|---|")
kb = lambda b: f"{int(b) / 1e3:.1f}"
for r in rows:
    if r[0] in ("edit1", "small1pct"):
        kind, link, t, b, rt, rb = r
        what = "1 byte appended to a file" if kind == "edit1" else "20 of the 2,000 small files rewritten"
        print(f"| {link} | {what} | {s(t)} s | {kb(b)} | {s(rt)} s | {kb(rb)} | {int(b) / max(int(rb), 1):.2f} |")
print()
print("| link | edit to durable p50 | p99 | max | not arrived | edits |")
print("|---|---|---|---|---|---|")
for r in rows:
    if r[0] == "latency":
        _, link, p50, p99, mx, missing, n = r
        print(f"| {link} | {p50} s | {p99} s | {mx} s | {missing} | {n} |")
EOF
