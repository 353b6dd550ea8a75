package retention

import (
	"bytes"
	"context"
	"slices"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"
)

// gcPlan is what a gc deletes and keeps, decided from its mark before
// the first deletion: what a dry run reports, and what gc then deletes,
// in this order (gcPlan.execute): the realisations, the .narinfos in
// waves, the NAR listings, the NARs, the build logs, the root records,
// the pending uploads and the stale upload markers. What goes is kept as
// numbers (nodes, NARs, logs), its keys made a batch at a time as it is
// deleted.
type gcPlan struct {
	g *Graph
	// Kept and Deleted are the figures of GCReport; Deleted.Paths and
	// Deleted.Waves are filled when reported (deletedPaths) and deleted.
	Kept    Kept
	Deleted Deleted

	realisations []string // keys
	waves        waves    // of the .narinfos that go
	listings     []string // keys
	nars         []int32  // in g.narList, sorted by key
	logs         []int32  // in g.logs, sorted by key
	records      []string // root record keys
	uploads      []store.PendingUpload
	staleMarkers []string // upload marker keys
}

// planGC decides what goes: the .narinfos live does not keep, in waves;
// the NARs no kept .narinfo names, NAR listings, logs and realisations of
// what goes (all older than the grace period); the root records of roots
// that keep nothing; pending uploads and upload markers older than the
// grace period, but for those a daemon keeps to resume.
func planGC(g *Graph, live *liveSet, pending pendingUploads, now time.Time, opts GCOptions) *gcPlan {
	p := &gcPlan{g: g}
	p.Kept = Kept{Pinned: live.pinned, Rooted: live.rooted, InGrace: live.inGrace, Late: live.late}
	p.planUploads(pending, now, opts.Grace)
	p.waves = planWaves(g, p.planNarInfos(live.live))
	p.planNARs(live.live, now, opts.Grace)
	// NAR listings go with their .narinfo, or alone when theirs is gone
	// (and older than the grace period: written just before a .narinfo).
	for _, l := range g.listings {
		n := g.node(l.node)
		if (n.present && !live.live[l.node]) || (!n.present && now.Sub(time.Unix(0, l.mod)) >= opts.Grace) {
			p.listings = append(p.listings, g.hashOf(l.node)+layout.ListingExt)
		}
	}
	slices.Sort(p.listings)
	p.Deleted.Listings = len(p.listings)
	p.planRecords(live, now, opts.OlderThan)
	// Realisations of outputs that go, and logs of derivations no kept
	// path names, if older than the grace period.
	for _, r := range g.realisations {
		if r.out >= 0 && !(g.node(r.out).present && live.live[r.out]) && now.Sub(time.Unix(0, r.mod)) >= opts.Grace {
			p.realisations = append(p.realisations, g.str(r.key))
		}
	}
	slices.Sort(p.realisations)
	p.Deleted.Realisations = len(p.realisations)
	p.logs = g.deadLogs(live.live, now, opts.Grace)
	p.Deleted.Logs = len(p.logs)
	return p
}

// planUploads: pending uploads begun before the grace period are
// aborted, unless a daemon keeps one to resume: its marker was written
// (or rewritten, a heartbeat) within the grace period. Markers older than
// that go.
func (p *gcPlan) planUploads(pending pendingUploads, now time.Time, grace time.Duration) {
	for _, u := range pending.uploads {
		if now.Sub(u.Initiated) < grace {
			continue
		}
		if at, ok := pending.markers[layout.UploadMarkerKey(u.Key, u.ID)]; ok && now.Sub(at) < grace {
			p.Kept.Uploads++
			continue
		}
		p.uploads = append(p.uploads, u)
	}
	p.Deleted.Uploads = len(p.uploads)
	for k, at := range pending.markers {
		if now.Sub(at) >= grace {
			p.staleMarkers = append(p.staleMarkers, k)
		}
	}
	slices.Sort(p.staleMarkers)
	p.Deleted.UploadMarkers = len(p.staleMarkers)
}

// planNarInfos counts the kept paths and their NARs' bytes, and returns
// the nodes whose .narinfo goes.
func (p *gcPlan) planNarInfos(live []bool) (dead []int32) {
	g := p.g
	for i := range int32(g.nodeCount()) {
		n := g.node(i)
		if !n.present {
			continue
		}
		if live[i] {
			p.Kept.Paths++
			if n.nar >= 0 && g.nar(n.nar).listed {
				p.Kept.Bytes += g.nar(n.nar).size
			}
			continue
		}
		dead = append(dead, i)
	}
	return dead
}

// planNARs: the NARs no kept .narinfo names go, if written before the
// grace period (a NAR goes up before its .narinfo).
func (p *gcPlan) planNARs(live []bool, now time.Time, grace time.Duration) {
	g := p.g
	named := make([]bool, g.narList.len())
	for i := range int32(g.nodeCount()) {
		if n := g.node(i); n.present && live[i] && n.nar >= 0 {
			named[n.nar] = true
		}
	}
	for j := range int32(g.narList.len()) {
		o := g.nar(j)
		if !o.listed {
			continue
		}
		if named[j] || now.Sub(time.Unix(0, o.mod)) < grace {
			p.Kept.NARs++
			continue
		}
		p.nars = append(p.nars, j)
		p.Deleted.Bytes += o.size
	}
	slices.SortFunc(p.nars, g.compareNARKeys)
	p.Deleted.NARs = len(p.nars)
}

