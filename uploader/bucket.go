package uploader

import (
	"context"
	"io"
	"time"
)

// Object is one object of a store as a listing shows it.
type Object struct {
	Key          string
	Size         int64
	LastModified time.Time // by the store's clock
	ETag         string    // changes whenever the content does
}

// PendingUpload is an upload begun and never completed: an S3 multipart
// upload, or the temporary file of an interrupted Put in a file:// store.
type PendingUpload struct {
	Key       string
	ID        string
	Initiated time.Time
}

// Bucket is a store that can be walked and pruned: what retention (gc,
// pins) and verification need beside uploading. Both stores implement it.
type Bucket interface {
	Store
	// List calls fn with every object whose key starts with prefix, in
	// key order, streaming: nothing of the listing is kept. An error from
	// fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(Object) error) error
	// Stat describes one object, or returns an error wrapping ErrNotExist.
	Stat(ctx context.Context, key string) (Object, error)
	// Open streams an object, or returns an error wrapping ErrNotExist.
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// Delete removes an object; removing one that is not there succeeds.
	Delete(ctx context.Context, key string) error
	// DeleteMany removes objects, up to a thousand a request (S3's
	// DeleteObjects); removing one that is not there succeeds. Removal
	// via Delete (Store) stays the way to test the permission.
	DeleteMany(ctx context.Context, keys []string) error
	// ListUploads calls fn with every pending upload.
	ListUploads(ctx context.Context, fn func(PendingUpload) error) error
	// AbortUpload discards a pending upload and the parts it holds.
	AbortUpload(ctx context.Context, up PendingUpload) error
}

var (
	_ Bucket = (*S3Store)(nil)
	_ Bucket = (*FileStore)(nil)
)
