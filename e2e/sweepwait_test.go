package e2e

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpush/nixpush/store"

	"github.com/nixpush/nixpush/retention"
)

// TestKilledWhileWaitingOutASweep (issue 18, hole 1, on real MinIO, real
// Nix and the real gc): gc lists a closure nobody keeps, deletes its
// .narinfos, and is held before it deletes the NARs it listed. The hook
// hands the closure's top over again: the daemon uploads the NARs again
// (same keys) and the .narinfos, reads gc's marker, and waits for the
// sweep. It is SIGKILLed while it waits; gc then deletes the NARs it had
// listed, which leaves every .narinfo without its NAR, and finishes. The
// restarted daemon takes the item back as a full re-check: it must find
// the NARs gone under .narinfos that are there, and upload them again.
// verify exits 0 and Nix substitutes the closure.
func TestKilledWhileWaitingOutASweep(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-sweepwait-1", onBucket("sweepwait"), daemonArgs("--trust-cache-for", "0s"))
	m, nx, pub, d := f.m, f.nx, f.pub, f.d
	uri, env := f.uri, f.env
	top := nx.Build(t, onShared(seed(), "sweepwait"))[0]
	if err := handOver(d, top); err != nil {
		t.Fatal(err)
	}
	d.MustWait(2 * time.Minute)
	time.Sleep(2500 * time.Millisecond) // past the grace period and the root's window

	// The real gc, in this process, held before its first NAR deletion.
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	st, err := store.Open(context.Background(), uri, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	atNARs, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var gcErr error
	var rep *retention.GCReport
	var wg sync.WaitGroup
	wg.Go(func() {
		rep, gcErr = retention.GC(context.Background(), st.(store.Bucket), retention.GCOptions{
			OlderThan: time.Second, Grace: time.Second, Window: 5 * time.Minute, Host: "e2e-gc",
			Deleting: func(key string) {
				if strings.HasPrefix(key, "nar/") {
					once.Do(func() { close(atNARs); <-release })
				}
			},
		})
	})
	select {
	case <-atNARs:
	case <-time.After(2 * time.Minute):
		t.Fatal("gc did not reach its NAR deletions")
	}
	if n := countNarinfos(t, m, "sweepwait"); n != 0 {
		t.Fatalf("%d .narinfos left after gc's waves; want none", n)
	}

	// The closure handed over again: written, then the daemon waits.
	if err := handOver(d, top); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, func() bool {
		return strings.Contains(d.Log.String(), "a gc is sweeping the cache: waiting")
	}, "the daemon waiting for the sweep")
	if n := countNarinfos(t, m, "sweepwait"); n != 5 {
		t.Fatalf("%d .narinfos written before the wait; want the closure's 5", n)
	}
	d.Kill()
	close(release)
	wg.Wait()
	if gcErr != nil {
		t.Fatal(gcErr)
	}
	if rep.Deleted.NARs != 5 {
		t.Fatalf("gc deleted %d NARs; want the 5 it listed", rep.Deleted.NARs)
	}
	if problems, _ := bucketProblems(t, m.Client(t), "sweepwait", false); len(problems) == 0 {
		t.Fatal("the bucket is whole after gc deleted the NARs it listed: the interleaving did not happen")
	}

	d.Start()
	d.MustWait(2 * time.Minute)
	mustBeValid(t, m, "sweepwait", "after the restarted daemon's re-check")
	res, err := runVerify(t, env, t.TempDir(), "--store-uri", uri, "--public-key", pub)
	if err != nil {
		t.Fatalf("verify: %v\n%+v", err, res)
	}
	f.checkFetched(top)
}
