#!/usr/bin/env bash
# Makes a Debian root with that suite's Nix (nix-bin) for the test matrix,
# once, and prints its path:
#
#   ./scripts/nix-root.sh SUITE [DIR]
#
# SUITE is a Debian suite: sid has Nix 2.34, trixie Nix 2.26. DIR defaults
# to ${XDG_CACHE_HOME:-$HOME/.cache}/nixpush/roots/SUITE. A root that is
# complete (it has the marker written last, naming the same packages) is
# reused as it is; one this script made with other packages is made again
# (in DIR.tmp, moved to DIR when complete); DIR holding anything else is an
# error.
#
# The root is made with mmdebstrap from the Debian archive (installed with
# apt when missing). The archive's Release files may read as expired on this
# machine, so their validity is not checked; they are still verified against
# the keyring. The host's CA bundle is copied in, Nix gets sandbox = false,
# as on the host, and its store and database are initialised.
set -euo pipefail

suite=${1:?usage: nix-root.sh SUITE [DIR]}
dir=${2:-${XDG_CACHE_HOME:-$HOME/.cache}/nixpush/roots/$suite}
mirror=${NIXPUSH_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# What the tests run besides Nix: xz (the daemon's xz compression), flock,
# nice/chrt/ionice (util-linux, coreutils), mount for the tests' tmpfs,
# curl (the hostile-client tests), systemd-socket-activate (systemd).
packages=nix-bin,ca-certificates,xz-utils,util-linux,coreutils,bash,mount,curl,systemd
marker=$dir/.nixpush-root
want="suite=$suite packages=$packages setup=2"

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
	echo "$dir"
	exit 0
fi

if ! command -v mmdebstrap >/dev/null; then
	echo "installing mmdebstrap" >&2
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi

if [ -e "$dir" ] && [ ! -f "$marker" ]; then
	echo "$dir exists and is not a root this script made; remove it or pass another DIR" >&2
	exit 1
fi
echo "making a $suite root with Nix in $dir (a few minutes, once)" >&2
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
tmp=$dir.tmp
rm -rf "$tmp"
mmdebstrap --variant=apt --include="$packages" \
	--aptopt='Acquire::Check-Valid-Until "false"' \
	"$suite" "$tmp" "$mirror" >&2

# The host's CA bundle, whatever the root's ca-certificates made of it.
cp -L /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
cp -L /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true

# Nix as the host has it: no sandbox, builds as the nixbld users (Debian's
# nix-setup-systemd makes them on the host; newer nix-bin leaves that to
# systemd-sysusers, which does not run in a root). No substituters: this
# machine has no network beyond the Debian archive, and Nix 2.34 spends
# 5 s retrying cache.nixos.org on every command that could substitute.
mkdir -p "$tmp/etc/nix"
cat >"$tmp/etc/nix/nix.conf" <<'EOF'
sandbox = false
build-users-group = nixbld
substituters =
EOF

# The build users, then the store and its database, now rather than in
# the first test.
init='groupadd -r nixbld
for i in 1 2 3 4 5 6 7 8 9 10; do
	useradd -r -g nixbld -G nixbld -d /var/empty -s /usr/sbin/nologin -c "Nix build user $i" nixbld$i
done
nix-store --init && nix-store --verify >/dev/null && nix --version'
unshare -m --propagation private sh -c 'mount -t proc proc "$1/proc" && chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh -ec "$2"' sh "$tmp" "$init" >&2

echo "$want" >"$tmp/.nixpush-root"
mv "$tmp" "$dir"
echo "$dir"
