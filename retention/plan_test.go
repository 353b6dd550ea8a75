package retention

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"

	"github.com/nix-community/go-nix/pkg/narinfo"
)

// planGraph is a walk's result built in memory, with no store: .narinfos,
// NARs, listings, logs, realisations, roots and pins as the walk records
// them.
type planGraph struct {
	t *testing.T
	g *Graph
	w *walker
}

func newPlanGraph(t *testing.T) *planGraph {
	g := newGraph()
	return &planGraph{t: t, g: g, w: &walker{g: g}}
}

// hash is a nixbase32 hash part of one repeated letter.
func hash(c byte) string { return strings.Repeat(string(c), 32) }

// narInfo records the .narinfo of path <hash(c)>-<c>, written at mod,
// referring to refs, with its NAR (listed, 100 bytes) and, when drv is
// set, a Deriver.
func (p *planGraph) narInfo(c byte, mod time.Time, drv string, refs ...byte) {
	p.t.Helper()
	ni := &narinfo.NarInfo{StorePath: "/nix/store/" + hash(c) + "-" + string(c), URL: "nar/" + hash(c) + ".nar",
		Compression: "none", FileSize: 100, Deriver: drv}
	for _, r := range refs {
		ni.References = append(ni.References, hash(r)+"-"+string(r))
	}
	p.g.addNarInfo(store.Object{Key: hash(c) + ".narinfo", LastModified: mod}, ni, nil, false, false)
	p.w.narFile(store.Object{Key: ni.URL, Size: 100, LastModified: mod})
}

func (p *planGraph) root(c byte, at time.Time) {
	i := p.g.intern(hash(c))
	p.g.roots[i], p.g.rootRecords[i] = at, true
}

func (p *planGraph) paths(nodes []int32) []string {
	var out []string
	for _, i := range nodes {
		out = append(out, p.g.hashOf(i)[:1])
	}
	return out
}

