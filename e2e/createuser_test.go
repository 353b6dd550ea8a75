package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestInitCreateUser: init --create-user makes the uploading account on a
// real MinIO through its admin API and writes its profile (0600, secret
// never printed); the daemon pushes with that profile; the account cannot
// delete the bucket or cache objects, change the bucket policy, or write to
// another bucket; a second run changes nothing; --rotate-secret gives a new
// secret.
func TestInitCreateUser(t *testing.T) {
	m := testenv.MinIO(t)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-user-1")
	m.MakeBucket(t, "other", false)
	uri := m.StoreURI("team-cache")
	cred := filepath.Join(t.TempDir(), "aws", "credentials")
	if err := os.MkdirAll(filepath.Dir(cred), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cred, []byte("[default]\naws_access_key_id = someone\naws_secret_access_key = else\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	initCmd := func(extra ...string) string {
		t.Helper()
		cmd := testenv.Command(t, nixpushBin(), append([]string{"init", "--store-uri", uri, "--public-read",
			"--create-user", "nixbuilder", "--credentials-file", cred}, extra...)...)
		cmd.Env = append(cmd.Environ(), m.CredentialsEnv()...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("init --create-user: %v\n%s", err, out)
		}
		return string(out)
	}
	profileSecret := func() string {
		t.Helper()
		b, err := os.ReadFile(cred)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if !strings.Contains(text, "[default]\naws_access_key_id = someone\naws_secret_access_key = else\n") {
			t.Fatalf("the other profile was not kept:\n%s", text)
		}
		_, prof, ok := strings.Cut(text, "[nixbuilder]\n")
		if !ok || !strings.HasPrefix(prof, "aws_access_key_id = nixbuilder\naws_secret_access_key = ") {
			t.Fatalf("no [nixbuilder] profile:\n%s", text)
		}
		secret := strings.TrimSpace(strings.TrimPrefix(prof, "aws_access_key_id = nixbuilder\naws_secret_access_key = "))
		if len(secret) != 40 {
			t.Fatalf("secret of %d characters; want 40", len(secret))
		}
		if fi, _ := os.Stat(cred); fi.Mode().Perm() != 0o600 {
			t.Fatalf("credentials file mode %04o; want 0600", fi.Mode().Perm())
		}
		return secret
	}

	first := initCmd()
	for _, want := range []string{"changed: created bucket team-cache", "changed: created policy nixpush-write-team-cache",
		"changed: created user nixbuilder", "changed: attached policy nixpush-write-team-cache to user nixbuilder",
		"changed: wrote profile [nixbuilder] to " + cred + " (mode 0600)", "profile=nixbuilder"} {
		if !strings.Contains(first, want) {
			t.Errorf("first run lacks %q:\n%s", want, first)
		}
	}
	secret := profileSecret()
	if strings.Contains(first, secret) {
		t.Fatalf("init printed the secret:\n%s", first)
	}
	before, _ := os.ReadFile(cred)
	second := initCmd()
	after, _ := os.ReadFile(cred)
	if strings.Contains(second, "changed:") || !strings.Contains(second, "nothing to change") || !bytes.Equal(before, after) {
		t.Fatalf("second run changed something:\n%s", second)
	}

	// The daemon pushes with the profile alone.
	d := startDaemon(t, []string{"AWS_SHARED_CREDENTIALS_FILE=" + cred, "AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="},
		"--store-uri", uri+"&profile=nixbuilder", "--secret-key-file", sec)
	out := nx.Build(t, testenv.Chain(seed(), 3))
	if o, err := d.CLI("push", "--wait", out[0]); err != nil {
		t.Fatalf("push as nixbuilder: %v\n%s\n%s", err, o, d.Log)
	}
	if st := fullStatus(t, d); !st.StoreCheck.OK {
		t.Fatalf("store check as nixbuilder: %+v", st.StoreCheck)
	}
	if strings.Contains(d.Log.String(), "could not be deleted") {
		t.Errorf("the probe object could not be deleted as nixbuilder:\n%s", d.Log)
	}
	checkFetched(t, nx, m.HTTPURL("team-cache"), pub, out...)

	// And nothing more.
	ctx := context.Background()
	c, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4("nixbuilder", secret, ""), Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	denied := func(what string, err error) {
		t.Helper()
		if code := minio.ToErrorResponse(err).Code; code != "AccessDenied" {
			t.Errorf("nixbuilder could %s: %v (code %q); want AccessDenied", what, err, code)
		}
	}
	denied("delete the bucket", c.RemoveBucketWithOptions(ctx, "team-cache", minio.RemoveBucketOptions{ForceDelete: true}))
	denied("delete a cache object", c.RemoveObject(ctx, "team-cache", "nix-cache-info", minio.RemoveObjectOptions{}))
	denied("change the bucket policy", c.SetBucketPolicy(ctx, "team-cache", ""))
	_, err = c.PutObject(ctx, "other", "x", strings.NewReader("x"), 1, minio.PutObjectOptions{})
	denied("write to another bucket", err)

	// Without admin rights (as on a store without MinIO's admin API), init
	// says so and prints the policy to attach by hand.
	cmd := testenv.Command(t, nixpushBin(), "init", "--store-uri", uri, "--create-user", "another", "--credentials-file", cred)
	cmd.Env = append(cmd.Environ(), "AWS_ACCESS_KEY_ID=nixbuilder", "AWS_SECRET_ACCESS_KEY="+secret)
	o, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(o), "no MinIO admin API usable with these credentials") ||
		!strings.Contains(string(o), `"s3:PutObject"`) || !strings.Contains(string(o), "arn:aws:s3:::team-cache/*") {
		t.Fatalf("init --create-user without admin rights: %v\n%s", err, o)
	}
	t.Logf("without admin rights:\n%s", o)

	rotated := initCmd("--rotate-secret")
	if !strings.Contains(rotated, "changed: gave user nixbuilder a new secret") || profileSecret() == secret {
		t.Fatalf("--rotate-secret did not give a new secret:\n%s", rotated)
	}
}
