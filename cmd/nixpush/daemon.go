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
	"strings"
	"time"

	"github.com/nixpush/nixpush/store"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/coreos/go-systemd/v22/journal"
	"github.com/mattn/go-isatty"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/rs/zerolog"
	"github.com/rs/zerolog/journald"

	"github.com/nixpush/nixpush/daemon"
	"github.com/nixpush/nixpush/hook"
	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/uploader"
)

// memoryLimit is the daemon's soft memory limit (GOMEMLIMIT overrides it).
const memoryLimit = 40 << 20

func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush daemon", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", envOr("STATE_DIRECTORY", "/var/lib/nixpush"), "queue and default cache directory")
	storeURI := fs.String("store-uri", os.Getenv("NIXPUSH_STORE_URI"), "binary cache: s3://BUCKET?endpoint=HOST&scheme=http|https&region=R&profile=P or file:///DIR (default file://STATE-DIR/cache) (env NIXPUSH_STORE_URI)")
	var keyFiles stringsFlag
	fs.Var(&keyFiles, "secret-key-file", "Nix signing key (name:base64), mode 0600; repeatable: each .narinfo is signed by every key, as during a key rotation (env NIXPUSH_SECRET_KEY_FILE)")
	socket := fs.String("socket", envOr("NIXPUSH_SOCKET", hook.DefaultSocket), "socket to listen on (env NIXPUSH_SOCKET)")
	spoolDir := fs.String("spool-dir", os.Getenv("NIXPUSH_SPOOL_DIR"), "spool the hook writes to when the daemon is down (default STATE-DIR/spool) (env NIXPUSH_SPOOL_DIR)")
	compression := fs.String("compression", "zstd", "NAR compression: zstd, xz or none")
	jobs := fs.Int("jobs", max(4, 2*runtime.GOMAXPROCS(0)), "paths packed and uploaded at once")
	socketGroup := fs.String("socket-group", os.Getenv("NIXPUSH_SOCKET_GROUP"), "group whose members may enqueue besides root; the socket is given to it, mode 0660 (env NIXPUSH_SOCKET_GROUP)")
	caCert := fs.String("ca-certificate", "", "PEM file of a private CA that signed the S3 endpoint's certificate")
	storeDir := fs.String("store-dir", envOr("NIX_STORE_DIR", nix.DefaultStoreDir), "the Nix store directory")
	uploadLogs := fs.Bool("upload-logs", true, "upload the build log of each derivation the hook names to log/<drv name>, after its outputs")
	writeListing := fs.Bool("write-nar-listing", false, "write <hash>.ls, the JSON listing of each NAR's files, beside its .narinfo (Nix's write-nar-listing=true)")
	var excludes, skipSignedBy stringsFlag
	fs.Var(&excludes, "exclude", "leave out store paths whose name (after the hash) matches this regular expression; repeatable")
	fs.Var(&skipSignedBy, "skip-signed-by", "leave out store paths the local Nix database holds a signature of by this key name (e.g. cache.nixos.org-1); repeatable")
	var maxRate rateFlag
	fs.Var(&maxRate, "max-upload-rate", "cap the bytes a second sent to an S3 store, across all uploads (e.g. 20MiB, 2.5MB, 800KiB; 0 or unlimited: none), "+
		"optionally with time-of-day windows of their own, local time: '20MiB, 00:00-07:00=unlimited, 12:00-13:00=50MiB' (a window may cross midnight); "+
		"costs a tenth of a second of the cap (at least 1 MiB) sent at once above it after an idle moment, up to a second of it after a slow answer of the store, and uploads take as long as the cap makes them")
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9747), at /metrics")
	trust := fs.Duration("trust-cache-for", time.Hour, "how long a path seen in the cache (or uploaded) is believed to stay there before a push that needs it checks again; "+
		"keep it well below gc's --grace (24h by default), which spares young .narinfos and NARs for that long; 0s checks whole closures on every push")
	maxSweepWait := fs.Duration("max-sweep-wait", time.Hour, "how long a push that meets a gc sweep waits for it to finish (reading gc's marker every few seconds) before it fails, to be retried; keep it above gc's --sweep-window")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	logFormat := fs.String("log-format", "auto", "log format: auto (journald under systemd, console on a terminal, JSON otherwise), journald, console, json")
	if !parseNoArgs(fs, args) {
		return 2
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
		return 2
	}
	comp, err := narpack.ParseCompression(*compression)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
		return 2
	}
	if comp == narpack.XZ {
		if tool := narpack.XZTool(); tool != "" {
			log.Info().Str("xz", tool).Msg("xz NARs are compressed by the xz tool")
		} else {
			log.Warn().Msg("xz is not on PATH: xz NARs are compressed by a pure-Go encoder at about 1 MB/s; install xz (xz-utils) for liblzma's speed on every core")
		}
	}
	exclude, err := uploader.ParseExclude(excludes)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
		return 2
	}
	for _, k := range skipSignedBy {
		if k == "" || strings.ContainsAny(k, ": ") {
			fmt.Fprintf(stderr, "nixpush daemon: --skip-signed-by %q: want a key name such as cache.nixos.org-1 (the part before the colon)\n", k)
			return 2
		}
	}
	if *trust < 0 {
		fmt.Fprintf(stderr, "nixpush daemon: --trust-cache-for %s: want a duration of 0s or more, such as 1h\n", *trust)
		return 2
	}
	if *maxSweepWait <= 0 {
		fmt.Fprintf(stderr, "nixpush daemon: --max-sweep-wait %s: want a duration above 0, such as 1h (above gc's --sweep-window)\n", *maxSweepWait)
		return 2
	}
	if len(keyFiles) == 0 && os.Getenv("NIXPUSH_SECRET_KEY_FILE") != "" {
		keyFiles = stringsFlag{os.Getenv("NIXPUSH_SECRET_KEY_FILE")}
	}
	if len(keyFiles) == 0 {
		fmt.Fprintln(stderr, "nixpush daemon: --secret-key-file is required; make one with: nixpush keygen --name NAME --out DIR")
		return 2
	}
	var keys []signature.SecretKey
	names := map[string]string{}
	for _, f := range keyFiles {
		key, err := nix.LoadSecretKeyFile(f)
		if err != nil {
			fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
			return 2
		}
		if other, dup := names[key.ToPublicKey().Name]; dup {
			// Nix keeps one signature per key name: the second would replace the first.
			fmt.Fprintf(stderr, "nixpush daemon: %s and %s are both keys named %q; a rotation needs a new name (e.g. %s-2)\n", other, f, key.ToPublicKey().Name, key.ToPublicKey().Name)
			return 2
		}
		names[key.ToPublicKey().Name] = f
		keys = append(keys, key)
	}
	if *storeURI == "" {
		abs, err := filepath.Abs(filepath.Join(*stateDir, "cache"))
		if err != nil {
			fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
			return 2
		}
		*storeURI = "file://" + abs
	}
	store, err := store.Open(ctx, *storeURI, store.Options{CACertFile: *caCert, UploadRate: maxRate.RateSchedule})
	if err != nil {
		fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
		return 2
	}
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
	nixClient := &nix.Client{StoreDir: *storeDir}
	// Path info through one long-lived nix-store --serve, not a Nix process
	// per push: that costs ~50 ms of CPU each, taken from the builds.
	pathInfo := nix.NewServe(*nixClient)
	if v := os.Getenv("NIXPUSH_SERVE_IDLE"); v != "" {
		// For tests: how long nix-store --serve stays idle; 0 keeps it
		// for ever (and past any age), as the daemon did before it let
		// go of Nix's big lock, to show what letting go is for.
		idle, err := time.ParseDuration(v)
		if err != nil || idle < 0 {
			fmt.Fprintf(stderr, "nixpush daemon: NIXPUSH_SERVE_IDLE=%q: want a duration such as 2s (0: never stop nix-store --serve), or unset it\n", v)
			return 2
		}
		pathInfo.Idle = idle
		if idle == 0 {
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
		Store: store, Nix: pathInfo, Key: keys[0], Keys: keys[1:], Compression: comp, Jobs: *jobs,
		StoreDir: *storeDir, Log: log, WriteNARListing: *writeListing,
		Filter:        uploader.Filter{Exclude: exclude, SkipSignedBy: skipSignedBy},
		TrustCacheFor: *trust, MaxSweepWait: *maxSweepWait,
	})
	var ln net.Listener
	if lns, err := activation.Listeners(); err == nil && len(lns) > 0 && lns[0] != nil {
		ln = lns[0]
		log.Info().Msg("using the socket systemd passed in")
	}
	var buildLogs daemon.BuildLogs
	if *uploadLogs {
		if nixClient.KeepsBuildLogs(ctx) {
			buildLogs = &nix.BuildLogs{Client: *nixClient}
		} else {
			log.Warn().Msg("Nix keeps no build logs (keep-build-log = false): none are uploaded; set keep-build-log = true, or pass --upload-logs=false to say so")
		}
	}
	if f := os.Getenv("NIXPUSH_CPUPROFILE"); f != "" {
		// For finding where the daemon's CPU goes (go tool pprof FILE).
		out, err := os.Create(f)
		if err == nil {
			err = pprof.StartCPUProfile(out)
		}
		if err != nil {
			fmt.Fprintf(stderr, "nixpush daemon: NIXPUSH_CPUPROFILE: %v\n", err)
			return 2
		}
		defer func() { pprof.StopCPUProfile(); out.Close() }()
	}
	var burstQuiet time.Duration
	if v := os.Getenv("NIXPUSH_BURST_QUIET"); v != "" {
		// For benchmarks: how long hand-offs must pause before a push
		// starts (0: no pause, as before), to measure what the pause is for.
		q, err := time.ParseDuration(v)
		if err != nil || q < 0 {
			fmt.Fprintf(stderr, "nixpush daemon: NIXPUSH_BURST_QUIET=%q: want a duration such as 100ms (0: no pause), or unset it\n", v)
			return 2
		}
		burstQuiet = q
		if q == 0 {
			burstQuiet = -1
		}
	}
	watchdog, _ := sddaemon.SdWatchdogEnabled(false)
	err = daemon.Run(ctx, daemon.Config{
		BuildLogs: buildLogs,
		Socket:    *socket, StateDir: *stateDir, SpoolDir: *spoolDir, StoreDir: *storeDir,
		Uploader: up, Nix: nixClient, Log: log, Listener: ln, SocketGroup: *socketGroup, MetricsListen: *metricsListen,
		TrustCacheFor: *trust, BurstQuiet: burstQuiet,
		Notify:   func(s string) { sddaemon.SdNotify(false, s) },
		Watchdog: watchdog,
		Ready:    func() { sddaemon.SdNotify(false, sddaemon.SdNotifyReady) },
		Stopping: func() { sddaemon.SdNotify(false, sddaemon.SdNotifyStopping) },
	})
	if err != nil {
		log.Error().Err(err).Msg("daemon failed")
		fmt.Fprintf(stderr, "nixpush daemon: %v\n", err)
		return 1
	}
	return 0
}

// stringsFlag is a flag that may be given several times.
type stringsFlag []string

func (s *stringsFlag) String() string { return strings.Join(*s, ",") }

func (s *stringsFlag) Set(v string) error {
	*s = append(*s, v)
	return nil
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
