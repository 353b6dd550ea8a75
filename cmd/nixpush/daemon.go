package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/coreos/go-systemd/v22/journal"
	"github.com/mattn/go-isatty"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/rs/zerolog"
	"github.com/rs/zerolog/journald"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/daemon"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// memoryLimit is the daemon's soft memory limit (GOMEMLIMIT overrides it).
const memoryLimit = 40 << 20

// daemonFlags are nixpush daemon's flags.
type daemonFlags struct {
	stateDir, storeURI, socket, spoolDir, compression string
	socketGroup, caCert, storeDir, metricsListen      string
	logLevel, logFormat                               string
	keyFiles, excludes, skipSignedBy                  stringsFlag
	jobs                                              int
	uploadLogs, writeListing                          bool
	maxRate                                           rateFlag
	trust, maxSweepWait                               time.Duration
}

func parseDaemonFlags(args []string, stderr io.Writer) (*daemonFlags, bool) {
	fs := flag.NewFlagSet("nixpush daemon", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &daemonFlags{}
	fs.StringVar(&f.stateDir, "state-dir", envOr("STATE_DIRECTORY", "/var/lib/nixpush"), "queue and default cache directory")
	fs.StringVar(&f.storeURI, "store-uri", os.Getenv("NIXPUSH_STORE_URI"), "binary cache: s3://BUCKET?endpoint=HOST&scheme=http|https&region=R&profile=P or file:///DIR (default file://STATE-DIR/cache) (env NIXPUSH_STORE_URI)")
	fs.Var(&f.keyFiles, "secret-key-file", "Nix signing key (name:base64), mode 0600; repeatable: each .narinfo is signed by every key, as during a key rotation (env NIXPUSH_SECRET_KEY_FILE)")
	fs.StringVar(&f.socket, "socket", envOr("NIXPUSH_SOCKET", api.DefaultSocket), "socket to listen on (env NIXPUSH_SOCKET)")
	fs.StringVar(&f.spoolDir, "spool-dir", os.Getenv("NIXPUSH_SPOOL_DIR"), "spool the hook writes to when the daemon is down (default STATE-DIR/spool) (env NIXPUSH_SPOOL_DIR)")
	fs.StringVar(&f.compression, "compression", "zstd", "NAR compression: zstd, xz or none")
	fs.IntVar(&f.jobs, "jobs", max(4, 2*runtime.GOMAXPROCS(0)), "paths packed and uploaded at once")
	fs.StringVar(&f.socketGroup, "socket-group", os.Getenv("NIXPUSH_SOCKET_GROUP"), "group whose members may enqueue besides root; the socket is given to it, mode 0660 (env NIXPUSH_SOCKET_GROUP)")
	fs.StringVar(&f.caCert, "ca-certificate", "", "PEM file of a private CA that signed the S3 endpoint's certificate")
	fs.StringVar(&f.storeDir, "store-dir", envOr("NIX_STORE_DIR", nix.DefaultStoreDir), "the Nix store directory")
	fs.BoolVar(&f.uploadLogs, "upload-logs", true, "upload the build log of each derivation the hook names to log/<drv name>, after its outputs")
	fs.BoolVar(&f.writeListing, "write-nar-listing", false, "write <hash>.ls, the JSON listing of each NAR's files, beside its .narinfo (Nix's write-nar-listing=true)")
	fs.Var(&f.excludes, "exclude", "leave out store paths whose name (after the hash) matches this regular expression; repeatable")
	fs.Var(&f.skipSignedBy, "skip-signed-by", "leave out store paths the local Nix database holds a signature of by this key name (e.g. cache.nixos.org-1); repeatable")
	fs.Var(&f.maxRate, "max-upload-rate", "cap the bytes a second sent to an S3 store, across all uploads (e.g. 20MiB, 2.5MB, 800KiB; 0 or unlimited: none), "+
		"optionally with time-of-day windows of their own, local time: '20MiB, 00:00-07:00=unlimited, 12:00-13:00=50MiB' (a window may cross midnight); "+
		"costs a tenth of a second of the cap (at least 1 MiB) sent at once above it after an idle moment, up to a second of it after a slow answer of the store, and uploads take as long as the cap makes them")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9747), at /metrics")
	fs.DurationVar(&f.trust, "trust-cache-for", time.Hour, "how long a path seen in the cache (or uploaded) is believed to stay there before a push that needs it checks again; "+
		"keep it well below gc's --grace (24h by default), which spares young .narinfos and NARs for that long; 0s checks whole closures on every push")
	fs.DurationVar(&f.maxSweepWait, "max-sweep-wait", time.Hour, "how long a push that meets a gc sweep waits for it to finish (reading gc's marker every few seconds) before it fails, to be retried; keep it above gc's --sweep-window")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&f.logFormat, "log-format", "auto", "log format: auto (journald under systemd, console on a terminal, JSON otherwise), journald, console, json")
	return f, parseNoArgs(fs, args)
}

