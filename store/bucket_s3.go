package store

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/minio/minio-go/v7"
)

// List lists the bucket under prefix (ListObjectsV2, a thousand keys a
// request), one page at a time. (Listing ranges of keys at once, cut
// before each nixbase32 character, took a second gc of 100,000 paths on
// a loopback MinIO from 38 s to 102 s: MinIO spent its CPU on each
// range's start and on the page each range reads past its end.)
func (s *S3Store) List(ctx context.Context, prefix string, fn func(Object) error) error {
	// The iterator, not ListObjects' channel: a listing stopped early (by
	// fn) leaves that one's goroutine blocked for good on its last send,
	// holding a page of ObjectInfos (a 100,000-path gc on MinIO reached
	// 378 MiB).
	opts := minio.ListObjectsOptions{Prefix: prefix, Recursive: true}
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, opts) {
		if obj.Err != nil {
			return s.wrap("list", prefix, obj.Err)
		}
		if err := fn(Object{Key: obj.Key, Size: obj.Size, LastModified: obj.LastModified, ETag: strings.Trim(obj.ETag, `"`)}); err != nil {
			return err
		}
	}
	return nil
}

func (s *S3Store) Stat(ctx context.Context, key string) (Object, error) {
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		if isNotFound(err) {
			return Object{}, fmt.Errorf("%s: %s: %w", s.name, key, ErrNotExist)
		}
		return Object{}, s.wrap("stat", key, err)
	}
	return Object{Key: key, Size: info.Size, LastModified: info.LastModified, ETag: strings.Trim(info.ETag, `"`)}, nil
}

// Open streams an object; a missing one is reported at once (by a Stat
// of minio-go's lazy GetObject), not at the first Read.
func (s *S3Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.wrap("get", key, err)
	}
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		if isNotFound(err) {
			return nil, fmt.Errorf("%s: %s: %w", s.name, key, ErrNotExist)
		}
		return nil, s.wrap("get", key, err)
	}
	return obj, nil
}

// DeleteMany removes keys with DeleteObjects requests of a thousand keys.
func (s *S3Store) DeleteMany(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	ch := make(chan minio.ObjectInfo)
	go func() {
		defer close(ch)
		for _, k := range keys {
			select {
			case ch <- minio.ObjectInfo{Key: k}:
			case <-ctx.Done():
				return
			}
		}
	}()
	var first error
	for e := range s.client.RemoveObjects(ctx, s.bucket, ch, minio.RemoveObjectsOptions{}) {
		if e.Err != nil && !isNotFound(e.Err) && first == nil {
			first = s.wrap("delete", e.ObjectName, e.Err)
		}
	}
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

func (s *S3Store) ListUploads(ctx context.Context, fn func(PendingUpload) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for up := range s.client.ListIncompleteUploads(ctx, s.bucket, "", true) {
		if up.Err != nil {
			return s.wrap("list uploads", "", up.Err)
		}
		if err := fn(PendingUpload{Key: up.Key, ID: up.UploadID, Initiated: up.Initiated}); err != nil {
			return err
		}
	}
	return nil
}

func (s *S3Store) AbortUpload(ctx context.Context, up PendingUpload) error {
	core := minio.Core{Client: s.client}
	if err := core.AbortMultipartUpload(ctx, s.bucket, up.Key, up.ID); err != nil && minio.ToErrorResponse(err).Code != "NoSuchUpload" {
		return s.wrap("abort upload", up.Key, err)
	}
	return nil
}

// GetTagged reads a small object and its ETag in one request.
func (s *S3Store) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, "", s.wrap("get", key, err)
	}
	defer obj.Close()
	info, err := obj.Stat()
	if err == nil {
		var b []byte
		if b, err = io.ReadAll(obj); err == nil {
			return b, info.ETag, nil
		}
	}
	if isNotFound(err) {
		return nil, "", fmt.Errorf("%s: %s: %w", s.name, key, ErrNotExist)
	}
	return nil, "", s.wrap("get", key, err)
}

// PutIf writes with If-Match: etag, or If-None-Match: * when etag is "";
// S3 answers 412 Precondition Failed when the condition does not hold
// (and 409 ConditionalRequestConflict when another conditional write of
// the key is under way).
func (s *S3Store) PutIf(ctx context.Context, key string, data []byte, contentType, etag string) (string, error) {
	opts := minio.PutObjectOptions{ContentType: contentType}
	if etag == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(etag)
	}
	info, err := s.client.PutObject(ctx, s.bucket, key, bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		resp := minio.ToErrorResponse(err)
		if resp.StatusCode == http.StatusPreconditionFailed || resp.StatusCode == http.StatusConflict ||
			resp.Code == "PreconditionFailed" || resp.Code == "ConditionalRequestConflict" ||
			(etag != "" && isNotFound(err)) {
			return "", fmt.Errorf("%s: put %s: %w", s.name, key, ErrConditionFailed)
		}
		return "", s.wrap("put", key, err)
	}
	return info.ETag, nil
}
