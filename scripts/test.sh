#!/usr/bin/env bash
# test.sh: on a fresh Debian 12 machine with the Rust toolchain, installs what the tests
# need and runs the whole suite. End-to-end tests start their own Docker engines.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh
# Style and lints first: they take seconds and fail the run before the long tests.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
