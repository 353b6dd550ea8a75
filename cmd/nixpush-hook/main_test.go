package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/spool"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// fakeDaemon answers /v1/enqueue on a Unix socket with a fixed status.
func fakeDaemon(t *testing.T, code int, got *[]api.EnqueueRequest) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.EnqueueRequest
		json.NewDecoder(r.Body).Decode(&req)
		*got = append(*got, req)
		w.WriteHeader(code)
		if code != 200 {
			json.NewEncoder(w).Encode(api.ErrorResponse{Error: "enqueue: refused for the test"})
			return
		}
		json.NewEncoder(w).Encode(api.EnqueueResponse{Added: len(req.Paths)})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return sock
}

func TestHook(t *testing.T) {
	const out1 = "/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"
	const out2 = "/nix/store/vfwyf7lvpcxwdyfjvv2rxs8qad214b3j-t2"
	const drv = "/nix/store/y0hd3jhar8r876by1rvnbr6q88h80n9c-t1.drv"
	for _, tc := range []struct {
		name       string
		env        map[string]string
		daemon     int // 0: no daemon
		code       int
		wantSent   *api.EnqueueRequest
		wantSpool  bool
		wantStderr string
	}{
		{name: "out paths", env: map[string]string{"OUT_PATHS": out1 + " " + out2, "DRV_PATH": drv}, daemon: 200,
			wantSent: &api.EnqueueRequest{Paths: []string{out1, out2}, DrvPath: drv}},
		{name: "nix 2.8.0 empty OUT_PATHS", env: map[string]string{"OUT_PATHS": "", "DRV_PATH": drv}, daemon: 200,
			wantSent: &api.EnqueueRequest{DrvPath: drv}},
		{name: "nothing to do", env: map[string]string{}, daemon: 200, wantStderr: "nothing to push"},
		{name: "daemon down spools", env: map[string]string{"OUT_PATHS": out1}, wantSpool: true, wantStderr: "spooled " + out1},
		{name: "daemon refuses", env: map[string]string{"OUT_PATHS": out1}, daemon: 400, wantStderr: "refused for the test",
			wantSent: &api.EnqueueRequest{Paths: []string{out1}}},
		{name: "caller not allowed", env: map[string]string{"OUT_PATHS": out1}, daemon: 403, wantStderr: "refused for the test",
			wantSent: &api.EnqueueRequest{Paths: []string{out1}}},
		// Answers that are not a decision about the paths: the hook keeps them.
		{name: "queue cannot write spools", env: map[string]string{"OUT_PATHS": out1}, daemon: 503, wantSpool: true,
			wantStderr: "could not queue them (enqueue: refused for the test); spooled " + out1, wantSent: &api.EnqueueRequest{Paths: []string{out1}}},
		{name: "internal error spools", env: map[string]string{"OUT_PATHS": out1}, daemon: 500, wantSpool: true,
			wantStderr: "spooled " + out1, wantSent: &api.EnqueueRequest{Paths: []string{out1}}},
		{name: "request timeout spools", env: map[string]string{"OUT_PATHS": out1}, daemon: 408, wantSpool: true,
			wantStderr: "spooled " + out1, wantSent: &api.EnqueueRequest{Paths: []string{out1}}},
		{name: "too many requests spools", env: map[string]string{"OUT_PATHS": out1}, daemon: 429, wantSpool: true,
			wantStderr: "spooled " + out1, wantSent: &api.EnqueueRequest{Paths: []string{out1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []api.EnqueueRequest
			sock := filepath.Join(t.TempDir(), "none.sock")
			if tc.daemon != 0 {
				sock = fakeDaemon(t, tc.daemon, &got)
			}
			spoolDir := filepath.Join(t.TempDir(), "spool")
			var stderr bytes.Buffer
			code := run([]string{"--socket", sock, "--spool-dir", spoolDir}, env(tc.env), &stderr)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			if tc.wantSent != nil {
				if len(got) != 1 || strings.Join(got[0].Paths, " ") != strings.Join(tc.wantSent.Paths, " ") || got[0].DrvPath != tc.wantSent.DrvPath {
					t.Fatalf("daemon got %+v; want %+v", got, *tc.wantSent)
				}
			}
			files, _ := spool.Files(spoolDir)
			if tc.wantSpool != (len(files) == 1) {
				t.Fatalf("spool files %v; want spooled=%v", files, tc.wantSpool)
			}
			if tc.wantSpool {
				req, err := spool.Read(files[0], json.Unmarshal)
				if err != nil || len(req.Paths) != 1 || req.Paths[0] != out1 {
					t.Fatalf("spooled %+v, %v", req, err)
				}
			}
			if !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Fatalf("stderr %q; want %q", stderr.String(), tc.wantStderr)
			}
		})
	}
}

func TestHookFailsOnlyWhenNeitherHandedOverNorSpooled(t *testing.T) {
	ro := filepath.Join(t.TempDir(), "file")
	os.WriteFile(ro, nil, 0o444) // a file where the spool dir should be
	var stderr bytes.Buffer
	code := run([]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "--spool-dir", ro},
		env(map[string]string{"OUT_PATHS": "/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"}), &stderr)
	if code != 1 || strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 || !strings.Contains(stderr.String(), "nor spool") ||
		!strings.Contains(stderr.String(), "then run: nixpush push /nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1") {
		t.Fatalf("exit %d, stderr %q; want 1 and one line", code, stderr.String())
	}
}

