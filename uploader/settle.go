package uploader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// ledger is what one push (or Ensure, or one log or realisation upload)
// relied on and wrote: what its check after writes (D2 in the package doc)
// must find again when a sweep may have deleted since. It outlives the
// rounds of a push: a round that uploads again what vanished adds to it.
type ledger struct {
	mu sync.Mutex
	// relied are paths whose .narinfo the push relied on without writing
	// it: the roots it found in the cache (references of what it wrote
	// are added at check time).
	relied map[string]bool
	// written are the paths whose .narinfo it wrote, with their NAR.
	written map[string]writtenNAR
	// keys are other objects it wrote under a key that may have been
	// there before (root records, build logs, realisations): when.
	keys map[string]time.Time
	// refs are the references of each written path.
	refs map[string][]string
}

// writtenNAR is the NAR of a .narinfo a push wrote: its key, when its
// upload began, and whether a NAR listing went with it.
type writtenNAR struct {
	key     string
	at      time.Time
	listing bool
}

func newLedger() *ledger {
	return &ledger{relied: make(map[string]bool), written: make(map[string]writtenNAR), keys: make(map[string]time.Time), refs: make(map[string][]string)}
}

func (l *ledger) rely(p string) {
	l.mu.Lock()
	l.relied[p] = true
	l.mu.Unlock()
}

func (l *ledger) wrote(info nix.PathInfo, w writtenNAR) {
	l.mu.Lock()
	l.written[info.Path] = w
	l.refs[info.Path] = info.References
	l.mu.Unlock()
}

func (l *ledger) wroteKey(key string, at time.Time) {
	l.mu.Lock()
	l.keys[key] = at
	l.mu.Unlock()
}

func (l *ledger) empty() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.relied) == 0 && len(l.written) == 0 && len(l.keys) == 0
}

// snapshot is a ledger as one check reads it.
type snapshot struct {
	relied  map[string]bool
	written map[string]writtenNAR
	keys    map[string]time.Time
	// since is the oldest sighting or write start it holds; unknown says
	// that some relied path has no sighting at all (another push found
	// it gone since, or the cache knowledge was dropped): it must be
	// checked whatever the marker says.
	since   time.Time
	unknown bool
}

// snapshot reads l with the uploader's sightings: the references of the
// written paths that this push did not write (nor the filter leaves out)
// are relied on too.
func (u *Uploader) snapshot(l *ledger) snapshot {
	l.mu.Lock()
	s := snapshot{relied: make(map[string]bool, len(l.relied)), written: make(map[string]writtenNAR, len(l.written)), keys: make(map[string]time.Time, len(l.keys))}
	for p := range l.relied {
		s.relied[p] = true
	}
	for p, w := range l.written {
		s.written[p] = w
		for _, r := range l.refs[p] {
			s.relied[r] = true
		}
	}
	for k, at := range l.keys {
		s.keys[k] = at
	}
	l.mu.Unlock()
	older := func(t time.Time) {
		if s.since.IsZero() || t.Before(s.since) {
			s.since = t
		}
	}
	for _, w := range s.written {
		older(w.at)
	}
	for _, at := range s.keys {
		older(at)
	}
	u.mu.Lock()
	for r := range s.relied {
		if _, ok := s.written[r]; ok || u.skipped[r] {
			// Written by this push (checked as such), or filtered: never
			// in this cache, nothing relies on it being there.
			delete(s.relied, r)
			continue
		}
		t, ok := u.seen[r]
		if !ok || t.IsZero() {
			// No sighting: a zero must not lose to the next reference's
			// time (it would, taken as "unset"): it forces the check.
			s.unknown = true
			continue
		}
		older(t)
	}
	u.mu.Unlock()
	return s
}

// settle is D2 and D3 of the package doc for what l holds: once the
// writes are done, it reads gc's marker and, if a sweep may have deleted
// since the oldest sighting or write l relies on, waits for that sweep to
// finish, checks that everything l relied on and wrote is still there,
// and has redo upload again what is gone (which adds to l), round after
// round until a check finds nothing missing.
func (u *Uploader) settle(ctx context.Context, l *ledger, redo func(again []string, force map[string]bool, keys []string) error) error {
	if l.empty() {
		return nil
	}
	for round := 0; ; round++ {
		m, err := u.readMarker(ctx)
		if err != nil {
			return err
		}
		s := u.snapshot(l)
		if !s.unknown && !u.sweptSince(m, s.since) {
			return nil
		}
		if err := u.awaitSweep(ctx, m); err != nil {
			return err
		}
		again, force, keys, err := u.recheck(ctx, s)
		if err != nil {
			return err
		}
		if len(again) == 0 && len(keys) == 0 {
			return nil
		}
		u.cfg.Log.Warn().Strs("paths", again).Strs("objects", keys).Int("round", round+1).
			Msg("objects vanished from the cache while a push relied on them (a gc or repair swept meanwhile); uploading them again")
		if round+1 >= maxRounds {
			return fmt.Errorf("%d objects vanished from the cache again after %d rounds of uploading them (a gc under way?); will retry", len(again)+len(keys), maxRounds)
		}
		if err := redo(again, force, keys); err != nil {
			return err
		}
	}
}

