package retention

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/nixpush/nixpush/internal/synthcache"
	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"
)

var update = flag.Bool("update", false, "rewrite the golden files of TestGCSameSets")

// listKeys is every key of the store, sorted.
func listKeys(t *testing.T, b store.Bucket) []string {
	t.Helper()
	var keys []string
	if err := b.List(context.Background(), "", func(o store.Object) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys) // a file store lists in directory order
	return keys
}

// TestGCSameSets runs gc on a generated cache of 5,000 paths (dead
// closures, pins, roots, realisations, logs, listings, .narinfos in the
// grace period) and compares what it deleted, and its report's figures,
// with testdata/gc-synth-5000.golden, which the implementation before the
// compact graph and the new walk cache wrote (go test -run
// TestGCSameSets -update): a new graph or cache must keep and delete
// exactly the same objects. It runs gc twice, the second time from the
// walk cache (which must read no .narinfo, and delete nothing), and
// verify after.
func TestGCSameSets(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c, err := synthcache.WriteDir(ctx, dir, synthcache.Defaults(5000, 7))
	if err != nil {
		t.Fatal(err)
	}
	b, err := store.NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := listKeys(t, b)
	cache, err := OpenCache(filepath.Join(t.TempDir(), "walk.cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	opts := GCOptions{OlderThan: 30 * 24 * time.Hour, Grace: 24 * time.Hour, Host: "test", Walk: WalkOptions{Cache: cache}}
	rep, err := GC(ctx, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	after := listKeys(t, b)
	var deleted []string
	for _, k := range before {
		if _, ok := slices.BinarySearch(after, k); !ok && !strings.HasPrefix(k, layout.Prefix) {
			deleted = append(deleted, k)
		}
	}
	figures, _ := json.Marshal(struct {
		Kept                                                   Kept
		Paths, NARs, Listings, RootRecords, Logs, Realisations int
		Bytes                                                  int64
	}{rep.Kept, len(rep.Deleted.Paths), rep.Deleted.NARs, rep.Deleted.Listings, rep.Deleted.RootRecords, rep.Deleted.Logs, rep.Deleted.Realisations, rep.Deleted.Bytes})
	got := fmt.Sprintf("%s\n%s\n", figures, strings.Join(deleted, "\n"))
	golden := filepath.Join("testdata", "gc-synth-5000.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		t.Errorf("gc of the synthetic cache differs from %s: %d lines, want %d; figures\n%s\nwant\n%s", golden, len(gl), len(wl), gl[0], wl[0])
		for _, l := range wl[1:] {
			if _, ok := slices.BinarySearch(gl[1:len(gl)-1], l); !ok && l != "" {
				t.Errorf("not deleted now: %s", l)
				break
			}
		}
		for _, l := range gl[1:] {
			if _, ok := slices.BinarySearch(wl[1:len(wl)-1], l); !ok && l != "" {
				t.Errorf("deleted now only: %s", l)
				break
			}
		}
	}
	if rep.Kept.Pinned == 0 || rep.Deleted.Realisations == 0 || rep.Deleted.Logs == 0 || rep.Deleted.Listings == 0 || rep.Kept.InGrace == 0 || len(rep.Deleted.Paths) == 0 {
		t.Errorf("the synthetic cache lacks a case: %+v", figures)
	}

	again, err := GC(ctx, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.Walk.Read != 0 || len(again.Deleted.Paths) != 0 || again.Deleted.NARs != 0 {
		t.Errorf("second gc: read %d objects, deleted %d paths, %d NARs; want none", again.Walk.Read, len(again.Deleted.Paths), again.Deleted.NARs)
	}
	pk, err := parsePublicKey(c.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Verify(ctx, b, VerifyOptions{Keys: pk, Walk: WalkOptions{Cache: cache}})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Whole() || v.Paths != rep.Kept.Paths {
		t.Errorf("verify after gc: %d paths (want %d), problems %v", v.Paths, rep.Kept.Paths, v.Problems[:min(3, len(v.Problems))])
	}
}

func parsePublicKey(s string) ([]signature.PublicKey, error) {
	k, err := signature.ParsePublicKey(s)
	return []signature.PublicKey{k}, err
}

// TestNARKeys: NAR keys of the usual form are kept as a digest and an end
// and read back the same; others (an odd end, a digest that is not
// nixbase32 of 32 bytes, another folder) are kept whole; a key looks up
// its own NAR and no other.
func TestNARKeys(t *testing.T) {
	keys := []string{
		"nar/1bq8q4dg1m7x2p8f5n9l3lq6dq0w3v1cghs0j1k3r5d2b7a3fk4z.nar",
		"nar/1bq8q4dg1m7x2p8f5n9l3lq6dq0w3v1cghs0j1k3r5d2b7a3fk4z.nar.xz",
		"nar/1bq8q4dg1m7x2p8f5n9l3lq6dq0w3v1cghs0j1k3r5d2b7a3fk4z.nar.zst",
		"nar/0000000000000000000000000000000000000000000000000000.nar.bz2",
		"nar/1bq8q4dg1m7x2p8f5n9l3lq6dq0w3v1cghs0j1k3r5d2b7a3fk4z.nar.foo", // odd end
		"nar/ebq8q4dg1m7x2p8f5n9l3lq6dq0w3v1cghs0j1k3r5d2b7a3fk4z.nar",     // e is not nixbase32
		"nar/zzq8q4dg1m7x2p8f5n9l3lq6dq0w3v1cghs0j1k3r5d2b7a3fk4z.nar",     // over 32 bytes
		"nar/short.nar",
		"other/1bq8q4dg1m7x2p8f5n9l3lq6dq0w3v1cghs0j1k3r5d2b7a3fk4z.nar",
	}
	wantStd := []bool{true, true, true, true, false, false, false, false, false}
	g := &Graph{}
	for k, key := range keys {
		if _, _, ok := parseNARKey(key); ok != wantStd[k] {
			t.Errorf("parseNARKey(%s): usual form %v, want %v", key, ok, wantStd[k])
		}
		if j := g.internNAR(key); j != int32(k) {
			t.Errorf("internNAR(%s) = %d, want %d", key, j, k)
		}
	}
	for k, key := range keys {
		if got := g.narKey(int32(k)); got != key {
			t.Errorf("narKey(%d) = %s, want %s", k, got, key)
		}
		if j, ok := g.narLookup(key); !ok || j != int32(k) {
			t.Errorf("narLookup(%s) = %d, %v; want %d", key, j, ok, k)
		}
	}
	if _, ok := g.narLookup("nar/1bq8q4dg1m7x2p8f5n9l3lq6dq0w3v1cghs0j1k3r5d2b7a3fk4z.nar.br"); ok {
		t.Error("a key never added was found")
	}
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	order := []int32{0, 1, 2, 3, 4, 5, 6, 7, 8}
	slices.SortFunc(order, g.compareNARKeys)
	for k, j := range order {
		if g.narKey(j) != sorted[k] {
			t.Errorf("compareNARKeys: %d-th is %s, want %s", k, g.narKey(j), sorted[k])
		}
	}
}
