package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/internal/testenv"
)

// watchStatus polls nixpush status --json until the returned function is
// called, which returns every answer seen.
func watchStatus(t *testing.T, d *daemon) func() []api.Status {
	var mu sync.Mutex
	var seen []api.Status
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if st, err := statusJSON(t, d); err == nil {
				mu.Lock()
				seen = append(seen, st)
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() []api.Status {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
}

// mustDrain waits for the daemon to drain and checks that nothing is left
// active, held, spooled or failed, and that the queue writes again.
func mustDrain(t *testing.T, d *daemon) {
	t.Helper()
	d.MustWait(3 * time.Minute)
	if st := fullStatus(t, d); st.Active != 0 || st.Queued != 0 || st.Held != 0 || st.Spooled != 0 || st.Failed != 0 || st.QueueError != "" {
		t.Fatalf("after the space returned: %+v", st)
	}
}

// builtOutputs lists the outputs of expr's derivations (the top one and
// all it depends on) that are in the store now.
func builtOutputs(t *testing.T, nx *testenv.NixEnv, expr string) []string {
	t.Helper()
	drv, err := nx.Run(t, "nix-instantiate", "-E", expr)
	if err != nil {
		t.Fatal(err)
	}
	reqs, err := nx.Run(t, "nix-store", "-qR", strings.TrimSpace(drv))
	if err != nil {
		t.Fatal(err)
	}
	var drvs []string
	for _, p := range lines(reqs) {
		if strings.HasSuffix(p, ".drv") {
			drvs = append(drvs, p)
		}
	}
	outs, err := nx.Run(t, "nix-store", append([]string{"-q", "--outputs"}, drvs...)...)
	if err != nil {
		t.Fatal(err)
	}
	var built []string
	for _, p := range lines(outs) {
		if _, err := os.Lstat(p); err == nil {
			built = append(built, p)
		}
	}
	return built
}

// TestStateDiskFull: the daemon's state directory is on a small tmpfs that
// is full while Nix builds a 30-derivation chain with the hook (the spool
// is on another disk). Hand-offs the queue cannot commit are answered 503
// and spooled; status --json says what is wrong; after the space returns
// every hooked path reaches the cache and no item stays active.
func TestStateDiskFull(t *testing.T) {
	mnt := testenv.Tmpfs(t, "2m")
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-full-1")
	cache := t.TempDir()
	d := startDaemon(t, nil, "--state-dir", filepath.Join(mnt, "state"), "--store-uri", "file://"+cache, "--secret-key-file", sec)
	if strings.HasPrefix(d.SpoolDir, mnt) {
		t.Fatalf("spool %s is on the full disk %s", d.SpoolDir, mnt)
	}
	// A first path goes up while there is room.
	first := nx.Build(t, testenv.Chain(seed(), 2), "--option", "post-build-hook", d.Hook)
	d.MustWait(time.Minute)

	free := testenv.Fill(t, mnt)
	watch := watchStatus(t, d)
	out := nx.Build(t, testenv.Chain(seed(), 30), "--option", "post-build-hook", d.Hook)

	// While the disk is full, wait tells the truth: either everything is
	// in the cache already, or it is not drained.
	if o, err := d.CLI("wait", "--timeout", "3s"); err == nil {
		t.Logf("drained with the disk full (every commit that mattered found room): %s", o)
		checkFetched(t, nx, "file://"+cache, pub, out...)
	} else if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 3 || strings.Contains(o, "drained") {
		t.Fatalf("nixpush wait with the disk full: %v\n%s", err, o)
	} else {
		t.Logf("wait with the disk full: %s", strings.TrimSpace(o))
	}
	seen := watch()

	var sawFull, sawSpooled bool
	for _, st := range seen {
		if strings.Contains(st.QueueError, "queue cannot write") && strings.Contains(st.QueueError, "no space left on device") {
			sawFull = true
		}
		if st.Spooled > 0 {
			sawSpooled = true
		}
	}
	if !sawFull {
		t.Fatalf("status --json never said the queue could not write (%d answers seen); daemon log:\n%s", len(seen), d.Log)
	}
	if !sawSpooled {
		t.Fatalf("no hook spooled while the queue could not commit (%d answers seen)", len(seen))
	}

	free()
	mustDrain(t, d)
	checkFetched(t, nx, "file://"+cache, pub, append(out, first...)...)
}

// TestStateAndSpoolDiskFull: as TestStateDiskFull, but the spool is on the
// same full disk, so a hook whose hand-off the queue cannot commit has
// nowhere to keep the paths. It exits 1: Nix reports the failed hook and
// starts no further builds (see docs/operations.md). The daemon holds the paths it
// turned away in memory and queues them once the space returns, so even
// those reach the cache; `wait` never reports drained meanwhile.
func TestStateAndSpoolDiskFull(t *testing.T) {
	mnt := testenv.Tmpfs(t, "2m")
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-full-2")
	cache := t.TempDir()
	spool := filepath.Join(mnt, "spool")
	d := startDaemon(t, nil, "--state-dir", filepath.Join(mnt, "state"), "--spool-dir", spool,
		"--store-uri", "file://"+cache, "--secret-key-file", sec)
	hookScript := filepath.Join(t.TempDir(), "hook.sh")
	script := fmt.Sprintf("#!/bin/sh\nexec %s --socket %s --spool-dir %s\n", d.HookBin(), d.Socket, spool)
	if err := os.WriteFile(hookScript, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(spool, 0o700); err != nil {
		t.Fatal(err)
	}

	free := testenv.Fill(t, mnt)
	watch := watchStatus(t, d)
	expr := testenv.Chain(seed(), 30)
	_, err := nx.Run(t, "nix-build", "--no-out-link", "-E", expr, "--option", "post-build-hook", hookScript)
	if err == nil {
		t.Fatal("nix-build succeeded although neither the daemon nor the spool could take the paths")
	}
	if !strings.Contains(err.Error(), "nixpush-hook: could not hand") || !strings.Contains(err.Error(), "nor spool them") {
		t.Fatalf("nix-build failed, but not for the hook: %v", err)
	}
	built := builtOutputs(t, nx, expr)
	t.Logf("Nix stopped after %d of 30 builds: %s", len(built), lastLine(err.Error()))

	// The daemon answered 503 for the paths of the failed hook and holds
	// them; it queues them itself as soon as a commit finds room (bbolt
	// reuses free pages, so some do even on a full disk). Until then wait
	// must not say drained; once it does, the paths must be in the cache.
	if !strings.Contains(d.Log.String(), "paths held in memory until it can") {
		t.Fatalf("the daemon turned no paths away:\n%s", d.Log)
	}
	if o, err := d.CLI("wait", "--timeout", "3s"); err == nil {
		t.Logf("drained with the disk full: the held paths found room: %s", strings.TrimSpace(o))
		checkFetched(t, nx, "file://"+cache, pub, built...)
	} else if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 3 || strings.Contains(o, "drained") ||
		!(strings.Contains(o, "queue cannot write") || strings.Contains(o, "held unqueued")) {
		t.Fatalf("nixpush wait with the disk full: %v\n%s", err, o)
	} else {
		t.Logf("wait with the disk full: %s", strings.TrimSpace(o))
	}
	seen := watch()
	var failing int
	for _, st := range seen {
		if strings.Contains(st.QueueError, "no space left on device") {
			failing++
		}
	}
	t.Logf("%d of %d status answers while the disk was full said the queue could not write", failing, len(seen))

	free()
	mustDrain(t, d)
	// Every path Nix built, the one whose hook failed among them, is in the
	// cache without anyone pushing it again.
	checkFetched(t, nx, "file://"+cache, pub, built...)

	// Building the rest goes on as usual.
	out := nx.Build(t, expr, "--option", "post-build-hook", hookScript)
	mustDrain(t, d)
	checkFetched(t, nx, "file://"+cache, pub, out...)
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}
