// Package bench measures nixpush against the classic setup, side by side in
// one run on this machine: real Nix builds the workloads, a real MinIO on
// loopback holds the buckets, and Nix's own `nix copy` to the bucket's HTTP
// endpoint is the baseline. Run it with ./scripts/bench.sh.
//
// Figures are reported as benchmark metrics and as a table in the log.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/hook"
	"github.com/nixpush/nixpush/internal/testenv"
)

var binDir string

func TestMain(m *testing.M) { os.Exit(testenv.WithNixpush(m, "..", &binDir)) }

// closureSeed is the seed of a workload that is only read (pushed, handed
// over), not timed while built: NIXPUSH_BENCH_SEED, when set, makes it the
// same from run to run, so that runs compared side by side (two commits,
// alternating) build it once.
func closureSeed(name string) string {
	if s := os.Getenv("NIXPUSH_BENCH_SEED"); s != "" {
		return s + "-" + name
	}
	return seed()
}

func seed() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// keys makes a signing key pair with nixpush keygen.
func keys(b *testing.B) (secretFile, public string) {
	b.Helper()
	dir := b.TempDir()
	out, err := exec.Command(filepath.Join(binDir, "nixpush"), "keygen", "--name", "nixpush-bench-1", "--out", dir).CombinedOutput()
	if err != nil {
		b.Fatalf("keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "public.key"))
	if err != nil {
		b.Fatal(err)
	}
	return filepath.Join(dir, "secret.key"), strings.TrimSpace(string(pub))
}

// rig is MinIO, a signing key and Nix, shared by a benchmark's runs.
type rig struct {
	b        *testing.B
	minio    *testenv.MinIOServer
	nix      *testenv.NixEnv
	sec, pub string
}

func newRig(b *testing.B) *rig {
	r := &rig{b: b, minio: testenv.MinIO(b), nix: testenv.Nix(b)}
	r.sec, r.pub = keys(b)
	return r
}

// daemon starts nixpush daemon pushing to a new bucket.
func (r *rig) daemon(bucket string, args ...string) *testenv.Daemon {
	r.minio.MakeBucket(r.b, bucket, true)
	args = append([]string{"--store-uri", r.minio.StoreURI(bucket), "--secret-key-file", r.sec, "--log-level", "warn"}, args...)
	return testenv.StartDaemon(r.b, binDir, r.minio.CredentialsEnv(), args...)
}

// classicBucket makes a bucket that anyone may read and write, so Nix 2.8
// (no S3 support) can `nix copy` to its HTTP endpoint.
func (r *rig) classicBucket(name string) string {
	r.b.Helper()
	c := r.minio.Client(r.b)
	ctx := context.Background()
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		r.b.Fatal(err)
	}
	policy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject","s3:PutObject"],"Resource":["arn:aws:s3:::%[1]s/*"]},
{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:ListBucket","s3:GetBucketLocation"],"Resource":["arn:aws:s3:::%[1]s"]}]}`, name)
	if err := c.SetBucketPolicy(ctx, name, policy); err != nil {
		r.b.Fatal(err)
	}
	return r.minio.HTTPURL(name)
}

// settle writes dirty pages out (the store paths just built, MinIO's last
// objects) and waits until MinIO is idle (under 10 ms of CPU in 250 ms, at
// most 10 s), so work left over from building or from one timed run is not
// billed to the next: without the sync, whichever side went first right
// after the build paid for the kernel writing the build's output back.
func (r *rig) settle() {
	syscall.Sync()
	prev, err := r.minio.CPUTime()
	if err != nil {
		r.b.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(250 * time.Millisecond)
		cur, err := r.minio.CPUTime()
		if err != nil {
			r.b.Fatal(err)
		}
		if cur-prev < 10*time.Millisecond {
			return
		}
		prev = cur
	}
}

// buildChain times nix-build of n+1 fresh small derivations, a chain
// built one at a time, with hookBin as Nix's post-build-hook and env added.
func (r *rig) buildChain(n int, hookBin string, env []string) time.Duration {
	r.b.Helper()
	cmd := exec.Command("nix-build", "--no-out-link", "--option", "post-build-hook", hookBin, "-E", testenv.DAG(seed(), n, 1, false))
	cmd.Env = append(r.nix.Env(), env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.b.Fatalf("nix-build with hook %s: %v\n%s", hookBin, err, out)
	}
	return time.Since(start)
}

// nixCopy is the classic method: nix copy to the bucket's HTTP endpoint.
// It returns the wall time and the CPU time of nix copy (user and system,
// with whatever children it waited for).
func (r *rig) nixCopy(url, compression string, paths ...string) (wall, cpu time.Duration) {
	r.b.Helper()
	args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--to",
		url + "?compression=" + compression + "&secret-key=" + r.sec}, paths...)
	ctx, cancel := context.WithTimeout(context.Background(), testenv.NixTimeout)
	defer cancel()
	cmd := r.nix.Command(ctx, "nix", args...)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		r.b.Fatalf("nix copy: %v\n%s", err, out)
	}
	return time.Since(start), childCPU(cmd)
}

// childCPU is the user and system time of a command that has exited.
func childCPU(cmd *exec.Cmd) time.Duration {
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return 0
}

// pushAndWait is nixpush's method: nixpush push, then nixpush wait.
func pushAndWait(b *testing.B, d *testenv.Daemon, paths ...string) time.Duration {
	b.Helper()
	start := time.Now()
	if out, err := d.CLI(append([]string{"push"}, paths...)...); err != nil {
		b.Fatalf("nixpush push: %v\n%s", err, out)
	}
	if out, err := d.CLI("wait", "--timeout", "20m"); err != nil {
		b.Fatalf("nixpush wait: %v\n%s\n%s", err, out, d.Log)
	}
	return time.Since(start)
}

func status(b *testing.B, d *testenv.Daemon) api.Status {
	b.Helper()
	out, err := d.CLI("status", "--json")
	if err != nil {
		b.Fatalf("nixpush status: %v\n%s", err, out)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		b.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

// checkFetched has real Nix fetch the closure of paths from url, trusting
// only the bench key: it checks every signature and NAR hash.
func (r *rig) checkFetched(url string, paths ...string) {
	r.b.Helper()
	if _, err := r.nix.CopyFrom(r.b, url, r.pub, paths...); err != nil {
		r.b.Fatalf("nix copy --from %s: %v", url, err)
	}
}

func closureSize(b *testing.B, nx *testenv.NixEnv, paths ...string) (count int, narBytes int64) {
	b.Helper()
	out, err := nx.Run(b, "nix", append([]string{"--extra-experimental-features", "nix-command", "path-info", "--json", "--recursive"}, paths...)...)
	if err != nil {
		b.Fatal(err)
	}
	// An array up to Nix 2.18, a map by store path since 2.19.
	type info struct {
		NarSize int64 `json:"narSize"`
	}
	var infos []info
	if strings.HasPrefix(strings.TrimSpace(out), "{") {
		var byPath map[string]*info
		if err := json.Unmarshal([]byte(out), &byPath); err != nil {
			b.Fatal(err)
		}
		for _, i := range byPath {
			if i == nil {
				b.Fatalf("nix path-info: a path of the closure of %v is not valid", paths)
			}
			infos = append(infos, *i)
		}
	} else if err := json.Unmarshal([]byte(out), &infos); err != nil {
		b.Fatal(err)
	}
	for _, i := range infos {
		narBytes += i.NarSize
	}
	return len(infos), narBytes
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.5) - 1
	i = max(0, min(i, len(s)-1))
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

const mib = 1 << 20

// manyOutputs is one derivation with n small outputs: n distinct store
// paths from a single build, for handing to the hook one by one.
func manyOutputs(s string, n int) string {
	outs := make([]string, n)
	for i := range outs {
		outs[i] = fmt.Sprintf("%q", fmt.Sprintf("o%d", i))
	}
	return fmt.Sprintf(`(derivation {
  name = "bench-outputs"; system = builtins.currentSystem; builder = "/bin/sh";
  outputs = [ %s ];
  args = [ "-c" "PATH=/bin:/usr/bin; for o in $outputs; do echo %s $o > $(printenv $o); done" ];
}).all`, strings.Join(outs, " "), s)
}

// BenchmarkHookLatency runs nixpush-hook as Nix does, once per store path,
// against a daemon that uploads to MinIO meanwhile, and times each run
// from process start to exit (the daemon has committed the path to its
// queue with fsync by then). /bin/true, run the same way, is the floor,
// and an empty Go program the floor of a hook written in Go.
func BenchmarkHookLatency(b *testing.B) {
	const n = 1000
	r := newRig(b)
	d := r.daemon("hook-latency")
	paths := r.nix.Build(b, manyOutputs(closureSeed("hook-latency"), n))
	if len(paths) != n {
		b.Fatalf("built %d paths, want %d", len(paths), n)
	}
	run := func(bin string, p string) time.Duration {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), append(d.HookEnv(), "OUT_PATHS="+p, "DRV_PATH=")...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		took := time.Since(start)
		if err != nil || len(out) > 0 {
			b.Fatalf("%s: %v %s", bin, err, out)
		}
		return took
	}
	// The floor of a hook written in Go: an empty Go program, run the same
	// way (the Go runtime starts threads and maps its heap before main).
	empty := emptyGoProgram(b)
	var hookT, trueT, emptyT []time.Duration
	for _, p := range paths {
		trueT = append(trueT, run("/bin/true", p))
		emptyT = append(emptyT, run(empty, p))
		hookT = append(hookT, run(d.HookBin(), p))
	}
	if spooled, _ := filepath.Glob(filepath.Join(d.SpoolDir, "*")); len(spooled) > 0 {
		b.Fatalf("%d hook runs spooled instead of handing off", len(spooled))
	}
	d.MustWait(5 * time.Minute)
	st := status(b, d)
	if st.Uploaded.Paths < n {
		b.Fatalf("daemon uploaded %d paths, want %d", st.Uploaded.Paths, n)
	}
	b.ReportMetric(ms(percentile(hookT, 0.5)), "hook-p50-ms")
	b.ReportMetric(ms(percentile(hookT, 0.99)), "hook-p99-ms")
	b.ReportMetric(ms(percentile(trueT, 0.5)), "true-p50-ms")
	b.ReportMetric(ms(percentile(emptyT, 0.5)), "empty-go-p50-ms")
	b.Logf("hook latency over %d runs (process start to exit, durable enqueue):", n)
	b.Logf("  %-16s p50 %6.2f ms  p90 %6.2f ms  p99 %6.2f ms  max %6.2f ms", "nixpush-hook",
		ms(percentile(hookT, 0.5)), ms(percentile(hookT, 0.9)), ms(percentile(hookT, 0.99)), ms(percentile(hookT, 1)))
	b.Logf("  %-16s p50 %6.2f ms  p90 %6.2f ms  p99 %6.2f ms  max %6.2f ms", "empty Go program",
		ms(percentile(emptyT, 0.5)), ms(percentile(emptyT, 0.9)), ms(percentile(emptyT, 0.99)), ms(percentile(emptyT, 1)))
	b.Logf("  %-16s p50 %6.2f ms  p90 %6.2f ms  p99 %6.2f ms  max %6.2f ms", "/bin/true",
		ms(percentile(trueT, 0.5)), ms(percentile(trueT, 0.9)), ms(percentile(trueT, 0.99)), ms(percentile(trueT, 1)))
}

// emptyGoProgram builds `func main() {}` with the toolchain the bench runs
// under and returns its path.
func emptyGoProgram(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module empty\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", "empty", ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build an empty Go program: %v\n%s", err, out)
	}
	return filepath.Join(dir, "empty")
}

// BenchmarkBuild200 builds 200 small derivations (a chain: one at a time)
// with /bin/true as Nix's post-build-hook, with an empty Go program (the
// floor of any hook written in Go), with nixpush-hook handing over to a
// daemon that uploads nothing (the floor of a durable hand-off), and with
// nixpush-hook handing over to a daemon run as the NixOS module runs it (Nice=10, IOSchedulingClass=
// idle, with MinIO, which stands in for a remote S3, at the same priority
// while the build runs) or at normal priority, uploading to MinIO
// meanwhile. Each round builds fresh derivations five times, in an order
// that rotates from round to round; before each build the daemons have
// drained and MinIO is idle. Medians of 5 rounds.
func BenchmarkBuild200(b *testing.B) {
	const n, rounds = 200, 5
	r := newRig(b)
	build := func(hookBin string, env []string) time.Duration { return r.buildChain(n, hookBin, env) }
	empty := emptyGoProgram(b)
	type hooked struct {
		name     string
		prio     int // index in daemonPriorities
		d        *testenv.Daemon
		took     []time.Duration
		cpuD     time.Duration
		cpuMinIO time.Duration
	}
	var daemons []*hooked
	for i, p := range daemonPriorities[:2] { // normal, and the module's
		bucket := "build200-" + p.name
		r.minio.MakeBucket(b, bucket, true)
		daemons = append(daemons, &hooked{name: "nixpush-hook, daemon " + p.name, prio: i,
			d: testenv.StartDaemonUnder(b, binDir, r.minio.CredentialsEnv(), p.prefix,
				"--store-uri", r.minio.StoreURI(bucket), "--secret-key-file", r.sec, "--log-level", "warn")})
	}
	// The floor of the hand-off itself: a daemon that takes the paths
	// (a durable commit each) and uploads nothing, its store check failing
	// on a read-only directory.
	ro := b.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro).CombinedOutput(); err != nil {
		b.Fatalf("mount a read-only tmpfs on %s (the bench runs as root): %v\n%s", ro, err, out)
	}
	b.Cleanup(func() { exec.Command("umount", ro).Run() })
	idle := testenv.StartDaemon(b, binDir, nil, "--store-uri", "file://"+ro, "--secret-key-file", r.sec, "--log-level", "error")
	var withTrue, withEmpty, withIdle []time.Duration
	runs := []func(){
		func() { withTrue = append(withTrue, build("/bin/true", nil)) },
		func() { withEmpty = append(withEmpty, build(empty, nil)) },
		func() { withIdle = append(withIdle, build(idle.HookBin(), idle.HookEnv())) },
	}
	for _, h := range daemons {
		runs = append(runs, func() {
			p := daemonPriorities[h.prio]
			setPriority(b, r.minio.Pid(), p.nice, p.policy, p.class)
			d0, err := h.d.CPUTime()
			if err != nil {
				b.Fatal(err)
			}
			m0, _ := r.minio.CPUTime()
			h.took = append(h.took, build(h.d.HookBin(), h.d.HookEnv()))
			d1, _ := h.d.CPUTime()
			m1, _ := r.minio.CPUTime()
			setPriority(b, r.minio.Pid(), "0", "--other", "2")
			h.cpuD += d1 - d0
			h.cpuMinIO += m1 - m0
		})
	}
	for i := range rounds {
		for j := range runs {
			for _, h := range daemons {
				h.d.MustWait(5 * time.Minute)
			}
			r.settle()
			runs[(i+j)%len(runs)]()
		}
	}
	bt, be := percentile(withTrue, 0.5), percentile(withEmpty, 0.5)
	b.Logf("nix-build of %d derivations, medians of %d rounds:", n+1, rounds)
	b.Logf("  %-40s %.2f s %v", "/bin/true as the hook", bt.Seconds(), roundTo(withTrue))
	b.Logf("  %-40s %.2f s %v: ratio %.3f (the floor of a hook in Go)", "empty Go program as the hook", be.Seconds(), roundTo(withEmpty), be.Seconds()/bt.Seconds())
	b.ReportMetric(be.Seconds()/bt.Seconds(), "ratio-empty-go")
	bi := percentile(withIdle, 0.5)
	b.Logf("  %-40s %.2f s %v: ratio %.3f (the floor of a durable hand-off)", "nixpush-hook, daemon not uploading", bi.Seconds(), roundTo(withIdle), bi.Seconds()/bt.Seconds())
	b.ReportMetric(bi.Seconds()/bt.Seconds(), "ratio-handoff-only")
	if st := status(b, idle); st.Queued < rounds*(n+1) {
		b.Fatalf("the daemon not uploading holds %d paths; want %d handed over", st.Queued, rounds*(n+1))
	}
	for _, h := range daemons {
		h.d.MustWait(5 * time.Minute)
		st := status(b, h.d)
		if st.Uploaded.Paths < rounds*(n+1) {
			b.Fatalf("%s: daemon uploaded %d paths, want %d", h.name, st.Uploaded.Paths, rounds*(n+1))
		}
		bh := percentile(h.took, 0.5)
		metric := "ratio"
		if h.prio == 0 {
			metric = "ratio-normal-priority"
		}
		b.ReportMetric(bh.Seconds()/bt.Seconds(), metric)
		b.Logf("  %-40s %.2f s %v: ratio %.3f; CPU per build round: daemon %.2f s, MinIO %.2f s; store requests per build %.1f",
			h.name, bh.Seconds(), roundTo(h.took), bh.Seconds()/bt.Seconds(),
			h.cpuD.Seconds()/rounds, h.cpuMinIO.Seconds()/rounds, float64(st.Uploaded.Requests)/float64(rounds*(n+1)))
	}
}

// roundTo rounds durations to the millisecond, for logs.
func roundTo(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, x := range d {
		out[i] = x.Round(time.Millisecond)
	}
	return out
}

// BenchmarkHandoff is the daemon's side of the hook alone: one durable
// enqueue over the socket, without starting a process.
func BenchmarkHandoff(b *testing.B) {
	const n = 500
	r := newRig(b)
	d := r.daemon("handoff")
	paths := r.nix.Build(b, manyOutputs(seed(), n))
	var took []time.Duration
	for _, p := range paths {
		start := time.Now()
		if err := hook.Handoff(d.Socket, api.EnqueueRequest{Paths: []string{p}}, 5*time.Second); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	d.MustWait(5 * time.Minute)
	b.ReportMetric(ms(percentile(took, 0.5)), "p50-ms")
	b.ReportMetric(ms(percentile(took, 0.99)), "p99-ms")
}

// pushWorkload is a closure to push: count derivations of sizeKiB each,
// half random data, in a DAG where each path refers to the one before (so
// count deep) and to up to two earlier ones, compressed so by both sides;
// or, when expr is set, the paths it builds.
type pushWorkload struct {
	name        string
	count       int
	sizeKiB     int
	compression string
	expr        func(seed string) string
}

var pushWorkloads = []pushWorkload{
	{name: "500-paths", count: 500, sizeKiB: 258, compression: "zstd"},  // 126 MiB of NAR in all, a 500-deep chain
	{name: "10-paths", count: 10, sizeKiB: 51200, compression: "zstd"},  // 500 MiB of NAR in all
	{name: "100-paths-xz", count: 100, sizeKiB: 258, compression: "xz"}, // 25 MiB of NAR, Nix's default compression
	{name: "2000-tiny-paths", compression: "zstd", expr: func(s string) string { return manyOutputs(s, 2000) }},
	{name: "1-path-1GiB", compression: "zstd", expr: func(s string) string { // 1 GiB of NAR, half random
		return fmt.Sprintf(`derivation { name = "bench-huge"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "PATH=/bin:/usr/bin; mkdir $out; head -c 512M /dev/urandom > $out/random; yes 'nixpush %s huge' | head -c 512M > $out/text" ]; }`, s)
	}},
}

// BenchmarkPush times, on the same closure and the same MinIO, the classic
// `nix copy --to http://…?compression=zstd` (or xz) against `nixpush push` until
// `nixpush wait` returns; then pushing the closure again, with the daemon
// restarted (it has to remember what is in the cache); and the daemon's
// peak RSS. Real Nix then fetches nixpush's bucket, checking every
// signature and NAR hash. The `nix copy` is the Nix on PATH: run inside a
// root made by scripts/nix-root.sh (scripts/bench.sh does), the same rows
// compare against that Nix. With NIXPUSH_BENCH_BASELINE_BIN (a directory
// holding another build of nixpush and nixpush-hook, e.g. main's), that
// build pushes too, in the same rounds: before and after side by side.
// NIXPUSH_BENCH_DAEMON_ENV adds variables (space separated) to the
// environment of this build's daemon only, e.g. NIXPUSH_ZSTD_FRAMES=on;
// NIXPUSH_BENCH_PROFILE_DIR has it write a CPU profile per round there.
// NIXPUSH_BENCH_FLOOR=1 adds the floor's sides (floor_test.go).
func BenchmarkPush(b *testing.B) {
	for _, w := range pushWorkloads {
		b.Run(w.name, func(b *testing.B) { benchPush(b, w, w.compression) })
	}
}

// pushRounds is how many times each side pushes (to fresh buckets, with a
// fresh daemon); the medians are reported.
const pushRounds = 5

// pushSide is one way of pushing the closure, timed round by round.
type pushSide struct {
	name      string
	bin       string // nixpush's binaries; "" for nix copy and the floor
	floor     string // the floor's sides: a pushfloor mode (floor_test.go)
	took      []time.Duration
	cpu       []time.Duration // per round: the daemon's, nix copy's or pushfloor's CPU time
	minioCPU  []time.Duration // per round: MinIO's CPU time meanwhile
	peak      int64
	fileBytes int64
	d         *testenv.Daemon
	bucket    string // the daemon's
}

// pushRun is one row of BenchmarkPush: the closure and how it is pushed.
type pushRun struct {
	r           *rig
	top         []string
	closure     []string // every path of the closure, for the floor
	paths       int
	compression string
	extra       []string // NIXPUSH_BENCH_ARGS
	last        string   // the last bucket nixpush (this build) pushed to
}

func benchPush(b *testing.B, w pushWorkload, compression string) {
	r := newRig(b)
	expr := ""
	if w.expr != nil {
		expr = w.expr(closureSeed(w.name))
	} else {
		expr = testenv.DAG(closureSeed(w.name), w.count, w.sizeKiB, true)
	}
	// Built as root, without build users: other Nix stores on this machine
	// (the host's, other roots') hand out the same nixbld users, and each
	// Nix kills whatever runs under a build user before it uses it, which
	// killed builds here when other work built beside the benchmark.
	top := r.nix.Build(b, expr, "--option", "build-users-group", "")
	if w.expr != nil && os.Getenv("NIXPUSH_BENCH_SEED") == "" {
		// Fresh paths each run: do not leave them behind.
		defer exec.Command("nix-store", append([]string{"--delete"}, top...)...).Run()
	}
	paths, narBytes := closureSize(b, r.nix, top...)
	pr := &pushRun{r: r, top: top, paths: paths, compression: compression, extra: strings.Fields(os.Getenv("NIXPUSH_BENCH_ARGS"))}

	// Nix's first command after the build pays for warming up (its
	// database, the narinfo disk cache): ~0.6 s here, which would go to
	// whichever side is timed first. One path copied untimed takes it.
	reqs, err := r.nix.Run(b, "nix-store", append([]string{"--query", "--requisites"}, top...)...)
	if err != nil {
		b.Fatal(err)
	}
	pr.closure = strings.Fields(reqs)
	r.nixCopy(r.classicBucket("warm-up"), compression, pr.closure[0])

	sides := []*pushSide{{name: "nix copy"}, {name: "nixpush", bin: binDir}}
	if base := os.Getenv("NIXPUSH_BENCH_BASELINE_BIN"); base != "" {
		sides = append(sides, &pushSide{name: "nixpush baseline", bin: base})
	}
	sides = append(sides, floorSides(b, compression)...)
	for i := range pushRounds {
		// Each side starts with MinIO idle, and the order rotates from
		// round to round, so no side pays for what another left behind.
		load := loadAvg()
		for j := range sides {
			pr.push(sides[(i+j)%len(sides)], i)
		}
		logOut(b, "round %d (load before: %s): %s", i, load, roundSummary(sides, i))
	}
	r.checkFetched(r.minio.HTTPURL(pr.last), top...)
	pr.pushCached(sides)

	nc, np := percentile(sides[0].took, 0.5), percentile(sides[1].took, 0.5)
	b.ReportMetric(nc.Seconds(), "nix-copy-s")
	b.ReportMetric(np.Seconds(), "nixpush-s")
	b.ReportMetric(np.Seconds()/nc.Seconds(), "ratio")
	b.ReportMetric(float64(sides[1].peak)/mib, "peak-rss-MiB")
	b.Logf("%s: %d paths, %.0f MiB of NAR (%.0f MiB compressed), %s, against %s, median of %d rounds (load %s):",
		w.name, paths, float64(narBytes)/mib, float64(sides[1].fileBytes)/mib, compression, testenv.NixVersion(), pushRounds, loadAvg())
	b.Logf("  %-28s %.2f s %v; CPU: nix copy %.2f s, MinIO %.2f s", "nix copy", nc.Seconds(), roundTo(sides[0].took),
		percentile(sides[0].cpu, 0.5).Seconds(), percentile(sides[0].minioCPU, 0.5).Seconds())
	for _, s := range sides[1:] {
		if s.floor != "" {
			continue
		}
		sp := percentile(s.took, 0.5)
		if s.bin != binDir {
			b.ReportMetric(sp.Seconds()/nc.Seconds(), "ratio-baseline")
		}
		b.Logf("  %-28s %.2f s %v; ratio %.2f; CPU per push (median): daemon %.2f s, MinIO %.2f s; daemon peak RSS %.1f MiB; %.1f MiB compressed",
			s.name+" push+wait", sp.Seconds(), roundTo(s.took), sp.Seconds()/nc.Seconds(),
			percentile(s.cpu, 0.5).Seconds(), percentile(s.minioCPU, 0.5).Seconds(), float64(s.peak)/mib, float64(s.fileBytes)/mib)
	}
	// The share of the closure's NAR in its largest path, for the floor.
	largest, err := r.nix.Run(b, "nix", "--extra-experimental-features", "nix-command", "path-info", "--size", "--recursive", top[0])
	if err != nil {
		b.Fatal(err)
	}
	logFloor(b, sides, nc, largestShare(largest, narBytes))
}

// push pushes the closure once by side s, in round i, to a fresh bucket.
func (pr *pushRun) push(s *pushSide, i int) {
	r, b := pr.r, pr.r.b
	bucket := fmt.Sprintf("%s-%d", strings.ReplaceAll(s.name, " ", "-"), i)
	if s.floor != "" {
		pr.floorPush(s, bucket)
		return
	}
	if s.bin == "" {
		url := r.classicBucket(bucket)
		r.settle()
		m0, _ := r.minio.CPUTime()
		took, cpu := r.nixCopy(url, pr.compression, pr.top...)
		m1, _ := r.minio.CPUTime()
		s.took, s.cpu, s.minioCPU = append(s.took, took), append(s.cpu, cpu), append(s.minioCPU, m1-m0)
		r.emptyBucket(bucket)
		return
	}
	if s.d != nil {
		s.d.Stop()
		r.emptyBucket(s.bucket)
	}
	r.minio.MakeBucket(b, bucket, true)
	env := r.minio.CredentialsEnv()
	if s.bin == binDir {
		env = append(env, strings.Fields(os.Getenv("NIXPUSH_BENCH_DAEMON_ENV"))...)
		if dir := os.Getenv("NIXPUSH_BENCH_PROFILE_DIR"); dir != "" {
			// A CPU profile of each round's daemon (go tool pprof).
			env = append(env, "NIXPUSH_CPUPROFILE="+filepath.Join(dir, fmt.Sprintf("%s-%d.prof", filepath.Base(b.Name()), i)))
		}
	}
	s.d = testenv.StartDaemon(b, s.bin, env, append([]string{"--store-uri", r.minio.StoreURI(bucket),
		"--secret-key-file", r.sec, "--log-level", "warn", "--compression", pr.compression}, pr.extra...)...)
	s.bucket = bucket
	r.settle()
	m0, _ := r.minio.CPUTime()
	s.took = append(s.took, pushAndWait(b, s.d, pr.top...))
	m1, _ := r.minio.CPUTime()
	dcpu, _ := s.d.CPUTime()
	s.cpu, s.minioCPU = append(s.cpu, dcpu), append(s.minioCPU, m1-m0)
	rss, err := s.d.PeakRSS()
	if err != nil {
		b.Fatal(err)
	}
	s.peak = max(s.peak, rss)
	if rss > maxPeakRSS && s.bin == binDir {
		b.Errorf("round %d: daemon peak RSS %.1f MiB, over the %d MiB target", i, float64(rss)/mib, maxPeakRSS/mib)
	}
	st := status(b, s.d)
	if st.Uploaded.Paths != int64(pr.paths) {
		b.Fatalf("%s: daemon uploaded %d paths; the closure has %d", s.name, st.Uploaded.Paths, pr.paths)
	}
	s.fileBytes = st.Uploaded.FileBytes
	if s.bin == binDir {
		pr.last = bucket
	}
}

// pushCached pushes the closure again once it is in the cache: with the
// same daemon restarted (its queue remembers), and with a fresh daemon (as
// another machine would: it asks the cache about the root only). Then it
// stops the daemons and empties their buckets.
func (pr *pushRun) pushCached(sides []*pushSide) {
	r, b := pr.r, pr.r.b
	d := sides[1].d
	d.Stop()
	d.Start()
	r.settle()
	restarted := pushAndWait(b, d, pr.top...)
	restartedReq := status(b, d).Uploaded.Requests
	d.Stop()
	fresh := testenv.StartDaemon(b, binDir, r.minio.CredentialsEnv(), "--store-uri", r.minio.StoreURI(pr.last),
		"--secret-key-file", r.sec, "--log-level", "warn", "--compression", pr.compression)
	other := pushAndWait(b, fresh, pr.top...)
	otherSt := status(b, fresh)
	if otherSt.Uploaded.Paths != 0 {
		b.Fatalf("a fresh daemon uploaded %d paths of a cached closure", otherSt.Uploaded.Paths)
	}
	fresh.Stop()
	for _, s := range sides[1:] {
		if s.d != nil {
			s.d.Stop()
			r.emptyBucket(s.bucket)
		}
	}
	b.ReportMetric(other.Seconds(), "cached-s")
	b.ReportMetric(float64(otherSt.Uploaded.Requests), "cached-requests")
	b.Logf("already cached: %.3f s after a daemon restart (%d requests), %.3f s from a fresh daemon (%d requests)",
		restarted.Seconds(), restartedReq, other.Seconds(), otherSt.Uploaded.Requests)
}

// roundSummary is one line of the log per round: each side's wall time,
// its own CPU time and MinIO's.
func roundSummary(sides []*pushSide, i int) string {
	var parts []string
	for _, s := range sides {
		parts = append(parts, fmt.Sprintf("%s %.2f s (CPU %.2f s, MinIO %.2f s)", s.name,
			s.took[i].Seconds(), s.cpu[i].Seconds(), s.minioCPU[i].Seconds()))
	}
	return strings.Join(parts, "; ")
}

// loadAvg is the machine's load average (1, 5, 15 minutes), for the log:
// figures taken beside other work are to be read as such.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// emptyBucket removes every object of a bucket a side has pushed to, so
// the rounds of large paths do not fill MinIO's tmpfs.
func (r *rig) emptyBucket(bucket string) {
	r.b.Helper()
	c := r.minio.Client(r.b)
	ctx := context.Background()
	objs := c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true})
	for e := range c.RemoveObjects(ctx, bucket, objs, minio.RemoveObjectsOptions{}) {
		r.b.Fatalf("empty bucket %s: %s: %v", bucket, e.ObjectName, e.Err)
	}
}

// maxPeakRSS is the daemon's peak RSS target on every workload here;
// maxRSSGrowth is how much RSS may grow in the second half of a 5 GiB push
// over the first: one 5 MiB part buffer (the pool maps its last one the
// first time a part's send lags the packing of the next, which can come
// late) and 1 MiB of heap jitter. Memory that grew with the bytes pushed
// would pass it.
const (
	maxPeakRSS   = 48 * mib
	maxRSSGrowth = 6 * mib
)

func mibs(samples []int64) []int64 {
	out := make([]int64, len(samples))
	for i, v := range samples {
		out[i] = v / mib
	}
	return out
}

// BenchmarkBigPath pushes one path of 5 GiB (half random) and samples the
// daemon's RSS every 250 ms: it must stay flat, not grow with the path.
func BenchmarkBigPath(b *testing.B) {
	r := newRig(b)
	expr := fmt.Sprintf(`derivation { name = "big"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "PATH=/bin:/usr/bin; mkdir $out; head -c 2560M /dev/urandom > $out/random; yes 'nixpush %s big' | head -c 2560M > $out/text" ]; }`, seed())
	top := r.nix.Build(b, expr)
	defer exec.Command("nix-store", "--delete", top[0]).Run()
	_, narBytes := closureSize(b, r.nix, top...)
	d := r.daemon("big")
	var samples []int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if rss, err := d.RSS(); err == nil {
					samples = append(samples, rss)
				}
			}
		}
	}()
	took := pushAndWait(b, d, top...)
	close(stop)
	<-sampled
	peak, _ := d.PeakRSS()
	if len(samples) < 8 {
		b.Fatalf("only %d RSS samples", len(samples))
	}
	q := func(f float64) float64 { return float64(samples[int(f*float64(len(samples)-1))]) / mib }
	// Flat: what the second half of the push reaches is what the first
	// half did, give or take a part buffer; memory that grew with the path
	// would show here. And under the peak target.
	firstHalf, secondHalf := slices.Max(samples[:len(samples)/2]), slices.Max(samples[len(samples)/2:])
	if secondHalf > firstHalf+maxRSSGrowth {
		b.Fatalf("daemon RSS grew with the path: %.1f MiB at most in the first half of the push, %.1f MiB in the second (samples every 250 ms, MiB: %v)",
			float64(firstHalf)/mib, float64(secondHalf)/mib, mibs(samples))
	}
	if peak > maxPeakRSS {
		b.Errorf("daemon peak RSS %.1f MiB, over the %d MiB target", float64(peak)/mib, maxPeakRSS/mib)
	}
	b.ReportMetric(float64(peak)/mib, "peak-rss-MiB")
	b.ReportMetric(float64(narBytes)/mib/took.Seconds(), "MiB/s")
	b.Logf("one path of %.1f GiB: pushed in %.1f s (%.0f MiB/s of NAR); daemon RSS at 10/25/50/75/90 %% of the push: %.1f %.1f %.1f %.1f %.1f MiB, peak %.1f MiB",
		float64(narBytes)/(1<<30), took.Seconds(), float64(narBytes)/mib/took.Seconds(),
		q(0.1), q(0.25), q(0.5), q(0.75), q(0.9), float64(peak)/mib)
}

// daemonPriorities are the ways to run the daemon beside builds, as
// systemd's Nice=, CPUSchedulingPolicy= and IOSchedulingClass= would (each
// command execs the next, so the daemon keeps its process id).
var daemonPriorities = []struct {
	name   string
	prefix []string
	nice   string // the same, for the running MinIO: nice, chrt policy, ionice class
	policy string
	class  string
}{
	{"normal", nil, "0", "--other", "2"},
	{"nice10-ioidle", []string{"nice", "-n", "10", "ionice", "-c", "3"}, "10", "--other", "3"},
	{"nice10-batch-ioidle", []string{"nice", "-n", "10", "chrt", "--batch", "0", "ionice", "-c", "3"}, "10", "--batch", "3"},
	{"nice19-idle-ioidle", []string{"nice", "-n", "19", "chrt", "--idle", "0", "ionice", "-c", "3"}, "19", "--idle", "3"},
}

// setPriority gives every thread of process pid the nice value, CPU
// scheduling policy and I/O class given.
func setPriority(b *testing.B, pid int, nice, policy, class string) {
	b.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil || len(tasks) == 0 {
		b.Fatalf("threads of %d: %v", pid, err)
	}
	for _, t := range tasks {
		tid := filepath.Base(t)
		for _, args := range [][]string{{"renice", "-n", nice, "-p", tid}, {"chrt", policy, "-p", "0", tid}, {"ionice", "-c", class, "-p", tid}} {
			// A thread may have exited since the listing.
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such process") {
				b.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	}
}

// BenchmarkBuildBesideUploads builds 100 small derivations with
// nixpush-hook while the daemon uploads a 1 GiB path, against the same
// build with /bin/true as the hook and nothing uploading, for each way of
// running the daemon (and MinIO, which stands in for a remote S3 and so
// runs at the daemon's priority): how much builds slow down while uploads are under
// way, and which priority keeps them fastest. Fresh derivations, a fresh
// daemon and bucket per round; medians of 3 rounds; the two builds take
// turns going first.
func BenchmarkBuildBesideUploads(b *testing.B) {
	const n, rounds = 100, 3
	r := newRig(b)
	big := r.nix.Build(b, fmt.Sprintf(`derivation { name = "upload-load"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "PATH=/bin:/usr/bin; mkdir $out; head -c 512M /dev/urandom > $out/random; yes 'nixpush %s load' | head -c 512M > $out/text" ]; }`, seed()))
	defer exec.Command("nix-store", "--delete", big[0]).Run()
	build := func(hookBin string, env []string) time.Duration { return r.buildChain(n, hookBin, env) }
	type result struct {
		idle, beside   []time.Duration
		stillUploading int
		spooled        int
	}
	res := map[string]*result{}
	for i := range rounds {
		for _, p := range daemonPriorities {
			rs := res[p.name]
			if rs == nil {
				rs = &result{}
				res[p.name] = rs
			}
			idle := func() { rs.idle = append(rs.idle, build("/bin/true", nil)) }
			if i%2 == 0 {
				r.settle()
				idle()
			}
			// MinIO stands in for a remote S3 here: it receives the
			// upload on these cores, so it runs as the daemon does.
			setPriority(b, r.minio.Pid(), p.nice, p.policy, p.class)
			bucket := fmt.Sprintf("beside-%s-%d", p.name, i)
			r.minio.MakeBucket(b, bucket, true)
			d := testenv.StartDaemonUnder(b, binDir, r.minio.CredentialsEnv(), p.prefix,
				"--store-uri", r.minio.StoreURI(bucket), "--secret-key-file", r.sec, "--log-level", "warn")
			r.settle()
			if out, err := d.CLI("push", big[0]); err != nil {
				b.Fatalf("nixpush push: %v\n%s", err, out)
			}
			rs.beside = append(rs.beside, build(d.HookBin(), d.HookEnv()))
			st := status(b, d)
			if st.Queued+st.Active > 0 {
				rs.stillUploading++ // the build ended with the 1 GiB upload under way
			}
			if spooled, _ := filepath.Glob(filepath.Join(d.SpoolDir, "*")); len(spooled) > 0 {
				rs.spooled += len(spooled) // hand-offs that timed out
			}
			d.MustWait(10 * time.Minute)
			d.Stop()
			setPriority(b, r.minio.Pid(), "0", "--other", "2")
			if i%2 == 1 {
				r.settle()
				idle()
			}
		}
	}
	b.Logf("nix-build of %d derivations, median of %d rounds: /bin/true with nothing uploading, nixpush-hook while the daemon uploads a 1 GiB path:", n+1, rounds)
	for _, p := range daemonPriorities {
		rs := res[p.name]
		bi, bb := percentile(rs.idle, 0.5), percentile(rs.beside, 0.5)
		b.ReportMetric(bb.Seconds()/bi.Seconds(), "ratio-"+p.name)
		b.Logf("  daemon %-20s /bin/true %.2f s %v, nixpush-hook beside uploads %.2f s %v: ratio %.3f (upload still under way at the end of %d of %d builds; %d hand-offs spooled)",
			p.name, bi.Seconds(), rs.idle, bb.Seconds(), rs.beside, bb.Seconds()/bi.Seconds(), rs.stillUploading, rounds, rs.spooled)
	}
}
