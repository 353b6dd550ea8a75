package retention

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// fixture is a file:// cache of synthetic signed paths.
type fixture struct {
	t     *testing.T
	b     *store.FileStore
	key   signature.SecretKey
	paths map[string]string // name → store path
	dir   string            // when set, files are written there directly
	base  string            // the file:// store's directory
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	base := t.TempDir()
	b, err := store.NewFileStore(base)
	if err != nil {
		t.Fatal(err)
	}
	sk, _, err := signature.GenerateKeypair("test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, b: b, key: sk, paths: make(map[string]string), base: base}
}

// add puts a path named name referring to refs (names added before).
func (f *fixture) add(name string, refs ...string) string {
	f.t.Helper()
	h := sha256.Sum256([]byte(f.b.String() + name))
	p := "/nix/store/" + nixbase32.EncodeToString(h[:20]) + "-" + name
	var refPaths []string
	for _, r := range refs {
		refPaths = append(refPaths, f.paths[r])
	}
	var buf bytes.Buffer
	nw, _ := nar.NewWriter(&buf)
	content := []byte(p + " " + strings.Join(refPaths, " "))
	nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))})
	nw.Write(content)
	nw.Close()
	sum := sha256.Sum256(buf.Bytes())
	hash := nixhash.MustNewHash(nixhash.SHA256, sum[:])
	url := "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"
	ni, err := nix.NarInfo(nix.PathInfo{Path: p, NarHash: *hash, NarSize: uint64(buf.Len()), References: refPaths, Deriver: f.drv(name)},
		nix.Upload{URL: url, Compression: "none", FileHash: *hash, FileSize: uint64(buf.Len())}, f.key)
	if err != nil {
		f.t.Fatal(err)
	}
	f.put(url, buf.String())
	f.put(layout.NarInfoKey(p), ni.String()+"Unknown: kept out, not refused\n")
	f.paths[name] = p
	return p
}

// drv is the derivation path named as the Deriver of the path name.
func (f *fixture) drv(name string) string {
	h := sha256.Sum256([]byte(f.b.String() + name + ".drv"))
	return "/nix/store/" + nixbase32.EncodeToString(h[:20]) + "-" + name + ".drv"
}

// log puts the build log of name's derivation; it returns its key.
func (f *fixture) log(name string) string {
	f.t.Helper()
	key := layout.LogKey(f.drv(name))
	f.put(key, "building "+name+"\n")
	return key
}

// realisation puts a realisation whose outPath is name's path (as Nix
// writes it: the base name); it returns its key.
func (f *fixture) realisation(name string) string {
	f.t.Helper()
	p, ok := f.paths[name]
	if !ok { // a path the cache never held
		h := sha256.Sum256([]byte(name))
		p = "/nix/store/" + nixbase32.EncodeToString(h[:20]) + "-" + name
	}
	h := sha256.Sum256([]byte(f.drv(name)))
	id := "sha256:" + hex.EncodeToString(h[:]) + "!out"
	key := layout.RealisationKey(id)
	f.put(key, `{"dependentRealisations":{},"id":"`+id+`","outPath":"`+filepath.Base(p)+`","signatures":[]}`)
	return key
}

