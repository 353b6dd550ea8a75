package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixpush/nixpush/internal/testenv"
)

// Nix's big lock: every Nix process that opens the store holds it shared
// (the daemon's nix-store --serve too, for as long as it runs); a schema
// upgrade, and on Nix 2.8 to 2.25 the first use of ca-derivations on a
// database, need it alone. These tests run Nix on a store and database of
// their own (FreshStore), as on a new machine, so that no other test's Nix
// holds the lock, and set NIXPUSH_SERVE_IDLE=0 (nix-store --serve kept for
// ever, as before the daemon let go of it) to show that they fail without
// the fix.

// lockBound is how long a Nix command that needs the store alone may wait
// for the daemon: nix.ServeIdle (2 s) or nix.ServeMaxAge (3 s) and a query,
// with room for a loaded machine.
const lockBound = 10 * time.Second

// caBuildBound is how long the first ca-derivations build may take.
const caBuildBound = 90 * time.Second

// exclusiveLock takes the store's big lock alone, as a schema upgrade
// does, waiting up to d; it returns how long that took, or an error.
func exclusiveLock(t *testing.T, nx *testenv.NixEnv, d time.Duration) (time.Duration, error) {
	t.Helper()
	lock := nx.HostPath("/nix/var/nix/db/big-lock")
	if _, err := os.Stat(lock); err != nil {
		t.Fatalf("the fresh store has no big lock: %v", err)
	}
	start := time.Now()
	out, err := testenv.Command(t, "flock", "-x", "-w", fmt.Sprint(d.Seconds()), lock, "true").CombinedOutput()
	if err != nil {
		return time.Since(start), fmt.Errorf("flock -x -w %v %s: %v %s", d, lock, err, out)
	}
	return time.Since(start), nil
}

// pushWait runs nixpush push --wait for path in nx's store.
func pushWait(t *testing.T, nx *testenv.NixEnv, d *daemon, path string) {
	t.Helper()
	if o, err := nx.WithEnv("NIXPUSH_SOCKET="+d.Socket).Run(t, d.Bin(), "push", "--wait", path); err != nil {
		t.Fatalf("nixpush push --wait: %v\n%s\n%s", err, o, d.Log)
	}
}

// TestFirstCABuildOnAFreshStore is what a new user does: a fresh Nix
// database, the daemon running and having pushed something (its
// nix-store --serve has the store open), then the first build with
// ca-derivations, through the hook. On Nix 2.8 to 2.25 that build needs
// the store alone ("waiting for exclusive access to the Nix store for ca
// drvs..."): it completes within caBuildBound, its output and realisations
// reach the cache, and a fresh store substitutes it building nothing. With
// the long-lived connection (NIXPUSH_SERVE_IDLE=0) the same build waits
// for as long as the daemon runs (Nix 2.26 and later need no exclusive
// lock there: the build completes either way).
func TestFirstCABuildOnAFreshStore(t *testing.T) {
	m := testenv.MinIO(t)
	for _, tc := range []struct {
		name      string
		serveIdle string // NIXPUSH_SERVE_IDLE for the daemon
	}{
		{"daemon lets go of the store", ""},
		{"long-lived connection", "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			longLived := tc.serveIdle == "0"
			bucket := "fresh-ca-" + map[bool]string{false: "fix", true: "old"}[longLived]
			m.MakeBucket(t, bucket, true)
			nx := testenv.Nix(t).FreshStore(t)
			sec, pub := keys(t, "nixpush-e2e-fresh-ca-1")
			env := m.CredentialsEnv()
			if tc.serveIdle != "" {
				env = append(env, "NIXPUSH_SERVE_IDLE="+tc.serveIdle)
			}
			d := testenv.StartDaemonUnder(t, binDir, env, nx.Prefix(), "--store-uri", m.StoreURI(bucket), "--secret-key-file", sec)

			// Something pushed first: the daemon has queried the store.
			first := nx.Build(t, testenv.Chain(seed(), 3))
			pushWait(t, nx, d, first[0])

			s := seed()
			expr := writeCAExpr(t, "fresh-", s)
			ca := []string{"--option", "experimental-features", "nix-command ca-derivations"}
			bound := caBuildBound
			needsLock := !testenv.NixAtLeast(2, 26)
			if longLived && needsLock {
				bound = 20 * time.Second // enough to see it wait
			}
			start := time.Now()
			out, err := nx.RunWithin(t, bound, "nix-build", append([]string{"--no-out-link", expr, "--option", "post-build-hook", d.Hook}, ca...)...)
			took := time.Since(start)
			if longLived && needsLock {
				if !errors.Is(err, testenv.ErrNixTimeout) || !strings.Contains(err.Error(), "waiting for exclusive access") {
					t.Fatalf("with nix-store --serve held for ever, the first CA build (%s): %v after %v; want it still waiting for exclusive access after %v",
						testenv.NixVersion(), err, took.Round(time.Millisecond), bound)
				}
				t.Logf("as expected, with nix-store --serve held for ever the first CA build still waited for exclusive access after %v", bound)
				return
			}
			if err != nil {
				t.Fatalf("the first CA build on a fresh store (%s), the daemon running: %v", testenv.NixVersion(), err)
			}
			t.Logf("the first CA build on a fresh store took %v (%s)", took.Round(time.Millisecond), testenv.NixVersion())
			if longLived {
				t.Logf("Nix 2.26 and later migrate a database to ca-derivations without the store alone: the long-lived connection did not stop it")
			}
			top := strings.TrimSpace(out)
			d.MustWait(2 * time.Minute)
			if st := status(t, d); st["failed"] != 0 {
				t.Fatalf("status: %v", st)
			}
			named := false
			for k := range objects(t, m.Client(t), bucket) {
				if strings.HasPrefix(k, "realisations/") && strings.Contains(readObject(t, m.Client(t), bucket, k), `"outPath":"`+filepath.Base(top)+`"`) {
					named = true
				}
			}
			if !named {
				t.Fatalf("no realisations/*.doi names %s", top)
			}
			checkBuildTraces(t, m.Client(t), bucket, pub)

			root := t.TempDir()
			if _, err := nx.Run(t, "nix", append([]string{"build", "--store", "local?root=" + root, "--no-link", "--max-jobs", "0",
				"--option", "substituters", m.HTTPURL(bucket), "--option", "trusted-public-keys", strings.TrimSpace(pub),
				"--option", "require-sigs", "true", "--option", "narinfo-cache-negative-ttl", "0", "-f", expr}, ca...)...); err != nil {
				t.Fatalf("a fresh store substituting the CA derivation's output: %v", err)
			}
			testenv.TreeEqual(t, nx.HostPath(top), filepath.Join(root, top))
		})
	}
}