// planRecords: the root records of roots that keep nothing (not live,
// pushed before olderThan), and the batch records older than olderThan
// (a batch record keeps nothing once it has expired); none written since
// the walk.
func (p *gcPlan) planRecords(live *liveSet, now time.Time, olderThan time.Duration) {
	g := p.g
	for i := range g.rootRecords {
		key := layout.RootPrefix + g.hashOf(i)
		if !live.live[i] && now.Sub(g.roots[i]) >= olderThan && !live.lateRecords[key] {
			p.records = append(p.records, key)
		}
	}
	for key, at := range g.rootBatches {
		if now.Sub(at) >= olderThan && !live.lateRecords[key] {
			p.records = append(p.records, key)
		}
	}
	slices.Sort(p.records)
	p.Deleted.RootRecords = len(p.records)
}

// objects is how many objects the plan deletes (.narinfos, NARs,
// listings, logs, realisations, root records).
func (p *gcPlan) objects() int {
	return len(p.waves.order) + len(p.nars) + len(p.listings) + len(p.logs) + len(p.realisations) + len(p.records)
}

// deletedPaths is the paths whose .narinfo goes, sorted: their names are
// made from the nodes, once no other list is held.
func (p *gcPlan) deletedPaths() []string {
	paths := make([]string, 0, len(p.waves.order))
	for _, i := range p.waves.order {
		paths = append(paths, p.g.path(i))
	}
	slices.Sort(paths)
	return paths
}

// execute deletes what the plan says, through del (which stops at the
// marker's deadline): the realisations before the .narinfos they point
// at, so none is left pointing at a deleted path however gc stops; the
// .narinfos in waves, referrers first; then the rest.
func (p *gcPlan) execute(ctx context.Context, b store.Bucket, del *deleter) error {
	g := p.g
	if err := del.all(ctx, p.realisations); err != nil {
		return err
	}
	if err := del.waves(ctx, g, p.waves); err != nil {
		return err
	}
	if err := del.all(ctx, p.listings); err != nil {
		return err
	}
	if err := del.each(ctx, len(p.nars), func(k int) string { return g.narKey(p.nars[k]) }); err != nil {
		return err
	}
	if err := del.each(ctx, len(p.logs), func(k int) string { return g.str(g.logs[p.logs[k]].key) }); err != nil {
		return err
	}
	if err := del.all(ctx, p.records); err != nil {
		return err
	}
	for _, u := range p.uploads {
		if err := del.check(); err != nil {
			return err
		}
		if err := b.AbortUpload(ctx, u); err != nil {
			return err
		}
	}
	return del.all(ctx, p.staleMarkers)
}

// waves is the order in which .narinfos go: wave k is
// order[ends[k-1]:ends[k]] (from 0), of paths no .narinfo of a later wave
// refers to; the last stuck of order, in a reference cycle, never go.
type waves struct {
	order []int32
	ends  []int
	stuck int
}

// planWaves orders dead (nodes whose .narinfo goes) in waves, each of
// paths no remaining dead .narinfo refers to.
func planWaves(g *Graph, dead []int32) waves {
	referrers := make([]int32, g.nodeCount()) // dead .narinfos referring to each
	for _, i := range dead {
		for _, r := range g.refsOf(i) {
			referrers[r]++
		}
	}
	w := waves{order: make([]int32, 0, len(dead))}
	remaining := dead
	for len(remaining) > 0 {
		start := len(w.order)
		remaining = slices.DeleteFunc(remaining, func(i int32) bool {
			if referrers[i] == 0 {
				w.order = append(w.order, i)
				return true
			}
			return false
		})
		if len(w.order) == start {
			w.stuck = len(remaining)
			w.order = append(w.order, remaining...)
			break
		}
		w.ends = append(w.ends, len(w.order))
		for _, i := range w.order[start:] {
			for _, r := range g.refsOf(i) {
				referrers[r]--
			}
		}
	}
	return w
}

// deadLogs is the build logs (by index in g.logs, sorted by key) of
// derivations no kept .narinfo names as its Deriver, older than grace.
// They are matched by the derivations' hash parts, sorted, rather than by
// a map of a million derivers' names.
func (g *Graph) deadLogs(live []bool, now time.Time, grace time.Duration) []int32 {
	type logHash struct {
		h [20]byte
		k int32
	}
	byHash := make([]logHash, 0, len(g.logs))
	var odd map[string]int32 // logs whose derivation is not <nixbase32>-<name>.drv
	for k, l := range g.logs {
		drv := g.logDrv(l)
		if h, ok := drvHash(drv); ok {
			byHash = append(byHash, logHash{h, int32(k)})
		} else {
			if odd == nil {
				odd = make(map[string]int32)
			}
			odd[drv] = int32(k)
		}
	}
	cmp := func(a logHash, h [20]byte) int { return bytes.Compare(a.h[:], h[:]) }
	slices.SortFunc(byHash, func(a, b logHash) int { return cmp(a, b.h) })
	named := make([]bool, len(g.logs)) // a kept .narinfo names the log's derivation
	for i := range int32(g.nodeCount()) {
		n := g.node(i)
		if !n.present || !live[i] || !n.hasDrv {
			continue
		}
		if drv, ok := g.oddDrv[i]; ok {
			if k, ok := odd[drv]; ok {
				named[k] = true
			}
			continue
		}
		for j, _ := slices.BinarySearchFunc(byHash, n.deriver, cmp); j < len(byHash) && byHash[j].h == n.deriver; j++ {
			named[byHash[j].k] = true
		}
	}
	var logs []int32
	for k, l := range g.logs {
		if !named[k] && now.Sub(time.Unix(0, l.mod)) >= grace {
			logs = append(logs, int32(k))
		}
	}
	slices.SortFunc(logs, func(a, b int32) int { return bytes.Compare(g.bytesOf(g.logs[a].key), g.bytesOf(g.logs[b].key)) })
	return logs
}
