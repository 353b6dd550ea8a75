package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nixpush/nixpush/api/client"
	"github.com/nixpush/nixpush/internal/testenv"
	"github.com/nixpush/nixpush/spool"
)

// throttledPush is where every upload fault test starts: a closure of
// DAG paths being pushed to a fresh bucket through a proxy that lets
// requests through at 256 KiB/s per connection, so that uploads are in
// flight for a while however fast this machine is.
type throttledPush struct {
	*fixture
	out     []string
	closure []string
}

func startThrottledPush(t *testing.T, bucket string, paths, jobs int) *throttledPush {
	t.Helper()
	f := &throttledPush{fixture: newFixture(t, "nixpush-e2e-"+bucket+"-1", onBucket(bucket), throughProxy(256<<10),
		daemonArgs("--jobs", strconv.Itoa(jobs)))}
	f.out = f.nx.Build(t, testenv.DAG(seed(), paths, 64, true))
	f.closure = closureOf(t, f.nx, f.out...)
	if o, err := f.d.CLI("push", f.out[0]); err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	return f
}

// uploading waits until a NAR upload is in flight and the daemon has
// uploaded at least paths paths since it started.
func (f *throttledPush) uploading(t *testing.T, what string, paths int64) {
	t.Helper()
	eventually(t, 2*time.Minute, func() bool {
		if f.p.UploadsInFlight(8<<10) == 0 {
			return false
		}
		st, err := client.New(f.d.Socket).Status(context.Background())
		return err == nil && st.Uploaded.Paths >= paths
	}, "%s", what+": a NAR upload in flight")
}

// midway checks the bucket after a fault: valid, and not yet holding the
// whole closure (the fault came mid-upload). It returns the .narinfo count.
func (f *throttledPush) midway(t *testing.T, when string) int {
	t.Helper()
	n := mustBeValid(t, f.m, f.bucket, when)
	if n >= len(f.closure) {
		t.Fatalf("%s: all %d paths were up already", when, n)
	}
	t.Logf("%s: bucket valid with %d of %d .narinfo files", when, n, len(f.closure))
	return n
}

// finish lifts the throttle, waits for the queue to drain with nothing
// failed, and checks the bucket: valid, the whole closure, and real Nix
// fetches it.
func (f *throttledPush) finish(t *testing.T) {
	t.Helper()
	f.p.SetRate(0)
	f.d.MustWait(5 * time.Minute)
	if st := fullStatus(t, f.d); st.Failed != 0 {
		t.Fatalf("status: %+v", st)
	}
	if n := mustBeValid(t, f.m, f.bucket, "at the end"); n != len(f.closure) {
		t.Fatalf("final bucket: %d .narinfo, want %d", n, len(f.closure))
	}
	f.checkFetched(f.out...)
}

// TestSIGKILLNeverBreaksTheCache kills the daemon (SIGKILL) again and again
// while a closure of 120 paths uploads to MinIO, each time while a NAR
// upload is in flight and after the restarted daemon has written at least
// one more .narinfo, and checks the bucket after each kill: never a
// .narinfo without its NAR or references. After the last restart the queue
// drains and Nix fetches the whole closure.
func TestSIGKILLNeverBreaksTheCache(t *testing.T) {
	f := startThrottledPush(t, "killed", 120, 4)
	for kill := 1; kill <= 5; kill++ {
		f.uploading(t, fmt.Sprintf("kill %d, the daemon having uploaded a path", kill), 1)
		f.d.Kill()
		f.midway(t, fmt.Sprintf("after kill %d", kill))
		f.p.Cut() // connections of the dead daemon
		f.d.Start()
	}
	f.finish(t)
}

