#!/usr/bin/env bash
# demo.sh: on a fresh Debian 12 machine with the Rust toolchain, installs what is missing
# (scripts/prereqs.sh: the Docker engine, a static busybox for the image, OpenSSH's client
# for the demo's `ssh homework.offload`), builds offload and runs `offload demo` on two
# private Docker engines (cloud and edge), then cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh
cargo build --release --locked -p offload
source scripts/engine.sh

image=offload-demo/busybox:latest
work=$(mktemp -d /tmp/offload-demo.XXXXXX)
cleanup() {
    stop_engine "$work/cloud"
    stop_engine "$work/edge"
    rm -rf "$work"
}
trap cleanup EXIT

echo "starting two private engines (dockerd): the cloud's and the laptop's, under $work"
cloud=$(start_engine "$work/cloud")
edge=$(start_engine "$work/edge")
# Only the cloud has the image: the move has to bring it to the edge.
import_busybox "$cloud" "$image"

"${CARGO_TARGET_DIR:-target}/release/offload" demo --docker-host "$cloud" --edge-docker-host "$edge" --image "$image"
