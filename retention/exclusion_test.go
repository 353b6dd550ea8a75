package retention

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// These tests interleave a sweep with another run at a fixed step, on a
// Bucket that stops there. They use only what the store offered before
// the sweep became exclusive, so each fails on the code that let two
// sweeps run or lost what was written during one.

// steps is a Bucket that runs hooks at the steps of a sweep: after a read
// of gc's marker, at the listing of pending uploads (after the walk,
// before the deletions), at the first deletion.
type steps struct {
	store.Bucket
	afterMarkerRead func(n int) // n: the how-manieth read of the marker
	beforeUploads   func()
	beforeDelete    func()
	reads           atomic.Int32
	uploadsOnce     sync.Once
	deleteOnce      sync.Once
}

func (s *steps) marker(key string) {
	if key == layout.SweepKey && s.afterMarkerRead != nil {
		s.afterMarkerRead(int(s.reads.Add(1)))
	}
}

func (s *steps) Get(ctx context.Context, key string) ([]byte, error) {
	data, err := s.Bucket.Get(ctx, key)
	s.marker(key)
	return data, err
}

func (s *steps) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	data, etag, err := s.Bucket.GetTagged(ctx, key)
	s.marker(key)
	return data, etag, err
}

func (s *steps) ListUploads(ctx context.Context, fn func(store.PendingUpload) error) error {
	if s.beforeUploads != nil {
		s.uploadsOnce.Do(s.beforeUploads)
	}
	return s.Bucket.ListUploads(ctx, fn)
}

func (s *steps) DeleteMany(ctx context.Context, keys []string) error {
	if s.beforeDelete != nil {
		s.deleteOnce.Do(s.beforeDelete)
	}
	return s.Bucket.DeleteMany(ctx, keys)
}

// bothRead is an afterMarkerRead that holds each of the first two reads of
// the marker until both have happened: two runs that each read "no live
// sweep" before either writes its marker.
func bothRead(t *testing.T) func(int) {
	var wg sync.WaitGroup
	wg.Add(2)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return func(n int) {
		if n > 2 {
			return
		}
		wg.Done()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("read %d of the marker: the other run never read it", n)
		}
	}
}

// oneRefused checks that of two runs' errors exactly one is a refusal
// because the other sweeps, and the other nil.
func oneRefused(t *testing.T, what string, a, b error) {
	t.Helper()
	refused := 0
	for _, err := range []error{a, b} {
		switch {
		case errors.Is(err, ErrSweepRunning):
			refused++
			t.Logf("refused: %v", err)
		case err != nil:
			t.Fatalf("%s: %v", what, err)
		}
	}
	if refused != 1 {
		t.Fatalf("%s, both reading the marker before either wrote it: %d refused (errors %v, %v); want exactly one to sweep", what, refused, a, b)
	}
}

// TestTwoGCsRace: two gcs that both read "no marker" before either
// writes one: only one sweeps, the other refuses.
func TestTwoGCsRace(t *testing.T) {
	f := newFixture(t)
	f.add("base")
	f.add("dead", "base")
	f.age(time.Now().Add(-48 * time.Hour))
	b := &steps{Bucket: f.b, afterMarkerRead: bothRead(t)}
	opts := GCOptions{OlderThan: 24 * time.Hour, Grace: time.Hour, Host: "one"}
	var errs [2]error
	var wg sync.WaitGroup
	for k := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := opts
			o.Host = fmt.Sprint("gc-", k)
			_, errs[k] = GC(context.Background(), b, o)
		}()
	}
	wg.Wait()
	oneRefused(t, "two gcs", errs[0], errs[1])
}

// TestGCBesideRepair: a gc and verify --repair that both read the marker
// before either writes it: only one sweeps.
func TestGCBesideRepair(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("base")
	broken := f.add("broken", "base")
	f.add("dead")
	f.root("broken", time.Now())
	f.age(time.Now().Add(-48 * time.Hour))
	// broken loses its NAR: verify finds it, repair deletes its .narinfo.
	data, err := f.b.Get(ctx, layout.NarInfoKey(broken))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := nix.ParseNarInfo(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.b.Delete(ctx, ni.URL); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil || rep.Broken != 1 {
		t.Fatalf("verify: %v, %+v", err, rep)
	}
	b := &steps{Bucket: f.b, afterMarkerRead: bothRead(t)}
	var gcErr, repairErr error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, gcErr = GC(ctx, b, GCOptions{OlderThan: 24 * time.Hour, Grace: time.Hour, Host: "gc"})
	}()
	go func() {
		defer wg.Done()
		_, repairErr = Repair(ctx, b, rep, RepairOptions{Host: "repair"})
	}()
	wg.Wait()
	oneRefused(t, "gc beside repair", gcErr, repairErr)
}

