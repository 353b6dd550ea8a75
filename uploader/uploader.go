package uploader

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// PathInfoSource is where the uploader learns what the Nix database knows.
type PathInfoSource interface {
	Query(ctx context.Context, paths []string) ([]nix.PathInfo, error)
	QueryClosure(ctx context.Context, paths []string) ([]nix.PathInfo, error)
}

// Config configures an Uploader.
type Config struct {
	Store store.Store
	Nix   PathInfoSource
	Key   signature.SecretKey
	// Keys are further signing keys (during a key rotation): each .narinfo
	// carries a signature by Key and one by each of Keys.
	Keys        []signature.SecretKey
	Compression Compression
	Jobs        int    // paths packed and uploaded at once; <1 means 4
	StoreDir    string // "" means nix.DefaultStoreDir
	Log         zerolog.Logger
	// Priority is written to nix-cache-info when the cache lacks one (0 = 40).
	Priority int
	// Filter leaves paths out of every push.
	Filter Filter
	// WriteNARListing writes <hash>.ls, the NAR's file listing, before
	// each .narinfo, as Nix does with write-nar-listing=true.
	WriteNARListing bool
	// TrustCacheFor is how long a path found in the cache (or written to
	// it) is believed to stay there: within it the path is not checked
	// again; after it, the next push that needs it checks, and uploads it
	// again if it is gone. 0 checks every path of every closure pushed.
	TrustCacheFor time.Duration
	// Host names this machine in the root records (default: os.Hostname).
	Host string
	// MaxSweepWait bounds how long a push waits for a gc sweep to finish
	// (0 = 1h); past it the push fails, to be retried (as a full re-check).
	MaxSweepWait time.Duration
	// PollSweep is how often a push waiting for a sweep reads gc's marker
	// again (0 = 2s).
	PollSweep time.Duration
	// ClockSkew is how far the clocks of gc, the store and this machine
	// may disagree (0 = DefaultClockSkew).
	ClockSkew time.Duration
	// Now is the clock (nil: time.Now); tests move it.
	Now func() time.Time
	// Sleep waits d or until ctx is done (nil: a timer); tests replace it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Uploader pushes closures to one store. It is safe for concurrent use: a
// path wanted by several pushes at once is uploaded once.
type Uploader struct {
	counted *store.Counting // cfg.Store, counting the requests of Stats
	cfg     Config
	jobs    chan struct{} // a token per pack-and-upload
	big     chan struct{} // a token per large NAR streaming (each holds ~12 MiB of buffers)
	stat    chan struct{} // a token per existence check

	infoMu   sync.Mutex
	infoSeen time.Time // when nix-cache-info was last found or written

	// markerSeen: gc's marker was there at some read. gc never removes it
	// (an older gc did, and so may a hand), so after that its absence says
	// nothing about sweeps.
	markerSeen atomic.Bool
	markerGone atomic.Bool // said so in the log
	// problem is how the settings do not fit the last sweep's ("": they
	// do); nil until a sweep said its settings.
	problem atomic.Pointer[string]

	mu       sync.Mutex
	seen     map[string]time.Time // when each path's .narinfo was last found in the store or written (filtered paths: their references ensured)
	planned  map[string]bool      // paths counted in Stats.Planned and not yet uploaded
	skipped  map[string]bool      // paths the filter left out (it never changes)
	inflight map[string]*flight
	nars     map[string]*narFlight // NAR uploads under way or done, until their .narinfo is written
	stats    Stats
	journal  Journal        // where resumable uploads are recorded (nil: none)
	resuming map[string]int // resumable uploads under way, by path
}

// errCached is nar's answer for a path whose .narinfo is already written.
var errCached = errors.New("already in the cache")

// errInFlight tells a prefetch that another push is uploading the NAR.
var errInFlight = errors.New("NAR upload in flight")

// narFlight is one NAR upload, shared by every push that needs the path.
type narFlight struct {
	done chan struct{}
	p    packed
	err  error
}

type flight struct {
	done chan struct{}
	err  error
}

// Stats are cumulative figures since the uploader started.
type Stats struct {
	Paths        int64     // paths uploaded
	NarBytes     int64     // their NAR bytes
	FileBytes    int64     // their compressed bytes
	Skipped      int64     // paths found already in the cache
	Requests     int64     // operations on the store (existence checks, uploads, reads)
	Logs         int64     // build logs uploaded
	Filtered     int64     // paths left out by the filter
	Realisations int64     // realisations of content-addressed derivations uploaded
	LastPush     time.Time // when a path was last uploaded
	// Planned are the paths pushes found missing from the cache, to be
	// uploaded (each counted once), and PlannedNarBytes their NAR bytes:
	// with Paths and NarBytes, what a push has done of what it has to do.
	Planned         int64
	PlannedNarBytes int64
	// Resumed counts uploads resumed after a restart, ResumedBytes the
	// compressed bytes they found in the store and did not send again,
	// and StartedOver the recorded uploads that could not be resumed.
	Resumed, ResumedBytes, StartedOver int64
}

// New returns an Uploader.
func New(cfg Config) *Uploader {
	if cfg.Jobs < 1 {
		cfg.Jobs = 4
	}
	if cfg.Compression == "" {
		cfg.Compression = Zstd
	}
	if cfg.StoreDir == "" {
		cfg.StoreDir = nix.DefaultStoreDir
	}
	if cfg.Priority == 0 {
		cfg.Priority = 40
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSweepWait <= 0 {
		cfg.MaxSweepWait = time.Hour
	}
	if cfg.PollSweep <= 0 {
		cfg.PollSweep = 2 * time.Second
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.Sleep == nil {
		cfg.Sleep = store.Sleep
	}
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	return &Uploader{
		cfg:      cfg,
		counted:  store.Count(cfg.Store),
		jobs:     make(chan struct{}, cfg.Jobs),
		big:      make(chan struct{}, bigStreams),
		stat:     make(chan struct{}, 4*cfg.Jobs),
		seen:     make(map[string]time.Time),
		planned:  make(map[string]bool),
		skipped:  make(map[string]bool),
		inflight: make(map[string]*flight),
		nars:     make(map[string]*narFlight),
		resuming: make(map[string]int),
	}
}

// Stats returns cumulative figures.
func (u *Uploader) Stats() Stats {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.stats
	s.Requests = u.counted.Requests()
	return s
}

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
	// nix-cache-info is checked while Nix is asked about the closure; it
	// is in before anything else goes up.
	cacheInfo := make(chan error, 1)
	go func() { cacheInfo <- u.ensureCacheInfo(ctx, cutoff) }()
	lg := newLedger()
	var todo []int
	u.mu.Lock()
	for i, r := range roots {
		if !u.fresh(r, cutoff) {
			todo = append(todo, i)
		}
	}
	u.stats.Skipped += int64(len(roots) - len(todo))
	u.mu.Unlock()
	if len(todo) > 0 {
		sub := make([]string, len(todo))
		for j, i := range todo {
			sub[j] = roots[i]
		}
		for j, err := range u.pushClosures(ctx, sub, cutoff, cacheInfo, nil, recheck, lg) {
			errs[todo[j]] = err
		}
	} else if err := <-cacheInfo; err != nil {
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
	err := u.settle(ctx, lg, func(again []string, force map[string]bool, keys []string) error {
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
	if err != nil {
		// Nothing this push wrote or relied on is trusted any more: the
		// retry (a Recheck) checks it all again, NARs included.
		s := u.snapshot(lg)
		u.mu.Lock()
		for p := range s.written {
			delete(u.seen, p)
		}
		for p := range s.relied {
			delete(u.seen, p)
		}
		u.mu.Unlock()
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	return errs
}

// maxRounds bounds how often a push uploads again what vanished while it
// wrote (see doc.go); past it the push fails, to be retried.
const maxRounds = 4

// pushClosures uploads what the cache lacks of the closures of roots (and
// the paths of force, whatever the cache holds), checking every path not
// seen since cutoff (deep: their NARs too), and records in lg what it
// wrote.
func (u *Uploader) pushClosures(ctx context.Context, roots []string, cutoff time.Time, cacheInfo <-chan error, force map[string]bool, deep bool, lg *ledger) []error {
	infos, errs := u.closureOf(ctx, roots, cutoff)
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
	u.plan(missing, filtered, infos)
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

// closureError is the first failure among the paths of root's closure, or
// the context's error.
func closureError(root string, infos map[string]nix.PathInfo, failed map[string]error) error {
	if len(failed) == 0 {
		return nil
	}
	if err, ok := failed[root]; ok {
		return err
	}
	seen := map[string]bool{root: true}
	stack := []string{root}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, r := range infos[p].References {
			if seen[r] {
				continue
			}
			seen[r] = true
			if err, ok := failed[r]; ok {
				return &DependencyError{Path: root, Err: err}
			}
			stack = append(stack, r)
		}
	}
	return nil
}

// closureOf is closure, asking root by root when one invalid root would
// fail the others.
func (u *Uploader) closureOf(ctx context.Context, roots []string, cutoff time.Time) (map[string]nix.PathInfo, []error) {
	errs := make([]error, len(roots))
	infos, err := u.closure(ctx, roots, cutoff)
	if err != nil && len(roots) > 1 && nix.IsInvalid(err) {
		infos = make(map[string]nix.PathInfo)
		for i, r := range roots {
			m, err := u.closure(ctx, []string{r}, cutoff)
			if err != nil {
				errs[i] = err
				continue
			}
			for p, info := range m {
				infos[p] = info
			}
		}
	} else if err != nil {
		for i := range errs {
			errs[i] = err
		}
	}
	return infos, errs
}

// plan counts the paths a push found missing in Stats.Planned, once each
// however many pushes want them.
func (u *Uploader) plan(missing, filtered map[string]bool, infos map[string]nix.PathInfo) {
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

// fresh reports whether p's .narinfo was seen in the store since cutoff.
// The caller holds u.mu.
func (u *Uploader) fresh(p string, cutoff time.Time) bool {
	t, ok := u.seen[p]
	return ok && !t.Before(cutoff)
}

// sawAt records that p's .narinfo was in the store at t. The caller holds
// u.mu.
func (u *Uploader) sawAt(p string, t time.Time) {
	if t.After(u.seen[p]) {
		u.seen[p] = t
	}
}

// goneAt records that p's .narinfo was not in the store at t: unless
// it was seen there (written, say) after t, it is no longer trusted. The
// caller holds u.mu.
func (u *Uploader) goneAt(p string, t time.Time) {
	if u.seen[p].Before(t) {
		delete(u.seen, p)
	}
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
		if strings.HasSuffix(name, layout.NarInfoExt) {
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

// topoOrder lists the missing paths with every path after its references.
func topoOrder(missing map[string]bool, infos map[string]nix.PathInfo) []string {
	var out []string
	seen := make(map[string]bool, len(missing))
	var visit func(p string)
	visit = func(p string) {
		if seen[p] || !missing[p] {
			return
		}
		seen[p] = true
		for _, r := range infos[p].References {
			visit(r)
		}
		out = append(out, p)
	}
	keys := make([]string, 0, len(missing))
	for p := range missing {
		keys = append(keys, p)
	}
	slices.Sort(keys)
	for _, p := range keys {
		visit(p)
	}
	return out
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
		if infos[p].NarSize > smallNAR {
			large = append(large, p)
		} else {
			rest = append(rest, p)
		}
	}
	slices.SortStableFunc(large, func(a, b string) int { return cmp.Compare(infos[b].NarSize, infos[a].NarSize) })
	return append(large, rest...)
}

// prefetchNARs starts the NAR uploads of order, in that order, as upload
// slots free up.
func (u *Uploader) prefetchNARs(ctx context.Context, order []string, pl *plan, wg *sync.WaitGroup) {
	for _, p := range order {
		if ctx.Err() != nil {
			return
		}
		u.mu.Lock()
		_, started := u.nars[p]
		started = started || u.fresh(p, pl.since(p))
		u.mu.Unlock()
		if started {
			continue
		}
		select {
		case u.jobs <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Go(func() {
			defer func() { <-u.jobs }()
			u.nar(ctx, pl.infos[p], pl.since(p), true)
		})
	}
}

// nar returns the NAR upload of info, starting it (and waiting for an
// upload slot, unless the caller holds one) when no push has yet. A caller
// holding a slot never waits for another's upload: that upload may be
// waiting for a slot, and with every slot so held nothing would move.
func (u *Uploader) nar(ctx context.Context, info nix.PathInfo, cutoff time.Time, holdsSlot bool) (packed, error) {
	var f *narFlight
	for tries := 0; ; tries++ {
		u.mu.Lock()
		if u.fresh(info.Path, cutoff) {
			u.mu.Unlock()
			return packed{}, errCached
		}
		f = u.nars[info.Path]
		if f == nil {
			break // still locked
		}
		u.mu.Unlock()
		if holdsSlot {
			// A prefetch: the upload is someone else's already, and that
			// one may be waiting for the very slot held here.
			return packed{}, errInFlight
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return packed{}, ctx.Err()
		}
		// Another push's upload failed, perhaps only because that push
		// was cancelled: this one tries for itself.
		if f.err == nil || tries == 2 {
			return f.p, f.err
		}
	}
	f = &narFlight{done: make(chan struct{})}
	u.nars[info.Path] = f
	u.mu.Unlock()
	if !holdsSlot {
		select {
		case u.jobs <- struct{}{}:
			defer func() { <-u.jobs }()
		case <-ctx.Done():
			f.err = ctx.Err()
		}
	}
	if f.err == nil {
		f.p, f.err = u.putNAR(ctx, info)
	}
	if f.err != nil {
		// A failed upload is not remembered: the next attempt starts anew.
		u.mu.Lock()
		delete(u.nars, info.Path)
		u.mu.Unlock()
	}
	close(f.done)
	return f.p, f.err
}

// closure returns the path info the pushes of roots need: the roots', and
// the whole closure of any reference not yet known to be in the cache. A
// path built on top of pushed ones (the hook's usual case) costs a query of
// itself alone, not of its whole closure.
func (u *Uploader) closure(ctx context.Context, roots []string, cutoff time.Time) (map[string]nix.PathInfo, error) {
	list, err := u.cfg.Nix.Query(ctx, roots)
	if err == nil {
		var unknown []string
		seen := make(map[string]bool)
		u.mu.Lock()
		for _, info := range list {
			seen[info.Path] = true
		}
		for _, info := range list {
			for _, ref := range info.References {
				if !seen[ref] && !u.fresh(ref, cutoff) {
					seen[ref] = true
					unknown = append(unknown, ref)
				}
			}
		}
		u.mu.Unlock()
		if len(unknown) > 0 {
			var more []nix.PathInfo
			more, err = u.cfg.Nix.QueryClosure(ctx, unknown)
			list = append(list, more...)
		}
	}
	if err != nil {
		if nix.IsInvalid(err) {
			return nil, store.Permanent(err)
		}
		return nil, err
	}
	m := make(map[string]nix.PathInfo, len(list))
	for _, info := range list {
		m[info.Path] = info
	}
	return m, nil
}

// ensure makes sure the cache holds p's .narinfo, written after those of
// its references: once per path however many pushes want it at once.
func (u *Uploader) ensure(ctx context.Context, p string, pl *plan) error {
	for tries := 0; ; tries++ {
		u.mu.Lock()
		if u.fresh(p, pl.since(p)) {
			u.mu.Unlock()
			return nil
		}
		f := u.inflight[p]
		if f == nil {
			break // still locked
		}
		u.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		// That push may have trusted an older sighting than this one
		// does: then this one checks for itself.
		if f.err != nil || tries == 2 {
			return f.err
		}
	}
	f := &flight{done: make(chan struct{})}
	u.inflight[p] = f
	u.mu.Unlock()

	f.err = u.ensureOnce(ctx, p, pl)

	u.mu.Lock()
	delete(u.inflight, p)
	u.mu.Unlock()
	close(f.done)
	return f.err
}

func (u *Uploader) ensureOnce(ctx context.Context, p string, pl *plan) error {
	info, ok := pl.infos[p]
	if !ok {
		return fmt.Errorf("%s: no path info (it is in a closure pushed at the same time); will retry", p)
	}
	// A filtered path is left out, but not its references, which other
	// paths may need: they are ensured below all the same.
	if !pl.missing[p] && !pl.filtered[p] { // not probed by this push: check now
		at := u.cfg.Now()
		has, err := u.has(ctx, layout.NarInfoKey(p))
		if err != nil {
			return err
		}
		if has {
			u.mu.Lock()
			u.sawAt(p, at)
			u.stats.Skipped++
			u.mu.Unlock()
			return nil
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, ref := range info.References {
		if ref == p {
			continue
		}
		g.Go(func() error { return u.ensure(gctx, ref, pl) })
	}
	if err := g.Wait(); err != nil {
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return ctx.Err()
		}
		var dep *DependencyError
		if errors.As(err, &dep) {
			return err
		}
		return &DependencyError{Path: p, Err: err}
	}
	if pl.filtered[p] {
		_, why := u.cfg.Filter.Skips(info)
		u.mu.Lock()
		u.sawAt(p, u.cfg.Now())
		u.stats.Filtered++
		u.mu.Unlock()
		u.cfg.Log.Debug().Str("path", p).Str("reason", why).Msg("filtered: not uploaded")
		return nil
	}
	return u.upload(ctx, info, pl)
}

func (u *Uploader) has(ctx context.Context, key string) (bool, error) {
	select {
	case u.stat <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-u.stat }()
	return u.counted.Has(ctx, key)
}

// bigStreams bounds the large NARs packed at once: each streams through a
// multipart part buffer and a zstd window, and two keep both cores busy.
const bigStreams = store.BigStreams

// putNAR packs and uploads the NAR of info.
func (u *Uploader) putNAR(ctx context.Context, info nix.PathInfo) (packed, error) {
	if info.NarSize > smallNAR {
		select {
		case u.big <- struct{}{}:
			defer func() { <-u.big }()
		case <-ctx.Done():
			return packed{}, ctx.Err()
		}
	}
	u.counted.Add(1) // one request a NAR, whatever it takes: one PUT, a multipart upload, none when packing fails first
	at := u.cfg.Now()
	var p packed
	var err error
	key := narKey(info, u.cfg.Compression)
	if ms, ok := store.As[store.Multipart](u.cfg.Store); ok && info.NarSize > smallNAR && u.getJournal() != nil {
		p, err = u.putResumable(ctx, ms, u.getJournal(), info, key)
	} else {
		p, err = putNAR(ctx, u.cfg.Store, info, u.cfg.Compression, u.cfg.WriteNARListing, key)
	}
	if err != nil {
		return packed{}, fmt.Errorf("upload %s: %w", info.Path, err)
	}
	p.at = at
	// The .narinfo is signed here, beside the NAR upload, rather than when
	// its references are in: on a deep closure that is one step less on
	// the serial path from one .narinfo PUT to the next.
	if p.narinfo, err = u.narinfo(info, p); err != nil {
		return packed{}, err
	}
	return p, nil
}

// narinfo is the signed .narinfo text of info, whose NAR went up as p.
func (u *Uploader) narinfo(info nix.PathInfo, p packed) (string, error) {
	c := u.cfg.Compression
	ni, err := nix.NarInfo(info, nix.Upload{URL: narKey(info, c), Compression: string(c), FileHash: p.fileHash, FileSize: p.fileSize}, append([]signature.SecretKey{u.cfg.Key}, u.cfg.Keys...)...)
	if err != nil {
		return "", err
	}
	return ni.String(), nil
}

// upload puts the signed .narinfo once the NAR is in (uploading it now if
// no push has started it); the caller has made sure every reference's
// .narinfo is in the store.
func (u *Uploader) upload(ctx context.Context, info nix.PathInfo, pl *plan) error {
	start := time.Now()
	c := u.cfg.Compression
	p, err := u.nar(ctx, info, pl.since(info.Path), false)
	if errors.Is(err, errCached) {
		return nil
	}
	if err != nil {
		return err
	}
	if p.listing != nil {
		// Before the .narinfo, as Nix writes it: a .narinfo never lacks its listing.
		if err := u.counted.Put(ctx, layout.ListingKey(info.Path), bytes.NewReader(p.listing), int64(len(p.listing)), "application/json"); err != nil {
			return fmt.Errorf("upload listing of %s: %w", info.Path, err)
		}
	}
	text := p.narinfo
	if err := u.counted.Put(ctx, layout.NarInfoKey(info.Path), strings.NewReader(text), int64(len(text)), "text/x-nix-narinfo"); err != nil {
		return fmt.Errorf("upload %s: %w", info.Path, err)
	}
	d := time.Since(start)
	w := writtenNAR{key: narKey(info, c), at: p.at, listing: p.listing != nil}
	pl.mu.Lock()
	pl.written[info.Path] = w
	pl.mu.Unlock()
	pl.lg.wrote(info, w)
	u.mu.Lock()
	delete(u.nars, info.Path)
	delete(u.planned, info.Path)
	u.sawAt(info.Path, u.cfg.Now()) // in the same step, so no push starts this NAR again
	u.stats.Paths++
	u.stats.NarBytes += int64(p.narSize)
	u.stats.FileBytes += int64(p.fileSize)
	u.stats.LastPush = time.Now()
	u.mu.Unlock()
	u.cfg.Log.Info().Str("path", info.Path).Uint64("nar_bytes", p.narSize).Uint64("file_bytes", p.fileSize).
		Int64("duration_ms", d.Milliseconds()).Msg("uploaded")
	return nil
}

// ensureCacheInfo writes nix-cache-info when the cache lacks it, before any
// other object, since Nix 2.8 clients cache it forever. It checks unless
// it has seen the file since cutoff.
func (u *Uploader) ensureCacheInfo(ctx context.Context, cutoff time.Time) error {
	u.infoMu.Lock()
	defer u.infoMu.Unlock()
	if !u.infoSeen.IsZero() && !u.infoSeen.Before(cutoff) {
		return nil
	}
	at := u.cfg.Now()
	has, err := u.counted.Has(ctx, layout.CacheInfoKey)
	if err == nil && !has {
		text := CacheInfo(u.cfg.StoreDir, u.cfg.Priority)
		err = u.counted.Put(ctx, layout.CacheInfoKey, strings.NewReader(text), int64(len(text)), "text/x-nix-cache-info")
	}
	if err != nil {
		return fmt.Errorf("nix-cache-info: %w", err)
	}
	u.infoSeen = at
	return nil
}

// CacheInfo is the text of a binary cache's nix-cache-info.
func CacheInfo(storeDir string, priority int) string {
	return fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", storeDir, priority)
}

// ForgetCache drops what the uploader knows the cache holds: after the
// store failed (a bucket deleted and made anew), it probes again.
func (u *Uploader) ForgetCache() {
	u.mu.Lock()
	clear(u.seen)
	u.mu.Unlock()
	u.infoMu.Lock()
	u.infoSeen = time.Time{}
	u.infoMu.Unlock()
}

// Store is the store the uploader pushes to.
func (u *Uploader) Store() store.Store { return u.cfg.Store }

// Traffic is what the requests to the store look like now (throttling,
// concurrency, upload rate and cap); false for a store that does not say
// (file://).
func (u *Uploader) Traffic() (store.Traffic, bool) {
	s, ok := store.As[store.TrafficReporter](u.cfg.Store)
	if !ok {
		return store.Traffic{}, false
	}
	return s.Traffic(), true
}
