package retention

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// GCOptions say what gc keeps.
type GCOptions struct {
	// OlderThan: a root last pushed longer ago than this keeps nothing.
	OlderThan time.Duration
	// Grace: an object written more recently than this is never deleted,
	// nor anything its .narinfo refers to (it may be a push in progress).
	Grace time.Duration
	// Window is how long after listing gc may delete; it makes no
	// deletion after listed_at + Window (the marker's deadline).
	Window time.Duration
	DryRun bool
	Host   string // for the marker
	Walk   WalkOptions
	// Deleting, when set, is called before each deletion with the key.
	Deleting func(key string)
	// Marked, when set, is called once what goes is known: the paths
	// kept and the objects to delete (.narinfos, NARs, listings, logs,
	// realisations, root records).
	Marked func(kept, toDelete int)
	// SingleGC says only one gc or repair ever runs on this store: the
	// check that it honours conditional writes is skipped, and the marker
	// is read and written plainly.
	SingleGC bool
}

// check refuses settings under which gc could delete what a push in
// progress needs, or what a daemon still trusts.
func (o GCOptions) check() error {
	if o.Grace <= 0 {
		return fmt.Errorf("grace %s: %w", o.Grace, ErrNoGrace)
	}
	if o.OlderThan < o.Grace {
		return fmt.Errorf("older-than %s below grace %s: %w", o.OlderThan, o.Grace, ErrOlderThanGrace)
	}
	return nil
}

// ErrNoGrace reports a gc without a grace period: it could delete the
// objects of a push in progress, before its .narinfo or root is written.
var ErrNoGrace = errors.New("the grace period must be above zero (a push in progress is protected by it alone)")

// ErrOlderThanGrace reports an --older-than below --grace: a root pushed
// again keeps its closure for less time than a daemon may trust it
// (daemons trust the cache for less than the grace period).
var ErrOlderThanGrace = errors.New("older-than must be at least the grace period (a root pushed again must keep its closure as long as daemons trust it)")

// DefaultWindow is the sweep window when none is given.
const DefaultWindow = 10 * time.Minute

// GCReport is what a gc kept and deleted.
type GCReport struct {
	Store    string    `json:"store"`
	DryRun   bool      `json:"dry_run"`
	Now      time.Time `json:"now"` // the store's clock when gc listed
	Kept     Kept      `json:"kept"`
	Deleted  Deleted   `json:"deleted"`
	Requests int64     `json:"requests"`
	Walk     WalkStats `json:"walk"`
	// Seconds: how long the walk and the deletions took.
	Seconds struct {
		Walk   float64 `json:"walk"`
		Delete float64 `json:"delete"`
	} `json:"seconds"`
	// Warnings: what went wrong without undoing the sweep (its marker
	// could not be marked finished).
	Warnings []string `json:"warnings,omitempty"`
}

// Kept counts what gc keeps.
type Kept struct {
	Paths   int `json:"paths"`
	Pinned  int `json:"pinned"`   // pins
	Rooted  int `json:"rooted"`   // roots pushed within --older-than
	InGrace int `json:"in_grace"` // .narinfos written within --grace
	// Late: pins and root records written (or rewritten) after the walk
	// listed them, found by the listing again before the first deletion.
	Late  int   `json:"late"`
	NARs  int   `json:"nars"`
	Bytes int64 `json:"bytes"` // of the kept NARs
	// Uploads are pending multipart uploads begun before the grace
	// period that a daemon keeps to resume (their marker is younger).
	Uploads int `json:"uploads"`
}

// Deleted lists what gc deletes (or would, with DryRun).
type Deleted struct {
	Paths       []string `json:"paths"` // whose .narinfo goes
	NARs        int      `json:"nars"`
	Bytes       int64    `json:"bytes"`    // of the deleted NARs
	Listings    int      `json:"listings"` // <hash>.ls NAR listings
	RootRecords int      `json:"root_records"`
	Uploads     int      `json:"uploads"` // pending multipart uploads aborted
	// UploadMarkers are markers of resumable uploads (nixpush/uploads/)
	// not rewritten within the grace period.
	UploadMarkers int `json:"upload_markers"`
	// Logs are build logs (log/<drv>) of derivations no kept .narinfo
	// names as its Deriver.
	Logs int `json:"logs"`
	// Realisations (realisations/<id>.doi and build-trace-v2/<drv>/<output>.doi)
	// whose outPath is not kept.
	Realisations int `json:"realisations"`
	// Waves: the .narinfos went in this many rounds, each of paths no
	// remaining one refers to (the depth of the deleted chains: a round
	// trip each).
	Waves int `json:"waves"`
}

