package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// cli runs nixpush with args in this process, as main does.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut strings.Builder
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// cleanEnv unsets the variables that stand in for flags, so a test sees
// only the flags it gives.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"NIXPUSH_STORE_URI", "NIXPUSH_SECRET_KEY_FILE", "NIXPUSH_SOCKET", "NIXPUSH_SPOOL_DIR",
		"NIXPUSH_SOCKET_GROUP", "NIXPUSH_SERVE_IDLE", "NIXPUSH_BURST_QUIET", "NIXPUSH_CPUPROFILE", "STATE_DIRECTORY", "CACHE_DIRECTORY"} {
		t.Setenv(k, "")
	}
}

// keygen makes a key pair in a new directory and returns the files.
func keygen(t *testing.T, name string) (sec, pub string) {
	t.Helper()
	dir := t.TempDir()
	if code, _, stderr := cli(t, "keygen", "--name", name, "--out", dir); code != 0 {
		t.Fatalf("keygen: exit %d: %s", code, stderr)
	}
	return filepath.Join(dir, "secret.key"), filepath.Join(dir, "public.key")
}

// TestBadFlags: each bad flag or combination is refused with exit 2 and
// one line naming the flag, before anything is written: the cache
// directory the command names is not created.
func TestBadFlags(t *testing.T) {
	cleanEnv(t)
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	uri := "file://" + cache
	sec, _ := keygen(t, "cli-test-1")
	sec2 := filepath.Join(dir, "same-name.key")
	if b, err := os.ReadFile(sec); err != nil || os.WriteFile(sec2, b, 0o600) != nil {
		t.Fatal(err)
	}
	daemon := []string{"daemon", "--state-dir", dir, "--socket", filepath.Join(dir, "sock"), "--store-uri", uri, "--secret-key-file", sec}
	for _, tc := range []refusal{
		{name: "no command", args: nil, want: "usage: nixpush COMMAND"},
		{name: "unknown command", args: []string{"frobnicate"}, want: `nixpush: unknown command "frobnicate"`, more: true},
		{name: "init without store", args: []string{"init"}, want: "nixpush init: --store-uri is required"},
		{name: "init rotate alone", args: []string{"init", "--store-uri", uri, "--rotate-secret"}, want: "nixpush init: --rotate-secret goes with --create-user NAME"},
		{name: "init credentials alone", args: []string{"init", "--store-uri", uri, "--credentials-file", filepath.Join(dir, "cred")}, want: "nixpush init: --credentials-file goes with --create-user NAME"},
		{name: "init negative expiry", args: []string{"init", "--store-uri", "s3://b?endpoint=127.0.0.1:1", "--expire-days", "-1"}, want: "nixpush init: --expire-days -1: want a number of days above 0"},
		{name: "init public file", args: []string{"init", "--store-uri", uri, "--public-read"}, want: "nixpush init: --public-read and --expire-days apply to S3 buckets only"},
		{name: "init expiry file", args: []string{"init", "--store-uri", uri, "--expire-days", "30"}, want: "nixpush init: --public-read and --expire-days apply to S3 buckets only"},
		{name: "init user file", args: []string{"init", "--store-uri", uri, "--create-user", "u"}, want: "nixpush init: --create-user applies to S3 buckets (MinIO) only"},
		{name: "init policy file", args: []string{"init", "--store-uri", uri, "--print-policy"}, want: "nixpush init: --print-policy applies to S3 buckets only"},
		{name: "init missing key", args: []string{"init", "--store-uri", uri, "--secret-key-file", filepath.Join(dir, "nokey")}, want: "nixpush init: "},
		{name: "init bad scheme", args: []string{"init", "--store-uri", "ftp://x/y"}, want: `nixpush init: store URI "ftp://x/y": unsupported scheme`},
		{name: "gc without store", args: []string{"gc"}, want: "nixpush gc: --store-uri is required"},
		{name: "gc zero grace", args: []string{"gc", "--store-uri", uri, "--grace", "0s"}, want: "nixpush gc: --grace 0s: must be above zero"},
		{name: "gc older below grace", args: []string{"gc", "--store-uri", uri, "--older-than", "1h"}, want: "nixpush gc: --older-than 1h is below --grace 24h"},
		{name: "gc zero window", args: []string{"gc", "--store-uri", uri, "--sweep-window", "0s"}, want: "nixpush gc: --sweep-window 0s: must be above zero"},
		{name: "gc bad age", args: []string{"gc", "--store-uri", uri, "--older-than", "3x"}, want: `invalid value "3x" for flag -older-than`, more: true},
		{name: "verify without store", args: []string{"verify"}, want: "nixpush verify: --store-uri is required"},
		{name: "verify bad key", args: []string{"verify", "--store-uri", uri, "--public-key", "nokey:abc"}, want: `nixpush verify: --public-key "nokey:abc": `},
		{name: "verify repair no time", args: []string{"verify", "--store-uri", uri, "--repair", "--timeout", "0s"}, want: "nixpush verify: --timeout 0s: want a duration above 0"},
		{name: "verify bad exclude", args: []string{"verify", "--store-uri", uri, "--exclude", "("}, want: "nixpush verify: "},
		{name: "verify bad key name", args: []string{"verify", "--store-uri", uri, "--skip-signed-by", "a:b"}, want: `nixpush verify: --skip-signed-by "a:b": want a key name`},
		{name: "gc no cache", args: []string{"gc", "--store-uri", uri}, want: "nixpush gc: --store-uri " + uri + ": no such directory; prepare a cache there first: nixpush init"},
		{name: "verify no cache", args: []string{"verify", "--store-uri", uri}, want: "nixpush verify: --store-uri " + uri + ": no such directory"},
		{name: "pins no cache", args: []string{"pins", "--store-uri", uri}, want: "nixpush pins: --store-uri " + uri + ": no such directory"},
		{name: "unpin no cache", args: []string{"unpin", "--store-uri", uri, "x"}, want: "nixpush unpin: --store-uri " + uri + ": no such directory"},
		{name: "pins without store", args: []string{"pins"}, want: "nixpush pins: --store-uri is required"},
		{name: "pin usage", args: []string{"pin", "--store-uri", uri, "only-a-name"}, want: "nixpush pin: usage: nixpush pin"},
		{name: "pin bad name", args: []string{"pin", "--store-uri", uri, "a/b", "/nix/store"}, want: "nixpush pin: "},
		{name: "unpin usage", args: []string{"unpin", "--store-uri", uri}, want: "nixpush unpin: usage: nixpush unpin"},
		{name: "daemon without key", args: daemon[:len(daemon)-2], want: "nixpush daemon: --secret-key-file is required"},
		{name: "daemon compression", args: append(daemon, "--compression", "lz4"), want: "nixpush daemon: "},
		{name: "daemon jobs", args: append(daemon, "--jobs", "0"), want: "nixpush daemon: --jobs 0: want 1 or more"},
		{name: "daemon trust", args: append(daemon, "--trust-cache-for", "-1s"), want: "nixpush daemon: --trust-cache-for -1s: want a duration of 0s or more"},
		{name: "daemon sweep wait", args: append(daemon, "--max-sweep-wait", "0s"), want: "nixpush daemon: --max-sweep-wait 0s: want a duration above 0"},
		{name: "daemon log level", args: append(daemon, "--log-level", "loud"), want: `nixpush daemon: --log-level "loud": want debug, info, warn or error`},
		{name: "daemon log format", args: append(daemon, "--log-format", "xml"), want: `nixpush daemon: --log-format "xml": want auto`},
		{name: "daemon key name", args: append(daemon, "--skip-signed-by", ""), want: `nixpush daemon: --skip-signed-by "": want a key name`},
		{name: "daemon two keys one name", args: append(daemon, "--secret-key-file", sec2), want: "nixpush daemon: " + sec + " and " + sec2 + ` are both keys named "cli-test-1"`},
		{name: "daemon serve idle", args: daemon, env: []string{"NIXPUSH_SERVE_IDLE=soon"}, want: `nixpush daemon: NIXPUSH_SERVE_IDLE="soon": want a duration`},
		{name: "daemon burst quiet", args: daemon, env: []string{"NIXPUSH_BURST_QUIET=-1s"}, want: `nixpush daemon: NIXPUSH_BURST_QUIET="-1s": want a duration`},
		{name: "keygen without name", args: []string{"keygen", "--out", dir}, want: "nixpush keygen: --name and --out are required"},
		{name: "keygen colon", args: []string{"keygen", "--name", "a:b", "--out", filepath.Join(dir, "keys")}, want: `nixpush keygen: --name "a:b": want a name without colons`},
		{name: "push nothing", args: []string{"push"}, want: "nixpush push: no paths given"},
		{name: "push outside the store", args: []string{"push", dir}, want: "nixpush push: " + dir + " is not in the Nix store"},
		{name: "retry neither", args: []string{"retry"}, want: "nixpush retry: give --all or the failed paths"},
		{name: "wait negative", args: []string{"wait", "--timeout", "-1s"}, want: "nixpush wait: --timeout -1s: want a duration"},
		{name: "wait stray", args: []string{"wait", "now"}, want: `nixpush wait: unexpected argument "now"`},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, cache) })
	}
}

