package uploader

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpush/nixpush/layout"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/rs/zerolog"

	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/store/storetest"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// remove deletes an object of a file store behind the uploader's back.
func remove(t *testing.T, s *store.FileStore, key string) {
	t.Helper()
	if err := os.Remove(filepath.Join(s.Dir(), key)); err != nil {
		t.Fatal(err)
	}
}

func narURL(t *testing.T, s store.Store, p string) string {
	t.Helper()
	b, err := s.Get(context.Background(), layout.NarInfoKey(p))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return ni.URL
}

// TestTrustWindow: a path seen in the cache within TrustCacheFor is not
// checked again, so a deep dependency deleted behind the uploader's back
// stays missing; once the window has passed, the next push that needs it
// checks the whole closure and uploads it again.
func TestTrustWindow(t *testing.T) {
	fs := newFakeStore(t)
	a := fs.add(t, "a", []byte("a"))
	b := fs.add(t, "b", []byte("b"), a)
	c := fs.add(t, "c", []byte("c"), b)
	base, _ := store.NewFileStore(t.TempDir())
	clk := &fakeClock{t: time.Unix(2e9, 0)}
	u := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop(), TrustCacheFor: time.Hour, Now: clk.Now})
	push := func(p string) {
		t.Helper()
		if err := u.Push(context.Background(), []string{p})[0]; err != nil {
			t.Fatal(err)
		}
	}
	push(c)
	aNAR := narURL(t, base, a)
	remove(t, base, layout.NarInfoKey(a))
	remove(t, base, aNAR)

	clk.Add(59 * time.Minute)
	d := fs.add(t, "d", []byte("d"), c)
	push(d)
	if has, _ := base.Has(context.Background(), layout.NarInfoKey(a)); has {
		t.Fatalf("%s was checked again within the trust window", a)
	}

	// Pushing d re-checked c (what d relies on) but not a or b. An hour
	// and more later, nothing is trusted any more.
	clk.Add(61 * time.Minute)
	e := fs.add(t, "e", []byte("e"), c)
	push(e)
	for _, p := range []string{a, b, c, d, e} {
		checkPushed(t, base, fs.infos[p])
	}
}

// TestTrustNothing: with TrustCacheFor 0, every push checks the whole
// closure and uploads again whatever is gone, however deep.
func TestTrustNothing(t *testing.T) {
	fs := newFakeStore(t)
	var chain []string
	prev := []string{}
	for i := range 12 {
		p := fs.add(t, "n"+string(rune('a'+i)), []byte{byte(i)}, prev...)
		chain = append(chain, p)
		prev = []string{p}
	}
	base, _ := store.NewFileStore(t.TempDir())
	u := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop()})
	if err := u.Push(context.Background(), []string{chain[10]})[0]; err != nil {
		t.Fatal(err)
	}
	for _, p := range chain[2:6] { // deep, not the top
		url := narURL(t, base, p)
		remove(t, base, layout.NarInfoKey(p))
		remove(t, base, url)
	}
	if err := u.Push(context.Background(), []string{chain[11]})[0]; err != nil {
		t.Fatal(err)
	}
	for _, p := range chain {
		checkPushed(t, base, fs.infos[p])
	}
}

// TestRecheckRestoresWipedCache: after the cache is wiped, Push of a root
// seen recently does nothing, Recheck uploads the whole closure again and
// writes nix-cache-info again.
func TestRecheckRestoresWipedCache(t *testing.T) {
	fs := newFakeStore(t)
	leaf := fs.add(t, "leaf", []byte("leaf"))
	top := fs.add(t, "top", []byte("top"), leaf)
	dir := t.TempDir()
	base, _ := store.NewFileStore(dir)
	u := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop(), TrustCacheFor: time.Hour})
	if err := u.Push(context.Background(), []string{top})[0]; err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dir)
	base, _ = store.NewFileStore(dir)
	if err := u.Recheck(context.Background(), []string{top})[0]; err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{leaf, top} {
		checkPushed(t, base, fs.infos[p])
	}
	if has, _ := base.Has(context.Background(), "nix-cache-info"); !has {
		t.Fatal("nix-cache-info not written again")
	}
}

