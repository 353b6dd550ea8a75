package store

import (
	"context"
	"errors"
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
	// List calls fn with every object whose key starts with prefix,
	// streaming, in key order (byte-wise ascending), a page of PageSize
	// keys a request. An error from fn stops the listing and is returned.
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
	// GetTagged returns a small object whole with its ETag, or an error
	// wrapping ErrNotExist.
	GetTagged(ctx context.Context, key string) (data []byte, etag string, err error)
	// PutIf stores data under key only if the object's ETag is still
	// etag or, when etag is "", only if there is no object (S3's If-Match
	// and If-None-Match: *); otherwise it returns an error wrapping
	// ErrConditionFailed and changes nothing. It returns the ETag of the
	// object it wrote. A store that ignores the condition is found by
	// ProbeConditional, not here.
	PutIf(ctx context.Context, key string, data []byte, contentType, etag string) (newETag string, err error)
}

// PageSize is how many keys S3 gives in a listing page and takes in a
// DeleteObjects request; the file store pages its listings the same.
const PageSize = 1000

// ErrConditionFailed reports a conditional write whose condition did not
// hold: another writer got there first.
var ErrConditionFailed = errors.New("the object changed since it was read (precondition failed)")

var (
	_ Bucket = (*S3Store)(nil)
	_ Bucket = (*FileStore)(nil)
)
