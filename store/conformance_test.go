package store_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nixpush/nixpush/internal/testenv"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/store/storetest"
)

func TestFileStoreContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.NewFileStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestS3StoreContract(t *testing.T) {
	m := testenv.MinIO(t)
	for _, kv := range m.CredentialsEnv() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		name := fmt.Sprintf("contract-%d", n.Add(1))
		m.MakeBucket(t, name, false)
		s, err := store.Open(context.Background(), m.StoreURI(name), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestUnorderedThroughWrappers: the file store's cheaper listing is found
// through the counting and fault-injecting wrappers, and each wraps it as
// it wraps List: pages counted, faults injected.
func TestUnorderedThroughWrappers(t *testing.T) {
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range store.PageSize + 1 {
		if err := fs.Put(ctx, fmt.Sprintf("%04x.narinfo", i), strings.NewReader(""), 0, "text/x-nix-narinfo"); err != nil {
			t.Fatal(err)
		}
	}
	counted := store.Count(fs)
	b, _ := store.As[store.Bucket](counted)
	if _, ok := store.As[store.UnorderedLister](b); !ok {
		t.Fatal("the counted file store hides its unordered listing")
	}
	n := 0
	if err := store.ListAnyOrder(ctx, b, "", func(store.Object) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != store.PageSize+1 || counted.Requests() != 2 {
		t.Errorf("listed %d keys in %d counted requests; want %d in 2 pages", n, counted.Requests(), store.PageSize+1)
	}
	boom := fmt.Errorf("injected")
	faulty := storetest.NewFaulty(fs, func(op, key string) error {
		if op == "List" {
			return boom
		}
		return nil
	})
	fb, _ := store.As[store.Bucket](faulty)
	if err := store.ListAnyOrder(ctx, fb, "", func(store.Object) error { return nil }); err != boom {
		t.Errorf("ListAnyOrder through Faulty failing List: %v; want the injected error", err)
	}
}