// TestRootRecords: every push of a root, even one the cache holds, writes
// its record, with a later pushed_at each time.
func TestRootRecords(t *testing.T) {
	fs := newFakeStore(t)
	top := fs.add(t, "top", []byte("top"))
	base, _ := store.NewFileStore(t.TempDir())
	clk := &fakeClock{t: time.Unix(2e9, 0)}
	u := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop(), TrustCacheFor: time.Hour, Now: clk.Now, Host: "builder-1"})
	read := func() layout.Root {
		t.Helper()
		b, err := base.Get(context.Background(), "nixpush/roots/"+filepath.Base(top)[:32])
		if err != nil {
			t.Fatal(err)
		}
		var r layout.Root
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("root record %s: %v", b, err)
		}
		return r
	}
	for i, pushFn := range []func(context.Context, []string) []error{u.Push, u.Push, u.Recheck} {
		if err := pushFn(context.Background(), []string{top})[0]; err != nil {
			t.Fatal(err)
		}
		r := read()
		if want := clk.Now().UTC(); r.Path != top || !r.PushedAt.Equal(want) || r.Host != "builder-1" {
			t.Fatalf("push %d: root record %+v; want path %s, pushed_at %s, host builder-1", i, r, top, want)
		}
		clk.Add(time.Minute)
	}
}

// gcStore plays a gc that, with its sweep marker up, deletes a .narinfo
// the uploader relied on (and its NAR) while the uploader writes the
// .narinfo of trigger: before that write, or just after it, before the
// sweep's deadline.
type gcStore struct {
	*store.FileStore
	t        *testing.T
	trigger  string   // the .narinfo key whose write sets the gc off
	victims  []string // keys the gc deletes
	after    bool     // delete after the trigger's write rather than before
	deadline time.Time
	wg       sync.WaitGroup
	once     sync.Once
}

func (g *gcStore) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	first := false
	if key == g.trigger {
		g.once.Do(func() { first = true })
	}
	if !first { // the gc sweeps once
		return g.FileStore.Put(ctx, key, r, size, ct)
	}
	func() {
		g.deadline = time.Now().Add(400 * time.Millisecond)
		m, _ := json.Marshal(layout.Sweep{ListedAt: time.Now().Add(-time.Second), Deadline: g.deadline, Host: "gc-host"})
		if err := g.FileStore.Put(ctx, layout.SweepKey, bytes.NewReader(m), int64(len(m)), "application/json"); err != nil {
			g.t.Error(err)
		}
	}()
	sweep := func() {
		for _, k := range g.victims {
			os.Remove(filepath.Join(g.Dir(), k))
		}
	}
	if !g.after {
		sweep()
		return g.FileStore.Put(ctx, key, r, size, ct)
	}
	err := g.FileStore.Put(ctx, key, r, size, ct)
	g.wg.Go(func() {
		time.Sleep(150 * time.Millisecond) // the uploader reads the marker meanwhile
		sweep()
		finishSweep(g.t, g.FileStore, g.deadline)
	})
	return err
}

