package testenv

import (
	"context"
	"errors"
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

// NixAtLeast reports whether the Nix on $PATH is major.minor or later
// (false when its version cannot be read).
func NixAtLeast(major, minor int) bool {
	var maj, min int
	f := strings.Fields(NixVersion())
	if len(f) < 3 {
		return false
	}
	if _, err := fmt.Sscanf(f[2], "%d.%d", &maj, &min); err != nil {
		return false
	}
	return maj > major || maj == major && min >= minor
}

// NixEnv runs the machine's Nix with a client cache of the test's own:
// Nix remembers narinfo lookups (negative ones too) in
// ~/.cache/nix/binary-cache-v6.sqlite, which would leak between tests.
type NixEnv struct {
	env    []string
	prefix []string // a command that execs the Nix command (FreshStore's namespace), or none
	root   string   // where FreshStore's /nix is on the host, or ""
}

// NixTimeout bounds every command NixEnv.Run runs: a Nix command waiting
// for the store's big lock (held by a process that never lets go) fails
// the test, naming what it waited for, rather than hanging it until go
// test's own timeout.
const NixTimeout = 10 * time.Minute

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
	return &NixEnv{env: append(append([]string(nil), n.env...), kv...), prefix: n.prefix, root: n.root}
}

// FreshStore returns an environment whose commands see a Nix store and
// database of the test's own, empty as on a new machine, at /nix: each
// command runs in a mount namespace of its own (unshare -m) with a
// directory of the test bound over /nix, so the machine's store, its
// database and the Nix processes of other tests are out of sight. It needs
// root and sandbox = false (builds use the host's /bin/sh). The
// expressions of this package build there: they need nothing from a store.
func (n *NixEnv) FreshStore(t testing.TB) *NixEnv {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatal("unshare not found: install util-linux")
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "nix"), 0o755); err != nil {
		t.Fatal(err)
	}
	// unshare makes every mount private in the new namespace, so the bind
	// mount stays in it; in a chroot (scripts/in-nix-root.sh) / is no
	// mount point and that fails, but there every mount is private
	// already: then they are left as they are.
	propagation := "private"
	if exec.Command("unshare", "-m", "--propagation", "private", "true").Run() != nil {
		info, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil || strings.Contains(string(info), " shared:") {
			t.Fatalf("unshare -m --propagation private fails here, and some mounts are shared (%v): a bind mount over /nix would reach the machine", err)
		}
		propagation = "unchanged"
	}
	// Builds run as root, not as nixbld users: the build-user pool is
	// the store's (under /nix/var/nix/userpool), but the users are the
	// machine's, and Nix kills every process of a build user before
	// using it, so another store's build as the same user was killed.
	f := n.WithEnv("NIX_CONFIG=substituters =\nconnect-timeout = 2\nbuild-users-group =")
	f.root = root
	f.prefix = []string{"unshare", "-m", "--propagation", propagation, "sh", "-c", `mount --bind "$0" /nix && exec "$@"`, filepath.Join(root, "nix")}
	// The test's cleanup removes the store: Nix makes it read-only.
	t.Cleanup(func() { exec.Command("chmod", "-R", "u+w", root).Run() })
	return f
}

// Prefix is the command that runs a command in this environment's store
// (FreshStore's namespace), or nil: for processes started outside Run,
// such as the daemon (StartDaemonUnder).
func (n *NixEnv) Prefix() []string { return n.prefix }

// Wrappers writes, for each of names (nix-store, nix...), a script that
// runs it in this environment's store, and returns their directory: for a
// nix.Client's BinDir.
func (n *NixEnv) Wrappers(t testing.TB, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	quoted := make([]string, len(n.prefix))
	for i, a := range n.prefix {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	for _, name := range names {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Fatalf("%s not found: %v", name, err)
		}
		script := "#!/bin/sh\nexec " + strings.Join(quoted, " ") + " '" + p + "' \"$@\"\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// HostPath is where path (/nix/...) of this environment's store is on the
// host: under FreshStore's directory, or path itself.
func (n *NixEnv) HostPath(path string) string { return n.root + path }

// Command is the command name with args, run in this environment's store
// and with its variables.
func (n *NixEnv) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append(append(append([]string(nil), n.prefix...), name), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = n.Env()
	// A post-build-hook left running with the pipes open must not keep
	// Wait waiting once the command is killed.
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Env is the environment Nix commands run with.
func (n *NixEnv) Env() []string { return append(os.Environ(), n.env...) }

// Run runs a command in the environment and returns its stdout; the error
// carries stderr.
func (n *NixEnv) Run(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	return n.RunWithin(t, NixTimeout, name, args...)
}

// RunWithin is Run with the command killed after d: the error then says
// so (ErrNixTimeout), with the end of what it printed.
func (n *NixEnv) RunWithin(t testing.TB, d time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := n.Command(ctx, name, args...)
	var stderr SyncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s %s: %w after %v (waiting for the Nix store's lock?)\n%s", name, strings.Join(args, " "), ErrNixTimeout, d, lastLines(stderr.String(), 20))
	}
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, lastLines(stderr.String(), 20))
	}
	return string(out), nil
}

// ErrNixTimeout is RunWithin's error for a command that ran out of time.
var ErrNixTimeout = errors.New("killed: no answer")

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
