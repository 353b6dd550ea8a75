package retention

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/nixpush/nixpush/layout"
)

// TestRepairDeletesOnlyWhatIsStillBroken (found by TestInterleavings on
// the code before it): verify finds mid and top broken while leaf's
// .narinfo is missing; a push then uploads leaf again (its check after
// writes does) and is acknowledged; repair, listing again under its
// marker, must delete nothing: mid and top are whole again. A path still
// broken goes as before, with its referrers.
func TestRepairDeletesOnlyWhatIsStillBroken(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.add("leaf")
	f.add("mid", "leaf")
	f.add("top", "mid")
	f.add("lone")
	f.add("above-lone", "lone")
	leafKey := layout.NarInfoKey(f.paths["leaf"])
	leaf, err := os.ReadFile(filepath.Join(f.base, leafKey))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{leafKey, layout.NarInfoKey(f.paths["lone"])} {
		if err := os.Remove(filepath.Join(f.base, k)); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Broken != 2 { // mid and above-lone refer to a missing path
		t.Fatalf("verify found %d broken; want mid and above-lone: %+v", rep.Broken, rep.Problems)
	}
	f.put(leafKey, string(leaf)) // pushed again meanwhile
	out, err := Repair(ctx, f.b, rep, RepairOptions{Host: "repair"})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"leaf", "mid", "top"} {
		if !f.has(name) {
			t.Errorf("repair deleted %s, whole again since verify (deleted %v)", name, out.Deleted)
		}
	}
	if f.has("above-lone") {
		t.Errorf("repair kept above-lone, whose reference is still missing (deleted %v)", out.Deleted)
	}
}
