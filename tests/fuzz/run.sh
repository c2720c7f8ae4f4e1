#!/usr/bin/env bash
# Runs every fuzz target for a short while (default 10 s each) from its committed corpus.
# cargo-fuzz runs on the stable toolchain here without sanitizers (-s none): libFuzzer's
# coverage guidance still applies, and any panic is a failure.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-10}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
for target in config lease_value subnet_key subnet_env cert_validity netlink_reply; do
  # new inputs go to a scratch corpus, so the committed one only changes on purpose
  scratch=$(mktemp -d)
  cargo fuzz run --fuzz-dir . -s none "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 >"$scratch.log" 2>&1 || { tail -40 "$scratch.log"; exit 1; }
  echo "fuzz $target: $(grep -E '^Done [0-9]+ runs' "$scratch.log" || echo done)"
  rm -rf "$scratch" "$scratch.log"
done
