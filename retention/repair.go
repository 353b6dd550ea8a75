package retention

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"
)

// Repaired is what a repair deleted.
type Repaired struct {
	// Deleted are the paths whose .narinfo went: the broken ones and every
	// path referring to one, however indirectly.
	Deleted []string `json:"deleted"`
	NARs    int      `json:"nars"` // bad NAR objects deleted
	// Realisations deleted: those pointing at a missing path or at one
	// deleted here (first). They are not pushed again: the daemon pushes
	// a realisation only when the hook hands it the derivation.
	Realisations int `json:"realisations"`
	// Warnings: what went wrong without undoing the repair (its marker
	// could not be marked finished).
	Warnings []string `json:"warnings,omitempty"`
}

// RepairOptions say how to repair.
type RepairOptions struct {
	Host   string
	Window time.Duration // as gc's; 0 means DefaultWindow
	// SingleGC: only one gc or repair ever runs on this store (as gc's).
	SingleGC bool
}

// Repair deletes the .narinfos of the broken paths of rep and of every
// path referring to them, referrers first (the cache stays closed at
// each step), their NAR listings, and the NAR objects found bad; before
// them, the realisations pointing at a path missing or deleted here. It
// holds gc's marker while it deletes, so pushing daemons check again
// what they relied on. Pushing the deleted paths again is the caller's.
func Repair(ctx context.Context, b store.Bucket, rep *VerifyReport, opts RepairOptions) (*Repaired, error) {
	if rep.g == nil {
		return nil, errors.New("repair: no walk to repair from")
	}
	if len(rep.broken) == 0 && len(rep.badNAR) == 0 && rep.Dangling == 0 {
		return &Repaired{}, nil
	}
	// The same exclusion as gc's: no gc or other repair sweeps beside it.
	window := opts.Window
	if window <= 0 {
		window = DefaultWindow
	}
	sw, err := startSweep(ctx, b, layout.Sweep{Host: opts.Host, Kind: "repair", WindowSeconds: seconds(window)}, window, opts.SingleGC)
	if err != nil {
		return nil, err
	}
	out := &Repaired{}
	defer func() {
		if err := sw.end(ctx); err != nil {
			out.Warnings = append(out.Warnings, err.Error())
		}
	}()
	// List again under the marker: a .narinfo written since verify's walk
	// and referring to a broken path goes too (one written after the
	// marker is its daemon's to check again).
	walk := rep.walk
	walk.Progress = nil
	g, err := Walk(ctx, b, walk)
	if err != nil {
		return nil, err
	}
	doomed := doomedPaths(rep, g)
	return out, repairSweep(ctx, sw.deleter(nil), g, doomed, rep, out)
}

// doomedPaths is the nodes of g, the walk under repair's marker, whose
// .narinfo goes: those verify found broken (rep) and still broken, and
// every path referring to one, however indirectly.
func doomedPaths(rep *VerifyReport, g *Graph) []bool {
	// Referrers of each node, to find everything above the broken paths.
	above := make(map[int32][]int32)
	for i := range int32(g.nodeCount()) {
		if g.node(i).present {
			for _, r := range g.refsOf(i) {
				above[r] = append(above[r], i)
			}
		}
	}
	// Only what is still broken under the marker goes: since verify's
	// walk a push may have uploaded again what a broken .narinfo lacked
	// (its check after writes does exactly that), and deleting it then
	// would break what that push acknowledged.
	unseen := make(map[string]bool) // paths with a problem a listing cannot show
	for _, p := range rep.Problems {
		if p.Kind == Unreadable || p.Kind == Signature || p.Kind == NARHash {
			unseen[p.Path] = true
		}
	}
	doomed := make([]bool, g.nodeCount())
	var stack []int32
	for _, old := range rep.broken {
		i, ok := g.lookup(rep.g.hashOf(old))
		if ok && stillBroken(rep.g, old, g, i, unseen[rep.g.path(old)]) {
			doomed[i] = true
			stack = append(stack, i)
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, up := range above[i] {
			if !doomed[up] {
				doomed[up] = true
				stack = append(stack, up)
			}
		}
	}
	return doomed
}

// repairSweep deletes what doomed says, through del: the realisations
// pointing at a path missing or doomed, the doomed .narinfos in waves,
// referrers first, their NAR listings, and the NARs verify found bad and
// that are still the objects it read. It records what it deleted in out.
func repairSweep(ctx context.Context, del *deleter, g *Graph, doomed []bool, rep *VerifyReport, out *Repaired) error {
	var dead []int32
	for i := range int32(g.nodeCount()) {
		if doomed[i] && g.node(i).present {
			dead = append(dead, i)
			out.Deleted = append(out.Deleted, g.path(i))
		}
	}
	slices.Sort(out.Deleted)
	w := planWaves(g, dead)
	// Realisations first: none points at a deleted path at any step.
	real := dangling(g, doomed)
	if err := del.each(ctx, len(real), func(k int) string { return g.str(real[k].key) }); err != nil {
		return err
	}
	out.Realisations = len(real)
	if err := del.waves(ctx, g, w); err != nil {
		return err
	}
	var listings []string
	for _, l := range g.listings {
		if doomed[l.node] && g.node(l.node).present {
			listings = append(listings, g.hashOf(l.node)+layout.ListingExt)
		}
	}
	slices.Sort(listings)
	if err := del.all(ctx, listings); err != nil {
		return err
	}
	if err := del.all(ctx, unchangedNARs(rep.g, g, rep.badNAR)); err != nil {
		return err
	}
	out.NARs = len(rep.badNAR)
	return nil
}

// stillBroken reports whether node i of g, the walk under repair's marker,
// is still broken, node old of was having been found broken by verify:
// its .narinfo is there and lacks its NAR (or the NAR is not of its size)
// or a reference's .narinfo; or verify found what a listing cannot show
// (unseen: unreadable, unsigned, a NAR of the wrong hash) and it is the
// very .narinfo verify read (the same modification time), with the very
// NAR.
func stillBroken(was *Graph, old int32, g *Graph, i int32, unseen bool) bool {
	n := g.node(i)
	if !n.present {
		return false
	}
	for _, r := range g.refsOf(i) {
		if !g.node(r).present {
			return true
		}
	}
	if !n.unreadable && n.nar >= 0 {
		nar := g.nar(n.nar)
		if !nar.listed || (n.fileSize != 0 && uint64(nar.size) != n.fileSize) {
			return true
		}
	}
	o := was.node(old)
	if !unseen || o.mod != n.mod {
		return false // healed, or written again since verify read it
	}
	if n.unreadable || n.nar < 0 || o.nar < 0 {
		return true
	}
	// Unsigned, or a NAR of the wrong hash: still so if the NAR is the
	// object verify read.
	a, b := was.nar(o.nar), g.nar(n.nar)
	return was.narKey(o.nar) == g.narKey(n.nar) && a.mod == b.mod && a.size == b.size
}

// unchangedNARs is the NARs of keys (found bad by verify's walk, was)
// that are the same objects in g: one written again since is left alone.
func unchangedNARs(was, g *Graph, keys []string) []string {
	var out []string
	for _, k := range keys {
		i, ok1 := was.narLookup(k)
		j, ok2 := g.narLookup(k)
		if ok1 && ok2 && g.nar(j).listed && was.nar(i).mod == g.nar(j).mod && was.nar(i).size == g.nar(j).size {
			out = append(out, k)
		}
	}
	return out
}
