package uploader

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nixpush/nixpush/layout"
)

// Push uploads what the cache lacks of the closures of roots and returns
// one error per root (nil where the root's whole closure is in the cache).
// Paths seen in the cache within TrustCacheFor are not checked again.
func (u *Uploader) Push(ctx context.Context, roots []string) []error {
	return u.push(ctx, roots, false, true)
}

// Ensure is Push for paths that are not roots of their own but go with
// ones pushed as roots (a build log waits for the outputs, which the
// daemon pushes as roots): it records no root.
func (u *Uploader) Ensure(ctx context.Context, paths []string) []error {
	return u.push(ctx, paths, false, false)
}

// Recheck is Push believing nothing it remembers: every path of the
// closures is checked in the cache (and nix-cache-info too), and whatever
// is missing, however deep, is uploaded again. It first waits out a gc
// sweep under way, so that what it finds present stays present.
func (u *Uploader) Recheck(ctx context.Context, roots []string) []error {
	return u.push(ctx, roots, true, true)
}

func (u *Uploader) push(ctx context.Context, roots []string, recheck, record bool) []error {
	errs := make([]error, len(roots))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	start := u.cfg.Now()
	cutoff := start.Add(-u.cfg.TrustCacheFor)
	if recheck || u.SettingsProblem() != "" {
		// A recheck, or settings that do not fit gc's: trust nothing.
		cutoff = start
	}
	if recheck {
		// Whatever a sweep under way deletes shows before the checks.
		m, err := u.readMarker(ctx)
		if err == nil {
			err = u.awaitSweep(ctx, m)
		}
		if err != nil {
			return fail(err)
		}
	}
	lg := newLedger()
	if err := u.pushStale(ctx, roots, errs, cutoff, recheck, lg); err != nil {
		return fail(err)
	}
	// The roots this push did not write, it relies on (found in the
	// cache, or trusted from a sighting) when it acknowledges them as
	// roots; Ensure only orders a log or realisation after them (a
	// realisation relies on its output in its own check).
	lg.mu.Lock()
	for i, r := range roots {
		if _, ok := lg.written[r]; !ok && errs[i] == nil && record {
			lg.relied[r] = true
		}
	}
	lg.mu.Unlock()
	if record {
		u.recordRoots(ctx, roots, errs, lg)
	}
	var ok []string
	for i, r := range roots {
		if errs[i] == nil {
			ok = append(ok, r)
		}
	}
	if len(ok) == 0 {
		return errs
	}
	if err := u.settleRoots(ctx, ok, lg); err != nil {
		// Nothing this push wrote or relied on is trusted any more: the
		// retry (a Recheck) checks it all again, NARs included.
		u.distrust(lg)
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	return errs
}

// pushStale pushes the closures of the roots not seen in the cache since
// cutoff (a recheck checks their NARs too), setting errs by root, and
// records in lg what it wrote. It
// returns an error only when nothing was to be pushed and nix-cache-info
// could not be checked or written: that error is every root's.
func (u *Uploader) pushStale(ctx context.Context, roots []string, errs []error, cutoff time.Time, recheck bool, lg *ledger) error {
	// nix-cache-info is checked while Nix is asked about the closure; it
	// is in before anything else goes up.
	cacheInfo := make(chan error, 1)
	go func() { cacheInfo <- u.ensureCacheInfo(ctx, cutoff) }()
	var todo []int
	u.mu.Lock()
	for i, r := range roots {
		if !u.fresh(r, cutoff) {
			todo = append(todo, i)
		}
	}
	u.stats.Skipped += int64(len(roots) - len(todo))
	u.mu.Unlock()
	if len(todo) == 0 {
		return <-cacheInfo
	}
	sub := make([]string, len(todo))
	for j, i := range todo {
		sub[j] = roots[i]
	}
	for j, err := range u.pushClosures(ctx, sub, cutoff, cacheInfo, nil, recheck, lg) {
		errs[todo[j]] = err
	}
	return nil
}

// settleRoots settles what a push of roots ok wrote and relied on (see
// settle): each round uploads again what vanished and rewrites the root
// records gone.
func (u *Uploader) settleRoots(ctx context.Context, ok []string, lg *ledger) error {
	return u.settle(ctx, lg, func(again []string, force map[string]bool, keys []string) error {
		for _, e := range u.pushClosures(ctx, again, u.cfg.Now(), nil, force, false, lg) {
			if e != nil {
				return e
			}
		}
		// Root records gone: written again (a batch record has a key of
		// its own, never listed by a sweep that began before it).
		var lost []string
		for _, r := range ok {
			if slices.Contains(keys, layout.RootKey(r)) {
				lost = append(lost, r)
			}
		}
		if len(lost) > 0 {
			rerrs := make([]error, len(lost))
			u.recordRoots(ctx, lost, rerrs, lg)
			return errors.Join(rerrs...)
		}
		return nil
	})
}

// distrust forgets the sightings of everything lg wrote or relied on, so
// the next push checks them in the store again.
func (u *Uploader) distrust(lg *ledger) {
	s := u.snapshot(lg)
	u.mu.Lock()
	for p := range s.written {
		delete(u.seen, p)
	}
	for p := range s.relied {
		delete(u.seen, p)
	}
	u.mu.Unlock()
}

// maxRounds bounds how often a push uploads again what vanished while it
// wrote (see doc.go); past it the push fails, to be retried.
const maxRounds = 4

// pushClosures uploads what the cache lacks of the closures of roots (and
// the paths of force, whatever the cache holds), checking every path not
// seen since cutoff (deep: their NARs too), and records in lg what it
// wrote.
func (u *Uploader) pushClosures(ctx context.Context, roots []string, cutoff time.Time, cacheInfo <-chan error, force map[string]bool, deep bool, lg *ledger) []error {
	infos, errs := u.closureInfos(ctx, roots, cutoff)
	if cacheInfo != nil {
		if err := <-cacheInfo; err != nil {
			for i := range errs {
				errs[i] = err
			}
			return errs
		}
	}
	if force == nil {
		force = make(map[string]bool)
	}
	filtered := u.filtered(infos)
	missing := u.probe(ctx, infos, filtered, force, cutoff, deep)
	u.countPlanned(missing, filtered, infos)
	pl := &plan{infos: infos, missing: missing, filtered: filtered, force: force, cutoff: cutoff, written: make(map[string]writtenNAR), lg: lg}
	failed := u.uploadMissing(ctx, pl)
	for i, r := range roots {
		if errs[i] == nil {
			errs[i] = closureError(r, infos, failed)
		}
	}
	return errs
}

// uploadMissing uploads every missing path of pl (each after its
// references) and returns the failures by path.
func (u *Uploader) uploadMissing(ctx context.Context, pl *plan) map[string]error {
	// NARs upload ahead, deps first, on up to Jobs connections, while
	// ensure writes each .narinfo once its NAR and its references' are in.
	pctx, stop := context.WithCancel(ctx)
	var prefetch sync.WaitGroup
	defer prefetch.Wait()
	defer stop() // runs first: uploads nobody waits for any more end
	prefetch.Go(func() { u.prefetchNARs(pctx, prefetchOrder(pl.missing, pl.infos), pl, &prefetch) })
	var mu sync.Mutex
	failed := make(map[string]error)
	var wg sync.WaitGroup
	for p := range pl.missing {
		wg.Go(func() {
			if err := u.ensure(ctx, p, pl); err != nil {
				mu.Lock()
				failed[p] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}