// TestPlanWithoutStore builds gc's plan from a walk's result in memory and
// checks what goes, in which waves, and what is kept and why.
func TestPlanWithoutStore(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	old, recent := now.Add(-90*24*time.Hour), now.Add(-time.Minute)
	opts := GCOptions{OlderThan: 30 * 24 * time.Hour, Grace: 24 * time.Hour}
	build := func() *planGraph {
		p := newPlanGraph(t)
		// c → b → a: nothing keeps them.
		p.narInfo('a', old, "")
		p.narInfo('b', old, "", 'a')
		p.narInfo('c', old, hash('l')+"-c.drv", 'b')
		// d, pinned, → f; g, a recent root, → h; i, within the grace.
		p.narInfo('d', old, hash('m')+"-d.drv", 'f')
		p.narInfo('f', old, "")
		p.narInfo('g', old, "", 'h')
		p.narInfo('h', old, "")
		p.narInfo('i', recent, "")
		p.g.Pins = append(p.g.Pins, layout.Pin{Name: "d", Path: "/nix/store/" + hash('d') + "-d"})
		p.root('g', recent)
		p.root('c', old)
		p.g.rootBatches[layout.RootBatchPrefix+"old"] = old
		// Orphan NARs, one old and one recent; c's listing; the logs of
		// c's and d's derivations; realisations of c and d.
		p.w.narFile(store.Object{Key: "nar/" + hash('j') + ".nar", Size: 7, LastModified: old})
		p.w.narFile(store.Object{Key: "nar/" + hash('k') + ".nar", Size: 9, LastModified: recent})
		p.w.listing(store.Object{Key: hash('c') + ".ls", LastModified: old})
		p.w.log(store.Object{Key: layout.LogPrefix + hash('l') + "-c.drv", LastModified: old})
		p.w.log(store.Object{Key: layout.LogPrefix + hash('m') + "-d.drv", LastModified: old})
		for _, c := range []byte{'c', 'd'} {
			p.g.realisations = append(p.g.realisations, realisation{key: p.g.addStr(layout.RealisationPrefix + string(c) + ".doi"),
				mod: old.UnixNano(), out: p.g.intern(hash(c))})
		}
		return p
	}
	pending := pendingUploads{
		uploads: []store.PendingUpload{{Key: "nar/x", ID: "1", Initiated: old}, {Key: "nar/y", ID: "2", Initiated: old},
			{Key: "nar/z", ID: "3", Initiated: recent}},
		markers: map[string]time.Time{layout.UploadMarkerKey("nar/y", "2"): recent, layout.UploadMarkerPrefix + "stale": old},
	}

	for _, tc := range []struct {
		name        string
		late        []late
		waves       [][]string
		kept        Kept
		nars, bytes int
	}{
		{name: "as walked", waves: [][]string{{"c"}, {"b"}, {"a"}},
			kept: Kept{Paths: 5, Pinned: 1, Rooted: 1, InGrace: 1, NARs: 6, Bytes: 500, Uploads: 1}, nars: 4, bytes: 307},
		{name: "a pin taken since the walk", late: []late{{key: layout.PinPrefix + "late", hashes: []string{hash('b')}}},
			waves: [][]string{{"c"}}, kept: Kept{Paths: 7, Pinned: 1, Rooted: 1, InGrace: 1, Late: 1, NARs: 8, Bytes: 700, Uploads: 1}, nars: 2, bytes: 107},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := build()
			live := markLive(p.g, now, opts.OlderThan, opts.Grace)
			live.addLate(tc.late)
			plan := planGC(p.g, live, pending, now, opts)
			var waves [][]string
			start := 0
			for _, end := range plan.waves.ends {
				waves = append(waves, p.paths(plan.waves.order[start:end]))
				start = end
			}
			if !slices.EqualFunc(waves, tc.waves, slices.Equal) || plan.waves.stuck != 0 {
				t.Errorf("waves %v (%d stuck), want %v", waves, plan.waves.stuck, tc.waves)
			}
			if plan.Kept != tc.kept {
				t.Errorf("kept %+v, want %+v", plan.Kept, tc.kept)
			}
			d := plan.Deleted
			if d.NARs != tc.nars || d.Bytes != int64(tc.bytes) || d.Listings != 1 || d.Logs != 1 || d.Realisations != 1 ||
				d.RootRecords != 2 || d.Uploads != 1 || d.UploadMarkers != 1 || d.Paths != nil || d.Waves != 0 {
				t.Errorf("deleted %+v", d)
			}
			if want := []string{layout.RootBatchPrefix + "old", layout.RootPrefix + hash('c')}; !slices.Equal(plan.records, want) {
				t.Errorf("root records %v, want %v", plan.records, want)
			}
			if want := []string{layout.RealisationPrefix + "c.doi"}; !slices.Equal(plan.realisations, want) {
				t.Errorf("realisations %v, want %v", plan.realisations, want)
			}
			if len(plan.uploads) != 1 || plan.uploads[0].ID != "1" {
				t.Errorf("uploads to abort %v, want nar/x's", plan.uploads)
			}
			var want []string
			for _, w := range tc.waves {
				want = append(want, "/nix/store/"+hash(w[0][0])+"-"+w[0])
			}
			slices.Sort(want)
			if got := plan.deletedPaths(); !slices.Equal(got, want) {
				t.Errorf("deleted paths %v, want %v", got, want)
			}
		})
	}
}

// TestPlanWavesCycle: paths in a reference cycle come last, after the
// waves, and never go.
func TestPlanWavesCycle(t *testing.T) {
	p := newPlanGraph(t)
	p.narInfo('a', time.Time{}, "", 'b')
	p.narInfo('b', time.Time{}, "", 'a')
	p.narInfo('c', time.Time{}, "", 'a')
	a, _ := p.g.lookup(hash('a'))
	b, _ := p.g.lookup(hash('b'))
	c, _ := p.g.lookup(hash('c'))
	w := planWaves(p.g, []int32{a, b, c})
	if !slices.Equal(p.paths(w.order), []string{"c", "a", "b"}) || !slices.Equal(w.ends, []int{1}) || w.stuck != 2 {
		t.Fatalf("waves %+v", w)
	}
}
