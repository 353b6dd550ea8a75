#!/usr/bin/env bash
# Removes one step of the push/gc protocol at a time (uploader/doc.go,
# retention/doc.go) in a scratch worktree and runs the randomized
# interleaving test (retention/interleave_test.go) on the family aimed at
# what that step guards: each line should say FOUND (the test fails
# without the step). It checks HEAD, in a scratch worktree.
#
#   ./scripts/mutations.sh [seeds per family, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-300}
wt=$(mktemp -d)/mut
git worktree add -q --detach "$wt" HEAD
trap 'git worktree remove --force "$wt"' EXIT

# name | family (or package:TestName for a test of its own) | file | text | replacement
mutations=(
	"recheck-not-deep|uploader:TestRetryAfterInterruptedCheckFindsNARGone|uploader/push.go|u.pushClosures(ctx, sub, cutoff, cacheInfo, nil, recheck, lg)|u.pushClosures(ctx, sub, cutoff, cacheInfo, nil, false, lg)"
	"recheck-not-deep|H1|uploader/push.go|u.pushClosures(ctx, sub, cutoff, cacheInfo, nil, recheck, lg)|u.pushClosures(ctx, sub, cutoff, cacheInfo, nil, false, lg)"
	"roots-not-relied|uploader:TestRootPushedAgainDuringSweep|uploader/push.go|errs[i] == nil \&\& record {|errs[i] == nil \&\& false {"
	"roots-not-relied|H2|uploader/push.go|errs[i] == nil \&\& record {|errs[i] == nil \&\& false {"
	"gc-no-late-pins-roots|retention:TestPinAfterWalkSurvives|retention/gc.go|late, err := listLate(ctx, b, rec.seen)|late, err := listLate(ctx, b, rec.seen); late = nil"
	"written-narinfos-unchecked|uploader:TestRepairDuringPush|uploader/settle.go|top = append(top, nix.NarInfoKey(p))|_ = p"
	"written-narinfos-unchecked|H3|uploader/settle.go|top = append(top, nix.NarInfoKey(p))|_ = p"
	"repair-trusts-old-report|retention:TestRepairDeletesOnlyWhatIsStillBroken|retention/verify.go|if ok \&\& stillBroken(rep.g, old, g, i, unseen[rep.g.path(old)]) {|if ok {"
	"repair-trusts-old-report|H3|retention/verify.go|if ok \&\& stillBroken(rep.g, old, g, i, unseen[rep.g.path(old)]) {|if ok {"
	"forgotten-sighting-ignored|uploader:TestForgottenSightingForcesCheck|uploader/settle.go|s.unknown = true|_ = 0"
	"forgotten-sighting-ignored|H4|uploader/settle.go|s.unknown = true|_ = 0"
	"no-conditional-writes|retention:TestTwoGCsRace|retention/gc.go|startSweep(ctx, b, m, opts.Window, opts.SingleGC)|startSweep(ctx, b, m, opts.Window, true)"
	"no-conditional-writes|H5|retention/gc.go|startSweep(ctx, b, m, opts.Window, opts.SingleGC)|startSweep(ctx, b, m, opts.Window, true)"
)
for m in "${mutations[@]}"; do
	IFS='|' read -r name family file from to <<<"$m"
	python3 - "$wt/$file" "$from" "$to" <<'PY'
import sys
p, a, b = sys.argv[1], sys.argv[2].replace('\\&', '&'), sys.argv[3].replace('\\&', '&')
s = open(p).read()
if s.count(a) != 1:
    sys.exit(f"{p}: {a!r} found {s.count(a)} times")
open(p, 'w').write(s.replace(a, b))
PY
	if [[ $family == *:* ]]; then
		out=$(cd "$wt" && go test -count=1 -run "^${family#*:}\$" "./${family%%:*}/" 2>&1 || true)
	else
		out=$(cd "$wt" && NIXPUSH_INTERLEAVE_SEEDS=$seeds NIXPUSH_INTERLEAVE_FAMILIES=$family go test -count=1 -run '^TestInterleavings$' ./retention/ 2>&1 || true)
	fi
	verdict=MISSED
	if grep -q -- '--- FAIL' <<<"$out"; then verdict=FOUND; fi
	first=$(grep -m1 -oE "$family:[0-9]+ \(hole[^)]*\): after step [0-9]+: .*|_test.go:[0-9]+: .*" <<<"$out" | cut -c1-160 || true)
	printf '%-28s %-3s %-6s %s\n' "$name" "$family" "$verdict" "$first"
	(cd "$wt" && git checkout -q -- "$file")
done
