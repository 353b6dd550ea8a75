package nix

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestKeepsBuildLogs(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	if !(&Client{}).KeepsBuildLogs(ctx) {
		t.Fatal("KeepsBuildLogs: false with Nix's default settings")
	}
	if (&Client{Env: []string{"NIX_CONFIG=keep-build-log = false"}}).KeepsBuildLogs(ctx) {
		t.Fatal("KeepsBuildLogs: true with keep-build-log = false")
	}
}

// TestBuildLogsReadsNixLogs reads back, from the files Nix 2.8 writes
// (bzip2, level 9), a short log and one of several bzip2 blocks, and
// compares them with what nix-store --read-log prints.
func TestBuildLogsReadsNixLogs(t *testing.T) {
	needNix(t)
	s := seed(t)
	for _, tc := range []struct{ name, script string }{
		{"short", "echo " + s + "; echo $out > $out"},
		// About 2.5 MB of numbered lines: three blocks of 900 kB.
		{"long", "i=0; while [ $i -lt 120000 ]; do echo " + s + " line $i of a long build log; i=$((i+1)); done; echo $out > $out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expr := fmt.Sprintf(`derivation { name = "log-%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" %q ]; }`, tc.name, tc.script)
			out := nixCmd(t, "nix-build", "--no-out-link", "-E", expr)
			drv := nixCmd(t, "nix-store", "--query", "--deriver", out)
			want := nixCmd(t, "nix-store", "--read-log", drv)
			r, err := (&BuildLogs{}).Open(context.Background(), drv)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(got)) != want {
				t.Fatalf("read %d bytes, nix-store --read-log %d; they differ", len(got), len(want))
			}
			if !strings.Contains(want, s) {
				t.Fatalf("the log lacks the line the build printed")
			}
		})
	}
}
