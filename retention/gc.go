package retention

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

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
}

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
}

// Kept counts what gc keeps.
type Kept struct {
	Paths   int   `json:"paths"`
	Pinned  int   `json:"pinned"`   // pins
	Rooted  int   `json:"rooted"`   // roots pushed within --older-than
	InGrace int   `json:"in_grace"` // .narinfos written within --grace
	NARs    int   `json:"nars"`
	Bytes   int64 `json:"bytes"` // of the kept NARs
}

// Deleted lists what gc deletes (or would, with DryRun).
type Deleted struct {
	Paths       []string `json:"paths"` // whose .narinfo goes
	NARs        int      `json:"nars"`
	Bytes       int64    `json:"bytes"`    // of the deleted NARs
	Listings    int      `json:"listings"` // <hash>.ls NAR listings
	RootRecords int      `json:"root_records"`
	Uploads     int      `json:"uploads"` // pending multipart uploads aborted
	// Logs are build logs (log/<drv>) of derivations no kept .narinfo
	// names as its Deriver.
	Logs int `json:"logs"`
	// Realisations (realisations/<id>.doi) whose outPath is not kept.
	Realisations int `json:"realisations"`
}

// ErrNoDeletePermission reports credentials that cannot delete.
var ErrNoDeletePermission = errors.New("no permission to delete (s3:DeleteObject)")

// ErrWindowPassed reports a gc stopped at its deadline.
var ErrWindowPassed = errors.New("sweep window passed")

