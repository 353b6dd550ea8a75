package storetest

import (
	"context"
	"io"

	"github.com/nixpush/nixpush/store"
)

// Faulty wraps a store and fails its requests on demand: Fail, when not
// nil, is asked before each call made through it, with the method's name
// ("Has", "Put", "List", …) and the key (a listing's prefix); an error it
// returns is the call's, and the wrapped store is not called. Through As
// it offers its Bucket, Lister and Deleter views, faulted the same; other
// capabilities are the wrapped store's own.
type Faulty struct {
	next store.Store
	Fail func(op, key string) error
}

// NewFaulty wraps s; fail may be nil (no faults) and set later, before
// the store is used.
func NewFaulty(s store.Store, fail func(op, key string) error) *Faulty {
	return &Faulty{next: s, Fail: fail}
}

func (f *Faulty) fail(op, key string) error {
	if f.Fail == nil {
		return nil
	}
	return f.Fail(op, key)
}

// Unwrap returns the wrapped store.
func (f *Faulty) Unwrap() store.Store { return f.next }

func (f *Faulty) String() string { return f.next.String() }

func (f *Faulty) Has(ctx context.Context, key string) (bool, error) {
	if err := f.fail("Has", key); err != nil {
		return false, err
	}
	return f.next.Has(ctx, key)
}

func (f *Faulty) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error {
	if err := f.fail("Put", key); err != nil {
		return err
	}
	return f.next.Put(ctx, key, r, size, contentType)
}

func (f *Faulty) Get(ctx context.Context, key string) ([]byte, error) {
	if err := f.fail("Get", key); err != nil {
		return nil, err
	}
	return f.next.Get(ctx, key)
}

// View gives the faulted Bucket, Lister and Deleter of the wrapped store.
func (f *Faulty) View(target any) bool {
	switch t := target.(type) {
	case *store.Bucket:
		b, ok := store.As[store.Bucket](f.next)
		if ok {
			*t = &faultyBucket{Faulty: f, b: b}
		}
		return ok
	case *store.Lister:
		l, ok := store.As[store.Lister](f.next)
		if ok {
			*t = faultyLister{f, l}
		}
		return ok
	case *store.Deleter:
		d, ok := store.As[store.Deleter](f.next)
		if ok {
			*t = faultyDeleter{f, d}
		}
		return ok
	}
	return false
}

type faultyLister struct {
	f *Faulty
	l store.Lister
}

func (fl faultyLister) ListTop(ctx context.Context, fn func(name string) bool) error {
	if err := fl.f.fail("ListTop", ""); err != nil {
		return err
	}
	return fl.l.ListTop(ctx, fn)
}

type faultyDeleter struct {
	f *Faulty
	d store.Deleter
}

func (fd faultyDeleter) Delete(ctx context.Context, key string) error {
	if err := fd.f.fail("Delete", key); err != nil {
		return err
	}
	return fd.d.Delete(ctx, key)
}

// faultyBucket is the Bucket view of a Faulty.
type faultyBucket struct {
	*Faulty
	b store.Bucket
}

func (fb *faultyBucket) Unwrap() store.Store { return fb.Faulty }

func (fb *faultyBucket) List(ctx context.Context, prefix string, fn func(store.Object) error) error {
	if err := fb.fail("List", prefix); err != nil {
		return err
	}
	return fb.b.List(ctx, prefix, fn)
}

func (fb *faultyBucket) Stat(ctx context.Context, key string) (store.Object, error) {
	if err := fb.fail("Stat", key); err != nil {
		return store.Object{}, err
	}
	return fb.b.Stat(ctx, key)
}

func (fb *faultyBucket) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := fb.fail("Open", key); err != nil {
		return nil, err
	}
	return fb.b.Open(ctx, key)
}

func (fb *faultyBucket) Delete(ctx context.Context, key string) error {
	if err := fb.fail("Delete", key); err != nil {
		return err
	}
	return fb.b.Delete(ctx, key)
}

func (fb *faultyBucket) DeleteMany(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if err := fb.fail("DeleteMany", k); err != nil {
			return err
		}
	}
	return fb.b.DeleteMany(ctx, keys)
}

func (fb *faultyBucket) ListUploads(ctx context.Context, fn func(store.PendingUpload) error) error {
	if err := fb.fail("ListUploads", ""); err != nil {
		return err
	}
	return fb.b.ListUploads(ctx, fn)
}

func (fb *faultyBucket) AbortUpload(ctx context.Context, up store.PendingUpload) error {
	if err := fb.fail("AbortUpload", up.Key); err != nil {
		return err
	}
	return fb.b.AbortUpload(ctx, up)
}

func (fb *faultyBucket) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	if err := fb.fail("GetTagged", key); err != nil {
		return nil, "", err
	}
	return fb.b.GetTagged(ctx, key)
}

func (fb *faultyBucket) PutIf(ctx context.Context, key string, data []byte, contentType, etag string) (string, error) {
	if err := fb.fail("PutIf", key); err != nil {
		return "", err
	}
	return fb.b.PutIf(ctx, key, data, contentType, etag)
}