// TestMinIOCrashMidUpload kills MinIO (SIGKILL) while NAR uploads are in
// flight and keeps it down until the daemon's own retries have started:
// nothing fails permanently, the bucket MinIO comes back with holds no broken .narinfo,
// and once it is up everything arrives.
func TestMinIOCrashMidUpload(t *testing.T) {
	f := startThrottledPush(t, "crash", 60, 2)
	f.uploading(t, "before the crash, 3 paths up", 3)
	inFlight := f.p.UploadsInFlight(8 << 10)
	f.m.Kill(t)
	t.Logf("MinIO killed with %d NAR uploads in flight", inFlight)
	// The outage outlasts the S3 client's own retries (about ten, a second
	// apart at most), so the daemon's retries with backoff are what carry
	// the paths through it.
	eventually(t, 2*time.Minute, func() bool {
		return strings.Contains(f.d.Log.String(), "push failed, will retry")
	}, "the daemon retrying after a failed push")
	time.Sleep(5 * time.Second) // more of the outage, retries and backoff meanwhile
	if st, err := statusJSON(t, f.d); err != nil || st.Failed != 0 || st.Drained {
		t.Fatalf("during the outage: %+v, %v; want nothing failed and not drained", st, err)
	}
	f.m.Start(t)
	f.midway(t, "as MinIO came back")
	f.finish(t)
}

// TestConnectionsCutMidUpload drops every connection between the daemon
// and MinIO five times, each time while a NAR upload is in flight (MinIO
// itself stays up): the bucket is valid after every cut, nothing fails
// permanently, and everything arrives.
func TestConnectionsCutMidUpload(t *testing.T) {
	f := startThrottledPush(t, "cut", 60, 2)
	// Each cut after the first waits for another .narinfo, so the cuts
	// fall at different stages of the push.
	last := -1
	for cut := 1; cut <= 5; cut++ {
		eventually(t, 2*time.Minute, func() bool {
			return f.p.UploadsInFlight(8<<10) > 0 && countNarinfos(t, f.m, f.bucket) > last
		}, "cut %d: a NAR upload in flight after progress", cut)
		f.p.Cut()
		last = f.midway(t, fmt.Sprintf("after cut %d", cut))
	}
	f.finish(t)
}

// TestDaemonDownDuringBuilds builds 20 derivations with the hook while the
// daemon is stopped: every build succeeds, the hook spools, and every path
// lands once the daemon starts.
func TestDaemonDownDuringBuilds(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-down-1")
	d := f.d
	d.Stop()
	start := time.Now()
	out := f.build(testenv.Chain(seed(), 20))
	t.Logf("20 builds with the daemon down took %s", time.Since(start).Round(time.Millisecond))
	spooled, _ := spool.Files(d.SpoolDir)
	if len(spooled) != 20 {
		t.Fatalf("%d spool files; want 20 (one per build)", len(spooled))
	}
	d.Start()
	d.MustWait(3 * time.Minute)
	if left, _ := spool.Files(d.SpoolDir); len(left) != 0 {
		t.Fatalf("spool not emptied: %v", left)
	}
	f.checkFetched(out...)
}