// daemonSetup is what the daemon's flags and environment say, checked
// before anything is opened or started.
type daemonSetup struct {
	log        zerolog.Logger
	comp       uploader.Compression
	filter     uploader.Filter
	keys       []signature.SecretKey
	storeURI   string
	serveIdle  *time.Duration // NIXPUSH_SERVE_IDLE, when set
	burstQuiet time.Duration  // NIXPUSH_BURST_QUIET; 0: the default
}

func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, ok := parseDaemonFlags(args, stderr)
	if !ok {
		return 2
	}
	setup, err := f.check(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
		return 2
	}
	store, err := store.Open(ctx, setup.storeURI, store.Options{CACertFile: f.caCert, UploadRate: f.maxRate.RateSchedule})
	if err != nil {
		fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
		return 2
	}
	setMemoryPolicy()
	if file := os.Getenv("NIXPUSH_CPUPROFILE"); file != "" {
		// For finding where the daemon's CPU goes (go tool pprof FILE).
		stop, err := startCPUProfile(file)
		if err != nil {
			fmt.Fprintf(stderr, "nixpush daemon: NIXPUSH_CPUPROFILE: %v\n", err)
			return 2
		}
		defer stop()
	}
	if err := f.run(ctx, setup, store); err != nil {
		setup.log.Error().Err(err).Msg("daemon failed")
		fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
		return 1
	}
	return 0
}

// check checks the flags and the environment, each bad one a one-line
// error naming it and the fix.
func (f *daemonFlags) check(stderr io.Writer) (*daemonSetup, error) {
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return nil, err
	}
	s := &daemonSetup{log: log, storeURI: f.storeURI}
	if s.comp, err = uploader.ParseCompression(f.compression); err != nil {
		return nil, err
	}
	if s.filter, err = parseFilter(f.excludes, f.skipSignedBy); err != nil {
		return nil, err
	}
	switch {
	case f.jobs < 1:
		return nil, fmt.Errorf("--jobs %d: want 1 or more paths at once, such as 4", f.jobs)
	case f.trust < 0:
		return nil, fmt.Errorf("--trust-cache-for %s: want a duration of 0s or more, such as 1h", f.trust)
	case f.maxSweepWait <= 0:
		return nil, fmt.Errorf("--max-sweep-wait %s: want a duration above 0, such as 1h (above gc's --sweep-window)", f.maxSweepWait)
	}
	if s.keys, err = f.loadKeys(); err != nil {
		return nil, err
	}
	if s.storeURI == "" {
		abs, err := filepath.Abs(filepath.Join(f.stateDir, "cache"))
		if err != nil {
			return nil, err
		}
		s.storeURI = "file://" + abs
	}
	if err := s.checkEnv(); err != nil {
		return nil, err
	}
	if s.comp == uploader.XZ {
		if tool := uploader.XZTool(); tool != "" {
			log.Info().Str("xz", tool).Msg("xz NARs are compressed by the xz tool")
		} else {
			log.Warn().Msg("xz is not on PATH: xz NARs are compressed by a pure-Go encoder at about 1 MB/s; install xz (xz-utils) for liblzma's speed on every core")
		}
	}
	return s, nil
}

// loadKeys reads the signing keys: one at least, no two of one name.
func (f *daemonFlags) loadKeys() ([]signature.SecretKey, error) {
	files := f.keyFiles
	if len(files) == 0 && os.Getenv("NIXPUSH_SECRET_KEY_FILE") != "" {
		files = stringsFlag{os.Getenv("NIXPUSH_SECRET_KEY_FILE")}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("--secret-key-file is required; make one with: nixpush keygen --name NAME --out DIR")
	}
	var keys []signature.SecretKey
	names := map[string]string{}
	for _, file := range files {
		key, err := nix.LoadSecretKeyFile(file)
		if err != nil {
			return nil, err
		}
		name := key.ToPublicKey().Name
		if other, dup := names[name]; dup {
			// Nix keeps one signature per key name: the second would replace the first.
			return nil, fmt.Errorf("%s and %s are both keys named %q; a rotation needs a new name (e.g. %s-2)", other, file, name, name)
		}
		names[name] = file
		keys = append(keys, key)
	}
	return keys, nil
}

// checkEnv reads the variables tests and benchmarks set.
func (s *daemonSetup) checkEnv() error {
	if v := os.Getenv("NIXPUSH_SERVE_IDLE"); v != "" {
		// For tests: how long nix-store --serve stays idle; 0 keeps it
		// for ever (and past any age), as the daemon did before it let
		// go of Nix's big lock, to show what letting go is for.
		idle, err := time.ParseDuration(v)
		if err != nil || idle < 0 {
			return fmt.Errorf("NIXPUSH_SERVE_IDLE=%q: want a duration such as 2s (0: never stop nix-store --serve), or unset it", v)
		}
		s.serveIdle = &idle
	}
	if v := os.Getenv("NIXPUSH_BURST_QUIET"); v != "" {
		// For benchmarks: how long hand-offs must pause before a push
		// starts (0: no pause, as before), to measure what the pause is for.
		q, err := time.ParseDuration(v)
		if err != nil || q < 0 {
			return fmt.Errorf("NIXPUSH_BURST_QUIET=%q: want a duration such as 100ms (0: no pause), or unset it", v)
		}
		s.burstQuiet = q
		if q == 0 {
			s.burstQuiet = -1
		}
	}
	return nil
}

