package bench

import (
	"fmt"
	"time"

	"testing"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/hook"
	"github.com/nixpush/nixpush/internal/testenv"
)

// BenchmarkRepush times what the daemon does with a closure the cache
// already holds (300 paths), median of several rounds: nixpush push again
// to the same daemon, to the daemon restarted, and to a fresh daemon (a
// new state directory); and a hook hand-off of one new path built on top
// of it, until pushed. Requests are those the daemon made to the bucket.
func BenchmarkRepush(b *testing.B) {
	const rounds = 5
	r := newRig(b)
	s := seed()
	dag := testenv.DAG(s, 300, 4, true)
	top := r.nix.Build(b, dag)
	d := r.daemon("repush")
	pushAndWait(b, d, top...)
	bucket := "repush"

	requests := func(d *testenv.Daemon) int64 { return status(b, d).Uploaded.Requests }
	var warm, restarted, fresh, onTop []time.Duration
	var warmReq, restartedReq, freshReq, onTopReq []time.Duration // requests, kept as durations for percentile
	for i := range rounds {
		r.settle()
		r0 := requests(d)
		warm = append(warm, pushAndWait(b, d, top...))
		warmReq = append(warmReq, time.Duration(requests(d)-r0))

		d.Stop()
		d.Start()
		r.settle()
		restarted = append(restarted, pushAndWait(b, d, top...))
		restartedReq = append(restartedReq, time.Duration(requests(d)))

		f := testenv.StartDaemon(b, binDir, r.minio.CredentialsEnv(), "--store-uri", r.minio.StoreURI(bucket),
			"--secret-key-file", r.sec, "--log-level", "warn")
		r.settle()
		fresh = append(fresh, pushAndWait(b, f, top...))
		freshReq = append(freshReq, time.Duration(requests(f)))
		f.Stop()

		// One new path on top of the cached closure, handed over as the
		// hook does.
		next := r.nix.Build(b, fmt.Sprintf(`let t = %s; in derivation { name = "on-top-%d"; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" "echo %s %d ${t} > $out" ]; }`, dag, i, s, i))
		r.settle()
		r0 = requests(d)
		start := time.Now()
		if err := hook.Handoff(d.Socket, api.EnqueueRequest{Paths: next}, 5*time.Second); err != nil {
			b.Fatal(err)
		}
		d.MustWait(5 * time.Minute)
		onTop = append(onTop, time.Since(start))
		onTopReq = append(onTopReq, time.Duration(requests(d)-r0))
	}
	r.checkFetched(r.minio.HTTPURL(bucket), top...)
	med := func(d []time.Duration) time.Duration { return percentile(d, 0.5) }
	b.ReportMetric(med(warm).Seconds(), "warm-s")
	b.ReportMetric(med(restarted).Seconds(), "restarted-s")
	b.ReportMetric(med(fresh).Seconds(), "fresh-s")
	b.ReportMetric(med(onTop).Seconds(), "on-top-s")
	b.Logf("300-path cached closure, median of %d rounds (requests to the bucket in brackets):", rounds)
	b.Logf("  push again, same daemon:      %.3f s (%d) %v", med(warm).Seconds(), int64(med(warmReq)), warm)
	b.Logf("  push again, daemon restarted: %.3f s (%d) %v", med(restarted).Seconds(), int64(med(restartedReq)), restarted)
	b.Logf("  push again, fresh daemon:     %.3f s (%d) %v", med(fresh).Seconds(), int64(med(freshReq)), fresh)
	b.Logf("  hook hand-off of a new path on top, until pushed: %.3f s (%d) %v", med(onTop).Seconds(), int64(med(onTopReq)), onTop)
}
