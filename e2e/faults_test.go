package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/nix-community/go-nix/pkg/narinfo"

	npdaemon "github.com/nixpush/nixpush/daemon"
	"github.com/nixpush/nixpush/hook/client"
	"github.com/nixpush/nixpush/internal/testenv"
)

// checkBucket lists the bucket and returns every way it is not a valid
// cache: a .narinfo whose NAR is missing, or whose reference has no
// .narinfo. It also returns how many .narinfo files it saw.
func checkBucket(t *testing.T, m *testenv.MinIOServer, bucket string) (problems []string, narinfos int) {
	t.Helper()
	ctx := context.Background()
	c := m.Client(t)
	objects := map[string]bool{}
	for obj := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatalf("list %s: %v", bucket, obj.Err)
		}
		objects[obj.Key] = true
	}
	for key := range objects {
		if !strings.HasSuffix(key, ".narinfo") {
			continue
		}
		narinfos++
		o, err := c.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ni, err := narinfo.Parse(o)
		o.Close()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: unparsable: %v", key, err))
			continue
		}
		if !objects[ni.URL] {
			problems = append(problems, fmt.Sprintf("%s: NAR %s missing", key, ni.URL))
		}
		for _, r := range ni.References {
			if !objects[r[:32]+".narinfo"] {
				problems = append(problems, fmt.Sprintf("%s: reference %s has no .narinfo", key, r))
			}
		}
	}
	return problems, narinfos
}

// TestSIGKILLNeverBreaksTheCache kills the daemon at random moments while a
// closure of 100+ paths uploads to MinIO, and checks the bucket after each
// kill: never a .narinfo without its NAR or references. After the last
// restart the queue drains and Nix fetches the whole closure.
func TestSIGKILLNeverBreaksTheCache(t *testing.T) {
	m := testenv.MinIO(t)
	m.MakeBucket(t, "killed", true)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-kill-1")
	out := nx.Build(t, testenv.DAG(seed(), 120, 512, true))
	closure := closureOf(t, nx, out...)
	if len(closure) < 100 {
		t.Fatalf("closure has %d paths; want 100+", len(closure))
	}
	d := startDaemon(t, m.CredentialsEnv(), "--store-uri", m.StoreURI("killed"), "--secret-key-file", sec, "--jobs", "4")
	if o, err := d.CLI("push", out[0]); err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	kills, seen := 0, 0
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for kills < 12 {
		time.Sleep(time.Duration(20+rng.IntN(200)) * time.Millisecond)
		d.Kill()
		kills++
		problems, n := checkBucket(t, m, "killed")
		for _, p := range problems {
			t.Errorf("after kill %d: %s", kills, p)
		}
		seen = n
		t.Logf("kill %d: bucket valid with %d .narinfo files", kills, n)
		d.Start()
		if n >= len(closure) {
			break
		}
	}
	d.MustWait(5 * time.Minute)
	problems, n := checkBucket(t, m, "killed")
	if len(problems) > 0 || n != len(closure) {
		t.Fatalf("final bucket: %d .narinfo (want %d), problems %v", n, len(closure), problems)
	}
	if kills < 10 {
		t.Fatalf("only %d kills happened before the upload ended (%d narinfos seen); slow the workload down", kills, seen)
	}
	checkFetched(t, nx, m.HTTPURL("killed"), pub, out...)
	t.Logf("survived %d SIGKILLs; 0 broken narinfos; %d/%d paths in the cache", kills, n, len(closure))
}

