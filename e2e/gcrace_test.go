package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nixpush/nixpush/internal/testenv"
)

// onShared is a closure of two new paths on top of a shared chain (the
// same for every call with the same base seed): the tip refers to a leaf
// of its own and to the chain's tip.
func onShared(base, seed string) string {
	return fmt.Sprintf(`let b = %q; s = %q;
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" ("PATH=/bin:/usr/bin; set -e; " + script) ];
  };
  shared1 = mk "shared-1" "echo ${b} 1 > $out";
  shared2 = mk "shared-2" "echo ${b} 2 ${shared1} > $out";
  shared3 = mk "shared-3" "echo ${b} 3 ${shared2} > $out";
  leaf = mk "leaf" "echo ${s} > $out";
in mk "top" "echo ${s} ${leaf} ${shared3} > $out"`, base, seed)
}

// TestGCRacingPushes runs gc round after round (a root counts for 2 s,
// the grace period is 1 s, the sweep window 3 s) while two daemons push
// new closures built on shared dependencies, which gc finds unreferenced
// and deletes between rounds, while the daemons remember them as pushed. At the end every .narinfo in the bucket has
// its NAR and its references, and every closure pushed after the last gc
// is whole for real Nix.
func TestGCRacingPushes(t *testing.T) {
	m := testenv.MinIO(t)
	m.MakeBucket(t, "race", true)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-race-1")
	uri := m.StoreURI("race")
	env := m.CredentialsEnv()
	cacheDir := t.TempDir()
	c := m.Client(t)
	daemons := []*daemon{
		startDaemon(t, env, "--store-uri", uri, "--secret-key-file", sec),
		startDaemon(t, env, "--store-uri", uri, "--secret-key-file", sec),
	}
	base := seed()
	gcArgs := []string{"--store-uri", uri, "--older-than", "2s", "--grace", "1s", "--sweep-window", "3s"}

	push := func(d *daemon, round int) string {
		t.Helper()
		out := nx.Build(t, onShared(base, fmt.Sprintf("%s-%d-%p", base, round, d)))
		if o, err := d.CLI("push", "--wait", out[0]); err != nil {
			t.Errorf("push: %v\n%s", err, o)
		}
		return out[0]
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var gcs, deleted int
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			rep, err := gcOnce(t, env, cacheDir, gcArgs...)
			if err != nil {
				// A window passed: run again.
				t.Logf("gc: %v", err)
			} else {
				gcs++
				deleted += len(rep.Deleted.Paths)
			}
			time.Sleep(300 * time.Millisecond)
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for round := 0; round < 4 && time.Now().Before(deadline); round++ {
		var pw sync.WaitGroup
		for _, d := range daemons {
			pw.Go(func() { push(d, round) })
		}
		pw.Wait()
		// Every other round, wait until the shared chain's last root is
		// out of the window and the grace period: gc deletes it while
		// the daemons still remember pushing it.
		time.Sleep([]time.Duration{700 * time.Millisecond, 4 * time.Second}[round%2])
	}
	close(stop)
	wg.Wait()
	if gcs < 3 || deleted == 0 {
		t.Fatalf("%d gc runs completed beside the pushes, deleting %d paths; want 3 or more, deleting some", gcs, deleted)
	}
	t.Logf("%d gc runs beside the pushes deleted %d paths", gcs, deleted)
	for _, d := range daemons {
		d.MustWait(2 * time.Minute)
	}
	checkClosed(t, c, "race", false)

	// The last gc is over: closures pushed now are whole for Nix.
	var last []string
	for i, d := range daemons {
		last = append(last, push(d, 100+i))
	}
	checkClosed(t, c, "race", false)
	checkFetched(t, nx, m.HTTPURL("race"), pub, last...)
}
