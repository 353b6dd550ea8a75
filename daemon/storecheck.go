package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// How often the store is checked again while it fails, and how long one
// check may take.
const (
	storeCheckMin     = time.Second
	storeCheckMax     = 30 * time.Second
	storeCheckTimeout = 20 * time.Second
)

// storeHealth is what the daemon knows of its store: checked at start and
// again whenever a push meets a store error, until a check passes. Pushes
// wait while it fails, so queued items keep their attempts.
type storeHealth struct {
	mu        sync.Mutex
	ok        bool
	err       *store.StoreError
	checkedAt time.Time
	okCh      chan struct{}      // closed while ok
	logged    store.StoreProblem // the problem last logged, until the store recovers
	trouble   chan struct{}      // a push met a store error (buffered, 1)
}

func newStoreHealth() *storeHealth {
	return &storeHealth{okCh: make(chan struct{}), trouble: make(chan struct{}, 1)}
}

// ready returns a channel closed while the store is usable.
func (h *storeHealth) ready() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.okCh
}

// set records a check's outcome (err nil: passed). It reports whether the
// store was usable before, and whether err is a problem not yet logged
// since the store last recovered (so each cause is logged once, not once
// per failing path).
func (h *storeHealth) set(err *store.StoreError, at time.Time) (wasOK, log bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	wasOK = h.ok
	h.err, h.checkedAt = err, at
	if err == nil {
		h.logged = ""
		if !h.ok {
			h.ok = true
			close(h.okCh)
		}
		return wasOK, false
	}
	if h.ok {
		h.ok = false
		h.okCh = make(chan struct{})
	}
	log = err.Problem != h.logged
	h.logged = err.Problem
	return wasOK, log
}

func (h *storeHealth) status() api.StoreCheck {
	h.mu.Lock()
	defer h.mu.Unlock()
	sc := api.StoreCheck{OK: h.ok}
	if h.err != nil {
		sc.Error, sc.Fix = h.err.Error(), h.err.Fix()
	}
	if !h.checkedAt.IsZero() {
		t := h.checkedAt
		sc.CheckedAt = &t
	}
	return sc
}

// storeTrouble records a store error a push met: pushes pause and the
// store is checked again.
func (d *Daemon) storeTrouble(err error) {
	se := store.AsStoreError(err)
	if se == nil {
		return
	}
	if _, log := d.health.set(se, time.Now()); log {
		d.log.Error().Err(se).Str("fix", se.Fix()).Str("store", d.up.Store().String()).
			Msg("store failing; pushes wait until the store check passes")
	}
	select {
	case d.health.trouble <- struct{}{}:
	default:
	}
}

// watchStore checks the store at start, and again after each store error
// a push meets until a check passes. When a check passes after failing (or
// at start), items that failed for the store's configuration are queued
// again and those waiting out a backoff go at once.
func (d *Daemon) watchStore(ctx context.Context) error {
	delay := storeCheckMin
	heals := 0 // heals with no upload since: a cause the check cannot see
	var progress int64 = -1
	for {
		cctx, cancel := context.WithTimeout(ctx, storeCheckTimeout)
		results := uploader.Preflight(cctx, d.up.Store(), uploader.PreflightOptions{StoreDir: d.storeDir, WriteCacheInfo: true})
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		se := uploader.PreflightError(results)
		wasOK, log := d.health.set(se, time.Now())
		switch {
		case se != nil:
			if log {
				d.log.Error().Err(se).Str("fix", se.Fix()).Str("store", d.up.Store().String()).
					Msg("store check failed; pushes wait until it passes (checking again)")
			}
		case !wasOK:
			for _, r := range results {
				if r.Note != "" {
					d.log.Info().Str("check", r.Name).Str("note", r.Note).Msg("store check")
				}
			}
			d.up.ForgetCache() // what the cache held may be gone (a bucket made anew)
			n, err := d.queue.Heal(ctx, store.FailureClassStore)
			if err != nil {
				d.log.Error().Err(err).Msg("queue failed store items again")
			}
			d.log.Info().Str("store", d.up.Store().String()).Int("requeued", n).Msg("store check passed")
			if st := d.up.Stats(); st.Paths+st.Skipped == progress {
				heals++
			} else {
				heals = 0
				progress = st.Paths + st.Skipped
			}
			delay = storeCheckMin
		}
		if se != nil {
			// Checking again while failing: 1s, 2s, 4s … 30s.
			if !sleep(ctx, delay) {
				return nil
			}
			delay = min(2*delay, storeCheckMax)
			continue
		}
		select {
		case <-d.health.trouble:
		case <-ctx.Done():
			return nil
		}
		// A store that passes the check while pushes keep failing (a
		// policy on some prefixes only): check less and less often.
		if !sleep(ctx, min(storeCheckMin<<min(heals, 8), 5*time.Minute)) {
			return nil
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
