package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestHookToMinIO is the backbone: Nix builds a chain of 30 derivations with
// nixpush-hook; the daemon pushes to a real MinIO; a fresh store substitutes
// the closure over plain HTTP; another key of the same name is refused.
func TestHookToMinIO(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-1", onBucket("cache"), daemonArgs("--jobs", "8"))
	_, otherPub := keys(t, "nixpush-e2e-1")
	d := f.d
	out := f.build(testenv.Chain(seed(), 30))
	if len(closureOf(t, f.nx, out...)) < 30 {
		t.Fatalf("closure of %v has fewer than 30 paths", out)
	}
	d.MustWait(3 * time.Minute)

	st := status(t, d)
	if st["queued"] != 0 || st["active"] != 0 || st["failed"] != 0 || st["done"] < 30 {
		t.Fatalf("status after wait: %v", st)
	}
	f.checkFetched(out...)
	checkRefused(t, f.nx, f.cacheURL(), otherPub, out...)

	// No secret reaches the logs or the status output.
	statusText, _ := d.CLI("status")
	statusJSON, _ := d.CLI("status", "--json")
	secretKey, _ := os.ReadFile(f.sec)
	_, b64, _ := strings.Cut(string(secretKey), ":")
	for what, text := range map[string]string{"daemon log": d.Log.String(), "status": statusText, "status --json": statusJSON} {
		for name, secret := range map[string]string{"S3 secret key": f.m.SecretKey, "signing key": b64} {
			if strings.Contains(text, secret) {
				t.Errorf("%s shows the %s", what, name)
			}
		}
	}
}

// TestHookToFileCache is the same round trip through a file:// cache, the
// embedded default (no --store-uri).
func TestHookToFileCache(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-file-1")
	_, otherPub := keys(t, "nixpush-e2e-file-1")
	out := f.build(testenv.Chain(seed(), 30))
	f.d.MustWait(3 * time.Minute)
	f.checkFetched(out...)
	checkRefused(t, f.nx, f.cacheURL(), otherPub, out...)
}

// TestAwkwardPaths round-trips paths that are hard to serialise, through
// MinIO with each compression.
func TestAwkwardPaths(t *testing.T) {
	m := testenv.MinIO(t)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-awkward-1")
	for _, comp := range []string{"zstd", "xz", "none"} {
		t.Run(comp, func(t *testing.T) {
			bucket := "awkward-" + comp
			m.MakeBucket(t, bucket, true)
			d := startDaemon(t, m.CredentialsEnv(), "--store-uri", m.StoreURI(bucket), "--secret-key-file", sec, "--compression", comp)
			out := nx.Build(t, testenv.Awkward(seed()), "--option", "post-build-hook", d.Hook)
			d.MustWait(3 * time.Minute)
			checkFetched(t, nx, m.HTTPURL(bucket), pub, out...)
		})
	}
}

// TestPushCommand queues a closure built without the hook, waits, and checks
// that bad arguments are refused with one line.
func TestPushCommand(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-push-1")
	nx, d := f.nx, f.d
	out := nx.Build(t, testenv.Chain(seed(), 5))
	// A symlink into the store, as /run/current-system is.
	link := filepath.Join(t.TempDir(), "result")
	if _, err := nx.Run(t, "ln", "-s", out[0], link); err != nil {
		t.Fatal(err)
	}
	if o, err := d.CLI("push", "--wait", link); err != nil {
		t.Fatalf("nixpush push --wait: %v\n%s", err, o)
	}
	f.checkFetched(out...)

	for _, bad := range []string{"/etc/passwd", "/nix/store/../etc", "/nix/store/00000000000000000000000000000000-missing"} {
		o, err := d.CLI("push", bad)
		if err == nil {
			if _, werr := d.CLI("wait", "--timeout", "30s"); werr == nil {
				t.Errorf("nixpush push %s: accepted and drained without failure\n%s", bad, o)
			}
			continue
		}
		if strings.Count(strings.TrimSpace(o), "\n") != 0 {
			t.Errorf("nixpush push %s: want a one-line error, got %q", bad, o)
		}
	}
}

// TestS3ProfileCredentials reads S3 credentials from a named profile of the
// shared credentials file, as in the classic [nixbuilder] setup, with no
// AWS variables in the environment.
func TestS3ProfileCredentials(t *testing.T) {
	m := testenv.MinIO(t)
	m.MakeBucket(t, "profiled", true)
	nx := testenv.Nix(t)
	creds := filepath.Join(t.TempDir(), "credentials")
	text := "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[nixbuilder]\naws_access_key_id = " +
		m.AccessKey + "\naws_secret_access_key = " + m.SecretKey + "\n"
	if err := os.WriteFile(creds, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	sec, pub := keys(t, "nixpush-e2e-profile-1")
	d := startDaemon(t, []string{"AWS_SHARED_CREDENTIALS_FILE=" + creds, "AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="},
		"--store-uri", m.StoreURI("profiled")+"&profile=nixbuilder", "--secret-key-file", sec)
	out := nx.Build(t, testenv.Chain(seed(), 3))
	if o, err := d.CLI("push", "--wait", out[0]); err != nil {
		t.Fatalf("nixpush push --wait: %v\n%s\n%s", err, o, d.Log)
	}
	checkFetched(t, nx, m.HTTPURL("profiled"), pub, out...)
}

// TestKeygenInterchangeable: nixpush keygen writes keys in Nix's format
// (Nix derives the same public key from the secret one), the secret key is
// 0600, and an existing key is never overwritten.
func TestKeygenInterchangeable(t *testing.T) {
	nx := testenv.Nix(t)
	dir := t.TempDir()
	if out, err := testenv.Command(t, nixpushBin(), "keygen", "--name", "cache.example.org-1", "--out", dir).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	sec, pub := filepath.Join(dir, "secret.key"), filepath.Join(dir, "public.key")
	fi, err := os.Stat(sec)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret.key: %v, mode %v; want 0600", err, fi.Mode())
	}
	want, _ := os.ReadFile(pub)
	got, err := nx.Run(t, "sh", "-c", "nix --extra-experimental-features nix-command key convert-secret-to-public < "+sec)
	if err != nil || strings.TrimSpace(got) != string(want) || !strings.HasPrefix(got, "cache.example.org-1:") {
		t.Fatalf("nix key convert-secret-to-public says %q (%v); public.key has %q", got, err, want)
	}
	before, _ := os.ReadFile(sec)
	if out, err := testenv.Command(t, nixpushBin(), "keygen", "--name", "other-1", "--out", dir).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "refusing to overwrite") {
		t.Fatalf("second keygen into the same dir: %v %s", err, out)
	}
	if after, _ := os.ReadFile(sec); string(after) != string(before) {
		t.Fatal("keygen overwrote a signing key")
	}
}
