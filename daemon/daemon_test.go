package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/rs/zerolog"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/api/client"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// startDaemon runs the daemon in-process on a file:// store.
func startDaemon(t *testing.T) (socket string) {
	return startDaemonWith(t, func(*Config) {})
}

// startDaemonWith is startDaemon with changes to the configuration.
func startDaemonWith(t *testing.T, change func(*Config)) (socket string) {
	t.Helper()
	dir := t.TempDir()
	store, err := store.NewFileStore(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	sk, _, _ := signature.GenerateKeypair("test-1", nil)
	nc := &nix.Client{}
	up := uploader.New(uploader.Config{Store: store, Nix: nc, Key: sk, Log: zerolog.Nop()})
	socket = filepath.Join(dir, "d.sock")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		cfg := Config{Socket: socket, StateDir: filepath.Join(dir, "state"), Uploader: up, Nix: nc,
			Log: zerolog.Nop(), Ready: func() { close(ready) }}
		change(&cfg)
		done <- Run(ctx, cfg)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	return socket
}

func rawClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
}

func TestAPIRefusesBadRequests(t *testing.T) {
	socket := startDaemon(t)
	c := rawClient(socket)
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"garbage", "POST", "/v1/enqueue", "{{{", 400, "bad JSON"},
		{"unknown field", "POST", "/v1/enqueue", `{"pathz":["x"]}`, 400, "unknown field"},
		{"empty", "POST", "/v1/enqueue", `{}`, 400, "no paths"},
		{"not in store", "POST", "/v1/enqueue", `{"paths":["/etc/passwd"]}`, 400, "not directly under /nix/store"},
		{"traversal", "POST", "/v1/enqueue", `{"paths":["/nix/store/../../etc/shadow"]}`, 400, "contains '..'"},
		{"relative", "POST", "/v1/enqueue", `{"paths":["nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"]}`, 400, "not absolute"},
		{"drv not a drv", "POST", "/v1/enqueue", `{"drv_path":"/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"}`, 400, "not a derivation"},
		{"oversize", "POST", "/v1/enqueue", `{"paths":["` + strings.Repeat("a", 2<<20) + `"]}`, 413, "over 1048576 bytes"},
		{"no route", "GET", "/v2/status", "", 404, "no route"},
		{"wrong method", "POST", "/v1/status", "", 404, "routes: POST /v1/enqueue, GET /v1/status"},
		{"bad timeout", "GET", "/v1/wait?timeout=soon", "", 400, "want a duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://nixpush"+tc.path, strings.NewReader(tc.body))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.want) {
				t.Fatalf("%s %s: %d %s; want %d containing %q", tc.method, tc.path, resp.StatusCode, body, tc.code, tc.want)
			}
			{
				var e api.ErrorResponse
				if json.Unmarshal(body, &e) != nil || e.Error == "" || strings.Contains(e.Error, "\n") {
					t.Fatalf("error body is not a one-line JSON error: %s", body)
				}
			}
		})
	}
	// The daemon still answers after all that.
	if _, err := client.New(socket).Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestWaitAndStatus(t *testing.T) {
	socket := startDaemon(t)
	c := client.New(socket)
	ctx := context.Background()
	// A path on disk that the Nix database does not register fails
	// permanently at upload, and wait returns with it listed.
	bad := "/nix/store/00000000000000000000000000000000-nixpush-unregistered-" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(bad, []byte("not registered"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(bad) })
	if _, err := c.Enqueue(ctx, api.EnqueueRequest{Paths: []string{"/nix/store/00000000000000000000000000000000-nixpush-nowhere"}}); err == nil ||
		!strings.Contains(err.Error(), "is not in the store") {
		t.Fatalf("missing path: %v; want a refusal at once", err)
	}
	res, err := c.Enqueue(ctx, api.EnqueueRequest{Paths: []string{bad}})
	if err != nil || res.Added != 1 {
		t.Fatalf("enqueue: %+v, %v", res, err)
	}
	st, err := c.Wait(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Drained || st.Failed != 1 || len(st.Failures) != 1 || st.Failures[0].Path != bad ||
		!strings.Contains(st.Failures[0].Error, "not a valid path") {
		t.Fatalf("status after wait: %+v", st)
	}
	// nixpush retry puts it back in the queue; it fails again, for the same reason.
	rr, err := c.Retry(ctx, api.RetryRequest{All: true})
	if err != nil || rr.Requeued != 1 {
		t.Fatalf("retry: %+v, %v", rr, err)
	}
	st, err = c.Wait(ctx, 30*time.Second)
	if err != nil || st.Failed != 1 || st.Failures[0].Attempts != 1 {
		t.Fatalf("after retry: %+v, %v", st, err)
	}
	// Enqueueing it again merges nothing away: a failed item gets a new chance.
	res, err = c.Enqueue(ctx, api.EnqueueRequest{Paths: []string{bad, bad}})
	if err != nil || res.Added != 1 || res.Merged != 1 {
		t.Fatalf("re-enqueue: %+v, %v", res, err)
	}
}

// TestBurstOver: a push waits until hand-offs have paused for BurstQuiet
// (Nix 2.35's concurrent hooks get their answers before pushes take the
// CPU), and no longer than maxBurstWait while they never pause; with
// BurstQuiet negative, or no hand-off lately, it does not wait.
func TestBurstOver(t *testing.T) {
	ctx := context.Background()
	d := &Daemon{cfg: Config{BurstQuiet: 100 * time.Millisecond}}
	start := time.Now()
	if !d.burstOver(ctx) || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("no hand-off yet: burstOver waited %v", time.Since(start))
	}

	// Hand-offs every 20 ms for 300 ms: the wait ends BurstQuiet after the last.
	stop := make(chan struct{})
	var last atomic.Int64
	go func() {
		for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			now := time.Now().UnixNano()
			d.lastHandoff.Store(now)
			last.Store(now)
		}
		close(stop)
	}()
	time.Sleep(10 * time.Millisecond)
	if !d.burstOver(ctx) {
		t.Fatal("burstOver: false with ctx not done")
	}
	<-stop
	if ended, lastAt := time.Now(), time.Unix(0, last.Load()); ended.Sub(lastAt) < 100*time.Millisecond {
		t.Fatalf("burstOver returned %v after the last hand-off; want BurstQuiet (100ms) or more", ended.Sub(lastAt))
	}

	// A stream that never pauses: at most maxBurstWait. Four writers 10 ms
	// apart and a quiet time of 500 ms, so that a loaded machine's
	// scheduling gaps (over 100 ms seen under load 18) read as no pause.
	d.cfg.BurstQuiet = 500 * time.Millisecond
	done := make(chan struct{})
	defer close(done)
	for range 4 {
		go func() {
			for {
				select {
				case <-done:
					return
				case <-time.After(10 * time.Millisecond):
					d.lastHandoff.Store(time.Now().UnixNano())
				}
			}
		}()
	}
	d.lastHandoff.Store(time.Now().UnixNano())
	start = time.Now()
	if !d.burstOver(ctx) {
		t.Fatal("burstOver: false with ctx not done")
	}
	if took := time.Since(start); took < maxBurstWait || took > maxBurstWait+5*time.Second {
		t.Fatalf("hand-offs never pausing: burstOver waited %v; want about maxBurstWait (%v)", took, maxBurstWait)
	}

	d.cfg.BurstQuiet = -1
	start = time.Now()
	if !d.burstOver(ctx) || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("BurstQuiet negative: burstOver waited %v", time.Since(start))
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	d.cfg.BurstQuiet = time.Hour
	d.lastHandoff.Store(time.Now().UnixNano())
	if d.burstOver(cancelled) {
		t.Fatal("burstOver: true with ctx done")
	}
}
