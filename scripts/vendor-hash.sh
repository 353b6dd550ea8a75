#!/usr/bin/env bash
# package.nix's vendorHash: the NAR hash of `go mod vendor`, which is what
# buildGoModule's fixed-output vendor derivation holds.
#
#   ./scripts/vendor-hash.sh           # print it
#   ./scripts/vendor-hash.sh --check   # fail unless package.nix has it
#   ./scripts/vendor-hash.sh --write   # put it into package.nix
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go mod vendor -o "$tmp/vendor"
hash=$(nix --extra-experimental-features nix-command hash path "$tmp/vendor")
have=$(sed -n 's/^ *vendorHash = "\(.*\)";/\1/p' package.nix)
case "${1:-}" in
--check)
	if [ "$hash" != "$have" ]; then
		echo "package.nix: vendorHash is \"$have\", go.mod/go.sum give \"$hash\"; run ./scripts/vendor-hash.sh --write" >&2
		exit 1
	fi
	echo "vendorHash $hash is current" ;;
--write)
	sed -i "s|^\( *vendorHash = \).*;|\1\"$hash\";|" package.nix
	echo "package.nix: vendorHash = \"$hash\"" ;;
*) echo "$hash" ;;
esac
