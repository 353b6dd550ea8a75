package testenv

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// soonTB is a test whose deadline is near, and which records its errors
// rather than failing.
type soonTB struct {
	testing.TB
	deadline time.Time
	mu       sync.Mutex
	errs     []string
}

func (s *soonTB) Deadline() (time.Time, bool) { return s.deadline, true }
func (s *soonTB) Errorf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, fmt.Sprintf(format, args...))
}

func TestCommandKillsAHangAtTheTestsDeadline(t *testing.T) {
	tb := &soonTB{TB: t, deadline: time.Now().Add(deadlineMargin + 2*time.Second)}
	start := time.Now()
	err := Command(tb, "sleep", "600").Run()
	if took := time.Since(start); err == nil || took > 30*time.Second {
		t.Fatalf("sleep 600 under a deadline 2 s away: err %v after %v; want killed within seconds", err, took)
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.errs) != 1 || !strings.Contains(tb.errs[0], "sleep 600: still running after") {
		t.Fatalf("errors reported: %q; want one naming the command", tb.errs)
	}
}

func TestCommandLetsAQuickOneBe(t *testing.T) {
	tb := &soonTB{TB: t, deadline: time.Now().Add(time.Hour)}
	out, err := Command(tb, "echo", "hi").Output()
	if err != nil || string(out) != "hi\n" {
		t.Fatalf("echo hi: %q, %v", out, err)
	}
	if timeout := commandTimeout(tb); timeout != CommandTimeout {
		t.Errorf("timeout with an hour left: %v, want %v", timeout, CommandTimeout)
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.errs) != 0 {
		t.Fatalf("errors reported: %q", tb.errs)
	}
}
