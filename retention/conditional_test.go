package retention

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// unconditional is a store that ignores the conditions of PutIf, as some
// S3-compatible servers do: every conditional write succeeds.
type unconditional struct{ store.Bucket }

func (u unconditional) PutIf(ctx context.Context, key string, data []byte, ct, etag string) (string, error) {
	if err := u.Put(ctx, key, bytes.NewReader(data), int64(len(data)), ct); err != nil {
		return "", err
	}
	return "ignored", nil
}

// TestStoreIgnoringConditions: gc and repair refuse a store that ignores
// conditional writes, before the marker and before deleting anything,
// naming the store and --single-gc; with SingleGC they run.
func TestStoreIgnoringConditions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("dead")
	f.age(time.Now().Add(-48 * time.Hour))
	b := unconditional{f.b}
	opts := GCOptions{OlderThan: 24 * time.Hour, Grace: time.Hour}
	_, err := GC(ctx, b, opts)
	if !errors.Is(err, ErrNoConditionalWrites) || !strings.Contains(err.Error(), f.b.String()) ||
		!strings.Contains(err.Error(), "--single-gc") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("gc on a store that ignores conditional writes: %v; want one line naming the store and --single-gc", err)
	}
	if !f.has("dead") || f.exists(layout.SweepKey) {
		t.Fatal("gc deleted or wrote its marker before refusing")
	}
	var probes []string
	f.b.List(ctx, layout.GCProbePrefix, func(o store.Object) error { probes = append(probes, o.Key); return nil })
	if len(probes) != 0 {
		t.Errorf("probes left behind: %v", probes)
	}

	opts.SingleGC = true
	if rep, err := GC(ctx, b, opts); err != nil || len(rep.Deleted.Paths) != 1 {
		t.Fatalf("gc with SingleGC: %v, %+v", err, rep)
	}

	// Repair: the same refusal, and the same way out.
	f.add("base")
	p := f.add("broken", "base")
	f.root("broken", time.Now())
	data, _ := f.b.Get(ctx, layout.NarInfoKey(p))
	ni, err := nix.ParseNarInfo(data)
	if err != nil {
		t.Fatal(err)
	}
	f.b.Delete(ctx, ni.URL)
	rep, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil || rep.Broken != 1 {
		t.Fatalf("verify: %v %+v", err, rep)
	}
	if _, err := Repair(ctx, b, rep, RepairOptions{}); !errors.Is(err, ErrNoConditionalWrites) || !f.has("broken") {
		t.Fatalf("repair on a store that ignores conditional writes: %v", err)
	}
	if out, err := Repair(ctx, b, rep, RepairOptions{SingleGC: true}); err != nil || len(out.Deleted) != 1 {
		t.Fatalf("repair with SingleGC: %v, %+v", err, out)
	}
}

