package testenv

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// CommandTimeout is the longest a command started by Command may run:
// generous (every command the tests wait for takes seconds), so that only
// a hang reaches it.
const CommandTimeout = 5 * time.Minute

// deadlineMargin is left before the test binary's own deadline (go test
// -timeout), which panics and takes every test of the package with it: a
// command killed before it fails its own test only.
const deadlineMargin = 30 * time.Second

// Command is exec.Command under a deadline: the process is killed once it
// has run CommandTimeout, or sooner when the test's deadline comes near,
// and the test fails with a message naming the command, so that a hang
// costs one test rather than the whole run. Its WaitDelay keeps a child
// that holds the output open (a daemon forked by the command) from
// hanging Wait. A process still running when the test ends is killed.
func Command(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd, cancel := command(t, name, args...)
	t.Cleanup(cancel)
	return cmd
}

// command is Command for helpers that wait for the process themselves:
// they call cancel once it has exited, and register no cleanup for it (a
// helper a test polls with would pile them up).
func command(t testing.TB, name string, args ...string) (*exec.Cmd, context.CancelFunc) {
	st := stateOf(t)
	timeout := commandTimeout(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Cancel = func() error {
		st.mu.Lock()
		if !st.ended && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Errorf("%s: still running after %v: killed", CommandLine(cmd), timeout)
		}
		st.mu.Unlock()
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = 10 * time.Second
	return cmd, cancel
}

// testState says whether a test has ended: after it has, t panics on
// Errorf, and a command's deadline must not report through it.
type testState struct {
	mu    sync.Mutex
	ended bool
}

var testStates sync.Map // testing.TB → *testState

func stateOf(t testing.TB) *testState {
	if st, ok := testStates.Load(t); ok {
		return st.(*testState)
	}
	st, loaded := testStates.LoadOrStore(t, &testState{})
	if !loaded {
		t.Cleanup(func() {
			s := st.(*testState)
			s.mu.Lock()
			s.ended = true
			s.mu.Unlock()
			testStates.Delete(t)
		})
	}
	return st.(*testState)
}

// commandTimeout is CommandTimeout, or less when the test's deadline
// comes sooner.
func commandTimeout(t testing.TB) time.Duration {
	d, ok := t.(interface{ Deadline() (time.Time, bool) })
	if !ok {
		return CommandTimeout
	}
	deadline, ok := d.Deadline()
	if !ok {
		return CommandTimeout
	}
	left := time.Until(deadline) - deadlineMargin
	if left < time.Second {
		left = time.Second
	}
	return min(left, CommandTimeout)
}

// CommandLine is cmd as a shell would show it, its arguments shortened,
// for messages.
func CommandLine(cmd *exec.Cmd) string {
	s := strings.Join(cmd.Args, " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
