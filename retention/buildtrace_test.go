package retention

import (
	"context"
	"crypto/sha256"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nixpush/nixpush/layout"
)

// buildTrace puts Nix 2.35's build trace entry of name's derivation's
// output "out", whose outPath is name's path (a base name, as Nix writes
// it); it returns its key.
func (f *fixture) buildTrace(name string) string {
	f.t.Helper()
	p, ok := f.paths[name]
	if !ok { // a path the cache never held
		h := sha256.Sum256([]byte(name))
		p = "/nix/store/" + nixbase32.EncodeToString(h[:20]) + "-" + name
	}
	key := layout.BuildTraceKey(f.drv(name), "out")
	f.put(key, `{"outPath":"`+filepath.Base(p)+`","signatures":[{"keyName":"test-1","sig":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}]}`)
	return key
}

// TestGCBuildTraces: gc treats a build-trace-v2 object as a realisation,
// beside one (as nixpush writes both) or alone (as Nix 2.35 writes it):
// one whose outPath is kept stays, one whose outPath goes and is older
// than --grace goes before that .narinfo, a young one keeps its outPath.
func TestGCBuildTraces(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("base")
	f.add("app", "base")
	f.add("old-dep", "base")
	f.add("old", "old-dep")
	f.add("ca-out")  // no root: kept by its young build trace alone
	f.add("ca-both") // no root: kept by its young build trace, its realisation old
	f.root("app", time.Now())
	f.root("old", time.Now().Add(-48*time.Hour))
	keep := []string{f.buildTrace("app"), f.realisation("app"), f.buildTrace("base")}
	traces := map[string]string{"old": f.buildTrace("old"), "old-dep": f.buildTrace("old-dep")}
	gone := []string{traces["old"], f.realisation("old"), traces["old-dep"], f.buildTrace("never-pushed")}
	keep = append(keep, f.realisation("ca-both"))
	f.age(time.Now().Add(-2 * time.Hour))
	keep = append(keep, f.buildTrace("ca-out"), f.buildTrace("ca-both"))

	var order []string
	opts := GCOptions{OlderThan: 24 * time.Hour, Grace: time.Hour, Walk: WalkOptions{Cache: f.cache()},
		Deleting: func(key string) { order = append(order, key) }}
	rep, err := GC(ctx, f.b, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{f.paths["old"], f.paths["old-dep"]}
	slices.Sort(want)
	if !slices.Equal(rep.Deleted.Paths, want) || rep.Deleted.Realisations != len(gone) {
		t.Fatalf("deleted %+v; want paths %v, %d realisations", rep.Deleted, want, len(gone))
	}
	for _, key := range keep {
		if !f.exists(key) {
			t.Errorf("%s was deleted", key)
		}
	}
	for _, key := range gone {
		if f.exists(key) {
			t.Errorf("%s was kept", key)
		}
	}
	for _, name := range []string{"ca-out", "ca-both"} {
		if !f.has(name) {
			t.Errorf("the output %s of a build trace within the grace period was deleted", name)
		}
	}
	for _, name := range []string{"old", "old-dep"} {
		r, ni := slices.Index(order, traces[name]), slices.Index(order, layout.NarInfoKey(f.paths[name]))
		if r < 0 || ni < 0 || r > ni {
			t.Errorf("deletion order %v: the build trace of %s must go before its .narinfo", order, name)
		}
	}
	again, err := GC(ctx, f.b, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Deleted.Paths) != 0 || again.Deleted.Realisations != 0 || again.Walk.Read != 0 {
		t.Fatalf("second gc: deleted %+v, read %d; want nothing deleted or read (build traces remembered)", again.Deleted, again.Walk.Read)
	}
}

// TestVerifyDanglingBuildTrace: verify reports a build-trace-v2 object
// whose outPath has no .narinfo, beside the realisation in the old layout,
// and repair deletes both (and nothing else).
func TestVerifyDanglingBuildTrace(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add("kept")
	ok := []string{f.buildTrace("kept"), f.realisation("kept")}
	bad := []string{f.buildTrace("gone"), f.realisation("gone"), f.buildTrace("gone-too")}
	rep, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Whole() || rep.Dangling != len(bad) || rep.Broken != 0 || len(rep.Problems) != len(bad) {
		t.Fatalf("verify: %+v", rep)
	}
	var details []string
	for _, p := range rep.Problems {
		if p.Kind != RealisationDangling || !strings.Contains(p.Path, "-gone") {
			t.Fatalf("verify: %+v", p)
		}
		details = append(details, p.Detail)
	}
	for _, key := range bad {
		if !slices.ContainsFunc(details, func(d string) bool { return strings.Contains(d, key) }) {
			t.Errorf("verify names no problem with %s: %v", key, details)
		}
	}
	repaired, err := Repair(ctx, f.b, rep, RepairOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if repaired.Realisations != len(bad) || len(repaired.Deleted) != 0 || !f.has("kept") {
		t.Fatalf("repair: %+v", repaired)
	}
	for _, key := range bad {
		if f.exists(key) {
			t.Errorf("repair left %s", key)
		}
	}
	for _, key := range ok {
		if !f.exists(key) {
			t.Errorf("repair deleted %s", key)
		}
	}
	after, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil || !after.Whole() {
		t.Fatalf("verify after repair: %v, %+v", err, after)
	}
}
