package e2e

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/internal/testenv"
)

// storeFails waits until the store check names cause, in status --json
// and in the STATUS= line systemd shows.
func storeFails(t *testing.T, d *daemon, ns *notifySocket, cause, fix string) {
	t.Helper()
	st := waitStatus(t, d, "store check failing with "+cause, func(st api.Status) bool {
		return !st.StoreCheck.OK && strings.HasPrefix(st.StoreCheck.Error, cause)
	})
	if st.StoreCheck.CheckedAt == nil || !strings.Contains(st.StoreCheck.Fix, fix) {
		t.Errorf("store check %+v: want a check time and a fix mentioning %q", st.StoreCheck, fix)
	}
	line := ns.waitFor(t, "a STATUS naming "+cause, func(m string) bool { return strings.HasPrefix(m, "STATUS="+cause) })
	t.Logf("%s\nfix: %s", line, st.StoreCheck.Fix)
}

// scrape reads the daemon's Prometheus metrics.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// pushQueued builds a short chain and queues it without waiting.
func pushQueued(t *testing.T, nx *testenv.NixEnv, d *daemon, n int) []string {
	t.Helper()
	out := nx.Build(t, testenv.Chain(seed(), n))
	if o, err := d.CLI("push", out[0]); err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	return out
}

// drainedClean waits until everything is pushed, nothing failed and the
// store check passes, with no nixpush retry.
func drainedClean(t *testing.T, d *daemon, done int) {
	t.Helper()
	waitStatus(t, d, "a drained queue and a passing store check", func(st api.Status) bool {
		return st.Drained && st.Failed == 0 && st.Done >= done && st.StoreCheck.OK
	})
}

// TestStoreCheck: a missing bucket, wrong credentials and a dead endpoint
// are each named in status --json and the STATUS= line soon after start,
// with no push; paths queued meanwhile go up once the cause is fixed, with
// no nixpush retry.
func TestStoreCheck(t *testing.T) {
	m := testenv.MinIO(t)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-storecheck-1")

	t.Run("missing bucket", func(t *testing.T) {
		ns := newNotifySocket(t)
		metrics := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
		d := startDaemon(t, append(m.CredentialsEnv(), "NOTIFY_SOCKET="+ns.Path), "--store-uri", m.StoreURI("not-yet"),
			"--secret-key-file", sec, "--metrics-listen", metrics)
		storeFails(t, d, ns, "store bucket missing: ", "nixpush init")
		if text := scrape(t, metrics); !strings.Contains(text, "\nnixpush_store_ok 0\n") {
			t.Errorf("metrics while the bucket is missing lack nixpush_store_ok 0")
		}
		out := pushQueued(t, nx, d, 2)
		if st := fullStatus(t, d); st.Queued != 1 || st.Failed != 0 {
			t.Fatalf("while the bucket is missing: %+v; want the path queued, not failed", st)
		}
		cmd := testenv.Command(t, nixpushBin(), "init", "--store-uri", m.StoreURI("not-yet"), "--public-read")
		cmd.Env = append(cmd.Environ(), m.CredentialsEnv()...)
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("init: %v\n%s", err, o)
		}
		drainedClean(t, d, 1)
		// Checked several times while it failed, logged once, with the fix.
		if n := strings.Count(d.Log.String(), `"fix":"create it: nixpush init`); n != 1 {
			t.Errorf("the missing bucket was logged %d times with its fix; want once:\n%s", n, d.Log)
		}
		if text := scrape(t, metrics); !strings.Contains(text, "\nnixpush_store_ok 1\n") {
			t.Errorf("metrics once the bucket is there lack nixpush_store_ok 1")
		}
		checkFetched(t, nx, m.HTTPURL("not-yet"), pub, out...)
	})

	t.Run("wrong credentials", func(t *testing.T) {
		m.MakeBucket(t, "creds", true)
		ns := newNotifySocket(t)
		bad := []string{"AWS_ACCESS_KEY_ID=" + m.AccessKey, "AWS_SECRET_ACCESS_KEY=not-the-secret", "NOTIFY_SOCKET=" + ns.Path}
		d := startDaemon(t, bad, "--store-uri", m.StoreURI("creds"), "--secret-key-file", sec)
		storeFails(t, d, ns, "store credentials: ", "AWS_SECRET_ACCESS_KEY")
		out := pushQueued(t, nx, d, 2)
		d.Stop()
		d.Env = m.CredentialsEnv()
		d.Start()
		drainedClean(t, d, 1)
		checkFetched(t, nx, m.HTTPURL("creds"), pub, out...)
	})

	t.Run("dead endpoint", func(t *testing.T) {
		m2 := testenv.MinIO(t)
		m2.MakeBucket(t, "later", true)
		m2.Stop(t)
		ns := newNotifySocket(t)
		d := startDaemon(t, append(m2.CredentialsEnv(), "NOTIFY_SOCKET="+ns.Path), "--store-uri", m2.StoreURI("later"), "--secret-key-file", sec)
		storeFails(t, d, ns, "store unreachable: ", "endpoint=")
		out := pushQueued(t, nx, d, 2)
		m2.Start(t)
		drainedClean(t, d, 1)
		checkFetched(t, nx, m2.HTTPURL("later"), pub, out...)
	})

	// A store that breaks under a running daemon: the push fails for the
	// store's configuration, and goes up by itself once it is fixed.
	t.Run("bucket deleted while running", func(t *testing.T) {
		m.MakeBucket(t, "heal", true)
		d := startDaemon(t, m.CredentialsEnv(), "--store-uri", m.StoreURI("heal"), "--secret-key-file", sec)
		pushQueued(t, nx, d, 2)
		drainedClean(t, d, 1)
		if err := m.Client(t).RemoveBucketWithOptions(context.Background(), "heal", minio.RemoveBucketOptions{ForceDelete: true}); err != nil {
			t.Fatal(err)
		}
		out := pushQueued(t, nx, d, 2)
		st := waitStatus(t, d, "a push failed for the missing bucket", func(st api.Status) bool {
			return st.Failed > 0 || (st.StoreCheck.Error != "" && st.Queued > 0)
		})
		for _, f := range st.Failures {
			if f.Class != "store" {
				t.Errorf("failure %+v: want class store", f)
			}
		}
		t.Logf("after the bucket went: %s", st.Line(time.Now()))
		m.MakeBucket(t, "heal", true)
		drainedClean(t, d, 2)
		checkFetched(t, nx, m.HTTPURL("heal"), pub, out...)

		// Again, but fixed while the daemon is down: the failed item heals
		// at the next start.
		if err := m.Client(t).RemoveBucketWithOptions(context.Background(), "heal", minio.RemoveBucketOptions{ForceDelete: true}); err != nil {
			t.Fatal(err)
		}
		out = pushQueued(t, nx, d, 2)
		st = waitStatus(t, d, "a push failed for the missing bucket", func(st api.Status) bool {
			return st.Failed > 0 && st.Failures[0].Class == "store"
		})
		t.Logf("before the restart: %s", st.Line(time.Now()))
		d.Stop()
		m.MakeBucket(t, "heal", true)
		d.Start()
		drainedClean(t, d, 3)
		checkFetched(t, nx, m.HTTPURL("heal"), pub, out...)
	})
}
