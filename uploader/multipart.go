package uploader

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

// multipart is a store whose large objects go up in parts that outlive
// the process sending them (S3): what a resumable upload needs.
type multipart interface {
	Store
	newUpload(ctx context.Context, key, contentType string) (id string, err error)
	putPart(ctx context.Context, key, id string, num int, data []byte) (etag string, err error)
	// listParts returns the parts the store holds for the upload, by
	// number; an error wrapping errNoSuchUpload when the upload is gone.
	listParts(ctx context.Context, key, id string) (map[int]SentPart, error)
	complete(ctx context.Context, key, id string, parts []SentPart) error
	abort(ctx context.Context, key, id string) error
}

// errNoSuchUpload reports an upload the store no longer has (aborted,
// completed, or expired by a lifecycle rule).
var errNoSuchUpload = errors.New("the store has no such upload (NoSuchUpload)")

var _ multipart = (*S3Store)(nil)

func (s *S3Store) newUpload(ctx context.Context, key, contentType string) (string, error) {
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

func (s *S3Store) putPart(ctx context.Context, key, id string, num int, data []byte) (string, error) {
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

func (s *S3Store) listParts(ctx context.Context, key, id string) (map[int]SentPart, error) {
	out := make(map[int]SentPart)
	marker := 0
	for {
		var res minio.ListObjectPartsResult
		err := persist(ctx, nil, func() (err error) {
			res, err = minio.Core{Client: s.client}.ListObjectParts(ctx, s.bucket, key, id, marker, 1000)
			return err
		})
		if err != nil {
			return nil, s.wrapUpload("list parts", key, err)
		}
		for _, p := range res.ObjectParts {
			out[p.PartNumber] = SentPart{Num: p.PartNumber, ETag: strings.Trim(p.ETag, `"`), Size: p.Size}
		}
		if !res.IsTruncated || res.NextPartNumberMarker <= marker {
			return out, nil
		}
		marker = res.NextPartNumberMarker
	}
}

func (s *S3Store) complete(ctx context.Context, key, id string, parts []SentPart) error {
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

// abort discards an upload; one already gone is no error. It runs even
// when ctx is cancelled (a stopping daemon still cleans up), for at most
// 30 s.
func (s *S3Store) abort(ctx context.Context, key, id string) error {
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
		return fmt.Errorf("%s %s %s: %w", s.name, op, key, errNoSuchUpload)
	}
	return s.wrap(op, key, err)
}