// refusal is a command line nixpush refuses.
type refusal struct {
	name string
	args []string
	env  []string // KEY=VALUE
	want string   // the one line on stderr, from its start
	more bool     // the flag package's error, or an unknown command: the usage follows
}

// check runs the command line and wants it refused, with cache not
// created.
func (tc refusal) check(t *testing.T, cache string) {
	for _, kv := range tc.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	code, stdout, stderr := cli(t, tc.args...)
	if code != 2 || !strings.HasPrefix(stderr, tc.want) {
		t.Fatalf("exit %d, stderr %q; want exit 2 and stderr starting %q", code, stderr, tc.want)
	}
	if tc.args != nil && !tc.more && strings.Count(stderr, "\n") != 1 {
		t.Errorf("stderr is not one line: %q", stderr)
	}
	if stdout != "" {
		t.Errorf("stdout %q; want nothing", stdout)
	}
	if _, err := os.Stat(cache); !os.IsNotExist(err) {
		t.Fatalf("%s exists after a refusal (%v): something was written before the flags were checked", cache, err)
	}
}

// TestUsage: help goes to stdout and exits 0; no command, or a command's
// -h, print the usage on stderr and exit 2.
func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{args: []string{"--help"}, code: 0, stdout: "usage: nixpush COMMAND [flags]"},
		{args: []string{"help"}, code: 0, stdout: "usage: nixpush COMMAND [flags]"},
		{args: nil, code: 2, stderr: "usage: nixpush COMMAND [flags]"},
		{args: []string{"gc", "-h"}, code: 2, stderr: "Usage of nixpush gc:"},
		{args: []string{"verify", "--help"}, code: 2, stderr: "Usage of nixpush verify:"},
		{args: []string{"--version"}, code: 0, stdout: "nixpush "},
		{args: []string{"version"}, code: 0, stdout: "nixpush "},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := cli(t, tc.args...)
			if code != tc.code || !strings.HasPrefix(stdout, tc.stdout) || !strings.HasPrefix(stderr, tc.stderr) ||
				(tc.stdout == "") != (stdout == "") || (tc.stderr == "") != (stderr == "") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stdout %q…, stderr %q…", code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}

