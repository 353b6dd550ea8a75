#!/usr/bin/env bash
# The main job on the embedded default (a file:// binary cache), end to end:
# build with Nix through nixpush-hook, let the daemon sign and push, then
# substitute the result from the cache into a fresh store with real Nix.
#
#   ./scripts/demo.sh [N]     N derivations in a chain (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}

if ! command -v nix-build >/dev/null; then
	echo "== installing Nix (Debian nix-bin)"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin >/dev/null
fi
grep -qs '^sandbox *= *false' /etc/nix/nix.conf || echo 'sandbox = false' >>/etc/nix/nix.conf

work=$(mktemp -d /tmp/nixpush-demo.XXXXXX)
bin=$work/bin
echo "== building nixpush into $bin"
go build -o "$bin/" ./cmd/nixpush ./cmd/nixpush-hook

export NIXPUSH_SOCKET=$work/nixpush.sock NIXPUSH_SPOOL_DIR=$work/state/spool
export XDG_CACHE_HOME=$work/xdg-cache # a fresh narinfo cache for the consumer side
"$bin/nixpush" keygen --name nixpush-demo-1 --out "$work/keys"

echo "== starting the daemon on the embedded default store (file://$work/state/cache)"
"$bin/nixpush" daemon --state-dir "$work/state" --secret-key-file "$work/keys/secret.key" --log-format console &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null' EXIT
for _ in $(seq 50); do [ -S "$NIXPUSH_SOCKET" ] && break; sleep 0.1; done

echo "== building a chain of $n derivations with post-build-hook = nixpush-hook"
seed=$RANDOM$RANDOM
out=$(nix-build --no-out-link --option post-build-hook "$bin/nixpush-hook" -E "
  let mk = i: prev: derivation {
        name = \"nixpush-demo-\${toString i}\"; system = builtins.currentSystem; builder = \"/bin/sh\";
        args = [\"-c\" \"echo $seed \${toString i} \${if prev == null then \"\" else prev} > \$out\"];
      };
      chain = i: if i == 0 then null else mk i (chain (i - 1));
  in chain $n")
echo "built $out"

echo "== waiting for the queue to drain"
"$bin/nixpush" wait --timeout 5m
"$bin/nixpush" status

echo "== substituting the closure from the cache into a fresh store"
fresh=$work/fresh
nix --extra-experimental-features nix-command copy --from "file://$work/state/cache" --to "local?root=$fresh" \
	--option trusted-public-keys "$(cat "$work/keys/public.key")" --option require-sigs true "$out"
count=$(nix-store --store "local?root=$fresh" -q --requisites "$out" | wc -l)
diff "$out" "$fresh$out"
echo "OK: $count paths substituted into $fresh from file://$work/state/cache, signed by $(cat "$work/keys/public.key")"
