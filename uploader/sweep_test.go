package uploader

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixpush/nixpush/layout"

	"github.com/rs/zerolog"

	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/store"
)

// The tests of this file play, step by step, the interleavings of issue
// 18 in which a push met a gc (or repair) sweep and, before this code,
// left a .narinfo whose NAR or reference was gone, or acknowledged a root
// a sweep then deleted. Each names the step of the package doc's
// argument it covers.

// hookStore is a file store that runs before (or after) the Put of one
// key, once: a sweep that acts at that moment.
type hookStore struct {
	*store.FileStore
	key          string
	before       func()
	after        func()
	once         sync.Once
	wg           sync.WaitGroup
	afterInAGoer bool // run after in a goroutine: the push goes on meanwhile
}

func (h *hookStore) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	first := false
	if key == h.key {
		h.once.Do(func() { first = true })
	}
	if first && h.before != nil {
		h.before()
	}
	err := h.FileStore.Put(ctx, key, r, size, ct)
	if first && h.after != nil {
		if h.afterInAGoer {
			h.wg.Go(h.after)
		} else {
			h.after()
		}
	}
	return err
}

// putMarker puts a sweep marker up, unfinished (finished zero) or not.
func putMarker(t *testing.T, s *store.FileStore, deadline, finished time.Time) {
	t.Helper()
	m, _ := json.Marshal(layout.Sweep{ListedAt: time.Now().Add(-time.Second), Deadline: deadline, Host: "gc-host", FinishedAt: finished})
	if err := s.Put(context.Background(), layout.SweepKey, bytes.NewReader(m), int64(len(m)), "application/json"); err != nil {
		t.Error(err)
	}
}

func removeAll(t *testing.T, s *store.FileStore, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if err := os.Remove(filepath.Join(s.Dir(), k)); err != nil {
			t.Error(err)
		}
	}
}

func newSweepUploader(t *testing.T, s store.Store, fs *fakeStore) *Uploader {
	return New(Config{Store: s, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop(), TrustCacheFor: time.Hour,
		ClockSkew: 20 * time.Millisecond, PollSweep: 10 * time.Millisecond, MaxSweepWait: time.Minute})
}

// TestRetryAfterInterruptedCheckFindsNARGone (hole 1; step 4): gc lists
// an old path r and its NAR K and deletes r's .narinfo; a push writes r
// again (K, then r.narinfo) and, meeting the sweep, is cut off before its
// check after writes (a restart, a failed request, a wait past its
// limit); gc then deletes K, which it listed. The retry is a Recheck by a
// fresh uploader: it must find K gone although r.narinfo is there, and
// upload r again.
func TestRetryAfterInterruptedCheckFindsNARGone(t *testing.T) {
	ctx := context.Background()
	fs := newFakeStore(t)
	r := fs.add(t, "r", []byte("r content"))
	base, _ := store.NewFileStore(t.TempDir())
	if err := newSweepUploader(t, base, fs).Push(ctx, []string{r})[0]; err != nil {
		t.Fatal(err)
	}
	k := narKey(fs.infos[r], narpack.Zstd)
	// The sweep: listed r and K as dead, deletes r's .narinfo now.
	putMarker(t, base, time.Now().Add(time.Hour), time.Time{})
	removeAll(t, base, layout.NarInfoKey(r))
	// The push of r again, cut off while it waits for the sweep.
	u := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop(), TrustCacheFor: time.Hour,
		ClockSkew: 20 * time.Millisecond, MaxSweepWait: time.Millisecond})
	if err := u.Push(ctx, []string{r})[0]; err == nil {
		t.Fatal("push returned nil while a sweep it may not wait for is under way")
	}
	// The sweep deletes K, listed before the push wrote it, and finishes.
	removeAll(t, base, k)
	putMarker(t, base, time.Now().Add(time.Hour), time.Now())
	time.Sleep(50 * time.Millisecond)
	// The retry, after a restart.
	if err := newSweepUploader(t, base, fs).Recheck(ctx, []string{r})[0]; err != nil {
		t.Fatal(err)
	}
	checkPushed(t, base, fs.infos[r])
}

