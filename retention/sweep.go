package retention

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"
)

// sweep is a run that deletes: gc's, or verify --repair's.
type sweep struct {
	b      store.Bucket
	marker layout.Sweep
	etag   string    // of the marker this run wrote
	now    time.Time // the store's clock when the marker went up
	window time.Duration
	single bool // SingleGC: plain reads and writes of the marker
}

// seconds is d in whole seconds, at least 1 for a positive d.
func seconds(d time.Duration) int64 {
	if d > 0 && d < time.Second {
		return 1
	}
	return int64(d / time.Second)
}

// startSweep puts the marker m up, with its listing time and deadline, as
// one atomic step: it reads the marker with its ETag, refuses while it is
// live (unfinished and before its deadline), and writes its own on the
// condition that the marker is still the one it read (or still absent).
// A write whose condition fails lost the race to another sweep: it
// refuses too. Before writing, it checks that the credentials may delete
// and that the store honours the condition (unless single).
func startSweep(ctx context.Context, b store.Bucket, m layout.Sweep, window time.Duration, single bool) (*sweep, error) {
	if window <= 0 {
		window = DefaultWindow
	}
	now := time.Now()
	data, etag, err := b.GetTagged(ctx, layout.SweepKey)
	switch {
	case errors.Is(err, store.ErrNotExist):
		etag = "" // never swept: create it only if it is still absent
	case err != nil:
		return nil, fmt.Errorf("read the gc marker %s: %w", layout.SweepKey, err)
	default:
		// Unreadable, finished, or stale (a crashed run's, past its
		// deadline): replaced below, if still the same.
		if s, err := layout.ParseSweep(data); err == nil && s.FinishedAt.IsZero() && now.Before(s.Deadline) {
			return nil, sweepRunning(s)
		}
	}
	if err := probeDelete(ctx, b, single); err != nil {
		return nil, err
	}
	m.ListedAt, m.Deadline, m.FinishedAt = now.UTC(), now.Add(window).UTC(), time.Time{}
	sw := &sweep{b: b, window: window, now: now, marker: m, single: single}
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	body = append(body, '\n')
	if single {
		err = b.Put(ctx, layout.SweepKey, bytes.NewReader(body), int64(len(body)), "application/json")
	} else {
		sw.etag, err = b.PutIf(ctx, layout.SweepKey, body, "application/json", etag)
	}
	if errors.Is(err, store.ErrConditionFailed) {
		// Another sweep wrote its marker between this one's read and
		// write: it runs, this one does not.
		if data, _, err := b.GetTagged(ctx, layout.SweepKey); err == nil {
			if s, err := layout.ParseSweep(data); err == nil {
				return nil, sweepRunning(s)
			}
		}
		return nil, fmt.Errorf("%w: its marker %s went up between this run's read and write of it", ErrSweepRunning, layout.SweepKey)
	}
	if err != nil {
		return nil, fmt.Errorf("write the gc marker %s: %w", layout.SweepKey, err)
	}
	// Ages are measured on the store's clock: the marker's time, as a
	// listing gives it (to the millisecond; a HEAD's Last-Modified is
	// truncated to the second).
	b.List(ctx, layout.SweepKey, func(o store.Object) error {
		if o.Key == layout.SweepKey && !o.LastModified.IsZero() {
			sw.now = o.LastModified
		}
		return nil
	})
	return sw, nil
}

// sweepRunning is the refusal to sweep beside s.
func sweepRunning(s layout.Sweep) error {
	kind := s.Kind
	if kind == "" {
		kind = "gc"
	}
	// Not "remove the marker": daemons would read its absence as "no gc
	// ever swept" and not check what that gc may have deleted.
	return fmt.Errorf("%w (%s on host %q, listed at %s): run gc again after %s (a run that crashed deletes nothing after it either)",
		ErrSweepRunning, kind, s.Host, s.ListedAt.Format(time.RFC3339), s.Deadline.Format(time.RFC3339))
}

