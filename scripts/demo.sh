#!/usr/bin/env bash
# demo.sh: on a fresh Debian 12 machine with the Rust toolchain, installs what is missing,
# builds offload and runs `offload demo` on a private Docker engine, then cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh
cargo build --release --locked -p offload
source scripts/engine.sh

image=offload-demo/busybox:latest
work=$(mktemp -d /tmp/offload-demo.XXXXXX)
cleanup() {
    stop_engine "$work/cloud"
    rm -rf "$work"
}
trap cleanup EXIT

echo "starting a private cloud engine (dockerd) under $work/cloud"
cloud=$(start_engine "$work/cloud")
import_busybox "$cloud" "$image"

target/release/offload demo --docker-host "$cloud" --image "$image"
