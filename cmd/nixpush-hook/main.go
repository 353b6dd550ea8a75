package main

import (
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/hook"
	"github.com/nixpush/nixpush/internal/version"
	"github.com/nixpush/nixpush/spool"
)

// handoffTimeout bounds the wait for the daemon's acknowledgement; the hook
// then spools instead, so it never holds a build up for much longer.
const handoffTimeout = 1500 * time.Millisecond

// Nix runs this program after every build, so its start-up time is paid per
// build: it links neither flag nor fmt nor net, only what it needs.

const usage = `usage: nixpush-hook [--socket PATH] [--spool-dir DIR] [--timeout DURATION] [--version]
Nix's post-build-hook for nixpush: hands $OUT_PATHS (or the outputs of
$DRV_PATH) to the nixpush daemon, or spools them when it is unreachable.
  --socket PATH     daemon socket (env NIXPUSH_SOCKET; default ` + api.DefaultSocket + `)
  --spool-dir DIR   spool directory (env NIXPUSH_SPOOL_DIR; default ` + spool.DefaultDir + `)
  --timeout DURATION  wait this long for the daemon's answer, then spool
                    (env NIXPUSH_HOOK_TIMEOUT; default 1.5s; more where a
                    socket-activated daemon starts slowly)
`

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	entered := time.Now()
	socket := envOr(getenv, "NIXPUSH_SOCKET", api.DefaultSocket)
	spoolDir := envOr(getenv, "NIXPUSH_SPOOL_DIR", spool.DefaultDir)
	timeout := getenv("NIXPUSH_HOOK_TIMEOUT")
	for len(args) > 0 {
		name, value, hasValue := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		args = args[1:]
		var dst *string
		switch name {
		case "socket":
			dst = &socket
		case "spool-dir":
			dst = &spoolDir
		case "timeout":
			dst = &timeout
		case "h", "help":
			io.WriteString(stderr, usage)
			return 0
		case "version":
			os.Stdout.WriteString("nixpush-hook " + version.Get().String() + "\n")
			return 0
		default:
			io.WriteString(stderr, "nixpush-hook: unknown option "+strqq(name)+"\n"+usage)
			return 2
		}
		if !hasValue {
			if len(args) == 0 {
				io.WriteString(stderr, "nixpush-hook: --"+name+" needs a value\n"+usage)
				return 2
			}
			value, args = args[0], args[1:]
		}
		*dst = value
	}
	wait := handoffWait(timeout, stderr)
	// DRV_PATH goes along with the outputs: the daemon uploads its build log.
	req := api.EnqueueRequest{Paths: strings.Fields(getenv("OUT_PATHS")), DrvPath: getenv("DRV_PATH")}
	if len(req.Paths) == 0 && req.DrvPath == "" {
		io.WriteString(stderr, "nixpush-hook: OUT_PATHS and DRV_PATH are both empty; nothing to push (run me as Nix's post-build-hook)\n")
		return 0
	}
	var connected time.Time
	err := hook.HandoffTraced(socket, req, wait, &connected)
	if spawned := getenv("NIXPUSH_HOOK_TIMING"); spawned != "" && err == nil {
		// For benchmarks (bench/: BenchmarkHooksAtOnce), which set it to
		// the moment they started the hook, in Unix nanoseconds.
		writeTiming(stderr, spawned, entered, connected, time.Now())
	}
	if err == nil {
		return 0
	}
	if api.IsFinal(err) {
		// The daemon looked at the paths and refused them (not store paths,
		// or this caller may not enqueue): spooling would not change its
		// mind, and failing would stop Nix's builds.
		io.WriteString(stderr, "nixpush-hook: daemon refused "+describe(req)+": "+err.Error()+"\n")
		return 0
	}
	// Unreachable, no answer in time, or an answer that the daemon could
	// not take the paths now (5xx: its queue cannot write): the paths are
	// still ours to keep.
	file, serr := spool.Write(spoolDir, req)
	if serr != nil {
		// Neither the daemon nor the spool holds the paths. Exit 1: Nix
		// reports the hook's failure and starts no further builds, so the
		// operator hears of it now rather than finding a cache with holes
		// later (see docs/operations.md, "When the hook cannot hand over").
		io.WriteString(stderr, "nixpush-hook: could not hand "+describe(req)+" to the daemon ("+err.Error()+
			") nor spool them ("+serr.Error()+"); free space or make "+spoolDir+" writable, start nixpush daemon, then run: nixpush push "+pushArgs(req)+"\n")
		return 1
	}
	why := "daemon unreachable"
	if api.IsAPIError(err) {
		why = "daemon could not queue them"
	}
	io.WriteString(stderr, "nixpush-hook: "+why+" ("+err.Error()+"); spooled "+describe(req)+" to "+file+"\n")
	return 0
}

// handoffWait is the wait --timeout (or NIXPUSH_HOOK_TIMEOUT) sets, else
// handoffTimeout. A bad setting must not stop builds: it says so and
// keeps the default.
func handoffWait(timeout string, stderr io.Writer) time.Duration {
	if timeout == "" {
		return handoffTimeout
	}
	d, err := time.ParseDuration(timeout)
	if err != nil || d <= 0 {
		io.WriteString(stderr, "nixpush-hook: timeout "+strqq(timeout)+" is not a positive duration (say 1.5s or 10s); using 1.5s\n")
		return handoffTimeout
	}
	return d
}

func strqq(s string) string { return `"` + s + `"` }

// writeTiming writes "nixpush-hook timing: main=µs connect=µs answer=µs",
// each since spawned (Unix nanoseconds).
func writeTiming(w io.Writer, spawned string, main, connected, answered time.Time) {
	t0, err := strconv.ParseInt(spawned, 10, 64)
	if err != nil {
		return
	}
	us := func(t time.Time) string { return strconv.FormatInt((t.UnixNano()-t0)/1000, 10) }
	io.WriteString(w, "nixpush-hook timing: main="+us(main)+" connect="+us(connected)+" answer="+us(answered)+"\n")
}

func describe(req api.EnqueueRequest) string {
	if len(req.Paths) == 0 {
		return "the outputs of " + req.DrvPath
	}
	return strings.Join(req.Paths, " ")
}

// pushArgs is what to give nixpush push to queue req by hand.
func pushArgs(req api.EnqueueRequest) string {
	if len(req.Paths) == 0 {
		return "$(nix-store -q --outputs " + req.DrvPath + ")"
	}
	return strings.Join(req.Paths, " ")
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}
