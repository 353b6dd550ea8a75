package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/internal/testenv"
)

var binDir string

func TestMain(m *testing.M) { os.Exit(testenv.WithNixpush(m, "..", &binDir)) }

func nixpushBin() string { return filepath.Join(binDir, "nixpush") }

// keys makes a signing key pair with nixpush keygen.
func keys(t *testing.T, name string) (secretFile, public string) {
	t.Helper()
	dir := t.TempDir()
	out, err := testenv.Command(t, nixpushBin(), "keygen", "--name", name, "--out", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "public.key"))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "secret.key"), string(pub)
}

// daemon is a running nixpush daemon.
type daemon = testenv.Daemon

// startDaemon starts nixpush daemon with args and waits for its socket.
func startDaemon(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	return testenv.StartDaemon(t, binDir, env, args...)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func lines(s string) []string { return strings.Fields(strings.TrimSpace(s)) }

// statusJSON is nixpush status --json, parsed.
func statusJSON(t *testing.T, d *daemon) (api.Status, error) {
	out, err := d.CLI("status", "--json")
	if err != nil {
		return api.Status{}, fmt.Errorf("status --json: %v: %s", err, out)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return api.Status{}, fmt.Errorf("status --json: %v: %s", err, out)
	}
	return st, nil
}

// fullStatus is nixpush status --json, parsed; the test fails if it fails.
func fullStatus(t *testing.T, d *daemon) api.Status {
	t.Helper()
	st, err := statusJSON(t, d)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
