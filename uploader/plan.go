package uploader

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// plan is what one push knows: the path infos it needs, which paths the
// cache was found to lack, since when what was seen is trusted, and the
// .narinfos it wrote (with the keys of their NARs).
type plan struct {
	infos    map[string]nix.PathInfo
	missing  map[string]bool
	filtered map[string]bool // left out by the filter
	force    map[string]bool // to upload again whatever the cache says
	cutoff   time.Time
	lg       *ledger // what the push relies on and wrote, over its rounds

	mu      sync.Mutex
	written map[string]writtenNAR
}

// since is when p must have been seen in the cache for this push to
// trust it: never, for a path it is to upload again and has not yet.
func (pl *plan) since(p string) time.Time {
	if pl.force[p] {
		pl.mu.Lock()
		_, done := pl.written[p]
		pl.mu.Unlock()
		if !done {
			return time.Unix(1<<62, 0)
		}
	}
	return pl.cutoff
}

// countPlanned counts the paths a push found missing in Stats.Planned,
// once each however many pushes want them.
func (u *Uploader) countPlanned(missing, filtered map[string]bool, infos map[string]nix.PathInfo) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for p := range missing {
		if filtered[p] || u.planned[p] {
			continue
		}
		u.planned[p] = true
		u.stats.Planned++
		u.stats.PlannedNarBytes += int64(infos[p].NarSize)
	}
}

// filtered is the set of paths of infos the filter leaves out. They are
// never in the cache (consumers take them from upstream), so they are
// never checked there, and no .narinfo relies on them being in the cache;
// once their references are ensured, they count as seen.
func (u *Uploader) filtered(infos map[string]nix.PathInfo) map[string]bool {
	if u.cfg.Filter.Empty() {
		return nil
	}
	out := make(map[string]bool)
	for p, info := range infos {
		if skip, _ := u.cfg.Filter.Skips(info); skip {
			out[p] = true
		}
	}
	u.mu.Lock()
	for p := range out {
		u.skipped[p] = true
	}
	u.mu.Unlock()
	return out
}

// probe finds which paths of the closure the cache lacks: every path not
// seen since cutoff, with one listing when that is cheaper, else with
// existence checks in parallel. Paths whose check failed count as missing,
// and so do those of force, unchecked (their .narinfo may be there, but
// not their NAR). Deep, it also checks the NAR of every .narinfo found,
// and adds the paths whose NAR is gone to force.
func (u *Uploader) probe(ctx context.Context, infos map[string]nix.PathInfo, filtered, force map[string]bool, cutoff time.Time, deep bool) map[string]bool {
	missing := make(map[string]bool)
	var rest []string
	u.mu.Lock()
	for p := range force {
		missing[p] = true
	}
	for p := range infos {
		if !u.fresh(p, cutoff) && !filtered[p] && !force[p] {
			rest = append(rest, p)
		}
	}
	u.mu.Unlock()
	if len(rest) == 0 {
		return missing
	}
	at := u.cfg.Now()
	keys := make([]string, len(rest))
	for i, p := range rest {
		keys[i] = layout.NarInfoKey(p)
	}
	gone, failed := u.absent(ctx, keys, nil)
	var present []string
	for i, p := range rest {
		if failed[keys[i]] == nil && !gone[keys[i]] {
			present = append(present, p)
		}
	}
	var noNAR map[string]bool
	if deep {
		noNAR = u.narsGone(ctx, present, infos)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, p := range rest {
		switch {
		case failed[keys[i]] != nil:
			missing[p] = true
		case gone[keys[i]]:
			u.goneAt(p, at)
			missing[p] = true
		case noNAR[p]:
			// A .narinfo whose NAR is gone (a push that wrote it was cut
			// off before its check after writes found a sweep had deleted
			// the NAR): uploaded again, NAR first.
			delete(u.seen, p)
			missing[p], force[p] = true, true
		default:
			u.sawAt(p, at)
			u.stats.Skipped++
		}
	}
	return missing
}

// narsGone returns which of paths (whose .narinfos are in the store) lack
// their NAR: the key this uploader would write is checked first (one
// listing, or checks in parallel); for a path whose NAR is not there, its
// .narinfo is read, since another uploader (another compression) may have
// written it, and the NAR it names checked. A check that fails counts as
// gone: uploading again is safe, trusting is not.
func (u *Uploader) narsGone(ctx context.Context, paths []string, infos map[string]nix.PathInfo) map[string]bool {
	out := make(map[string]bool)
	if len(paths) == 0 {
		return out
	}
	keys := make([]string, len(paths))
	for i, p := range paths {
		keys[i] = narKey(infos[p], u.cfg.Compression)
	}
	gone, failed := u.absent(ctx, nil, keys)
	for i, p := range paths {
		if !gone[keys[i]] && failed[keys[i]] == nil {
			continue
		}
		text, err := u.counted.Get(ctx, layout.NarInfoKey(p))
		if err != nil {
			out[p] = true
			continue
		}
		url := narInfoURL(text)
		if url == "" || url == keys[i] {
			out[p] = true
			continue
		}
		if has, err := u.has(ctx, url); err != nil || !has {
			out[p] = true
		}
	}
	return out
}

// narInfoURL is the URL line of a .narinfo's text ("" when none).
func narInfoURL(text []byte) string {
	for line := range strings.Lines(string(text)) {
		if v, ok := strings.CutPrefix(line, "URL: "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// listBudget is how many names a listing may read per path it would spare
// an existence check: a page of a thousand costs about what twenty checks do.
const listBudget = 50

// listNarInfos lists the .narinfo names in the store when that is cheaper
// than checking n paths one by one, which it is unless the cache is large.
func (u *Uploader) listNarInfos(ctx context.Context, n int) (map[string]bool, bool) {
	l, ok := store.As[store.Lister](u.counted)
	if !ok || n < 32 {
		return nil, false
	}
	names := make(map[string]bool)
	budget := n * listBudget
	err := l.ListTop(ctx, func(name string) bool {
		if strings.HasSuffix(name, ".narinfo") {
			names[name] = true
		}
		budget--
		return budget > 0
	})
	if err != nil || budget <= 0 {
		return nil, false // too large or failing: check path by path
	}
	return names, true
}

// prefetchOrder is the order NAR uploads start in: the large NARs
// (multipart streams) first, largest first, then the rest deps first. A
// NAR never waits for its references (only its .narinfo does), so the
// closure rule leaves the NARs' order free; started last, the largest NAR
// alone would set the drain time (issue 24: a 256 MiB NAR started after 299
// of 300 others). The small ones keep dependency order, in which their
// .narinfos can follow them at once: for them a request's latency, not
// their size, is the cost.
func prefetchOrder(missing map[string]bool, infos map[string]nix.PathInfo) []string {
	order := topoOrder(missing, infos)
	var large, rest []string
	for _, p := range order {
		if infos[p].NarSize > narpack.SmallNAR {
			large = append(large, p)
		} else {
			rest = append(rest, p)
		}
	}
	slices.SortStableFunc(large, func(a, b string) int { return cmp.Compare(infos[b].NarSize, infos[a].NarSize) })
	return append(large, rest...)
}
