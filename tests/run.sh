#!/usr/bin/env bash
# Runs every test of flanneld-rs: fmt, clippy, the Debian package check, fuzzing, then unit,
# property, real-etcd, real-kube-apiserver, network-namespace (root) and lab end-to-end tests
# with cargo-nextest, then the 10-minute load soak (SOAK_MINUTES changes its length for a
# quick local run). Between them the VM lane: the tests of kernel modules this machine's
# kernel lacks run again in a VM of Debian's kernel (tests/vm.sh).
# Installs the Debian packages of tests/deps.txt (and deps-no-recommends.txt) first if any
# is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

. tests/install-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
packaging/check-deb.sh
# every fuzz target for 10 s from its committed corpus
tests/fuzz/run.sh 10
# the kube-apiserver of the kube-mode tests: built once (about 8 minutes), then cached
KUBE_APISERVER=$(tests/kube-apiserver.sh)
export KUBE_APISERVER
# the performance harness in its short mode, so that it cannot rot (numbers: benches/README.md)
cargo build --release --locked -p flannel-bench --quiet
target/release/flannel-bench --quick --flanneld target/release/flanneld-rs --out target/bench-quick.json
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked
else
  cargo test --workspace --locked
fi
# the VM lane (tests/vm.sh): the tests of kernel features this machine's kernel lacks, inside a
# VM of Debian's kernel, one boot per test binary: the WireGuard lab again over the kernel's
# module (here it ran over wireguard-go), the ipip lab (left out of the run above by
# .config/nextest.toml)
for test in wireguard ipip ipsec; do
  binary=$(cargo test -p flanneld --test "$test" --locked --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
  tests/vm.sh -e FLANNEL_TEST_WIREGUARD=kernel "$binary" --test-threads=1
done
# the chaos run (docs/reliability.md, issue 31): 2 minutes of faults at random, several at once,
# under lease churn, the invariants checked all along; a fixed seed, then a random one (printed:
# `--seed N` replays it) on each store and on host-gw
target/release/flannel-bench --quick --scenario chaos --seed 1 --flanneld target/release/flanneld-rs
for mode in "--store v3" "--store v2" "--store kube" "--backend host-gw"; do
  # shellcheck disable=SC2086 # two words
  target/release/flannel-bench --quick --scenario chaos $mode --flanneld target/release/flanneld-rs
done
# the load fault of docs/reliability.md: 5000 peers and lease churn at 200/s for 10 minutes;
# fails unless resident memory stays flat, no event is lost and the daemon keeps running
target/release/flannel-bench --scenario soak --soak-minutes "${SOAK_MINUTES:-10}" \
  --flanneld target/release/flanneld-rs
