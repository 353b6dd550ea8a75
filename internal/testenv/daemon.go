package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// WithNixpush is a TestMain body for packages that run the binaries: it
// builds nixpush and nixpush-hook (from the module whose root is
// moduleRoot) into a temp dir, sets *binDir to it, prints the Nix the
// tests run against, runs the tests, removes the dir and returns m.Run's
// exit code.
func WithNixpush(m *testing.M, moduleRoot string, binDir *string) int {
	dir, err := os.MkdirTemp("", "nixpush-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Under a deadline, as every command the tests wait for (Command).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", dir+"/", "./cmd/nixpush", "./cmd/nixpush-hook")
	build.Dir = moduleRoot
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build nixpush:", err)
		return 1
	}
	*binDir = dir
	// go test shows a package's output when it fails: say which Nix.
	fmt.Println("testing against", NixVersion())
	return m.Run()
}

// Daemon is a running nixpush daemon with its own socket, state and spool.
type Daemon struct {
	t        testing.TB
	BinDir   string // where nixpush and nixpush-hook are
	Socket   string
	StateDir string
	SpoolDir string
	Hook     string // a post-build-hook wrapper that reaches this daemon
	Cmd      *exec.Cmd
	exited   chan struct{} // closed when Cmd has exited
	Log      *SyncBuffer
	Args     []string
	Env      []string
	Prefix   []string // a command that execs the daemon (nice, chrt, ionice), or none
}

// StartDaemon starts nixpush daemon (from binDir) with args and waits
// until it answers on its socket; it stops at cleanup.
func StartDaemon(t testing.TB, binDir string, env []string, args ...string) *Daemon {
	t.Helper()
	return StartDaemonUnder(t, binDir, env, nil, args...)
}

// StartDaemonUnder is StartDaemon with the daemon run under a command
// prefix that execs it, such as nice, chrt or ionice (systemd's Nice=,
// CPUSchedulingPolicy= and IOSchedulingClass=): the process keeps its id.
func StartDaemonUnder(t testing.TB, binDir string, env, prefix []string, args ...string) *Daemon {
	t.Helper()
	dir := t.TempDir()
	d := &Daemon{
		t: t, BinDir: binDir, Socket: filepath.Join(dir, "nixpush.sock"), StateDir: filepath.Join(dir, "state"),
		SpoolDir: filepath.Join(dir, "spool"), Hook: filepath.Join(dir, "hook.sh"), Env: env, Prefix: prefix,
	}
	d.Args = append([]string{"daemon", "--socket", d.Socket, "--state-dir", d.StateDir, "--spool-dir", d.SpoolDir, "--log-format", "json"}, args...)
	script := fmt.Sprintf("#!/bin/sh\nexec %s --socket %s --spool-dir %s\n", d.HookBin(), d.Socket, d.SpoolDir)
	if err := os.WriteFile(d.Hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(d.Stop)
	return d
}

// Bin is the nixpush binary.
func (d *Daemon) Bin() string { return filepath.Join(d.BinDir, "nixpush") }

// HookBin is the nixpush-hook binary.
func (d *Daemon) HookBin() string { return filepath.Join(d.BinDir, "nixpush-hook") }

// HookEnv is the environment that points nixpush-hook at this daemon.
func (d *Daemon) HookEnv() []string {
	return []string{"NIXPUSH_SOCKET=" + d.Socket, "NIXPUSH_SPOOL_DIR=" + d.SpoolDir}
}

// Start (re)starts the daemon process.
func (d *Daemon) Start() {
	t := d.t
	t.Helper()
	d.Log = &SyncBuffer{}
	if len(d.Prefix) > 0 {
		d.Cmd = exec.Command(d.Prefix[0], append(append(d.Prefix[1:len(d.Prefix):len(d.Prefix)], d.Bin()), d.Args...)...)
	} else {
		d.Cmd = exec.Command(d.Bin(), d.Args...)
	}
	d.Cmd.Env = append(os.Environ(), d.Env...)
	d.Cmd.Stdout, d.Cmd.Stderr = d.Log, d.Log
	if err := d.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	d.exited = exited
	go func() { d.Cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := d.CLI("status"); err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("daemon exited at start: %s", d.Log)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("daemon socket %s not answering after 10s: %s", d.Socket, d.Log)
}

// Stop stops the daemon with SIGTERM. A daemon still running a minute
// later has hung: it is killed and the test fails.
func (d *Daemon) Stop() {
	if d.Cmd == nil || d.Cmd.Process == nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	d.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		d.Cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("daemon did not stop within a minute of SIGTERM")
	}
	if d.t.Failed() {
		d.t.Logf("daemon log:\n%s", d.Log)
	}
}

// Kill sends SIGKILL to the daemon and waits for it to die.
func (d *Daemon) Kill() {
	d.Cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		d.t.Fatalf("daemon pid %d still running a minute after SIGKILL", d.Cmd.Process.Pid)
	}
}

// Exited is closed once the daemon process has exited.
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// CLI runs a nixpush client command against the daemon.
func (d *Daemon) CLI(args ...string) (string, error) {
	cmd, cancel := command(d.t, d.Bin(), args...)
	defer cancel()
	cmd.Env = append(os.Environ(), "NIXPUSH_SOCKET="+d.Socket)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// MustWait runs nixpush wait and fails the test unless it exits 0.
func (d *Daemon) MustWait(timeout time.Duration) {
	d.t.Helper()
	out, err := d.CLI("wait", "--timeout", timeout.String())
	if err != nil {
		d.t.Fatalf("nixpush wait: %v\n%s\ndaemon log:\n%s", err, out, d.Log)
	}
}

// PeakRSS is the daemon's peak resident set (VmHWM) in bytes.
func (d *Daemon) PeakRSS() (int64, error) { return procStatusBytes(d.Cmd.Process.Pid, "VmHWM:") }

// RSS is the daemon's resident set now (VmRSS) in bytes.
func (d *Daemon) RSS() (int64, error) { return procStatusBytes(d.Cmd.Process.Pid, "VmRSS:") }

// CPUTime is the CPU time the daemon has used so far.
func (d *Daemon) CPUTime() (time.Duration, error) { return ProcessCPUTime(d.Cmd.Process.Pid) }

// ProcessCPUTime is the user and system time process pid has used, with
// that of its waited-for children (nix-store and the like).
func ProcessCPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses: utime is
	// the 14th field of the line, stime, cutime and cstime follow.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100), nil // USER_HZ is 100 on Linux
}

func procStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// SyncBuffer is a bytes.Buffer safe for a process writing while a test reads.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Command is testenv.Command for the daemon's test: a command such as its
// hook, under a deadline.
func (d *Daemon) Command(name string, args ...string) *exec.Cmd {
	d.t.Helper()
	return Command(d.t, name, args...)
}
