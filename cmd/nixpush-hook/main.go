// Command nixpush-hook is Nix's post-build-hook for nixpush: it hands the
// paths Nix just built to the nixpush daemon and returns at once. It never
// fails a build: when the daemon cannot take the paths within a bounded
// time it writes them to the spool, which the daemon imports later.
//
//	nix.settings.post-build-hook = "/path/to/nixpush-hook";
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nixpush/nixpush/hook"
)

// handoffTimeout bounds the wait for the daemon's acknowledgement; the hook
// then spools instead, so it never holds a build up for much longer.
const handoffTimeout = 1500 * time.Millisecond

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush-hook", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", envOr(getenv, "NIXPUSH_SOCKET", hook.DefaultSocket), "daemon socket (env NIXPUSH_SOCKET)")
	spool := fs.String("spool-dir", envOr(getenv, "NIXPUSH_SPOOL_DIR", hook.DefaultSpoolDir), "where to leave paths when the daemon is unreachable (env NIXPUSH_SPOOL_DIR)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	req := hook.EnqueueRequest{Paths: strings.Fields(getenv("OUT_PATHS")), DrvPath: getenv("DRV_PATH")}
	if len(req.Paths) > 0 {
		req.DrvPath = "" // the daemon needs the drv only when Nix 2.8.0 gave no outputs
	}
	if len(req.Paths) == 0 && req.DrvPath == "" {
		fmt.Fprintln(stderr, "nixpush-hook: OUT_PATHS and DRV_PATH are both empty; nothing to push (run me as Nix's post-build-hook)")
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), handoffTimeout)
	defer cancel()
	_, err := hook.NewClient(*socket).Enqueue(ctx, req)
	if err == nil {
		return 0
	}
	if hook.IsAPIError(err) {
		// The daemon looked at the paths and refused them: spooling would
		// not change its mind, and failing would stop Nix's builds.
		fmt.Fprintf(stderr, "nixpush-hook: daemon refused %s: %v\n", describe(req), err)
		return 0
	}
	file, serr := hook.Spool(*spool, req)
	if serr != nil {
		fmt.Fprintf(stderr, "nixpush-hook: could not hand %s to the daemon (%v) nor spool them (%v); start nixpush daemon or make %s writable\n",
			describe(req), err, serr, *spool)
		return 1
	}
	fmt.Fprintf(stderr, "nixpush-hook: daemon unreachable (%v); spooled %s to %s\n", err, describe(req), file)
	return 0
}

func describe(req hook.EnqueueRequest) string {
	if len(req.Paths) == 0 {
		return "the outputs of " + req.DrvPath
	}
	return strings.Join(req.Paths, " ")
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}