// TestExclusiveStoreLockWithTheDaemonRunning: a Nix command that needs
// the store alone (a schema upgrade, as flock -x on db/big-lock) gets it
// within lockBound of asking, the daemon idle after a push and the daemon
// busy with a stream of pushes that never pauses for nix.ServeIdle; with
// the long-lived connection (NIXPUSH_SERVE_IDLE=0) it does not.
func TestExclusiveStoreLockWithTheDaemonRunning(t *testing.T) {
	start := func(t *testing.T, serveIdle string) (*testenv.NixEnv, *daemon, []string) {
		nx := testenv.Nix(t).FreshStore(t)
		sec, _ := keys(t, "nixpush-e2e-lock-1")
		var env []string
		if serveIdle != "" {
			env = append(env, "NIXPUSH_SERVE_IDLE="+serveIdle)
		}
		d := testenv.StartDaemonUnder(t, binDir, env, nx.Prefix(), "--secret-key-file", sec)
		tip := nx.Build(t, testenv.Chain(seed(), 40))
		out, err := nx.Run(t, "nix-store", "--query", "--requisites", tip[0])
		if err != nil {
			t.Fatal(err)
		}
		return nx, d, lines(out) // dependencies first
	}

	t.Run("idle", func(t *testing.T) {
		nx, d, paths := start(t, "")
		pushWait(t, nx, d, paths[len(paths)-1])
		took, err := exclusiveLock(t, nx, lockBound)
		if err != nil {
			t.Fatalf("the daemon idle after a push: %v (%s)", err, testenv.NixVersion())
		}
		t.Logf("exclusive lock taken %v after the push, the daemon idle (%s)", took.Round(time.Millisecond), testenv.NixVersion())
	})

	t.Run("busy", func(t *testing.T) {
		nx, d, paths := start(t, "")
		// A path every 250 ms and more (a hook's start), each a query of
		// the store: 40 paths, 10 s and more, with no pause of
		// nix.ServeIdle, so only nix.ServeMaxAge lets go of the lock.
		var pushed atomic.Int32
		streamDone := make(chan error, 1)
		go func() {
			for _, p := range paths {
				// As Nix hands a built path over: nixpush-hook runs no
				// Nix (nixpush push would, to check the path).
				if o, err := nx.WithEnv(append(d.HookEnv(), "OUT_PATHS="+p)...).Run(t, d.HookBin()); err != nil {
					streamDone <- fmt.Errorf("nixpush-hook for %s: %v %s", p, err, o)
					return
				}
				pushed.Add(1)
				time.Sleep(250 * time.Millisecond)
			}
			streamDone <- nil
		}()
		time.Sleep(time.Second)
		took, err := exclusiveLock(t, nx, lockBound)
		n := pushed.Load()
		if err != nil {
			t.Fatalf("the daemon busy with a stream of pushes: %v (%s)", err, testenv.NixVersion())
		}
		if int(n) >= len(paths) {
			t.Fatalf("the stream of pushes was over (%d of %d) when the lock was taken: the test showed nothing", n, len(paths))
		}
		t.Logf("exclusive lock taken %v after asking, %d of %d pushes handed over, the daemon busy (%s)",
			took.Round(time.Millisecond), n, len(paths), testenv.NixVersion())
		if err := <-streamDone; err != nil {
			t.Fatal(err)
		}
		d.MustWait(2 * time.Minute)
		if st := status(t, d); st["failed"] != 0 || st["done"] < len(paths) {
			t.Fatalf("status after the stream: %v; want all %d done", st, len(paths))
		}
	})

	t.Run("long-lived connection", func(t *testing.T) {
		nx, d, paths := start(t, "0")
		pushWait(t, nx, d, paths[len(paths)-1])
		if took, err := exclusiveLock(t, nx, lockBound); err == nil {
			t.Fatalf("with nix-store --serve held for ever the exclusive lock was taken after %v: the test cannot tell the fix", took)
		}
		t.Logf("as expected, with nix-store --serve held for ever no exclusive lock within %v", lockBound)
	})
}
