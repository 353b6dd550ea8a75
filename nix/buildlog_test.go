package nix

import (
	"context"
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
