package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/nixpush/nixpush/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: nixpush COMMAND [flags]

commands:
  daemon   run the uploader: queue what the hook hands over, push it to the cache
  push     queue store paths (with their closures) for upload: nixpush push [--wait] PATH...
  status   show the queue: nixpush status [--json]
  wait     block until the queue is drained: nixpush wait [--timeout DURATION]
  retry    re-queue failed items: nixpush retry [--all | PATH...]
  keygen   make a signing key pair: nixpush keygen --name NAME --out DIR
  init     prepare a cache: nixpush init --store-uri URI [--public-read] [--expire-days N] [--print-policy]
  check    check the cache, keys, hook and daemon: nixpush check --store-uri URI [--secret-key-file F] [--public-key KEY]
  version  print the version and commit (also: nixpush --version)
  gc       delete what no pin and no recent root needs, closure-safe: nixpush gc [--older-than 30d] [--grace 24h] [--dry-run] [--json]
  pin      keep a closure in the cache whatever its age: nixpush pin NAME PATH
  unpin    remove a pin: nixpush unpin NAME
  pins     list the pins: nixpush pins [--json]
  verify   check the cache is whole: nixpush verify [--public-key KEY]... [--full] [--repair] [--json]

Run 'nixpush COMMAND -h' for a command's flags.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmds := map[string]func(context.Context, []string, io.Writer, io.Writer) int{
		"daemon": runDaemon,
		"push":   runPush,
		"status": runStatus,
		"wait":   runWait,
		"retry":  runRetry,
		"keygen": runKeygen,
		"init":   runInit,
		"check":  runCheck,
		"version": func(_ context.Context, _ []string, stdout, _ io.Writer) int {
			fmt.Fprintln(stdout, "nixpush", version.Get())
			return 0
		},
		"gc":     runGC,
		"pin":    runPin,
		"unpin":  runUnpin,
		"pins":   runPins,
		"verify": runVerify,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		if args[0] == "--version" || args[0] == "-version" {
			return cmds["version"](ctx, nil, stdout, stderr)
		}
		if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "nixpush: unknown command %q\n%s", args[0], usage)
		return 2
	}
	return cmd(ctx, args[1:], stdout, stderr)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// parseNoArgs parses the flags of a command that takes no arguments; on
// bad flags or a stray argument it has told the user (on the flag set's
// output) and returns false: the command exits 2.
func parseNoArgs(fs *flag.FlagSet, args []string) bool {
	if err := fs.Parse(args); err != nil {
		return false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return false
	}
	return true
}
