package store

import (
	"context"
	"io"
	"sync/atomic"
)

// Counting counts the requests made to the store it wraps, safely from
// any goroutine: one for each call of Store, Bucket, Lister and Deleter
// methods made through it, one a page of a listing (a listing that
// stops early, or fails, counts the pages it began), one per PageSize
// keys of a DeleteMany. Other capabilities found through it (Checker,
// Multipart, …) are the wrapped store's own, and not counted.
type Counting struct {
	next Store
	n    atomic.Int64
}

// Count wraps s in a Counting.
func Count(s Store) *Counting { return &Counting{next: s} }

// Requests is the number of requests counted.
func (c *Counting) Requests() int64 { return c.n.Load() }

// Add counts n requests made to the store without going through c.
func (c *Counting) Add(n int64) { c.n.Add(n) }

// Unwrap returns the counted store.
func (c *Counting) Unwrap() Store { return c.next }

func (c *Counting) String() string { return c.next.String() }

func (c *Counting) Has(ctx context.Context, key string) (bool, error) {
	c.n.Add(1)
	return c.next.Has(ctx, key)
}

func (c *Counting) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error {
	c.n.Add(1)
	return c.next.Put(ctx, key, r, size, contentType)
}

func (c *Counting) Get(ctx context.Context, key string) ([]byte, error) {
	c.n.Add(1)
	return c.next.Get(ctx, key)
}

// View gives the counted capabilities of the wrapped store: Bucket,
// Lister and Deleter.
func (c *Counting) View(target any) bool {
	switch t := target.(type) {
	case *Bucket:
		b, ok := As[Bucket](c.next)
		if ok {
			*t = &countingBucket{Counting: c, b: b}
		}
		return ok
	case *Lister:
		l, ok := As[Lister](c.next)
		if ok {
			*t = countingLister{c, l}
		}
		return ok
	case *Deleter:
		d, ok := As[Deleter](c.next)
		if ok {
			*t = countingDeleter{c, d}
		}
		return ok
	}
	return false
}

// pages counts a listing's pages as its entries go by: the first when it
// begins, the next at each PageSize-th entry.
func (c *Counting) pages() func() {
	c.n.Add(1)
	n := 0
	return func() {
		if n++; n%PageSize == 0 {
			c.n.Add(1)
		}
	}
}

type countingLister struct {
	c *Counting
	l Lister
}

func (cl countingLister) ListTop(ctx context.Context, fn func(name string) bool) error {
	page := cl.c.pages()
	return cl.l.ListTop(ctx, func(name string) bool {
		page()
		return fn(name)
	})
}

type countingDeleter struct {
	c *Counting
	d Deleter
}

func (cd countingDeleter) Delete(ctx context.Context, key string) error {
	cd.c.n.Add(1)
	return cd.d.Delete(ctx, key)
}

// countingBucket is the Bucket view of a Counting. It wraps the Counting,
// so As through it finds what the Counting does.
type countingBucket struct {
	*Counting
	b Bucket
}

func (cb *countingBucket) Unwrap() Store { return cb.Counting }

func (cb *countingBucket) Stat(ctx context.Context, key string) (Object, error) {
	cb.n.Add(1)
	return cb.b.Stat(ctx, key)
}

func (cb *countingBucket) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	cb.n.Add(1)
	return cb.b.Open(ctx, key)
}

func (cb *countingBucket) Delete(ctx context.Context, key string) error {
	cb.n.Add(1)
	return cb.b.Delete(ctx, key)
}

func (cb *countingBucket) List(ctx context.Context, prefix string, fn func(Object) error) error {
	page := cb.pages()
	return cb.b.List(ctx, prefix, func(o Object) error {
		page()
		return fn(o)
	})
}

func (cb *countingBucket) DeleteMany(ctx context.Context, keys []string) error {
	cb.n.Add(int64(len(keys)+PageSize-1) / PageSize)
	return cb.b.DeleteMany(ctx, keys)
}

func (cb *countingBucket) ListUploads(ctx context.Context, fn func(PendingUpload) error) error {
	cb.n.Add(1)
	return cb.b.ListUploads(ctx, fn)
}

func (cb *countingBucket) AbortUpload(ctx context.Context, up PendingUpload) error {
	cb.n.Add(1)
	return cb.b.AbortUpload(ctx, up)
}

func (cb *countingBucket) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	cb.n.Add(1)
	return cb.b.GetTagged(ctx, key)
}

func (cb *countingBucket) PutIf(ctx context.Context, key string, data []byte, contentType, etag string) (string, error) {
	cb.n.Add(1)
	return cb.b.PutIf(ctx, key, data, contentType, etag)
}
