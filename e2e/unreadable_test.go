package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestForeignSigGC is issue 24's scenario (issue 18, point 6) with real
// Nix: Nix copies a 3-path chain and an unrelated 2-path chain to a
// file:// cache, signed; another tool's Sig line (Nix accepts it and
// ignores what it cannot check, go-nix refuses it) is appended to each top's .narinfo; the
// first chain is pinned; gc runs with a 1 s grace once it has passed. The
// pinned chain stays whole, so real Nix fetches it into a fresh store
// and verify finds the cache whole; the other chain goes entirely. Before
// the fix, gc could not read either top: it kept both and deleted what
// they referred to, and Nix failed with "path '…' is not valid".
func TestForeignSigGC(t *testing.T) {
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-foreign-sig-1")
	dir := t.TempDir()
	uri := "file://" + dir
	cacheDir := t.TempDir()

	tip := nx.Build(t, testenv.Chain(seed(), 3))[0]
	other := nx.Build(t, testenv.Chain(seed(), 2))[0]
	chain, others := closureOf(t, nx, tip), closureOf(t, nx, other)
	if len(chain) != 3 || len(others) != 2 {
		t.Fatalf("closures of %d and %d paths; want 3 and 2", len(chain), len(others))
	}
	if _, err := nx.Run(t, "nix", "--extra-experimental-features", "nix-command", "copy",
		"--to", uri+"?secret-key="+sec, tip, other); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tip, other} {
		f, err := os.OpenFile(filepath.Join(dir, hashOf(p)+".narinfo"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Valid base64 ("not-ed25519"), not a 64-byte ed25519 signature:
		// go-nix refuses it; Nix 2.8, 2.26 and 2.34 ignore it (a key they
		// do not trust). Nix 2.34 refuses a Sig that is not base64 at all.
		if _, err := f.WriteString("Sig: other-tool:bm90LWVkMjU1MTk=\n"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := bucketCLI(t, nil, cacheDir, "pin", "--store-uri", uri, "release", tip); err != nil {
		t.Fatalf("pin: %v\n%s", err, out)
	}
	// Every .narinfo and NAR older than the grace period.
	time.Sleep(1500 * time.Millisecond)

	rep := runGC(t, nil, cacheDir, uri, "--grace", "1s")
	slices.Sort(others)
	if !slices.Equal(rep.Deleted.Paths, others) {
		t.Errorf("gc deleted %v; want the unpinned chain, %v", rep.Deleted.Paths, others)
	}
	for _, p := range chain {
		if _, err := os.Stat(filepath.Join(dir, hashOf(p)+".narinfo")); err != nil {
			t.Errorf("the pinned chain's %s: %v", p, err)
		}
	}
	checkFetched(t, nx, uri, pub, tip)
	res, err := runVerify(t, nil, cacheDir, "--store-uri", uri, "--public-key", strings.TrimSpace(pub))
	if err != nil || len(res.Problems) != 0 || res.Paths != 3 {
		t.Fatalf("verify after gc: %v, %d paths, problems %+v; want 3 paths, none", err, res.Paths, res.Problems)
	}
}
