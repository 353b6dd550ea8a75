package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/hook"
	"github.com/nixpush/nixpush/internal/version"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/queue"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// allOutputs marks a queued derivation whose outputs are to be pushed, in
// Nix's own installable syntax (drv^*).
const allOutputs = "^*"

// Config configures the daemon.
type Config struct {
	Socket   string
	StateDir string
	SpoolDir string // "" means StateDir/spool
	StoreDir string // "" means nix.DefaultStoreDir
	Uploader *uploader.Uploader
	Nix      *nix.Client
	Log      zerolog.Logger
	// Listener, when set, is used instead of creating Socket (systemd
	// socket activation); the daemon then leaves the socket file alone.
	Listener net.Listener
	// Batch is how many queued items one push takes at most.
	Batch int
	// Pushes is how many pushes run at once.
	Pushes int
	// SpoolInterval is how often the spool is scanned (0 = 1s).
	SpoolInterval time.Duration
	// SocketGroup is the group (name or number) whose members may enqueue,
	// besides root; the socket file is given to it, mode 0660.
	SocketGroup string
	// Notify, when set, receives sd_notify messages: STATUS= lines every
	// StatusInterval (0 = 2s) and WATCHDOG=1 when Watchdog > 0.
	Notify         func(string)
	StatusInterval time.Duration
	Watchdog       time.Duration
	// Ready is called once the socket accepts requests.
	Ready func()
	// Stopping is called when the daemon begins to shut down.
	Stopping func()
	// MetricsListen, when set, is a TCP address to serve Prometheus
	// metrics on (GET /metrics).
	MetricsListen string
	// BuildLogs, when set, is where the build logs of the derivations the
	// hook names are read from, to upload after their outputs.
	BuildLogs BuildLogs
	// TrustCacheFor is how long a pushed path is believed to stay in the
	// cache (the uploader's setting): a hook enqueueing a path pushed
	// longer ago has it checked again.
	TrustCacheFor time.Duration
	// BurstQuiet is how long hand-offs must pause before queued items
	// are leased for a push (0: DefaultBurstQuiet; negative: no pause,
	// pushes start while hooks still wait for their answer).
	BurstQuiet time.Duration
}

// DefaultBurstQuiet: Nix 2.35 runs post-build hooks concurrently (up to
// max-jobs), so hand-offs come in bursts. A push started in the middle of
// one takes the CPU (a Nix start for path info, NAR packing and
// compression) that the hooks still waiting need for their answer, which
// holds their builds' slots; so pushes wait until hand-offs have paused
// this long (at most maxBurstWait). 32 hooks at once on 2 cores, side by
// side: p50 742 -> 547 ms, p99 1104 -> 709 ms (docs/hooks.md). One hook per
// build (Nix up to 2.34) has its push start 100 ms later.
const DefaultBurstQuiet = 100 * time.Millisecond

// maxBurstWait bounds the wait for hand-offs to pause: a stream that
// never does still gets pushed.
const maxBurstWait = time.Second

// Daemon is a running nixpush daemon.
type Daemon struct {
	cfg      Config
	storeDir string
	queue    *queue.Queue
	up       *uploader.Uploader
	log      zerolog.Logger
	groupID  int // -1: no socket group
	started  time.Time
	rates    meter
	health   *storeHealth
	qhealth  queueHealth
	session  session
	// lastHandoff is when the last enqueue request arrived (UnixNano).
	lastHandoff atomic.Int64
}

// Run runs the daemon until ctx is done, then stops taking work, returns
// in-flight items to the queue, closes the queue and removes the socket.
func Run(ctx context.Context, cfg Config) error {
	if cfg.StoreDir == "" {
		cfg.StoreDir = nix.DefaultStoreDir
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = filepath.Join(cfg.StateDir, "spool")
	}
	if cfg.Batch < 1 {
		cfg.Batch = 256
	}
	if cfg.Pushes < 1 {
		cfg.Pushes = 4
	}
	if cfg.BurstQuiet == 0 {
		cfg.BurstQuiet = DefaultBurstQuiet
	}
	if cfg.SpoolInterval <= 0 {
		cfg.SpoolInterval = time.Second
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 2 * time.Second
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	doneFor := cfg.TrustCacheFor
	if doneFor <= 0 {
		doneFor = -1 // trust nothing: a done path enqueued again is queued
	}
	// The done set is the cache's history: one per store.
	q, err := queue.Open(filepath.Join(cfg.StateDir, "queue.db"), queue.Options{History: cfg.Uploader.Store().String(), DoneFor: doneFor})
	if err != nil {
		return err
	}
	defer q.Close()
	// Large NAR uploads are recorded in the queue as they go, to resume
	// after a restart (uploader/resume.go).
	cfg.Uploader.SetJournal(queueJournal{q})
	d := &Daemon{cfg: cfg, storeDir: cfg.StoreDir, queue: q, up: cfg.Uploader, log: cfg.Log, groupID: -1, started: time.Now(), health: newStoreHealth()}
	if cfg.SocketGroup != "" {
		if d.groupID, err = lookupGroup(cfg.SocketGroup); err != nil {
			return err
		}
	}

	ln := cfg.Listener
	if ln == nil {
		ln, err = listenUnix(cfg.Socket, d.groupID)
		if err != nil {
			return err
		}
		defer os.Remove(cfg.Socket)
	}
	srv := &http.Server{
		Handler:           d.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      maxWait + 30*time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       connContext,
	}

	st := q.Stats()
	d.log.Info().Str("version", version.Get().String()).Str("socket", cfg.Socket).Str("store", fmt.Sprint(cfg.Uploader.Store())).
		Int("queued", st.Queued).Int("failed", st.Failed).Int("done", st.Done).Msg("daemon started")
	if cfg.Ready != nil {
		cfg.Ready()
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve %s: %w", cfg.Socket, err)
		}
		return nil
	})
	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen %s: %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", d.metricsHandler())
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := msrv.Serve(mln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics on %s: %w", cfg.MetricsListen, err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			msrv.Close()
			return nil
		})
		d.log.Info().Str("address", mln.Addr().String()).Msg("serving Prometheus metrics at /metrics")
	}
	g.Go(func() error { return d.importSpoolLoop(gctx) })
	g.Go(func() error { return d.watchStore(gctx) })
	g.Go(func() error { return d.work(gctx) })
	g.Go(func() error { return d.report(gctx) })
	g.Go(func() error { return d.keepUploads(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		if cfg.Stopping != nil {
			cfg.Stopping()
		}
		d.log.Info().Msg("stopping: no new work; in-flight items return to the queue")
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return nil
	})
	err = g.Wait()
	d.log.Info().Msg("daemon stopped")
	return err
}

