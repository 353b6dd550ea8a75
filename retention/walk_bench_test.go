package retention

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nixpush/nixpush/store"
)

// BenchmarkWalkHeap measures what a walk's graph keeps per path: the
// live heap after walking a file:// cache of 10,000 synthetic paths (each
// referring to up to three others), with the walk cache, minus the heap
// before. This is what gc and verify grow with.
func BenchmarkWalkHeap(b *testing.B) {
	const n = 10000
	f := &fixture{t: &testing.T{}, paths: make(map[string]string), dir: b.TempDir()}
	var err error
	if f.b, err = store.NewFileStore(f.dir); err != nil {
		b.Fatal(err)
	}
	if f.key, _, err = signature.GenerateKeypair("bench-1", rand.Reader); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		var refs []string
		for _, j := range []int{i - 1, i / 2, i / 3} {
			if j >= 0 && j < i {
				refs = append(refs, fmt.Sprint(j))
			}
		}
		f.add(fmt.Sprint(i), refs...)
	}
	cacheFile := filepath.Join(b.TempDir(), "walk.cache")
	cache, err := OpenCache(cacheFile)
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	ctx := context.Background()
	if _, err := Walk(ctx, f.b, WalkOptions{Cache: cache}); err != nil { // fills the cache
		b.Fatal(err)
	}
	cache.Flush()
	fi, err := os.Stat(cacheFile)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		g, err := Walk(ctx, f.b, WalkOptions{Cache: cache})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if g.NarInfoCount() != n {
			b.Fatalf("walked %d .narinfos", g.NarInfoCount())
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/path")
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "alloc-B/path")
		b.ReportMetric(float64(fi.Size())/n, "cache-file-B/path")
		runtime.KeepAlive(g)
	}
}
