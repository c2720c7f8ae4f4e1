#!/usr/bin/env bash
# The lab: hosts, etcd and pods in network namespaces, flanneld-rs on every host.
#   ./tests/lab.sh up     build, start 3 hosts with 2 pods each, print leases and a ping matrix
#                         (`up --backend host-gw`: the same with the host-gw backend;
#                         `up --ip dual` or `--ip ipv6`: dual-stack or IPv6-only, pods ping
#                         each other in every family)
#                         `up --mode kube`: flanneld-rs -kube-subnet-mgr against a real
#                         kube-apiserver (built once by tests/kube-apiserver.sh, ~8 minutes)
#                         `up --backend wireguard`: encrypted, over the kernel's wireguard
#                         module or, on a kernel without it (this machine's), wireguard-go;
#                         the log line printed says which
#   ./tests/lab.sh vm ARGS   `up ARGS` inside a VM of Debian's kernel (tests/vm.sh: it has the
#                         wireguard and ipip modules): prints the same, then the VM ends (~2
#                         minutes); `vm --backend ipip` for ipip, which needs the module
#   ./tests/lab.sh down   remove it all
#   ./tests/lab.sh status
# Needs root. Installs the Debian packages of tests/deps.txt if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/install-deps.sh
if [ "${1:-up}" = up ] || [ "${1:-}" = vm ] || [ ! -x target/release/flannel-lab ]; then
  cargo build --release --locked -p flanneld -p flannel-cni -p flannel-lab
fi
case " $* " in
  *" --mode kube "*) KUBE_APISERVER=$(tests/kube-apiserver.sh); export KUBE_APISERVER ;;
esac
if [ "${1:-}" = vm ]; then
  shift
  exec tests/vm.sh "$PWD/target/release/flannel-lab" up "$@"
fi
exec target/release/flannel-lab "${@:-up}"
