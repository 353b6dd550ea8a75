package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/hook"
	"github.com/nixpush/nixpush/internal/testenv"
	"github.com/nixpush/nixpush/queue"
)

// BenchmarkHooksAtOnce is Nix 2.35 running post-build hooks concurrently
// (up to max-jobs): 32 nixpush-hook processes started at one moment for
// overlapping outputs (each hands over its own path and its neighbour's),
// against a daemon pushing to MinIO, each timed from start to exit. To say
// where the time goes, each round also runs, the same way and at once:
//
//   - 32 /bin/true: the floor of starting 32 processes on this machine;
//   - 32 empty Go programs: the floor of any hook written in Go (the
//     runtime starts threads and maps its heap before main);
//   - 32 hook.Handoff calls in this process (no process start): the
//     daemon's side, socket accept, request and group commit;
//   - 32 queue.Enqueue calls in this process on a queue file of its own
//     on the same disk: the group commit alone (bbolt, fdatasync);
//   - 32 nixpush-hook against a daemon with NIXPUSH_BURST_QUIET=0, whose
//     pushes start amid the burst (as before daemon.DefaultBurstQuiet);
//
// and each of the hook, Handoff and Enqueue once alone. Every round has a
// fresh daemons (their own queue files) and fresh paths; the order of the
// groups turns from round to round; figures are medians over rounds of
// each round's p50 and p99. The CPU time of each process (user + system)
// says how much of the wall time is start-up work, which 32 processes
// share 2 cores for.
func BenchmarkHooksAtOnce(b *testing.B) {
	const n, rounds = 32, 5
	r := newRig(b)
	empty := emptyGoProgram(b)
	load0 := loadavg()

	type group struct {
		name string
		run  func(round int) (wall, cpu []time.Duration)
	}
	var (
		d          *testenv.Daemon
		d0         *testenv.Daemon // NIXPUSH_BURST_QUIET=0: pushes start amid the burst
		hook0Paths []string        // n, for the 32 hooks to d0
		hookPaths  []string        // n, for the 32 hooks
		callPaths  []string        // n, for the 32 Handoff calls
		alonePaths []string        // one for the lone hook, one for the lone Handoff
		q          *queue.Queue
	)
	// trace is where nixpush-hook's time went, per hook of a group:
	// "main" from start to main, "connect" on to the connection made,
	// "answer" on to the daemon's answer, "exit" on to its exit.
	var traceMu sync.Mutex
	trace := map[string][]time.Duration{}
	// procs starts bin n times at one moment with env(i) and times each.
	procs := func(bin string, args []string, env func(i int) []string) (wall, cpu []time.Duration) {
		wall, cpu = make([]time.Duration, n), make([]time.Duration, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command(bin, args...)
				var out strings.Builder
				cmd.Stdout, cmd.Stderr = &out, &out
				<-start
				t0 := time.Now()
				// nixpush-hook says when it reached main, connected and
				// had its answer (the others ignore the variable).
				cmd.Env = append(append(os.Environ(), env(i)...), fmt.Sprintf("NIXPUSH_HOOK_TIMING=%d", t0.UnixNano()))
				err := cmd.Run()
				wall[i] = time.Since(t0)
				text := out.String()
				if rest, ok := strings.CutPrefix(text, "nixpush-hook timing: "); ok {
					var m, c, a int64
					if _, serr := fmt.Sscanf(rest, "main=%d connect=%d answer=%d\n", &m, &c, &a); serr == nil {
						traceMu.Lock()
						trace["main"] = append(trace["main"], time.Duration(m)*time.Microsecond)
						trace["connect"] = append(trace["connect"], time.Duration(c-m)*time.Microsecond)
						trace["answer"] = append(trace["answer"], time.Duration(a-c)*time.Microsecond)
						trace["exit"] = append(trace["exit"], wall[i]-time.Duration(a)*time.Microsecond)
						traceMu.Unlock()
						text = ""
					}
				}
				if err != nil || text != "" {
					errs <- fmt.Errorf("%s %d: %v %s", bin, i, err, text)
					return
				}
				cpu[i] = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		return wall, cpu
	}
	// calls runs fn n times at one moment in this process and times each.
	calls := func(fn func(i int) error) (wall []time.Duration) {
		wall = make([]time.Duration, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				t0 := time.Now()
				if err := fn(i); err != nil {
					errs <- err
				}
				wall[i] = time.Since(t0)
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		return wall
	}
	hookEnv := func(i int) []string {
		return append(d.HookEnv(), "OUT_PATHS="+hookPaths[i]+" "+hookPaths[(i+1)%n], "DRV_PATH=")
	}
	groups := []group{
		{"/bin/true x32", func(int) ([]time.Duration, []time.Duration) { return procs("/bin/true", nil, hookEnv) }},
		{"empty Go x32", func(int) ([]time.Duration, []time.Duration) { return procs(empty, nil, hookEnv) }},
		{"nixpush-hook x32", func(int) ([]time.Duration, []time.Duration) { return procs(d.HookBin(), nil, hookEnv) }},
		{"nixpush-hook x32, no burst pause", func(int) ([]time.Duration, []time.Duration) {
			return procs(d0.HookBin(), nil, func(i int) []string {
				return append(d0.HookEnv(), "OUT_PATHS="+hook0Paths[i]+" "+hook0Paths[(i+1)%n], "DRV_PATH=")
			})
		}},
		{"Handoff x32 (in-process)", func(int) ([]time.Duration, []time.Duration) {
			return calls(func(i int) error {
				return hook.Handoff(d.Socket, api.EnqueueRequest{Paths: []string{callPaths[i], callPaths[(i+1)%n]}}, 5*time.Second)
			}), nil
		}},
		{"queue.Enqueue x32 (in-process)", func(round int) ([]time.Duration, []time.Duration) {
			return calls(func(i int) error {
				_, err := q.Enqueue(context.Background(), []string{fmt.Sprintf("/nix/store/r%d-%d", round, i), fmt.Sprintf("/nix/store/r%d-%d", round, (i+1)%n)})
				return err
			}), nil
		}},
	}
	alone := []group{
		{"nixpush-hook alone", func(int) ([]time.Duration, []time.Duration) {
			cmd := exec.Command(d.HookBin())
			cmd.Env = append(os.Environ(), append(d.HookEnv(), "OUT_PATHS="+alonePaths[0], "DRV_PATH=")...)
			t0 := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
				b.Fatalf("hook: %v %s", err, out)
			}
			return []time.Duration{time.Since(t0)}, []time.Duration{cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
		}},
		{"Handoff alone", func(int) ([]time.Duration, []time.Duration) {
			t0 := time.Now()
			if err := hook.Handoff(d.Socket, api.EnqueueRequest{Paths: alonePaths[1:2]}, 5*time.Second); err != nil {
				b.Fatal(err)
			}
			return []time.Duration{time.Since(t0)}, nil
		}},
		{"queue.Enqueue alone", func(round int) ([]time.Duration, []time.Duration) {
			t0 := time.Now()
			if _, err := q.Enqueue(context.Background(), []string{fmt.Sprintf("/nix/store/alone-%d", round)}); err != nil {
				b.Fatal(err)
			}
			return []time.Duration{time.Since(t0)}, nil
		}},
	}
	all := append(append([]group(nil), groups...), alone...)
	p50s, p99s, cpu50 := map[string][]time.Duration{}, map[string][]time.Duration{}, map[string][]time.Duration{}
	steps := map[string][]time.Duration{} // per round, the p50 of each step of the hooks
	for round := range rounds {
		// Fresh paths: a family of tops sharing a chain (overlapping
		// closures), built before anything is timed.
		var names []string
		for i := range 3*n + 2 {
			names = append(names, fmt.Sprintf("t%d", i))
		}
		outs := r.nix.Build(b, testenv.Family(seed(), names, names[:n]))
		hookPaths, callPaths, hook0Paths, alonePaths = outs[:n], outs[n:2*n], outs[2*n:3*n], outs[3*n:]
		d = r.daemon(fmt.Sprintf("hooks-at-once-%d", round))
		bucket0 := fmt.Sprintf("hooks-at-once-nopause-%d", round)
		r.minio.MakeBucket(b, bucket0, true)
		d0 = testenv.StartDaemon(b, binDir, append(r.minio.CredentialsEnv(), "NIXPUSH_BURST_QUIET=0"),
			"--store-uri", r.minio.StoreURI(bucket0), "--secret-key-file", r.sec, "--log-level", "warn")
		var err error
		q, err = queue.Open(filepath.Join(b.TempDir(), "queue.db"), queue.Options{})
		if err != nil {
			b.Fatal(err)
		}
		r.settle()
		for k := range all {
			g := all[(k+round)%len(all)]
			clear(trace)
			wall, cpu := g.run(round)
			if g.name == "nixpush-hook x32" || g.name == "nixpush-hook x32, no burst pause" {
				for _, step := range []string{"main", "connect", "answer", "exit"} {
					if len(trace[step]) != n {
						b.Fatalf("%s: %d hooks said their timing; want %d", g.name, len(trace[step]), n)
					}
					steps[g.name+": "+step] = append(steps[g.name+": "+step], percentile(trace[step], 0.5))
				}
			}
			p50s[g.name] = append(p50s[g.name], percentile(wall, 0.5))
			p99s[g.name] = append(p99s[g.name], percentile(wall, 0.99))
			if cpu != nil {
				cpu50[g.name] = append(cpu50[g.name], percentile(cpu, 0.5))
			}
			time.Sleep(200 * time.Millisecond) // the daemon's pushes of the last group start
		}
		for _, dd := range []*testenv.Daemon{d, d0} {
			if spooled, _ := filepath.Glob(filepath.Join(dd.SpoolDir, "*")); len(spooled) > 0 {
				b.Fatalf("round %d: %d hook runs spooled instead of handing off", round, len(spooled))
			}
			dd.MustWait(5 * time.Minute)
		}
		if st := status(b, d); st.Failed != 0 || st.Done < 2*n+2 {
			b.Fatalf("round %d: status %+v; want %d done, none failed", round, st, 2*n+2)
		}
		if st := status(b, d0); st.Failed != 0 || st.Done < n {
			b.Fatalf("round %d: status %+v (no burst pause); want %d done, none failed", round, st, n)
		}
		d.Stop()
		d0.Stop()
		q.Close()
	}
	med := func(d []time.Duration) time.Duration { return percentile(d, 0.5) }
	b.ReportMetric(ms(med(p50s["nixpush-hook x32"])), "hook32-p50-ms")
	b.ReportMetric(ms(med(p99s["nixpush-hook x32"])), "hook32-p99-ms")
	b.ReportMetric(ms(med(p50s["nixpush-hook x32, no burst pause"])), "hook32-nopause-p50-ms")
	b.ReportMetric(ms(med(p99s["nixpush-hook x32, no burst pause"])), "hook32-nopause-p99-ms")
	b.ReportMetric(ms(med(p50s["/bin/true x32"])), "true32-p50-ms")
	b.ReportMetric(ms(med(p50s["nixpush-hook alone"])), "hook1-ms")
	// On stdout: go test keeps only the first ten lines of a benchmark's
	// log unless -v.
	var table strings.Builder
	fmt.Fprintf(&table, "%d at one moment, %d rounds (fresh daemons and paths each), medians over rounds of each round's p50 / p99; CPU = user+system per process (p50):\n", n, rounds)
	for _, g := range all {
		fmt.Fprintf(&table, "  %-34s p50 %7.1f ms  p99 %7.1f ms", g.name, ms(med(p50s[g.name])), ms(med(p99s[g.name])))
		if c := cpu50[g.name]; c != nil {
			fmt.Fprintf(&table, "  CPU %5.1f ms", ms(med(c)))
		}
		table.WriteString("\n")
	}
	table.WriteString("where a hook's time goes (median over rounds of each step's p50; the steps' p50s do not add up to the whole's):\n")
	for _, name := range []string{"nixpush-hook x32", "nixpush-hook x32, no burst pause"} {
		fmt.Fprintf(&table, "  %-34s start to main %6.1f ms, connect %5.1f ms, answer %6.1f ms, exit %5.1f ms\n", name,
			ms(med(steps[name+": main"])), ms(med(steps[name+": connect"])), ms(med(steps[name+": answer"])), ms(med(steps[name+": exit"])))
	}
	fmt.Fprintf(&table, "load before %s, after %s", load0, loadavg())
	fmt.Println(table.String())
}

// loadavg is /proc/loadavg's 1, 5 and 15 minute load: the machine is shared.
func loadavg() string {
	s, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return err.Error()
	}
	f := strings.Fields(string(s))
	if len(f) < 3 {
		return string(s)
	}
	return strings.Join(f[:3], " ")
}