// TestPushRacingGC: a gc deletes a reference the uploader relied on
// without uploading it, between the uploader's check and its write of the
// .narinfo that names it, or right after that write while the gc's sweep
// is under way. The uploader's re-check after the sweep's deadline finds
// it gone and uploads it again: the cache is whole when Push returns.
// Without that re-check (or without waiting for the deadline), the
// reference stays missing.
func TestPushRacingGC(t *testing.T) {
	for _, tc := range []struct {
		name   string
		after  bool
		ownNAR bool // the gc deletes the NAR the push just wrote (listed before, under the same key)
	}{
		{"deleted before the write", false, false},
		{"deleted after the write, before the deadline", true, false},
		{"own NAR deleted after the write, before the deadline", true, true},
	} {
		after := tc.after
		t.Run(tc.name, func(t *testing.T) {
			fs := newFakeStore(t)
			leaf := fs.add(t, "leaf", []byte("leaf"))
			mid := fs.add(t, "mid", []byte("mid"), leaf)
			top := fs.add(t, "top", []byte("top"), mid)
			base, _ := store.NewFileStore(t.TempDir())
			g := &gcStore{FileStore: base, t: t, trigger: layout.NarInfoKey(top), after: after}
			u := New(Config{Store: g, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop(), TrustCacheFor: time.Hour})
			u.cfg.ClockSkew = 50 * time.Millisecond
			if err := u.Push(context.Background(), []string{mid})[0]; err != nil {
				t.Fatal(err)
			}
			// The gc deletes what only mid's closure held: mid and leaf,
			// .narinfos and NARs; or top's NAR, which it listed (as an
			// orphan, say) before the push wrote it again.
			if tc.ownNAR {
				g.victims = []string{narKey(fs.infos[top], narpack.Zstd)}
			} else {
				for _, p := range []string{mid, leaf} {
					g.victims = append(g.victims, layout.NarInfoKey(p), narURL(t, base, p))
				}
			}
			if err := u.Push(context.Background(), []string{top})[0]; err != nil {
				t.Fatal(err)
			}
			if time.Now().Before(g.deadline) {
				t.Errorf("push returned before the gc's deadline %s", g.deadline)
			}
			g.wg.Wait()
			for _, p := range []string{leaf, mid, top} {
				checkPushed(t, base, fs.infos[p])
			}
		})
	}
}

// TestAbsentListsNARs: the NARs a push wrote are checked with one
// listing of nar/ when there are many, and a missing one is still found.
func TestAbsentListsNARs(t *testing.T) {
	ctx := context.Background()
	s, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := range 40 {
		k := fmt.Sprintf("nar/%052d.nar.zst", i)
		if err := s.Put(ctx, k, strings.NewReader("nar"), 3, "application/x-nix-nar"); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	remove(t, s, keys[7])
	remove(t, s, keys[33])
	for _, tc := range []struct {
		name     string
		keys     []string
		requests int64
	}{
		{"many: one listing", keys, 1},
		{"few: one check each", keys[:10], 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := New(Config{Store: s, Key: testKey(t), Log: zerolog.Nop()})
			gone, failed := u.absent(ctx, nil, tc.keys)
			if len(failed) > 0 {
				t.Fatal(failed)
			}
			want := map[string]bool{keys[7]: true}
			if len(tc.keys) > 33 {
				want[keys[33]] = true
			}
			if !maps.Equal(gone, want) {
				t.Errorf("missing: %v, want %v", gone, want)
			}
			if got := u.Stats().Requests; got != tc.requests {
				t.Errorf("%d store requests, want %d", got, tc.requests)
			}
		})
	}
}

// finishSweep leaves a gc's marker up as gc does after its last deletion.
func finishSweep(t *testing.T, s *store.FileStore, deadline time.Time) {
	m, _ := json.Marshal(layout.Sweep{ListedAt: time.Now().Add(-time.Second), Deadline: deadline, Host: "gc-host", FinishedAt: time.Now()})
	if err := s.Put(context.Background(), layout.SweepKey, bytes.NewReader(m), int64(len(m)), "application/json"); err != nil {
		t.Error(err)
	}
}

// checksStore records the existence checks made of it.
type checksStore struct {
	*store.FileStore
	mu     sync.Mutex
	checks []string
}

func (c *checksStore) Has(ctx context.Context, key string) (bool, error) {
	c.mu.Lock()
	c.checks = append(c.checks, key)
	c.mu.Unlock()
	return c.FileStore.Has(ctx, key)
}

func (c *checksStore) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.checks
	c.checks = nil
	return out
}

