package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// The bucket layout nixpush keeps beside the cache, under a prefix Nix
// never reads. The daemon writes roots; gc, pin and unpin write the rest.
const (
	// Prefix holds everything nixpush keeps in the bucket besides the cache.
	Prefix = "nixpush/"
	// RootPrefix + <hashpart>: a Root; RootBatchPrefix + <time>-<random>:
	// a RootBatch (the daemon writes both: see the uploader package).
	RootPrefix      = uploader.RootPrefix
	RootBatchPrefix = uploader.RootBatchPrefix
	// PinPrefix + <name>: a Pin.
	PinPrefix = "nixpush/pins/"
	// SweepKey is gc's marker: a Sweep.
	SweepKey = uploader.SweepKey
	// probePrefix is where gc tests its delete permission.
	probePrefix = "nixpush/gc/probe-"
)

// Root records the last push of a path handed to a daemon.
type Root = uploader.RootRecord

// RootBatch records a push of several roots at once.
type RootBatch = uploader.RootBatch

// Pin keeps a path's closure in the cache whatever its age.
type Pin struct {
	Name     string    `json:"-"`
	Path     string    `json:"path"`
	PinnedAt time.Time `json:"pinned_at"`
}

// Sweep is gc's marker; how daemons read it is the uploader package's.
type Sweep = uploader.SweepMarker

var pinName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)

// CheckPinName refuses a name that cannot be an object name of its own.
func CheckPinName(name string) error {
	if !pinName.MatchString(name) {
		return fmt.Errorf("pin name %q: use letters, digits and . _ + - (up to 128), starting with a letter or digit", name)
	}
	return nil
}

// hashPart is the 32-character hash of a store path or of its base name.
func hashPart(p string) string {
	b := path.Base(p)
	if len(b) < 33 || b[32] != '-' {
		return ""
	}
	return b[:32]
}

func putJSON(ctx context.Context, b store.Store, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	data = append(data, '\n')
	return b.Put(ctx, key, strings.NewReader(string(data)), int64(len(data)), "application/json")
}

// WriteRoot records a push of p now (the daemon's side of the layout,
// here for tools and tests).
func WriteRoot(ctx context.Context, b store.Store, r Root) error {
	h := hashPart(r.Path)
	if h == "" {
		return fmt.Errorf("root %q is not a store path", r.Path)
	}
	return putJSON(ctx, b, RootPrefix+h, r)
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
	if err := CheckPinName(name); err != nil {
		return err
	}
	h := hashPart(p)
	if h == "" {
		return fmt.Errorf("%q is not a store path", p)
	}
	checked := clock()
	has, err := b.Has(ctx, h+".narinfo")
	if err != nil {
		return err
	}
	if !has {
		return fmt.Errorf("%s: %w (%s has no %s.narinfo); push it first: nixpush push --wait %s", p, ErrNotCached, b, h, p)
	}
	if err := putJSON(ctx, b, PinPrefix+name, Pin{Path: p, PinnedAt: now.UTC()}); err != nil {
		return err
	}
	// A sweep whose marker went up after the pin did lists it, and keeps
	// p. One that may have listed before, and deleted after the check
	// above, is waited for; then p is checked again.
	var first *Sweep
	for {
		data, err := b.Get(ctx, SweepKey)
		if errors.Is(err, store.ErrNotExist) {
			if first == nil {
				return nil // never swept
			}
			break // removed by hand or an old gc: the sweep is over
		}
		if err != nil {
			return fmt.Errorf("pinned %s as %s, but cannot read gc's marker %s to see whether a gc overlapped the pin: %w", p, name, SweepKey, err)
		}
		s, err := parseSweep(data)
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
	has, err = b.Has(ctx, h+".narinfo")
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
	if err := CheckPinName(name); err != nil {
		return err
	}
	if _, err := b.Stat(ctx, PinPrefix+name); err != nil {
		if errors.Is(err, store.ErrNotExist) {
			return fmt.Errorf("pin %q: %w in %s (nixpush pins lists them)", name, ErrNoPin, b)
		}
		return err
	}
	return b.Delete(ctx, PinPrefix+name)
}

// Pins lists the bucket's pins by name.
func Pins(ctx context.Context, b store.Bucket) ([]Pin, error) {
	var pins []Pin
	err := b.List(ctx, PinPrefix, func(o store.Object) error {
		data, err := b.Get(ctx, o.Key)
		if errors.Is(err, store.ErrNotExist) {
			return nil // unpinned meanwhile
		}
		if err != nil {
			return err
		}
		p, err := parsePin(strings.TrimPrefix(o.Key, PinPrefix), data, o.LastModified)
		if err != nil {
			return err
		}
		pins = append(pins, p)
		return nil
	})
	slices.SortFunc(pins, func(a, b Pin) int { return strings.Compare(a.Name, b.Name) })
	return pins, err
}

func parsePin(name string, data []byte, mod time.Time) (Pin, error) {
	var p Pin
	if err := json.Unmarshal(data, &p); err != nil || hashPart(p.Path) == "" {
		return Pin{}, fmt.Errorf("pin %s%s is not a pin record (%v); fix it or remove it with nixpush unpin %s", PinPrefix, name, err, name)
	}
	p.Name = name
	if p.PinnedAt.IsZero() {
		p.PinnedAt = mod
	}
	return p, nil
}

func parseRoot(key string, data []byte, mod time.Time) (Root, bool) {
	var r Root
	if err := json.Unmarshal(data, &r); err != nil || hashPart(r.Path) != strings.TrimPrefix(key, RootPrefix) {
		return Root{}, false
	}
	if r.PushedAt.IsZero() {
		r.PushedAt = mod
	}
	return r, true
}

func parseRootBatch(data []byte, mod time.Time) (RootBatch, bool) {
	var r RootBatch
	if err := json.Unmarshal(data, &r); err != nil {
		return RootBatch{}, false
	}
	if r.PushedAt.IsZero() {
		r.PushedAt = mod
	}
	return r, true
}