// recheck checks that what s relied on and wrote is in the store: the
// .narinfos relied on; the .narinfos written, their NARs and listings;
// the other objects written. It returns the paths to upload again (those
// written whose .narinfo, NAR or listing is gone are forced: uploaded
// again whatever the cache says of their .narinfo) and the other keys to
// write again.
func (u *Uploader) recheck(ctx context.Context, s snapshot) (again []string, force map[string]bool, keys []string, err error) {
	var top, nars, other []string
	for r := range s.relied {
		top = append(top, layout.NarInfoKey(r))
	}
	for p, w := range s.written {
		top = append(top, layout.NarInfoKey(p))
		if w.listing {
			top = append(top, layout.ListingKey(p))
		}
		nars = append(nars, w.key)
	}
	for k := range s.keys {
		other = append(other, k)
	}
	at := u.cfg.Now()
	gone, failed := u.absent(ctx, top, nars)
	gone2, failed2 := u.absent(ctx, nil, other)
	for k, v := range gone2 {
		gone[k] = v
	}
	for k, e := range failed2 {
		failed[k] = e
	}
	for k, e := range failed {
		return nil, nil, nil, fmt.Errorf("check what the push relied on and wrote (%s): %w", k, e)
	}
	force = make(map[string]bool)
	u.mu.Lock()
	defer u.mu.Unlock()
	for r := range s.relied {
		if gone[layout.NarInfoKey(r)] {
			u.goneAt(r, at)
			again = append(again, r)
		} else {
			u.sawAt(r, at)
		}
	}
	for p, w := range s.written {
		if gone[layout.NarInfoKey(p)] || gone[w.key] || (w.listing && gone[layout.ListingKey(p)]) {
			delete(u.seen, p)
			force[p] = true
			again = append(again, p)
		} else {
			u.sawAt(p, at)
		}
	}
	for _, k := range other {
		if gone[k] {
			keys = append(keys, k)
		}
	}
	return again, force, keys, nil
}

