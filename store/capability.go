package store

import "context"

// Checker is a store that can tell whether it is reachable and exists
// with one cheap request (for a bucket: endpoint, credentials, bucket).
type Checker interface {
	Check(ctx context.Context) error
}

// Deleter is a store that can remove an object.
type Deleter interface {
	Delete(ctx context.Context, key string) error
}

// UnorderedLister is a store that lists cheaper in no particular order:
// the file store reads a page of directory entries at a time, where List,
// in S3's order, holds the names of a whole directory (some 180 bytes a
// key: 18 MB more for a gc of 100,000 paths). A walk that sorts nothing
// (gc's, verify's) lists through ListAnyOrder.
type UnorderedLister interface {
	ListUnordered(ctx context.Context, prefix string, fn func(Object) error) error
}

// ListAnyOrder lists the keys under prefix as Bucket.List does, but in
// whatever order b lists cheapest: ListUnordered where b offers it.
func ListAnyOrder(ctx context.Context, b Bucket, prefix string, fn func(Object) error) error {
	if u, ok := As[UnorderedLister](b); ok {
		return u.ListUnordered(ctx, prefix, fn)
	}
	return b.List(ctx, prefix, fn)
}

// TrafficReporter is a store that reports how its requests go (the S3 store).
type TrafficReporter interface {
	Traffic() Traffic
}

// Wrapper is a store that wraps another (counting, fault injection): what
// the wrapped store can do stays visible through As.
type Wrapper interface {
	Store
	// Unwrap returns the wrapped store.
	Unwrap() Store
}

// viewer is a wrapper that offers its own view of a capability, so that
// calls through it are wrapped too (the counting wrapper counts a
// Bucket's listings). View sets *target, a pointer to an interface
// type, and reports whether the wrapped store has that capability.
type viewer interface {
	View(target any) bool
}

// As finds capability T in s or in the stores s wraps, outermost first,
// as errors.As does in an error's chain: a wrapper's own view of T (see
// Counting) comes before the stores it wraps, and a wrapper that does not
// offer T hides nothing of what it wraps.
func As[T any](s Store) (T, bool) {
	for s != nil {
		if t, ok := s.(T); ok {
			return t, true
		}
		var t T
		if v, ok := s.(viewer); ok && v.View(&t) {
			return t, true
		}
		w, ok := s.(Wrapper)
		if !ok {
			break
		}
		s = w.Unwrap()
	}
	var zero T
	return zero, false
}
