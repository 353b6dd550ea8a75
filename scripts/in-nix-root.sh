#!/usr/bin/env bash
# Runs a command inside a root made by nix-root.sh, with the root's Nix on
# PATH and this worktree, the Go toolchain, its module and build caches and
# MinIO's binary mounted at the paths they have on the host:
#
#   ./scripts/in-nix-root.sh ROOT COMMAND [ARGS...]
#
# e.g. ./scripts/in-nix-root.sh "$(./scripts/nix-root.sh sid)" go test ./nix/
#
# The command runs in this worktree, as root, in a mount namespace of its
# own (the bind mounts, /proc, /dev, /sys and a fresh /tmp vanish with it),
# in the host's network namespace, so a MinIO a test starts on 127.0.0.1 is
# reachable as on the host. Go builds with CGO_ENABLED=0 (the root has no C
# compiler), offline (GOPROXY=off). The root's own Nix store is used:
# nothing of the host's /nix is visible.
set -euo pipefail

root=${1:?usage: in-nix-root.sh ROOT COMMAND [ARGS...]}
shift
[ $# -gt 0 ] || { echo "usage: in-nix-root.sh ROOT COMMAND [ARGS...]" >&2; exit 2; }
[ -f "$root/.nixpush-root" ] || { echo "$root is not a root made by nix-root.sh" >&2; exit 1; }
root=$(cd "$root" && pwd -P)
here=$(cd "$(dirname "$0")/.." && pwd -P)

goroot=$(go env GOROOT)
gomodcache=$(go env GOMODCACHE)
gocache=$(go env GOCACHE)
minio=${NIXPUSH_MINIO:-}
binds=("$here" "$goroot" "$gomodcache" "$gocache")
[ -z "$minio" ] || binds+=("$(dirname "$(readlink -f "$minio")")")

# The mounts are made inside `unshare -m`, by this same script re-run with
# NIXPUSH_IN_ROOT_NS set to the root's fresh /tmp, so they never show on
# the host. That /tmp (on disk: a tmpfs would hold MinIO's data and the
# tests' stores in memory) is removed here, outside, once the namespace
# and its mounts are gone: removed inside, a worktree under /tmp bound
# into it would be removed with it.
if [ -z "${NIXPUSH_IN_ROOT_NS:-}" ]; then
	tmp=$(mktemp -d /var/tmp/nixpush-root-tmp.XXXXXX)
	chmod 1777 "$tmp"
	rc=0
	NIXPUSH_IN_ROOT_NS=$tmp unshare -m --propagation private "$0" "$root" "$@" || rc=$?
	rm -rf --one-file-system "$tmp"
	exit $rc
fi
tmp=$NIXPUSH_IN_ROOT_NS

mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount --bind "$tmp" "$root/tmp"
for d in "${binds[@]}"; do
	mkdir -p "$root$d"
	mount --bind "$d" "$root$d"
done

env_vars=(
	PATH="$goroot/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
	HOME=/root TMPDIR=/tmp LANG=C.UTF-8
	GOROOT="$goroot" GOMODCACHE="$gomodcache" GOCACHE="$gocache"
	GOFLAGS="$(go env GOFLAGS)" GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0
)
[ -z "$minio" ] || env_vars+=(NIXPUSH_MINIO="$(readlink -f "$minio")")
for v in NIXPUSH_MINIO_TMPFS NIXPUSH_BENCH_SEED NIXPUSH_BENCH_ARGS NIXPUSH_BENCH_BASELINE_BIN NIXPUSH_BENCH_DAEMON_ENV NIXPUSH_BENCH_GC_PATHS NIXPUSH_BENCH_FLOOR NIXPUSH_BENCH_PROFILE_DIR; do
	[ -z "${!v:-}" ] || env_vars+=("$v=${!v}")
done

exec chroot "$root" /usr/bin/env -i "${env_vars[@]}" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$here" "$@"
