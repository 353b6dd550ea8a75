package daemon

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/api/client"
	"github.com/nixpush/nixpush/nix"
)

// TestSlowClientDoesNotStallOthers holds a connection open mid-request, as
// a slow or hostile client would, and checks that other clients are served
// meanwhile and that the daemon drops the slow one.
func TestSlowClientDoesNotStallOthers(t *testing.T) {
	socket := startDaemon(t)
	slow, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.Write([]byte("POST /v1/enqueue HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")) // and then nothing
	start := time.Now()
	for range 5 {
		if _, err := client.New(socket).Status(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("status took %s while a slow client held a connection", d)
	}
	// The daemon gives up on the slow client once its header deadline passes.
	slow.SetReadDeadline(time.Now().Add(15 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(slow), nil)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("slow client got %s", resp.Status)
		}
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the daemon kept a stalled connection open for 15s")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("slow client dropped after %s; want the 5s header deadline", d)
	}
}

// TestWrongPeerMayNotEnqueue connects as user nobody (the socket made
// world-writable for the test, as a misconfiguration would): reading the
// status is allowed, enqueueing and retrying are refused by peer
// credentials.
func TestWrongPeerMayNotEnqueue(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test runs clients as another user and needs root (CI runs as root)")
	}
	socket := startDaemon(t)
	os.Chmod(socket, 0o666)
	for dir := filepath.Dir(socket); dir != "/" && dir != os.TempDir(); dir = filepath.Dir(dir) {
		os.Chmod(dir, 0o755) // let nobody reach the socket through t.TempDir()
	}
	for _, tc := range []struct {
		name, method, path, body string
		code                     string
		want                     string
	}{
		{"status", "GET", "/v1/status", "", "200", `"queued"`},
		{"enqueue", "POST", "/v1/enqueue", `{"paths":["/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"]}`, "403", "uid 65534 may not enqueue"},
		{"retry", "POST", "/v1/retry", `{"all":true}`, "403", "uid 65534 may not enqueue"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"-s", "-w", "\n%{http_code}", "--unix-socket", socket, "-X", tc.method, "http://nixpush" + tc.path}
			if tc.body != "" {
				args = append(args, "-d", tc.body)
			}
			cmd := exec.Command("curl", args...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("curl as nobody: %v", err)
			}
			text := strings.TrimSpace(string(out))
			i := strings.LastIndex(text, "\n")
			body, code := text[:max(i, 0)], text[i+1:]
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Fatalf("as nobody %s %s: %s %s; want %s with %q", tc.method, tc.path, code, body, tc.code, tc.want)
			}
		})
	}
}

// FuzzEnqueueRequest feeds arbitrary bodies to the enqueue decoder: it must
// never panic, and whatever it accepts must be store paths directly under
// the store (or a derivation's outputs), never anything with "..".
func FuzzEnqueueRequest(f *testing.F) {
	for _, s := range []string{
		`{"paths":["/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"]}`,
		`{"drv_path":"/nix/store/y0hd3jhar8r876by1rvnbr6q88h80n9c-t1.drv"}`,
		`{"paths":["/nix/store/../etc/passwd"]}`, `{}`, `[]`, `null`, `{"paths":null}`, `{"paths":[1]}`,
		`{"paths":["/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"]}{"paths":[]}`,
	} {
		f.Add([]byte(s))
	}
	d := &Daemon{storeDir: nix.DefaultStoreDir}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/v1/enqueue", strings.NewReader(string(body)))
		w := httptest.NewRecorder()
		var req api.EnqueueRequest
		if _, err := decodeJSON(w, r, &req, "x"); err != nil {
			return
		}
		paths, err := d.requestPaths(req)
		if err != nil {
			return
		}
		if len(paths) == 0 {
			t.Fatalf("accepted %q with no paths", body)
		}
		for _, p := range paths {
			p = strings.TrimSuffix(p, allOutputs)
			if strings.Contains(p, "/..") {
				t.Fatalf("accepted %q from %q", p, body)
			}
			if got, err := nix.StorePath(nix.DefaultStoreDir, p); err != nil || got != p {
				t.Fatalf("accepted %q from %q, not a clean store path (%v)", p, body, err)
			}
		}
	})
}