// TestRootPushedAgainDuringSweep (hole 2; the roots a push relies on): a
// root already in the cache is handed over again while a sweep that
// listed it as dead (an expired root record) is under way: the push
// writes nothing but the root record. The sweep then deletes the root's
// .narinfo, NAR and the record it listed under the same key. The push
// must not return before it has checked, after the sweep, that the root
// and its record are there, and written them again.
func TestRootPushedAgainDuringSweep(t *testing.T) {
	ctx := context.Background()
	fs := newFakeStore(t)
	dep := fs.add(t, "dep", []byte("dep"))
	root := fs.add(t, "root", []byte("root"), dep)
	base, _ := store.NewFileStore(t.TempDir())
	h := &hookStore{FileStore: base, afterInAGoer: true}
	u := newSweepUploader(t, h, fs)
	if err := u.Push(ctx, []string{root})[0]; err != nil {
		t.Fatal(err)
	}
	h.key = layout.RootKey(root) // the sweep acts at the next write of the record
	deadline := time.Now().Add(10 * time.Second)
	putMarker(t, base, deadline, time.Time{})
	h.after = func() {
		time.Sleep(100 * time.Millisecond) // the push reads the marker meanwhile
		removeAll(t, base, layout.NarInfoKey(root), narKey(fs.infos[root], narpack.Zstd), layout.NarInfoKey(dep), narKey(fs.infos[dep], narpack.Zstd), layout.RootKey(root))
		putMarker(t, base, deadline, time.Now())
	}
	var waited atomic.Bool
	if err := u.Push(OnSweepWait(ctx, func() { waited.Store(true) }), []string{root})[0]; err != nil {
		t.Fatal(err)
	}
	if !waited.Load() {
		t.Error("the push waited without calling the context's OnSweepWait (the daemon frees a push slot there)")
	}
	if time.Now().After(deadline) {
		t.Fatal("the push waited for the sweep's deadline, not for its end")
	}
	h.wg.Wait()
	for _, p := range []string{dep, root} {
		checkPushed(t, base, fs.infos[p])
	}
	if has, _ := base.Has(ctx, layout.RootKey(root)); !has {
		t.Errorf("the root record %s, rewritten by an acknowledged push, is gone", layout.RootKey(root))
	}
}

// TestRepairDuringPush (hole 3; the .narinfos a push wrote are checked
// too): a push writes mid, relying on leaf; a gc deletes leaf, verify
// finds mid broken and repair deletes it; the same push then writes top,
// which refers to mid. The check after writes must find mid's .narinfo
// gone (not only leaf) and write it again.
func TestRepairDuringPush(t *testing.T) {
	ctx := context.Background()
	fs := newFakeStore(t)
	leaf := fs.add(t, "leaf", []byte("leaf"))
	mid := fs.add(t, "mid", []byte("mid"), leaf)
	top := fs.add(t, "top", []byte("top"), mid)
	base, _ := store.NewFileStore(t.TempDir())
	h := &hookStore{FileStore: base, key: layout.NarInfoKey(top), afterInAGoer: true}
	u := newSweepUploader(t, h, fs)
	if err := u.Push(ctx, []string{leaf})[0]; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	h.before = func() {
		putMarker(t, base, deadline, time.Time{})
		removeAll(t, base, layout.NarInfoKey(leaf), narKey(fs.infos[leaf], narpack.Zstd), layout.NarInfoKey(mid))
	}
	h.after = func() {
		time.Sleep(50 * time.Millisecond)
		putMarker(t, base, deadline, time.Now())
	}
	if err := u.Push(ctx, []string{top})[0]; err != nil {
		t.Fatal(err)
	}
	h.wg.Wait()
	for _, p := range []string{leaf, mid, top} {
		checkPushed(t, base, fs.infos[p])
	}
}

