#!/usr/bin/env bash
# The VM lane: runs test binaries that need kernel modules this machine's kernel lacks
# (wireguard; ipip and esp4 for the backends to come) inside a VM of Debian's own kernel,
# booted with virtme-ng under qemu. The VM sees this machine's whole file system read-only
# (the binaries, etcd, iproute2), /tmp and the like as overlays, and the results folder
# writable. One boot per test binary.
#
#   tests/vm.sh [-e VAR=VALUE]... [-w DIR]... TEST_BINARY [ARGS...]
#
# -e sets a variable inside; -w makes DIR writable from inside (a benchmark's --out).
#
# Fails (never skips) when the VM cannot boot or a module is missing in it; the binary's
# exit status is the lane's. tests/install-deps.sh installs qemu, the kernel and virtme-ng.
set -euo pipefail
cd "$(dirname "$0")/.."
env_args=()
rw_args=()
while :; do
  case "${1:-}" in
    -e) env_args+=("$2"); shift 2 ;;
    -w) rw_args+=(--rwdir "$2"); shift 2 ;;
    *) break ;;
  esac
done
binary=$1; shift
VNG=/opt/flanneld-rs-vng/bin/vng
[ -x "$VNG" ] || { echo "tests/vm.sh: virtme-ng missing ($VNG): run tests/install-deps.sh" >&2; exit 1; }
kernel=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1)
[ -n "$kernel" ] || { echo "tests/vm.sh: no Debian kernel in /boot (linux-image-amd64)" >&2; exit 1; }
results=$(mktemp -d /tmp/flanneld-rs-vm.XXXXXX)
trap 'rm -rf "$results"' EXIT
{
  echo 'set -u'
  echo 'for m in wireguard ipip esp4; do modprobe "$m" || { echo "module $m missing in the VM" >&2; exit 97; }; done'
  printf 'export %q\n' "${env_args[@]}" FLANNEL_IN_VM=1
  printf 'cd %q\n' "$PWD"
  printf '%q ' "$binary" "$@"
  echo
} > "$results/run.sh"
# TCG, software emulation: KVM (/dev/kvm is there) hung on this nested machine, tried
# 2026-12-05 without --disable-kvm: no output in 120 s (earlier: an MSR assertion)
PATH="$(dirname "$VNG"):$PATH" timeout 1800 "$VNG" --run "$kernel" --user root --disable-kvm \
  --cpus 2 --memory 3G --rwdir "$results" "${rw_args[@]}" \
  --exec "sh $results/run.sh > $results/out 2>&1; echo \$? > $results/rc" >/dev/null 2>"$results/vng.err" || true
cat "$results/out" 2>/dev/null || true
if [ ! -s "$results/rc" ]; then
  echo "tests/vm.sh: the VM did not run the tests:" >&2
  cat "$results/vng.err" >&2
  exit 1
fi
exit "$(cat "$results/rc")"
