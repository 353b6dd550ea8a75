package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestGCRefusesUnsafeSettings: nixpush gc refuses, in one line naming the
// flag and the fix, a zero grace, an --older-than below it and a zero
// sweep window, before it opens the store.
func TestGCRefusesUnsafeSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no grace", []string{"--grace", "0s"}, "--grace 0s: must be above zero"},
		{"older-than below grace", []string{"--older-than", "1h", "--grace", "2h"}, "--older-than 1h is below --grace 2h"},
		{"older-than zero", []string{"--older-than", "0s", "--grace", "1s"}, "set --older-than to at least 1s"},
		{"no window", []string{"--sweep-window", "0s"}, "--sweep-window 0s: must be above zero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"gc", "--store-uri", "file://" + t.TempDir()}, tc.args...)
			if code := run(context.Background(), args, &stdout, &stderr); code != 2 {
				t.Fatalf("exit %d; want 2\n%s", code, stderr.String())
			}
			if got := stderr.String(); !strings.Contains(got, tc.want) || strings.Count(got, "\n") != 1 {
				t.Fatalf("stderr %q; want one line with %q", got, tc.want)
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"gc", "--help"}, &stdout, &stderr); !strings.Contains(stderr.String(), "-single-gc") {
		t.Fatalf("gc --help (exit %d) does not show --single-gc:\n%s", code, stderr.String())
	}
}
