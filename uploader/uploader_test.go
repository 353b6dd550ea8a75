package uploader

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/store/storetest"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/rs/zerolog"
	"github.com/ulikunitz/xz"

	"github.com/nixpush/nixpush/nix"
)

// fakeStore is a temporary store directory whose paths the test makes
// itself, with a PathInfoSource that answers from memory. It lets the
// uploader be driven through DAGs of any shape without Nix.
type fakeStore struct {
	dir   string
	infos map[string]nix.PathInfo
}

func newFakeStore(t *testing.T) *fakeStore {
	return &fakeStore{dir: filepath.Join(t.TempDir(), "store"), infos: map[string]nix.PathInfo{}}
}

func (f *fakeStore) QueryClosure(ctx context.Context, roots []string) ([]nix.PathInfo, error) {
	seen := map[string]bool{}
	var out []nix.PathInfo
	var walk func(p string) error
	walk = func(p string) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		info, ok := f.infos[p]
		if !ok {
			return fmt.Errorf("%w: %s", nix.ErrInvalidPath, p)
		}
		out = append(out, info)
		for _, r := range info.References {
			if err := walk(r); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range roots {
		if err := walk(r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (f *fakeStore) Query(ctx context.Context, paths []string) ([]nix.PathInfo, error) {
	var out []nix.PathInfo
	for _, p := range paths {
		info, ok := f.infos[p]
		if !ok {
			return nil, fmt.Errorf("%w: %s", nix.ErrInvalidPath, p)
		}
		out = append(out, info)
	}
	return out, nil
}

// add makes a store path holding content (a file) that refers to refs.
func (f *fakeStore) add(t *testing.T, name string, content []byte, refs ...string) string {
	t.Helper()
	var d [20]byte
	copy(d[:], fmt.Sprintf("%020d", len(f.infos)))
	sum := sha256.Sum256(append([]byte(name), d[:]...))
	p := filepath.Join(f.dir, nixbase32.EncodeToString(sum[:20])+"-"+name)
	os.MkdirAll(f.dir, 0o755)
	if err := os.WriteFile(p, content, 0o444); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	cnt := &countWriter{w: h}
	if err := nar.DumpPath(cnt, p); err != nil {
		t.Fatal(err)
	}
	f.infos[p] = nix.PathInfo{Path: p, NarHash: *nixhash.MustNewHash(nixhash.SHA256, h.Sum(nil)), NarSize: cnt.n, References: refs}
	return p
}

// countWriter counts the bytes written through it to w.
type countWriter struct {
	w io.Writer
	n uint64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}

// randomDAG adds n paths, each referring to up to refs earlier ones picked
// by rng, with content(i) as the i-th path's file; it returns them in order.
func (f *fakeStore) randomDAG(t *testing.T, rng *rand.Rand, n, refs int, content func(i int) []byte) []string {
	t.Helper()
	var paths []string
	for i := range n {
		var rs []string
		for j := 0; j < refs && len(paths) > 0; j++ {
			rs = append(rs, paths[rng.IntN(len(paths))])
		}
		paths = append(paths, f.add(t, fmt.Sprintf("p%d", i), content(i), dedup(rs)...))
	}
	return paths
}

// checkingStore wraps a store and checks, at every .narinfo write, that the
// NAR it names and the .narinfo of every reference are already there.
type checkingStore struct {
	store.Store
	storeDir string
	delay    func() time.Duration
	mu       sync.Mutex
	errs     []error
	puts     map[string]int
}

func (c *checkingStore) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	if c.delay != nil {
		time.Sleep(c.delay())
	}
	if strings.HasSuffix(key, ".narinfo") {
		data, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		ni, err := narinfo.Parse(bytes.NewReader(data))
		if err != nil {
			return err
		}
		c.check(ctx, ni)
		r = bytes.NewReader(data)
	}
	c.mu.Lock()
	if c.puts == nil {
		c.puts = map[string]int{}
	}
	c.puts[key]++
	c.mu.Unlock()
	return c.Store.Put(ctx, key, r, size, ct)
}

func (c *checkingStore) check(ctx context.Context, ni *narinfo.NarInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ok, _ := c.Store.Has(ctx, ni.URL); !ok {
		c.errs = append(c.errs, fmt.Errorf("%s: narinfo written before its NAR %s", ni.StorePath, ni.URL))
	}
	for _, r := range ni.References {
		if filepath.Join(c.storeDir, r) == ni.StorePath {
			continue
		}
		if ok, _ := c.Store.Has(ctx, layout.NarInfoKey(r)); !ok {
			c.errs = append(c.errs, fmt.Errorf("%s: narinfo written before that of its reference %s", ni.StorePath, r))
		}
	}
}

func testKey(t *testing.T) signature.SecretKey {
	sk, _, err := signature.GenerateKeypair("nixpush-test-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

func TestPushDAGKeepsOrderWithParallelJobs(t *testing.T) {
	fs := newFakeStore(t)
	rng := rand.New(rand.NewPCG(1, 2))
	paths := fs.randomDAG(t, rng, 300, 3, func(i int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("path %d ", i)), rng.IntN(2000)+1)
	})
	base, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cs := &checkingStore{Store: base, storeDir: fs.dir, delay: func() time.Duration { return time.Duration(rand.IntN(500)) * time.Microsecond }}
	for _, c := range []narpack.Compression{narpack.Zstd, narpack.XZ, narpack.None} {
		t.Run(string(c), func(t *testing.T) {
			sub, _ := store.NewFileStore(t.TempDir())
			cs := &checkingStore{Store: sub, storeDir: fs.dir, delay: cs.delay}
			u := New(Config{Store: cs, Nix: fs, Key: testKey(t), Compression: c, Jobs: 8, StoreDir: fs.dir, Log: zerolog.Nop()})
			// Several pushes at once over overlapping closures.
			var wg sync.WaitGroup
			var all []string
			for k := range 4 {
				roots := []string{paths[len(paths)-1-k], paths[len(paths)/2+k]}
				all = append(all, roots...)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i, err := range u.Push(context.Background(), roots) {
						if err != nil {
							t.Errorf("push %s: %v", roots[i], err)
						}
					}
				}()
			}
			wg.Wait()
			for _, e := range cs.errs {
				t.Error(e)
			}
			for key, n := range cs.puts {
				if n != 1 {
					t.Errorf("%s written %d times, want once", key, n)
				}
			}
			// Every path in the pushed closures is there, with a NAR that
			// decompresses to the path's NAR.
			infos, _ := fs.QueryClosure(context.Background(), all)
			for _, info := range infos {
				checkPushed(t, sub, info)
			}
			cacheObjects := 0
			for key := range cs.puts {
				if !strings.HasPrefix(key, "nixpush/") {
					cacheObjects++
				}
			}
			if st := u.Stats(); st.Paths != int64(cacheObjects-1)/2 {
				t.Errorf("stats: %d paths uploaded, store got %d objects", st.Paths, cacheObjects)
			}
			// Each push of two roots wrote one batch record naming both.
			recorded := map[string]int{}
			batches := 0
			for key := range cs.puts {
				if !strings.HasPrefix(key, layout.RootBatchPrefix) {
					continue
				}
				batches++
				data, err := sub.Get(context.Background(), key)
				if err != nil {
					t.Fatal(err)
				}
				var b layout.RootBatch
				if err := json.Unmarshal(data, &b); err != nil || len(b.Paths) != 2 || b.PushedAt.IsZero() {
					t.Errorf("batch record %s: %s (%v); want two paths and a time", key, data, err)
				}
				for _, p := range b.Paths {
					recorded[p]++
				}
			}
			if batches != 4 {
				t.Errorf("%d batch root records for 4 pushes of 2 roots; want 4", batches)
			}
			for _, r := range all {
				if recorded[r] != 1 || cs.puts[layout.RootKey(r)] != 0 {
					t.Errorf("root %s: in %d batch records and %d records of its own; want one batch", r, recorded[r], cs.puts[layout.RootKey(r)])
				}
			}
		})
	}
}

func dedup(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// checkPushed checks a path's narinfo and NAR in store.
func checkPushed(t *testing.T, s store.Store, info nix.PathInfo) {
	t.Helper()
	ctx := context.Background()
	data, err := s.Get(ctx, layout.NarInfoKey(info.Path))
	if err != nil {
		t.Fatalf("%s: %v", info.Path, err)
	}
	ni, err := narinfo.Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	// (narinfo.Check would insist on /nix/store; these paths live elsewhere.)
	if ni.StorePath != info.Path || ni.NarSize != info.NarSize || !bytes.Equal(ni.NarHash.Digest(), info.NarHash.Digest()) {
		t.Fatalf("%s: narinfo does not describe the path:\n%s", info.Path, data)
	}
	file, err := s.Get(ctx, ni.URL)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(file)) != ni.FileSize {
		t.Fatalf("%s: FileSize %d, file has %d bytes", info.Path, ni.FileSize, len(file))
	}
	if sum := sha256.Sum256(file); !bytes.Equal(sum[:], ni.FileHash.Digest()) {
		t.Fatalf("%s: FileHash does not match the file", info.Path)
	}
	narBytes := decompress(t, ni.Compression, file)
	if sum := sha256.Sum256(narBytes); !bytes.Equal(sum[:], info.NarHash.Digest()) || uint64(len(narBytes)) != info.NarSize {
		t.Fatalf("%s: decompressed NAR does not match the path", info.Path)
	}
}

func decompress(t *testing.T, c string, b []byte) []byte {
	t.Helper()
	var r io.Reader
	switch c {
	case "zstd":
		d, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		r = d
	case "xz":
		d, err := xz.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		r = d
	case "none":
		return b
	default:
		t.Fatalf("compression %q", c)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPushRefusesHashMismatch(t *testing.T) {
	for _, size := range []int{100, narpack.SmallNAR + 1<<20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			fs := newFakeStore(t)
			dep := fs.add(t, "dep", []byte("dep"))
			p := fs.add(t, "big", bytes.Repeat([]byte{'x'}, size), dep)
			// The store changes behind Nix's back.
			os.Chmod(p, 0o644)
			os.WriteFile(p, bytes.Repeat([]byte{'y'}, size), 0o444)
			dir := t.TempDir()
			s, _ := store.NewFileStore(dir)
			u := New(Config{Store: s, Nix: fs, Key: testKey(t), Jobs: 2, StoreDir: fs.dir, Log: zerolog.Nop()})
			err := u.Push(context.Background(), []string{p})[0]
			if !errors.Is(err, narpack.ErrHashMismatch) || !store.IsPermanent(err) {
				t.Fatalf("err = %v; want a permanent ErrHashMismatch", err)
			}
			if ok, _ := s.Has(context.Background(), layout.NarInfoKey(p)); ok {
				t.Fatal("narinfo written for a mismatching path")
			}
			if ok, _ := s.Has(context.Background(), narKey(fs.infos[p], narpack.Zstd)); ok {
				t.Fatal("NAR object left for a mismatching path")
			}
			// The dependency is fine and is in the cache.
			if ok, _ := s.Has(context.Background(), layout.NarInfoKey(dep)); !ok {
				t.Fatal("dependency not pushed")
			}
		})
	}
}

func TestPushInvalidRootDoesNotFailOthers(t *testing.T) {
	fs := newFakeStore(t)
	good := fs.add(t, "good", []byte("good"))
	bad := filepath.Join(fs.dir, "00000000000000000000000000000000-gone")
	s, _ := store.NewFileStore(t.TempDir())
	u := New(Config{Store: s, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop()})
	errs := u.Push(context.Background(), []string{bad, good})
	if errs[1] != nil {
		t.Fatalf("good root: %v", errs[1])
	}
	if !store.IsPermanent(errs[0]) || !nix.IsInvalid(errs[0]) {
		t.Fatalf("invalid root: %v; want permanent ErrInvalidPath", errs[0])
	}
}

func TestPushFailedDependencyBlocksDependents(t *testing.T) {
	fs := newFakeStore(t)
	leaf := fs.add(t, "leaf", []byte("leaf"))
	mid := fs.add(t, "mid", []byte("mid"), leaf)
	top := fs.add(t, "top", []byte("top"), mid)
	base, _ := store.NewFileStore(t.TempDir())
	var fail atomic.Bool
	fail.Store(true)
	fl := storetest.NewFaulty(base, func(op, key string) error {
		if op == "Put" && key == layout.NarInfoKey(leaf) && fail.Load() {
			return errors.New("injected: connection reset")
		}
		return nil
	})
	u := New(Config{Store: fl, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop()})
	err := u.Push(context.Background(), []string{top})[0]
	var dep *DependencyError
	if !errors.As(err, &dep) || store.IsPermanent(err) {
		t.Fatalf("err = %v; want a transient DependencyError", err)
	}
	for _, p := range []string{mid, top} {
		if ok, _ := base.Has(context.Background(), layout.NarInfoKey(p)); ok {
			t.Fatalf("%s pushed although its dependency failed", p)
		}
	}
	fail.Store(false)
	if err := u.Push(context.Background(), []string{top})[0]; err != nil {
		t.Fatalf("retry: %v", err)
	}
	for _, p := range []string{leaf, mid, top} {
		checkPushed(t, base, fs.infos[p])
	}
}

func TestPushSkipsWhatTheCacheHas(t *testing.T) {
	fs := newFakeStore(t)
	leaf := fs.add(t, "leaf", []byte("leaf"))
	top := fs.add(t, "top", []byte("top"), leaf)
	base, _ := store.NewFileStore(t.TempDir())
	u := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop()})
	if err := u.Push(context.Background(), []string{top})[0]; err != nil {
		t.Fatal(err)
	}
	// A new uploader (a restarted daemon) has seen nothing: it checks the
	// whole closure, uploads nothing and records the root.
	cs := &countingStore{Store: base}
	u2 := New(Config{Store: cs, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop(), TrustCacheFor: time.Hour})
	if err := u2.Push(context.Background(), []string{top})[0]; err != nil {
		t.Fatal(err)
	}
	if cs.puts != 1 || cs.has != 3 { // nix-cache-info, the two .narinfos; the root record
		t.Fatalf("second push: %d puts, %d existence checks; want 1 and 3", cs.puts, cs.has)
	}
	// Within the trust window, a push again checks nothing.
	if err := u2.Push(context.Background(), []string{top})[0]; err != nil {
		t.Fatal(err)
	}
	if cs.puts != 2 || cs.has != 3 {
		t.Fatalf("third push: %d puts, %d existence checks; want 2 (the root record again) and 3", cs.puts, cs.has)
	}
	if u2.Stats().Skipped != 3 { // the closure's two paths, then the root again
		t.Fatalf("skipped = %d", u2.Stats().Skipped)
	}
}