// ErrSweepRunning reports another gc sweeping the same store.
var ErrSweepRunning = errors.New("another gc is sweeping this cache")

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
func GC(ctx context.Context, b uploader.Bucket, opts GCOptions) (*GCReport, error) {
	if opts.Window <= 0 {
		opts.Window = DefaultWindow
	}
	cb := &counting{Bucket: b}
	b = cb
	rep := &GCReport{Store: b.String(), DryRun: opts.DryRun}

	now := time.Now()
	var sw *sweep
	if !opts.DryRun {
		// 1. No other gc under way; delete permission, before anything
		// else; then the marker, before the listing.
		var err error
		if sw, err = startSweep(ctx, b, opts.Host, opts.Window); err != nil {
			return nil, err
		}
		defer sw.end(ctx)
		now = sw.now
	}
	rep.Now = now.UTC()

	g, err := Walk(ctx, b, opts.Walk)
	if err != nil {
		return nil, err
	}
	rep.Walk = g.Stats

	// 2. The live set: closure of pins, recent roots, recent .narinfos.
	live := make([]bool, len(g.nodes))
	var stack []int32
	mark := func(i int32) {
		if !live[i] {
			live[i] = true
			stack = append(stack, i)
		}
	}
	for _, p := range g.Pins {
		if i, ok := g.index[hashPart(p.Path)]; ok {
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
	for i := range g.nodes {
		n := &g.nodes[i]
		if n.present && (now.Sub(time.Unix(0, n.mod)) < opts.Grace || n.unreadable) {
			// An unreadable .narinfo is kept (verify reports it), and
			// with it the references it names, read past the line that
			// would not parse: a kept path's references never go.
			if !n.unreadable {
				rep.Kept.InGrace++
			}
			mark(int32(i))
		}
	}
	// A realisation written within --grace may be a push in progress too
	// (it goes up after its output's push): its output stays.
	for _, r := range g.realisations {
		if r.out >= 0 && g.nodes[r.out].present && now.Sub(time.Unix(0, r.mod)) < opts.Grace {
			mark(r.out)
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, r := range g.nodes[i].refs {
			mark(r)
		}
	}

	// 3. What goes: dead .narinfos, in waves, each of paths no remaining
	// dead .narinfo refers to.
	referrers := make([]int32, len(g.nodes)) // dead .narinfos referring to each
	var dead []int32
	for i := range g.nodes {
		n := &g.nodes[i]
		if !n.present {
			continue
		}
		if live[i] {
			rep.Kept.Paths++
			if n.nar >= 0 && g.narList[n.nar].listed {
				rep.Kept.Bytes += g.narList[n.nar].size
			}
			continue
		}
		dead = append(dead, int32(i))
		for _, r := range n.refs {
			referrers[r]++
		}
	}
	named := make([]bool, len(g.narList))
	for i := range g.nodes {
		if n := &g.nodes[i]; n.present && live[i] && n.nar >= 0 {
			named[n.nar] = true
		}
	}
	var nars []string
	for i, o := range g.narList {
		if !o.listed {
			continue
		}
		if named[i] || now.Sub(time.Unix(0, o.mod)) < opts.Grace {
			rep.Kept.NARs++
			continue
		}
		nars = append(nars, o.key)
		rep.Deleted.Bytes += o.size
	}
	slices.Sort(nars)
	rep.Deleted.NARs = len(nars)
	// NAR listings go with their .narinfo, or alone when theirs is gone
	// (and older than the grace period: written just before a .narinfo).
	var listings []string
	for i, mod := range g.listings {
		n := &g.nodes[i]
		if (n.present && !live[i]) || (!n.present && now.Sub(mod) >= opts.Grace) {
			listings = append(listings, n.hash+".ls")
		}
	}
	slices.Sort(listings)
	rep.Deleted.Listings = len(listings)
	var records []string
	for i := range g.rootRecords {
		if !live[i] && now.Sub(g.roots[i]) >= opts.OlderThan {
			records = append(records, RootPrefix+g.nodes[i].hash)
		}
	}
	// A batch record keeps nothing once it has expired.
	for key, at := range g.rootBatches {
		if now.Sub(at) >= opts.OlderThan {
			records = append(records, key)
		}
	}
	slices.Sort(records)
	rep.Deleted.RootRecords = len(records)
	// Realisations of outputs that go, and logs of derivations no kept
	// path names, if older than the grace period.
	var realisations []string
	for key, r := range g.realisations {
		if r.out >= 0 && !(g.nodes[r.out].present && live[r.out]) && now.Sub(time.Unix(0, r.mod)) >= opts.Grace {
			realisations = append(realisations, key)
		}
	}
	slices.Sort(realisations)
	rep.Deleted.Realisations = len(realisations)
	derivers := make(map[string]bool)
	for i := range g.nodes {
		if n := &g.nodes[i]; n.present && live[i] && n.deriver != "" {
			derivers[n.deriver] = true
		}
	}
	var logs []string
	for _, l := range g.logs {
		if !derivers[l.drv()] && now.Sub(time.Unix(0, l.mod)) >= opts.Grace {
			logs = append(logs, l.key)
		}
	}
	slices.Sort(logs)
	rep.Deleted.Logs = len(logs)
	rep.Deleted.Paths = make([]string, 0, len(dead))
	for _, i := range dead {
		rep.Deleted.Paths = append(rep.Deleted.Paths, g.path(i))
	}
	slices.Sort(rep.Deleted.Paths)

	var uploads []uploader.PendingUpload
	if err := b.ListUploads(ctx, func(u uploader.PendingUpload) error {
		if now.Sub(u.Initiated) >= opts.Grace {
			uploads = append(uploads, u)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	rep.Deleted.Uploads = len(uploads)

	if opts.DryRun {
		rep.Requests = cb.n.Load()
		return rep, nil
	}

	// 4. Delete, never after the deadline (less a margin for the request
	// in flight), referrers first.
	del := sw.deleter(opts.Deleting)
	// Realisations before the .narinfos they point at: none is left
	// pointing at a deleted path, however gc stops.
	if err := del.all(ctx, realisations); err != nil {
		return nil, err
	}
	if err := del.waves(ctx, g, dead, referrers); err != nil {
		return nil, err
	}
	if err := del.all(ctx, listings); err != nil {
		return nil, err
	}
	if err := del.all(ctx, nars); err != nil {
		return nil, err
	}
	if err := del.all(ctx, logs); err != nil {
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
	rep.Requests = cb.n.Load()
	return rep, nil
}

// sweep is a run that deletes: gc's, or verify --repair's.
type sweep struct {
	b      uploader.Bucket
	marker Sweep
	now    time.Time // the store's clock when the marker went up
	window time.Duration
}

// startSweep checks that no other sweep is under way and that the
// credentials may delete, then puts the marker up.
func startSweep(ctx context.Context, b uploader.Bucket, host string, window time.Duration) (*sweep, error) {
	if window <= 0 {
		window = DefaultWindow
	}
	now := time.Now()
	if err := checkNoSweep(ctx, b, now); err != nil {
		return nil, err
	}
	if err := probeDelete(ctx, b); err != nil {
		return nil, err
	}
	sw := &sweep{b: b, window: window, now: now,
		marker: Sweep{ListedAt: now.UTC(), Deadline: now.Add(window).UTC(), Host: host}}
	if err := putJSON(ctx, b, SweepKey, sw.marker); err != nil {
		return nil, fmt.Errorf("write the gc marker %s: %w", SweepKey, err)
	}
	// Ages are measured on the store's clock: the marker's time, as a
	// listing gives it (to the millisecond; a HEAD's Last-Modified is
	// truncated to the second).
	b.List(ctx, SweepKey, func(o uploader.Object) error {
		if o.Key == SweepKey && !o.LastModified.IsZero() {
			sw.now = o.LastModified
		}
		return nil
	})
	return sw, nil
}

// end says in the marker that this run deletes nothing more. It leaves
// the marker up: daemons read "no marker" as "no gc has ever swept", and
// "finished at" as "nothing seen since then was deleted". If the write
// fails, the marker stays as it was, and daemons wait for its deadline.
func (sw *sweep) end(ctx context.Context) {
	// Not ctx: an interrupted run still says it stopped deleting.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	m := sw.marker
	m.FinishedAt = time.Now().UTC()
	putJSON(dctx, sw.b, SweepKey, m)
}

// deleter deletes until the marker's deadline, less a margin for the
// request in flight.
func (sw *sweep) deleter(notify func(string)) *deleter {
	margin := min(sw.window/10, 30*time.Second)
	return &deleter{b: sw.b, stop: sw.marker.Deadline.Add(-margin), deadline: sw.marker.Deadline, notify: notify}
}

// checkNoSweep refuses to start while another gc's marker is up and its
// deadline not yet passed.
func checkNoSweep(ctx context.Context, b uploader.Bucket, now time.Time) error {
	data, err := b.Get(ctx, SweepKey)
	if errors.Is(err, uploader.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	s, err := parseSweep(data)
	if err != nil || !s.FinishedAt.IsZero() || !now.Before(s.Deadline) {
		return nil // unreadable, finished, or stale: a crashed gc's, past its deadline
	}
	// Not "remove the marker": daemons would read its absence as "no gc
	// ever swept" and not check what that gc may have deleted.
	return fmt.Errorf("%w (host %q, listed at %s): run gc again after %s (a gc that crashed deletes nothing after it either)",
		ErrSweepRunning, s.Host, s.ListedAt.Format(time.RFC3339), s.Deadline.Format(time.RFC3339))
}

// probeDelete writes and deletes an object of its own, so credentials
// that cannot delete fail gc before it deletes anything.
func probeDelete(ctx context.Context, b uploader.Bucket) error {
	var r [8]byte
	rand.Read(r[:])
	key := probePrefix + hex.EncodeToString(r[:])
	if err := b.Put(ctx, key, strings.NewReader("probe\n"), 6, "text/plain"); err != nil {
		if denied(err) {
			return fmt.Errorf("gc needs s3:PutObject on %s* for its marker: %w", Prefix, err)
		}
		return err
	}
	if err := b.Delete(ctx, key); err != nil {
		if denied(err) {
			return fmt.Errorf("%s: %w; give gc its own account with the gc policy (nixpush init --print-policy prints it); %s is left behind: %v",
				b, ErrNoDeletePermission, key, err)
		}
		return err
	}
	return nil
}

// denied reports an error of credentials that may not do what was asked.
func denied(err error) bool {
	if se := uploader.AsStoreError(err); se != nil && se.Problem == uploader.Denied {
		return true
	}
	return errors.Is(err, fs.ErrPermission)
}

// deleter deletes keys in parallel until its stop time.
type deleter struct {
	b        uploader.Bucket
	stop     time.Time
	deadline time.Time
	notify   func(string)
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
		keys := make([]string, len(wave))
		for k, i := range wave {
			keys[k] = g.nodes[i].hash + ".narinfo"
		}
		if err := d.all(ctx, keys); err != nil {
			return err
		}
		for _, i := range wave {
			for _, r := range g.nodes[i].refs {
				referrers[r]--
			}
		}
	}
	return nil
}

// deleteBatch is how many keys one DeleteObjects request carries.
const deleteBatch = 1000

// all deletes keys, in batches of a thousand, a few batches at once.
func (d *deleter) all(ctx context.Context, keys []string) error {
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(4)
	for len(keys) > 0 {
		batch := keys[:min(deleteBatch, len(keys))]
		keys = keys[len(batch):]
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

// counting counts the requests made to a Bucket.
type counting struct {
	uploader.Bucket
	n atomic.Int64
}

func (c *counting) Has(ctx context.Context, key string) (bool, error) {
	c.n.Add(1)
	return c.Bucket.Has(ctx, key)
}

func (c *counting) Get(ctx context.Context, key string) ([]byte, error) {
	c.n.Add(1)
	return c.Bucket.Get(ctx, key)
}

func (c *counting) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	c.n.Add(1)
	return c.Bucket.Put(ctx, key, r, size, ct)
}

func (c *counting) Stat(ctx context.Context, key string) (uploader.Object, error) {
	c.n.Add(1)
	return c.Bucket.Stat(ctx, key)
}

func (c *counting) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	c.n.Add(1)
	return c.Bucket.Open(ctx, key)
}

func (c *counting) Delete(ctx context.Context, key string) error {
	c.n.Add(1)
	return c.Bucket.Delete(ctx, key)
}

func (c *counting) List(ctx context.Context, prefix string, fn func(uploader.Object) error) error {
	n := 0
	c.n.Add(1)
	return c.Bucket.List(ctx, prefix, func(o uploader.Object) error {
		if n++; n%1000 == 0 {
			c.n.Add(1) // the next page
		}
		return fn(o)
	})
}

func (c *counting) DeleteMany(ctx context.Context, keys []string) error {
	c.n.Add(int64(len(keys)+deleteBatch-1) / deleteBatch)
	return c.Bucket.DeleteMany(ctx, keys)
}

func (c *counting) ListUploads(ctx context.Context, fn func(uploader.PendingUpload) error) error {
	c.n.Add(1)
	return c.Bucket.ListUploads(ctx, fn)
}

func (c *counting) AbortUpload(ctx context.Context, u uploader.PendingUpload) error {
	c.n.Add(1)
	return c.Bucket.AbortUpload(ctx, u)
}
