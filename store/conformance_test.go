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
