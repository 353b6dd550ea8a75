package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/internal/testenv"
)

// startDaemon runs nixpush daemon in this process on a socket in a new
// directory, pushing to uri, until the test ends.
func startDaemon(t *testing.T, uri, sec string) (socket string) {
	t.Helper()
	dir := t.TempDir()
	socket = filepath.Join(dir, "sock")
	ctx, cancel := context.WithCancel(context.Background())
	var logs testenv.SyncBuffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"daemon", "--state-dir", dir, "--socket", socket, "--store-uri", uri, "--secret-key-file", sec,
			"--log-format", "json", "--jobs", "2"}, &logs, &logs)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("daemon: exit %d\n%s", code, logs.String())
		}
	})
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if code, _, _ := cli(t, "status", "--socket", socket); code == 0 {
			return socket
		}
		select {
		case code := <-done:
			t.Fatalf("daemon exited %d:\n%s", code, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not answer within a minute:\n%s", logs.String())
		}
	}
}

func seed() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// mustRun runs nixpush and fails the test unless it exits with code.
func mustRun(t *testing.T, code int, args ...string) (stdout string) {
	t.Helper()
	got, stdout, stderr := cli(t, args...)
	if got != code {
		t.Fatalf("nixpush %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), got, code, stdout, stderr)
	}
	return stdout
}

// TestInitPushVerifyRepair: init prepares a file:// cache, the daemon fills it
// through push --wait, verify finds it whole, gc --dry-run lists what it
// would delete and deletes nothing, verify finds a deleted NAR, and
// verify --repair deletes nothing without a daemon and has the daemon
// push the path again when there is one: real Nix, a real
// daemon, a real cache directory.
func TestInitPushVerifyRepair(t *testing.T) {
	cleanEnv(t)
	nx := testenv.Nix(t)
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	cache := filepath.Join(t.TempDir(), "cache")
	uri := "file://" + cache
	sec, pubFile := keygen(t, "cli-flow-1")
	pubText, _ := os.ReadFile(pubFile)
	pub := string(pubText)

	out := mustRun(t, 0, "init", "--store-uri", uri, "--secret-key-file", sec)
	if !strings.Contains(out, "changed: ") || !strings.Contains(out, "trusted-public-keys = [ \""+pub+"\" ]") {
		t.Fatalf("init printed %q; want what it changed and the public key", out)
	}
	if out := mustRun(t, 0, "init", "--store-uri", uri); !strings.Contains(out, "is ready; nothing to change") {
		t.Fatalf("init again printed %q; want nothing to change", out)
	}

	socket := startDaemon(t, uri, sec)
	checkAll(t, uri, sec, pub, socket)
	tip := nx.Build(t, testenv.Chain(seed(), 3))[0]
	mustRun(t, 0, "push", "--socket", socket, "--wait", tip)
	walkCache := t.TempDir()
	verify := []string{"verify", "--store-uri", uri, "--cache-dir", walkCache, "--public-key", pub}
	if out := mustRun(t, 0, verify...); !strings.Contains(out, " is whole: 3 paths") {
		t.Fatalf("verify printed %q; want the cache whole with 3 paths", out)
	}

	time.Sleep(1100 * time.Millisecond) // older than the grace below
	gc := []string{"gc", "--store-uri", uri, "--cache-dir", walkCache, "--dry-run", "--older-than", "1s", "--grace", "1s"}
	if out := mustRun(t, 0, gc...); !strings.Contains(out, "would delete "+tip+"\n") || !strings.Contains(out, "would delete: 3 paths") {
		t.Fatalf("gc --dry-run printed %q; want the 3 paths it would delete", out)
	}
	mustRun(t, 0, verify...) // the dry run deleted nothing

	nar := narOf(t, cache, tip)
	if err := os.Remove(filepath.Join(cache, nar)); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, 1, verify...); !strings.Contains(out, "BROKEN "+tip+": nar-missing") {
		t.Fatalf("verify printed %q; want %s broken, its NAR missing", out, tip)
	}
	// No daemon to push it again: nothing is deleted.
	dead := filepath.Join(t.TempDir(), "dead.sock")
	code, _, stderr := cli(t, append(verify, "--repair", "--socket", dead)...)
	if code != 1 || !strings.Contains(stderr, "nixpush verify: repair: nothing deleted: the daemon that would push the broken paths again does not answer") {
		t.Fatalf("verify --repair without a daemon: exit %d, stderr %q; want exit 1, nothing deleted", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(cache, filepath.Base(tip)[:32]+".narinfo")); err != nil {
		t.Fatalf("verify --repair without a daemon deleted the .narinfo: %v", err)
	}
	repair := append(verify, "--repair", "--socket", socket, "--timeout", "5m")
	if out := mustRun(t, 0, repair...); !strings.Contains(out, "repair: pushing 1 paths again through the daemon ("+socket+")") ||
		!strings.Contains(out, "after repair: ") || !strings.Contains(out, "is whole: 3 paths") {
		t.Fatalf("verify --repair printed %q; want the path pushed again and the cache whole", out)
	}
	mustRun(t, 0, verify...)
}

// narOf reads the NAR file name (URL) out of path's .narinfo in a file://
// cache.
func narOf(t *testing.T, cache, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cache, filepath.Base(path)[:32]+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if u, ok := strings.CutPrefix(line, "URL: "); ok {
			return u
		}
	}
	t.Fatalf("no URL in the .narinfo of %s", path)
	return ""
}

// checkAll runs nixpush check --json on the cache, key and daemon, and
// wants every check but the post-build hook's (not set on this machine,
// or set to something else) to pass.
func checkAll(t *testing.T, uri, sec, pub, socket string) {
	t.Helper()
	_, stdout, stderr := cli(t, "check", "--store-uri", uri, "--secret-key-file", sec, "--public-key", pub, "--socket", socket, "--json")
	var rep checkReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("check --json: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	names := map[string]bool{}
	for _, c := range rep.Checks {
		names[c.Name] = true
		if !c.OK && c.Name != "Nix post-build-hook" {
			t.Errorf("check %q failed: %s (fix: %s)", c.Name, c.Detail, c.Fix)
		}
	}
	for _, want := range []string{"secret key " + sec, "public key " + pub, "daemon socket " + socket} {
		if !names[want] {
			t.Errorf("check did not report %q: %+v", want, rep.Checks)
		}
	}
}
