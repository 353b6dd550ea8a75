package daemon

import (
	"context"
	"slices"
	"sync"
	"time"
)

// queueHealth is what the daemon knows of its queue's ability to commit.
// A full or failing state disk makes every write transaction fail; the
// daemon then keeps running, says so (status, STATUS=, metrics), holds in
// memory the paths it had to turn away, and queues them itself once a
// commit succeeds again.
type queueHealth struct {
	mu       sync.Mutex
	err      error     // the last commit's error; nil once one succeeds
	since    time.Time // when commits started failing
	failures int64     // failed commits since the daemon started
	held     map[string]bool
}

// failed records a failed commit.
func (h *queueHealth) failed(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		h.since = time.Now()
	}
	h.err = err
	h.failures++
}

// ok records a commit that succeeded. It reports whether commits had been
// failing until now.
func (h *queueHealth) ok() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	recovered := h.err != nil
	h.err = nil
	return recovered
}

// hold keeps paths the queue could not take.
func (h *queueHealth) hold(paths []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil {
		h.held = map[string]bool{}
	}
	for _, p := range paths {
		h.held[p] = true
	}
}

// release forgets held paths that the queue has now committed.
func (h *queueHealth) release(paths []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range paths {
		delete(h.held, p)
	}
}

// state returns the current error (nil when commits succeed), since when,
// the failure count and the held paths, sorted.
func (h *queueHealth) state() (err error, since time.Time, failures int64, held []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for p := range h.held {
		held = append(held, p)
	}
	slices.Sort(held)
	return h.err, h.since, h.failures, held
}

// write runs one queue write and records its outcome.
func (d *Daemon) write(fn func() error) error {
	err := fn()
	if err != nil {
		d.qhealth.failed(err)
		return err
	}
	if d.qhealth.ok() {
		d.log.Info().Msg("queue writes again")
	}
	return nil
}

// mustWrite runs a queue write until it commits or ctx is done, backing off
// between tries. It is for settling leased items: an item whose outcome
// could not be committed must not stay leased for ever, and returning it
// to the queue is itself a write that fails the same way. If the daemon
// stops first, the item is still leased in the file, and leased items
// return to the queue when it is opened again.
func (d *Daemon) mustWrite(ctx context.Context, what string, fn func() error) error {
	delay := 100 * time.Millisecond
	for logged := false; ; {
		err := d.write(fn)
		if err == nil || ctx.Err() != nil {
			return err
		}
		if !logged {
			d.log.Error().Err(err).Str("op", what).Msg("queue cannot write; retrying until it can (free space on the state disk)")
			logged = true
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// recoverQueue runs every spool interval: while commits fail it tries a small write
// so that recovery is seen even when nothing else writes, then queues the
// paths held in memory.
func (d *Daemon) recoverQueue(ctx context.Context) {
	err, _, _, held := d.qhealth.state()
	if err != nil {
		if d.write(func() error { return d.queue.Probe(ctx) }) != nil {
			return
		}
	}
	if len(held) == 0 {
		return
	}
	// Whether a held path came from a hook or from nixpush push (which
	// checks the whole closure again) is not kept: check them all again.
	if d.write(func() error { _, err := d.queue.EnqueueRecheck(ctx, held); return err }) == nil {
		d.qhealth.release(held)
		d.log.Info().Int("paths", len(held)).Msg("queued the paths held while the queue could not write")
	}
}
