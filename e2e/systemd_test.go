package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixpush/nixpush/internal/testenv"
)

// notifySocket listens where a daemon's sd_notify messages go and records
// them.
type notifySocket struct {
	Path string
	mu   sync.Mutex
	msgs []string
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{Path: filepath.Join(t.TempDir(), "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.Path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

// waitFor waits until a message matching ok has arrived and returns it.
func (n *notifySocket) waitFor(t *testing.T, what string, ok func(string) bool) string {
	t.Helper()
	var found string
	eventually(t, 30*time.Second, func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, m := range n.msgs {
			if ok(m) {
				found = m
				return true
			}
		}
		return false
	}, "no %s among the sd_notify messages: %v", what, n)
	return found
}

// String quotes the messages that have arrived.
func (n *notifySocket) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return fmt.Sprintf("%q", n.msgs)
}

// TestSdNotify checks what systemd hears on NOTIFY_SOCKET: READY=1, STATUS=
// lines with live figures, watchdog pings, STOPPING=1.
func TestSdNotify(t *testing.T) {
	ns := newNotifySocket(t)
	f := newFixture(t, "nixpush-e2e-notify-1", daemonEnv("NOTIFY_SOCKET="+ns.Path, "WATCHDOG_USEC=1000000"))
	nx, d := f.nx, f.d
	ns.waitFor(t, "READY=1", func(m string) bool { return m == "READY=1" })
	idle := ns.waitFor(t, "an idle STATUS", func(m string) bool { return strings.HasPrefix(m, "STATUS=0 queued, 0 uploading, 0 failed; 0 paths") })
	t.Log(idle)
	ns.waitFor(t, "WATCHDOG=1", func(m string) bool { return m == "WATCHDOG=1" })

	out := nx.Build(t, testenv.Chain(seed(), 4))
	if o, err := d.CLI("push", "--wait", out[0]); err != nil {
		t.Fatalf("push: %v %s", err, o)
	}
	busy := ns.waitFor(t, "a STATUS with 4 paths pushed", func(m string) bool {
		return strings.HasPrefix(m, "STATUS=0 queued, 0 uploading, 0 failed; 4 paths, ") && strings.Contains(m, "B pushed; last push ")
	})
	t.Log(busy)
	d.Stop()
	ns.waitFor(t, "STOPPING=1", func(m string) bool { return m == "STOPPING=1" })
}