type countingStore struct {
	store.Store
	mu   sync.Mutex
	puts int
	has  int
}

func (c *countingStore) Has(ctx context.Context, key string) (bool, error) {
	c.mu.Lock()
	c.has++
	c.mu.Unlock()
	return c.Store.Has(ctx, key)
}

func (c *countingStore) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	c.mu.Lock()
	c.puts++
	c.mu.Unlock()
	return c.Store.Put(ctx, key, r, size, ct)
}

func TestCacheInfo(t *testing.T) {
	if got := nix.CacheInfo("/nix/store", 40); got != "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n" {
		t.Fatalf("CacheInfo = %q", got)
	}
}

func TestOpenStoreErrors(t *testing.T) {
	for _, tc := range []struct{ uri, want string }{
		{"ftp://x", "unsupported scheme"},
		{"s3://?endpoint=x", "missing bucket"},
		{"s3://b?endpoint=x&scheme=gopher", "scheme must be http or https"},
		{"s3://b?endpoint=x&secret-key=/k", `unknown parameter "secret-key"`},
		{"file://relative", "want file:///absolute/dir"},
		{"file:///d?x=1", "take no parameters"},
	} {
		_, err := store.Open(context.Background(), tc.uri, store.Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("OpenStore(%q) = %v; want %q", tc.uri, err, tc.want)
		}
	}
}