// TestMinIOOutage stops MinIO for 20 s in the middle of an upload: the
// daemon keeps retrying, everything arrives, nothing fails permanently.
func TestMinIOOutage(t *testing.T) {
	m := testenv.MinIO(t)
	m.MakeBucket(t, "outage", true)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-outage-1")
	out := nx.Build(t, testenv.DAG(seed(), 60, 512, true))
	d := startDaemon(t, m.CredentialsEnv(), "--store-uri", m.StoreURI("outage"), "--secret-key-file", sec, "--jobs", "2")
	if o, err := d.CLI("push", out[0]); err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	// Stop MinIO once some paths are up.
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := client.New(d.Socket).Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Uploaded.Paths >= 3 {
			if st.Drained {
				t.Fatal("upload finished before MinIO could be stopped; make the workload bigger")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no progress: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.Stop(t)
	t.Log("MinIO stopped")
	time.Sleep(20 * time.Second)
	st := status(t, d)
	if st["failed"] != 0 {
		t.Fatalf("items failed permanently during the outage: %v", st)
	}
	m.Start(t)
	t.Log("MinIO started again")
	d.MustWait(5 * time.Minute)
	if st := status(t, d); st["failed"] != 0 {
		t.Fatalf("status: %v", st)
	}
	checkFetched(t, nx, m.HTTPURL("outage"), pub, out...)
}

// TestDaemonDownDuringBuilds builds 20 derivations with the hook while the
// daemon is stopped: every build succeeds, the hook spools, and every path
// lands once the daemon starts.
func TestDaemonDownDuringBuilds(t *testing.T) {
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-down-1")
	d := startDaemon(t, nil, "--secret-key-file", sec)
	d.Stop()
	start := time.Now()
	out := nx.Build(t, testenv.Chain(seed(), 20), "--option", "post-build-hook", d.Hook)
	t.Logf("20 builds with the daemon down took %s", time.Since(start).Round(time.Millisecond))
	spooled, _ := npdaemon.SpoolFiles(d.SpoolDir)
	if len(spooled) != 20 {
		t.Fatalf("%d spool files; want 20 (one per build)", len(spooled))
	}
	d.Start()
	d.MustWait(3 * time.Minute)
	if left, _ := npdaemon.SpoolFiles(d.SpoolDir); len(left) != 0 {
		t.Fatalf("spool not emptied: %v", left)
	}
	checkFetched(t, nx, "file://"+filepath.Join(d.StateDir, "cache"), pub, out...)
}

// TestSixteenHooksAtOnce runs 16 hooks at the same moment, as Nix does with
// max-jobs = 16: all are acknowledged by the daemon (none spooled), none
// is lost.
func TestSixteenHooksAtOnce(t *testing.T) {
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-16-1")
	d := startDaemon(t, nil, "--secret-key-file", sec)
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
			cmd := exec.Command(d.Hook)
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
	if spooled, _ := npdaemon.SpoolFiles(d.SpoolDir); len(spooled) != 0 {
		t.Fatalf("%d hooks spooled instead of being acknowledged", len(spooled))
	}
	d.MustWait(3 * time.Minute)
	st := status(t, d)
	if st["done"] != 16 {
		t.Fatalf("status %v; want 16 done", st)
	}
	checkFetched(t, nx, "file://"+filepath.Join(d.StateDir, "cache"), pub, outs...)
}

// TestSIGTERMMidUpload stops the daemon with SIGTERM during an upload: it
// exits within a bound, removes its socket, and loses nothing: after a
// restart the queue drains and Nix fetches the whole closure.
func TestSIGTERMMidUpload(t *testing.T) {
	m := testenv.MinIO(t)
	m.MakeBucket(t, "termed", true)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-term-1")
	out := nx.Build(t, testenv.DAG(seed(), 40, 1024, true))
	d := startDaemon(t, m.CredentialsEnv(), "--store-uri", m.StoreURI("termed"), "--secret-key-file", sec, "--jobs", "2")
	if o, err := d.CLI("push", out[0]); err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	for {
		st, err := client.New(d.Socket).Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Uploaded.Paths >= 2 {
			if st.Drained {
				t.Fatal("upload finished before SIGTERM; make the workload bigger")
			}
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	d.Stop()
	took := time.Since(start)
	if took > 5*time.Second {
		t.Fatalf("daemon took %s to stop after SIGTERM", took)
	}
	if _, err := os.Stat(d.Socket); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after SIGTERM: %v", err)
	}
	if !strings.Contains(d.Log.String(), "daemon stopped") {
		t.Fatalf("no clean stop in the log:\n%s", d.Log)
	}
	t.Logf("stopped %s after SIGTERM", took.Round(time.Millisecond))
	d.Start()
	d.MustWait(3 * time.Minute)
	checkFetched(t, nx, m.HTTPURL("termed"), pub, out...)
	if problems, _ := checkBucket(t, m, "termed"); len(problems) > 0 {
		t.Fatal(problems)
	}
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
	sock, state, spool := filepath.Join(dir, "nixpush.sock"), filepath.Join(dir, "state"), filepath.Join(dir, "spool")
	var log bytes.Buffer
	cmd := exec.Command(activate, "-l", sock, nixpushBin(), "daemon", "--socket", sock, "--state-dir", state,
		"--spool-dir", spool, "--secret-key-file", sec, "--log-format", "json")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 200 {
			t.Fatalf("systemd-socket-activate made no socket: %s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	out := nx.Build(t, testenv.Chain(seed(), 3))
	h := exec.Command(filepath.Join(binDir, "nixpush-hook"), "--socket", sock, "--spool-dir", spool)
	h.Env = append(os.Environ(), "OUT_PATHS="+out[0])
	if o, err := h.CombinedOutput(); err != nil || len(o) > 0 {
		t.Fatalf("hook: %v %s", err, o)
	}
	if files, _ := npdaemon.SpoolFiles(spool); len(files) != 0 {
		t.Fatalf("hook spooled instead of waiting for the activated daemon: %v", files)
	}
	if !strings.Contains(log.String(), "using the socket systemd passed in") {
		t.Fatalf("daemon did not take the socket from systemd:\n%s", log.String())
	}
	w := exec.Command(nixpushBin(), "wait", "--timeout", "2m", "--socket", sock)
	if o, err := w.CombinedOutput(); err != nil {
		t.Fatalf("wait: %v %s\n%s", err, o, log.String())
	}
	checkFetched(t, nx, "file://"+filepath.Join(state, "cache"), pub, out...)
}

// TestTwoBuildersSamePaths: two daemons (two builders) push the same
// closure to one bucket at the same time; uploads are idempotent, so both
// drain and the bucket stays valid.
func TestTwoBuildersSamePaths(t *testing.T) {
	m := testenv.MinIO(t)
	m.MakeBucket(t, "shared", true)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-two-1")
	out := nx.Build(t, testenv.DAG(seed(), 40, 128, true))
	a := startDaemon(t, m.CredentialsEnv(), "--store-uri", m.StoreURI("shared"), "--secret-key-file", sec)
	b := startDaemon(t, m.CredentialsEnv(), "--store-uri", m.StoreURI("shared"), "--secret-key-file", sec)
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
	if problems, n := checkBucket(t, m, "shared"); len(problems) > 0 || n != 41 {
		t.Fatalf("bucket: %d narinfos, problems %v", n, problems)
	}
	checkFetched(t, nx, m.HTTPURL("shared"), pub, out...)
}
