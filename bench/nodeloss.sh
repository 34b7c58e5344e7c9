#!/usr/bin/env bash
# nodeloss.sh: how long a container takes to run again after its swarm node is lost, with
# offload next to Swarm's own rescheduling of an unpinned one-replica service, on a real
# three-node swarm of private engines in network namespaces on this machine. A node is
# lost two ways: its link cut off the swarm's bridge (`cut`: the manager loses it, its
# engine still answers offload) and its dockerd frozen with SIGSTOP (`freeze`: nobody
# reaches it, its containers run on). Prints a markdown report to stdout, progress to
# stderr; the swarm and the server are gone at exit.
#
#   bench/nodeloss.sh                          # 3 runs per tool and mode, the default grace (15 s)
#   RUNS=5 GRACE=5 MODES=freeze bench/nodeloss.sh
#   OFFLOAD_BIN=path/to/offload NODELOSS_BIN=path/to/node-loss bench/nodeloss.sh   # skip the build
#
# Needs root (network namespaces, dockerd), iproute2, util-linux and /bin/busybox
# (scripts/prereqs.sh).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
RUNS=${RUNS:-3}
GRACE=${GRACE:-15}
MODES=${MODES:-cut,freeze}

scripts/prereqs.sh >&2
target="${CARGO_TARGET_DIR:-$repo/target}"
if [ -z "${OFFLOAD_BIN:-}" ] || [ -z "${NODELOSS_BIN:-}" ]; then
    echo "[nodeloss] building offload and node-loss (release)" >&2
    cargo build --release --quiet -p offload -p offload-bench --bin offload --bin node-loss >&2
fi
bin=$(realpath "${OFFLOAD_BIN:-$target/release/offload}")
nodeloss=$(realpath "${NODELOSS_BIN:-$target/release/node-loss}")

exec "$nodeloss" --offload "$bin" --runs "$RUNS" --grace "$GRACE" --modes "$MODES"
