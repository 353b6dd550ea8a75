package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nixpush/nixpush/api/client"
	"github.com/nixpush/nixpush/internal/testenv"
)

// BenchmarkSlowDown pushes a 300-path closure to MinIO through the test
// proxy, which answers a share of the requests (30%, then 60%) 503
// SlowDown for the first seconds of the push (NIXPUSH_BENCH_SLOWDOWN_SECS,
// 20 by default), then none: paths uploaded while the store throttled
// (the throughput under SlowDown), the time to drain, and the concurrency
// limit's low and its value at the end (from status, every 100 ms).
//
// With NIXPUSH_BENCH_BASE set to a directory holding another build's
// nixpush and nixpush-hook (say main's), both push in each round, taking
// turns going first, each with a fresh bucket, proxy and daemon; medians
// of NIXPUSH_BENCH_ROUNDS rounds (3) are reported side by side.
func BenchmarkSlowDown(b *testing.B) {
	r := newRig(b)
	top := r.nix.Build(b, testenv.DAG(closureSeed("slowdown"), 300, 4, true))
	paths, _ := closureSize(b, r.nix, top...)
	window := 20 * time.Second
	if s := os.Getenv("NIXPUSH_BENCH_SLOWDOWN_SECS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("NIXPUSH_BENCH_SLOWDOWN_SECS=%q: want a number of seconds, such as 20", s)
		}
		window = time.Duration(n) * time.Second
	}
	rounds := 3
	if s := os.Getenv("NIXPUSH_BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("NIXPUSH_BENCH_ROUNDS=%q: want a number of rounds, such as 3", s)
		}
		rounds = n
	}
	sides := []struct{ name, dir string }{{"this", binDir}}
	if base := os.Getenv("NIXPUSH_BENCH_BASE"); base != "" {
		if _, err := os.Stat(filepath.Join(base, "nixpush")); err != nil {
			b.Fatalf("NIXPUSH_BENCH_BASE=%s: no nixpush binary there (%v); build one with go build -o DIR/ ./cmd/nixpush ./cmd/nixpush-hook", base, err)
		}
		sides = append(sides, struct{ name, dir string }{"base", base})
	}

	type result struct {
		inWindow     int           // paths uploaded while the store throttled
		throttledFor time.Duration // how long it throttled: the window, or less if the push ended first
		drain        time.Duration
		throttled    int64
		low, atEnd   int
		slowed, reqs int64
	}
	run := func(name, dir string, share float64, bucket string) result {
		r.minio.MakeBucket(b, bucket, true)
		p := testenv.NewProxy(b, r.minio.Endpoint)
		d := testenv.StartDaemon(b, dir, r.minio.CredentialsEnv(), "--store-uri", r.minio.StoreURIVia(bucket, p.Addr),
			"--secret-key-file", r.sec, "--log-level", "warn")
		defer d.Stop()
		r.settle()
		c := client.New(d.Socket)
		low := 1 << 30
		p.SetSlowDown(share)
		start := time.Now()
		if out, err := d.CLI(append([]string{"push"}, top...)...); err != nil {
			b.Fatalf("%s: nixpush push: %v\n%s", name, err, out)
		}
		var res result
		lifted := false
		for {
			st, err := c.Status(context.Background())
			if err != nil {
				b.Fatalf("%s: status: %v", name, err)
			}
			if st.Traffic != nil {
				low = min(low, st.Traffic.Concurrency)
			}
			if !lifted && time.Since(start) >= window {
				p.SetSlowDown(0)
				lifted = true
				res.inWindow, res.throttledFor = int(st.Uploaded.Paths), time.Since(start)
			}
			if st.Drained && st.Uploaded.Paths+st.Uploaded.Skipped > 0 {
				if !lifted {
					p.SetSlowDown(0)
					res.inWindow, res.throttledFor = int(st.Uploaded.Paths), time.Since(start)
				}
				res.drain = time.Since(start)
				if st.Failed != 0 {
					b.Fatalf("%s: %d paths failed under SlowDown", name, st.Failed)
				}
				if st.Uploaded.Paths != int64(paths) {
					b.Fatalf("%s: uploaded %d paths; the closure has %d", name, st.Uploaded.Paths, paths)
				}
				res.throttled, res.low, res.atEnd = st.Traffic.Throttled, low, st.Traffic.Concurrency
				break
			}
			if time.Since(start) > 20*time.Minute {
				b.Fatalf("%s: not drained after 20 minutes", name)
			}
			time.Sleep(100 * time.Millisecond)
		}
		res.slowed, res.reqs = p.SlowedDown(), p.Requests()
		return res
	}

	for _, share := range []float64{0.3, 0.6} {
		results := map[string][]result{}
		for i := range rounds {
			order := slices.Clone(sides)
			if i%2 == 1 {
				slices.Reverse(order)
			}
			for _, s := range order {
				res := run(s.name, s.dir, share, fmt.Sprintf("slowdown-%02.0f-%s-%d", share*100, s.name, i))
				results[s.name] = append(results[s.name], res)
				// On stderr: go test keeps only the first lines of a benchmark's log.
				fmt.Fprintf(os.Stderr, "SlowDown %.0f%% round %d %s: %d paths in %.1f s of SlowDown (%.1f paths/s), drained in %.1f s; throttled %d (proxy: %d slowed, %d passed); concurrency low %d, at the end %d",
					share*100, i, s.name, res.inWindow, res.throttledFor.Seconds(), float64(res.inWindow)/res.throttledFor.Seconds(),
					res.drain.Seconds(), res.throttled, res.slowed, res.reqs, res.low, res.atEnd)
				fmt.Fprintln(os.Stderr)
			}
		}
		for _, s := range sides {
			rs := results[s.name]
			var tput []float64
			var dr []time.Duration
			for _, x := range rs {
				tput = append(tput, float64(x.inWindow)/x.throttledFor.Seconds())
				dr = append(dr, x.drain)
			}
			slices.Sort(tput)
			med := tput[len(tput)/2]
			b.Logf("SlowDown %.0f%%, %s: median %.1f paths/s under SlowDown, drain %.1f s; rounds %.1f paths/s, drains %v",
				share*100, s.name, med, percentile(dr, 0.5).Seconds(), tput, dr)
			b.ReportMetric(med, fmt.Sprintf("paths/s@%.0f%%-%s", share*100, s.name))
			b.ReportMetric(percentile(dr, 0.5).Seconds(), fmt.Sprintf("drain-s@%.0f%%-%s", share*100, s.name))
		}
	}
}