// listingStore counts the operations of a store that can list.
type listingStore struct {
	countingStore
	lists int
}

func (l *listingStore) ListTop(ctx context.Context, fn func(string) bool) error {
	l.mu.Lock()
	l.lists++
	l.mu.Unlock()
	return l.Store.(store.Lister).ListTop(ctx, fn)
}

// TestPushListsInsteadOfChecking: a closure of 60 paths of which the cache
// holds the lower half costs one listing, not 60 existence checks, and
// uploads exactly the missing half.
func TestPushListsInsteadOfChecking(t *testing.T) {
	fs := newFakeStore(t)
	var chain []string
	prev := []string{}
	for i := range 60 {
		p := fs.add(t, fmt.Sprintf("n%d", i), []byte(fmt.Sprint("node ", i)), prev...)
		chain = append(chain, p)
		prev = []string{p}
	}
	base, _ := store.NewFileStore(t.TempDir())
	first := New(Config{Store: base, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop()})
	if err := first.Push(context.Background(), []string{chain[29]})[0]; err != nil {
		t.Fatal(err)
	}
	ls := &listingStore{countingStore: countingStore{Store: base}}
	u := New(Config{Store: ls, Nix: fs, Key: testKey(t), StoreDir: fs.dir, Log: zerolog.Nop()})
	if err := u.Push(context.Background(), []string{chain[59]})[0]; err != nil {
		t.Fatal(err)
	}
	// Checks: nix-cache-info, then one listing of the closure; 30 NARs,
	// 30 .narinfos and the root record; after the writes, the gc marker,
	// which is not there (no gc ever swept), so no re-check.
	if ls.lists != 1 || ls.has != 1 || ls.puts != 2*30+1 {
		t.Fatalf("%d listings, %d existence checks, %d puts; want 1, 1 and 61", ls.lists, ls.has, ls.puts)
	}
	if st := u.Stats(); st.Skipped != 30 || st.Paths != 30 {
		t.Fatalf("stats %+v; want 30 skipped, 30 uploaded", st)
	}
	for _, p := range chain {
		checkPushed(t, base, fs.infos[p])
	}
}

