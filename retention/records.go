package retention

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// putJSON writes the record v under key.
func putJSON(ctx context.Context, b store.Store, key string, v any) error {
	data, err := layout.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(ctx, key, strings.NewReader(string(data)), int64(len(data)), "application/json")
}

// WriteRoot records a push of p now (the daemon's side of the layout,
// here for tools and tests).
func WriteRoot(ctx context.Context, b store.Store, r layout.Root) error {
	h := nix.StoreHashPart(r.Path)
	if h == "" {
		return fmt.Errorf("root %q is not a store path", r.Path)
	}
	return putJSON(ctx, b, layout.RootPrefix+h, r)
}

// ErrNotCached reports a path whose .narinfo the cache lacks.
var ErrNotCached = errors.New("not in the cache")

// ErrPinOverlapped reports a pin written while a gc swept, which deleted
// the pinned path before it could see the pin.
var ErrPinOverlapped = errors.New("was deleted by a gc that overlapped this pin")

// pinPoll is how often AddPin reads the marker of a sweep it waits for.
const pinPoll = 2 * time.Second

// sweepSkew is the margin for clocks that disagree (the daemon's too).
const sweepSkew = 30 * time.Second

// AddPin pins p's closure under name, replacing a pin of that name. The
// path must be in the cache already: a pin of a path not pushed would keep
// nothing, silently. A sweep that listed the pins before this one went up
// may still delete p: when gc's marker says one may have run since p was
// found, AddPin waits for it to finish (polling the marker, at most until
// its deadline plus the skew margin) and checks p again; if it is gone,
// the pin is kept and the error says to push p again.
func AddPin(ctx context.Context, b store.Bucket, name, p string, now time.Time) error {
	return addPin(ctx, b, name, p, now, time.Now, store.Sleep)
}

func addPin(ctx context.Context, b store.Bucket, name, p string, now time.Time,
	clock func() time.Time, sleep func(context.Context, time.Duration) error) error {
	if err := layout.CheckPinName(name); err != nil {
		return err
	}
	h := nix.StoreHashPart(p)
	if h == "" {
		return fmt.Errorf("%q is not a store path", p)
	}
	checked := clock()
	has, err := b.Has(ctx, h+layout.NarInfoExt)
	if err != nil {
		return err
	}
	if !has {
		return fmt.Errorf("%s: %w (%s has no %s.narinfo); push it first: nixpush push --wait %s", p, ErrNotCached, b, h, p)
	}
	if err := putJSON(ctx, b, layout.PinPrefix+name, layout.Pin{Path: p, PinnedAt: now.UTC()}); err != nil {
		return err
	}
	// A sweep whose marker went up after the pin did lists it, and keeps
	// p. One that may have listed before, and deleted after the check
	// above, is waited for; then p is checked again.
	var first *layout.Sweep
	for {
		data, err := b.Get(ctx, layout.SweepKey)
		if errors.Is(err, store.ErrNotExist) {
			if first == nil {
				return nil // never swept
			}
			break // removed by hand or an old gc: the sweep is over
		}
		if err != nil {
			return fmt.Errorf("pinned %s as %s, but cannot read gc's marker %s to see whether a gc overlapped the pin: %w", p, name, layout.SweepKey, err)
		}
		s, err := layout.ParseSweep(data)
		if err != nil {
			break // unreadable: check p now
		}
		if first == nil {
			if !s.FinishedAt.IsZero() && s.FinishedAt.Add(sweepSkew).Before(checked) {
				return nil // finished before p was found
			}
			first = &s
		} else if !s.ListedAt.Equal(first.ListedAt) || s.Host != first.Host {
			break // a later sweep, which listed after the pin: that one is over
		}
		t := clock()
		if !s.FinishedAt.IsZero() || !t.Before(s.Deadline.Add(sweepSkew)) {
			break // it deletes nothing more
		}
		if err := sleep(ctx, min(pinPoll, s.Deadline.Add(sweepSkew).Sub(t))); err != nil {
			return fmt.Errorf("pinned %s as %s, but stopped waiting for the gc that overlaps the pin (%s); check it with nixpush verify: %w", p, name, first.Host, err)
		}
	}
	has, err = b.Has(ctx, h+layout.NarInfoExt)
	if err != nil {
		return fmt.Errorf("pinned %s as %s, but cannot check it is still there after a gc that overlapped the pin: %w", p, name, err)
	}
	if !has {
		return fmt.Errorf("%s %w; the pin is kept: push it again with nixpush push --wait %s", p, ErrPinOverlapped, p)
	}
	return nil
}

// ErrNoPin reports a pin name the bucket does not hold.
var ErrNoPin = errors.New("no such pin")

// RemovePin deletes the pin name.
func RemovePin(ctx context.Context, b store.Bucket, name string) error {
	if err := layout.CheckPinName(name); err != nil {
		return err
	}
	if _, err := b.Stat(ctx, layout.PinPrefix+name); err != nil {
		if errors.Is(err, store.ErrNotExist) {
			return fmt.Errorf("pin %q: %w in %s (nixpush pins lists them)", name, ErrNoPin, b)
		}
		return err
	}
	return b.Delete(ctx, layout.PinPrefix+name)
}

// Pins lists the bucket's pins by name.
func Pins(ctx context.Context, b store.Bucket) ([]layout.Pin, error) {
	var pins []layout.Pin
	err := b.List(ctx, layout.PinPrefix, func(o store.Object) error {
		data, err := b.Get(ctx, o.Key)
		if errors.Is(err, store.ErrNotExist) {
			return nil // unpinned meanwhile
		}
		if err != nil {
			return err
		}
		p, err := layout.ParsePin(strings.TrimPrefix(o.Key, layout.PinPrefix), data, o.LastModified)
		if err != nil {
			return err
		}
		pins = append(pins, p)
		return nil
	})
	slices.SortFunc(pins, func(a, b layout.Pin) int { return strings.Compare(a.Name, b.Name) })
	return pins, err
}