// readMarker reads gc's marker: nil when the store has none (no gc has
// ever begun a sweep of it: gc leaves its marker up). A marker gone after
// this uploader saw one (removed by an older gc, or by hand) comes back
// as an unfinished sweep whose deadline has passed: a re-check, then. It
// also checks the uploader's settings against the sweep's (see
// SettingsProblem).
func (u *Uploader) readMarker(ctx context.Context) (*layout.Sweep, error) {
	b, err := u.counted.Get(ctx, layout.SweepKey)
	if errors.Is(err, store.ErrNotExist) {
		if u.markerSeen.Load() {
			if !u.markerGone.Swap(true) {
				u.cfg.Log.Warn().Str("marker", layout.SweepKey).
					Msg("gc's marker is gone (a gc older than this daemon removes it, or it was deleted by hand): checking what each push relied on until one is up again")
			}
			return &layout.Sweep{Deadline: time.Unix(1, 0)}, nil
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the gc marker %s: %w", layout.SweepKey, err)
	}
	u.markerSeen.Store(true)
	u.markerGone.Store(false)
	var m layout.Sweep
	if err := json.Unmarshal(b, &m); err != nil || m.Deadline.IsZero() {
		return nil, fmt.Errorf("the gc marker %s is not one (%v); a gc may be deleting: if none is, run nixpush gc, which replaces it", layout.SweepKey, err)
	}
	u.checkSettings(&m)
	return &m, nil
}

// awaitSweep waits, when m is a sweep still under way, until it says it
// finished or its deadline (plus the skew margin) has passed: after that,
// that sweep deletes nothing more, and whatever it deleted shows. It reads
// the marker every PollSweep meanwhile, so a gc that finishes in seconds
// holds a push up for seconds. Past Config.MaxSweepWait it fails, to be
// retried. A push about to wait first calls the context's OnSweepWait
// function (the daemon frees its push slot for other work).
func (u *Uploader) awaitSweep(ctx context.Context, m *layout.Sweep) error {
	begun := u.cfg.Now()
	told := false
	for {
		if m == nil || !m.FinishedAt.IsZero() {
			return nil
		}
		now := u.cfg.Now()
		left := m.Deadline.Add(u.skew()).Sub(now)
		if left <= 0 {
			return nil
		}
		if now.Sub(begun)+min(left, u.cfg.PollSweep) > u.cfg.MaxSweepWait {
			return fmt.Errorf("a %s from %s may delete until %s, and this push has waited %s of at most %s (--max-sweep-wait); will retry",
				m.Sweeper(), m.Host, m.Deadline.Format(time.RFC3339), now.Sub(begun).Round(time.Second), u.cfg.MaxSweepWait)
		}
		if !told {
			told = true
			u.cfg.Log.Info().Str("gc_host", m.Host).Time("deadline", m.Deadline).
				Msg("a gc is sweeping the cache: waiting for it to finish before checking what this push relied on")
			if f, ok := ctx.Value(sweepWaitKey{}).(func()); ok {
				f()
			}
		}
		if err := u.cfg.Sleep(ctx, min(left, u.cfg.PollSweep)); err != nil {
			return err
		}
		var err error
		if m, err = u.readMarker(ctx); err != nil {
			return err
		}
	}
}

type sweepWaitKey struct{}

// OnSweepWait returns a context whose pushes call f (once each) when they
// begin to wait for a gc sweep to finish.
func OnSweepWait(ctx context.Context, f func()) context.Context {
	return context.WithValue(ctx, sweepWaitKey{}, f)
}

func (u *Uploader) skew() time.Duration { return u.cfg.ClockSkew }

// sweptSince reports whether a gc may have deleted anything since t, by
// the marker m read after that: unless no gc has ever swept (m is nil) or
// the last one finished (plus the skew margin) before t, it may have.
func (u *Uploader) sweptSince(m *layout.Sweep, t time.Time) bool {
	if m == nil {
		return false
	}
	return m.FinishedAt.IsZero() || !m.FinishedAt.Add(u.skew()).Before(t)
}

// checkSettings compares the uploader's settings with those of the sweep
// m (gc writes its own into its marker): a trust window at or above gc's
// grace period, or above its --older-than, lets the uploader trust a path
// gc may collect; a sweep window above the wait limit fails every push
// that meets such a sweep. While they do not fit, the uploader says so
// (SettingsProblem, the log) and trusts nothing it remembers.
func (u *Uploader) checkSettings(m *layout.Sweep) {
	var probs []string
	secs := func(n int64) time.Duration { return time.Duration(n) * time.Second }
	trust := u.cfg.TrustCacheFor
	if g := secs(m.GraceSeconds); g > 0 && trust >= g {
		probs = append(probs, fmt.Sprintf("--trust-cache-for %s is not below gc's --grace %s", trust, g))
	}
	if o := secs(m.OlderThanSeconds); o > 0 && trust > o {
		probs = append(probs, fmt.Sprintf("--trust-cache-for %s is above gc's --older-than %s", trust, o))
	}
	if w := secs(m.WindowSeconds); w > 0 && w+u.skew() > u.cfg.MaxSweepWait {
		probs = append(probs, fmt.Sprintf("gc's --sweep-window %s (plus %s for clocks) is above --max-sweep-wait %s", w, u.skew(), u.cfg.MaxSweepWait))
	}
	p := strings.Join(probs, "; ")
	if m.GraceSeconds == 0 && m.OlderThanSeconds == 0 && m.WindowSeconds == 0 {
		return // a sweep that did not say (repair, an older gc): the last word stands
	}
	old := u.problem.Swap(&p)
	if old != nil && *old == p {
		return
	}
	if p != "" {
		u.cfg.Log.Warn().Str("gc_host", m.Host).Str("problem", p).
			Msg("this daemon's settings do not fit gc's: checking every path of every push until they do")
	} else if old != nil && *old != "" {
		u.cfg.Log.Info().Msg("this daemon's settings fit gc's again")
	}
}

// SettingsProblem says how the uploader's settings do not fit those of
// the last gc that swept its store ("" when they do, or no gc said).
// While they do not, every push checks every path of its closures.
func (u *Uploader) SettingsProblem() string {
	if p := u.problem.Load(); p != nil {
		return *p
	}
	return ""
}
