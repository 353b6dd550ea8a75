package daemon

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/queue"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// leaseRetry is the pause after a lease that could not commit.
const leaseRetry = time.Second

// leaseInterval is the shortest time between two leases: the longest a
// path handed over right after another waits before its push starts.
const leaseInterval = 200 * time.Millisecond

// burstOver waits until no hand-off has arrived for cfg.BurstQuiet, or
// maxBurstWait; it returns false if ctx is done first.
func (d *Daemon) burstOver(ctx context.Context) bool {
	if d.cfg.BurstQuiet < 0 {
		return true
	}
	for start := time.Now(); time.Since(start) < maxBurstWait; {
		wait := d.cfg.BurstQuiet - time.Since(time.Unix(0, d.lastHandoff.Load()))
		if wait <= 0 {
			break
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// work leases queued items and pushes them, Pushes batches at once, until
// ctx is done.
func (d *Daemon) work(ctx context.Context) error {
	slots := make(chan struct{}, d.cfg.Pushes)
	var wg sync.WaitGroup
	defer wg.Wait()
	var lastLease time.Time
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		if !d.readyToLease(ctx, lastLease) {
			<-slots
			return nil
		}
		changed := d.queue.Changed()
		var items []queue.Item
		err := d.write(func() (err error) { items, err = d.queue.Lease(ctx, d.cfg.Batch); return err })
		if len(items) > 0 {
			lastLease = time.Now()
		}
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				return nil
			}
			// A lease is a write: a full state disk fails it. Try again
			// after a while; status says what is wrong meanwhile.
			d.log.Error().Err(err).Msg("lease queued items: queue cannot write; trying again")
			select {
			case <-time.After(leaseRetry):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		if len(items) > 0 {
			d.startPush(ctx, &wg, slots, items)
			continue
		}
		<-slots
		if !d.waitForWork(ctx, changed) {
			return nil
		}
	}
}

// readyToLease waits until a lease may be taken: leaseInterval after the
// last one, hand-offs paused (burstOver) and the store check passing. It
// returns false if ctx is done first.
func (d *Daemon) readyToLease(ctx context.Context, lastLease time.Time) bool {
	// While hooks trickle in, one per build, gather them for a moment:
	// a push cycle has fixed costs (queue commits, a path-info query)
	// that would otherwise be paid per build, beside the builds.
	if wait := leaseInterval - time.Since(lastLease); wait > 0 {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return false
		}
	}
	if !d.burstOver(ctx) {
		return false
	}
	// Nothing is leased while the store check fails: items keep their
	// attempts and go as soon as it passes.
	select {
	case <-d.health.ready():
		return true
	case <-ctx.Done():
		return false
	}
}

// startPush pushes leased items in a goroutine of wg that holds one of
// slots until the push ends or waits for a gc sweep.
func (d *Daemon) startPush(ctx context.Context, wg *sync.WaitGroup, slots chan struct{}, items []queue.Item) {
	d.session.open(d.up.Stats())
	wg.Add(1)
	go func() {
		defer wg.Done()
		// A push waiting for a gc sweep to finish frees its slot:
		// the paths that come meanwhile go on uploading.
		free := sync.OnceFunc(func() { <-slots })
		defer free()
		d.push(uploader.OnSweepWait(ctx, free), items)
		if d.queue.Pending() == 0 {
			d.session.close()
			d.abandonUploads(ctx)
		}
	}()
}

// waitForWork waits, with nothing to lease, until the queue changes or its
// next item falls due; it returns false if ctx is done first.
func (d *Daemon) waitForWork(ctx context.Context, changed <-chan struct{}) bool {
	var timer <-chan time.Time
	if wake := d.queue.NextWake(); !wake.IsZero() {
		t := time.NewTimer(time.Until(wake) + 10*time.Millisecond)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-changed:
	case <-timer:
	case <-ctx.Done():
		return false
	}
	return true
}

// push uploads the closures of leased items and settles each item.
func (d *Daemon) push(ctx context.Context, items []queue.Item) {
	var roots, recheck, drvItems []string
	for _, it := range items {
		if drv, ok := strings.CutSuffix(it.Path, allOutputs); ok {
			d.expand(ctx, it.Path, drv)
			continue
		}
		if strings.HasSuffix(it.Path, logSuffix) || strings.HasSuffix(it.Path, realisationsSuffix) {
			drvItems = append(drvItems, it.Path)
			continue
		}
		if it.Recheck {
			recheck = append(recheck, it.Path)
		} else {
			roots = append(roots, it.Path)
		}
	}
	var wg sync.WaitGroup
	if len(recheck) > 0 {
		wg.Go(func() { d.complete(ctx, recheck, d.up.Recheck(ctx, recheck)) })
	}
	if len(roots) > 0 {
		d.complete(ctx, roots, d.up.Push(ctx, roots))
	}
	wg.Wait()
	// Build logs and realisations after the paths: neither ever holds up
	// a .narinfo.
	if len(drvItems) > 0 {
		errs := make([]error, len(drvItems))
		for i, item := range drvItems {
			if drv, ok := strings.CutSuffix(item, logSuffix); ok {
				errs[i] = d.pushLog(ctx, drv)
			} else {
				errs[i] = d.pushRealisations(ctx, strings.TrimSuffix(item, realisationsSuffix))
			}
		}
		d.complete(ctx, drvItems, errs)
	}
}

// complete settles pushed items: the failed one by one, the others in one
// commit, not one each.
func (d *Daemon) complete(ctx context.Context, items []string, errs []error) {
	var done []string
	for i, item := range items {
		if errs[i] == nil && ctx.Err() == nil {
			done = append(done, item)
			continue
		}
		d.settle(ctx, item, errs[i])
	}
	if len(done) > 0 {
		if err := d.mustWrite(ctx, "complete", func() error { return d.queue.Complete(ctx, done...) }); err != nil {
			d.log.Warn().Err(err).Int("paths", len(done)).Msg("stopping before the pushed paths were marked done; they are checked again at the next start")
		}
	}
}

// expand replaces a queued derivation by its outputs.
func (d *Daemon) expand(ctx context.Context, item, drv string) {
	outs, err := d.cfg.Nix.Outputs(ctx, drv)
	if err != nil {
		if nix.IsInvalid(err) {
			err = store.Permanent(err)
		}
		d.settle(ctx, item, err)
		return
	}
	if err := d.mustWrite(ctx, "replace", func() error { return d.queue.Replace(ctx, item, outs) }); err != nil && ctx.Err() == nil {
		d.log.Error().Err(err).Str("path", item).Msg("queue outputs of derivation")
	}
}

func (d *Daemon) settle(ctx context.Context, path string, err error) {
	if ctx.Err() != nil {
		// Stopping: the item goes back to the queue as it was. If even
		// that cannot commit, it is still leased in the file, and leased
		// items return to the queue at the next start.
		if rerr := d.write(func() error { return d.queue.Release(context.Background(), path) }); rerr != nil {
			d.log.Error().Err(rerr).Str("path", path).Msg("return item to the queue (it returns at the next start)")
		}
		return
	}
	d.storeTrouble(err)
	var op func() error
	switch {
	case err == nil:
		op = func() error { return d.queue.Complete(ctx, path) }
	case store.IsPermanent(err):
		d.log.Error().Err(err).Str("path", path).Msg("push failed")
		op = func() error { return d.queue.Fail(ctx, path, err) }
	default:
		d.log.Warn().Err(err).Str("path", path).Msg("push failed, will retry")
		op = func() error { return d.queue.Retry(ctx, path, err) }
	}
	if qerr := d.mustWrite(ctx, "settle", op); qerr != nil {
		d.log.Warn().Err(qerr).Str("path", path).Msg("stopping before the item's outcome was committed; it is pushed again at the next start")
	}
}
