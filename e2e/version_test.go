package e2e

import (
	"encoding/json"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/internal/testenv"
)

// TestVersion: both binaries say what they are, and the daemon reports its
// version in status --json.
func TestVersion(t *testing.T) {
	var want string
	for _, args := range [][]string{{"nixpush", "version"}, {"nixpush", "--version"}, {"nixpush-hook", "--version"}} {
		out, err := testenv.Command(t, filepath.Join(binDir, args[0]), args[1:]...).Output()
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		line := strings.TrimSpace(string(out))
		name, rest, _ := strings.Cut(line, " ")
		if name != args[0] || !strings.HasSuffix(rest, runtime.Version()+")") {
			t.Errorf("%v printed %q; want %q then the version and the Go toolchain", args, line, args[0])
		}
		if want != "" && rest != want {
			t.Errorf("%v printed %q; nixpush printed %q", args, rest, want)
		}
		want = rest
	}
	sec, _ := keys(t, "nixpush-e2e-version-1")
	d := startDaemon(t, nil, "--secret-key-file", sec)
	out, err := d.CLI("status", "--json")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.Version.String() != want {
		t.Errorf("status --json version %+v; want %q", st.Version, want)
	}
	if !strings.Contains(d.Log.String(), `"version":"`+want+`"`) {
		t.Errorf("daemon start log lacks the version %q:\n%s", want, d.Log)
	}
}
