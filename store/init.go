package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/lifecycle"
)

// InitOptions say how to prepare a cache.
type InitOptions struct {
	StoreDir   string // for nix-cache-info; "" means /nix/store
	Priority   int    // for nix-cache-info; 0 means 40
	PublicRead bool   // allow anonymous GetObject on the bucket's objects
	ExpireDays int    // > 0: expire objects after this many days
}

// Initializer is a store that can prepare itself to be a cache.
type Initializer interface {
	// Init makes the store ready and returns what it changed, in words;
	// nothing when it was ready already.
	Init(ctx context.Context, opts InitOptions) ([]string, error)
}

// Statement is one statement of an IAM or bucket policy.
type Statement struct {
	Sid       string `json:"Sid,omitempty"`
	Effect    string `json:"Effect"`
	Principal any    `json:"Principal,omitempty"`
	Action    any    `json:"Action"`
	Resource  any    `json:"Resource"`
}

type policy struct {
	Version   string      `json:"Version"`
	Statement []Statement `json:"Statement"`
}

// PolicyJSON is the policy document of st.
func PolicyJSON(st []Statement) string {
	b, _ := json.MarshalIndent(policy{Version: "2012-10-17", Statement: st}, "", "  ")
	return string(b)
}

// publicReadSid names the statement nixpush adds for anonymous reads.
const publicReadSid = "nixpush-public-read"

// expireRuleID names the lifecycle rule nixpush adds.
const expireRuleID = "nixpush-expire"

// Init creates the bucket when missing and sets anonymous read access and
// the expiry rule when asked, leaving what is already right alone.
func (s *S3Store) Init(ctx context.Context, opts InitOptions) ([]string, error) {
	var changes []string
	exists, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return nil, s.wrap("check bucket", s.bucket, err)
	}
	if !exists {
		if err := s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: s.region}); err != nil {
			return nil, s.wrap("create bucket", s.bucket, err)
		}
		changes = append(changes, "created bucket "+s.bucket)
	}
	if opts.PublicRead {
		current, err := s.client.GetBucketPolicy(ctx, s.bucket)
		if err != nil && minio.ToErrorResponse(err).Code != "NoSuchBucketPolicy" {
			return changes, s.wrap("get policy", s.bucket, err)
		}
		var p policy
		if current != "" {
			if err := json.Unmarshal([]byte(current), &p); err != nil {
				return changes, fmt.Errorf("%s: bucket policy is not JSON I can read (%v); fix or remove it", s.name, err)
			}
		}
		if !grantsPublicRead(p, s.bucket) {
			p.Statement = append(p.Statement, Statement{
				Sid: publicReadSid, Effect: "Allow", Principal: map[string]any{"AWS": []string{"*"}},
				Action: []string{"s3:GetObject"}, Resource: []string{"arn:aws:s3:::" + s.bucket + "/*"},
			})
			if err := s.client.SetBucketPolicy(ctx, s.bucket, PolicyJSON(p.Statement)); err != nil {
				return changes, s.wrap("set policy", s.bucket, err)
			}
			changes = append(changes, "allowed anonymous download (s3:GetObject) of "+s.bucket+"/*")
		}
	}
	if opts.ExpireDays > 0 {
		cfg, err := s.client.GetBucketLifecycle(ctx, s.bucket)
		if err != nil {
			if code := minio.ToErrorResponse(err).Code; code != "NoSuchLifecycleConfiguration" {
				return changes, s.wrap("get lifecycle", s.bucket, err)
			}
			cfg = lifecycle.NewConfiguration()
		}
		i := slices.IndexFunc(cfg.Rules, func(r lifecycle.Rule) bool { return r.ID == expireRuleID })
		if i < 0 || int(cfg.Rules[i].Expiration.Days) != opts.ExpireDays || cfg.Rules[i].Status != "Enabled" {
			rule := lifecycle.Rule{ID: expireRuleID, Status: "Enabled",
				Expiration: lifecycle.Expiration{Days: lifecycle.ExpirationDays(opts.ExpireDays)}}
			if i < 0 {
				cfg.Rules = append(cfg.Rules, rule)
			} else {
				cfg.Rules[i] = rule
			}
			if err := s.client.SetBucketLifecycle(ctx, s.bucket, cfg); err != nil {
				return changes, s.wrap("set lifecycle", s.bucket, err)
			}
			changes = append(changes, fmt.Sprintf("objects expire after %d days (lifecycle rule %s)", opts.ExpireDays, expireRuleID))
		}
	}
	return changes, nil
}

// grantsPublicRead reports whether p lets anyone GET the bucket's objects.
func grantsPublicRead(p policy, bucket string) bool {
	for _, st := range p.Statement {
		if st.Effect == "Allow" && anyoneIn(st.Principal) && contains(st.Action, "s3:GetObject") &&
			contains(st.Resource, "arn:aws:s3:::"+bucket+"/*") {
			return true
		}
	}
	return false
}

func anyoneIn(principal any) bool {
	switch p := principal.(type) {
	case string:
		return p == "*"
	case map[string]any:
		return contains(p["AWS"], "*")
	}
	return false
}

// contains reports whether a policy field (a string or a list) holds s.
func contains(field any, s string) bool {
	switch f := field.(type) {
	case string:
		return f == s
	case []any:
		for _, x := range f {
			if x == s {
				return true
			}
		}
	case []string:
		return slices.Contains(f, s)
	}
	return false
}

// HTTPURL is the plain URL consumers can read a public bucket at.
func (s *S3Store) HTTPURL() string {
	scheme := "https"
	if !s.secure {
		scheme = "http"
	}
	return scheme + "://" + s.endpoint + "/" + s.bucket
}

// Init on a directory creates it; there is nothing else to prepare.
func (s *FileStore) Init(ctx context.Context, opts InitOptions) ([]string, error) {
	if opts.PublicRead || opts.ExpireDays > 0 {
		return nil, errors.New("--public-read and --expire-days apply to S3 buckets only")
	}
	return nil, nil // NewFileStore made the directory
}