// age sets the modification time of every object in the store to at.
func (f *fixture) age(at time.Time) {
	f.t.Helper()
	err := filepath.WalkDir(f.base, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		return os.Chtimes(p, at, at)
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

// exists reports whether key is in the store.
func (f *fixture) exists(key string) bool {
	f.t.Helper()
	ok, err := f.b.Has(context.Background(), key)
	if err != nil {
		f.t.Fatal(err)
	}
	return ok
}

func (f *fixture) put(key, data string) {
	f.t.Helper()
	if f.dir != "" { // a benchmark's many files: no fsync each
		p := filepath.Join(f.dir, filepath.FromSlash(key))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			f.t.Fatal(err)
		}
		return
	}
	if err := f.b.Put(context.Background(), key, strings.NewReader(data), int64(len(data)), "text/plain"); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) root(name string, at time.Time) {
	f.t.Helper()
	if err := WriteRoot(context.Background(), f.b, layout.Root{Path: f.paths[name], PushedAt: at}); err != nil {
		f.t.Fatal(err)
	}
}

// cache opens a walk cache for the fixture's store, closed at the end.
func (f *fixture) cache() *Cache {
	f.t.Helper()
	c, err := OpenCache(CacheFile(f.t.TempDir(), f.b.String()))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) has(name string) bool {
	ok, err := f.b.Has(context.Background(), layout.NarInfoKey(f.paths[name]))
	if err != nil {
		f.t.Fatal(err)
	}
	return ok
}

// TestGCFileStore: closures of a pin and of a recent root stay, an old
// root's own paths go (referrers first), a second run reads nothing again
// (the walk cache) and deletes nothing.
func TestGCFileStore(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("base")
	f.add("lib", "base")
	f.add("app", "lib", "base")
	f.add("old-dep", "base")
	f.add("old", "old-dep", "lib")
	f.add("pinned-dep")
	f.add("pinned", "pinned-dep")
	f.root("app", time.Now())
	f.root("old", time.Now().Add(-48*time.Hour))
	if err := AddPin(ctx, f.b, "release", f.paths["pinned"], time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := AddPin(ctx, f.b, "nope", "/nix/store/00000000000000000000000000000000-nope", time.Now()); !errors.Is(err, ErrNotCached) ||
		!strings.Contains(err.Error(), "nixpush push --wait") {
		t.Fatalf("pin of a path not in the cache: %v", err)
	}
	time.Sleep(20 * time.Millisecond)

	cache := f.cache()
	var order []string
	opts := GCOptions{OlderThan: 24 * time.Hour, Grace: 10 * time.Millisecond, Walk: WalkOptions{Cache: cache},
		Deleting: func(key string) { order = append(order, key) }}
	rep, err := GC(ctx, f.b, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{f.paths["old"], f.paths["old-dep"]}
	slices.Sort(want)
	if !slices.Equal(rep.Deleted.Paths, want) || rep.Deleted.NARs != 2 || rep.Deleted.RootRecords != 1 {
		t.Fatalf("deleted %+v; want paths %v, 2 NARs, 1 root record", rep.Deleted, want)
	}
	if i, j := slices.Index(order, layout.NarInfoKey(f.paths["old"])), slices.Index(order, layout.NarInfoKey(f.paths["old-dep"])); i < 0 || j < 0 || i > j {
		t.Fatalf("deletion order %v: old's .narinfo must go before old-dep's", order)
	}
	for _, name := range []string{"base", "lib", "app", "pinned", "pinned-dep"} {
		if !f.has(name) {
			t.Errorf("%s was deleted", name)
		}
	}
	for _, name := range []string{"old", "old-dep"} {
		if f.has(name) {
			t.Errorf("%s was kept", name)
		}
	}
	// The marker stays up, saying the sweep is over: daemons read its
	// absence as "no gc has ever swept".
	if data, err := f.b.Get(ctx, layout.SweepKey); err != nil {
		t.Errorf("the marker is gone: %v", err)
	} else if m, err := layout.ParseSweep(data); err != nil || m.FinishedAt.IsZero() || m.FinishedAt.Before(m.ListedAt) {
		t.Errorf("the marker after gc: %s (%v); want it finished", data, err)
	}
	if rep.Kept.Paths != 5 || rep.Kept.Pinned != 1 || rep.Kept.Rooted != 1 {
		t.Errorf("kept %+v; want 5 paths, 1 pin, 1 root", rep.Kept)
	}

	again, err := GC(ctx, f.b, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Deleted.Paths) != 0 || again.Deleted.NARs != 0 || again.Walk.Read != 0 || again.Walk.CacheHits != 5+2 {
		t.Fatalf("second gc: deleted %+v, read %d, remembered %d; want nothing deleted or read, 7 remembered (5 .narinfos, a root, a pin)",
			again.Deleted, again.Walk.Read, again.Walk.CacheHits)
	}
}

// TestGCStopsAtDeadline: a sweep window that has passed before the first
// deletion deletes nothing and says to run again.
func TestGCStopsAtDeadline(t *testing.T) {
	f := newFixture(t)
	f.add("dead")
	time.Sleep(5 * time.Millisecond)
	_, err := GC(context.Background(), f.b, GCOptions{OlderThan: time.Hour, Grace: time.Millisecond, Window: time.Nanosecond})
	if !errors.Is(err, ErrWindowPassed) || !strings.Contains(err.Error(), "run nixpush gc again") {
		t.Fatalf("gc past its deadline: %v", err)
	}
	if !f.has("dead") {
		t.Fatal("gc deleted after its deadline")
	}
}

// TestGCRefusesWhileAnotherSweeps: a live marker of another gc stops gc
// before it deletes; a stale one (past its deadline) or a finished one
// does not.
func TestGCRefusesWhileAnotherSweeps(t *testing.T) {
	f := newFixture(t)
	f.add("dead")
	time.Sleep(5 * time.Millisecond)
	ctx := context.Background()
	if err := putJSON(ctx, f.b, layout.SweepKey, layout.Sweep{ListedAt: time.Now(), Deadline: time.Now().Add(time.Hour), Host: "other"}); err != nil {
		t.Fatal(err)
	}
	opts := GCOptions{OlderThan: time.Hour, Grace: time.Millisecond}
	if _, err := GC(ctx, f.b, opts); !errors.Is(err, ErrSweepRunning) || !f.has("dead") {
		t.Fatalf("gc beside another's live marker: %v", err)
	}
	if err := putJSON(ctx, f.b, layout.SweepKey, layout.Sweep{ListedAt: time.Now().Add(-time.Hour), Deadline: time.Now().Add(-time.Minute), Host: "crashed"}); err != nil {
		t.Fatal(err)
	}
	if rep, err := GC(ctx, f.b, opts); err != nil || len(rep.Deleted.Paths) != 1 {
		t.Fatalf("gc beside a stale marker: %v, %+v", err, rep)
	}
	// The marker that gc left up, finished, stops no gc.
	f.add("dead-too")
	time.Sleep(5 * time.Millisecond)
	if rep, err := GC(ctx, f.b, opts); err != nil || len(rep.Deleted.Paths) != 1 {
		t.Fatalf("gc after a finished one: %v, %+v", err, rep)
	}
}

// TestParseNarInfo reads what nix.NarInfo writes, leaving out a line it
// does not know.
func TestParseNarInfo(t *testing.T) {
	f := newFixture(t)
	f.add("a")
	p := f.add("b", "a")
	data, err := f.b.Get(context.Background(), layout.NarInfoKey(p))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := nix.ParseNarInfo(data)
	if err != nil {
		t.Fatal(err)
	}
	if ni.StorePath != p || len(ni.References) != 1 || ni.Compression != "none" || len(ni.Signatures) != 1 ||
		!nix.VerifyNarInfo(ni, f.key.ToPublicKey()) {
		t.Fatalf("parsed %+v", ni)
	}
	for _, bad := range []string{"", "StorePath: /nix/store/x\n", "StorePath: /nix/store/x\nURL: nar/x\nNarHash: nonsense\nNarSize: 1\n"} {
		if _, err := nix.ParseNarInfo([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}

}

// TestUnreadableNarInfo: a .narinfo gc cannot read is kept with its NAR
// (its references are unknown), and verify reports it.
func TestUnreadableNarInfo(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.put("nar/bad.nar", "x")
	f.put("00000000000000000000000000000000.narinfo", "StorePath: /nix/store/00000000000000000000000000000000-bad\nURL: nar/bad.nar\nNarHash: nonsense\nNarSize: 1\n")
	f.put("nar/orphan.nar", "y")
	time.Sleep(5 * time.Millisecond)
	rep, err := GC(ctx, f.b, GCOptions{OlderThan: time.Hour, Grace: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted.Paths) != 0 || rep.Deleted.NARs != 1 {
		t.Fatalf("gc deleted %+v; want the orphan NAR only", rep.Deleted)
	}
	for key, want := range map[string]bool{"nar/bad.nar": true, "nar/orphan.nar": false, "00000000000000000000000000000000.narinfo": true} {
		if ok, _ := f.b.Has(ctx, key); ok != want {
			t.Errorf("%s there: %v; want %v", key, ok, want)
		}
	}
	v, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Problems) != 1 || v.Problems[0].Kind != Unreadable {
		t.Fatalf("verify: %+v", v.Problems)
	}
}

// TestGCLogsAndRealisations: the build logs and realisations of deleted
// paths go (a realisation before its output's .narinfo), those of kept
// paths stay, as does the output of a realisation within the grace
// period; a dry run deletes nothing and a second run nothing more.
func TestGCLogsAndRealisations(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("base")
	f.add("app", "base")
	f.add("old-dep", "base")
	f.add("old", "old-dep")
	f.add("ca-out") // no root: kept by its young realisation alone
	f.root("app", time.Now())
	f.root("old", time.Now().Add(-48*time.Hour))
	keep := []string{f.log("base"), f.log("app"), f.realisation("app"), f.realisation("base")}
	real := map[string]string{"old": f.realisation("old"), "old-dep": f.realisation("old-dep")}
	gone := []string{f.log("old"), f.log("old-dep"), f.log("never-pushed"),
		real["old"], real["old-dep"], f.realisation("never-pushed")}
	f.age(time.Now().Add(-2 * time.Hour))
	young := []string{f.realisation("ca-out"), f.log("young-orphan")}
	keep = append(keep, young...)

	cache := f.cache()
	var order []string
	opts := GCOptions{OlderThan: 24 * time.Hour, Grace: time.Hour, Walk: WalkOptions{Cache: cache},
		Deleting: func(key string) { order = append(order, key) }}

	dryOpts := opts
	dryOpts.DryRun = true
	dry, err := GC(ctx, f.b, dryOpts)
	if err != nil {
		t.Fatal(err)
	}
	if dry.Deleted.Logs != 3 || dry.Deleted.Realisations != 3 || len(dry.Deleted.Paths) != 2 || len(order) != 0 {
		t.Fatalf("dry run would delete %+v (deleting %v); want 2 paths, 3 logs, 3 realisations, none deleted", dry.Deleted, order)
	}
	for _, key := range append(slices.Clone(keep), gone...) {
		if !f.exists(key) {
			t.Fatalf("the dry run deleted %s", key)
		}
	}

	rep, err := GC(ctx, f.b, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{f.paths["old"], f.paths["old-dep"]}
	slices.Sort(want)
	if !slices.Equal(rep.Deleted.Paths, want) || rep.Deleted.Logs != 3 || rep.Deleted.Realisations != 3 {
		t.Fatalf("deleted %+v; want paths %v, 3 logs, 3 realisations", rep.Deleted, want)
	}
	for _, key := range keep {
		if !f.exists(key) {
			t.Errorf("%s was deleted", key)
		}
	}
	for _, key := range gone {
		if f.exists(key) {
			t.Errorf("%s was kept", key)
		}
	}
	if !f.has("ca-out") {
		t.Error("the output of a realisation within the grace period was deleted")
	}
	for _, name := range []string{"old", "old-dep"} {
		r, ni := slices.Index(order, real[name]), slices.Index(order, layout.NarInfoKey(f.paths[name]))
		if r < 0 || ni < 0 || r > ni {
			t.Errorf("deletion order %v: the realisation of %s must go before its .narinfo", order, name)
		}
	}

	again, err := GC(ctx, f.b, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Deleted.Paths) != 0 || again.Deleted.Logs != 0 || again.Deleted.Realisations != 0 || again.Walk.Read != 0 {
		t.Fatalf("second gc: deleted %+v, read %d; want nothing deleted or read (realisations remembered)", again.Deleted, again.Walk.Read)
	}
}

// TestVerifyDanglingRealisation: verify reports a realisation whose
// outPath has no .narinfo, and repair deletes it (and only it).
func TestVerifyDanglingRealisation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("kept")
	ok := f.realisation("kept")
	bad := f.realisation("gone")
	rep, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Whole() || rep.Dangling != 1 || rep.Broken != 0 || len(rep.Problems) != 1 ||
		rep.Problems[0].Kind != RealisationDangling || !strings.HasSuffix(rep.Problems[0].Path, "-gone") ||
		!strings.Contains(rep.Problems[0].Detail, bad) {
		t.Fatalf("verify: %+v", rep)
	}
	repaired, err := Repair(ctx, f.b, rep, RepairOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if repaired.Realisations != 1 || len(repaired.Deleted) != 0 || f.exists(bad) || !f.exists(ok) || !f.has("kept") {
		t.Fatalf("repair: %+v; %s there: %v, %s there: %v", repaired, bad, f.exists(bad), ok, f.exists(ok))
	}
	after, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil || !after.Whole() {
		t.Fatalf("verify after repair: %v, %+v", err, after)
	}
}

// TestGCBatchRootRecords: a batch record (the roots a daemon pushed
// together) keeps the closure of each root it names while it is within
// --older-than; an expired one keeps nothing and is deleted, and a second
// gc run reads it from the walk cache.
func TestGCBatchRootRecords(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("base")
	f.add("a", "base")
	f.add("b", "base")
	f.add("old-a")
	f.add("old-b", "old-a")
	batch := func(key string, at time.Time, names ...string) {
		var paths []string
		for _, n := range names {
			paths = append(paths, f.paths[n])
		}
		data, _ := json.Marshal(layout.RootBatch{Paths: paths, PushedAt: at, Host: "builder"})
		f.put(key, string(data))
	}
	batch(layout.RootBatchPrefix+"20261125T120000.000000000Z-aaaaaaaaaaaa", time.Now(), "a", "b")
	old := layout.RootBatchPrefix + "20261120T120000.000000000Z-bbbbbbbbbbbb"
	batch(old, time.Now().Add(-48*time.Hour), "old-a", "old-b")
	time.Sleep(20 * time.Millisecond)
	cache := f.cache()
	opts := GCOptions{OlderThan: 24 * time.Hour, Grace: 10 * time.Millisecond, Walk: WalkOptions{Cache: cache}}
	rep, err := GC(ctx, f.b, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"base", "a", "b"} {
		if !f.has(n) {
			t.Errorf("%s, in the closure of a recent batch record, was deleted", n)
		}
	}
	for _, n := range []string{"old-a", "old-b"} {
		if f.has(n) {
			t.Errorf("%s, named only by an expired batch record, was kept", n)
		}
	}
	if f.exists(old) || rep.Deleted.RootRecords != 1 || rep.Kept.Rooted != 2 {
		t.Errorf("expired batch record still there: %v; deleted %d root records, kept %d rooted; want it gone, 1, 2",
			f.exists(old), rep.Deleted.RootRecords, rep.Kept.Rooted)
	}
	again, err := GC(ctx, f.b, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Deleted.Paths) != 0 || again.Walk.Read != 0 {
		t.Errorf("second gc deleted %v and read %d objects; want nothing deleted, everything from the cache", again.Deleted.Paths, again.Walk.Read)
	}
}