// ErrNoDeletePermission reports credentials that cannot delete.
var ErrNoDeletePermission = errors.New("no permission to delete (s3:DeleteObject)")

// ErrWindowPassed reports a gc stopped at its deadline.
var ErrWindowPassed = errors.New("sweep window passed")

// ErrSweepRunning reports another gc (or repair) sweeping the same store.
var ErrSweepRunning = errors.New("another gc is sweeping this cache")

// ErrNoConditionalWrites reports a store that ignores If-None-Match: gc
// cannot make sure that it sweeps alone.
var ErrNoConditionalWrites = errors.New("the store ignores conditional writes (a second If-None-Match: * write of gc's probe succeeded)")

func parseSweep(data []byte) (Sweep, error) {
	var s Sweep
	err := json.Unmarshal(data, &s)
	if err == nil && s.Deadline.IsZero() {
		err = errors.New("no deadline")
	}
	return s, err
}

// GC deletes from b every .narinfo outside the closure of the pins, of
// the roots pushed within OlderThan and of the .narinfos written within
// Grace, referrers before their references (and the realisations of
// deleted outputs before them), then the build logs of derivations no
// kept .narinfo names, every NAR no kept .narinfo names, the root records
// of what it deleted, and pending uploads, all older than Grace. See the package doc for
// why a push overlapping it stays whole.
func GC(ctx context.Context, b store.Bucket, opts GCOptions) (*GCReport, error) {
	if opts.Window <= 0 {
		opts.Window = DefaultWindow
	}
	if err := opts.check(); err != nil {
		return nil, err
	}
	cb := store.Count(b)
	b, _ = store.As[store.Bucket](cb)
	rep := &GCReport{Store: b.String(), DryRun: opts.DryRun}

	now := time.Now()
	var sw *sweep
	if !opts.DryRun {
		// 1. No other sweep under way, and none can start beside this one
		// (a conditional write of the marker); delete permission, before
		// anything else; then the marker, before the listing.
		var err error
		m := Sweep{Host: opts.Host, Kind: "gc", GraceSeconds: seconds(opts.Grace),
			OlderThanSeconds: seconds(opts.OlderThan), WindowSeconds: seconds(opts.Window)}
		if sw, err = startSweep(ctx, b, m, opts.Window, opts.SingleGC); err != nil {
			return nil, err
		}
		defer func() {
			if err := sw.end(ctx); err != nil {
				rep.Warnings = append(rep.Warnings, err.Error())
			}
		}()
		now = sw.now
	}
	rep.Now = now.UTC()

	// The walk's listing, with the ETag of each pin and root record it
	// saw: those written or rewritten later are found by listing again.
	rec := &recording{Bucket: b, seen: make(map[string]string)}
	walkStart := time.Now()
	g, err := Walk(ctx, rec, opts.Walk)
	if err != nil {
		return nil, err
	}
	rep.Walk = g.Stats
	rep.Seconds.Walk = time.Since(walkStart).Seconds()

	// 2. The live set: closure of pins, recent roots, recent .narinfos.
	nodes := g.nodeCount()
	live := make([]bool, nodes)
	var stack []int32
	mark := func(i int32) {
		if !live[i] {
			live[i] = true
			stack = append(stack, i)
		}
	}
	for _, p := range g.Pins {
		if i, ok := g.lookup(hashPart(p.Path)); ok {
			rep.Kept.Pinned++
			mark(i)
		}
	}
	for i, at := range g.roots {
		if now.Sub(at) < opts.OlderThan {
			rep.Kept.Rooted++
			mark(i)
		}
	}
	for i := range int32(nodes) {
		n := g.node(i)
		if n.present && (now.Sub(time.Unix(0, n.mod)) < opts.Grace || n.unreadable) {
			// An unreadable .narinfo is kept (verify reports it), and
			// with it the references it names, read past the line that
			// would not parse: a kept path's references never go.
			if !n.unreadable {
				rep.Kept.InGrace++
			}
			mark(i)
		}
	}
	// A realisation written within --grace may be a push in progress too
	// (it goes up after its output's push): its output stays.
	for _, r := range g.realisations {
		if r.out >= 0 && g.node(r.out).present && now.Sub(time.Unix(0, r.mod)) < opts.Grace {
			mark(r.out)
		}
	}
	closure := func() {
		for len(stack) > 0 {
			i := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			for _, r := range g.refsOf(i) {
				mark(r)
			}
		}
	}
	closure()

	// Pending uploads begun before the grace period are aborted, unless a
	// daemon keeps one to resume: its marker was written (or rewritten, a
	// heartbeat) within the grace period. Markers older than that go.
	markers := make(map[string]time.Time)
	if err := b.List(ctx, uploader.UploadMarkerPrefix, func(o store.Object) error {
		markers[o.Key] = o.LastModified
		return nil
	}); err != nil {
		return nil, err
	}
	var uploads []store.PendingUpload
	if err := b.ListUploads(ctx, func(u store.PendingUpload) error {
		if now.Sub(u.Initiated) < opts.Grace {
			return nil
		}
		if at, ok := markers[uploader.UploadMarkerKey(u.Key, u.ID)]; ok && now.Sub(at) < opts.Grace {
			rep.Kept.Uploads++
			return nil
		}
		uploads = append(uploads, u)
		return nil
	}); err != nil {
		return nil, err
	}
	rep.Deleted.Uploads = len(uploads)
	var staleMarkers []string
	for k, at := range markers {
		if now.Sub(at) >= opts.Grace {
			staleMarkers = append(staleMarkers, k)
		}
	}
	slices.Sort(staleMarkers)
	rep.Deleted.UploadMarkers = len(staleMarkers)

	// Pins and root records written since the walk listed them (a pin
	// taken, a path already cached pushed again) keep their closures
	// too: list them again now, just before the first deletion, and read
	// those that are new or changed.
	lateRecords := make(map[string]bool)
	if !opts.DryRun {
		late, err := listLate(ctx, b, rec.seen)
		if err != nil {
			return nil, err
		}
		for _, l := range late {
			rep.Kept.Late++
			if l.record {
				lateRecords[l.key] = true
			}
			for _, h := range l.hashes {
				if i, ok := g.lookup(h); ok && g.node(i).present {
					mark(i)
				}
			}
		}
		closure()
	}

	// 3. What goes: dead .narinfos, in waves, each of paths no remaining
	// dead .narinfo refers to. What goes is kept as numbers (nodes, NARs,
	// logs), its keys made a batch at a time as it is deleted.
	referrers := make([]int32, nodes) // dead .narinfos referring to each
	var dead []int32
	for i := range int32(nodes) {
		n := g.node(i)
		if !n.present {
			continue
		}
		if live[i] {
			rep.Kept.Paths++
			if n.nar >= 0 && g.nar(n.nar).listed {
				rep.Kept.Bytes += g.nar(n.nar).size
			}
			continue
		}
		dead = append(dead, i)
		for _, r := range g.refsOf(i) {
			referrers[r]++
		}
	}
	named := make([]bool, g.narList.len())
	for i := range int32(nodes) {
		if n := g.node(i); n.present && live[i] && n.nar >= 0 {
			named[n.nar] = true
		}
	}
	var nars []int32
	for j := range int32(g.narList.len()) {
		o := g.nar(j)
		if !o.listed {
			continue
		}
		if named[j] || now.Sub(time.Unix(0, o.mod)) < opts.Grace {
			rep.Kept.NARs++
			continue
		}
		nars = append(nars, j)
		rep.Deleted.Bytes += o.size
	}
	named = nil
	slices.SortFunc(nars, g.compareNARKeys)
	rep.Deleted.NARs = len(nars)
	// NAR listings go with their .narinfo, or alone when theirs is gone
	// (and older than the grace period: written just before a .narinfo).
	var listings []string
	for _, l := range g.listings {
		n := g.node(l.node)
		if (n.present && !live[l.node]) || (!n.present && now.Sub(time.Unix(0, l.mod)) >= opts.Grace) {
			listings = append(listings, g.hashOf(l.node)+".ls")
		}
	}
	slices.Sort(listings)
	rep.Deleted.Listings = len(listings)
	var records []string
	for i := range g.rootRecords {
		key := RootPrefix + g.hashOf(i)
		if !live[i] && now.Sub(g.roots[i]) >= opts.OlderThan && !lateRecords[key] {
			records = append(records, key)
		}
	}
	// A batch record keeps nothing once it has expired.
	for key, at := range g.rootBatches {
		if now.Sub(at) >= opts.OlderThan && !lateRecords[key] {
			records = append(records, key)
		}
	}
	slices.Sort(records)
	rep.Deleted.RootRecords = len(records)
	// Realisations of outputs that go, and logs of derivations no kept
	// path names, if older than the grace period.
	var realisations []string
	for _, r := range g.realisations {
		if r.out >= 0 && !(g.node(r.out).present && live[r.out]) && now.Sub(time.Unix(0, r.mod)) >= opts.Grace {
			realisations = append(realisations, g.str(r.key))
		}
	}
	slices.Sort(realisations)
	rep.Deleted.Realisations = len(realisations)
	logs := g.deadLogs(live, now, opts.Grace)
	rep.Deleted.Logs = len(logs)

	if opts.Marked != nil {
		opts.Marked(rep.Kept.Paths, len(dead)+len(nars)+len(listings)+len(logs)+len(realisations)+len(records))
	}
	live = nil
	// The deleted paths, sorted by store path: their names are made at
	// the end, from the nodes, once no other list is held.
	deletedPaths := func() []string {
		paths := make([]string, 0, len(dead))
		for _, i := range dead {
			paths = append(paths, g.path(i))
		}
		slices.Sort(paths)
		return paths
	}
	if opts.DryRun {
		rep.Deleted.Paths = deletedPaths()
		rep.Requests = cb.Requests()
		return rep, nil
	}

	// 4. Delete, never after the deadline (less a margin for the request
	// in flight), referrers first.
	delStart := time.Now()
	del := sw.deleter(opts.Deleting)
	// Realisations before the .narinfos they point at: none is left
	// pointing at a deleted path, however gc stops.
	if err := del.all(ctx, realisations); err != nil {
		return nil, err
	}
	if err := del.waves(ctx, g, dead, referrers); err != nil {
		return nil, err
	}
	rep.Deleted.Waves = del.nwaves
	referrers = nil
	if err := del.all(ctx, listings); err != nil {
		return nil, err
	}
	if err := del.each(ctx, len(nars), func(k int) string { return g.narKey(nars[k]) }); err != nil {
		return nil, err
	}
	if err := del.each(ctx, len(logs), func(k int) string { return g.str(g.logs[logs[k]].key) }); err != nil {
		return nil, err
	}
	if err := del.all(ctx, records); err != nil {
		return nil, err
	}
	for _, u := range uploads {
		if err := del.check(); err != nil {
			return nil, err
		}
		if err := b.AbortUpload(ctx, u); err != nil {
			return nil, err
		}
	}
	if err := del.all(ctx, staleMarkers); err != nil {
		return nil, err
	}
	rep.Seconds.Delete = time.Since(delStart).Seconds()
	rep.Deleted.Paths = deletedPaths()
	rep.Requests = cb.Requests()
	return rep, nil
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

// sweep is a run that deletes: gc's, or verify --repair's.
type sweep struct {
	b      store.Bucket
	marker Sweep
	etag   string    // of the marker this run wrote
	now    time.Time // the store's clock when the marker went up
	window time.Duration
	single bool // SingleGC: plain reads and writes of the marker
}

// seconds is d in whole seconds, at least 1 for a positive d.
func seconds(d time.Duration) int64 {
	if d > 0 && d < time.Second {
		return 1
	}
	return int64(d / time.Second)
}

// startSweep puts the marker m up, with its listing time and deadline, as
// one atomic step: it reads the marker with its ETag, refuses while it is
// live (unfinished and before its deadline), and writes its own on the
// condition that the marker is still the one it read (or still absent).
// A write whose condition fails lost the race to another sweep: it
// refuses too. Before writing, it checks that the credentials may delete
// and that the store honours the condition (unless single).
func startSweep(ctx context.Context, b store.Bucket, m Sweep, window time.Duration, single bool) (*sweep, error) {
	if window <= 0 {
		window = DefaultWindow
	}
	now := time.Now()
	data, etag, err := b.GetTagged(ctx, SweepKey)
	switch {
	case errors.Is(err, store.ErrNotExist):
		etag = "" // never swept: create it only if it is still absent
	case err != nil:
		return nil, fmt.Errorf("read the gc marker %s: %w", SweepKey, err)
	default:
		// Unreadable, finished, or stale (a crashed run's, past its
		// deadline): replaced below, if still the same.
		if s, err := parseSweep(data); err == nil && s.FinishedAt.IsZero() && now.Before(s.Deadline) {
			return nil, sweepRunning(s)
		}
	}
	if err := probeDelete(ctx, b, single); err != nil {
		return nil, err
	}
	m.ListedAt, m.Deadline, m.FinishedAt = now.UTC(), now.Add(window).UTC(), time.Time{}
	sw := &sweep{b: b, window: window, now: now, marker: m, single: single}
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	body = append(body, '\n')
	if single {
		err = b.Put(ctx, SweepKey, bytes.NewReader(body), int64(len(body)), "application/json")
	} else {
		sw.etag, err = b.PutIf(ctx, SweepKey, body, "application/json", etag)
	}
	if errors.Is(err, store.ErrConditionFailed) {
		// Another sweep wrote its marker between this one's read and
		// write: it runs, this one does not.
		if data, _, err := b.GetTagged(ctx, SweepKey); err == nil {
			if s, err := parseSweep(data); err == nil {
				return nil, sweepRunning(s)
			}
		}
		return nil, fmt.Errorf("%w: its marker %s went up between this run's read and write of it", ErrSweepRunning, SweepKey)
	}
	if err != nil {
		return nil, fmt.Errorf("write the gc marker %s: %w", SweepKey, err)
	}
	// Ages are measured on the store's clock: the marker's time, as a
	// listing gives it (to the millisecond; a HEAD's Last-Modified is
	// truncated to the second).
	b.List(ctx, SweepKey, func(o store.Object) error {
		if o.Key == SweepKey && !o.LastModified.IsZero() {
			sw.now = o.LastModified
		}
		return nil
	})
	return sw, nil
}

// sweepRunning is the refusal to sweep beside s.
func sweepRunning(s Sweep) error {
	kind := s.Kind
	if kind == "" {
		kind = "gc"
	}
	// Not "remove the marker": daemons would read its absence as "no gc
	// ever swept" and not check what that gc may have deleted.
	return fmt.Errorf("%w (%s on host %q, listed at %s): run gc again after %s (a run that crashed deletes nothing after it either)",
		ErrSweepRunning, kind, s.Host, s.ListedAt.Format(time.RFC3339), s.Deadline.Format(time.RFC3339))
}

// end says in the marker that this run deletes nothing more. It leaves
// the marker up: daemons read "no marker" as "no gc has ever swept", and
// "finished at" as "nothing seen since then was deleted". It writes only
// over its own marker (If-Match its ETag): another run replaces a marker
// only once its deadline has passed, after which this one deleted
// nothing, and that run's marker must stay. If the write fails, the
// marker stays as it was, and daemons wait for its deadline.
func (sw *sweep) end(ctx context.Context) error {
	// Not ctx: an interrupted run still says it stopped deleting.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	m := sw.marker
	m.FinishedAt = time.Now().UTC()
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	body = append(body, '\n')
	if sw.single {
		err = sw.b.Put(dctx, SweepKey, bytes.NewReader(body), int64(len(body)), "application/json")
	} else {
		_, err = sw.b.PutIf(dctx, SweepKey, body, "application/json", sw.etag)
	}
	if errors.Is(err, store.ErrConditionFailed) {
		return fmt.Errorf("the marker %s was replaced by another run after this one's deadline %s; left as it is (this run deleted nothing after its deadline)",
			SweepKey, sw.marker.Deadline.Format(time.RFC3339))
	}
	if err != nil {
		return fmt.Errorf("could not mark %s finished (daemons wait for its deadline %s instead): %v", SweepKey, sw.marker.Deadline.Format(time.RFC3339), err)
	}
	return nil
}

// deleter deletes until the marker's deadline, less a margin for the
// request in flight.
func (sw *sweep) deleter(notify func(string)) *deleter {
	margin := min(sw.window/10, 30*time.Second)
	return &deleter{b: sw.b, stop: sw.marker.Deadline.Add(-margin), deadline: sw.marker.Deadline, notify: notify}
}

// probeDelete writes an object of its own and deletes it, so credentials
// that cannot delete fail before anything is deleted. Unless single, it
// writes it with If-None-Match: * twice: the second write must fail, or
// the store ignores the condition the marker's exclusion rests on.
func probeDelete(ctx context.Context, b store.Bucket, single bool) error {
	var r [8]byte
	rand.Read(r[:])
	key := probePrefix + hex.EncodeToString(r[:])
	body := []byte("probe\n")
	var err error
	if single {
		err = b.Put(ctx, key, bytes.NewReader(body), int64(len(body)), "text/plain")
	} else {
		_, err = b.PutIf(ctx, key, body, "text/plain", "")
	}
	if err != nil {
		if denied(err) {
			return fmt.Errorf("gc needs s3:PutObject on %s* for its marker: %w", Prefix, err)
		}
		if !single {
			return fmt.Errorf("%s: a conditional write (If-None-Match: *) of %s failed: %w; if the store cannot do conditional writes and only one gc or repair ever runs on it, pass --single-gc", b, key, err)
		}
		return err
	}
	var ignored error
	if !single {
		_, err := b.PutIf(ctx, key, body, "text/plain", "")
		switch {
		case err == nil:
			ignored = fmt.Errorf("%s: %w: two gcs, or a gc and verify --repair, could sweep at once; use a store that honours If-None-Match and If-Match (MinIO, AWS S3), or pass --single-gc if only one gc or repair ever runs on this store",
				b, ErrNoConditionalWrites)
		case !errors.Is(err, store.ErrConditionFailed):
			return fmt.Errorf("%s: a second conditional write of %s: %w", b, key, err)
		}
	}
	if err := b.Delete(ctx, key); err != nil {
		if ignored != nil {
			return ignored
		}
		if denied(err) {
			return fmt.Errorf("%s: %w; give gc its own account with the gc policy (nixpush init --print-policy prints it); %s is left behind: %v",
				b, ErrNoDeletePermission, key, err)
		}
		return err
	}
	return ignored
}

// late is a pin or root record written or rewritten after the walk
// listed the bucket: the hash parts of the paths it keeps.
type late struct {
	key    string
	record bool // a root record (a pin is never deleted)
	hashes []string
}

// listLate lists the pins and root records again and reads those whose
// ETag the walk did not list (seen: key → ETag).
func listLate(ctx context.Context, b store.Bucket, seen map[string]string) ([]late, error) {
	var keys []string
	for _, prefix := range []string{PinPrefix, RootPrefix} {
		if err := b.List(ctx, prefix, func(o store.Object) error {
			if etag, ok := seen[o.Key]; !ok || etag != o.ETag {
				keys = append(keys, o.Key)
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("list %s again before deleting: %w", prefix, err)
		}
	}
	var out []late
	for _, key := range keys {
		data, _, err := b.GetTagged(ctx, key)
		if errors.Is(err, store.ErrNotExist) {
			continue // removed again
		}
		if err != nil {
			return nil, fmt.Errorf("read %s, written since the walk: %w", key, err)
		}
		l := late{key: key, record: strings.HasPrefix(key, RootPrefix)}
		switch {
		case strings.HasPrefix(key, PinPrefix):
			p, err := parsePin(strings.TrimPrefix(key, PinPrefix), data, time.Time{})
			if err != nil {
				return nil, err
			}
			l.hashes = []string{hashPart(p.Path)}
		case strings.HasPrefix(key, RootBatchPrefix):
			r, _ := parseRootBatch(data, time.Time{})
			for _, p := range r.Paths {
				if h := hashPart(p); h != "" {
					l.hashes = append(l.hashes, h)
				}
			}
		default:
			// Written during this sweep, the path was pushed now, whatever
			// the record's pushed_at says; one unreadable keeps its key's
			// path all the same.
			if h := strings.TrimPrefix(key, RootPrefix); len(h) == 32 {
				l.hashes = []string{h}
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// recording is a Bucket whose listings remember the ETag of each pin and
// root record listed.
type recording struct {
	store.Bucket
	mu   sync.Mutex
	seen map[string]string
}

func (r *recording) List(ctx context.Context, prefix string, fn func(store.Object) error) error {
	return r.Bucket.List(ctx, prefix, func(o store.Object) error {
		if strings.HasPrefix(o.Key, PinPrefix) || strings.HasPrefix(o.Key, RootPrefix) {
			r.mu.Lock()
			r.seen[o.Key] = o.ETag
			r.mu.Unlock()
		}
		return fn(o)
	})
}

// denied reports an error of credentials that may not do what was asked.
func denied(err error) bool {
	if se := store.AsStoreError(err); se != nil && se.Problem == store.Denied {
		return true
	}
	return errors.Is(err, fs.ErrPermission)
}

// deleter deletes keys in parallel until its stop time.
type deleter struct {
	b        store.Bucket
	stop     time.Time
	deadline time.Time
	notify   func(string)
	nwaves   int // waves of .narinfos deleted
}

func (d *deleter) check() error {
	if time.Now().After(d.stop) {
		return fmt.Errorf("%w at %s: stopped before deleting more; run nixpush gc again (the next run lists anew)",
			ErrWindowPassed, d.deadline.Format(time.RFC3339))
	}
	return nil
}

// waves deletes the .narinfos of dead in waves, each of paths no
// remaining dead .narinfo refers to; referrers[i] counts the dead
// .narinfos referring to node i.
func (d *deleter) waves(ctx context.Context, g *Graph, dead []int32, referrers []int32) error {
	var wave []int32
	remaining := slices.Clone(dead)
	for len(remaining) > 0 {
		wave = wave[:0]
		remaining = slices.DeleteFunc(remaining, func(i int32) bool {
			if referrers[i] == 0 {
				wave = append(wave, i)
				return true
			}
			return false
		})
		if len(wave) == 0 {
			return fmt.Errorf("reference cycle among %d .narinfos; nothing more deleted", len(remaining))
		}
		d.nwaves++
		keys := make([]string, len(wave))
		for k, i := range wave {
			keys[k] = g.hashOf(i) + ".narinfo"
		}
		if err := d.all(ctx, keys); err != nil {
			return err
		}
		for _, i := range wave {
			for _, r := range g.refsOf(i) {
				referrers[r]--
			}
		}
	}
	return nil
}

// deleteBatch is how many keys one DeleteObjects request carries.
const deleteBatch = store.PageSize

// all deletes keys, in batches of a thousand, a few batches at once.
func (d *deleter) all(ctx context.Context, keys []string) error {
	return d.each(ctx, len(keys), func(k int) string { return keys[k] })
}

// each deletes the n keys key(0), ..., key(n-1), making each batch's keys
// only when it goes.
func (d *deleter) each(ctx context.Context, n int, key func(int) string) error {
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(4)
	for at := 0; at < n; {
		batch := make([]string, min(deleteBatch, n-at))
		for k := range batch {
			batch[k] = key(at + k)
		}
		at += len(batch)
		if err := d.check(); err != nil {
			eg.Wait()
			return err
		}
		if d.notify != nil {
			for _, k := range batch {
				d.notify(k)
			}
		}
		eg.Go(func() error {
			// The request itself may not outlive the deadline.
			rctx, cancel := context.WithDeadline(ectx, d.deadline)
			defer cancel()
			return d.b.DeleteMany(rctx, batch)
		})
	}
	return eg.Wait()
}
