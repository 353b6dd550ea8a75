package main

import (
	"context"
	"strings"
	"testing"
)

// TestStrayArgument: a command that takes no arguments refuses one before
// it does anything, exits 2 and names the command and the argument.
func TestStrayArgument(t *testing.T) {
	for _, cmd := range []string{"daemon", "check", "gc", "pins", "verify", "status", "wait", "init", "keygen"} {
		t.Run(cmd, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run(context.Background(), []string{cmd, "stray"}, &stdout, &stderr)
			want := "nixpush " + cmd + ": unexpected argument \"stray\"\n"
			if code != 2 || stderr.String() != want || stdout.Len() != 0 {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 2 and stderr %q", code, stdout.String(), stderr.String(), want)
			}
		})
	}
}