// end says in the marker that this run deletes nothing more. It leaves
// the marker up: daemons read "no marker" as "no gc has ever swept", and
// "finished at" as "nothing seen since then was deleted". It writes only
// over its own marker (If-Match its ETag): another run replaces a marker
// only once its deadline has passed, after which this one deleted
// nothing, and that run's marker must stay. If the write fails, the
// marker stays as it was, and daemons wait for its deadline.
func (sw *sweep) end(ctx context.Context) error {
	// Not ctx: an interrupted run still says it stopped deleting.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	m := sw.marker
	m.FinishedAt = time.Now().UTC()
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	body = append(body, '\n')
	if sw.single {
		err = sw.b.Put(dctx, layout.SweepKey, bytes.NewReader(body), int64(len(body)), "application/json")
	} else {
		_, err = sw.b.PutIf(dctx, layout.SweepKey, body, "application/json", sw.etag)
	}
	if errors.Is(err, store.ErrConditionFailed) {
		return fmt.Errorf("the marker %s was replaced by another run after this one's deadline %s; left as it is (this run deleted nothing after its deadline)",
			layout.SweepKey, sw.marker.Deadline.Format(time.RFC3339))
	}
	if err != nil {
		return fmt.Errorf("could not mark %s finished (daemons wait for its deadline %s instead): %v", layout.SweepKey, sw.marker.Deadline.Format(time.RFC3339), err)
	}
	return nil
}

// deleter deletes until the marker's deadline, less a margin for the
// request in flight.
func (sw *sweep) deleter(notify func(string)) *deleter {
	margin := min(sw.window/10, 30*time.Second)
	return &deleter{b: sw.b, stop: sw.marker.Deadline.Add(-margin), deadline: sw.marker.Deadline, notify: notify}
}

// probeDelete writes an object of its own and deletes it, so credentials
// that cannot delete fail before anything is deleted. Unless single, it
// writes it with If-None-Match: * twice: the second write must fail, or
// the store ignores the condition the marker's exclusion rests on.
func probeDelete(ctx context.Context, b store.Bucket, single bool) error {
	var r [8]byte
	rand.Read(r[:])
	key := layout.GCProbePrefix + hex.EncodeToString(r[:])
	body := []byte("probe\n")
	var err error
	if single {
		err = b.Put(ctx, key, bytes.NewReader(body), int64(len(body)), "text/plain")
	} else {
		_, err = b.PutIf(ctx, key, body, "text/plain", "")
	}
	if err != nil {
		if denied(err) {
			return fmt.Errorf("gc needs s3:PutObject on %s* for its marker: %w", layout.Prefix, err)
		}
		if !single {
			return fmt.Errorf("%s: a conditional write (If-None-Match: *) of %s failed: %w; if the store cannot do conditional writes and only one gc or repair ever runs on it, pass --single-gc", b, key, err)
		}
		return err
	}
	var ignored error
	if !single {
		_, err := b.PutIf(ctx, key, body, "text/plain", "")
		switch {
		case err == nil:
			ignored = fmt.Errorf("%s: %w: two gcs, or a gc and verify --repair, could sweep at once; use a store that honours If-None-Match and If-Match (MinIO, AWS S3), or pass --single-gc if only one gc or repair ever runs on this store",
				b, ErrNoConditionalWrites)
		case !errors.Is(err, store.ErrConditionFailed):
			return fmt.Errorf("%s: a second conditional write of %s: %w", b, key, err)
		}
	}
	if err := b.Delete(ctx, key); err != nil {
		if ignored != nil {
			return ignored
		}
		if denied(err) {
			return fmt.Errorf("%s: %w; give gc its own account with the gc policy (nixpush init --print-policy prints it); %s is left behind: %v",
				b, ErrNoDeletePermission, key, err)
		}
		return err
	}
	return ignored
}

// denied reports an error of credentials that may not do what was asked.
func denied(err error) bool {
	if se := store.AsStoreError(err); se != nil && se.Problem == store.Denied {
		return true
	}
	return errors.Is(err, fs.ErrPermission)
}