// TestKeygen: keygen writes a secret key only its owner reads and the
// public half beside it, prints the public key, and never overwrites a
// secret key.
func TestKeygen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	code, stdout, stderr := cli(t, "keygen", "--name", "cache.example.org-1", "--out", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	sec, pub := filepath.Join(dir, "secret.key"), filepath.Join(dir, "public.key")
	fi, err := os.Stat(sec)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret key: %v, mode %v; want mode 0600", err, fi.Mode())
	}
	secText, _ := os.ReadFile(sec)
	pubText, _ := os.ReadFile(pub)
	sk, err := signature.LoadSecretKey(string(secText))
	if err != nil {
		t.Fatal(err)
	}
	if sk.ToPublicKey().String() != string(pubText) || !strings.HasPrefix(string(pubText), "cache.example.org-1:") {
		t.Fatalf("public.key %q is not the public half of secret.key (%q)", pubText, sk.ToPublicKey())
	}
	if !strings.Contains(stdout, "public key: "+string(pubText)+"\n") {
		t.Errorf("stdout %q does not show the public key", stdout)
	}
	code, _, stderr = cli(t, "keygen", "--name", "cache.example.org-2", "--out", dir)
	if code != 1 || !strings.Contains(stderr, "refusing to overwrite a signing key") {
		t.Fatalf("second keygen: exit %d, stderr %q; want exit 1 and a refusal", code, stderr)
	}
	if again, _ := os.ReadFile(sec); string(again) != string(secText) {
		t.Fatal("the secret key was overwritten")
	}
}

// TestNoDaemon: the commands that talk to the daemon say, in one line,
// that it does not answer and how to fix that.
func TestNoDaemon(t *testing.T) {
	cleanEnv(t)
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, cmd := range []string{"status", "wait"} {
		t.Run(cmd, func(t *testing.T) {
			code, stdout, stderr := cli(t, cmd, "--socket", sock)
			if code != 1 || stdout != "" || !strings.HasPrefix(stderr, "nixpush "+cmd+": ") ||
				!strings.Contains(stderr, "is nixpush daemon running? (systemctl status nixpush, or pass --socket)") || strings.Count(stderr, "\n") != 1 {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and one line asking whether the daemon runs", code, stdout, stderr)
			}
		})
	}
}
