#!/usr/bin/env bash
# Builds offload-bench in release mode and runs sync-vs-rsync: offload's workspace sync (in
# process, and through an in-process server with the agent's HTTPS client) next
# to rsync (over a pipe, via bench/rsh-local) and cp, printing markdown tables to stdout.
# Usage: bench/sync.sh [--quick] [--runs N] [--work-dir DIR]   (see docs/benchmarks.md)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p offload-bench --bin sync-vs-rsync
target="${CARGO_TARGET_DIR:-$repo/target}"

echo "## Machine"
echo
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores available"
echo "- RAM: $(free -h | awk '/^Mem:/ {print $2}')"
echo "- kernel: $(uname -r)"
work="${TMPDIR:-/tmp}"
for arg in "$@"; do [[ "${prev:-}" == --work-dir ]] && work="$arg"; prev="$arg"; done
dev="$(df --output=source "$work" | tail -n1)"
echo "- disk for $work: $dev, $(findmnt -no FSTYPE -T "$work" 2>/dev/null || stat -f -c %T "$work"), $(lsblk -dno SIZE,ROTA,MODEL "$dev" 2>/dev/null | awk '{printf "%s, rotational=%s %s", $1, $2, $3}')"
echo "- $(rsync --version | head -n1)"
echo

exec "$target/release/sync-vs-rsync" --rsh "$repo/bench/rsh-local" "$@"