// TestRecheckAfterWritesFollowsTheMarker: after writing a .narinfo that
// relies on a reference seen earlier, the uploader reads gc's marker.
// With no marker (no gc ever swept), or one that finished before the
// reference was seen, nothing can have been deleted since: it checks
// nothing more (one marker read instead of a check per reference and NAR).
// With a sweep that finished after the sighting and deleted the reference
// (and its dependency) meanwhile, it checks, finds them gone, and uploads
// them again: the cache is whole when Push returns.
func TestRecheckAfterWritesFollowsTheMarker(t *testing.T) {
	for _, tc := range []struct {
		name    string
		marker  string // "none", "finished before", "finished after"
		recheck bool
	}{
		{"no marker", "none", false},
		{"a sweep finished before the sighting", "finished before", false},
		{"a sweep finished after the sighting, deleting what was seen", "finished after", true},
		{"the marker seen before, removed since (an older gc), with what was seen", "removed", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			fs := newFakeStore(t)
			leaf := fs.add(t, "leaf", []byte("leaf"))
			mid := fs.add(t, "mid", []byte("mid"), leaf)
			top := fs.add(t, "top", []byte("top"), mid)
			base, _ := store.NewFileStore(t.TempDir())
			cs := &checksStore{FileStore: base}
			u := New(Config{Store: cs, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop(), TrustCacheFor: time.Hour})
			u.cfg.ClockSkew = 20 * time.Millisecond
			if tc.marker == "finished before" || tc.marker == "removed" {
				finishSweep(t, base, time.Now())
				time.Sleep(50 * time.Millisecond) // past the skew margin
			}
			if err := u.Push(ctx, []string{mid})[0]; err != nil {
				t.Fatal(err)
			}
			if tc.marker == "finished after" || tc.marker == "removed" {
				time.Sleep(50 * time.Millisecond)
				for _, p := range []string{mid, leaf} {
					nar := narURL(t, base, p)
					remove(t, base, layout.NarInfoKey(p))
					remove(t, base, nar)
				}
				if tc.marker == "removed" {
					remove(t, base, layout.SweepKey)
				} else {
					finishSweep(t, base, time.Now())
				}
			}
			cs.take()
			if err := u.Push(ctx, []string{top})[0]; err != nil {
				t.Fatal(err)
			}
			checks := cs.take()
			if want := []string{layout.NarInfoKey(top)}; !tc.recheck && !slices.Equal(checks, want) {
				t.Errorf("existence checks %v; want only the probe %v", checks, want)
			}
			if tc.recheck && !slices.Contains(checks, layout.NarInfoKey(mid)) {
				t.Errorf("existence checks %v; want %s checked after the write", checks, layout.NarInfoKey(mid))
			}
			if !tc.recheck {
				return
			}
			for _, p := range []string{leaf, mid, top} {
				checkPushed(t, base, fs.infos[p])
			}
		})
	}
}

// TestRecheckCoversOldNARs: a .narinfo written now for a NAR uploaded
// before a sweep finished (by a push that failed before its .narinfo) is
// checked after the write, and the NAR, deleted by that sweep as an
// orphan, is to be uploaded again.
func TestRecheckCoversOldNARs(t *testing.T) {
	ctx := context.Background()
	fs := newFakeStore(t)
	dep := fs.add(t, "dep", []byte("dep"))
	top := fs.add(t, "top", []byte("top"), dep)
	base, _ := store.NewFileStore(t.TempDir())
	u := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop(), TrustCacheFor: time.Hour})
	u.cfg.ClockSkew = 20 * time.Millisecond
	if err := u.Push(ctx, []string{dep})[0]; err != nil {
		t.Fatal(err)
	}
	key := narKey(fs.infos[top], narpack.Zstd)
	lg := newLedger()
	lg.wrote(fs.infos[top], writtenNAR{key: key, at: time.Now()})
	time.Sleep(50 * time.Millisecond)
	finishSweep(t, base, time.Now()) // it deleted the NAR, never written here
	time.Sleep(50 * time.Millisecond)
	u.mu.Lock()
	u.sawAt(dep, time.Now()) // the reference, seen after the sweep
	u.mu.Unlock()
	again, force, err := redone(ctx, u, lg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again, []string{top}) || !force[top] {
		t.Fatalf("again %v, force %v; want %s uploaded again", again, force, top)
	}
}

