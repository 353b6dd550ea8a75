package store

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nixpush/nixpush/layout"
)

// ErrNoAdminAPI reports a store whose MinIO admin API cannot be used with
// the credentials given: not MinIO (AWS, R2, Garage), or not an admin.
var ErrNoAdminAPI = errors.New("no MinIO admin API usable with these credentials")

// UploaderPolicyName is the name of the policy EnsureUploader creates.
func (s *S3Store) UploaderPolicyName() string { return "nixpush-write-" + s.bucket }

// EnsureUploader makes name an account that may upload to the bucket and
// nothing else, through MinIO's admin API with the store's credentials: it
// creates (or corrects) the policy UploaderPolicyName with the text policy
// (bucketadmin.UploaderPolicy of the bucket), creates the user with a random
// secret, and attaches the policy. An existing user keeps its secret unless
// rotate. It returns what it changed, in words, and the new secret when it
// made one ("" otherwise).
func (s *S3Store) EnsureUploader(ctx context.Context, name, policy string, rotate bool) (changes []string, secret string, err error) {
	adm, err := madmin.NewWithOptions(s.endpoint, &madmin.Options{Creds: s.creds, Secure: s.secure, Transport: s.tr})
	if err != nil {
		return nil, "", fmt.Errorf("%s: admin client: %w", s.name, err)
	}
	policyName := s.UploaderPolicyName()
	want := policy
	info, err := adm.InfoCannedPolicyV2(ctx, policyName)
	switch {
	case madmin.ToErrorResponse(err).Code == "XMinioAdminNoSuchPolicy":
		if err := adm.AddCannedPolicy(ctx, policyName, []byte(want)); err != nil {
			return changes, "", fmt.Errorf("%s: create policy %s: %w", s.name, policyName, err)
		}
		changes = append(changes, "created policy "+policyName+" (upload to "+s.bucket+" only)")
	case err != nil:
		return nil, "", fmt.Errorf("%w: %s: %v", ErrNoAdminAPI, s.name, err)
	case !samePolicy(info.Policy, []byte(want)):
		if err := adm.AddCannedPolicy(ctx, policyName, []byte(want)); err != nil {
			return changes, "", fmt.Errorf("%s: update policy %s: %w", s.name, policyName, err)
		}
		changes = append(changes, "updated policy "+policyName+" to the uploader policy")
	}

	user, err := adm.GetUserInfo(ctx, name)
	exists := err == nil
	if err != nil && madmin.ToErrorResponse(err).Code != "XMinioAdminNoSuchUser" {
		return changes, "", fmt.Errorf("%s: user %s: %w", s.name, name, err)
	}
	if !exists || rotate {
		if secret, err = randomSecret(); err != nil {
			return changes, "", err
		}
		if err := adm.SetUser(ctx, name, secret, madmin.AccountEnabled); err != nil {
			return changes, "", fmt.Errorf("%s: set user %s: %w", s.name, name, err)
		}
		if exists {
			changes = append(changes, "gave user "+name+" a new secret")
		} else {
			changes = append(changes, "created user "+name)
		}
	}
	if !slices.Contains(strings.Split(user.PolicyName, ","), policyName) {
		_, err := adm.AttachPolicy(ctx, madmin.PolicyAssociationReq{Policies: []string{policyName}, User: name})
		if err != nil && madmin.ToErrorResponse(err).Code != "XMinioAdminPolicyChangeAlreadyApplied" {
			return changes, secret, fmt.Errorf("%s: attach policy %s to %s: %w", s.name, policyName, name, err)
		}
		changes = append(changes, "attached policy "+policyName+" to user "+name)
	}
	return changes, secret, nil
}

// CheckKey reports whether the access key and secret are accepted for the
// bucket (one listing).
func (s *S3Store) CheckKey(ctx context.Context, accessKey, secret string) error {
	c, err := minio.New(s.endpoint, &minio.Options{Creds: credentials.NewStaticV4(accessKey, secret, ""),
		Secure: s.secure, Region: s.region, Transport: s.tr, MaxRetries: 1, BucketLookup: minio.BucketLookupAuto})
	if err != nil {
		return err
	}
	if _, err := (minio.Core{Client: c}).ListObjectsV2(s.bucket, layout.PreflightPrefix, "", "", "/", 1); err != nil {
		return s.wrap("list", layout.PreflightPrefix, err)
	}
	return nil
}

// randomSecret is 40 characters from a 62-letter alphabet: 238 bits.
func randomSecret() (string, error) {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, 40)
	for i := range b {
		var r [1]byte
		for {
			if _, err := rand.Read(r[:]); err != nil {
				return "", err
			}
			if int(r[0]) < 256/len(letters)*len(letters) { // no modulo bias
				break
			}
		}
		b[i] = letters[int(r[0])%len(letters)]
	}
	return string(b), nil
}

// samePolicy compares two policies statement by statement, with their
// action and resource lists taken as sets (MinIO gives them back reordered).
func samePolicy(a, b []byte) bool {
	na, errA := normalPolicy(a)
	nb, errB := normalPolicy(b)
	return errA == nil && errB == nil && slices.Equal(na, nb)
}

func normalPolicy(b []byte) ([]string, error) {
	var p struct {
		Statement []struct {
			Effect   string
			Action   any
			Resource any
		}
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	var out []string
	for _, st := range p.Statement {
		out = append(out, st.Effect+"|"+strings.Join(set(st.Action), ",")+"|"+strings.Join(set(st.Resource), ","))
	}
	slices.Sort(out)
	return out, nil
}

func set(field any) []string {
	var out []string
	switch f := field.(type) {
	case string:
		out = []string{f}
	case []any:
		for _, x := range f {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
