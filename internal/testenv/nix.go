package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var nixVersion = sync.OnceValue(func() string {
	p, err := exec.LookPath("nix")
	if err != nil {
		return "no nix on $PATH"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, "--version").Output()
	if err != nil {
		return fmt.Sprintf("%s --version: %v", p, err)
	}
	return strings.TrimSpace(string(out)) + " (" + p + ")"
})

// NixVersion names the Nix on $PATH that the tests run against, as
// `nix --version` prints it, and where it is: the test matrix runs the
// suite against several, and a failure must say which.
func NixVersion() string { return nixVersion() }

// NixEnv runs the machine's Nix with a client cache of the test's own:
// Nix remembers narinfo lookups (negative ones too) in
// ~/.cache/nix/binary-cache-v6.sqlite, which would leak between tests.
type NixEnv struct {
	env []string
}

// Nix checks that Nix is installed and returns an isolated environment.
func Nix(t testing.TB) *NixEnv {
	t.Helper()
	for _, b := range []string{"nix", "nix-build", "nix-store"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found: install Nix (./scripts/test.sh installs Debian's nix-bin)", b)
		}
	}
	t.Logf("against %s", NixVersion())
	home := t.TempDir()
	// No default substituters: this machine has no network, and Nix would
	// spend seconds retrying cache.nixos.org on every build.
	return &NixEnv{env: []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache"),
		"NIX_CONFIG=substituters =\nconnect-timeout = 2"}}
}

// WithEnv is the environment with more variables, such as
// NIX_SSL_CERT_FILE for a cache behind a private CA.
func (n *NixEnv) WithEnv(kv ...string) *NixEnv {
	return &NixEnv{env: append(append([]string(nil), n.env...), kv...)}
}

// Env is the environment Nix commands run with.
func (n *NixEnv) Env() []string { return append(os.Environ(), n.env...) }

// Run runs a command in the environment and returns its stdout; the error
// carries stderr.
func (n *NixEnv) Run(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	cmd, cancel := command(t, name, args...)
	defer cancel()
	cmd.Env = n.Env()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, lastLines(stderr.String(), 20))
	}
	return string(out), nil
}

// Build runs nix-build on expr and returns the output paths.
func (n *NixEnv) Build(t testing.TB, expr string, extraArgs ...string) []string {
	t.Helper()
	args := append([]string{"--no-out-link", "-E", expr}, extraArgs...)
	out, err := n.Run(t, "nix-build", args...)
	if err != nil {
		t.Fatal(err)
	}
	paths := strings.Fields(out)
	if len(paths) == 0 {
		t.Fatalf("nix-build printed no paths")
	}
	return paths
}

// CopyFrom substitutes paths from a binary cache into a fresh store, trusting
// only pubKey, and returns the new store's root. Nix checks every signature
// and NAR hash.
func (n *NixEnv) CopyFrom(t testing.TB, from, pubKey string, paths ...string) (string, error) {
	t.Helper()
	root := t.TempDir()
	args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--from", from,
		"--to", "local?root=" + root, "--option", "trusted-public-keys", strings.TrimSpace(pubKey),
		"--option", "require-sigs", "true", "--option", "narinfo-cache-negative-ttl", "0"}, paths...)
	_, err := n.Run(t, "nix", args...)
	return root, err
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
