package bucketadmin

import (
	"context"
	"fmt"
	"strings"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// Init prepares store as a binary cache: the store's own preparation (for a
// bucket: create it, allow anonymous reads, add an expiry rule), then
// nix-cache-info when missing. Running it again changes nothing.
func Init(ctx context.Context, st store.Store, opts store.InitOptions) ([]string, error) {
	var changes []string
	if in, ok := store.As[store.Initializer](st); ok {
		c, err := in.Init(ctx, opts)
		if err != nil {
			return changes, err
		}
		changes = append(changes, c...)
	} else if opts.PublicRead || opts.ExpireDays > 0 {
		return nil, fmt.Errorf("%s: --public-read and --expire-days apply to S3 buckets only", st)
	}
	has, err := st.Has(ctx, "nix-cache-info")
	if err != nil {
		return changes, err
	}
	if !has {
		if opts.StoreDir == "" {
			opts.StoreDir = "/nix/store"
		}
		if opts.Priority == 0 {
			opts.Priority = 40
		}
		text := nix.CacheInfo(opts.StoreDir, opts.Priority)
		if err := st.Put(ctx, "nix-cache-info", strings.NewReader(text), int64(len(text)), "text/x-nix-cache-info"); err != nil {
			return changes, err
		}
		changes = append(changes, "wrote nix-cache-info")
	}
	return changes, nil
}

// UploaderActions are what an uploading account needs on a cache bucket:
// the actions of the classic nix-cache-write policy.
var UploaderActions = []string{
	"s3:AbortMultipartUpload",
	"s3:GetBucketLocation",
	"s3:GetObject",
	"s3:ListBucket",
	"s3:ListBucketMultipartUploads",
	"s3:ListMultipartUploadParts",
	"s3:PutObject",
}

// UploaderPolicy is the least-privilege IAM policy for the account nixpush
// uploads with: the classic nix-cache-write actions on the bucket, and
// the deletion of the store check's probe object and of the markers of
// its resumable uploads (only under nixpush/preflight/ and
// nixpush/uploads/, so the account cannot delete cache objects).
func UploaderPolicy(bucket string) string {
	return store.PolicyJSON([]store.Statement{{
		Effect:   "Allow",
		Action:   UploaderActions,
		Resource: []string{"arn:aws:s3:::" + bucket, "arn:aws:s3:::" + bucket + "/*"},
	}, {
		Effect:   "Allow",
		Action:   []string{"s3:DeleteObject"},
		Resource: []string{"arn:aws:s3:::" + bucket + "/" + layout.PreflightPrefix + "*", "arn:aws:s3:::" + bucket + "/" + layout.UploadMarkerPrefix + "*"},
	}})
}

// GCPolicy is the policy for the account nixpush gc (and pin, unpin)
// runs with: list, read and delete objects, abort multipart uploads, and
// write only under nixpush/ (its marker, its probe, pins). Builders keep
// UploaderPolicy: a builder that could delete could wipe the cache.
func GCPolicy(bucket string) string {
	arn := "arn:aws:s3:::" + bucket
	return store.PolicyJSON([]store.Statement{
		{Effect: "Allow", Action: []string{"s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"}, Resource: []string{arn}},
		{Effect: "Allow", Action: []string{"s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:ListMultipartUploadParts"}, Resource: []string{arn + "/*"}},
		{Effect: "Allow", Action: []string{"s3:PutObject"}, Resource: []string{arn + "/nixpush/*"}},
	})
}
