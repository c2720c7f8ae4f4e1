#!/usr/bin/env bash
# Runs every test of flanneld-rs: unit, property, real-etcd and (as root) network-namespace tests.
# Installs the Debian packages of tests/deps.txt first if any is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

. tests/install-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked
else
  cargo test --workspace --locked
fi
