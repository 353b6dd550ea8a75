package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/store"
)

// Run checks the contract of a store: each subtest opens an empty one
// with open, which must be a Bucket.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	bucket := func(t *testing.T) store.Bucket {
		t.Helper()
		s := open(t)
		b, ok := store.As[store.Bucket](s)
		if !ok {
			t.Fatalf("%s is not a Bucket", s)
		}
		return b
	}
	t.Run("PutGetHas", func(t *testing.T) { testPutGetHas(t, bucket(t)) })
	t.Run("NotExist", func(t *testing.T) { testNotExist(t, bucket(t)) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, bucket(t)) })
	t.Run("ListOrder", func(t *testing.T) { testListOrder(t, bucket(t)) })
	t.Run("ListPages", func(t *testing.T) { testListPages(t, bucket(t)) })
	t.Run("Conditional", func(t *testing.T) { testConditional(t, bucket(t)) })
	t.Run("Uploads", func(t *testing.T) { testUploads(t, bucket(t)) })
	t.Run("Wrapped", func(t *testing.T) { testWrapped(t, bucket(t)) })
}

func put(t *testing.T, b store.Store, key, data string) {
	t.Helper()
	if err := b.Put(context.Background(), key, strings.NewReader(data), int64(len(data)), "text/plain"); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func testPutGetHas(t *testing.T, b store.Bucket) {
	ctx := context.Background()
	put(t, b, "nix-cache-info", "StoreDir: /nix/store\n")
	put(t, b, "nar/x.nar", "first")
	put(t, b, "nar/x.nar", "second") // replaces
	if err := b.Put(ctx, "log/streamed", strings.NewReader("of unknown size"), -1, "text/plain"); err != nil {
		t.Fatalf("put of unknown size: %v", err)
	}
	for key, want := range map[string]string{"nix-cache-info": "StoreDir: /nix/store\n", "nar/x.nar": "second", "log/streamed": "of unknown size"} {
		if has, err := b.Has(ctx, key); !has || err != nil {
			t.Errorf("Has(%s) = %v, %v; want true", key, has, err)
		}
		if got, err := b.Get(ctx, key); string(got) != want || err != nil {
			t.Errorf("Get(%s) = %q, %v; want %q", key, got, err, want)
		}
		o, err := b.Stat(ctx, key)
		if err != nil || o.Key != key || o.Size != int64(len(want)) || o.ETag == "" || o.LastModified.IsZero() {
			t.Errorf("Stat(%s) = %+v, %v; want its key, size %d, an ETag and a time", key, o, err, len(want))
		}
		r, err := b.Open(ctx, key)
		if err != nil {
			t.Errorf("Open(%s): %v", key, err)
			continue
		}
		got, err := io.ReadAll(r)
		r.Close()
		if string(got) != want || err != nil {
			t.Errorf("Open(%s) reads %q, %v; want %q", key, got, err, want)
		}
	}
	// A read error aborts the Put and leaves no object.
	failed := io.MultiReader(strings.NewReader("part"), errReader{errors.New("packing failed")})
	if err := b.Put(ctx, "nar/failed.nar", failed, -1, "application/x-nix-nar"); err == nil {
		t.Error("Put from a failing reader succeeded")
	}
	if has, _ := b.Has(ctx, "nar/failed.nar"); has {
		t.Error("a failed Put left an object")
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func testNotExist(t *testing.T, b store.Bucket) {
	ctx := context.Background()
	if has, err := b.Has(ctx, "missing.narinfo"); has || err != nil {
		t.Errorf("Has(missing) = %v, %v; want false, nil", has, err)
	}
	if _, err := b.Get(ctx, "missing.narinfo"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Get(missing): %v; want ErrNotExist", err)
	}
	if _, err := b.Stat(ctx, "nar/missing.nar"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Stat(missing): %v; want ErrNotExist", err)
	}
	if _, err := b.Open(ctx, "nar/missing.nar"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Open(missing): %v; want ErrNotExist at once", err)
	}
	if _, _, err := b.GetTagged(ctx, "missing"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("GetTagged(missing): %v; want ErrNotExist", err)
	}
}

func testDelete(t *testing.T, b store.Bucket) {
	ctx := context.Background()
	put(t, b, "a", "a")
	put(t, b, "nar/b", "b")
	put(t, b, "nar/c", "c")
	if err := b.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "a"); err != nil {
		t.Errorf("deleting what is not there: %v; want success", err)
	}
	if err := b.DeleteMany(ctx, []string{"nar/b", "nar/c", "nar/never"}); err != nil {
		t.Errorf("DeleteMany: %v", err)
	}
	if got := list(t, b, ""); len(got) != 0 {
		t.Errorf("left after deleting everything: %q", got)
	}
}

func list(t *testing.T, b store.Bucket, prefix string) []string {
	t.Helper()
	var keys []string
	if err := b.List(context.Background(), prefix, func(o store.Object) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return keys
}

// testListOrder: S3's key order is byte-wise, and a "directory" sorts
// where its name and "/" do, among keys that share its name's start
// (a key cannot also be a "directory": a file store cannot hold both, nor
// can MinIO).
func testListOrder(t *testing.T, b store.Bucket) {
	keys := []string{"A", "a-b", "a.narinfo", "a/b", "a/c/d", "a0", "ab", "nar/0.nar", "nar/z.nar",
		"nar-x", "nix-cache-info", "nixpush/pins/p", "z", "~", "é"}
	for _, k := range keys {
		put(t, b, k, k)
	}
	want := slices.Clone(keys)
	slices.Sort(want)
	for _, prefix := range []string{"", "a", "a/", "a/c", "nar/", "nar", "ni", "none"} {
		var w []string
		for _, k := range want {
			if strings.HasPrefix(k, prefix) {
				w = append(w, k)
			}
		}
		if got := list(t, b, prefix); !slices.Equal(got, w) {
			t.Errorf("List(%q) = %q; want %q", prefix, got, w)
		}
	}
	if l, ok := store.As[store.Lister](b); ok {
		var got []string
		if err := l.ListTop(context.Background(), func(n string) bool { got = append(got, n); return true }); err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		var w []string
		for _, k := range want {
			if !strings.Contains(k, "/") {
				w = append(w, k)
			}
		}
		if !slices.Equal(got, w) {
			t.Errorf("ListTop = %q; want %q", got, w)
		}
	}
	stop := errors.New("stop")
	n := 0
	err := b.List(context.Background(), "", func(store.Object) error {
		if n++; n == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 3 {
		t.Errorf("List stopped by fn after %d: %v; want fn's error after 3", n, err)
	}
}

// testListPages: a listing of more than a page, under a prefix, keeps
// the order across pages; DeleteMany takes more than a request's keys.
func testListPages(t *testing.T, b store.Bucket) {
	ctx := context.Background()
	var keys []string
	for i := range store.PageSize + store.PageSize/3 {
		keys = append(keys, fmt.Sprintf("page/%x.nar", i*7919%65536))
	}
	put(t, b, "page.narinfo", "beside")
	put(t, b, "pagf", "after")
	var eg errgroup.Group
	eg.SetLimit(16)
	for _, k := range keys {
		eg.Go(func() error {
			return b.Put(ctx, k, bytes.NewReader(nil), 0, "application/x-nix-nar")
		})
	}
	if err := eg.Wait(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	if got := list(t, b, "page/"); !slices.Equal(got, keys) {
		t.Errorf("List(page/): %d keys, first difference at %d; want %d in order", len(got), firstDiff(got, keys), len(keys))
	}
	if err := b.DeleteMany(ctx, keys); err != nil {
		t.Fatal(err)
	}
	if got := list(t, b, "pag"); !slices.Equal(got, []string{"page.narinfo", "pagf"}) {
		t.Errorf("after DeleteMany of %d: %d keys left (%q…)", len(keys), len(got), got[:min(3, len(got))])
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// testConditional: If-None-Match: * and If-Match, as gc's marker uses them.
func testConditional(t *testing.T, b store.Bucket) {
	ctx := context.Background()
	const key = "nixpush/marker"
	if _, err := b.PutIf(ctx, key, []byte("x"), "application/json", "no-such-etag"); !errors.Is(err, store.ErrConditionFailed) {
		t.Errorf("If-Match on a missing object: %v; want ErrConditionFailed", err)
	}
	e1, err := b.PutIf(ctx, key, []byte("one"), "application/json", "")
	if err != nil || e1 == "" {
		t.Fatalf("If-None-Match * on a missing object: %q, %v", e1, err)
	}
	if _, err := b.PutIf(ctx, key, []byte("two"), "application/json", ""); !errors.Is(err, store.ErrConditionFailed) {
		t.Errorf("If-None-Match * on an object: %v; want ErrConditionFailed", err)
	}
	data, tag, err := b.GetTagged(ctx, key)
	if err != nil || string(data) != "one" || tag == "" {
		t.Fatalf("GetTagged = %q, %q, %v", data, tag, err)
	}
	e2, err := b.PutIf(ctx, key, []byte("two"), "application/json", tag)
	if err != nil || e2 == "" || e2 == tag {
		t.Fatalf("If-Match of the current ETag: %q, %v; want a new ETag", e2, err)
	}
	if _, err := b.PutIf(ctx, key, []byte("three"), "application/json", tag); !errors.Is(err, store.ErrConditionFailed) {
		t.Errorf("If-Match of an old ETag: %v; want ErrConditionFailed", err)
	}
	if data, tag2, err := b.GetTagged(ctx, key); err != nil || string(data) != "two" || tag2 != e2 {
		t.Errorf("GetTagged = %q, %q, %v; want \"two\" and the ETag PutIf returned, %q", data, tag2, err, e2)
	}
}

// testUploads: a pending multipart upload is listed and aborted (stores
// without Multipart have no way to begin one here).
func testUploads(t *testing.T, b store.Bucket) {
	ctx := context.Background()
	m, ok := store.As[store.Multipart](b)
	if !ok {
		t.Skipf("%s cannot begin an upload through its interface", b)
	}
	id, err := m.NewUpload(ctx, "nar/pending.nar", "application/x-nix-nar")
	if err != nil {
		t.Fatal(err)
	}
	var ups []store.PendingUpload
	if err := b.ListUploads(ctx, func(up store.PendingUpload) error { ups = append(ups, up); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(ups) != 1 || ups[0].Key != "nar/pending.nar" || ups[0].ID != id {
		t.Fatalf("ListUploads = %+v; want the upload %s of nar/pending.nar", ups, id)
	}
	if err := b.AbortUpload(ctx, ups[0]); err != nil {
		t.Fatal(err)
	}
	if err := b.AbortUpload(ctx, ups[0]); err != nil {
		t.Errorf("aborting an upload gone: %v; want success", err)
	}
	ups = nil
	if err := b.ListUploads(ctx, func(up store.PendingUpload) error { ups = append(ups, up); return nil }); err != nil || len(ups) != 0 {
		t.Errorf("ListUploads after abort = %+v, %v; want none", ups, err)
	}
}

// testWrapped: capabilities stay visible through wrappers, and the
// counting and faulty views act on the wrapped store.
func testWrapped(t *testing.T, b store.Bucket) {
	ctx := context.Background()
	injected := errors.New("injected")
	f := NewFaulty(b, func(op, key string) error {
		if op == "Stat" {
			return injected
		}
		return nil
	})
	c := store.Count(f)
	cb, ok := store.As[store.Bucket](c)
	if !ok {
		t.Fatal("no Bucket through Count(Faulty(bucket))")
	}
	put(t, cb, "x", "x")
	if _, err := cb.Stat(ctx, "x"); !errors.Is(err, injected) {
		t.Errorf("Stat through the faulty view: %v; want the injected error", err)
	}
	list(t, cb, "")
	if _, ok := store.As[store.Deleter](c); !ok {
		t.Error("no Deleter through Count(Faulty(bucket))")
	}
	if got := c.Requests(); got != 3 {
		t.Errorf("counted %d requests; want 3 (put, stat, a listing's page)", got)
	}
	if _, ok := store.As[store.Checker](c); !ok {
		t.Error("Checker hidden by the wrappers")
	}
}