// TestMarkerKindAndSettings: gc's marker says it is gc's, with its
// settings in seconds; repair's says repair; both finished.
func TestMarkerKindAndSettings(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("dead")
	f.age(time.Now().Add(-48 * time.Hour))
	if _, err := GC(ctx, f.b, GCOptions{OlderThan: 30 * 24 * time.Hour, Grace: 24 * time.Hour, Window: 20 * time.Minute, Host: "h"}); err != nil {
		t.Fatal(err)
	}
	data, err := f.b.Get(ctx, layout.SweepKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := layout.ParseSweep(data)
	if err != nil || s.Kind != "gc" || s.Host != "h" || s.GraceSeconds != 86400 || s.OlderThanSeconds != 30*86400 ||
		s.WindowSeconds != 1200 || s.FinishedAt.IsZero() || !s.Deadline.Equal(s.ListedAt.Add(20*time.Minute)) {
		t.Fatalf("marker %s (%v)", data, err)
	}
}

// TestSweepEndKeepsAnotherMarker: a run whose deadline passed and whose
// marker another run replaced does not write over that run's marker.
func TestSweepEndKeepsAnotherMarker(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	slow, err := startSweep(ctx, f.b, layout.Sweep{Host: "slow", Kind: "gc"}, time.Millisecond, false)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := startSweep(ctx, f.b, layout.Sweep{Host: "next", Kind: "gc"}, time.Hour, false); err != nil {
		t.Fatalf("a sweep after a stale marker: %v", err)
	}
	if err := slow.end(ctx); err == nil || !strings.Contains(err.Error(), "replaced by another run") {
		t.Fatalf("end of a run whose marker was replaced: %v", err)
	}
	data, _ := f.b.Get(ctx, layout.SweepKey)
	if s, err := layout.ParseSweep(data); err != nil || s.Host != "next" || !s.FinishedAt.IsZero() {
		t.Fatalf("marker after the slow run ended: %s; want next's, unfinished", data)
	}
	// And the live one stops a third.
	if _, err := startSweep(ctx, f.b, layout.Sweep{Host: "third"}, time.Hour, false); !errors.Is(err, ErrSweepRunning) ||
		!strings.Contains(err.Error(), `"next"`) {
		t.Fatalf("a sweep beside a live one: %v", err)
	}
}

// TestGCRefusesUnsafeSettings: no grace, or --older-than below it.
func TestGCRefusesUnsafeSettings(t *testing.T) {
	f := newFixture(t)
	f.add("dead")
	f.age(time.Now().Add(-48 * time.Hour))
	for _, tc := range []struct {
		name string
		opts GCOptions
		want error
	}{
		{"no grace", GCOptions{OlderThan: time.Hour}, ErrNoGrace},
		{"negative grace", GCOptions{OlderThan: time.Hour, Grace: -time.Second}, ErrNoGrace},
		{"older-than below grace", GCOptions{OlderThan: time.Minute, Grace: time.Hour}, ErrOlderThanGrace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := GC(context.Background(), f.b, tc.opts); !errors.Is(err, tc.want) {
				t.Fatalf("gc %+v: %v; want %v", tc.opts, err, tc.want)
			}
			if !f.has("dead") {
				t.Fatal("deleted")
			}
		})
	}
}

// TestAddPinWaitsForSweep: a pin taken while a sweep's marker is up waits
// (polling) until it finishes, then finds the path there and succeeds;
// one taken long after a finished sweep reads the marker once.
func TestAddPinWaitsForSweep(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p := f.add("app")
	sw, err := startSweep(ctx, f.b, layout.Sweep{Host: "gc"}, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	var slept []time.Duration
	sleep := func(ctx context.Context, d time.Duration) error {
		slept = append(slept, d)
		if len(slept) == 3 {
			sw.end(ctx)
		}
		return nil
	}
	if err := addPin(ctx, f.b, "p", p, time.Now(), time.Now, sleep); err != nil {
		t.Fatal(err)
	}
	if len(slept) != 3 || slept[0] != pinPoll {
		t.Fatalf("slept %v; want three polls of %s", slept, pinPoll)
	}
	// Long after: no wait.
	slept = nil
	later := func() time.Time { return time.Now().Add(time.Minute) }
	if err := addPin(ctx, f.b, "q", p, time.Now(), later, sleep); err != nil || len(slept) != 0 {
		t.Fatalf("pin after a finished sweep: %v, slept %v", err, slept)
	}
	// A sweep that never finishes: waited for until its deadline plus
	// the skew margin, no longer.
	f.b.Put(ctx, layout.SweepKey, strings.NewReader(`{"listed_at":"2000-01-01T00:00:00Z","deadline":"2000-01-01T00:10:00Z","host":"crashed"}`), -1, "application/json")
	if err := addPin(ctx, f.b, "r", p, time.Now(), time.Now, sleep); err != nil || len(slept) != 0 {
		t.Fatalf("pin beside a stale marker: %v, slept %v", err, slept)
	}
}
