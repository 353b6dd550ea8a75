#!/usr/bin/env bash
# All of nixpush's tests, against real Nix and a real MinIO. Installs Nix
# (Debian nix-bin) and MinIO (a pinned go install, cached) when missing.
#
#   ./scripts/test.sh [go test flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

minio_version=v0.0.0-20260212201848-7aac2a2c5b7c
cache=${XDG_CACHE_HOME:-$HOME/.cache}/nixpush/bin

echo "== Nix"
if ! command -v nix-build >/dev/null; then
	echo "installing Debian nix-bin"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin >/dev/null
fi
mkdir -p /etc/nix
grep -qs '^sandbox *= *false' /etc/nix/nix.conf || echo 'sandbox = false' >>/etc/nix/nix.conf
nix --version

if ! command -v systemd-socket-activate >/dev/null; then
	echo "installing systemd (systemd-socket-activate, systemd-analyze)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi

if ! command -v xz >/dev/null; then
	echo "installing xz-utils (the daemon's xz compression runs the xz tool)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xz-utils >/dev/null
fi

echo "== MinIO"
minio=${NIXPUSH_MINIO:-}
[ -n "$minio" ] || minio=$(command -v minio || true)
[ -n "$minio" ] || minio=$cache/minio
if [ ! -x "$minio" ]; then
	echo "building MinIO $minio_version into $cache (a few minutes, once)"
	mkdir -p "$cache"
	GOBIN=$cache GOFLAGS=-mod=mod go install "github.com/minio/minio@$minio_version"
	minio=$cache/minio
fi
export NIXPUSH_MINIO=$minio
echo "$minio"

[ -z "${NIXPUSH_SETUP_ONLY:-}" ] || exit 0

echo "== go vet"
go vet ./...

echo "== package.nix vendorHash"
./scripts/vendor-hash.sh --check

echo "== NixOS module: nix-instantiate --parse, systemd-analyze security of its unit"
./scripts/check-module.sh

echo "== fuzz (bounded)"
go test -run '^$' -fuzz '^FuzzStorePath$' -fuzztime 20s ./nix/
go test -run '^$' -fuzz '^FuzzEnqueueRequest$' -fuzztime 20s ./daemon/
go test -run '^$' -fuzz '^FuzzAppendJSON$' -fuzztime 15s ./hook/

echo "== go test"
go test -count=1 -timeout 80m "$@" ./...
