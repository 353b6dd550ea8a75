package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestInit prepares a bucket that does not exist with nixpush init, pushes
// to it, and has real Nix substitute from it anonymously; a second init
// changes nothing; the printed policy grants exactly the classic
// nix-cache-write actions.
func TestInit(t *testing.T) {
	m := testenv.MinIO(t)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-init-1")
	uri := m.StoreURI("fresh-cache")
	initCmd := func() string {
		t.Helper()
		cmd := testenv.Command(t, nixpushBin(), "init", "--store-uri", uri, "--public-read", "--expire-days", "365",
			"--print-policy", "--secret-key-file", sec)
		cmd.Env = append(cmd.Environ(), m.CredentialsEnv()...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("nixpush init: %v\n%s", err, out)
		}
		return string(out)
	}
	first := initCmd()
	for _, want := range []string{"changed: created bucket fresh-cache", "changed: allowed anonymous download",
		"changed: objects expire after 365 days", "changed: wrote nix-cache-info",
		`substituters = [ "` + m.HTTPURL("fresh-cache") + `" ]`, `trusted-public-keys = [ "` + strings.TrimSpace(pub) + `" ]`} {
		if !strings.Contains(first, want) {
			t.Errorf("first init output lacks %q:\n%s", want, first)
		}
	}
	c := m.Client(t)
	ctx := context.Background()
	info1, err := c.StatObject(ctx, "fresh-cache", "nix-cache-info", minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	policy1, _ := c.GetBucketPolicy(ctx, "fresh-cache")

	time.Sleep(1100 * time.Millisecond) // a rewrite would show in LastModified
	second := initCmd()
	if strings.Contains(second, "changed:") || !strings.Contains(second, "nothing to change") {
		t.Fatalf("second init changed things:\n%s", second)
	}
	info2, _ := c.StatObject(ctx, "fresh-cache", "nix-cache-info", minio.StatObjectOptions{})
	policy2, _ := c.GetBucketPolicy(ctx, "fresh-cache")
	if info2.ETag != info1.ETag || !info2.LastModified.Equal(info1.LastModified) || policy1 != policy2 {
		t.Fatal("second init rewrote nix-cache-info or the policy")
	}
	lc, err := c.GetBucketLifecycle(ctx, "fresh-cache")
	if err != nil || len(lc.Rules) != 1 || lc.Rules[0].Expiration.Days != 365 {
		t.Fatalf("lifecycle: %+v, %v", lc, err)
	}

	// The printed policy: exactly the classic nix-cache-write actions on the
	// bucket and its objects,
	start := strings.Index(first, "{")
	end := strings.Index(first, "\n}") + 2
	var pol struct {
		Statement []struct {
			Effect   string
			Action   []string
			Resource []string
		}
	}
	if err := json.Unmarshal([]byte(first[start:end]), &pol); err != nil {
		t.Fatalf("printed policy: %v\n%s", err, first[start:end])
	}
	wantActions := []string{"s3:AbortMultipartUpload", "s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket",
		"s3:ListBucketMultipartUploads", "s3:ListMultipartUploadParts", "s3:PutObject"}
	if len(pol.Statement) != 2 || pol.Statement[0].Effect != "Allow" || pol.Statement[1].Effect != "Allow" {
		t.Fatalf("printed policy: %+v", pol)
	}
	// and the deletion of the store check's probe object and of the
	// markers of resumable uploads, nothing else.
	if p := pol.Statement[1]; !slices.Equal(p.Action, []string{"s3:DeleteObject"}) ||
		!slices.Equal(p.Resource, []string{"arn:aws:s3:::fresh-cache/nixpush/preflight/*", "arn:aws:s3:::fresh-cache/nixpush/uploads/*"}) {
		t.Fatalf("second statement: %+v; want s3:DeleteObject on the probe and upload marker prefixes only", p)
	}
	got := slices.Sorted(slices.Values(pol.Statement[0].Action))
	if !slices.Equal(got, wantActions) {
		t.Fatalf("policy actions %v; want %v", got, wantActions)
	}
	// Then the gc policy: the only one that may delete.
	gcPol := first[end:]
	if !strings.Contains(gcPol, "policy for the account nixpush gc") || !strings.Contains(gcPol, `"s3:DeleteObject"`) ||
		!strings.Contains(gcPol, `"arn:aws:s3:::fresh-cache/nixpush/*"`) {
		t.Fatalf("init --print-policy prints no gc policy after the uploader's:\n%s", gcPol)
	}
	if res := slices.Sorted(slices.Values(pol.Statement[0].Resource)); !slices.Equal(res, []string{"arn:aws:s3:::fresh-cache", "arn:aws:s3:::fresh-cache/*"}) {
		t.Fatalf("policy resources %v", res)
	}

	// The prepared bucket works: push, and Nix substitutes anonymously.
	d := startDaemon(t, m.CredentialsEnv(), "--store-uri", uri, "--secret-key-file", sec)
	out := nx.Build(t, testenv.Chain(seed(), 3))
	if o, err := d.CLI("push", "--wait", out[0]); err != nil {
		t.Fatalf("push: %v %s", err, o)
	}
	checkFetched(t, nx, m.HTTPURL("fresh-cache"), pub, out...)
}
