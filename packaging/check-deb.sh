#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks its contents list and metadata.
# Run by tests/run.sh; installs cargo-deb from crates.io when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
cargo build --release --locked -p flannel-cni -p flanneld --quiet
deb=$(cargo deb -p flanneld --no-build --quiet 2>/dev/null | tail -n 1)
[ -f "$deb" ] || { echo "check-deb: cargo deb produced no package ($deb)"; exit 1; }
expected='./etc/default/flanneld-rs
./lib/systemd/system/flanneld-rs.service
./usr/lib/cni/flannel
./usr/sbin/flanneld-rs
./usr/share/doc/flanneld-rs/README.md
./usr/share/doc/flanneld-rs/copyright
./usr/share/doc/flanneld-rs/examples/10-flannel.conflist
./usr/share/doc/flanneld-rs/examples/kube-flannel-rs-etcd.yml
./usr/share/doc/flanneld-rs/examples/kube-flannel-rs.yml'
actual=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {print $6}' | sort)
if [ "$actual" != "$expected" ]; then
  echo "check-deb: unexpected contents of $deb"; diff <(echo "$expected") <(echo "$actual") || true; exit 1
fi
info=$(dpkg-deb -f "$deb" Package Depends Section)
for want in "Package: flanneld-rs" "Depends: iproute2, iptables" "Section: net"; do
  grep -qF "$want" <<<"$info" || { echo "check-deb: control lacks '$want':"; echo "$info"; exit 1; }
done
[ "$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./etc/default/flanneld-rs | head -c 1)" = "#" ]
dpkg-deb -I "$deb" conffiles | grep -qx /etc/default/flanneld-rs || { echo "check-deb: /etc/default/flanneld-rs is not a conffile"; exit 1; }
echo "check-deb: $deb holds what it should"
