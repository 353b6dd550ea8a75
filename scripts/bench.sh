#!/usr/bin/env bash
# nixpush against the classic setup, side by side on this machine: real Nix
# builds the workloads, a real MinIO on loopback holds the buckets.
# Installs Nix and MinIO like scripts/test.sh when missing.
#
#   ./scripts/bench.sh                 # everything (about 10 minutes on 2 cores, and the
#                                      # Push rows again in the Nix roots: see below)
#   ./scripts/bench.sh 'Push|Hook'     # a subset, by benchmark name
#   NIXPUSH_BENCH_SEED=x ./scripts/bench.sh Push   # the same pushed closures run after run
#                                      # (to compare two commits side by side, alternating)
#   NIXPUSH_BENCH_BASELINE=main ./scripts/bench.sh Push   # main's build pushes too, in the
#                                      # same rounds: before and after side by side
#   NIXPUSH_BENCH_ROOTS= ./scripts/bench.sh Push   # the machine's Nix only
#   NIXPUSH_BENCH_DAEMON_ENV=NIXPUSH_ZSTD_FRAMES=on ./scripts/bench.sh Push   # this build's
#                                      # daemon with more environment (zstd frames on 2 cores)
#   NIXPUSH_BENCH_FLOOR=1 ./scripts/bench.sh 'Push/^(10-paths|1-path-1GiB)$'   # the floor's
#                                      # sides too (bench/pushfloor: pack into nothing, send
#                                      # packed bytes), in the same rounds (zstd rows)
#   NIXPUSH_BENCH_PROFILE_DIR=$PWD/prof ./scripts/bench.sh Push   # a CPU profile of this
#                                      # build's daemon per row and round, in that directory
#   NIXPUSH_BENCH_GC_PATHS=100000,1000000 ./scripts/bench.sh GCScale   # gc and verify of synthetic
#                                      # caches: file:// at each size, 100,000 paths in MinIO
#   NIXPUSH_BENCH_BASE=/tmp/main-bin ./scripts/bench.sh SlowDown   # a 300-path push under 30% and 60%
#                                      # 503 SlowDown, this build beside another's binaries (go build -o DIR/
#                                      # ./cmd/nixpush ./cmd/nixpush-hook in a checkout of main)
#
# When the benchmarks asked for include BenchmarkPush, its rows run first on
# this machine, against its Nix's `nix copy` (Nix 2.8 here), then inside
# each root named by NIXPUSH_BENCH_ROOTS (default: sid, Nix 2.34; made once
# by scripts/nix-root.sh), against that Nix's `nix copy`, nixpush reading
# the root's store.
set -euo pipefail
cd "$(dirname "$0")/.."
NIXPUSH_SETUP_ONLY=1 ./scripts/test.sh
if [ ! -x /usr/bin/time ]; then
	# GNU time measures the gc benchmarks' peak RSS (bench/retention_test.go).
	echo "installing time (GNU time)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
export NIXPUSH_MINIO=${NIXPUSH_MINIO:-$(command -v minio || echo "${XDG_CACHE_HOME:-$HOME/.cache}/nixpush/bin/minio")}
# MinIO's data on a tmpfs of at most this size (root mounts it; empty: the
# disk): a remote S3 shares no disk with the builds, and on a VM's disk
# MinIO's speed drifts from run to run.
export NIXPUSH_MINIO_TMPFS=${NIXPUSH_MINIO_TMPFS-12g}
pattern=${1:-.}

if [ -n "${NIXPUSH_BENCH_BASELINE:-}" ]; then
	# Built static, inside the worktree, so that the roots run it too.
	base=$PWD/.bench-baseline
	rm -rf "$base"
	mkdir -p "$base/src"
	git archive "$NIXPUSH_BENCH_BASELINE" | tar -x -C "$base/src"
	(cd "$base/src" && CGO_ENABLED=0 go build -o "$base/" ./cmd/nixpush ./cmd/nixpush-hook)
	echo "baseline: nixpush at $NIXPUSH_BENCH_BASELINE ($(git rev-parse --short "$NIXPUSH_BENCH_BASELINE")) in $base"
	export NIXPUSH_BENCH_BASELINE_BIN=$base
fi

echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
go test -run '^$' -bench "$pattern" -benchtime 1x -timeout 90m ./bench/

# The Push rows against each root's Nix: the same sub-benchmarks the
# pattern picked (its part after the first /, if any).
top=${pattern%%/*}
sub=
[ "$top" = "$pattern" ] || sub=/${pattern#*/}
if go test -list "$top" ./bench/ | grep -qx BenchmarkPush; then
	for suite in ${NIXPUSH_BENCH_ROOTS-sid}; do
		root=$(./scripts/nix-root.sh "$suite")
		echo "load before the run in $suite: $(cut -d' ' -f1-3 /proc/loadavg)"
		./scripts/in-nix-root.sh "$root" go test -run '^$' -bench "^BenchmarkPush\$$sub" -benchtime 1x -timeout 90m ./bench/
	done
fi