// TestPinAfterWalkSurvives: a pin written after gc's walk, before its
// deletions, keeps its path's closure.
func TestPinAfterWalkSurvives(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("base")
	f.add("lib", "base")
	app := f.add("app", "lib")
	f.age(time.Now().Add(-48 * time.Hour))
	b := &steps{Bucket: f.b, beforeUploads: func() {
		// Another host's nixpush pin: it found app in the cache and
		// writes its pin now.
		if err := putJSON(ctx, f.b, layout.PinPrefix+"late", layout.Pin{Path: app, PinnedAt: time.Now()}); err != nil {
			t.Error(err)
		}
	}}
	rep, err := GC(ctx, b, GCOptions{OlderThan: 24 * time.Hour, Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"app", "lib", "base"} {
		if !f.has(name) {
			t.Errorf("%s deleted, though pinned (its closure) during the sweep; gc deleted %v", name, rep.Deleted.Paths)
		}
	}
	if v, err := Verify(ctx, f.b, VerifyOptions{}); err != nil || !v.Whole() {
		t.Fatalf("verify after: %v, %+v", err, v.Problems)
	}
}

// TestRootRewrittenAfterWalk: a path already cached, pushed again after
// gc's walk (its root record rewritten in place with a new pushed_at),
// keeps its closure and its record.
func TestRootRewrittenAfterWalk(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("base")
	app := f.add("app", "base")
	f.root("app", time.Now().Add(-48*time.Hour))
	f.age(time.Now().Add(-48 * time.Hour))
	pushed := time.Now().UTC().Truncate(time.Second)
	b := &steps{Bucket: f.b, beforeUploads: func() {
		if err := WriteRoot(ctx, f.b, layout.Root{Path: app, PushedAt: pushed, Host: "builder"}); err != nil {
			t.Error(err)
		}
	}}
	rep, err := GC(ctx, b, GCOptions{OlderThan: 24 * time.Hour, Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"app", "base"} {
		if !f.has(name) {
			t.Errorf("%s deleted, though its root was pushed again during the sweep; gc deleted %v", name, rep.Deleted.Paths)
		}
	}
	data, err := f.b.Get(ctx, layout.RootKey(app))
	if err != nil {
		t.Fatalf("the root record written during the sweep: %v", err)
	}
	r, ok := layout.ParseRoot(layout.RootKey(app), data, time.Time{})
	if !ok || !r.PushedAt.Equal(pushed) {
		t.Fatalf("root record %s; want pushed_at %s", data, pushed)
	}
}

// TestPinDuringSweepReportsDeletion: a pin written after gc listed the
// bucket again, just before it deletes the pinned path: AddPin waits for
// the sweep to finish and says the path is gone.
func TestPinDuringSweepReportsDeletion(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("base")
	app := f.add("app", "base")
	f.age(time.Now().Add(-48 * time.Hour))
	pinned := make(chan error, 1)
	b := &steps{Bucket: f.b, beforeDelete: func() {
		go func() { pinned <- AddPin(ctx, f.b, "late", app, time.Now()) }()
		// Delete once the pin is written (AddPin found app present).
		for deadline := time.Now().Add(10 * time.Second); !f.exists(layout.PinPrefix + "late"); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Error("the pin was never written")
				return
			}
		}
	}}
	if _, err := GC(ctx, b, GCOptions{OlderThan: 24 * time.Hour, Grace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if f.has("app") {
		t.Fatal("app kept: the pin was seen after all (this test needs it written after gc's last listing)")
	}
	var err error
	select {
	case err = <-pinned:
	case <-time.After(30 * time.Second):
		t.Fatal("AddPin still waiting 30 s after the sweep finished")
	}
	if err == nil || !strings.Contains(err.Error(), "was deleted by a gc that overlapped this pin") ||
		!strings.Contains(err.Error(), "nixpush push --wait "+app) {
		t.Fatalf("AddPin during a sweep that deleted its path: %v; want it to say the path was deleted and to push it again", err)
	}
	if !f.exists(layout.PinPrefix + "late") {
		t.Error("the pin was removed; it should be kept")
	}
	v, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range v.Problems {
		found = found || (p.Kind == "pin-missing" && p.Path == app)
	}
	if !found || v.Whole() {
		t.Fatalf("verify: %+v; want pin-missing for %s", v.Problems, app)
	}
}
