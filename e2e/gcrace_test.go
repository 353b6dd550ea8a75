package e2e

import (
	"fmt"
	"strings"
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

// twoDaemons starts MinIO with a bucket anyone may read and two daemons
// pushing to it, signing with a new key (whose public half it returns).
func twoDaemons(t *testing.T, bucket string) (*testenv.MinIOServer, *testenv.NixEnv, string, []*daemon) {
	t.Helper()
	m := testenv.MinIO(t)
	m.MakeBucket(t, bucket, true)
	sec, pub := keys(t, "nixpush-e2e-"+bucket+"-1")
	var daemons []*daemon
	for range 2 {
		daemons = append(daemons, startDaemon(t, m.CredentialsEnv(), "--store-uri", m.StoreURI(bucket), "--secret-key-file", sec))
	}
	return m, testenv.Nix(t), pub, daemons
}

// TestGCRacingPushes runs gc round after round (a root counts for 2 s,
// the grace period is 1 s, the sweep window 3 s) while two daemons push
// new closures built on shared dependencies, which gc finds unreferenced
// and deletes between rounds, while the daemons remember them as pushed. At the end every .narinfo in the bucket has
// its NAR and its references, and every closure pushed after the last gc
// is whole for real Nix.
func TestGCRacingPushes(t *testing.T) {
	m, nx, pub, daemons := twoDaemons(t, "race")
	uri, env := m.StoreURI("race"), m.CredentialsEnv()
	cacheDir := t.TempDir()
	c := m.Client(t)
	base := seed()
	gcArgs := []string{"--store-uri", uri, "--older-than", "2s", "--grace", "1s", "--sweep-window", "3s"}

	// Paths are handed over as the post-build hook does (a push that
	// trusts what it saw within --trust-cache-for), or with nixpush push
	// (which checks everything), and waited for.
	push := func(d *daemon, round int, hooked bool) string {
		t.Helper()
		out := nx.Build(t, onShared(base, fmt.Sprintf("%s-%d-%p", base, round, d)))
		if !hooked {
			if o, err := d.CLI("push", "--wait", out[0]); err != nil {
				t.Errorf("push: %v\n%s", err, o)
			}
			return out[0]
		}
		if err := handOver(d, out[0]); err != nil {
			t.Error(err)
		}
		if o, err := d.CLI("wait", "--timeout", "2m"); err != nil {
			t.Errorf("wait: %v\n%s", err, o)
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
			pw.Go(func() { push(d, round, true) })
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
		last = append(last, push(d, 100+i, false))
	}
	checkClosed(t, c, "race", false)
	checkFetched(t, nx, m.HTTPURL("race"), pub, last...)
}

// TestGCBetweenHookedPushes: two daemons push closures handed over by the
// hook, on a shared chain; gc then deletes all of it (the roots are out of
// the window) and leaves its marker finished; the daemons, which still
// trust their sightings of the shared chain, push new closures on it. Each
// writes a .narinfo naming a reference gc deleted after the daemon saw it,
// reads the marker, sees the sweep finished after that sighting, checks,
// and uploads the chain again: the bucket is whole, for real Nix too.
func TestGCBetweenHookedPushes(t *testing.T) {
	m, nx, pub, daemons := twoDaemons(t, "between")
	uri, env := m.StoreURI("between"), m.CredentialsEnv()
	base := seed()
	hooked := func(round int) []string {
		var tops []string
		for i, d := range daemons {
			out := nx.Build(t, onShared(base, fmt.Sprintf("%s-%d-%d", base, round, i)))
			if err := handOver(d, out[0]); err != nil {
				t.Fatal(err)
			}
			tops = append(tops, out[0])
		}
		for _, d := range daemons {
			d.MustWait(2 * time.Minute)
		}
		return tops
	}
	first := hooked(0)
	time.Sleep(2500 * time.Millisecond) // out of the window and the grace period
	rep, err := gcOnce(t, env, t.TempDir(), "--store-uri", uri, "--older-than", "1s", "--grace", "1s")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted.Paths) != 7 { // two tops, two leaves, the chain of three
		t.Fatalf("gc deleted %v; want the 7 paths of both closures", rep.Deleted.Paths)
	}
	c := m.Client(t)
	for k := range objects(t, c, "between") {
		if strings.HasSuffix(k, ".narinfo") {
			t.Fatalf("%s left after gc; want no .narinfo", k)
		}
	}
	second := hooked(1)
	checkClosed(t, c, "between", false)
	checkFetched(t, nx, m.HTTPURL("between"), pub, second...)
	for _, p := range first {
		if _, ok := objects(t, c, "between")[hashOf(p)+".narinfo"]; ok {
			t.Errorf("%s is back, though nothing pushed it again", p)
		}
	}
}
