#!/usr/bin/env bash
# nixpush against the classic setup, side by side on this machine: real Nix
# builds the workloads, a real MinIO on loopback holds the buckets.
# Installs Nix and MinIO like scripts/test.sh when missing.
#
#   ./scripts/bench.sh                 # everything (about 10 minutes on 2 cores)
#   ./scripts/bench.sh 'Push|Hook'     # a subset, by benchmark name
#   NIXPUSH_BENCH_SEED=x ./scripts/bench.sh Push   # the same pushed closures run after run
#                                      # (to compare two commits side by side, alternating)
#   NIXPUSH_BENCH_GC_PATHS=100000,1000000 ./scripts/bench.sh GCScale   # gc and verify of synthetic
#                                      # caches: file:// at each size, 100,000 paths in MinIO
#   NIXPUSH_BENCH_BASE=/tmp/main-bin ./scripts/bench.sh SlowDown   # a 300-path push under 30% and 60%
#                                      # 503 SlowDown, this build beside another's binaries (go build -o DIR/
#                                      # ./cmd/nixpush ./cmd/nixpush-hook in a checkout of main)
set -euo pipefail
cd "$(dirname "$0")/.."
NIXPUSH_SETUP_ONLY=1 ./scripts/test.sh
export NIXPUSH_MINIO=${NIXPUSH_MINIO:-$(command -v minio || echo "${XDG_CACHE_HOME:-$HOME/.cache}/nixpush/bin/minio")}
# MinIO's data on a tmpfs of at most this size (root mounts it; empty: the
# disk): a remote S3 shares no disk with the builds, and on a VM's disk
# MinIO's speed drifts from run to run.
export NIXPUSH_MINIO_TMPFS=${NIXPUSH_MINIO_TMPFS-12g}
go test -run '^$' -bench "${1:-.}" -benchtime 1x -timeout 90m ./bench/