// setMemoryPolicy keeps the daemon small unless GOMEMLIMIT or GOGC say
// otherwise.
func setMemoryPolicy() {
	if os.Getenv("GOMEMLIMIT") == "" {
		// A soft limit: the garbage collector works harder near it, so
		// the daemon stays small on a Raspberry Pi beside the builds.
		debug.SetMemoryLimit(memoryLimit)
	}
	if os.Getenv("GOGC") == "" {
		// The live heap is mostly long-lived encoders; what a push
		// allocates besides is little (~16 MB per 200 MiB of NAR), so
		// collecting at 1.35x the live heap rather than 2x costs next to
		// no CPU (daemon CPU per push: 500 x 258 KiB 0.78 -> 0.80 s,
		// 10 x 50 MiB 1.40 -> 1.39 s against 1.5x) and keeps the peak
		// under 48 MiB with two large NARs streaming (their part buffers
		// are outside the heap): 47.3 MiB, 48.4 at 1.5x.
		debug.SetGCPercent(35)
	}
}

func startCPUProfile(file string) (stop func(), err error) {
	out, err := os.Create(file)
	if err == nil {
		err = pprof.StartCPUProfile(out)
	}
	if err != nil {
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); out.Close() }, nil
}

// run wires Nix, the uploader and systemd into the daemon and runs it
// until ctx is done.
func (f *daemonFlags) run(ctx context.Context, s *daemonSetup, store store.Store) error {
	log := s.log
	nixClient := &nix.Client{StoreDir: f.storeDir}
	// Path info through one long-lived nix-store --serve, not a Nix process
	// per push: that costs ~50 ms of CPU each, taken from the builds.
	pathInfo := nix.NewServe(*nixClient)
	if s.serveIdle != nil {
		pathInfo.Idle = *s.serveIdle
		if *s.serveIdle == 0 {
			pathInfo.Idle, pathInfo.MaxAge = -1, -1
		}
	}
	defer pathInfo.Close()
	go func() {
		// Nix starts while the daemon does; a failure here is retried
		// (and reported) by the first query.
		if err := pathInfo.Start(ctx); err != nil {
			log.Debug().Err(err).Msg("nix-store --serve did not start; the first query starts it again")
		}
	}()
	up := uploader.New(uploader.Config{
		Store: store, Nix: pathInfo, Key: s.keys[0], Keys: s.keys[1:], Compression: s.comp, Jobs: f.jobs,
		StoreDir: f.storeDir, Log: log, WriteNARListing: f.writeListing,
		Filter: s.filter, TrustCacheFor: f.trust, MaxSweepWait: f.maxSweepWait,
	})
	var ln net.Listener
	if lns, err := activation.Listeners(); err == nil && len(lns) > 0 && lns[0] != nil {
		ln = lns[0]
		log.Info().Msg("using the socket systemd passed in")
	}
	var buildLogs daemon.BuildLogs
	if f.uploadLogs {
		if nixClient.KeepsBuildLogs(ctx) {
			buildLogs = &nix.BuildLogs{Client: *nixClient}
		} else {
			log.Warn().Msg("Nix keeps no build logs (keep-build-log = false): none are uploaded; set keep-build-log = true, or pass --upload-logs=false to say so")
		}
	}
	watchdog, _ := sddaemon.SdWatchdogEnabled(false)
	return daemon.Run(ctx, daemon.Config{
		BuildLogs: buildLogs,
		Socket:    f.socket, StateDir: f.stateDir, SpoolDir: f.spoolDir, StoreDir: f.storeDir,
		Uploader: up, Nix: nixClient, Log: log, Listener: ln, SocketGroup: f.socketGroup, MetricsListen: f.metricsListen,
		TrustCacheFor: f.trust, BurstQuiet: s.burstQuiet,
		Notify:   func(s string) { sddaemon.SdNotify(false, s) },
		Watchdog: watchdog,
		Ready:    func() { sddaemon.SdNotify(false, sddaemon.SdNotifyReady) },
		Stopping: func() { sddaemon.SdNotify(false, sddaemon.SdNotifyStopping) },
	})
}

func newLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Logger{}, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	switch format {
	case "auto":
		f, isFile := w.(*os.File)
		switch {
		case isFile && os.Getenv("JOURNAL_STREAM") != "" && journal.Enabled():
			format = "journald" // systemd connected stderr to the journal
		case isFile && isatty.IsTerminal(f.Fd()):
			format = "console"
		default:
			format = "json"
		}
	case "console", "json", "journald":
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format %q: want auto, journald, console or json", format)
	}
	switch format {
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	case "journald":
		// Native journal entries: PRIORITY from the level, and every field
		// (PATH, NAR_BYTES, …) queryable with journalctl.
		w = journald.NewJournalDWriter()
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}
