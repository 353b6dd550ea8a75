package daemon

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/api/client"
)

func TestMetrics(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	socket := startDaemonWith(t, func(c *Config) { c.MetricsListen = addr })

	// One real store path, pushed to the daemon's file:// cache.
	file := filepath.Join(t.TempDir(), "nixpush-metrics-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.WriteFile(file, []byte("metrics test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-store", "--add", file).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v (install Nix: ./scripts/test.sh)", err)
	}
	c := client.New(socket)
	ctx := context.Background()
	if _, err := c.Enqueue(ctx, api.EnqueueRequest{Paths: []string{strings.TrimSpace(string(out))}}); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx, time.Minute); err != nil || !st.Drained || st.Failed != 0 {
		t.Fatalf("wait: %+v %v", st, err)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		`nixpush_queue_items{state="queued"} 0`,
		`nixpush_queue_items{state="failed"} 0`,
		`nixpush_queue_items{state="done"} 1`,
		`nixpush_uploaded_paths_total 1`,
		`nixpush_store_ok 1`,
		`nixpush_store_requests_total `,
		`nixpush_queue_oldest_queued_age_seconds 0`,
		`# TYPE nixpush_uploaded_nar_bytes_total counter`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(text, "nixpush_store_check_timestamp_seconds 0\n") {
		t.Errorf("no store check time after a push")
	}
	if strings.Contains(text, "nixpush_last_push_timestamp_seconds 0\n") {
		t.Errorf("no last push time after a push")
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", text)
	}
}