// TestSixteenHooksAtOnce runs 16 hooks at the same moment, as Nix does with
// max-jobs = 16: all are acknowledged by the daemon (none spooled), none
// is lost.
func TestSixteenHooksAtOnce(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-16-1")
	nx, d := f.nx, f.d
	s := seed()
	var exprs []string
	for i := range 16 {
		exprs = append(exprs, "("+testenv.Chain(fmt.Sprintf("%s-%d", s, i), 2)+")")
	}
	outs := nx.Build(t, "["+strings.Join(exprs, " ")+"]")
	if len(outs) != 16 {
		t.Fatalf("built %d paths; want 16", len(outs))
	}
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := testenv.Command(t, d.Hook)
			cmd.Env = append(os.Environ(), "OUT_PATHS="+outs[i], "DRV_PATH=")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil || stderr.Len() > 0 {
				errs[i] = fmt.Errorf("hook %d: %v %s", i, err, stderr.String())
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if spooled, _ := spool.Files(d.SpoolDir); len(spooled) != 0 {
		t.Fatalf("%d hooks spooled instead of being acknowledged", len(spooled))
	}
	d.MustWait(3 * time.Minute)
	st := status(t, d)
	if st["done"] != 16 {
		t.Fatalf("status %v; want 16 done", st)
	}
	f.checkFetched(outs...)
}

// TestThirtyTwoHooksAtOnceOverlapping runs 32 hooks at the same moment,
// as Nix 2.35 does with max-jobs = 32 (it runs post-build hooks
// concurrently), for overlapping outputs: each hook hands over its own
// top and its neighbour's, and every top refers to a chain all of them
// share. Every hook is acknowledged (exit 0, nothing said: the fast path),
// none spooled, and nothing is lost: every path reaches the cache and Nix
// copies the whole closure back. Its timings are BenchmarkHooksAtOnce's.
func TestThirtyTwoHooksAtOnceOverlapping(t *testing.T) {
	const n = 32
	f := newFixture(t, "nixpush-e2e-32-1")
	nx, d := f.nx, f.d
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("top%d", i))
	}
	outs := nx.Build(t, testenv.Family(seed(), names, names[:n/2]))
	if len(outs) != n {
		t.Fatalf("built %d paths; want %d", len(outs), n)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := testenv.Command(t, d.HookBin(), "--socket", d.Socket, "--spool-dir", d.SpoolDir)
			cmd.Env = append(os.Environ(), "OUT_PATHS="+outs[i]+" "+outs[(i+1)%n], "DRV_PATH=")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			<-start
			if err := cmd.Run(); err != nil || out.Len() > 0 {
				errs[i] = fmt.Errorf("hook %d: %v %s", i, err, out.String())
			}
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if spooled, _ := spool.Files(d.SpoolDir); len(spooled) != 0 {
		t.Fatalf("%d hooks spooled instead of being acknowledged", len(spooled))
	}
	d.MustWait(3 * time.Minute)
	closure := closureOf(t, nx, outs...)
	st := status(t, d)
	if st["failed"] != 0 || st["queued"] != 0 || st["active"] != 0 || st["done"] != n {
		t.Fatalf("status %v; want %d done, nothing failed or left", st, n)
	}
	cache := filepath.Join(d.StateDir, "cache")
	for _, p := range closure {
		if _, err := os.Stat(filepath.Join(cache, filepath.Base(p)[:32]+".narinfo")); err != nil {
			t.Errorf("%s: no .narinfo in the cache: %v", p, err)
		}
	}
	f.checkFetched(outs...)
}

// TestSIGTERMMidUpload stops the daemon with SIGTERM while a NAR upload is
// in flight: it exits (a hang fails the test), removes its socket, and
// loses nothing: the bucket is valid, and after a restart the queue drains
// and Nix fetches the whole closure.
func TestSIGTERMMidUpload(t *testing.T) {
	f := startThrottledPush(t, "termed", 40, 2)
	f.uploading(t, "before SIGTERM, 2 paths up", 2)
	f.d.Stop() // fails the test if the daemon is still running a minute later
	if _, err := os.Stat(f.d.Socket); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after SIGTERM: %v", err)
	}
	if !strings.Contains(f.d.Log.String(), "daemon stopped") {
		t.Fatalf("no clean stop in the log:\n%s", f.d.Log)
	}
	f.midway(t, "after SIGTERM")
	f.d.Start()
	f.finish(t)
}

// TestSocketActivation: with the socket held by systemd
// (systemd-socket-activate, as systemd.sockets.nixpush does), a hook that
// connects before the daemon runs waits for it to start and is
// acknowledged, not spooled.
func TestSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Fatal("systemd-socket-activate not found: apt-get install systemd")
	}
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-activation-1")
	dir := t.TempDir()
	sock, state, spoolDir := filepath.Join(dir, "nixpush.sock"), filepath.Join(dir, "state"), filepath.Join(dir, "spool")
	var log bytes.Buffer
	cmd := testenv.Command(t, activate, "-l", sock, nixpushBin(), "daemon", "--socket", sock, "--state-dir", state,
		"--spool-dir", spoolDir, "--secret-key-file", sec, "--log-format", "json")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	eventually(t, 30*time.Second, func() bool {
		_, err := os.Stat(sock)
		return err == nil
	}, "systemd-socket-activate makes the socket")
	out := nx.Build(t, testenv.Chain(seed(), 3))
	// The first connection starts the daemon: a Go binary opening its
	// queue, which under a load of 18 on two cores took longer than the
	// hook's default 1.5 s wait. The wait is what --timeout is for.
	h := testenv.Command(t, filepath.Join(binDir, "nixpush-hook"), "--socket", sock, "--spool-dir", spoolDir, "--timeout", "30s")
	h.Env = append(os.Environ(), "OUT_PATHS="+out[0])
	if o, err := h.CombinedOutput(); err != nil || len(o) > 0 {
		t.Fatalf("hook: %v %s", err, o)
	}
	if files, _ := spool.Files(spoolDir); len(files) != 0 {
		t.Fatalf("hook spooled instead of waiting for the activated daemon: %v", files)
	}
	if !strings.Contains(log.String(), "using the socket systemd passed in") {
		t.Fatalf("daemon did not take the socket from systemd:\n%s", log.String())
	}
	w := testenv.Command(t, nixpushBin(), "wait", "--timeout", "2m", "--socket", sock)
	if o, err := w.CombinedOutput(); err != nil {
		t.Fatalf("wait: %v %s\n%s", err, o, log.String())
	}
	checkFetched(t, nx, "file://"+filepath.Join(state, "cache"), pub, out...)
}

