package nix

import (
	"context"
	"slices"
	"testing"
)

// TestCheckValidity asks the real Nix: a built path is valid, a path
// never built (a store path of the right shape) is not.
func TestCheckValidity(t *testing.T) {
	needNix(t)
	top := buildRefs(t)
	missing := DefaultStoreDir + "/00000000000000000000000000000000-never-built"
	c := &Client{}
	valid, invalid, err := c.CheckValidity(context.Background(), []string{missing, top})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(valid, []string{top}) || !slices.Equal(invalid, []string{missing}) {
		t.Fatalf("valid %q, invalid %q; want %q and %q", valid, invalid, []string{top}, []string{missing})
	}
	if v, i, err := c.CheckValidity(context.Background(), nil); err != nil || v != nil || i != nil {
		t.Fatalf("no paths: %q, %q, %v", v, i, err)
	}
}