// TestHookBoundedAgainstHungDaemon: a daemon that accepts the connection
// but never answers holds the hook for the hand-off timeout at most; the
// hook then spools and exits 0.
func TestHookBoundedAgainstHungDaemon(t *testing.T) {
	sock := hungDaemon(t)
	spoolDir := filepath.Join(t.TempDir(), "spool")
	var stderr bytes.Buffer
	start := time.Now()
	code := run([]string{"--socket", sock, "--spool-dir", spoolDir},
		env(map[string]string{"OUT_PATHS": "/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"}), &stderr)
	took := time.Since(start)
	// The outcome: it waited for the daemon (not spooling at once), then
	// gave up. The upper bound catches a hang, not a slow machine.
	if code != 0 || took < handoffTimeout || took > handoffTimeout+30*time.Second {
		t.Fatalf("exit %d after %s (hand-off timeout %s): %s", code, took, handoffTimeout, stderr.String())
	}
	if files, _ := spool.Files(spoolDir); len(files) != 1 {
		t.Fatalf("spool: %v", files)
	}
}

// hungDaemon is a socket whose daemon accepts connections and never
// answers, until the test ends.
func hungDaemon(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "hung.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // hold it, answer nothing
		}
	}()
	return sock
}

// TestHookTimeout: --timeout (or NIXPUSH_HOOK_TIMEOUT) sets how long the
// hook waits for a hung daemon before it spools; a bad value keeps the
// default and says so, without failing the build.
func TestHookTimeout(t *testing.T) {
	sock := hungDaemon(t)
	for _, tc := range []struct {
		args     []string
		env      string
		min, max time.Duration
		warns    bool
	}{
		{args: []string{"--timeout", "3s"}, min: 3 * time.Second, max: 30 * time.Second},
		{args: []string{"--timeout=200ms"}, min: 200 * time.Millisecond, max: handoffTimeout},
		{env: "300ms", min: 300 * time.Millisecond, max: handoffTimeout},
		{args: []string{"--timeout", "soon"}, min: handoffTimeout, max: 30 * time.Second, warns: true},
		{env: "-1s", min: handoffTimeout, max: 30 * time.Second, warns: true},
	} {
		spoolDir := filepath.Join(t.TempDir(), "spool")
		vars := map[string]string{"OUT_PATHS": "/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"}
		if tc.env != "" {
			vars["NIXPUSH_HOOK_TIMEOUT"] = tc.env
		}
		var stderr bytes.Buffer
		start := time.Now()
		code := run(append([]string{"--socket", sock, "--spool-dir", spoolDir}, tc.args...), env(vars), &stderr)
		took := time.Since(start)
		if code != 0 || took < tc.min || took > tc.max {
			t.Errorf("%v %q: exit %d after %s, want %s to %s: %s", tc.args, tc.env, code, took, tc.min, tc.max, stderr.String())
		}
		if warned := strings.Contains(stderr.String(), "is not a positive duration"); warned != tc.warns {
			t.Errorf("%v %q: warning %v, want %v: %s", tc.args, tc.env, warned, tc.warns, stderr.String())
		}
		if files, _ := spool.Files(spoolDir); len(files) != 1 {
			t.Errorf("%v %q: spool: %v", tc.args, tc.env, files)
		}
	}
}

// TestHookLinksLittle keeps the hook small and quick to start: Nix runs it
// after every build. No S3, bbolt or logging stacks, and none of the
// packages whose initialisation or dynamic linking cost milliseconds.
func TestHookLinksLittle(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/minio/", "go.etcd.io/bbolt", "github.com/rs/zerolog",
			"github.com/klauspost/", "net", "net/http", "encoding/json", "fmt", "flag", "reflect", "crypto"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") || (strings.HasSuffix(banned, "/") && strings.HasPrefix(dep, banned)) {
				t.Errorf("nixpush-hook links %s", dep)
			}
		}
	}
}

// TestModulePathsAreTheDefaults: the NixOS module points Nix's
// post-build-hook at the bare binary, so the socket and spool it sets up
// must be the ones the binary uses without flags.
func TestModulePathsAreTheDefaults(t *testing.T) {
	src, err := os.ReadFile("../../nixos-module/default.nix")
	if err != nil {
		t.Fatal(err)
	}
	binding := func(name string) string {
		m := regexp.MustCompile(`(?m)^\s*` + name + ` = "([^"]*)";`).FindSubmatch(src)
		if m == nil {
			t.Fatalf("nixos-module/default.nix: no %s = \"...\"; binding", name)
		}
		return string(m[1])
	}
	socket := binding("socket")
	spoolDir := strings.ReplaceAll(binding("spoolDir"), "${stateDir}", binding("stateDir"))
	if socket != api.DefaultSocket || spoolDir != spool.DefaultDir {
		t.Errorf("module: socket %s, spool %s; nixpush-hook's defaults: %s, %s", socket, spoolDir, api.DefaultSocket, spool.DefaultDir)
	}
	if !regexp.MustCompile(`hook = "\$\{cfg.package\}/bin/nixpush-hook";`).Match(src) {
		t.Error("module: post-build-hook is not the nixpush-hook binary itself")
	}
}