// TestTwoBuildersSamePaths: two daemons (two builders) push the same
// closure to one bucket at the same time; uploads are idempotent, so both
// drain and the bucket stays valid.
func TestTwoBuildersSamePaths(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-two-1", onBucket("shared"), laterDaemon())
	out := f.nx.Build(t, testenv.DAG(seed(), 40, 128, true))
	a, b := f.startDaemon(), f.startDaemon()
	var wg sync.WaitGroup
	for _, d := range []*daemon{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if o, err := d.CLI("push", "--wait", out[0]); err != nil {
				t.Errorf("push --wait: %v %s", err, o)
			}
		}()
	}
	wg.Wait()
	if problems, n := bucketProblems(t, f.client(), "shared", false); len(problems) > 0 || n != 41 {
		t.Fatalf("bucket: %d narinfos, problems %v", n, problems)
	}
	f.checkFetched(out...)
}

// TestKillDuringHookBurst kills the daemon (SIGKILL) while a burst of 80
// hooks hands paths over, eight at a time, as Nix does with max-jobs = 8.
// A hook that exits 0 without spooling was acknowledged: its path must
// survive the kill (acknowledged means committed). Hooks that met the dead
// daemon spool. After a restart, every one of the 80 paths, each a closure
// of its own, reaches the cache.
func TestKillDuringHookBurst(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-burst-1")
	nx, d := f.nx, f.d
	s := seed()
	const n = 80
	var exprs []string
	for i := range n {
		exprs = append(exprs, "("+testenv.Chain(fmt.Sprintf("%s-%d", s, i), 1)+")")
	}
	outs := nx.Build(t, "["+strings.Join(exprs, " ")+"]")
	if len(outs) != n {
		t.Fatalf("built %d paths; want %d", len(outs), n)
	}
	type result struct {
		acked, spooled bool
		out            string
	}
	results := make([]result, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range next {
				cmd := testenv.Command(t, d.Hook)
				cmd.Env = append(os.Environ(), "OUT_PATHS="+outs[i], "DRV_PATH=")
				o, err := cmd.CombinedOutput()
				r := result{out: string(o)}
				switch {
				case err != nil:
					r.out += err.Error()
				case len(o) == 0:
					r.acked = true
				case strings.Contains(r.out, "spooled"):
					r.spooled = true
				}
				results[i] = r
			}
		})
	}
	for i := range n {
		next <- i
		if i == n/3 {
			d.Kill() // while eight hooks are under way and more keep coming
		}
	}
	close(next)
	wg.Wait()
	var nAcked, nSpooled int
	for i, r := range results {
		switch {
		case r.acked:
			nAcked++
		case r.spooled:
			nSpooled++
		default:
			t.Errorf("hook %d (%s) neither acknowledged nor spooled: %s", i, outs[i], r.out)
		}
	}
	if nAcked == 0 || nSpooled == 0 {
		t.Fatalf("%d acknowledged, %d spooled: the kill did not fall inside the burst", nAcked, nSpooled)
	}
	t.Logf("%d hooks acknowledged, %d spooled after the kill", nAcked, nSpooled)
	d.Start()
	d.MustWait(3 * time.Minute)
	f.checkFetched(outs...)
}
