package uploader

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpush/nixpush/store"
	"github.com/rs/zerolog"
)

// startOrderStore records the order in which NAR uploads start.
type startOrderStore struct {
	store.Store
	mu     sync.Mutex
	starts []string
}

func (s *startOrderStore) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	if strings.HasPrefix(key, "nar/") {
		s.mu.Lock()
		s.starts = append(s.starts, key)
		s.mu.Unlock()
		time.Sleep(time.Millisecond) // a request's latency: slots stay busy
	}
	return s.Store.Put(ctx, key, r, size, ct)
}

// TestLargestNARStartsFirst pushes a closure of 300 small paths and one
// large one (referenced by a path near the top, so deps-first order puts it
// late): its NAR starts among the first, not after the others (issue 24),
// and the closure rule still holds for every .narinfo.
func TestLargestNARStartsFirst(t *testing.T) {
	fs := newFakeStore(t)
	rng := mrand.New(mrand.NewPCG(3, 4))
	paths := fs.randomDAG(t, rng, 299, 2, func(i int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("small %d ", i)), rng.IntN(500)+1)
	})
	big := make([]byte, smallNAR+(2<<20))
	rand.Read(big)
	large := fs.add(t, "large", big, paths[len(paths)-1])
	// The top refers to every small path, so the closure holds all 301.
	top := fs.add(t, "top", []byte("top"), append([]string{large}, paths...)...)
	base, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rec := &startOrderStore{Store: &checkingStore{Store: base, storeDir: fs.dir}}
	u := New(Config{Store: rec, Nix: fs, Key: testKey(t), Jobs: 4, StoreDir: fs.dir, Log: zerolog.Nop()})
	for _, err := range u.Push(context.Background(), []string{top}) {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range rec.Store.(*checkingStore).errs {
		t.Error(e)
	}
	key := narKey(fs.infos[large], Zstd)
	at := slices.Index(rec.starts, key)
	t.Logf("the large NAR started %d of %d", at+1, len(rec.starts))
	// Among the first two rounds of the 4 job slots: the .narinfo writers of
	// leaf paths start their own NARs while the prefetch starts the large
	// one. (Deps first, before largest-first, it started 260th of 301.)
	if at < 0 || at >= 8 {
		t.Errorf("the large NAR started %d of %d NAR uploads; want among the first 8", at+1, len(rec.starts))
	}
}
