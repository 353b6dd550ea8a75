package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestXZLargeNARInBlocks pushes a 24 MiB path with xz: the xz tool packs it
// as several blocks, compressed on several threads, and real Nix fetches it
// (decompressing and checking the NAR hash) like any .xz.
func TestXZLargeNARInBlocks(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Fatal("xz is not on PATH; install xz-utils (scripts/test.sh does)")
	}
	f := newFixture(t, "nixpush-e2e-xz-1", daemonArgs("--compression", "xz"))
	nx, d := f.nx, f.d
	out := nx.Build(t, fmt.Sprintf(`derivation { name = "xz-blocks"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "PATH=/bin:/usr/bin; mkdir $out; head -c 12M /dev/urandom > $out/random; yes 'nixpush xz %s' | head -c 12M > $out/text" ]; }`, seed()))
	if o, err := d.CLI("push", "--wait", out[0]); err != nil {
		t.Fatalf("nixpush push --wait: %v\n%s", err, o)
	}
	cache := filepath.Join(d.StateDir, "cache")
	nars, _ := filepath.Glob(filepath.Join(cache, "nar", "*.nar.xz"))
	if len(nars) != 1 {
		t.Fatalf("want one .nar.xz in %s, found %v", cache, nars)
	}
	list, err := testenv.Command(t, "xz", "--list", "--robot", nars[0]).CombinedOutput()
	if err != nil {
		t.Fatalf("xz --list %s: %v\n%s", nars[0], err, list)
	}
	totals := false
	for _, l := range strings.Split(string(list), "\n") {
		if f := strings.Split(l, "\t"); f[0] == "totals" && len(f) > 3 {
			totals = true
			t.Logf("%s: %s streams, %s blocks", filepath.Base(nars[0]), f[1], f[2])
			if f[2] == "1" {
				t.Errorf("the NAR of a 24 MiB path is one xz block; want several, compressed in parallel")
			}
		}
	}
	if !totals {
		t.Fatalf("xz --list --robot gave no totals line:\n%s", list)
	}
	f.checkFetched(out...)
}
