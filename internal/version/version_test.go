package version

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// TestGetMatchesBuildInfo checks the hand-parsed build info against what
// runtime/debug reads from the same text.
func TestGetMatchesBuildInfo(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build info in the test binary")
	}
	got := Get()
	if got.Go != runtime.Version() {
		t.Errorf("Go = %q; want %q", got.Go, runtime.Version())
	}
	want := strings.TrimPrefix(bi.Main.Version, "v")
	if want == "" || want == "(devel)" {
		want = "devel"
	}
	if got.Version != want {
		t.Errorf("Version = %q; want %q (build info main module %+v)", got.Version, want, bi.Main)
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && !strings.HasPrefix(got.Commit, s.Value) {
			t.Errorf("Commit = %q; want %q", got.Commit, s.Value)
		}
	}
}

// TestLdflags builds a program with the version and commit set as
// package.nix sets them and checks it reports them.
func TestLdflags(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "v")
	cmd := exec.Command("go", "build", "-o", bin, "-ldflags",
		"-X github.com/nixpush/nixpush/internal/version.version=1.2.3 -X github.com/nixpush/nixpush/internal/version.commit=0123456789abcdef0123",
		"./testdata/printversion")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "1.2.3 (commit 0123456789ab, " + runtime.Version() + ")"; string(out) != want {
		t.Fatalf("got %q; want %q", out, want)
	}
}
