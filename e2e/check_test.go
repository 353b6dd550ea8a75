package e2e

import (
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestCheck runs nixpush check against a good setup (all ✓, exit 0) and a
// broken one: a bucket consumers cannot read anonymously and a public key
// that is not the secret key's (those two ✗ with their fixes, exit 1).
func TestCheck(t *testing.T) {
	m := testenv.MinIO(t)
	sec, pub := keys(t, "nixpush-e2e-check-1")
	_, otherPub := keys(t, "nixpush-e2e-check-1")
	pub, otherPub = strings.TrimSpace(pub), strings.TrimSpace(otherPub)
	initBucket := func(bucket string, publicRead bool) {
		args := []string{"init", "--store-uri", m.StoreURI(bucket)}
		if publicRead {
			args = append(args, "--public-read")
		}
		cmd := testenv.Command(t, nixpushBin(), args...)
		cmd.Env = append(cmd.Environ(), m.CredentialsEnv()...)
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("init: %v\n%s", err, o)
		}
	}
	initBucket("good", true)
	initBucket("private", false)
	d := startDaemon(t, m.CredentialsEnv(), "--store-uri", m.StoreURI("good"), "--secret-key-file", sec)
	check := func(args ...string) (string, int) {
		t.Helper()
		cmd := testenv.Command(t, nixpushBin(), append([]string{"check", "--socket", d.Socket, "--secret-key-file", sec}, args...)...)
		cmd.Env = append(cmd.Environ(), m.CredentialsEnv()...)
		cmd.Env = append(cmd.Env, "NIX_CONFIG=post-build-hook = "+d.HookBin())
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return string(out), exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}

	good, code := check("--store-uri", m.StoreURI("good"), "--public-key", pub)
	t.Logf("good setup:\n%s", good)
	if code != 0 || strings.Contains(good, "✗") {
		t.Fatalf("good setup: exit %d, want 0 and no ✗", code)
	}
	for _, want := range []string{"✓ endpoint reachable", "✓ credentials accepted", "✓ bucket present", "✓ write allowed",
		"✓ nix-cache-info: StoreDir: /nix/store", "✓ anonymous read " + m.HTTPURL("good") + "/nix-cache-info",
		"✓ secret key " + sec + ": public key " + pub, "✓ public key " + pub, "✓ Nix post-build-hook: " + d.HookBin(),
		"✓ daemon socket " + d.Socket + ": nixpush "} {
		if !strings.Contains(good, want) {
			t.Errorf("good setup lacks %q", want)
		}
	}

	broken, code := check("--store-uri", m.StoreURI("private"), "--public-key", otherPub)
	t.Logf("broken setup:\n%s", broken)
	if code != 1 {
		t.Errorf("broken setup: exit %d, want 1", code)
	}
	for _, want := range []string{"✓ bucket present", "✓ write allowed",
		"✗ anonymous read " + m.HTTPURL("private") + "/nix-cache-info: 403 Forbidden",
		"fix: allow anonymous download: nixpush init --store-uri '" + m.StoreURI("private") + "' --public-read",
		"✗ public key " + otherPub + ": matches no secret key given (their public keys: " + pub + ")",
		"✓ daemon socket "} {
		if !strings.Contains(broken, want) {
			t.Errorf("broken setup lacks %q", want)
		}
	}
	if n := strings.Count(broken, "✗"); n != 2 {
		t.Errorf("broken setup has %d ✗ lines; want 2", n)
	}

	out, code := check("--store-uri", m.StoreURI("private"), "--public-key", otherPub, "--json")
	var rep struct {
		OK     bool
		Checks []struct {
			Name string
			OK   bool
			Fix  string
		}
		Version struct{ Version string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.OK || rep.Version.Version == "" {
		t.Fatalf("check --json: exit %d, %v, %+v\n%s", code, err, rep, out)
	}
}