// TestEnsureRecordsNoRoot: Ensure uploads a closure like Push but writes no
// root record (the daemon pushes the outputs a build log waits for as
// roots of their own; a second record per build was a wasted request).
func TestEnsureRecordsNoRoot(t *testing.T) {
	fs := newFakeStore(t)
	top := fs.add(t, "top", []byte("top"))
	base, _ := store.NewFileStore(t.TempDir())
	u := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop()})
	if err := u.Ensure(context.Background(), []string{top})[0]; err != nil {
		t.Fatal(err)
	}
	checkPushed(t, base, fs.infos[top])
	if has, err := base.Has(context.Background(), layout.RootKey(top)); err != nil || has {
		t.Fatalf("root record after Ensure: %v, %v; want none", has, err)
	}
}

// TestAbsentReportsFailedChecks: a check that fails is neither gone nor
// present; probe counts its path as missing (to upload) without
// forgetting an earlier sighting, and the re-check after writes fails on
// it rather than trusting it.
func TestAbsentReportsFailedChecks(t *testing.T) {
	ctx := context.Background()
	fs := newFakeStore(t)
	present := fs.add(t, "present", []byte("present"))
	flaky := fs.add(t, "flaky", []byte("flaky"))
	gone := fs.add(t, "gone", []byte("gone"))
	top := fs.add(t, "top", []byte("top"), flaky)
	base, _ := store.NewFileStore(t.TempDir())
	if err := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop()}).Push(ctx, []string{present, flaky})[0]; err != nil {
		t.Fatal(err)
	}
	s := storetest.NewFaulty(base, func(op, key string) error {
		if op == "Has" && key == layout.NarInfoKey(flaky) {
			return fmt.Errorf("check of %s failed", key)
		}
		return nil
	})
	u := New(Config{Store: s, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop()})
	keys := []string{layout.NarInfoKey(present), layout.NarInfoKey(flaky), layout.NarInfoKey(gone)}
	g, failed := u.absent(ctx, keys, nil)
	if !maps.Equal(g, map[string]bool{keys[2]: true}) || len(failed) != 1 || failed[keys[1]] == nil {
		t.Fatalf("gone %v, failed %v; want %s gone and %s failed", g, failed, keys[2], keys[1])
	}
	u.mu.Lock()
	u.sawAt(flaky, time.Now().Add(-time.Hour))
	u.mu.Unlock()
	infos := map[string]nix.PathInfo{present: fs.infos[present], flaky: fs.infos[flaky], gone: fs.infos[gone]}
	missing := u.probe(ctx, infos, nil, nil, time.Now(), false)
	if !maps.Equal(missing, map[string]bool{flaky: true, gone: true}) {
		t.Fatalf("probe: missing %v; want %s and %s", missing, flaky, gone)
	}
	u.mu.Lock()
	_, kept := u.seen[flaky]
	u.mu.Unlock()
	if !kept {
		t.Error("a failed check forgot the earlier sighting")
	}
	// top written, relying on flaky, whose check fails: the re-check
	// (forced: a marker seen, now gone) fails too.
	u.markerSeen.Store(true)
	lg := newLedger()
	lg.wrote(fs.infos[top], writtenNAR{key: narKey(fs.infos[top], narpack.Zstd), at: time.Now()})
	if _, _, err := redone(ctx, u, lg); err == nil || !strings.Contains(err.Error(), "check of "+keys[1]+" failed") {
		t.Fatalf("re-check relying on a failed check: %v; want that failure", err)
	}
}

// errRedone stops settle after its first redo, for tests that look at
// what it would upload again.
var errRedone = errors.New("redone")

// redone runs the check after writes of lg and returns what its first
// round would upload again (nothing, when it finds nothing missing).
func redone(ctx context.Context, u *Uploader, lg *ledger) (again []string, force map[string]bool, err error) {
	err = u.settle(ctx, lg, func(a []string, f map[string]bool, _ []string) error {
		again, force = a, f
		return errRedone
	})
	if errors.Is(err, errRedone) {
		err = nil
	}
	return again, force, err
}
