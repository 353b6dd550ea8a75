package nix

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestServeMatchesPathInfo holds the serve protocol's answers against
// `nix path-info --json` for an awkward closure: several outputs, a
// fixed-output (content-addressed) path, self-references.
func TestServeMatchesPathInfo(t *testing.T) {
	needNix(t)
	out := strings.Fields(nixCmd(t, "nix-build", "--no-out-link", "-E", testenv.Awkward(seed(t))))
	ctx := context.Background()
	want, err := (&Client{}).QueryClosure(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServe(Client{})
	defer s.Close()
	got, err := s.QueryClosure(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	byPath := func(a, b PathInfo) int { return strings.Compare(a.Path, b.Path) }
	slices.SortFunc(want, byPath)
	slices.SortFunc(got, byPath)
	if len(got) < 6 || len(got) != len(want) {
		t.Fatalf("serve protocol gave %d paths, nix path-info %d", len(got), len(want))
	}
	for i := range got {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("serve protocol and nix path-info disagree:\n got %#v\nwant %#v", got[i], want[i])
		}
	}
	var ca int
	for _, info := range got {
		if info.CA != "" {
			ca++
		}
	}
	if ca == 0 {
		t.Fatalf("no content-addressed path in the closure: %+v", got)
	}

	// Query gives the roots alone.
	roots, err := s.Query(ctx, out[:1])
	if err != nil || len(roots) != 1 || roots[0].Path != out[0] {
		t.Fatalf("Query(%s) = %+v, %v", out[0], roots, err)
	}
}

// TestServeInvalidAndRestart: an invalid path is ErrInvalidPath and the
// process goes on serving; a dead process is replaced at the next query.
func TestServeInvalidAndRestart(t *testing.T) {
	needNix(t)
	top := buildRefs(t)
	ctx := context.Background()
	s := NewServe(Client{})
	defer s.Close()
	for _, bad := range []string{"/nix/store/00000000000000000000000000000000-nope", "/etc/passwd", "relative"} {
		if _, err := s.QueryClosure(ctx, []string{top, bad}); !IsInvalid(err) {
			t.Fatalf("QueryClosure(%s) err = %v; want ErrInvalidPath", bad, err)
		}
	}
	first, err := s.QueryClosure(ctx, []string{top})
	if err != nil || len(first) != 3 {
		t.Fatalf("after invalid paths: %+v, %v", first, err)
	}
	pid := s.cmd.Process.Pid
	s.cmd.Process.Kill()
	// Nobody waits for the process until it is replaced, so once dead it
	// stays a zombie: wait for that, so the next query surely meets a dead
	// process rather than racing the kill.
	waitZombie(t, pid)
	_, err = s.QueryClosure(ctx, []string{top})
	if err == nil || IsInvalid(err) {
		t.Fatalf("query to a killed nix-store --serve: err = %v; want a failure that is not ErrInvalidPath", err)
	}
	t.Logf("query to the killed process failed: %v", err)
	again, err := s.QueryClosure(ctx, []string{top})
	if err != nil || len(again) != 3 || s.cmd.Process.Pid == pid {
		t.Fatalf("after kill: %+v, %v (pid %d was %d)", again, err, s.cmd.Process.Pid, pid)
	}
}

// waitZombie waits until process pid has exited (and is not yet reaped).
func waitZombie(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatalf("process %d: %v", pid, err)
		}
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running 30s after SIGKILL", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func BenchmarkServeQueryClosure(b *testing.B) {
	top := strings.TrimSpace(string(must(b, "nix-build", "--no-out-link", "-E", testenv.DAG("serve-bench", 100, 1, false))))
	s := NewServe(Client{})
	defer s.Close()
	ctx := context.Background()
	for b.Loop() {
		if _, err := s.QueryClosure(ctx, []string{top}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPathInfoQueryClosure(b *testing.B) {
	top := strings.TrimSpace(string(must(b, "nix-build", "--no-out-link", "-E", testenv.DAG("serve-bench", 100, 1, false))))
	c := &Client{}
	ctx := context.Background()
	for b.Loop() {
		if _, err := c.QueryClosure(ctx, []string{top}); err != nil {
			b.Fatal(err)
		}
	}
}

func must(b *testing.B, name string, args ...string) []byte {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	return out
}

// TestServeLetsGoOfTheStoreWhenIdle: while nix-store --serve runs it holds
// Nix's big lock shared, so a Nix command that needs it exclusively (the
// first use of ca-derivations on Nix 2.8 to 2.25, a schema upgrade)
// waits. After Idle without a query the process is gone and an exclusive
// lock is taken at once; the next query starts it again.
//
// It runs on a store of its own (testenv's FreshStore), where no other
// test's Nix holds the lock.
func TestServeLetsGoOfTheStoreWhenIdle(t *testing.T) {
	needNix(t)
	nx := testenv.Nix(t).FreshStore(t)
	out := nx.Build(t, testenv.Chain(seed(t), 3))
	lock := nx.HostPath("/nix/var/nix/db/big-lock")
	exclusive := func() bool { // flock -x -n: taken at once, or not
		return exec.Command("flock", "-x", "-n", lock, "true").Run() == nil
	}
	ctx := context.Background()
	s := NewServe(Client{BinDir: nx.Wrappers(t, "nix-store")})
	s.Idle = 300 * time.Millisecond
	defer s.Close()
	if _, err := s.Query(ctx, out[:1]); err != nil {
		t.Fatal(err)
	}
	if !s.Running() {
		t.Fatal("nix-store --serve is not running right after a query")
	}
	if exclusive() {
		t.Fatalf("an exclusive lock on %s was taken while nix-store --serve ran: the test cannot tell anything", lock)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Running() {
		if time.Now().After(deadline) {
			t.Fatal("nix-store --serve still running 10 s after its last query (idle 300 ms)")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if exec.Command("flock", "-x", "-w", "20", lock, "true").Run() != nil {
		t.Fatalf("no exclusive lock on %s within 20 s with nix-store --serve stopped (%s)", lock, testenv.NixVersion())
	}
	if _, err := s.Query(ctx, out[:1]); err != nil || !s.Running() {
		t.Fatalf("query after the idle stop: %v (running %v)", err, s.Running())
	}
}

// TestServeMaxAge: queries that never pause for Idle do not keep one
// nix-store (and Nix's big lock) for ever: after MaxAge the process stops
// at the end of a query and the next query starts another. Idle and
// MaxAge negative keep it for ever.
func TestServeMaxAge(t *testing.T) {
	needNix(t)
	top := buildRefs(t)
	ctx := context.Background()
	s := NewServe(Client{})
	s.Idle, s.MaxAge = time.Minute, 300*time.Millisecond
	defer s.Close()
	pids := map[int]bool{}
	// Until three processes have served, or 30 s (a Nix start takes most
	// of a second on a loaded machine).
	for end := time.Now().Add(30 * time.Second); len(pids) < 3 && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if _, err := s.Query(ctx, []string{top}); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		if s.cmd != nil {
			pids[s.cmd.Process.Pid] = true
		}
		s.mu.Unlock()
	}
	if len(pids) < 3 {
		t.Fatalf("30 s of queries every 50 ms with MaxAge 300 ms (Idle 1 min) ran %d nix-store processes; want 3 or more", len(pids))
	}

	never := NewServe(Client{})
	never.Idle, never.MaxAge = -1, -1
	defer never.Close()
	if _, err := never.Query(ctx, []string{top}); err != nil {
		t.Fatal(err)
	}
	pid := never.cmd.Process.Pid
	time.Sleep(ServeIdle + time.Second)
	if _, err := never.Query(ctx, []string{top}); err != nil || !never.Running() || never.cmd.Process.Pid != pid {
		t.Fatalf("Idle and MaxAge negative: nix-store did not stay (%v)", err)
	}
}
