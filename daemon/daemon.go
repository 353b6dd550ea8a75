package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/nixpush/nixpush/internal/version"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/queue"
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
	cfg = cfg.withDefaults()
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
	srv := d.apiServer()

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
		if err := d.serveMetrics(gctx, g); err != nil {
			return err
		}
	}
	g.Go(func() error { return d.importSpoolLoop(gctx) })
	g.Go(func() error { return d.watchStore(gctx) })
	g.Go(func() error { return d.work(gctx) })
	g.Go(func() error { return d.report(gctx) })
	g.Go(func() error { return d.keepUploads(gctx) })
	g.Go(func() error { return d.shutdown(gctx, srv) })
	err = g.Wait()
	d.log.Info().Msg("daemon stopped")
	return err
}

// withDefaults fills in the settings left at their zero value.
func (cfg Config) withDefaults() Config {
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
	return cfg
}

// apiServer is the HTTP server of the local API (server.go).
func (d *Daemon) apiServer() *http.Server {
	return &http.Server{
		Handler:           d.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      maxWait + 30*time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       connContext,
	}
}

// serveMetrics listens on cfg.MetricsListen and serves GET /metrics in g
// until ctx is done.
func (d *Daemon) serveMetrics(ctx context.Context, g *errgroup.Group) error {
	addr := d.cfg.MetricsListen
	mln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metricsHandler())
	msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		if err := msrv.Serve(mln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics on %s: %w", addr, err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		msrv.Close()
		return nil
	})
	d.log.Info().Str("address", mln.Addr().String()).Msg("serving Prometheus metrics at /metrics")
	return nil
}

// shutdown waits for ctx to be done, then stops the API server: no new
// work; in-flight items return to the queue as their pushes see ctx done.
func (d *Daemon) shutdown(ctx context.Context, srv *http.Server) error {
	<-ctx.Done()
	if d.cfg.Stopping != nil {
		d.cfg.Stopping()
	}
	d.log.Info().Msg("stopping: no new work; in-flight items return to the queue")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return nil
}
