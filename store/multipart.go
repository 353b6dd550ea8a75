package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// Multipart is a store whose large objects go up in parts that outlive
// the process sending them (S3): what a resumable upload needs.
type Multipart interface {
	Store
	// NewUpload begins a multipart upload of key and returns its id.
	NewUpload(ctx context.Context, key, contentType string) (id string, err error)
	// PutPart sends part num of upload id and returns its ETag.
	PutPart(ctx context.Context, key, id string, num int, data []byte) (etag string, err error)
	// ListParts returns the parts the store holds for the upload, by
	// number; an error wrapping ErrNoSuchUpload when the upload is gone.
	ListParts(ctx context.Context, key, id string) (map[int]Part, error)
	// Complete makes the object of upload id from parts.
	Complete(ctx context.Context, key, id string, parts []Part) error
	// Abort discards an upload; one already gone is no error.
	Abort(ctx context.Context, key, id string) error
}

// Part is a part of a multipart upload.
type Part struct {
	Num  int    `json:"-"`
	ETag string `json:"etag"`
	Size int64  `json:"size"`
	MD5  string `json:"md5,omitempty"`
}

// ErrNoSuchUpload reports an upload the store no longer has (aborted,
// completed, or expired by a lifecycle rule).
var ErrNoSuchUpload = errors.New("the store has no such upload (NoSuchUpload)")

var _ Multipart = (*S3Store)(nil)

func (s *S3Store) NewUpload(ctx context.Context, key, contentType string) (string, error) {
	var id string
	err := persist(ctx, nil, func() (err error) {
		id, err = minio.Core{Client: s.client}.NewMultipartUpload(ctx, s.bucket, key,
			minio.PutObjectOptions{ContentType: contentType, DisableContentSha256: true})
		return err
	})
	if err != nil {
		return "", s.wrap("put", key, err)
	}
	return id, nil
}

func (s *S3Store) PutPart(ctx context.Context, key, id string, num int, data []byte) (string, error) {
	var p minio.ObjectPart
	r := bytes.NewReader(data)
	err := persist(ctx, r, func() (err error) {
		p, err = minio.Core{Client: s.client}.PutObjectPart(ctx, s.bucket, key, id, num, r, int64(len(data)),
			minio.PutObjectPartOptions{DisableContentSha256: true})
		return err
	})
	if err != nil {
		return "", s.wrapUpload("put part", key, err)
	}
	return strings.Trim(p.ETag, `"`), nil
}

func (s *S3Store) ListParts(ctx context.Context, key, id string) (map[int]Part, error) {
	out := make(map[int]Part)
	marker := 0
	for {
		var res minio.ListObjectPartsResult
		err := persist(ctx, nil, func() (err error) {
			res, err = minio.Core{Client: s.client}.ListObjectParts(ctx, s.bucket, key, id, marker, PageSize)
			return err
		})
		if err != nil {
			return nil, s.wrapUpload("list parts", key, err)
		}
		for _, p := range res.ObjectParts {
			out[p.PartNumber] = Part{Num: p.PartNumber, ETag: strings.Trim(p.ETag, `"`), Size: p.Size}
		}
		if !res.IsTruncated || res.NextPartNumberMarker <= marker {
			return out, nil
		}
		marker = res.NextPartNumberMarker
	}
}

func (s *S3Store) Complete(ctx context.Context, key, id string, parts []Part) error {
	cp := make([]minio.CompletePart, len(parts))
	for i, p := range parts {
		cp[i] = minio.CompletePart{PartNumber: p.Num, ETag: p.ETag}
	}
	sort.Slice(cp, func(i, j int) bool { return cp[i].PartNumber < cp[j].PartNumber })
	err := persist(ctx, nil, func() error {
		_, err := minio.Core{Client: s.client}.CompleteMultipartUpload(ctx, s.bucket, key, id, cp,
			minio.PutObjectOptions{ContentType: "application/x-nix-nar"})
		return err
	})
	if err != nil {
		return s.wrapUpload("complete", key, err)
	}
	return nil
}

// Abort discards an upload; one already gone is no error. It runs even
// when ctx is cancelled (a stopping daemon still cleans up), for at most
// 30 s.
func (s *S3Store) Abort(ctx context.Context, key, id string) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := minio.Core{Client: s.client}.AbortMultipartUpload(actx, s.bucket, key, id)
	if err != nil && minio.ToErrorResponse(err).Code != "NoSuchUpload" {
		return s.wrap("abort upload", key, err)
	}
	return nil
}

// wrapUpload is wrap, with NoSuchUpload told apart.
func (s *S3Store) wrapUpload(op, key string, err error) error {
	if minio.ToErrorResponse(err).Code == "NoSuchUpload" {
		return fmt.Errorf("%s %s %s: %w", s.name, op, key, ErrNoSuchUpload)
	}
	return s.wrap(op, key, err)
}