func lookupGroup(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("socket group %q: %w (create it, or pass a group that exists)", name, err)
	}
	return strconv.Atoi(g.Gid)
}

func listenUnix(path string, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	// A socket file nobody answers on is left over from a daemon that died.
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: another nixpush daemon is listening there", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("socket %s: give it to group %d: %w", path, gid, err)
		}
	}
	return ln, nil
}

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
		// While hooks trickle in, one per build, gather them for a moment:
		// a push cycle has fixed costs (queue commits, a path-info query)
		// that would otherwise be paid per build, beside the builds.
		if wait := leaseInterval - time.Since(lastLease); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				<-slots
				return nil
			}
		}
		if !d.burstOver(ctx) {
			<-slots
			return nil
		}
		// Nothing is leased while the store check fails: items keep their
		// attempts and go as soon as it passes.
		select {
		case <-d.health.ready():
		case <-ctx.Done():
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
			continue
		}
		<-slots
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
			return nil
		}
	}
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

// maxListed bounds the paths listed in a status answer.
const maxListed = 100

// status is the answer to /v1/status.
func (d *Daemon) status() hook.Status {
	qs := d.queue.Stats()
	us := d.up.Stats()
	qerr, qsince, _, held := d.qhealth.state()
	spooled, _ := SpoolFiles(d.cfg.SpoolDir)
	st := hook.Status{
		Queued: qs.Queued, Active: qs.Active, Failed: qs.Failed, Done: qs.Done,
		// Drained only when every path handed over is accounted for: none
		// queued or in flight, none held in memory for want of a commit,
		// no spooled request waiting to be imported.
		Drained: qs.Queued == 0 && qs.Active == 0 && len(held) == 0 && len(spooled) == 0,
		Held:    len(held),
		Spooled: len(spooled),
		Uploaded: hook.Uploaded{Paths: us.Paths, NarBytes: us.NarBytes, FileBytes: us.FileBytes, Skipped: us.Skipped, Requests: us.Requests,
			Logs: us.Logs, Filtered: us.Filtered, Realisations: us.Realisations,
			NarBytesPerSecond: d.rates.rate(), Since: d.started},
		Store:      fmt.Sprint(d.up.Store()),
		Version:    version.Get(),
		StoreCheck: d.health.status(),
		Progress:   d.session.progress(us),
	}
	st.GCSettings = d.up.SettingsProblem()
	if t, ok := d.up.Traffic(); ok {
		st.Traffic = &hook.Traffic{Throttling: t.Throttling, Throttled: t.Throttled,
			Concurrency: t.Concurrency, MaxConcurrency: t.MaxConcurrency, InFlight: t.InFlight,
			UploadRate: t.Rate, UploadRateCap: t.RateCap, Sent: t.Sent, UploadRateSchedule: t.RateSchedule}
		if !t.RateCapNext.IsZero() {
			next := t.RateCapNext
			st.Traffic.UploadRateCapNextAt, st.Traffic.UploadRateCapNext = &next, t.RateCapNextRate
		}
		if !t.LastThrottled.IsZero() {
			last := t.LastThrottled
			st.Traffic.LastThrottled = &last
		}
	}
	if qerr != nil {
		st.QueueError = "queue cannot write: " + qerr.Error()
		st.QueueErrorSince = &qsince
	}
	st.HeldPaths = held[:min(len(held), maxListed)]
	if !qs.OldestQueued.IsZero() {
		t := qs.OldestQueued
		st.OldestQueued = &t
	}
	if !us.LastPush.IsZero() {
		t := us.LastPush
		st.Uploaded.LastPush = &t
	}
	for _, f := range qs.Failures {
		st.Failures = append(st.Failures, hook.Failure{Path: f.Path, Error: f.LastError, Attempts: f.Attempts, Since: f.UpdatedAt, Class: f.Class})
	}
	return st
}