// TestConcurrentPushesDoNotDeadlock runs many small pushes at once over one
// DAG with few upload slots, as a burst of hooks does. A prefetch holding a
// slot must never wait for an upload that is itself waiting for a slot.
func TestConcurrentPushesDoNotDeadlock(t *testing.T) {
	fs := newFakeStore(t)
	paths := fs.randomDAG(t, rand.New(rand.NewPCG(3, 4)), 120, 2, func(i int) []byte {
		return []byte(fmt.Sprintf("path %d", i))
	})
	for round := range 5 {
		for _, jobs := range []int{1, 2} {
			sub, _ := store.NewFileStore(t.TempDir())
			cs := &checkingStore{Store: sub, storeDir: fs.dir, delay: func() time.Duration { return time.Duration(rand.IntN(300)) * time.Microsecond }}
			u := New(Config{Store: cs, Nix: fs, Key: testKey(t), Jobs: jobs, StoreDir: fs.dir, Log: zerolog.Nop()})
			var wg sync.WaitGroup
			for _, p := range paths {
				wg.Go(func() {
					for _, err := range u.Push(context.Background(), []string{p}) {
						if err != nil {
							t.Errorf("push %s: %v", p, err)
						}
					}
				})
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				buf := make([]byte, 1<<20)
				t.Fatalf("round %d, %d jobs: pushes stuck\n%s", round, jobs, buf[:runtime.Stack(buf, true)])
			}
			for _, e := range cs.errs {
				t.Error(e)
			}
			// Every path of every closure reached the store, whole.
			for _, p := range paths {
				checkPushed(t, sub, fs.infos[p])
			}
		}
	}
}
