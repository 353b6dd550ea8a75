package retention

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"
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

// GC deletes from b every .narinfo outside the closure of the pins, of
// the roots pushed within OlderThan and of the .narinfos written within
// Grace, referrers before their references (and the realisations of
// deleted outputs before them), then the build logs of derivations no
// kept .narinfo names, every NAR no kept .narinfo names, the root records
// of what it deleted, and pending uploads, all older than Grace. See the package doc for
// why a push overlapping it stays whole.
//
// It runs in three phases: mark (the walk, and the closure of what is
// kept: markGC), plan (what goes, in which waves, and the figures: a
// gcPlan, all a dry run reports) and execute (the deletions, under the
// marker: gcPlan.execute).
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
		m := layout.Sweep{Host: opts.Host, Kind: "gc", GraceSeconds: seconds(opts.Grace),
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

	// 2. The live set, and the pending uploads (mark); 3. what goes (plan).
	live, pending, err := markGC(ctx, b, g, rec.seen, now, opts)
	if err != nil {
		return nil, err
	}
	p := planGC(g, live, pending, now, opts)
	if opts.Marked != nil {
		opts.Marked(p.Kept.Paths, p.objects())
	}
	rep.Kept, rep.Deleted = p.Kept, p.Deleted
	if opts.DryRun {
		rep.Deleted.Paths = p.deletedPaths()
		rep.Requests = cb.Requests()
		return rep, nil
	}

	// 4. Delete, never after the deadline (less a margin for the request
	// in flight), referrers first.
	delStart := time.Now()
	del := sw.deleter(opts.Deleting)
	if err := p.execute(ctx, b, del); err != nil {
		return nil, err
	}
	rep.Deleted.Waves = del.nwaves
	rep.Seconds.Delete = time.Since(delStart).Seconds()
	rep.Deleted.Paths = p.deletedPaths()
	rep.Requests = cb.Requests()
	return rep, nil
}
