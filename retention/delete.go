package retention

import (
	"context"
	"fmt"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"
	"golang.org/x/sync/errgroup"
)

// deleter deletes keys in parallel until its stop time.
type deleter struct {
	b        store.Bucket
	stop     time.Time
	deadline time.Time
	notify   func(string)
	nwaves   int // waves of .narinfos deleted
}

func (d *deleter) check() error {
	if time.Now().After(d.stop) {
		return fmt.Errorf("%w at %s: stopped before deleting more; run nixpush gc again (the next run lists anew)",
			ErrWindowPassed, d.deadline.Format(time.RFC3339))
	}
	return nil
}

// waves deletes the .narinfos of w wave by wave, each wave only once the
// one before it is gone; it fails on the paths of a reference cycle.
func (d *deleter) waves(ctx context.Context, g *Graph, w waves) error {
	start := 0
	for _, end := range w.ends {
		d.nwaves++
		keys := make([]string, end-start)
		for k, i := range w.order[start:end] {
			keys[k] = g.hashOf(i) + layout.NarInfoExt
		}
		if err := d.all(ctx, keys); err != nil {
			return err
		}
		start = end
	}
	if w.stuck > 0 {
		return fmt.Errorf("reference cycle among %d .narinfos; nothing more deleted", w.stuck)
	}
	return nil
}

// deleteBatch is how many keys one DeleteObjects request carries.
const deleteBatch = store.PageSize

// all deletes keys, in batches of a thousand, a few batches at once.
func (d *deleter) all(ctx context.Context, keys []string) error {
	return d.each(ctx, len(keys), func(k int) string { return keys[k] })
}

// each deletes the n keys key(0), ..., key(n-1), making each batch's keys
// only when it goes.
func (d *deleter) each(ctx context.Context, n int, key func(int) string) error {
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(4)
	for at := 0; at < n; {
		batch := make([]string, min(deleteBatch, n-at))
		for k := range batch {
			batch[k] = key(at + k)
		}
		at += len(batch)
		if err := d.check(); err != nil {
			eg.Wait()
			return err
		}
		if d.notify != nil {
			for _, k := range batch {
				d.notify(k)
			}
		}
		eg.Go(func() error {
			// The request itself may not outlive the deadline.
			rctx, cancel := context.WithDeadline(ectx, d.deadline)
			defer cancel()
			return d.b.DeleteMany(rctx, batch)
		})
	}
	return eg.Wait()
}