// TestForgottenSightingForcesCheck (hole 4): top relies on r and s,
// both trusted from earlier sightings. A sweep deletes r and finishes; the
// push then uploads top's NAR (after the sweep: that start time alone
// would not force a check); before it writes top's .narinfo, r's
// sighting is dropped (another push found r gone, and failed to upload it
// again) and s is seen again. A dropped sighting is "never seen": it
// forces the check whatever the order of top's references (before, a zero
// lost to the next reference's time when r came first), and r is
// uploaded again.
func TestForgottenSightingForcesCheck(t *testing.T) {
	for _, order := range []string{"r first", "s first"} {
		t.Run(order, func(t *testing.T) {
			ctx := context.Background()
			fs := newFakeStore(t)
			r := fs.add(t, "r", []byte("r"))
			s := fs.add(t, "s", []byte("s"))
			refs := []string{r, s}
			if order == "s first" {
				refs = []string{s, r}
			}
			top := fs.add(t, "top", []byte("top"), refs...)
			base, _ := store.NewFileStore(t.TempDir())
			h := &hookStore{FileStore: base, key: layout.NarInfoKey(top)}
			u := newSweepUploader(t, h, fs)
			if err := u.Push(ctx, []string{r, s}); err[0] != nil || err[1] != nil {
				t.Fatal(err)
			}
			// The sweep deletes r and finishes, well before the push.
			removeAll(t, base, layout.NarInfoKey(r), narKey(fs.infos[r], narpack.Zstd))
			putMarker(t, base, time.Now(), time.Now())
			time.Sleep(50 * time.Millisecond) // past the skew margin
			h.before = func() {
				u.mu.Lock()
				delete(u.seen, r) // another push found r gone
				u.sawAt(s, time.Now())
				u.mu.Unlock()
			}
			if err := u.Push(ctx, []string{top})[0]; err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{r, s, top} {
				checkPushed(t, base, fs.infos[p])
			}
		})
	}
}

// TestSettingsThatDoNotFitGC: gc writes its grace, --older-than and
// window into its marker; an uploader whose trust window is not below the
// grace (or above --older-than), or whose wait limit is below the window,
// says so, and meanwhile trusts nothing it remembers: a path it pushed a
// moment ago is checked again. Once a sweep's settings fit, it trusts
// again.
func TestSettingsThatDoNotFitGC(t *testing.T) {
	ctx := context.Background()
	fs := newFakeStore(t)
	p := fs.add(t, "p", []byte("p"))
	base, _ := store.NewFileStore(t.TempDir())
	cs := &checksStore{FileStore: base}
	u := newSweepUploader(t, cs, fs) // trusts for 1h, waits at most 1 min
	marker := func(grace, olderThan, window time.Duration) {
		m, _ := json.Marshal(layout.Sweep{ListedAt: time.Now().Add(-time.Hour), Deadline: time.Now().Add(-time.Minute), FinishedAt: time.Now().Add(-time.Minute),
			Kind: "gc", GraceSeconds: int64(grace / time.Second), OlderThanSeconds: int64(olderThan / time.Second), WindowSeconds: int64(window / time.Second)})
		if err := base.Put(ctx, layout.SweepKey, bytes.NewReader(m), int64(len(m)), "application/json"); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name                     string
		grace, olderThan, window time.Duration
		problem                  string // in SettingsProblem; "" for none
	}{
		{"fits", 24 * time.Hour, 30 * 24 * time.Hour, 10 * time.Second, ""},
		{"grace at the trust window", time.Hour, 30 * 24 * time.Hour, 10 * time.Second, "is not below gc's --grace"},
		{"older-than below the trust window", 24 * time.Hour, 30 * time.Minute, 10 * time.Second, "above gc's --older-than"},
		{"window above the wait limit", 24 * time.Hour, 30 * 24 * time.Hour, 10 * time.Minute, "above --max-sweep-wait"},
		{"fits again", 24 * time.Hour, 30 * 24 * time.Hour, 10 * time.Second, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker(tc.grace, tc.olderThan, tc.window)
			if err := u.Push(ctx, []string{p})[0]; err != nil { // writes the root record: reads the marker
				t.Fatal(err)
			}
			got := u.SettingsProblem()
			if (tc.problem == "") != (got == "") || !strings.Contains(got, tc.problem) {
				t.Fatalf("SettingsProblem %q; want %q", got, tc.problem)
			}
			cs.take()
			if err := u.Push(ctx, []string{p})[0]; err != nil {
				t.Fatal(err)
			}
			checked := slices.Contains(cs.take(), layout.NarInfoKey(p))
			if checked != (tc.problem != "") {
				t.Errorf("%s checked again: %v; want %v (trust nothing while the settings do not fit)", p, checked, tc.problem != "")
			}
		})
	}
}
