#!/usr/bin/env bash
# All of nixpush's tests, against real Nix and a real MinIO, on three Nix
# versions. Installs Nix (Debian nix-bin) and MinIO (a pinned go install,
# cached) when missing.
#
#   ./scripts/test.sh [go test flags...]
#
# 1. vet, vendorHash, the NixOS module, bounded fuzzing, the whole suite
#    against the machine's Nix (Debian bookworm: 2.8), and the unit packages
#    again under the race detector;
# 2. the whole suite against Nix 2.34, in a Debian sid root;
# 3. the backbone, CA and store-lock end-to-end tests and the nix package against
#    Nix 2.26, in a Debian trixie root.
# The roots are made once by scripts/nix-root.sh (mmdebstrap, from the
# Debian archive) and cached; scripts/in-nix-root.sh runs go test in them.
# NIXPUSH_MATRIX=0 runs part 1 alone. go test flags go to parts 1 and 2.
# Each part runs even if one before it failed; the script fails if any did.
# A go test run that hangs fails at its -timeout (30 min, 30 min, 15 min:
# the suite takes minutes) so that the whole stays within CI's 90 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

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
# Nix 2.8 to 2.25 migrate a database to ca-derivations the first time a
# command enables them, and need the store alone for it (flock -x on
# db/big-lock): done here, before the tests run Nix side by side, where a
# test doing it waits until every other test's Nix has let go at once.
timeout 600 nix-instantiate --option experimental-features ca-derivations --eval -E 1 >/dev/null

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

if ! command -v gcc >/dev/null; then
	echo "installing gcc (go test -race needs cgo)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
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
# Budgets in executions, not seconds: with a duration, Go's fuzzing
# coordinator (to 1.26) can fail a target with a bare "context deadline
# exceeded" when a starved worker misses the deadline (go.dev/issue/75804);
# a count has no deadline to race. -timeout bounds a stuck run.
go test -run '^$' -fuzz '^FuzzStorePath$' -fuzztime 500000x -timeout 5m ./nix/
go test -run '^$' -fuzz '^FuzzEnqueueRequest$' -fuzztime 30000x -timeout 5m ./daemon/
go test -run '^$' -fuzz '^FuzzAppendJSON$' -fuzztime 200000x -timeout 5m ./api/

declare -a times=() failed=()
# record NAME T0 [STATUS]: notes the time since T0 (seconds) of a part.
record() {
	times+=("$(printf '%-50s %3dm%02ds' "$1" $(((SECONDS - $2) / 60)) $(((SECONDS - $2) % 60)))${3:+  $3}")
}
record "setup, vet, vendorHash, module, fuzz" "$start"

# part NAME COMMAND...: runs a part, records its time and whether it failed.
part() {
	local name=$1 t0=$SECONDS rc=0
	shift
	echo "== $name"
	"$@" || rc=$?
	if [ $rc = 0 ]; then
		record "$name" "$t0"
	else
		record "$name" "$t0" "FAILED (exit $rc)"
		failed+=("$name")
	fi
}

part "go test: Nix $(nix --version | awk '{print $NF}') (this machine), all" \
	go test -count=1 -timeout 30m "$@" ./...

# The race detector (it needs cgo: gcc) on every package but e2e and
# bench, whose work is in the processes they start. Ten seeds per family
# of the randomized interleaving test, not a hundred: the race detector
# needs the code run, and the hundred run above without it.
part "go test -race: unit packages" \
	env CGO_ENABLED=1 NIXPUSH_INTERLEAVE_SEEDS=10 go test -race -count=1 -timeout 20m "$@" \
	$(go list ./... | grep -v -e '/e2e$' -e '/bench$' -e '/bench/')

if [ "${NIXPUSH_MATRIX:-1}" != 0 ]; then
	echo "== Nix roots (Debian sid, trixie)"
	t0=$SECONDS
	sid=$(./scripts/nix-root.sh sid)
	trixie=$(./scripts/nix-root.sh trixie)
	record "Nix roots (made once, then reused)" "$t0"

	v=$(./scripts/in-nix-root.sh "$sid" nix --version | awk '{print $NF}')
	part "go test: Nix $v (Debian sid root), all" \
		./scripts/in-nix-root.sh "$sid" go test -count=1 -timeout 30m "$@" ./...

	v=$(./scripts/in-nix-root.sh "$trixie" nix --version | awk '{print $NF}')
	part "go test: Nix $v (Debian trixie root), subset" \
		./scripts/in-nix-root.sh "$trixie" go test -count=1 -timeout 15m \
		-run '^(TestHookToMinIO|TestHookToFileCache|TestCADerivations|TestFirstCABuildOnAFreshStore|TestExclusiveStoreLockWithTheDaemonRunning|TestRealisationsMatchNix|TestServe.*|TestNarInfoMatchesNix|TestSignatureMatchesNixStoreSign|TestQueryInvalidPath|TestKeepsBuildLogs|TestBuildLogsReadsNixLogs|TestNixBuildsTheExpressions)$' \
		./nix/ ./e2e/ ./internal/testenv/
fi

record total "$start"
echo "== times"
printf '%s\n' "${times[@]}"
if [ ${#failed[@]} -gt 0 ]; then
	printf 'FAILED: %s\n' "${failed[@]}"
	exit 1
fi
