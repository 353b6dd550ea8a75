package e2e

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpush/nixpush/store"

	"github.com/minio/minio-go/v7"

	"github.com/nixpush/nixpush/internal/testenv"
	"github.com/nixpush/nixpush/retention"
)

// TestTwoGCsStartedTogether starts two nixpush gc processes at once on a
// bucket with real pushed content, five times: each time exactly one
// sweeps and the other refuses (exit 3, "another gc is sweeping"), as
// MinIO honours the conditional write of the marker. The gcs reach MinIO
// through a proxy that slows each request to a few hundred milliseconds,
// so that both read the marker before either writes it, and a sweep lasts
// seconds, whatever the machine's speed and the processes' start-up: the
// conditional write alone decides. The bucket stays whole for verify.
func TestTwoGCsStartedTogether(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-twogc-1", onBucket("twogc"))
	m, nx, d := f.m, f.nx, f.d
	uri, env := f.uri, f.env
	tip := nx.Build(t, testenv.Chain(seed(), 10))[0]
	if o, err := d.CLI("push", "--wait", tip); err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	time.Sleep(1500 * time.Millisecond) // older than the grace period
	p := testenv.NewProxy(t, m.Endpoint)
	p.SetRate(2000) // bytes a second: a request's headers take ~0.3 s
	slow := m.StoreURIVia("twogc", p.Addr)

	for round := range 5 {
		type result struct {
			code   int
			stderr string
			took   time.Duration
		}
		var res [2]result
		var cmds [2]*exec.Cmd
		var errb [2]bytes.Buffer
		for k := range cmds {
			cmds[k] = testenv.Command(t, nixpushBin(), "gc", "--store-uri", slow, "--older-than", "1h", "--grace", "1s", "--sweep-window", "2m")
			cmds[k].Env = append(append(cmds[k].Environ(), env...), "CACHE_DIRECTORY="+t.TempDir())
			cmds[k].Stderr = &errb[k]
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for k, c := range cmds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				t0 := time.Now()
				err := c.Run()
				res[k] = result{code: c.ProcessState.ExitCode(), stderr: errb[k].String(), took: time.Since(t0)}
				var ee *exec.ExitError
				if err != nil && !errors.As(err, &ee) {
					t.Errorf("gc %d: %v", k, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		refused, swept := 0, 0
		for k, r := range res {
			switch {
			case r.code == 3 && strings.Contains(r.stderr, "another gc is sweeping"):
				refused++
				t.Logf("round %d: gc %d refused: %s", round, k, strings.TrimSpace(r.stderr))
			case r.code == 0:
				swept++
			default:
				t.Fatalf("round %d: gc %d exited %d:\n%s", round, k, r.code, r.stderr)
			}
		}
		if refused != 1 || swept != 1 {
			t.Fatalf("round %d: %d swept, %d refused; want exactly one of two gcs started together to sweep (exits %d, %d; took %s, %s)\n%s\n%s",
				round, swept, refused, res[0].code, res[1].code, res[0].took, res[1].took, res[0].stderr, res[1].stderr)
		}
	}
	if out, err := bucketCLI(t, env, t.TempDir(), "verify", "--store-uri", uri); err != nil {
		t.Fatalf("verify after the gcs: %v\n%s", err, out)
	}
}

// pinning is the MinIO bucket as gc sees it, with a hook at the listing
// of pending uploads: after gc's walk, before its first deletion.
type pinning struct {
	store.Bucket
	once    sync.Once
	between func()
}

func (p *pinning) ListUploads(ctx context.Context, fn func(store.PendingUpload) error) error {
	p.once.Do(p.between)
	return p.Bucket.ListUploads(ctx, fn)
}

// TestPinDuringSweepSurvives: a closure pushed, its root made two hours
// old, everything older than the grace period: gc would delete it all.
// gc runs in-process against the MinIO bucket and, between its walk and
// its first deletion, nixpush pin (the real command) pins the closure's
// tip. The walk did not see the pin; gc lists the pins again before
// deleting and keeps the closure; nixpush pin, which waits out the sweep
// it overlapped and checks the path again, succeeds; real Nix substitutes
// the closure from the bucket, and verify finds it whole.
func TestPinDuringSweepSurvives(t *testing.T) {
	f := newFixture(t, "nixpush-e2e-pinsweep-1", onBucket("pinsweep"))
	nx, d := f.nx, f.d
	uri, env, c := f.uri, f.env, f.client()
	tip := nx.Build(t, testenv.Chain(seed(), 4))[0]
	if o, err := d.CLI("push", "--wait", tip); err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	putRoot(t, c, "pinsweep", tip, time.Now().Add(-2*time.Hour))
	time.Sleep(1500 * time.Millisecond) // older than the grace period
	closure := closureOf(t, nx, tip)

	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	ctx := ctxT(t, 5*time.Minute)
	s, err := store.Open(ctx, uri, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var pinOut bytes.Buffer
	var pinErr error
	pinDone := make(chan struct{})
	b := &pinning{Bucket: s.(store.Bucket), between: func() {
		// The sweep's marker is up and its walk is done: pin now.
		cmd := testenv.Command(t, nixpushBin(), "pin", "--store-uri", uri, "late", tip)
		cmd.Env = append(cmd.Environ(), env...)
		cmd.Stdout, cmd.Stderr = &pinOut, &pinOut
		if err := cmd.Start(); err != nil {
			t.Error(err)
			close(pinDone)
			return
		}
		go func() { pinErr = cmd.Wait(); close(pinDone) }()
		// Let gc go on once the pin is in the bucket.
		if !poll(time.Minute, func() bool {
			_, err := c.StatObject(ctx, "pinsweep", "nixpush/pins/late", minio.StatObjectOptions{})
			return err == nil
		}) {
			t.Error("nixpush pin wrote no pin within a minute")
		}
	}}
	rep, err := retention.GC(ctx, b, retention.GCOptions{OlderThan: time.Hour, Grace: time.Second, Window: 2 * time.Minute, Host: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc: kept %+v, deleted %d paths", rep.Kept, len(rep.Deleted.Paths))
	if rep.Kept.Pinned != 0 || rep.Kept.Late == 0 {
		t.Fatalf("gc's walk saw the pin (kept %+v): the pin was not taken between walk and deletions", rep.Kept)
	}
	if len(rep.Deleted.Paths) != 0 {
		t.Fatalf("gc deleted %v, though pinned during the sweep", rep.Deleted.Paths)
	}
	// The marker was marked finished with If-Match on its own ETag.
	if m := readObject(t, c, "pinsweep", "nixpush/gc/sweep"); len(rep.Warnings) > 0 || !strings.Contains(m, `"finished_at"`) || !strings.Contains(m, `"kind":"gc"`) {
		t.Fatalf("marker after gc: %s (warnings %v); want it finished, kind gc", m, rep.Warnings)
	}
	select {
	case <-pinDone:
	case <-time.After(2 * time.Minute):
		t.Fatal("nixpush pin still running two minutes after the sweep")
	}
	if pinErr != nil {
		t.Fatalf("nixpush pin during the sweep: %v\n%s", pinErr, pinOut.String())
	}
	objs := objects(t, c, "pinsweep")
	for _, p := range closure {
		if _, ok := objs[hashOf(p)+".narinfo"]; !ok {
			t.Errorf("%s.narinfo deleted, though in the closure of a pin", hashOf(p))
		}
	}
	checkClosed(t, c, "pinsweep", true)
	if out, err := bucketCLI(t, env, t.TempDir(), "verify", "--store-uri", uri); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	f.checkFetched(tip)
}
