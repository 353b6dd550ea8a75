package narpack

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"

	"github.com/nixpush/nixpush/nix"
)

// fileInfo makes a store path in dir holding content (a read-only file)
// and returns its path info as the Nix database would have it.
func fileInfo(t testing.TB, dir string, content []byte) nix.PathInfo {
	t.Helper()
	p := filepath.Join(dir, "00000000000000000000000000000000-file")
	if err := os.WriteFile(p, content, 0o444); err != nil {
		t.Fatal(err)
	}
	h := newCounter()
	if err := nar.DumpPath(h, p); err != nil {
		t.Fatal(err)
	}
	return nix.PathInfo{Path: p, NarHash: h.hash(), NarSize: h.n}
}
