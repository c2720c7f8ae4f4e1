#!/usr/bin/env bash
# Builds the kube-apiserver the kube-mode tests run against, once, into a cache outside the
# checkout, and prints its path. Debian has no kube-apiserver binary, but Debian 12's own
# `kubernetes` source package (1.20.5+really1.20.2, with its vendor/ tree) builds it with
# Debian's Go, offline, in about 5 minutes on 2 cores.
#
#   tests/kube-apiserver.sh          build unless the cache holds a checked build; print the path
#   KUBE_APISERVER_CACHE=DIR         another cache directory (default /var/cache/flanneld-rs)
#
# The cache holds `kube-apiserver` and `BUILT-FROM` (the source package's version, the
# reflect2 version put in its place, the Go version); a build whose record differs from what
# this script would build, or whose `--version` is not v1.20.2, is built again.
#
# The source comes through a private apt configuration (its own sources list with a deb-src
# line for the mirror the system's apt already uses, its own lists and cache), so the
# system's apt sources stay as they are. Needs: golang-go, rsync, dpkg-dev (tests/deps.txt).
set -euo pipefail

cache=${KUBE_APISERVER_CACHE:-/var/cache/flanneld-rs}
bin=$cache/kube-apiserver
want_k8s=1.20.5+really1.20.2-1.1+deb12u1
want_reflect2=1.0.2
record="kubernetes $want_k8s (Debian source, debian/patches applied); vendored modern-go/reflect2 replaced by $want_reflect2 (Debian source; 1.0.1 faults with Go >= 1.18); $(go version | cut -d' ' -f3)"

if [ -x "$bin" ] && [ "$(cat "$cache/BUILT-FROM" 2>/dev/null)" = "$record" ] \
  && "$bin" --version 2>/dev/null | grep -q '^Kubernetes v1.20.2'; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "building kube-apiserver into $cache (once; about 5 minutes)" >&2

# the private apt configuration: deb-src for the mirror of the system's bookworm sources
mirror=$( { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null
             sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?//p' /etc/apt/sources.list 2>/dev/null \
               | cut -d' ' -f1; } | tr ' ' '\n' | grep -E '^https?://.*/debian/?$' | head -1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
apt_dir=$work/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/etc"
echo "deb-src $mirror bookworm main" > "$apt_dir/etc/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" -q update >&2
cd "$work"
apt-get "${apt_opts[@]}" -q source --download-only "kubernetes=$want_k8s" "golang-github-modern-go-reflect2=$want_reflect2-2" >&2

# dpkg-source applies debian/patches/series
dpkg-source -x kubernetes_*.dsc k8s >&2
dpkg-source -x golang-github-modern-go-reflect2_*.dsc reflect2 >&2
vendored=k8s/vendor/github.com/modern-go/reflect2
rm -f "$vendored"/*.go "$vendored"/*.s
cp reflect2/*.go reflect2/*.s "$vendored"/
rm -f "$vendored"/*_test.go

cd k8s
GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on make WHAT=cmd/kube-apiserver >&2
built=$(find _output -type f -name kube-apiserver -perm -u+x | head -1)
"$built" --version | grep -q '^Kubernetes v1.20.2' || {
  echo "the built kube-apiserver is not v1.20.2: $("$built" --version)" >&2
  exit 1
}
install -m 0755 "$built" "$bin.new"
mv "$bin.new" "$bin"
echo "$record" > "$cache/BUILT-FROM"
echo "$bin"
