package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

// ErrNotExist reports an object the store does not hold.
var ErrNotExist = errors.New("object does not exist")

// Store is a binary cache: a flat namespace of objects.
type Store interface {
	// Has reports whether the object key exists.
	Has(ctx context.Context, key string) (bool, error)
	// Put stores r (size bytes, or -1 when unknown) under key, atomically:
	// readers see the whole object or none of it. A read error from r aborts
	// the Put and leaves no object behind.
	Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error
	// Get returns a small object whole, or an error wrapping ErrNotExist.
	Get(ctx context.Context, key string) ([]byte, error)
	// String names the store for logs and errors, without secrets.
	String() string
}

// Lister is a store that can list the top level of its namespace, where
// the .narinfo files are: one request for a thousand names where checking
// paths one by one costs a request each.
type Lister interface {
	// ListTop calls fn with each object name that has no "/" in it, in
	// no set order, until fn returns false or the names run out.
	ListTop(ctx context.Context, fn func(name string) bool) error
}

// Options are settings of a store not carried by its URI.
type Options struct {
	// CACertFile is a PEM bundle trusted for an https S3 endpoint, for a
	// private CA such as a self-signed MinIO.
	CACertFile string
	// UploadRate caps the bytes a second sent to an S3 store, across all
	// requests, by time of day (the zero value: no cap).
	UploadRate RateSchedule
}

// Open opens a store from a URI in the syntax of `nix copy --to`:
//
//	s3://BUCKET?endpoint=HOST[:PORT]&scheme=http|https&region=R&profile=P
//	file:///DIR
func Open(ctx context.Context, uri string, opts Options) (Store, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("store URI %q: %w", uri, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" || u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return nil, fmt.Errorf("store URI %q: want file:///absolute/dir", uri)
		}
		if len(u.Query()) > 0 {
			return nil, fmt.Errorf("store URI %q: file:// stores take no parameters", uri)
		}
		return NewFileStore(u.Path)
	case "s3":
		return openS3(ctx, u, opts)
	default:
		return nil, fmt.Errorf("store URI %q: unsupported scheme %q; use s3://BUCKET?endpoint=HOST or file:///DIR", uri, u.Scheme)
	}
}

// Sleep waits d, or until ctx is done.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
