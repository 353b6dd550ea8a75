package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nixpush-e2e-bin-")
	if err != nil {
		panic(err)
	}
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/nixpush", "../cmd/nixpush-hook")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build nixpush:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func nixpushBin() string { return filepath.Join(binDir, "nixpush") }

// keys makes a signing key pair with nixpush keygen.
func keys(t *testing.T, name string) (secretFile, public string) {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command(nixpushBin(), "keygen", "--name", name, "--out", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "public.key"))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "secret.key"), string(pub)
}

// daemon is a running nixpush daemon.
type daemon struct {
	t        *testing.T
	Socket   string
	StateDir string
	SpoolDir string
	Hook     string // a post-build-hook wrapper that reaches this daemon
	cmd      *exec.Cmd
	log      *bytes.Buffer
	args     []string
	env      []string
}

// startDaemon starts nixpush daemon with args and waits for its socket.
func startDaemon(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{
		t: t, Socket: filepath.Join(dir, "nixpush.sock"), StateDir: filepath.Join(dir, "state"),
		SpoolDir: filepath.Join(dir, "spool"), Hook: filepath.Join(dir, "hook.sh"), env: env,
	}
	d.args = append([]string{"daemon", "--socket", d.Socket, "--state-dir", d.StateDir, "--spool-dir", d.SpoolDir, "--log-format", "json"}, args...)
	script := fmt.Sprintf("#!/bin/sh\nexec %s --socket %s --spool-dir %s\n", filepath.Join(binDir, "nixpush-hook"), d.Socket, d.SpoolDir)
	if err := os.WriteFile(d.Hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(d.Stop)
	return d
}

// Start (re)starts the daemon process.
func (d *daemon) Start() {
	t := d.t
	t.Helper()
	d.log = &bytes.Buffer{}
	d.cmd = exec.Command(nixpushBin(), d.args...)
	d.cmd.Env = append(os.Environ(), d.env...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { d.cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := d.cli("status"); err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("daemon exited at start: %s", d.log)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("daemon socket %s not answering after 10s: %s", d.Socket, d.log)
}

// Stop stops the daemon with SIGTERM.
func (d *daemon) Stop() {
	if d.cmd == nil || d.cmd.Process == nil || d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for d.cmd.ProcessState == nil {
			time.Sleep(10 * time.Millisecond)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		d.t.Errorf("daemon did not stop within 15s of SIGTERM")
	}
	if d.t.Failed() {
		d.t.Logf("daemon log:\n%s", d.log)
	}
}

// cli runs a nixpush client command against the daemon.
func (d *daemon) cli(args ...string) (string, error) {
	cmd := exec.Command(nixpushBin(), args...)
	cmd.Env = append(os.Environ(), "NIXPUSH_SOCKET="+d.Socket)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustWait runs nixpush wait and fails the test unless it exits 0.
func (d *daemon) mustWait(timeout time.Duration) {
	d.t.Helper()
	out, err := d.cli("wait", "--timeout", timeout.String())
	if err != nil {
		d.t.Fatalf("nixpush wait: %v\n%s\ndaemon log:\n%s", err, out, d.log)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func lines(s string) []string { return strings.Fields(strings.TrimSpace(s)) }
