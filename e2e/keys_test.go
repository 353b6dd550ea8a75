package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestTwoSigningKeys: a daemon given two keys signs every .narinfo with
// both, and real Nix accepts the closure trusting either public key alone,
// as consumers do while a key is rotated. Two keys of one name are refused.
func TestTwoSigningKeys(t *testing.T) {
	nx := testenv.Nix(t)
	oldSec, oldPub := keys(t, "nixpush-e2e-rotate-1")
	newSec, newPub := keys(t, "nixpush-e2e-rotate-2")
	d := startDaemon(t, nil, "--secret-key-file", oldSec, "--secret-key-file", newSec)
	out := nx.Build(t, testenv.Chain(seed(), 3))
	if o, err := d.CLI("push", "--wait", out[0]); err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	cache := filepath.Join(d.StateDir, "cache")
	narinfos, _ := filepath.Glob(filepath.Join(cache, "*.narinfo"))
	if len(narinfos) != 3 {
		t.Fatalf("%d .narinfo in %s; want 3", len(narinfos), cache)
	}
	for _, f := range narinfos {
		b, _ := os.ReadFile(f)
		if !strings.Contains(string(b), "Sig: nixpush-e2e-rotate-1:") || !strings.Contains(string(b), "Sig: nixpush-e2e-rotate-2:") {
			t.Fatalf("%s lacks a signature by each key:\n%s", f, b)
		}
	}
	checkFetched(t, nx, "file://"+cache, oldPub, out...)
	checkFetched(t, nx, "file://"+cache, newPub, out...)

	sameSec, _ := keys(t, "nixpush-e2e-rotate-1")
	cmd := testenv.Command(t, nixpushBin(), "daemon", "--socket", filepath.Join(t.TempDir(), "s"), "--state-dir", t.TempDir(),
		"--secret-key-file", oldSec, "--secret-key-file", sameSec)
	o, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(o), `both keys named "nixpush-e2e-rotate-1"`) {
		t.Fatalf("daemon with two keys of one name: %v\n%s", err, o)
	}
}
